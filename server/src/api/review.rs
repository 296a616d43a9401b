//! Review: strikes of signatures (and their undoing) and the paper-sheet ledger, written to the
//! campaign's review document as the organizer, through the validated write path, and read back
//! whole (`GET .../review`) for `tally sheet list` and `tally unstrike`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use tally_core::review::{self, Sheet, SheetStatus, Strike, StrikeReason};
use tally_proto::DocumentId;

use super::auth::{Auth, require_organizer};
use super::types::{NewSheet, NewStrike, ReviewList};
use super::{body, doc_of_kind, known_campaign, on_blocking_pool};
use crate::AppState;
use crate::error::ApiError;
use crate::hub::{now_ms, writer_of};

/// The campaign's review document (strikes and sheets are written there).
pub(crate) fn review_doc(state: &AppState, campaign: &str) -> Result<DocumentId, ApiError> {
    let url = doc_of_kind(state, campaign, "review")?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "campaign {campaign} has no review document; it is made with the campaign (`tally campaign create`)"
        ))
    })?;
    url.trim_start_matches("automerge:")
        .parse()
        .map_err(|e| ApiError::stored(format!("the stored review id {url}"), e))
}

/// Strikes a signature of the campaign (or revokes a strike with `"revoked": true`): written to
/// the campaign's review document as the organizer, through the validated write path.
pub(crate) async fn strike(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
    req: Result<Json<NewStrike>, JsonRejection>,
) -> Result<Json<Strike>, ApiError> {
    require_organizer(&device, &id)?;
    on_blocking_pool(move || {
        known_campaign(&state, &id)?;
        let req = body(
            req,
            r#"{"signature": "SIGNATURE_ID", "reason": "duplicate", "revoked": false}"#,
        )?;
        let reason = StrikeReason::parse(&req.reason).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "reason {:?}: give duplicate, invalid, withdrawn_consent or test_entry",
                req.reason
            ))
        })?;
        if reason == StrikeReason::Erased {
            return Err(ApiError::BadRequest(
                "an erasure deletes the record's keys too: use POST /api/v1/campaigns/{id}/erase (`tally erase`), not a strike".into(),
            ));
        }
        let strike = Strike {
            signature: req.signature,
            reason,
            by: device.device_id.clone(),
            at: now_ms(),
            revoked: req.revoked,
        };
        strike
            .check()
            .map_err(|r| ApiError::BadRequest(format!("refused: {r}")))?;
        let known = state
            .reader
            .get()
            .read(|r| r.has_signature(&id, &strike.signature))?;
        if !known {
            return Err(ApiError::NotFound(format!(
                "no signature {:?} in campaign {id} on this server (yet): signature ids are the id column of the export (`tally export --all`; GET /api/v1/campaigns/{id}/sealed)",
                strike.signature
            )));
        }
        let doc = review_doc(&state, &id)?;
        let s = strike.clone();
        state
            .hub
            .commit(&doc, &writer_of(&device), None, b"", move |after| {
                review::put_strike(after, &s).map_err(|e| e.to_string())
            })?;
        tracing::info!(campaign = %id, device = %device.device_id, revoked = strike.revoked, "strike recorded");
        Ok(Json(strike))
    })
    .await
}

/// Records a paper petition sheet (or updates its count, riding or status) in the campaign's
/// review document, as the organizer, through the validated write path.
pub(crate) async fn sheet(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
    req: Result<Json<NewSheet>, JsonRejection>,
) -> Result<Json<Sheet>, ApiError> {
    require_organizer(&device, &id)?;
    on_blocking_pool(move || {
        known_campaign(&state, &id)?;
        let req = body(
            req,
            r#"{"serial": "S-0001", "count": 25, "riding": "Spadina—Harbourfront", "status": "collected"}"#,
        )?;
        let status_s = req.status.unwrap_or_else(|| "collected".into());
        let status = SheetStatus::parse(&status_s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status {status_s:?}: give collected, counted or delivered"
            ))
        })?;
        let sheet = Sheet {
            serial: req.serial,
            count: req.count,
            riding: req.riding.filter(|r| !r.trim().is_empty()),
            status,
        };
        sheet
            .check()
            .map_err(|r| ApiError::BadRequest(format!("refused: {r}")))?;
        let doc = review_doc(&state, &id)?;
        let s = sheet.clone();
        state
            .hub
            .commit(&doc, &writer_of(&device), None, b"", move |after| {
                review::put_sheet(after, &s).map_err(|e| e.to_string())
            })?;
        Ok(Json(sheet))
    })
    .await
}

/// The campaign's strikes (revoked ones included) and paper sheets, as the review document
/// holds them now.
pub(crate) async fn review(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
) -> Result<Json<ReviewList>, ApiError> {
    require_organizer(&device, &id)?;
    on_blocking_pool(move || {
        known_campaign(&state, &id)?;
        let doc = review_doc(&state, &id)?;
        let slot = state.hub.slot(&doc)?;
        let g = slot.lock().unwrap_or_else(|p| p.into_inner());
        let r = review::read(&g.doc)
            .map_err(|e| ApiError::stored(format!("the review of campaign {id}"), e))?;
        Ok(Json(ReviewList {
            strikes: r.strikes.into_values().collect(),
            sheets: r.sheets.into_values().collect(),
        }))
    })
    .await
}
