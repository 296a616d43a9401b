//! Device-side protection of signers: their personal fields are sealed with `age` to every
//! organizer recipient of the campaign (any one organizer's identity opens them), and the
//! duplicate token is an HMAC-SHA256, under a campaign key the server never sees, of the
//! normalized name and postal code, so two canvassers signing up the same person produce the
//! same token while the server learns nothing it could reverse.
//!
//! Two sealed formats exist. **v1** (today's documents written before erasure existed): the
//! personal fields sealed with age straight to the recipients; it lives in the collection
//! document's history for ever, so it cannot be erased. **v2** (`tally-seal-2`): the fields are
//! encrypted with AES-256-GCM under a [`RecordKey`] of their own, and only that key is sealed
//! with age ([`RecordKey::wrap`]); the wrapped key is kept outside every document (the server's
//! key table), so deleting it erases the record for good (crypto-shredding,
//! docs/security.md "Erasure").

use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;

/// The personal fields of a signer: only ever stored sealed.
#[derive(Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PersonalFields {
    /// Full name as given.
    pub name: String,
    /// Email, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Street address, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street: Option<String>,
    /// Full postal code, normalized ("M5V2T6").
    pub postal_code: String,
}

impl std::fmt::Debug for PersonalFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PersonalFields(<redacted>)")
    }
}

/// Errors of sealing and opening.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A recipient string is not an age X25519 recipient.
    #[error("{0:?} is not an age X25519 recipient (age1...): check the campaign's recipients")]
    BadRecipient(String),
    /// No recipient to seal to.
    #[error(
        "the campaign has no recipients to seal signers' details to: an organizer must add one"
    )]
    NoRecipients,
    /// The identity does not open this blob.
    #[error(
        "this identity cannot open the sealed details: use an identity whose recipient the campaign lists"
    )]
    NotARecipient,
    /// The blob is damaged or not an age file.
    #[error("the sealed details are damaged or not an age file: {0}")]
    Damaged(String),
    /// An identity file could not be parsed.
    #[error("not an age identity (AGE-SECRET-KEY-1...): {0}")]
    BadIdentity(String),
    /// A v2 blob did not open with this record key (another record's key, a squatter's, or
    /// damaged bytes: AES-GCM's tag tells them apart from the right key).
    #[error(
        "this record key does not open the sealed details (the key of another record, or damaged bytes)"
    )]
    WrongKey,
}

/// The first 12 bytes of a v2 sealed blob.
pub const SEAL2_MAGIC: &[u8; 12] = b"tally-seal-2";
/// The AES-GCM nonce's length in a v2 blob.
pub const SEAL2_NONCE_LEN: usize = 12;
/// The AES-GCM tag's length.
pub const SEAL2_TAG_LEN: usize = 16;
/// The shortest v2 blob: magic, nonce and tag around an empty plaintext.
pub const SEAL2_MIN_LEN: usize = SEAL2_MAGIC.len() + SEAL2_NONCE_LEN + SEAL2_TAG_LEN;

/// Which sealed format a blob is in: `Some(1)` (age), `Some(2)` (`tally-seal-2`), or `None`.
pub fn version(sealed: &[u8]) -> Option<u8> {
    if sealed.starts_with(crate::collection::AGE_MAGIC) {
        Some(1)
    } else if sealed.starts_with(SEAL2_MAGIC) && sealed.len() >= SEAL2_MIN_LEN {
        Some(2)
    } else {
        None
    }
}

/// One signature's own key (32 random bytes, AES-256-GCM): it encrypts that record's personal
/// fields (v2), and is kept only wrapped to the organizers' recipients, outside every document.
/// Its Debug output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordKey([u8; 32]);

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKey(<redacted>)")
    }
}

