//! Changes stored by other servers sharing the database, heard by PostgreSQL `LISTEN`/`NOTIFY`
//! (issue 17, several servers).
//!
//! A transaction that appends a chunk or revokes a device also runs `pg_notify` on
//! [`CHANNEL`]: PostgreSQL delivers the notification to every listening session once, and only
//! when that transaction commits, so a listener hears of a change exactly when it is stored.
//! Each server listens on a connection of its own (not one of the pool's) from a thread of its
//! own, and reconnects after an outage, saying so with [`Change::Resync`] (notifications sent
//! while it was away are lost: the server reloads what it holds instead).
//!
//! Why `NOTIFY` rather than polling a change log: it reaches the other servers in milliseconds
//! without a query per server per interval, and it costs the writer one statement in a
//! transaction it runs anyway.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, GenericClient, NoTls};

use crate::backend::{Change, Subscription};
use crate::error::Result;

/// The channel every server listens on.
pub(crate) const CHANNEL: &str = "tally_changes";

/// How often the listener checks whether it was asked to stop.
const TICK: Duration = Duration::from_millis(200);

/// How often the listener makes sure its connection still answers (and how long it waits).
const PROBE: Duration = Duration::from_secs(5);

/// How long the listener waits before reconnecting after an outage.
const RETRY: Duration = Duration::from_millis(250);

/// Announces, when the transaction commits, that `doc_id` has new chunks.
pub(crate) fn document_changed(conn: &mut impl GenericClient, doc_id: &str) -> Result<()> {
    conn.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &format!("d:{doc_id}")],
    )?;
    Ok(())
}

/// Announces, when the transaction commits, that `device_id` was revoked.
pub(crate) fn device_revoked(conn: &mut impl GenericClient, device_id: &str) -> Result<()> {
    conn.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &format!("r:{device_id}")],
    )?;
    Ok(())
}

/// Announces, when the transaction commits, that `campaign`'s projection changed.
pub(crate) fn campaign_projected(conn: &mut impl GenericClient, campaign: &str) -> Result<()> {
    conn.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &format!("p:{campaign}")],
    )?;
    Ok(())
}

/// What a notification's payload says.
fn parse(payload: &str) -> Option<Change> {
    match payload.split_once(':')? {
        ("d", id) => Some(Change::Document(id.to_string())),
        ("r", id) => Some(Change::Revoked(id.to_string())),
        ("p", campaign) => Some(Change::Projected(campaign.to_string())),
        _ => None,
    }
}

/// Starts the listener thread: `on_change` hears every change stored by any session
/// (this server's own included) until the subscription is dropped.
pub(crate) fn subscribe(
    config: postgres::Config,
    target: String,
    on_change: Arc<dyn Fn(Change) + Send + Sync>,
) -> Result<Subscription> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    std::thread::Builder::new()
        .name("tally-pg-listen".into())
        .spawn(move || listen(config, target, on_change, stopping))
        .map_err(|e| {
            crate::StoreError::Invalid(format!(
                "cannot start the thread that hears other servers' changes ({e}): raise the \
                 process's thread limit"
            ))
        })?;
    Ok(Subscription::new(stop))
}

fn listen(
    config: postgres::Config,
    target: String,
    on_change: Arc<dyn Fn(Change) + Send + Sync>,
    stop: Arc<AtomicBool>,
) {
    // When the last connection was lost (ms since the epoch), to report with the resync.
    let mut lost_at: Option<i64> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut client = match connect(&config) {
            Ok(c) => c,
            Err(e) => {
                on_change(Change::Lost(format!(
                    "cannot listen for other servers' changes on PostgreSQL at {target} ({e}); \
                     retrying"
                )));
                lost_at.get_or_insert_with(now_ms);
                std::thread::sleep(RETRY);
                continue;
            }
        };
        if let Some(since_ms) = lost_at.take() {
            on_change(Change::Resync { since_ms });
        }
        let error = hear(&mut client, &*on_change, &stop);
        if let Some(e) = error {
            on_change(Change::Lost(format!(
                "lost the connection that hears other servers' changes on PostgreSQL at \
                 {target} ({e}); reconnecting"
            )));
            lost_at = Some(now_ms());
            std::thread::sleep(RETRY);
        }
    }
}

fn connect(config: &postgres::Config) -> std::result::Result<Client, postgres::Error> {
    let mut client = config.connect(NoTls)?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    Ok(client)
}

/// Hears notifications until asked to stop (`None`) or the connection fails (its error).
fn hear(client: &mut Client, on_change: &dyn Fn(Change), stop: &AtomicBool) -> Option<String> {
    let mut quiet_since = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        {
            let mut notifications = client.notifications();
            let mut heard = notifications.timeout_iter(TICK);
            loop {
                match heard.next() {
                    Ok(Some(n)) => {
                        if let Some(change) = parse(n.payload()) {
                            on_change(change);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Some(e.to_string()),
                }
            }
        }
        if client.is_closed() {
            return Some("the connection was closed".into());
        }
        // A connection cut without a word (a network partition) is found by asking.
        if quiet_since.elapsed() >= PROBE {
            if let Err(e) = client.is_valid(PROBE) {
                return Some(e.to_string());
            }
            quiet_since = std::time::Instant::now();
        }
    }
    None
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_as_changes() {
        assert_eq!(parse("d:abc"), Some(Change::Document("abc".into())));
        assert_eq!(parse("r:dev-1"), Some(Change::Revoked("dev-1".into())));
        assert_eq!(parse("p:c1"), Some(Change::Projected("c1".into())));
        assert_eq!(parse("x:abc"), None);
        assert_eq!(parse("nothing"), None);
    }
}
