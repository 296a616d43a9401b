//! Decoding never panics: random bytes and random mutations of valid frames go through
//! `wire::decode` and through server and client sessions in every phase, and random sync
//! payloads inside well-formed frames go through the sync message decoder.

use proptest::prelude::*;
use tally_proto::DocumentId;
use tally_proto::session::{Event, Session};
use tally_proto::wire::{self, Message, PeerId, PeerMetadata, StorageId};

fn doc() -> DocumentId {
    DocumentId::from_bytes([0x5a; 16])
}

/// Valid frames of every kind, addressed as a phone → server connection expects.
fn seeds() -> Vec<Vec<u8>> {
    let phone = PeerId::new("phone");
    let server = PeerId::new("server");
    let mut am = automerge::Automerge::new();
    am.transact::<_, _, automerge::AutomergeError>(|tx| {
        use automerge::transaction::Transactable;
        tx.put(automerge::ROOT, "k", "v")?;
        Ok(())
    })
    .unwrap_or_else(|f| panic!("{}", f.error));
    let sync_data = {
        use automerge::sync::SyncDoc;
        let mut st = automerge::sync::State::new();
        am.generate_sync_message(&mut st).unwrap().encode()
    };
    let mut frames = vec![
        wire::encode(&Message::Join {
            sender_id: phone.clone(),
            supported_protocol_versions: Some(vec!["1".into()]),
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(StorageId("s".into())),
                is_ephemeral: false,
            }),
        }),
        wire::encode(&Message::Peer {
            sender_id: server.clone(),
            target_id: phone.clone(),
            selected_protocol_version: "1".into(),
            peer_metadata: None,
        }),
    ];
    for (sender, target) in [(&phone, &server), (&server, &phone)] {
        frames.push(wire::encode(&Message::Sync {
            sender_id: sender.clone(),
            target_id: target.clone(),
            document_id: doc(),
            data: sync_data.clone(),
        }));
        frames.push(wire::encode(&Message::Request {
            sender_id: sender.clone(),
            target_id: target.clone(),
            document_id: doc(),
            data: sync_data.clone(),
        }));
        frames.push(wire::encode(&Message::DocUnavailable {
            sender_id: sender.clone(),
            target_id: target.clone(),
            document_id: doc(),
        }));
        frames.push(wire::encode(&Message::Ephemeral {
            sender_id: sender.clone(),
            target_id: target.clone(),
            document_id: doc(),
            session_id: "x".into(),
            count: 1,
            data: vec![1],
        }));
    }
    frames.push(wire::encode(&Message::Error {
        sender_id: None,
        target_id: None,
        message: "e".into(),
        document_id: None,
        record: None,
    }));
    frames.push(wire::encode(&Message::Leave { sender_id: phone }));
    frames
}

/// Feeds `frame` to fresh and handshaken sessions of both roles; none may panic.
fn feed_everywhere(frame: &[u8]) {
    let _ = wire::decode(frame);
    let mut fresh_server = Session::server(PeerId::new("server"), PeerMetadata::default());
    let _ = fresh_server.receive(frame, 0);
    let (mut fresh_client, join) = Session::client(PeerId::new("phone"), PeerMetadata::default());
    let _ = fresh_client.receive(frame, 0);

    let mut server = Session::server(PeerId::new("server"), PeerMetadata::default());
    let events = server.receive(&join, 0).unwrap_or_default();
    let _ = server.receive(frame, 1);
    if let Some(Event::Send(peer)) = events.last() {
        let (mut client, _) = Session::client(PeerId::new("phone"), PeerMetadata::default());
        if client.receive(peer, 0).is_ok() {
            let _ = client.receive(frame, 1);
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Truncate { len: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Remove { at, len }),
    ]
}

fn apply(frame: &mut Vec<u8>, m: &Mutation) {
    let n = frame.len().max(1);
    match m {
        Mutation::Flip { at, bit } => {
            if let Some(b) = frame.get_mut(at % n) {
                *b ^= 1 << bit;
            }
        }
        Mutation::Set { at, byte } => {
            if let Some(b) = frame.get_mut(at % n) {
                *b = *byte;
            }
        }
        Mutation::Truncate { len } => frame.truncate(len % n),
        Mutation::Insert { at, bytes } => {
            let at = at % (frame.len() + 1);
            frame.splice(at..at, bytes.iter().copied());
        }
        Mutation::Remove { at, len } => {
            let at = at % n;
            let end = (at + len).min(frame.len());
            if at < end {
                frame.drain(at..end);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..256)) {
        feed_everywhere(&frame);
    }

    #[test]
    fn mutated_frames_never_panic(
        seed in 0usize..64,
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let seeds = seeds();
        let mut frame = seeds[seed % seeds.len()].clone();
        for m in &mutations {
            apply(&mut frame, m);
        }
        feed_everywhere(&frame);
    }

    #[test]
    fn random_sync_payloads_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..128),
        version in prop_oneof![Just(0x42u8), Just(0x43u8), any::<u8>()],
        request in any::<bool>(),
    ) {
        // A valid envelope around a payload that starts like a sync message.
        let mut payload = vec![version];
        payload.extend(data);
        let msg = if request {
            Message::Request {
                sender_id: PeerId::new("phone"),
                target_id: PeerId::new("server"),
                document_id: doc(),
                data: payload,
            }
        } else {
            Message::Sync {
                sender_id: PeerId::new("phone"),
                target_id: PeerId::new("server"),
                document_id: doc(),
                data: payload,
            }
        };
        feed_everywhere(&wire::encode(&msg));
    }
}

