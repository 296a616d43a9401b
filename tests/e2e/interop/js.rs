//! The suite's JavaScript peer: npm `@automerge/automerge-repo` and
//! `@automerge/automerge-repo-network-websocket` 2.5.x, run by node from `tests/js/client.mjs`,
//! one run per step. It connects with the device's token as the `token` query parameter, the way
//! a browser must (browsers cannot set headers on a WebSocket upgrade).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use automerge::Automerge;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tally_tests::TestServer;
use tally_tests::server::Server;

use super::{Client, Read, Refusal};

suite!(JsClient);

/// Longest wait for one run of the node client (it gives up by itself after 15 s).
const RUN: Duration = Duration::from_secs(30);

/// The JS client, as the sync URL (with the token) its runs connect to.
pub struct JsClient {
    ws: String,
}

/// How one run of the node client ended.
#[derive(Debug)]
struct Run {
    /// Exit status (`None` if killed by a signal).
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// `Ok` for a successful run, else the refusal client.mjs reported by its exit status:
    /// 2 for the server's `error` message (`server error: ...` on stderr), 3 for an unavailable
    /// document, anything else a failure with everything the client said.
    fn outcome(&self) -> Result<(), Refusal> {
        match self.status {
            Some(0) => Ok(()),
            Some(2) => match self.stderr.split_once("server error: ") {
                Some((_, message)) => Err(Refusal::Error(message.trim().to_string())),
                None => panic!("status 2 without `server error:` on stderr: {self:#?}"),
            },
            Some(3) if self.stderr.contains("unavailable") => Err(Refusal::Unavailable),
            _ => Err(Refusal::Failed(format!("{self:#?}"))),
        }
    }
}

/// `tests/js`, checked to hold an installed client.
fn js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    let installed = dir
        .join("node_modules/@automerge/automerge-repo-network-websocket/package.json")
        .exists()
        && dir
            .join("node_modules/@automerge/automerge-repo/package.json")
            .exists();
    assert!(
        installed,
        "the JavaScript interop client is not installed: run `npm ci` in {} (scripts/test does)",
        dir.display()
    );
    dir
}

/// The server's sync URL with the device's token as the `token` query parameter.
fn ws_with_token(server: &impl Server, token: &str) -> String {
    let encoded: String = token
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{}?token={encoded}", server.ws())
}

/// The document id of an `automerge:` URL.
fn doc_id_of(url: &str) -> &str {
    url.strip_prefix("automerge:")
        .unwrap_or_else(|| panic!("not an automerge URL: {url}"))
}

impl JsClient {
    /// Runs `node client.mjs WS_URL ARGS...` to its end.
    async fn run(&self, args: &[&str]) -> Run {
        let dir = js_dir();
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(dir.join("client.mjs"))
            .arg(&self.ws)
            .args(args)
            .current_dir(&dir)
            .env("TALLY_JS_TIMEOUT_MS", "15000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!(
                "could not run node ({e}): install node 20+ and run `npm ci` in {}",
                dir.display()
            ),
        };
        let out = tokio::time::timeout(RUN, child.wait_with_output())
            .await
            .expect("the JS client did not exit in time")
            .expect("waiting for the JS client");
        Run {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Client for JsClient {
    /// Connecting is left to each run: a refused token fails the first step.
    async fn connect(server: &TestServer, token: &str) -> Result<Self, Refusal> {
        Ok(JsClient {
            ws: ws_with_token(server, token),
        })
    }

    async fn read(&mut self, url: &str) -> Result<Read, Refusal> {
        let run = self.run(&["read", url]).await;
        if let Err(refusal) = run.outcome() {
            assert!(
                run.stdout.trim().is_empty(),
                "the JS client failed yet printed a document: {run:#?}"
            );
            return Err(refusal);
        }
        let printed: serde_json::Value =
            serde_json::from_str(run.stdout.trim()).expect("the client prints JSON");
        let bytes = BASE64
            .decode(printed["bytes"].as_str().expect("the document's bytes"))
            .expect("base64");
        Ok(Read {
            json: printed["doc"].clone(),
            doc: Automerge::load(&bytes).expect("the JS client's bytes load"),
        })
    }

    async fn create(&mut self, doc: &Automerge) -> (String, Result<(), Refusal>) {
        let run = self
            .run(&["push-collection", &BASE64.encode(doc.save())])
            .await;
        let mut lines = run.stdout.lines();
        let Some(url) = lines.next() else {
            panic!("the JS client printed no URL: {run:#?}")
        };
        let outcome = run.outcome();
        if outcome.is_ok() {
            assert_eq!(lines.next(), Some("acknowledged"), "{run:#?}");
        }
        (doc_id_of(url).to_string(), outcome)
    }

    async fn change(&mut self, doc_id: &str, change: &[u8]) -> Result<(), Refusal> {
        let url = format!("automerge:{doc_id}");
        let run = self
            .run(&["push-change", &url, &BASE64.encode(change)])
            .await;
        run.outcome()
    }

    fn connected(&self) -> Option<bool> {
        None
    }

    async fn stop(self) {}
}
