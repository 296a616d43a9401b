//! Enrollment over HTTP: the phone exchanges the one-time code of an [`EnrollPayload`] for a
//! device id and a bearer token (`POST {server}/api/v1/enroll`). Blocking (ureq), with a
//! timeout; https uses rustls with the bundled webpki roots.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_core::collection;
use tally_core::seal::DuplicateKey;
use tally_proto::DocumentId;

use crate::device::{Device, now_ms};
use crate::error::{ClientError, Result};
use crate::mirror::KEY_ENROLLMENT;
use crate::payload::EnrollPayload;
use crate::store::{self, DocRole};
use tally_core::validate::Role;

/// How long enrollment waits for the server.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// The server's answer to a good code. Its Debug output hides the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// This phone's id; it owns its collection document.
    pub device_id: String,
    /// The bearer token for sync (`tly_...`).
    pub token: String,
    /// Canvasser or organizer (`"canvasser"`, `"organizer"` in JSON).
    pub role: Role,
    /// The campaign id (the campaign document's id as text).
    pub campaign: String,
    /// `automerge:` URL of the campaign document.
    pub campaign_url: String,
    /// `automerge:` URL of the team totals document.
    pub totals_url: String,
    /// The device this phone was before, when it enrolled again (the server linked the two, so
    /// that the records it moves count once).
    #[serde(default)]
    pub replaces: Option<String>,
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
        if !matches!(self.role, Role::Canvasser | Role::Organizer) {
            return Err(bad(format!(
                "has role {:?}; expected canvasser or organizer",
                self.role.as_str()
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
    #[serde(skip_serializing_if = "Option::is_none")]
    replaces: Option<Replaces<'a>>,
}

/// The device a phone was before it enrolls again, and its (revoked or expired) token as the
/// proof (docs/protocol.md, "Enrolling again").
#[derive(Serialize)]
struct Replaces<'a> {
    device_id: &'a str,
    token: &'a str,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Exchanges the payload's code for a token. Blocking. `replaces`: the device id and token this
/// phone had, when it enrolls again.
pub fn exchange(
    payload: &EnrollPayload,
    name: &str,
    replaces: Option<(&str, &str)>,
) -> Result<EnrollResponse> {
    let url = payload.enroll_url();
    let agent = ureq::AgentBuilder::new()
        .timeout(ENROLL_TIMEOUT)
        .redirects(0)
        .build();
    let request = EnrollRequest {
        code: &payload.code,
        name,
        replaces: replaces.map(|(device_id, token)| Replaces { device_id, token }),
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

/// What enrollment stored, secrets included (kept in `settings`). Debug hides the secrets.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Enrollment {
    pub server: String,
    pub token: String,
    pub device_id: String,
    pub name: String,
    pub role: Role,
    pub campaign: String,
    pub campaign_doc: DocumentId,
    pub totals_doc: DocumentId,
    pub collection_doc: DocumentId,
    /// The campaign duplicate key, hex.
    pub key: String,
    /// Stable id of this phone's storage, sent in `join` so the server can keep sync states.
    pub storage_id: String,
    pub enrolled_at: i64,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("server", &self.server)
            .field("device_id", &self.device_id)
            .field("campaign", &self.campaign)
            .finish_non_exhaustive()
    }
}

impl Enrollment {
    pub(crate) fn key(&self) -> Result<DuplicateKey> {
        DuplicateKey::from_hex(&self.key).map_err(ClientError::Corrupt)
    }

    pub(crate) fn info(&self) -> EnrollmentInfo {
        EnrollmentInfo {
            server: self.server.clone(),
            device_id: self.device_id.clone(),
            name: self.name.clone(),
            role: self.role,
            campaign: self.campaign.clone(),
            campaign_url: self.campaign_doc.to_url(),
            totals_url: self.totals_doc.to_url(),
            collection_url: self.collection_doc.to_url(),
            enrolled_at: self.enrolled_at,
        }
    }
}

/// What the phone is enrolled as (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentInfo {
    /// The server's base URL.
    pub server: String,
    /// This phone's device id (the owner of its collection).
    pub device_id: String,
    /// The name given at enrollment.
    pub name: String,
    /// Canvasser or organizer (`"canvasser"`, `"organizer"` in JSON).
    pub role: Role,
    /// The campaign id.
    pub campaign: String,
    /// The campaign document.
    pub campaign_url: String,
    /// The team totals document.
    pub totals_url: String,
    /// This phone's collection document.
    pub collection_url: String,
    /// When, ms since the epoch.
    pub enrolled_at: i64,
}

impl Device {
    /// Enrolls this phone: parses the organizer's payload, exchanges its code for a token over
    /// HTTP, and creates and commits the phone's collection document. The campaign document
    /// arrives with the first sync. If this fails after the server accepted the code, the code
    /// is used up: ask the organizer for a new one.
    ///
    /// A phone already enrolled in the payload's campaign enrolls again (its token was revoked
    /// or expired): it sends its old device id and token so the server links the new device to
    /// the old one, and everything not yet acknowledged moves to the new device's collection
    /// with the same record ids ([`crate::chain`]). A phone enrolled in another campaign is
    /// refused: use another home directory.
    pub fn enroll(&self, payload_json: &str, name: &str) -> Result<EnrollmentInfo> {
        let payload = EnrollPayload::parse(payload_json)?;
        tally_core::form::device_name(name)?;
        let old = self.lock()?.enrollment.clone();
        if let Some(e) = &old {
            check_same_campaign(e, &payload)?;
        }
        let replaces = old
            .as_ref()
            .map(|e| (e.device_id.as_str(), e.token.as_str()));
        let response = exchange(&payload, name.trim(), replaces)?;
        self.complete_enrollment(&payload, &response, name)
    }

    /// The second half of [`Device::enroll`], for an app that did the HTTP exchange itself (and
    /// for tests): checks the server's answer against the payload and stores the enrollment and
    /// a new collection document in one transaction (for a phone enrolling again: with what
    /// moves from its old collections).
    pub fn complete_enrollment(
        &self,
        payload: &EnrollPayload,
        response: &EnrollResponse,
        name: &str,
    ) -> Result<EnrollmentInfo> {
        tally_core::form::device_name(name)?;
        let checked = response.check(payload)?;
        let mut st = self.lock()?;
        st.refresh()?;
        let mut rng = rand::rngs::OsRng;
        let now = now_ms();
        if let Some(old) = st.enrollment.clone() {
            check_same_campaign(&old, payload)?;
            if response.device_id == old.device_id {
                return Err(ClientError::Protocol(
                    "the enrollment answer gives this phone the device id it already has".into(),
                ));
            }
            let enrollment = Enrollment {
                server: payload.server.clone(),
                token: response.token.clone(),
                device_id: response.device_id.clone(),
                name: name.trim().to_string(),
                role: response.role,
                campaign: response.campaign.clone(),
                campaign_doc: checked.campaign_doc,
                totals_doc: checked.totals_doc,
                collection_doc: old.collection_doc,
                key: payload.key.to_hex(),
                storage_id: old.storage_id.clone(),
                enrolled_at: now,
            };
            st.reenroll(enrollment)?;
            return Ok(st.enrollment()?.info());
        }
        let collection =
            collection::create(&response.campaign, &response.device_id).map_err(|e| {
                ClientError::Protocol(format!(
                    "the enrollment answer cannot start a collection: {e}"
                ))
            })?;
        let collection_doc = DocumentId::random(&mut rng);
        let enrollment = Enrollment {
            server: payload.server.clone(),
            token: response.token.clone(),
            device_id: response.device_id.clone(),
            name: name.trim().to_string(),
            role: response.role,
            campaign: response.campaign.clone(),
            campaign_doc: checked.campaign_doc,
            totals_doc: checked.totals_doc,
            collection_doc,
            key: payload.key.to_hex(),
            storage_id: hex::encode(rand::Rng::r#gen::<[u8; 16]>(&mut rng)),
            enrolled_at: now,
        };
        let json = serde_json::to_string(&enrollment).expect("enrollment serializes");
        st.commit(|tx, _| {
            store::set_setting(tx, KEY_ENROLLMENT, &json)?;
            store::insert_doc(
                tx,
                &collection_doc,
                DocRole::Collection,
                0,
                Some(&collection.save()),
                now,
            )?;
            store::insert_doc(tx, &checked.campaign_doc, DocRole::Campaign, 0, None, now)?;
            store::insert_doc(tx, &checked.totals_doc, DocRole::Totals, 0, None, now)?;
            Ok(())
        })?;
        if let Err(e) = st.reload() {
            st.restore();
            return Err(e);
        }
        Ok(enrollment.info())
    }
}

/// A phone enrolls again only in the campaign it holds records of.
fn check_same_campaign(old: &Enrollment, payload: &EnrollPayload) -> Result<()> {
    if old.campaign_doc != payload.campaign {
        return Err(ClientError::AlreadyEnrolled {
            campaign: old.campaign.clone(),
            device_id: old.device_id.clone(),
        });
    }
    Ok(())
}
