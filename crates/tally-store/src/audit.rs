//! The audit log: every organizer and admin action (a campaign created, an event added, an
//! invite, an enrollment, a revocation, a strike and its undoing, a paper sheet, an export of
//! sealed records, the server's start with its configuration), appended with its time, its actor
//! (device id and name, never a token), its target ids and its result; never a signer's personal
//! details.
//!
//! Tamper-evident: each entry carries the SHA-256 of the one before it and of its own fields
//! ([`entry_hash`]), so editing, removing or reordering a row breaks the chain from there on, and
//! [`Store::verify_audit`] names the first broken entry. (Someone who can rewrite the whole table
//! can rewrite the chain too; the chain makes a quiet edit of one row visible, and its head hash,
//! exported elsewhere, pins everything before it.)

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::{Result, Store, WriteTx};

/// The hash an empty log starts from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An action to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit<'a> {
    /// When, ms since the epoch.
    pub at: i64,
    /// Who: a device id (`server` for the server itself).
    pub actor_id: &'a str,
    /// The actor's name, as enrolled.
    pub actor_name: &'a str,
    /// What, e.g. `campaign.create`, `device.revoke`, `review.strike`.
    pub action: &'a str,
    /// The campaign it concerns, if any.
    pub campaign: Option<&'a str>,
    /// The ids it acted on (an event, a device, a record, a sheet's serial), comma-separated.
    pub target: &'a str,
    /// `ok`, or `refused: why`.
    pub result: &'a str,
}

/// One entry of the log, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// Its place in the chain, from 1.
    pub seq: i64,
    pub at: i64,
    pub actor_id: String,
    pub actor_name: String,
    pub action: String,
    pub campaign: Option<String>,
    pub target: String,
    pub result: String,
    /// The hash of the entry before it ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// This entry's hash ([`entry_hash`]).
    pub hash: String,
}

/// What [`Store::list_audit`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Entries at or after (ms).
    pub from: Option<i64>,
    /// Entries before (ms).
    pub to: Option<i64>,
    /// One actor's (device id).
    pub actor: Option<String>,
    /// One action's.
    pub action: Option<String>,
    /// One campaign's.
    pub campaign: Option<String>,
    /// At most this many, newest last (default 1,000).
    pub limit: Option<u32>,
}

/// Why the chain does not verify: the first entry that does not, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBroken {
    /// The entry's `seq`.
    pub seq: i64,
    /// What is wrong.
    pub why: String,
}

