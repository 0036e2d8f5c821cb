//! Every error the gateway answers with, and the one place that maps them
//! to HTTP status, body, log level and metric label.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::host::HostError;
use crate::http::{self, Body, ParseError};
use crate::metrics::Metrics;
use crate::path::PathError;
use crate::proxy::{ForwardError, UpstreamError};
use crate::queue::ClaimError;
use crate::room::RoomError;
use crate::store::StoreError;
use crate::token::TokenError;

/// Where an error came from: the metric label and the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Upstream,
    Store,
    Internal,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Origin::Client => "client",
            Origin::Upstream => "upstream",
            Origin::Store => "store",
            Origin::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Parse(#[from] ParseError),
    #[error("the query parameter {0:?} is required")]
    MissingParam(&'static str),
    #[error("the query parameter {name:?} is invalid: {reason}")]
    InvalidParam { name: &'static str, reason: String },
    #[error("the {name} header is invalid: {reason}")]
    InvalidHeader { name: &'static str, reason: String },
    /// A request path with no safe normal form (see `path`).
    #[error("{0}")]
    InvalidPath(PathError),
    /// A request host that is malformed or ambiguous (see `host`).
    #[error("{0}")]
    InvalidHost(HostError),
    #[error("no room with id {0:?}")]
    UnknownRoom(String),
    #[error("no such endpoint")]
    NotFound,
    #[error("no room protects this route and there is no default upstream")]
    NoRoute,
    #[error("method not allowed; use {0}")]
    MethodNotAllowed(&'static str),
    #[error("a queue token is required (cookie or Authorization: Bearer)")]
    NoToken,
    #[error("{0}")]
    InvalidToken(TokenError),
    #[error("{0}")]
    Claim(ClaimError),
    #[error("the room is closed")]
    RoomClosed,
    #[error("{0}")]
    Store(StoreError),
    #[error("the store did not answer in time")]
    StoreTimeout,
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("a valid admin token is required (Authorization: Bearer)")]
    AdminUnauthorized,
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("the request body is not valid JSON for this endpoint: {0}")]
    InvalidJson(String),
    #[error("{field}: {reason}")]
    InvalidValue { field: &'static str, reason: String },
    #[error("cannot read the request body: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("this node is shutting down; reconnect shortly")]
    Draining,
    #[error("too many live event streams on this node; retry shortly")]
    TooManyStreams,
    /// `sse.max_streams_per_client` streams from this address are open.
    #[error("too many live event streams from your network; close some tabs or retry shortly")]
    TooManyClientStreams,
    /// A state-changing request from another site's page (see `csrf`).
    #[error("{0}")]
    CrossSite(crate::csrf::CrossSite),
    #[error("the room has already opened: its opening time can no longer change")]
    AlreadyOpen,
    /// A new place needs a solved challenge first (`X-Waitroom-Pow`).
    #[error("joining this room needs a solved challenge: fetch one from /_waitroom/challenge")]
    PowRequired { challenge: String, bits: u8 },
    #[error("{reason}")]
    PowInvalid {
        reason: crate::pow::PowError,
        challenge: String,
        bits: u8,
    },
    /// Too many new places from one client address (IPv4, or IPv6 /64).
    #[error("too many new places from your network; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
}

impl From<ForwardError> for GatewayError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Upstream(u) => GatewayError::Upstream(u),
            ForwardError::RequestBody => GatewayError::BodyRead(e.to_string()),
            ForwardError::RequestBodyTimeout => GatewayError::BodyTimeout,
        }
    }
}

impl From<RoomError> for GatewayError {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::Store(s) => GatewayError::Store(s),
            RoomError::StoreTimeout => GatewayError::StoreTimeout,
            RoomError::Claim(c) => GatewayError::Claim(c),
            RoomError::Closed => GatewayError::RoomClosed,
            RoomError::ShuttingDown => GatewayError::Draining,
        }
    }
}

/// `Retry-After` for answers that are only briefly unavailable.
const STORE_RETRY_AFTER_SECS: u64 = 5;
/// `Retry-After` when a client address has all its event streams open:
/// one of them has to end first, which takes longer than a blip.
const CLIENT_STREAMS_RETRY_AFTER_SECS: u64 = 30;

