//! What the organizer commands print for people (without `--json`): plain-text tables with
//! aligned columns, and times as the organizer's local time (`TZ`, else the system's zone)
//! instead of the API's milliseconds since the epoch.

use std::collections::BTreeMap;

use chrono::TimeZone as _;

use crate::api::types::{CampaignSummary, Cell, Device, ReviewList, Sheet, Strike, TotalsResponse};

/// A table of text: a header row, then rows, columns separated by two spaces, numbers aligned
/// to the right.
pub struct Table {
    head: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles, every column aligned to the left.
    pub fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|h| h.to_string()).collect(),
            right: vec![false; head.len()],
            rows: Vec::new(),
        }
    }

    /// Aligns these columns (numbers) to the right.
    pub fn right(mut self, cols: &[usize]) -> Table {
        for &c in cols {
            if let Some(r) = self.right.get_mut(c) {
                *r = true;
            }
        }
        self
    }

    /// Adds a row (missing cells are empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines of text, each ending in a newline, with no trailing spaces.
    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.head.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(widths.len()) {
                widths[i] = widths[i].max(width(c));
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.head).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = r.get(i).map(String::as_str).unwrap_or("");
                let pad = " ".repeat(w.saturating_sub(width(cell)));
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right[i] {
                    line.push_str(&pad);
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `ms` (since the epoch) as the organizer's local time, to the minute: `2026-07-01 18:00`.
pub fn local_time(ms: i64) -> String {
    match chrono::Local.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M").to_string(),
        None => format!("{ms} ms"),
    }
}

/// An optional time, `-` when there is none.
pub fn local_time_or_dash(ms: Option<i64>) -> String {
    ms.map(local_time).unwrap_or_else(|| "-".into())
}

/// A line saying which zone the table's times are in: `times are local (UTC-04:00)`.
pub fn zone_note() -> String {
    format!(
        "times are local (UTC{})",
        chrono::Local::now().format("%:z")
    )
}

/// `GET /api/v1/campaigns` as a table, and each campaign's events under it.
pub fn campaigns(list: &[CampaignSummary]) -> String {
    if list.is_empty() {
        return "no campaigns yet: create one with `tally campaign create`\n".into();
    }
    let mut t = Table::new(&[
        "CAMPAIGN",
        "TITLE",
        "ADDRESSEE",
        "GOAL",
        "EVENTS",
        "TIME ZONE",
    ])
    .right(&[3, 4]);
    for c in list {
        t.row(vec![
            c.campaign.clone(),
            c.title.clone(),
            c.addressee.clone(),
            if c.goal > 0 {
                c.goal.to_string()
            } else {
                "-".into()
            },
            c.events.len().to_string(),
            c.timezone.clone(),
        ]);
    }
    let mut out = t.render();
    for c in list.iter().filter(|c| !c.events.is_empty()) {
        let mut events = c.events.clone();
        events.sort_by(|a, b| (a.starts_at, &a.id).cmp(&(b.starts_at, &b.id)));
        let mut t = Table::new(&["EVENT", "NAME", "CITY", "STARTS", "PLACE"]);
        for e in events {
            t.row(vec![
                e.id.clone(),
                e.name.clone(),
                e.city.clone(),
                local_time(e.starts_at),
                e.place.clone(),
            ]);
        }
        out.push_str(&format!("\nevents of {} ({}):\n", c.title, c.campaign));
        out.push_str(&t.render());
    }
    out.push_str(&format!("\n{}\n", zone_note()));
    out
}

/// The devices of `GET /api/v1/devices` as a table; campaigns by title where `titles` knows
/// them.
pub fn devices(list: &[Device], titles: &BTreeMap<String, String>) -> String {
    let mut t = Table::new(&[
        "DEVICE",
        "NAME",
        "ROLE",
        "CAMPAIGN",
        "ENROLLED",
        "LAST SEEN",
        "REVOKED",
    ]);
    for d in list {
        t.row(vec![
            d.device_id.clone(),
            d.name.clone(),
            d.role.as_str().into(),
            d.campaign
                .as_ref()
                .map(|c| titles.get(c).cloned().unwrap_or_else(|| c.clone()))
                .unwrap_or_else(|| "-".into()),
            local_time(d.created_at),
            local_time_or_dash(d.last_seen),
            local_time_or_dash(d.revoked_at),
        ]);
    }
    format!("{}\n{}\n", t.render(), zone_note())
}

/// The audit log as a table, oldest first.
pub fn audit(list: &[tally_store::AuditEntry]) -> String {
    if list.is_empty() {
        return "no audit entries match\n".into();
    }
    let mut t = Table::new(&[
        "#", "TIME", "ACTOR", "ACTION", "CAMPAIGN", "TARGET", "RESULT",
    ]);
    for e in list {
        t.row(vec![
            e.seq.to_string(),
            local_time(e.at),
            if e.actor_name.is_empty() {
                e.actor_id.clone()
            } else {
                format!("{} ({})", e.actor_name, e.actor_id)
            },
            e.action.clone(),
            e.campaign.clone().unwrap_or_else(|| "-".into()),
            e.target.clone(),
            e.result.clone(),
        ]);
    }
    format!("{}\n{}\n", t.render(), zone_note())
}

