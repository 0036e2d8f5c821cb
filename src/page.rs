//! The fan's HTML: the waiting page and the short pages for ended sessions,
//! used places and errors. Self-contained (inline CSS and script, no CDN).
//!
//! The waiting page polls `/_waitroom/status` every few seconds and, once
//! the fan's turn comes, replaces itself with the URL they first asked for
//! (`location.replace`, so Back does not return to the queue). Without
//! JavaScript a slow meta refresh does the same job.

use hyper::StatusCode;

use crate::status::State;

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
.note:empty{display:none}
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
    pub state: State,
    pub position: Option<u64>,
    pub eta_range: Option<[u64; 2]>,
    /// The same-origin URL to go to once admitted.
    pub next: &'a str,
    /// A platform's own page (see [`DEFAULT_TEMPLATE`] for the placeholders).
    pub template: Option<&'a str>,
}

/// The built-in waiting page, written with the same placeholders a
/// platform's `page_template` may use:
///
/// - `{{title}}`: the room title (escaped);
/// - `{{position}}`, `{{eta}}`, `{{note}}`: first values as text (escaped);
/// - `{{head}}`: the no-JavaScript meta refresh and the default style;
/// - `{{script}}`: the live-update script (required). It fills elements
///   with the ids `wr-position`, `wr-ahead`, `wr-eta`, `wr-note` and
///   `wr-bar` where the page has them.
pub const DEFAULT_TEMPLATE: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{{title}}</title>{{head}}</head><body><main>
<h1>{{title}}</h1>
<p class="muted">You are in line. Keep this page open: it updates by itself and takes you in when it is your turn.</p>
<div aria-live="polite" aria-atomic="true">
<p>Your place in line</p>
<p class="big" id="wr-position">{{position}}</p>
<p id="wr-ahead" class="muted"></p>
<p id="wr-eta">{{eta}}</p>
</div>
<div class="bar" role="progressbar" aria-label="Progress in line" aria-valuemin="0" aria-valuemax="100"><div id="wr-bar"></div></div>
<p class="note" id="wr-note" role="status">{{note}}</p>
</main>{{script}}</body></html>"#;

