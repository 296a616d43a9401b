//! Session state machine tests: handshakes both ways, addressing, refusals, per-document
//! sync state handling, and the guard against bloom filters that would crash automerge.

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ReadDoc};
use tally_proto::DocumentId;
use tally_proto::session::{Event, Limits, Session, SessionError, Side};
use tally_proto::wire::{self, Message, PeerId, PeerMetadata, StorageId, WireError};

fn server() -> Session {
    Session::server(
        PeerId::new("server"),
        PeerMetadata {
            storage_id: Some(StorageId("server-storage".into())),
            is_ephemeral: false,
        },
    )
}

fn client() -> (Session, Vec<u8>) {
    Session::client(PeerId::new("phone"), PeerMetadata::default())
}

/// A server and client that completed the handshake.
fn pair() -> (Session, Session) {
    let mut s = server();
    let (mut c, join) = client();
    let events = s.receive(&join, 1).unwrap();
    let Some(Event::Send(peer)) = events.last().cloned() else {
        panic!("{events:?}")
    };
    c.receive(&peer, 2).unwrap();
    assert!(s.is_established() && c.is_established());
    (s, c)
}

fn doc_id(n: u8) -> DocumentId {
    DocumentId::from_bytes([n; 16])
}

fn doc_with(key: &str, value: &str) -> Automerge {
    let mut am = Automerge::new();
    am.transact::<_, _, automerge::AutomergeError>(|tx| {
        tx.put(automerge::ROOT, key, value)?;
        Ok(())
    })
    .unwrap();
    am
}

fn frame(msg: &Message) -> Vec<u8> {
    wire::encode(msg)
}

#[test]
fn server_handshake() {
    let mut s = server();
    assert_eq!(s.side(), Side::Server);
    let (_, join) = client();
    let events = s.receive(&join, 10).unwrap();
    assert_eq!(
        events[0],
        Event::Joined {
            peer_id: PeerId::new("phone"),
            metadata: Some(PeerMetadata::default()),
        }
    );
    let Event::Send(peer) = &events[1] else {
        panic!()
    };
    assert_eq!(
        wire::decode(peer).unwrap(),
        Message::Peer {
            sender_id: PeerId::new("server"),
            target_id: PeerId::new("phone"),
            selected_protocol_version: "1".into(),
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(StorageId("server-storage".into())),
                is_ephemeral: false
            }),
        }
    );
    assert_eq!(s.protocol_version(), Some("1"));
    assert_eq!(s.remote_peer_id(), Some(&PeerId::new("phone")));
    assert_eq!(s.last_heard_ms(), Some(10));
}

#[test]
fn client_handshake() {
    let (mut c, join) = client();
    assert_eq!(c.side(), Side::Client);
    assert!(!c.is_established());
    assert!(matches!(
        wire::decode(&join).unwrap(),
        Message::Join { supported_protocol_versions: Some(v), .. } if v == vec!["1".to_string()]
    ));
    let peer = frame(&Message::Peer {
        sender_id: PeerId::new("server"),
        target_id: PeerId::new("phone"),
        selected_protocol_version: "1".into(),
        peer_metadata: None,
    });
    let events = c.receive(&peer, 5).unwrap();
    assert_eq!(
        events,
        vec![Event::PeerAccepted {
            peer_id: PeerId::new("server"),
            metadata: None,
            protocol_version: "1".into()
        }]
    );
    assert!(c.is_established());
}

#[test]
fn unsupported_version_is_fatal_and_answered_with_error() {
    let mut s = server();
    let join = frame(&Message::Join {
        sender_id: PeerId::new("future"),
        supported_protocol_versions: Some(vec!["2".into()]),
        peer_metadata: None,
    });
    let err = s.receive(&join, 0).unwrap_err();
    assert_eq!(
        err,
        SessionError::UnsupportedProtocolVersion {
            offered: vec!["2".into()]
        }
    );
    assert!(err.is_fatal());
    assert!(s.is_closed());
    assert!(err.to_string().contains("unsupported protocol version"));
    // The error frame reaches the joining peer.
    let reply = wire::decode(&s.error_frame(&err.to_string())).unwrap();
    assert!(matches!(
        reply,
        Message::Error { target_id: Some(t), .. } if t == PeerId::new("future")
    ));
    // And a client seeing that error during its handshake reports it and closes.
    let (mut c, _) = client();
    let events = c
        .receive(&s.error_frame("unsupported protocol version"), 1)
        .unwrap();
    assert_eq!(
        events,
        vec![Event::RemoteError {
            message: "unsupported protocol version".into(),
            document_id: None,
            record: None,
        }]
    );
    assert!(c.is_closed());
    assert_eq!(c.receive(&[0xa0], 2), Err(SessionError::Closed));
}

