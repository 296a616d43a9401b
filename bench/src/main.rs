//! `tally-bench`: a load benchmark of the tally server. See `docs/benchmarks.md`.
//!
//! ```sh
//! cargo build --release -p tally-bench -p tally-server
//! target/release/tally-bench --json bench.json
//! ```
//!
//! Exit codes: 0 done (targets may be missed: read the table); 1 a correctness check failed
//! (totals not exact, a phone not acknowledged) or the run failed; 2 bad usage.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tally_bench::RunArgs;

#[derive(Parser)]
#[command(
    name = "tally-bench",
    version,
    about = "How close the tally server is to its limits: ingest from phones reconnecting at \
             once, a no-network baseline, totals under load and at rest, restart, the phone",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// (internal) Opens a phone's store and prints this process's memory as JSON.
    #[command(hide = true)]
    PhoneRss {
        /// The phone's home folder.
        #[arg(long)]
        home: PathBuf,
    },
}

/// The command line with the admin token's value hidden (it goes into the report).
fn redact(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("<redacted>".to_string());
            hide_next = false;
        } else if a == "--admin-token" {
            out.push(a);
            hide_next = true;
        } else if a.starts_with("--admin-token=") {
            out.push("--admin-token=<redacted>".to_string());
        } else if let Some(url) = a.strip_prefix("--database-url=") {
            out.push(format!(
                "--database-url={}",
                tally_bench::server::redact_url(url)
            ));
        } else if out.last().is_some_and(|p| p == "--database-url") {
            out.push(tally_bench::server::redact_url(&a));
        } else {
            out.push(a);
        }
    }
    out
}

fn main() {
    let cli = Cli::parse();
    if let Some(Cmd::PhoneRss { home }) = cli.command {
        if let Err(e) = tally_bench::phone::memory_child(&home) {
            eprintln!("phone-rss: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let command = redact(std::env::args().collect());
    let report = match tally_bench::run(&cli.run, command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tally-bench failed: {e:#}");
            std::process::exit(1);
        }
    };
    println!("{}", report.render());
    if let Some(path) = &cli.run.json {
        let json = serde_json::to_string_pretty(&report).expect("the report serializes");
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
        eprintln!("figures written to {}", path.display());
    }
    if !report.correct() {
        eprintln!("a correctness check failed: see the table");
        std::process::exit(1);
    }
}