/// The live-update script: Server-Sent Events, with polling where
/// EventSource is missing; forwards with `location.replace` when admitted.
/// On `superseded` (the place is open in newer tabs) it closes the stream
/// and offers a button that takes the place back here by reloading; it
/// never reconnects by itself, or two tabs would evict each other forever.
/// Its text is the same for every fan (the URLs come from the element's
/// `data-` attributes), so one SHA-256 in the Content-Security-Policy
/// allows exactly this script and nothing else.
pub const SCRIPT: &str = r#"
(function(){
var me=document.currentScript, ev=me.getAttribute("data-events"), st=me.getAttribute("data-status"), first=null, best=null, done=false, es=null;
function $(id){return document.getElementById(id);}
function set(id,t){var e=$(id);if(e)e.textContent=t;}
function note(t){var n=$("wr-note");if(n){n.textContent=t||"";n.hidden=!t;}}
function mins(s){if(s<60)return "under a minute";var m=Math.round(s/60);return m<60?(m+" min"):(Math.floor(m/60)+" h "+(m%60)+" min");}
function eta(r){if(!r)return "Estimated wait: on hold";if(r[1]<60)return "Estimated wait: under a minute";if(r[0]===r[1]||mins(r[0])===mins(r[1]))return "Estimated wait: about "+mins(r[0]);return "Estimated wait: "+mins(r[0])+" to "+mins(r[1]);}
var why={paused:"Entry is paused for a moment. You keep your place.",rate_lowered:"The organiser slowed entry down, so the wait got longer. You keep your place.",checkout_unavailable:"The checkout is having trouble; entry resumes when it recovers. You keep your place.",checkout_full:"The checkout is full; the next fans go in as others finish.",tickets_in_carts:"All tickets are in carts right now; you keep your place.",checkout_slow:"The checkout is slow right now, so entry is slower to keep it working. You keep your place."};
function num(n){return Number(n).toLocaleString("en");}
function show(d){
  if(done)return false;
  if(d.state==="admitted"&&d.url){done=true;note("It is your turn. Taking you in…");location.replace(d.url);return false;}
  if(d.state==="expired"||d.state==="claimed"||d.state==="none"){done=true;location.reload();return false;}
  if(d.state==="closed"){note(d.message||"This sale is closed.");set("wr-eta","");return true;}
  if(d.state==="prequeue"){set("wr-position","…");set("wr-ahead","");var t=d.opens_at?new Date(d.opens_at).toLocaleString():"soon";set("wr-eta","Opens "+t);note(d.message||"");return true;}
  if(d.position!=null){
    if(best===null||d.position<best)best=d.position;
    set("wr-position",best);
    var left=d.tickets_left!=null?"about "+num(d.tickets_left)+" tickets left · ":"";
    set("wr-ahead",left+(best>1?num(best-1)+" people ahead of you":"You are next"));
    if(first===null)first=best;
    var pct=first>1?Math.round(100*(first-best)/(first-1)):100;
    var b=$("wr-bar");if(b){b.style.width=pct+"%";b.parentNode.setAttribute("aria-valuenow",pct);}
  }
  set("wr-eta",eta(d.state==="paused"?null:d.eta_range_seconds));
  note(why[d.eta_reason]||(d.tickets_may_run_out?d.message:""));
  return true;
}
function away(){
  done=true;if(es)es.close();
  var n=$("wr-note")||document.body.appendChild(document.createElement("p"));
  n.hidden=false;n.textContent="This place is open in another tab. ";
  var b=document.createElement("button");b.type="button";b.textContent="Use this tab";
  b.onclick=function(){location.reload();};n.appendChild(b);
}
function poll(delay){
  if(done)return;
  fetch(st,{credentials:"same-origin",headers:{"Accept":"application/json"},cache:"no-store"})
  .then(function(r){if(r.status===401){done=true;location.reload();return null;}return r.json();})
  .then(function(d){if(d&&show(d))setTimeout(function(){poll(3000);},delay+Math.random()*1000);})
  .catch(function(){note("Reconnecting… you keep your place.");setTimeout(function(){poll(Math.min(delay*2,30000));},delay);});
}
function connect(){
  if(!window.EventSource){poll(3000);return;}
  es=new EventSource(ev);
  ["prequeue","position","paused","closed","admitted","claimed","expired"].forEach(function(k){
    es.addEventListener(k,function(e){try{if(!show(JSON.parse(e.data)))es.close();}catch(x){}});
  });
  es.addEventListener("superseded",away);
  es.onopen=function(){var n=$("wr-note");if(n&&n.textContent.indexOf("Reconnecting")===0)note("");};
  es.onerror=function(){
    if(done)return;
    note("Reconnecting… you keep your place.");
    if(es.readyState===2){es.close();setTimeout(function(){poll(3000);},2000+Math.random()*2000);}
  };
}
connect();
})();
"#;

