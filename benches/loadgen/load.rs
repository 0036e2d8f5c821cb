//! The load generators themselves for the benchmark harness
//! (`benches/run.sh`). Plain HTTP/1.1 over loopback; every run is bounded
//! in connections and time. Loopback targets only.
//!
//! - `sse`: opens N event streams spread over several source addresses,
//!   then changes the room through the admin API and measures how long each
//!   stream takes to see the change (and the gateway's RSS and CPU).
//!   With `--moving-secs`, each stream is a fan of its own (joined on its
//!   connection), and after the change the line moves at the given rate
//!   for that long: it counts the messages every stream gets and the
//!   gateway's CPU meanwhile, the steady cost of a queue on the move.
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
    /// 503 with `Retry-After` (seconds): try again then, as a browser would.
    #[error("HTTP: 503, retry after {0} s")]
    Unavailable(u64),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http()
}

/// At least one listener, every one on loopback.
fn loopback_all(addrs: &[SocketAddr]) -> Result<SocketAddr, LoadgenError> {
    for a in addrs {
        loopback(*a)?;
    }
    addrs
        .first()
        .copied()
        .ok_or_else(|| LoadgenError::Http("no public listener given".into()))
}

/// The i-th stream's source address: 127.0.0.2 … 127.0.0.(1 + sources),
/// at most 250 of them.
fn source_of(i: usize, sources: u8) -> IpAddr {
    let n = usize::from(sources.clamp(1, 250));
    IpAddr::from([127, 0, 0, 2 + (i % n) as u8])
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
    /// The gateway's public listener; several replicas of a shared (Redis)
    /// room share the streams out between them.
    pub publics: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub admin_token: String,
    pub room: String,
    pub connections: usize,
    /// Source addresses 127.0.0.2 … 127.0.0.(1 + sources).
    pub sources: u8,
    /// The gateways' pids, to read their RSS and CPU (summed).
    pub gateway_pids: Vec<u32>,
    /// Streams held by one child process. A process can hold only as many
    /// streams as its open-file limit allows, so N streams are opened by
    /// ⌈N / per_process⌉ children of this command (`loadgen sse-streams`).
    pub per_process: usize,
    /// After the change, let the line move at this rate for a while.
    pub moving: Option<Moving>,
}

/// The line on the move: each stream its own fan, a rate, a window.
#[derive(Debug, Clone, Copy)]
pub struct Moving {
    pub rate_per_min: u64,
    pub secs: u64,
}

