//! The quarantine, for the admin: the changes the server refused (from sync, or from the API's
//! own writes), with the device, the document, the time and the reason, oldest first and paged.
//! Never the refused bytes themselves: they may hold what validation kept out (a plaintext
//! name where a sealed one belongs), and a page or a log is no place for them.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use tally_store::QuarantineFilter;

use super::auth::{Auth, require_admin};
use super::on_blocking_pool;
use super::types::{QuarantineList, Quarantined};
use crate::AppState;
use crate::error::ApiError;

/// Entries per page when the query gives no `limit`.
pub const DEFAULT_LIMIT: u32 = 200;
/// The most entries one page holds.
pub const MAX_LIMIT: u32 = 1000;

/// `GET /api/v1/quarantine?after=ID&limit=N&device=ID`.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<QuarantineList>, ApiError> {
    require_admin(&device)?;
    let Query(pairs) = query.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; the query takes after, limit and device",
            e.body_text()
        ))
    })?;
    let mut filter = QuarantineFilter {
        limit: Some(DEFAULT_LIMIT),
        ..QuarantineFilter::default()
    };
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in pairs {
        if !seen.insert(k.clone()) {
            return Err(ApiError::BadRequest(format!(
                "{k} is given twice: give it once"
            )));
        }
        match k.as_str() {
            "token" => {}
            "after" => {
                let id = v.parse::<i64>().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "after={v:?}: give the id of the last entry of the previous page (a whole number)"
                    ))
                })?;
                filter.after_id = Some(id);
            }
            "limit" => {
                let n = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit={v:?}: give a whole number from 1 to {MAX_LIMIT}"
                        ))
                    })?;
                filter.limit = Some(n);
            }
            "device" => filter.device_id = Some(v),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {k:?}: the quarantine takes after, limit and device"
                )));
            }
        }
    }
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT) as usize;
    on_blocking_pool(move || {
        let entries = state.reader.get().list_quarantine(&filter)?;
        let next_after = (entries.len() == limit)
            .then(|| entries.last().map(|e| e.id))
            .flatten();
        Ok(Json(QuarantineList {
            entries: entries
                .into_iter()
                .map(|e| Quarantined {
                    id: e.id,
                    device_id: e.device_id,
                    doc_id: e.doc_id,
                    at: e.at,
                    reason: e.reason,
                    rule: e.rule,
                    size: e.size,
                    repeats: e.repeats,
                })
                .collect(),
            next_after,
        }))
    })
    .await
}