/// The joining page's script: solves the room's proof-of-work challenge
/// (SHA-256 in plain JavaScript, so it also works on plain-HTTP origins
/// where WebCrypto is unavailable), then joins and goes where the fan was
/// going. Same text for every fan, allowed by hash like [`SCRIPT`].
pub const JOIN_SCRIPT: &str = r#"
(function(){
var me=document.currentScript, room=me.getAttribute("data-room"), next=me.getAttribute("data-next");
var K=[0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2];
function sha256(s){
  var l=s.length,nb=((l+9+63)>>6)<<6,m=new Uint8Array(nb),i;
  for(i=0;i<l;i++)m[i]=s.charCodeAt(i)&255;
  m[l]=128;var bits=l*8;m[nb-1]=bits&255;m[nb-2]=(bits>>>8)&255;m[nb-3]=(bits>>>16)&255;m[nb-4]=(bits>>>24)&255;
  var H=[0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19],w=new Int32Array(64);
  for(var o=0;o<nb;o+=64){
    for(i=0;i<16;i++)w[i]=(m[o+4*i]<<24)|(m[o+4*i+1]<<16)|(m[o+4*i+2]<<8)|m[o+4*i+3];
    for(i=16;i<64;i++){var x=w[i-15],y=w[i-2];
      w[i]=(w[i-16]+(((x>>>7)|(x<<25))^((x>>>18)|(x<<14))^(x>>>3))+w[i-7]+(((y>>>17)|(y<<15))^((y>>>19)|(y<<13))^(y>>>10)))|0;}
    var a=H[0],b=H[1],c=H[2],d=H[3],e=H[4],f=H[5],g=H[6],h=H[7];
    for(i=0;i<64;i++){
      var t1=(h+(((e>>>6)|(e<<26))^((e>>>11)|(e<<21))^((e>>>25)|(e<<7)))+((e&f)^(~e&g))+K[i]+w[i])|0;
      var t2=((((a>>>2)|(a<<30))^((a>>>13)|(a<<19))^((a>>>22)|(a<<10)))+((a&b)^(a&c)^(b&c)))|0;
      h=g;g=f;f=e;e=(d+t1)|0;d=c;c=b;b=a;a=(t1+t2)|0;}
    H[0]=(H[0]+a)|0;H[1]=(H[1]+b)|0;H[2]=(H[2]+c)|0;H[3]=(H[3]+d)|0;H[4]=(H[4]+e)|0;H[5]=(H[5]+f)|0;H[6]=(H[6]+g)|0;H[7]=(H[7]+h)|0;
  }
  return H;
}
function zeros(H){var n=0;for(var i=0;i<8;i++){var v=H[i]>>>0;if(v===0){n+=32;continue;}return n+Math.clz32(v);}return n;}
function note(t){var e=document.getElementById("wr-note");if(e)e.textContent=t;}
function join(proof){
  fetch("/_waitroom/join?room="+encodeURIComponent(room)+"&next="+encodeURIComponent(next),
    {method:"POST",credentials:"same-origin",headers:{"Accept":"application/json","X-Waitroom-Pow":proof}})
  .then(function(r){
    if(r.ok){location.replace(next);return;}
    var wait=parseInt(r.headers.get("Retry-After")||"3",10);
    note("Still getting you a place…");setTimeout(start,Math.max(wait,1)*1000);
  }).catch(function(){note("Connection trouble; trying again…");setTimeout(start,3000);});
}
function solve(c,bits){
  var n=0;
  (function chunk(){
    for(var end=n+20000;n<end;n++){if(zeros(sha256(c+":"+n))>=bits){join(c+":"+n);return;}}
    setTimeout(chunk,0);
  })();
}
function start(){
  fetch("/_waitroom/challenge?room="+encodeURIComponent(room),{credentials:"same-origin",cache:"no-store"})
  .then(function(r){return r.json();})
  .then(function(d){if(!d.challenge){location.replace(next);return;}solve(d.challenge,d.bits);})
  .catch(function(){note("Connection trouble; trying again…");setTimeout(start,3000);});
}
start();
})();
"#;

/// The CSP source expressions that allow [`SCRIPT`] and [`JOIN_SCRIPT`]:
/// `'sha256-…' 'sha256-…'`.
pub fn script_hash_source() -> &'static str {
    static SOURCE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use base64::Engine;
        [SCRIPT, JOIN_SCRIPT]
            .iter()
            .map(|script| {
                let digest =
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, script.as_bytes());
                format!(
                    "'sha256-{}'",
                    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    });
    &SOURCE
}

/// The Content-Security-Policy of every page the gateway renders: nothing
/// loads or runs but the live-update script (by hash), inline styles, and
/// requests back to this origin; no framing, no `<base>`, forms only to us.
/// Inline styles are allowed because platform templates bring their own
/// and CSS cannot run code.
pub fn content_security_policy() -> &'static str {
    static CSP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "default-src 'none'; script-src {}; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            script_hash_source()
        )
    });
    &CSP
}

