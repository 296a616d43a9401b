//! The HTTP API under `/api/v1`: enrollment (a one-time code for a device token), campaigns and
//! their events, invites, device revocation, totals and the sealed records for export. Writes to
//! documents take the same validated path as sync ([`Hub::commit`]). Tokens come as
//! `Authorization: Bearer ...` (or `?token=` for browsers).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::{Json, Router, routing::get, routing::post};
use serde::{Deserialize, Serialize};
use tally_core::campaign::{self, CampaignInit, Event};
use tally_core::collection;
use tally_proto::DocumentId;
use tally_store::{Device, DocFilter, Role as StoreRole};

use crate::AppState;
use crate::error::ApiError;
use crate::hub::{now_ms, server_writer, writer_of};

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
        let store = state.hub.store.clone();
        let device = tokio::task::spawn_blocking(move || store.authenticate(&token, now_ms()))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
        device.map(Auth).ok_or_else(|| {
            ApiError::Unauthorized(
                "unknown or revoked token: enroll the device again with a new invite".into(),
            )
        })
    }
}

fn require_organizer(device: &Device, campaign: &str) -> Result<(), ApiError> {
    match device.role {
        StoreRole::Admin => Ok(()),
        StoreRole::Organizer if device.campaign.as_deref().is_none_or(|c| c == campaign) => Ok(()),
        _ => Err(ApiError::Forbidden(
            "only an organizer of this campaign or the admin may do this".into(),
        )),
    }
}

fn require_admin(device: &Device) -> Result<(), ApiError> {
    if device.role == StoreRole::Admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only the admin token may do this".into(),
        ))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// The routes of the API.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/enroll", post(enroll))
        .route(
            "/api/v1/campaigns",
            post(create_campaign).get(list_campaigns),
        )
        .route("/api/v1/campaigns/{id}/events", post(add_event))
        .route("/api/v1/campaigns/{id}/totals", get(totals))
        .route("/api/v1/campaigns/{id}/sealed", get(sealed))
        .route("/api/v1/invites", post(invite))
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}/revoke", post(revoke))
}

#[derive(Deserialize)]
struct EnrollReq {
    code: String,
    #[serde(default)]
    name: String,
}

/// What a device gets for its one-time code.
#[derive(Serialize, Deserialize, Debug)]
pub struct Enrolled {
    /// The device id (owner of its collections).
    pub device_id: String,
    /// The device's bearer token, shown once.
    pub token: String,
    /// canvasser or organizer.
    pub role: String,
    /// The campaign id.
    pub campaign: Option<String>,
    /// `automerge:` URL of the campaign document.
    pub campaign_url: Option<String>,
    /// `automerge:` URL of the totals document.
    pub totals_url: Option<String>,
}

fn doc_of_kind(state: &AppState, campaign: &str, kind: &str) -> Result<Option<String>, ApiError> {
    let docs = state.hub.store.list_documents(&DocFilter {
        campaign: Some(campaign.into()),
        kind: Some(kind.into()),
        owner: None,
    })?;
    Ok(docs.first().map(|m| format!("automerge:{}", m.doc_id)))
}

async fn enroll(
    State(state): State<Arc<AppState>>,
    Json(req): Json<EnrollReq>,
) -> Result<Json<Enrolled>, ApiError> {
    blocking(move || {
        let name = if req.name.trim().is_empty() {
            "phone".to_string()
        } else {
            req.name.trim().chars().take(100).collect()
        };
        let (device, token) = state.hub.store.redeem_invite(&req.code, &name, now_ms())?;
        tracing::info!(device = %device.device_id, role = device.role.as_str(), "device enrolled");
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
        }))
    })
    .await
}

#[derive(Deserialize)]
struct NewCampaign {
    title: String,
    petition: String,
    addressee: String,
    #[serde(default)]
    goal: i64,
    #[serde(default = "default_tz")]
    timezone: String,
    recipients: Vec<String>,
}

fn default_tz() -> String {
    "America/Toronto".into()
}

