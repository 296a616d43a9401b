//! Record keys and erasure (issue 15, crypto-shredding; the contract is docs/clients.md 5a and
//! 5b). A phone uploads each v2 signature's key, wrapped to the campaign's organizers
//! (`PUT /api/v1/keys`, [`put_keys`]); an organizer reads them to open an export
//! (`GET .../keys`, [`list_keys`]) and erases records (`POST .../erase`, [`erase`]): every
//! wrapped key of those records is deleted, the ids are remembered so that no upload brings a
//! key back, the WAL is checkpointed and truncated, and an `erased` strike per record goes into
//! the review document (by id only), so totals stop counting them and exports show them erased.
//! The SQL is the store's (`tally_store::keys`).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tally_core::collection::AGE_MAGIC;
use tally_core::review::{self, Strike, StrikeReason};
use tally_store::KeyOutcome;

use super::auth::{Auth, require_organizer};
use super::review::review_doc;
use super::{body, known_campaign, on_blocking_pool};
use crate::AppState;
use crate::error::ApiError;
use crate::hub::{now_ms, writer_of};

/// The most keys in one upload.
pub const MAX_KEYS_PER_REQUEST: usize = 256;
/// The smallest wrapped key: an age header and its payload around 32 bytes.
pub const MIN_WRAPPED: usize = 32;
/// The largest wrapped key: an age file to the most recipients a campaign may list (32, about
/// 250 bytes each) with room to spare.
pub const MAX_WRAPPED: usize = 16 * 1024;
/// The most records one erase request names, and one page of keys holds.
pub const MAX_RECORDS: usize = 1_000;

/// `PUT /api/v1/keys`'s body.
#[derive(Serialize, Deserialize, Debug)]
pub struct KeysUpload {
    /// The keys, at most [`MAX_KEYS_PER_REQUEST`].
    pub keys: Vec<KeyUpload>,
}

/// One uploaded key.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct KeyUpload {
    /// The record (signature) id.
    pub record: String,
    /// The record key wrapped with age, standard base64.
    pub wrapped: String,
}

/// `PUT /api/v1/keys`'s answer: one result per key, in order.
#[derive(Serialize, Deserialize, Debug)]
pub struct KeysUploaded {
    /// The results.
    pub results: Vec<KeyResult>,
}

/// What became of one key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeyResult {
    /// The record id, as sent.
    pub record: String,
    /// `stored`, `already_stored` or `refused`.
    pub status: String,
    /// Why it was refused: `erased`, `conflict`, `other_campaign`, `too_many`, `bad_size`,
    /// `bad_record`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the refusal means and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl KeyResult {
    fn ok(record: &str, status: &str) -> Self {
        KeyResult {
            record: record.to_string(),
            status: status.into(),
            reason: None,
            message: None,
        }
    }

    fn refused(record: &str, reason: &str, message: String) -> Self {
        KeyResult {
            record: record.to_string(),
            status: "refused".into(),
            reason: Some(reason.into()),
            message: Some(message),
        }
    }
}

/// `GET /api/v1/campaigns/{id}/keys`'s answer: one page.
#[derive(Serialize, Deserialize, Debug)]
pub struct KeysPage {
    /// Every key of the page's records, by record then device.
    pub keys: Vec<StoredKey>,
    /// Ask again with `after` = this for the next page; `null` after the last.
    pub next: Option<String>,
}

/// One stored key, for an organizer.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct StoredKey {
    /// The record id.
    pub record: String,
    /// The device that uploaded it (prefer the record's `collected_by`).
    pub device: String,
    /// The wrapped key, standard base64.
    pub wrapped: String,
}

/// `POST /api/v1/campaigns/{id}/erase`'s body: record ids, or one duplicate token.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    /// Record ids, at most [`MAX_RECORDS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<String>>,
    /// A duplicate token (64 hex), computed on the organizer's machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_token: Option<String>,
}

/// What an erasure did.
#[derive(Serialize, Deserialize, Debug)]
pub struct Erased {
    /// The records erased (now, or before).
    pub erased: Vec<String>,
    /// Wrapped keys deleted.
    pub keys_deleted: usize,
    /// Of them, the records sealed in format v1: they no longer count, but their details stay
    /// in the document's history (docs/security.md, "Erasure").
    pub v1: Vec<String>,
}

