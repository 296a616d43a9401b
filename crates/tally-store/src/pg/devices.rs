//! Devices, tokens and invites on PostgreSQL, as in `crate::devices` (SQLite), whose doc
//! comments say what each call promises; tokens and codes are made and hashed by the same
//! functions there.
//!
//! Several servers on one database: redeeming locks the invite's row (`FOR UPDATE`), so a code
//! enrolls one device even when two phones send it to two servers at once; creating the admin
//! takes an advisory lock, so two servers' `tally serve --init` make one admin.

use postgres::{GenericClient, Row};
use tally_core::validate::Role;

use crate::devices::{
    DEVICE_COLUMNS, Device, InviteCode, Replaces, TOKEN_PREFIX, Token, TokenRefusal, clean_name,
    code_hash, device_role, display_code, new_code, new_id, new_token, normalize_code, token_hash,
};
use crate::error::{ReplaceRefusal, Result, StoreError};

use super::PgStore;

fn device_from_row(row: &Row) -> Result<Device> {
    Ok(Device {
        device_id: row.get(0),
        name: row.get(1),
        role: device_role(row.get(2))?,
        campaign: row.get(3),
        created_at: row.get(4),
        revoked_at: row.get(5),
        last_seen: row.get(6),
        replaces: row.get(7),
        lineage: row.get(8),
    })
}

fn insert_device(
    conn: &mut impl GenericClient,
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
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &device.device_id,
            &device.name,
            &device.role.as_str(),
            &device.campaign,
            &token_hash(token.as_str()).as_slice(),
            &device.created_at,
            &device.replaces,
            &device.lineage,
        ],
    )?;
    Ok((device, token))
}

fn check_replaced(
    conn: &mut impl GenericClient,
    proof: &Replaces<'_>,
    campaign: Option<&str>,
) -> Result<(String, String)> {
    let Some(row) = conn.query_opt(
        "SELECT token_hash, campaign, lineage FROM devices WHERE device_id = $1",
        &[&proof.device_id],
    )?
    else {
        return Err(StoreError::ReplaceRefused(ReplaceRefusal::UnknownDevice(
            proof.device_id.to_owned(),
        )));
    };
    let hash: &[u8] = row.get(0);
    let old_campaign: Option<String> = row.get(1);
    if hash != token_hash(proof.token).as_slice() {
        return Err(StoreError::ReplaceRefused(ReplaceRefusal::WrongToken(
            proof.device_id.to_owned(),
        )));
    }
    if old_campaign.as_deref() != campaign {
        return Err(StoreError::ReplaceRefused(ReplaceRefusal::OtherCampaign(
            proof.device_id.to_owned(),
        )));
    }
    Ok((proof.device_id.to_owned(), row.get(2)))
}

fn has_admin(conn: &mut impl GenericClient) -> Result<bool> {
    Ok(conn
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM devices WHERE role = 'admin' AND revoked_at IS NULL)",
            &[],
        )?
        .get(0))
}

impl PgStore {
    /// Whether a working (unrevoked) admin device exists.
    pub fn has_admin(&self) -> Result<bool> {
        self.read(|tx| has_admin(tx))
    }

