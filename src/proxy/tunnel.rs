//! A WebSocket tunnel: once the upstream has answered an upgrade with
//! `101 Switching Protocols`, the client's connection and the upstream's
//! are joined and bytes copied both ways until either side closes. The
//! gateway never reads a frame.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// How long both upgrades may take to hand over their connections. The
/// upstream's is already done when the `101` arrives, the client's as soon
/// as the `101` is written: this only bounds a client that stops reading.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the tunnel asks whether it may go on (see [`Tunnel::run`]).
const HOLD_EVERY: Duration = Duration::from_secs(1);

/// A tunnel reports bytes moving at most this often: a session slides on
/// activity, and once every few seconds is plenty for a session measured
/// in minutes (`session_secs` is at least 10).
const ACTIVE_EVERY: Duration = Duration::from_secs(3);

/// An upgrade the upstream accepted: both ends' connections, to be joined
/// once the `101` has been sent to the client.
pub struct Tunnel {
    pub(super) client: OnUpgrade,
    pub(super) upstream: OnUpgrade,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Either side closed (or failed).
    Closed,
    /// `hold` said no: the session it belongs to ended.
    Released,
    /// `cut` resolved (the gateway is shutting down).
    Cut,
    /// A side's connection was never handed over.
    NoHandover,
}

impl Tunnel {
    /// Copies bytes both ways until either side closes, `cut` resolves, or
    /// `hold` returns false. `hold` is asked about once a second, with
    /// whether bytes moved (true at most once every few seconds: see
    /// [`ACTIVE_EVERY`]); both connections are dropped when it ends.
    pub async fn run(
        self,
        mut hold: impl FnMut(bool) -> bool,
        cut: impl Future<Output = ()>,
    ) -> TunnelEnd {
        let handover = async { tokio::try_join!(self.client, self.upstream) };
        let (client, upstream) = match tokio::time::timeout(HANDOVER_TIMEOUT, handover).await {
            Ok(Ok(both)) => both,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "an upgraded connection was not handed over");
                return TunnelEnd::NoHandover;
            }
            Err(_) => return TunnelEnd::NoHandover,
        };
        let moved = Arc::new(AtomicBool::new(false));
        let mut client = Metered {
            inner: TokioIo::new(client),
            moved: moved.clone(),
        };
        let mut upstream = TokioIo::new(upstream);
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        let held = async {
            let mut every = tokio::time::interval_at(Instant::now() + HOLD_EVERY, HOLD_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut reported = Instant::now();
            loop {
                every.tick().await;
                // Bytes that moved since the last report stay noted until
                // the next one is due.
                let active =
                    reported.elapsed() >= ACTIVE_EVERY && moved.swap(false, Ordering::Relaxed);
                if active {
                    reported = Instant::now();
                }
                if !hold(active) {
                    return;
                }
            }
        };
        tokio::select! {
            copied = copy => {
                if let Err(e) = copied {
                    tracing::debug!(error = %e, "a tunnel ended with an error");
                }
                TunnelEnd::Closed
            }
            () = held => TunnelEnd::Released,
            () = cut => TunnelEnd::Cut,
        }
    }
}

/// The client's side of a tunnel, noting when bytes move either way.
struct Metered<S> {
    inner: S,
    moved: Arc<AtomicBool>,
}

impl<S> Metered<S> {
    fn note(&self, n: usize) {
        if n > 0 {
            self.moved.store(true, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(buf.filled().len() - before);
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.note(n);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
