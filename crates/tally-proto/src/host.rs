//! The document host's decisions, sans-IO: what to do with one incoming sync message for one
//! document, given the document as stored and what the device may see. No store, socket or
//! clock: the callers (the server's `Hub::commit` and `Conn::on_sync`, and the in-memory test
//! hubs, `testkit::Hub` and `client-core`'s `TestServer`) run the returned effects against
//! their own storage and connections.
//!
//! Two steps, in the order a message meets them:
//! 1. [`admit`]: may this device see the document at all, and if not, is the message answered
//!    `doc-unavailable` (and quarantined, when it tried to write), or offered an empty document
//!    so that the peer sends its changes?
//! 2. [`decide`]: fork the document, apply the message to the fork, and judge the fork against
//!    the document before (the caller's judge: tally's validation on the server, a test
//!    policy in the test hubs); the result says what to store (the new chunk), what to refuse,
//!    or that nothing changed, and whether a fork whose heads did not move is kept (its changes
//!    wait for dependencies).

use automerge::{Automerge, AutomergeError, ChangeHash, ReadDoc};

/// What the host knows of the document, for this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The host has no such document (yet).
    Missing,
    /// The document exists, but this device may not read it.
    Hidden,
    /// The document exists and this device may read it.
    Readable,
}

/// What [`admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Answer `doc-unavailable`, exactly as for a document that does not exist. `refuse`: the
    /// message wrote to a document this device may not read; quarantine it.
    Unavailable { refuse: bool },
    /// The peer offers a document the host does not have: answer as an empty document (with
    /// the message received into the sync state), so that it sends its changes; store nothing.
    OfferEmpty,
    /// Go on to [`decide`].
    Apply,
}

/// Whether a message for a document of this [`Access`] goes on to [`decide`]. `requested`: the
/// peer asked for the document (a `request`), rather than syncing it; `carries_changes`: the
/// message holds changes.
pub fn admit(access: Access, requested: bool, carries_changes: bool) -> Admission {
    match access {
        Access::Readable => Admission::Apply,
        Access::Hidden => Admission::Unavailable {
            refuse: carries_changes,
        },
        Access::Missing if requested => Admission::Unavailable { refuse: false },
        Access::Missing if !carries_changes => Admission::OfferEmpty,
        // Changes for a new document: they create it, if they are judged valid.
        Access::Missing => Admission::Apply,
    }
}

/// What becomes of changes that wait for dependencies the host has not received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// They stay queued in the document the host keeps (the test hubs: memory is not bounded
    /// there); a fork whose heads did not move but that holds such changes is kept.
    Queued,
    /// They are never kept in the document (where they would hold memory beyond any bound):
    /// the caller keeps their bytes, bounded, and offers them again (the server).
    LeftToCaller,
}

/// What [`decide`] decided, as data for the caller to run.
#[derive(Debug)]
pub enum Decision<T, R> {
    /// automerge could not apply the message's changes (corrupted, truncated, forged bytes):
    /// refuse them, saying why; the document is untouched.
    Unapplicable(String),
    /// Nothing applied: the document's heads did not move. `waiting`: some of the changes
    /// wait for dependencies. `keep`: the fork to keep in place of the document (it holds
    /// those changes, [`Waiting::Queued`] only); `None`: keep the document as it is.
    Unchanged {
        waiting: bool,
        keep: Option<Automerge>,
    },
    /// The judge refused the new document: nothing is stored; refuse with this.
    Refused(R),
    /// The judge accepted: store `chunk` (the changes after the document's old heads), then
    /// replace the document with `after` and answer.
    Store {
        /// The document to keep from now on.
        after: Automerge,
        /// The new changes, to append to the stored document.
        chunk: Vec<u8>,
        /// The heads before, for the caller that needs them.
        before_heads: Vec<ChangeHash>,
        /// What the judge said of the accepted change.
        verdict: T,
        /// Some of the message's changes wait for dependencies (and, with
        /// [`Waiting::LeftToCaller`], are not in `after`).
        waiting: bool,
    },
}

