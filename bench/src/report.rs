//! The figures a run produces, each with the machine's core count and, where the issue sets one,
//! its target and whether it was met; printed as a Markdown table and written as JSON.

use serde::Serialize;

/// How a figure compares with its target.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Cmp {
    /// value >= target.
    #[serde(rename = ">=")]
    AtLeast,
    /// value < target.
    #[serde(rename = "<")]
    Below,
    /// value == 1 (a yes/no figure that must be yes).
    #[serde(rename = "yes")]
    Yes,
}

/// A target for one figure.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// The comparison.
    pub cmp: Cmp,
    /// The bound (ignored for [`Cmp::Yes`]).
    pub bound: f64,
}

impl Target {
    fn met(&self, v: f64) -> bool {
        match self.cmp {
            Cmp::AtLeast => v >= self.bound,
            Cmp::Below => v < self.bound,
            Cmp::Yes => v == 1.0,
        }
    }

    fn text(&self, unit: &str) -> String {
        match self.cmp {
            Cmp::AtLeast => format!(">= {} {unit}", fmt_num(self.bound)),
            Cmp::Below => format!("< {} {unit}", fmt_num(self.bound)),
            Cmp::Yes => "yes".into(),
        }
        .trim_end()
        .to_string()
    }
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// Stable key, e.g. `ingest.signatures_per_sec`.
    pub key: String,
    /// What it is, for people.
    pub label: String,
    /// The value; `None` when it could not be measured (the reason is in `note`).
    pub value: Option<f64>,
    /// Unit: `sig/s`, `ms`, `s`, `MB`, `x`, `yes/no`, `count`, `cores`.
    pub unit: String,
    /// The target, if the issue sets one.
    pub target: Option<Target>,
    /// The target as text.
    pub target_text: Option<String>,
    /// Whether the target is met (`None` without a target or a value).
    pub pass: Option<bool>,
    /// The machine's core count, printed with every figure.
    pub cores: usize,
    /// A remark (how it was measured, why it is missing).
    pub note: Option<String>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `tally-bench`.
    pub tool: &'static str,
    /// The command line.
    pub command: Vec<String>,
    /// The machine.
    pub machine: Machine,
    /// The configuration used.
    pub config: serde_json::Value,
    /// The phases run, in order.
    pub phases: Vec<String>,
    /// The figures.
    pub figures: Vec<Figure>,
    /// Remarks for people (what could not be measured, what was approximated).
    pub notes: Vec<String>,
    /// Wall time of the whole run, seconds.
    pub wall_seconds: f64,
    /// The backends the ingest phase ran on, in order (`sqlite`, `pg`, `pg3`).
    pub backends: Vec<String>,
}

/// The machine the run was on.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    /// Cores available to this process.
    pub cores: usize,
    /// CPU model.
    pub cpu_model: Option<String>,
    /// Memory, MB.
    pub mem_total_mb: Option<u64>,
    /// Load averages (1, 5, 15 min) when the run started.
    pub load_average_start: Option<[f64; 3]>,
    /// Load averages when it ended.
    pub load_average_end: Option<[f64; 3]>,
    /// Mean CPU use of other processes over the whole run, in cores.
    pub others_cpu_cores: Option<f64>,
}

impl Machine {
    /// Reads what the machine is.
    pub fn detect() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|v| v.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        });
        let mem_total_mb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb / 1024)
        });
        Machine {
            cores: cores(),
            cpu_model,
            mem_total_mb,
            load_average_start: crate::stats::load_average(),
            load_average_end: None,
            others_cpu_cores: None,
        }
    }
}

/// The machine's core count (what this process may use).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Collects figures as phases produce them.
#[derive(Default)]
pub struct Figures {
    list: Vec<Figure>,
    notes: Vec<String>,
}

impl Figures {
    /// Adds a figure without a target.
    pub fn add(&mut self, key: &str, label: &str, value: Option<f64>, unit: &str) -> &mut Figure {
        self.list.push(Figure {
            key: key.into(),
            label: label.into(),
            value: value.filter(|v| v.is_finite()),
            unit: unit.into(),
            target: None,
            target_text: None,
            pass: None,
            cores: cores(),
            note: None,
        });
        self.list.last_mut().expect("just pushed")
    }

    /// Adds a figure with a target.
    pub fn add_target(
        &mut self,
        key: &str,
        label: &str,
        value: Option<f64>,
        unit: &str,
        cmp: Cmp,
        bound: f64,
    ) -> &mut Figure {
        let f = self.add(key, label, value, unit);
        let t = Target { cmp, bound };
        f.target_text = Some(t.text(if cmp == Cmp::Yes { "" } else { unit }));
        f.pass = f.value.map(|v| t.met(v));
        f.target = Some(t);
        f
    }