/// Uploads record keys of the device's campaign (docs/clients.md 5a).
pub(crate) async fn put_keys(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    req: Result<Json<KeysUpload>, JsonRejection>,
) -> Result<Json<KeysUploaded>, ApiError> {
    let Some(campaign) = device.campaign.clone() else {
        return Err(ApiError::Forbidden(
            "this token has no campaign: record keys are uploaded by the phones of a campaign"
                .into(),
        ));
    };
    let req = body(
        req,
        r#"{"keys": [{"record": "RECORD_ID", "wrapped": "BASE64 OF THE WRAPPED KEY"}]}"#,
    )?;
    if req.keys.len() > MAX_KEYS_PER_REQUEST {
        return Err(ApiError::BadRequest(format!(
            "{} keys in one request; send at most {MAX_KEYS_PER_REQUEST} per request",
            req.keys.len()
        )));
    }
    on_blocking_pool(move || {
        let mut results: Vec<Option<KeyResult>> = vec![None; req.keys.len()];
        let mut valid = Vec::new();
        let mut at = Vec::new();
        for (i, k) in req.keys.iter().enumerate() {
            if tally_core::fields::check_id("record", &k.record).is_err() {
                results[i] = Some(KeyResult::refused(
                    &k.record.chars().take(64).collect::<String>(),
                    "bad_record",
                    "a record id is 1 to 64 ASCII letters, digits, '-' or '_'".into(),
                ));
                continue;
            }
            let bytes = match B64.decode(&k.wrapped) {
                Ok(b) => b,
                Err(e) => {
                    results[i] = Some(KeyResult::refused(
                        &k.record,
                        "bad_size",
                        format!("the wrapped key is not standard base64: {e}"),
                    ));
                    continue;
                }
            };
            if !(MIN_WRAPPED..=MAX_WRAPPED).contains(&bytes.len()) || !bytes.starts_with(AGE_MAGIC)
            {
                results[i] = Some(KeyResult::refused(
                    &k.record,
                    "bad_size",
                    format!(
                        "a wrapped key is an age file of {MIN_WRAPPED} to {MAX_WRAPPED} bytes; got {} bytes{}",
                        bytes.len(),
                        if bytes.starts_with(AGE_MAGIC) { "" } else { ", not an age file" }
                    ),
                ));
                continue;
            }
            valid.push((k.record.clone(), bytes));
            at.push(i);
        }
        let max = state.config.max_keys_per_device;
        let outcomes = state
            .store
            .put_keys(&campaign, &device.device_id, &valid, max, now_ms())?;
        for ((i, (record, _)), outcome) in at.into_iter().zip(&valid).zip(outcomes) {
            results[i] = Some(match outcome {
                KeyOutcome::Stored => KeyResult::ok(record, "stored"),
                KeyOutcome::AlreadyStored => KeyResult::ok(record, "already_stored"),
                KeyOutcome::Erased => KeyResult::refused(
                    record,
                    "erased",
                    "an organizer erased this record: drop its key, the record is done".into(),
                ),
                KeyOutcome::Conflict => KeyResult::refused(
                    record,
                    "conflict",
                    "this device already stored another key for this record; keep yours and tell an organizer".into(),
                ),
                KeyOutcome::OtherCampaign => KeyResult::refused(
                    record,
                    "other_campaign",
                    format!("this record is a signature of another campaign, not of {campaign}"),
                ),
                KeyOutcome::TooMany => KeyResult::refused(
                    record,
                    "too_many",
                    format!(
                        "this device holds the most keys the server keeps for one device (max_keys_per_device = {max}); keep the key and tell an organizer to raise it"
                    ),
                ),
            });
        }
        Ok(Json(KeysUploaded {
            results: results.into_iter().map(|r| r.expect("every key has a result")).collect(),
        }))
    })
    .await
}

/// A page of a campaign's wrapped keys, for an organizer to open an export
/// (`?after=RECORD&limit=N`).
pub(crate) async fn list_keys(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<KeysPage>, ApiError> {
    require_organizer(&device, &id)?;
    let Query(pairs) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut after = None;
    let mut limit = MAX_RECORDS;
    for (k, v) in pairs {
        match k.as_str() {
            // A browser's token (docs/clients.md 2), read by the Auth extractor.
            "token" => {}
            "after" => after = Some(v),
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_RECORDS).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit {v:?}: give a number of records from 1 to {MAX_RECORDS}"
                        ))
                    })?
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: this endpoint takes after and limit"
                )));
            }
        }
    }
    on_blocking_pool(move || {
        known_campaign(&state, &id)?;
        let keys = state
            .reader
            .get()
            .list_keys(&id, after.as_deref(), limit as u32)?;
        let records: BTreeSet<&str> = keys.iter().map(|k| k.record.as_str()).collect();
        let next = (records.len() == limit)
            .then(|| records.last().map(|r| r.to_string()))
            .flatten();
        Ok(Json(KeysPage {
            keys: keys
                .into_iter()
                .map(|k| StoredKey {
                    record: k.record,
                    device: k.device,
                    wrapped: B64.encode(&k.wrapped),
                })
                .collect(),
            next,
        }))
    })
    .await
}