#[test]
fn server_picks_version_1_when_offered_among_others_or_when_absent() {
    for versions in [Some(vec!["0".into(), "1".into()]), None] {
        let mut s = server();
        let join = frame(&Message::Join {
            sender_id: PeerId::new("p"),
            supported_protocol_versions: versions,
            peer_metadata: None,
        });
        assert!(s.receive(&join, 0).is_ok());
        assert!(s.is_established());
    }
}

#[test]
fn client_refuses_another_selected_version() {
    let (mut c, _) = client();
    let peer = frame(&Message::Peer {
        sender_id: PeerId::new("server"),
        target_id: PeerId::new("phone"),
        selected_protocol_version: "2".into(),
        peer_metadata: None,
    });
    let err = c.receive(&peer, 0).unwrap_err();
    assert!(err.is_fatal(), "{err}");
}

#[test]
fn sync_before_join_is_refused() {
    let mut s = server();
    let sync = frame(&Message::Sync {
        sender_id: PeerId::new("phone"),
        target_id: PeerId::new("server"),
        document_id: doc_id(1),
        data: vec![0x42, 0, 0, 0, 0],
    });
    let err = s.receive(&sync, 0).unwrap_err();
    assert_eq!(err, SessionError::NotJoined { got: "sync" });
    assert!(!err.is_fatal());
    assert!(err.to_string().contains("send join first"), "{err}");
    // Still waiting for join afterwards.
    let (_, join) = client();
    assert!(s.receive(&join, 1).is_ok());
    // A client gets the matching refusal before peer.
    let (mut c, _) = client();
    assert_eq!(
        c.receive(&sync, 0),
        Err(SessionError::NotAccepted { got: "sync" })
    );
}

#[test]
fn duplicate_join_and_misplaced_handshake_messages() {
    let (mut s, mut c) = pair();
    // A second join that is not a byte-for-byte replay of the first (those are ignored).
    let (_, join) = Session::client(
        PeerId::new("phone"),
        PeerMetadata {
            storage_id: Some(StorageId("another".into())),
            is_ephemeral: false,
        },
    );
    assert_eq!(
        s.receive(&join, 3),
        Err(SessionError::DuplicateJoin {
            peer_id: PeerId::new("phone")
        })
    );
    assert!(
        s.is_established(),
        "a refused frame leaves the session as it was"
    );
    let peer = frame(&Message::Peer {
        sender_id: PeerId::new("server"),
        target_id: PeerId::new("phone"),
        selected_protocol_version: "1".into(),
        peer_metadata: None,
    });
    assert!(matches!(
        c.receive(&peer, 3),
        Err(SessionError::UnexpectedMessage { got: "peer", .. })
    ));
    assert!(matches!(
        c.receive(&join, 3),
        Err(SessionError::UnexpectedMessage { got: "join", .. })
    ));
}

#[test]
fn wrong_target_and_wrong_sender() {
    let (mut s, _) = pair();
    let to_other = frame(&Message::Sync {
        sender_id: PeerId::new("phone"),
        target_id: PeerId::new("someone-else"),
        document_id: doc_id(1),
        data: vec![],
    });
    let err = s.receive(&to_other, 0).unwrap_err();
    assert_eq!(
        err,
        SessionError::WrongTarget {
            expected: PeerId::new("server"),
            got: PeerId::new("someone-else")
        }
    );
    assert!(err.to_string().contains("targetId"));
    let spoofed = frame(&Message::DocUnavailable {
        sender_id: PeerId::new("intruder"),
        target_id: PeerId::new("server"),
        document_id: doc_id(1),
    });
    assert!(matches!(
        s.receive(&spoofed, 0),
        Err(SessionError::WrongSender { .. })
    ));
    let leave = frame(&Message::Leave {
        sender_id: PeerId::new("intruder"),
    });
    assert!(matches!(
        s.receive(&leave, 0),
        Err(SessionError::WrongSender { .. })
    ));
    assert!(s.is_established());
}

