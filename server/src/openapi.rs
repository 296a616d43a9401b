//! The OpenAPI 3 document of the server (`GET /api/v1/openapi.json`), written by hand as JSON.
//! It lists every route of [`crate::ROUTES`] and no other (a test holds the two equal and checks
//! the router serves exactly those methods), with the schemas of the answers the handlers build.

use serde_json::{Value, json};

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

fn query(name: &str, description: &str, format: Option<&str>) -> Value {
    let mut s = json!({ "type": "string" });
    if let Some(f) = format {
        s["format"] = json!(f);
    }
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": s })
}

/// The standard failures of an authenticated call, plus `extra`.
fn failures(extra: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert(
        "401".into(),
        error("no token, or an unknown or revoked one"),
    );
    m.insert("403".into(), error("a token of the wrong role or campaign"));
    for (code, what) in extra {
        m.insert((*code).into(), error(what));
    }
    m.insert(
        "500".into(),
        error("storage or another internal failure (logged)"),
    );
    m
}

fn responses(success: Value, extra: &[(&str, &str)]) -> Value {
    let mut m = failures(extra);
    m.insert("200".into(), success);
    Value::Object(m)
}

fn totals_filters() -> Vec<Value> {
    vec![
        id_param("the campaign id"),
        query(
            "event",
            "only this event's signatures and check-ins (an event id of the campaign)",
            None,
        ),
        query(
            "from",
            "only signatures collected (and check-ins made) at or after this RFC 3339 time",
            Some("date-time"),
        ),
        query(
            "to",
            "only signatures collected (and check-ins made) before this RFC 3339 time",
            Some("date-time"),
        ),
        query(
            "city",
            "only signatures of signers in this city (check-ins are not filtered by city)",
            None,
        ),
        query(
            "fsa",
            "only signatures of signers in this FSA, e.g. M5V (check-ins are not filtered by FSA)",
            None,
        ),
        json!({ "name": "suppress", "in": "query", "required": false,
                "description": "small-cell suppression: on by default for every token but the admin's; the admin may ask for it with true; an organizer's false is refused (403)",
                "schema": { "type": "boolean" } }),
    ]
}

fn cell_map(what: &str) -> Value {
    json!({ "type": "object", "description": what, "additionalProperties": schema("Cell") })
}

