//! Record keys on the phone (sealed v2, issue 15; the contract is docs/clients.md 5 and 5a):
//! each signature's key, wrapped to the campaign's organizers, is kept in the phone's SQLite
//! file from the moment the signature is committed until the server has stored it **and**
//! acknowledged the record's change; [`Device::upload_keys`] sends the waiting ones
//! (`PUT {server}/api/v1/keys`, blocking, idempotent: a retry after a crash is fine) and drops
//! the keys of records that are now safe. A key the server refuses as `erased` is dropped (an
//! organizer erased the record: it is done); any other refusal is kept with its reason for
//! `tally-device status`, and a `too_many` one (the device's quota on the server) is offered
//! again at the next upload.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::error::{ClientError, Result};
use crate::store;

/// Keys per request (the server takes at most 256).
const PER_REQUEST: usize = 256;
/// How long one upload request may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What one [`Device::upload_keys`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUploadReport {
    /// Keys the server holds now (stored, or already stored).
    pub stored: u64,
    /// Keys of records an organizer erased: dropped.
    pub erased: u64,
    /// Keys refused for another reason (kept, with the reason).
    pub refused: u64,
    /// Keys dropped from the phone because their record is safe.
    pub dropped: u64,
}

#[derive(Serialize)]
struct Upload<'a> {
    keys: Vec<UploadKey<'a>>,
}

#[derive(Serialize)]
struct UploadKey<'a> {
    record: &'a str,
    wrapped: String,
}

#[derive(Deserialize)]
struct Uploaded {
    results: Vec<UploadResult>,
}

#[derive(Deserialize)]
struct UploadResult {
    record: String,
    status: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl Device {
    /// Uploads every record key the server does not hold yet, then drops the keys of records
    /// that are safe (key stored, change acknowledged). Blocking.
    pub fn upload_keys(&self) -> Result<KeyUploadReport> {
        use base64::Engine;
        let mut report = KeyUploadReport::default();
        let (server, token) = {
            let st = self.lock()?;
            let e = st.enrollment()?;
            (e.server.clone(), e.token.clone())
        };
        let url = format!("{server}/api/v1/keys");
        // A quota the server may since have raised: offered again, once per upload.
        store::retry_passing_refusals(&self.lock()?.conn)?;
        let agent = ureq::AgentBuilder::new()
            .timeout(UPLOAD_TIMEOUT)
            .redirects(0)
            .build();
        loop {
            let batch = store::keys_to_upload(&self.lock()?.conn, PER_REQUEST)?;
            if batch.is_empty() {
                break;
            }
            let body = Upload {
                keys: batch
                    .iter()
                    .map(|(record, wrapped)| UploadKey {
                        record,
                        wrapped: base64::engine::general_purpose::STANDARD.encode(wrapped),
                    })
                    .collect(),
            };
            let answer: Uploaded = match agent
                .put(&url)
                .set("Authorization", &format!("Bearer {token}"))
                .send_json(&body)
            {
                Ok(r) => r.into_json().map_err(|e| {
                    ClientError::Protocol(format!("the keys answer is not the expected JSON ({e})"))
                })?,
                Err(ureq::Error::Status(401, _)) => {
                    let waiting = self.counts().map(|c| c.pending_total()).unwrap_or(0);
                    return Err(ClientError::Unauthorized { waiting });
                }
                Err(ureq::Error::Status(503, r)) => {
                    let text = r.into_string().unwrap_or_default();
                    let said = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                        .unwrap_or_else(|| text.chars().take(300).collect());
                    return Err(ClientError::Unavailable(said));
                }
                Err(ureq::Error::Status(status, r)) => {
                    let text = r.into_string().unwrap_or_default();
                    return Err(ClientError::Protocol(format!(
                        "the server refused the record keys (HTTP {status}): {}",
                        text.chars().take(300).collect::<String>()
                    )));
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(ClientError::Network {
                        url,
                        detail: t.to_string(),
                    });
                }
            };
            if answer.results.len() != batch.len() {
                return Err(ClientError::Protocol(format!(
                    "the server answered {} results for {} keys",
                    answer.results.len(),
                    batch.len()
                )));
            }
            let mut st = self.lock()?;
            let tx = st.conn.transaction()?;
            for (r, (record, _)) in answer.results.iter().zip(&batch) {
                if &r.record != record {
                    return Err(ClientError::Protocol(format!(
                        "the server's key results are out of order ({} for {record})",
                        r.record
                    )));
                }
                match (r.status.as_str(), r.reason.as_deref()) {
                    ("stored" | "already_stored", _) => {
                        store::mark_key_stored(&tx, record)?;
                        report.stored += 1;
                    }
                    ("refused", Some("erased")) => {
                        store::refuse_key(&tx, record, "erased")?;
                        report.erased += 1;
                    }
                    (_, reason) => {
                        let why = format!(
                            "{}: {}",
                            reason.unwrap_or(&r.status),
                            r.message.as_deref().unwrap_or("no message")
                        );
                        store::refuse_key(&tx, record, &why)?;
                        report.refused += 1;
                    }
                }
            }
            tx.commit()?;
        }
        report.dropped = self.drop_safe_keys()?;
        Ok(report)
    }

    /// Drops the keys of records that are safe on the server (key stored, change
    /// acknowledged). Returns how many went.
    pub fn drop_safe_keys(&self) -> Result<u64> {
        let st = self.lock()?;
        Ok(store::drop_safe_keys(&st.conn)? as u64)
    }
}
