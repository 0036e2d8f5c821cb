//! The upstream side: the upstream connections and the header rewriting a
//! reverse proxy owes both ends.
//!
//! ```text
//!   Proxy::forward(request, upstream, the connection's link and peer)
//!     ─→ body::RequestBody wraps the client's body (records how far it got)
//!     ─→ headers: rewrite the request's (hop-by-hop, reserved, cookies, X-Forwarded-*)
//!     ─→ link::UpstreamLink (HTTP/1 client, http:// upstream)  or  the pooled client
//!        within response_timeout
//!     ─→ headers: rewrite the answer's (hop-by-hop, reserved, Set-Cookie)
//!     ─→ a `101` to a WebSocket upgrade: a tunnel::Tunnel for the caller to run
//! ```
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
//! cookies (`wr_q_*`, `wr_a_*`, `wr_k_*`) never reach the upstream however they are
//! spelt, and the upstream cannot set them. `X-Forwarded-For/-Proto/-Host`,
//! `X-Real-IP` and `Forwarded` are set from the connection unless the peer
//! is a configured trusted proxy, whose values are kept (and, for
//! `X-Forwarded-For` and `Forwarded`, appended to).
//!
//! **WebSockets.** An HTTP/1.1 request asking to upgrade to `websocket`
//! keeps exactly `Connection: upgrade` and its `Upgrade` (the
//! `Sec-WebSocket-*` headers pass like any other), and goes through the
//! pooled client. If the upstream answers `101`, that answer is rewritten
//! like any other, with the same two headers put back, and
//! [`Forwarded::tunnel`] holds both connections, for the caller to join
//! (see [`Tunnel`]) once the `101` has gone out. The caller decides when a
//! tunnel must end; the proxy only copies bytes.
//!
//! The proxy knows nothing of the downstream connection's other state: the
//! server's per-connection record (`conn::Connection`) holds the link and
//! the peer's header text, and hands them to [`Proxy::forward`].

mod body;
mod headers;
mod link;
mod tunnel;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::uri::Scheme;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ipnet::IpNet;

use crate::config::{ProxyConfig, Upstream};
use crate::http::Body;

use body::BodyState;
pub use body::RequestBody;
use headers::X_FORWARDED_PROTO;
pub use headers::{
    COOKIE_PREFIXES, PeerHeaders, RESERVED_HEADER_PREFIXES, client_ip, is_gateway_cookie,
    is_reserved_header, rewrite_request_headers,
};
pub use link::UpstreamLink;
pub use tunnel::{Tunnel, TunnelEnd};

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
    /// What the checkout said (read only when asked: see `checkout`).
    pub signals: crate::checkout::Signals,
    /// A WebSocket upgrade the upstream accepted (its answer is the `101`):
    /// the caller runs the tunnel once that answer is sent.
    pub tunnel: Option<Tunnel>,
}

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

    /// Sends `req` to `upstream` and streams the answer back. A request on
    /// an HTTP/1 connection goes over that connection's `link` when it can
    /// (see the module docs). `peer` is the connection's peer address and
    /// `peer_headers` the same address as the forwarding headers write it.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        upstream: &Upstream,
        link: &UpstreamLink,
        (peer, peer_headers): (IpAddr, &PeerHeaders),
        admission: Option<HeaderValue>,
        read_signals: bool,
    ) -> Result<Forwarded, ForwardError> {
        let mut req = req;
        // Taken before the request is handed on: hyper hands the client's
        // connection over through it once the `101` is written.
        let upgrade = headers::websocket_upgrade(req.version(), req.headers())
            .map(|value| (value, hyper::upgrade::on(&mut req)));
        let (mut req, progress) = RequestBody::watch(req);
        // An upgrade takes the pooled client, never the link: the upgraded
        // connection leaves for the tunnel and is never reused, while the
        // link is one connection polled in the downstream connection's task
        // (which an upgraded connection outlives). The pooled client
        // already has the connect, TLS and timeout handling, and never
        // pools a connection it upgraded.
        let link = Some(link).filter(|_| {
            upgrade.is_none()
                && req.version() <= Version::HTTP_11
                && upstream.scheme == Scheme::HTTP
        });
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
        let trusted = self.is_trusted(peer);
        rewrite_request_headers(
            req.headers_mut(),
            peer_headers,
            trusted,
            original_host,
            self.listener_scheme,
        );
        if let Some((value, _)) = &upgrade {
            headers::keep_upgrade(req.headers_mut(), value.clone());
        }
        // After the rewrite, which dropped any `Waitroom-*` header a client
        // sent: this one is the gateway's alone.
        if let Some(admission) = admission {
            req.headers_mut()
                .insert(crate::admission::ADMISSION_HEADER, admission);
        }

        let started = Instant::now();
        let exchange = async {
            match &link {
                Some(link) => {
                    link.send(req, &upstream.authority, self.connect_timeout)
                        .await
                }
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
        let mut response = response;
        let tunnel = match upgrade {
            Some((asked, client)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let value = response.headers().get(header::UPGRADE).cloned();
                Some((
                    value.unwrap_or(asked),
                    Tunnel {
                        client,
                        upstream: hyper::upgrade::on(&mut response),
                    },
                ))
            }
            _ => None,
        };
        let (mut parts, body) = response.into_parts();
        // Before the `Waitroom-*` family is removed from the answer.
        let signals = if read_signals {
            crate::checkout::Signals::read(&parts.headers)
        } else {
            Default::default()
        };
        // The `101` is hardened like any answer; then its upgrade is put back.
        headers::rewrite_response_headers(&mut parts.headers);
        let tunnel = tunnel.map(|(value, tunnel)| {
            headers::keep_upgrade(&mut parts.headers, value);
            tunnel
        });
        Ok(Forwarded {
            response: Response::from_parts(parts, body.boxed_unsync()),
            elapsed,
            signals,
            tunnel,
        })
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
