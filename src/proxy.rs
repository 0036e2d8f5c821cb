//! The upstream side: the upstream connections and the header rewriting a
//! reverse proxy owes both ends.
//!
//! **Connections.** A downstream HTTP/1 connection to a plain `http://`
//! upstream owns one upstream HTTP/1.1 connection (an [`UpstreamLink`]),
//! opened on its first request, reused for the next ones and driven by the
//! downstream connection's own task: a request and its answer never cross
//! to another task or thread. HTTP/1 answers one request at a time, so the
//! link is never shared. Everything else (HTTP/2 clients, whose requests
//! run concurrently; `https://` upstreams; a second upstream on the same
//! connection) goes through the shared pooled client. A request that a
//! reused connection never sent (the upstream had closed it) is sent once
//! more on a new connection.
//!
//! Requests keep their method, path, query and body (streamed, never
//! buffered). A failure of the client's own body (bad framing, cut short,
//! reset), or a body still arriving when the response timeout ends, is the
//! client's ([`ForwardError`]): only the upstream's own failures count
//! against its health.
//!
//! Hop-by-hop headers are dropped both ways, and so are the headers the
//! gateway owns (see [`is_reserved_header`]): a client cannot send the
//! upstream one, nor the upstream send a client one. The gateway's own
//! cookies (`wr_q_*`, `wr_a_*`) never reach the upstream however they are
//! spelt, and the upstream cannot set them. `X-Forwarded-For/-Proto/-Host`,
//! `X-Real-IP` and `Forwarded` are set from the connection unless the peer
//! is a configured trusted proxy, whose values are kept (and, for
//! `X-Forwarded-For` and `Forwarded`, appended to).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1 as client_h1;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, Response, Uri, Version};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::{TcpSocket, TcpStream};

use crate::config::{ProxyConfig, Upstream};
use crate::conn::{Connection, PeerHeaders};
use crate::cookies::COOKIE_PREFIXES;
use crate::http::Body;

/// Header name prefixes the gateway owns (after `_` is read as `-`, as
/// CGI and WSGI servers do): see [`is_reserved_header`].
pub const RESERVED_HEADER_PREFIXES: [&str; 2] = ["x-waitroom", "waitroom-"];

/// Why a request could not be forwarded: the upstream failed, or the
/// client's own request body did. Only the first says anything about the
/// upstream's health.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The body the client was sending failed: bad chunked framing, cut
    /// short by a close, a reset HTTP/2 stream.
    #[error("the request body was cut short, reset or badly framed")]
    RequestBody,
    /// The response timeout ran out before the whole request body had been
    /// handed to the upstream. A client trickling its body would otherwise
    /// make every such request an upstream timeout (and hold the drip).
    #[error("the request body was not complete within the response timeout")]
    RequestBodyTimeout,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the upstream exchange failed: {0}")]
    Exchange(String),
}

pub struct Proxy {
    client: Client<HttpsConnector<HttpConnector>, RequestBody>,
    trusted: Vec<IpNet>,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// What `X-Forwarded-Proto` says for direct clients.
    listener_scheme: &'static str,
}

/// What the upstream exchange yielded, for metrics and the drip's health signal.
pub struct Forwarded {
    pub response: Response<Body>,
    pub elapsed: Duration,
}

// Header names built once: a `&str` name is parsed and validated again on
// every map operation (seen in callgrind on the per-request path).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

// A static, not a const: a const array is built and dropped again at every
// use, which was most of `strip_hop_by_hop`'s cost (callgrind).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    // The framing is this hop's own; hyper sets it again for the next.
    header::TRANSFER_ENCODING,
];