#[test]
fn bad_cbor_and_unknown_types_are_distinct() {
    let (mut s, _) = pair();
    assert!(matches!(
        s.receive(&[0x1c], 0),
        Err(SessionError::Wire(WireError::Cbor(_)))
    ));
    let mut unknown = Vec::new();
    ciborium::into_writer(
        &ciborium::Value::Map(vec![(
            ciborium::Value::Text("type".into()),
            ciborium::Value::Text("presence".into()),
        )]),
        &mut unknown,
    )
    .unwrap();
    assert!(matches!(
        s.receive(&unknown, 0),
        Err(SessionError::Wire(WireError::UnknownType(t))) if t == "presence"
    ));
    assert!(s.is_established());
}

#[test]
fn bad_sync_data_is_refused() {
    let (mut s, _) = pair();
    let sync = frame(&Message::Sync {
        sender_id: PeerId::new("phone"),
        target_id: PeerId::new("server"),
        document_id: doc_id(1),
        data: b"not a sync message".to_vec(),
    });
    let err = s.receive(&sync, 0).unwrap_err();
    assert!(
        matches!(err, SessionError::BadSyncMessage { kind: "sync", .. }),
        "{err}"
    );
}

#[test]
fn limits_are_enforced() {
    let (s, c) = pair();
    drop(c);
    let mut s = s.with_limits(Limits {
        max_frame_bytes: 150,
        max_documents: 1,
        ..Limits::default()
    });
    let big = frame(&Message::Sync {
        sender_id: PeerId::new("phone"),
        target_id: PeerId::new("server"),
        document_id: doc_id(1),
        data: vec![0; 200],
    });
    assert!(matches!(
        s.receive(&big, 0),
        Err(SessionError::FrameTooLarge { max: 150, .. })
    ));
    let unavailable = |n| {
        frame(&Message::DocUnavailable {
            sender_id: PeerId::new("phone"),
            target_id: PeerId::new("server"),
            document_id: doc_id(n),
        })
    };
    assert!(s.receive(&unavailable(1), 0).is_ok());
    assert!(
        s.receive(&unavailable(1), 0).is_ok(),
        "a known document is fine"
    );
    assert_eq!(
        s.receive(&unavailable(2), 0),
        Err(SessionError::TooManyDocuments { max: 1 })
    );
}

#[test]
fn leave_closes() {
    let (mut s, mut c) = pair();
    let leave = c.leave_frame();
    assert!(c.is_closed());
    assert_eq!(s.receive(&leave, 0).unwrap(), vec![Event::Left]);
    assert!(s.is_closed());
    assert_eq!(s.receive(&leave, 0), Err(SessionError::Closed));
    assert!(s.sync_frame(doc_id(1), &doc_with("a", "b")).is_none());
}

#[test]
fn nothing_is_sent_before_the_handshake() {
    let mut s = server();
    let (mut c, _) = client();
    let am = doc_with("k", "v");
    assert!(s.sync_frame(doc_id(1), &am).is_none());
    assert!(c.sync_frame(doc_id(1), &am).is_none());
    assert!(c.request_frame(doc_id(1), &Automerge::new()).is_none());
    assert!(s.unavailable_frame(doc_id(1)).is_none());
    assert!(s.ephemeral_frame(doc_id(1), "s", 1, b"x").is_none());
    // error frames work in any phase
    assert!(matches!(
        wire::decode(&s.error_frame("no")).unwrap(),
        Message::Error {
            target_id: None,
            ..
        }
    ));
}