    /// Adds a remark for the report.
    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("note: {text}");
        self.notes.push(text);
    }

    /// The value of a figure already added.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.list
            .iter()
            .find(|f| f.key == key)
            .and_then(|f| f.value)
    }

    /// Takes `other`'s figures and notes, each key renamed by `key` and each label and note
    /// prefixed with `label` (one backend's figures among several).
    pub fn merge_renamed(&mut self, other: Figures, key: impl Fn(&str) -> String, label: &str) {
        for mut f in other.list {
            f.key = key(&f.key);
            f.label = format!("{label}{}", f.label);
            self.list.push(f);
        }
        for n in other.notes {
            self.notes.push(format!("{label}{n}"));
        }
    }

    /// The figures and notes collected.
    pub fn into_parts(self) -> (Vec<Figure>, Vec<String>) {
        (self.list, self.notes)
    }
}

impl Figure {
    /// Attaches a remark.
    pub fn with_note(&mut self, note: impl Into<String>) -> &mut Self {
        self.note = Some(note.into());
        self
    }
}

/// A number with thousands separators and a sensible number of decimals.
pub fn fmt_num(v: f64) -> String {
    let decimals = if v.abs() >= 100.0 || v == v.trunc() {
        0
    } else if v.abs() >= 10.0 {
        1
    } else if v.abs() >= 0.1 {
        2
    } else {
        3
    };
    let s = format!("{v:.decimals$}");
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i.to_string(), Some(f.to_string())),
        None => (s, None),
    };
    let (sign, digits) = match int.strip_prefix('-') {
        Some(d) => ("-", d.to_string()),
        None => ("", int),
    };
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn fmt_value(f: &Figure) -> String {
    match f.value {
        None => "n/a".into(),
        Some(v) if f.unit == "yes/no" => if v == 1.0 { "yes" } else { "NO" }.into(),
        Some(v) if f.unit == "x" => format!("{}x", fmt_num(v)),
        Some(v) => format!("{} {}", fmt_num(v), f.unit),
    }
}