#[test]
fn hostile_lengths_do_not_allocate() {
    // Headers claiming huge strings, arrays and maps, with nothing behind them.
    let frames: Vec<Vec<u8>> = vec![
        vec![0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // bytes, 2^64-1 long
        vec![0x7b, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00], // text, 64 GiB
        vec![0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // array
        vec![0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // map
        vec![
            0xa1, 0x64, b't', b'y', b'p', b'e', 0x7a, 0xff, 0xff, 0xff, 0xff,
        ],
        [0x81].repeat(10_000), // deep nesting
        [0x9f].repeat(10_000), // deep indefinite nesting
    ];
    for f in frames {
        feed_everywhere(&f);
        assert!(wire::decode(&f).is_err());
    }
}

#[test]
fn frames_of_many_tiny_items_are_refused_before_decoding() {
    // {"type": "leave", "senderId": "a", 0: 0, 0: 0, ...}: valid CBOR, 2 bytes per entry.
    let entries = 200_000u32;
    let mut f = vec![0xba];
    f.extend((entries + 2).to_be_bytes());
    f.extend([
        0x64, b't', b'y', b'p', b'e', 0x65, b'l', b'e', b'a', b'v', b'e',
    ]);
    f.extend([
        0x68, b's', b'e', b'n', b'd', b'e', b'r', b'I', b'd', 0x61, b'a',
    ]);
    for _ in 0..entries {
        f.extend([0x00, 0x00]);
    }
    assert_eq!(
        wire::decode(&f),
        Err(tally_proto::wire::WireError::TooManyItems {
            max: tally_proto::wire::MAX_ITEMS
        })
    );
    // The same message with few extra entries decodes.
    let mut ok = vec![0xa3];
    ok.extend([
        0x64, b't', b'y', b'p', b'e', 0x65, b'l', b'e', b'a', b'v', b'e',
    ]);
    ok.extend([
        0x68, b's', b'e', b'n', b'd', b'e', b'r', b'I', b'd', 0x61, b'a',
    ]);
    ok.extend([0x00, 0x00]);
    assert!(wire::decode(&ok).is_ok());
    // Large byte strings are one item, whatever their size.
    let big = wire::encode(&Message::Sync {
        sender_id: PeerId::new("a"),
        target_id: PeerId::new("b"),
        document_id: doc(),
        data: vec![0; 1 << 20],
    });
    assert!(wire::decode(&big).is_ok());
}

fn leb(out: &mut Vec<u8>, n: u64) {
    tally_proto::bounds::write_uleb(out, n);
}

/// A structurally valid V1 sync message with arbitrary contents.
#[derive(Debug, Clone)]
struct RawSync {
    heads: Vec<[u8; 32]>,
    need: Vec<[u8; 32]>,
    haves: Vec<(Vec<[u8; 32]>, u32, u32, u32)>,
    changes: Vec<Vec<u8>>,
}

impl RawSync {
    fn encode(&self, known: &[[u8; 32]]) -> Vec<u8> {
        let pick = |h: &[u8; 32]| {
            // Half the time use a hash the server really has, to reach deeper paths.
            if h[0].is_multiple_of(2) && !known.is_empty() {
                known[h[1] as usize % known.len()]
            } else {
                *h
            }
        };
        let mut out = vec![0x42];
        for list in [&self.heads, &self.need] {
            leb(&mut out, list.len() as u64);
            for h in list {
                out.extend(pick(h));
            }
        }
        leb(&mut out, self.haves.len() as u64);
        for (last_sync, entries, bits_per_entry, probes) in &self.haves {
            leb(&mut out, last_sync.len() as u64);
            for h in last_sync {
                out.extend(pick(h));
            }
            let mut bloom = Vec::new();
            if *entries > 0 {
                leb(&mut bloom, u64::from(*entries));
                leb(&mut bloom, u64::from(*bits_per_entry));
                leb(&mut bloom, u64::from(*probes));
                let bits = (u64::from(*entries) * u64::from(*bits_per_entry)).div_ceil(8);
                bloom.extend(std::iter::repeat_n(0xa5u8, bits as usize));
            }
            leb(&mut out, bloom.len() as u64);
            out.extend(bloom);
        }
        leb(&mut out, self.changes.len() as u64);
        for c in &self.changes {
            leb(&mut out, c.len() as u64);
            out.extend(c);
        }
        out
    }
}

fn raw_sync() -> impl Strategy<Value = RawSync> {
    let hash = any::<[u8; 32]>();
    (
        proptest::collection::vec(hash, 0..3),
        proptest::collection::vec(hash, 0..3),
        proptest::collection::vec(
            (
                proptest::collection::vec(hash, 0..3),
                0u32..40,
                0u32..12,
                0u32..100,
            ),
            0..3,
        ),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..2),
    )
        .prop_map(|(heads, need, haves, changes)| RawSync {
            heads,
            need,
            haves,
            changes,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Whatever a session accepts, the host can apply and answer without automerge panicking.
    #[test]
    fn accepted_sync_messages_are_safe_for_automerge(raw in raw_sync()) {
        use automerge::sync::SyncDoc;
        use automerge::transaction::Transactable;
        let mut am = automerge::Automerge::new();
        for i in 0..5 {
            am.transact::<_, _, automerge::AutomergeError>(|tx| {
                tx.put(automerge::ROOT, format!("k{i}"), i as i64)?;
                Ok(())
            })
            .unwrap_or_else(|f| panic!("{}", f.error));
        }
        let known: Vec<[u8; 32]> = am.get_heads().iter().map(|h| h.0).collect();
        let mut server = Session::server(PeerId::new("server"), PeerMetadata::default());
        let (_, join) = Session::client(PeerId::new("phone"), PeerMetadata::default());
        server.receive(&join, 0).unwrap();
        let frame = wire::encode(&Message::Sync {
            sender_id: PeerId::new("phone"),
            target_id: PeerId::new("server"),
            document_id: doc(),
            data: raw.encode(&known),
        });
        if let Ok(events) = server.receive(&frame, 1) {
            for event in events {
                if let Event::SyncReceived { doc, message } = event {
                    let mut state = server.sync_state(&doc).cloned().unwrap_or_default();
                    let mut copy = am.clone();
                    if copy.receive_sync_message(&mut state, message).is_ok() {
                        server.set_sync_state(doc, state);
                        let _ = server.sync_frame(doc, &copy);
                    }
                }
            }
        }
    }
}

/// A structurally valid sync message asking for more than a real peer would: too many heads,
/// needs, haves, last-sync hashes, or a bloom filter past its bounds.
fn oversized_sync() -> impl Strategy<Value = (RawSync, &'static str)> {
    let hash = any::<[u8; 32]>();
    let bounds = tally_proto::SyncBounds::default();
    let distinct = move |n: usize, seed: u8| -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| {
                let mut h = [seed; 32];
                h[..8].copy_from_slice(&(i as u64).to_le_bytes());
                h
            })
            .collect()
    };
    let base = RawSync {
        heads: vec![],
        need: vec![],
        haves: vec![],
        changes: vec![],
    };
    prop_oneof![
        (1usize..50, hash).prop_map({
            let base = base.clone();
            move |(extra, h)| {
                let mut r = base.clone();
                r.heads = vec![h; bounds.max_heads + extra];
                (r, "heads")
            }
        }),
        (1usize..50, any::<u8>()).prop_map({
            let base = base.clone();
            move |(extra, seed)| {
                let mut r = base.clone();
                r.need = distinct(bounds.max_need + extra, seed);
                (r, "need")
            }
        }),
        (1usize..2_000).prop_map({
            let base = base.clone();
            move |extra| {
                let mut r = base.clone();
                r.haves = vec![(vec![], 0, 0, 0); bounds.max_haves + extra];
                (r, "have entries")
            }
        }),
        (1usize..50, hash).prop_map({
            let base = base.clone();
            move |(extra, h)| {
                let mut r = base.clone();
                r.haves = vec![(vec![h; bounds.max_last_sync + extra], 0, 0, 0)];
                (r, "last-sync")
            }
        }),
        (33u32..1_000).prop_map({
            let base = base.clone();
            move |probes| {
                let mut r = base.clone();
                r.haves = vec![(vec![], 1, 10, probes)];
                (r, "probes")
            }
        }),
        (33u32..200).prop_map(move |bits| {
            let mut r = base.clone();
            r.haves = vec![(vec![], 1, bits, 7)];
            (r, "bits per entry")
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Every sync message beyond the bounds is refused by the session with a message naming
    /// what was exceeded, and no event reaches the host (so no automerge work is done).
    #[test]
    fn oversized_sync_messages_are_refused_before_the_host((raw, what) in oversized_sync()) {
        let mut server = Session::server(PeerId::new("server"), PeerMetadata::default());
        let (_, join) = Session::client(PeerId::new("phone"), PeerMetadata::default());
        server.receive(&join, 0).unwrap();
        let data = raw.encode(&[]);
        prop_assert!(automerge::sync::Message::decode(&data).is_ok(), "automerge decodes it");
        for frame in [
            wire::encode(&Message::Sync {
                sender_id: PeerId::new("phone"),
                target_id: PeerId::new("server"),
                document_id: doc(),
                data: data.clone(),
            }),
            wire::encode(&Message::Request {
                sender_id: PeerId::new("phone"),
                target_id: PeerId::new("server"),
                document_id: doc(),
                data,
            }),
        ] {
            let err = server.receive(&frame, 1).unwrap_err();
            prop_assert!(err.to_string().contains(what), "{what}: {err}");
            prop_assert!(!err.is_fatal());
        }
    }

    /// The chunk inspector never panics on random bytes or on mutated real chunks, and when it
    /// passes a chunk that automerge then loads, it never counted fewer operations than the
    /// chunk held.
    #[test]
    fn inspected_chunks_never_undercount(
        ops in 1usize..300,
        list in any::<bool>(),
        as_doc in any::<bool>(),
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        use automerge::transaction::Transactable;
        use automerge::ReadDoc;
        let mut am = automerge::Automerge::new();
        am.transact::<_, _, automerge::AutomergeError>(|tx| {
            if list {
                let l = tx.put_object(automerge::ROOT, "l", automerge::ObjType::List)?;
                for i in 0..ops {
                    tx.insert(&l, i, i as i64)?;
                }
            } else {
                for i in 0..ops {
                    tx.put(automerge::ROOT, format!("k{i}"), "v")?;
                }
            }
            Ok(())
        })
        .unwrap_or_else(|f| panic!("{}", f.error));
        let mut chunk = if as_doc {
            am.save()
        } else {
            am.get_changes(&[])[0].raw_bytes().to_vec()
        };
        for (at, byte) in &mutations {
            let i = at.index(chunk.len());
            chunk[i] = *byte;
        }
        let bounds = tally_proto::SyncBounds::default();
        let _ = tally_proto::bounds::inspect_changes(std::iter::once(garbage.as_slice()), &bounds);
        if let Ok(summary) = tally_proto::bounds::inspect_changes(std::iter::once(chunk.as_slice()), &bounds)
            && let Ok(loaded) = automerge::Automerge::load(&chunk)
        {
            let held = loaded.get_changes(&[]).iter().map(|c| c.len() as u64).sum::<u64>();
            prop_assert!(summary.ops >= held, "counted {} of {held}", summary.ops);
            let _ = loaded.length(automerge::ROOT);
        }
    }
}
