//! The organizers' command line as a new organizer meets it (issue 13, "Delivery and counting",
//! "Errors that mislead", "Help and docs"), run against the real `tally` and `tally-device`
//! binaries and a real `tally serve`: the delivery export (one row per unique signer, a
//! duplicate group), strikes and paper sheets, the totals table and its filters, tables with
//! local times, campaign ids as `automerge:` URLs, the revoke messages, every option described
//! and the shared options before or after the subcommand, `--token-file`, the postal-code rule
//! and `tally config`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tally_tests::server::Server as _;
use tally_tests::{Organizer, Phone, Run, ServerProcess};

/// A campaign after a first rally: one phone ("Amina's phone") took Amara Okafor's signature at
/// the rally, then Amara's again with another spelling, Bo Chen's, and Chen Li's, which was
/// withdrawn; all synced.
struct Rally {
    _dir: tempfile::TempDir,
    server: ServerProcess,
    org: Organizer,
    phone: Phone,
    campaign: String,
    /// Record ids: amara, amara_again, bo, withdrawn.
    ids: BTreeMap<&'static str, String>,
}

fn rally() -> Rally {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let org = Organizer::new(&dir.path().join("org"), &server.base(), &server.data);
    let recipient = org.keygen("organizer.age");
    let campaign = org.create_campaign("Status for All", &recipient);
    org.add_event(&campaign, "rally", "Rally at Queen's Park", "Toronto");
    let phone = Phone::new(&dir.path().join("phone"));
    phone.enroll(&org.invite(&campaign), "Amina's phone");
    let mut ids = BTreeMap::new();
    ids.insert(
        "amara",
        phone.sign("Amara Okafor", "M5V 2T6", "Toronto", &["--event", "rally"]),
    );
    ids.insert(
        "amara_again",
        phone.sign("amara  OKAFOR", "m5v2t6", "Toronto", &[]),
    );
    ids.insert("bo", phone.sign("Bo Chen", "M4C 1B5", "Toronto", &[]));
    let withdrawn = phone.sign("Chen Li", "H2X 1Y4", "Montréal", &[]);
    phone.run(&["withdraw", &withdrawn]).ok();
    ids.insert("withdrawn", withdrawn);
    phone.sync(30).ok();
    Rally {
        _dir: dir,
        server,
        org,
        phone,
        campaign,
        ids,
    }
}

