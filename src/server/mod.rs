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
//!          ─→ HTTP/1 upgraded (a WebSocket's `101`): the tunnel the handler
//!             left on the connection (`conn::Connection::on_upgrade`) runs
//!             in the same task until it ends: never idle-closed, and a
//!             drain waits for it (it cuts itself at the grace period's end)
//! ```
//!
//! The parts: `listener` (binding, the accept loop, the connection cap,
//! each connection's task), `protocol` (telling HTTP/1 from HTTP/2, and
//! the builder for each), `activity` (the idle and request-head timers,
//! and the stream and body wrappers that feed them), `h2_frames` (what an
//! HTTP/2 client must send promptly). This part, `mod.rs`: start, run
//! until a signal, shut down.
//!
//! On shutdown: `/readyz` turns 503, the listeners close, in-flight
//! requests get up to `server.shutdown_grace_secs`, then the store is
//! flushed and closed. SIGHUP reloads the certificate files.

mod activity;
mod h2_frames;
mod listener;
mod protocol;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::gateway::{App, AppError};
use crate::tls::{CertStore, TlsError};

use listener::{Policy, bind, serve};

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
