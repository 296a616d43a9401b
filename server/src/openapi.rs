//! The OpenAPI 3 document of the server (`GET /api/v1/openapi.json`), written by hand as JSON.
//! It lists every route of [`crate::ROUTES`] and no other (a test holds the two equal and checks
//! the router serves exactly those methods), with the schemas of the answers the handlers build.

use serde_json::{Map, Value, json};
use tally_core::fields::{
    MAX_ID, MAX_LONG_TEXT, MAX_RECIPIENTS, MAX_SHORT_TEXT, MAX_TIME_MS, MIN_TIME_MS,
};

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn ok(schema: Value) -> Value {
    json!({
        "description": "OK",
        "content": { "application/json": { "schema": schema } }
    })
}

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn id_param(what: &str) -> Value {
    json!({ "name": "id", "in": "path", "required": true, "description": what, "schema": { "type": "string" } })
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

// What `tally_core::fields::check_text` accepts, as JSON Schema patterns (ECMA-262, read the same
// by Python's `re`): no control character but tab and newline; a required text also holds a
// character that is not white space (`str::trim` removes Unicode White_Space, listed here).
const TEXT_CHAR: &str = r"[^\x00-\x08\x0B-\x1F\x7F-\x9F]";
const NON_BLANK_CHAR: &str =
    r"[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";

/// A text field as `check_text(max, required)` checks it. JSON Schema counts characters; the
/// server counts UTF-8 bytes, so `maxLength` is exact for ASCII and the description says so.
fn text(max_bytes: usize, required: bool, description: &str) -> Value {
    let pattern = if required {
        format!("^{TEXT_CHAR}*{NON_BLANK_CHAR}{TEXT_CHAR}*$")
    } else {
        format!("^{TEXT_CHAR}*$")
    };
    let mut d = description.to_string();
    if !d.is_empty() {
        d.push_str("; ");
    }
    d.push_str(&format!(
        "at most {max_bytes} bytes of UTF-8, {}no control characters but tab and newline",
        if required { "not blank, " } else { "" }
    ));
    json!({ "type": "string", "minLength": u8::from(required), "maxLength": max_bytes, "pattern": pattern, "description": d })
}

/// An identifier as `tally_core::fields::check_id` checks it.
fn id(description: &str) -> Value {
    json!({ "type": "string", "pattern": format!("^[A-Za-z0-9_-]{{1,{MAX_ID}}}$"), "minLength": 1, "maxLength": MAX_ID,
            "description": format!("{description} (1 to {MAX_ID} ASCII letters, digits, '-' and '_')") })
}

/// A time as ms since the epoch, as `tally_core::fields::check_time` accepts it.
fn time_ms(description: &str) -> Value {
    json!({ "type": "integer", "minimum": MIN_TIME_MS, "exclusiveMaximum": MAX_TIME_MS,
            "description": format!("{description}: ms since the epoch, from 2020-01-01 (inclusive) to 2100-01-01 (exclusive), UTC") })
}

/// An RFC 3339 time the server reads with `chrono::DateTime::parse_from_rfc3339`.
fn rfc3339(description: &str) -> Value {
    json!({ "type": "string", "format": "date-time",
            "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$",
            "description": format!("{description}: RFC 3339, e.g. 2026-07-01T18:00:00-04:00") })
}

/// The statuses of an operation: `200` with `success`, then each of `codes` with what it means
/// there (from [`why`], or the operation's own words in `own`).
fn responses(success: Value, codes: &[u16], own: &[(u16, &str)]) -> Value {
    let mut m = Map::new();
    m.insert("200".into(), success);
    for code in codes {
        let what = own
            .iter()
            .find(|(c, _)| c == code)
            .map(|(_, w)| w.to_string())
            .unwrap_or_else(|| why(*code).to_string());
        m.insert(code.to_string(), error(&what));
    }
    Value::Object(m)
}

/// What a status means wherever an operation does not say more.
fn why(code: u16) -> &'static str {
    match code {
        400 => {
            "a bad query or body (not JSON, a missing or malformed field, a value the documents refuse): the message names it and says what to send"
        }
        401 => {
            "no token, or an unknown, revoked or expired one (expired: unused for `token_idle_expiry_secs`)"
        }
        403 => "a token of the wrong role or campaign",
        404 => "no such campaign",
        409 => "the change conflicts with the current state",
        410 => "gone",
        413 => "the body is larger than the API accepts (2 MB)",
        429 => {
            "this address sent too many wrong tokens (`max_auth_failures` in `auth_window_secs`), or another per-address or per-device limit; retry later"
        }
        500 => "storage or another internal failure (logged)",
        503 => "the disk is full, or the database read-only or unavailable",
        _ => "",
    }
}

/// Statuses of every authenticated call.
const AUTH: [u16; 3] = [401, 429, 500];