/// What one `loadgen sse-streams` child is asked to do.
#[derive(Debug, Clone)]
pub struct StreamsOptions {
    pub publics: Vec<SocketAddr>,
    pub room: String,
    /// The queue token every stream presents (one waiting fan, watched N
    /// times); `None`: each stream joins first and is a fan of its own, and
    /// the child reports only when asked (the line is on the move).
    pub token: Option<String>,
    pub count: usize,
    pub sources: u8,
    /// Spreads the children's streams over replicas and source addresses.
    pub offset: usize,
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What one child's streams share.
struct Tally {
    ready: AtomicUsize,
    /// SSE messages (events and comments) read after the first event.
    messages: AtomicU64,
    /// Joins answered 503 and tried again.
    join_retries: AtomicU64,
    changed_at: std::sync::Mutex<Vec<u64>>,
}

/// Tries per join, the first included, while the gateway answers 503.
const JOIN_TRIES: u32 = 5;

/// Joins the room on `s` (a keep-alive connection) and returns the new
/// fan's queue token. The answer is read to its end (by `Content-Length`,
/// or to the last chunk), so the connection can carry the next request.
async fn join_on(s: &mut TcpStream, room: &str) -> Result<String, LoadgenError> {
    let req = format!(
        "POST /_waitroom/join?room={room} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut got = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let body = loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(LoadgenError::Http("join: closed before the answer".into()));
        }
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        if head.starts_with("http/1.1 503") {
            let after = head
                .lines()
                .find_map(|l| l.strip_prefix("retry-after:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(1);
            return Err(LoadgenError::Unavailable(after));
        }
        if !head.starts_with("http/1.1 200") {
            let status = head.lines().next().unwrap_or_default().to_string();
            return Err(LoadgenError::Http(format!("join: {status}")));
        }
        let rest = &got[end + 4..];
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        match length {
            Some(length) if rest.len() >= length => break &rest[..length],
            Some(_) => {}
            // Chunked: the JSON document is the first chunk.
            None if rest.ends_with(b"\r\n0\r\n\r\n") => break rest,
            None => {}
        }
    };
    let text = String::from_utf8_lossy(body);
    text.split_once("\"token\":\"")
        .and_then(|(_, t)| t.split_once('"'))
        .map(|(token, _)| token.to_string())
        .ok_or_else(|| LoadgenError::Http("join: no token in the answer".into()))
}

/// Connects to `to` from the loopback address `source`.
///
/// The source port is left to `connect`, which picks one unique for the
/// whole 4-tuple. A plain `bind(source:0)` must pick a port free on
/// `source` for every destination, scanning the port range past every
/// socket in TIME_WAIT: with the tens of thousands a previous run leaves
/// on the same address, each such bind took 3.5 ms here instead of 5 µs,
/// and 9,000 of them stalled a load-generator process for half a minute.
async fn connect_from(source: IpAddr, to: SocketAddr) -> Result<TcpStream, LoadgenError> {
    let socket = TcpSocket::new_v4()?;
    #[cfg(target_os = "linux")]
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    )
    .map_err(std::io::Error::from)?;
    socket.bind(SocketAddr::new(source, 0))?;
    Ok(socket.connect(to).await?)
}

/// Opens one stream (joining first when `join` names the room); counts it
/// ready when the first event (`paused`) is in, then records the
/// wall-clock instant the next one (`position`, after the room resumes)
/// arrives, and counts every message after the first. Wall-clock, because
/// the instant of the change is taken in the parent process. The stream
/// stays open, as a waiting fan's would, until the process ends.
async fn stream(
    public: SocketAddr,
    source: IpAddr,
    request: Arc<Vec<u8>>,
    join: Option<&str>,
    tally: Arc<Tally>,
) -> Result<(), LoadgenError> {
    let connect = || connect_from(source, public);
    let mut s: TcpStream = connect().await?;
    match join {
        Some(room) => {
            // A join answered 503 is tried again after its Retry-After, on
            // a new connection, as the waiting page does.
            let mut tries = 1;
            let token = loop {
                match join_on(&mut s, room).await {
                    Err(LoadgenError::Unavailable(secs)) if tries < JOIN_TRIES => {
                        tries += 1;
                        tally.join_retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(secs.clamp(1, 10))).await;
                        // The old connection closes first: a child holds
                        // thousands of streams near its file limit.
                        drop(s);
                        s = connect().await?;
                    }
                    other => break other?,
                }
            };
            // The request ends in `token=`: this fan's token completes it.
            let mut req = request.to_vec();
            let at = req
                .windows(2)
                .position(|w| w == b" H")
                .ok_or_else(|| LoadgenError::Http("bad request template".into()))?;
            req.splice(at..at, token.bytes());
            s.write_all(&req).await?;
        }
        None => s.write_all(&request).await?,
    }
    let mut buf = vec![0u8; 2048];
    let (mut seen_first, mut seen_change) = (false, false);
    let mut ended_in_newline = false;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return if seen_first {
                Ok(())
            } else {
                Err(LoadgenError::Http("closed before its first event".into()))
            };
        }
        let chunk = &buf[..n];
        if !seen_first && chunk.starts_with(b"HTTP/") && !chunk.starts_with(b"HTTP/1.1 200") {
            let status = chunk.split(|&b| b == b'\r').next().unwrap_or_default();
            return Err(LoadgenError::Http(
                String::from_utf8_lossy(status).into_owned(),
            ));
        }
        if !seen_first && chunk.windows(13).any(|w| w == b"event: paused") {
            seen_first = true;
            ended_in_newline = chunk.ends_with(b"\n");
            tally.ready.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if seen_first {
            // A message ends in a blank line, which may straddle two reads.
            let straddles = ended_in_newline && chunk.starts_with(b"\n");
            let ends = chunk.windows(2).filter(|w| w == b"\n\n").count() + usize::from(straddles);
            tally.messages.fetch_add(ends as u64, Ordering::Relaxed);
            ended_in_newline = chunk.ends_with(b"\n");
        }
        // Only the first change counts: the drip moves the queue on, and
        // a second event a coalescing interval later is not a delay. (A fan
        // at the very front may hear `admitted` first.)
        if seen_first
            && !seen_change
            && chunk
                .windows(15)
                .any(|w| w == b"event: position" || w == b"event: admitted")
            && let Ok(mut v) = tally.changed_at.lock()
        {
            seen_change = true;
            v.push(unix_nanos());
        }
    }
}

