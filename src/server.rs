//! Listeners, connection handling and graceful shutdown.
//!
//! Both listeners speak HTTP/1.1 and HTTP/2 (prior knowledge) via hyper's
//! auto builder. A slow client gets [`HEADER_READ_TIMEOUT`] to send its
//! headers. On shutdown: `/readyz` turns 503, the listeners close, in-flight
//! requests get up to `server.shutdown_grace_secs`, then the store is
//! flushed and closed. The TLS listener will wrap the accepted stream here.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{App, AppError};
use crate::config::Config;
use crate::http::Body;

/// Time a client has to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer cap per HTTP/1 connection (bounds header size).
pub const MAX_BUF_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started gateway.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub app: Arc<App>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    ticker: JoinHandle<()>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Builds the app, binds both listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let public = bind(config.listen_public).await?;
    let admin = bind(config.listen_admin).await?;
    let public_addr = public.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen_public,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen_admin,
        source,
    })?;
    let grace = config.shutdown_grace;
    let app = App::build(config).await?;
    let (stop, stop_rx) = watch::channel(false);
    let ticker = tokio::spawn(app.clone().run_ticker(stop_rx.clone()));
    let a = app.clone();
    let public_server = tokio::spawn(serve(
        public,
        move |req, peer| a.clone().handle_public(req, peer),
        stop_rx.clone(),
        grace,
    ));
    let a = app.clone();
    let admin_server = tokio::spawn(serve(
        admin,
        move |req, _peer| crate::admin::handle(a.clone(), req),
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
    })
}

impl Running {
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

/// Runs until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let running = start(config).await?;
    tracing::info!(public = %running.public_addr, admin = %running.admin_addr, "waitroom listening");
    println!(
        "waitroom listening public={} admin={}",
        running.public_addr, running.admin_addr
    );
    wait_for_signal().await;
    tracing::info!("shutting down: draining connections");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn serve<F, Fut>(
    listener: TcpListener,
    handler: F,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_BYTES);
    builder.http2().timer(TokioTimer::new());
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
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        let service = service_fn(move |req| {
            let h = h.clone();
            async move { Ok::<_, Infallible>(h(req, peer).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over: closing remaining connections");
        }
    }
}