impl RecordKey {
    /// A new random key.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        RecordKey(k)
    }

    /// From raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        RecordKey(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key sealed with age (binary, X25519) to every recipient: what the phone uploads and
    /// the server keeps in its key table.
    pub fn wrap(&self, recipients: &[String]) -> Result<Vec<u8>, SealError> {
        age_seal(recipients, &self.0)
    }

    /// Opens a wrapped key with one organizer's identity.
    pub fn unwrap(identity: &age::x25519::Identity, wrapped: &[u8]) -> Result<Self, SealError> {
        let bytes = age_open(identity, wrapped)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            SealError::Damaged(format!(
                "a wrapped record key holds 32 bytes, got {}",
                b.len()
            ))
        })?;
        Ok(RecordKey(arr))
    }
}

/// Seals personal fields in format v2 under `key` with a random nonce; the record id is bound as
/// associated data, so a blob copied under another record's id does not open.
pub fn seal_v2(
    key: &RecordKey,
    record_id: &str,
    fields: &PersonalFields,
) -> Result<Vec<u8>, SealError> {
    use rand::RngCore;
    let mut nonce = [0u8; SEAL2_NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    seal_v2_with_nonce(key, nonce, record_id, fields)
}

/// [`seal_v2`] with a given nonce (the shared test vectors; never reuse a nonce under one key).
pub fn seal_v2_with_nonce(
    key: &RecordKey,
    nonce: [u8; SEAL2_NONCE_LEN],
    record_id: &str,
    fields: &PersonalFields,
) -> Result<Vec<u8>, SealError> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key.0).expect("a 32-byte key");
    let plaintext = serde_json::to_vec(fields).expect("personal fields serialize");
    let ct = cipher
        .encrypt(
            aes_gcm::Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: record_id.as_bytes(),
            },
        )
        .map_err(|e| SealError::Damaged(e.to_string()))?;
    let mut out = Vec::with_capacity(SEAL2_MAGIC.len() + SEAL2_NONCE_LEN + ct.len());
    out.extend_from_slice(SEAL2_MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a v2 blob with its record key. [`SealError::WrongKey`] when the tag does not match (so
/// a caller holding several candidate keys tries the next one).
pub fn open_v2(
    key: &RecordKey,
    record_id: &str,
    sealed: &[u8],
) -> Result<PersonalFields, SealError> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    if version(sealed) != Some(2) {
        return Err(SealError::Damaged(
            "not a tally-seal-2 blob (too short or another format)".into(),
        ));
    }
    let nonce = &sealed[SEAL2_MAGIC.len()..SEAL2_MAGIC.len() + SEAL2_NONCE_LEN];
    let ct = &sealed[SEAL2_MAGIC.len() + SEAL2_NONCE_LEN..];
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key.0).expect("a 32-byte key");
    let plaintext = cipher
        .decrypt(
            aes_gcm::Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: record_id.as_bytes(),
            },
        )
        .map_err(|_| SealError::WrongKey)?;
    serde_json::from_slice(&plaintext).map_err(|e| SealError::Damaged(e.to_string()))
}

/// Seals personal fields to all recipients (format v1: cannot be erased, see the module's
/// header; phones write v2).
pub fn seal(recipients: &[String], fields: &PersonalFields) -> Result<Vec<u8>, SealError> {
    let plaintext = serde_json::to_vec(fields).expect("personal fields serialize");
    age_seal(recipients, &plaintext)
}

/// Encrypts `plaintext` with age (binary, X25519) to every recipient.
fn age_seal(recipients: &[String], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let parsed: Vec<age::x25519::Recipient> = recipients
        .iter()
        .map(|r| r.parse().map_err(|_| SealError::BadRecipient(r.clone())))
        .collect::<Result<_, _>>()?;
    if parsed.is_empty() {
        return Err(SealError::NoRecipients);
    }
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| SealError::Damaged(e.to_string()))?;
    let mut out = Vec::with_capacity(plaintext.len() + 200 * parsed.len());
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| SealError::Damaged(e.to_string()))?;
    writer
        .write_all(plaintext)
        .map_err(|e| SealError::Damaged(e.to_string()))?;
    writer
        .finish()
        .map_err(|e| SealError::Damaged(e.to_string()))?;
    Ok(out)
}

