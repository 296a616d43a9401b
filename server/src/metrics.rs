//! The server's metrics, in Prometheus' text exposition (OpenMetrics), through the
//! `prometheus-client` crate: counters and histograms the sync path, the hub and the API update
//! as they work, and gauges read at each scrape (documents loaded, the quarantine, the database's
//! size). Served at `/metrics` on their own address (`metrics_listen`, off by default): see
//! docs/operations.md, "Metrics", for why not on the main port.
//!
//! No label carries a token, a device id, a name or any value a client wrote: every label value
//! is one of a fixed set ([`Direction`], [`Outcome`], the validation rule's name, ...), so the
//! exposition cannot leak a secret and its size does not grow with the data.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which way a WebSocket frame went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
    /// From a peer to the server.
    In,
    /// From the server to a peer.
    Out,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrameLabels {
    direction: Direction,
}

/// Why a document's changes were refused: the validation rule's name (`Rule`'s Debug form,
/// e.g. `TooLarge`), or what else refused them (`limit`, `claimed`, `refuse_records`,
/// `unparsable`, `too_many_ops`, `waiting`, `campaign`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: String,
}

/// An enrollment's or a token check's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    /// It went through.
    Ok,
    /// The server refused it.
    Refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

/// Why a bearer token was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum AuthFailure {
    /// No token, or not one of ours.
    Unknown,
    /// Its device was revoked.
    Revoked,
    /// Unused for too long.
    Expired,
    /// A valid token without the role the request needs.
    Forbidden,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    reason: AuthFailure,
}

/// Every metric of the server. Cheap to share (`Arc`); updating one is a few atomic operations.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    frames: Family<FrameLabels, Counter>,
    accepted: Counter,
    refused: Family<RefusedLabels, Counter>,
    ack_latency: Histogram,
    commit: Histogram,
    totals_latency: Histogram,
    auth_failures: Family<AuthLabels, Counter>,
    enrollments: Family<OutcomeLabels, Counter>,
    projected: Counter,
    projection_delay: Histogram,
    // Read at each scrape.
    loaded_documents: Gauge,
    quarantine_entries: Gauge,
    database_bytes: Gauge,
    projection_lag: Gauge<f64, AtomicU64>,
    projection_pending: Gauge,
    group_commits: Counter,
    grouped_writes: Counter,
}