impl GatewayError {
    /// Status and machine-readable code.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        use GatewayError::*;
        match self {
            Parse(ParseError::CookieNotText) => (StatusCode::BAD_REQUEST, "invalid_cookie"),
            Parse(ParseError::QueryNotUtf8) => (StatusCode::BAD_REQUEST, "invalid_query"),
            Parse(ParseError::NotBearer) => (StatusCode::UNAUTHORIZED, "invalid_authorization"),
            MissingParam(_) => (StatusCode::BAD_REQUEST, "missing_parameter"),
            InvalidParam { .. } => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            InvalidHeader { .. } => (StatusCode::BAD_REQUEST, "invalid_header"),
            InvalidPath(_) => (StatusCode::BAD_REQUEST, "invalid_path"),
            InvalidHost(_) => (StatusCode::BAD_REQUEST, "invalid_host"),
            UnknownRoom(_) => (StatusCode::NOT_FOUND, "unknown_room"),
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            NoToken => (StatusCode::UNAUTHORIZED, "missing_token"),
            InvalidToken(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Claim(ClaimError::NotYet) => (StatusCode::CONFLICT, "not_your_turn"),
            Claim(ClaimError::AlreadyClaimed) => (StatusCode::FORBIDDEN, "place_already_used"),
            Claim(ClaimError::Missed) => (StatusCode::GONE, "turn_passed"),
            Claim(ClaimError::Unknown) => (StatusCode::GONE, "unknown_place"),
            Claim(ClaimError::Paused) => (StatusCode::CONFLICT, "room_paused"),
            Claim(ClaimError::Closed) => (StatusCode::CONFLICT, "room_closed"),
            RoomClosed => (StatusCode::CONFLICT, "room_closed"),
            Store(_) | StoreTimeout => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Upstream(UpstreamError::Timeout) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
            AdminUnauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            InvalidValue { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value"),
            BodyRead(_) => (StatusCode::BAD_REQUEST, "body_read_failed"),
            BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
            TooManyStreams => (StatusCode::SERVICE_UNAVAILABLE, "too_many_streams"),
            TooManyClientStreams => (StatusCode::TOO_MANY_REQUESTS, "too_many_client_streams"),
            CrossSite(_) => (StatusCode::FORBIDDEN, "cross_site_request"),
            AlreadyOpen => (StatusCode::CONFLICT, "already_open"),
            PowRequired { .. } => (StatusCode::PRECONDITION_REQUIRED, "pow_required"),
            PowInvalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "pow_invalid"),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            GatewayError::Store(_) | GatewayError::StoreTimeout => Origin::Store,
            GatewayError::Upstream(_) => Origin::Upstream,
            _ => Origin::Client,
        }
    }

    /// The one mapping to a response. `as_html` gives browsers a readable page.
    pub fn into_response(self, metrics: &Metrics, as_html: bool) -> Response<Body> {
        let (status, code) = self.status_code();
        let origin = self.origin();
        metrics.errors.with_label_values(&[origin.label()]).inc();
        match origin {
            Origin::Client => tracing::debug!(code, error = %self, "client error"),
            Origin::Upstream | Origin::Store => {
                tracing::warn!(code, error = %self, "request failed")
            }
            Origin::Internal => tracing::error!(code, error = %self, "internal error"),
        }
        let message = match origin {
            // The details are in the log line above; the public gets no
            // infrastructure addresses or driver messages.
            Origin::Store => "the queue is briefly unavailable; try again in a few seconds".into(),
            _ => self.to_string(),
        };
        let mut res =
            if let (GatewayError::RateLimited { retry_after_secs }, true) = (&self, as_html) {
                // A browser on a protected route: a calm page that retries by itself.
                http::html(status, crate::page::slow_down_page(*retry_after_secs))
            } else if origin == Origin::Store && as_html {
                http::html(status, crate::page::hold_page(STORE_RETRY_AFTER_SECS))
            } else if as_html {
                http::html(status, crate::page::error_page(status, &message))
            } else {
                let mut body = json!({ "error": code, "message": message });
                if let GatewayError::InvalidToken(reason) = &self {
                    body["reason"] = json!(reason.label());
                }
                if let GatewayError::CrossSite(reason) = &self {
                    body["reason"] = json!(reason.label());
                }
                if let GatewayError::InvalidPath(reason) = &self {
                    body["reason"] = json!(reason.label());
                }
                if let GatewayError::InvalidHost(reason) = &self {
                    body["reason"] = json!(reason.label());
                }
                if let GatewayError::InvalidValue { field, .. } = &self {
                    body["field"] = json!(field);
                }
                if let GatewayError::RateLimited { retry_after_secs } = &self {
                    body["retry_after_secs"] = json!(retry_after_secs);
                }
                if let GatewayError::PowRequired { challenge, bits }
                | GatewayError::PowInvalid {
                    challenge, bits, ..
                } = &self
                {
                    body["challenge"] = json!(challenge);
                    body["bits"] = json!(bits);
                }
                if let GatewayError::PowInvalid { reason, .. } = &self {
                    body["reason"] = json!(reason.label());
                }
                http::json(status, &body)
            };
        let h = res.headers_mut();
        match &self {
            GatewayError::MethodNotAllowed(allow) => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            GatewayError::AdminUnauthorized => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            GatewayError::Store(_)
            | GatewayError::StoreTimeout
            | GatewayError::RoomClosed
            | GatewayError::Draining
            | GatewayError::TooManyStreams => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(STORE_RETRY_AFTER_SECS),
                );
            }
            GatewayError::TooManyClientStreams => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(CLIENT_STREAMS_RETRY_AFTER_SECS),
                );
            }
            GatewayError::RateLimited { retry_after_secs } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        res
    }
}
