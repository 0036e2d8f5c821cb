//! The admin API, served only on the admin listener.
//!
//! `/healthz` and `/readyz` answer without credentials (for probes);
//! everything else needs `Authorization: Bearer <admin token>`, compared in
//! constant time.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use crate::config::QueueMode;
use crate::error::GatewayError;
use crate::gateway::App;
use crate::http::{self, Body};
use crate::room::Room;

/// Largest admin request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    match route(&app, req).await {
        Ok(res) => res,
        Err(e) => e.into_response(&app.metrics, false),
    }
}

fn authorized(app: &App, req: &Request<Incoming>) -> bool {
    let Ok(Some(token)) = http::bearer(req.headers()) else {
        return false;
    };
    let expected = app.config.admin_token.as_bytes();
    token.len() == expected.len() && bool::from(token.as_bytes().ct_eq(expected))
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match path.as_str() {
        "/healthz" => return Ok(http::response(StatusCode::OK, "text/plain", "ok\n")),
        // Public keys: no token needed.
        "/admin/jwks.json" => return crate::api::jwks(app),
        "/readyz" => {
            let store_ok = app.lines.healthy() && app.rooms.iter().all(|r| r.store_healthy());
            let draining = app.draining.load(Ordering::Relaxed);
            // A shared store that does not answer is reported but keeps the
            // replica in rotation: it is the same Redis for every replica,
            // so taking them all out would turn "hold" (fans keep their page
            // and place) into an outage.
            let on_failure = app.lines.on_failure();
            let shared = on_failure.is_some();
            let status = if (store_ok || shared) && !draining {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let on_failure = on_failure.map(|f| match f {
                crate::config::OnStoreFailure::Hold => "hold",
                crate::config::OnStoreFailure::Open => "open",
            });
            return Ok(http::json(
                status,
                &json!({
                    "ready": status == StatusCode::OK,
                    "store_healthy": store_ok,
                    "degraded": !store_ok,
                    "on_store_failure": on_failure,
                    "draining": draining,
                }),
            ));
        }
        _ => {}
    }
    if !authorized(app, &req) {
        return Err(GatewayError::AdminUnauthorized);
    }
    if path == "/metrics" {
        for room in &app.rooms {
            app.metrics.observe_room(&room.snapshot());
        }
        return Ok(http::response(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            app.metrics.render(),
        ));
    }
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (segments.as_slice(), &method) {
        (["admin", "rooms"], &Method::GET) => {
            let rooms: Vec<Value> = app.rooms.iter().map(|r| room_json(r)).collect();
            Ok(http::json(StatusCode::OK, &json!({ "rooms": rooms })))
        }
        (["admin", "rooms"], _) => Err(GatewayError::MethodNotAllowed("GET")),
        (["admin", "rooms", id], m) => {
            let room = find(app, id)?;
            match *m {
                Method::GET => Ok(http::json(StatusCode::OK, &room_json(&room))),
                Method::PATCH => {
                    let body = read_json(req).await?;
                    patch(&room, body).await?;
                    Ok(http::json(StatusCode::OK, &room_json(&room)))
                }
                _ => Err(GatewayError::MethodNotAllowed("GET, PATCH")),
            }
        }
        (["admin", "rooms", id, "reset"], m) => {
            if *m != Method::POST {
                return Err(GatewayError::MethodNotAllowed("POST"));
            }
            let room = find(app, id)?;
            let epoch = room.reset().await?;
            tracing::warn!(room = %room.id(), epoch, "room reset by admin: a new epoch starts");
            Ok(http::json(StatusCode::OK, &room_json(&room)))
        }
        _ => Err(GatewayError::NotFound),
    }
}

fn find(app: &App, id: &str) -> Result<Arc<Room>, GatewayError> {
    app.room(id)
        .cloned()
        .ok_or_else(|| GatewayError::UnknownRoom(id.chars().take(64).collect()))
}

fn room_json(room: &Room) -> Value {
    let s = room.snapshot();
    let c = &room.config;
    json!({
        "id": c.id,
        "title": c.title,
        "host": c.host,
        "path_prefix": c.path_prefix,
        "upstream": format!("{}://{}", c.upstream.scheme, c.upstream.authority),
        "state": if s.sold_out { "sold_out" } else if s.closed { "closed" } else if s.paused { "paused" } else if s.stock == Some(0) { "tickets_in_carts" } else { "open" },
        "epoch": s.epoch,
        "queue_length": s.queue_length,
        "serving_counter": s.serving,
        "issued": s.issued,
        "admitted_total": s.admitted_total,
        "active_sessions": s.active_sessions,
        "called_unclaimed": s.called_unclaimed,
        "admit_rate_per_min": s.admit_rate_per_min,
        "effective_rate_per_min": s.admit_rate(),
        "rate_reason": s.rate_reason,
        "observed_advance_per_min": s.observed_advance_per_min,
        "max_active": s.max_active,
        "paused": s.paused,
        "closed": s.closed,
        "stock": s.stock,
        "sold_out": s.sold_out,
        "tickets_per_order": c.tickets_per_order,
        "queue": s.queue,
        "session_secs": s.session_secs,
        "session_max_secs": s.session_max_secs,
        "claim_grace_secs": s.claim_grace_secs,
        "upstream_healthy": room.upstream_healthy(room.clock.mono_ms()),
        "open": s.open,
        "opens_at": s.opens_at.map(crate::rfc3339::format),
        "closes_at": s.closes_at.map(crate::rfc3339::format),
        "closed_message": c.closed_message,
        "shuffle_commitment": s.commitment,
        "shuffle_seed": s.revealed_seed,
        "prequeue_entries": if s.open { s.shuffled.as_ref().map(|x| x.len()) } else { None },
    })
}

async fn read_json(req: Request<Incoming>) -> Result<Map<String, Value>, GatewayError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(GatewayError::UnsupportedMediaType);
    }
    let bytes = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                GatewayError::BodyTooLarge(MAX_BODY_BYTES)
            } else {
                GatewayError::BodyRead(e.to_string())
            }
        })?
        .to_bytes();
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(GatewayError::InvalidJson("expected a JSON object".into())),
        Err(e) => Err(GatewayError::InvalidJson(e.to_string())),
    }
}