/// A CSV's rows as maps from column to value (no quoted commas in these tests' values).
fn csv_rows(csv: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("CSV header").split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

#[track_caller]
fn contains(run: &Run, text: &str) {
    assert!(
        run.stdout.contains(text) || run.stderr.contains(text),
        "{text:?} expected in:\n{run}"
    );
}

#[track_caller]
fn lacks(run: &Run, text: &str) {
    assert!(
        !run.stdout.contains(text) && !run.stderr.contains(text),
        "{text:?} not expected in:\n{run}"
    );
}

/// `tally export` wrote both copies of a signer who signed twice, both `counted=true`, and no
/// column grouped them: delivered to an MP, the duplicate went with it. Now the export is one
/// row per unique signer (the earliest counted signature of each duplicate group), every row
/// has a `duplicate_group` (the same for one signer, not the token), and `--all` writes every
/// signature, withdrawn and struck included, the duplicates visible by their group.
#[test]
fn the_delivery_export_lists_each_signer_once() {
    let r = rally();
    let c = &r.campaign;
    let export = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "export",
            "--campaign",
            c,
            "--identity",
            "organizer.age",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        let run = r.org.run(&args).ok();
        let csv = std::fs::read_to_string(r.org.dir.join(out)).unwrap();
        (run, csv_rows(&csv))
    };

    let (run, rows) = export("delivery.csv", &[]);
    contains(&run, "wrote 2 signers to delivery.csv");
    contains(&run, "3 counted signatures, 1 duplicate folded");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["Amara Okafor", "Bo Chen"], "{run}");
    assert_eq!(
        rows[0]["id"], r.ids["amara"],
        "the earliest signature of the group"
    );
    for row in &rows {
        let g = &row["duplicate_group"];
        assert!(
            g.len() == 16 && g.chars().all(|c| c.is_ascii_hexdigit()),
            "a short hex group: {g:?}"
        );
        assert_eq!(row["counted"], "true");
    }
    assert_ne!(rows[0]["duplicate_group"], rows[1]["duplicate_group"]);

    let (run, all) = export("all.csv", &["--all"]);
    contains(&run, "wrote 4 signatures to all.csv");
    contains(&run, "0 duplicates folded");
    let by_id: BTreeMap<&str, &BTreeMap<String, String>> =
        all.iter().map(|row| (row["id"].as_str(), row)).collect();
    assert_eq!(by_id.len(), 4, "{run}");
    let group = |k: &str| by_id[r.ids[k].as_str()]["duplicate_group"].clone();
    assert_eq!(
        group("amara"),
        group("amara_again"),
        "one signer, one group"
    );
    assert_eq!(group("amara"), rows[0]["duplicate_group"], "stable");
    assert_ne!(group("bo"), group("amara"));
    assert_ne!(group("withdrawn"), group("amara"));
    assert_eq!(by_id[r.ids["withdrawn"].as_str()]["withdrawn"], "true");

    // Struck, the first copy no longer counts: the signer's row is the next counted one.
    r.org
        .run(&[
            "strike",
            "--campaign",
            c,
            "--record",
            &r.ids["amara"],
            "--reason",
            "invalid",
        ])
        .ok();
    let (_, rows) = export("after-strike.csv", &[]);
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, [r.ids["amara_again"].as_str(), r.ids["bo"].as_str()]);

    let run = r
        .org
        .run(&[
            "export",
            "--campaign",
            c,
            "--identity",
            "organizer.age",
            "--out",
            "delivery.csv",
            "--json",
        ])
        .code(1);
    contains(&run, "--force");
}