/// The child side of [`sse`]: opens `count` streams, prints
/// `{"ready":…,"failures":…}` once each has its first event (or failed),
/// then, once every ready stream has seen the change or a `report` line
/// arrives on stdin, prints `{"at_ns":[…],…}`; it exits (closing its
/// streams) when stdin closes.
pub async fn streams(opts: StreamsOptions) -> Result<Value, LoadgenError> {
    use tokio::io::AsyncBufReadExt;
    loopback_all(&opts.publics)?;
    let request = Arc::new(
        format!(
            "GET /_waitroom/events?room={}&token={} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n",
            opts.room,
            opts.token.as_deref().unwrap_or_default()
        )
        .into_bytes(),
    );
    let join: Option<Arc<str>> = opts.token.is_none().then(|| opts.room.as_str().into());
    let tally = Arc::new(Tally {
        ready: AtomicUsize::new(0),
        messages: AtomicU64::new(0),
        join_retries: AtomicU64::new(0),
        changed_at: std::sync::Mutex::new(Vec::with_capacity(opts.count)),
    });
    let failures = Arc::new(AtomicU64::new(0));
    // Why streams failed, and how many for each reason.
    let errors = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        u64,
    >::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for j in 0..opts.count {
        let i = opts.offset + j;
        let public = opts.publics[i % opts.publics.len()];
        let source = source_of(i, opts.sources);
        let (req, join, tally, failures, errors) = (
            request.clone(),
            join.clone(),
            tally.clone(),
            failures.clone(),
            errors.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = stream(public, source, req, join.as_deref(), tally).await {
                failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut errors) = errors.lock() {
                    *errors.entry(e.to_string()).or_default() += 1;
                }
            }
        });
        if j % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let ready = &tally.ready;
    let settled = |ready: &AtomicUsize, failures: &AtomicU64| {
        ready.load(Ordering::Relaxed) + failures.load(Ordering::Relaxed) as usize
    };
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let wait_until = Instant::now() + Duration::from_secs(120);
    while settled(ready, &failures) < opts.count && Instant::now() < wait_until {
        tokio::select! {
            // The parent is gone: so is the measurement.
            l = stdin.next_line() => if let Ok(None) | Err(_) = l {
                tasks.abort_all();
                return Ok(Value::Null);
            },
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let open = ready.load(Ordering::Relaxed);
    let why = errors.lock().map(|e| json!(*e)).unwrap_or(Value::Null);
    let line = json!({
        "ready": open,
        "failures": failures.load(Ordering::Relaxed),
        "errors": why,
        "join_retries": tally.join_retries.load(Ordering::Relaxed),
    });
    let mut out = tokio::io::stdout();
    out.write_all(format!("{line}\n").as_bytes()).await?;
    out.flush().await?;

    let delivered = || tally.changed_at.lock().map(|v| v.len()).unwrap_or(0);
    let mut stdin_open = true;
    // On the move, the parent says when the window is over.
    let until_told = join.is_some();
    while (until_told || delivered() < open) && stdin_open {
        tokio::select! {
            l = stdin.next_line() => match l {
                Ok(Some(l)) if l.trim() == "report" => break,
                Ok(Some(l)) if l.trim() == "mark" => {
                    let line = json!({"messages": tally.messages.load(Ordering::Relaxed)});
                    out.write_all(format!("{line}\n").as_bytes()).await?;
                    out.flush().await?;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => stdin_open = false,
            },
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let at_ns = tally
        .changed_at
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    let why = errors.lock().map(|e| json!(*e)).unwrap_or(Value::Null);
    let line = json!({
        "ready": open,
        "failures": failures.load(Ordering::Relaxed),
        "errors": why,
        "at_ns": at_ns,
        "messages": tally.messages.load(Ordering::Relaxed),
    });
    out.write_all(format!("{line}\n").as_bytes()).await?;
    out.flush().await?;
    // Hold the streams open (the other children may still be measuring).
    while stdin_open {
        match stdin.next_line().await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => stdin_open = false,
        }
    }
    tasks.abort_all();
    Ok(Value::Null)
}

/// One `loadgen sse-streams` child process and its line-by-line pipe.
struct Child {
    /// Streams it was asked to open.
    count: usize,
    process: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stdin: Option<tokio::process::ChildStdin>,
}

impl Child {
    fn spawn(opts: &StreamsOptions) -> Result<Child, LoadgenError> {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.args(["sse-streams", "--room", &opts.room])
            .args(["--count", &opts.count.to_string()])
            .args(["--sources", &opts.sources.to_string()])
            .args(["--offset", &opts.offset.to_string()]);
        for p in &opts.publics {
            cmd.args(["--public", &p.to_string()]);
        }
        if let Some(token) = &opts.token {
            cmd.args(["--token", token]);
        }
        let mut process = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = process
            .stdout
            .take()
            .ok_or_else(|| LoadgenError::Http("child has no stdout".into()))?;
        Ok(Child {
            count: opts.count,
            stdin: process.stdin.take(),
            lines: tokio::io::BufReader::new(stdout).lines(),
            process,
        })
    }

    /// The child's next JSON line; a child that ended without one counts
    /// all its streams as failed, with its exit status as the reason.
    async fn next(&mut self) -> Value {
        while let Ok(Some(line)) = self.lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                return v;
            }
        }
        let status = match tokio::time::timeout(Duration::from_secs(5), self.process.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => "no answer".to_string(),
        };
        let why = format!("load-generator process ended: {status}");
        json!({"ready": 0, "failures": self.count, "errors": {why: self.count}})
    }

    async fn say(&mut self, what: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(format!("{what}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }
}

/// Summed resident memory and CPU seconds of several processes.
fn usage_of(pids: &[u32]) -> Option<(u64, f64)> {
    pids.iter()
        .map(|&p| proc_usage(p))
        .try_fold((0, 0.0), |(r, c), u| u.map(|(ur, uc)| (r + ur, c + uc)))
        .filter(|_| !pids.is_empty())
}

/// How long the resume's own fan-out (and the coalescing second after it)
/// is left out of a moving window.
const MOVING_SETTLE: Duration = Duration::from_secs(3);

/// Measures SSE fan-out. Returns one JSON object with the results.
pub async fn sse(opts: SseOptions) -> Result<Value, LoadgenError> {
    let first_public = loopback_all(&opts.publics)?;
    loopback(opts.admin)?;
    let c = client();
    let admin = format!("http://{}", opts.admin);
    let room_url = format!("{admin}/admin/rooms/{}", opts.room);
    let join_url = format!("http://{first_public}/_waitroom/join?room={}", opts.room);
    let token = &opts.admin_token;
    // The room holds still while streams open (first event: `paused`); the
    // measured change is the resume (next event: `position`). Fans ahead
    // keep the measured fan waiting at one entry a minute. On the move,
    // each stream is a fan of its own, from the front of a fresh line.
    let rate = opts.moving.map_or(1, |m| m.rate_per_min);
    let pause = json!({"paused": true, "admit_rate_per_min": rate});
    let fan_token = match opts.moving {
        Some(_) => {
            let reset = format!("{room_url}/reset");
            expect_ok(call(&c, "POST", reset, Some(token), None).await?)?;
            expect_ok(call(&c, "PATCH", room_url.clone(), Some(token), Some(pause)).await?)?;
            None
        }
        None => {
            expect_ok(call(&c, "PATCH", room_url.clone(), Some(token), Some(pause)).await?)?;
            for _ in 0..20 {
                expect_ok(call(&c, "POST", join_url.clone(), None, None).await?)?;
            }
            let joined = expect_ok(call(&c, "POST", join_url, None, None).await?)?;
            Some(joined["token"].as_str().unwrap_or_default().to_string())
        }
    };
    // Replicas of a shared room learn of the pause within a tick.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = usage_of(&opts.gateway_pids);
    let open_started = Instant::now();
    let per = opts.per_process.max(1);
    let mut children = Vec::new();
    let mut offset = 0;
    while offset < opts.connections {
        let count = per.min(opts.connections - offset);
        children.push(Child::spawn(&StreamsOptions {
            publics: opts.publics.clone(),
            room: opts.room.clone(),
            token: fan_token.clone(),
            count,
            sources: opts.sources,
            offset,
        })?);
        offset += count;
    }
    let (mut connected, mut join_retries) = (0, 0);
    for child in &mut children {
        let ready = child.next().await;
        connected += ready["ready"].as_u64().unwrap_or(0) as usize;
        join_retries += ready["join_retries"].as_u64().unwrap_or(0);
    }
    let open_secs = open_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_open = usage_of(&opts.gateway_pids);
    // The load generator shares the machine: its CPU is what the gateway
    // could not have.
    let child_pids: Vec<u32> = children.iter().filter_map(|c| c.process.id()).collect();
    let loadgen_after_open = usage_of(&child_pids);

    // The state change: resume; every stream must get a `position` event.
    let t0 = unix_nanos();
    let resume = json!({"paused": false});
    expect_ok(call(&c, "PATCH", room_url.clone(), Some(token), Some(resume)).await?)?;
    let mut delays: Vec<f64> = Vec::with_capacity(connected);
    // Failures as the children's last reports count them (streams may also
    // fail after they opened).
    let mut failures = 0;
    let mut errors = serde_json::Map::new();
    let (mut messages, mut marked) = (0u64, 0u64);
    // On the move: the window starts once the resume's own fan-out is
    // over, and counts every message and CPU second from there.
    let mut moving_from = None;
    if let Some(m) = opts.moving {
        tokio::time::sleep(MOVING_SETTLE).await;
        for child in &mut children {
            child.say("mark").await;
        }
        for child in &mut children {
            marked += child.next().await["messages"].as_u64().unwrap_or(0);
        }
        moving_from = usage_of(&opts.gateway_pids);
        tokio::time::sleep(Duration::from_secs(m.secs)).await;
        for child in &mut children {
            child.say("report").await;
        }
    }
    // On the move, the window ends now; else once every stream saw the change.
    let after_moving = opts.moving.map(|_| usage_of(&opts.gateway_pids));
    let settle = tokio::time::Instant::now() + Duration::from_secs(30);
    for child in &mut children {
        let report = match tokio::time::timeout_at(settle, child.next()).await {
            Ok(v) => v,
            Err(_) => {
                // Some streams never saw the change: take what arrived.
                child.say("report").await;
                child.next().await
            }
        };
        delays.extend(
            report["at_ns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .map(|ns| ns.saturating_sub(t0) as f64 / 1e6),
        );
        failures += report["failures"].as_u64().unwrap_or(0);
        messages += report["messages"].as_u64().unwrap_or(0);
        for (why, n) in report["errors"].as_object().into_iter().flatten() {
            let sum =
                errors.get(why).and_then(Value::as_u64).unwrap_or(0) + n.as_u64().unwrap_or(0);
            errors.insert(why.clone(), json!(sum));
        }
    }
    let after_change = after_moving.unwrap_or_else(|| usage_of(&opts.gateway_pids));
    let loadgen_after_change = usage_of(&child_pids);
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
    for child in &mut children {
        child.stdin = None;
    }
    for child in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(10), child.process.wait()).await;
    }

    let rss_per_conn = match (before, after_open) {
        (Some((b, _)), Some((a, _))) if connected > 0 => {
            Some(a.saturating_sub(b) as f64 / connected as f64)
        }
        _ => None,
    };
    let cpu_after_open = match (after_open, after_change) {
        (Some(a), Some(b)) => Some(b.1 - a.1),
        _ => None,
    };
    let loadgen_cpu = match (loadgen_after_open, loadgen_after_change) {
        (Some(a), Some(b)) if opts.moving.is_none() => Some(b.1 - a.1),
        _ => None,
    };
    let cpu_moving = match (moving_from, after_change) {
        (Some(a), Some(b)) => Some(b.1 - a.1),
        _ => None,
    };
    let messages = messages.saturating_sub(marked);
    let moving = opts.moving.map(|m| {
        json!({
            "rate_per_min": m.rate_per_min,
            "secs": m.secs,
            "messages": messages,
            "messages_per_sec": messages as f64 / m.secs.max(1) as f64,
            "join_retries": join_retries,
            "gateway_cpu_cores": cpu_moving.map(|c| c / m.secs.max(1) as f64),
        })
    });
    Ok(json!({
        "connections_requested": opts.connections,
        "connections_open": connected,
        "failures": failures,
        "errors": errors,
        "replicas": opts.publics.len(),
        "processes": children.len(),
        "open_secs": (open_secs * 100.0).round() / 100.0,
        "delivered": delays.len(),
        "delay_ms_p50": percentile(&delays, 0.5),
        "delay_ms_p99": percentile(&delays, 0.99),
        "delay_ms_max": delays.last().copied(),
        "gateway_rss_bytes": after_open.map(|u| u.0),
        "rss_bytes_per_connection": rss_per_conn,
        "gateway_cpu_secs_fanout": cpu_after_open,
        "loadgen_cpu_secs_fanout": loadgen_cpu,
        "moving": moving,
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

    #[tokio::test]
    async fn connections_come_from_the_chosen_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        for source in [source_of(1, 8), source_of(6, 8)] {
            let client = connect_from(source, to).await.unwrap();
            let (_, peer) = listener.accept().await.unwrap();
            assert_eq!(peer.ip(), source);
            assert_ne!(peer.port(), 0);
            // The port was left to `connect` (no scan past TIME_WAIT at bind).
            #[cfg(target_os = "linux")]
            assert!(
                nix::sys::socket::getsockopt(
                    &client,
                    nix::sys::socket::sockopt::IpBindAddressNoPort
                )
                .unwrap()
            );
        }
    }

    #[test]
    fn non_loopback_targets_are_refused() {
        assert!(loopback("10.0.0.1:80".parse().unwrap()).is_err());
        assert!(loopback("127.0.0.9:80".parse().unwrap()).is_ok());
    }
}
