//! `/metrics` over HTTP during real syncs (issue 15, metrics): a real `tally serve` with
//! `TALLY_METRICS_LISTEN`, an organizer and a `tally-device` phone; the exposition is parsed with
//! a Prometheus text parser (the `prometheus-parse` crate), and the counters move by exactly what
//! the test did. No label value carries a token, a device id or a name.

use std::collections::HashMap;
use std::time::Duration;

use tally_tests::server::Server as _;
use tally_tests::{Organizer, Phone, ServerProcess};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Scrape {
    text: String,
    samples: Vec<prometheus_parse::Sample>,
}

impl Scrape {
    fn get(url: &str) -> Scrape {
        let response = ureq::get(url)
            .timeout(Duration::from_secs(5))
            .call()
            .expect("scrape /metrics");
        assert!(
            response
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/openmetrics-text")),
            "content type {:?}",
            response.header("content-type")
        );
        let text = response.into_string().unwrap();
        let samples = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("the exposition parses")
            .samples;
        assert!(!samples.is_empty(), "no samples in:\n{text}");
        Scrape { text, samples }
    }

    /// The value of a counter or gauge sample with these labels (0 when absent).
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                _ => 0.0,
            })
            .sum()
    }

    /// A histogram's count (its `+Inf` bucket).
    fn count(&self, metric: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter_map(|s| match &s.value {
                prometheus_parse::Value::Histogram(b) => b.last().map(|b| b.count),
                _ => None,
            })
            .sum()
    }

    /// Every label value in the exposition.
    fn label_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        for line in self.text.lines().filter(|l| !l.starts_with('#')) {
            if let Some(labels) = line.split_once('{').and_then(|(_, r)| r.split_once('}')) {
                for kv in labels.0.split(',') {
                    if let Some((_, v)) = kv.split_once('=') {
                        out.push(v.trim_matches('"').to_string());
                    }
                }
            }
        }
        out
    }
}

#[test]
fn metrics_count_what_a_sync_did() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = ServerProcess::start_with_env(
        &root.path().join("server"),
        &[("TALLY_METRICS_LISTEN", &listen)],
    );
    let url = format!("http://{listen}/metrics");
    let org = Organizer::new(&root.path().join("org"), &server.base(), &server.data);
    let recipient = org.keygen("organizer.age");
    let campaign = org.create_campaign("Status for All", &recipient);

    let before = Scrape::get(&url);
    assert_eq!(before.value("tally_sync_connections", &[]), 0.0);

    // One phone enrolls (one enrollment, a first sync that creates its collection), signs three
    // signatures offline, then syncs them.
    let phone = Phone::new(&root.path().join("phone"));
    let enrolled = phone.enroll(&org.invite(&campaign), "Amina's phone");
    let device_id = enrolled["enrollment"]["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..3 {
        phone.sign(&format!("Signer {i}"), "M5V 2T6", "Toronto", &[]);
    }
    phone.sync(30).ok();
    // A wrong token, twice; a used-up enrollment code, once.
    for _ in 0..2 {
        let r = ureq::get(&format!("{}/api/v1/campaigns", server.base()))
            .set("Authorization", "Bearer tly_0000")
            .call();
        assert!(matches!(r, Err(ureq::Error::Status(401, _))), "{r:?}");
    }
    let refused = ureq::post(&format!("{}/api/v1/enroll", server.base()))
        .send_json(serde_json::json!({"code": "AAAA-BBBB-CCCC", "name": "x"}));
    assert!(
        matches!(refused, Err(ureq::Error::Status(_, _))),
        "{refused:?}"
    );
    // Two totals requests.
    for _ in 0..2 {
        assert_eq!(org.totals(&campaign)["signatures"], 3);
    }

    let after = Scrape::get(&url);
    let moved = |metric: &str, labels: &[(&str, &str)]| {
        after.value(metric, labels) - before.value(metric, labels)
    };
    assert_eq!(moved("tally_enrollments_total", &[("outcome", "Ok")]), 1.0);
    assert_eq!(
        moved("tally_enrollments_total", &[("outcome", "Refused")]),
        1.0
    );
    assert_eq!(
        moved("tally_auth_failures_total", &[("reason", "Unknown")]),
        2.0
    );
    assert_eq!(
        after.count("tally_totals_request_seconds") - before.count("tally_totals_request_seconds"),
        2.0
    );
    // The enrollment's first sync created the collection, the second pushed the signatures:
    // two accepted messages, each acknowledged, nothing refused.
    assert_eq!(
        moved("tally_changes_accepted_total", &[]),
        2.0,
        "{}",
        after.text
    );
    assert_eq!(
        after.count("tally_ack_latency_seconds") - before.count("tally_ack_latency_seconds"),
        2.0
    );
    assert!(after.count("tally_commit_seconds") >= 2.0);
    assert_eq!(moved("tally_changes_refused_total", &[]), 0.0);
    assert!(moved("tally_frames_total", &[("direction", "In")]) >= 4.0);
    assert!(moved("tally_frames_total", &[("direction", "Out")]) >= 4.0);
    assert_eq!(
        after.value("tally_sync_connections", &[]),
        0.0,
        "the phone's syncs ended"
    );
    assert!(after.value("tally_database_bytes", &[]) > 0.0);
    assert_eq!(after.value("tally_quarantine_entries", &[]), 0.0);

    // No label carries a secret, an id or a name.
    let token = std::fs::read_to_string(server.data.join("admin.token")).unwrap();
    for v in after.label_values() {
        for secret in [
            token.trim(),
            device_id.as_str(),
            "Amina",
            "Signer",
            campaign.as_str(),
        ] {
            assert!(!v.contains(secret), "label value {v:?} carries {secret:?}");
        }
    }
    let by_metric: HashMap<&str, usize> = after.samples.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.metric.as_str()).or_default() += 1;
        m
    });
    assert!(
        by_metric.contains_key("tally_loaded_documents"),
        "{by_metric:?}"
    );
}