/// Review without raw API calls: `tally strike` / `unstrike` change what counts, and `tally
/// sheet add/list/set` keep the paper ledger the totals show beside the digital count.
#[test]
fn strikes_and_paper_sheets_from_the_command_line() {
    let r = rally();
    let c = r.campaign.as_str();
    let amara = r.ids["amara_again"].as_str();
    let totals = || r.org.totals(c);
    assert_eq!(totals()["struck"], 0);

    let run = r
        .org
        .run(&[
            "strike",
            "--campaign",
            c,
            "--record",
            amara,
            "--reason",
            "duplicate",
        ])
        .ok();
    contains(&run, &format!("struck signature {amara} (duplicate)"));
    contains(&run, "tally unstrike");
    let t = totals();
    assert_eq!(
        (t["signatures"].clone(), t["struck"].clone()),
        (2.into(), 1.into())
    );

    // Struck again: said, with the reason it had.
    let run = r
        .org
        .run(&[
            "strike",
            "--campaign",
            c,
            "--record",
            amara,
            "--reason",
            "invalid",
        ])
        .ok();
    contains(&run, "struck already, as duplicate");

    let run = r
        .org
        .run(&["unstrike", "--campaign", c, "--record", amara])
        .ok();
    contains(&run, "it counts again");
    assert_eq!(totals()["struck"], 0);
    let run = r
        .org
        .run(&["unstrike", "--campaign", c, "--record", amara])
        .code(1);
    contains(&run, "already undone");
    let run = r
        .org
        .run(&["unstrike", "--campaign", c, "--record", &r.ids["bo"]])
        .code(1);
    contains(&run, "is not struck");

    // A record the server does not have: the message points to the export, not the API.
    let run = r
        .org
        .run(&[
            "strike",
            "--campaign",
            c,
            "--record",
            "nosuch",
            "--reason",
            "invalid",
        ])
        .code(1);
    contains(&run, "tally export --all");
    let run = r
        .org
        .run(&[
            "strike",
            "--campaign",
            c,
            "--record",
            amara,
            "--reason",
            "typo",
        ])
        .code(2);
    contains(&run, "withdrawn_consent");

    // Paper sheets.
    let run = r.org.run(&["sheet", "list", "--campaign", c]).ok();
    contains(&run, "no paper sheets yet");
    let run = r
        .org
        .run(&[
            "sheet",
            "add",
            "--campaign",
            c,
            "--serial",
            "S-0001",
            "--count",
            "25",
            "--riding",
            "Spadina—Harbourfront",
        ])
        .ok();
    contains(&run, "recorded sheet S-0001: 25 signatures");
    r.org
        .run(&[
            "sheet",
            "add",
            "--campaign",
            c,
            "--serial",
            "S-0002",
            "--count",
            "12",
        ])
        .ok();
    let run = r
        .org
        .run(&[
            "sheet",
            "add",
            "--campaign",
            c,
            "--serial",
            "S-0002",
            "--count",
            "13",
        ])
        .code(1);
    contains(&run, "exists already");
    contains(&run, "tally sheet set");
    let run = r
        .org
        .run(&[
            "sheet",
            "set",
            "--campaign",
            c,
            "--serial",
            "S-0001",
            "--status",
            "delivered",
        ])
        .ok();
    contains(
        &run,
        "(was 25 signatures, riding Spadina—Harbourfront, collected)",
    );
    let run = r
        .org
        .run(&[
            "sheet",
            "set",
            "--campaign",
            c,
            "--serial",
            "S-9",
            "--count",
            "1",
        ])
        .code(1);
    contains(&run, "no sheet \"S-9\"");

    let run = r.org.run(&["sheet", "list", "--campaign", c]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["SERIAL", "SIGNATURES", "RIDING", "STATUS"]
    );
    assert!(
        lines[1].starts_with("S-0001") && lines[1].ends_with("delivered"),
        "{run}"
    );
    assert!(
        lines[2].starts_with("S-0002") && lines[2].ends_with("collected"),
        "{run}"
    );
    contains(&run, "2 sheets, 37 signatures");
    let sheets = r
        .org
        .run(&["sheet", "list", "--campaign", c, "--json"])
        .ok()
        .json();
    assert_eq!(sheets.as_array().map(Vec::len), Some(2), "{sheets}");
    let t = totals();
    assert_eq!(t["paper"]["sheets"], 2, "{t}");
    assert_eq!(t["paper"]["signatures"], 37, "{t}");
    assert_eq!(
        t["paper"]["by_status"]["delivered"]["signatures"], 25,
        "{t}"
    );
}

