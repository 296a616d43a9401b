//! Who is asking: the bearer token of a request (checked on a reader connection, with the
//! per-address limit on wrong tokens), the roles an action needs, and the client's address.

use crate::metrics::AuthFailure;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use tally_core::Role;
use tally_store::{Device, TokenRefusal};

use crate::AppState;
use crate::error::ApiError;
use crate::hub::now_ms;

/// The bearer token of a request, from the header or the `token` query parameter.
pub fn bearer(parts: &Parts) -> Option<String> {
    if let Some(v) = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_string());
    }
    parts.uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
    })
}

/// An authenticated device.
pub struct Auth(pub Device);

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = bearer(parts) else {
            return Err(ApiError::Unauthorized("no token: send `Authorization: Bearer <token>` (the admin token is in DATA/admin.token)".into()));
        };
        // Token guessing: an address with too many wrong tokens is refused before the lookup.
        let addr = client_addr(parts);
        if let Some(ip) = addr {
            let refused = lock_guard(state).check_auth(ip, now_ms().max(0) as u64);
            if let Err(r) = refused {
                tracing::warn!(address = %ip, "request refused: {r}");
                return Err(ApiError::TooManyRequests(r.to_string()));
            }
        }
        // The check reads on a reader connection, so it never waits behind the writer; the
        // `last_seen` write (at most once a minute per device) goes to the writer in the
        // background.
        let reader = state.reader.clone();
        let expiry = state.config.token_idle_expiry_ms();
        let now = now_ms();
        let checked =
            tokio::task::spawn_blocking(move || reader.get().check_token(&token, now, expiry))
                .await??;
        match checked {
            Ok(device) => {
                if !device.seen_recently(now) {
                    let store = state.store.clone();
                    let seen = device.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = store.record_seen(&seen, now) {
                            tracing::warn!(device = %seen.device_id, error = %e, "last seen time not recorded");
                        }
                    });
                }
                Ok(Auth(device))
            }
            Err(TokenRefusal::Unknown) => {
                state.hub.metrics().auth_failure(AuthFailure::Unknown);
                if let Some(ip) = addr {
                    let failures = lock_guard(state).auth_failed(ip, now.max(0) as u64);
                    tracing::warn!(address = %ip, failures, "wrong token (unknown)");
                }
                Err(ApiError::Unauthorized(
                    "unknown token: send the whole token the device got at enrollment, or enroll the device again with a new invite".into(),
                ))
            }
            Err(TokenRefusal::Revoked { at }) => {
                state.hub.metrics().auth_failure(AuthFailure::Revoked);
                tracing::warn!(address = ?addr, "token of a revoked device refused");
                Err(ApiError::Unauthorized(format!(
                    "this device was revoked on {}: ask an organizer for a new invite and enroll again",
                    utc_minute(at)
                )))
            }
            Err(TokenRefusal::Expired { last_active }) => {
                state.hub.metrics().auth_failure(AuthFailure::Expired);
                tracing::warn!(address = ?addr, "expired token refused");
                Err(ApiError::Unauthorized(format!(
                    "this device's token expired: it was not used since {} (tokens expire after {} days unused); ask an organizer for a new invite and enroll again, the phone keeps what it holds",
                    utc_minute(last_active),
                    state.config.token_idle_expiry_secs / 86_400
                )))
            }
        }
    }
}

/// A time as a UTC date and minute, for messages.
fn utc_minute(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// The client's IP address, when the server was started with connection info.
pub fn client_addr(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<crate::tls::PeerAddr>>()
        .map(|c| c.0.0.ip())
}

/// The per-address guard, recovered from a poisoned lock (its state stays consistent).
pub fn lock_guard(state: &AppState) -> std::sync::MutexGuard<'_, crate::guard::Guard> {
    state.guard.lock().unwrap_or_else(|p| p.into_inner())
}

/// `GET /api/v1/me`: the device the token belongs to (its id, name, role and campaign; never
/// the token), so that a client such as the web dashboard can check a token and show what it
/// may do.
pub(crate) async fn me(Auth(device): Auth) -> axum::Json<Device> {
    axum::Json(device)
}

/// The device may act on `campaign`: the admin, or an organizer of it.
pub(crate) fn require_organizer(device: &Device, campaign: &str) -> Result<(), ApiError> {
    match device.role {
        Role::Admin => Ok(()),
        Role::Organizer if device.campaign.as_deref().is_none_or(|c| c == campaign) => Ok(()),
        _ => Err(ApiError::Forbidden(
            "only an organizer of this campaign or the admin may do this".into(),
        )),
    }
}

/// The device is the admin.
pub(crate) fn require_admin(device: &Device) -> Result<(), ApiError> {
    if device.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only the admin token may do this".into(),
        ))
    }
}

/// The client's address as an extractor (`None` without connection info).
pub(crate) struct ClientAddr(pub(crate) Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(client_addr(parts)))
    }
}
