//! The HTTP API under `/api/v1`: enrollment (a one-time code for a device token), campaigns and
//! their events, invites, device revocation; for organizers, a campaign's totals (filtered, with
//! small cells suppressed, also as a live stream: [`crate::live`]), strikes and paper sheets, and
//! the sealed records for export. Writes to documents take the same validated path as sync
//! ([`crate::hub::Hub::commit`]). Tokens come as `Authorization: Bearer ...` (or `?token=` for
//! browsers). The routes are listed in `crate::ROUTES` and described by [`crate::openapi`].
//!
//! Every failure is an [`ApiError`] (status and message in one place, `error.rs`). Checks run in
//! one order: the token (401), its role and campaign (403), the campaign (404), then the query
//! or body (400), so a caller learns the first thing to fix.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use tally_core::campaign::{self, Campaign, CampaignInit, Event};
use tally_core::collection;
use tally_core::review::{self, Sheet, SheetStatus, Strike, StrikeReason};
use tally_core::totals::{Cell, CheckinCell, PaperTotals};
use tally_proto::DocumentId;
use tally_store::{Device, DocFilter, Role as StoreRole, TokenRefusal};

use crate::AppState;
use crate::error::ApiError;
use crate::hub::{now_ms, server_writer, writer_of};
use crate::projection::{self, Filter};
use crate::suppression::{self, Suppression};

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
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
        match checked {
            Ok(device) => {
                if !device.seen_recently(now) {
                    let store = state.hub.store.clone();
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
                if let Some(ip) = addr {
                    let failures = lock_guard(state).auth_failed(ip, now.max(0) as u64);
                    tracing::warn!(address = %ip, failures, "wrong token (unknown)");
                }
                Err(ApiError::Unauthorized(
                    "unknown token: send the whole token the device got at enrollment, or enroll the device again with a new invite".into(),
                ))
            }
            Err(TokenRefusal::Revoked { at }) => {
                tracing::warn!(address = ?addr, "token of a revoked device refused");
                Err(ApiError::Unauthorized(format!(
                    "this device was revoked on {}: ask an organizer for a new invite and enroll again",
                    day(at)
                )))
            }
            Err(TokenRefusal::Expired { last_active }) => {
                tracing::warn!(address = ?addr, "expired token refused");
                Err(ApiError::Unauthorized(format!(
                    "this device's token expired: it was not used since {} (tokens expire after {} days unused); ask an organizer for a new invite and enroll again, the phone keeps what it holds",
                    day(last_active),
                    state.config.token_idle_expiry_secs / 86_400
                )))
            }
        }
    }
}