fn components() -> Value {
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
                "fsa": { "type": ["string", "null"] } } },
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
                "required": ["campaign", "signatures", "unique_signers", "struck", "withdrawn", "by_event", "by_city", "by_fsa", "by_riding", "by_day", "by_canvasser", "checkins", "paper", "filters", "suppression"],
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
                    "suppression": schema("Suppression") } },
            "SealedRecord": { "type": "object",
                "required": ["id", "collected_at", "collected_by", "event", "city", "fsa", "riding", "consent_contact", "counted", "withdrawn", "sealed", "duplicate_group"],
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
                    "sealed": { "type": "string", "description": "the age file of the personal fields, hex; opened only on an organizer's machine" },
                    "duplicate_group": { "type": "string", "description": "equal for the campaign's signatures with the same duplicate token (the same signer), not the token: 16 hex digits of SHA-256 over a fixed label, the campaign id and the token" } } },
            "Review": { "type": "object", "required": ["strikes", "sheets"], "properties": {
                "strikes": { "type": "array", "items": schema("Strike"), "description": "every strike, revoked ones included" },
                "sheets": { "type": "array", "items": schema("Sheet") } } },
            "NewStrike": { "type": "object", "required": ["signature", "reason"], "properties": {
                "signature": { "type": "string", "description": "the struck signature's id" },
                "reason": { "type": "string", "enum": ["duplicate", "invalid", "withdrawn_consent", "test_entry"] },
                "revoked": { "type": "boolean", "default": false, "description": "true revokes the strike: the signature counts again" } } },
            "Strike": { "type": "object", "required": ["signature", "reason", "by", "at", "revoked"], "properties": {
                "signature": { "type": "string" },
                "reason": { "type": "string", "enum": ["duplicate", "invalid", "withdrawn_consent", "test_entry"] },
                "by": { "type": "string", "description": "the organizer's device id" },
                "at": { "type": "integer", "description": "ms since the epoch" },
                "revoked": { "type": "boolean" } } },
            "Sheet": { "type": "object", "required": ["serial", "count"], "properties": {
                "serial": { "type": "string" },
                "count": { "type": "integer", "minimum": 0, "maximum": 10000 },
                "riding": { "type": ["string", "null"] },
                "status": { "type": "string", "enum": ["collected", "counted", "delivered"], "default": "collected" } } },
            "NewEvent": { "type": "object", "required": ["name", "city", "starts_at"], "properties": {
                "id": { "type": ["string", "null"], "description": "default: 12 random hex digits; an existing id corrects that event" },
                "name": { "type": "string" },
                "city": { "type": "string" },
                "starts_at": { "oneOf": [ { "type": "integer", "description": "ms since the epoch" }, { "type": "string", "format": "date-time" } ] },
                "place": { "type": "string", "default": "" } } },
            "Event": { "type": "object", "required": ["id", "name", "city", "starts_at", "place"], "properties": {
                "id": { "type": "string" }, "name": { "type": "string" }, "city": { "type": "string" },
                "starts_at": { "type": "integer" }, "place": { "type": "string" } } },
            "NewCampaign": { "type": "object", "required": ["title", "petition", "addressee", "recipients"], "properties": {
                "title": { "type": "string" }, "petition": { "type": "string" }, "addressee": { "type": "string" },
                "goal": { "type": "integer", "default": 0 },
                "timezone": { "type": "string", "default": "America/Toronto" },
                "recipients": { "type": "array", "items": { "type": "string", "description": "age1..." } } } },
            "CreatedCampaign": { "type": "object", "required": ["campaign", "campaign_url", "review_url", "totals_url"], "properties": {
                "campaign": { "type": "string" }, "campaign_url": { "type": "string" },
                "review_url": { "type": "string" }, "totals_url": { "type": "string" } } },
            "Campaigns": { "type": "object", "required": ["campaigns"], "properties": {
                "campaigns": { "type": "array", "items": { "type": "object", "properties": {
                    "campaign": { "type": "string" }, "title": { "type": "string" }, "addressee": { "type": "string" },
                    "goal": { "type": "integer" }, "events": { "type": "array", "items": schema("Event") },
                    "timezone": { "type": "string", "description": "the IANA time zone its days are counted in" } } } } } },
            "Enroll": { "type": "object", "required": ["code"], "properties": {
                "code": { "type": "string", "description": "XXXX-XXXX-XXXX" }, "name": { "type": "string" },
                "replaces": { "type": ["object", "null"], "required": ["device_id", "token"],
                    "description": "re-enrollment: the device this phone was before, proven by its token (even revoked or expired); it must belong to the invite's campaign. The new device shares its lineage and the old one is revoked",
                    "properties": { "device_id": { "type": "string" }, "token": { "type": "string" } } } } },
            "Enrolled": { "type": "object", "required": ["device_id", "token", "role"], "properties": {
                "device_id": { "type": "string" }, "token": { "type": "string", "description": "shown this once" },
                "role": { "type": "string" }, "campaign": { "type": ["string", "null"] },
                "campaign_url": { "type": ["string", "null"] }, "totals_url": { "type": ["string", "null"] },
                "replaces": { "type": ["string", "null"], "description": "the device this one replaces (now revoked)" } } },
            "NewInvite": { "type": "object", "required": ["campaign", "role"], "properties": {
                "campaign": { "type": "string" }, "role": { "type": "string", "enum": ["canvasser", "organizer"] } } },
            "Invite": { "type": "object", "required": ["code", "expires_at", "server", "campaign", "role"], "properties": {
                "code": { "type": "string" }, "expires_at": { "type": "integer" }, "server": { "type": "string" },
                "campaign": { "type": "string" }, "role": { "type": "string" } } },
            "AuditEntry": { "type": "object", "required": ["seq", "at", "actor_id", "actor_name", "action", "target", "result", "prev_hash", "hash"], "properties": {
                "seq": { "type": "integer" }, "at": { "type": "integer" },
                "actor_id": { "type": "string", "description": "a device id, never a token" }, "actor_name": { "type": "string" },
                "action": { "type": "string", "enum": ["campaign.create", "event.add", "invite.create", "device.enroll", "device.revoke", "review.strike", "review.unstrike", "review.sheet", "export.sealed", "server.start"] },
                "campaign": { "type": ["string", "null"] }, "target": { "type": "string" },
                "result": { "type": "string", "description": "ok, or refused: STATUS message" },
                "prev_hash": { "type": "string" }, "hash": { "type": "string" } } },
            "Device": { "type": "object", "required": ["device_id", "name", "role", "created_at"], "properties": {
                "device_id": { "type": "string" }, "name": { "type": "string" },
                "role": { "type": "string", "enum": ["admin", "organizer", "canvasser"] },
                "campaign": { "type": ["string", "null"] }, "created_at": { "type": "integer" },
                "revoked_at": { "type": ["integer", "null"] }, "last_seen": { "type": ["integer", "null"] },
                "replaces": { "type": ["string", "null"], "description": "the device this one replaced at enrollment" },
                "lineage": { "type": "string", "description": "the first device of this phone's chain of devices (its own id if it replaced none)" } } },
            "Revoked": { "type": "object", "required": ["revoked", "connections_closed"], "properties": {
                "revoked": { "type": "string" }, "connections_closed": { "type": "integer" } } },
            "Health": { "type": "object", "required": ["status", "documents_loaded", "connections"], "properties": {
                "status": { "type": "string" }, "documents_loaded": { "type": "integer" }, "connections": { "type": "integer" } } }
        }
    })
}

