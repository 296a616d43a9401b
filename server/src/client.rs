//! The organizers' side of the `tally` command: it calls the server's HTTP API with a token
//! (`--token`, `TALLY_TOKEN`, or the admin token file in the data folder) and keeps campaign
//! duplicate keys in a local keys folder, never on the server. `export` opens the sealed fields
//! locally with an organizer's age identity.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tally_core::seal::{self, DuplicateKey};

use crate::api::types::{CreatedCampaign, Invite, InviteRequest, NewCampaign, SealedRecord};

/// How to reach the server.
pub struct Api {
    /// Base URL, e.g. `http://127.0.0.1:7300`.
    pub server: String,
    /// Where `server` came from (`--server`, the configuration's `listen`...), for messages.
    pub origin: String,
    /// Bearer token.
    pub token: String,
}

/// Reads the token: explicit, else the admin token file in `data`.
pub fn load_token(token: Option<String>, data: &Path) -> anyhow::Result<String> {
    if let Some(t) = token {
        return Ok(t);
    }
    let path = data.join(crate::ADMIN_TOKEN_FILE);
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .map_err(|e| anyhow::anyhow!("no token: pass --token, set TALLY_TOKEN, or run where {} exists ({e}); `tally serve` writes it on first start", path.display()))
}

impl Api {
    fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<R> {
        let url = format!("{}{}", self.server.trim_end_matches('/'), path);
        let req =
            ureq::request(method, &url).set("Authorization", &format!("Bearer {}", self.token));
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok(r.into_json()?),
            Err(ureq::Error::Status(code, r)) => {
                let body: Value = r.into_json().unwrap_or(Value::Null);
                let msg = body
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no details")
                    .to_string();
                let hint = if code == 401 {
                    "; is this the server whose token this is? pass --server or --token"
                } else {
                    ""
                };
                Err(anyhow::anyhow!(
                    "the server at {} ({}) refused ({code}): {msg}{hint}",
                    self.server,
                    self.origin
                ))
            }
            Err(e) => Err(anyhow::anyhow!(
                "cannot reach the server at {} ({}): {e}; is `tally serve` running there?",
                self.server,
                self.origin
            )),
        }
    }

    /// POSTs `body` (one of [`crate::api::types`]) and reads the answer as `R`.
    pub fn post<R: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<R> {
        self.call("POST", path, Some(body))
    }

    /// GETs `path` and reads the answer as `R`.
    pub fn get<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        self.call("GET", path, None::<&()>)
    }
}

/// Where a campaign's duplicate key lives.
pub fn key_path(keys: &Path, campaign: &str) -> PathBuf {
    keys.join(format!("{campaign}.key"))
}

/// Creates a campaign and its duplicate key (kept in `keys`, mode 0600).
pub fn campaign_create(
    api: &Api,
    keys: &Path,
    body: &NewCampaign,
) -> anyhow::Result<CreatedCampaign> {
    let created: CreatedCampaign = api.post("/api/v1/campaigns", body)?;
    std::fs::create_dir_all(keys)?;
    crate::write_secret(
        &key_path(keys, &created.campaign),
        &format!("{}\n", DuplicateKey::generate().to_hex()),
    )?;
    Ok(created)
}

/// Reads a campaign's duplicate key.
pub fn read_key(keys: &Path, campaign: &str) -> anyhow::Result<DuplicateKey> {
    let path = key_path(keys, campaign);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!("no duplicate key for campaign {campaign} at {} ({e}): run invite where `tally campaign create` ran, or pass --keys", path.display())
    })?;
    DuplicateKey::from_hex(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Creates an invite and the payload a phone reads from a QR code.
pub fn invite(api: &Api, keys: &Path, campaign: &str, role: &str) -> anyhow::Result<Value> {
    let key = read_key(keys, campaign)?;
    let inv: Invite = api.post(
        "/api/v1/invites",
        &InviteRequest {
            campaign: campaign.to_string(),
            role: role.to_string(),
        },
    )?;
    let payload = json!({ "v": 1, "server": inv.server, "code": inv.code, "campaign": inv.campaign, "key": key.to_hex() });
    Ok(
        json!({ "code": inv.code, "expires_at": inv.expires_at, "role": inv.role, "payload": payload }),
    )
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Downloads the sealed records, opens them with `identity` and writes a CSV; returns the
/// number of rows written and how many could not be opened. Fails, writing nothing, when there
/// were records and none opens (the wrong identity), and when `out` exists unless `force`.
pub fn export(
    api: &Api,
    campaign: &str,
    identity: &Path,
    out: &Path,
    only_counted: bool,
    force: bool,
) -> anyhow::Result<(usize, usize)> {
    anyhow::ensure!(
        force || !out.exists(),
        "{} exists already: pass --force to overwrite it, or choose another --out",
        out.display()
    );
    let text = std::fs::read_to_string(identity)
        .map_err(|e| anyhow::anyhow!("cannot read identity file {}: {e}", identity.display()))?;
    let id = seal::parse_identity(&text)?;
    let records: Vec<SealedRecord> = api.get(&format!("/api/v1/campaigns/{campaign}/sealed"))?;
    let mut csv = String::from(
        "id,collected_at,collected_by,event,city,fsa,riding,consent_contact,counted,withdrawn,name,email,phone,street,postal_code\n",
    );
    let (mut rows, mut failed) = (0, 0);
    for r in records.iter().filter(|r| !only_counted || r.counted) {
        let fields = hex::decode(&r.sealed)
            .map_err(anyhow::Error::from)
            .and_then(|b| seal::open(&id, &b).map_err(anyhow::Error::from));
        let Ok(p) = fields else {
            failed += 1;
            continue;
        };
        let when = chrono::DateTime::from_timestamp_millis(r.collected_at)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        let cols = [
            r.id.clone(),
            when,
            r.collected_by.clone(),
            r.event.clone().unwrap_or_default(),
            r.city.clone(),
            r.fsa.clone(),
            r.riding.clone().unwrap_or_default(),
            r.consent_contact.to_string(),
            r.counted.to_string(),
            r.withdrawn.to_string(),
            p.name,
            p.email.unwrap_or_default(),
            p.phone.unwrap_or_default(),
            p.street.unwrap_or_default(),
            p.postal_code,
        ];
        csv.push_str(
            &cols
                .iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(","),
        );
        csv.push('\n');
        rows += 1;
    }
    anyhow::ensure!(
        rows > 0 || failed == 0,
        "none of the {failed} signatures could be opened with the identity in {} (recipient {}): \
         the campaign is not sealed to it; use the identity of one of the campaign's organizers. \
         nothing written to {}",
        identity.display(),
        id.to_public(),
        out.display()
    );
    write_export(out, &csv, force)?;
    Ok((rows, failed))
}

/// Writes the CSV readable only by its owner (mode 0600 on Unix); never over an existing file
/// unless `force`, even one that appeared since the check above.
fn write_export(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}