/// Fields `PATCH /admin/rooms/{id}` accepts.
const PATCHABLE: [&str; 9] = [
    "admit_rate_per_min",
    "max_active",
    "paused",
    "closed",
    "session_secs",
    "opens_at",
    "closes_at",
    "stock",
    "sold_out",
];

#[derive(Debug, Default, PartialEq)]
struct Patch {
    admit_rate_per_min: Option<u64>,
    /// `Some(None)` removes the cap.
    max_active: Option<Option<u64>>,
    paused: Option<bool>,
    closed: Option<bool>,
    session_secs: Option<u64>,
    opens_at: Option<u64>,
    /// `Some(None)` removes the closing time.
    closes_at: Option<Option<u64>>,
    /// `Some(None)`: unknown.
    stock: Option<Option<u64>>,
    sold_out: Option<bool>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> GatewayError {
    GatewayError::InvalidValue {
        field,
        reason: reason.into(),
    }
}

fn uint(v: &Value, field: &'static str, min: u64, max: u64) -> Result<u64, GatewayError> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(_) => Err(invalid(field, format!("must be between {min} and {max}"))),
        None => Err(invalid(field, "must be a whole number")),
    }
}

fn time(v: &Value, field: &'static str) -> Result<u64, GatewayError> {
    let text = v.as_str().ok_or_else(|| {
        invalid(
            field,
            "must be an RFC 3339 time string like \"2026-12-01T09:00:00Z\"",
        )
    })?;
    crate::rfc3339::parse(text).map_err(|e| invalid(field, e))
}

fn boolean(v: &Value, field: &'static str) -> Result<bool, GatewayError> {
    v.as_bool()
        .ok_or_else(|| invalid(field, "must be true or false"))
}

