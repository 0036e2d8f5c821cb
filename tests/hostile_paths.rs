//! Paths and hosts spelled to slip past a room: every spelling is decided
//! on its normal form, so it is queued or refused with 400, and never
//! reaches the upstream while the room is paused. Tried against the echo
//! upstream and against a real nginx that normalises paths before it picks
//! a location (tests/common/nginx.rs), over raw sockets: an HTTP client
//! library would resolve `..` itself before sending.
mod common;
#[path = "common/nginx.rs"]
mod nginx;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use nginx::Nginx;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// nginx locations naming the route that served a request. nginx matches
/// on the normalised path (`$uri`); the two regex locations stand for an
/// upstream that ignores case and `;` parameters in `/checkout` (Tomcat,
/// Spring, case-insensitive file systems), and win over the plain
/// `/checkout/` prefix.
const LOCATIONS: &str = r#"
        location / { return 200 "default $uri"; }
        location ~* "^/checkout(;[^/]*)?/" { return 200 "checkout $uri"; }
        location /checkout/ { return 200 "checkout $uri"; }
        location ^~ /checkout/static/ { return 200 "checkout-static $uri"; }
        location /static/ { return 200 "static $uri"; }
        location /webhooks/ { return 200 "webhooks $uri"; }
"#;

/// The upstream behind the gateway (it is also the default upstream).
enum Upstream {
    Echo(TestUpstream),
    Nginx(Nginx),
}

impl Upstream {
    async fn start(nginx: bool) -> Upstream {
        if nginx {
            Upstream::Nginx(Nginx::start(LOCATIONS).await)
        } else {
            Upstream::Echo(TestUpstream::start().await)
        }
    }

    fn url(&self) -> String {
        match self {
            Upstream::Echo(u) => u.url(),
            Upstream::Nginx(n) => n.url(),
        }
    }

    /// Requests the echo upstream has seen (nginx keeps no count: there
    /// the answer itself says whether it came from nginx).
    fn seen(&self) -> u64 {
        match self {
            Upstream::Echo(u) => u.requests.load(std::sync::atomic::Ordering::SeqCst),
            Upstream::Nginx(_) => 0,
        }
    }
}

/// A gateway in front of `up` with `room_extra` for room `checkout`, the
/// same upstream as the default one, and the room paused.
async fn paused_site(up: &Upstream, room_extra: &str) -> (Gateway, SocketAddr) {
    let gw = Gateway::start_with(
        &room_toml("checkout", &up.url(), room_extra),
        &format!("[proxy]\ndefault_upstream = \"{}\"", up.url()),
    )
    .await;
    gw.patch_room("checkout", json!({ "paused": true })).await;
    let addr = gw.running.as_ref().unwrap().public_addr;
    (gw, addr)
}

