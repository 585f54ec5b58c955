//! The figures of a run, the machine they came from, and their two renderings: a Markdown
//! table (printed, and written to `bench/results/control-scale-<time>.md`) and JSON (`.json`).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::compile::CompileFigures;
use crate::shape::{ChangeKind, Shape};

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run started (UTC).
    pub date: String,
    pub machine: Machine,
    pub parameters: Parameters,
    /// The compile, timed in the benchmark's process.
    pub compile: CompileFigures,
    pub startup: Startup,
    pub sync: Sync,
    pub idle: Idle,
    pub changes: Vec<Round>,
    /// The control plane at the end: CPU time in all, peak RSS (VmHWM).
    pub control_cpu_total_s: f64,
    pub control_rss_peak_mib: f64,
}

/// Where the run ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub rustc: String,
    /// `/proc/loadavg` before the run: the machine is shared, and this says how busy it was.
    pub load_before: String,
    pub load_after: String,
}

/// What was run.
#[derive(Debug, Clone, Serialize)]
pub struct Parameters {
    pub shape: Shape,
    /// Workloads with a sidecar: the configs the control plane compiles on every change.
    pub sidecars: usize,
    pub files: usize,
    pub resources_mib: f64,
    pub rounds: usize,
    pub quick: bool,
    /// How the proxies connect.
    pub connections: String,
    /// The settle time after the last expected ACK of a change, in ms.
    pub quiet_ms: u64,
    pub poll_ms: u64,
    pub debounce_ms: u64,
    pub command: String,
}

/// From `trellis control` started to ready (its first read and compile included).
#[derive(Debug, Clone, Serialize)]
pub struct Startup {
    pub ready_s: f64,
    /// The control plane's own `compile_ms` of its first read, and the proxies it compiled.
    pub compile_ms: f64,
    pub compiled_proxies: u64,
    pub cpu_s: f64,
    pub rss_mib: f64,
}

/// Every proxy connects and gets its first config.
#[derive(Debug, Clone, Serialize)]
pub struct Sync {
    pub proxies: usize,
    /// From the first connection attempt until every stream is open.
    pub all_connected_s: f64,
    /// ... until the last proxy has its first config off the wire.
    pub all_received_s: f64,
    /// ... until the last proxy has ACKed its first config.
    pub all_acked_s: f64,
    /// Per proxy, from its stream opening to its first config answered, in ms.
    pub first_config_ms: Summary,
    /// Checking and parsing one config, in ms (what each real proxy spends on its own CPU).
    pub parse_ms: Summary,
    pub bytes: u64,
    pub nacks: usize,
    /// The reason of the first NACK, if any.
    pub nack_reason: Option<String>,
    pub control_cpu_s: f64,
    /// The benchmark process (the simulated proxies parsing) over the same time.
    pub bench_cpu_s: f64,
    pub rss_peak_mib: f64,
}

/// The control plane with every proxy connected and nothing changing.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub seconds: f64,
    pub control_cpu_s: f64,
    pub rss_mib: f64,
}

/// One change on disk.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub index: usize,
    pub kind: ChangeKind,
    pub what: String,
    /// The proxies whose config the change alters (from the mesh's `exportTo`).
    pub expected: usize,
    /// The proxies that received a config.
    pub received: usize,
    pub nacks: usize,
    /// The reason of the first NACK, if any.
    pub nack_reason: Option<String>,
    /// The versions the configs carried (one, normally).
    pub versions: Vec<u64>,
    /// From the rename to the control plane's `resources compiled` line (poll wait, read,
    /// validation, compile, serialisation), in ms.
    pub compiled_ms: Option<f64>,
    /// The control plane's own `compile_ms` for this read.
    pub compile_ms: Option<f64>,
    /// From the rename to `publishing configs` (after the debounce), in ms.
    pub published_ms: Option<f64>,
    /// From the rename to each config off the wire at its proxy, in ms.
    pub received_ms: Summary,
    /// Checking and parsing one config, in ms.
    pub parse_ms: Summary,
    /// From the rename to each receiving proxy's ACK, in ms.
    pub ack_ms: Summary,
    /// The samples of `ack_ms`.
    #[serde(skip)]
    pub acks: Vec<f64>,
    pub bytes: u64,
    pub control_cpu_s: f64,
    pub bench_cpu_s: f64,
    pub rss_peak_mib: f64,
}

/// A distribution: nearest-rank percentiles.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = (p * sorted.len() as f64).ceil() as usize;
            sorted[i.clamp(1, sorted.len()) - 1]
        };
        Summary {
            count: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: rank(0.50),
            p99: rank(0.99),
            max: sorted[sorted.len() - 1],
        }
    }

    /// Of durations, in ms.
    pub fn of_durations(values: &[Duration]) -> Summary {
        let ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        Summary::of(&ms)
    }
}

