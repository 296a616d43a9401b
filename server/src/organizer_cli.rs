//! The organizers' side of the `tally` command: it calls the server's HTTP API with a token
//! (`--token`, `TALLY_TOKEN`, or the admin token file in the data folder) and keeps campaign
//! duplicate keys in a local keys folder, never on the server. `export` opens the sealed fields
//! locally with an organizer's age identity, one row per unique signer unless asked for every
//! signature. [`render`] draws what the commands print for people.

pub mod render;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tally_core::seal::{self, DuplicateKey};

use crate::api::types::{
    CampaignList, CampaignSummary, CreatedCampaign, Invite, InviteRequest, NewCampaign,
    SealedRecord,
};

/// How to reach the server.
pub struct Api {
    /// Base URL, e.g. `http://127.0.0.1:7300`.
    pub server: String,
    /// Where `server` came from (`--server`, the configuration's `listen`...), for messages.
    pub origin: String,
    /// Bearer token.
    pub token: String,
}

/// A refusal from the server: its status and message, and which server it was. Displayed as
/// the one line the commands print; the commands look at `status` to say more (a 404 for a
/// campaign the server does not have).
#[derive(Debug)]
pub struct Refused {
    /// The HTTP status.
    pub status: u16,
    /// The server's message (`{"error": "..."}`).
    pub message: String,
    /// The server asked.
    pub server: String,
    /// Where its address came from.
    pub origin: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hint = if self.status == 401 {
            "; is this the server whose token this is? pass --server or --token"
        } else {
            ""
        };
        write!(
            f,
            "the server at {} ({}) refused ({}): {}{hint}",
            self.server, self.origin, self.status, self.message
        )
    }
}

impl std::error::Error for Refused {}

/// The HTTP status of a refusal by the server, if `e` is one.
pub fn refused_status(e: &anyhow::Error) -> Option<u16> {
    e.downcast_ref::<Refused>().map(|r| r.status)
}

/// A campaign id as the commands take it: the id itself, or the campaign document's
/// `automerge:` URL (what `tally-device status` and invites print), surrounding space ignored.
pub fn campaign_id(given: &str) -> String {
    let s = given.trim();
    s.strip_prefix("automerge:").unwrap_or(s).trim().to_string()
}

/// Reads the token: `token` (`--token`), else the file `token_file` (`--token-file`), else
/// `env` (`TALLY_TOKEN`), else the admin token file in `data`.
pub fn load_token(
    token: Option<String>,
    token_file: Option<&Path>,
    env: Option<String>,
    data: &Path,
) -> anyhow::Result<String> {
    if let Some(t) = token {
        return Ok(t);
    }
    if let Some(file) = token_file {
        let t = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", file.display()))?;
        let t = t.trim().to_string();
        anyhow::ensure!(
            !t.is_empty(),
            "the token file {} is empty: put the device token (tly_...) in it",
            file.display()
        );
        return Ok(t);
    }
    if let Some(t) = env {
        return Ok(t);
    }
    let path = data.join(crate::ADMIN_TOKEN_FILE);
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .map_err(|e| anyhow::anyhow!("no token: set TALLY_TOKEN, pass --token-file (or --token), or run where {} exists ({e}); `tally serve` writes it on first start", path.display()))
}

impl Api {
    fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<R> {
        let url = format!("{}{}", self.server.trim_end_matches('/'), path);
        let mut req =
            ureq::request(method, &url).set("Authorization", &format!("Bearer {}", self.token));
        for (k, v) in query {
            req = req.query(k, v);
        }
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok(r.into_json()?),
            Err(ureq::Error::Status(code, r)) => {
                let body: Value = r.into_json().unwrap_or(Value::Null);
                let message = body
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no details")
                    .to_string();
                Err(anyhow::Error::new(Refused {
                    status: code,
                    message,
                    server: self.server.clone(),
                    origin: self.origin.clone(),
                }))
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
        self.call("POST", path, &[], Some(body))
    }

    /// GETs `path` and reads the answer as `R`.
    pub fn get<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        self.call("GET", path, &[], None::<&()>)
    }

    /// GETs `path` with `query` parameters (encoded here) and reads the answer as `R`.
    pub fn get_query<R: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<R> {
        self.call("GET", path, query, None::<&()>)
    }

    /// The campaigns this token may see.
    pub fn campaigns(&self) -> anyhow::Result<Vec<CampaignSummary>> {
        Ok(self.get::<CampaignList>("/api/v1/campaigns")?.campaigns)
    }