    /// Creates the first admin device and its token; [`StoreError::AdminExists`] while an
    /// unrevoked admin exists.
    pub fn create_admin(&self, name: &str, now: i64) -> Result<(Device, Token)> {
        self.write(|tx| {
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('tally admin ' || current_schema()))",
                &[],
            )?;
            if has_admin(tx)? {
                return Err(StoreError::AdminExists);
            }
            insert_device(tx, name, Role::Admin, None, now, None)
        })
    }

    /// Creates a one-time invite (see `Store::create_invite`).
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
            tx.execute(
                "INSERT INTO invites (invite_id, code_hash, campaign, role, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &invite_id,
                    &code_hash(&code).as_slice(),
                    &campaign,
                    &role.as_str(),
                    &now,
                    &expires_at,
                ],
            )?;
            Ok(())
        })?;
        Ok((invite_id, InviteCode(display_code(&code))))
    }

    /// Redeems an invite for a new phone.
    pub fn redeem_invite(
        &self,
        code: &str,
        device_name: &str,
        now: i64,
    ) -> Result<(Device, Token)> {
        self.redeem_invite_replacing(code, device_name, now, None)
    }

    /// Redeems an invite, optionally replacing a device the phone proves it was (see
    /// `Store::redeem_invite_replacing`).
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
            let row = tx
                .query_opt(
                    "SELECT invite_id, campaign, role, expires_at, used_at
                     FROM invites WHERE code_hash = $1 FOR UPDATE",
                    &[&hash.as_slice()],
                )?
                .ok_or(StoreError::InviteUnknown)?;
            let invite_id: String = row.get(0);
            let campaign: Option<String> = row.get(1);
            let role = device_role(row.get(2))?;
            let expires_at: i64 = row.get(3);
            let used_at: Option<i64> = row.get(4);
            if used_at.is_some() {
                return Err(StoreError::InviteUsed);
            }
            if now >= expires_at {
                return Err(StoreError::InviteExpired);
            }
            let replaced = match &replaces {
                Some(proof) => Some(check_replaced(tx, proof, campaign.as_deref())?),
                None => None,
            };
            let (device, token) = insert_device(
                tx,
                &name,
                role,
                campaign.as_deref(),
                now,
                replaced.as_ref().map(|(id, l)| (id.as_str(), l.as_str())),
            )?;
            if let Some((old, _)) = &replaced {
                tx.execute(
                    "UPDATE devices SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL",
                    &[old, &now],
                )?;
                // The replaced device's connections close on every server.
                super::listen::device_revoked(tx, old)?;
            }
            tx.execute(
                "UPDATE invites SET used_at = $2, device_id = $3 WHERE invite_id = $1",
                &[&invite_id, &now, &device.device_id],
            )?;
            Ok((device, token))
        })
    }

    /// The device a token belongs to (never expiring here), recording that it was seen.
    pub fn authenticate(&self, token: &str, now: i64) -> Result<Option<Device>> {
        let Ok(mut device) = self.check_token(token, now, None)? else {
            return Ok(None);
        };
        if self.record_seen(&device, now)? {
            device.last_seen = Some(now);
        }
        Ok(Some(device))
    }

    /// Checks a bearer token, reading only (see `Store::check_token`).
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
        let device = self.read(|tx| {
            tx.query_opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = $1"),
                &[&hash.as_slice()],
            )?
            .as_ref()
            .map(device_from_row)
            .transpose()
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

    /// Records that `device` was seen (at most one write a minute); whether it wrote.
    pub fn record_seen(&self, device: &Device, now: i64) -> Result<bool> {
        if device.seen_recently(now) {
            return Ok(false);
        }
        self.write(|tx| {
            tx.execute(
                "UPDATE devices SET last_seen = GREATEST(COALESCE(last_seen, 0), $2)
                 WHERE device_id = $1",
                &[&device.device_id, &now],
            )?;
            Ok(true)
        })
    }

    /// Revokes a device; `false` if it was already revoked, `NotFound` if unknown.
    pub fn revoke_device(&self, device_id: &str, now: i64) -> Result<bool> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE devices SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL",
                &[&device_id, &now],
            )?;
            if changed == 1 {
                // Its connections close on every server when this commits.
                super::listen::device_revoked(tx, device_id)?;
                return Ok(true);
            }
            let exists: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM devices WHERE device_id = $1)",
                    &[&device_id],
                )?
                .get(0);
            if exists {
                Ok(false)
            } else {
                Err(StoreError::NotFound(format!("device {device_id:?}")))
            }
        })
    }

    /// One device, revoked or not.
    pub fn device(&self, device_id: &str) -> Result<Option<Device>> {
        self.read(|tx| {
            tx.query_opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1"),
                &[&device_id],
            )?
            .as_ref()
            .map(device_from_row)
            .transpose()
        })
    }

    /// Every device, revoked ones included, oldest first.
    pub fn list_devices(&self) -> Result<Vec<Device>> {
        self.read(|tx| {
            tx.query(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY created_at, device_id"),
                &[],
            )?
            .iter()
            .map(device_from_row)
            .collect()
        })
    }

    /// The devices revoked at or after `since_ms`, earliest first.
    pub fn revoked_since(&self, since_ms: i64) -> Result<Vec<String>> {
        self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT device_id FROM devices WHERE revoked_at >= $1 ORDER BY revoked_at",
                    &[&since_ms],
                )?
                .iter()
                .map(|row| row.get(0))
                .collect())
        })
    }
}
