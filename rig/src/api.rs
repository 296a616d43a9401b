//! The HTTP API of a running server: one base URL, an optional bearer token, one keep-alive
//! agent. [`Api::call`] answers any status with its JSON body; [`Api::ok`] wants a 200 and
//! reads the answer as the server's type. The organizer's calls the tests and the benchmark both
//! make (a campaign and its event, an invite, an enrollment, the totals) are typed here once.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tally_server::api::types::{
    CreatedCampaign, EnrollRequest, Enrolled, Event, Invite, InviteRequest, NewCampaign, NewEvent,
};

/// A client of one server's HTTP API.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Api {
    /// A client of `base` (`http://127.0.0.1:PORT`) sending `token` as its bearer token, with a
    /// 120 s timeout per call.
    pub fn new(base: &str, token: Option<&str>) -> Api {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build();
        Api::with_agent(base, token, agent)
    }

    /// The same with a given agent (one that trusts a test certificate, for `https://`).
    pub fn with_agent(base: &str, token: Option<&str>, agent: ureq::Agent) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            agent,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// One call, with a JSON body or none; returns the status and the JSON body (`Null` when the
    /// answer has none). An error only when no answer came (connection refused, timeout).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(u16, Value)> {
        let mut req = self.agent.request(method, &format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok((r.status(), r.into_json().unwrap_or(Value::Null))),
            Err(ureq::Error::Status(code, r)) => Ok((code, r.into_json().unwrap_or(Value::Null))),
            Err(e) => Err(anyhow!("HTTP {method} {path}: {e}")),
        }
    }

    /// A call that must answer 200 with an `R`: otherwise an error with the status and the
    /// server's message.
    pub fn ok<R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<R> {
        let (status, v) = self.call(method, path, body)?;
        if status != 200 {
            bail!("HTTP {method} {path} answered {status}: {v}");
        }
        serde_json::from_value(v.clone())
            .with_context(|| format!("the answer of {method} {path}: {v}"))
    }

    /// Creates a campaign.
    pub fn create_campaign(&self, campaign: &NewCampaign) -> Result<CreatedCampaign> {
        self.ok("POST", "/api/v1/campaigns", Some(campaign))
    }

    /// Adds an event to campaign `id`.
    pub fn add_event(&self, id: &str, event: &NewEvent) -> Result<Event> {
        self.ok(
            "POST",
            &format!("/api/v1/campaigns/{id}/events"),
            Some(event),
        )
    }

    /// A one-time invite code for a device of `campaign` with `role`.
    pub fn invite(&self, campaign: &str, role: &str) -> Result<String> {
        let inv: Invite = self.ok(
            "POST",
            "/api/v1/invites",
            Some(&InviteRequest {
                campaign: campaign.to_string(),
                role: role.to_string(),
            }),
        )?;
        Ok(inv.code)
    }

    /// Redeems an invite code (no token needed); the server's answer: device id, token,
    /// document URLs.
    pub fn enroll(&self, code: &str, name: &str) -> Result<Enrolled> {
        self.ok(
            "POST",
            "/api/v1/enroll",
            Some(&EnrollRequest {
                code: code.to_string(),
                name: name.to_string(),
                replaces: None,
            }),
        )
    }

    /// The campaign's totals: the status, the body, and how long the answer took.
    pub fn totals(&self, campaign: &str) -> Result<(u16, Value, Duration)> {
        self.totals_with(campaign, "")
    }

    /// The campaign's totals for the query `query` (`wait=false`, `city=Toronto`, ...; empty
    /// for none).
    pub fn totals_with(&self, campaign: &str, query: &str) -> Result<(u16, Value, Duration)> {
        let t = Instant::now();
        let sep = if query.is_empty() { "" } else { "?" };
        let (s, v) = self.call(
            "GET",
            &format!("/api/v1/campaigns/{campaign}/totals{sep}{query}"),
            None::<&()>,
        )?;
        Ok((s, v, t.elapsed()))
    }
}