/// A created campaign's documents.
#[derive(Serialize, Deserialize, Debug)]
pub struct CreatedCampaign {
    /// The campaign id (= the campaign document id).
    pub campaign: String,
    /// `automerge:` URL of the campaign document.
    pub campaign_url: String,
    /// `automerge:` URL of the review document.
    pub review_url: String,
    /// `automerge:` URL of the totals document.
    pub totals_url: String,
}

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

async fn create_campaign(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Json(req): Json<NewCampaign>,
) -> Result<Json<CreatedCampaign>, ApiError> {
    require_admin(&device)?;
    blocking(move || {
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

async fn list_campaigns(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let all = state.hub.store.list_campaigns()?;
        let mut out = Vec::new();
        for m in all.into_iter().filter(|m| device.role == StoreRole::Admin || device.campaign.as_deref() == Some(m.campaign.as_str())) {
            if let Some(c) = state.hub.campaign(&m.campaign)? {
                out.push(serde_json::json!({ "campaign": c.id, "title": c.title, "addressee": c.addressee, "goal": c.goal, "events": c.events.values().collect::<Vec<_>>() }));
            }
        }
        Ok(Json(serde_json::json!({ "campaigns": out })))
    })
    .await
}

fn campaign_doc(id: &str) -> Result<DocumentId, ApiError> {
    id.parse().map_err(|e| {
        ApiError::NotFound(format!(
            "{id:?} is not a campaign id ({e}); list campaigns with GET /api/v1/campaigns"
        ))
    })
}

#[derive(Deserialize)]
struct NewEvent {
    #[serde(default)]
    id: Option<String>,
    name: String,
    city: String,
    /// ms since the epoch, or RFC 3339 text.
    starts_at: serde_json::Value,
    #[serde(default)]
    place: String,
}

/// Parses a time given as ms since the epoch or RFC 3339 text.
pub fn parse_time(v: &serde_json::Value) -> Result<i64, String> {
    match v {
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| "a time in ms must be a whole number".to_string()),
        serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                format!("{s:?} is not an RFC 3339 time like 2026-07-01T18:00:00-04:00 ({e})")
            }),
        _ => Err("starts_at is ms since the epoch or RFC 3339 text".into()),
    }
}

