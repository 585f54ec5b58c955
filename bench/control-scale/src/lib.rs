//! `trellis-control-scale`: the control plane's scale benchmark (issue 5). See
//! `bench/README.md` for how to run it and read it.
//!
//! [`run`] does the whole run, top to bottom: generate the mesh ([`shape`]), time its compile
//! in-process ([`compile`]), start the real `trellis control` in its own process
//! ([`control`]), connect the simulated proxies ([`fleet`]), make the changes and time each
//! one to the last ACK, and return the figures ([`report`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::time::Instant;
use trellis_identity::{CertificateAuthority, Credentials, SpiffeId, WorkloadCert};

pub mod compile;
pub mod control;
pub mod fleet;
pub mod report;
pub mod shape;

use control::{ControlPlane, Milestone};
use fleet::{Event, Fleet, ProxySpec, Received};
use report::{Idle, Machine, Parameters, Report, Round, Startup, Summary, Sync};
use shape::{Export, Mesh, Shape, Sidecars};

/// The command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "trellis-control-scale",
    about = "Scale benchmark of `trellis control`: simulated proxies on real mTLS discovery \
             streams, a generated mesh, changes on disk timed to the last ACK"
)]
pub struct Args {
    /// Simulated proxies (each its own mTLS connection and stream). Default 1,000 (100 quick).
    #[arg(long)]
    pub proxies: Option<usize>,
    /// Services, the shared ones included. Default 5,000 (500 quick).
    #[arg(long)]
    pub services: Option<usize>,
    /// Endpoints (Workloads), dealt evenly over the services. Default 50,000 (5,000 quick).
    #[arg(long)]
    pub endpoints: Option<usize>,
    /// Application namespaces. Default: one per 100 services.
    #[arg(long)]
    pub namespaces: Option<usize>,
    /// Mesh-wide services (namespace `platform`, exported everywhere). Default 10 (5 quick).
    #[arg(long)]
    pub shared: Option<usize>,
    /// Where application Services are exported: `own` namespace, or `all` (to show why
    /// scoping matters).
    #[arg(long, value_enum, default_value = "own")]
    pub export: Export,
    /// Which Workloads have a sidecar (`spec.proxy`), i.e. get a config compiled on every
    /// change: only the simulated `proxies`' (the other endpoints are then outside the mesh),
    /// or `all` of them. The control plane compiles and keeps a config for every sidecar,
    /// connected or not: with `all`, 50,000 sidecars do not fit in memory (bench/README.md).
    #[arg(long, value_enum, default_value = "proxies")]
    pub sidecars: Sidecars,
    /// Changes on disk, each timed to the last ACK. Default 8 (4 quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// 100 proxies, 500 services, 5,000 endpoints, 4 rounds: well under a minute.
    #[arg(long)]
    pub quick: bool,
    /// The `trellis` binary. Default: target/release/trellis (under $CARGO_TARGET_DIR if set).
    #[arg(long, overrides_with = "trellis")]
    pub trellis: Option<PathBuf>,
    /// Where the results go. Default: bench/results.
    #[arg(long, overrides_with = "out")]
    pub out: Option<PathBuf>,
    /// Print the table only; write no results files.
    #[arg(long)]
    pub no_write: bool,
    /// The work directory (resources, CA, control plane log). Default: a new one under the
    /// temporary directory, removed at the end unless --keep.
    #[arg(long)]
    pub work: Option<PathBuf>,
    #[arg(long)]
    pub keep: bool,
    /// Kill the control plane past this RSS, in MiB (the machine is shared).
    #[arg(long, default_value_t = 8192)]
    pub max_rss: u64,
    /// Proxies connecting at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// How long any one step may take (the start, the sync, a change), in seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// After a change's last expected ACK, wait this long (ms) for unexpected configs.
    #[arg(long, default_value_t = 1000)]
    pub quiet: u64,
    /// Print progress to stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

/// One run's settings, defaults applied.
#[derive(Debug, Clone)]
struct Params {
    shape: Shape,
    rounds: usize,
    quick: bool,
    trellis: PathBuf,
    max_rss_kib: u64,
    concurrency: usize,
    timeout: Duration,
    quiet: Duration,
    verbose: bool,
}

/// A finished run: the report, and where it was written.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    pub written: Vec<PathBuf>,
}

macro_rules! say {
    ($params:expr, $($arg:tt)*) => {
        if $params.verbose {
            eprintln!("control-scale: {}", format!($($arg)*));
        }
    };
}