/// Parses an age identity (the text of an identity file; comment lines are skipped).
pub fn parse_identity(text: &str) -> Result<age::x25519::Identity, SealError> {
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .ok_or_else(|| SealError::BadIdentity("no AGE-SECRET-KEY-1... line found".into()))?
        .parse()
        .map_err(|e: &str| SealError::BadIdentity(e.to_string()))
}

/// Opens v1 sealed personal fields with one organizer's identity.
pub fn open(identity: &age::x25519::Identity, sealed: &[u8]) -> Result<PersonalFields, SealError> {
    let plaintext = age_open(identity, sealed)?;
    serde_json::from_slice(&plaintext).map_err(|e| SealError::Damaged(e.to_string()))
}

/// Decrypts an age file with one identity.
fn age_open(identity: &age::x25519::Identity, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    let decryptor =
        age::Decryptor::new_buffered(sealed).map_err(|e| SealError::Damaged(e.to_string()))?;
    let mut reader = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => SealError::NotARecipient,
            other => SealError::Damaged(other.to_string()),
        })?;
    let mut plaintext = Vec::new();
    reader
        .read_to_end(&mut plaintext)
        .map_err(|e| SealError::Damaged(e.to_string()))?;
    Ok(plaintext)
}

/// A campaign's duplicate key: 32 random bytes that devices get at enrollment and the server never
/// sees. Its Debug output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct DuplicateKey([u8; 32]);

impl std::fmt::Debug for DuplicateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DuplicateKey(<redacted>)")
    }
}

impl DuplicateKey {
    /// A new random key.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        DuplicateKey(k)
    }

    /// From raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DuplicateKey(bytes)
    }

    /// Lower-case hex, for the enrollment payload.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex form.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let bytes = hex::decode(s.trim())
            .map_err(|e| format!("the campaign duplicate key is not hex: {e}"))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "the campaign duplicate key is 32 bytes (64 hex digits), got {}",
                b.len()
            )
        })?;
        Ok(DuplicateKey(arr))
    }

    fn mac(&self, parts: &[&str]) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(&[0]);
            }
            mac.update(p.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// The duplicate token of a signer: HMAC-SHA256 of the normalized name and postal code.
    pub fn duplicate_token(&self, name: &str, postal_code: &str) -> String {
        self.mac(&[
            "signer",
            &normalize_name(name),
            &normalize_postal(postal_code),
        ])
    }

    /// The attendee token of a person checked in to an event (by normalized name).
    pub fn attendee_token(&self, name: &str) -> String {
        self.mac(&["attendee", &normalize_name(name)])
    }
}

