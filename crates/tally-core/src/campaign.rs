//! The campaign document, written by organizers: the petition, who it is addressed to, the goal,
//! the time zone days are counted in, the age recipients signers' details are sealed to, and the
//! events (rallies, office visits, marches) that signatures and check-ins can belong to.

use std::collections::BTreeMap;

use automerge::{Automerge, ObjId, ROOT, ReadDoc, ScalarValue, Value, transaction::Transactable};

use crate::doc::{self, DocHeader, DocKind, Fields, WriteError, get_int, get_str, required};
use crate::fields::{
    MAX_LONG_TEXT, MAX_RECIPIENTS, MAX_SHORT_TEXT, check_id, check_text, check_time,
};
use crate::validate::{Rejection, Rule};

/// What an organizer gives to start a campaign.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CampaignInit {
    /// The campaign id (the server uses the campaign document's id).
    pub id: String,
    /// Title shown to canvassers.
    pub title: String,
    /// The petition text as signed.
    pub petition: String,
    /// Who receives it, e.g. "the House of Commons".
    pub addressee: String,
    /// How many signatures the campaign aims for.
    pub goal: i64,
    /// IANA time zone that days are counted in, e.g. "America/Toronto".
    pub timezone: String,
    /// age X25519 recipients (`age1...`) the personal fields are sealed to.
    pub recipients: Vec<String>,
}

/// An event of a campaign.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// Event id, unique in the campaign.
    pub id: String,
    /// Name, e.g. "Rally at Queen's Park".
    pub name: String,
    /// City it takes place in.
    pub city: String,
    /// Start time, ms since the epoch.
    pub starts_at: i64,
    /// Where, e.g. an address or a landmark.
    pub place: String,
}

/// A campaign as read from its document.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Campaign {
    /// The campaign id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Petition text.
    pub petition: String,
    /// Addressee.
    pub addressee: String,
    /// Goal count.
    pub goal: i64,
    /// IANA time zone.
    pub timezone: String,
    /// age recipients.
    pub recipients: Vec<String>,
    /// Events by id.
    pub events: BTreeMap<String, Event>,
}

pub(crate) const EVENT_FIELDS: &[&str] = &["id", "name", "city", "starts_at", "place"];

impl CampaignInit {
    /// Checks every field.
    pub fn check(&self) -> Result<(), Rejection> {
        check_id("campaign", &self.id)?;
        check_text("title", &self.title, MAX_SHORT_TEXT, true)?;
        check_text("petition", &self.petition, MAX_LONG_TEXT, true)?;
        check_text("addressee", &self.addressee, MAX_SHORT_TEXT, true)?;
        check_goal(self.goal)?;
        check_timezone(&self.timezone)?;
        check_recipients(&self.recipients)
    }
}

impl Event {
    /// Checks every field.
    pub fn check(&self, path: &str) -> Result<(), Rejection> {
        check_id(&format!("{path}/id"), &self.id)?;
        check_text(&format!("{path}/name"), &self.name, MAX_SHORT_TEXT, true)?;
        check_text(&format!("{path}/city"), &self.city, MAX_SHORT_TEXT, true)?;
        check_time(&format!("{path}/starts_at"), self.starts_at)?;
        check_text(&format!("{path}/place"), &self.place, MAX_SHORT_TEXT, false)
    }
}

fn check_goal(goal: i64) -> Result<(), Rejection> {
    if (0..=100_000_000).contains(&goal) {
        Ok(())
    } else {
        Err(Rejection::new(
            "goal",
            Rule::Malformed,
            format!("a goal is 0 to 100,000,000 signatures, got {goal}"),
        ))
    }
}

fn check_timezone(tz: &str) -> Result<(), Rejection> {
    tz.parse::<chrono_tz::Tz>().map(|_| ()).map_err(|_| {
        Rejection::new(
            "timezone",
            Rule::Malformed,
            format!("{tz:?} is not an IANA time zone; use e.g. \"America/Toronto\""),
        )
    })
}

fn check_recipients(recipients: &[String]) -> Result<(), Rejection> {
    if recipients.is_empty() {
        return Err(Rejection::new(
            "recipients",
            Rule::Missing,
            "at least one organizer's age recipient (age1...) is needed to seal signers' details",
        ));
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(Rejection::new(
            "recipients",
            Rule::TooLarge,
            format!("at most {MAX_RECIPIENTS} recipients"),
        ));
    }
    for (i, r) in recipients.iter().enumerate() {
        r.parse::<age::x25519::Recipient>().map_err(|_| {
            Rejection::new(
                format!("recipients/{i}"),
                Rule::Malformed,
                "not an age X25519 recipient (age1...)",
            )
        })?;
    }
    Ok(())
}

/// Creates a campaign document: header, fields, recipients and an empty event map in one change.
pub fn create(init: &CampaignInit) -> Result<Automerge, WriteError> {
    init.check()?;
    let mut doc = doc::create(
        DocKind::Campaign,
        &init.id,
        None,
        &[
            ("title", init.title.as_str().into()),
            ("petition", init.petition.as_str().into()),
            ("addressee", init.addressee.as_str().into()),
            ("goal", ScalarValue::Int(init.goal)),
            ("timezone", init.timezone.as_str().into()),
        ],
    );
    let list = doc::container(&doc, "recipients")?;
    doc.transact::<_, _, automerge::AutomergeError>(|tx| {
        for (i, r) in init.recipients.iter().enumerate() {
            tx.insert(&list, i, r.as_str())?;
        }
        Ok(())
    })
    .map_err(|f| f.error)?;
    Ok(doc)
}