impl Args {
    fn params(&self) -> anyhow::Result<Params> {
        let (proxies, services, endpoints, shared, rounds) = if self.quick {
            (100, 500, 5_000, 5, 4)
        } else {
            (1_000, 5_000, 50_000, 10, 8)
        };
        let services = self.services.unwrap_or(services);
        let shape = Shape {
            proxies: self.proxies.unwrap_or(proxies),
            services,
            endpoints: self.endpoints.unwrap_or(endpoints),
            namespaces: self.namespaces.unwrap_or((services / 100).max(1)),
            shared: self.shared.unwrap_or(shared),
            export: self.export,
            sidecars: self.sidecars,
        };
        shape.check()?;
        Ok(Params {
            shape,
            rounds: self.rounds.unwrap_or(rounds),
            quick: self.quick,
            trellis: self.trellis.clone().unwrap_or_else(default_trellis),
            max_rss_kib: self.max_rss.saturating_mul(1024),
            concurrency: self.connect_concurrency,
            timeout: Duration::from_secs(self.timeout),
            quiet: Duration::from_millis(self.quiet),
            verbose: self.verbose,
        })
    }
}

/// Runs the benchmark and writes the results (unless `--no-write`).
pub async fn run(args: Args) -> anyhow::Result<Outcome> {
    let params = args.params()?;
    anyhow::ensure!(
        params.trellis.is_file(),
        "no trellis binary at {} (build it: cargo build --release -p trellis, or give --trellis)",
        params.trellis.display()
    );
    let work = Work::new(args.work.clone(), args.keep)?;
    let report = measure(&params, &work, &args).await;
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            if !args.keep {
                eprintln!(
                    "control-scale: the work directory {} is kept for a look",
                    work.path.display()
                );
            }
            work.keep_on_drop();
            return Err(error);
        }
    };
    let mut written = Vec::new();
    if !args.no_write {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| repo().join("bench/results"));
        std::fs::create_dir_all(&out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        let stamp = report.date.replace([' ', ':'], "-").replace("-UTC", "");
        let stamp = stamp.get(..16).unwrap_or(&stamp).to_owned();
        let base = out.join(format!("control-scale-{stamp}"));
        let md = base.with_extension("md");
        let json = base.with_extension("json");
        std::fs::write(&md, report.markdown())
            .with_context(|| format!("cannot write {}", md.display()))?;
        std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", json.display()))?;
        written = vec![md, json];
    }
    Ok(Outcome { report, written })
}