/// The hash of an entry: SHA-256, hex, over the previous hash and every field, each followed by
/// a 0x00 byte (a missing campaign is the empty string).
pub fn entry_hash(prev_hash: &str, seq: i64, e: &NewAudit<'_>) -> String {
    let mut h = Sha256::new();
    for part in [
        prev_hash,
        &seq.to_string(),
        &e.at.to_string(),
        e.actor_id,
        e.actor_name,
        e.action,
        e.campaign.unwrap_or(""),
        e.target,
        e.result,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor_id: r.get(2)?,
        actor_name: r.get(3)?,
        action: r.get(4)?,
        campaign: r.get(5)?,
        target: r.get(6)?,
        result: r.get(7)?,
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

/// Checks a chain read in `seq` order: how many entries it holds, or the first broken one.
pub(crate) fn verify_chain(
    entries: impl IntoIterator<Item = AuditEntry>,
) -> std::result::Result<u64, AuditBroken> {
    let (mut prev, mut expect, mut n) = (GENESIS.to_string(), 1i64, 0u64);
    for e in entries {
        let broken = |why: String| Err(AuditBroken { seq: e.seq, why });
        if e.seq != expect {
            return broken(format!(
                "entry {} follows entry {}: an entry is missing or was added",
                e.seq,
                expect - 1
            ));
        }
        if e.prev_hash != prev {
            return broken(
                "its link to the entry before it does not match that entry's hash: the entry before it was changed, or this one was moved".into(),
            );
        }
        let fields = NewAudit {
            at: e.at,
            actor_id: &e.actor_id,
            actor_name: &e.actor_name,
            action: &e.action,
            campaign: e.campaign.as_deref(),
            target: &e.target,
            result: &e.result,
        };
        if entry_hash(&e.prev_hash, e.seq, &fields) != e.hash {
            return broken("its fields do not match its hash: it was changed".into());
        }
        prev = e.hash;
        expect += 1;
        n += 1;
    }
    Ok(n)
}

pub(crate) const COLUMNS: &str =
    "seq, at, actor_id, actor_name, action, campaign, target, result, prev_hash, hash";

fn append(conn: &Connection, e: &NewAudit<'_>) -> Result<AuditEntry> {
    let last: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev) = match last {
        Some((s, h)) => (s + 1, h),
        None => (1, GENESIS.to_string()),
    };
    let hash = entry_hash(&prev, seq, e);
    conn.execute(
        &format!("INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
        params![
            seq,
            e.at,
            e.actor_id,
            e.actor_name,
            e.action,
            e.campaign,
            e.target,
            e.result,
            prev,
            hash
        ],
    )?;
    Ok(AuditEntry {
        seq,
        at: e.at,
        actor_id: e.actor_id.to_string(),
        actor_name: e.actor_name.to_string(),
        action: e.action.to_string(),
        campaign: e.campaign.map(str::to_string),
        target: e.target.to_string(),
        result: e.result.to_string(),
        prev_hash: prev,
        hash,
    })
}

impl WriteTx<'_> {
    /// Appends an entry in this write transaction (with the action it records).
    pub fn audit(&self, e: &NewAudit<'_>) -> Result<AuditEntry> {
        append(self.conn(), e)
    }
}

impl Store {
    /// Appends an entry in a write transaction of its own.
    pub fn audit(&self, e: &NewAudit<'_>) -> Result<AuditEntry> {
        self.write(|tx| tx.audit(e))
    }

    /// The entries matching `filter`, in chain order (the newest `limit`).
    pub fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        self.with_conn(|conn| {
            let limit = i64::from(filter.limit.unwrap_or(1_000));
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM (
                     SELECT {COLUMNS} FROM audit
                     WHERE (?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR at < ?2)
                       AND (?3 IS NULL OR actor_id = ?3) AND (?4 IS NULL OR action = ?4)
                       AND (?5 IS NULL OR campaign = ?5)
                     ORDER BY seq DESC LIMIT ?6)
                 ORDER BY seq"
            ))?;
            let rows = stmt.query_map(
                params![
                    filter.from,
                    filter.to,
                    filter.actor,
                    filter.action,
                    filter.campaign,
                    limit
                ],
                row,
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Checks the whole chain: `Ok(Ok(n))` with the number of entries when every entry's
    /// `prev_hash` is the hash before it, its `seq` follows, and its `hash` is its fields' hash;
    /// `Ok(Err(broken))` names the first entry that is not.
    pub fn verify_audit(&self) -> Result<std::result::Result<u64, AuditBroken>> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
            let entries = stmt
                .query_map([], row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(verify_chain(entries))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> NewAudit<'_> {
        NewAudit {
            at: 1_780_000_000_000,
            actor_id: "dev1",
            actor_name: "Amina",
            action,
            campaign: Some("camp1"),
            target: "ev1",
            result: "ok",
        }
    }

    #[test]
    fn the_chain_verifies_and_names_the_first_edited_entry() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.verify_audit().unwrap(), Ok(0));
        for a in [
            "campaign.create",
            "event.add",
            "invite.create",
            "device.revoke",
        ] {
            store.audit(&entry(a)).unwrap();
        }
        assert_eq!(store.verify_audit().unwrap(), Ok(4));
        let all = store.list_audit(&AuditFilter::default()).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].prev_hash, GENESIS);
        assert_eq!(all[1].prev_hash, all[0].hash);
        let revokes = store
            .list_audit(&AuditFilter {
                action: Some("device.revoke".into()),
                ..AuditFilter::default()
            })
            .unwrap();
        assert_eq!(revokes.len(), 1);

        // One row edited in the database: verify names it.
        store
            .write(|tx| {
                tx.conn()
                    .execute("UPDATE audit SET target = 'ev2' WHERE seq = 2", [])?;
                Ok(())
            })
            .unwrap();
        let broken = store.verify_audit().unwrap().unwrap_err();
        assert_eq!(broken.seq, 2, "{broken:?}");
        // A row removed: the next one is named.
        let store = Store::open_in_memory().unwrap();
        for a in ["a", "b", "c"] {
            store.audit(&entry(a)).unwrap();
        }
        store
            .write(|tx| {
                tx.conn().execute("DELETE FROM audit WHERE seq = 2", [])?;
                Ok(())
            })
            .unwrap();
        assert_eq!(store.verify_audit().unwrap().unwrap_err().seq, 3);
    }
}
