//! A campaign's totals for organizers: the query's filters checked against the campaign and the
//! caller's role (organizers' time windows snapped to whole days, suppression always on for
//! them), answered from the SQL projection, and as a live stream ([`crate::live`], which depends
//! on this module alone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use tally_core::Role;
use tally_core::campaign::Campaign;
use tally_store::Device;

use super::auth::{Auth, require_organizer};
use super::types::{Filters, ProjectionLag, TotalsResponse};
use super::{known_campaign, on_blocking_pool};
use crate::AppState;
use crate::error::ApiError;
use crate::hub::now_ms;
use crate::projection::Filter;
use crate::suppression::{self, Suppression};

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
    /// Whether the answer waits until everything acknowledged before it is counted
    /// ([`WAIT_AT_MOST`]).
    pub wait: bool,
}

const TOTALS_PARAMS: &str =
    "event, from, to, city, fsa, riding, canvasser, suppress, wait (and token)";

/// How long a totals answer waits at most for the projector to count what was acknowledged
/// before the request (`wait=true`, the default).
pub(crate) const WAIT_AT_MOST: Duration = Duration::from_secs(5);

/// How often a waiting answer looks again.
const WAIT_STEP: Duration = Duration::from_millis(2);

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Checks a totals query (`event`, `from`, `to`, `city`, `fsa`, `riding`, `canvasser`,
/// `suppress`) against the
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
    let mut wait = true;
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
            "riding" => {
                let r = v.trim().to_string();
                tally_core::fields::check_text(
                    "riding",
                    &r,
                    tally_core::fields::MAX_SHORT_TEXT,
                    true,
                )
                .map_err(|e| {
                    bad(format!(
                        "riding={v:?}: {e}; give a riding's name as the phones record it, e.g. riding=Spadina—Harbourfront"
                    ))
                })?;
                echo.riding = Some(r.clone());
                filter.riding = Some(r);
            }
            "canvasser" => {
                let c = v.trim().to_string();
                tally_core::fields::check_text(
                    "canvasser",
                    &c,
                    tally_core::fields::MAX_SHORT_TEXT,
                    true,
                )
                .map_err(|e| {
                    bad(format!(
                        "canvasser={v:?}: {e}; give the collecting device's id, as the by_canvasser keys show it"
                    ))
                })?;
                echo.canvasser = Some(c.clone());
                filter.canvasser = Some(c);
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
            "wait" => {
                wait = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(bad(format!(
                            "wait={v:?}: give wait=true (answer once everything acknowledged is counted) or wait=false (answer at once)"
                        )));
                    }
                }
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
    let admin = device.role == Role::Admin;
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
        wait,
    })
}

/// Authorizes and checks a totals request: 403, 404, then 400 (blocking: it may load the
/// campaign document).
pub(crate) fn check_totals(
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
    let threshold = state.config.suppress_below;
    if req.wait {
        wait_counted(state, &req.campaign)?;
    }
    let (t, suppression, status) = state.reader.get().read(|r| {
        let status = r.projection_status(Some(&req.campaign))?;
        let query = |filter: &Filter| r.query_totals(&req.campaign, filter);
        if req.suppress {
            // With the answers without each filter, so that a filter cannot drill into a
            // hidden cell.
            suppression::answer(query, &req.filter, threshold)
        } else {
            query(&req.filter).map(|t| {
                let s = Suppression {
                    threshold,
                    ..Suppression::default()
                };
                (t, s)
            })
        }
        .map(|(t, s)| (t, s, status))
    })?;
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
        projection: ProjectionLag {
            pending_records: status.records,
            lag_ms: status.lag_ms(now_ms()),
        },
    })
}

/// Waits until the projector counted every change to `campaign` acknowledged before now, at
/// most [`WAIT_AT_MOST`]; the answer then says what is still not counted.
fn wait_counted(state: &AppState, campaign: &str) -> Result<(), ApiError> {
    let reader = state.reader.get();
    let status = |r: &dyn tally_store::Reads| r.projection_status(Some(campaign));
    let Some(last) = reader.read(status)?.last else {
        return Ok(());
    };
    let until = Instant::now() + WAIT_AT_MOST;
    while Instant::now() < until {
        std::thread::sleep(WAIT_STEP);
        if reader.read(status)?.covers(last) {
            break;
        }
    }
    Ok(())
}

pub(crate) async fn totals(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<TotalsResponse>, ApiError> {
    // Checked and answered in one trip to the blocking pool: under load each trip is a wait.
    let started = std::time::Instant::now();
    let metrics = state.hub.metrics().clone();
    let answer = on_blocking_pool(move || {
        let req = check_totals(&state, &device, &id, query)?;
        answer_totals(&state, &req).map(Json)
    })
    .await;
    metrics.totals(started.elapsed());
    answer
}

pub(crate) async fn totals_stream(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    let st = state.clone();
    let (device, req) = on_blocking_pool(move || {
        // A stream's answers never wait: the projector wakes it when it counted more.
        let req = TotalsRequest {
            wait: false,
            ..check_totals(&st, &device, &id, query)?
        };
        Ok((device, req))
    })
    .await?;
    Ok(crate::live::stream(state, device, req))
}

/// [`answer_totals`] on the blocking pool: what a live stream sends each time.
pub(crate) async fn answer(
    state: Arc<AppState>,
    req: TotalsRequest,
) -> Result<TotalsResponse, ApiError> {
    on_blocking_pool(move || answer_totals(&state, &req)).await
}