async fn add_event(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
    Json(req): Json<NewEvent>,
) -> Result<Json<Event>, ApiError> {
    require_organizer(&device, &id)?;
    let doc_id = campaign_doc(&id)?;
    blocking(move || {
        if state.hub.campaign(&id)?.is_none() {
            return Err(ApiError::NotFound(format!(
                "no campaign {id}; list campaigns with GET /api/v1/campaigns"
            )));
        }
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

#[derive(Deserialize)]
struct InviteReq {
    campaign: String,
    role: String,
}

async fn invite(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Json(req): Json<InviteReq>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_organizer(&device, &req.campaign)?;
    let role = match req.role.as_str() {
        "canvasser" => StoreRole::Canvasser,
        "organizer" => StoreRole::Organizer,
        other => {
            return Err(ApiError::BadRequest(format!(
                "role {other:?}: invite a canvasser or an organizer"
            )));
        }
    };
    blocking(move || {
        if state.hub.campaign(&req.campaign)?.is_none() {
            return Err(ApiError::NotFound(format!(
                "no campaign {}; list campaigns with GET /api/v1/campaigns",
                req.campaign
            )));
        }
        let ttl = state.config.invite_ttl_hours as i64 * 3_600_000;
        let now = now_ms();
        let (_, code) = state
            .hub
            .store
            .create_invite(Some(&req.campaign), role, ttl, now)?;
        Ok(Json(serde_json::json!({
            "code": code.as_str(),
            "expires_at": now + ttl,
            "server": state.config.public_url(),
            "campaign": format!("automerge:{}", req.campaign),
            "role": role.as_str(),
        })))
    })
    .await
}

async fn list_devices(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
) -> Result<Json<Vec<Device>>, ApiError> {
    require_admin(&device)?;
    blocking(move || Ok(Json(state.hub.store.list_devices()?))).await
}

async fn revoke(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&device)?;
    let st = state.clone();
    let id2 = id.clone();
    let found = blocking(move || Ok(st.hub.store.revoke_device(&id2, now_ms())?)).await?;
    if !found {
        return Err(ApiError::NotFound(format!(
            "no device {id}; list devices with `tally token list`"
        )));
    }
    let closed = state.disconnect(&id);
    tracing::info!(device = %id, connections = closed, "device revoked");
    Ok(Json(
        serde_json::json!({ "revoked": id, "connections_closed": closed }),
    ))
}

async fn totals(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
) -> Result<Json<tally_core::totals::Totals>, ApiError> {
    require_organizer(&device, &id)?;
    blocking(move || {
        if state.hub.campaign(&id)?.is_none() {
            return Err(ApiError::NotFound(format!(
                "no campaign {id}; list campaigns with GET /api/v1/campaigns"
            )));
        }
        let t = state.hub.store.read(|conn| {
            crate::projection::totals(conn, &id).map_err(tally_store::StoreError::from)
        })?;
        Ok(Json(t))
    })
    .await
}

/// One signature for export: what the server knows in the clear, and the sealed fields.
#[derive(Serialize, Deserialize, Debug)]
pub struct SealedRecord {
    /// Signature id.
    pub id: String,
    /// When.
    pub collected_at: i64,
    /// By whom.
    pub collected_by: String,
    /// Event.
    pub event: Option<String>,
    /// City.
    pub city: String,
    /// FSA.
    pub fsa: String,
    /// Riding.
    pub riding: Option<String>,
    /// Consent to contact.
    pub consent_contact: bool,
    /// Counted in the totals (not withdrawn, not struck).
    pub counted: bool,
    /// Withdrawn.
    pub withdrawn: bool,
    /// The sealed personal fields, hex.
    pub sealed: String,
}

async fn sealed(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
) -> Result<Json<Vec<SealedRecord>>, ApiError> {
    require_organizer(&device, &id)?;
    blocking(move || {
        if state.hub.campaign(&id)?.is_none() {
            return Err(ApiError::NotFound(format!(
                "no campaign {id}; list campaigns with GET /api/v1/campaigns"
            )));
        }
        let review = match doc_of_kind(&state, &id, "review")? {
            Some(url) => {
                let rid: DocumentId = url
                    .trim_start_matches("automerge:")
                    .parse()
                    .map_err(|e| ApiError::Internal(format!("{e}")))?;
                let slot = state.hub.slot(&rid)?;
                let g = slot.lock().unwrap_or_else(|p| p.into_inner());
                tally_core::review::read(&g.doc).map_err(|e| ApiError::Internal(e.to_string()))?
            }
            None => Default::default(),
        };
        let mut out = Vec::new();
        for meta in state.hub.store.list_documents(&DocFilter {
            campaign: Some(id.clone()),
            kind: Some("collection".into()),
            owner: None,
        })? {
            let did: DocumentId = meta
                .doc_id
                .parse()
                .map_err(|e| ApiError::Internal(format!("{e}")))?;
            let slot = state.hub.slot(&did)?;
            let g = slot.lock().unwrap_or_else(|p| p.into_inner());
            let c = collection::read(&g.doc).map_err(|e| ApiError::Internal(e.to_string()))?;
            for s in c.signatures.into_values() {
                out.push(SealedRecord {
                    counted: tally_core::totals::counts(&s, &review),
                    id: s.id,
                    collected_at: s.collected_at,
                    collected_by: s.collected_by,
                    event: s.event,
                    city: s.city,
                    fsa: s.fsa,
                    riding: s.riding,
                    consent_contact: s.consent_contact,
                    withdrawn: s.withdrawn,
                    sealed: hex::encode(&s.sealed),
                });
            }
        }
        out.sort_by(|a, b| (a.collected_at, &a.id).cmp(&(b.collected_at, &b.id)));
        Ok(Json(out))
    })
    .await
}