/// `tally totals` printed one line. Now: that line, then the headline numbers and a table per
/// breakdown (events by name, canvassers by their phone's name), and the API's filters as
/// flags; `--json` is the API's answer.
#[test]
fn totals_are_tables_with_filters() {
    let r = rally();
    let c = r.campaign.as_str();
    let run = r.org.run(&["totals", "--campaign", c]).ok();
    contains(
        &run,
        "3 signatures counted, 2 unique signers (0 struck, 1 withdrawn)",
    );
    for heading in [
        "BY EVENT",
        "BY CITY",
        "BY FSA",
        "BY RIDING",
        "BY DAY",
        "BY CANVASSER",
    ] {
        contains(&run, heading);
    }
    let line = |start: &str| -> Vec<String> {
        run.stdout
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in:\n{run}"))
            .split("  ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(line("signatures counted"), ["signatures counted", "3"]);
    assert_eq!(line("unique signers"), ["unique signers", "2"]);
    assert_eq!(line("withdrawn"), ["withdrawn", "1"]);
    assert_eq!(
        line("Rally at Queen's Park"),
        ["Rally at Queen's Park (rally)", "1", "1"]
    );
    assert_eq!(line("M5V"), ["M5V", "2", "1"]);
    assert_eq!(line("Amina's phone"), ["Amina's phone", "3", "2"]);
    lacks(&run, &device_id(&r.phone));

    let json = |extra: &[&str]| -> Value {
        let mut args = vec!["totals", "--campaign", c, "--json"];
        args.extend_from_slice(extra);
        r.org.run(&args).ok().json()
    };
    assert_eq!(json(&[])["signatures"], 3);
    assert_eq!(json(&["--event", "rally"])["signatures"], 1);
    assert_eq!(json(&["--fsa", "m4c"])["signatures"], 1);
    assert_eq!(json(&["--city", "Toronto"])["signatures"], 3);
    // Days in the campaign's time zone: a window of past days holds nothing, one around today
    // everything; `--to` a day includes it.
    assert_eq!(
        json(&["--from", "2021-01-01", "--to", "2021-12-31"])["signatures"],
        0
    );
    let today = r.org.totals(c)["by_day"]
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .expect("a day");
    let t = json(&["--from", &today, "--to", &today]);
    assert_eq!(t["signatures"], 3, "{t}");
    assert!(t["filters"]["from"].is_string() && t["filters"]["to"].is_string());
    let t = json(&["--from", "2021-01-01T00:00:00-05:00"]);
    assert_eq!(t["signatures"], 3, "{t}");
    // By canvasser (a device id) and riding, alone and with another filter.
    let phone = device_id(&r.phone);
    assert_eq!(json(&["--canvasser", &phone])["signatures"], 3);
    assert_eq!(json(&["--canvasser", "dev-nobody"])["signatures"], 0);
    let t = json(&["--canvasser", &phone, "--fsa", "m4c"]);
    assert_eq!(t["signatures"], 1, "{t}");
    assert_eq!(t["filters"]["canvasser"], phone.as_str(), "{t}");
    assert_eq!(json(&["--riding", "Spadina—Harbourfront"])["signatures"], 0);

    let run = r
        .org
        .run(&["totals", "--campaign", c, "--event", "rally"])
        .ok();
    contains(&run, "filters   event Rally at Queen's Park (rally)");
    contains(&run, "1 signatures counted");
    let run = r
        .org
        .run(&["totals", "--campaign", c, "--from", "yesterday"])
        .code(1);
    contains(&run, "give a day, 2026-07-01");
    let run = r
        .org
        .run(&["totals", "--campaign", c, "--event", "nope"])
        .code(1);
    contains(&run, "its events are: rally");
}

fn device_id(phone: &Phone) -> String {
    phone.status()["enrollment"]["device_id"]
        .as_str()
        .expect("device id")
        .to_string()
}

/// `campaign list`, `token list` and `token revoke` printed raw JSON with epoch milliseconds.
/// Now tables with local times (`TZ`); `--json` keeps the JSON.
#[test]
fn lists_are_tables_with_local_times() {
    let r = rally();
    let toronto = [("TZ", "America/Toronto")];
    let run = r.org.run_env(&["campaign", "list"], &toronto).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("CAMPAIGN") && lines[0].contains("TITLE"),
        "{run}"
    );
    assert!(
        lines[1].starts_with(&r.campaign) && lines[1].contains("Status for All"),
        "{run}"
    );
    // The event starts at 18:00 in Toronto (2026-07-01T18:00:00-04:00).
    contains(&run, "2026-07-01 18:00");
    contains(&run, "times are local (UTC-0");
    lacks(&run, "1782943200000");
    let utc = r.org.run_env(&["campaign", "list"], &[("TZ", "UTC")]).ok();
    contains(&utc, "2026-07-01 22:00");
    let json = r.org.run(&["campaign", "list", "--json"]).ok().json();
    assert_eq!(
        json["campaigns"][0]["events"][0]["starts_at"],
        1782943200000_i64
    );

    let device = device_id(&r.phone);
    let run = r.org.run_env(&["token", "list"], &toronto).ok();
    let header = run.stdout.lines().next().unwrap_or_default();
    for col in [
        "DEVICE",
        "NAME",
        "ROLE",
        "CAMPAIGN",
        "ENROLLED",
        "LAST SEEN",
        "REVOKED",
    ] {
        assert!(header.contains(col), "{col} in:\n{run}");
    }
    let row = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&device))
        .unwrap_or_else(|| panic!("no row for {device}:\n{run}"));
    assert!(
        row.contains("Amina's phone") && row.contains("canvasser"),
        "{row}"
    );
    assert!(
        row.contains("Status for All"),
        "the campaign by its title: {row}"
    );
    assert!(row.trim_end().ends_with('-'), "not revoked: {row}");
    let json = r.org.run(&["token", "list", "--json"]).ok().json();
    assert!(json.as_array().is_some_and(|a| a.len() == 2), "{json}");

    let run = r.org.run_env(&["token", "revoke", &device], &toronto).ok();
    contains(&run, &format!("revoked device {device}"));
    let row = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&device))
        .unwrap_or_else(|| panic!("no row for {device}:\n{run}"));
    assert!(
        !row.trim_end().ends_with('-'),
        "revoked, with a time: {row}"
    );
    lacks(&run, "connections_closed");
}

