//! The enrollment payload an organizer's `tally invite` prints (and shows as a QR code):
//!
//! ```json
//! {"v":1,"server":"http://127.0.0.1:7300","code":"ABCD-EFGH-JKMN",
//!  "campaign":"automerge:<base58check doc id>","key":"<64 hex: campaign duplicate key>"}
//! ```
//!
//! Parsed strictly into an [`EnrollPayload`] that cannot hold a bad value; each refusal names the
//! field. Unknown extra fields are ignored (the version number guards incompatible changes).
//!
//! Its own crate below the phone's library (`tally-client` re-exports it) so that the fuzz
//! target (`crates/tally-fuzz`) drives the very parser the phone runs without depending on the
//! phone.

use serde_json::Value;
use tally_core::seal::DuplicateKey;
use tally_proto::DocumentId;

/// Why an enrollment payload (the organizer's QR code) was refused: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("enrollment code, field `{field}`: {message}")]
pub struct PayloadError {
    /// The payload field, e.g. "server" or "key".
    pub field: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// The payload version this build reads.
pub const PAYLOAD_VERSION: u64 = 1;

/// A parsed enrollment payload. Its Debug output hides the code and the key.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollPayload {
    /// The server's base URL, `http` or `https`, without a trailing slash.
    pub server: String,
    /// The one-time enrollment code.
    pub code: String,
    /// The campaign document.
    pub campaign: DocumentId,
    /// The campaign's duplicate key (HMAC key for duplicate and attendee tokens).
    pub key: DuplicateKey,
}

impl std::fmt::Debug for EnrollPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollPayload")
            .field("server", &self.server)
            .field("campaign", &self.campaign)
            .finish_non_exhaustive()
    }
}

fn err(field: &'static str, message: impl Into<String>) -> PayloadError {
    PayloadError {
        field,
        message: message.into(),
    }
}

fn text<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, PayloadError> {
    match obj.get(field) {
        None | Some(Value::Null) => {
            Err(err(field, "missing: scan the whole enrollment code again"))
        }
        Some(Value::String(s)) => Ok(s.trim()),
        Some(other) => Err(err(field, format!("expected text, found {other}"))),
    }
}

/// The payload's JSON in the invite's QR link (`{server}/app/#` and the URI-encoded JSON, what
/// a phone's camera reads), or `text` itself when it is not such a link.
fn from_link(text: &str) -> Result<std::borrow::Cow<'_, str>, PayloadError> {
    let t = text.trim();
    let Some((_, fragment)) = t.split_once('#').filter(|_| !t.starts_with('{')) else {
        return Ok(std::borrow::Cow::Borrowed(t));
    };
    let bytes = fragment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = fragment
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(err(
                    "payload",
                    "the link's code after # is damaged: scan the QR code again",
                ));
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| {
            err(
                "payload",
                "the link's code after # is not text: scan the QR code again",
            )
        })
}

impl EnrollPayload {
    /// Parses the JSON text of a payload, or the invite's QR link that carries it after `#`.
    pub fn parse(json: &str) -> Result<EnrollPayload, PayloadError> {
        let json = from_link(json)?;
        let value: Value = serde_json::from_str(json.trim()).map_err(|e| {
            err(
                "payload",
                format!(
                    "not JSON ({e}): paste the whole text the organizer's `tally invite` printed"
                ),
            )
        })?;
        let Value::Object(obj) = value else {
            return Err(err(
                "payload",
                "expected a JSON object like {\"v\":1,\"server\":...}",
            ));
        };
        match obj.get("v") {
            None => return Err(err("v", "missing: this is not a tally enrollment code")),
            Some(Value::Number(n)) if n.as_u64() == Some(PAYLOAD_VERSION) => {}
            Some(other) => {
                return Err(err(
                    "v",
                    format!(
                        "unknown version {other}: this app reads version {PAYLOAD_VERSION}; update the app or ask the organizer for a code from a matching server"
                    ),
                ));
            }
        }
        let server = parse_server(text(&obj, "server")?)?;
        let code = text(&obj, "code")?;
        if code.is_empty()
            || code.len() > 64
            || !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(err(
                "code",
                format!(
                    "{code:?} is not an enrollment code (letters, digits and dashes, like ABCD-EFGH-JKMN)"
                ),
            ));
        }
        let campaign_url = text(&obj, "campaign")?;
        let campaign = DocumentId::from_url(campaign_url).map_err(|e| {
            err(
                "campaign",
                format!("{campaign_url:?} is not a document URL (automerge:<id>): {e}"),
            )
        })?;
        let key_text = text(&obj, "key")?;
        if key_text.len() != 64 || !key_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(
                "key",
                format!(
                    "the campaign key is 64 hex digits, got {} characters{}",
                    key_text.chars().count(),
                    if key_text.bytes().all(|b| b.is_ascii_hexdigit()) {
                        ""
                    } else {
                        " (not all hex)"
                    }
                ),
            ));
        }
        let key =
            DuplicateKey::from_hex(&key_text.to_ascii_lowercase()).map_err(|m| err("key", m))?;
        Ok(EnrollPayload {
            server,
            code: code.to_string(),
            campaign,
            key,
        })
    }

    /// The enrollment endpoint: `{server}/api/v1/enroll`.
    pub fn enroll_url(&self) -> String {
        format!("{}/api/v1/enroll", self.server)
    }
}

/// Checks a server base URL: `http`/`https`, a host, no query, fragment or credentials.
fn parse_server(raw: &str) -> Result<String, PayloadError> {
    let url = url::Url::parse(raw).map_err(|e| {
        err(
            "server",
            format!("{raw:?} is not a URL ({e}); expected like https://tally.example.org"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(err(
            "server",
            format!(
                "{raw:?} must start with http:// or https://, not {}://",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(err("server", format!("{raw:?} names no host")));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(err(
            "server",
            format!("{raw:?} must be a plain base URL, without ?query, #fragment or user@"),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// The WebSocket sync URL of a server base URL: `http` becomes `ws`, `https` becomes `wss`, and
/// `/sync` is appended to the path.
pub fn sync_url(server: &str) -> Result<String, PayloadError> {
    let base = parse_server(server)?;
    let rest = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        return Err(err(
            "server",
            format!("{server:?} is neither http nor https"),
        ));
    };
    Ok(format!("{rest}/sync"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_invite_link_carries_the_payload() {
        let json = r#"{"v":1,"server":"http://127.0.0.1:7300","code":"ABCD-EFGH-JKMN","campaign":"automerge:2d9aRMNdCbw8HoPDMKRN2HSeoJNi","key":"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"}"#;
        // As `tally invite` and the dashboard write it (JavaScript's encodeURIComponent).
        let encoded: String = json
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let link = format!("http://127.0.0.1:7300/app/#{encoded}");
        assert_eq!(
            EnrollPayload::parse(&link).unwrap(),
            EnrollPayload::parse(json).unwrap()
        );
        assert_eq!(
            EnrollPayload::parse("http://x/app/#%7B%2")
                .unwrap_err()
                .field,
            "payload"
        );
    }

    #[test]
    fn sync_urls() {
        assert_eq!(
            sync_url("http://127.0.0.1:7300").unwrap(),
            "ws://127.0.0.1:7300/sync"
        );
        assert_eq!(
            sync_url("https://t.example.org/").unwrap(),
            "wss://t.example.org/sync"
        );
        assert_eq!(
            sync_url("https://t.example.org/tally/").unwrap(),
            "wss://t.example.org/tally/sync"
        );
    }
}