impl Proxy {
    /// `https_upstreams`: whether any upstream is `https://` (only then are
    /// the system's roots loaded).
    pub fn new(config: &ProxyConfig, https_upstreams: bool) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(upstream_tls_config(config, https_upstreams))
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Proxy {
            client,
            trusted: config.trusted_proxies.clone(),
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            listener_scheme: if config.listener_tls { "https" } else { "http" },
        }
    }

    /// The client's address: see [`client_ip`].
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted)
    }

    /// Whether forwarded headers from this peer are believed.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&peer))
    }

    /// The scheme the client used, as far as we can trust it.
    pub fn client_https(&self, headers: &HeaderMap, peer: IpAddr) -> bool {
        self.is_trusted(peer)
            && headers
                .get(X_FORWARDED_PROTO)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
    }

    /// Sends `req` to `upstream` and streams the answer back. A request
    /// carrying its connection's [`UpstreamLink`] (see the module docs)
    /// goes over that link when it can.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        upstream: &Upstream,
        conn: &Connection,
    ) -> Result<Forwarded, ForwardError> {
        let (mut req, progress) = RequestBody::watch(req);
        let link = Some(&conn.link)
            .filter(|_| req.version() <= Version::HTTP_11 && upstream.scheme == Scheme::HTTP);
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // The link speaks to one origin: origin-form is all it needs.
        let uri = match link {
            Some(_) => Uri::builder().path_and_query(path_and_query),
            None => Uri::builder()
                .scheme(upstream.scheme.clone())
                .authority(upstream.authority.clone())
                .path_and_query(path_and_query),
        }
        .build()
        .map_err(|e| UpstreamError::Exchange(format!("cannot build upstream URI: {e}")))?;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let trusted = self.is_trusted(conn.addr.ip());
        rewrite_request_headers(
            req.headers_mut(),
            &conn.peer,
            trusted,
            original_host,
            self.listener_scheme,
        );

        let started = Instant::now();
        let exchange = async {
            match &link {
                Some(link) => self.send_on_link(link, req, &upstream.authority).await,
                None => self.client.request(req).await.map_err(|e| {
                    if e.is_connect() {
                        UpstreamError::Connect(error_chain(&e))
                    } else {
                        UpstreamError::Exchange(error_chain(&e))
                    }
                }),
            }
        };
        let response = match tokio::time::timeout(self.response_timeout, exchange).await {
            Ok(Ok(response)) => response,
            // A failure of the client's own body surfaces as the exchange's
            // error (hyper's client reports it as a user error whose source
            // is the body's); the body's own record says whose it was.
            Ok(Err(e)) => {
                return Err(match progress.state() {
                    BodyState::Failed => {
                        tracing::debug!(error = %e, "the client's request body failed");
                        ForwardError::RequestBody
                    }
                    _ => ForwardError::Upstream(e),
                });
            }
            Err(_) => {
                return Err(match progress.state() {
                    BodyState::Complete => ForwardError::Upstream(UpstreamError::Timeout),
                    BodyState::Failed => ForwardError::RequestBody,
                    BodyState::Sending => ForwardError::RequestBodyTimeout,
                });
            }
        };
        let elapsed = started.elapsed();
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        strip_reserved_headers(&mut parts.headers);
        strip_gateway_set_cookies(&mut parts.headers);
        Ok(Forwarded {
            response: Response::from_parts(parts, body.boxed_unsync()),
            elapsed,
        })
    }

    /// Sends over the link's connection, opening one when it has none (or
    /// one to another upstream, or one the upstream closed unused).
    async fn send_on_link(
        &self,
        link: &UpstreamLink,
        mut req: Request<RequestBody>,
        authority: &Authority,
    ) -> Result<Response<Incoming>, UpstreamError> {
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| host_value(authority));
        let reused = link.try_send(req, authority);
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
        let (mut sender, conn) = self.open_link_connection(authority).await?;
        let sent = sender.send_request(req);
        link.install(authority.clone(), sender, conn);
        sent.await
            .map_err(|e| UpstreamError::Exchange(error_chain(&e)))
    }

    async fn open_link_connection(
        &self,
        authority: &Authority,
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
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| UpstreamError::Connect("connect timed out".into()))?
            .map_err(|e| UpstreamError::Connect(format!("{authority}: {e}")))?;
        client_h1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))
    }
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

type LinkConnection = client_h1::Connection<TokioIo<TcpStream>, RequestBody>;

/// One upstream HTTP/1.1 connection belonging to one downstream connection
/// (see the module docs). The server puts a clone in every request's
/// extensions and polls [`UpstreamLink::drive`] in the connection's task;
/// dropping the downstream connection drops the upstream one.
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

/// How far the client's request body got on its way to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Sending,
    /// Every frame was handed to the upstream connection (or there was no body).
    Complete,
    /// Reading it from the client failed.
    Failed,
}

/// The record a [`RequestBody`] keeps, read by [`Proxy::forward`] when the
/// exchange fails. A request without a body has none (nothing allocated).
#[derive(Clone, Default)]
struct BodyProgress(Option<Arc<std::sync::atomic::AtomicU8>>);