/// A campaign id may be given as its `automerge:` URL (what `tally-device status` prints); a
/// wrong one points to `tally campaign list`, not to `GET /api/v1/campaigns`. Revoking a
/// revoked device says when it was revoked (it said "no device"), and an unknown one points to
/// `tally token list` (it said "create it first").
#[test]
fn campaign_urls_wrong_ids_and_revocations() {
    let r = rally();
    let url = r.phone.status()["enrollment"]["campaign_url"]
        .as_str()
        .expect("the phone shows the campaign's URL")
        .to_string();
    assert_eq!(url, format!("automerge:{}", r.campaign));
    assert_eq!(r.org.totals(&url)["signatures"], 3);
    r.org.add_event(&url, "march", "March", "Ottawa");
    r.org.invite(&url);
    r.org.run(&["sheet", "list", "--campaign", &url]).ok();
    r.org
        .run(&[
            "export",
            "--campaign",
            &url,
            "--identity",
            "organizer.age",
            "--out",
            "s.csv",
        ])
        .ok();

    let unknown = "3Vt16xB8yr2QixdPwJcbxBVxeUs";
    for args in [
        vec!["totals", "--campaign", unknown],
        vec!["totals", "--campaign", "automerge:nope"],
        vec![
            "export",
            "--campaign",
            unknown,
            "--identity",
            "organizer.age",
            "--out",
            "x.csv",
        ],
        vec![
            "event",
            "add",
            "--campaign",
            unknown,
            "--name",
            "n",
            "--city",
            "c",
            "--starts-at",
            "2026-07-01T18:00:00-04:00",
        ],
        vec!["invite", "--campaign", unknown],
        vec!["sheet", "list", "--campaign", unknown],
    ] {
        let run = r.org.run(&args).code(1);
        contains(&run, "tally campaign list");
        lacks(&run, "/api/v1");
    }
    assert!(!r.org.dir.join("x.csv").exists());

    let device = device_id(&r.phone);
    r.org.run(&["token", "revoke", &device]).ok();
    let run = r.org.run(&["token", "revoke", &device]).code(1);
    contains(&run, "already revoked at 20");
    lacks(&run, "no device");
    let run = r.org.run(&["token", "revoke", "deadbeef"]).code(1);
    contains(&run, "no device \"deadbeef\"");
    contains(&run, "tally token list");
    lacks(&run, "create it first");
}

/// The options of `command --help`: (spec, description) per option line.
fn options(help: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = help.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if !(line.starts_with("  ") && (t.starts_with('-') || t.starts_with('<'))) {
            continue;
        }
        let (spec, desc) = match t.split_once("  ") {
            Some((s, d)) => (s.trim().to_string(), d.trim().to_string()),
            None => {
                // A long spec puts its description on the next, deeper-indented line.
                let next = lines
                    .peek()
                    .filter(|n| n.starts_with("          "))
                    .map(|n| n.trim().to_string())
                    .unwrap_or_default();
                (t.trim().to_string(), next)
            }
        };
        out.push((spec, desc));
    }
    out
}