    /// The error for a campaign this server does not have (for this token), which sees `known`
    /// campaigns: it points to `tally campaign list`, not to the API.
    pub fn no_campaign(&self, campaign: &str, known: usize) -> anyhow::Error {
        let known = match known {
            0 => "this token sees no campaign yet (`tally campaign create` makes one)".to_string(),
            1 => "`tally campaign list` shows the one this token may see".to_string(),
            n => format!("`tally campaign list` shows the {n} this token may see"),
        };
        anyhow::anyhow!(
            "no campaign {campaign:?} on the server at {} ({}): {known}",
            self.server,
            self.origin
        )
    }

    /// Fails with [`Api::no_campaign`] unless this token sees `campaign`.
    pub fn require_campaign(&self, campaign: &str) -> anyhow::Result<CampaignSummary> {
        let list = self.campaigns()?;
        let known = list.len();
        list.into_iter()
            .find(|c| c.campaign == campaign)
            .ok_or_else(|| self.no_campaign(campaign, known))
    }

    /// Runs `f`, a call about `campaign`; when the server answers 404 and has no such campaign
    /// for this token, says so and points to `tally campaign list` instead of the API.
    pub fn about_campaign<T>(
        &self,
        campaign: &str,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let e = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if refused_status(&e) != Some(404) {
            return Err(e);
        }
        match self.campaigns() {
            Ok(list) if !list.iter().any(|c| c.campaign == campaign) => {
                Err(self.no_campaign(campaign, list.len()))
            }
            _ => Err(e),
        }
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
    // The link the QR code holds: the app, with the payload in the fragment (never sent to a
    // server). A server from before `app_url` gets the same link from its `server`.
    let app = if inv.app_url.is_empty() {
        format!("{}/app/", inv.server.trim_end_matches('/'))
    } else {
        inv.app_url.clone()
    };
    let app_link = format!("{app}#{}", uri_component(&payload.to_string()));
    Ok(
        json!({ "code": inv.code, "expires_at": inv.expires_at, "role": inv.role, "app_link": app_link, "payload": payload }),
    )
}

/// Percent-encodes `s` as JavaScript's `encodeURIComponent` does (all but `A-Z a-z 0-9 - _ . !
/// ~ * ' ( )`), so the app's `decodeURIComponent` reads it back.
pub fn uri_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The export's columns, in order (`duplicate_group` last, so that readers of the older
/// columns by position still read them).
pub const EXPORT_COLUMNS: &str = "id,collected_at,collected_by,event,city,fsa,riding,consent_contact,counted,withdrawn,name,email,phone,street,postal_code,duplicate_group";

/// What [`export`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Exported {
    /// Rows written.
    pub rows: usize,
    /// Signatures opened and considered: the counted ones, or every one with `--all`.
    pub signatures: usize,
    /// Signatures folded into an earlier one of the same signer (0 with `--all`).
    pub folded: usize,
    /// Rows whose duplicate group an earlier row has (with `--all`: the duplicates left in).
    pub repeated: usize,
    /// Signatures that could not be opened with the identity.
    pub unopened: usize,
    /// Records erased by an organizer: rows with "erased" in the name column (with `--all`).
    pub erased: usize,
    /// v2 records whose key the server does not hold (yet): rows with "key missing".
    pub key_missing: usize,
    /// Of all the campaign's records, those sealed in format v1 (before erasure existed): an
    /// erasure stops counting them but cannot shred their details (docs/security.md).
    pub sealed_v1: usize,
}

