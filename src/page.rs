//! The fan's HTML: the waiting page and the short pages for ended sessions,
//! used places and errors. Self-contained (inline CSS and script, no CDN).
//!
//! The waiting page polls `/_waitroom/status` every few seconds and, once
//! the fan's turn comes, replaces itself with the URL they first asked for
//! (`location.replace`, so Back does not return to the queue). Without
//! JavaScript a slow meta refresh does the same job.

use hyper::StatusCode;

use crate::http::escape_html;

const STYLE: &str = r#"
:root{color-scheme:light dark;--accent:#2b59c3}
*{box-sizing:border-box}
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:1.5rem;display:flex;justify-content:center}
main{max-width:34rem;width:100%}
h1{font-size:1.5rem;margin:.2rem 0 1rem}
.big{font-size:3rem;font-weight:700;margin:.2rem 0}
.muted{opacity:.75}
.bar{height:.75rem;border-radius:.4rem;background:#8884;overflow:hidden;margin:1rem 0}
.bar>div{height:100%;background:var(--accent);width:0;transition:width .8s}
.note{padding:.75rem 1rem;border-radius:.5rem;background:#8882;margin:1rem 0}
button{font:inherit;padding:.6rem 1.2rem;border-radius:.5rem;border:0;background:var(--accent);color:#fff;cursor:pointer}
"#;

fn shell(title: &str, head_extra: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title>{head_extra}<style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        title = escape_html(title),
    )
}

/// What the waiting page is first rendered with (the script keeps it fresh).
pub struct WaitingView<'a> {
    pub room_id: &'a str,
    pub title: &'a str,
    pub state: &'a str,
    pub position: Option<u64>,
    pub eta_seconds: Option<u64>,
    /// The same-origin URL to go to once admitted.
    pub next: &'a str,
}

pub fn waiting_page(v: &WaitingView<'_>) -> String {
    let position = v
        .position
        .map(|p| p.to_string())
        .unwrap_or_else(|| "…".into());
    let eta = match v.eta_seconds {
        Some(s) => format!("about {}", human_duration(s)),
        None => "unknown while the queue is paused".into(),
    };
    let status_url = format!(
        "/_waitroom/status?room={}&next={}",
        url_encode(v.room_id),
        url_encode(v.next)
    );
    let head = "<noscript><meta http-equiv=\"refresh\" content=\"30\"></noscript>";
    let body = format!(
        r#"<h1>{title}</h1>
<p class="muted">You are in line. Keep this page open: it updates by itself and takes you in when it is your turn.</p>
<div aria-live="polite" aria-atomic="true">
<p>Your place in line</p>
<p class="big" id="position">{position}</p>
<p id="eta">Estimated wait: {eta}</p>
</div>
<div class="bar" role="progressbar" aria-label="Progress in line" aria-valuemin="0" aria-valuemax="100"><div id="bar"></div></div>
<p class="note" id="note" {note_hidden}>{note}</p>
<script>
(function(){{
var url={status_url_js}, first=null, delay=2000;
function fmt(s){{if(s==null)return "unknown";if(s<60)return "under a minute";var m=Math.round(s/60);return m<60?("about "+m+" min"):("about "+Math.floor(m/60)+" h "+(m%60)+" min");}}
function show(d){{
  var n=document.getElementById("note");
  if(d.state==="admitted"&&d.url){{n.hidden=false;n.textContent="It is your turn. Taking you in…";location.replace(d.url);return false;}}
  if(d.position!=null){{
    document.getElementById("position").textContent=d.position;
    if(first===null||d.position>first)first=d.position;
    var pct=first>1?Math.round(100*(first-d.position)/(first-1)):100;
    var b=document.getElementById("bar");b.style.width=pct+"%";b.parentNode.setAttribute("aria-valuenow",pct);
  }}
  document.getElementById("eta").textContent="Estimated wait: "+(d.state==="paused"?"on hold":fmt(d.eta_seconds));
  if(d.state==="paused"){{n.hidden=false;n.textContent="Entry is paused for a moment. You keep your place.";}}
  else if(d.state==="closed"){{n.hidden=false;n.textContent=d.message||"This sale is closed.";return false;}}
  else if(d.state==="expired"||d.state==="none"){{location.reload();return false;}}
  else n.hidden=true;
  return true;
}}
function poll(){{
  fetch(url,{{credentials:"same-origin",headers:{{"Accept":"application/json"}},cache:"no-store"}})
  .then(function(r){{if(r.status===401){{location.reload();return null;}}return r.json();}})
  .then(function(d){{if(d===null)return;delay=2000;if(show(d))setTimeout(poll,delay+Math.random()*1000);}})
  .catch(function(){{var n=document.getElementById("note");n.hidden=false;n.textContent="Reconnecting… you keep your place.";delay=Math.min(delay*2,30000);setTimeout(poll,delay);}});
}}
setTimeout(poll,1000);
}})();
</script>"#,
        title = escape_html(v.title),
        position = position,
        eta = escape_html(&eta),
        note_hidden = if v.state == "paused" { "" } else { "hidden" },
        note = if v.state == "paused" {
            "Entry is paused for a moment. You keep your place."
        } else {
            ""
        },
        status_url_js = js_string(&status_url),
    );
    shell(v.title, head, &body)
}

pub fn closed_page(title: &str) -> String {
    shell(
        title,
        "",
        &format!(
            "<h1>{}</h1><p class=\"note\" aria-live=\"polite\">This sale is closed. Nobody else is being let in.</p>",
            escape_html(title)
        ),
    )
}

pub fn session_ended_page(title: &str, room_id: &str, next: &str) -> String {
    shell(
        title,
        "",
        &format!(
            r#"<h1>{}</h1><p class="note">Your session has ended.</p>
<p>If you still want to buy, you can take a new place in line.</p>
<form method="post" action="/_waitroom/join?room={}&amp;next={}"><button type="submit">Join the line again</button></form>"#,
            escape_html(title),
            escape_html(&url_encode(room_id)),
            escape_html(&url_encode(next))
        ),
    )
}

pub fn place_used_page(title: &str) -> String {
    shell(
        title,
        "",
        &format!(
            "<h1>{}</h1><p class=\"note\">This place in line has already been used to enter. \
             Each place lets one person in once. If that was you in another browser or app, continue there.</p>",
            escape_html(title)
        ),
    )
}

pub fn error_page(status: StatusCode, message: &str) -> String {
    shell(
        "Something went wrong",
        "",
        &format!(
            "<h1>{} {}</h1><p class=\"note\">{}</p><p class=\"muted\">If you were in line, you keep your place.</p>",
            status.as_u16(),
            escape_html(status.canonical_reason().unwrap_or("")),
            escape_html(message)
        ),
    )
}

fn human_duration(secs: u64) -> String {
    if secs < 60 {
        "under a minute".into()
    } else if secs < 3600 {
        format!("{} min", secs.div_ceil(60))
    } else {
        format!("{} h {} min", secs / 3600, (secs % 3600) / 60)
    }
}

fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A JSON string literal that is also safe inside a `<script>` element.
fn js_string(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_page_escapes_title_and_next() {
        let page = waiting_page(&WaitingView {
            room_id: "demo",
            title: "<script>alert(1)</script>",
            state: "waiting",
            position: Some(12),
            eta_seconds: Some(90),
            next: "/</script><script>x",
        });
        assert!(!page.contains("<script>alert(1)"));
        assert!(!page.contains("</script><script>x"));
        assert!(page.contains(">12<"));
        assert!(page.contains("aria-live"));
        assert!(page.contains("http-equiv=\"refresh\""));
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(human_duration(5), "under a minute");
        assert_eq!(human_duration(61), "2 min");
        assert_eq!(human_duration(3 * 3600 + 120), "3 h 2 min");
    }
}
