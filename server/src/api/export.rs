//! Export: a campaign's signatures with their sealed personal fields, for an organizer to open
//! on their own machine (`tally export`, or the dashboard in their browser). The server never
//! holds a key that opens them. Each record is listed once, as the totals count it: its copies
//! in a phone's chain of collections merged (docs/documents.md, "Counting once"), with its
//! duplicate group ([`duplicate_group`]) so that a delivery export can list each signer once.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use tally_core::collection;
use tally_core::review::StrikeReason;
use tally_proto::DocumentId;
use tally_store::DocFilter;

use super::auth::{Auth, require_organizer};
use super::types::SealedRecord;
use super::{doc_of_kind, known_campaign, on_blocking_pool};
use crate::AppState;
use crate::error::ApiError;

/// The label hashed into every duplicate group, so that a group is no other hash of the token.
const GROUP_LABEL: &[u8] = b"tally duplicate group v1";

/// A signature's duplicate group in the export: 16 hex digits of SHA-256 over a fixed label,
/// the campaign id and the duplicate token. Equal tokens of a campaign give equal groups; the
/// token itself (an HMAC the phones compute under the campaign's key) is not handed out, and
/// the same signer's groups differ across campaigns. 64 bits: two signers of a campaign of a
/// million share a group with odds of about one in 36 million.
pub fn duplicate_group(campaign: &str, token: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [GROUP_LABEL, campaign.as_bytes(), token.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(&h.finalize()[..8])
}

pub(crate) async fn sealed(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
) -> Result<Json<Vec<SealedRecord>>, ApiError> {
    require_organizer(&device, &id)?;
    on_blocking_pool(move || {
        known_campaign(&state, &id)?;
        let review = match doc_of_kind(&state, &id, "review")? {
            Some(url) => {
                let rid: DocumentId = url
                    .trim_start_matches("automerge:")
                    .parse()
                    .map_err(|e| ApiError::stored(format!("the stored review id {url}"), e))?;
                let slot = state.hub.slot(&rid)?;
                let g = slot.lock().unwrap_or_else(|p| p.into_inner());
                tally_core::review::read(&g.doc)
                    .map_err(|e| ApiError::stored(format!("the review of campaign {id}"), e))?
            }
            None => Default::default(),
        };
        let collections = collections(&state, &id)?;
        let mut out = Vec::new();
        for s in tally_core::totals::records(&id, &collections)
            .signatures
            .into_values()
        {
            // An erased record's sealed bytes are not handed out (a v1 blob would still open).
            let erased = review
                .strikes
                .get(&s.id)
                .is_some_and(|k| k.reason == StrikeReason::Erased);
            out.push(SealedRecord {
                counted: tally_core::totals::counts(&s, &review),
                erased,
                id: s.id,
                collected_at: s.collected_at,
                collected_by: s.collected_by,
                event: s.event,
                city: s.city,
                fsa: s.fsa,
                riding: s.riding,
                consent_contact: s.consent_contact,
                withdrawn: s.withdrawn,
                sealed: if erased {
                    String::new()
                } else {
                    hex::encode(&s.sealed)
                },
                duplicate_group: duplicate_group(&id, &s.dup),
            });
        }
        out.sort_by(|a, b| (a.collected_at, &a.id).cmp(&(b.collected_at, &b.id)));
        Ok(Json(out))
    })
    .await
}

/// Every collection document of the campaign, read whole.
pub(crate) fn collections(
    state: &AppState,
    campaign: &str,
) -> Result<Vec<collection::Collection>, ApiError> {
    let mut collections = Vec::new();
    for meta in state.store.list_documents(&DocFilter {
        campaign: Some(campaign.to_string()),
        kind: Some("collection".into()),
        owner: None,
    })? {
        let did: DocumentId = meta
            .doc_id
            .parse()
            .map_err(|e| ApiError::stored(format!("the stored document id {}", meta.doc_id), e))?;
        let slot = state.hub.slot(&did)?;
        let g = slot.lock().unwrap_or_else(|p| p.into_inner());
        collections.push(
            collection::read(&g.doc)
                .map_err(|e| ApiError::stored(format!("the collection {did}"), e))?,
        );
    }
    Ok(collections)
}

#[cfg(test)]
mod tests {
    use super::duplicate_group;

    #[test]
    fn a_duplicate_group_is_per_signer_and_campaign_and_not_the_token() {
        let token = "ab".repeat(32);
        let g = duplicate_group("campaignA", &token);
        assert_eq!(g.len(), 16);
        assert!(g.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(g, duplicate_group("campaignA", &token), "stable");
        assert_ne!(g, duplicate_group("campaignB", &token), "per campaign");
        assert_ne!(g, duplicate_group("campaignA", &"cd".repeat(32)));
        assert!(!token.contains(&g));
        // The parts are length-prefixed: moving a character from one to the other changes it.
        assert_ne!(duplicate_group("ab", "c"), duplicate_group("a", "bc"));
    }
}