/// Applies `edit` to a fork of `before` and judges the fork: `judge(before, after)` returns
/// what it accepted or why it refuses. The only error is automerge failing to re-apply
/// changes it had applied once (a bug, or a damaged document).
pub fn decide<T, R>(
    before: &Automerge,
    edit: impl FnOnce(&mut Automerge) -> Result<(), String>,
    waiting_changes: Waiting,
    judge: impl FnOnce(&Automerge, &Automerge) -> Result<T, R>,
) -> Result<Decision<T, R>, AutomergeError> {
    let mut after = before.fork();
    if let Err(e) = edit(&mut after) {
        return Ok(Decision::Unapplicable(e));
    }
    let before_heads = before.get_heads();
    let waiting = !after.get_missing_deps(&[]).is_empty();
    if after.get_heads() == before_heads {
        let keep = (waiting && waiting_changes == Waiting::Queued).then_some(after);
        return Ok(Decision::Unchanged { waiting, keep });
    }
    if waiting && waiting_changes == Waiting::LeftToCaller {
        // Some changes applied and some wait: keep only the applied ones.
        let applied = before.get_changes_added(&after);
        let mut clean = before.fork();
        clean.apply_changes(applied)?;
        after = clean;
    }
    let verdict = match judge(before, &after) {
        Ok(v) => v,
        Err(r) => return Ok(Decision::Refused(r)),
    };
    let chunk = after.save_after(&before_heads);
    Ok(Decision::Store {
        after,
        chunk,
        before_heads,
        verdict,
        waiting,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::ROOT;
    use automerge::transaction::Transactable;

    fn doc_with(key: &str, value: &str) -> Automerge {
        let mut d = Automerge::new();
        let mut tx = d.transaction();
        tx.put(ROOT, key, value).unwrap();
        tx.commit();
        d
    }

    /// A change made on top of `base` (which the host may lack).
    fn change_on(base: &Automerge, key: &str, value: &str) -> Automerge {
        let mut d = base.fork();
        let mut tx = d.transaction();
        tx.put(ROOT, key, value).unwrap();
        tx.commit();
        d
    }

    fn accept(_: &Automerge, _: &Automerge) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn a_device_sees_only_what_it_may_read() {
        use Admission::*;
        for requested in [false, true] {
            for changes in [false, true] {
                assert_eq!(admit(Access::Readable, requested, changes), Apply);
                // A hidden document answers as a missing one; a write to it is refused.
                assert_eq!(
                    admit(Access::Hidden, requested, changes),
                    Unavailable { refuse: changes }
                );
            }
            assert_eq!(
                admit(Access::Missing, true, false),
                Unavailable { refuse: false }
            );
        }
        assert_eq!(
            admit(Access::Missing, true, true),
            Unavailable { refuse: false }
        );
        assert_eq!(admit(Access::Missing, false, false), OfferEmpty);
        assert_eq!(admit(Access::Missing, false, true), Apply);
    }

    #[test]
    fn an_accepted_change_is_stored_as_the_chunk_after_the_old_heads() {
        let before = doc_with("a", "1");
        let theirs = change_on(&before, "b", "2");
        let d = decide(
            &before,
            |after| {
                after
                    .merge(&mut theirs.clone())
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
            Waiting::LeftToCaller,
            |b, a| Ok::<_, String>((b.get_heads(), a.get_heads())),
        )
        .unwrap();
        let Decision::Store {
            after,
            chunk,
            before_heads,
            verdict,
            waiting,
        } = d
        else {
            panic!("stored: {d:?}")
        };
        assert!(!waiting);
        assert_eq!(before_heads, before.get_heads());
        assert_eq!(verdict, (before.get_heads(), theirs.get_heads()));
        assert_eq!(after.get_heads(), theirs.get_heads());
        // The chunk is exactly what the store lacks: the old document plus it is the new one.
        let mut replayed = before.fork();
        replayed.load_incremental(&chunk).unwrap();
        assert_eq!(replayed.get_heads(), theirs.get_heads());
        assert_eq!(
            replayed.get(ROOT, "b").unwrap().unwrap().0.as_str(),
            Some("2")
        );
    }

    #[test]
    fn a_refused_change_leaves_nothing_to_store() {
        let before = doc_with("a", "1");
        let theirs = change_on(&before, "a", "evil");
        let d = decide(
            &before,
            |after| {
                after
                    .merge(&mut theirs.clone())
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
            Waiting::Queued,
            |_, a| match a.get(ROOT, "a").unwrap().unwrap().0.as_str() {
                Some("evil") => Err("a: evil".to_string()),
                _ => Ok(()),
            },
        )
        .unwrap();
        assert!(
            matches!(d, Decision::Refused(ref r) if r == "a: evil"),
            "{d:?}"
        );
    }

    #[test]
    fn bytes_automerge_cannot_apply_are_unapplicable_and_never_judged() {
        let before = doc_with("a", "1");
        let d = decide(
            &before,
            |after| {
                automerge::Change::from_bytes(b"\x85\x6f\x4a\x83 not a change".to_vec())
                    .map_err(|e| e.to_string())
                    .and_then(|c| after.apply_changes([c]).map_err(|e| e.to_string()))
            },
            Waiting::LeftToCaller,
            |_, _| -> Result<(), String> { panic!("judged bytes that do not apply") },
        )
        .unwrap();
        assert!(matches!(d, Decision::Unapplicable(_)), "{d:?}");
    }

    #[test]
    fn a_message_with_nothing_new_changes_nothing_and_is_not_judged() {
        let before = doc_with("a", "1");
        for mode in [Waiting::Queued, Waiting::LeftToCaller] {
            let d = decide(
                &before,
                |after| {
                    after
                        .merge(&mut before.clone())
                        .map(drop)
                        .map_err(|e| e.to_string())
                },
                mode,
                |_, _| -> Result<(), String> { panic!("judged nothing") },
            )
            .unwrap();
            assert!(
                matches!(
                    d,
                    Decision::Unchanged {
                        waiting: false,
                        keep: None
                    }
                ),
                "{d:?}"
            );
        }
    }

    #[test]
    fn changes_waiting_for_dependencies_are_kept_only_where_memory_may_hold_them() {
        let before = doc_with("a", "1");
        // `missing` is a change the host never received; `orphan` depends on it.
        let missing = change_on(&before, "b", "2");
        let orphan = change_on(&missing, "c", "3");
        let orphan_chunk = orphan.save_after(&missing.get_heads());
        let apply = |after: &mut Automerge| {
            after
                .load_incremental(&orphan_chunk)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        // Heads do not move: the test hubs keep the fork (its queue holds the change) ...
        let d = decide(&before, apply, Waiting::Queued, accept).unwrap();
        let Decision::Unchanged {
            waiting: true,
            keep: Some(kept),
        } = d
        else {
            panic!("kept: {d:?}")
        };
        assert!(!kept.get_missing_deps(&[]).is_empty());
        // ... the server does not: the caller keeps the bytes.
        let d = decide(&before, apply, Waiting::LeftToCaller, accept).unwrap();
        assert!(
            matches!(
                d,
                Decision::Unchanged {
                    waiting: true,
                    keep: None
                }
            ),
            "{d:?}"
        );

        // Some apply and some wait: the server stores only those that applied.
        let other = change_on(&before, "d", "4");
        let both = |after: &mut Automerge| {
            after
                .load_incremental(&other.save_after(&before.get_heads()))
                .map_err(|e| e.to_string())?;
            after
                .load_incremental(&orphan_chunk)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        let d = decide(&before, both, Waiting::LeftToCaller, accept).unwrap();
        let Decision::Store {
            after,
            chunk,
            waiting: true,
            ..
        } = d
        else {
            panic!("stored: {d:?}")
        };
        assert!(after.get_missing_deps(&[]).is_empty());
        assert_eq!(after.get_heads(), other.get_heads());
        let mut replayed = before.fork();
        replayed.load_incremental(&chunk).unwrap();
        assert_eq!(replayed.get_heads(), other.get_heads());
        // The test hubs keep the waiting one queued in the document.
        let d = decide(&before, both, Waiting::Queued, accept).unwrap();
        let Decision::Store {
            after,
            waiting: true,
            ..
        } = d
        else {
            panic!("stored: {d:?}")
        };
        assert!(!after.get_missing_deps(&[]).is_empty());
    }
}