impl BodyProgress {
    fn state(&self) -> BodyState {
        match self.0.as_ref().map(|s| s.load(Ordering::Acquire)) {
            None => BodyState::Complete,
            Some(s) => BodyState::from_u8(s),
        }
    }

    fn set(&self, state: BodyState) {
        if let Some(s) = &self.0 {
            s.store(state as u8, Ordering::Release);
        }
    }
}

impl BodyState {
    fn from_u8(v: u8) -> BodyState {
        match v {
            x if x == BodyState::Complete as u8 => BodyState::Complete,
            x if x == BodyState::Failed as u8 => BodyState::Failed,
            _ => BodyState::Sending,
        }
    }
}

/// The client's request body on its way to the upstream, streamed as it
/// arrives, recording whether it was read to its end or failed. hyper's
/// client reports a failing request body as a user error of the exchange
/// (`hyper::Error::is_user`, kind `User::Body`, with the body's own error
/// as its source), which the pooled client wraps once more; the body's own
/// record tells a client's fault from the upstream's on every path without
/// unpicking those chains.
pub struct RequestBody {
    inner: Incoming,
    progress: BodyProgress,
}

impl RequestBody {
    /// Wraps `req`'s body; the returned record follows it.
    fn watch(req: Request<Incoming>) -> (Request<RequestBody>, BodyProgress) {
        use hyper::body::Body as _;
        let (parts, inner) = req.into_parts();
        let progress = if inner.is_end_stream() {
            BodyProgress::default()
        } else {
            BodyProgress(Some(Arc::new(std::sync::atomic::AtomicU8::new(
                BodyState::Sending as u8,
            ))))
        };
        let body = RequestBody {
            inner,
            progress: progress.clone(),
        };
        (Request::from_parts(parts, body), progress)
    }
}

impl hyper::body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.progress.set(BodyState::Complete),
            Poll::Ready(Some(Err(_))) => this.progress.set(BodyState::Failed),
            // hyper stops polling once the body says it has ended.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                this.progress.set(BodyState::Complete)
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names, and only those present are removed (usually
    // none on a request, `connection` alone on an upstream's answer): a
    // removal costs a hashed lookup even for a name that is not there.
    let mut present: Vec<HeaderName> = h
        .keys()
        .filter(|k| HOP_BY_HOP.contains(k))
        .cloned()
        .collect();
    if present.is_empty() {
        // No Connection header either: nothing more can be hop-by-hop.
        return;
    }
    // Headers named in Connection are hop-by-hop too.
    for named in h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        if h.contains_key(named)
            && let Ok(name) = HeaderName::from_bytes(named.as_bytes())
        {
            present.push(name);
        }
    }
    for n in present {
        h.remove(n);
    }
}

/// Roots for `https://` upstreams: the configured CA if any, else the system's.
fn upstream_tls_config(config: &ProxyConfig, https_upstreams: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    if !config.upstream_ca.is_empty() {
        for ca in &config.upstream_ca {
            // Validated when the config was loaded.
            if let Err(e) = roots.add(ca.clone()) {
                tracing::warn!(error = %e, "an upstream CA certificate was refused");
            }
        }
    } else if https_upstreams {
        let native = rustls_native_roots();
        if native.is_empty() {
            tracing::warn!(
                "no system CA certificates found: https upstreams will fail; set proxy.upstream_ca"
            );
        }
        roots.extend(native);
    }
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The system's CA certificates as trust anchors (unparsable ones skipped).
fn rustls_native_roots() -> Vec<rustls_pki_types::TrustAnchor<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading the system CA certificates");
    }
    let mut store = rustls::RootCertStore::empty();
    let (_added, _skipped) = store.add_parsable_certificates(found.certs);
    store.roots
}