/// The whole document.
pub fn document() -> Value {
    let campaign_404 = ("404", "no such campaign");
    let bad = (
        "400",
        "a bad query or body: the message names it and says what to send",
    );
    let paths = json!({
        "/healthz": { "get": {
            "summary": "Liveness and load", "security": [],
            "responses": { "200": ok(schema("Health")) } } },
        "/sync": { "get": {
            "summary": "automerge-repo WebSocket sync (upgrade)",
            "description": "Upgrades to a WebSocket speaking automerge-repo's protocol; see docs/protocol.md.",
            "responses": { "101": { "description": "switching protocols" },
                           "401": error("no token, or an unknown, revoked or expired one (expired: unused for `token_idle_expiry_secs`)"),
                           "503": error("the connection limit is reached") } } },
        "/api/v1/openapi.json": { "get": {
            "summary": "This document", "security": [],
            "responses": { "200": ok(json!({ "type": "object" })) } } },
        "/api/v1/enroll": { "post": {
            "summary": "Redeem a one-time invite code for a device token", "security": [],
            "requestBody": body(schema("Enroll")),
            "responses": { "200": ok(schema("Enrolled")),
                           "400": error("a bad body, or `replaces` names a device this server does not know"),
                           "403": error("`replaces`: the token is not that device's, or the device belongs to another campaign (the invite stays unused)"),
                           "410": error("the code is unknown, expired or already used") } } },
        "/api/v1/campaigns": {
            "get": { "summary": "Campaigns the token may see",
                     "responses": responses(ok(schema("Campaigns")), &[]) },
            "post": { "summary": "Create a campaign (admin)",
                      "requestBody": body(schema("NewCampaign")),
                      "responses": responses(ok(schema("CreatedCampaign")), &[bad]) } },
        "/api/v1/campaigns/{id}/events": { "post": {
            "summary": "Add or correct an event (admin or organizer of the campaign)",
            "parameters": [id_param("the campaign id")],
            "requestBody": body(schema("NewEvent")),
            "responses": responses(ok(schema("Event")), &[bad, campaign_404]) } },
        "/api/v1/campaigns/{id}/totals": { "get": {
            "summary": "A campaign's totals (admin or organizer of the campaign)",
            "description": "Signatures counted, unique signers, struck, withdrawn, paper sheets; each broken down by event, city, FSA, riding, day and canvasser; distinct check-ins per event. Small cells are hidden for every token but the admin's.",
            "parameters": totals_filters(),
            "responses": responses(ok(schema("Totals")), &[bad, campaign_404]) } },
        "/api/v1/campaigns/{id}/totals/stream": { "get": {
            "summary": "The totals, live (Server-Sent Events)",
            "description": "Sends an event `totals` (data: the Totals JSON) at once and whenever the totals change as devices sync, at most a few a second; `error` if they can no longer be computed. Takes the same filters as /totals; the token may come as ?token= for EventSource.",
            "parameters": totals_filters(),
            "responses": responses(json!({ "description": "an event stream of Totals",
                "content": { "text/event-stream": { "schema": schema("Totals") } } }), &[bad, campaign_404]) } },
        "/api/v1/campaigns/{id}/sealed": { "get": {
            "summary": "Signatures for export, personal fields sealed (admin or organizer of the campaign)",
            "parameters": [id_param("the campaign id")],
            "responses": responses(ok(json!({ "type": "array", "items": schema("SealedRecord") })), &[campaign_404]) } },
        "/api/v1/campaigns/{id}/strikes": { "post": {
            "summary": "Strike a signature, or revoke a strike (admin or organizer of the campaign)",
            "description": "Written to the campaign's review document through the validated write path; the totals count it at once.",
            "parameters": [id_param("the campaign id")],
            "requestBody": body(schema("NewStrike")),
            "responses": responses(ok(schema("Strike")), &[bad, ("404", "no such campaign, or no such signature in it")]) } },
        "/api/v1/campaigns/{id}/sheets": { "post": {
            "summary": "Record a paper petition sheet, or update it (admin or organizer of the campaign)",
            "description": "Written to the campaign's review document through the validated write path; the totals' paper count follows.",
            "parameters": [id_param("the campaign id")],
            "requestBody": body(schema("Sheet")),
            "responses": responses(ok(schema("Sheet")), &[bad, campaign_404]) } },
        "/api/v1/campaigns/{id}/review": { "get": {
            "summary": "The campaign's strikes and paper sheets (admin or organizer of the campaign)",
            "parameters": [id_param("the campaign id")],
            "responses": responses(ok(schema("Review")), &[campaign_404]) } },
        "/api/v1/invites": { "post": {
            "summary": "Create a one-time invite code (admin or organizer of the campaign)",
            "requestBody": body(schema("NewInvite")),
            "responses": responses(ok(schema("Invite")), &[bad, campaign_404]) } },
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
        "/api/v1/devices": { "get": {
            "summary": "Enrolled devices (admin)",
            "responses": responses(ok(json!({ "type": "array", "items": schema("Device") })), &[]) } },
        "/api/v1/devices/{id}/revoke": { "post": {
            "summary": "Revoke a device and close its connections and streams (admin)",
            "parameters": [id_param("the device id")],
            "responses": responses(ok(schema("Revoked")), &[("404", "no such device"), ("409", "the device was already revoked (the message says when)")]) } }
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
