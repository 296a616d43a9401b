//! Golden tests of the wire format: frames built by hand the way the JS client writes them
//! (cbor-x with `useRecords: false, tagUint8Array: false`: every object is a map16 `0xb9`
//! header, `undefined` is `0xf7`, whole numbers above u32::MAX are float64) and the way
//! ciborium writes them, decoded by `wire::decode`; and encode→decode round trips.

use std::collections::BTreeMap;

use ciborium::Value;
use proptest::prelude::*;
use tally_proto::wire::{self, HeadsInfo, Message, PeerId, PeerMetadata, StorageId, WireError};
use tally_proto::{DocIdError, DocumentId};

/// A JS value, as `cbor.encode` in automerge-repo sees it.
#[derive(Clone, Debug)]
enum Js {
    Obj(Vec<(&'static str, Js)>),
    Arr(Vec<Js>),
    Str(String),
    Bytes(Vec<u8>),
    Num(f64),
    Bool(bool),
    Undefined,
}

fn s(text: &str) -> Js {
    Js::Str(text.to_owned())
}

/// Encodes like cbor-x's `Encoder({ tagUint8Array: false, useRecords: false })`.
fn cbor_x(v: &Js, out: &mut Vec<u8>) {
    fn head(out: &mut Vec<u8>, major: u8, n: u64) {
        let m = major << 5;
        match n {
            0..=23 => out.push(m | n as u8),
            24..=0xff => out.extend([m | 24, n as u8]),
            0x100..=0xffff => {
                out.push(m | 25);
                out.extend((n as u16).to_be_bytes());
            }
            _ => {
                out.push(m | 26);
                out.extend((n as u32).to_be_bytes());
            }
        }
    }
    match v {
        Js::Obj(fields) => {
            // cbor-x always writes map16 for objects and patches the count in afterwards.
            out.push(0xb9);
            out.extend((fields.len() as u16).to_be_bytes());
            for (k, v) in fields {
                cbor_x(&s(k), out);
                cbor_x(v, out);
            }
        }
        Js::Arr(items) => {
            head(out, 4, items.len() as u64);
            for i in items {
                cbor_x(i, out);
            }
        }
        Js::Str(t) => {
            head(out, 3, t.len() as u64);
            out.extend(t.as_bytes());
        }
        Js::Bytes(b) => {
            head(out, 2, b.len() as u64);
            out.extend(b);
        }
        Js::Num(n) => {
            if n.fract() == 0.0 && *n >= 0.0 && *n <= u32::MAX as f64 {
                head(out, 0, *n as u64);
            } else if n.fract() == 0.0 && *n < 0.0 && *n >= i32::MIN as f64 {
                head(out, 1, (-1.0 - *n) as u64);
            } else {
                out.push(0xfb);
                out.extend(n.to_be_bytes());
            }
        }
        Js::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Js::Undefined => out.push(0xf7),
    }
}

fn js_frame(fields: Vec<(&'static str, Js)>) -> Vec<u8> {
    let mut out = Vec::new();
    cbor_x(&Js::Obj(fields), &mut out);
    out
}

fn value_frame(fields: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(
        fields
            .into_iter()
            .map(|(k, v)| (Value::Text(k.to_owned()), v))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::into_writer(&map, &mut out).unwrap();
    out
}

fn doc() -> DocumentId {
    DocumentId::from_bytes([
        0x4f, 0x2e, 0x91, 0x03, 0xaa, 0x10, 0x4e, 0x7c, 0x9d, 0x21, 0x00, 0xfe, 0x13, 0x77, 0x80,
        0x01,
    ])
}

fn t(text: &str) -> Value {
    Value::Text(text.to_owned())
}

#[test]
fn js_join_with_undefined_storage_id() {
    let frame = js_frame(vec![
        ("type", s("join")),
        ("senderId", s("peer-abc")),
        (
            "peerMetadata",
            Js::Obj(vec![
                ("storageId", Js::Undefined),
                ("isEphemeral", Js::Bool(false)),
            ]),
        ),
        ("supportedProtocolVersions", Js::Arr(vec![s("1")])),
    ]);
    assert_eq!(&frame[..3], &[0xb9, 0x00, 0x04]);
    assert!(frame.contains(&0xf7), "undefined is written as 0xf7");
    assert_eq!(
        wire::decode(&frame).unwrap(),
        Message::Join {
            sender_id: PeerId::new("peer-abc"),
            supported_protocol_versions: Some(vec!["1".into()]),
            peer_metadata: Some(PeerMetadata {
                storage_id: None,
                is_ephemeral: false
            }),
        }
    );
}

#[test]
fn literal_join_bytes_decode() {
    // {"type":"join","senderId":"p","peerMetadata":{"storageId":undefined,"isEphemeral":true},
    //  "supportedProtocolVersions":["1"]}, written out byte by byte as cbor-x does.
    let mut frame: Vec<u8> = vec![0xb9, 0x00, 0x04];
    frame.extend([0x64]);
    frame.extend(b"type");
    frame.extend([0x64]);
    frame.extend(b"join");
    frame.extend([0x68]);
    frame.extend(b"senderId");
    frame.extend([0x61, b'p']);
    frame.extend([0x6c]);
    frame.extend(b"peerMetadata");
    frame.extend([0xb9, 0x00, 0x02, 0x69]);
    frame.extend(b"storageId");
    frame.extend([0xf7, 0x6b]);
    frame.extend(b"isEphemeral");
    frame.extend([0xf5, 0x78, 0x19]);
    frame.extend(b"supportedProtocolVersions");
    frame.extend([0x81, 0x61, b'1']);
    assert_eq!(
        frame,
        js_frame(vec![
            ("type", s("join")),
            ("senderId", s("p")),
            (
                "peerMetadata",
                Js::Obj(vec![
                    ("storageId", Js::Undefined),
                    ("isEphemeral", Js::Bool(true))
                ])
            ),
            ("supportedProtocolVersions", Js::Arr(vec![s("1")])),
        ]),
        "the test encoder writes what cbor-x writes"
    );
    let Message::Join { peer_metadata, .. } = wire::decode(&frame).unwrap() else {
        panic!("not a join")
    };
    assert_eq!(
        peer_metadata,
        Some(PeerMetadata {
            storage_id: None,
            is_ephemeral: true
        })
    );
}

#[test]
fn js_join_without_versions_or_metadata() {
    // An old client: no supportedProtocolVersions; the JS server then assumes "1".
    let frame = js_frame(vec![("type", s("join")), ("senderId", s("old"))]);
    assert_eq!(
        wire::decode(&frame).unwrap(),
        Message::Join {
            sender_id: PeerId::new("old"),
            supported_protocol_versions: None,
            peer_metadata: None,
        }
    );
}

#[test]
fn js_peer_from_node_server() {
    let frame = js_frame(vec![
        ("type", s("peer")),
        ("senderId", s("server-1")),
        (
            "peerMetadata",
            Js::Obj(vec![
                ("storageId", s("3760df37-a4c6-4f66-9ecd-732039a9385d")),
                ("isEphemeral", Js::Bool(false)),
            ]),
        ),
        ("selectedProtocolVersion", s("1")),
        ("targetId", s("peer-abc")),
    ]);
    assert_eq!(
        wire::decode(&frame).unwrap(),
        Message::Peer {
            sender_id: PeerId::new("server-1"),
            target_id: PeerId::new("peer-abc"),
            selected_protocol_version: "1".into(),
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(StorageId("3760df37-a4c6-4f66-9ecd-732039a9385d".into())),
                is_ephemeral: false
            }),
        }
    );
}

#[test]
fn js_peer_with_empty_metadata_object() {
    // WebSocketClientAdapter defaults peerMetadata to {}.
    let frame = js_frame(vec![
        ("type", s("peer")),
        ("senderId", s("srv")),
        ("peerMetadata", Js::Obj(vec![])),
        ("selectedProtocolVersion", s("1")),
        ("targetId", s("me")),
    ]);
    let Message::Peer { peer_metadata, .. } = wire::decode(&frame).unwrap() else {
        panic!()
    };
    assert_eq!(peer_metadata, Some(PeerMetadata::default()));
}

#[test]
fn js_request_and_sync_with_byte_data() {
    for kind in ["request", "sync"] {
        let frame = js_frame(vec![
            ("type", s(kind)),
            ("targetId", s("server")),
            ("documentId", Js::Str(doc().to_string())),
            ("data", Js::Bytes(vec![0x42, 0, 0, 1, 0, 0])),
            ("senderId", s("peer-abc")),
        ]);
        let msg = wire::decode(&frame).unwrap();
        let expected_fields = (
            PeerId::new("peer-abc"),
            PeerId::new("server"),
            doc(),
            vec![0x42, 0, 0, 1, 0, 0],
        );
        match msg {
            Message::Request {
                sender_id,
                target_id,
                document_id,
                data,
            }
            | Message::Sync {
                sender_id,
                target_id,
                document_id,
                data,
            } => assert_eq!((sender_id, target_id, document_id, data), expected_fields),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn request_with_float_count_and_extra_fields() {
    // Built with ciborium::Value: a float where JS had a whole number, unknown extra fields.
    let frame = value_frame(vec![
        ("type", t("request")),
        ("senderId", t("a")),
        ("targetId", t("b")),
        ("documentId", t(&doc().to_string())),
        ("data", Value::Bytes(vec![1, 2, 3])),
        ("count", Value::Float(1.0)),
        (
            "someFutureField",
            Value::Map(vec![(t("x"), Value::Array(vec![]))]),
        ),
    ]);
    assert!(matches!(
        wire::decode(&frame).unwrap(),
        Message::Request { data, .. } if data == vec![1, 2, 3]
    ));
}

#[test]
fn ephemeral_with_float_count() {
    let frame = value_frame(vec![
        ("type", t("ephemeral")),
        ("senderId", t("a")),
        ("targetId", t("b")),
        ("documentId", t(&doc().to_string())),
        ("sessionId", t("sess-1")),
        ("count", Value::Float(1.0)),
        ("data", Value::Bytes(vec![0xa0])),
    ]);
    assert_eq!(
        wire::decode(&frame).unwrap(),
        Message::Ephemeral {
            sender_id: PeerId::new("a"),
            target_id: PeerId::new("b"),
            document_id: doc(),
            session_id: "sess-1".into(),
            count: 1,
            data: vec![0xa0],
        }
    );
    // A fractional count is refused with a message naming the field.
    let bad = value_frame(vec![
        ("type", t("ephemeral")),
        ("senderId", t("a")),
        ("targetId", t("b")),
        ("documentId", t(&doc().to_string())),
        ("sessionId", t("sess-1")),
        ("count", Value::Float(1.5)),
        ("data", Value::Bytes(vec![])),
    ]);
    let err = wire::decode(&bad).unwrap_err();
    assert!(
        matches!(err, WireError::BadNumber { field: "count", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("\"count\""), "{err}");
}

#[test]
fn remote_heads_changed_with_float64_timestamp() {
    let ts = 1_733_000_000_123.0; // Date.now(): cbor-x writes it as float64
    let frame = js_frame(vec![
        ("type", s("remote-heads-changed")),
        ("senderId", s("a")),
        ("targetId", s("b")),
        ("documentId", Js::Str(doc().to_string())),
        (
            "newHeads",
            Js::Obj(vec![(
                "storage-x",
                Js::Obj(vec![
                    ("heads", Js::Arr(vec![s("hashA"), s("hashB")])),
                    ("timestamp", Js::Num(ts)),
                ]),
            )]),
        ),
    ]);
    assert!(frame.contains(&0xfb));
    let mut expected = BTreeMap::new();
    expected.insert(
        StorageId("storage-x".into()),
        HeadsInfo {
            heads: vec!["hashA".into(), "hashB".into()],
            timestamp: 1_733_000_000_123,
        },
    );
    assert_eq!(
        wire::decode(&frame).unwrap(),
        Message::RemoteHeadsChanged {
            sender_id: PeerId::new("a"),
            target_id: PeerId::new("b"),
            document_id: doc(),
            new_heads: expected,
        }
    );
}

#[test]
fn remote_subscription_change_with_undefined_remove() {
    let frame = js_frame(vec![
        ("type", s("remote-subscription-change")),
        ("senderId", s("a")),
        ("targetId", s("b")),
        ("add", Js::Arr(vec![s("storage-1")])),
        ("remove", Js::Undefined),
    ]);
    assert_eq!(
        wire::decode(&frame).unwrap(),
        Message::RemoteSubscriptionChange {
            sender_id: PeerId::new("a"),
            target_id: PeerId::new("b"),
            add: Some(vec![StorageId("storage-1".into())]),
            remove: None,
        }
    );
}

#[test]
fn error_from_node_server_and_from_samod() {
    let js = js_frame(vec![
        ("type", s("error")),
        ("senderId", s("srv")),
        ("message", s("unsupported protocol version")),
        ("targetId", s("peer")),
    ]);
    assert_eq!(
        wire::decode(&js).unwrap(),
        Message::Error {
            sender_id: Some(PeerId::new("srv")),
            target_id: Some(PeerId::new("peer")),
            message: "unsupported protocol version".into(),
            document_id: None,
            record: None,
        }
    );
    // samod sends only type and message.
    let samod = value_frame(vec![("type", t("error")), ("message", t("boom"))]);
    assert_eq!(
        wire::decode(&samod).unwrap(),
        Message::Error {
            sender_id: None,
            target_id: None,
            message: "boom".into(),
            document_id: None,
            record: None,
        }
    );
}

/// tally's refusal names the document and the record at fault (`documentId`, `tallyRecord`);
/// a bad document id there is refused like anywhere else, and peers that send neither still
/// decode (above).
#[test]
fn refusal_names_the_document_and_the_record() {
    let doc = DocumentId::from_bytes([7; 16]);
    let frame = js_frame(vec![
        ("type", s("error")),
        ("senderId", s("srv")),
        ("message", s("document: change refused")),
        ("documentId", s(&doc.to_string())),
        ("tallyRecord", s("rec123")),
    ]);
    let decoded = wire::decode(&frame).unwrap();
    assert_eq!(
        decoded,
        Message::Error {
            sender_id: Some(PeerId::new("srv")),
            target_id: None,
            message: "document: change refused".into(),
            document_id: Some(doc),
            record: Some("rec123".into()),
        }
    );
    assert_eq!(wire::decode(&wire::encode(&decoded)).unwrap(), decoded);
    let bad = js_frame(vec![
        ("type", s("error")),
        ("message", s("x")),
        ("documentId", s("not-a-doc-id")),
    ]);
    assert!(wire::decode(&bad).is_err());
}

#[test]
fn leave_and_doc_unavailable() {
    let leave = js_frame(vec![("type", s("leave")), ("senderId", s("a"))]);
    assert_eq!(
        wire::decode(&leave).unwrap(),
        Message::Leave {
            sender_id: PeerId::new("a")
        }
    );
    let unavailable = js_frame(vec![
        ("type", s("doc-unavailable")),
        ("senderId", s("a")),
        ("targetId", s("b")),
        ("documentId", Js::Str(doc().to_string())),
    ]);
    assert!(matches!(
        wire::decode(&unavailable).unwrap(),
        Message::DocUnavailable { document_id, .. } if document_id == doc()
    ));
}

#[test]
fn tolerated_variants() {
    // Document id as 16 raw bytes (samod accepts it), data wrapped in tag 64 (cbor-x's
    // default for Uint8Array), duplicate key where the last one wins (as in a JS object).
    let frame = value_frame(vec![
        ("type", t("sync")),
        ("senderId", t("first")),
        ("senderId", t("a")),
        ("targetId", t("b")),
        ("documentId", Value::Bytes(doc().as_bytes().to_vec())),
        ("data", Value::Tag(64, Box::new(Value::Bytes(vec![9])))),
    ]);
    assert_eq!(
        wire::decode(&frame).unwrap(),
        Message::Sync {
            sender_id: PeerId::new("a"),
            target_id: PeerId::new("b"),
            document_id: doc(),
            data: vec![9],
        }
    );
}

#[test]
fn refusals_name_the_problem() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "not valid CBOR"),
        (vec![0xff, 0x00], "not valid CBOR"),
        (value_frame(vec![]), "no \"type\""),
        (
            {
                let mut f = value_frame(vec![("type", t("leave")), ("senderId", t("a"))]);
                f.push(0x00);
                f
            },
            "1 bytes after",
        ),
        (
            {
                let mut out = Vec::new();
                ciborium::into_writer(&Value::Array(vec![]), &mut out).unwrap();
                out
            },
            "CBOR array",
        ),
        (
            value_frame(vec![("type", t("gossip"))]),
            "unknown message type \"gossip\"",
        ),
        (
            value_frame(vec![("type", t("sync")), ("senderId", t("a"))]),
            "sync message is missing its \"targetId\" field",
        ),
        (
            value_frame(vec![
                ("type", t("sync")),
                ("senderId", t("a")),
                ("targetId", t("b")),
                ("documentId", t("not-an-id")),
                ("data", Value::Bytes(vec![])),
            ]),
            "not a document id",
        ),
        (
            value_frame(vec![
                ("type", t("sync")),
                ("senderId", t("a")),
                ("targetId", t("b")),
                ("documentId", t(&doc().to_string())),
                ("data", t("should be bytes")),
            ]),
            "\"data\" is a CBOR text string, expected a byte string",
        ),
        (
            value_frame(vec![
                ("type", t("leave")),
                ("senderId", t(&"x".repeat(2000))),
            ]),
            "ids may be at most 1024 bytes",
        ),
    ];
    for (frame, needle) in cases {
        let err = wire::decode(&frame).unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "{err} should contain {needle}"
        );
    }
    let short_id = bs58::encode([1u8; 12]).with_check().into_string();
    let err = wire::decode(&value_frame(vec![
        ("type", t("doc-unavailable")),
        ("senderId", t("a")),
        ("targetId", t("b")),
        ("documentId", t(&short_id)),
    ]))
    .unwrap_err();
    assert_eq!(
        err,
        WireError::BadDocumentId {
            message_type: "doc-unavailable",
            field: "documentId",
            source: DocIdError::WrongLength(12)
        }
    );
}

#[test]
fn encoded_frames_are_what_js_reads() {
    // Read our encoding back as a generic CBOR value, as cbor-x would see it.
    let frame = wire::encode(&Message::RemoteHeadsChanged {
        sender_id: PeerId::new("srv"),
        target_id: PeerId::new("p"),
        document_id: doc(),
        new_heads: BTreeMap::from([(
            StorageId("st".into()),
            HeadsInfo {
                heads: vec!["h".into()],
                timestamp: 1_733_000_000_123,
            },
        )]),
    });
    let v: Value = ciborium::from_reader(frame.as_slice()).unwrap();
    let Value::Map(entries) = v else { panic!() };
    let get = |k: &str| {
        entries
            .iter()
            .find(|(key, _)| key == &t(k))
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("type"), t("remote-heads-changed"));
    assert_eq!(get("documentId"), t(&doc().to_string()));
    let Value::Map(heads) = get("newHeads") else {
        panic!()
    };
    let Value::Map(info) = &heads[0].1 else {
        panic!()
    };
    // A timestamp above u32::MAX goes out as float64: cbor-x would turn a uint64 into BigInt.
    assert_eq!(info[1], (t("timestamp"), Value::Float(1_733_000_000_123.0)));

    let join = wire::encode(&Message::Join {
        sender_id: PeerId::new("me"),
        supported_protocol_versions: Some(vec!["1".into()]),
        peer_metadata: Some(PeerMetadata::default()),
    });
    let v: Value = ciborium::from_reader(join.as_slice()).unwrap();
    assert_eq!(
        v,
        Value::Map(vec![
            (t("type"), t("join")),
            (t("senderId"), t("me")),
            (t("supportedProtocolVersions"), Value::Array(vec![t("1")])),
            (
                t("peerMetadata"),
                Value::Map(vec![(t("isEphemeral"), Value::Bool(false))])
            ),
        ])
    );
    let sync = wire::encode(&Message::Sync {
        sender_id: PeerId::new("a"),
        target_id: PeerId::new("b"),
        document_id: doc(),
        data: vec![0x42],
    });
    let v: Value = ciborium::from_reader(sync.as_slice()).unwrap();
    let Value::Map(entries) = v else { panic!() };
    assert!(
        entries.contains(&(t("data"), Value::Bytes(vec![0x42]))),
        "data is a plain byte string, no tag"
    );
}

fn every_message_type() -> Vec<Message> {
    let a = PeerId::new("peer-a");
    let b = PeerId::new("peer-b");
    vec![
        Message::Join {
            sender_id: a.clone(),
            supported_protocol_versions: Some(vec!["1".into(), "2".into()]),
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(StorageId("st".into())),
                is_ephemeral: true,
            }),
        },
        Message::Join {
            sender_id: a.clone(),
            supported_protocol_versions: None,
            peer_metadata: None,
        },
        Message::Peer {
            sender_id: b.clone(),
            target_id: a.clone(),
            selected_protocol_version: "1".into(),
            peer_metadata: Some(PeerMetadata::default()),
        },
        Message::Request {
            sender_id: a.clone(),
            target_id: b.clone(),
            document_id: doc(),
            data: vec![1, 2, 3],
        },
        Message::Sync {
            sender_id: a.clone(),
            target_id: b.clone(),
            document_id: doc(),
            data: vec![0; 70_000],
        },
        Message::DocUnavailable {
            sender_id: b.clone(),
            target_id: a.clone(),
            document_id: doc(),
        },
        Message::Ephemeral {
            sender_id: a.clone(),
            target_id: b.clone(),
            document_id: doc(),
            session_id: "s".into(),
            count: 5_000_000_000,
            data: vec![],
        },
        Message::RemoteHeadsChanged {
            sender_id: a.clone(),
            target_id: b.clone(),
            document_id: doc(),
            new_heads: BTreeMap::from([(
                StorageId("x".into()),
                HeadsInfo {
                    heads: vec![],
                    timestamp: 7,
                },
            )]),
        },
        Message::RemoteSubscriptionChange {
            sender_id: a.clone(),
            target_id: b.clone(),
            add: None,
            remove: Some(vec![StorageId("y".into())]),
        },
        Message::Error {
            sender_id: Some(b.clone()),
            target_id: None,
            message: "nope".into(),
            document_id: None,
            record: None,
        },
        Message::Leave { sender_id: a },
    ]
}

#[test]
fn every_message_type_round_trips() {
    let all = every_message_type();
    let types: std::collections::BTreeSet<&str> = all.iter().map(Message::type_name).collect();
    assert_eq!(types.len(), 10, "all ten message types are covered");
    for msg in all {
        assert_eq!(wire::decode(&wire::encode(&msg)).unwrap(), msg);
    }
}

fn arb_peer() -> impl Strategy<Value = PeerId> {
    "[a-z0-9-]{0,20}".prop_map(PeerId::new)
}

fn arb_doc() -> impl Strategy<Value = DocumentId> {
    any::<[u8; 16]>().prop_map(DocumentId::from_bytes)
}

fn arb_meta() -> impl Strategy<Value = Option<PeerMetadata>> {
    proptest::option::of(
        (proptest::option::of("[a-z0-9-]{1,36}"), any::<bool>()).prop_map(|(st, eph)| {
            PeerMetadata {
                storage_id: st.map(StorageId),
                is_ephemeral: eph,
            }
        }),
    )
}

fn arb_message() -> impl Strategy<Value = Message> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (
            arb_peer(),
            proptest::option::of(proptest::collection::vec("[0-9]{1,2}", 0..3)),
            arb_meta()
        )
            .prop_map(|(sender_id, v, peer_metadata)| Message::Join {
                sender_id,
                supported_protocol_versions: v,
                peer_metadata
            }),
        (arb_peer(), arb_peer(), "[0-9]", arb_meta()).prop_map(|(s, t, v, m)| Message::Peer {
            sender_id: s,
            target_id: t,
            selected_protocol_version: v,
            peer_metadata: m
        }),
        (arb_peer(), arb_peer(), arb_doc(), bytes.clone()).prop_map(|(s, t, d, data)| {
            Message::Sync {
                sender_id: s,
                target_id: t,
                document_id: d,
                data,
            }
        }),
        (arb_peer(), arb_peer(), arb_doc(), bytes.clone()).prop_map(|(s, t, d, data)| {
            Message::Request {
                sender_id: s,
                target_id: t,
                document_id: d,
                data,
            }
        }),
        (
            arb_peer(),
            arb_peer(),
            arb_doc(),
            "[a-z]{0,8}",
            any::<u64>(),
            bytes
        )
            .prop_map(|(s, t, d, sid, count, data)| Message::Ephemeral {
                sender_id: s,
                target_id: t,
                document_id: d,
                session_id: sid,
                count,
                data
            }),
        (
            arb_peer(),
            arb_peer(),
            arb_doc(),
            proptest::collection::btree_map(
                "[a-z]{1,8}",
                (proptest::collection::vec("[a-z]{0,8}", 0..3), any::<u64>()),
                0..3
            )
        )
            .prop_map(|(s, t, d, heads)| Message::RemoteHeadsChanged {
                sender_id: s,
                target_id: t,
                document_id: d,
                new_heads: heads
                    .into_iter()
                    .map(|(k, (heads, timestamp))| (StorageId(k), HeadsInfo { heads, timestamp }))
                    .collect()
            }),
        (
            proptest::option::of(arb_peer()),
            proptest::option::of(arb_peer()),
            ".{0,40}"
        )
            .prop_map(|(s, t, m)| Message::Error {
                sender_id: s,
                target_id: t,
                message: m,
                document_id: None,
                record: None,
            }),
        arb_peer().prop_map(|s| Message::Leave { sender_id: s }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_messages_round_trip(msg in arb_message()) {
        prop_assert_eq!(wire::decode(&wire::encode(&msg)).unwrap(), msg);
    }
}
