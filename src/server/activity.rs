//! Whether a connection is idle, and whether a request head is taking too
//! long: the timers hyper lacks (see [`Activity`]), and the stream and body
//! wrappers that tell them when bytes move and requests end.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::h2_frames::{Clock, FrameClock};
use crate::http::Body;

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
pub(super) struct Activity {
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
pub(super) enum Closing {
    Idle,
    SlowHead,
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
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
    pub(super) fn time_frames(&self, limit: Duration) {
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
    pub(super) fn time_heads(&self, limit: Duration) {
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

    #[inline]
    pub(super) fn begin_request(self: &Arc<Self>) -> InFlight {
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
    pub(super) async fn closing(&self, limit: Duration) -> Closing {
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
pub(super) struct InFlight(Arc<Activity>);

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
pub(super) struct HeldBody {
    body: Body,
    _in_flight: InFlight,
}

impl HeldBody {
    #[inline]
    pub(super) fn new(body: Body, in_flight: InFlight) -> HeldBody {
        HeldBody {
            body,
            _in_flight: in_flight,
        }
    }
}

impl hyper::body::Body for HeldBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A stream that records activity on every byte read or written.
pub(super) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Tracked<S> {
        Tracked { inner, activity }
    }
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
pub(super) struct H2Timed<S> {
    inner: S,
    clock: FrameClock,
    activity: Arc<Activity>,
}

impl<S> H2Timed<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> H2Timed<S> {
        H2Timed {
            inner,
            clock: FrameClock::new(),
            activity,
        }
    }
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