/// The paper sheets as a table, with their total.
pub fn sheets(list: &[Sheet]) -> String {
    if list.is_empty() {
        return "no paper sheets yet: record one with `tally sheet add`\n".into();
    }
    let mut t = Table::new(&["SERIAL", "SIGNATURES", "RIDING", "STATUS"]).right(&[1]);
    for s in list {
        t.row(vec![
            s.serial.clone(),
            s.count.to_string(),
            s.riding.clone().unwrap_or_else(|| "-".into()),
            s.status.as_str().into(),
        ]);
    }
    let total: i64 = list.iter().map(|s| s.count).sum();
    format!("{}{} sheets, {total} signatures\n", t.render(), list.len())
}

/// The strike of `record` in `review`, if any (revoked or not).
pub fn strike_of<'a>(review: &'a ReviewList, record: &str) -> Option<&'a Strike> {
    review.strikes.iter().find(|s| s.signature == record)
}

/// A headline number, or why it is not shown.
fn headline(v: Option<u64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_else(|| "hidden".into())
}

/// The names to show for the breakdowns' keys: events by name, canvassers by their phone's name.
#[derive(Default)]
pub struct Names {
    /// Event id to its name.
    pub events: BTreeMap<String, String>,
    /// Device id to the device's name.
    pub devices: BTreeMap<String, String>,
}

/// One breakdown (`key` as the API names it, `by_city`) as a table whose first column is
/// `title`; small cells hidden by suppression as one line of their signatures together; a line
/// saying it is empty or withheld.
fn breakdown(
    t: &TotalsResponse,
    key: &str,
    title: &str,
    cells: &BTreeMap<String, Cell>,
    label: impl Fn(&str) -> String,
) -> String {
    let s = &t.suppression;
    if s.withheld.contains(key) {
        return format!(
            "{title}: withheld (too few people signed to show any cell without singling one out)\n"
        );
    }
    let hidden = s.hidden.get(key).copied().unwrap_or(0);
    if cells.is_empty() && hidden == 0 {
        return format!("{title}: none\n");
    }
    let mut table = Table::new(&[title, "SIGNATURES", "UNIQUE"]).right(&[1, 2]);
    for (k, c) in cells {
        table.row(vec![
            label(k),
            c.signatures.to_string(),
            c.unique.to_string(),
        ]);
    }
    if hidden > 0 {
        let together = s.other.get(key).map(u64::to_string);
        table.row(vec![
            format!("({hidden} small cells, hidden)"),
            together.unwrap_or_else(|| "-".into()),
            "-".into(),
        ]);
    }
    table.render()
}

