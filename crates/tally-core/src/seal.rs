//! Device-side protection of signers: their personal fields are sealed with `age` to every
//! organizer recipient of the campaign (any one organizer's identity opens them), and the
//! duplicate token is an HMAC-SHA256, under a campaign key the server never sees, of the
//! normalized name and postal code, so two canvassers signing up the same person produce the
//! same token while the server learns nothing it could reverse.

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
}

/// Seals personal fields to all recipients.
pub fn seal(recipients: &[String], fields: &PersonalFields) -> Result<Vec<u8>, SealError> {
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
    let plaintext = serde_json::to_vec(fields).expect("personal fields serialize");
    let mut out = Vec::with_capacity(plaintext.len() + 200 * parsed.len());
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| SealError::Damaged(e.to_string()))?;
    writer
        .write_all(&plaintext)
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

/// Opens sealed personal fields with one organizer's identity.
pub fn open(identity: &age::x25519::Identity, sealed: &[u8]) -> Result<PersonalFields, SealError> {
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
    serde_json::from_slice(&plaintext).map_err(|e| SealError::Damaged(e.to_string()))
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
