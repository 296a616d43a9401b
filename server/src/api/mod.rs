//! The HTTP API under `/api/v1`: enrollment (a one-time code for a device token), campaigns and
//! their events, invites, device revocation; for organizers, a campaign's totals (filtered, with
//! small cells suppressed, also as a live stream: [`crate::live`]), strikes and paper sheets, and
//! the sealed records for export. Writes to documents take the same validated path as sync
//! ([`crate::hub::Hub::commit`]). Tokens come as `Authorization: Bearer ...` (or `?token=` for
//! browsers). The routes are listed in `crate::ROUTES` and described by [`crate::openapi`].
//!
//! One module per resource: [`auth`] (tokens, roles, the client's address), [`devices`]
//! (enrollment, invites, devices, revocation), [`campaigns`] (campaigns and events), [`totals`]
//! (totals and their live stream), [`review`] (strikes, paper sheets), [`export`] (sealed
//! records), [`quarantine`] (refused changes, for the admin), [`signin`] (the dashboard's
//! one-time sign-in links); [`types`] holds every request and response body, which the clients
//! share.
//!
//! Every failure is an [`ApiError`] (status and message in one place, `error.rs`). Checks run in
//! one order: the token (401), its role and campaign (403), the campaign (404), then the query
//! or body (400), so a caller learns the first thing to fix.

pub mod audit;
pub mod auth;
pub mod campaigns;
pub mod devices;
pub mod export;
pub mod keys;
pub mod quarantine;
pub mod review;
pub mod signin;
pub mod totals;
pub mod types;

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use tally_core::campaign::Campaign;
use tally_proto::DocumentId;
use tally_store::DocFilter;

use crate::AppState;
use crate::error::ApiError;

/// Takes a JSON body, or says what is wrong with it and what a good one looks like.
pub(crate) fn body<T>(b: Result<Json<T>, JsonRejection>, example: &str) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge(
                "the request body is larger than the API accepts (2 MB); send only the fields the endpoint documents".into(),
            );
        }
        ApiError::BadRequest(format!(
            "{}; send a JSON body like {example}",
            e.body_text()
        ))
    })
}

/// Runs `f` on tokio's blocking pool (SQLite, document loads), at the server's own priority:
/// the API's work. A sync connection's work runs on the lower-priority workers instead
/// ([`crate::sync`]'s `on_sync_workers`).
pub(crate) async fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await?
}

pub(crate) fn doc_of_kind(
    state: &AppState,
    campaign: &str,
    kind: &str,
) -> Result<Option<String>, ApiError> {
    let docs = state.store.list_documents(&DocFilter {
        campaign: Some(campaign.into()),
        kind: Some(kind.into()),
        owner: None,
    })?;
    Ok(docs.first().map(|m| format!("automerge:{}", m.doc_id)))
}

pub(crate) fn campaign_doc(id: &str) -> Result<DocumentId, ApiError> {
    id.parse().map_err(|e| {
        ApiError::NotFound(format!(
            "{id:?} is not a campaign id ({e}); list campaigns with GET /api/v1/campaigns"
        ))
    })
}

/// The campaign `id`, or a 404 that says how to find the right id.
pub(crate) fn known_campaign(state: &AppState, id: &str) -> Result<Arc<Campaign>, ApiError> {
    state.hub.campaign(id)?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no campaign {id:?} on this server; list campaigns with GET /api/v1/campaigns"
        ))
    })
}

/// The OpenAPI document of this server.
pub(crate) async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}