/// Every option of every command says what it is for (`--campaign`, `--title`, `--goal`, event
/// add's fields, token revoke's DEVICE had none); the shared options come under their own
/// heading, after the command's own.
#[test]
fn every_option_is_described_and_shared_ones_grouped() {
    let dir = tempfile::tempdir().unwrap();
    let org = Organizer::new(dir.path(), "http://127.0.0.1:1", &dir.path().join("data"));
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["config"],
        &["reindex"],
        &["keygen"],
        &["campaign", "create"],
        &["campaign", "list"],
        &["event", "add"],
        &["invite"],
        &["token", "list"],
        &["token", "revoke"],
        &["totals"],
        &["export"],
        &["strike"],
        &["unstrike"],
        &["sheet", "add"],
        &["sheet", "list"],
        &["sheet", "set"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let run = org.run(&args).ok();
        for (spec, desc) in options(&run.stdout) {
            assert!(
                !desc.is_empty(),
                "tally {}: {spec} has no description:\n{run}",
                cmd.join(" ")
            );
        }
        if cmd.len() > 1 || matches!(cmd.first(), Some(&"totals" | &"export" | &"strike")) {
            let own = run.stdout.find("Options:").expect("Options:");
            let shared = run
                .stdout
                .find("Shared options:")
                .unwrap_or_else(|| panic!("no Shared options heading:\n{run}"));
            assert!(own < shared, "{run}");
            let shared_part = &run.stdout[shared..];
            for flag in [
                "--server",
                "--config",
                "--token ",
                "--token-file",
                "--data",
                "--keys",
                "--json",
            ] {
                assert!(
                    shared_part.contains(flag),
                    "{flag} under Shared options:\n{run}"
                );
            }
            assert!(
                !run.stdout[own..shared].contains("--server"),
                "--server among the command's own options:\n{run}"
            );
        }
    }
    let run = org.run(&["campaign", "create", "--help"]).ok();
    for (flag, words) in [
        ("--title", "title"),
        ("--petition", "petition"),
        ("--goal", "aims for"),
        ("--timezone", "time zone"),
    ] {
        let desc = options(&run.stdout)
            .into_iter()
            .find(|(s, _)| s.starts_with(flag))
            .map(|(_, d)| d)
            .unwrap_or_default();
        assert!(desc.contains(words), "{flag}: {desc:?}\n{run}");
    }
    let run = org.run(&["token", "revoke", "--help"]).ok();
    contains(&run, "The device's id");
}

/// The shared options work before and after the subcommand (docs/operations.md says so; only
/// "after" worked); `--token-file` reads the token from a file (no token in `ps`), and cannot
/// be given with `--token`.
#[test]
fn shared_options_before_or_after_and_the_token_file() {
    let r = rally();
    let c = r.campaign.as_str();
    let before = r
        .org
        .run(&["--json", "totals", "--campaign", c])
        .ok()
        .json();
    let after = r
        .org
        .run(&["totals", "--campaign", c, "--json"])
        .ok()
        .json();
    assert_eq!(before, after);
    assert_eq!(before["signatures"], 3);
    r.org.run(&["--json", "campaign", "list"]).ok().json();
    r.org.run(&["campaign", "--json", "list"]).ok().json();
    // --server before the subcommand wins over TALLY_SERVER.
    for args in [
        &["--server", "http://127.0.0.1:1", "campaign", "list"][..],
        &["campaign", "list", "--server", "http://127.0.0.1:1"][..],
    ] {
        let run = r.org.run(args).code(1);
        contains(&run, "cannot reach the server at http://127.0.0.1:1");
    }
    // A data folder given before the subcommand: its admin token is read.
    let elsewhere = r.org.dir.join("empty-data");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let data = r.server.data.display().to_string();
    let env = [("TALLY_DATA", elsewhere.to_str().unwrap())];
    r.org.run_env(&["campaign", "list"], &env).code(1);
    r.org
        .run_env(&["--data", &data, "campaign", "list"], &env)
        .ok();

    let admin = std::fs::read_to_string(r.server.data.join("admin.token")).unwrap();
    let token_file = r.org.dir.join("token");
    std::fs::write(&token_file, format!("{}\n", admin.trim())).unwrap();
    let wrong_file = r.org.dir.join("wrong-token");
    std::fs::write(&wrong_file, "tly_wrong\n").unwrap();
    let no_admin_token = [("TALLY_DATA", elsewhere.to_str().unwrap())];
    let tf = token_file.display().to_string();
    let wf = wrong_file.display().to_string();
    let run = r
        .org
        .run_env(
            &["--token-file", &tf, "totals", "--campaign", c],
            &no_admin_token,
        )
        .ok();
    contains(&run, "3 signatures counted");
    let run = r
        .org
        .run_env(
            &["totals", "--campaign", c, "--token-file", &wf],
            &no_admin_token,
        )
        .code(1);
    contains(&run, "(401)");
    let run = r
        .org
        .run(&["campaign", "list", "--token", "x", "--token-file", &tf])
        .code(2);
    contains(&run, "cannot be used with");
    let run = r
        .org
        .run(&["campaign", "list", "--token-file", "no-such-file"])
        .code(1);
    contains(&run, "cannot read the token file no-such-file");
}