/// Sends one HTTP/1.1 request as written (`target` and `headers` byte for
/// byte) on a new connection; returns the status and the body.
async fn raw_get(addr: SocketAddr, target: &str, headers: &[&str]) -> (u16, String) {
    let mut head = format!("GET {target} HTTP/1.1\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("Accept: application/json\r\nConnection: close\r\n\r\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// What became of a request that must not reach the checkout.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// The gateway's status document for room `checkout`: the fan waits.
    Queued,
    /// The gateway's 400, with its error code and reason.
    Refused(&'static str, String),
    /// Anything else, such as the upstream's answer.
    Other(u16, String),
}

fn verdict(status: u16, body: &str) -> Verdict {
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let queued = status == 200
        && json["room"] == "checkout"
        && matches!(json["state"].as_str(), Some("waiting" | "paused"));
    if queued {
        return Verdict::Queued;
    }
    if status == 400 {
        for code in ["invalid_path", "invalid_host"] {
            if json["error"] == code
                && let Some(reason) = json["reason"].as_str()
            {
                return Verdict::Refused(code, reason.to_string());
            }
        }
    }
    Verdict::Other(status, body.to_string())
}

const Q: Verdict = Verdict::Queued;
fn bad_path(reason: &str) -> Verdict {
    Verdict::Refused("invalid_path", reason.to_string())
}
fn bad_host(reason: &str) -> Verdict {
    Verdict::Refused("invalid_host", reason.to_string())
}
/// hyper's own bare 400, for a request target it cannot parse.
fn unparsable() -> Verdict {
    Verdict::Other(400, String::new())
}

/// Sends each `(target, headers)` and checks its verdict; reports every
/// spelling that went wrong at once.
async fn check_all(addr: SocketAddr, cases: &[(&str, &[&str], Verdict)]) {
    let mut wrong = Vec::new();
    for (target, headers, expected) in cases {
        let (status, body) = raw_get(addr, target, headers).await;
        let got = verdict(status, &body);
        if &got != expected {
            wrong.push(format!(
                "{target} {headers:?}: expected {expected:?}, got {got:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// Room `/checkout` with the exempt `/checkout/static/` (the issue's example).
const CHECKOUT_ROOM: &str = "path_prefix = \"/checkout\"\nexempt_paths = [\"/checkout/static/\"]";

async fn path_spellings_never_reach_the_checkout(nginx: bool) {
    let up = Upstream::start(nginx).await;
    let (_gw, addr) = paused_site(&up, CHECKOUT_ROOM).await;
    let host: &[&str] = &["Host: tickets.example"];
    check_all(
        addr,
        &[
            // Dot-segments out of the exempt path.
            ("/checkout/static/../seats", host, Q),
            ("/checkout/static/%2e%2e/seats", host, Q),
            ("/checkout/static/%2E%2E/seats", host, Q),
            ("/checkout/static/.%2e/seats", host, Q),
            ("/checkout/static/%2e./seats", host, Q),
            ("/checkout/static/./../seats", host, Q),
            ("/checkout/static/../../checkout/seats", host, Q),
            (
                "/checkout/static/..%2fseats",
                host,
                bad_path("encoded_slash"),
            ),
            ("/checkout/static/..%5Cseats", host, bad_path("backslash")),
            ("/checkout/static/..\\seats", host, bad_path("backslash")),
            (
                "/checkout/static/..;/seats",
                host,
                bad_path("dot_segment_with_params"),
            ),
            (
                "/checkout/static/%2e%2e;x/seats",
                host,
                bad_path("dot_segment_with_params"),
            ),
            (
                "/checkout/static/%2e%00/seats",
                host,
                bad_path("control_character"),
            ),
            (
                "/checkout/static/%2/seats",
                host,
                bad_path("malformed_escape"),
            ),
            // A parameter on the exempt segment is not the exempt path.
            ("/checkout/static;x/seats", host, Q),
            // Spellings that used to miss the room for the default upstream.
            ("//checkout/seats", host, Q),
            ("/./checkout/seats", host, Q),
            ("/x/../checkout/seats", host, Q),
            ("/%63heckout/seats", host, Q),
            ("/checkout%2fseats", host, bad_path("encoded_slash")),
            ("/CHECKOUT/seats", host, Q),
            ("/Checkout/Static/a.js", host, Q),
            ("/checkout;x/seats", host, Q),
            ("/;x/checkout/seats", host, Q),
            ("/../checkout/seats", host, bad_path("above_root")),
            ("/%2e%2e/checkout/seats", host, bad_path("above_root")),
        ],
    )
    .await;
    assert_eq!(up.seen(), 0, "the upstream saw a request");
    // The route is live: an exempt asset and an unprotected page are served.
    let (status, body) = raw_get(addr, "/checkout/static/app.css", host).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = raw_get(addr, "/about", host).await;
    assert_eq!(status, 200, "{body}");
    if nginx {
        let (_, body) = raw_get(addr, "/checkout/static/app.css", host).await;
        assert_eq!(body, "checkout-static /checkout/static/app.css");
    }
}

#[tokio::test]
async fn path_spellings_are_queued_or_refused_never_served_by_the_echo_upstream() {
    path_spellings_never_reach_the_checkout(false).await;
}

#[tokio::test]
async fn path_spellings_are_queued_or_refused_never_served_by_a_normalising_nginx() {
    path_spellings_never_reach_the_checkout(true).await;
}

async fn example_config_exempt_paths_stay_closed(nginx: bool) {
    let up = Upstream::start(nginx).await;
    let (_gw, addr) = paused_site(
        &up,
        "path_prefix = \"/\"\nexempt_paths = [\"/static/\", \"/webhooks/\"]",
    )
    .await;
    let h: &[&str] = &["Host: tickets.example"];
    check_all(
        addr,
        &[
            ("/static/../checkout/seats", h, Q),
            ("/static/%2e%2e/checkout/seats", h, Q),
            ("/webhooks/.%2E/checkout/seats", h, Q),
            ("/static//../checkout/seats", h, Q),
            (
                "/static/..;/checkout/seats",
                h,
                bad_path("dot_segment_with_params"),
            ),
            ("/static/..%2fcheckout/seats", h, bad_path("encoded_slash")),
            ("/STATIC/a.js", h, Q),
        ],
    )
    .await;
    assert_eq!(up.seen(), 0, "the upstream saw a request");
    let (status, body) = raw_get(addr, "/static/app.css", h).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_example_configs_exempt_paths_do_not_open_the_checkout_on_the_echo_upstream() {
    example_config_exempt_paths_stay_closed(false).await;
}

#[tokio::test]
async fn the_example_configs_exempt_paths_do_not_open_the_checkout_on_nginx() {
    example_config_exempt_paths_stay_closed(true).await;
}

async fn host_spellings_never_skip_the_room(nginx: bool) {
    let up = Upstream::start(nginx).await;
    let (_gw, addr) =
        paused_site(&up, &format!("{CHECKOUT_ROOM}\nhost = \"tickets.example\"")).await;
    let p = "/checkout/seats";
    check_all(
        addr,
        &[
            (p, &["Host: tickets.example"], Q),
            (p, &["Host: tickets.example."], Q),
            (p, &["Host: tickets.example.:80"], Q),
            (p, &["Host: TICKETS.Example."], Q),
            (p, &["Host: tickets.example:80:80"], bad_host("bad_port")),
            (p, &["Host: tickets.example:x"], bad_host("bad_port")),
            (p, &["Host: tickets.example:"], bad_host("bad_port")),
            (p, &["Host: tickets.example:0"], bad_host("bad_port")),
            (p, &["Host: tickets.example.."], bad_host("bad_name")),
            (p, &["Host: user@tickets.example"], bad_host("bad_name")),
            (
                p,
                &["Host: other.example", "Host: tickets.example"],
                bad_host("repeated_host"),
            ),
            // HTTP/1 absolute-form: the target's authority counts too.
            (
                "http://tickets.example./checkout/seats",
                &["Host: tickets.example."],
                Q,
            ),
            (
                "http://TICKETS.example:8080/checkout/seats",
                &["Host: tickets.example"],
                Q,
            ),
            ("http://tickets.example/checkout/seats", &[], Q),
            (
                "http://tickets.example/checkout/seats",
                &["Host: other.example"],
                bad_host("host_conflict"),
            ),
            (
                "http://other.example/checkout/seats",
                &["Host: tickets.example"],
                bad_host("host_conflict"),
            ),
            (
                "http://tickets.example:80:80/checkout/seats",
                &["Host: tickets.example"],
                unparsable(),
            ),
        ],
    )
    .await;
    assert_eq!(up.seen(), 0, "the upstream saw a request");
    // Other hosts, IPv6 literals among them, still reach the default upstream.
    for host in [
        "Host: other.example",
        "Host: [::1]:8080",
        "Host: [::1]",
        "Host: 127.0.0.1:1",
    ] {
        let (status, body) = raw_get(addr, p, &[host]).await;
        assert_eq!(status, 200, "{host}: {body}");
        assert!(verdict(status, &body) != Q, "{host}: queued");
    }
}

#[tokio::test]
async fn host_spellings_cannot_skip_a_host_bound_room_on_the_echo_upstream() {
    host_spellings_never_skip_the_room(false).await;
}

#[tokio::test]
async fn host_spellings_cannot_skip_a_host_bound_room_on_nginx() {
    host_spellings_never_skip_the_room(true).await;
}

#[tokio::test]
async fn an_h2_authority_with_a_trailing_dot_is_the_rooms_host() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml(
            "checkout",
            &up.url(),
            &format!("{CHECKOUT_ROOM}\nhost = \"tickets.example\""),
        ),
        &format!("[proxy]\ndefault_upstream = \"{}\"", up.url()),
    )
    .await;
    gw.patch_room("checkout", json!({ "paused": true })).await;
    let addr = gw.running.as_ref().unwrap().public_addr;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .resolve("tickets.example.", addr)
        .resolve("other.example", addr)
        .build()
        .unwrap();
    let get = |host: &str| {
        client
            .get(format!("http://{host}:{}/checkout/seats", addr.port()))
            .header("accept", "application/json")
            .send()
    };
    let res = get("tickets.example.").await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    let (status, body) = (res.status().as_u16(), res.text().await.unwrap());
    assert_eq!(verdict(status, &body), Q);
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Another authority is not the room's, over HTTP/2 as over HTTP/1.
    let res = get("other.example").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

async fn the_normal_path_is_what_the_upstream_serves(nginx: bool) {
    let up = Upstream::start(nginx).await;
    let (_gw, addr) = paused_site(&up, CHECKOUT_ROOM).await;
    let h: &[&str] = &["Host: tickets.example"];
    // (sent, the path the echo upstream must receive, nginx's answer)
    for (sent, forwarded, served) in [
        (
            "/checkout/static/./css/../app.css?v=%2e%2e/../x",
            "/checkout/static/app.css?v=%2e%2e/../x",
            "checkout-static /checkout/static/app.css",
        ),
        (
            "/checkout//static/%7euser/caf%c3%a9.js",
            "/checkout/static/~user/caf%C3%A9.js",
            "checkout-static /checkout/static/~user/café.js",
        ),
        (
            "/checkout/static/a.js;v=2",
            "/checkout/static/a.js;v=2",
            "checkout-static /checkout/static/a.js;v=2",
        ),
        ("/about/./us/../team", "/about/team", "default /about/team"),
    ] {
        let (status, body) = raw_get(addr, sent, h).await;
        assert_eq!(status, 200, "{sent}: {body}");
        if nginx {
            assert_eq!(body, served, "{sent}");
        } else {
            let echo: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(echo["path"], forwarded, "{sent}");
        }
    }
}

#[tokio::test]
async fn the_normal_path_is_forwarded_with_the_query_kept_byte_for_byte() {
    the_normal_path_is_what_the_upstream_serves(false).await;
}

#[tokio::test]
async fn nginx_serves_the_normal_path_the_gateway_decided_on() {
    the_normal_path_is_what_the_upstream_serves(true).await;
}

#[tokio::test]
async fn waitroom_endpoints_are_found_by_their_normal_path() {
    let up = Upstream::start(false).await;
    let (_gw, addr) = paused_site(&up, CHECKOUT_ROOM).await;
    let h: &[&str] = &["Host: tickets.example"];
    for target in [
        "/_waitroom/./status?room=checkout",
        "/checkout/../_waitroom/status?room=checkout",
        "//_waitroom/%73tatus?room=checkout",
    ] {
        let (status, body) = raw_get(addr, target, h).await;
        assert_eq!(status, 200, "{target}: {body}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["room"], "checkout", "{target}");
    }
}