/// Runs the automerge sync loop between a server and a client session until quiet,
/// applying everything without validation.
fn sync_loop(
    s: &mut Session,
    server_doc: &mut Automerge,
    c: &mut Session,
    client_doc: &mut Automerge,
    doc: DocumentId,
    first: Vec<u8>,
) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    let mut to_server = vec![first];
    let mut to_client: Vec<Vec<u8>> = Vec::new();
    for _ in 0..50 {
        if to_server.is_empty() && to_client.is_empty() {
            break;
        }
        for f in std::mem::take(&mut to_server) {
            kinds.push(wire::decode(&f).unwrap().type_name());
            for e in s.receive(&f, 0).unwrap() {
                match e {
                    Event::SyncReceived { message, .. } | Event::DocRequested { message, .. } => {
                        s.apply_sync_message(doc, server_doc, message).unwrap();
                        to_client.extend(s.sync_frame(doc, server_doc));
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        for f in std::mem::take(&mut to_client) {
            kinds.push(wire::decode(&f).unwrap().type_name());
            for e in c.receive(&f, 0).unwrap() {
                match e {
                    Event::SyncReceived { message, .. } => {
                        c.apply_sync_message(doc, client_doc, message).unwrap();
                        to_server.extend(c.sync_frame(doc, client_doc));
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }
    kinds
}

#[test]
fn client_without_the_doc_requests_and_server_answers_with_sync() {
    let (mut s, mut c) = pair();
    let doc = doc_id(7);
    let mut server_doc = doc_with("title", "petition");
    let mut client_doc = Automerge::new();
    let first = c.sync_frame(doc, &client_doc).unwrap();
    assert_eq!(
        wire::decode(&first).unwrap().type_name(),
        "request",
        "an empty doc the remote has not offered goes out as request"
    );
    let kinds = sync_loop(&mut s, &mut server_doc, &mut c, &mut client_doc, doc, first);
    assert_eq!(kinds[1], "sync", "the answer to a request is a sync");
    assert!(s.remote_requested(&doc));
    assert_eq!(
        client_doc
            .get(automerge::ROOT, "title")
            .unwrap()
            .unwrap()
            .0
            .to_string(),
        "\"petition\""
    );
}

#[test]
fn explicit_request_frame_and_unavailable_answer() {
    let (mut s, mut c) = pair();
    let doc = doc_id(9);
    let req = c.request_frame(doc, &Automerge::new()).unwrap();
    let events = s.receive(&req, 0).unwrap();
    assert!(matches!(&events[..], [Event::DocRequested { doc: d, .. }] if *d == doc));
    let answer = s.unavailable_frame(doc).unwrap();
    assert_eq!(
        c.receive(&answer, 0).unwrap(),
        vec![Event::Unavailable { doc }]
    );
    assert!(c.remote_unavailable(&doc));
}

#[test]
fn pushing_a_doc_is_a_sync() {
    let (mut s, mut c) = pair();
    let doc = doc_id(3);
    let mut client_doc = doc_with("sig", "1");
    let mut server_doc = Automerge::new();
    let first = c.sync_frame(doc, &client_doc).unwrap();
    assert_eq!(wire::decode(&first).unwrap().type_name(), "sync");
    sync_loop(&mut s, &mut server_doc, &mut c, &mut client_doc, doc, first);
    assert_eq!(server_doc.get_heads(), client_doc.get_heads());
    assert!(
        c.sync_frame(doc, &client_doc).is_none(),
        "quiet once in sync"
    );
}

#[test]
fn validate_on_a_copy_then_store_the_state() {
    let (mut s, mut c) = pair();
    let doc = doc_id(4);
    let client_doc = doc_with("sig", "1");
    let mut stored = Automerge::new();
    // Round one carries heads and a bloom filter only; the server answers.
    let first = c.sync_frame(doc, &client_doc).unwrap();
    let Event::SyncReceived { message, .. } = s.receive(&first, 0).unwrap()[0].clone() else {
        panic!()
    };
    s.apply_sync_message(doc, &mut stored, message).unwrap();
    let answer = s.sync_frame(doc, &stored).unwrap();
    let Event::SyncReceived { message, .. } = c.receive(&answer, 0).unwrap()[0].clone() else {
        panic!()
    };
    let mut client_doc = client_doc;
    c.apply_sync_message(doc, &mut client_doc, message).unwrap();
    // Round two carries the change.
    let second = c.sync_frame(doc, &client_doc).unwrap();
    let events = s.receive(&second, 0).unwrap();
    let Event::SyncReceived { message, .. } = events[0].clone() else {
        panic!()
    };
    assert!(!message.changes.is_empty());
    let before_state = s.sync_state(&doc).cloned().unwrap();
    // Apply to a copy with a copy of the state; reject: nothing stored changes.
    let mut copy = stored.clone();
    let mut state = before_state.clone();
    copy.receive_sync_message(&mut state, message.clone())
        .unwrap();
    assert_ne!(copy.get_heads(), stored.get_heads());
    assert_eq!(s.sync_state(&doc), Some(&before_state));
    // Accept: store the state.
    s.set_sync_state(doc, state.clone());
    assert_eq!(s.sync_state(&doc), Some(&state));
    assert_eq!(s.encoded_sync_state(&doc), Some(state.encode()));
    assert!(s.documents().any(|d| *d == doc));
    assert_eq!(s.document_count(), 1);
    assert!(s.forget_doc(&doc).is_some());
    assert_eq!(s.document_count(), 0);
}

#[test]
fn persisted_state_is_only_loaded_into_an_unused_slot() {
    let (mut s, _) = pair();
    let doc = doc_id(5);
    let am = doc_with("a", "b");
    let persisted = sync::State::decode(&{
        let mut st = sync::State::new();
        st.shared_heads = am.get_heads();
        st.encode()
    })
    .unwrap();
    assert!(s.sync_state_is_fresh(&doc));
    assert!(s.load_sync_state(doc, persisted.clone()));
    assert_eq!(s.sync_state(&doc).unwrap().shared_heads, am.get_heads());
    assert!(
        !s.load_sync_state(doc, sync::State::new()),
        "already seeded"
    );
    let other = doc_id(6);
    s.sync_frame(other, &am).unwrap();
    assert!(!s.sync_state_is_fresh(&other));
    assert!(!s.load_sync_state(other, persisted), "already used");
}

#[test]
fn ephemeral_and_gossip_messages_surface_as_events() {
    let (mut s, mut c) = pair();
    let eph = c.ephemeral_frame(doc_id(1), "sess", 3, b"hi").unwrap();
    assert_eq!(
        s.receive(&eph, 0).unwrap(),
        vec![Event::Ephemeral {
            doc: doc_id(1),
            session_id: "sess".into(),
            count: 3,
            data: b"hi".to_vec()
        }]
    );
    let sub = frame(&Message::RemoteSubscriptionChange {
        sender_id: PeerId::new("phone"),
        target_id: PeerId::new("server"),
        add: Some(vec![StorageId("x".into())]),
        remove: None,
    });
    assert!(matches!(
        &s.receive(&sub, 0).unwrap()[..],
        [Event::RemoteSubscriptionChange { .. }]
    ));
    let heads = frame(&Message::RemoteHeadsChanged {
        sender_id: PeerId::new("phone"),
        target_id: PeerId::new("server"),
        document_id: doc_id(1),
        new_heads: Default::default(),
    });
    assert!(matches!(
        &s.receive(&heads, 0).unwrap()[..],
        [Event::RemoteHeadsChanged { .. }]
    ));
    let err = s.error_frame("change rejected");
    assert_eq!(
        c.receive(&err, 0).unwrap(),
        vec![Event::RemoteError {
            message: "change rejected".into(),
            document_id: None,
            record: None,
        }]
    );
    assert!(
        c.is_established(),
        "an error after the handshake does not close"
    );
}

/// A V1 sync message whose single `have` carries a bloom filter with one entry and zero bits
/// per entry.
fn poisoned_sync_message() -> Vec<u8> {
    vec![
        0x42, // V1 sync message
        0x00, // heads: none
        0x00, // need: none
        0x01, // one have
        0x00, //   last_sync: none
        0x03, //   bloom: 3 bytes
        0x01, 0x00, 0x07, // 1 entry, 0 bits per entry, 7 probes, 0 bytes of bits
        0x00, // changes: none
    ]
}

#[test]
fn zero_bit_bloom_filters_are_refused() {
    let (mut s, _) = pair();
    let data = poisoned_sync_message();
    assert!(sync::Message::decode(&data).is_ok(), "automerge accepts it");
    let sync = frame(&Message::Sync {
        sender_id: PeerId::new("phone"),
        target_id: PeerId::new("server"),
        document_id: doc_id(1),
        data,
    });
    let err = s.receive(&sync, 0).unwrap_err();
    assert!(err.to_string().contains("0 bits per entry"), "{err}");
    // 1 entry, 10 bits per entry, 100 probes, 2 bytes of bits.
    let probes = vec![
        0x42, 0x00, 0x00, 0x01, 0x00, 0x05, 0x01, 0x0a, 0x64, 0x00, 0x00, 0x00,
    ];
    let m = sync::Message::decode(&probes);
    assert!(m.is_ok(), "{m:?}");
    let sync = frame(&Message::Sync {
        sender_id: PeerId::new("phone"),
        target_id: PeerId::new("server"),
        document_id: doc_id(1),
        data: probes,
    });
    let err = s.receive(&sync, 0).unwrap_err();
    assert!(err.to_string().contains("probes"), "{err}");
}

#[test]
fn automerge_really_panics_on_the_zero_bit_bloom() {
    // Why the guard above exists: automerge 0.12 divides by zero in
    // BloomFilter::contains_hash when the server generates its answer. If this test starts
    // failing, automerge fixed it and the guard may be relaxed.
    let message = sync::Message::decode(&poisoned_sync_message()).unwrap();
    let mut server_doc = doc_with("a", "b");
    let mut state = sync::State::new();
    server_doc
        .receive_sync_message(&mut state, message)
        .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        server_doc.generate_sync_message(&mut state)
    }));
    assert!(outcome.is_err());
}

/// A V1 sync message whose `need` names `hash` twice, with two `have`s: one empty, one
/// whose last sync is `hash` (the shape the fuzzer shrank to).
fn duplicate_need_message(hash: automerge::ChangeHash) -> Vec<u8> {
    let mut data = vec![0x42, 0x00, 0x02];
    data.extend(hash.0);
    data.extend(hash.0);
    data.extend([0x02, 0x00, 0x00, 0x01]);
    data.extend(hash.0);
    data.extend([0x00, 0x00]);
    data
}

fn five_changes() -> Automerge {
    let mut am = Automerge::new();
    for i in 0..5 {
        am.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(automerge::ROOT, format!("k{i}"), i as i64)?;
            Ok(())
        })
        .unwrap();
    }
    am
}

#[test]
fn duplicate_need_is_refused() {
    let (mut s, _) = pair();
    let am = five_changes();
    let sync = frame(&Message::Sync {
        sender_id: PeerId::new("phone"),
        target_id: PeerId::new("server"),
        document_id: doc_id(1),
        data: duplicate_need_message(am.get_heads()[0]),
    });
    let err = s.receive(&sync, 0).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[test]
fn automerge_really_panics_on_a_duplicate_need() {
    // Found by tests/fuzz.rs: automerge 0.12 unwraps MissingOps in get_changes_by_hashes.
    // If this starts failing, automerge fixed it and the guard may be relaxed.
    let mut am = five_changes();
    let message = sync::Message::decode(&duplicate_need_message(am.get_heads()[0])).unwrap();
    let mut state = sync::State::new();
    am.receive_sync_message(&mut state, message).unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        am.generate_sync_message(&mut state)
    }));
    assert!(outcome.is_err());
}

#[test]
fn a_frame_repeated_back_to_back_is_a_replay_and_ignored() {
    let mut s = server();
    let (_, join) = client();
    assert_eq!(s.receive(&join, 1).unwrap().len(), 2);
    // The same join again, byte for byte: ignored, not "a second join".
    assert_eq!(s.receive(&join, 2).unwrap(), Vec::new());
    assert!(s.is_established());

    // A request, twice: answered once.
    let request = frame(&Message::Request {
        sender_id: PeerId::new("phone"),
        target_id: PeerId::new("server"),
        document_id: doc_id(9),
        data: doc_with("k", "v")
            .generate_sync_message(&mut sync::State::new())
            .unwrap()
            .encode(),
    });
    let first = s.receive(&request, 3).unwrap();
    assert!(!first.is_empty());
    assert_eq!(s.receive(&request, 4).unwrap(), Vec::new());
    // Not back to back (another frame between): handled again.
    let _ = s.receive(&join, 5);
    assert_eq!(s.receive(&request, 6).unwrap().len(), first.len());
}
