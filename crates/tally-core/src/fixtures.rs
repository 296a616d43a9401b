//! Fixtures for tests across the workspace (behind the `testkit` feature): a campaign with two
//! organizer identities and an event, a duplicate key, and signature and check-in builders.

use age::secrecy::ExposeSecret;
use automerge::Automerge;

use crate::campaign::{self, Campaign, CampaignInit, Event};
use crate::collection::{Checkin, Signature, SignatureForm, TakenBy};
use crate::seal::DuplicateKey;
use crate::validate::{Role, Writer};

/// A campaign id used by fixtures.
pub const CAMPAIGN: &str = "camp1";
/// An event id used by fixtures.
pub const EVENT: &str = "rally1";
/// A fixed time: 2025-06-15T16:00:00Z.
pub const NOW: i64 = 1_750_003_200_000;

/// A campaign with its documents and keys.
pub struct World {
    /// The campaign document.
    pub campaign_doc: Automerge,
    /// The campaign, read back.
    pub campaign: Campaign,
    /// Organizer identities (age secret keys as text).
    pub identities: Vec<String>,
    /// The duplicate key.
    pub key: DuplicateKey,
}

impl World {
    /// A campaign sealed to two organizers with one event.
    pub fn new() -> World {
        let ids: Vec<age::x25519::Identity> =
            (0..2).map(|_| age::x25519::Identity::generate()).collect();
        let init = CampaignInit {
            id: CAMPAIGN.into(),
            title: "Status for All".into(),
            petition: "We call on the Government of Canada to regularize all undocumented people."
                .into(),
            addressee: "the House of Commons".into(),
            goal: 1000,
            timezone: "America/Toronto".into(),
            recipients: ids.iter().map(|i| i.to_public().to_string()).collect(),
        };
        let mut doc = campaign::create(&init).expect("fixture campaign");
        campaign::put_event(
            &mut doc,
            &Event {
                id: EVENT.into(),
                name: "Rally at Queen's Park".into(),
                city: "Toronto".into(),
                starts_at: NOW,
                place: "Queen's Park".into(),
            },
        )
        .expect("fixture event");
        let campaign = campaign::read(&doc).expect("fixture campaign reads");
        World {
            campaign_doc: doc,
            campaign,
            identities: ids
                .iter()
                .map(|i| i.to_string().expose_secret().to_string())
                .collect(),
            key: DuplicateKey::from_bytes([42; 32]),
        }
    }

    /// A signature taken by `canvasser` from a person, with a given id.
    pub fn signature(
        &self,
        canvasser: &str,
        id: &str,
        name: &str,
        postal: &str,
        city: &str,
    ) -> Signature {
        let form = SignatureForm {
            name: name.into(),
            postal_code: postal.into(),
            city: city.into(),
            consent_contact: true,
            ..Default::default()
        };
        form.prepare(&TakenBy {
            campaign: &self.campaign,
            key: &self.key,
            canvasser,
            now: NOW,
            id: id.into(),
        })
        .expect("fixture signature")
    }

    /// A check-in by `canvasser` at the fixture event.
    pub fn checkin(&self, canvasser: &str, id: &str, name: &str, walk_in: bool) -> Checkin {
        Checkin {
            id: id.into(),
            event: EVENT.into(),
            attendee: self.key.attendee_token(name),
            at: NOW,
            by: canvasser.into(),
            walk_in,
            withdrawn: false,
        }
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

/// A writer with a role, enrolled in the fixture campaign.
pub fn writer(id: &str, role: Role) -> Writer {
    let campaign = match role {
        Role::Admin | Role::Server => None,
        _ => Some(CAMPAIGN.to_string()),
    };
    Writer {
        id: id.into(),
        role,
        campaign,
    }
}
