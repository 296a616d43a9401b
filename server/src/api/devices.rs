//! Devices: enrollment (a one-time invite code for a device token), invites, the list of
//! devices and their revocation (which also closes the device's connections).

use crate::metrics::Outcome;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use tally_core::Role;
use tally_store::Device;

use super::auth::{Auth, ClientAddr, lock_guard, require_admin, require_organizer};
use super::types::{EnrollRequest, Enrolled, Invite, InviteRequest, Revoked};
use super::{body, doc_of_kind, on_blocking_pool};
use crate::AppState;
use crate::error::ApiError;
use crate::hub::now_ms;

pub(crate) async fn enroll(
    State(state): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    req: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Json<Enrolled>, ApiError> {
    let metrics = state.hub.metrics().clone();
    let answer = enroll_inner(state, addr, req).await;
    metrics.enrollment(if answer.is_ok() {
        Outcome::Ok
    } else {
        Outcome::Refused
    });
    answer
}

async fn enroll_inner(
    state: Arc<AppState>,
    addr: Option<std::net::IpAddr>,
    req: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Json<Enrolled>, ApiError> {
    // Every attempt counts, whatever its body: a flood of them is refused before any lookup.
    if let Some(ip) = addr {
        let counted = lock_guard(&state).enroll_attempt(ip, now_ms().max(0) as u64);
        if let Err(r) = counted {
            tracing::warn!(address = %ip, "enrollment refused: {r}");
            return Err(ApiError::TooManyRequests(r.to_string()));
        }
    }
    let req = body(
        req,
        r#"{"code": "XXXX-XXXX-XXXX", "name": "Amina's phone"}"#,
    )?;
    on_blocking_pool(move || {
        let name = if req.name.trim().is_empty() {
            "phone".to_string()
        } else {
            req.name.trim().chars().take(100).collect()
        };
        let proof = req.replaces.as_ref().map(|r| tally_store::Replaces {
            device_id: &r.device_id,
            token: &r.token,
        });
        let (device, token) =
            state.store
                .redeem_invite_replacing(&req.code, &name, now_ms(), proof)?;
        tracing::info!(device = %device.device_id, role = device.role.as_str(), replaces = ?device.replaces, "device enrolled");
        if let Some(old) = &device.replaces {
            // The old device is revoked: its connections close like a revoked device's.
            let closed = state.disconnect(old);
            tracing::info!(device = %old, connections = closed, "device replaced and revoked");
        }
        let (campaign_url, totals_url) = match &device.campaign {
            Some(c) => (
                Some(format!("automerge:{c}")),
                doc_of_kind(&state, c, "totals")?,
            ),
            None => (None, None),
        };
        Ok(Json(Enrolled {
            device_id: device.device_id,
            token: token.into_string(),
            role: device.role.as_str().into(),
            campaign: device.campaign,
            campaign_url,
            totals_url,
            replaces: device.replaces,
        }))
    })
    .await
}

pub(crate) async fn invite(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    req: Result<Json<InviteRequest>, JsonRejection>,
) -> Result<Json<Invite>, ApiError> {
    let req = body(req, r#"{"campaign": "CAMPAIGN_ID", "role": "canvasser"}"#)?;
    require_organizer(&device, &req.campaign)?;
    let role = match req.role.as_str() {
        "canvasser" => Role::Canvasser,
        "organizer" => Role::Organizer,
        other => {
            return Err(ApiError::BadRequest(format!(
                "role {other:?}: invite a canvasser or an organizer"
            )));
        }
    };
    on_blocking_pool(move || {
        if state.hub.campaign(&req.campaign)?.is_none() {
            return Err(ApiError::NotFound(format!(
                "no campaign {}; list campaigns with GET /api/v1/campaigns",
                req.campaign
            )));
        }
        let ttl = state.config.invite_ttl_hours as i64 * 3_600_000;
        let now = now_ms();
        let (_, code) = state
            .store
            .create_invite(Some(&req.campaign), role, ttl, now)?;
        let server = state.config.public_url();
        Ok(Json(Invite {
            app_url: format!("{}/app/", server.trim_end_matches('/')),
            code: code.as_str().to_string(),
            expires_at: now + ttl,
            server,
            campaign: format!("automerge:{}", req.campaign),
            role: role.as_str().to_string(),
        }))
    })
    .await
}

pub(crate) async fn list_devices(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
) -> Result<Json<Vec<Device>>, ApiError> {
    require_admin(&device)?;
    on_blocking_pool(move || Ok(Json(state.store.list_devices()?))).await
}

pub(crate) async fn revoke(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    require_admin(&device)?;
    let st = state.clone();
    let id2 = id.clone();
    on_blocking_pool(move || match st.store.revoke_device(&id2, now_ms()) {
        Ok(true) => Ok(()),
        Err(tally_store::StoreError::NotFound(_)) => Err(ApiError::NotFound(format!(
            "no device {id2:?} on this server: the device ids are in `tally token list` (GET /api/v1/devices)"
        ))),
        // Known, and revoked before: say when, rather than that there is no such device.
        Ok(false) => {
            let d = st.store.device(&id2)?;
            let name = d.as_ref().map(|d| d.name.clone()).unwrap_or_default();
            let when = d
                .and_then(|d| d.revoked_at)
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "an unknown time".into());
            Err(ApiError::Conflict(format!(
                "device {id2} ({name:?}) was already revoked at {when}: nothing changed; a phone enrolls again with a new invite"
            )))
        }
        Err(e) => Err(e.into()),
    })
    .await?;
    let closed = state.disconnect(&id);
    tracing::info!(device = %id, connections = closed, "device revoked");
    Ok(Json(Revoked {
        revoked: id,
        connections_closed: closed,
    }))
}