fn parse_patch(body: &Map<String, Value>, mode: QueueMode) -> Result<Patch, GatewayError> {
    if let Some(unknown) = body.keys().find(|k| !PATCHABLE.contains(&k.as_str())) {
        return Err(GatewayError::InvalidJson(format!(
            "unknown field {unknown:?}; expected any of {}",
            PATCHABLE.join(", ")
        )));
    }
    if body.is_empty() {
        return Err(GatewayError::InvalidJson(format!(
            "no field to change; expected any of {}",
            PATCHABLE.join(", ")
        )));
    }
    let mut p = Patch::default();
    for (k, v) in body {
        match k.as_str() {
            "admit_rate_per_min" => {
                p.admit_rate_per_min = Some(uint(v, "admit_rate_per_min", 1, 6_000_000)?)
            }
            "max_active" if v.is_null() => {
                if mode == QueueMode::OverCapacity {
                    return Err(invalid("max_active", "an over_capacity room needs a cap"));
                }
                p.max_active = Some(None);
            }
            "max_active" => p.max_active = Some(Some(uint(v, "max_active", 1, u64::MAX >> 1)?)),
            "paused" => p.paused = Some(boolean(v, "paused")?),
            "closed" => p.closed = Some(boolean(v, "closed")?),
            "session_secs" => p.session_secs = Some(uint(v, "session_secs", 10, 86_400)?),
            "opens_at" => p.opens_at = Some(time(v, "opens_at")?),
            "closes_at" if v.is_null() => p.closes_at = Some(None),
            "closes_at" => p.closes_at = Some(Some(time(v, "closes_at")?)),
            "stock" if v.is_null() => p.stock = Some(None),
            "stock" => p.stock = Some(Some(uint(v, "stock", 0, 999_999_999_999)?)),
            "sold_out" => p.sold_out = Some(boolean(v, "sold_out")?),
            _ => unreachable!("checked against PATCHABLE above"),
        }
    }
    Ok(p)
}

async fn patch(room: &Room, body: Map<String, Value>) -> Result<(), GatewayError> {
    let p = parse_patch(&body, room.config.queue)?;
    let snap = room.snapshot();
    if p.opens_at.is_some() && snap.open {
        return Err(GatewayError::AlreadyOpen);
    }
    let opens_at = p.opens_at.or(snap.opens_at);
    let closes_at = p.closes_at.unwrap_or(snap.closes_at);
    if let (Some(o), Some(c)) = (opens_at, closes_at)
        && c <= o
    {
        return Err(invalid("closes_at", "must be after opens_at"));
    }
    // The promoter's stock news is the newest: a checkout's answer to a
    // request sent before it is ignored.
    let now_ms = room.clock.wall_ms();
    let settings = room
        .update_settings(|s| {
            if p.stock.is_some() || p.sold_out.is_some() {
                s.stock_at_ms = s.stock_at_ms.max(now_ms);
            }
            if let Some(v) = p.stock {
                s.stock = v;
            }
            if let Some(v) = p.sold_out {
                s.sold_out = v;
            }
            if let Some(v) = p.admit_rate_per_min {
                s.admit_rate_per_min = v;
            }
            if let Some(v) = p.max_active {
                s.max_active = v;
            }
            if let Some(v) = p.paused {
                s.paused = v;
            }
            if let Some(v) = p.closed {
                s.closed = v;
            }
            if let Some(v) = p.session_secs {
                s.session_secs = v;
            }
            if let Some(v) = p.opens_at {
                s.opens_at = Some(v);
            }
            if let Some(v) = p.closes_at {
                s.closes_at = v;
            }
        })
        .await?;
    tracing::info!(room = %room.id(), ?settings, "room settings changed by admin");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn patch_accepts_known_fields_and_null_cap() {
        let p = parse_patch(
            &body(json!({"admit_rate_per_min": 120, "max_active": null, "paused": true})),
            QueueMode::Always,
        )
        .unwrap();
        assert_eq!(p.admit_rate_per_min, Some(120));
        assert_eq!(p.max_active, Some(None));
        assert_eq!(p.paused, Some(true));
    }

    #[test]
    fn patch_errors_name_the_field() {
        let cases = [
            (json!({"admit_rate_per_min": 0}), "admit_rate_per_min"),
            (json!({"admit_rate_per_min": "fast"}), "admit_rate_per_min"),
            (json!({"paused": "yes"}), "paused"),
            (json!({"session_secs": 5}), "session_secs"),
            (json!({"max_active": -1}), "max_active"),
        ];
        for (b, field) in cases {
            match parse_patch(&body(b.clone()), QueueMode::Always) {
                Err(GatewayError::InvalidValue { field: f, .. }) => assert_eq!(f, field, "{b}"),
                other => panic!("{b}: {other:?}"),
            }
        }
        assert!(
            matches!(parse_patch(&body(json!({"rate": 1})), QueueMode::Always), Err(GatewayError::InvalidJson(m)) if m.contains("rate"))
        );
        assert!(matches!(
            parse_patch(&body(json!({})), QueueMode::Always),
            Err(GatewayError::InvalidJson(_))
        ));
        assert!(parse_patch(&body(json!({"max_active": null})), QueueMode::OverCapacity).is_err());
    }
}