/// Normalizes a name: Unicode NFKC, case-folded, whitespace collapsed to single spaces, trimmed.
pub fn normalize_name(name: &str) -> String {
    let folded: String = name
        .nfkc()
        .collect::<String>()
        .to_lowercase()
        .nfkc()
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Normalizes a postal code for hashing: NFKC, upper case, no whitespace.
pub fn normalize_postal(code: &str) -> String {
    code.nfkc()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect()
}

/// Is `s` a duplicate or attendee token (64 lower-case hex digits)?
pub fn is_token(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    /// `n` fresh identities (as text) and their recipients.
    pub(crate) fn recipients(n: usize) -> (Vec<String>, Vec<String>) {
        let ids: Vec<age::x25519::Identity> =
            (0..n).map(|_| age::x25519::Identity::generate()).collect();
        (
            ids.iter()
                .map(|i| i.to_string().expose_secret().to_string())
                .collect(),
            ids.iter().map(|i| i.to_public().to_string()).collect(),
        )
    }

    fn fields() -> PersonalFields {
        PersonalFields {
            name: "Amara Okafor-Lindqvist".into(),
            email: Some("amara@example.org".into()),
            phone: None,
            street: Some("12 Spadina Ave".into()),
            postal_code: "M5V2T6".into(),
        }
    }

    #[test]
    fn sealed_to_two_opened_by_either() {
        let (ids, recs) = recipients(2);
        let sealed = seal(&recs, &fields()).unwrap();
        for id in &ids {
            let identity = parse_identity(&format!("# created: today\n{id}\n")).unwrap();
            assert_eq!(open(&identity, &sealed).unwrap(), fields());
        }
        let needle = b"Amara";
        assert!(
            !sealed.windows(needle.len()).any(|w| w == needle),
            "sealed bytes contain the name"
        );
        let stranger = age::x25519::Identity::generate();
        assert!(matches!(
            open(&stranger, &sealed),
            Err(SealError::NotARecipient)
        ));
        assert!(matches!(
            open(&parse_identity(&ids[0]).unwrap(), b"garbage"),
            Err(SealError::Damaged(_))
        ));
    }

    #[test]
    fn v2_opens_with_its_key_only_and_its_record_id_only() {
        let (ids, recs) = recipients(2);
        let key = RecordKey::generate();
        let sealed = seal_v2(&key, "rec-1", &fields()).unwrap();
        assert_eq!(version(&sealed), Some(2));
        assert!(!sealed.windows(5).any(|w| w == b"Amara"));
        assert_eq!(open_v2(&key, "rec-1", &sealed).unwrap(), fields());
        // Another record's key (a squatter's), or the blob under another record id: the tag.
        assert!(matches!(
            open_v2(&RecordKey::generate(), "rec-1", &sealed),
            Err(SealError::WrongKey)
        ));
        assert!(matches!(
            open_v2(&key, "rec-2", &sealed),
            Err(SealError::WrongKey)
        ));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            open_v2(&key, "rec-1", &flipped),
            Err(SealError::WrongKey)
        ));
        assert!(open_v2(&key, "rec-1", b"tally-seal-2").is_err());
        // The wrapped key opens with either organizer's identity, and with no one else's.
        let wrapped = key.wrap(&recs).unwrap();
        assert_eq!(version(&wrapped), Some(1), "an age file");
        for id in &ids {
            let identity = parse_identity(id).unwrap();
            assert_eq!(RecordKey::unwrap(&identity, &wrapped).unwrap(), key);
        }
        assert!(matches!(
            RecordKey::unwrap(&age::x25519::Identity::generate(), &wrapped),
            Err(SealError::NotARecipient)
        ));
        // A v1 blob is no v2 blob.
        let v1 = seal(&recs, &fields()).unwrap();
        assert_eq!(version(&v1), Some(1));
        assert!(open_v2(&key, "rec-1", &v1).is_err());
        assert_eq!(format!("{key:?}"), "RecordKey(<redacted>)");
    }

    #[test]
    fn seal_refuses_bad_recipients() {
        assert!(matches!(seal(&[], &fields()), Err(SealError::NoRecipients)));
        assert!(matches!(
            seal(&["age1nope".into()], &fields()),
            Err(SealError::BadRecipient(_))
        ));
    }

    #[test]
    fn duplicate_tokens_normalize() {
        let key = DuplicateKey::from_bytes([7; 32]);
        let a = key.duplicate_token("  Amara   OKAFOR ", "m5v 2t6");
        let b = key.duplicate_token("amara okafor", "M5V2T6");
        assert_eq!(a, b);
        assert!(is_token(&a));
        // NFKC: full-width letters fold to ASCII.
        assert_eq!(key.duplicate_token("ＡＭＡＲＡ okafor", "M5V2T6"), a);
        assert_ne!(key.duplicate_token("Amara Okafor", "M5V2T7"), a);
        assert_ne!(
            DuplicateKey::from_bytes([8; 32]).duplicate_token("Amara Okafor", "M5V2T6"),
            a
        );
        assert_ne!(key.attendee_token("Amara Okafor"), a);
        let hexed = DuplicateKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(hexed, key);
        assert!(DuplicateKey::from_hex("abcd").is_err());
        assert_eq!(format!("{key:?}"), "DuplicateKey(<redacted>)");
    }
}
