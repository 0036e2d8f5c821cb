//! `waitroom loadgen`: load generators for the benchmark harness
//! (`benches/run.sh`). Plain HTTP/1.1 over loopback; every run is bounded
//! in connections and time. Loopback targets only.
//!
//! - `sse`: opens N event streams spread over several source addresses,
//!   then changes the room through the admin API and measures how long each
//!   stream takes to see the change (and the gateway's RSS and CPU).
//! - `drip`: joins fans, resumes the room, claims every place the moment it
//!   is called, and compares entries per second with the configured rate.
//!   Given several replicas of a shared (Redis) room, it spreads joins and
//!   claims over them: the rate is global, so it must not add up.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0} must be a loopback address")]
    NotLoopback(SocketAddr),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http()
}

fn loopback(addr: SocketAddr) -> Result<SocketAddr, LoadgenError> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(LoadgenError::NotLoopback(addr))
    }
}

async fn call(
    c: &HttpClient,
    method: &str,
    url: String,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value), LoadgenError> {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(b) = bearer {
        req = req.header("authorization", format!("Bearer {b}"));
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let req = req
        .body(body)
        .map_err(|e| LoadgenError::Http(e.to_string()))?;
    let res = c
        .request(req)
        .await
        .map_err(|e| LoadgenError::Http(e.to_string()))?;
    let status = res.status().as_u16();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| LoadgenError::Http(e.to_string()))?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Sequence number inside a queue token (no verification: our own token).
fn seq_of(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["seq"].as_u64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Resident memory and CPU seconds of a process, from /proc.
pub fn proc_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((rss_kb * 1024, (utime + stime) / 100.0))
}

#[derive(Debug, Clone)]
pub struct SseOptions {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub admin_token: String,
    pub room: String,
    pub connections: usize,
    /// Source addresses 127.0.0.2 … 127.0.0.(1 + sources).
    pub sources: u8,
    pub gateway_pid: Option<u32>,
}

/// Opens one stream; reports when the first event (`paused`) is in, then
/// the instant the next one (`position`, after the room resumes) arrives.
async fn stream(
    public: SocketAddr,
    source: IpAddr,
    request: Arc<Vec<u8>>,
    ready: Arc<AtomicUsize>,
    changed_at: Arc<std::sync::Mutex<Vec<Instant>>>,
    deadline: Instant,
) -> Result<(), LoadgenError> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut s: TcpStream = socket.connect(public).await?;
    s.write_all(&request).await?;
    let mut buf = vec![0u8; 4096];
    let mut seen_first = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.into()),
        };
        let chunk = &buf[..n];
        if !seen_first && chunk.windows(13).any(|w| w == b"event: paused") {
            seen_first = true;
            ready.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Keep the connection open until the deadline, as a waiting fan would.
        if seen_first
            && chunk.windows(15).any(|w| w == b"event: position")
            && let Ok(mut v) = changed_at.lock()
        {
            v.push(Instant::now());
        }
    }
}