/// A postal code of the right shape with a letter Canada Post does not use there was refused
/// with "expected letter-digit-letter digit-letter-digit", which it is. The message names the
/// rule, on the phone (and on the server, which shares the function).
#[test]
fn a_refused_postal_code_names_the_rule() {
    let r = rally();
    for (code, letter) in [("Z5V 2T6", 'Z'), ("D1A 1A1", 'D')] {
        let run = r
            .phone
            .run(&[
                "sign",
                "--name",
                "Amara Okafor",
                "--postal-code",
                code,
                "--city",
                "Toronto",
            ])
            .code(1);
        contains(&run, &format!("it starts with {letter}"));
        contains(&run, "D, F, I, O, Q, U, W or Z");
    }
    let run = r
        .phone
        .run(&[
            "sign",
            "--name",
            "Amara Okafor",
            "--postal-code",
            "M5V 2O6",
            "--city",
            "Toronto",
        ])
        .code(1);
    contains(&run, "the letter O");
}

/// `tally config` printed only an example. Now it prints the configuration `tally serve` would
/// use here (defaults, then DATA/tally.toml or --config, then TALLY_* variables), each key a
/// layer set saying which, with a URL's password redacted, and the example beside it;
/// `--example` prints the example alone.
#[test]
fn config_prints_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("tally.toml"),
        "listen = \"127.0.0.1:7311\"\nidle_unload_secs = 9\npublic_url = \"https://ops:hunter2@tally.example.org\"\n",
    )
    .unwrap();
    let org = Organizer::new(dir.path(), "http://unused", &data);
    let d = data.display().to_string();
    let env = [("TALLY_MAX_CONNECTIONS", "77")];
    for args in [&["config", "--data", &d][..], &["--data", &d, "config"][..]] {
        let run = org.run_env(args, &env).ok();
        let file = Path::new(&d).join("tally.toml").display().to_string();
        contains(&run, &format!("listen = \"127.0.0.1:7311\"  # {file}"));
        contains(&run, &format!("idle_unload_secs = 9  # {file}"));
        contains(&run, "max_connections = 77  # TALLY_MAX_CONNECTIONS");
        contains(&run, "max_frame_bytes = 16777216\n");
        contains(
            &run,
            "public_url = \"https://<redacted>@tally.example.org\"",
        );
        lacks(&run, "hunter2");
        contains(&run, "# # tally server configuration");
        // The whole output is a valid configuration file with the effective values.
        let copy = dir.path().join("effective.toml");
        std::fs::write(&copy, &run.stdout).unwrap();
        let f = copy.display().to_string();
        let again = org.run(&["config", "--config", &f]).ok();
        contains(&again, &format!("max_connections = 77  # {f}"));
        contains(&again, &format!("idle_unload_secs = 9  # {f}"));
        contains(&again, &format!("listen = \"127.0.0.1:7311\"  # {f}"));
    }
    let run = org.run(&["config", "--example"]).ok();
    assert!(
        run.stdout.starts_with("# tally server configuration"),
        "{run}"
    );
    contains(&run, "listen = \"127.0.0.1:7300\"");
    lacks(&run, "7311");
}
