//! The accept loop and each connection's task: the connection cap, the
//! TLS handshake or the protocol sniff, then hyper's builder for the
//! protocol, driven beside the connection's upstream link and its idle and
//! head timers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::ServerError;
use super::activity::{Activity, Closing, H2Timed, HeldBody, Tracked};
use super::protocol::{Builders, Opening, Protocol, peek_protocol};
use crate::config::ConnectionConfig;
use crate::conn::Connection;
use crate::gateway::App;
use crate::http::Body;

/// Binds a listener with the configured accept queue (tokio's own `bind`
/// fixes it at 1,024).
pub(super) fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, ServerError> {
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

/// How one listener treats connections.
pub(super) struct Policy {
    name: &'static str,
    limits: ConnectionConfig,
    tls: Option<TlsAcceptor>,
    slots: Arc<Semaphore>,
    app: Arc<App>,
}

impl Policy {
    pub(super) fn new(
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

/// Accepts connections until `stop`, each served in its own task; then
/// waits up to `grace` for the open ones to finish.
pub(super) async fn serve<F, Fut>(
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
                let io = Tracked::new(stream, activity.clone());
                let drain = (watcher, stop);
                serve_connection(
                    io, peer, protocol, &builders, &policy, handler, activity, drain,
                )
                .await;
            });
        } else {
            let stop = stop.clone();
            tokio::spawn(async move {
                let _admitted = admitted;
                let Some(acceptor) = &policy.tls else {
                    return;
                };
                let activity = Activity::new();
                let io = Tracked::new(stream, activity.clone());
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
                        let drain = (watcher, stop);
                        serve_connection(
                            tls, peer, protocol, &builders, &policy, handler, activity, drain,
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
    (watcher, mut stop): (Watcher, watch::Receiver<bool>),
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
            Ok::<_, Infallible>(res.map(|body| HeldBody::new(body, in_flight)))
        }
    });
    match protocol {
        Protocol::Http1 => {
            activity.time_heads(policy.limits.header_read_timeout);
            let conn = builders
                .http1
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            // hyper-util's watcher takes no upgradeable HTTP/1 connection:
            // this task tells it of the drain itself, and holds the watcher
            // until it ends, so a drain waits for it and for its tunnel.
            let _held = watcher;
            let conn = async move {
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => return result,
                    _ = stop.changed() => conn.as_mut().graceful_shutdown(),
                }
                conn.await
            };
            drive(conn, &connection, &activity, policy, peer).await;
            // A `101` was written and hyper has let go of the connection:
            // its tunnel runs here, keeping the connection's slot and the
            // drain's watcher until it ends. The idle timer is no longer
            // polled: a tunnel is in flight for as long as it lasts, and
            // its quiet is its session's to judge (the tunnel ends with it,
            // and at the end of a drain's grace period).
            if let Some(upgraded) = connection.take_upgraded() {
                upgraded.await;
            }
        }
        Protocol::Http2 => {
            activity.time_frames(policy.limits.header_read_timeout);
            let io = H2Timed::new(io, activity.clone());
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
