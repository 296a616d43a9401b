//! Devices, their bearer tokens, and the one-time invites that enroll them.
//!
//! A device proves who it is with a bearer token: `tly_` followed by 64 hex digits (32 random
//! bytes), shown once when the device is created and never stored: the store keeps only its
//! SHA-256, so a seized database file does not let anyone sync as a device. Tokens come from
//! [`Store::create_admin`] (the first device of a new server) or from redeeming an invite.
//!
//! An invite is a one-time code an organizer shows (as a QR code, or read out): 12 characters
//! of Crockford's base32 (no I, L, O, U), shown as `XXXX-XXXX-XXXX`, 60 random bits. It too is
//! stored only as a hash, expires after its time to live, and enrolls exactly one device.

use std::fmt;

use rand::RngCore;
use rand::rngs::OsRng;
use rusqlite::{Connection, OptionalExtension, Row, params};
use sha2::{Digest, Sha256};
use tally_core::validate::Role;

use crate::Store;
use crate::error::{ReplaceRefusal, Result, StoreError};

/// A device's role read from its stored form: `server` is the server's own writer identity
/// (`tally_core::validate::Role::Server`), never a device's.
pub(crate) fn device_role(stored: &str) -> Result<Role> {
    Role::parse(stored)
        .filter(|r| *r != Role::Server)
        .ok_or_else(|| {
            StoreError::Invalid(format!(
                "unknown device role {stored:?}: use admin, organizer or canvasser"
            ))
        })
}

/// The role column `i` of a row (see [`device_role`]).
fn role_column(row: &Row<'_>, i: usize) -> rusqlite::Result<Role> {
    let stored: String = row.get(i)?;
    device_role(&stored).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// An enrolled device. Never carries its token or the token's hash.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    /// Random id (32 hex digits); the owner of its collection documents.
    pub device_id: String,
    /// What the person enrolling it called it ("Amina's phone").
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The campaign it works for; `None` for admins and cross-campaign organizers.
    pub campaign: Option<String>,
    /// When it was enrolled, ms since the Unix epoch.
    pub created_at: i64,
    /// When it was revoked; a revoked device no longer authenticates.
    pub revoked_at: Option<i64>,
    /// When it last authenticated (kept to the minute, see [`LAST_SEEN_RESOLUTION_MS`]).
    pub last_seen: Option<i64>,
    /// The device this one replaces: the phone held that device's token when it enrolled
    /// again (after a revocation or an expiry), and its records carry on under this one.
    #[serde(default)]
    pub replaces: Option<String>,
    /// The first device of the phone's chain of devices (its own id if it replaces none): a
    /// record id may appear in several collections of one lineage, never in two lineages.
    #[serde(default)]
    pub lineage: String,
}

impl Device {
    /// Whether its stored `last_seen` is within [`LAST_SEEN_RESOLUTION_MS`] of `now`, so that
    /// [`Store::record_seen`] has nothing to write.
    pub fn seen_recently(&self, now: i64) -> bool {
        self.last_seen
            .is_some_and(|seen| seen > now - LAST_SEEN_RESOLUTION_MS)
    }
}

/// Why a bearer token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No device has this token (or it is malformed).
    Unknown,
    /// The device was revoked at this time (ms since the Unix epoch).
    Revoked {
        /// When.
        at: i64,
    },
    /// The device has not been used for longer than the idle expiry.
    Expired {
        /// When it was last active (last seen, or enrolled), ms since the Unix epoch.
        last_active: i64,
    },
}

/// A device's bearer token, shown once. `Debug` hides it so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The token text, to hand to the device (once).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The token text, consuming the wrapper.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(tly_<redacted>)")
    }
}

/// A one-time invite code, as shown to people (`XXXX-XXXX-XXXX`). `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteCode(pub(crate) String);

impl InviteCode {
    /// The code as shown to people, e.g. `7K3M-Q9TZ-0HXW`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InviteCode(<redacted>)")
    }
}