pub fn waiting_page(v: &WaitingView<'_>) -> String {
    let position = v
        .position
        .map(|p| p.to_string())
        .unwrap_or_else(|| "…".into());
    let eta = match (v.state, v.eta_range) {
        (State::Paused, _) | (_, None) => "Estimated wait: on hold".to_string(),
        (_, Some([lo, hi])) if human_duration(lo) == human_duration(hi) => {
            format!("Estimated wait: about {}", human_duration(lo))
        }
        (_, Some([lo, hi])) => format!(
            "Estimated wait: {} to {}",
            human_duration(lo),
            human_duration(hi)
        ),
    };
    let note = if v.state == State::Paused {
        "Entry is paused for a moment. You keep your place."
    } else {
        ""
    };
    let query = format!("room={}&next={}", url_encode(v.room_id), url_encode(v.next));
    let script = format!(
        "<script data-events=\"{}\" data-status=\"{}\">{SCRIPT}</script>",
        escape_html(&format!("/_waitroom/events?{query}")),
        escape_html(&format!("/_waitroom/status?{query}")),
    );
    let head = format!(
        "<noscript><meta http-equiv=\"refresh\" content=\"30\"></noscript><style>{STYLE}</style>"
    );
    v.template
        .unwrap_or(DEFAULT_TEMPLATE)
        .replace("{{title}}", &escape_html(v.title))
        .replace("{{position}}", &escape_html(&position))
        .replace("{{eta}}", &escape_html(&eta))
        .replace("{{note}}", &escape_html(note))
        .replace("{{head}}", &head)
        .replace("{{script}}", &script)
}

