//! `tally-device`: a canvasser's phone on the command line, over the `tally-client` library.
//! State lives in `--home DIR` (default `./tally-phone`). Every command accepts `--json` and
//! then prints one JSON object (`sync --watch`: one per line, per event).
//!
//! Exit codes: 0 done; 1 refused or failed (the message says what to do); 2 bad usage;
//! 3 `sync` reached the server but did not settle (the report says why).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;
use tally_client::{
    ClientError, Device, Receipt, ReceiptKind, SignatureForm, Status, SyncReport, WatchEvent,
};

/// Writes to standard output. A reader that went away (`tally ... | head`) ends the program
/// quietly with status 0, as it has all it asked for; any other failure to write (a full disk
/// under a redirect) is an error, said once on standard error.
fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(
            std::io::stderr(),
            "error: cannot write to standard output: {e}"
        );
        std::process::exit(1);
    }
}

/// `println!` through [`emit`].
macro_rules! outln {
    ($($arg:tt)*) => {
        emit(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[derive(Parser)]
#[command(
    name = "tally-device",
    version,
    about = "A canvasser's phone for tally: enroll, collect signatures and check-ins offline, sync."
)]
struct Cli {
    /// Directory where the phone keeps its data (one SQLite file).
    #[arg(
        long,
        global = true,
        env = "TALLY_HOME",
        default_value = "./tally-phone"
    )]
    home: PathBuf,
    /// Print one JSON object instead of text (JSON lines for `sync --watch`).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this phone with the organizer's code, then fetch the campaign. A phone already
    /// enrolled in the code's campaign (its token revoked or expired) enrolls again and keeps
    /// every record not yet on the server.
    Enroll {
        /// The JSON the organizer's `tally invite` printed; `-` reads it from stdin, `@FILE`
        /// from a file.
        #[arg(long)]
        payload: String,
        /// A name for this phone, shown to organizers.
        #[arg(long, default_value = "tally-device")]
        name: String,
    },
    /// Take a petition signature (works offline).
    Sign {
        /// The signer's full name.
        #[arg(long)]
        name: String,
        /// Canadian postal code, e.g. "M5V 2T6".
        #[arg(long)]
        postal_code: String,
        /// The signer's city.
        #[arg(long)]
        city: String,
        /// The event it is collected at (an event id of the campaign).
        #[arg(long)]
        event: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        phone: Option<String>,
        /// Street address.
        #[arg(long)]
        street: Option<String>,
        /// Federal riding.
        #[arg(long)]
        riding: Option<String>,
        /// The signer agrees to be contacted by the campaign.
        #[arg(long)]
        consent: bool,
    },
    /// Check someone in to an event (works offline).
    Checkin {
        /// The event id.
        #[arg(long)]
        event: String,
        /// The attendee's name.
        #[arg(long)]
        name: String,
        /// They walked in (not pre-registered).
        #[arg(long)]
        walk_in: bool,
    },
    /// Withdraw a signature or check-in of this phone, by record id.
    Withdraw {
        /// The record id (`status` lists pending ones).
        id: String,
    },
    /// What is not yet safe on the server, the last sync, the team totals.
    Status,
    /// The cities to offer a signer: the campaign's event cities, then those this phone used,
    /// each city once whatever its spellings.
    Cities,
    /// Show or change the phone's settings.
    Config {
        /// Records a collection takes before the phone starts the next one (default 5,000).
        #[arg(long)]
        roll_over_at: Option<usize>,
    },
    /// Sync with the server once, or keep syncing with --watch.
    Sync {
        /// Keep a connection open, push each new record at once, reconnect with backoff.
        /// Stop with Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Give up a single sync after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

/// A failure to print: the error and, for the JSON form, its kind and field.
struct Failure {
    message: String,
    kind: &'static str,
    field: Option<&'static str>,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure {
            message: e.to_string(),
            kind: e.kind(),
            field: e.field(),
        }
    }
}

fn when(ms: i64) -> String {
    use chrono::TimeZone as _;
    chrono::Local
        .timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

fn read_payload(arg: &str) -> Result<String, Failure> {
    let fail = |message: String| Failure {
        message,
        kind: "payload",
        field: Some("payload"),
    };
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| fail(format!("cannot read the payload from stdin: {e}")))?;
        Ok(s)
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path)
            .map_err(|e| fail(format!("cannot read the payload from {path}: {e}")))
    } else {
        Ok(arg.to_string())
    }
}

fn receipt_line(r: &Receipt) -> String {
    let who = r
        .details
        .as_ref()
        .map(|d| {
            let place = d
                .postal_code
                .as_deref()
                .or(d.event.as_deref())
                .unwrap_or("");
            format!(
                "{} {}",
                d.name,
                if place.is_empty() {
                    String::new()
                } else {
                    format!("({place})")
                }
            )
        })
        .unwrap_or_default();
    format!(
        "  {}  {:<26} {}  {}",
        when(r.collected_at),
        r.kind.to_string(),
        r.record_id,
        who.trim_end()
    )
}

