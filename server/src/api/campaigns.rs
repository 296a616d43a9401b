//! Campaigns (created by the admin with their review and totals documents, listed by role) and
//! their events (added by an organizer, through the validated write path).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use tally_core::Role;
use tally_core::campaign::{self, CampaignInit, Event};
use tally_core::collection;
use tally_proto::DocumentId;

use super::auth::{Auth, require_admin, require_organizer};
use super::types::{CampaignList, CampaignSummary, CreatedCampaign, NewCampaign, NewEvent};
use super::{body, campaign_doc, known_campaign, on_blocking_pool};
use crate::AppState;
use crate::error::ApiError;
use crate::hub::{server_writer, writer_of};

fn create_doc(
    state: &AppState,
    writer: &tally_core::Writer,
    mut doc: automerge::Automerge,
) -> Result<DocumentId, ApiError> {
    let id = DocumentId::random(&mut rand::thread_rng());
    state.hub.commit(&id, writer, None, b"", move |after| {
        after.merge(&mut doc).map(|_| ()).map_err(|e| e.to_string())
    })?;
    Ok(id)
}

pub(crate) async fn create_campaign(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    req: Result<Json<NewCampaign>, JsonRejection>,
) -> Result<Json<CreatedCampaign>, ApiError> {
    require_admin(&device)?;
    let req = body(
        req,
        r#"{"title": "...", "petition": "...", "addressee": "the House of Commons", "recipients": ["age1..."]}"#,
    )?;
    on_blocking_pool(move || {
        let id = DocumentId::random(&mut rand::thread_rng());
        let init = CampaignInit {
            id: id.to_string(),
            title: req.title,
            petition: req.petition,
            addressee: req.addressee,
            goal: req.goal,
            timezone: req.timezone,
            recipients: req.recipients,
        };
        let mut doc = campaign::create(&init).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let writer = writer_of(&device);
        state.hub.commit(&id, &writer, None, b"", move |after| {
            after.merge(&mut doc).map(|_| ()).map_err(|e| e.to_string())
        })?;
        let review = create_doc(
            &state,
            &writer,
            tally_core::review::create(&init.id)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        )?;
        let totals = create_doc(
            &state,
            &server_writer(),
            tally_core::totals_doc::create(&init.id)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        )?;
        state.hub.mark_dirty(&init.id);
        tracing::info!(campaign = %id, "campaign created");
        Ok(Json(CreatedCampaign {
            campaign: id.to_string(),
            campaign_url: id.to_url(),
            review_url: review.to_url(),
            totals_url: totals.to_url(),
        }))
    })
    .await
}

pub(crate) async fn list_campaigns(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
) -> Result<Json<CampaignList>, ApiError> {
    on_blocking_pool(move || {
        let all = state.store.list_campaigns()?;
        let mut campaigns = Vec::new();
        for m in all.into_iter().filter(|m| {
            device.role == Role::Admin || device.campaign.as_deref() == Some(m.campaign.as_str())
        }) {
            if let Some(c) = state.hub.campaign(&m.campaign)? {
                campaigns.push(CampaignSummary {
                    campaign: c.id.clone(),
                    title: c.title.clone(),
                    addressee: c.addressee.clone(),
                    goal: c.goal,
                    events: c.events.values().cloned().collect(),
                    timezone: c.timezone.clone(),
                });
            }
        }
        Ok(Json(CampaignList { campaigns }))
    })
    .await
}

/// Parses a time given as ms since the epoch or RFC 3339 text.
pub fn parse_time(v: &serde_json::Value) -> Result<i64, String> {
    match v {
        serde_json::Value::Number(n) => {
            super::types::whole_number(n.clone()).map_err(|e| format!("a time in ms: {e}"))
        }
        serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                format!("{s:?} is not an RFC 3339 time like 2026-07-01T18:00:00-04:00 ({e})")
            }),
        _ => Err("starts_at is ms since the epoch or RFC 3339 text".into()),
    }
}

pub(crate) async fn add_event(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
    req: Result<Json<NewEvent>, JsonRejection>,
) -> Result<Json<Event>, ApiError> {
    require_organizer(&device, &id)?;
    let doc_id = campaign_doc(&id)?;
    on_blocking_pool(move || {
        known_campaign(&state, &id)?;
        let req = body(
            req,
            r#"{"name": "Rally at Queen's Park", "city": "Toronto", "starts_at": "2026-07-01T18:00:00-04:00", "place": "Queen's Park"}"#,
        )?;
        let starts_at = parse_time(&req.starts_at).map_err(ApiError::BadRequest)?;
        let event = Event {
            id: req
                .id
                .unwrap_or_else(|| collection::random_id()[..12].to_string()),
            name: req.name,
            city: req.city,
            starts_at,
            place: req.place,
        };
        // Checked here, so a bad event is a 400 that names the field, not a failed edit.
        event
            .check(&format!("events/{}", event.id))
            .map_err(|r| ApiError::BadRequest(format!("refused: {r}")))?;
        let ev = event.clone();
        state
            .hub
            .commit(&doc_id, &writer_of(&device), None, b"", move |after| {
                campaign::put_event(after, &ev).map_err(|e| e.to_string())
            })?;
        Ok(Json(event))
    })
    .await
}
