//! Document ids as automerge-repo spells them.
//!
//! A document id is 16 random bytes. On the wire and in `automerge:` URLs it is the
//! base58check encoding of those bytes (bs58 alphabet, 4-byte double-SHA256 checksum
//! appended before encoding, no version byte), exactly what the JS
//! `@automerge/automerge-repo` does with `bs58check.encode(binaryDocumentId)`.
//! [`DocumentId`] can only hold a well-formed id: parse, don't validate.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// The prefix of an automerge URL: `automerge:<base58check id>`.
pub const URL_PREFIX: &str = "automerge:";

/// Longest base58check text we try to decode. 16 bytes plus a 4-byte checksum encode to
/// at most 28 characters; anything much longer is rejected before decoding, because
/// base58 decoding is quadratic in the input length and the input is untrusted.
const MAX_ENCODED_LEN: usize = 64;

/// The id of one automerge document, 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentId([u8; 16]);

/// Why a text is not a document id. Each message says what was wrong with the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocIdError {
    #[error("empty document id")]
    Empty,
    #[error("document id is {len} characters long; a base58check document id is at most 28")]
    TooLong { len: usize },
    #[error("not base58check: {character:?} at index {index} is not in the base58 alphabet")]
    NotBase58 { character: char, index: usize },
    #[error("not base58check: the checksum does not match (mistyped or truncated id?)")]
    BadChecksum,
    #[error("not base58check: too short to carry a checksum")]
    NoChecksum,
    #[error("wrong length {0}, a document id is 16 bytes")]
    WrongLength(usize),
    #[error("not an automerge URL: expected it to start with \"automerge:\"")]
    NotAUrl,
    #[error(
        "automerge URL has extra parts after the id ({0:?}); only plain `automerge:<id>` URLs are supported"
    )]
    UrlExtra(String),
}

impl DocumentId {
    /// A document id from its 16 raw bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A document id from a byte slice, which must be exactly 16 bytes long.
    pub fn try_from_slice(bytes: &[u8]) -> Result<Self, DocIdError> {
        let arr: [u8; 16] = bytes
            .try_into()
            .map_err(|_| DocIdError::WrongLength(bytes.len()))?;
        Ok(Self(arr))
    }

    /// A new random document id. Randomness is passed in so tests can be deterministic.
    pub fn random(rng: &mut impl Rng) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill(&mut bytes);
        Self(bytes)
    }

    /// The 16 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The `automerge:<id>` URL of this document.
    pub fn to_url(&self) -> String {
        format!("{URL_PREFIX}{self}")
    }

    /// Parses an `automerge:<id>` URL.
    pub fn from_url(url: &str) -> Result<Self, DocIdError> {
        let rest = url.strip_prefix(URL_PREFIX).ok_or(DocIdError::NotAUrl)?;
        if let Some(pos) = rest.find(|c: char| !c.is_ascii_alphanumeric()) {
            let extra: String = rest[pos..].chars().take(40).collect();
            return Err(DocIdError::UrlExtra(extra));
        }
        rest.parse()
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(&self.0).with_check().into_string())
    }
}

impl fmt::Debug for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentId({self})")
    }
}

impl FromStr for DocumentId {
    type Err = DocIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(DocIdError::Empty);
        }
        if s.len() > MAX_ENCODED_LEN {
            return Err(DocIdError::TooLong {
                len: s.chars().count(),
            });
        }
        let bytes = bs58::decode(s)
            .with_check(None)
            .into_vec()
            .map_err(|e| match e {
                bs58::decode::Error::InvalidCharacter { character, index } => {
                    DocIdError::NotBase58 { character, index }
                }
                bs58::decode::Error::NonAsciiCharacter { index } => DocIdError::NotBase58 {
                    character: s[index..].chars().next().unwrap_or('?'),
                    index,
                },
                bs58::decode::Error::NoChecksum => DocIdError::NoChecksum,
                _ => DocIdError::BadChecksum,
            })?;
        Self::try_from_slice(&bytes)
    }
}

impl From<[u8; 16]> for DocumentId {
    fn from(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl serde::Serialize for DocumentId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DocumentId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DocumentId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base58check document id")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DocumentId, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn round_trips_through_text_and_url() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let id = DocumentId::random(&mut rng);
            let text = id.to_string();
            assert!(text.len() <= 28, "{text}");
            assert_eq!(text.parse::<DocumentId>().unwrap(), id);
            assert_eq!(DocumentId::from_url(&id.to_url()).unwrap(), id);
        }
    }

    #[test]
    fn known_vector_matches_bs58check() {
        // All-zero id: bs58check of 16 zero bytes (leading zero bytes become '1's).
        let id = DocumentId::from_bytes([0; 16]);
        let text = id.to_string();
        assert!(text.starts_with("1111111111111111"), "{text}");
        assert_eq!(text.parse::<DocumentId>().unwrap(), id);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!("".parse::<DocumentId>(), Err(DocIdError::Empty));
        assert!(matches!(
            "abc0".parse::<DocumentId>(),
            Err(DocIdError::NotBase58 {
                character: '0',
                index: 3
            })
        ));
        // 12 bytes with a valid checksum.
        let short = bs58::encode([1u8; 12]).with_check().into_string();
        let err = short.parse::<DocumentId>().unwrap_err();
        assert_eq!(err, DocIdError::WrongLength(12));
        assert_eq!(
            err.to_string(),
            "wrong length 12, a document id is 16 bytes"
        );
        // Flip one character of a valid id: checksum mismatch.
        let good = DocumentId::from_bytes([9; 16]).to_string();
        let mut chars: Vec<char> = good.chars().collect();
        chars[5] = if chars[5] == 'a' { 'b' } else { 'a' };
        let bad: String = chars.into_iter().collect();
        assert_eq!(bad.parse::<DocumentId>(), Err(DocIdError::BadChecksum));
        assert!(matches!(
            "x".repeat(500).parse::<DocumentId>(),
            Err(DocIdError::TooLong { len: 500 })
        ));
        assert!(matches!(
            "é".parse::<DocumentId>(),
            Err(DocIdError::NotBase58 { .. })
        ));
        assert_eq!(DocumentId::from_url(&good), Err(DocIdError::NotAUrl));
        assert!(matches!(
            DocumentId::from_url(&format!("automerge:{good}#abc")),
            Err(DocIdError::UrlExtra(_))
        ));
    }

    #[test]
    fn serde_as_string() {
        let id = DocumentId::from_bytes([3; 16]);
        let mut buf = Vec::new();
        ciborium::into_writer(&id, &mut buf).unwrap();
        let value: ciborium::Value = ciborium::from_reader(buf.as_slice()).unwrap();
        assert_eq!(value, ciborium::Value::Text(id.to_string()));
        let back: DocumentId = ciborium::from_reader(buf.as_slice()).unwrap();
        assert_eq!(back, id);
    }
}
