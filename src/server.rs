//! Listeners, connection handling and graceful shutdown.
//!
//! Both listeners speak HTTP/1.1 and HTTP/2, each connection served by
//! hyper's builder for its protocol; the public one speaks TLS only when
//! `[tls]` is configured (ALPN `h2`, `http/1.1`). Per connection, in order:
//!
//! ```text
//!   accept ─→ over server.max_connections? close at once (counted)
//!          ─→ TLS handshake (within header_read_timeout), ALPN picks the protocol;
//!             or plaintext: the HTTP/2 preface (complete within
//!             header_read_timeout of its first byte), else HTTP/1
//!          ─→ request heads within header_read_timeout (see `Activity`), heads ≤
//!             max_header_bytes (HTTP/1: the head's bytes; HTTP/2: the header list size)
//!          ─→ closed when idle: no request in flight and no bytes moving
//!             for idle_timeout (see `Activity`)
//! ```
//!
//! On shutdown: `/readyz` turns 503, the listeners close, in-flight
//! requests get up to `server.shutdown_grace_secs`, then the store is
//! flushed and closed. SIGHUP reloads the certificate files.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::app::{App, AppError};
use crate::config::{Config, ConnectionConfig};
use crate::conn::Connection;
use crate::h2_frames::{Clock, FrameClock};
use crate::http::Body;
use crate::tls::{CertStore, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{field}: {source}", field = .0.field(), source = .0)]
    Tls(#[from] TlsError),
}

/// A started gateway.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub app: Arc<App>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    ticker: JoinHandle<()>,
    certs: Option<Arc<CertStore>>,
}

/// Binds a listener with the configured accept queue (tokio's own `bind`
/// fixes it at 1,024).
fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, ServerError> {
    let listen = || {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // As std's and tokio's `bind`: a restart need not wait out TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog)
    };
    listen().map_err(|source| ServerError::Bind { addr, source })
}

/// Builds the app, binds both listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let certs = match &config.tls {
        Some(tls) => Some(CertStore::load(tls)?),
        None => None,
    };
    let backlog = config.connections.listen_backlog;
    let public = bind(config.listen_public, backlog)?;
    let admin = bind(config.listen_admin, backlog)?;
    let public_addr = public.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen_public,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen_admin,
        source,
    })?;
    let grace = config.shutdown_grace;
    let limits = config.connections.clone();
    let app = App::build(config).await?;
    let (stop, stop_rx) = watch::channel(false);
    let ticker = tokio::spawn(app.clone().run_ticker(stop_rx.clone()));
    let a = app.clone();
    let public_policy = Policy::new(
        "public",
        &limits,
        certs
            .clone()
            .map(|c| TlsAcceptor::from(crate::tls::server_config(c))),
        app.clone(),
    );
    let public_server = tokio::spawn(serve(
        public,
        public_policy,
        move |req, conn| a.clone().handle_public(req, conn),
        stop_rx.clone(),
        grace,
    ));
    let a = app.clone();
    let admin_server = tokio::spawn(serve(
        admin,
        Policy::new("admin", &limits, None, app.clone()),
        move |req, _conn| crate::admin::handle(a.clone(), req),
        stop_rx,
        grace,
    ));
    Ok(Running {
        public_addr,
        admin_addr,
        app,
        stop,
        servers: vec![public_server, admin_server],
        ticker,
        certs,
    })
}

impl Running {
    /// Reads the certificate files again (what SIGHUP does). New handshakes
    /// use the new pair, open connections are untouched; on error the old
    /// pair stays. `Ok(false)`: no TLS configured.
    pub fn reload_certs(&self) -> Result<bool, TlsError> {
        let Some(certs) = &self.certs else {
            return Ok(false);
        };
        let result = certs.reload();
        let label = if result.is_ok() { "ok" } else { "error" };
        self.app
            .metrics
            .cert_reloads
            .with_label_values(&[label])
            .inc();
        result.map(|()| true)
    }