fn print_status(s: &Status) {
    match &s.enrollment {
        Some(e) => outln!(
            "{} ({}): device {} ({}) at {}",
            s.campaign_title
                .as_deref()
                .unwrap_or("campaign not received yet"),
            e.campaign_url,
            e.device_id,
            e.role,
            e.server
        ),
        None => outln!("Not enrolled."),
    }
    outln!("{}", s.summary);
    let c = &s.counts;
    outln!(
        "Safe on the server: {} signatures, {} check-ins, {} withdrawals.",
        c.signatures_acknowledged,
        c.checkins_acknowledged,
        c.withdrawals_acknowledged
    );
    match (&s.last_complete_sync_at, &s.last_sync) {
        (_, Some(last)) if !last.complete => outln!(
            "Last sync {}: incomplete ({}).{}",
            when(last.at),
            last.problem
                .clone()
                .unwrap_or_else(|| last.server_errors.join("; ")),
            s.last_complete_sync_at
                .map(|t| format!(" Last complete sync {}.", when(t)))
                .unwrap_or_default()
        ),
        (Some(t), _) => outln!("Last sync {}.", when(*t)),
        (None, _) => outln!("Never synced."),
    }
    match &s.totals {
        Some(t) => outln!(
            "Team totals (as of {}): {} signatures, {} unique signers.",
            when(t.computed_at),
            t.totals.signatures,
            t.totals.unique_signers
        ),
        None => outln!("No team totals yet."),
    }
    if !s.pending.is_empty() {
        outln!("Not yet safe:");
        for r in &s.pending {
            outln!("{}", receipt_line(r));
        }
        let more = s
            .counts
            .pending_total()
            .saturating_sub(s.pending.len() as u64);
        if more > 0 {
            outln!("  ... and {more} more (the oldest are listed)");
        }
    }
    if !s.refused.is_empty() {
        outln!(
            "Refused by the server, set aside (kept on this phone, not counted; show an organizer):"
        );
        for r in &s.refused {
            outln!(
                "{}\n      why: {}",
                receipt_line(r),
                r.refusal.as_deref().unwrap_or("no reason given")
            );
        }
    }
    if !s.erased.is_empty() {
        outln!(
            "Erased by an organizer (no longer counted, nothing of them can be opened): {}",
            s.erased.join(", ")
        );
    }
    if s.collections.len() > 1 {
        let mut by_state = std::collections::BTreeMap::<&str, usize>::new();
        for c in &s.collections {
            *by_state.entry(c.state.as_str()).or_default() += 1;
        }
        let states: Vec<String> = by_state.iter().map(|(k, n)| format!("{n} {k}")).collect();
        outln!(
            "Collections: {} ({}); the current one holds {} records.",
            s.collections.len(),
            states.join(", "),
            s.collection_records
        );
    }
    for p in &s.problems {
        if s.enrollment.is_some() {
            outln!("Note: {p}");
        }
    }
}

fn print_event(event: &WatchEvent, as_json: bool) {
    if as_json {
        outln!(
            "{}",
            serde_json::to_string(event).expect("events serialize")
        );
        return;
    }
    match event {
        WatchEvent::Connected => outln!("connected"),
        WatchEvent::Synced(r) => outln!("{}", r.summary()),
        WatchEvent::Disconnected { error, retry_in_ms } => {
            outln!(
                "disconnected: {error}; retrying in {:.1} s",
                *retry_in_ms as f64 / 1000.0
            )
        }
    }
}

fn watch(device: &Device, as_json: bool) -> Result<(), Failure> {
    let handle = device.spawn_watch(move |e| print_event(&e, as_json))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Storage(format!("cannot start a runtime: {e}")))?;
    rt.block_on(async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = async {
                while !handle.is_finished() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            } => {}
        }
    });
    handle.stop()?;
    Ok(())
}

fn report_json(report: &SyncReport) -> serde_json::Value {
    json!({"ok": report.complete, "report": report, "summary": report.summary()})
}