async fn measure(params: &Params, work: &Work, args: &Args) -> anyhow::Result<Report> {
    let mut machine = Machine::now();
    let date = trellis_identity::human::time(std::time::SystemTime::now());
    let resources = work.path.join("resources");
    let ca_dir = work.path.join("ca");
    std::fs::create_dir_all(&resources)?;

    // 1. The mesh, on disk.
    let mut mesh = Mesh::generate(&params.shape)?;
    mesh.write_all(&resources)?;
    let (files, resources_bytes) = dir_size(&resources)?;
    let sidecars = mesh.sidecars();
    say!(
        params,
        "{} files, {:.1} MiB in {}; {} sidecars",
        files,
        resources_bytes as f64 / f64::from(1 << 20),
        resources.display(),
        sidecars
    );

    // 2. The compile, timed in this process with the control plane's code (before the control
    //    plane runs, so that the two do not share the CPU).
    let compile = compile::measure(&resources, mesh.proxies(), sidecars)?;
    say!(
        params,
        "in-process: read+validate {:.0} ms, shared {:.0} ms, per proxy {:.2} ms + JSON {:.2} ms, {:.0} KiB",
        compile.load_ms,
        compile.shared_ms,
        compile.compile_ms.mean,
        compile.serialize_ms.mean,
        compile.json_bytes.mean / 1024.0
    );

    // 3. The CA, and each simulated proxy's certificate (issued by hand, as `trellis ca issue`).
    control::init_ca(&params.trellis, &ca_dir).await?;
    let ca = CertificateAuthority::load(&ca_dir)?;
    let control_id = trellis_control::control_identity(ca.trust_domain())?;
    let mut specs = Vec::with_capacity(mesh.proxies().len());
    for (index, proxy) in mesh.proxies().iter().enumerate() {
        let id = SpiffeId::new(ca.trust_domain(), &proxy.namespace, &proxy.service_account)?;
        let (key, issued) = ca.issue(&id, Duration::from_secs(24 * 3600))?;
        let cert = WorkloadCert::new(&key, issued.chain_pem.as_bytes())?;
        let creds = Credentials::new(cert, ca.bundle().clone());
        specs.push(ProxySpec {
            index,
            name: proxy.name.clone(),
            namespace: proxy.namespace.clone(),
            id: id.to_string(),
            tls: trellis_identity::client_config(&creds, &control_id)?,
        });
    }
    say!(params, "{} certificates issued", specs.len());

    // 4. The control plane: started, and measured before any proxy connects.
    let options = control::Options {
        trellis: params.trellis.clone(),
        ca_dir,
        resources: resources.clone(),
        work: work.path.clone(),
        max_rss_kib: params.max_rss_kib,
        start_timeout: params.timeout,
    };
    let started = Instant::now();
    let mut control = ControlPlane::start(&options).await?;
    let ready = started.elapsed();
    let mut milestones = Vec::new();
    while let Ok(m) = control.milestones.try_recv() {
        milestones.push(m);
    }
    let (first_compile_ms, compiled_proxies) = milestones
        .iter()
        .find_map(|m| match m {
            Milestone::Compiled {
                compile_ms,
                proxies,
                ..
            } => Some((*compile_ms, *proxies)),
            _ => None,
        })
        .unwrap_or_default();
    let at_ready = control.usage();
    say!(
        params,
        "control plane ready in {:.1} s (compile {:.0} ms for {} proxies), RSS {} MiB",
        ready.as_secs_f64(),
        first_compile_ms,
        compiled_proxies,
        at_ready.rss_kib / 1024
    );

    // 5. Every proxy connects and gets its first config.
    let proxies = specs.len();
    let me = std::process::id();
    let bench_before = control::read_usage(me).unwrap_or_default();
    control.window_peak();
    let sync_started = Instant::now();
    let mut fleet = Fleet::start(specs, control.grpc, params.concurrency);
    let everyone: Vec<usize> = (0..proxies).collect();
    let sync = collect(&mut fleet, &mut control, &everyone, params).await?;
    // The version each proxy has: every change must bring a newer one.
    let mut versions: HashMap<usize, u64> =
        sync.configs.iter().map(|c| (c.proxy, c.version)).collect();
    let after_sync = control.usage();
    let bench_after = control::read_usage(me).unwrap_or_default();
    let all_connected = sync
        .connected
        .values()
        .max()
        .map_or(Duration::ZERO, |at| *at - sync_started);
    let first_config: Vec<Duration> = sync
        .configs
        .iter()
        .filter_map(|c| Some(c.answered - *sync.connected.get(&c.proxy)?))
        .collect();
    let last_ack = sync.configs.iter().map(|c| c.answered).max();
    let last_received = sync.configs.iter().map(|c| c.received).max();
    let sync = Sync {
        proxies,
        all_connected_s: all_connected.as_secs_f64(),
        all_received_s: last_received.map_or(0.0, |at| (at - sync_started).as_secs_f64()),
        all_acked_s: last_ack.map_or(0.0, |at| (at - sync_started).as_secs_f64()),
        first_config_ms: Summary::of_durations(&first_config),
        parse_ms: parse_summary(&sync.configs),
        bytes: sync.configs.iter().map(|c| c.bytes as u64).sum(),
        nacks: sync.configs.iter().filter(|c| c.nack.is_some()).count(),
        nack_reason: first_nack(&sync.configs),
        control_cpu_s: (after_sync.cpu - at_ready.cpu).as_secs_f64(),
        bench_cpu_s: (bench_after.cpu - bench_before.cpu).as_secs_f64(),
        rss_peak_mib: mib(control.window_peak()),
    };
    say!(
        params,
        "initial sync: {} streams in {:.2} s, last ACK at {:.2} s, {} NACKs",
        proxies,
        sync.all_connected_s,
        sync.all_acked_s,
        sync.nacks
    );

    // 6. Idle: every proxy connected, nothing changing.
    let idle_for = Duration::from_secs(if params.quick { 1 } else { 3 });
    let before = control.usage();
    let idle_started = Instant::now();
    tokio::time::sleep(idle_for).await;
    let after = control.usage();
    let idle = Idle {
        seconds: idle_started.elapsed().as_secs_f64(),
        control_cpu_s: (after.cpu - before.cpu).as_secs_f64(),
        rss_mib: mib(after.rss_kib),
    };

    // 7. The changes, one at a time, each timed from its rename to the last ACK.
    let mut changes = Vec::new();
    let plan = shape::plan(params.rounds, params.shape.shared > 0);
    for (index, kind) in plan.into_iter().enumerate() {
        let change = mesh.change(kind, index, &resources)?;
        while control.milestones.try_recv().is_ok() {}
        let before = control.usage();
        let bench_before = control::read_usage(me).unwrap_or_default();
        control.window_peak();
        let written = Instant::now();
        change.commit()?;
        let got = collect(&mut fleet, &mut control, &change.expected, params).await?;
        let after = control.usage();
        let bench_after = control::read_usage(me).unwrap_or_default();
        let since = |at: Instant| (at - written).as_secs_f64() * 1000.0;
        let (mut compiled_ms, mut compile_ms, mut published_ms) = (None, None, None);
        for m in &got.milestones {
            match m {
                Milestone::Compiled {
                    at, compile_ms: c, ..
                } if compiled_ms.is_none() => {
                    compiled_ms = Some(since(*at));
                    compile_ms = Some(*c);
                }
                Milestone::Published { at, .. } if published_ms.is_none() => {
                    published_ms = Some(since(*at));
                }
                _ => {}
            }
        }
        let acks: Vec<f64> = got.configs.iter().map(|c| since(c.answered)).collect();
        let mut round_versions: Vec<u64> = got.configs.iter().map(|c| c.version).collect();
        round_versions.sort_unstable();
        round_versions.dedup();
        for c in &got.configs {
            let previous = versions.insert(c.proxy, c.version);
            if previous.is_some_and(|v| v >= c.version) {
                bail!(
                    "proxy {} got version {} after {previous:?}",
                    c.proxy,
                    c.version
                );
            }
        }
        let received: HashSet<usize> = got.configs.iter().map(|c| c.proxy).collect();
        let round = Round {
            index: index + 1,
            kind,
            what: change.what.clone(),
            expected: change.expected.len(),
            received: received.len(),
            nacks: got.configs.iter().filter(|c| c.nack.is_some()).count(),
            nack_reason: first_nack(&got.configs),
            versions: round_versions,
            compiled_ms,
            compile_ms,
            published_ms,
            received_ms: Summary::of(
                &got.configs
                    .iter()
                    .map(|c| since(c.received))
                    .collect::<Vec<_>>(),
            ),
            parse_ms: parse_summary(&got.configs),
            ack_ms: Summary::of(&acks),
            acks,
            bytes: got.configs.iter().map(|c| c.bytes as u64).sum(),
            control_cpu_s: (after.cpu - before.cpu).as_secs_f64(),
            bench_cpu_s: (bench_after.cpu - bench_before.cpu).as_secs_f64(),
            rss_peak_mib: mib(control.window_peak()),
        };
        say!(
            params,
            "change {} ({}): {} of {} proxies, compiled at {:.0} ms, last ACK at {:.0} ms, {:.2} s CPU",
            round.index,
            change.file().display(),
            round.received,
            round.expected,
            round.compiled_ms.unwrap_or(f64::NAN),
            round.ack_ms.max,
            round.control_cpu_s
        );
        changes.push(round);
    }

    // 8. Stop.
    fleet.stop().await;
    let last = control.stop().await;
    machine.load_after = report::load();
    Ok(Report {
        date,
        machine,
        parameters: Parameters {
            shape: params.shape.clone(),
            sidecars,
            files,
            resources_mib: resources_bytes as f64 / f64::from(1 << 20),
            rounds: params.rounds,
            quick: params.quick,
            connections: "one TCP + TLS 1.3 connection and one discovery stream per proxy"
                .to_owned(),
            quiet_ms: params.quiet.as_millis() as u64,
            poll_ms: trellis_control::sources::POLL.as_millis() as u64,
            debounce_ms: trellis_control::push::Config::default()
                .debounce
                .as_millis() as u64,
            command: command_line(args),
        },
        compile,
        startup: Startup {
            ready_s: ready.as_secs_f64(),
            compile_ms: first_compile_ms,
            compiled_proxies,
            cpu_s: at_ready.cpu.as_secs_f64(),
            rss_mib: mib(at_ready.rss_kib),
        },
        sync,
        idle,
        changes,
        control_cpu_total_s: last.cpu.as_secs_f64(),
        control_rss_peak_mib: mib(last.hwm_kib),
    })
}

