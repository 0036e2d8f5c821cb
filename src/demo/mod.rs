//! `waitroom demo`: the gateway in front of a built-in toy checkout, with
//! simulated fans already in line, so a queue can be watched moving.
//!
//! Everything is embedded: a generated signing key and admin token, state
//! in a fresh temporary directory (with the admission key made there), the
//! checkout on a loopback port, refusing requests the gateway did not admit.

mod checkout;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{Config, ConfigError, EnvOverrides};
use crate::server::{self, ServerError};

pub use checkout::ToyCheckout;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub port: u16,
    pub fans: u64,
    pub rate_per_min: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the toy checkout: {0}")]
    Checkout(std::io::Error),
    #[error("demo configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("{0} (try another --port)")]
    Server(#[from] ServerError),
}

/// The demo's one room; its admissions' audience is its id.
pub const ROOM: &str = "demo";

/// The `iss` of the demo gateway's admissions: its public URL.
pub fn issuer(opts: &DemoOptions) -> String {
    format!("http://127.0.0.1:{}", opts.port)
}

pub fn demo_config(
    opts: &DemoOptions,
    checkout: SocketAddr,
    state_dir: &std::path::Path,
    admin_token: &str,
    secret: &str,
) -> Result<Config, ConfigError> {
    let text = format!(
        r#"
[listen]
public = "127.0.0.1:{public}"
admin = "127.0.0.1:{admin}"
[admin]
token = "{admin_token}"
[signing]
keys = [{{ kid = "demo", secret = "{secret}" }}]
[store]
kind = "embedded"
path = {path}
# Signed with a key made in the state directory; the toy checkout checks it.
[admission]
issuer = {issuer}
# The simulated fans and you all come from 127.0.0.1.
[limits]
joins_per_min_per_client = 0
[[rooms]]
id = "{ROOM}"
title = "Reunion Tour — on sale now"
upstream = "http://{checkout}"
path_prefix = "/"
admit_rate_per_min = {rate}
session_secs = 120
max_active = 50
claim_grace_secs = 60
abandon_after_secs = 60
"#,
        public = opts.port,
        admin = opts.port.wrapping_add(1),
        path = toml_string(&state_dir.display().to_string()),
        issuer = toml_string(&issuer(opts)),
        rate = opts.rate_per_min,
    );
    Config::from_toml_str(&text, &EnvOverrides::default())
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let checkout = ToyCheckout::start().await.map_err(DemoError::Checkout)?;
    let state_dir = std::env::temp_dir().join(format!("waitroom-demo-{}", std::process::id()));
    let admin_token = format!("{:032x}", rand::random::<u128>());
    let secret = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let config = demo_config(&opts, checkout.addr, &state_dir, &admin_token, &secret)?;
    let running = server::start(config).await?;
    let public = running.public_addr;
    let admin = running.admin_addr;
    checkout.trust(public, &issuer(&opts), ROOM);
    println!(
        "\nwaitroom demo\n\
         - toy checkout (the upstream):  http://{checkout}/ (403 without the gateway's admission)\n\
         - open the protected site:       http://{public}/\n\
         - admit rate: {rate}/min; {fans} simulated fans joined first, so you start behind them\n\
         - admin API (token {admin_token}):\n    \
           curl -H 'Authorization: Bearer {admin_token}' http://{admin}/admin/rooms/demo\n    \
           curl -X PATCH -H 'Authorization: Bearer {admin_token}' -H 'Content-Type: application/json' \\\n      \
           -d '{{\"admit_rate_per_min\": 600}}' http://{admin}/admin/rooms/demo\n\
         - state: {state}\n\
         Ctrl-C to stop.\n",
        checkout = checkout.addr,
        rate = opts.rate_per_min,
        fans = opts.fans,
        state = state_dir.display(),
    );
    let fans = tokio::spawn(simulate_fans(public, opts.fans));
    wait_for_ctrl_c().await;
    fans.abort();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(())
}

async fn wait_for_ctrl_c() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Simulated fans: each joins like an app would, watches its status, and
/// claims and visits the checkout when its turn comes.
pub async fn simulate_fans(gateway: SocketAddr, fans: u64) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..fans {
        let client = client.clone();
        tasks.spawn(async move { fan(client, gateway).await });
        // Join in order, so the line order is the spawn order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while tasks.join_next().await.is_some() {}
}

async fn call(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: String,
    bearer: Option<&str>,
) -> Option<serde_json::Value> {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header("accept", "application/json");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = client
        .request(req.body(Full::new(Bytes::new())).ok()?)
        .await
        .ok()?;
    let bytes = res.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&bytes).ok()
}

async fn fan(client: Client<HttpConnector, Full<Bytes>>, gw: SocketAddr) {
    let Some(joined) = call(
        &client,
        "POST",
        format!("http://{gw}/_waitroom/join?room=demo"),
        None,
    )
    .await
    else {
        return;
    };
    let Some(token) = joined["token"].as_str().map(str::to_string) else {
        return;
    };
    loop {
        tokio::time::sleep(Duration::from_millis(2000 + rand::random::<u64>() % 1000)).await;
        let Some(status) = call(
            &client,
            "GET",
            format!("http://{gw}/_waitroom/status?room=demo"),
            Some(&token),
        )
        .await
        else {
            continue;
        };
        match status["state"].as_str() {
            Some("admitted") => break,
            Some("waiting") | Some("paused") => continue,
            _ => return,
        }
    }
    let Some(claimed) = call(
        &client,
        "POST",
        format!("http://{gw}/_waitroom/claim?room=demo"),
        Some(&token),
    )
    .await
    else {
        return;
    };
    let Some(access) = claimed["access_token"].as_str() else {
        return;
    };
    let req = Request::builder()
        .uri(format!("http://{gw}/"))
        .header("x-waitroom-token", access)
        .body(Full::new(Bytes::new()));
    if let Ok(req) = req {
        let _ = client.request(req).await;
    }
}