/// What a scrape reads from the running server (the gauges that are not counted as they go).
#[derive(Debug, Default, Clone, Copy)]
pub struct Snapshot {
    /// Documents the hub holds in memory.
    pub loaded_documents: u64,
    /// Entries in the quarantine.
    pub quarantine_entries: u64,
    /// The database file and its WAL, bytes.
    pub database_bytes: u64,
    /// Records acknowledged and not yet projected.
    pub projection_pending: u64,
    /// How long the oldest of them has waited.
    pub projection_lag: Duration,
    /// The store's group commits so far, and the writes they held (SQLite).
    pub group_commits: Option<(u64, u64)>,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 0.5 ms to about 33 s.
    exponential_buckets(0.0005, 2.0, 17)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All metrics, registered under the `tally_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tally");
        let m = Metrics {
            connections: Gauge::default(),
            frames: Family::default(),
            accepted: Counter::default(),
            refused: Family::default(),
            ack_latency: Histogram::new(seconds_buckets()),
            commit: Histogram::new(seconds_buckets()),
            totals_latency: Histogram::new(seconds_buckets()),
            auth_failures: Family::default(),
            enrollments: Family::default(),
            projected: Counter::default(),
            projection_delay: Histogram::new(seconds_buckets()),
            loaded_documents: Gauge::default(),
            quarantine_entries: Gauge::default(),
            database_bytes: Gauge::default(),
            projection_lag: Gauge::default(),
            projection_pending: Gauge::default(),
            group_commits: Counter::default(),
            grouped_writes: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sync_connections",
            "Open sync (WebSocket) connections",
            m.connections.clone(),
        );
        registry.register(
            "frames",
            "WebSocket frames handled, by direction",
            m.frames.clone(),
        );
        registry.register(
            "changes_accepted",
            "Sync messages whose changes were validated and committed",
            m.accepted.clone(),
        );
        registry.register(
            "changes_refused",
            "Sync messages whose changes were refused (and quarantined), by reason",
            m.refused.clone(),
        );
        registry.register(
            "ack_latency_seconds",
            "From a sync message with changes arriving to the server's acknowledging answer",
            m.ack_latency.clone(),
        );
        registry.register(
            "commit_seconds",
            "One accepted message's write transaction (chunk, claims, queued projection, fsync)",
            m.commit.clone(),
        );
        registry.register(
            "totals_request_seconds",
            "Answering GET /api/v1/campaigns/{id}/totals",
            m.totals_latency.clone(),
        );
        registry.register(
            "auth_failures",
            "Bearer tokens refused, by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "enrollments",
            "POST /api/v1/enroll, by outcome",
            m.enrollments.clone(),
        );
        registry.register(
            "loaded_documents",
            "Documents the hub holds in memory",
            m.loaded_documents.clone(),
        );
        registry.register(
            "quarantine_entries",
            "Entries in the quarantine",
            m.quarantine_entries.clone(),
        );
        registry.register(
            "database_bytes",
            "The SQLite database file and its WAL",
            m.database_bytes.clone(),
        );
        registry.register(
            "projection_lag_seconds",
            "How long the oldest acknowledged change not yet in the totals projection has waited (0: none waits)",
            m.projection_lag.clone(),
        );
        registry.register(
            "projection_pending_records",
            "Records of acknowledged changes not yet in the totals projection",
            m.projection_pending.clone(),
        );
        registry.register(
            "projected_records",
            "Records the projector applied to the totals projection",
            m.projected.clone(),
        );
        registry.register(
            "projection_delay_seconds",
            "For each projector batch, how long its oldest change waited after its acknowledgement",
            m.projection_delay.clone(),
        );
        registry.register(
            "store_group_commits",
            "Commits of the SQLite store's writer, each holding the writes that were ready together",
            m.group_commits.clone(),
        );
        registry.register(
            "store_grouped_writes",
            "Writes those commits held (divided by the commits: the mean group size)",
            m.grouped_writes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The projector applied a batch of `records` records whose oldest change waited `delay`.
    pub fn projected(&self, records: u64, delay: Duration) {
        self.projected.inc_by(records);
        self.projection_delay.observe(delay.as_secs_f64());
    }

    /// A sync connection opened; the guard closes it in the gauge when dropped.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard(self.clone())
    }

    /// A frame in or out.
    pub fn frame(&self, direction: Direction) {
        self.frames.get_or_create(&FrameLabels { direction }).inc();
    }

    /// A sync message's changes accepted, acknowledged `ack` after it arrived.
    pub fn accepted(&self, ack: Duration) {
        self.accepted.inc();
        self.ack_latency.observe(ack.as_secs_f64());
    }

    /// A sync message's changes refused, for `reason` (a fixed word, see [`RefusedLabels`]).
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&RefusedLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// One accepted message's write transaction took `d`.
    pub fn commit(&self, d: Duration) {
        self.commit.observe(d.as_secs_f64());
    }

    /// A totals request took `d`.
    pub fn totals(&self, d: Duration) {
        self.totals_latency.observe(d.as_secs_f64());
    }

    /// A bearer token refused.
    pub fn auth_failure(&self, reason: AuthFailure) {
        self.auth_failures
            .get_or_create(&AuthLabels { reason })
            .inc();
    }

    /// An enrollment attempt's outcome.
    pub fn enrollment(&self, outcome: Outcome) {
        self.enrollments
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The exposition: the gauges set from `now`, then every metric, in the text format.
    pub fn encode(&self, now: Snapshot) -> String {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.loaded_documents.set(g(now.loaded_documents));
        self.quarantine_entries.set(g(now.quarantine_entries));
        self.database_bytes.set(g(now.database_bytes));
        self.projection_lag.set(now.projection_lag.as_secs_f64());
        self.projection_pending.set(g(now.projection_pending));
        if let Some((commits, writes)) = now.group_commits {
            // Counted by the store: the counters catch up with it.
            self.group_commits
                .inc_by(commits.saturating_sub(self.group_commits.get()));
            self.grouped_writes
                .inc_by(writes.saturating_sub(self.grouped_writes.get()));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Counts one open sync connection while it lives.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_what_moved() {
        let m = Arc::new(Metrics::new());
        let guard = m.connection();
        m.frame(Direction::In);
        m.frame(Direction::In);
        m.accepted(Duration::from_millis(3));
        m.refused("TooLarge");
        m.auth_failure(AuthFailure::Revoked);
        m.enrollment(Outcome::Ok);
        m.projected(3, Duration::from_millis(2));
        let text = m.encode(Snapshot {
            loaded_documents: 2,
            quarantine_entries: 1,
            database_bytes: 4096,
            projection_pending: 7,
            projection_lag: Duration::from_millis(1500),
            group_commits: Some((4, 10)),
        });

        for line in [
            "tally_sync_connections 1",
            "tally_frames_total{direction=\"In\"} 2",
            "tally_changes_accepted_total 1",
            "tally_changes_refused_total{reason=\"TooLarge\"} 1",
            "tally_auth_failures_total{reason=\"Revoked\"} 1",
            "tally_enrollments_total{outcome=\"Ok\"} 1",
            "tally_loaded_documents 2",
            "tally_database_bytes 4096",
            "tally_ack_latency_seconds_count 1",
            "tally_projection_pending_records 7",
            "tally_projection_lag_seconds 1.5",
            "tally_projected_records_total 3",
            "tally_projection_delay_seconds_count 1",
            "tally_store_group_commits_total 4",
            "tally_store_grouped_writes_total 10",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        drop(guard);
        let later = m.encode(Snapshot {
            group_commits: Some((5, 13)),
            ..Snapshot::default()
        });
        assert!(later.contains("tally_sync_connections 0"));
        assert!(
            later.contains("tally_store_group_commits_total 5\n"),
            "{later}"
        );
        assert!(
            later.contains("tally_store_grouped_writes_total 13\n"),
            "{later}"
        );
    }
}
