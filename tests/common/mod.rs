//! Test helpers: a real upstream, a real gateway on port 0, browser-like
//! fans with cookie jars, and `eventually` instead of sleeps.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use reqwest::Method;
use reqwest::cookie::{CookieStore, Jar};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use waitroom::config::{Config, EnvOverrides};
use waitroom::server::{self, Running};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// A real HTTP upstream that answers every request with a JSON echo of
/// what it received (method, path, headers, body size). A path ending in
/// `/slow` waits 1.5 seconds first. Each `set=NAME:VALUE` in the query adds that header to
/// the answer (what a checkout tells the gateway).
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> TestUpstream {
        let listener = TcpListener::bind(addr).await.expect("bind test upstream");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let (stop, mut stop_rx) = watch::channel(false);
        let count = requests.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                let count = count.clone();
                let mut stop_conn = stop_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let count = count.clone();
                        async move { Ok::<_, Infallible>(echo(req, &count).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.changed() => {}
                    }
                });
            }
        });
        TestUpstream {
            addr,
            requests,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening and drops open connections: the upstream is down.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// The answer [`TestUpstream`] gives (for other upstreams built on it).
pub async fn echo(req: Request<Incoming>, count: &AtomicU64) -> Response<Full<Bytes>> {
    count.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.to_string(),
            Value::String(v.to_str().unwrap_or("<bin>").to_string()),
        );
    }
    if path.split('?').next().is_some_and(|p| p.ends_with("/slow")) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let out = json!({
        "upstream": true,
        "method": method,
        "path": path,
        "headers": headers,
        "body_len": body.len(),
    });
    let mut res = Response::new(Full::new(Bytes::from(out.to_string())));
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    res.headers_mut()
        .insert("set-cookie", "upstream_session=u1; Path=/".parse().unwrap());
    let query = path.split_once('?').map_or("", |(_, q)| q);
    for pair in query.split('&') {
        if let Some((name, value)) = pair.strip_prefix("set=").and_then(|h| h.split_once(':')) {
            res.headers_mut().append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
    }
    res
}

/// A room's TOML with sensible test defaults; `extra` lines override.
pub fn room_toml(id: &str, upstream: &str, extra: &str) -> String {
    let mut lines = vec![
        "[[rooms]]".to_string(),
        format!("id = \"{id}\""),
        format!("upstream = \"{upstream}\""),
    ];
    let has = |k: &str| extra.lines().any(|l| l.trim_start().starts_with(k));
    if !has("admit_rate_per_min") {
        lines.push("admit_rate_per_min = 600".into());
    }
    lines.push(extra.to_string());
    lines.join("\n") + "\n"
}

pub fn config_toml(state_dir: &std::path::Path, rooms: &str, extra_top: &str) -> String {
    let store = format!(
        "[store]\nkind = \"embedded\"\npath = {}\nseq_block = 16",
        serde_json::to_string(&state_dir.display().to_string()).unwrap()
    );
    config_toml_with_store(&store, rooms, extra_top)
}

/// A whole config with the given `[store]` section.
pub fn config_toml_with_store(store: &str, rooms: &str, extra_top: &str) -> String {
    // Every test fan comes from 127.0.0.1: the join limit is off unless a test sets it.
    let limits = if extra_top.contains("[limits]") {
        ""
    } else {
        "[limits]\njoins_per_min_per_client = 0"
    };
    format!(
        r#"
[listen]
public = "127.0.0.1:0"
admin = "127.0.0.1:0"
[admin]
token = "{ADMIN_TOKEN}"
[signing]
keys = [{{ kid = "t1", secret = "{SECRET}" }}]
{store}
[server]
shutdown_grace_secs = 5
{extra_top}
{limits}
{rooms}
"#,
    )
}

/// A gateway running in this process on ephemeral ports.
pub struct Gateway {
    pub running: Option<Running>,
    pub public: String,
    pub admin: String,
    pub state_dir: Arc<tempfile::TempDir>,
}

impl Gateway {
    pub async fn start(rooms: &str) -> Gateway {
        Self::start_with(rooms, "").await
    }

    pub async fn start_with(rooms: &str, extra_top: &str) -> Gateway {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_in(dir, rooms, extra_top).await
    }

