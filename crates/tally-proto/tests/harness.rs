//! End-to-end protocol scenarios on the in-memory testkit: a hub and phones, no sockets.

use automerge::Automerge;
use proptest::prelude::*;
use tally_proto::DocumentId;
use tally_proto::testkit::{Faults, Net, allow_all, root_text, sorted_heads};
use tally_proto::wire::PeerId;

const STEPS: usize = 20_000;

fn quiet(net: &mut Net) -> usize {
    net.run_until_quiet(STEPS).unwrap_or_else(|e| panic!("{e}"))
}

fn heads_equal(a: Option<&Automerge>, b: Option<&Automerge>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => sorted_heads(a) == sorted_heads(b),
        _ => false,
    }
}

#[test]
fn handshake_both_directions() {
    let mut net = Net::new(1, allow_all);
    let c = net.add_client();
    net.connect(c);
    quiet(&mut net);
    let repo = net.repo(c);
    assert!(repo.is_connected());
    let client_session = repo.session().unwrap();
    assert_eq!(client_session.remote_peer_id(), Some(&PeerId::new("hub")));
    assert_eq!(client_session.protocol_version(), Some("1"));
    let hub_session = net.hub().session(c).unwrap();
    assert!(hub_session.is_established());
    assert_eq!(hub_session.remote_peer_id(), Some(repo.peer_id()));
    assert!(
        hub_session.remote_metadata().unwrap().storage_id.is_some(),
        "the phone's storage id reached the hub"
    );
    assert!(repo.errors().is_empty() && net.hub().protocol_errors().is_empty());
}

#[test]
fn push_then_another_client_requests_it() {
    let mut net = Net::new(2, allow_all);
    let a = net.add_client();
    let b = net.add_client();
    net.connect(a);
    net.connect(b);
    quiet(&mut net);
    let doc = net.create_doc(a);
    net.edit(a, doc, &[("title", "Fund the clinic".to_string())]);
    quiet(&mut net);
    assert!(heads_equal(net.hub().doc(&doc), net.repo(a).doc(&doc)));

    assert!(net.repo(b).doc(&doc).is_none());
    net.request(b, doc);
    quiet(&mut net);
    let got = net.repo(b).doc(&doc).expect("b received the document");
    assert!(heads_equal(Some(got), net.repo(a).doc(&doc)));
    assert_eq!(root_text(got, "title").as_deref(), Some("Fund the clinic"));

    // Later edits by a reach b through the hub without another request.
    net.edit(a, doc, &[("title", "Fund the clinic now".to_string())]);
    quiet(&mut net);
    assert_eq!(
        root_text(net.repo(b).doc(&doc).unwrap(), "title").as_deref(),
        Some("Fund the clinic now")
    );
}

#[test]
fn unknown_doc_is_unavailable_until_someone_pushes_it() {
    let mut net = Net::new(3, allow_all);
    let a = net.add_client();
    let b = net.add_client();
    // a creates the document offline; b asks for it first.
    let doc = net.create_doc(a);
    net.connect(b);
    quiet(&mut net);
    net.request(b, doc);
    quiet(&mut net);
    assert!(net.repo(b).unavailable().contains(&doc));
    assert!(net.repo(b).doc(&doc).is_none());
    assert!(net.hub().doc(&doc).is_none());
    // A document nobody has stays unavailable.
    let ghost = DocumentId::from_bytes([0xee; 16]);
    net.request(b, ghost);
    quiet(&mut net);
    assert!(net.repo(b).unavailable().contains(&ghost));
    // When a pushes, the hub passes the document on to b, who asked before.
    net.connect(a);
    quiet(&mut net);
    assert!(heads_equal(net.repo(b).doc(&doc), net.repo(a).doc(&doc)));
    assert!(!net.repo(b).unavailable().contains(&doc));
}

fn no_forbidden(_before: &Automerge, after: &Automerge) -> Result<(), String> {
    match root_text(after, "forbidden") {
        Some(_) => Err("the key \"forbidden\" may not be written".into()),
        None => Ok(()),
    }
}