pub fn closed_page(title: &str, message: &str) -> String {
    shell(
        title,
        "",
        &format!(
            "<h1>{}</h1><p class=\"note\" aria-live=\"polite\">{}</p>",
            escape_html(title),
            escape_html(message)
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

/// Shown instead of a new place when one address takes places too fast.
/// It blames nobody (a whole office or campus can share an address) and
/// tries again by itself once the wait is over.
pub fn slow_down_page(retry_after_secs: u64) -> String {
    let retry = retry_after_secs.max(1);
    shell(
        "Just a moment",
        &format!("<meta http-equiv=\"refresh\" content=\"{retry}\">"),
        &format!(
            "<h1>Just a moment</h1><p class=\"note\" aria-live=\"polite\">A lot of people are joining \
             from your network right now. This page tries again by itself in {retry} second{s}; \
             there is no need to refresh.</p>",
            s = if retry == 1 { "" } else { "s" }
        ),
    )
}

/// The state store does not answer for a moment (a shared Redis down,
/// `on_store_failure = "hold"`): a calm page that retries by itself.
pub fn hold_page(retry_after_secs: u64) -> String {
    let retry = retry_after_secs.max(1);
    shell(
        "Just a moment",
        &format!("<meta http-equiv=\"refresh\" content=\"{retry}\">"),
        &format!(
            "<h1>Just a moment</h1><p class=\"note\" aria-live=\"polite\">The line is catching its \
             breath. This page tries again by itself in {retry} seconds; there is no need to refresh. \
             If you already have a place in line, you keep it.</p>"
        ),
    )
}

/// A room with proof of work: the fan's browser does a second or so of
/// arithmetic before it gets a place. The page says what is happening,
/// never that anyone looks like a bot.
pub fn joining_page(title: &str, room_id: &str, next: &str) -> String {
    shell(
        title,
        "",
        &format!(
            "<h1>{}</h1><p class=\"note\" id=\"wr-note\" aria-live=\"polite\">Getting you a place in line… \
             this takes a moment and happens only once.</p>\
             <noscript><p class=\"note\">Joining the line needs JavaScript. Please turn it on and reload.</p></noscript>\
             <script data-room=\"{}\" data-next=\"{}\">{JOIN_SCRIPT}</script>",
            escape_html(title),
            escape_html(room_id),
            escape_html(next)
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

/// Escapes text for HTML element and attribute content.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_page_escapes_title_and_next() {
        let page = waiting_page(&WaitingView {
            room_id: "demo",
            title: "<script>alert(1)</script>",
            state: State::Waiting,
            position: Some(12),
            eta_range: Some([90, 120]),
            next: "/</script><script>x",
            template: None,
        });
        assert!(!page.contains("<script>alert(1)"));
        assert!(!page.contains("</script><script>x"));
        assert!(page.contains(">12<"));
        assert!(page.contains("aria-live"));
        assert!(page.contains("http-equiv=\"refresh\""));
        assert!(page.contains("Estimated wait: about 2 min"), "{page}");
    }

    #[test]
    fn a_platform_template_gets_the_placeholders_filled() {
        let page = waiting_page(&WaitingView {
            room_id: "demo",
            title: "Brand & Co",
            state: State::Waiting,
            position: Some(7),
            eta_range: Some([30, 40]),
            next: "/",
            template: Some("<h1>{{title}}</h1><b id=wr-position>{{position}}</b>{{script}}"),
        });
        assert!(page.starts_with("<h1>Brand &amp; Co</h1><b id=wr-position>7</b><script "));
        assert!(page.contains("/_waitroom/events?room=demo"));
    }

    /// The body of every inline `<script>` element in `page`.
    fn inline_scripts(page: &str) -> Vec<&str> {
        page.split("<script")
            .skip(1)
            .filter_map(|rest| {
                let body = &rest[rest.find('>')? + 1..];
                Some(&body[..body.find("</script>")?])
            })
            .collect()
    }

    fn csp_hash_of(script: &str) -> String {
        use base64::Engine;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, script.as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
        )
    }

    #[test]
    fn the_csp_hash_allows_exactly_the_waiting_page_script_in_both_templates() {
        for template in [None, Some("<p>{{position}}</p>{{script}}")] {
            let page = waiting_page(&WaitingView {
                room_id: "demo",
                title: "t",
                state: State::Waiting,
                position: Some(3),
                eta_range: None,
                next: "/a?b=\"c\"",
                template,
            });
            let scripts = inline_scripts(&page);
            assert_eq!(scripts.len(), 1, "{page}");
            let csp = content_security_policy();
            assert!(csp.contains(&csp_hash_of(scripts[0])), "{csp}");
            let script_src = csp
                .split(';')
                .map(str::trim)
                .find(|d| d.starts_with("script-src "))
                .expect("a script-src directive");
            assert_eq!(script_src, format!("script-src {}", script_hash_source()));
        }
    }

    #[test]
    fn the_script_urls_are_data_attributes_escaped_as_html() {
        let page = waiting_page(&WaitingView {
            room_id: "demo",
            title: "t",
            state: State::Waiting,
            position: Some(3),
            eta_range: None,
            next: "/\"><script>x",
            template: None,
        });
        assert!(
            page.contains(
                "data-status=\"/_waitroom/status?room=demo&amp;next=%2F%22%3E%3Cscript%3Ex\""
            ),
            "{page}"
        );
        assert_eq!(inline_scripts(&page).len(), 1);
    }

    #[test]
    fn the_slow_down_page_retries_by_itself_and_blames_nobody() {
        let page = slow_down_page(7);
        assert!(page.contains("http-equiv=\"refresh\" content=\"7\""));
        let lower = page.to_lowercase();
        let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).collect();
        for blame in ["bot", "bots", "robot", "automated", "suspicious", "blocked"] {
            assert!(!words.contains(&blame), "{blame:?} in {page}");
        }
        assert!(inline_scripts(&page).is_empty());
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(human_duration(5), "under a minute");
        assert_eq!(human_duration(61), "2 min");
        assert_eq!(human_duration(3 * 3600 + 120), "3 h 2 min");
    }
}