    pub async fn start_in(dir: Arc<tempfile::TempDir>, rooms: &str, extra_top: &str) -> Gateway {
        let text = config_toml(dir.path(), rooms, extra_top);
        let config =
            Config::from_toml_str(&text, &EnvOverrides::default()).expect("test config is valid");
        let running = server::start(config).await.expect("gateway starts");
        Gateway {
            public: format!("http://{}", running.public_addr),
            admin: format!("http://{}", running.admin_addr),
            running: Some(running),
            state_dir: dir,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn admin_client(&self) -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        let (c, url) = (self.admin_client(), format!("{}{path}", self.admin));
        let (status, v) = bearer_json(&c, Method::GET, url, ADMIN_TOKEN, None).await;
        assert!(status.is_success(), "admin GET {path}: {status}");
        v
    }

    pub async fn patch_room(&self, id: &str, body: Value) -> Value {
        let c = self.admin_client();
        let url = format!("{}/admin/rooms/{id}", self.admin);
        let (status, v) = bearer_json(&c, Method::PATCH, url, ADMIN_TOKEN, Some(&body)).await;
        assert!(status.is_success(), "PATCH {id}: {status}");
        v
    }

    /// `POST /_waitroom/join?room=…` as an app: the answer's JSON.
    pub async fn join_json(&self, room: &str) -> Value {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}/_waitroom/join?room={room}", self.public))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.admin_client()
            .get(format!("{}/metrics", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The value of the first metric line of `text` starting with `line_start`
/// (a name with its labels), 0 when there is none.
pub fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Requests sent again and again, each as soon as its answer is in, until
/// [`Load::stop`]: steady load on a checkout.
pub struct Load {
    on: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// One loop per request (each must be clonable: no streamed body).
    pub fn start(requests: Vec<reqwest::RequestBuilder>) -> Load {
        let on = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let tasks = requests
            .into_iter()
            .map(|req| {
                let on = on.clone();
                tokio::spawn(async move {
                    while on.load(Ordering::Relaxed) {
                        let res = req.try_clone().unwrap().send().await.unwrap();
                        assert!(res.status().is_success(), "{}", res.status());
                    }
                })
            })
            .collect();
        Load { on, tasks }
    }

    pub async fn stop(self) {
        self.on.store(false, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

/// Visits `path` until the fan is let through; returns the upstream's echo.
pub async fn admitted(fan: &Fan, path: &str) -> Value {
    eventually(20, "the fan is let in", || async {
        let v: Value = fan.get(path).await.json().await.ok()?;
        (v["upstream"] == true).then_some(v)
    })
    .await
}

/// A browser-like fan: its own cookie jar, no shared connection pool.
pub struct Fan {
    pub client: reqwest::Client,
    pub jar: Arc<Jar>,
    pub base: String,
}

impl Fan {
    pub fn new(base: &str) -> Fan {
        let jar = Arc::new(Jar::default());
        let client = reqwest::Client::builder()
            .no_proxy()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Fan {
            client,
            jar,
            base: base.to_string(),
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
    }

    pub async fn status(&self, room: &str) -> Value {
        let res = self
            .get_json(&format!("/_waitroom/status?room={room}"))
            .await;
        assert_eq!(res.status(), 200, "status for {room}");
        res.json().await.unwrap()
    }

    /// A cookie's value from the jar.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let url: reqwest::Url = self.base.parse().unwrap();
        let header = self.jar.cookies(&url)?;
        header
            .to_str()
            .ok()?
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// Sends a request with `token` as bearer (and `body` as JSON); returns the status and the JSON answer.
pub async fn bearer_json(
    client: &reqwest::Client,
    method: Method,
    url: String,
    token: &str,
    body: Option<&Value>,
) -> (reqwest::StatusCode, Value) {
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let v = res
        .json()
        .await
        .unwrap_or_else(|e| panic!("{status}, not a JSON answer: {e}"));
    (status, v)
}

/// Polls `f` until it returns `Some`, or panics after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway running as its own process (the real binary).
pub struct Proc {
    pub child: Child,
    pub public: String,
    pub admin: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A failed assertion must not leave a gateway running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn start(config: &std::path::Path) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_waitroom"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start waitroom");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        // "waitroom listening public=ADDR admin=ADDR"
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                .to_string()
        };
        Proc {
            public: format!("http://{}", field("public=")),
            admin: format!("http://{}", field("admin=")),
            child,
        }
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("{}{path}", self.admin);
        let (status, v) = bearer_json(&c, method, url, ADMIN_TOKEN, body.as_ref()).await;
        assert!(status.is_success(), "{path}: {status}");
        v
    }
}