/// A time as a UTC date and minute, for messages.
fn day(ms: i64) -> String {
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

/// Takes a JSON body, or says what is wrong with it and what a good one looks like.
fn body<T>(b: Result<Json<T>, JsonRejection>, example: &str) -> Result<T, ApiError> {
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

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

#[derive(Deserialize)]
pub(crate) struct EnrollReq {
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

/// The client's address as an extractor (`None` without connection info).
pub(crate) struct ClientAddr(Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(client_addr(parts)))
    }
}

pub(crate) async fn enroll(
    State(state): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    req: Result<Json<EnrollReq>, JsonRejection>,
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
pub(crate) struct NewCampaign {
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

pub(crate) async fn list_campaigns(
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
pub(crate) struct NewEvent {
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

pub(crate) async fn add_event(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
    req: Result<Json<NewEvent>, JsonRejection>,
) -> Result<Json<Event>, ApiError> {
    require_organizer(&device, &id)?;
    let doc_id = campaign_doc(&id)?;
    blocking(move || {
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

#[derive(Deserialize)]
pub(crate) struct InviteReq {
    campaign: String,
    role: String,
}

pub(crate) async fn invite(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    req: Result<Json<InviteReq>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req = body(req, r#"{"campaign": "CAMPAIGN_ID", "role": "canvasser"}"#)?;
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

pub(crate) async fn list_devices(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
) -> Result<Json<Vec<Device>>, ApiError> {
    require_admin(&device)?;
    blocking(move || Ok(Json(state.hub.store.list_devices()?))).await
}

pub(crate) async fn revoke(
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

/// The campaign `id`, or a 404 that says how to find the right id.
fn known_campaign(state: &AppState, id: &str) -> Result<Arc<Campaign>, ApiError> {
    state.hub.campaign(id)?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no campaign {id:?} on this server; list campaigns with GET /api/v1/campaigns"
        ))
    })
}

/// The filters of a totals answer, as understood (times in RFC 3339, UTC; the FSA upper case).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Event id.
    pub event: Option<String>,
    /// From this time, inclusive.
    pub from: Option<String>,
    /// Until this time, exclusive.
    pub to: Option<String>,
    /// Signers' city.
    pub city: Option<String>,
    /// Signers' FSA.
    pub fsa: Option<String>,
}

/// A campaign's totals as the API answers them: `tally_core::totals::Totals` with the headline
/// numbers `null` when suppression hides them, the filters applied, and what suppression hid.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TotalsResponse {
    /// The campaign id.
    pub campaign: String,
    /// Signatures counted: neither withdrawn nor struck.
    pub signatures: Option<u64>,
    /// Distinct duplicate tokens among the counted signatures.
    pub unique_signers: Option<u64>,
    /// Struck signatures (not withdrawn, with a strike that is not revoked).
    pub struck: Option<u64>,
    /// Withdrawn signatures.
    pub withdrawn: Option<u64>,
    /// By event id.
    pub by_event: BTreeMap<String, Cell>,
    /// By signers' city.
    pub by_city: BTreeMap<String, Cell>,
    /// By signers' FSA.
    pub by_fsa: BTreeMap<String, Cell>,
    /// By riding.
    pub by_riding: BTreeMap<String, Cell>,
    /// By day (YYYY-MM-DD in the campaign's time zone).
    pub by_day: BTreeMap<String, Cell>,
    /// By canvasser (device id).
    pub by_canvasser: BTreeMap<String, Cell>,
    /// Distinct check-ins by event id.
    pub checkins: BTreeMap<String, CheckinCell>,
    /// Paper sheets (never filtered).
    pub paper: PaperTotals,
    /// The filters applied.
    pub filters: Filters,
    /// Small-cell suppression.
    pub suppression: Suppression,
}

/// What a totals request asks for, checked.
#[derive(Debug, Clone)]
pub(crate) struct TotalsRequest {
    /// The campaign.
    pub campaign: String,
    /// Rows to count.
    pub filter: Filter,
    /// The filters, as echoed back.
    pub echo: Filters,
    /// Whether small cells are hidden.
    pub suppress: bool,
}

const TOTALS_PARAMS: &str = "event, from, to, city, fsa, suppress (and token)";

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Checks a totals query (`event`, `from`, `to`, `city`, `fsa`, `suppress`) against the
/// campaign and the caller's role.
fn totals_request(
    device: &Device,
    campaign: &Campaign,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<TotalsRequest, ApiError> {
    let Query(pairs) = query.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; the query takes {TOTALS_PARAMS}",
            e.body_text()
        ))
    })?;
    let bad = |m: String| ApiError::BadRequest(m);
    let mut seen = std::collections::BTreeSet::new();
    let mut filter = Filter::default();
    let mut echo = Filters::default();
    let mut suppress = None;
    for (k, v) in pairs {
        if !seen.insert(k.clone()) {
            return Err(bad(format!("{k} is given twice: give each filter once")));
        }
        let time = |v: &str| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.timestamp_millis())
                .map_err(|e| {
                    bad(format!(
                        "{k}={v:?} is not an RFC 3339 time like 2026-07-01T18:00:00-04:00 ({e})"
                    ))
                })
        };
        match k.as_str() {
            "token" => {}
            "event" => {
                if !campaign.events.contains_key(&v) {
                    let known: Vec<&str> = campaign.events.keys().map(String::as_str).collect();
                    return Err(bad(format!(
                        "event={v:?}: no such event in this campaign; its events are: {}",
                        if known.is_empty() {
                            "none yet".to_string()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
                echo.event = Some(v.clone());
                filter.event = Some(v);
            }
            "from" => {
                let t = time(&v)?;
                filter.from = Some(t);
                echo.from = Some(rfc3339(t));
            }
            "to" => {
                let t = time(&v)?;
                filter.to = Some(t);
                echo.to = Some(rfc3339(t));
            }
            "city" => {
                let c = v.trim().to_string();
                tally_core::fields::check_text(
                    "city",
                    &c,
                    tally_core::fields::MAX_SHORT_TEXT,
                    true,
                )
                .map_err(|r| {
                    bad(format!(
                        "city={v:?}: {r}; give a city name, e.g. city=Toronto"
                    ))
                })?;
                echo.city = Some(c.clone());
                filter.city = Some(c);
            }
            "fsa" => {
                let f = v.trim().to_ascii_uppercase();
                if !tally_core::fields::is_fsa(&f) {
                    return Err(bad(format!(
                        "fsa={v:?} is not a forward sortation area: give the first three characters of a Canadian postal code, e.g. fsa=M5V"
                    )));
                }
                echo.fsa = Some(f.clone());
                filter.fsa = Some(f);
            }
            "suppress" => {
                suppress = Some(match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(bad(format!(
                            "suppress={v:?}: give suppress=true or suppress=false"
                        )));
                    }
                })
            }
            _ => {
                return Err(bad(format!(
                    "unknown query parameter {k:?}: the totals take {TOTALS_PARAMS}"
                )));
            }
        }
    }
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && from >= to
    {
        return Err(bad(
            "from must be before to (from is inclusive, to exclusive)".into(),
        ));
    }
    let admin = device.role == StoreRole::Admin;
    if !admin {
        // A window drawn around one signature's time would single it out by subtraction from
        // a wider one: organizers' time filters are snapped outward to whole days in the
        // campaign's time zone (docs/security.md, "Small-cell suppression").
        let tz = campaign.timezone.as_str();
        if let Some(from) = filter.from.as_mut() {
            *from = tally_core::totals::snap_to_day(*from, tz, false);
            echo.from = Some(rfc3339(*from));
        }
        if let Some(to) = filter.to.as_mut() {
            *to = tally_core::totals::snap_to_day(*to, tz, true);
            echo.to = Some(rfc3339(*to));
        }
    }
    let suppress = match suppress {
        Some(false) if !admin => {
            return Err(ApiError::Forbidden(
                "small-cell suppression is always on for organizers: only the admin token sees cells of fewer than the threshold; drop suppress=false".into(),
            ));
        }
        Some(s) => s,
        None => !admin,
    };
    Ok(TotalsRequest {
        campaign: campaign.id.clone(),
        filter,
        echo,
        suppress,
    })
}

/// Authorizes and checks a totals request: 403, 404, then 400 (blocking: it may load the
/// campaign document).
fn check_totals(
    state: &AppState,
    device: &Device,
    id: &str,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<TotalsRequest, ApiError> {
    require_organizer(device, id)?;
    let campaign = known_campaign(state, id)?;
    totals_request(device, &campaign, query)
}

/// Computes the answer to a checked totals request (blocking: SQLite).
pub(crate) fn answer_totals(
    state: &AppState,
    req: &TotalsRequest,
) -> Result<TotalsResponse, ApiError> {
    let mut t = state.reader.get().read(|conn| {
        projection::query(conn, &req.campaign, &req.filter).map_err(tally_store::StoreError::from)
    })?;
    let suppression = if req.suppress {
        suppression::apply(&mut t, state.config.suppress_below, !req.filter.is_empty())
    } else {
        Suppression {
            threshold: state.config.suppress_below,
            ..Suppression::default()
        }
    };
    let head = |v: u64| (!suppression.headline_hidden).then_some(v);
    Ok(TotalsResponse {
        campaign: req.campaign.clone(),
        signatures: head(t.signatures),
        unique_signers: head(t.unique_signers),
        struck: head(t.struck),
        withdrawn: head(t.withdrawn),
        by_event: t.by_event,
        by_city: t.by_city,
        by_fsa: t.by_fsa,
        by_riding: t.by_riding,
        by_day: t.by_day,
        by_canvasser: t.by_canvasser,
        checkins: t.checkins,
        paper: t.paper,
        filters: req.echo.clone(),
        suppression,
    })
}

pub(crate) async fn totals(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<TotalsResponse>, ApiError> {
    // Checked and answered in one trip to the blocking pool: under load each trip is a wait.
    blocking(move || {
        let req = check_totals(&state, &device, &id, query)?;
        answer_totals(&state, &req).map(Json)
    })
    .await
}

pub(crate) async fn totals_stream(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    let st = state.clone();
    let (device, req) = blocking(move || {
        let req = check_totals(&st, &device, &id, query)?;
        Ok((device, req))
    })
    .await?;
    Ok(crate::live::stream(state, device, req))
}

/// The campaign's review document (strikes and sheets are written there).
fn review_doc(state: &AppState, campaign: &str) -> Result<DocumentId, ApiError> {
    let url = doc_of_kind(state, campaign, "review")?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "campaign {campaign} has no review document; it is made with the campaign (POST /api/v1/campaigns)"
        ))
    })?;
    url.trim_start_matches("automerge:")
        .parse()
        .map_err(|e| ApiError::Internal(format!("stored review id {url}: {e}")))
}

#[derive(Deserialize)]
pub(crate) struct NewStrike {
    signature: String,
    reason: String,
    #[serde(default)]
    revoked: bool,
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
    blocking(move || {
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
        let known = state.reader.get().read(|conn| {
            Ok(conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM signatures WHERE campaign = ?1 AND sig_id = ?2)",
                [&id, &strike.signature],
                |r| r.get::<_, bool>(0),
            )?)
        })?;
        if !known {
            return Err(ApiError::NotFound(format!(
                "no signature {:?} in campaign {id} on this server (yet): signature ids are in GET /api/v1/campaigns/{id}/sealed and in the export",
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

#[derive(Deserialize)]
pub(crate) struct NewSheet {
    serial: String,
    count: i64,
    #[serde(default)]
    riding: Option<String>,
    #[serde(default)]
    status: Option<String>,
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
    blocking(move || {
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

/// The OpenAPI document of this server.
pub(crate) async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
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

pub(crate) async fn sealed(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
) -> Result<Json<Vec<SealedRecord>>, ApiError> {
    require_organizer(&device, &id)?;
    blocking(move || {
        known_campaign(&state, &id)?;
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