/// Downloads the sealed records, opens them with `identity` and writes a CSV. By default one
/// row per unique signer, for delivery: the counted signatures grouped by duplicate group, each
/// group written as its earliest signature. With `every`, one row per signature, withdrawn and
/// struck ones included. Every row carries its `duplicate_group`. Fails, writing nothing, when
/// there were records and none opens (the wrong identity), and when `out` exists unless `force`.
pub fn export(
    api: &Api,
    campaign: &str,
    identity: &Path,
    out: &Path,
    every: bool,
    force: bool,
) -> anyhow::Result<Exported> {
    anyhow::ensure!(
        force || !out.exists(),
        "{} exists already: pass --force to overwrite it, or choose another --out",
        out.display()
    );
    let text = std::fs::read_to_string(identity)
        .map_err(|e| anyhow::anyhow!("cannot read identity file {}: {e}", identity.display()))?;
    let id = seal::parse_identity(&text)?;
    let records: Vec<SealedRecord> = api.get(&format!("/api/v1/campaigns/{campaign}/sealed"))?;
    // The record keys, only if a record needs them (v2): a campaign of v1 records reads none.
    let v2_prefix = hex::encode(seal::SEAL2_MAGIC);
    let keys = if records
        .iter()
        .any(|r| (every || r.counted) && !r.erased && r.sealed.starts_with(&v2_prefix))
    {
        fetch_keys(api, campaign)?
    } else {
        Default::default()
    };
    let mut opened = Vec::new();
    let mut failed = 0;
    let (mut erased, mut key_missing) = (0, 0);
    // Records sealed before erasure existed (v1): their details stay in the history.
    let sealed_v1 = records
        .iter()
        .filter(|r| {
            hex::decode(r.sealed.get(..64).unwrap_or(&r.sealed))
                .is_ok_and(|b| seal::version(&b) == Some(1))
        })
        .count();
    for r in records.iter().filter(|r| every || r.counted) {
        match open_record(&id, r, &keys) {
            Opened::Fields(p) => opened.push((r, p)),
            Opened::Unopened => failed += 1,
            // Written as such, never failing the export: the name column says why.
            status => {
                let name = if matches!(status, Opened::Erased) {
                    erased += 1;
                    ROW_ERASED
                } else {
                    key_missing += 1;
                    ROW_KEY_MISSING
                };
                opened.push((
                    r,
                    seal::PersonalFields {
                        name: name.into(),
                        ..Default::default()
                    },
                ));
            }
        }
    }
    anyhow::ensure!(
        !opened.is_empty() || failed == 0,
        "none of the {failed} signatures could be opened with the identity in {} (recipient {}): \
         the campaign is not sealed to it; use the identity of one of the campaign's organizers. \
         nothing written to {}",
        identity.display(),
        id.to_public(),
        out.display()
    );
    // A record from a server that gives no group is a group of its own.
    let group = |r: &SealedRecord| -> String {
        if r.duplicate_group.is_empty() {
            format!("record:{}", r.id)
        } else {
            r.duplicate_group.clone()
        }
    };
    opened.sort_by(|(a, _), (b, _)| (a.collected_at, &a.id).cmp(&(b.collected_at, &b.id)));
    let signatures = opened.len() - erased - key_missing;
    let mut seen = std::collections::BTreeSet::new();
    let mut rows = Vec::new();
    let mut repeated = 0;
    for (r, p) in opened {
        let first = seen.insert(group(r));
        if !first {
            if !every {
                continue;
            }
            repeated += 1;
        }
        rows.push((r, p));
    }
    let mut csv = format!("{EXPORT_COLUMNS}\n");
    for (r, p) in &rows {
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
            p.name.clone(),
            p.email.clone().unwrap_or_default(),
            p.phone.clone().unwrap_or_default(),
            p.street.clone().unwrap_or_default(),
            p.postal_code.clone(),
            r.duplicate_group.clone(),
        ];
        csv.push_str(
            &cols
                .iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(","),
        );
        csv.push('\n');
    }
    write_export(out, &csv, force)?;
    Ok(Exported {
        rows: rows.len(),
        signatures,
        folded: signatures + erased + key_missing - rows.len(),
        repeated,
        unopened: failed,
        erased,
        key_missing,
        sealed_v1,
    })
}

/// The name column of an erased record's row (its other personal columns are empty).
pub const ROW_ERASED: &str = "erased";
/// The name column of a v2 record whose key the server does not hold (yet).
pub const ROW_KEY_MISSING: &str = "key missing";

/// What opening one record with the identity gave.
enum Opened {
    Fields(seal::PersonalFields),
    Erased,
    KeyMissing,
    Unopened,
}

