//! One real run of the checkout-health controller (`upstream_target_p95_ms`)
//! against a toy checkout with a knee, all on loopback, in one process.
//!
//! ```text
//!  arrivals (ARRIVALS_PER_MIN) ─ join ─► gateway (embedded store) ─ drip at the effective rate
//!     └ poll status ─ admitted ─ claim ─► a session of SESSION_SECS: GET / once a second
//!                                            └─► toy checkout: p95 = 40 ms up to KNEE fans in it,
//!                                                × (fans / KNEE)³ beyond
//! ```
//!
//! The checkout's latency depends only on how many fans are in their
//! session (`n`), so the rate that meets the target is known beforehand:
//! p95(n*) = target gives n*, and since each admitted fan stays
//! `SESSION_SECS`, n = rate × SESSION_SECS / 60 (Little's law), so
//! r* = 60 · n* / SESSION_SECS. Prints a timeline every control interval
//! and how close the controller settled to r*.
//!
//! `cargo bench --bench knee` (about 6 minutes); `-- --secs 120` for less.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use waitroom::config::{Config, EnvOverrides};

const ROOM: &str = "knee";
const ADMIN_TOKEN: &str = "knee-bench-admin-token-0123456789";
/// The checkout's latency below the knee (the top of its spread).
const BASE_MS: f64 = 40.0;
/// Fans in the checkout at the knee.
const KNEE: f64 = 30.0;
/// Each request takes BASE_MS × (its model latency) × a factor drawn
/// uniformly from [JITTER_LOW, 1]: the factor's 95th percentile is
/// JITTER_LOW + 0.95 × (1 − JITTER_LOW).
const JITTER_LOW: f64 = 0.5;
const TARGET_P95_MS: u64 = 100;
const PROMOTER_PER_MIN: u64 = 200;
const ARRIVALS_PER_MIN: u64 = 240;
const SESSION_SECS: u64 = 30;
const CONTROL_INTERVAL_SECS: u64 = 5;
const CONTROL_MIN_SAMPLES: u64 = 50;
const DEFAULT_RUN_SECS: u64 = 330;
/// A waiting fan asks for its status about this often.
const POLL_MS: u64 = 1500;
/// Settled means every rate in the last stretch within this share of r*.
const BAND: f64 = 0.10;

/// The toy checkout's model: p95 latency as a function of fans in it.
fn p95_ms(fans: f64) -> f64 {
    BASE_MS * jitter_p95() * (fans / KNEE).powi(3).max(1.0)
}

fn jitter_p95() -> f64 {
    JITTER_LOW + 0.95 * (1.0 - JITTER_LOW)
}

/// Fans in the checkout at which p95 is the target.
fn fans_at_target() -> f64 {
    KNEE * (TARGET_P95_MS as f64 / (BASE_MS * jitter_p95())).cbrt()
}

/// The admission rate (a minute) that keeps `fans_at_target` in the checkout.
fn rate_at_target() -> f64 {
    60.0 * fans_at_target() / SESSION_SECS as f64
}

/// What the fans share with the checkout and the timeline.
#[derive(Default)]
struct Shared {
    /// Fans in their session now.
    in_checkout: AtomicU64,
    claims: AtomicU64,
    /// Fans who gave up (skipped, refused or failed calls).
    lost: AtomicU64,
    /// Latencies (ms) of session requests, as the fans saw them, since the last sample.
    latencies_ms: Mutex<Vec<f64>>,
    /// Session requests not answered 200.
    errors: AtomicU64,
}