/// `last_seen` is only rewritten when it is older than this, so that authenticating costs a
/// write at most once a minute per device, not once per connection.
pub const LAST_SEEN_RESOLUTION_MS: i64 = 60_000;

pub(crate) const TOKEN_PREFIX: &str = "tly_";
/// Crockford's base32: digits and capitals without I, L, O, U.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CODE_LEN: usize = 12;
const MAX_NAME_CHARS: usize = 100;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

pub(crate) fn new_id() -> String {
    hex::encode(random_bytes::<16>())
}

pub(crate) fn new_token() -> Token {
    Token(format!(
        "{TOKEN_PREFIX}{}",
        hex::encode(random_bytes::<32>())
    ))
}

pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new code: 12 symbols, each from 5 random bits (256 is a multiple of 32, so uniform).
pub(crate) fn new_code() -> String {
    random_bytes::<CODE_LEN>()
        .iter()
        .map(|byte| char::from(CODE_ALPHABET[usize::from(byte % 32)]))
        .collect()
}

/// Groups a normalized code as people read it: `XXXX-XXXX-XXXX`.
pub(crate) fn display_code(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    chars
        .chunks(4)
        .map(|group| group.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// Undoes typing variations: case, dashes and spaces, and the look-alikes O/I/L; `None` if what
/// is left is not a code at all.
pub(crate) fn normalize_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        })
        .collect();
    let valid = code.len() == CODE_LEN && code.bytes().all(|b| CODE_ALPHABET.contains(&b));
    valid.then_some(code)
}

pub(crate) fn code_hash(normalized: &str) -> [u8; 32] {
    Sha256::digest(format!("tally-invite:{normalized}").as_bytes()).into()
}

pub(crate) fn clean_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(StoreError::Invalid(format!(
            "a device name must have 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(name.to_owned())
}

/// The stored fields of an invite that redeeming it needs.
struct InviteRow {
    invite_id: String,
    campaign: Option<String>,
    role: Role,
    expires_at: i64,
    used_at: Option<i64>,
}

pub(crate) const DEVICE_COLUMNS: &str =
    "device_id, name, role, campaign, created_at, revoked_at, last_seen, replaces, lineage";

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        device_id: row.get(0)?,
        name: row.get(1)?,
        role: role_column(row, 2)?,
        campaign: row.get(3)?,
        created_at: row.get(4)?,
        revoked_at: row.get(5)?,
        last_seen: row.get(6)?,
        replaces: row.get(7)?,
        lineage: row.get(8)?,
    })
}

/// `insert_device` for a device that replaces `replaced` (its id and lineage).
fn insert_device(
    conn: &Connection,
    name: &str,
    role: Role,
    campaign: Option<&str>,
    now: i64,
    replaced: Option<(&str, &str)>,
) -> Result<(Device, Token)> {
    let device_id = new_id();
    let device = Device {
        lineage: replaced.map_or_else(|| device_id.clone(), |(_, l)| l.to_owned()),
        replaces: replaced.map(|(id, _)| id.to_owned()),
        device_id,
        name: clean_name(name)?,
        role,
        campaign: campaign.map(str::to_owned),
        created_at: now,
        revoked_at: None,
        last_seen: None,
    };
    let token = new_token();
    conn.execute(
        "INSERT INTO devices (device_id, name, role, campaign, token_hash, created_at, replaces, lineage)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            device.device_id,
            device.name,
            device.role.as_str(),
            device.campaign,
            token_hash(token.as_str()),
            device.created_at,
            device.replaces,
            device.lineage
        ],
    )?;
    Ok((device, token))
}

/// The proof a re-enrolling phone gives of the device it was before: that device's id and its
/// token (revoked or expired, it still proves the phone held it). `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Replaces<'a> {
    /// The old device's id.
    pub device_id: &'a str,
    /// The old device's token.
    pub token: &'a str,
}

impl fmt::Debug for Replaces<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replaces")
            .field("device_id", &self.device_id)
            .field("token", &"tly_<redacted>")
            .finish()
    }
}

