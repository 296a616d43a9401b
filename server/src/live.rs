//! Live totals: a Server-Sent Events stream per subscriber
//! (`GET /api/v1/campaigns/{id}/totals/stream`, token as a header or `?token=` for a browser's
//! `EventSource`) that sends the campaign's totals at once and again whenever they change.
//!
//! How a change reaches a subscriber: `Hub::commit` marks the campaign's totals dirty; every
//! 500 ms the server's background task calls [`Live::notify`] with the dirty campaigns (the
//! totals documents are rewritten on their own, slower tick); each subscriber of those campaigns wakes, waits until
//! [`MIN_INTERVAL`] has passed since its last event (so a burst of syncs is coalesced into at most
//! a few events a second), computes its answer (with its own filters and suppression) and sends
//! it if it differs from the last one. Nothing here walks every subscriber or every campaign.
//!
//! A stream ends when the server shuts down or the device is revoked (it is registered with the
//! device's connections, which revocation cancels).
//!
//! Each stream holds a socket and, while it computes an answer, a blocking thread: a device may
//! hold `max_streams_per_device` streams and the server `max_streams` in all
//! ([`crate::guard::Devices`]); past either the request is refused (429, 503), never an older
//! stream closed, as a browser's `EventSource` reconnects when its stream ends and two tabs
//! would then take turns for ever.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tally_store::Device;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::api::totals::{TotalsRequest, answer};

/// The shortest time between two events of one stream.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);

/// Stream ids, far from the sync connections' ids, for the device's connection list.
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1 << 62);

/// Per campaign, a counter bumped each time its totals may have changed.
#[derive(Default)]
pub struct Live {
    chans: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Live {
    /// A receiver that changes whenever `campaign`'s totals may have changed.
    pub fn subscribe(&self, campaign: &str) -> watch::Receiver<u64> {
        let mut chans = self.chans.lock().unwrap_or_else(|p| p.into_inner());
        chans.retain(|_, tx| tx.receiver_count() > 0);
        chans
            .entry(campaign.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the subscribers of these campaigns.
    pub fn notify(&self, campaigns: &[String]) {
        let chans = self.chans.lock().unwrap_or_else(|p| p.into_inner());
        for c in campaigns {
            if let Some(tx) = chans.get(c) {
                tx.send_modify(|v| *v += 1);
            }
        }
    }
}

/// Removes a stream from its device's connection list, and from the count of streams, when the
/// stream ends.
struct Registration {
    state: Arc<AppState>,
    device: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.state
            .devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .close_stream(&self.device);
        let mut conns = self.state.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = conns.get_mut(&self.device) {
            v.retain(|(id, _)| *id != self.id);
            if v.is_empty() {
                conns.remove(&self.device);
            }
        }
    }
}

struct Subscriber {
    state: Arc<AppState>,
    req: TotalsRequest,
    rx: watch::Receiver<u64>,
    cancel: CancellationToken,
    last: Option<String>,
    next_at: Instant,
    first: bool,
    done: bool,
    _registration: Registration,
}

impl Subscriber {
    /// Waits for the next answer worth sending; `None` when the stream should end.
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        loop {
            if !self.first {
                tokio::select! {
                    _ = self.cancel.cancelled() => return None,
                    r = self.rx.changed() => if r.is_err() { return None },
                }
                tokio::select! {
                    _ = self.cancel.cancelled() => return None,
                    _ = tokio::time::sleep_until(self.next_at) => {}
                }
                // Everything that happened while waiting is in the answer computed now.
                self.rx.borrow_and_update();
            }
            self.first = false;
            let answer = answer(self.state.clone(), self.req.clone()).await;
            self.next_at = Instant::now() + MIN_INTERVAL;
            match answer.and_then(|a| {
                serde_json::to_string(&a).map_err(|e| {
                    crate::error::ApiError::Internal(format!("the totals do not serialize: {e}"))
                })
            }) {
                Ok(json) if self.last.as_ref() == Some(&json) => continue,
                Ok(json) => {
                    self.last = Some(json.clone());
                    return Some(Event::default().event("totals").data(json));
                }
                Err(e) => {
                    self.done = true;
                    let body = serde_json::json!({ "error": e.to_string() }).to_string();
                    return Some(Event::default().event("error").data(body));
                }
            }
        }
    }
}

/// The SSE response for a checked totals request by `device`.
pub(crate) fn stream(state: Arc<AppState>, device: Device, req: TotalsRequest) -> Response {
    let counted = state
        .devices
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .open_stream(&device.device_id);
    if let Err(r) = counted {
        tracing::warn!(device = %device.device_id, "live stream refused: {r}");
        return if r.server_wide() {
            crate::error::ApiError::Unavailable(r.to_string()).into_response()
        } else {
            crate::error::ApiError::TooManyRequests(r.to_string()).into_response()
        };
    }
    let cancel = state.shutdown.child_token();
    let id = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
    state
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(device.device_id.clone())
        .or_default()
        .push((id, cancel.clone()));
    let sub = Subscriber {
        rx: state.live.subscribe(&req.campaign),
        _registration: Registration {
            state: state.clone(),
            device: device.device_id,
            id,
        },
        state,
        req,
        cancel,
        last: None,
        next_at: Instant::now(),
        first: true,
        done: false,
    };
    let events = futures_util::stream::unfold(sub, |mut sub| async move {
        let ev = sub.next().await?;
        Some((Ok::<_, Infallible>(ev), sub))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