/// What arrived while waiting for a set of proxies.
struct Collected {
    configs: Vec<Received>,
    connected: HashMap<usize, Instant>,
    milestones: Vec<Milestone>,
}

/// Waits until every proxy in `expected` has answered a config, then until no config has
/// arrived for `params.quiet`; fails on a refused change, a stream that ends, the control
/// plane exiting, or `params.timeout`.
async fn collect(
    fleet: &mut Fleet,
    control: &mut ControlPlane,
    expected: &[usize],
    params: &Params,
) -> anyhow::Result<Collected> {
    let mut pending: HashSet<usize> = expected.iter().copied().collect();
    let mut got = Collected {
        configs: Vec::new(),
        connected: HashMap::new(),
        milestones: Vec::new(),
    };
    let deadline = Instant::now() + params.timeout;
    let mut last_config = Instant::now();
    loop {
        let until = if pending.is_empty() {
            last_config + params.quiet
        } else {
            deadline
        };
        tokio::select! {
            event = fleet.next() => match event {
                Some(Event::Connected { proxy, at }) => {
                    got.connected.insert(proxy, at);
                }
                Some(Event::Config(config)) => {
                    pending.remove(&config.proxy);
                    last_config = Instant::now();
                    got.configs.push(config);
                }
                Some(Event::Ended { proxy, error }) => {
                    bail!("the stream of proxy {proxy} ended: {error}\n{}", control.tail())
                }
                None => bail!("every proxy has stopped"),
            },
            milestone = control.milestones.recv() => match milestone {
                Some(Milestone::Warning { line }) if line.contains("change refused") || line.contains("invalid resource") => {
                    bail!("the control plane refused a change: {line}\n{}", control.tail())
                }
                Some(Milestone::Warning { line }) => {
                    say!(params, "control plane: {line}");
                }
                Some(m) => got.milestones.push(m),
                None => {}
            },
            _ = control.failure.changed() => {
                let why = control.failure.borrow().clone().unwrap_or_default();
                bail!("the control plane stopped: {why}\n{}", control.tail());
            }
            () = tokio::time::sleep_until(until) => {
                if pending.is_empty() {
                    return Ok(got);
                }
                bail!(
                    "{} of {} proxies got no config within {:?} (e.g. proxy {:?})\n{}",
                    pending.len(),
                    expected.len(),
                    params.timeout,
                    pending.iter().next(),
                    control.tail()
                );
            }
        }
    }
}