/// Measures SSE fan-out. Prints one JSON line with the results.
pub async fn sse(opts: SseOptions) -> Result<Value, LoadgenError> {
    loopback(opts.public)?;
    loopback(opts.admin)?;
    let c = client();
    let admin = format!("http://{}", opts.admin);
    let public = format!("http://{}", opts.public);
    let room_url = format!("{admin}/admin/rooms/{}", opts.room);
    let join_url = format!("{public}/_waitroom/join?room={}", opts.room);
    let token = &opts.admin_token;
    // The room holds still while streams open (first event: `paused`); the
    // measured change is the resume (next event: `position`). Fans ahead
    // keep the measured fan waiting at one entry a minute.
    let pause = json!({"paused": true, "admit_rate_per_min": 1});
    expect_ok(call(&c, "PATCH", room_url.clone(), Some(token), Some(pause)).await?)?;
    for _ in 0..20 {
        expect_ok(call(&c, "POST", join_url.clone(), None, None).await?)?;
    }
    let joined = expect_ok(call(&c, "POST", join_url, None, None).await?)?;
    let fan_token = joined["token"].as_str().unwrap_or_default().to_string();
    let request = Arc::new(
        format!(
            "GET /_waitroom/events?room={}&token={fan_token} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n",
            opts.room
        )
        .into_bytes(),
    );
    let before = opts.gateway_pid.and_then(proc_usage);
    let ready = Arc::new(AtomicUsize::new(0));
    let changed_at = Arc::new(std::sync::Mutex::new(Vec::with_capacity(opts.connections)));
    let deadline = Instant::now() + Duration::from_secs(120);
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let open_started = Instant::now();
    for i in 0..opts.connections {
        let source = IpAddr::from([127, 0, 0, 2 + (i % opts.sources.max(1) as usize) as u8]);
        let (req, ready, changed, failures) = (
            request.clone(),
            ready.clone(),
            changed_at.clone(),
            failures.clone(),
        );
        let public = opts.public;
        tasks.spawn(async move {
            if stream(public, source, req, ready, changed, deadline)
                .await
                .is_err()
            {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        });
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Wait until every stream has its first event (or gave up).
    let wait_until = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) + (failures.load(Ordering::Relaxed) as usize)
        < opts.connections
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_secs = open_started.elapsed().as_secs_f64();
    let connected = ready.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_open = opts.gateway_pid.and_then(proc_usage);

    // The state change: resume; every stream must get a `position` event.
    let t0 = Instant::now();
    let resume = json!({"paused": false});
    expect_ok(call(&c, "PATCH", room_url.clone(), Some(token), Some(resume)).await?)?;
    let settle = Instant::now() + Duration::from_secs(30);
    while changed_at.lock().map(|v| v.len()).unwrap_or(0) < connected && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after_change = opts.gateway_pid.and_then(proc_usage);
    let mut delays: Vec<f64> = changed_at
        .lock()
        .map(|v| {
            v.iter()
                .map(|t| t.duration_since(t0).as_secs_f64() * 1000.0)
                .collect()
        })
        .unwrap_or_default();
    delays.sort_by(f64::total_cmp);
    expect_ok(
        call(
            &c,
            "PATCH",
            room_url,
            Some(token),
            Some(json!({"paused": true})),
        )
        .await?,
    )?;
    tasks.abort_all();

    let rss_per_conn = match (before, after_open) {
        (Some((b, _)), Some((a, _))) if connected > 0 => {
            Some(a.saturating_sub(b) as f64 / connected as f64)
        }
        _ => None,
    };
    Ok(json!({
        "connections_requested": opts.connections,
        "connections_open": connected,
        "failures": failures.load(Ordering::Relaxed),
        "open_secs": (open_secs * 100.0).round() / 100.0,
        "delivered": delays.len(),
        "delay_ms_p50": percentile(&delays, 0.5),
        "delay_ms_p99": percentile(&delays, 0.99),
        "delay_ms_max": delays.last().copied(),
        "gateway_rss_bytes": after_open.map(|u| u.0),
        "rss_bytes_per_connection": rss_per_conn,
        "gateway_cpu_secs_fanout": match (after_open, after_change) {
            (Some(a), Some(b)) => Some(b.1 - a.1),
            _ => None,
        },
    }))
}

fn expect_ok((status, body): (u16, Value)) -> Result<Value, LoadgenError> {
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(LoadgenError::Http(format!("status {status}: {body}")))
    }
}

/// A claim answered "not your turn" is tried again this often…
const CLAIM_RETRY: Duration = Duration::from_millis(50);
/// …at most this many times in all (a second: ten ticks).
const CLAIM_ATTEMPTS: u32 = 20;

#[derive(Debug, Clone)]
pub struct DripOptions {
    pub public: SocketAddr,
    /// Further replicas' public listeners: joins and claims go round-robin
    /// over `public` and these.
    pub also_public: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub admin_token: String,
    pub room: String,
    pub rate_per_min: u64,
    pub secs: u64,
}