#[test]
fn rejected_change_is_not_merged_and_other_docs_still_sync() {
    let mut net = Net::new(4, no_forbidden);
    let a = net.add_client();
    let b = net.add_client();
    net.connect(a);
    net.connect(b);
    let good = net.create_doc(a);
    let bad = net.create_doc(a);
    quiet(&mut net);
    assert!(heads_equal(net.hub().doc(&bad), net.repo(a).doc(&bad)));
    let bad_heads_before = sorted_heads(net.hub().doc(&bad).unwrap());

    net.edit(a, bad, &[("forbidden", "x".to_string())]);
    quiet(&mut net);
    // Not merged: the hub's copy is unchanged.
    assert_eq!(sorted_heads(net.hub().doc(&bad).unwrap()), bad_heads_before);
    assert_eq!(root_text(net.hub().doc(&bad).unwrap(), "forbidden"), None);
    // The client was told, with the reason.
    let errors = net.repo(a).errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("rejected") && errors[0].contains("forbidden"),
        "{errors:?}"
    );
    assert_eq!(net.hub().rejections().len(), 1);
    assert_eq!(net.hub().rejections()[0].doc, bad);

    // The connection still syncs other documents.
    assert!(net.repo(a).is_connected());
    net.edit(a, good, &[("status", "collecting".to_string())]);
    quiet(&mut net);
    assert_eq!(
        root_text(net.hub().doc(&good).unwrap(), "status").as_deref(),
        Some("collecting")
    );
    // And another client asking for the rejected document gets the hub's clean copy.
    net.request(b, bad);
    quiet(&mut net);
    assert_eq!(root_text(net.repo(b).doc(&bad).unwrap(), "forbidden"), None);
    assert!(heads_equal(net.repo(b).doc(&bad), net.hub().doc(&bad)));
}

#[test]
fn a_new_document_that_breaks_the_policy_is_never_stored() {
    let mut net = Net::new(5, no_forbidden);
    let a = net.add_client();
    let doc = net.create_doc(a);
    net.edit(a, doc, &[("forbidden", "from the start".to_string())]);
    net.connect(a);
    quiet(&mut net);
    assert!(net.hub().doc(&doc).is_none());
    assert_eq!(net.hub().rejections().len(), 1);
    assert!(!net.repo(a).errors().is_empty());
}

#[test]
fn malformed_frames_get_an_error_and_the_connection_goes_on() {
    let mut net = Net::new(6, allow_all);
    let a = net.add_client();
    net.connect(a);
    quiet(&mut net);
    net.inject_to_hub(a, vec![0xff, 0x00, 0x13]);
    quiet(&mut net);
    assert_eq!(net.hub().protocol_errors().len(), 1);
    assert!(net.repo(a).errors()[0].contains("not valid CBOR"));
    let doc = net.create_doc(a);
    quiet(&mut net);
    assert!(heads_equal(net.hub().doc(&doc), net.repo(a).doc(&doc)));
}

#[test]
fn reconnect_with_persisted_sync_state_sends_less() {
    let mut net = Net::new(7, allow_all);
    let a = net.add_client();
    let doc = net.create_doc(a);
    for i in 0..300 {
        net.edit(a, doc, &[("signature", format!("sig-{i}"))]);
    }
    net.connect(a);
    quiet(&mut net);
    assert!(heads_equal(net.hub().doc(&doc), net.repo(a).doc(&doc)));

    // Reconnect: both ends seed the sync states they persisted at disconnect.
    net.disconnect(a);
    net.reset_traffic();
    net.connect(a);
    quiet(&mut net);
    let persisted = net.traffic(a);

    // Reconnect as a fresh install: no persisted states on either end.
    net.disconnect(a);
    net.forget_sync_states(a);
    net.reset_traffic();
    net.connect(a);
    quiet(&mut net);
    let fresh = net.traffic(a);

    assert!(heads_equal(net.hub().doc(&doc), net.repo(a).doc(&doc)));
    assert!(
        persisted.total() < fresh.total(),
        "persisted {persisted:?} should be smaller than fresh {fresh:?}"
    );
    assert!(
        persisted.to_hub < fresh.to_hub,
        "the phone no longer summarises 300 changes: {persisted:?} vs {fresh:?}"
    );
}

#[test]
fn runs_are_deterministic() {
    fn run(seed: u64) -> (Vec<u64>, Vec<Vec<automerge::ChangeHash>>) {
        let mut net = Net::new(seed, allow_all);
        net.set_faults(Faults {
            duplicate_per_mille: 100,
            drop_per_mille: 0,
        });
        let clients: Vec<_> = (0..3).map(|_| net.add_client()).collect();
        let mut docs = Vec::new();
        for &c in &clients {
            docs.push(net.create_doc(c));
            net.connect(c);
        }
        quiet(&mut net);
        let traffic = clients.iter().map(|&c| net.traffic(c).total()).collect();
        let heads = docs
            .iter()
            .map(|d| sorted_heads(net.hub().doc(d).unwrap()))
            .collect();
        (traffic, heads)
    }
    assert_eq!(run(42), run(42));
}

