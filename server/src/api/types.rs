//! The HTTP API's request and response bodies, in one place: the server's handlers take and
//! answer these, and every client of the API (the `tally` command line in `crate::organizer_cli`,
//! `tally-bench`, the end-to-end tests) sends and reads the same types instead of JSON written
//! by hand. `crate::openapi` describes them; a test holds the two equal field by field.
//!
//! The types that are the documents' own (an event, a strike, a sheet, a device) are re-exported
//! from the crates that define them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
pub use tally_core::campaign::Event;
pub use tally_core::review::{Sheet, Strike};
pub use tally_core::totals::{Cell, CheckinCell, PaperTotals};
pub use tally_store::Device;

pub use crate::suppression::Suppression;

/// `POST /api/v1/enroll`: a one-time invite code for a device token.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct EnrollRequest {
    /// The invite's one-time code (`XXXX-XXXX-XXXX`).
    pub code: String,
    /// The device's name, as organizers see it (default "phone").
    #[serde(default)]
    pub name: String,
    /// The device this phone was before (re-enrollment after a revocation or an expiry): the
    /// new device replaces it, shares its lineage (so that the phone's records re-homed with
    /// the same ids count once), and the old one is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<ReplacedDevice>,
}

/// The proof of the device a re-enrolling phone was before: its id and its token (revoked or
/// expired, the token still proves the phone held it). `Debug` hides the token.
#[derive(Serialize, Deserialize, Clone)]
pub struct ReplacedDevice {
    /// The old device's id.
    pub device_id: String,
    /// The old device's token.
    pub token: String,
}

impl std::fmt::Debug for ReplacedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplacedDevice")
            .field("device_id", &self.device_id)
            .field("token", &"tly_<redacted>")
            .finish()
    }
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
    /// The device this one replaces (the request's `replaces`), now revoked.
    #[serde(default)]
    pub replaces: Option<String>,
}

/// `POST /api/v1/campaigns`: a new campaign (admin).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NewCampaign {
    /// The campaign's title.
    pub title: String,
    /// The petition's text, as signers read it.
    pub petition: String,
    /// To whom the petition goes, e.g. "the House of Commons".
    pub addressee: String,
    /// How many signatures the campaign aims for (0: no goal).
    #[serde(default, deserialize_with = "whole_number")]
    pub goal: i64,
    /// The IANA time zone days are counted in (default America/Toronto).
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// The organizers' age recipients (age1...) signers' details are sealed to.
    pub recipients: Vec<String>,
}

/// A JSON number without a fractional part, written `25` or `25.0`: what JSON Schema (and so
/// the OpenAPI document) calls an integer, where serde's `i64` would refuse `25.0`.
pub fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        // Within i64's range: 2^63 is the first f64 past it.
        Some(f) if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63) => Ok(f as i64),
        _ => Err(D::Error::custom(format!(
            "{n} is not a whole number that fits in 64 bits"
        ))),
    }
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

/// One campaign of `GET /api/v1/campaigns` (fields in alphabetical order, as they were
/// always written).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CampaignSummary {
    /// To whom the petition goes.
    pub addressee: String,
    /// The campaign id.
    pub campaign: String,
    /// Its events.
    pub events: Vec<Event>,
    /// How many signatures it aims for (0: no goal).
    pub goal: i64,
    /// Its title.
    pub title: String,
    /// The IANA time zone its days are counted in (`by_day`, organizers' time windows).
    #[serde(default = "default_tz")]
    pub timezone: String,
}

/// `GET /api/v1/campaigns`: the campaigns the token may see.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CampaignList {
    /// Every campaign for the admin; an organizer's or canvasser's own.
    pub campaigns: Vec<CampaignSummary>,
}

/// `POST /api/v1/campaigns/{id}/events`: a new event (or a change to one, by its id).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NewEvent {
    /// The event id (default: generated).
    #[serde(default)]
    pub id: Option<String>,
    /// Its name.
    pub name: String,
    /// Its city.
    pub city: String,
    /// ms since the epoch, or RFC 3339 text.
    pub starts_at: serde_json::Value,
    /// Where.
    #[serde(default)]
    pub place: String,
}

/// `POST /api/v1/invites`: an invite for one device of a campaign.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct InviteRequest {
    /// The campaign id.
    pub campaign: String,
    /// canvasser or organizer.
    pub role: String,
}

/// A created invite (fields in alphabetical order, as they were always written).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// The canvassers' app on this server (`{public_url}/app/`). The invite's QR code is this
    /// link followed by `#` and the URI-encoded payload JSON (docs/clients.md §1): the phone's
    /// camera opens the app, and the fragment (the code and the campaign's key) never reaches a
    /// server's log.
    #[serde(default)]
    pub app_url: String,
    /// `automerge:` URL of the campaign document.
    pub campaign: String,
    /// The one-time code.
    pub code: String,
    /// When the code stops working (ms since the epoch).
    pub expires_at: i64,
    /// canvasser or organizer.
    pub role: String,
    /// The server's public URL, for the phone.
    pub server: String,
}