impl Machine {
    pub fn now() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            cpu,
            memory_gib: memory_kib / f64::from(1 << 20),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            rustc,
            load_before: load(),
            load_after: String::new(),
        }
    }
}

/// `/proc/loadavg`'s three averages.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Report {
    /// The Markdown page.
    pub fn markdown(&self) -> String {
        let p = &self.parameters;
        let s = &p.shape;
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Control plane scale: {} proxies, {} services, {} endpoints{}\n",
            thousands(s.proxies),
            thousands(s.services),
            thousands(s.endpoints),
            if p.quick { " (quick)" } else { "" }
        );
        let _ = writeln!(
            out,
            "{} · {} cores ({}), {:.0} GiB · Linux {} · {} · load average {} before, {} after\n",
            self.date, m.cores, m.cpu, m.memory_gib, m.kernel, m.rustc, m.load_before, m.load_after
        );
        let export = match s.export {
            crate::shape::Export::Own => "its own namespace (`exportTo: [\".\"]`)",
            crate::shape::Export::All => "every namespace",
        };
        let _ = writeln!(
            out,
            "Shape: {} application namespaces of about {} services each, exported to {export}, \
             plus {} shared services (namespace `platform`, exported everywhere); {} endpoints \
             per service; {} Workloads with a sidecar (configs compiled per change); {} files, \
             {:.1} MiB. Each proxy: its own mTLS connection and stream. `{}`\n",
            s.namespaces,
            (s.services - s.shared) / s.namespaces.max(1),
            s.shared,
            s.endpoints / s.services.max(1),
            thousands(p.sidecars),
            p.files,
            p.resources_mib,
            p.command,
        );

        let c = &self.compile;
        let y = &self.sync;
        let _ = writeln!(out, "| figure | value |\n|---|---|");
        let mut row = |k: String, v: String| {
            let _ = writeln!(out, "| {k} | {v} |");
        };
        row(
            "control plane start → ready (first read + compile of every sidecar)".into(),
            format!(
                "{:.1} s (its compile_ms {:.0} for {} proxies)",
                self.startup.ready_s,
                self.startup.compile_ms,
                thousands(self.startup.compiled_proxies as usize)
            ),
        );
        row(
            format!("initial sync: {} streams open", thousands(y.proxies)),
            format!("{:.2} s", y.all_connected_s),
        );
        row(
            "initial sync: last config off the wire".into(),
            format!("{:.2} s", y.all_received_s),
        );
        row(
            "initial sync: last proxy ACKed".into(),
            format!(
                "{:.2} s (per proxy, stream open → ACK: p50 {:.0} ms, p99 {:.0} ms; parse p50 {:.1} ms)",
                y.all_acked_s, y.first_config_ms.p50, y.first_config_ms.p99, y.parse_ms.p50
            ),
        );
        row(
            "initial sync: bytes pushed".into(),
            format!(
                "{} ({} per proxy), {} NACKs",
                bytes(y.bytes),
                bytes(y.bytes / y.proxies.max(1) as u64),
                y.nacks
            ),
        );
        for kind in [
            ChangeKind::Endpoint,
            ChangeKind::SharedEndpoint,
            ChangeKind::AddService,
        ] {
            let rounds: Vec<&Round> = self.changes.iter().filter(|r| r.kind == kind).collect();
            if rounds.is_empty() {
                continue;
            }
            let last: Vec<f64> = rounds.iter().map(|r| r.ack_ms.max).collect();
            let last = Summary::of(&last);
            let last_received: Vec<f64> = rounds.iter().map(|r| r.received_ms.max).collect();
            let last_received = Summary::of(&last_received);
            let pooled = pooled(&rounds);
            let received: usize = rounds.iter().map(|r| r.received).sum::<usize>() / rounds.len();
            let bytes_per: u64 = rounds.iter().map(|r| r.bytes).sum::<u64>() / rounds.len() as u64;
            let cpu: f64 =
                rounds.iter().map(|r| r.control_cpu_s).sum::<f64>() / rounds.len() as f64;
            row(
                format!(
                    "change on disk → last ACK: {} ({} round{})",
                    kind_name(kind),
                    rounds.len(),
                    if rounds.len() == 1 { "" } else { "s" }
                ),
                format!(
                    "p50 {:.0} ms, max {:.0} ms (each ACK: p50 {:.0} ms, p99 {:.0} ms; last config off the wire: p50 {:.0} ms); {} proxies, {} pushed, {:.2} s CPU per change",
                    last.p50,
                    last.max,
                    pooled.p50,
                    pooled.p99,
                    last_received.p50,
                    received,
                    bytes(bytes_per),
                    cpu
                ),
            );
        }
        row(
            "compile per proxy (control plane's log)".into(),
            format!(
                "{:.2} ms ({:.0} ms for {} proxies)",
                self.startup.compile_ms / self.startup.compiled_proxies.max(1) as f64,
                self.startup.compile_ms,
                thousands(self.startup.compiled_proxies as usize)
            ),
        );
        row(
            "compile per proxy (in-process, Compiler::proxy)".into(),
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, + wire JSON p50 {:.2} ms (plain serde_json::to_vec {:.2} ms); once per change: shared work {:.0} ms, read + validate {:.0} ms",
                c.compile_ms.p50,
                c.compile_ms.p99,
                c.serialize_ms.p50,
                c.serialize_plain_ms.p50,
                c.shared_ms,
                c.load_ms
            ),
        );
        row(
            "config size per proxy".into(),
            format!(
                "p50 {}, max {} (all sidecars' JSON ≈ {:.0} MiB)",
                bytes(c.json_bytes.p50 as u64),
                bytes(c.json_bytes.max as u64),
                c.estimated_store_mib
            ),
        );
        row(
            "control plane CPU".into(),
            format!(
                "start {:.1} s, initial sync {:.1} s, idle {:.3} s/s, {:.1} s in all",
                self.startup.cpu_s,
                y.control_cpu_s,
                self.idle.control_cpu_s / self.idle.seconds.max(1e-9),
                self.control_cpu_total_s
            ),
        );
        row(
            "control plane RSS".into(),
            format!(
                "ready {:.0} MiB, idle after sync {:.0} MiB, peak {:.0} MiB",
                self.startup.rss_mib, self.idle.rss_mib, self.control_rss_peak_mib
            ),
        );

        let _ = writeln!(
            out,
            "\n## Changes\n\nTimes from the rename of the changed file. *compiled*: the control \
             plane's `resources compiled` line (poll wait of up to {} ms, read, validation, \
             compile, serialisation of every sidecar's config); *published*: after the {} ms \
             debounce; *received*: the last config off the wire at its proxy; ACK: as each proxy \
             sends it, after parsing (the simulated proxies share this machine's cores: a real \
             proxy's ACK comes one *parse* after its config arrives).\n",
            p.poll_ms, p.debounce_ms
        );
        let _ = writeln!(
            out,
            "| # | change | proxies | compiled | of which compile | published | received | parse p50 | ACK p50 | ACK p99 | last ACK | pushed | CP CPU | CP RSS peak |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &self.changes {
            let opt = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.0} ms"));
            let nacks = if r.nacks > 0 {
                format!(", {} NACK", r.nacks)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| {} | {}: {} | {} of {}{nacks} | {} | {} | {} | {:.0} ms | {:.1} ms | {:.0} ms | {:.0} ms | {:.0} ms | {} | {:.2} s | {:.0} MiB |",
                r.index,
                kind_name(r.kind),
                r.what,
                r.received,
                r.expected,
                opt(r.compiled_ms),
                opt(r.compile_ms),
                opt(r.published_ms),
                r.received_ms.max,
                r.parse_ms.p50,
                r.ack_ms.p50,
                r.ack_ms.p99,
                r.ack_ms.max,
                bytes(r.bytes),
                r.control_cpu_s,
                r.rss_peak_mib
            );
        }
        out
    }
}

/// Every ACK of these rounds.
fn pooled(rounds: &[&Round]) -> Summary {
    let all: Vec<f64> = rounds.iter().flat_map(|r| r.acks.iter().copied()).collect();
    Summary::of(&all)
}

fn kind_name(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Endpoint => "endpoint",
        ChangeKind::SharedEndpoint => "shared endpoint",
        ChangeKind::AddService => "new service",
    }
}

/// 50000 → "50,000".
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in the largest unit that keeps a number ≥ 1.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= f64::from(1 << 30) {
        format!("{:.2} GiB", n / f64::from(1 << 30))
    } else if n >= f64::from(1 << 20) {
        format!("{:.1} MiB", n / f64::from(1 << 20))
    } else if n >= 1024.0 {
        format!("{:.0} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&values);
        assert_eq!((s.p50, s.p99, s.max, s.count), (50.0, 99.0, 100.0, 100));
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.p50, s.p99, s.max), (2.0, 3.0, 3.0));
        assert_eq!(Summary::of(&[]).count, 0);
    }

    #[test]
    fn numbers_read_easily() {
        assert_eq!(thousands(50000), "50,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000000), "1,000,000");
        assert_eq!(bytes(2048), "2 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