fn codes(groups: &[&[u16]]) -> Vec<u16> {
    let mut v: Vec<u16> = groups.iter().flat_map(|g| g.iter().copied()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn totals_filters() -> Vec<Value> {
    vec![
        id_param("the campaign id"),
        query(
            "event",
            "only this event's signatures and check-ins: an event id of the campaign (another is a 400 that lists them)",
            json!({ "type": "string" }),
        ),
        query(
            "from",
            "only signatures collected (and check-ins made) at or after this time; before `to` (else 400); an organizer's is moved back to the start of its day in the campaign's time zone",
            rfc3339("a time"),
        ),
        query(
            "to",
            "only signatures collected (and check-ins made) before this time; after `from` (else 400); an organizer's is moved on to the end of its day",
            rfc3339("a time"),
        ),
        query(
            "city",
            "only signatures of signers in this city (check-ins are not filtered by city); trimmed",
            text(MAX_SHORT_TEXT, true, "a city name"),
        ),
        query(
            "fsa",
            "only signatures of signers in this FSA, e.g. M5V (check-ins are not filtered by FSA); either case",
            json!({ "type": "string", "pattern": "^[ABCEGHJ-NPRSTVXYabceghj-nprstvxy][0-9][ABCEGHJ-NPRSTV-Zabceghj-nprstv-z]$",
                    "description": "a forward sortation area: the first three characters of a Canadian postal code" }),
        ),
        query(
            "riding",
            "only signatures of signers in this riding (check-ins are not filtered by riding); trimmed",
            text(
                MAX_SHORT_TEXT,
                true,
                "a riding's name, as the phones record it",
            ),
        ),
        query(
            "canvasser",
            "only signatures this device collected (its id, as the keys of by_canvasser; check-ins are not filtered by canvasser); trimmed",
            text(MAX_SHORT_TEXT, true, "a device id"),
        ),
        query(
            "suppress",
            "small-cell suppression: on by default for every token but the admin's; the admin may ask for it with true; an organizer's false is refused (403)",
            json!({ "type": "boolean" }),
        ),
        query(
            "wait",
            "true (the default): answer once everything acknowledged before the request is counted, waiting at most 5 s (then answer with what is counted, and projection says what is not); false: answer at once (a dashboard that polls), projection says how far behind",
            json!({ "type": "boolean" }),
        ),
    ]
}

/// The request bodies, each field with the checks the server applies to it. Unknown fields are
/// ignored (no body refuses them), so no schema closes `additionalProperties`.
fn request_schemas() -> Value {
    let timezones: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
    let reasons = ["duplicate", "invalid", "withdrawn_consent", "test_entry"];
    json!({
        "NewCampaign": { "type": "object", "required": ["title", "petition", "addressee", "recipients"], "properties": {
            "title": text(MAX_SHORT_TEXT, true, "the campaign's title"),
            "petition": text(MAX_LONG_TEXT, true, "the petition's text, as signers read it"),
            "addressee": text(MAX_SHORT_TEXT, true, "to whom the petition goes, e.g. the House of Commons"),
            "goal": { "type": "integer", "minimum": 0, "maximum": 100_000_000, "default": 0, "description": "signatures aimed for (0: no goal)" },
            "timezone": { "type": "string", "enum": timezones, "default": "America/Toronto", "description": "the IANA time zone days are counted in" },
            "recipients": { "type": "array", "minItems": 1, "maxItems": MAX_RECIPIENTS,
                "description": "the organizers' age X25519 recipients the signers' details are sealed to",
                "items": { "type": "string", "pattern": "^age1[02-9ac-hj-np-z]{58}$",
                           "description": "an age X25519 recipient: age1 and 58 bech32 characters, with a valid checksum (as `age-keygen` prints it)" } } } },
        "NewEvent": { "type": "object", "required": ["name", "city", "starts_at"], "properties": {
            "id": { "oneOf": [ id("the event id; an existing id corrects that event"), { "type": "null" } ],
                    "description": "default (absent or null): 12 random hex digits" },
            "name": text(MAX_SHORT_TEXT, true, "the event's name"),
            "city": text(MAX_SHORT_TEXT, true, "its city"),
            "starts_at": { "oneOf": [
                time_ms("when it starts"),
                { "type": "string", "format": "date-time",
                  "pattern": r"^(202[1-9]|20[3-9][0-9])-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$",
                  "description": "when it starts, RFC 3339, e.g. 2026-07-01T18:00:00-04:00: the server takes 2020-01-01 to 2100-01-01 UTC; this pattern, years 2021 to 2099 whatever the offset" } ] },
            "place": text(MAX_SHORT_TEXT, false, "where (default empty)") } },
        "NewStrike": { "type": "object", "required": ["signature", "reason"], "properties": {
            "signature": id("the struck signature's id (the server must have it: else 404)"),
            "reason": { "type": "string", "enum": reasons },
            "revoked": { "type": "boolean", "default": false, "description": "true revokes the strike: the signature counts again" } } },
        "KeysUpload": { "type": "object", "required": ["keys"], "properties": {
            "keys": { "type": "array", "maxItems": crate::api::keys::MAX_KEYS_PER_REQUEST, "items": { "type": "object", "required": ["record", "wrapped"], "properties": {
                "record": { "type": "string", "description": "the record (signature) id; one that is not an id is refused in its result (bad_record)" },
                "wrapped": { "type": "string", "description": format!("the record's key wrapped with age to the campaign's recipients, standard base64: an age file of {} to {} bytes (else refused in its result: bad_size)", crate::api::keys::MIN_WRAPPED, crate::api::keys::MAX_WRAPPED) } } } } } },
        "EraseRequest": { "description": "either records or duplicate_token, not both", "oneOf": [
            { "type": "object", "required": ["records"], "additionalProperties": false, "properties": {
                "records": { "type": "array", "minItems": 1, "maxItems": crate::api::keys::MAX_RECORDS, "items": id("a signature id of the campaign (an unknown one: 404, nothing erased)") } } },
            { "type": "object", "required": ["duplicate_token"], "additionalProperties": false, "properties": {
                "duplicate_token": { "type": "string", "pattern": "^[0-9a-f]{64}$", "description": "a duplicate token computed with the campaign's duplicate key (`tally erase --name --postal-code`): every signature with it is erased" } } } ] },
        "NewSheet": { "type": "object", "required": ["serial", "count"], "properties": {
            "serial": id("the sheet's serial; an existing serial updates that sheet"),
            "count": { "type": "integer", "minimum": 0, "maximum": 10000, "description": "signatures on it" },
            "riding": { "type": ["string", "null"], "maxLength": MAX_SHORT_TEXT, "pattern": format!("^{TEXT_CHAR}*$"),
                        "description": format!("the riding it was collected in (blank or null: none); at most {MAX_SHORT_TEXT} bytes of UTF-8, no control characters but tab and newline") },
            "status": { "enum": ["collected", "counted", "delivered", null], "default": "collected", "description": "null: collected" } } },
        "Enroll": { "type": "object", "required": ["code"], "properties": {
            "code": { "type": "string", "description": "the invite's one-time code, XXXX-XXXX-XXXX (an unknown, used or expired one is a 410)" },
            "name": { "type": "string", "description": "the device's name as organizers see it: trimmed, cut to 100 characters; blank: \"phone\"" },
            "replaces": { "type": ["object", "null"], "required": ["device_id", "token"],
                "description": "re-enrollment: the device this phone was before, proven by its token (even revoked or expired); it must belong to the invite's campaign. The new device shares its lineage and the old one is revoked",
                "properties": { "device_id": { "type": "string" }, "token": { "type": "string" } } } } },
        "NewInvite": { "type": "object", "required": ["campaign", "role"], "properties": {
            "campaign": { "type": "string", "description": "the campaign id (unknown: 404)" },
            "role": { "type": "string", "enum": ["canvasser", "organizer"] } } }
    })
}

fn cell_map(what: &str) -> Value {
    json!({ "type": "object", "description": what, "additionalProperties": schema("Cell") })
}

fn components() -> Value {
    let mut c = response_schemas();
    let requests = request_schemas();
    for (k, v) in requests.as_object().expect("an object") {
        c["schemas"][k] = v.clone();
    }
    c
}

fn response_schemas() -> Value {
    let nullable_count =
        |d: &str| json!({ "type": ["integer", "null"], "minimum": 0, "description": d });
    json!({
        "securitySchemes": {
            "bearer": { "type": "http", "scheme": "bearer", "description": "a device token (tly_...)" },
            "tokenQuery": { "type": "apiKey", "in": "query", "name": "token", "description": "the same token as a query parameter, for browsers" }
        },
        "schemas": {
            "Error": { "type": "object", "required": ["error"], "properties": {
                "error": { "type": "string", "description": "what went wrong and what to do" } } },
            "Cell": { "type": "object", "required": ["signatures", "unique"], "properties": {
                "signatures": { "type": "integer", "minimum": 0 },
                "unique": { "type": "integer", "minimum": 0, "description": "distinct duplicate tokens" } } },
            "CheckinCell": { "type": "object", "required": ["unique", "pre_registered", "walk_in"], "properties": {
                "unique": { "type": "integer", "minimum": 0 },
                "pre_registered": { "type": "integer", "minimum": 0 },
                "walk_in": { "type": "integer", "minimum": 0 } } },
            "PaperCell": { "type": "object", "required": ["sheets", "signatures"], "properties": {
                "sheets": { "type": "integer", "minimum": 0 },
                "signatures": { "type": "integer", "minimum": 0 } } },
            "PaperTotals": { "type": "object", "required": ["sheets", "signatures", "by_status"], "properties": {
                "sheets": { "type": "integer", "minimum": 0 },
                "signatures": { "type": "integer", "minimum": 0 },
                "by_status": { "type": "object", "additionalProperties": schema("PaperCell") } } },
            "Filters": { "type": "object", "description": "the filters applied, as understood", "properties": {
                "event": { "type": ["string", "null"] },
                "from": { "type": ["string", "null"], "format": "date-time" },
                "to": { "type": ["string", "null"], "format": "date-time" },
                "city": { "type": ["string", "null"] },
                "fsa": { "type": ["string", "null"] },
                "riding": { "type": ["string", "null"] },
                "canvasser": { "type": ["string", "null"] } } },
            "Suppression": { "type": "object", "required": ["applied", "threshold", "hidden_cells", "hidden", "other", "withheld", "headline_hidden"], "properties": {
                "applied": { "type": "boolean" },
                "threshold": { "type": "integer", "minimum": 0, "description": "cells counting fewer distinct people are hidden (server config suppress_below)" },
                "hidden_cells": { "type": "integer", "minimum": 0 },
                "hidden": { "type": "object", "description": "hidden cells per breakdown", "additionalProperties": { "type": "integer" } },
                "other": { "type": "object", "description": "per breakdown with hidden cells: their signatures together (two or more cells, never one cell's number)", "additionalProperties": { "type": "integer", "minimum": 0 } },
                "withheld": { "type": "array", "items": { "type": "string" }, "uniqueItems": true, "description": "breakdowns whose every cell is hidden and whose number of hidden cells is not said (too few people)" },
                "headline_hidden": { "type": "boolean", "description": "a filtered query matched too few people (none included), or names a cell the answer without that filter hides: the headline numbers are null" },
                "note": { "type": ["string", "null"] } } },
            "Totals": { "type": "object",
                "required": ["campaign", "signatures", "unique_signers", "struck", "withdrawn", "by_event", "by_city", "by_fsa", "by_riding", "by_day", "by_canvasser", "checkins", "paper", "filters", "suppression", "projection"],
                "properties": {
                    "campaign": { "type": "string" },
                    "signatures": nullable_count("signatures counted: neither withdrawn nor struck"),
                    "unique_signers": nullable_count("distinct signers among them"),
                    "struck": nullable_count("struck signatures (not withdrawn)"),
                    "withdrawn": nullable_count("withdrawn signatures"),
                    "by_event": cell_map("by event id"),
                    "by_city": cell_map("by signers' city"),
                    "by_fsa": cell_map("by signers' FSA"),
                    "by_riding": cell_map("by riding"),
                    "by_day": cell_map("by day (YYYY-MM-DD in the campaign's time zone)"),
                    "by_canvasser": cell_map("by canvasser (device id)"),
                    "checkins": { "type": "object", "description": "distinct check-ins by event id", "additionalProperties": schema("CheckinCell") },
                    "paper": schema("PaperTotals"),
                    "filters": schema("Filters"),
                    "suppression": schema("Suppression"),
                    "projection": schema("ProjectionLag") } },
            "ProjectionLag": { "type": "object", "required": ["pending_records", "lag_ms"], "description": "how far the answer is behind what was acknowledged", "properties": {
                "pending_records": { "type": "integer", "minimum": 0, "description": "records acknowledged and not counted in this answer yet" },
                "lag_ms": { "type": "integer", "minimum": 0, "description": "how long the oldest of them has waited (0 when none)" } } },
            "KeysUploaded": { "type": "object", "required": ["results"], "properties": {
                "results": { "type": "array", "description": "one per key, in order", "items": { "type": "object", "required": ["record", "status"], "properties": {
                    "record": { "type": "string" },
                    "status": { "type": "string", "enum": ["stored", "already_stored", "refused"] },
                    "reason": { "type": "string", "enum": ["erased", "conflict", "other_campaign", "too_many", "bad_size", "bad_record"] },
                    "message": { "type": "string" } } } } } },
            "KeysPage": { "type": "object", "required": ["keys", "next"], "properties": {
                "keys": { "type": "array", "items": { "type": "object", "required": ["record", "device", "wrapped"], "properties": {
                    "record": { "type": "string" },
                    "device": { "type": "string", "description": "the device that uploaded it; prefer the record's collected_by, try the others (AES-GCM's tag tells)" },
                    "wrapped": { "type": "string", "description": "the wrapped key (an age file), standard base64" } } } },
                "next": { "type": ["string", "null"], "description": "after= for the next page; null after the last" } } },
            "Erased": { "type": "object", "required": ["erased", "keys_deleted", "v1"], "properties": {
                "erased": { "type": "array", "items": { "type": "string" }, "description": "the record ids erased" },
                "keys_deleted": { "type": "integer", "minimum": 0 },
                "v1": { "type": "array", "items": { "type": "string" }, "description": "of them, records sealed in format v1: no longer counted, but their details stay in the document's history" } } },
            "SealedRecord": { "type": "object",
                "required": ["id", "collected_at", "collected_by", "event", "city", "fsa", "riding", "consent_contact", "counted", "withdrawn", "erased", "sealed", "duplicate_group"],
                "properties": {
                    "id": { "type": "string" },
                    "collected_at": { "type": "integer", "description": "ms since the epoch" },
                    "collected_by": { "type": "string" },
                    "event": { "type": ["string", "null"] },
                    "city": { "type": "string" },
                    "fsa": { "type": "string" },
                    "riding": { "type": ["string", "null"] },
                    "consent_contact": { "type": "boolean" },
                    "counted": { "type": "boolean" },
                    "withdrawn": { "type": "boolean" },
                    "erased": { "type": "boolean", "description": "erased at the signer's request: its keys are gone and sealed is empty" },
                    "sealed": { "type": "string", "description": "the sealed personal fields, hex, opened only on an organizer's machine: tally-seal-2 (AES-256-GCM under the record's key, from GET .../keys) or an age file (v1); empty when erased" },
                    "duplicate_group": { "type": "string", "description": "equal for the campaign's signatures with the same duplicate token (the same signer), not the token: 16 hex digits of SHA-256 over a fixed label, the campaign id and the token" } } },
            "Review": { "type": "object", "required": ["strikes", "sheets"], "properties": {
                "strikes": { "type": "array", "items": schema("Strike"), "description": "every strike, revoked ones included" },
                "sheets": { "type": "array", "items": schema("Sheet") } } },
            "Strike": { "type": "object", "required": ["signature", "reason", "by", "at", "revoked"], "properties": {
                "signature": { "type": "string" },
                "reason": { "type": "string", "enum": ["duplicate", "invalid", "withdrawn_consent", "test_entry", "erased"], "description": "erased: written by POST .../erase only, final" },
                "by": { "type": "string", "description": "the organizer's device id" },
                "at": { "type": "integer", "description": "ms since the epoch" },
                "revoked": { "type": "boolean" } } },
            "Sheet": { "type": "object", "required": ["serial", "count"], "properties": {
                "serial": { "type": "string" },
                "count": { "type": "integer", "minimum": 0, "maximum": 10000 },
                "riding": { "type": ["string", "null"] },
                "status": { "type": "string", "enum": ["collected", "counted", "delivered"], "default": "collected" } } },
            "Event": { "type": "object", "required": ["id", "name", "city", "starts_at", "place"], "properties": {
                "id": { "type": "string" }, "name": { "type": "string" }, "city": { "type": "string" },
                "starts_at": { "type": "integer" }, "place": { "type": "string" } } },
            "CreatedCampaign": { "type": "object", "required": ["campaign", "campaign_url", "review_url", "totals_url"], "properties": {
                "campaign": { "type": "string" }, "campaign_url": { "type": "string" },
                "review_url": { "type": "string" }, "totals_url": { "type": "string" } } },
            "Campaigns": { "type": "object", "required": ["campaigns"], "properties": {
                "campaigns": { "type": "array", "items": { "type": "object", "properties": {
                    "campaign": { "type": "string" }, "title": { "type": "string" }, "addressee": { "type": "string" },
                    "goal": { "type": "integer" }, "events": { "type": "array", "items": schema("Event") },
                    "timezone": { "type": "string", "description": "the IANA time zone its days are counted in" } } } } } },
            "Enrolled": { "type": "object", "required": ["device_id", "token", "role"], "properties": {
                "device_id": { "type": "string" }, "token": { "type": "string", "description": "shown this once" },
                "role": { "type": "string" }, "campaign": { "type": ["string", "null"] },
                "campaign_url": { "type": ["string", "null"] }, "totals_url": { "type": ["string", "null"] },
                "replaces": { "type": ["string", "null"], "description": "the device this one replaces (now revoked)" } } },
            "Invite": { "type": "object", "required": ["app_url", "code", "expires_at", "server", "campaign", "role"], "properties": {
                "app_url": { "type": "string", "description": "the canvassers' app, {public_url}/app/: the invite's QR code is this link, '#' and the URI-encoded payload JSON (the fragment never reaches a server)" },
                "code": { "type": "string" }, "expires_at": { "type": "integer" }, "server": { "type": "string" },
                "campaign": { "type": "string" }, "role": { "type": "string" } } },
            "Device": { "type": "object", "required": ["device_id", "name", "role", "created_at"], "properties": {
                "device_id": { "type": "string" }, "name": { "type": "string" },
                "role": { "type": "string", "enum": ["admin", "organizer", "canvasser"] },
                "campaign": { "type": ["string", "null"] }, "created_at": { "type": "integer" },
                "revoked_at": { "type": ["integer", "null"] }, "last_seen": { "type": ["integer", "null"] },
                "replaces": { "type": ["string", "null"], "description": "the device this one replaced at enrollment" },
                "lineage": { "type": "string", "description": "the first device of this phone's chain of devices (its own id if it replaced none)" } } },
            "AuditEntry": { "type": "object", "required": ["seq", "at", "actor_id", "actor_name", "action", "target", "result", "prev_hash", "hash"], "properties": {
                "seq": { "type": "integer" }, "at": { "type": "integer" },
                "actor_id": { "type": "string", "description": "a device id, never a token" }, "actor_name": { "type": "string" },
                "action": { "type": "string", "enum": ["campaign.create", "event.add", "invite.create", "device.enroll", "device.revoke", "review.strike", "review.unstrike", "review.sheet", "export.sealed", "export.keys", "record.erase", "signin.link", "server.start"] },
                "campaign": { "type": ["string", "null"] }, "target": { "type": "string" },
                "result": { "type": "string", "description": "ok, or refused: STATUS message" },
                "prev_hash": { "type": "string" }, "hash": { "type": "string" } } },
            "Quarantined": { "type": "object", "required": ["id", "device_id", "doc_id", "at", "reason", "rule", "size", "repeats"], "properties": {
                "id": { "type": "integer", "description": "increasing: the paging cursor" },
                "device_id": { "type": "string" }, "doc_id": { "type": "string" },
                "at": { "type": "integer", "description": "when it was refused, ms since the epoch" },
                "reason": { "type": "string" }, "rule": { "type": ["string", "null"] },
                "size": { "type": "integer", "description": "the refused message's size in bytes (never the bytes)" },
                "repeats": { "type": "integer", "description": "later refusals from the device counted here (over the quota)" } } },
            "QuarantineList": { "type": "object", "required": ["entries", "next_after"], "properties": {
                "entries": { "type": "array", "items": schema("Quarantined") },
                "next_after": { "type": ["integer", "null"], "description": "the `after` of the next page when this one is full" } } },
            "NewSigninLink": { "type": "object", "required": ["sealed"], "properties": {
                "sealed": { "type": "string", "pattern": "^[0-9a-fA-F]{1,4096}$", "minLength": 1, "maxLength": 4096, "description": "the caller's token sealed to a throwaway age key (an age file, hex)" } } },
            "SigninLink": { "type": "object", "required": ["id", "expires_at"], "properties": {
                "id": { "type": "string", "description": "32 hex digits, in the link's fragment" },
                "expires_at": { "type": "integer", "description": "when it stops working, ms since the epoch" } } },
            "SealedToken": { "type": "object", "required": ["sealed"], "properties": {
                "sealed": { "type": "string", "description": "the sealed token (hex), given once" } } },
            "Revoked": { "type": "object", "required": ["revoked", "connections_closed"], "properties": {
                "revoked": { "type": "string" }, "connections_closed": { "type": "integer" } } },
            "Health": { "type": "object", "required": ["status", "documents_loaded", "connections"], "properties": {
                "status": { "type": "string" }, "documents_loaded": { "type": "integer" }, "connections": { "type": "integer" } } }
        }
    })
}

/// The upgrade headers `GET /sync` needs (axum's `WebSocketUpgrade` checks them: else 400).
fn upgrade_headers() -> Value {
    let header = |name: &str, schema: Value, what: &str| json!({ "name": name, "in": "header", "required": true, "description": what, "schema": schema });
    json!([
        header(
            "Connection",
            json!({ "type": "string", "enum": ["Upgrade", "upgrade", "keep-alive, Upgrade"] }),
            "must list upgrade"
        ),
        header(
            "Upgrade",
            json!({ "type": "string", "enum": ["websocket"] }),
            "websocket"
        ),
        header(
            "Sec-WebSocket-Version",
            json!({ "type": "string", "enum": ["13"] }),
            "13"
        ),
        header(
            "Sec-WebSocket-Key",
            json!({ "type": "string" }),
            "the client's nonce (RFC 6455: 16 random bytes in base64); the server does not check its form"
        )
    ])
}

/// The whole document.
pub fn document() -> Value {
    // Statuses by what an operation does, beside AUTH (401, 429, 500) of every authenticated
    // call: 403 for a role check, 404 for a campaign in the path, 400 and 413 for a JSON body,
    // 503 for a write (disk full, database read-only).
    const ROLE: &[u16] = &[403];
    const CAMPAIGN: &[u16] = &[404];
    const BODY: &[u16] = &[400, 413];
    const WRITE: &[u16] = &[503];
    let campaign_body_write = codes(&[&AUTH, ROLE, CAMPAIGN, BODY, WRITE]);
    let paths = json!({
        "/healthz": { "get": {
            "summary": "Liveness and load", "security": [],
            "responses": { "200": ok(schema("Health")) } } },
        "/sync": { "get": {
            "summary": "automerge-repo WebSocket sync (upgrade)",
            "description": "Upgrades to a WebSocket speaking automerge-repo's protocol; see docs/protocol.md. Any device's token. A plain GET without the upgrade headers is a 400.",
            "parameters": upgrade_headers(),
            "responses": { "101": { "description": "switching protocols: the WebSocket is open" },
                           "400": error("not a WebSocket upgrade: a missing or wrong Connection, Upgrade or Sec-WebSocket-Version header, or no Sec-WebSocket-Key"),
                           "401": error(why(401)),
                           "426": error("the connection cannot be upgraded (HTTP/2 without extended CONNECT)"),
                           "429": error(why(429)),
                           "500": error(why(500)),
                           "503": error("the server is at its limit of connections (`max_connections`)") } } },
        "/api/v1/openapi.json": { "get": {
            "summary": "This document", "security": [],
            "responses": { "200": ok(json!({ "type": "object" })) } } },
        "/api/v1/enroll": { "post": {
            "summary": "Redeem a one-time invite code for a device token", "security": [],
            "requestBody": body(schema("Enroll")),
            "responses": responses(ok(schema("Enrolled")), &codes(&[BODY, &[403, 410, 429, 500], WRITE]), &[
                (400, "a bad body, or `replaces` names a device this server does not know"),
                (403, "`replaces`: the token is not that device's, or the device belongs to another campaign (the invite stays unused)"),
                (410, "the code is unknown, expired or already used: ask an organizer for a new invite"),
                (429, "this address tried too many enrollments (`max_enrollments_per_address` in `enroll_window_secs`); retry later"),
            ]) } },
        "/api/v1/campaigns": {
            "get": { "summary": "Campaigns the token may see (every one for the admin, its own for another device)",
                     "responses": responses(ok(schema("Campaigns")), &AUTH, &[]) },
            "post": { "summary": "Create a campaign (admin)",
                      "requestBody": body(schema("NewCampaign")),
                      "responses": responses(ok(schema("CreatedCampaign")), &codes(&[&AUTH, ROLE, BODY, WRITE]), &[
                          (403, "only the admin token creates campaigns"),
                          (400, "a bad body, or a field the campaign document refuses (`refused: <field>: <reason>`)"),
                      ]) } },
        "/api/v1/campaigns/{id}/events": { "post": {
            "summary": "Add or correct an event (admin or organizer of the campaign)",
            "parameters": [id_param("the campaign id")],
            "requestBody": body(schema("NewEvent")),
            "responses": responses(ok(schema("Event")), &campaign_body_write, &[]) } },
        "/api/v1/campaigns/{id}/totals": { "get": {
            "summary": "A campaign's totals (admin or organizer of the campaign)",
            "description": "Signatures counted, unique signers, struck, withdrawn, paper sheets; each broken down by event, city, FSA, riding, day and canvasser; distinct check-ins per event. Small cells are hidden for every token but the admin's. Each filter at most once; a query parameter not listed here (but `token`) is a 400.",
            "parameters": totals_filters(),
            "responses": responses(ok(schema("Totals")), &codes(&[&AUTH, ROLE, CAMPAIGN, &[400]]), &[
                (400, "a bad filter: an event not of the campaign, a time not RFC 3339, from not before to, a blank city, not an FSA, a parameter given twice or unknown"),
                (403, "a token of the wrong role or campaign, or an organizer's suppress=false"),
            ]) } },
        "/api/v1/campaigns/{id}/totals/stream": { "get": {
            "summary": "The totals, live (Server-Sent Events)",
            "description": "Sends an event `totals` (data: the Totals JSON) at once and whenever the totals change as devices sync, at most a few a second; `error` if they can no longer be computed. Takes the same filters as /totals; the token may come as ?token= for EventSource.",
            "parameters": totals_filters(),
            "responses": responses(json!({ "description": "an event stream: `totals` events, and an `error` event before the stream ends when the totals cannot be computed",
                "content": { "text/event-stream": { "schema": { "oneOf": [
                    { "type": "object", "required": ["event", "data"], "properties": {
                        "event": { "const": "totals" },
                        "data": { "type": "string", "contentMediaType": "application/json", "contentSchema": schema("Totals") } } },
                    { "type": "object", "required": ["event", "data"], "properties": {
                        "event": { "const": "error" },
                        "data": { "type": "string", "contentMediaType": "application/json", "contentSchema": schema("Error") } } } ] } } } }),
                &codes(&[&AUTH, ROLE, CAMPAIGN, &[400, 503]]), &[
                (400, "a bad filter, as for /totals"),
                (403, "a token of the wrong role or campaign, or an organizer's suppress=false"),
                (429, "too many wrong tokens from this address, or this device has its most live streams open (`max_streams_per_device`)"),
                (503, "the server has its most live streams open (`max_streams`)"),
            ]) } },
        "/api/v1/campaigns/{id}/sealed": { "get": {
            "summary": "Signatures for export, personal fields sealed (admin or organizer of the campaign)",
            "parameters": [id_param("the campaign id")],
            "responses": responses(ok(json!({ "type": "array", "items": schema("SealedRecord") })), &codes(&[&AUTH, ROLE, CAMPAIGN]), &[]) } },
        "/api/v1/campaigns/{id}/keys": { "get": {
            "summary": "A page of the campaign's wrapped record keys, to open an export's v2 records (admin or organizer of the campaign; audited as export.keys)",
            "parameters": [id_param("the campaign id"),
                query("after", "the record id to start after (the previous page's next)", json!({ "type": "string" })),
                query("limit", "records per page", json!({ "type": "integer", "minimum": 1, "maximum": crate::api::keys::MAX_RECORDS, "default": crate::api::keys::MAX_RECORDS }))],
            "responses": responses(ok(schema("KeysPage")), &codes(&[&AUTH, ROLE, CAMPAIGN, &[400]]), &[]) } },
        "/api/v1/campaigns/{id}/erase": { "post": {
            "summary": "Erase signatures for good, by id or by duplicate token (admin or organizer of the campaign; audited as record.erase, ids only)",
            "description": "Deletes every wrapped key of the records (so their v2 details can never be opened again), remembers them as erased (later uploads of their keys are refused), truncates the WAL, and writes an erased strike per record in the review document: totals stop counting them. See docs/security.md, Erasure.",
            "parameters": [id_param("the campaign id")],
            "requestBody": body(schema("EraseRequest")),
            "responses": responses(ok(schema("Erased")), &campaign_body_write, &[(404, "no such campaign, a record id that is no signature of it, or a token no signature has (nothing erased)")]) } },
        "/api/v1/keys": { "put": {
            "summary": "Upload record keys (a phone of a campaign; docs/clients.md 5a)",
            "description": "Each key is stored per (campaign, record, this device); the answer says, per key, stored, already_stored (same bytes again) or refused with a reason.",
            "requestBody": body(schema("KeysUpload")),
            "responses": responses(ok(schema("KeysUploaded")), &codes(&[&AUTH, ROLE, BODY, WRITE]), &[(403, "a token with no campaign (the admin's)"), (400, "not JSON, or more keys than one request takes")]) } },
        "/api/v1/campaigns/{id}/strikes": { "post": {
            "summary": "Strike a signature, or revoke a strike (admin or organizer of the campaign)",
            "description": "Written to the campaign's review document through the validated write path; the totals count it at once.",
            "parameters": [id_param("the campaign id")],
            "requestBody": body(schema("NewStrike")),
            "responses": responses(ok(schema("Strike")), &campaign_body_write, &[(404, "no such campaign, or no such signature in it")]) } },
        "/api/v1/campaigns/{id}/sheets": { "post": {
            "summary": "Record a paper petition sheet, or update it (admin or organizer of the campaign)",
            "description": "Written to the campaign's review document through the validated write path; the totals' paper count follows.",
            "parameters": [id_param("the campaign id")],
            "requestBody": body(schema("NewSheet")),
            "responses": responses(ok(schema("Sheet")), &campaign_body_write, &[]) } },
        "/api/v1/campaigns/{id}/review": { "get": {
            "summary": "The campaign's strikes and paper sheets (admin or organizer of the campaign)",
            "parameters": [id_param("the campaign id")],
            "responses": responses(ok(schema("Review")), &codes(&[&AUTH, ROLE, CAMPAIGN]), &[]) } },
        "/api/v1/invites": { "post": {
            "summary": "Create a one-time invite code (admin or organizer of the campaign)",
            "requestBody": body(schema("NewInvite")),
            "responses": responses(ok(schema("Invite")), &codes(&[&AUTH, ROLE, CAMPAIGN, BODY, WRITE]), &[]) } },
        "/api/v1/audit": { "get": {
            "summary": "The audit log: every organizer and admin action, oldest first, each chained to the one before by its hash (admin: all; an organizer: their campaign's)",
            "parameters": [
                query("from", "entries at or after this time (ms since the epoch)", json!({ "type": "integer" })),
                query("to", "entries before this time (ms since the epoch)", json!({ "type": "integer" })),
                query("actor", "one device's actions", json!({ "type": "string" })),
                query("action", "one action, e.g. device.revoke", json!({ "type": "string" })),
                query("campaign", "one campaign's (an organizer's own only)", json!({ "type": "string" })),
                query("limit", "the newest N (default 1000)", json!({ "type": "integer", "minimum": 1, "maximum": 10000 }))],
            "responses": responses(ok(json!({ "type": "array", "items": schema("AuditEntry") })), &codes(&[&AUTH, ROLE, &[400]]), &[(403, "canvassers cannot read the audit; an organizer reads their own campaign's")]) } },
        "/api/v1/audit/verify": { "get": {
            "summary": "Checks the audit log's chain of hashes; names the first entry that was changed, moved or removed (admin)",
            "responses": responses(ok(json!({ "type": "object", "required": ["ok"], "properties": {
                "ok": { "type": "boolean" }, "entries": { "type": "integer" },
                "broken_at": { "type": "integer" }, "why": { "type": "string" } } })), &codes(&[&AUTH, ROLE]), &[(403, "only the admin token verifies the audit")]) } },
        "/api/v1/me": { "get": {
            "summary": "The device the token belongs to (any token): its id, name, role and campaign, never the token",
            "responses": responses(ok(schema("Device")), &codes(&[&AUTH]), &[]) } },
        "/api/v1/signin-links": { "post": {
            "summary": "Leave the caller's token, sealed to a throwaway age key, for one dashboard sign-in within 10 minutes (an organizer or the admin; `tally dashboard`)",
            "requestBody": body(schema("NewSigninLink")),
            "responses": responses(ok(schema("SigninLink")), &codes(&[&AUTH, ROLE, BODY]), &[(403, "a canvasser's token does not sign in to the dashboard")]) } },
        "/api/v1/signin-links/{id}/redeem": { "post": {
            "summary": "Take a sign-in link's sealed token, once (no token: the link is the proof, and the token is sealed to the secret in the link's fragment)", "security": [],
            "parameters": [id_param("the link's id")],
            "responses": responses(ok(schema("SealedToken")), &[404, 500], &[(404, "no such link: it was used, has expired, or the server restarted since it was made")]) } },
        "/api/v1/quarantine": { "get": {
            "summary": "Refused changes, oldest first: device, document, time and reason, never the refused bytes (admin)",
            "parameters": [
                query("after", "the `next_after` of the previous page", json!({ "type": "integer" })),
                query("limit", "entries per page (default 200)", json!({ "type": "integer", "minimum": 1, "maximum": 1000 })),
                query("device", "only this device's entries", json!({ "type": "string" }))],
            "responses": responses(ok(schema("QuarantineList")), &codes(&[&AUTH, ROLE, &[400]]), &[(403, "only the admin token lists the quarantine")]) } },
        "/api/v1/devices": { "get": {
            "summary": "Enrolled devices (admin)",
            "responses": responses(ok(json!({ "type": "array", "items": schema("Device") })), &codes(&[&AUTH, ROLE]), &[(403, "only the admin token lists devices")]) } },
        "/api/v1/devices/{id}/revoke": { "post": {
            "summary": "Revoke a device and close its connections and streams (admin)",
            "description": "Revoking the admin device itself locks the API until the server restarts (the next start creates a new admin device and admin.token).",
            "parameters": [id_param("the device id")],
            "responses": responses(ok(schema("Revoked")), &codes(&[&AUTH, ROLE, &[404, 409], WRITE]), &[
                (403, "only the admin token revokes devices"),
                (404, "no such device"),
                (409, "the device was already revoked (the message says when)"),
            ]) } }
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tally",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The tally sync server's HTTP API: campaigns, enrollment, organizers' totals, strikes, paper sheets and sealed export. Errors are {\"error\": \"...\"} with a message that says what to do."
        },
        "security": [ { "bearer": [] }, { "tokenQuery": [] } ],
        "paths": paths,
        "components": components()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
        out
    }

    /// Every operation that takes a token says what a missing or wrong one gets (401, and 429
    /// once an address has sent too many), every one with a body what a bad body gets (400, and
    /// 413 past the limit), and every status but the upgrade's 101 comes with a body.
    #[test]
    fn every_operation_states_its_refusals() {
        let doc = document();
        for (method, path, op) in operations(&doc) {
            let statuses = op["responses"].as_object().expect("responses");
            let has = |code: &str| statuses.contains_key(code);
            let open = op.get("security") == Some(&json!([]));
            if !open {
                assert!(has("401") && has("429"), "{method} {path}: no 401 or 429");
            }
            if op.get("requestBody").is_some() {
                assert!(has("400") && has("413"), "{method} {path}: no 400 or 413");
            }
            if path.contains("{id}") {
                assert!(
                    has("404") || has("410"),
                    "{method} {path}: nothing for an unknown id (404, or 410 for one used up)"
                );
            }
            for (code, response) in statuses {
                assert!(
                    code == "101" || response.get("content").is_some(),
                    "{method} {path} {code}: no body"
                );
            }
        }
    }

    /// The request bodies' limits are the documents' own (`tally_core::fields`), and every time
    /// zone offered is one the campaign check accepts.
    #[test]
    fn request_schemas_state_the_core_checks() {
        let doc = document();
        let s = &doc["components"]["schemas"];
        let campaign = &s["NewCampaign"]["properties"];
        assert_eq!(campaign["title"]["maxLength"], json!(MAX_SHORT_TEXT));
        assert_eq!(campaign["title"]["minLength"], json!(1));
        assert_eq!(campaign["petition"]["maxLength"], json!(MAX_LONG_TEXT));
        assert_eq!(campaign["recipients"]["maxItems"], json!(MAX_RECIPIENTS));
        let zones = campaign["timezone"]["enum"].as_array().expect("time zones");
        assert!(zones.contains(&json!("America/Toronto")));
        assert!(
            zones
                .iter()
                .all(|z| z.as_str().unwrap().parse::<chrono_tz::Tz>().is_ok())
        );
        let event = &s["NewEvent"]["properties"];
        assert_eq!(event["place"]["minLength"], json!(0));
        assert_eq!(
            event["starts_at"]["oneOf"][0]["minimum"],
            json!(MIN_TIME_MS)
        );
        assert_eq!(
            s["NewSheet"]["properties"]["count"]["maximum"],
            json!(10000)
        );
        for required in [
            "NewCampaign",
            "NewEvent",
            "NewStrike",
            "NewSheet",
            "Enroll",
            "NewInvite",
        ] {
            assert!(s[required]["required"].is_array(), "{required}");
        }
    }
}