fn run(cli: &Cli) -> Result<ExitCode, Failure> {
    let device = Device::open(&cli.home)?;
    let out = |value: serde_json::Value, text: String| {
        if cli.json {
            outln!("{value}");
        } else {
            outln!("{text}");
        }
    };
    match &cli.command {
        Command::Enroll { payload, name } => {
            let payload = read_payload(payload)?;
            let before = device.enrollment()?;
            let info = device.enroll(&payload, name)?;
            if let Some(old) = &before
                && !cli.json
            {
                let waiting = device.counts()?.pending_total();
                outln!(
                    "Enrolled again: device {} replaces {}; {waiting} records not yet on the server move to the new device's collection and are sent now.",
                    info.device_id,
                    old.device_id
                );
            }
            let sync = device.sync_once(Duration::from_secs(20));
            let title = device.campaign().ok().map(|c| c.title);
            let (sync_json, sync_text) = match &sync {
                Ok(r) if title.is_some() => (
                    json!(r),
                    format!(
                        "Campaign received: {}. Ready to collect.",
                        title.clone().unwrap_or_default()
                    ),
                ),
                Ok(r) => (
                    json!(r),
                    format!(
                        "The campaign has not arrived yet ({}): sync again before collecting.",
                        r.summary()
                    ),
                ),
                Err(e) => (
                    json!({"error": e.to_string()}),
                    format!("Could not sync yet: {e}"),
                ),
            };
            out(
                json!({"ok": true, "enrollment": info, "campaign_received": title.is_some(), "sync": sync_json}),
                format!(
                    "Enrolled as device {} ({}) in campaign {}.\n{sync_text}",
                    info.device_id, info.role, info.campaign_url
                ),
            );
        }
        Command::Sign {
            name,
            postal_code,
            city,
            event,
            email,
            phone,
            street,
            riding,
            consent,
        } => {
            let form = SignatureForm {
                name: name.clone(),
                postal_code: postal_code.clone(),
                city: city.clone(),
                email: email.clone(),
                phone: phone.clone(),
                street: street.clone(),
                consent_contact: *consent,
                event: event.clone(),
                riding: riding.clone(),
            };
            // Asked before signing: the signature's own city becomes a known one.
            let known = device.known_spelling(city)?;
            let warning = known.map(|k| {
                format!(
                    "{:?} is spelled {k:?} elsewhere in this campaign (the totals count both as one city; type {k:?} to keep one spelling)",
                    city.trim()
                )
            });
            let r = device.sign(&form)?;
            let summary = device.counts()?.summary();
            if let Some(w) = &warning
                && !cli.json
            {
                eprintln!("warning: {w}");
            }
            out(
                json!({"ok": true, "signature": r, "summary": summary, "warning": warning}),
                format!(
                    "Saved signature {} ({}, {}). {summary}.",
                    r.record_id, r.city, r.fsa
                ),
            );
        }
        Command::Checkin {
            event,
            name,
            walk_in,
        } => {
            let r = device.checkin(event, name, *walk_in)?;
            let summary = device.counts()?.summary();
            out(
                json!({"ok": true, "checkin": r, "summary": summary}),
                format!(
                    "Checked in {} at {event}{} (record {}). {summary}.",
                    name.trim(),
                    if *walk_in { " as a walk-in" } else { "" },
                    r.record_id
                ),
            );
        }
        Command::Withdraw { id } => {
            let r = device.withdraw(id)?;
            let what = if r.kind == ReceiptKind::SignatureWithdrawal {
                "signature"
            } else {
                "check-in"
            };
            let summary = device.counts()?.summary();
            out(
                json!({"ok": true, "withdrawal": r, "summary": summary}),
                format!("Withdrew {what} {}. {summary}.", r.record_id),
            );
        }
        Command::Status => {
            let s = device.status()?;
            if cli.json {
                outln!(
                    "{}",
                    json!({"ok": true, "enrolled": s.enrollment.is_some(), "status": s})
                );
            } else {
                print_status(&s);
            }
        }
        Command::Cities => {
            let cities = device.known_cities()?;
            let text = if cities.is_empty() {
                "No known cities yet: the campaign's events name none and this phone has not signed anyone.".to_string()
            } else {
                cities.join("\n")
            };
            out(json!({"ok": true, "cities": cities}), text);
        }
        Command::Config { roll_over_at } => {
            if let Some(n) = roll_over_at {
                device.set_roll_over_at(*n)?;
            }
            let n = device.roll_over_at()?;
            out(
                json!({"ok": true, "roll_over_at": n}),
                format!(
                    "roll_over_at = {n} (records a collection takes before the next one starts)"
                ),
            );
        }
        Command::Sync { watch: true, .. } => watch(&device, cli.json)?,
        Command::Sync { timeout, .. } => {
            let report = device.sync_once(Duration::from_secs((*timeout).max(1)))?;
            out(report_json(&report), report.summary());
            if !report.complete {
                return Ok(ExitCode::from(3));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(f) => {
            if cli.json {
                outln!(
                    "{}",
                    json!({"ok": false, "error": {"kind": f.kind, "field": f.field, "message": f.message}})
                );
            } else {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "error: {}", f.message);
            }
            ExitCode::FAILURE
        }
    }
}
