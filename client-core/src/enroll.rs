//! Enrollment over HTTP: the phone exchanges the one-time code of an [`EnrollPayload`] for a
//! device id and a bearer token (`POST {server}/api/v1/enroll`). Blocking (ureq), with a
//! timeout; https uses rustls with the bundled webpki roots.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_proto::DocumentId;

use crate::error::{ClientError, Result};
use crate::payload::EnrollPayload;

/// How long enrollment waits for the server.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// The server's answer to a good code. Its Debug output hides the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// This phone's id; it owns its collection document.
    pub device_id: String,
    /// The bearer token for sync (`tly_...`).
    pub token: String,
    /// "canvasser" or "organizer".
    pub role: String,
    /// The campaign id (the campaign document's id as text).
    pub campaign: String,
    /// `automerge:` URL of the campaign document.
    pub campaign_url: String,
    /// `automerge:` URL of the team totals document.
    pub totals_url: String,
}

impl std::fmt::Debug for EnrollResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollResponse")
            .field("device_id", &self.device_id)
            .field("role", &self.role)
            .field("campaign", &self.campaign)
            .field("campaign_url", &self.campaign_url)
            .field("totals_url", &self.totals_url)
            .finish_non_exhaustive()
    }
}

/// A checked response: the document ids parsed.
pub(crate) struct CheckedResponse {
    pub campaign_doc: DocumentId,
    pub totals_doc: DocumentId,
}

impl EnrollResponse {
    /// Checks the response against the payload it answers.
    pub(crate) fn check(&self, payload: &EnrollPayload) -> Result<CheckedResponse> {
        let bad = |what: String| ClientError::Protocol(format!("the enrollment answer {what}"));
        tally_core::fields::check_id("device_id", &self.device_id)
            .map_err(|r| bad(format!("has an unusable device id: {r}")))?;
        tally_core::fields::check_id("campaign", &self.campaign)
            .map_err(|r| bad(format!("has an unusable campaign id: {r}")))?;
        if self.token.trim().is_empty()
            || self
                .token
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("has no usable token".into()));
        }
        if !matches!(self.role.as_str(), "canvasser" | "organizer") {
            return Err(bad(format!(
                "has role {:?}; expected canvasser or organizer",
                self.role
            )));
        }
        let campaign_doc = DocumentId::from_url(&self.campaign_url)
            .map_err(|e| bad(format!("campaign_url {:?}: {e}", self.campaign_url)))?;
        let totals_doc = DocumentId::from_url(&self.totals_url)
            .map_err(|e| bad(format!("totals_url {:?}: {e}", self.totals_url)))?;
        if campaign_doc != payload.campaign {
            return Err(ClientError::Protocol(format!(
                "the server enrolled this phone in campaign {} but the enrollment code names {}: ask the organizer for a new code",
                campaign_doc.to_url(),
                payload.campaign.to_url()
            )));
        }
        if totals_doc == campaign_doc {
            return Err(bad(
                "names the same document for the campaign and the totals".into(),
            ));
        }
        Ok(CheckedResponse {
            campaign_doc,
            totals_doc,
        })
    }
}

#[derive(Serialize)]
struct EnrollRequest<'a> {
    code: &'a str,
    name: &'a str,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Exchanges the payload's code for a token. Blocking.
pub fn exchange(payload: &EnrollPayload, name: &str) -> Result<EnrollResponse> {
    let url = payload.enroll_url();
    let agent = ureq::AgentBuilder::new()
        .timeout(ENROLL_TIMEOUT)
        .redirects(0)
        .build();
    let request = EnrollRequest {
        code: &payload.code,
        name,
    };
    match agent.post(&url).send_json(&request) {
        Ok(response) => {
            let body = response.into_string().map_err(|e| ClientError::Network {
                url: url.clone(),
                detail: format!("reading the answer failed: {e}"),
            })?;
            serde_json::from_str(&body).map_err(|e| {
                ClientError::Protocol(format!(
                    "the enrollment answer is not the expected JSON ({e})"
                ))
            })
        }
        Err(ureq::Error::Status(status, response)) => {
            let body = response.into_string().unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| {
                    let snippet: String = body.chars().take(200).collect();
                    if snippet.trim().is_empty() {
                        "no reason given: check the code with the organizer".to_string()
                    } else {
                        snippet
                    }
                });
            Err(ClientError::EnrollRefused { status, message })
        }
        Err(ureq::Error::Transport(t)) => Err(ClientError::Network {
            url,
            detail: t.to_string(),
        }),
    }
}
