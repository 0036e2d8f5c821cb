//! The per-connection upstream HTTP/1.1 link: one upstream connection owned
//! by one downstream connection and driven in its task (see the `proxy`
//! module docs for when a request takes it).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1 as client_h1;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::Authority;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

use super::{RequestBody, UpstreamError, error_chain};

type LinkConnection = client_h1::Connection<TokioIo<TcpStream>, RequestBody>;

/// One upstream HTTP/1.1 connection belonging to one downstream connection
/// (see the `proxy` module docs). The downstream connection's record holds
/// it, and the server polls [`UpstreamLink::drive`] in the connection's
/// task; dropping the downstream connection drops the upstream one.
#[derive(Clone, Default)]
pub struct UpstreamLink(Arc<Link>);

#[derive(Default)]
struct Link {
    state: Mutex<LinkState>,
    /// No connection to drive, and the downstream task's waker is stored:
    /// [`UpstreamLink::drive`] returns at once without the lock. The
    /// connection task wakes for every event an open SSE stream writes;
    /// taking the lock each time was ~2% of a fan-out's samples.
    parked: AtomicBool,
}

#[derive(Default)]
struct LinkState {
    authority: Option<Authority>,
    sender: Option<client_h1::SendRequest<RequestBody>>,
    connection: Option<Pin<Box<LinkConnection>>>,
    /// The downstream task, to wake when a new connection needs driving.
    waker: Option<Waker>,
}

type SendOutcome =
    Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<RequestBody>>>;

impl UpstreamLink {
    pub fn new() -> UpstreamLink {
        UpstreamLink::default()
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        // Nothing panics while holding it; a poisoned state is still consistent.
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends over the link's connection, opening one when it has none (or
    /// one to another upstream, or one the upstream closed unused).
    pub(super) async fn send(
        &self,
        mut req: Request<RequestBody>,
        authority: &Authority,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| host_value(authority));
        let reused = self.try_send(req, authority);
        let req = match reused {
            Ok(sent) => match sent.await {
                Ok(res) => return Ok(res),
                // Never written (the connection had closed or was busy):
                // safe to send again on a new one.
                Err(mut e) => match e.take_message() {
                    Some(req) => req,
                    None => return Err(UpstreamError::Exchange(error_chain(&e.into_error()))),
                },
            },
            Err(req) => req,
        };
        let (mut sender, conn) = open(authority, connect_timeout).await?;
        let sent = sender.send_request(req);
        self.install(authority.clone(), sender, conn);
        sent.await
            .map_err(|e| UpstreamError::Exchange(error_chain(&e)))
    }

    /// Drives the link's connection (reads answers, writes requests).
    /// Never resolves: poll it beside the downstream connection, from that
    /// connection's task only (while parked, the waker stored is the one
    /// woken).
    pub fn drive(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.0.parked.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            let mut state = self.lock();
            if let Some(connection) = state.connection.as_mut() {
                match connection.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(result) => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "upstream connection ended with an error");
                        }
                        *state = LinkState::default();
                    }
                }
            }
            if !state
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.waker = Some(cx.waker().clone());
            }
            self.0.parked.store(true, Ordering::Release);
            Poll::Pending
        })
    }

    /// Hands `req` to the open connection to `authority`, or gives it back.
    // The request comes back by value (no copy, no allocation): it is large.
    #[allow(clippy::result_large_err)]
    fn try_send(
        &self,
        req: Request<RequestBody>,
        authority: &Authority,
    ) -> Result<impl Future<Output = SendOutcome> + use<>, Request<RequestBody>> {
        let mut guard = self.lock();
        let state = &mut *guard;
        match state.sender.as_mut() {
            Some(sender) if state.authority.as_ref() == Some(authority) && !sender.is_closed() => {
                Ok(sender.try_send_request(req))
            }
            _ => Err(req),
        }
    }

    /// Makes a new connection the link's (the old one, if any, is dropped).
    fn install(
        &self,
        authority: Authority,
        sender: client_h1::SendRequest<RequestBody>,
        connection: LinkConnection,
    ) {
        let mut state = self.lock();
        state.authority = Some(authority);
        state.sender = Some(sender);
        state.connection = Some(Box::pin(connection));
        self.0.parked.store(false, Ordering::Release);
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }
}

/// Opens a new upstream connection to `authority` (connect and handshake
/// within `connect_timeout`), trying each of its addresses in turn.
async fn open(
    authority: &Authority,
    connect_timeout: Duration,
) -> Result<(client_h1::SendRequest<RequestBody>, LinkConnection), UpstreamError> {
    let connect = async {
        let port = authority.port_u16().unwrap_or(80);
        // IPv6 literals keep their brackets in an authority.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let mut last_error = None;
        for addr in tokio::net::lookup_host((host, port)).await? {
            match connect_tcp(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the upstream")
        }))
    };
    let stream = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| UpstreamError::Connect("connect timed out".into()))?
        .map_err(|e| UpstreamError::Connect(format!("{authority}: {e}")))?;
    client_h1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Connect(error_chain(&e)))
}

async fn connect_tcp(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_keepalive(true)?;
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

fn host_value(authority: &Authority) -> HeaderValue {
    HeaderValue::from_str(authority.as_str())
        .expect("a parsed URI authority is a valid header value")
}
