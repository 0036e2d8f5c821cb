//! Real headless Chromium through chromedriver (the setup of
//! `tests/browser.rs`), and a second web server on another origin for
//! pages that play another site. Include with
//! `#[path = "common/chromium.rs"] mod chromium;` next to `mod common;`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::common::eventually;

pub struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

/// Kills chromedriver and the Chromium it started: they share a process
/// group of their own, so a test that fails before closing its session
/// (killing only chromedriver) leaves no browser running behind it.
impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn start_browser() -> (Driver, Client) {
    let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromedriver not found: install Debian's chromium and chromium-driver (scripts/test.sh does)");
    let port = free_port();
    let child = Command::new(chromedriver)
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: profile,
    };
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--disable-quic", "--disable-sync", "--window-size=430,900",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ]
        }),
    );
    let client = eventually(20, "chromedriver accepts a session", || {
        let caps = caps.clone();
        let url = driver.url.clone();
        async move {
            ClientBuilder::rustls()
                .ok()?
                .capabilities(caps)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await;
    (driver, client)
}

/// The text of the element with this id, once it exists.
pub async fn text_of(c: &Client, id: &str) -> String {
    eventually(10, &format!("#{id} on the page"), || async {
        c.find(Locator::Id(id)).await.ok()?.text().await.ok()
    })
    .await
}

/// Serves `html` for every request on `addr` (e.g. `127.0.0.2:0`: another
/// site than the gateway's `127.0.0.1`); returns the base URL.
pub async fn serve_page(addr: SocketAddr, html: String) -> String {
    let listener = TcpListener::bind(addr).await.expect("bind the page server");
    let addr = listener.local_addr().unwrap();
    let html = Bytes::from(html);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let html = html.clone();
                    async move {
                        let mut res = Response::new(Full::new(html));
                        res.headers_mut()
                            .insert("content-type", "text/html".parse().unwrap());
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// A page that posts an empty form to `action` as soon as it loads.
pub fn auto_post_page(action: &str) -> String {
    format!(
        "<!doctype html><html><body><form id=f method=POST action=\"{action}\"></form>\
         <script>document.getElementById('f').submit()</script></body></html>"
    )
}
