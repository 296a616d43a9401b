//! Writes a seed input for every fuzz target into `fuzz/regressions/<target>/seed-*` (kept in
//! git, replayed by `cargo test`, and a starting corpus for `cargo fuzz run`):
//! `cargo run -p tally-fuzz --example seeds`.

use std::path::PathBuf;

use automerge::sync::{self, SyncDoc as _};
use tally_core::collection;
use tally_core::fixtures::World;
use tally_proto::DocumentId;
use tally_proto::wire::{self, Message, PeerId, PeerMetadata};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("regressions folder");
        std::fs::write(dir.join(format!("seed-{name}")), data).expect("seed written");
    };
    let phone = PeerId::new("phone");
    let server = PeerId::new("server");
    let doc = DocumentId::from_bytes([7; 16]);

    // A collection with a signature, and the sync message that carries it.
    let world = World::new();
    let mut am = collection::create(tally_core::fixtures::CAMPAIGN, "dev1").expect("collection");
    let before_heads = am.get_heads();
    let sig = world.signature("dev1", "s2", "Jean Dupont", "H2X 1Y4", "Montreal");
    collection::add_signature(&mut am, &sig, &world.campaign).expect("signature");
    let sync_data = am
        .generate_sync_message(&mut sync::State::new())
        .expect("a first sync message")
        .encode();

    let join = wire::encode(&Message::Join {
        sender_id: phone.clone(),
        supported_protocol_versions: Some(vec!["1".into()]),
        peer_metadata: Some(PeerMetadata::default()),
    });
    let sync_msg = wire::encode(&Message::Sync {
        sender_id: phone.clone(),
        target_id: server.clone(),
        document_id: doc,
        data: sync_data.clone(),
    });
    let request = wire::encode(&Message::Request {
        sender_id: phone,
        target_id: server,
        document_id: doc,
        data: sync_data,
    });
    write("wire_decode", "join", &join);
    write("wire_decode", "sync", &sync_msg);

    let mut frames = Vec::new();
    for f in [&join, &request, &sync_msg] {
        match u8::try_from(f.len()) {
            Ok(n) if n < 255 => frames.push(n),
            _ => frames.push(255),
        }
        frames.extend_from_slice(f);
    }
    write("session_frames", "join-request-sync", &frames);

    // Raw mode (even first byte): the signature's change as an incremental chunk. It is judged
    // against a collection holding s1 by dev1, so it adds a second signature.
    let mut raw = vec![0u8];
    raw.extend(am.save_after(&before_heads));
    write("validate_changes", "raw-signature", &raw);
    // Program mode (odd first byte): put a city, delete a field, a new record's id.
    write(
        "validate_changes",
        "program",
        &[1, 0x01, 5, 3, 0x01, 10, 0, 0x11, 0, 2],
    );

    write(
        "qr_payload",
        "valid",
        format!(
            r#"{{"v":1,"server":"http://127.0.0.1:7300","code":"ABCD-EFGH-JKMN","campaign":"{}","key":"{}"}}"#,
            doc.to_url(),
            "2a".repeat(32)
        )
        .as_bytes(),
    );
    println!("seeds written under {}", root.display());
}