#[test]
fn dropped_frames_heal_after_reconnect() {
    let mut net = Net::new(8, allow_all);
    let clients: Vec<_> = (0..4).map(|_| net.add_client()).collect();
    let shared = net.create_doc(clients[0]);
    for &c in &clients {
        net.connect(c);
    }
    quiet(&mut net);
    for &c in &clients[1..] {
        net.request(c, shared);
    }
    quiet(&mut net);
    net.set_faults(Faults {
        duplicate_per_mille: 0,
        drop_per_mille: 300,
    });
    for (i, &c) in clients.iter().enumerate() {
        if net.repo(c).doc(&shared).is_some() {
            net.edit(c, shared, &[(&format!("c{i}"), format!("v{i}"))]);
        }
    }
    quiet(&mut net);
    net.set_faults(Faults::default());
    for &c in &clients {
        net.reconnect(c);
        if net.repo(c).doc(&shared).is_none() {
            net.request(c, shared);
        }
    }
    quiet(&mut net);
    for &c in &clients {
        assert!(
            heads_equal(net.repo(c).doc(&shared), net.hub().doc(&shared)),
            "client {c} did not converge"
        );
    }
}

/// 2 to 6 phones take a shared document offline, edit it and their own documents, and
/// reconnect in a seeded order with duplicated deliveries: everyone ends up identical.
fn offline_edits_converge(n: usize, seed: u64, edits: usize, dup: u32) {
    let mut net = Net::new(seed, allow_all);
    let clients: Vec<_> = (0..n).map(|_| net.add_client()).collect();
    let shared = net.create_doc(clients[0]);
    for &c in &clients {
        net.connect(c);
    }
    quiet(&mut net);
    for &c in &clients[1..] {
        net.request(c, shared);
    }
    quiet(&mut net);
    for &c in &clients {
        assert!(
            net.repo(c).doc(&shared).is_some(),
            "client {c} got the shared doc"
        );
        net.disconnect(c);
    }

    // Offline: edit the shared document and a new document of one's own.
    let mut own = Vec::new();
    for (i, &c) in clients.iter().enumerate() {
        let mine = net.create_doc(c);
        for k in 0..edits {
            net.edit(c, shared, &[(&format!("c{i}-{k}"), format!("v{k}"))]);
            net.edit(c, shared, &[("last-writer", format!("c{i}"))]);
            net.edit(c, mine, &[(&format!("k{k}"), format!("v{k}"))]);
        }
        own.push(mine);
    }

    net.set_faults(Faults {
        duplicate_per_mille: dup,
        drop_per_mille: 0,
    });
    // Reconnect in an order derived from the seed.
    let mut order = clients.clone();
    order.rotate_left((seed as usize) % n);
    for &c in &order {
        net.connect(c);
    }
    quiet(&mut net);

    let hub_shared = net.hub().doc(&shared).expect("hub has the shared doc");
    for (i, &c) in clients.iter().enumerate() {
        let mine = net.repo(c).doc(&shared).unwrap();
        assert_eq!(
            sorted_heads(mine),
            sorted_heads(hub_shared),
            "client {c} diverged"
        );
        assert_eq!(
            root_text(mine, "last-writer"),
            root_text(hub_shared, "last-writer"),
            "conflicting writes resolve the same way everywhere"
        );
        for k in 0..edits {
            assert_eq!(
                root_text(hub_shared, &format!("c{i}-{k}")).as_deref(),
                Some(format!("v{k}").as_str())
            );
        }
        assert!(heads_equal(
            net.hub().doc(&own[i]),
            net.repo(c).doc(&own[i])
        ));
    }
}

#[test]
fn six_phones_converge_with_duplicates() {
    offline_edits_converge(6, 99, 4, 150);
}

#[test]
fn changes_waiting_for_dependencies_are_kept() {
    // With these deliveries the hub receives changes before their dependencies; a hub that
    // dropped the copy holding them (heads unchanged) deadlocked in a need/no-send loop.
    offline_edits_converge(2, 0, 3, 219);
    offline_edits_converge(4, 132, 3, 100);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn offline_phones_converge(
        n in 2usize..=6,
        seed in any::<u64>(),
        edits in 1usize..4,
        dup in prop_oneof![Just(0u32), 1u32..250],
    ) {
        offline_edits_converge(n, seed, edits, dup);
    }
}