/// Checks `proof` against the stored devices for an invite of `campaign`: the old device's id
/// and lineage, or why not.
fn check_replaced(
    conn: &Connection,
    proof: &Replaces<'_>,
    campaign: Option<&str>,
) -> Result<(String, String)> {
    let row: Option<(Vec<u8>, Option<String>, String)> = conn
        .query_row(
            "SELECT token_hash, campaign, lineage FROM devices WHERE device_id = ?1",
            [proof.device_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((hash, old_campaign, lineage)) = row else {
        return Err(StoreError::ReplaceRefused(ReplaceRefusal::UnknownDevice(
            proof.device_id.to_owned(),
        )));
    };
    if hash.as_slice() != token_hash(proof.token).as_slice() {
        return Err(StoreError::ReplaceRefused(ReplaceRefusal::WrongToken(
            proof.device_id.to_owned(),
        )));
    }
    if old_campaign.as_deref() != campaign {
        return Err(StoreError::ReplaceRefused(ReplaceRefusal::OtherCampaign(
            proof.device_id.to_owned(),
        )));
    }
    Ok((proof.device_id.to_owned(), lineage))
}

fn has_admin(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM devices WHERE role = 'admin' AND revoked_at IS NULL)",
        [],
        |row| row.get(0),
    )?)
}

impl Store {
    /// Whether a working (unrevoked) admin device exists.
    pub fn has_admin(&self) -> Result<bool> {
        self.with_conn(has_admin)
    }

    /// Creates the first admin device and returns it with its token (show it once). Fails with
    /// [`StoreError::AdminExists`] while an unrevoked admin exists.
    pub fn create_admin(&self, name: &str, now: i64) -> Result<(Device, Token)> {
        self.write(|tx| {
            if has_admin(tx.conn())? {
                return Err(StoreError::AdminExists);
            }
            insert_device(tx.conn(), name, Role::Admin, None, now, None)
        })
    }