/// `POST /api/v1/devices/{id}/revoke`: what revocation did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Sync connections and live streams closed.
    pub connections_closed: usize,
    /// The device id.
    pub revoked: String,
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
    /// Signers' riding.
    #[serde(default)]
    pub riding: Option<String>,
    /// The collecting device (canvasser).
    #[serde(default)]
    pub canvasser: Option<String>,
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
    /// How far these totals are behind what was acknowledged (absent from servers before it:
    /// none behind).
    #[serde(default)]
    pub projection: ProjectionLag,
}

/// How far a totals answer is behind the changes the server acknowledged: the projector
/// counts them after the phone hears "acknowledged" (docs/architecture.md, "The projector").
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectionLag {
    /// Records acknowledged (in any campaign of the database) and not counted in this answer
    /// yet; 0: it counts everything acknowledged.
    pub pending_records: u64,
    /// How long the oldest of them has waited, in milliseconds (0 when none).
    pub lag_ms: u64,
}

/// `POST /api/v1/campaigns/{id}/strikes`: strike a signature, or undo a strike.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NewStrike {
    /// The signature id.
    pub signature: String,
    /// duplicate, invalid, withdrawn_consent or test_entry.
    pub reason: String,
    /// `true` undoes an earlier strike.
    #[serde(default)]
    pub revoked: bool,
}

/// `POST /api/v1/campaigns/{id}/sheets`: record a paper sheet or change one.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NewSheet {
    /// The sheet's serial.
    pub serial: String,
    /// Signatures on it.
    #[serde(deserialize_with = "whole_number")]
    pub count: i64,
    /// The riding it was collected in.
    #[serde(default)]
    pub riding: Option<String>,
    /// collected (default), counted or delivered.
    #[serde(default)]
    pub status: Option<String>,
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
    /// Erased at the signer's request (docs/security.md, "Erasure"): `sealed` is empty.
    #[serde(default)]
    pub erased: bool,
    /// The sealed personal fields, hex (v2 opens with the record's key from
    /// `GET .../keys`; v1 with the organizer's identity); empty when erased.
    pub sealed: String,
    /// The signature's duplicate group: the same for every signature of the campaign with the
    /// same duplicate token (so the same signer), different across campaigns, and not the token
    /// itself (16 hex digits of SHA-256 over a fixed label, the campaign id and the token).
    #[serde(default)]
    pub duplicate_group: String,
}

/// One refused change of `GET /api/v1/quarantine`: who sent it, for which document, when and
/// why; never its bytes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The entry's id, increasing (the paging cursor).
    pub id: i64,
    /// The device that sent it.
    pub device_id: String,
    /// The document it was meant for.
    pub doc_id: String,
    /// When it was refused, ms since the epoch.
    pub at: i64,
    /// Why, in words an organizer can act on.
    pub reason: String,
    /// The validation rule broken, when validation refused it.
    pub rule: Option<String>,
    /// The refused message's size in bytes.
    pub size: i64,
    /// Later refusals from the device counted here instead of kept (over the quota).
    pub repeats: i64,
}

/// `GET /api/v1/quarantine`: a page of refused changes, oldest first.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QuarantineList {
    /// The entries.
    pub entries: Vec<Quarantined>,
    /// The `after` of the next page, when this one is full.
    pub next_after: Option<i64>,
}

/// `POST /api/v1/signin-links`: a token sealed to a throwaway age key (`tally dashboard`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NewSigninLink {
    /// The age file of the token, hex.
    pub sealed: String,
}

/// A sign-in link waiting to be used.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SigninLink {
    /// The link's id (32 hex digits), in the link's fragment.
    pub id: String,
    /// When it stops working, ms since the epoch.
    pub expires_at: i64,
}

/// `POST /api/v1/signin-links/{id}/redeem`: the sealed token, given once.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SealedToken {
    /// The age file of the token, hex.
    pub sealed: String,
}

/// `GET /api/v1/campaigns/{id}/review`: the campaign's review document as it stands.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewList {
    /// Every strike, revoked ones included, by signature id.
    pub strikes: Vec<Strike>,
    /// Every paper sheet, by serial.
    pub sheets: Vec<Sheet>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON Schema's integers: `25` and `25.0` are both a count of 25; `25.5` and a number past
    /// 64 bits are refused.
    #[test]
    fn whole_numbers_may_be_written_with_a_point() {
        let sheet = |count: &str| {
            serde_json::from_str::<NewSheet>(&format!(r#"{{"serial": "S-1", "count": {count}}}"#))
                .map(|s| s.count)
        };
        assert_eq!(sheet("25").unwrap(), 25);
        assert_eq!(sheet("25.0").unwrap(), 25);
        assert_eq!(sheet("-3.0").unwrap(), -3);
        assert!(sheet("25.5").is_err());
        assert!(sheet("1e19").is_err());
        assert!(sheet("\"25\"").is_err());
        let campaign: NewCampaign = serde_json::from_str(
            r#"{"title": "t", "petition": "p", "addressee": "a", "recipients": [], "goal": 1000.0}"#,
        )
        .unwrap();
        assert_eq!(campaign.goal, 1000);
    }
}