    /// Drains and stops: no new connections, in-flight requests finish (up
    /// to the grace period), state is persisted.
    pub async fn shutdown(self) {
        self.app.draining.store(true, Ordering::Relaxed);
        let _ = self.app.drain.send(true);
        let _ = self.stop.send(true);
        for s in self.servers {
            let _ = s.await;
        }
        let _ = self.ticker.await;
        self.app.persist_and_close().await;
    }
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully; SIGHUP
/// reloads the TLS certificate.
pub async fn run(config: Config) -> Result<(), ServerError> {
    // Before anything is announced, so an early SIGHUP never kills the process.
    let mut signals = Signals::new();
    let running = start(config).await?;
    tracing::info!(public = %running.public_addr, admin = %running.admin_addr, tls = running.certs.is_some(), "waitroom listening");
    println!(
        "waitroom listening public={} admin={}",
        running.public_addr, running.admin_addr
    );
    // Every signal but SIGHUP means stop.
    while let Signal::Reload = signals.next().await {
        match running.reload_certs() {
            Ok(true) => tracing::info!("TLS certificate reloaded"),
            Ok(false) => tracing::info!("SIGHUP ignored: no [tls] configured"),
            Err(e) => tracing::error!(
                field = e.field(),
                error = %e,
                "TLS certificate reload failed; keeping the current one"
            ),
        }
    }
    tracing::info!("shutting down: draining connections");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

enum Signal {
    Reload,
    Stop,
}

struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for a signal");
                    None
                }
            };
            Signals {
                term: listen(SignalKind::terminate()),
                hup: listen(SignalKind::hangup()),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.term) => Signal::Stop,
                _ = tokio::signal::ctrl_c() => Signal::Stop,
                _ = recv(&mut self.hup) => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

/// How one listener treats connections.
struct Policy {
    name: &'static str,
    limits: ConnectionConfig,
    tls: Option<TlsAcceptor>,
    slots: Arc<Semaphore>,
    app: Arc<App>,
}

impl Policy {
    fn new(
        name: &'static str,
        limits: &ConnectionConfig,
        tls: Option<TlsAcceptor>,
        app: Arc<App>,
    ) -> Policy {
        Policy {
            name,
            limits: limits.clone(),
            tls,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            app,
        }
    }

    /// Counts and logs a connection the task closes itself.
    fn note_closing(&self, closing: &Closing, peer: SocketAddr) {
        match closing {
            Closing::Idle => {
                self.app
                    .metrics
                    .connections_idle_closed
                    .with_label_values(&[self.name])
                    .inc();
                tracing::debug!("closing an idle connection");
            }
            Closing::SlowHead => {
                tracing::debug!(peer = %peer, "closing a connection: its request head took longer than header_read_timeout_secs");
            }
        }
    }
}

/// When bytes last moved on a connection, and how many requests on it are
/// still being answered (a request counts until its response body is done).
/// A connection is idle when nothing is in flight and no bytes moved for
/// `server.idle_timeout_secs`; hyper has no such timeout for HTTP/1
/// keep-alive or HTTP/2, so the connection task enforces it.
///
/// On a connection known to speak HTTP/1 it also times request heads
/// (`head_limit_ms`): from the first byte read while nothing is in flight
/// until the request begins. hyper's own header timer cannot do that: it
/// starts as soon as a response ends, so an idle keep-alive connection
/// was closed after `header_read_timeout_secs` (10 s), not
/// `idle_timeout_secs` (60 s), and a load balancer that keeps backend
/// connections for 60 s (AWS ALB's default) would send requests into
/// connections just closed.
///
/// On an HTTP/2 connection it times what [`FrameClock`] says must arrive
/// promptly (the preface, each header block, each frame but a body's
/// data), whether or not other requests are in flight: from its first
/// byte, however slowly the rest comes.
struct Activity {
    born: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Request heads must arrive within this (ms); 0 until the connection
    /// is served as HTTP/1.
    head_limit_ms: AtomicU64,
    /// Milliseconds since `born` + 1 at which a request head began
    /// arriving; 0 while none is.
    head_since_ms: AtomicU64,
    /// HTTP/2: heads are timed by `frame_since_ms`, busy or not.
    frames: AtomicBool,
    /// HTTP/2: as `head_since_ms`, for what [`FrameClock`] times.
    frame_since_ms: AtomicU64,
}