/// Every wrapped key of the campaign (`GET .../keys`, page by page), by record id.
pub fn fetch_keys(
    api: &Api,
    campaign: &str,
) -> anyhow::Result<std::collections::HashMap<String, Vec<KeyCandidate>>> {
    use base64::Engine;
    let mut out: std::collections::HashMap<String, Vec<KeyCandidate>> = Default::default();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/campaigns/{campaign}/keys?limit=1000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", uri_component(a)));
        }
        let page: crate::api::keys::KeysPage = api.get(&path)?;
        for k in page.keys {
            let wrapped = base64::engine::general_purpose::STANDARD
                .decode(&k.wrapped)
                .map_err(|e| anyhow::anyhow!("the server sent a key that is not base64: {e}"))?;
            out.entry(k.record).or_default().push(KeyCandidate {
                device: k.device,
                wrapped,
            });
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// One wrapped key the server holds for a record, and the device that uploaded it.
pub struct KeyCandidate {
    /// The uploading device.
    pub device: String,
    /// The wrapped key (an age file).
    pub wrapped: Vec<u8>,
}

/// Opens one record: v1 with the identity; v2 with each candidate key of its record id, the
/// one its own phone uploaded first, until AES-GCM's tag accepts one (a squatter's key fails).
fn open_record(
    id: &age::x25519::Identity,
    r: &SealedRecord,
    keys: &std::collections::HashMap<String, Vec<KeyCandidate>>,
) -> Opened {
    if r.erased {
        return Opened::Erased;
    }
    let Ok(sealed) = hex::decode(&r.sealed) else {
        return Opened::Unopened;
    };
    match seal::version(&sealed) {
        Some(1) => match seal::open(id, &sealed) {
            Ok(p) => Opened::Fields(p),
            Err(_) => Opened::Unopened,
        },
        Some(2) => {
            let mut candidates: Vec<&KeyCandidate> = keys
                .get(&r.id)
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            candidates.sort_by_key(|c| c.device != r.collected_by);
            if candidates.is_empty() {
                return Opened::KeyMissing;
            }
            let mut unwrapped = false;
            for c in candidates {
                let Ok(key) = seal::RecordKey::unwrap(id, &c.wrapped) else {
                    continue;
                };
                unwrapped = true;
                if let Ok(p) = seal::open_v2(&key, &r.id, &sealed) {
                    return Opened::Fields(p);
                }
            }
            // Keys that unwrap but do not open it are junk: the right one is missing.
            if unwrapped {
                Opened::KeyMissing
            } else {
                Opened::Unopened
            }
        }
        _ => Opened::Unopened,
    }
}

/// How a campaign's signatures are sealed (`tally campaign sealing`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sealing {
    /// Every signature of the campaign (each record once).
    pub signatures: usize,
    /// Sealed v2, not erased: erasable.
    pub v2: usize,
    /// Of them, those with no key on the server (yet).
    pub key_missing: usize,
    /// Sealed v1, not erased: cannot be shredded.
    pub v1: usize,
    /// Erased.
    pub erased: usize,
}

/// Counts how the campaign's signatures are sealed, from the sealed records and the keys'
/// list; opens nothing.
pub fn sealing(api: &Api, campaign: &str) -> anyhow::Result<Sealing> {
    let records: Vec<SealedRecord> = api.get(&format!("/api/v1/campaigns/{campaign}/sealed"))?;
    let keys = fetch_keys(api, campaign)?;
    let mut s = Sealing {
        signatures: records.len(),
        ..Default::default()
    };
    for r in &records {
        if r.erased {
            s.erased += 1;
            continue;
        }
        let head = hex::decode(r.sealed.get(..128).unwrap_or(&r.sealed)).unwrap_or_default();
        match seal::version(&head) {
            Some(2) => {
                s.v2 += 1;
                if !keys.contains_key(&r.id) {
                    s.key_missing += 1;
                }
            }
            _ => s.v1 += 1,
        }
    }
    Ok(s)
}

/// What [`erase`] did.
pub use crate::api::keys::Erased;

/// Erases records of a campaign by id (`tally erase --record`), or every signature of one
/// person by name and postal code (`--name --postal-code`): the duplicate token is computed
/// here with the campaign's duplicate key, so the server never sees the name.
pub fn erase(
    api: &Api,
    keys: &Path,
    campaign: &str,
    records: &[String],
    person: Option<(&str, &str)>,
) -> anyhow::Result<Erased> {
    let req = match (records.is_empty(), person) {
        (false, None) => crate::api::keys::EraseRequest {
            records: Some(records.to_vec()),
            duplicate_token: None,
        },
        (true, Some((name, postal))) => {
            let key = read_key(keys, campaign)?;
            crate::api::keys::EraseRequest {
                records: None,
                duplicate_token: Some(key.duplicate_token(name, postal)),
            }
        }
        _ => anyhow::bail!(
            "give --record ID (one or more), or --name and --postal-code of one person, not both"
        ),
    };
    api.post(&format!("/api/v1/campaigns/{campaign}/erase"), &req)
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

#[cfg(test)]
mod tests {
    #[test]
    fn uri_component_is_javascripts_encode_uri_component() {
        // As node's encodeURIComponent writes them.
        assert_eq!(
            super::uri_component(r#"{"v":1,"key":"ab"} é/#?&+"#),
            "%7B%22v%22%3A1%2C%22key%22%3A%22ab%22%7D%20%C3%A9%2F%23%3F%26%2B"
        );
        assert_eq!(super::uri_component("A-z_0.9!~*'()"), "A-z_0.9!~*'()");
    }
}