/// Measures entries per second against the configured rate.
pub async fn drip(opts: DripOptions) -> Result<Value, LoadgenError> {
    loopback(opts.public)?;
    loopback(opts.admin)?;
    for a in &opts.also_public {
        loopback(*a)?;
    }
    let c = client();
    let admin = format!("http://{}", opts.admin);
    let publics: Vec<String> = std::iter::once(opts.public)
        .chain(opts.also_public.iter().copied())
        .map(|a| format!("http://{a}"))
        .collect();
    let public_for = |n: u64| &publics[(n % publics.len() as u64) as usize];
    let room_url = format!("{admin}/admin/rooms/{}", opts.room);
    // A fresh epoch: places left from an earlier run would be served first.
    expect_ok(
        call(
            &c,
            "POST",
            format!("{room_url}/reset"),
            Some(&opts.admin_token),
            None,
        )
        .await?,
    )?;
    call(
        &c,
        "PATCH",
        room_url.clone(),
        Some(&opts.admin_token),
        Some(json!({"paused": true, "admit_rate_per_min": opts.rate_per_min})),
    )
    .await?;
    // Enough fans for the whole run plus a margin.
    let fans = (opts.rate_per_min * opts.secs / 60 + opts.rate_per_min / 30 + 20) as usize;
    let mut by_seq = std::collections::HashMap::with_capacity(fans);
    let mut joins = tokio::task::JoinSet::new();
    for n in 0..fans as u64 {
        let c = c.clone();
        let url = format!("{}/_waitroom/join?room={}", public_for(n), opts.room);
        joins.spawn(async move { call(&c, "POST", url, None, None).await });
        while joins.len() >= 64 {
            if let Some(Ok(Ok((_, v)))) = joins.join_next().await
                && let Some(t) = v["token"].as_str()
                && let Some(seq) = seq_of(t)
            {
                by_seq.insert(seq, t.to_string());
            }
        }
    }
    while let Some(r) = joins.join_next().await {
        if let Ok(Ok((_, v))) = r
            && let Some(t) = v["token"].as_str()
            && let Some(seq) = seq_of(t)
        {
            by_seq.insert(seq, t.to_string());
        }
    }
    let (_, room) = call(&c, "GET", room_url.clone(), Some(&opts.admin_token), None).await?;
    let mut serving = room["serving_counter"].as_u64().unwrap_or(0);
    let entries = Arc::new(AtomicU64::new(0));
    let not_yet = Arc::new(AtomicU64::new(0));
    call(
        &c,
        "PATCH",
        room_url.clone(),
        Some(&opts.admin_token),
        Some(json!({"paused": false})),
    )
    .await?;
    let start = Instant::now();
    let end = start + Duration::from_secs(opts.secs);
    let mut claims = tokio::task::JoinSet::new();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, room) = call(&c, "GET", room_url.clone(), Some(&opts.admin_token), None).await?;
        let now_serving = room["serving_counter"].as_u64().unwrap_or(serving);
        for seq in serving + 1..=now_serving {
            if let Some(token) = by_seq.get(&seq).cloned() {
                let (c, entries, not_yet) = (c.clone(), entries.clone(), not_yet.clone());
                let url = format!("{}/_waitroom/claim?room={}", public_for(seq), opts.room);
                claims.spawn(async move {
                    // Another replica may not have seen the call yet (it
                    // reads the shared state every tick): retry as a fan's
                    // page would, for at most a few ticks.
                    for attempt in 0..CLAIM_ATTEMPTS {
                        match call(&c, "POST", url.clone(), Some(&token), None).await {
                            Ok((200, _)) => {
                                entries.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            Ok((409, v)) if v["error"] == "not_your_turn" => {
                                not_yet.fetch_add(1, Ordering::Relaxed);
                                if attempt + 1 < CLAIM_ATTEMPTS {
                                    tokio::time::sleep(CLAIM_RETRY).await;
                                }
                            }
                            _ => return,
                        }
                    }
                });
            }
        }
        serving = now_serving;
        while claims.try_join_next().is_some() {}
    }
    let elapsed = start.elapsed().as_secs_f64();
    while claims.join_next().await.is_some() {}
    call(
        &c,
        "PATCH",
        room_url,
        Some(&opts.admin_token),
        Some(json!({"paused": true})),
    )
    .await?;
    let got = entries.load(Ordering::Relaxed) as f64;
    let expected = opts.rate_per_min as f64 * elapsed / 60.0;
    Ok(json!({
        "rate_per_min": opts.rate_per_min,
        "replicas": publics.len(),
        "claims_not_yet": not_yet.load(Ordering::Relaxed),
        "secs": (elapsed * 100.0).round() / 100.0,
        "entries": got,
        "expected": (expected * 10.0).round() / 10.0,
        "per_sec": (got / elapsed * 100.0).round() / 100.0,
        "error_pct": ((got - expected) / expected * 1000.0).round() / 10.0,
    }))
}

/// A tiny upstream for benchmarks that need one without nginx: answers
/// `200 ok` to everything, keep-alive.
pub async fn upstream(addr: SocketAddr) -> Result<(), LoadgenError> {
    loopback(addr)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("upstream listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                    Bytes::from_static(b"ok"),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_token_seq() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.99), 4.0);
        assert!(percentile(&[], 0.5).is_nan());
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"seq":42}"#);
        assert_eq!(seq_of(&format!("h.{payload}.s")), Some(42));
        assert_eq!(seq_of("junk"), None);
    }

    #[test]
    fn non_loopback_targets_are_refused() {
        assert!(loopback("10.0.0.1:80".parse().unwrap()).is_err());
        assert!(loopback("127.0.0.9:80".parse().unwrap()).is_ok());
    }
}
