//! The demo's toy checkout, the upstream behind the gateway. It checks
//! `Waitroom-Admission` as a real checkout does (see `docs/checkout/`):
//!
//! ```text
//!   request ── Waitroom-Admission? ──no──→ 403
//!                  │ yes: kid → the gateway's JWKS (fetched over HTTP when first
//!                  │      needed, when older than five minutes, on an unknown kid)
//!                  └── EdDSA signature, exp, iss, aud ──bad──→ 403
//!                                       └── ok ──→ the checkout page, "Admitted fan #seq"
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::net::TcpListener;

use crate::admission::{ADMISSION_HEADER, AdmissionClaims};
use crate::page::escape_html;

/// How long fetched keys are trusted before they are fetched again.
const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// An unknown kid fetches the keys again, but not more often than this.
const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The toy checkout, listening on a loopback port.
pub struct ToyCheckout {
    pub addr: SocketAddr,
    admission: Arc<AdmissionCheck>,
}

impl ToyCheckout {
    /// Starts listening. Until `trust` names the gateway, every request
    /// is answered 503.
    pub async fn start() -> std::io::Result<ToyCheckout> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let admission = Arc::new(AdmissionCheck {
            gateway: OnceLock::new(),
            keys: tokio::sync::Mutex::new(FetchedKeys {
                set: JwkSet { keys: Vec::new() },
                at: None,
            }),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let orders = Arc::new(AtomicU64::new(0));
        let check = admission.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (orders, check) = (orders.clone(), check.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (orders, check) = (orders.clone(), check.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(checkout(req, &check, &orders).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(ToyCheckout { addr, admission })
    }

    /// Accepts the admissions the gateway listening on `public` signs as
    /// `issuer` for `room` (the room's default audience), checked with the
    /// keys it serves at `/_waitroom/jwks.json`.
    pub fn trust(&self, public: SocketAddr, issuer: &str, room: &str) {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[room]);
        let _ = self.admission.gateway.set(TrustedGateway {
            site: format!("http://{public}/"),
            jwks_url: Uri::from_maybe_shared(format!("http://{public}/_waitroom/jwks.json"))
                .expect("a socket address makes a valid URI"),
            validation,
        });
    }
}

struct AdmissionCheck {
    gateway: OnceLock<TrustedGateway>,
    keys: tokio::sync::Mutex<FetchedKeys>,
    client: Client<HttpConnector, Full<Bytes>>,
}

struct TrustedGateway {
    /// Where a refused visitor is sent.
    site: String,
    jwks_url: Uri,
    validation: Validation,
}

struct FetchedKeys {
    set: JwkSet,
    at: Option<Instant>,
}

/// Why a request is not let into the checkout.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the gateway is still starting")]
    NotReady,
    #[error("the request carries no Waitroom-Admission header")]
    Missing,
    #[error("the Waitroom-Admission header is not a signed token")]
    Malformed,
    #[error("the admission names no key the gateway publishes")]
    UnknownKey,
    #[error("the gateway's public keys cannot be fetched: {0}")]
    Jwks(String),
    #[error("the admission is not valid: {0}")]
    Invalid(jsonwebtoken::errors::Error),
}

impl AdmissionCheck {
    async fn verify(&self, headers: &HeaderMap) -> Result<AdmissionClaims, Refusal> {
        let gateway = self.gateway.get().ok_or(Refusal::NotReady)?;
        let token = headers
            .get(ADMISSION_HEADER)
            .ok_or(Refusal::Missing)?
            .to_str()
            .map_err(|_| Refusal::Malformed)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        let kid = header.kid.ok_or(Refusal::UnknownKey)?;
        let jwk = self.key(&gateway.jwks_url, &kid).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(Refusal::Invalid)?;
        jsonwebtoken::decode::<AdmissionClaims>(token, &key, &gateway.validation)
            .map(|data| data.claims)
            .map_err(Refusal::Invalid)
    }

    /// The gateway's public key `kid`, from keys fetched when first needed,
    /// when older than `JWKS_MAX_AGE`, and when `kid` is unknown (keys
    /// rotate) unless they were fetched less than `REFETCH_MIN_INTERVAL` ago.
    async fn key(&self, jwks_url: &Uri, kid: &str) -> Result<Jwk, Refusal> {
        let mut keys = self.keys.lock().await;
        let age = keys.at.map(|at| at.elapsed());
        let stale = age.is_none_or(|age| age > JWKS_MAX_AGE);
        let unknown =
            keys.set.find(kid).is_none() && age.is_none_or(|age| age >= REFETCH_MIN_INTERVAL);
        if stale || unknown {
            keys.set = self.fetch(jwks_url).await.map_err(Refusal::Jwks)?;
            keys.at = Some(Instant::now());
        }
        keys.set.find(kid).cloned().ok_or(Refusal::UnknownKey)
    }

    async fn fetch(&self, jwks_url: &Uri) -> Result<JwkSet, String> {
        let res = tokio::time::timeout(FETCH_TIMEOUT, async {
            let res = self
                .client
                .get(jwks_url.clone())
                .await
                .map_err(|e| e.to_string())?;
            if res.status() != StatusCode::OK {
                return Err(format!("{jwks_url} answered {}", res.status()));
            }
            res.into_body()
                .collect()
                .await
                .map(|body| body.to_bytes())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| format!("{jwks_url} did not answer in time"))??;
        serde_json::from_slice(&res).map_err(|e| format!("{jwks_url}: {e}"))
    }
}

async fn checkout(
    req: Request<Incoming>,
    admission: &AdmissionCheck,
    orders: &AtomicU64,
) -> Response<Full<Bytes>> {
    let claims = match admission.verify(req.headers()).await {
        Ok(claims) => claims,
        Err(refusal) => return refused(&refusal, admission.gateway.get()),
    };
    let body = if req.method() == hyper::Method::POST {
        let n = orders.fetch_add(1, Ordering::Relaxed) + 1;
        format!(
            "<h1>Order #{n} confirmed</h1><p>Admitted fan #{seq}: enjoy the show.</p>",
            seq = claims.seq
        )
    } else {
        format!(
            "<h1>Checkout</h1><p>Admitted fan #{seq}. This page is the toy checkout behind the \
             gateway; it let you in because your request carries the gateway's signed \
             <code>Waitroom-Admission</code>.</p>\
             <form method=post action=/buy><button>Buy 2 tickets</button></form>",
            seq = claims.seq
        )
    };
    page(StatusCode::OK, &body)
}

fn refused(refusal: &Refusal, gateway: Option<&TrustedGateway>) -> Response<Full<Bytes>> {
    let status = match refusal {
        Refusal::NotReady | Refusal::Jwks(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    };
    let way_in = gateway.map_or(String::new(), |g| {
        format!(" <a href=\"{0}\">{0}</a>", escape_html(&g.site))
    });
    page(
        status,
        &format!(
            "<h1>Not admitted</h1><p>Refused: {}.</p><p>This checkout serves only fans the waiting room \
             let in: their requests carry its signed <code>Waitroom-Admission</code> header. \
             Come in through the waiting room:{way_in}</p>",
            escape_html(&refusal.to_string())
        ),
    )
}

fn page(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(format!(
        "<!doctype html><meta charset=utf-8><meta name=viewport content=\"width=device-width\"><title>Checkout</title><body style=\"font-family:system-ui;padding:2rem\">{body}</body>"
    ))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}