fn parse_summary(configs: &[Received]) -> Summary {
    Summary::of_durations(&configs.iter().map(|c| c.parse).collect::<Vec<_>>())
}

fn first_nack(configs: &[Received]) -> Option<String> {
    configs.iter().find_map(|c| c.nack.clone())
}

/// The work directory, removed when dropped unless kept.
struct Work {
    path: PathBuf,
    keep: std::sync::atomic::AtomicBool,
}

impl Work {
    fn new(path: Option<PathBuf>, keep: bool) -> anyhow::Result<Work> {
        let path = path.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("trellis-control-scale-{}", std::process::id()))
        });
        if path.exists() {
            bail!("the work directory {} exists already", path.display());
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Work {
            path,
            keep: keep.into(),
        })
    }

    fn keep_on_drop(&self) {
        self.keep.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if !self.keep.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The repository root (this crate is at bench/control-scale).
fn repo() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn default_trellis() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    target.join("release/trellis")
}

/// Files and bytes under `dir`.
fn dir_size(dir: &Path) -> anyhow::Result<(usize, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The command that reproduces the run's shape.
fn command_line(args: &Args) -> String {
    let mut out = String::from("bench/control-scale/run");
    if args.quick {
        out.push_str(" --quick");
    }
    let numbers = [
        ("--proxies", args.proxies),
        ("--services", args.services),
        ("--endpoints", args.endpoints),
        ("--namespaces", args.namespaces),
        ("--shared", args.shared),
        ("--rounds", args.rounds),
    ];
    for (flag, value) in numbers {
        if let Some(value) = value {
            out.push_str(&format!(" {flag} {value}"));
        }
    }
    if args.export != Export::Own {
        out.push_str(" --export all");
    }
    if args.sidecars != Sidecars::Proxies {
        out.push_str(" --sidecars all");
    }
    out
}