/// A campaign's totals for people: the headline sentence, then the headline numbers and each
/// breakdown as a table (events by name, canvassers by their phone's name where known).
pub fn totals(t: &TotalsResponse, title: Option<&str>, names: &Names) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{} signatures counted, {} unique signers ({} struck, {} withdrawn); paper: {} sheets, {} signatures\n",
        headline(t.signatures),
        headline(t.unique_signers),
        headline(t.struck),
        headline(t.withdrawn),
        t.paper.sheets,
        t.paper.signatures
    ));
    out.push('\n');
    match title {
        Some(title) => out.push_str(&format!("campaign  {title} ({})\n", t.campaign)),
        None => out.push_str(&format!("campaign  {}\n", t.campaign)),
    }
    let f = &t.filters;
    let mut filters = Vec::new();
    if let Some(e) = &f.event {
        filters.push(format!("event {}", event_label(e, names)));
    }
    if let Some(c) = &f.city {
        filters.push(format!("city {c}"));
    }
    if let Some(x) = &f.fsa {
        filters.push(format!("FSA {x}"));
    }
    let when = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| local_time(t.timestamp_millis()))
            .unwrap_or_else(|_| s.to_string())
    };
    if let Some(x) = &f.from {
        filters.push(format!("from {}", when(x)));
    }
    if let Some(x) = &f.to {
        filters.push(format!("until {} (not included)", when(x)));
    }
    if !filters.is_empty() {
        out.push_str(&format!("filters   {}\n", filters.join(", ")));
    }
    out.push('\n');
    let mut head = Table::new(&["", ""]).right(&[1]);
    for (k, v) in [
        ("signatures counted", headline(t.signatures)),
        ("unique signers", headline(t.unique_signers)),
        ("struck", headline(t.struck)),
        ("withdrawn", headline(t.withdrawn)),
        ("paper sheets", t.paper.sheets.to_string()),
        ("paper signatures", t.paper.signatures.to_string()),
    ] {
        head.row(vec![k.into(), v]);
    }
    // The header row of this table is empty: skip it.
    out.push_str(head.render().split_once('\n').map_or("", |(_, rest)| rest));
    let sections = [
        breakdown(t, "by_event", "BY EVENT", &t.by_event, |k| {
            event_label(k, names)
        }),
        breakdown(t, "by_city", "BY CITY", &t.by_city, str::to_string),
        breakdown(t, "by_fsa", "BY FSA", &t.by_fsa, str::to_string),
        breakdown(t, "by_riding", "BY RIDING", &t.by_riding, str::to_string),
        breakdown(t, "by_day", "BY DAY", &t.by_day, str::to_string),
        breakdown(t, "by_canvasser", "BY CANVASSER", &t.by_canvasser, |k| {
            canvasser_label(k, names)
        }),
    ];
    for s in sections {
        out.push('\n');
        out.push_str(&s);
    }
    if !t.checkins.is_empty() {
        let mut c = Table::new(&["CHECK-INS BY EVENT", "PEOPLE", "PRE-REGISTERED", "WALK-IN"])
            .right(&[1, 2, 3]);
        for (k, v) in &t.checkins {
            c.row(vec![
                event_label(k, names),
                v.unique.to_string(),
                v.pre_registered.to_string(),
                v.walk_in.to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&c.render());
    }
    if !t.paper.by_status.is_empty() {
        let mut p = Table::new(&["PAPER BY STATUS", "SHEETS", "SIGNATURES"]).right(&[1, 2]);
        for (k, v) in &t.paper.by_status {
            p.row(vec![
                k.clone(),
                v.sheets.to_string(),
                v.signatures.to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&p.render());
    }
    if let Some(note) = &t.suppression.note {
        out.push_str(&format!("\n{note}\n"));
    }
    let lag = &t.projection;
    if lag.pending_records > 0 {
        out.push_str(&format!(
            "\nNot counted yet: {} (acknowledged in the last {:.1} s); run the command again to see them counted.\n",
            lag.pending_records,
            lag.lag_ms as f64 / 1000.0
        ));
    }
    out
}

fn event_label(id: &str, names: &Names) -> String {
    match names.events.get(id) {
        Some(name) if name != id => format!("{name} ({id})"),
        _ => id.to_string(),
    }
}

/// A canvasser by its phone's name; by its id when the name is not known (an organizer's token
/// may not list devices) or when two phones share the name.
fn canvasser_label(id: &str, names: &Names) -> String {
    match names.devices.get(id) {
        Some(name) => {
            let shared = names.devices.values().filter(|n| *n == name).count() > 1;
            if shared {
                format!("{name} ({})", &id[..id.len().min(8)])
            } else {
                name.clone()
            }
        }
        None => id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_and_withheld_breakdowns_are_said() {
        let t: TotalsResponse = serde_json::from_value(serde_json::json!({
            "campaign": "c", "signatures": 9, "unique_signers": 9, "struck": 0, "withdrawn": 0,
            "by_event": {}, "by_city": {}, "by_fsa": {"M5V": {"signatures": 7, "unique": 7}},
            "by_riding": {}, "by_day": {}, "by_canvasser": {"d1": {"signatures": 9, "unique": 9}},
            "checkins": {}, "paper": {"sheets": 0, "signatures": 0, "by_status": {}},
            "filters": {"event": null, "from": null, "to": null, "city": null, "fsa": null},
            "suppression": {"applied": true, "threshold": 5, "hidden_cells": 2,
                "hidden": {"by_fsa": 2}, "other": {"by_fsa": 2}, "withheld": ["by_city"],
                "headline_hidden": false, "note": "cells were hidden"},
            "projection": {"pending_records": 120, "lag_ms": 1500}
        }))
        .unwrap();
        let mut names = Names::default();
        names.devices.insert("d1".into(), "Amina's phone".into());
        let text = totals(&t, Some("Status for All"), &names);
        assert!(text.contains("BY CITY: withheld"), "{text}");
        assert!(
            text.contains("(2 small cells, hidden)           2       -"),
            "{text}"
        );
        assert!(text.contains("Amina's phone           9       9"), "{text}");
        assert!(text.contains("BY RIDING: none"), "{text}");
        assert!(text.contains("cells were hidden\n"), "{text}");
        assert!(
            text.ends_with(
                "Not counted yet: 120 (acknowledged in the last 1.5 s); run the command again to see them counted.\n"
            ),
            "{text}"
        );
        let counted = TotalsResponse {
            projection: Default::default(),
            ..t
        };
        let text = totals(&counted, None, &names);
        assert!(!text.contains("Not counted yet"), "{text}");
    }

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&["NAME", "N"]).right(&[1]);
        t.row(vec!["Montréal".into(), "1".into()]);
        t.row(vec!["Toronto".into(), "302".into()]);
        assert_eq!(t.render(), "NAME        N\nMontréal    1\nToronto   302\n");
    }
}