impl Report {
    /// The Markdown table: every figure with its target, result and the core count.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str("| figure | value | target | result | cores |\n");
        out.push_str("| --- | ---: | --- | --- | ---: |\n");
        for f in &self.figures {
            let result = match f.pass {
                Some(true) => "pass",
                Some(false) => "**MISS**",
                None if f.target.is_some() => "not measured",
                None => "",
            };
            let label = match &f.note {
                Some(n) => format!("{} ({n})", f.label),
                None => f.label.clone(),
            };
            out.push_str(&format!(
                "| {label} | {} | {} | {result} | {} |\n",
                fmt_value(f),
                f.target_text.clone().unwrap_or_default(),
                f.cores
            ));
        }
        out
    }

    /// The ingest phase side by side, a column per backend (when it ran on several): the
    /// throughput, the latencies, correctness, and the CPU of each process.
    pub fn backends_table(&self) -> String {
        let backends: Vec<crate::server::Backend> = self
            .backends
            .iter()
            .filter_map(|b| b.parse().ok())
            .collect();
        if backends.len() < 2 {
            return String::new();
        }
        let mut out = String::from("| ingest |");
        for b in &backends {
            out.push_str(&format!(" {} |", b.describe()));
        }
        out.push_str("\n| --- |");
        out.push_str(&" ---: |".repeat(backends.len()));
        out.push('\n');
        let cell = |b: &crate::server::Backend, key: &str| -> String {
            self.figures
                .iter()
                .find(|f| f.key == b.key(key))
                .map(fmt_value)
                .unwrap_or_else(|| "n/a".into())
        };
        let rows: &[(&str, &str)] = &[
            (
                "signatures acknowledged per second",
                "ingest.signatures_per_sec",
            ),
            ("phone fully synced, p50", "ingest.sync_p50_ms"),
            ("phone fully synced, p99", "ingest.sync_p99_ms"),
            ("totals during ingest, p99", "query.ingest_p99_ms"),
            ("every phone acknowledged", "ingest.all_acknowledged"),
            ("totals exact on every server", "ingest.totals_exact"),
            ("ingest / floor", "baseline.floor_ratio"),
            ("ingest / baseline", "baseline.ratio"),
            ("servers", "ingest.servers"),
            (
                "servers' CPU during the reconnect",
                "ingest.cpu_server_cores",
            ),
        ];
        for (label, key) in rows {
            out.push_str(&format!("| {label} |"));
            for b in &backends {
                out.push_str(&format!(" {} |", cell(b, key)));
            }
            out.push('\n');
        }
        out.push_str("| each server's CPU |");
        for b in &backends {
            let each: Vec<String> = (0..b.servers())
                .map(|i| {
                    let key = if b.servers() == 1 {
                        "ingest.cpu_server_cores".to_string()
                    } else {
                        format!("ingest.cpu_server{i}_cores")
                    };
                    self.value(&b.key(&key))
                        .map(fmt_num)
                        .unwrap_or_else(|| "?".into())
                })
                .collect();
            out.push_str(&format!(" {} |", each.join(" + ")));
        }
        out.push('\n');
        let rows: &[(&str, &str)] = &[
            ("PostgreSQL's CPU", "ingest.cpu_database_cores"),
            (
                "benchmark's CPU (phones, organizers)",
                "ingest.cpu_bench_cores",
            ),
            ("other processes' CPU", "ingest.cpu_others_cores"),
            ("server peak memory (largest)", "ingest.server_peak_rss_mb"),
            ("database size", "ingest.db_mb"),
        ];
        for (label, key) in rows {
            out.push_str(&format!("| {label} |"));
            for b in &backends {
                out.push_str(&format!(" {} |", cell(b, key)));
            }
            out.push('\n');
        }
        out
    }

    /// The figure with this key, if measured.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.key == key)
            .and_then(|f| f.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(1234567.0), "1,234,567");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(1.5), "1.50");
        assert_eq!(fmt_num(0.0123), "0.012");
        assert_eq!(fmt_num(-1234.0), "-1,234");
    }

    #[test]
    fn targets() {
        let mut f = Figures::default();
        f.add_target("a", "a", Some(30_000.0), "sig/s", Cmp::AtLeast, 20_000.0);
        f.add_target("b", "b", Some(12.0), "ms", Cmp::Below, 10.0);
        f.add_target("c", "c", None, "ms", Cmp::Below, 10.0);
        f.add_target("d", "d", Some(1.0), "yes/no", Cmp::Yes, 1.0);
        let (list, _) = f.into_parts();
        let pass: Vec<_> = list.iter().map(|f| f.pass).collect();
        assert_eq!(pass, vec![Some(true), Some(false), None, Some(true)]);
        assert_eq!(list[0].target_text.as_deref(), Some(">= 20,000 sig/s"));
        assert_eq!(list[3].target_text.as_deref(), Some("yes"));
    }

    #[test]
    fn one_backend_renamed_and_side_by_side() {
        use crate::server::Backend;
        let mut figs = Figures::default();
        for (b, rate, cpu) in [
            (Backend::Sqlite, 7000.0, vec![0.9]),
            (
                Backend::Postgres { servers: 3 },
                3000.0,
                vec![0.5, 0.4, 0.3],
            ),
        ] {
            let mut one = Figures::default();
            one.add(
                "ingest.signatures_per_sec",
                "ingest: rate",
                Some(rate),
                "sig/s",
            );
            one.add(
                "ingest.servers",
                "ingest: servers",
                Some(cpu.len() as f64),
                "count",
            );
            one.add(
                "ingest.all_acknowledged",
                "ingest: all",
                Some(1.0),
                "yes/no",
            );
            one.add(
                "ingest.cpu_server_cores",
                "ingest: cpu",
                Some(cpu.iter().sum()),
                "cores",
            );
            if cpu.len() > 1 {
                for (i, c) in cpu.iter().enumerate() {
                    one.add(
                        &format!("ingest.cpu_server{i}_cores"),
                        "c",
                        Some(*c),
                        "cores",
                    );
                }
            }
            one.note("hello");
            figs.merge_renamed(one, |k| b.key(k), &b.label_prefix());
        }
        let (figures, notes) = figs.into_parts();
        assert_eq!(notes, vec!["hello".to_string(), "[pg3] hello".to_string()]);
        let r = Report {
            tool: "tally-bench",
            command: vec![],
            machine: Machine::default(),
            config: serde_json::Value::Null,
            phases: vec![],
            figures,
            notes,
            wall_seconds: 1.0,
            backends: vec!["sqlite".into(), "pg3".into()],
        };
        assert_eq!(r.value("ingest.signatures_per_sec"), Some(7000.0));
        assert_eq!(r.value("ingest_pg3.signatures_per_sec"), Some(3000.0));
        assert!(
            r.figures
                .iter()
                .any(|f| f.key == "ingest_pg3.servers" && f.label == "[pg3] ingest: servers")
        );
        let t = r.backends_table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "| ingest | one server on SQLite | 3 servers on one PostgreSQL |"
        );
        assert!(t.contains("| signatures acknowledged per second | 7,000 sig/s | 3,000 sig/s |"));
        assert!(t.contains("| every phone acknowledged | yes | yes |"));
        assert!(t.contains("| each server's CPU | 0.90 | 0.50 + 0.40 + 0.30 |"));
        assert!(t.contains("| ingest / floor | n/a | n/a |"));
        // One backend: no side-by-side table.
        let single = Report {
            backends: vec!["sqlite".into()],
            ..r
        };
        assert_eq!(single.backends_table(), "");
    }
}
