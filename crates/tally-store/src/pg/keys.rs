//! Record keys and erasure on PostgreSQL, as in `crate::keys` (SQLite), whose doc comments say
//! what each call promises. Erasing deletes the key rows and remembers the record ids, in one
//! transaction; uploads and erasures of one campaign take one advisory lock, so that a key
//! uploaded through one server while another erases its record is either erased or refused.
//! What PostgreSQL keeps of a deleted row afterwards, and what [`PgStore::scrub_erased`]
//! (VACUUM) does about it: docs/security.md.

use postgres::GenericClient;

use crate::error::Result;
use crate::keys::{Erasure, KeyOutcome, StoredKey};

use super::PgStore;

fn lock_campaign_keys(conn: &mut impl GenericClient, campaign: &str) -> Result<()> {
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('tally keys ' || current_schema() || ' ' || $1))",
        &[&campaign],
    )?;
    Ok(())
}

impl PgStore {
    /// Stores record keys uploaded by a device (see `Store::put_keys`).
    pub fn put_keys(
        &self,
        campaign: &str,
        device: &str,
        keys: &[(String, Vec<u8>)],
        max_per_device: u64,
        now: i64,
    ) -> Result<Vec<KeyOutcome>> {
        self.write(|tx| {
            lock_campaign_keys(tx, campaign)?;
            let held: i64 = tx
                .query_one(
                    "SELECT count(*) FROM record_keys WHERE device = $1",
                    &[&device],
                )?
                .get(0);
            let mut held = u64::try_from(held).unwrap_or(0);
            let erased_q = tx.prepare(
                "SELECT EXISTS (SELECT 1 FROM erased_records WHERE campaign = $1 AND record = $2)",
            )?;
            let existing_q = tx.prepare(
                "SELECT wrapped FROM record_keys WHERE campaign = $1 AND record = $2 AND device = $3",
            )?;
            let other_q = tx.prepare(
                "SELECT EXISTS (SELECT 1 FROM signatures WHERE sig_id = $2 AND campaign IN \
                 (SELECT campaign FROM documents WHERE kind = 'campaign' AND campaign <> $1)) \
                 AND NOT EXISTS (SELECT 1 FROM signatures WHERE campaign = $1 AND sig_id = $2)",
            )?;
            let insert = tx.prepare(
                "INSERT INTO record_keys (campaign, record, device, wrapped, stored_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )?;
            let mut out = Vec::with_capacity(keys.len());
            for (record, wrapped) in keys {
                if tx.query_one(&erased_q, &[&campaign, record])?.get::<_, bool>(0) {
                    out.push(KeyOutcome::Erased);
                    continue;
                }
                if let Some(row) = tx.query_opt(&existing_q, &[&campaign, record, &device])? {
                    let existing: &[u8] = row.get(0);
                    out.push(if existing == wrapped.as_slice() {
                        KeyOutcome::AlreadyStored
                    } else {
                        KeyOutcome::Conflict
                    });
                    continue;
                }
                if tx.query_one(&other_q, &[&campaign, record])?.get::<_, bool>(0) {
                    out.push(KeyOutcome::OtherCampaign);
                    continue;
                }
                if held >= max_per_device {
                    out.push(KeyOutcome::TooMany);
                    continue;
                }
                tx.execute(&insert, &[&campaign, record, &device, wrapped, &now])?;
                held += 1;
                out.push(KeyOutcome::Stored);
            }
            Ok(out)
        })
    }

    /// A page of a campaign's keys: every copy of the first `limit` records after `after`.
    pub fn list_keys(
        &self,
        campaign: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredKey>> {
        self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT record, device, wrapped FROM record_keys WHERE campaign = $1 AND record IN \
                     (SELECT DISTINCT record FROM record_keys WHERE campaign = $1 AND record > $2 \
                      ORDER BY record LIMIT $3) ORDER BY record, device",
                    &[&campaign, &after.unwrap_or(""), &i64::from(limit)],
                )?
                .iter()
                .map(|r| StoredKey {
                    record: r.get(0),
                    device: r.get(1),
                    wrapped: r.get(2),
                })
                .collect())
        })
    }

    /// Signature ids of a campaign with this duplicate token.
    pub fn records_with_token(&self, campaign: &str, token: &str) -> Result<Vec<String>> {
        self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT DISTINCT sig_id FROM signatures WHERE campaign = $1 AND dup = $2 \
                     ORDER BY sig_id",
                    &[&campaign, &token],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    /// Which of these signature ids the campaign does not have.
    pub fn unknown_signatures(&self, campaign: &str, records: &[String]) -> Result<Vec<String>> {
        self.read(|tx| {
            let known: Vec<String> = tx
                .query(
                    "SELECT DISTINCT sig_id FROM signatures WHERE campaign = $1 AND sig_id = ANY($2)",
                    &[&campaign, &records],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok(records
                .iter()
                .filter(|r| !known.contains(r))
                .cloned()
                .collect())
        })
    }

    /// The erased record ids of a campaign.
    pub fn erased_records(&self, campaign: &str) -> Result<Vec<String>> {
        self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT record FROM erased_records WHERE campaign = $1 ORDER BY record",
                    &[&campaign],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    /// Erases records' keys for good: deletes every copy and remembers the record ids.
    pub fn erase_records(
        &self,
        campaign: &str,
        records: &[String],
        by: &str,
        now: i64,
    ) -> Result<Erasure> {
        self.write(|tx| {
            lock_campaign_keys(tx, campaign)?;
            let mut e = Erasure::default();
            for r in records {
                e.keys_deleted += usize::try_from(tx.execute(
                    "DELETE FROM record_keys WHERE campaign = $1 AND record = $2",
                    &[&campaign, r],
                )?)
                .unwrap_or(0);
                e.newly_erased += usize::try_from(tx.execute(
                    "INSERT INTO erased_records (campaign, record, erased_at, by_id) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&campaign, r, &now, &by],
                )?)
                .unwrap_or(0);
            }
            Ok(e)
        })
    }

    /// After an erasure: `VACUUM record_keys`, so that the deleted rows' space is reclaimed
    /// in the table's pages (what that does and does not guarantee: docs/security.md).
    pub fn scrub_erased(&self) -> Result<()> {
        self.plain(|client| {
            client.batch_execute("VACUUM record_keys")?;
            Ok(())
        })
    }
}