/// Answers each request after the model's latency at the current load.
async fn start_checkout(shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let fans = shared.in_checkout.load(Ordering::Relaxed) as f64;
                    async move {
                        let spread = JITTER_LOW + (1.0 - JITTER_LOW) * rand::random::<f64>();
                        let ms = BASE_MS * (fans / KNEE).powi(3).max(1.0) * spread;
                        tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn gateway_config(checkout: SocketAddr, state_dir: &std::path::Path) -> Config {
    let text = format!(
        r#"
[listen]
public = "127.0.0.1:0"
admin = "127.0.0.1:0"
[admin]
token = "{ADMIN_TOKEN}"
[signing]
keys = [{{ kid = "k1", secret = "knee-bench-secret-knee-bench-secret-012345" }}]
[store]
kind = "embedded"
path = {path}
# Every fan comes from 127.0.0.1.
[limits]
joins_per_min_per_client = 0
[[rooms]]
id = "{ROOM}"
upstream = "http://{checkout}"
path_prefix = "/"
admit_rate_per_min = {PROMOTER_PER_MIN}
upstream_target_p95_ms = {TARGET_P95_MS}
control_interval_secs = {CONTROL_INTERVAL_SECS}
control_min_samples = {CONTROL_MIN_SAMPLES}
"#,
        path = serde_json::to_string(&state_dir.display().to_string()).expect("a string"),
    );
    Config::from_toml_str(&text, &EnvOverrides::default()).expect("the knee config is valid")
}

/// A JSON call; `None` on any failure (the fan gives up or retries).
async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    bearer: &str,
) -> Option<Value> {
    let mut req = client.request(method, url);
    if !bearer.is_empty() {
        req = req.bearer_auth(bearer);
    }
    let res = req.send().await.ok()?;
    if !res.status().is_success() {
        return None;
    }
    res.json().await.ok()
}

/// One fan: join, wait for the turn, claim, then a request a second for
/// SESSION_SECS.
async fn fan(client: reqwest::Client, public: SocketAddr, shared: Arc<Shared>) {
    let base = format!("http://{public}/_waitroom");
    let joined = call(
        &client,
        reqwest::Method::POST,
        &format!("{base}/join?room={ROOM}"),
        "",
    )
    .await;
    let Some(token) = joined.and_then(|j| j["token"].as_str().map(str::to_string)) else {
        shared.lost.fetch_add(1, Ordering::Relaxed);
        return;
    };
    loop {
        let pause = POLL_MS / 2 + rand::random::<u64>() % POLL_MS;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let status = call(
            &client,
            reqwest::Method::GET,
            &format!("{base}/status?room={ROOM}"),
            &token,
        )
        .await;
        match status.as_ref().and_then(|s| s["state"].as_str()) {
            Some("admitted") => break,
            Some("waiting") | Some("paused") | None => continue,
            Some(_) => {
                shared.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let claimed = call(
        &client,
        reqwest::Method::POST,
        &format!("{base}/claim?room={ROOM}"),
        &token,
    )
    .await;
    let Some(access) = claimed.and_then(|c| c["access_token"].as_str().map(str::to_string)) else {
        shared.lost.fetch_add(1, Ordering::Relaxed);
        return;
    };
    shared.claims.fetch_add(1, Ordering::Relaxed);
    shared.in_checkout.fetch_add(1, Ordering::Relaxed);
    let end = tokio::time::Instant::now() + Duration::from_secs(SESSION_SECS);
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every_second.tick().await;
        if tokio::time::Instant::now() >= end {
            break;
        }
        let sent = Instant::now();
        let res = client
            .get(format!("http://{public}/"))
            .header("x-waitroom-token", &access)
            .send()
            .await;
        let ok = match res {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            let ms = sent.elapsed().as_secs_f64() * 1000.0;
            shared
                .latencies_ms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(ms);
        } else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    shared.in_checkout.fetch_sub(1, Ordering::Relaxed);
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

/// One timeline row.
struct Sample {
    secs: f64,
    rate: f64,
    reason: String,
    p95_ms: Option<f64>,
    requests: usize,
    in_checkout: u64,
    claims_per_min: f64,
    queue: u64,
}

fn run_secs() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_RUN_SECS)
}

#[tokio::main]
async fn main() {
    // `cargo test --benches` runs bench targets without `--bench`: a real
    // run takes minutes, so only `cargo bench` starts one.
    if !std::env::args().any(|a| a == "--bench") {
        println!("knee: a timed run; start it with `cargo bench --bench knee`");
        return;
    }
    let secs = run_secs();
    let shared = Arc::new(Shared::default());
    let checkout = start_checkout(shared.clone())
        .await
        .expect("checkout binds");
    let state_dir = tempfile::tempdir().expect("a temporary directory");
    let running = waitroom::server::start(gateway_config(checkout, state_dir.path()))
        .await
        .expect("the gateway starts");
    let (public, admin) = (running.public_addr, running.admin_addr);
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .no_proxy()
        .user_agent("waitroom-knee/1")
        .pool_max_idle_per_host(2048)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");

    let (n_star, r_star) = (fans_at_target(), rate_at_target());
    println!(
        "knee: checkout p95 {BASE_MS:.0}×{:.3} ms up to {KNEE:.0} fans in it, ×(fans/{KNEE:.0})³ beyond; target {TARGET_P95_MS} ms at n* = {n_star:.1} fans",
        jitter_p95()
    );
    println!(
        "sessions {SESSION_SECS} s, a request a second; r* = 60·n*/S = {r_star:.1}/min; promoter {PROMOTER_PER_MIN}/min, arrivals {ARRIVALS_PER_MIN}/min; control every {CONTROL_INTERVAL_SECS} s (min {CONTROL_MIN_SAMPLES} samples); {secs} s"
    );

    let arrivals = {
        let (client, shared) = (client.clone(), shared.clone());
        tokio::spawn(async move {
            let mut fans = tokio::task::JoinSet::new();
            let gap = Duration::from_secs_f64(60.0 / ARRIVALS_PER_MIN as f64);
            let mut every = tokio::time::interval(gap);
            loop {
                every.tick().await;
                fans.spawn(fan(client.clone(), public, shared.clone()));
                while fans.try_join_next().is_some() {}
            }
        })
    };

    // Samples half an interval after the controller's steps (they fall
    // on whole intervals from the gateway's start).
    let interval = Duration::from_secs(CONTROL_INTERVAL_SECS);
    tokio::time::sleep(interval / 2).await;
    let mut ticks = tokio::time::interval(interval);
    let mut samples = Vec::new();
    let mut claims_before = 0;
    println!();
    println!(
        "|    t s | rate/min | reason         | fan-seen p95 ms (requests) | model p95 ms | fans in checkout | claims/min | waiting |"
    );
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    while started.elapsed() < Duration::from_secs(secs) {
        ticks.tick().await;
        let room = call(
            &client,
            reqwest::Method::GET,
            &format!("http://{admin}/admin/rooms/{ROOM}"),
            ADMIN_TOKEN,
        )
        .await
        .unwrap_or(Value::Null);
        let mut window = std::mem::take(
            &mut *shared
                .latencies_ms
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        window.sort_by(f64::total_cmp);
        let claims = shared.claims.load(Ordering::Relaxed);
        let sample = Sample {
            secs: started.elapsed().as_secs_f64(),
            rate: room["effective_rate_per_min"].as_f64().unwrap_or(f64::NAN),
            reason: room["rate_reason"].as_str().unwrap_or("?").to_string(),
            p95_ms: percentile(&window, 0.95),
            requests: window.len(),
            in_checkout: shared.in_checkout.load(Ordering::Relaxed),
            claims_per_min: (claims - claims_before) as f64 * 60.0 / interval.as_secs_f64(),
            queue: room["queue_length"].as_u64().unwrap_or(0),
        };
        claims_before = claims;
        println!(
            "| {:6.1} | {:6.0} | {:14} | {:>8} ({:4}) | {:6.0} | {:4} | {:5.0} | {:5} |",
            sample.secs,
            sample.rate,
            sample.reason,
            sample.p95_ms.map_or("-".to_string(), |p| format!("{p:.0}")),
            sample.requests,
            p95_ms(sample.in_checkout as f64),
            sample.in_checkout,
            sample.claims_per_min,
            sample.queue,
        );
        samples.push(sample);
    }
    arrivals.abort();
    summarize(&samples, r_star, &shared);
    running.shutdown().await;
}

/// Settled rate, swing and settle time, over the last third of the run.
fn summarize(samples: &[Sample], r_star: f64, shared: &Shared) {
    let tail = &samples[samples.len() - samples.len() / 3..];
    if tail.is_empty() {
        println!("\nknee: too short a run to summarize");
        return;
    }
    let rates: Vec<f64> = tail.iter().map(|s| s.rate).collect();
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let (min, max) = rates
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let claims = tail.iter().map(|s| s.claims_per_min).sum::<f64>() / tail.len() as f64;
    let within = |r: f64| (r - r_star).abs() <= BAND * r_star;
    // The first sample from which every rate stays within the band.
    let settled_from = samples
        .iter()
        .rposition(|s| !within(s.rate))
        .map_or(Some(0), |i| (i + 1 < samples.len()).then_some(i + 1))
        .map(|i| samples[i].secs);
    let over = tail
        .iter()
        .filter(|s| s.p95_ms.is_some_and(|p| p > TARGET_P95_MS as f64))
        .count();
    println!();
    println!(
        "knee: last {:.0} s: effective rate mean {mean:.1}/min = {:.2}× r* ({r_star:.1}), min {min:.0}, max {max:.0}, swing (max−min)/max {:.0}%",
        tail.last().map_or(0.0, |s| s.secs) - tail[0].secs + CONTROL_INTERVAL_SECS as f64,
        mean / r_star,
        100.0 * (max - min) / max,
    );
    println!(
        "knee: claims {claims:.1}/min over the same stretch; p95 over target in {over} of {} intervals; settled within ±{:.0}% of r*: {}",
        tail.len(),
        BAND * 100.0,
        settled_from.map_or("no".to_string(), |t| format!("from t = {t:.0} s")),
    );
    println!(
        "knee: fans lost {}, session requests failed {}",
        shared.lost.load(Ordering::Relaxed),
        shared.errors.load(Ordering::Relaxed)
    );
}