    /// Creates a one-time invite that enrolls one device with `role` (and `campaign`), valid
    /// for `ttl_ms` from `now`. Returns the invite id (to list or audit) and the code (show it
    /// once).
    pub fn create_invite(
        &self,
        campaign: Option<&str>,
        role: Role,
        ttl_ms: i64,
        now: i64,
    ) -> Result<(String, InviteCode)> {
        if role == Role::Server {
            return Err(StoreError::Invalid(
                "an invite enrolls an admin, organizer or canvasser device, not the server's \
                 own identity: choose one of those roles"
                    .into(),
            ));
        }
        if ttl_ms <= 0 {
            return Err(StoreError::Invalid(format!(
                "an invite's time to live must be positive (got {ttl_ms} ms)"
            )));
        }
        let expires_at = now.checked_add(ttl_ms).ok_or_else(|| {
            StoreError::Invalid(format!(
                "an invite's time to live is too long ({ttl_ms} ms)"
            ))
        })?;
        let invite_id = new_id();
        let code = new_code();
        self.write(|tx| {
            tx.conn().execute(
                "INSERT INTO invites (invite_id, code_hash, campaign, role, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    invite_id,
                    code_hash(&code),
                    campaign,
                    role.as_str(),
                    now,
                    expires_at
                ],
            )?;
            Ok(())
        })?;
        Ok((invite_id, InviteCode(display_code(&code))))
    }

    /// Redeems an invite code (as typed: case, dashes and O/I/L look-alikes are forgiven) for a
    /// new device named `device_name`; returns the device and its token (show it once).
    /// Unknown, used and expired codes fail with [`StoreError::InviteUnknown`],
    /// [`StoreError::InviteUsed`] and [`StoreError::InviteExpired`].
    pub fn redeem_invite(
        &self,
        code: &str,
        device_name: &str,
        now: i64,
    ) -> Result<(Device, Token)> {
        self.redeem_invite_replacing(code, device_name, now, None)
    }

    /// [`Store::redeem_invite`] for a phone that was enrolled before as another device (its
    /// token revoked or expired): with `replaces`, the old device must exist, its token must
    /// match, and it must belong to the invite's campaign, else
    /// [`StoreError::ReplaceRefused`] and the invite stays unused (checked in the same
    /// transaction, before redeeming). The new device then replaces the old one and shares its
    /// lineage, and the old device is revoked (if it was not already).
    pub fn redeem_invite_replacing(
        &self,
        code: &str,
        device_name: &str,
        now: i64,
        replaces: Option<Replaces<'_>>,
    ) -> Result<(Device, Token)> {
        let name = clean_name(device_name)?;
        let hash = code_hash(&normalize_code(code).ok_or(StoreError::InviteUnknown)?);
        self.write(|tx| {
            let conn = tx.conn();
            let invite = conn
                .query_row(
                    "SELECT invite_id, campaign, role, expires_at, used_at
                     FROM invites WHERE code_hash = ?1",
                    [hash.as_slice()],
                    |row| {
                        Ok(InviteRow {
                            invite_id: row.get(0)?,
                            campaign: row.get(1)?,
                            role: role_column(row, 2)?,
                            expires_at: row.get(3)?,
                            used_at: row.get(4)?,
                        })
                    },
                )
                .optional()?
                .ok_or(StoreError::InviteUnknown)?;
            if invite.used_at.is_some() {
                return Err(StoreError::InviteUsed);
            }
            if now >= invite.expires_at {
                return Err(StoreError::InviteExpired);
            }
            let replaced = match &replaces {
                Some(proof) => Some(check_replaced(conn, proof, invite.campaign.as_deref())?),
                None => None,
            };
            let (device, token) = insert_device(
                conn,
                &name,
                invite.role,
                invite.campaign.as_deref(),
                now,
                replaced.as_ref().map(|(id, l)| (id.as_str(), l.as_str())),
            )?;
            if let Some((old, _)) = &replaced {
                conn.execute(
                    "UPDATE devices SET revoked_at = ?2 WHERE device_id = ?1 AND revoked_at IS NULL",
                    params![old, now],
                )?;
            }
            conn.execute(
                "UPDATE invites SET used_at = ?2, device_id = ?3 WHERE invite_id = ?1",
                params![invite.invite_id, now, device.device_id],
            )?;
            Ok((device, token))
        })
    }
    /// The device a bearer token belongs to, or `None` if the token is unknown, malformed or
    /// its device revoked; records `last_seen`. Tokens do not expire here; the server uses
    /// [`Store::check_token`] and [`Store::record_seen`].
    pub fn authenticate(&self, token: &str, now: i64) -> Result<Option<Device>> {
        let Ok(mut device) = self.check_token(token, now, None)? else {
            return Ok(None);
        };
        if self.record_seen(&device, now)? {
            device.last_seen = Some(now);
        }
        Ok(Some(device))
    }

    /// Checks a bearer token, reading only (so it works on a read-only connection and never
    /// waits for the writer): the device it belongs to, or why it is refused. With
    /// `idle_expiry_ms`, the token of a non-admin device that has not been used for that long
    /// (since it was last seen, or enrolled) has expired: a lost or abandoned phone's token dies
    /// on its own, while a phone in use never loses access mid-campaign. The admin's token does
    /// not expire (it lives in the data folder; revoke it to end it).
    pub fn check_token(
        &self,
        token: &str,
        now: i64,
        idle_expiry_ms: Option<i64>,
    ) -> Result<std::result::Result<Device, TokenRefusal>> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(Err(TokenRefusal::Unknown));
        }
        let hash = token_hash(token);
        let device = self.with_conn(|conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = ?1"),
                    [hash.as_slice()],
                    device_from_row,
                )
                .optional()?)
        })?;
        let Some(device) = device else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        if let Some(at) = device.revoked_at {
            return Ok(Err(TokenRefusal::Revoked { at }));
        }
        let last_active = device.last_seen.unwrap_or(device.created_at);
        if let Some(ttl) = idle_expiry_ms
            && device.role != Role::Admin
            && now.saturating_sub(last_active) > ttl
        {
            return Ok(Err(TokenRefusal::Expired { last_active }));
        }
        Ok(Ok(device))
    }

    /// Records that `device` was seen at `now`, if its stored `last_seen` is older than
    /// [`LAST_SEEN_RESOLUTION_MS`] (so at most one write a minute per device); returns whether
    /// it wrote.
    pub fn record_seen(&self, device: &Device, now: i64) -> Result<bool> {
        if device.seen_recently(now) {
            return Ok(false);
        }
        self.with_conn(|conn| {
            conn.execute(
                "UPDATE devices SET last_seen = max(coalesce(last_seen, 0), ?2) WHERE device_id = ?1",
                params![device.device_id, now],
            )?;
            Ok(true)
        })
    }

    /// Revokes a device: its token stops authenticating. Returns `false` if it was already
    /// revoked (its first revocation time is kept); [`StoreError::NotFound`] if unknown.
    pub fn revoke_device(&self, device_id: &str, now: i64) -> Result<bool> {
        self.write(|tx| {
            let changed = tx.conn().execute(
                "UPDATE devices SET revoked_at = ?2 WHERE device_id = ?1 AND revoked_at IS NULL",
                params![device_id, now],
            )?;
            if changed == 1 {
                return Ok(true);
            }
            let exists: bool = tx.conn().query_row(
                "SELECT EXISTS (SELECT 1 FROM devices WHERE device_id = ?1)",
                [device_id],
                |row| row.get(0),
            )?;
            if exists {
                Ok(false)
            } else {
                Err(StoreError::NotFound(format!("device {device_id:?}")))
            }
        })
    }

    /// One device, revoked or not.
    pub fn device(&self, device_id: &str) -> Result<Option<Device>> {
        self.with_conn(|conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?1"),
                    [device_id],
                    device_from_row,
                )
                .optional()?)
        })
    }

    /// Every device, revoked ones included, oldest first.
    pub fn list_devices(&self) -> Result<Vec<Device>> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY created_at, device_id"
            ))?;
            let rows = stmt.query_map([], device_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// The devices revoked at or after `since_ms`, earliest first: the server polls this to
    /// close revoked devices' connections.
    pub fn revoked_since(&self, since_ms: i64) -> Result<Vec<String>> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(
                "SELECT device_id FROM devices WHERE revoked_at >= ?1 ORDER BY revoked_at",
            )?;
            let rows = stmt.query_map([since_ms], |row| row.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_typable_and_normalize() {
        let code = new_code();
        assert_eq!(code.len(), CODE_LEN);
        let shown = display_code(&code);
        assert_eq!(shown.len(), CODE_LEN + 2);
        assert_eq!(normalize_code(&shown).as_deref(), Some(code.as_str()));
        assert_eq!(
            normalize_code(&shown.to_lowercase().replace('-', " ")).as_deref(),
            Some(code.as_str())
        );
        assert_eq!(
            normalize_code("O0IL-1111-1111").as_deref(),
            Some("001111111111")
        );
        assert_eq!(normalize_code("UUUU-UUUU-UUUU"), None);
        assert_eq!(normalize_code("ABC"), None);
    }

    #[test]
    fn tokens_have_the_documented_shape_and_hide_in_debug() {
        let token = new_token();
        assert!(token.as_str().starts_with(TOKEN_PREFIX));
        assert_eq!(token.as_str().len(), TOKEN_PREFIX.len() + 64);
        assert!(!format!("{token:?}").contains(&token.as_str()[4..]));
        assert_ne!(new_token(), token);
    }

    #[test]
    fn device_roles_round_trip_as_strings() {
        for role in [Role::Admin, Role::Organizer, Role::Canvasser] {
            assert_eq!(device_role(role.as_str()).ok(), Some(role));
        }
        for stored in ["root", "server"] {
            assert!(matches!(device_role(stored), Err(StoreError::Invalid(_))));
        }
    }
}
