//! Record keys and erasure (issue 15, crypto-shredding): each v2 signature's own key, wrapped
//! with age to the campaign's organizers, is uploaded by the phone and kept here, outside every
//! automerge document. Erasing a record deletes every wrapped copy of its key (the store's
//! connections run with `secure_delete`, and [`Store::checkpoint_truncate`] empties the WAL
//! afterwards), and remembers the record id, so that a later upload of its key is refused.
//!
//! Keys are kept per (campaign, record id, uploading device): a hostile device that uploads a
//! key under another device's record id first neither blocks nor replaces the real one; the
//! organizer's command tries each candidate and AES-GCM's tag tells the right one.

use rusqlite::{Connection, OptionalExtension, params};

use crate::{Result, Store, StoreError};

/// What became of one uploaded key ([`Store::put_keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Stored now.
    Stored,
    /// This device had already stored exactly these bytes (a retry).
    AlreadyStored,
    /// The record was erased: its key is never taken again.
    Erased,
    /// This device already stored other bytes for this record.
    Conflict,
    /// The record is a signature of another campaign on this server.
    OtherCampaign,
    /// The device holds `max_per_device` keys already.
    TooMany,
}

/// One stored key, as [`Store::list_keys`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The record (signature) id.
    pub record: String,
    /// The device that uploaded it.
    pub device: String,
    /// The key, wrapped with age (opaque here).
    pub wrapped: Vec<u8>,
}

/// What [`Store::erase_records`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasure {
    /// Wrapped keys deleted.
    pub keys_deleted: usize,
    /// Records newly remembered as erased (the others were erased before).
    pub newly_erased: usize,
}

fn other_campaign(conn: &Connection, campaign: &str, record: &str) -> rusqlite::Result<bool> {
    // Through the (campaign, sig_id) index, one probe per other campaign.
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM signatures WHERE sig_id = ?2 AND campaign IN \
         (SELECT campaign FROM documents WHERE kind = 'campaign' AND campaign != ?1)) \
         AND NOT EXISTS (SELECT 1 FROM signatures WHERE campaign = ?1 AND sig_id = ?2)",
    )?
    .query_row(params![campaign, record], |r| r.get(0))
}

impl Store {
    /// Stores the keys a device uploads for records of its campaign, in one transaction; one
    /// outcome per key, in order. A device holds at most `max_per_device` keys.
    pub fn put_keys(
        &self,
        campaign: &str,
        device: &str,
        keys: &[(String, Vec<u8>)],
        max_per_device: u64,
        now: i64,
    ) -> Result<Vec<KeyOutcome>> {
        self.write(|tx| {
            let conn = tx.conn();
            let mut held = conn.query_row(
                "SELECT count(*) FROM record_keys WHERE device = ?1",
                [device],
                |r| r.get::<_, i64>(0),
            )? as u64;
            let mut out = Vec::with_capacity(keys.len());
            for (record, wrapped) in keys {
                let erased: bool = conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM erased_records WHERE campaign = ?1 AND record = ?2)",
                    )?
                    .query_row(params![campaign, record], |r| r.get(0))?;
                if erased {
                    out.push(KeyOutcome::Erased);
                    continue;
                }
                let existing: Option<Vec<u8>> = conn
                    .prepare_cached(
                        "SELECT wrapped FROM record_keys WHERE campaign = ?1 AND record = ?2 AND device = ?3",
                    )?
                    .query_row(params![campaign, record, device], |r| r.get(0))
                    .optional()?;
                if let Some(existing) = existing {
                    out.push(if &existing == wrapped {
                        KeyOutcome::AlreadyStored
                    } else {
                        KeyOutcome::Conflict
                    });
                    continue;
                }
                if other_campaign(conn, campaign, record)? {
                    out.push(KeyOutcome::OtherCampaign);
                    continue;
                }
                if held >= max_per_device {
                    out.push(KeyOutcome::TooMany);
                    continue;
                }
                conn.prepare_cached(
                    "INSERT INTO record_keys (campaign, record, device, wrapped, stored_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![campaign, record, device, wrapped, now])?;
                held += 1;
                out.push(KeyOutcome::Stored);
            }
            Ok(out)
        })
    }

    /// A page of a campaign's keys: every key of the first `limit` records (by id) after
    /// `after`, ordered by record then device.
    pub fn list_keys(
        &self,
        campaign: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredKey>> {
        self.read_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT record, device, wrapped FROM record_keys WHERE campaign = ?1 AND record IN \
                 (SELECT DISTINCT record FROM record_keys WHERE campaign = ?1 AND record > ?2 \
                  ORDER BY record LIMIT ?3) ORDER BY record, device",
            )?;
            let rows = stmt.query_map(params![campaign, after.unwrap_or(""), limit], |r| {
                Ok(StoredKey {
                    record: r.get(0)?,
                    device: r.get(1)?,
                    wrapped: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// The ids of the campaign's signatures (as projected) with this duplicate token.
    pub fn records_with_token(&self, campaign: &str, token: &str) -> Result<Vec<String>> {
        self.read_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT sig_id FROM signatures WHERE campaign = ?1 AND dup = ?2 ORDER BY sig_id",
            )?;
            let rows = stmt.query_map(params![campaign, token], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Of `records`, those that are not a signature of the campaign (as projected).
    pub fn unknown_signatures(&self, campaign: &str, records: &[String]) -> Result<Vec<String>> {
        self.read_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM signatures WHERE campaign = ?1 AND sig_id = ?2)",
            )?;
            let mut unknown = Vec::new();
            for r in records {
                if !stmt.query_row(params![campaign, r], |row| row.get::<_, bool>(0))? {
                    unknown.push(r.clone());
                }
            }
            Ok(unknown)
        })
    }

    /// The campaign's erased record ids.
    pub fn erased_records(&self, campaign: &str) -> Result<Vec<String>> {
        self.read_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT record FROM erased_records WHERE campaign = ?1 ORDER BY record",
            )?;
            let rows = stmt.query_map([campaign], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Erases records: deletes every wrapped key of each (whoever uploaded it) and remembers
    /// the ids as erased, in one transaction. Call [`Store::checkpoint_truncate`] after it, so
    /// that the WAL no longer holds the keys' pages either.
    pub fn erase_records(
        &self,
        campaign: &str,
        records: &[String],
        by: &str,
        now: i64,
    ) -> Result<Erasure> {
        self.write(|tx| {
            let conn = tx.conn();
            let mut e = Erasure::default();
            for r in records {
                e.keys_deleted += conn
                    .prepare_cached("DELETE FROM record_keys WHERE campaign = ?1 AND record = ?2")?
                    .execute(params![campaign, r])?;
                e.newly_erased += conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO erased_records (campaign, record, erased_at, by_id) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![campaign, r, now, by])?;
            }
            Ok(e)
        })
    }

    /// Copies every page of the WAL into the database file and truncates the WAL to zero bytes
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`), so that no earlier version of a page (an erased key
    /// among them) stays in it. Readers in the middle of a read can hold it back: it is retried
    /// a few times, and an error says so if it still could not finish.
    pub fn checkpoint_truncate(&self) -> Result<()> {
        let mut last = (0, 0, 0);
        for attempt in 0..50u32 {
            last = self.with_conn(|conn| {
                Ok(conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?)
            })?;
            if last.0 == 0 {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(
                10 * u64::from(attempt + 1),
            ));
        }
        Err(StoreError::Invalid(format!(
            "the WAL could not be checkpointed and truncated (busy: {} of {} pages copied): \
             long reads held it; retry the erasure, it is safe to repeat",
            last.2, last.1
        )))
    }
}