/// The client's address for rate limiting. From an untrusted peer that is
/// the peer: its `X-Forwarded-For` is ignored. From a trusted proxy it is
/// the right-most address in `X-Forwarded-For` that is not itself a
/// trusted proxy (entries to its left could have been written by anyone).
/// If the chain is empty, malformed at that point, or all trusted, the
/// last address we can vouch for is used.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let entries: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded_addr(entry) else {
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port.
fn parse_forwarded_addr(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// Applies the request-side rewriting (see the module docs). `scheme` is
/// what the client used to reach us (`http` or `https`).
pub fn rewrite_request_headers(
    h: &mut HeaderMap,
    peer: &PeerHeaders,
    trusted: bool,
    original_host: Option<HeaderValue>,
    scheme: &'static str,
) {
    strip_hop_by_hop(h);
    strip_reserved_headers(h);
    strip_gateway_cookies(h);

    append_or_set(h, X_FORWARDED_FOR, &peer.ip, trusted);
    append_or_set(h, FORWARDED, &peer.forwarded, trusted);
    if !trusted || !h.contains_key(X_REAL_IP) {
        h.insert(X_REAL_IP, peer.ip.clone());
    }
    if !trusted || !h.contains_key(X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    if !trusted || !h.contains_key(X_FORWARDED_HOST) {
        match &original_host {
            Some(host) => {
                h.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                h.remove(X_FORWARDED_HOST);
            }
        }
    }
    if let Some(host) = original_host {
        h.insert(header::HOST, host);
    }
}

/// A list header of hops (`X-Forwarded-For`, `Forwarded`): from a trusted
/// proxy, its values with `ours` appended; from anyone else, `ours` alone.
fn append_or_set(h: &mut HeaderMap, name: HeaderName, ours: &HeaderValue, trusted: bool) {
    let prior = if trusted {
        h.get_all(&name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        String::new()
    };
    if prior.trim().is_empty() {
        h.insert(name, ours.clone());
    } else {
        // Ours is an address or a `for=` node: always text.
        let ours = ours.to_str().unwrap_or_default();
        if let Ok(v) = HeaderValue::from_str(&format!("{prior}, {ours}")) {
            h.insert(name, v);
        }
    }
}

/// Whether the gateway owns a header of this name: one that starts, with
/// `_` read as `-` and case ignored, with `x-waitroom` (a bare
/// `X-Waitroom` too) or `waitroom-`. CGI and WSGI servers read
/// `X_Waitroom_Token` as `X-Waitroom-Token`, so both spellings are ours.
pub fn is_reserved_header(name: &str) -> bool {
    let name = name.as_bytes();
    // Most names start with neither letter: one comparison for them.
    if !matches!(name.first(), Some(b'x' | b'X' | b'w' | b'W')) {
        return false;
    }
    RESERVED_HEADER_PREFIXES.iter().any(|prefix| {
        name.len() >= prefix.len()
            && name.iter().zip(prefix.as_bytes()).all(|(&n, &p)| {
                let n = if n == b'_' { b'-' } else { n };
                n.eq_ignore_ascii_case(&p)
            })
    })
}

/// Removes the headers the gateway owns (see [`is_reserved_header`]).
/// Nothing is allocated when there are none, the usual case.
fn strip_reserved_headers(h: &mut HeaderMap) {
    if !h.keys().any(|k| is_reserved_header(k.as_str())) {
        return;
    }
    let reserved: Vec<HeaderName> = h
        .keys()
        .filter(|k| is_reserved_header(k.as_str()))
        .cloned()
        .collect();
    for k in reserved {
        h.remove(k);
    }
}

/// Whether a cookie name is one of the gateway's as any upstream might
/// read it: surrounding blanks and quotes dropped, case ignored,
/// percent-escapes decoded, and `.`, `[` and space read as `_` (PHP reads
/// `wr.a.demo` as `wr_a_demo`).
pub fn is_gateway_cookie(name: &str) -> bool {
    let name = name
        .trim_matches(|c: char| c.is_ascii_whitespace() || c == '"')
        .as_bytes();
    // Every prefix is this long: only this much of the name is compared.
    let mut start = [0u8; 5];
    let (mut i, mut n) = (0, 0);
    while n < start.len() && i < name.len() {
        let mut b = name[i];
        i += 1;
        if b == b'%'
            && let Some(hex) = name.get(i..i + 2)
            && let Ok(text) = std::str::from_utf8(hex)
            && let Ok(v) = u8::from_str_radix(text, 16)
        {
            b = v;
            i += 2;
        }
        start[n] = match b {
            b'.' | b'[' | b' ' => b'_',
            other => other.to_ascii_lowercase(),
        };
        n += 1;
    }
    n == start.len() && COOKIE_PREFIXES.iter().any(|p| p.as_bytes() == start)
}

/// The name of one `name=value` cookie pair (all of it if it has no `=`).
fn cookie_pair_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

/// Whether a `;`-separated part of a Cookie header holds one of the
/// gateway's cookies, also as a `,`-separated pair (RFC 2965's separator,
/// which some servers still split on).
fn cookie_part_is_ours(part: &str) -> bool {
    part.split(',')
        .any(|pair| is_gateway_cookie(cookie_pair_name(pair)))
}

/// Removes the gateway's cookies, keeping the upstream's own. Nothing is
/// rebuilt when none is present.
fn strip_gateway_cookies(h: &mut HeaderMap) {
    // UTF-8, not `to_str`'s visible ASCII: browsers send UTF-8 values.
    let ours = h
        .get_all(header::COOKIE)
        .iter()
        .any(|v| match std::str::from_utf8(v.as_bytes()) {
            Ok(text) => text.split(';').any(cookie_part_is_ours),
            // Not text: no one can be sure what an upstream would read in it.
            Err(_) => true,
        });
    if !ours {
        return;
    }
    let mut kept: Vec<&str> = Vec::new();
    for text in h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
    {
        for part in text.split(';') {
            if cookie_part_is_ours(part) {
                // The upstream's pairs that shared a part with ours stay.
                kept.extend(
                    part.split(',')
                        .filter(|pair| !is_gateway_cookie(cookie_pair_name(pair)))
                        .map(str::trim)
                        .filter(|pair| !pair.is_empty()),
                );
            } else if !part.trim().is_empty() {
                kept.push(part.trim());
            }
        }
    }
    let kept = kept.join("; ");
    h.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept)
    {
        h.insert(header::COOKIE, v);
    }
}

/// Removes an upstream's `Set-Cookie` for any of the gateway's cookie
/// names: only the gateway sets (or clears) its own cookies.
fn strip_gateway_set_cookies(h: &mut HeaderMap) {
    let ours = |v: &HeaderValue| {
        let pair = v.as_bytes();
        let name_end = pair
            .iter()
            .position(|&b| b == b'=' || b == b';')
            .unwrap_or(pair.len());
        std::str::from_utf8(&pair[..name_end]).is_ok_and(is_gateway_cookie)
    };
    if !h.get_all(header::SET_COOKIE).iter().any(ours) {
        return;
    }
    let kept: Vec<HeaderValue> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !ours(v))
        .cloned()
        .collect();
    h.remove(header::SET_COOKIE);
    for v in kept {
        h.append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rewrites `h` as for a request from `peer`.
    fn rewrite(h: &mut HeaderMap, peer: &str, trusted: bool, scheme: &'static str) {
        let peer = PeerHeaders::new(peer.parse().unwrap());
        rewrite_request_headers(h, &peer, trusted, None, scheme);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn untrusted_forwarded_for_is_replaced_not_appended() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        rewrite_request_headers(
            &mut h,
            &PeerHeaders::new("10.1.2.3".parse().unwrap()),
            false,
            Some(HeaderValue::from_static("shop.test")),
            "http",
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.test");
    }

    #[test]
    fn trusted_forwarded_for_is_appended() {
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        rewrite(&mut h, "10.0.0.1", true, "http");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn gateway_cookies_hop_by_hop_and_reserved_headers_are_stripped() {
        let mut h = headers(&[
            ("cookie", "wr_q_demo=abc; session=keep"),
            ("cookie", "wr_a_demo=def"),
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("x-waitroom-token", "t"),
            ("accept", "*/*"),
        ]);
        rewrite(&mut h, "127.0.0.1", false, "http");
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "session=keep");
        for gone in ["connection", "x-secret", "keep-alive", "x-waitroom-token"] {
            assert!(!h.contains_key(gone), "{gone} should be stripped");
        }
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn a_tls_listener_forwards_https_as_the_proto() {
        let mut h = headers(&[("x-forwarded-proto", "http")]);
        rewrite(&mut h, "10.1.2.3", false, "https");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn client_ip_is_the_right_most_untrusted_forwarded_address() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
            ("x-forwarded-for", "10.0.0.5"),
        ]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn client_ip_ignores_forwarded_for_from_untrusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        let peer: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &trusted), peer);
    }

    #[test]
    fn client_ip_stops_at_garbage_and_handles_ports_and_all_trusted_chains() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4, not-an-ip, 10.0.0.7")]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "10.0.0.7".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-forwarded-for", "10.0.0.9, 10.0.0.8")]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
    }

    #[test]
    fn untrusted_forwarded_and_real_ip_are_replaced_by_the_peer() {
        let mut h = headers(&[
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        rewrite(&mut h, "10.1.2.3", false, "http");
        assert_eq!(h.get_all("forwarded").iter().count(), 1);
        assert_eq!(h["forwarded"], "for=10.1.2.3");
        assert_eq!(h["x-real-ip"], "10.1.2.3");
        let mut h = HeaderMap::new();
        rewrite(&mut h, "2001:db8::1", false, "http");
        assert_eq!(h["forwarded"], "for=\"[2001:db8::1]\"");
        assert_eq!(h["x-real-ip"], "2001:db8::1");
    }

    #[test]
    fn trusted_forwarded_is_appended_and_real_ip_kept() {
        let mut h = headers(&[
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        rewrite(&mut h, "10.0.0.1", true, "http");
        assert_eq!(h["forwarded"], "for=1.2.3.4;proto=https, for=10.0.0.1");
        assert_eq!(h["x-real-ip"], "1.2.3.4");
        let mut h = HeaderMap::new();
        rewrite(&mut h, "10.0.0.1", true, "http");
        assert_eq!(h["forwarded"], "for=10.0.0.1");
        assert_eq!(h["x-real-ip"], "10.0.0.1");
    }

    #[test]
    fn every_spelling_of_a_gateway_header_is_reserved() {
        for name in [
            "x-waitroom-token",
            "x_waitroom_token",
            "x-waitroom_token",
            "x-waitroom",
            "x_waitroom",
            "X-Waitroom-Pow",
            "waitroom-grant",
            "waitroom_grant",
        ] {
            assert!(is_reserved_header(name), "{name}");
        }
        for name in [
            "waitroom",
            "x-wait",
            "accept",
            "x-forwarded-for",
            "wait-room-x",
        ] {
            assert!(!is_reserved_header(name), "{name}");
        }
    }

    #[test]
    fn reserved_headers_are_stripped_in_every_spelling() {
        let mut h = headers(&[
            ("x_waitroom_token", "t"),
            ("x-waitroom", "1"),
            ("waitroom-grant", "g"),
            ("waitroom_grant", "g"),
            ("x-request-id", "keep"),
        ]);
        rewrite(&mut h, "127.0.0.1", false, "http");
        for gone in [
            "x_waitroom_token",
            "x-waitroom",
            "waitroom-grant",
            "waitroom_grant",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be stripped");
        }
        assert_eq!(h["x-request-id"], "keep");
    }

    #[test]
    fn gateway_cookies_are_stripped_however_quoted_or_separated() {
        for (sent, kept) in [
            ("a=1, wr_a_demo=x", Some("a=1")),
            ("\"wr_a_demo\"=x; b=2", Some("b=2")),
            ("  wr_q_demo =x;c=3", Some("c=3")),
            ("WR_A_demo=x; d=4", Some("d=4")),
            ("wr.a.demo=x; e=5", Some("e=5")),
            ("wr%5Fa_demo=x; f=6", Some("f=6")),
            ("a=1,wr_q_demo=x, b=2; wr_a_demo=y", Some("a=1; b=2")),
            ("wr_a_demo", None),
        ] {
            let mut h = headers(&[("cookie", sent)]);
            rewrite(&mut h, "127.0.0.1", false, "http");
            assert_eq!(h.get("cookie").map(|v| v.to_str().unwrap()), kept, "{sent}");
        }
    }

    #[test]
    fn cookies_without_ours_are_left_as_they_are() {
        let sent = "session=a,b; theme=\"dark\";x=wr_a_demo";
        let mut h = headers(&[("cookie", sent)]);
        rewrite(&mut h, "127.0.0.1", false, "http");
        assert_eq!(h["cookie"], sent);
    }

    #[test]
    fn upstream_answers_lose_reserved_headers_and_gateway_set_cookies() {
        let mut h = headers(&[
            ("x-waitroom-token", "forged"),
            ("waitroom-grant", "g"),
            ("set-cookie", "wr_a_demo=forged; Path=/"),
            ("set-cookie", "\"wr_q_demo\"=forged"),
            ("set-cookie", "session=s; Path=/"),
            ("content-type", "text/plain"),
        ]);
        strip_reserved_headers(&mut h);
        strip_gateway_set_cookies(&mut h);
        assert!(!h.contains_key("x-waitroom-token"));
        assert!(!h.contains_key("waitroom-grant"));
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["session=s; Path=/"]);
        assert_eq!(h["content-type"], "text/plain");
    }

    #[test]
    fn only_gateway_cookies_means_no_cookie_header() {
        let mut h = headers(&[("cookie", "wr_q_demo=abc")]);
        rewrite(&mut h, "127.0.0.1", false, "http");
        assert!(!h.contains_key("cookie"));
    }
}
