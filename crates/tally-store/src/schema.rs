//! The database schema and its migrations.
//!
//! `PRAGMA user_version` holds the number of migrations applied. Opening a store applies the
//! missing ones inside one `BEGIN IMMEDIATE` transaction, so two processes opening the same new
//! file at once cannot both migrate it, and a crash mid-migration leaves the old version intact.
//! Migrations are append-only: never edit one that has shipped, add the next one instead.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Result, StoreError};

/// The migrations, in order; `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: documents, chunks, sync states, devices, invites, quarantine.
    r#"
    -- One row per document the server stores. The store treats kinds as opaque strings, except
    -- 'campaign': campaign documents are the campaign registry.
    CREATE TABLE documents (
        doc_id     TEXT PRIMARY KEY,
        kind       TEXT NOT NULL,
        campaign   TEXT NOT NULL,
        owner      TEXT,
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX documents_by_campaign ON documents (campaign, kind);
    CREATE INDEX documents_by_kind ON documents (kind);
    CREATE INDEX documents_by_owner ON documents (owner) WHERE owner IS NOT NULL;

    -- A document's bytes: at most one compacted snapshot (always the lowest seq) followed by
    -- incremental chunks, to be loaded in seq order.
    CREATE TABLE chunks (
        doc_id     TEXT NOT NULL REFERENCES documents (doc_id) ON DELETE CASCADE,
        seq        INTEGER NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('snapshot', 'incremental')),
        bytes      BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (doc_id, seq)
    ) STRICT;
    CREATE UNIQUE INDEX chunks_one_snapshot ON chunks (doc_id) WHERE kind = 'snapshot';

    -- Encoded automerge sync states per peer and document, so a reconnecting peer does not
    -- make the server summarise a document's whole history again.
    CREATE TABLE sync_states (
        peer_key   TEXT NOT NULL,
        doc_id     TEXT NOT NULL REFERENCES documents (doc_id) ON DELETE CASCADE,
        bytes      BLOB NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (peer_key, doc_id)
    ) STRICT;
    CREATE INDEX sync_states_by_doc ON sync_states (doc_id);

    -- Enrolled devices. Only the SHA-256 of a device's bearer token is kept.
    CREATE TABLE devices (
        device_id  TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        role       TEXT NOT NULL CHECK (role IN ('admin', 'organizer', 'canvasser')),
        campaign   TEXT,
        token_hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER,
        last_seen  INTEGER
    ) STRICT;
    CREATE INDEX devices_by_revoked_at ON devices (revoked_at) WHERE revoked_at IS NOT NULL;

    -- One-time enrollment codes. Only the SHA-256 of the normalized code is kept.
    CREATE TABLE invites (
        invite_id  TEXT PRIMARY KEY,
        code_hash  BLOB NOT NULL UNIQUE,
        campaign   TEXT,
        role       TEXT NOT NULL CHECK (role IN ('admin', 'organizer', 'canvasser')),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER,
        device_id  TEXT REFERENCES devices (device_id)
    ) STRICT;

    -- Rejected sync messages, kept instead of dropped. No foreign keys: the evidence stays even
    -- when it names a document the server never stored.
    CREATE TABLE quarantine (
        id        INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        doc_id    TEXT NOT NULL,
        at        INTEGER NOT NULL,
        reason    TEXT NOT NULL,
        bytes     BLOB NOT NULL
    ) STRICT;
    CREATE INDEX quarantine_by_at ON quarantine (at);
    CREATE INDEX quarantine_by_device ON quarantine (device_id, at);
    CREATE INDEX quarantine_by_doc ON quarantine (doc_id, at);
    "#,
    // 2: the totals projection. Rows are kept current from each document's accepted changes, in
    // the same transaction that stores them. No personal field is ever here: only what totals need.
    r#"
    CREATE TABLE signatures (
        doc_id       TEXT NOT NULL,
        sig_id       TEXT NOT NULL,
        campaign     TEXT NOT NULL,
        event        TEXT,
        collected_at INTEGER NOT NULL,
        day          TEXT NOT NULL,
        collected_by TEXT NOT NULL,
        city         TEXT NOT NULL,
        fsa          TEXT NOT NULL,
        riding       TEXT,
        consent      INTEGER NOT NULL,
        dup          TEXT NOT NULL,
        withdrawn    INTEGER NOT NULL,
        PRIMARY KEY (doc_id, sig_id)
    ) STRICT;
    CREATE INDEX signatures_by_campaign ON signatures (campaign, sig_id);
    CREATE TABLE checkins (
        doc_id    TEXT NOT NULL,
        ci_id     TEXT NOT NULL,
        campaign  TEXT NOT NULL,
        event     TEXT NOT NULL,
        attendee  TEXT NOT NULL,
        at        INTEGER NOT NULL,
        by_id     TEXT NOT NULL,
        walk_in   INTEGER NOT NULL,
        withdrawn INTEGER NOT NULL,
        PRIMARY KEY (doc_id, ci_id)
    ) STRICT;
    CREATE INDEX checkins_by_campaign ON checkins (campaign, event);
    CREATE TABLE strikes (
        campaign  TEXT NOT NULL,
        sig_id    TEXT NOT NULL,
        reason    TEXT NOT NULL,
        by_id     TEXT NOT NULL,
        at        INTEGER NOT NULL,
        revoked   INTEGER NOT NULL,
        PRIMARY KEY (campaign, sig_id)
    ) STRICT;
    CREATE TABLE sheets (
        campaign  TEXT NOT NULL,
        serial    TEXT NOT NULL,
        count     INTEGER NOT NULL,
        riding    TEXT,
        status    TEXT NOT NULL,
        PRIMARY KEY (campaign, serial)
    ) STRICT;
    "#,
    // 3: aggregate tables beside the projection rows, kept current in the same transaction, so
    // a campaign's totals are read from a few hundred cells instead of a GROUP BY over every
    // signature; and indexes for the API's filters (event, time, city, FSA).
    //
    // A cell is one number of the totals: (campaign, dim, key) with `n` records and `uniq`
    // distinct tokens among them. dims: 'all' (key ''), 'event', 'city', 'fsa', 'riding', 'day',
    // 'canvasser' over counted signatures (duplicate tokens); 'struck' and 'withdrawn' (key '',
    // no tokens); 'checkin', 'checkin_pre', 'checkin_walk' by event over check-ins that are not
    // withdrawn (attendee tokens). `agg_members` counts each token's records in a cell, so that
    // `uniq` can follow removals; `agg_tokens` interns the tokens (HMACs, never personal fields)
    // to keep that table small. A cell or member whose count reaches 0 is deleted.
    //
    // Databases that already hold projection rows get `projection_state.aggregates = 'stale'`;
    // the server rebuilds the aggregates from the rows when it opens such a file.
    r#"
    -- Clustered by (campaign, dim, key), so a campaign's cells are read in one sequential pass.
    CREATE TABLE agg_cells (
        campaign TEXT NOT NULL,
        dim      TEXT NOT NULL,
        key      TEXT NOT NULL,
        key_id   INTEGER NOT NULL UNIQUE,
        n        INTEGER NOT NULL,
        uniq     INTEGER NOT NULL,
        PRIMARY KEY (campaign, dim, key)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE agg_tokens (
        token_id INTEGER PRIMARY KEY,
        campaign TEXT NOT NULL,
        token    TEXT NOT NULL,
        UNIQUE (campaign, token)
    ) STRICT;
    CREATE TABLE agg_members (
        key_id   INTEGER NOT NULL,
        token_id INTEGER NOT NULL,
        n        INTEGER NOT NULL,
        PRIMARY KEY (key_id, token_id)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE projection_state (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    INSERT INTO projection_state (name, value)
        SELECT 'aggregates', 'stale'
        WHERE EXISTS (SELECT 1 FROM signatures) OR EXISTS (SELECT 1 FROM checkins);
    CREATE INDEX signatures_by_event ON signatures (campaign, event);
    CREATE INDEX signatures_by_time ON signatures (campaign, collected_at);
    CREATE INDEX signatures_by_city ON signatures (campaign, city);
    CREATE INDEX signatures_by_fsa ON signatures (campaign, fsa);
    "#,
    // 4: the quarantine keeps what an organizer needs to act on a refusal (size, digest, the
    // refused changes' hashes, the rule broken, how many later refusals were only counted) and
    // raw bytes only within a small bound (`QuarantineQuota`). Raw bytes kept before this
    // version beyond 16 KiB are dropped (their size stays); the digest of older entries is
    // unknown (empty).
    r#"
    ALTER TABLE quarantine ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE quarantine ADD COLUMN digest TEXT NOT NULL DEFAULT '';
    ALTER TABLE quarantine ADD COLUMN change_hashes TEXT NOT NULL DEFAULT '';
    ALTER TABLE quarantine ADD COLUMN rule TEXT;
    ALTER TABLE quarantine ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;
    UPDATE quarantine SET size = length(bytes);
    UPDATE quarantine SET bytes = X'' WHERE length(bytes) > 16384;
    "#,
    // 5: one phone, many devices and collections (issue 12). A device re-enrolled by the phone
    // that held an older device's token `replaces` that device and shares its `lineage` (the
    // first device's id): a phone's records, re-homed with the same ids into a collection of the
    // new device, stay one phone's records. Existing devices are each their own lineage. The
    // check-in index serves counting a check-in id once per campaign.
    r#"
    ALTER TABLE devices ADD COLUMN replaces TEXT;
    ALTER TABLE devices ADD COLUMN lineage TEXT NOT NULL DEFAULT '';
    UPDATE devices SET lineage = device_id;
    CREATE INDEX devices_by_lineage ON devices (lineage);
    CREATE INDEX checkins_by_id ON checkins (campaign, ci_id);
    "#,
    // 6: a city is counted under its folded key (issue 13: `toronto`, `TORONTO` and `Toronto`
    // were three cells). `signatures.city_key` is `tally_core::city::city_key(city)` (case,
    // spacing and accents folded), written by the server with each row; `city` keeps the text
    // as typed. The 'city' aggregate cells are keyed by it, and new 'city_spelling' cells count
    // the counted signatures of each typed spelling (no tokens), which choose a city's label.
    // SQLite cannot fold Unicode, so rows written before are left NULL and the aggregates
    // marked stale: the server fills the keys and rebuilds the aggregates when it opens the
    // file. The city filter uses the new index.
    r#"
    ALTER TABLE signatures ADD COLUMN city_key TEXT;
    DROP INDEX signatures_by_city;
    CREATE INDEX signatures_by_city_key ON signatures (campaign, city_key);
    INSERT OR REPLACE INTO projection_state (name, value)
        SELECT 'aggregates', 'stale' WHERE EXISTS (SELECT 1 FROM signatures);
    "#,
    // 7: the audit log (issue 15): every organizer and admin action, each entry chained to the
    // one before by its hash (`audit::entry_hash`). Actors by device id and name, never a token.
    r#"
    CREATE TABLE audit (
        seq        INTEGER PRIMARY KEY,
        at         INTEGER NOT NULL,
        actor_id   TEXT NOT NULL,
        actor_name TEXT NOT NULL,
        action     TEXT NOT NULL,
        campaign   TEXT,
        target     TEXT NOT NULL,
        result     TEXT NOT NULL,
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL
    ) STRICT;
    CREATE INDEX audit_by_campaign ON audit (campaign, seq);
    "#,
    // 8: erasure by crypto-shredding (issue 15, `keys`): each v2 signature's record key, wrapped
    // to the campaign's organizers, kept per uploading device (a device cannot replace or block
    // another's); and the records erased, so that their keys are never taken again.
    r#"
    CREATE TABLE record_keys (
        campaign  TEXT NOT NULL,
        record    TEXT NOT NULL,
        device    TEXT NOT NULL,
        wrapped   BLOB NOT NULL,
        stored_at INTEGER NOT NULL,
        PRIMARY KEY (campaign, record, device)
    ) STRICT;
    CREATE INDEX record_keys_by_device ON record_keys (device);
    CREATE TABLE erased_records (
        campaign  TEXT NOT NULL,
        record    TEXT NOT NULL,
        erased_at INTEGER NOT NULL,
        by_id     TEXT NOT NULL,
        PRIMARY KEY (campaign, record)
    ) STRICT;
    "#,
    // 9: filtered totals at scale (issue 18). `agg_records` holds one row per record (a
    // signature id's copies merged: counted, struck or withdrawn), its keys interned in
    // `agg_keys` (never deleted but by a rebuild) and packed with its time, status and duplicate
    // token id into `fact` (`projection::Fact`); one index per filter dimension covers the
    // fact, so a filtered query reads one index range and no signature rows. Check-ins get a
    // time index for the time filter. Existing files rebuild their aggregates on opening.
    r#"
    CREATE TABLE agg_keys (
        key_id   INTEGER PRIMARY KEY,
        campaign TEXT NOT NULL,
        dim      TEXT NOT NULL,
        key      TEXT NOT NULL,
        UNIQUE (campaign, dim, key)
    ) STRICT;
    CREATE TABLE agg_records (
        campaign  TEXT NOT NULL,
        sig_id    TEXT NOT NULL,
        at        INTEGER NOT NULL,
        event     INTEGER NOT NULL,
        city      INTEGER NOT NULL,
        fsa       INTEGER NOT NULL,
        riding    INTEGER NOT NULL,
        canvasser INTEGER NOT NULL,
        fact      BLOB NOT NULL,
        PRIMARY KEY (campaign, sig_id)
    ) STRICT;
    CREATE INDEX agg_records_by_event ON agg_records (campaign, event, fact);
    CREATE INDEX agg_records_by_city ON agg_records (campaign, city, fact);
    CREATE INDEX agg_records_by_fsa ON agg_records (campaign, fsa, fact);
    CREATE INDEX agg_records_by_riding ON agg_records (campaign, riding, fact);
    CREATE INDEX agg_records_by_canvasser ON agg_records (campaign, canvasser, fact);
    CREATE INDEX agg_records_by_time ON agg_records (campaign, at, fact);
    CREATE INDEX checkins_by_time ON checkins (campaign, at);
    INSERT OR REPLACE INTO projection_state (name, value)
        SELECT 'aggregates', 'stale' WHERE EXISTS (SELECT 1 FROM signatures);
    "#,
    // 10: the projection leaves the acknowledging write (issue 18). `record_claims` says which
    // phone (lineage) a record id is, written with the chunk that brings the record, so that
    // another phone's copy is refused before it is acknowledged; `projection_queue` holds what
    // each acknowledged change does to the projection (its records' projected fields, no
    // personal field) until the projector applies it and deletes it in one transaction.
    // Existing files claim the records their rows hold.
    concat!(
        r#"
    CREATE TABLE record_claims (
        campaign  TEXT NOT NULL,
        container TEXT NOT NULL,
        id        TEXT NOT NULL,
        lineage   TEXT NOT NULL,
        PRIMARY KEY (campaign, container, id)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE projection_queue (
        id       INTEGER PRIMARY KEY,
        campaign TEXT NOT NULL,
        doc_id   TEXT NOT NULL,
        records  INTEGER NOT NULL,
        at       INTEGER NOT NULL,
        payload  BLOB NOT NULL
    ) STRICT;
    "#,
        crate::queue::claim_rows!()
    ),
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Reads `PRAGMA user_version`.
pub(crate) fn current_version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

/// Applies every missing migration in one immediate transaction. Idempotent.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = current_version(&tx)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(StoreError::Invalid(format!(
            "the database's user_version is {found}, which tally never writes: \
             is this file a tally database?"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}