/// Adds an event, or corrects one with the same id.
pub fn put_event(doc: &mut Automerge, event: &Event) -> Result<(), WriteError> {
    event.check(&format!("events/{}", event.id))?;
    let events = doc::container(doc, "events")?;
    doc.transact::<_, _, automerge::AutomergeError>(|tx| {
        doc::put_record(
            tx,
            &events,
            &event.id,
            &[
                ("id", event.id.as_str().into()),
                ("name", event.name.as_str().into()),
                ("city", event.city.as_str().into()),
                ("starts_at", ScalarValue::Int(event.starts_at)),
                ("place", event.place.as_str().into()),
            ],
        )
    })
    .map_err(|f| f.error)?;
    Ok(())
}

/// Reads one event record and checks it.
pub(crate) fn read_event(doc: &Automerge, obj: &ObjId, key: &str) -> Result<Event, Rejection> {
    event_from(Fields::read(doc, obj, format!("events/{key}")), key)
}

/// Reads one event record from its fields and checks it.
pub(crate) fn event_from(r: Fields, key: &str) -> Result<Event, Rejection> {
    let p = format!("events/{key}");
    r.only(EVENT_FIELDS)?;
    let event = Event {
        id: r.required("id", r.str("id")?)?,
        name: r.required("name", r.str("name")?)?,
        city: r.required("city", r.str("city")?)?,
        starts_at: r.required("starts_at", r.int("starts_at")?)?,
        place: r.str("place")?.unwrap_or_default(),
    };
    if event.id != key {
        return Err(Rejection::new(
            r.path("id"),
            Rule::Malformed,
            "a record's id must equal its key",
        ));
    }
    event.check(&p)?;
    Ok(event)
}

/// Reads the recipients list.
pub(crate) fn read_recipients(doc: &Automerge) -> Result<Vec<String>, Rejection> {
    let list = doc::container(doc, "recipients")?;
    let mut out = Vec::new();
    for i in 0..doc.length(&list) {
        match doc.get(&list, i) {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Str(r) => out.push(r.to_string()),
                other => {
                    return Err(Rejection::new(
                        format!("recipients/{i}"),
                        Rule::WrongType,
                        format!("expected a string, found {other}"),
                    ));
                }
            },
            _ => {
                return Err(Rejection::new(
                    format!("recipients/{i}"),
                    Rule::WrongType,
                    "expected a string",
                ));
            }
        }
    }
    check_recipients(&out)?;
    Ok(out)
}

/// Reads a campaign document, checking every field.
pub fn read(doc: &Automerge) -> Result<Campaign, Rejection> {
    let header = DocHeader::read(doc)?;
    if header.kind != DocKind::Campaign {
        return Err(Rejection::new(
            "kind",
            Rule::WrongKind,
            format!("expected a campaign document, this is a {}", header.kind),
        ));
    }
    let root = ROOT;
    let s = |k: &str| -> Result<String, Rejection> { required(get_str(doc, &root, k, k)?, k) };
    let campaign = CampaignInit {
        id: header.campaign.clone(),
        title: s("title")?,
        petition: s("petition")?,
        addressee: s("addressee")?,
        goal: required(get_int(doc, &root, "goal", "goal")?, "goal")?,
        timezone: s("timezone")?,
        recipients: read_recipients(doc)?,
    };
    campaign.check()?;
    let mut events = BTreeMap::new();
    for (key, obj) in doc::records(doc, "events")? {
        events.insert(key.clone(), read_event(doc, &obj, &key)?);
    }
    Ok(Campaign {
        id: campaign.id,
        title: campaign.title,
        petition: campaign.petition,
        addressee: campaign.addressee,
        goal: campaign.goal,
        timezone: campaign.timezone,
        recipients: campaign.recipients,
        events,
    })
}

/// Checks the root scalars of a campaign document (used by validation after a change).
pub(crate) fn check_root(doc: &Automerge) -> Result<(), Rejection> {
    read(doc).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::tests::recipients;

    pub(crate) fn init() -> CampaignInit {
        CampaignInit {
            id: "camp1".into(),
            title: "Status for All".into(),
            petition: "We call on the government to regularize all undocumented people.".into(),
            addressee: "the House of Commons".into(),
            goal: 1000,
            timezone: "America/Toronto".into(),
            recipients: recipients(2).1,
        }
    }

    #[test]
    fn create_read_round_trip() {
        let mut doc = create(&init()).unwrap();
        let ev = Event {
            id: "rally1".into(),
            name: "Rally".into(),
            city: "Toronto".into(),
            starts_at: 1_750_000_000_000,
            place: "Queen's Park".into(),
        };
        put_event(&mut doc, &ev).unwrap();
        let c = read(&doc).unwrap();
        assert_eq!(c.title, "Status for All");
        assert_eq!(c.recipients.len(), 2);
        assert_eq!(c.events["rally1"], ev);
        let reloaded = Automerge::load(&doc.save()).unwrap();
        assert_eq!(read(&reloaded).unwrap(), c);
    }

    #[test]
    fn bad_init_refused() {
        let mut i = init();
        i.timezone = "Mars/Olympus".into();
        assert!(create(&i).unwrap_err().to_string().contains("timezone"));
        let mut i = init();
        i.recipients = vec!["not-a-key".into()];
        assert!(matches!(create(&i), Err(WriteError::Invalid(r)) if r.path == "recipients/0"));
    }
}
