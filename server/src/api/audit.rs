//! The audit log over HTTP (issue 15): [`record`], a layer on the router that appends one entry
//! for every organizer and admin action, whatever handler serves it, so no route can forget it;
//! and `GET /api/v1/audit` ([`list`]) and `GET /api/v1/audit/verify` ([`verify`]) to read and
//! check it. The store keeps the chain (`tally_store::audit`).
//!
//! An entry names the actor (device id and name, never the token), the action, the campaign and
//! the target ids, and the result (`ok`, or `refused: STATUS message`). Never a request's free
//! text (a strike's reason, a device's name typed by someone else) and never a signer's details:
//! the API takes none on these routes, and the entry takes only ids from the bodies.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;
use tally_core::Role;
use tally_store::{AuditEntry, AuditFilter, NewAudit};

use super::auth::{Auth, require_admin};
use super::on_blocking_pool;
use crate::AppState;
use crate::error::ApiError;
use crate::hub::now_ms;

/// The most bytes of a request the layer reads: axum's own limit for a JSON body (2 MiB), so
/// that every request a handler would take reaches it whole; a larger one is refused here with
/// the 413 the handler would have given.
const MAX_BODY: usize = 2 * 1024 * 1024;

/// The most bytes of an answer the layer reads to find the ids it records (the answers of these
/// routes are a few hundred bytes; the export's, which is large, is not read).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Which action a route is, if it is one the log records.
fn action(method: &Method, path: &str) -> Option<&'static str> {
    Some(match (method.as_str(), path) {
        ("POST", "/api/v1/campaigns") => "campaign.create",
        ("POST", "/api/v1/campaigns/{id}/events") => "event.add",
        ("POST", "/api/v1/invites") => "invite.create",
        ("POST", "/api/v1/enroll") => "device.enroll",
        ("POST", "/api/v1/devices/{id}/revoke") => "device.revoke",
        ("POST", "/api/v1/campaigns/{id}/strikes") => "review.strike",
        ("POST", "/api/v1/campaigns/{id}/sheets") => "review.sheet",
        ("GET", "/api/v1/campaigns/{id}/sealed") => "export.sealed",
        // The wrapped record keys that open the export's v2 records.
        ("GET", "/api/v1/campaigns/{id}/keys") => "export.keys",
        // Record ids only: never the duplicate token a request may carry.
        ("POST", "/api/v1/campaigns/{id}/erase") => "record.erase",
        // A one-time dashboard sign-in link (`tally dashboard`); not its secret.
        ("POST", "/api/v1/signin-links") => "signin.link",
        _ => return None,
    })
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The router layer: runs the request, then appends its entry. Requests it does not record
/// pass through untouched.
pub(crate) async fn record(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let Some(action) = path.as_deref().and_then(|p| action(request.method(), p)) else {
        return next.run(request).await;
    };
    let uri_id = request
        .uri()
        .path()
        .split('/')
        .nth(4)
        .map(str::to_string)
        .filter(|_| path.as_deref().is_some_and(|p| p.contains("{id}")));
    // Read the (small) body to find its ids, then hand the request on with it.
    let (parts, body) = request.into_parts();
    let token = super::auth::bearer(&parts);
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return axum::response::IntoResponse::into_response(ApiError::PayloadTooLarge(format!(
            "the request body is over {} MiB: send a smaller one",
            MAX_BODY / (1024 * 1024)
        )));
    };
    let asked: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = response.status();
    // The answer's ids (a new campaign's, an enrolled device's); the export's answer is not
    // read (it is the sealed records, and large).
    let (response, answered) =
        if matches!(action, "export.sealed" | "export.keys") && status.is_success() {
            (response, Value::Null)
        } else {
            let (parts, body) = response.into_parts();
            let bytes = to_bytes(body, MAX_ANSWER).await.unwrap_or_default();
            let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (Response::from_parts(parts, Body::from(bytes)), v)
        };
    let result = if status.is_success() {
        "ok".to_string()
    } else {
        let why = text(&answered, "error").unwrap_or_default();
        let why: String = why.chars().take(200).collect();
        format!("refused: {} {why}", status.as_u16())
    };
    let st = state.clone();
    let join = tokio::task::spawn_blocking(move || {
        let now = now_ms();
        // Who: the token's device (never the token); for an enrollment, the device it made.
        let actor = token.and_then(|t| st.reader.get().check_token(&t, now, None).ok()?.ok());
        let (mut actor_id, mut actor_name) = match &actor {
            Some(d) => (d.device_id.clone(), d.name.clone()),
            None => ("anonymous".to_string(), String::new()),
        };
        let mut campaign = match action {
            "invite.create" => text(&asked, "campaign"),
            "device.revoke" => None,
            _ => uri_id.clone(),
        };
        let target = match action {
            "campaign.create" => {
                campaign = text(&answered, "campaign");
                campaign.clone().unwrap_or_default()
            }
            "event.add" => text(&answered, "id")
                .or_else(|| text(&asked, "id"))
                .unwrap_or_default(),
            // Not the code: until it is used it is a credential.
            "invite.create" => format!("role={}", text(&asked, "role").unwrap_or_default()),
            "device.enroll" => {
                if let Some(id) = text(&answered, "device_id") {
                    actor_id = id.clone();
                    actor_name = st
                        .store
                        .device(&id)
                        .ok()
                        .flatten()
                        .map(|d| d.name)
                        .unwrap_or_default();
                }
                campaign = text(&answered, "campaign");
                let replaces = asked
                    .get("replaces")
                    .and_then(|r| text(r, "device_id"))
                    .map(|old| format!(",replaces={old}"))
                    .unwrap_or_default();
                format!("{actor_id}{replaces}")
            }
            "device.revoke" => {
                let id = uri_id.clone().unwrap_or_default();
                campaign = st.store.device(&id).ok().flatten().and_then(|d| d.campaign);
                id
            }
            "review.strike" => text(&asked, "signature").unwrap_or_default(),
            "review.sheet" => text(&asked, "serial").unwrap_or_default(),
            "record.erase" => answered
                .get("erased")
                .and_then(Value::as_array)
                .map(|ids| {
                    ids.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .or_else(|| {
                    asked.get("records").and_then(Value::as_array).map(|ids| {
                        ids.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                })
                .unwrap_or_default(),
            _ => String::new(),
        };
        let action = match (action, asked.get("revoked").and_then(Value::as_bool)) {
            ("review.strike", Some(true)) => "review.unstrike",
            (a, _) => a,
        };
        st.store.audit(&NewAudit {
            at: now,
            actor_id: &actor_id,
            actor_name: &actor_name,
            action,
            campaign: campaign.as_deref(),
            target: &target,
            result: &result,
        })
    })
    .await;
    match join {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(action, error = %e, "the audit entry was not written"),
        Err(e) => tracing::error!(action, error = %e, "the audit task failed"),
    }
    response
}

/// `GET /api/v1/audit?from=&to=&actor=&action=&campaign=&limit=`: the admin reads every entry,
/// an organizer those of their campaign.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let Query(pairs) = query.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; the query takes from, to, actor, action, campaign and limit",
            e.body_text()
        ))
    })?;
    let mut filter = AuditFilter::default();
    for (k, v) in pairs {
        let num = |v: &str| {
            v.parse::<i64>().map_err(|_| {
                ApiError::BadRequest(format!("{k}={v:?}: expected a number (ms since the epoch)"))
            })
        };
        match k.as_str() {
            // The token may come as a query parameter, as on every route (the document's tokenQuery).
            "token" => {}
            "from" => filter.from = Some(num(&v)?),
            "to" => filter.to = Some(num(&v)?),
            "actor" => filter.actor = Some(v),
            "action" => filter.action = Some(v),
            "campaign" => filter.campaign = Some(v),
            "limit" => {
                filter.limit = Some(
                    v.parse()
                        .ok()
                        .filter(|n| (1..=10_000).contains(n))
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!("limit={v:?}: expected 1 to 10000"))
                        })?,
                )
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: the audit takes from, to, actor, action, campaign and limit"
                )));
            }
        }
    }
    match device.role {
        Role::Admin => {}
        Role::Organizer => match (&device.campaign, &filter.campaign) {
            (Some(mine), Some(asked)) if mine != asked => {
                return Err(ApiError::Forbidden(format!(
                    "an organizer reads the audit of their own campaign ({mine}) only"
                )));
            }
            (Some(mine), _) => filter.campaign = Some(mine.clone()),
            (None, _) => {
                return Err(ApiError::Forbidden(
                    "this organizer token has no campaign: only the admin reads the whole audit"
                        .into(),
                ));
            }
        },
        _ => {
            return Err(ApiError::Forbidden(
                "the audit is for organizers and the admin; a canvasser's token cannot read it"
                    .into(),
            ));
        }
    }
    on_blocking_pool(move || Ok(Json(state.store.list_audit(&filter)?))).await
}

/// `GET /api/v1/audit/verify` (admin): checks the chain; names the first broken entry.
pub(crate) async fn verify(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
) -> Result<Json<Value>, ApiError> {
    require_admin(&device)?;
    on_blocking_pool(move || {
        Ok(Json(match state.store.verify_audit()? {
            Ok(n) => serde_json::json!({"ok": true, "entries": n}),
            Err(b) => serde_json::json!({"ok": false, "broken_at": b.seq, "why": b.why}),
        }))
    })
    .await
}