/// Erases records of a campaign, by id or by duplicate token (docs/security.md, "Erasure").
pub(crate) async fn erase(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
    req: Result<Json<EraseRequest>, JsonRejection>,
) -> Result<Json<Erased>, ApiError> {
    require_organizer(&device, &id)?;
    on_blocking_pool(move || {
        known_campaign(&state, &id)?;
        let req = body(
            req,
            r#"{"records": ["RECORD_ID"]} or {"duplicate_token": "64 HEX DIGITS"}"#,
        )?;
        let records: Vec<String> = match (req.records, req.duplicate_token) {
            (Some(records), None) => {
                if records.is_empty() || records.len() > MAX_RECORDS {
                    return Err(ApiError::BadRequest(format!(
                        "name 1 to {MAX_RECORDS} records per request, got {}",
                        records.len()
                    )));
                }
                for r in &records {
                    tally_core::fields::check_id("records", r).map_err(|e| {
                        ApiError::BadRequest(format!(
                            "{e}: a record id is the id column of the export"
                        ))
                    })?;
                }
                let unknown = state.reader.get().unknown_signatures(&id, &records)?;
                if !unknown.is_empty() {
                    return Err(ApiError::NotFound(format!(
                        "no signature {} in campaign {id} on this server; nothing was erased (record ids are the id column of `tally export --all`)",
                        unknown.join(", ")
                    )));
                }
                let set: BTreeSet<String> = records.into_iter().collect();
                set.into_iter().collect()
            }
            (None, Some(token)) => {
                if !tally_core::seal::is_token(&token) {
                    return Err(ApiError::BadRequest(
                        "duplicate_token is 64 lower-case hex digits (`tally erase --name --postal-code` computes it)".into(),
                    ));
                }
                let records = state.reader.get().records_with_token(&id, &token)?;
                if records.is_empty() {
                    return Err(ApiError::NotFound(format!(
                        "no signature of campaign {id} has this duplicate token: check the name and postal code, and that its phone has synced"
                    )));
                }
                records
            }
            _ => {
                return Err(ApiError::BadRequest(
                    r#"give either "records" or "duplicate_token", not both and not neither"#
                        .into(),
                ));
            }
        };
        // The keys first: once they are gone the records cannot be opened, whatever happens
        // next; a retry finishes the rest (every step is safe to repeat).
        let erasure = state.store
            .erase_records(&id, &records, &device.device_id, now_ms())?;
        let doc = review_doc(&state, &id)?;
        let already: BTreeSet<String> = {
            let slot = state.hub.slot(&doc)?;
            let g = slot.lock().unwrap_or_else(|p| p.into_inner());
            review::read(&g.doc)
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .strikes
                .into_values()
                .filter(|s| s.reason == StrikeReason::Erased)
                .map(|s| s.signature)
                .collect()
        };
        let at = now_ms();
        let strikes: Vec<Strike> = records
            .iter()
            .filter(|r| !already.contains(*r))
            .map(|r| Strike {
                signature: r.clone(),
                reason: StrikeReason::Erased,
                by: device.device_id.clone(),
                at,
                revoked: false,
            })
            .collect();
        if !strikes.is_empty() {
            state
                .hub
                .commit(&doc, &writer_of(&device), None, b"", move |after| {
                    strikes
                        .iter()
                        .try_for_each(|s| review::put_strike(after, s))
                        .map_err(|e| e.to_string())
                })?;
        }
        state.store.scrub_erased()?;
        let v1 = v1_records(&state, &id, &records)?;
        tracing::info!(campaign = %id, device = %device.device_id, records = records.len(), keys = erasure.keys_deleted, "records erased");
        Ok(Json(Erased {
            erased: records,
            keys_deleted: erasure.keys_deleted,
            v1,
        }))
    })
    .await
}

/// Of `records`, those sealed in format v1 (read from the campaign's collections).
fn v1_records(
    state: &AppState,
    campaign: &str,
    records: &[String],
) -> Result<Vec<String>, ApiError> {
    let wanted: BTreeSet<&str> = records.iter().map(String::as_str).collect();
    let mut v1 = BTreeSet::new();
    for c in super::export::collections(state, campaign)? {
        for s in c.signatures.values() {
            if wanted.contains(s.id.as_str()) && tally_core::seal::version(&s.sealed) == Some(1) {
                v1.insert(s.id.clone());
            }
        }
    }
    Ok(v1.into_iter().collect())
}