/// Why a connection task closes its connection itself.
enum Closing {
    Idle,
    SlowHead,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            head_limit_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            frames: AtomicBool::new(false),
            frame_since_ms: AtomicU64::new(0),
        })
    }

    /// From now on, times what an HTTP/2 client sends as [`FrameClock`]
    /// reports it (see [`H2Timed`]).
    fn time_frames(&self, limit: Duration) {
        self.frames.store(true, Ordering::Relaxed);
        self.time_heads(limit);
    }

    /// What [`FrameClock`] reported for the bytes just read.
    fn frame_clock(&self, clock: Clock) {
        match clock {
            Clock::Unchanged => {}
            Clock::Started => self
                .frame_since_ms
                .store(self.now_ms().saturating_add(1), Ordering::Relaxed),
            Clock::Stopped => self.frame_since_ms.store(0, Ordering::Relaxed),
        }
    }

    /// From now on, times request heads (the connection speaks HTTP/1;
    /// hyper's own header timer is off).
    fn time_heads(&self, limit: Duration) {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
        self.head_limit_ms.store(ms, Ordering::Relaxed);
    }

    fn head_limit(&self) -> Option<Duration> {
        match self.head_limit_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Marks the connection active now; returns now.
    fn touch(&self) -> u64 {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        now
    }

    /// Bytes read. Between requests they are the start of the next head.
    fn read_some(&self) {
        let Some(now) = self.moved() else { return };
        if self.head_limit_ms.load(Ordering::Relaxed) != 0
            && self.head_since_ms.load(Ordering::Relaxed) == 0
        {
            self.head_since_ms
                .store(now.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// Bytes moved. While a request is in flight the connection cannot be
    /// idle, and the request's end touches it, so the clock is read only
    /// between requests (an event stream writes without reading it).
    /// Returns the time it touched the connection at, if it did.
    fn moved(&self) -> Option<u64> {
        (self.in_flight.load(Ordering::Relaxed) == 0).then(|| self.touch())
    }

    fn quiet_for(&self) -> Duration {
        self.born
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// How long the head now arriving has taken, if one is. On HTTP/1 a
    /// head arrives only between requests.
    fn head_for(&self, busy: bool) -> Option<Duration> {
        let since = if self.frames.load(Ordering::Relaxed) {
            self.frame_since_ms.load(Ordering::Relaxed)
        } else if busy {
            0
        } else {
            self.head_since_ms.load(Ordering::Relaxed)
        };
        (since != 0).then(|| Duration::from_millis(self.now_ms().saturating_sub(since - 1)))
    }

    /// Resolves once the connection has been idle for `limit`, or a request
    /// head has taken longer than its limit (see [`Activity::time_heads`]).
    ///
    /// It is polled with the connection, in the same task, so it sees a
    /// request end on the poll that ends it; it then looks again (a new
    /// head may be due before an idle timer set while the request ran).
    /// Between requests (on HTTP/2, always) it looks again at least once
    /// per head limit, so a head that begins meanwhile is caught at its
    /// deadline. Any other poll
    /// costs one atomic load and the timer's poll.
    async fn closing(&self, limit: Duration) -> Closing {
        let sleep = tokio::time::sleep(limit);
        tokio::pin!(sleep);
        let mut was_busy = true;
        let mut look = true;
        std::future::poll_fn(|cx| {
            loop {
                let busy = self.in_flight.load(Ordering::Relaxed) > 0;
                look |= was_busy && !busy;
                was_busy = busy;
                if !look && sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                look = false;
                let quiet = self.quiet_for();
                if !busy && quiet >= limit {
                    return Poll::Ready(Closing::Idle);
                }
                let mut wait = if busy { limit } else { limit - quiet };
                // An HTTP/2 head may begin while other requests run.
                let heads_now = !busy || self.frames.load(Ordering::Relaxed);
                if let (true, Some(head_limit)) = (heads_now, self.head_limit()) {
                    match self.head_for(busy) {
                        Some(head_for) if head_for >= head_limit => {
                            return Poll::Ready(Closing::SlowHead);
                        }
                        Some(head_for) => wait = wait.min(head_limit - head_for),
                        None => wait = wait.min(head_limit),
                    }
                }
                // An earlier deadline is kept: it only makes this look
                // again sooner, and a busy keep-alive connection then sets
                // its timer once per head limit, not once per request.
                let deadline = Instant::now() + wait.max(Duration::from_millis(50));
                if sleep.is_elapsed() || deadline < sleep.deadline() {
                    sleep.as_mut().reset(deadline);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        })
        .await
    }
}

/// One request being answered; dropped with its response body.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted in flight until it is
/// sent or dropped. Unlike `BodyExt::map_frame`, it passes the body's size
/// hint on, so hyper sends a `Content-Length` for a body of known size
/// instead of chunked encoding.
struct HeldBody {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for HeldBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A stream that records activity on every byte read or written.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP/2 connection's stream, showing every byte read to a
/// [`FrameClock`]. Only HTTP/2 connections carry it: HTTP/1 ones pay
/// nothing for it.
struct H2Timed<S> {
    inner: S,
    clock: FrameClock,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for H2Timed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let this = &mut *self;
            let clock = this.clock.feed(&buf.filled()[before..]);
            this.activity.frame_clock(clock);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H2Timed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often a plaintext connection whose first bytes are part of the
/// HTTP/2 preface is looked at again: unread bytes keep a socket readable,
/// so only a timer can wait for more.
const PREFACE_RECHECK: Duration = Duration::from_millis(50);

/// What a plaintext connection's first bytes say about its protocol.
#[derive(Debug, PartialEq)]
enum Sniffed {
    Http1,
    Http2,
    /// Part of the HTTP/2 preface so far.
    Partial,
}

/// Judges bytes peeked at the start of a connection: once they differ from
/// the HTTP/2 preface it is HTTP/1 (the rule hyper-util's auto builder
/// applies too); the whole preface is HTTP/2.
fn sniff(first: &[u8]) -> Sniffed {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Sniffed::Http1
    } else if n == H2_PREFACE.len() {
        Sniffed::Http2
    } else {
        Sniffed::Partial
    }
}

/// The protocol a connection is served with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Protocol {
    Http1,
    Http2,
}

/// How the start of a plaintext connection went.
enum Opening {
    Speaks(Protocol),
    /// Closed (or failed) before saying anything.
    Closed,
    /// No byte within `idle_timeout`.
    Idle,
    /// The HTTP/2 preface began but was not complete within
    /// `header_read_timeout`.
    SlowPreface,
}

/// Peeks (without consuming) at a plaintext connection's first bytes until
/// they tell HTTP/1 from HTTP/2.
///
/// Peeking, not reading: handing hyper the first bytes apart (as the auto
/// builder's own detection does) makes its first read return only those,
/// and its read buffer grows from 8 to 16 KiB on every connection (seen
/// with heaptrack; it stays that size while an event stream is open).
/// Knowing the protocol first also lets each connection be served by that
/// protocol's own builder, with its exact header limits.
async fn peek_protocol(stream: &TcpStream, limits: &ConnectionConfig) -> Opening {
    let mut first = [0u8; 24];
    let mut n = match tokio::time::timeout(limits.idle_timeout, stream.peek(&mut first)).await {
        Err(_) => return Opening::Idle,
        Ok(Ok(0) | Err(_)) => return Opening::Closed,
        Ok(Ok(n)) => n,
    };
    let deadline = Instant::now() + limits.header_read_timeout;
    loop {
        match sniff(&first[..n]) {
            Sniffed::Http1 => return Opening::Speaks(Protocol::Http1),
            Sniffed::Http2 => return Opening::Speaks(Protocol::Http2),
            Sniffed::Partial if Instant::now() >= deadline => return Opening::SlowPreface,
            Sniffed::Partial => tokio::time::sleep(PREFACE_RECHECK).await,
        }
        n = match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return Opening::Closed,
            Ok(n) => n,
        };
    }
}

/// The HTTP machinery of one listener, one builder per protocol. HTTP/1
/// heads are timed by the connection task (see `Activity`), not by hyper.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &ConnectionConfig) -> Builders {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            // The head's bytes, request line to the empty line, exactly.
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(limits.max_header_bytes);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // The h2 crate refuses a header list that reaches its limit; one
        // more lets a list of exactly `max_header_bytes` through, as HTTP/1.
        let list_limit =
            u32::try_from(limits.max_header_bytes.saturating_add(1)).unwrap_or(u32::MAX);
        h2.timer(TokioTimer::new()).max_header_list_size(list_limit);
        Builders {
            http1: h1,
            http2: h2,
        }
    }
}

/// An accepted connection's place in the listener's cap and gauge, given
/// back when the connection task ends.
struct Admitted {
    open: prometheus::IntGauge,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

async fn serve<F, Fut>(
    listener: TcpListener,
    policy: Policy,
    handler: F,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) where
    F: Fn(Request<Incoming>, Arc<Connection>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let builders = Arc::new(Builders::new(&policy.limits));
    let policy = Arc::new(policy);
    let metrics = &policy.app.metrics;
    let open = metrics.connections_open.with_label_values(&[policy.name]);
    let refused = metrics
        .connections_refused
        .with_label_values(&[policy.name]);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(slot) = policy.slots.clone().try_acquire_owned() else {
            // At the cap: accepted and closed at once, so the backlog never fills with
            // connections nobody will serve.
            refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        open.inc();
        let admitted = Admitted {
            open: open.clone(),
            _slot: slot,
        };
        let watcher = graceful.watcher();
        let (builders, policy, handler) = (builders.clone(), policy.clone(), handler.clone());
        // Two task bodies, so that a plaintext connection's task is not
        // sized for the TLS handshake's state.
        if policy.tls.is_none() {
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let _admitted = admitted;
                let activity = Activity::new();
                let opened = tokio::select! {
                    o = peek_protocol(&stream, &policy.limits) => o,
                    _ = stop.changed() => return,
                };
                let protocol = match opened {
                    Opening::Speaks(protocol) => protocol,
                    Opening::Closed => return,
                    Opening::Idle => {
                        policy.note_closing(&Closing::Idle, peer);
                        return;
                    }
                    Opening::SlowPreface => {
                        policy.note_closing(&Closing::SlowHead, peer);
                        return;
                    }
                };
                let io = Tracked {
                    inner: stream,
                    activity: activity.clone(),
                };
                serve_connection(
                    io, peer, protocol, &builders, &policy, handler, activity, watcher,
                )
                .await;
            });
        } else {
            tokio::spawn(async move {
                let _admitted = admitted;
                let Some(acceptor) = &policy.tls else {
                    return;
                };
                let activity = Activity::new();
                let io = Tracked {
                    inner: stream,
                    activity: activity.clone(),
                };
                match tokio::time::timeout(policy.limits.header_read_timeout, acceptor.accept(io))
                    .await
                {
                    Ok(Ok(tls)) => {
                        // HTTP/2 over TLS is chosen by ALPN (RFC 9113 §3.2);
                        // anything else is HTTP/1.
                        let protocol = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                            Protocol::Http2
                        } else {
                            Protocol::Http1
                        };
                        serve_connection(
                            tls, peer, protocol, &builders, &policy, handler, activity, watcher,
                        )
                        .await
                    }
                    Ok(Err(e)) => {
                        policy.app.metrics.tls_handshake_failures.inc();
                        tracing::debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        policy.app.metrics.tls_handshake_failures.inc();
                        tracing::debug!("TLS handshake timed out");
                    }
                }
            });
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over: closing remaining connections");
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<S, F, Fut>(
    io: S,
    peer: SocketAddr,
    protocol: Protocol,
    builders: &Builders,
    policy: &Policy,
    handler: F,
    activity: Arc<Activity>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, Arc<Connection>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let tracker = activity.clone();
    // Its upstream link (driven below, in this task) and memos.
    let connection = Connection::new(peer);
    let for_requests = connection.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let conn = for_requests.clone();
        let h = handler.clone();
        let in_flight = tracker.begin_request();
        async move {
            // Boxed: hyper keeps a slot the size of this future for the whole
            // connection (≈4 KiB with the handler's state inline), which an
            // idle event stream would otherwise carry for its lifetime.
            let res = Box::pin(h(req, conn)).await;
            // The request stays in flight until its body is sent (or dropped).
            Ok::<_, Infallible>(res.map(|body| HeldBody {
                body,
                _in_flight: in_flight,
            }))
        }
    });
    match protocol {
        Protocol::Http1 => {
            activity.time_heads(policy.limits.header_read_timeout);
            let conn = builders.http1.serve_connection(TokioIo::new(io), service);
            drive(watcher.watch(conn), &connection, &activity, policy, peer).await
        }
        Protocol::Http2 => {
            activity.time_frames(policy.limits.header_read_timeout);
            let io = H2Timed {
                inner: io,
                clock: FrameClock::new(),
                activity: activity.clone(),
            };
            let conn = builders.http2.serve_connection(TokioIo::new(io), service);
            drive(watcher.watch(conn), &connection, &activity, policy, peer).await
        }
    }
}

/// Runs a connection with its upstream link until it ends or the task
/// closes it (idle, or a head too slow).
async fn drive<C>(
    conn: C,
    connection: &Connection,
    activity: &Activity,
    policy: &Policy,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::select! {
        // First: an upstream answer read here is handed to the request
        // waiting for it in the same poll.
        biased;
        () = connection.link.drive() => {}
        result = conn => {
            if let Err(e) = result {
                tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
            }
        }
        closing = activity.closing(policy.limits.idle_timeout) => policy.note_closing(&closing, peer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_unlike_the_http2_preface_mean_http1() {
        let requests: [&[u8]; 4] = [b"GET / HTTP/1.1\r\n", b"POST", b"PUT /x", b"PRI * HTTP/1.1"];
        for first in requests {
            assert_eq!(sniff(first), Sniffed::Http1, "{first:?}");
        }
    }

    #[test]
    fn the_whole_http2_preface_means_http2_and_part_of_it_waits_for_more() {
        let mut longer = H2_PREFACE.to_vec();
        longer.extend_from_slice(b"\0\0\x12\x04");
        assert_eq!(sniff(H2_PREFACE), Sniffed::Http2);
        assert_eq!(sniff(&longer[..24]), Sniffed::Http2);
        for first in [&H2_PREFACE[..10], b"P", &H2_PREFACE[..23]] {
            assert_eq!(sniff(first), Sniffed::Partial, "{first:?}");
        }
    }
}
