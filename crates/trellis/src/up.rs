//! `trellis up [-f FILE|DIR]`: a whole mesh on this machine, in one command.
//!
//! 1. Read and validate the resources (the built-in demo when no file is given: written to
//!    `<state-dir>/resources`, where you can edit it while the mesh runs).
//! 2. Make a CA and start the control plane in this process, watching the resources.
//! 3. For each Workload with `spec.run`, assign its sidecar's ports (admin, outbound, mesh),
//!    mint its join token and start `trellis proxy` from a bootstrap; for each Service
//!    annotated `trellis.dev/ingress: "PORT"`, an ingress proxy on `127.0.0.1:PORT` that sends
//!    every request to that Service.
//! 4. Wait until every proxy is ready (its certificate and first config), then start each
//!    app with `HTTP_PROXY` pointing at its sidecar, and wait until it listens on its ports.
//! 5. Print the ingress URLs, the admin URLs and one line per workload; on Ctrl-C (or SIGTERM)
//!    stop everything in order: apps, then proxies (drained), then the control plane. Every
//!    process is in its own process group, which is signalled whole, so nothing is left
//!    running.
//!
//! Each process's output goes to `<state-dir>/logs/NAME.{app,proxy}.log`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use tokio::sync::watch;
use trellis_control::sources::read_files;
use trellis_control::{Config, JoinTokenKey, ListenConfig, NodeKey};
use trellis_identity::{CertificateAuthority, Existing, SpiffeId};
use trellis_model::resources::{Resource, Resources, ServiceSpec, WorkloadProxy, WorkloadSpec};
use trellis_model::{ConfigErrors, Protocol};
use trellis_runtime::{ShutdownSignals, TracingOptions};

/// The built-in demo (`examples/demo/`).
const DEMO: &[(&str, &str)] = &[
    (
        "mesh.yaml",
        include_str!("../../../examples/demo/mesh.yaml"),
    ),
    (
        "frontend.yaml",
        include_str!("../../../examples/demo/frontend.yaml"),
    ),
    (
        "reviews.yaml",
        include_str!("../../../examples/demo/reviews.yaml"),
    ),
    (
        "catalog.yaml",
        include_str!("../../../examples/demo/catalog.yaml"),
    ),
    (
        "stock.yaml",
        include_str!("../../../examples/demo/stock.yaml"),
    ),
];

/// The Service annotation that asks for an ingress on a local port.
const INGRESS_ANNOTATION: &str = "trellis.dev/ingress";
/// The name of the ingress proxy's Workload (in the exposed Service's namespace).
const INGRESS_WORKLOAD: &str = "trellis-ingress";
/// How long a proxy or an app may take to become ready.
const STARTUP: Duration = Duration::from_secs(30);
/// How long an app or a proxy may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// A directory (or one file) of resources; Workloads with `spec.run` are started. Without
    /// it, the built-in demo shop.
    #[arg(short = 'f', long = "file", value_name = "FILE|DIR")]
    file: Option<PathBuf>,
    /// Where the CA, the proxies' bootstraps and the logs go (made anew each run).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The control plane's gRPC address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:15010")]
    control: SocketAddr,
    /// The control plane's admin address (`trellis proxy-status` asks 127.0.0.1:15014).
    #[arg(long, default_value = "127.0.0.1:15014")]
    control_admin: SocketAddr,
    /// The trust domain of the mesh's identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Log level of the control plane's log on stderr.
    #[arg(
        long,
        env = "TRELLIS_LOG",
        default_value = "warn,trellis_control::sources=info"
    )]
    log_level: String,
}

/// A workload `trellis up` runs: its resource, its sidecar's ports, and its app's command.
#[derive(Debug)]
struct Planned {
    key: NodeKey,
    spec: WorkloadSpec,
    id: SpiffeId,
    admin: SocketAddr,
    outbound: SocketAddr,
    mesh: SocketAddr,
}

/// An ingress proxy.
#[derive(Debug)]
struct Ingress {
    key: NodeKey,
    id: SpiffeId,
    admin: SocketAddr,
    mesh: SocketAddr,
    listen: SocketAddr,
    to: String,
}

/// A process `trellis up` started and watches.
struct Child {
    name: String,
    pid: i32,
    exited: watch::Receiver<Option<ExitStatus>>,
    log: PathBuf,
}

pub(crate) async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    // Workloads' own commands inherit this process's THP setting: the node's, not the proxy's.
    crate::allocator::restore_inherited_thp();
    let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let state = args
        .state_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("trellis-up"));
    if state.exists() {
        std::fs::remove_dir_all(&state)
            .with_context(|| format!("cannot clear the state directory {}", state.display()))?;
    }
    for sub in ["ca", "proxies", "logs"] {
        std::fs::create_dir_all(state.join(sub))
            .with_context(|| format!("cannot create {}", state.join(sub).display()))?;
    }

    // 1. The resources.
    let dir = match &args.file {
        Some(path) => path.clone(),
        None => {
            let dir = state.join("resources");
            std::fs::create_dir_all(&dir)?;
            for (name, text) in DEMO {
                std::fs::write(dir.join(name), text)?;
            }
            dir
        }
    };
    let resources = match load(&dir)? {
        Ok(resources) => resources,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("trellis: {} errors in {}", errors.0.len(), dir.display());
            return Ok(ExitCode::from(2));
        }
    };
    // Every port is chosen now, at once and all distinct (held until the processes start).
    let mut ports = PortPool::default();
    // The apps' own ports (fixed in their Workloads) are not free for sidecars.
    ports.reserved = resources
        .workloads
        .iter()
        .flat_map(|w| w.spec.ports.values().copied())
        .collect();
    let control_grpc = ports.take_or_any(args.control)?;
    let control_admin = ports.take_or_any(args.control_admin)?;
    let (workloads, ingresses) = plan(&resources, &args.trust_domain, &mut ports)?;
    if workloads.is_empty() {
        bail!(
            "no Workload in {} has `spec.run`: nothing to start (see examples/demo/)",
            dir.display()
        );
    }

    // 2. The CA and the control plane, here.
    let ca_dir = state.join("ca");
    CertificateAuthority::init(&ca_dir, &args.trust_domain, Existing::Replace)
        .context("cannot create the mesh CA")?;
    let log = trellis_runtime::init_tracing(TracingOptions {
        level: args.log_level.clone(),
        access_log: false,
    })?;
    let mut config = Config::new(&ca_dir);
    config.listen = ListenConfig {
        grpc: control_grpc,
        admin: control_admin,
    };
    config.resources = Some(dir.clone());
    config.sidecars = workloads
        .iter()
        .map(|w| {
            let proxy = WorkloadProxy {
                mesh: w.mesh,
                outbound: Some(w.outbound),
                admin: Some(w.admin),
            };
            (w.key.clone(), proxy)
        })
        .chain(ingresses.iter().map(|g| {
            let proxy = WorkloadProxy {
                mesh: g.mesh,
                outbound: None,
                admin: Some(g.admin),
            };
            (g.key.clone(), proxy)
        }))
        .collect();
    config.extra_resources = ingresses
        .iter()
        .map(|g| (format!("<trellis up: {}>", g.key), ingress_workload(g)))
        .collect();
    drop(ports);
    let control = trellis_control::build(config, log)
        .await
        .context("cannot start the control plane")?;
    let grpc = control.addrs.grpc;
    let (tokens, _) = JoinTokenKey::load_or_create(&ca_dir)?;

    // 3. The sidecars (and ingresses), then 4. the apps once their sidecars are ready.
    let mut proxies: Vec<Child> = Vec::new();
    let mut apps: Vec<Child> = Vec::new();
    let started = start_all(
        &state,
        &ca_dir,
        grpc,
        &tokens,
        &workloads,
        &ingresses,
        &mut proxies,
        &mut apps,
    )
    .await;

    let code = match started {
        Ok(()) => {
            print!(
                "{}",
                summary(&dir, &control.addrs, &workloads, &ingresses, &state)
            );
            // 5. Until Ctrl-C, telling of any process that exits meanwhile.
            watch_until_signal(&mut signals, &proxies, &apps).await;
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("trellis: {error:#}");
            ExitCode::FAILURE
        }
    };
    println!("stopping: apps, then proxies, then the control plane");
    stop_all(&apps).await;
    stop_all(&proxies).await;
    control
        .shutdown(trellis_runtime::ShutdownKind::Drain, Duration::from_secs(2))
        .await;
    println!(
        "stopped {} apps, {} proxies and the control plane",
        apps.len(),
        proxies.len()
    );
    Ok(code)
}

/// Reads and validates the resources; `Err` is an I/O problem, `Ok(Err)` invalid resources.
fn load(dir: &Path) -> anyhow::Result<Result<Resources, ConfigErrors>> {
    let files = read_files(dir)
        .map_err(|(path, error)| anyhow::anyhow!("cannot read {}: {error}", path.display()))?;
    if !files.errors.is_empty() {
        return Ok(Err(ConfigErrors(files.errors)));
    }
    if files.texts.is_empty() {
        bail!("no *.yaml or *.yml files under {}", dir.display());
    }
    Ok(Resources::load(&files.texts))
}

/// Which workloads to run and which Services to expose, with ports for their proxies.
fn plan(
    resources: &Resources,
    trust_domain: &str,
    ports: &mut PortPool,
) -> anyhow::Result<(Vec<Planned>, Vec<Ingress>)> {
    let mut workloads = Vec::new();
    for w in resources.workloads.iter().filter(|w| w.spec.run.is_some()) {
        let key = NodeKey::new(&w.metadata.namespace, &w.metadata.name);
        workloads.push(Planned {
            id: spiffe_id(trust_domain, &key.namespace, &w.spec.service_account)?,
            key,
            spec: w.spec.clone(),
            admin: ports.take()?,
            outbound: ports.take()?,
            mesh: ports.take()?,
        });
    }
    let mut ingresses = Vec::new();
    for service in &resources.services {
        let Some(port) = service.metadata.annotations.get(INGRESS_ANNOTATION) else {
            continue;
        };
        let Some(listen) = port
            .parse::<u16>()
            .ok()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        else {
            bail!(
                "{}: Service {}/{}: annotation {INGRESS_ANNOTATION} must be a port number, not {port:?}",
                service.location.file,
                service.metadata.namespace,
                service.metadata.name
            );
        };
        let Some(target) = http_port(service) else {
            bail!(
                "Service {}/{} has {INGRESS_ANNOTATION} but no HTTP port",
                service.metadata.namespace,
                service.metadata.name
            );
        };
        let ns = &service.metadata.namespace;
        let key = NodeKey::new(ns, INGRESS_WORKLOAD);
        if ingresses.iter().any(|g: &Ingress| g.key == key) {
            bail!("one Service per namespace may have {INGRESS_ANNOTATION} ({ns} has several)");
        }
        ingresses.push(Ingress {
            id: spiffe_id(trust_domain, ns, INGRESS_WORKLOAD)?,
            key,
            admin: ports.take()?,
            mesh: ports.take()?,
            listen: ports.take_or_any(listen)?,
            to: format!("{}.{}:{}", service.metadata.name, ns, target),
        });
    }
    Ok((workloads, ingresses))
}

/// The first port of a Service that speaks HTTP.
fn http_port(service: &Resource<ServiceSpec>) -> Option<u16> {
    service
        .spec
        .ports
        .iter()
        .find(|p| matches!(p.protocol, Protocol::Http | Protocol::Http2))
        .map(|p| p.port)
}

fn spiffe_id(trust_domain: &str, namespace: &str, account: &str) -> anyhow::Result<SpiffeId> {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{account}")
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The Workload of an ingress proxy: selected by no Service, so it only sends.
fn ingress_workload(g: &Ingress) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: {{ name: {name}, namespace: {ns}, labels: {{ app: {name} }} }}
spec:
  serviceAccount: {name}
  address: 127.0.0.1
",
        name = g.key.name,
        ns = g.key.namespace,
    )
}

#[allow(clippy::too_many_arguments)]
async fn start_all(
    state: &Path,
    ca_dir: &Path,
    grpc: SocketAddr,
    tokens: &JoinTokenKey,
    workloads: &[Planned],
    ingresses: &[Ingress],
    proxies: &mut Vec<Child>,
    apps: &mut Vec<Child>,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the trellis binary")?;
    let bundle = ca_dir.join("root-cert.pem");
    let mut ready_files = Vec::new();
    let sidecars = workloads
        .iter()
        .map(|w| {
            let listeners = format!(
                "{{ admin: {}, outbound: {}, mesh: {} }}",
                w.admin, w.outbound, w.mesh
            );
            (&w.key, &w.id, listeners)
        })
        .chain(ingresses.iter().map(|g| {
            let listeners = format!(
                "{{ admin: {}, mesh: {}, ingress: [ {{ address: {}, to: \"{}\" }} ] }}",
                g.admin, g.mesh, g.listen, g.to
            );
            (&g.key, &g.id, listeners)
        }));
    for (key, id, listeners) in sidecars {
        let base = state.join("proxies").join(key.to_string());
        let token = tokens.mint_at(id, Duration::from_secs(3600), SystemTime::now());
        let token_file = base.with_extension("token");
        std::fs::write(&token_file, token)?;
        let bootstrap = format!(
            "node: {{ name: {name}, namespace: {ns} }}
listeners: {listeners}
identity:
  id: {id}
  bundle: {bundle}
  ca: {grpc}
  join_token_file: {token}
control: {grpc}
",
            name = key.name,
            ns = key.namespace,
            bundle = bundle.display(),
            token = token_file.display(),
        );
        let config = base.with_extension("yaml");
        std::fs::write(&config, bootstrap)?;
        let ready = base.with_extension("ready.json");
        let mut command = std::process::Command::new(&exe);
        command
            .arg("proxy")
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready);
        let log = state.join("logs").join(format!("{key}.proxy.log"));
        proxies.push(spawn(&format!("{key} (proxy)"), command, &log)?);
        ready_files.push(ready);
    }
    for (child, ready) in proxies.iter().zip(&ready_files) {
        wait_for(child, STARTUP, || ready.exists()).await?;
    }

    for w in workloads {
        let Some(run) = &w.spec.run else { continue };
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let proxy = format!("http://{}", w.outbound);
        env.insert("HTTP_PROXY".into(), proxy.clone());
        env.insert("http_proxy".into(), proxy);
        env.insert("TRELLIS_WORKLOAD".into(), w.key.name.clone());
        env.insert("TRELLIS_NAMESPACE".into(), w.key.namespace.clone());
        env.insert("TRELLIS_UP_STATE".into(), state.display().to_string());
        for (name, port) in &w.spec.ports {
            env.insert(format!("PORT_{}", env_name(name)), port.to_string());
        }
        for (name, value) in &run.env {
            let value = expand(value, &env);
            env.insert(name.clone(), value);
        }
        let args: Vec<String> = run.command.iter().map(|a| expand(a, &env)).collect();
        let Some((program, rest)) = args.split_first() else {
            bail!("workload {} has an empty run.command", w.key);
        };
        let program = if program == "trellis" {
            exe.clone()
        } else {
            PathBuf::from(program)
        };
        let mut command = std::process::Command::new(&program);
        command.args(rest).envs(&env);
        let log = state.join("logs").join(format!("{}.app.log", w.key));
        apps.push(spawn(&w.key.to_string(), command, &log)?);
    }
    for (child, w) in apps
        .iter()
        .zip(workloads.iter().filter(|w| w.spec.run.is_some()))
    {
        let address = w.spec.address;
        let ports: Vec<u16> = w.spec.ports.values().copied().collect();
        wait_for(child, STARTUP, || {
            ports.iter().all(|p| {
                std::net::TcpStream::connect_timeout(
                    &SocketAddr::new(address, *p),
                    Duration::from_millis(200),
                )
                .is_ok()
            })
        })
        .await?;
    }
    Ok(())
}

/// Starts `command` in a process group of its own, its output to `log`.
fn spawn(name: &str, mut command: std::process::Command, log: &Path) -> anyhow::Result<Child> {
    let out =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        // A `trellis` child stops by itself if `up` dies without stopping it (entry.rs).
        .env(crate::entry::UP_PARENT_ENV, std::process::id().to_string())
        .process_group(0);
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .with_context(|| format!("{name} has no process id"))?;
    let (tx, exited) = watch::channel(None);
    tokio::spawn(async move {
        let status = child.wait().await.ok();
        let _ = tx.send(status);
    });
    Ok(Child {
        name: name.to_owned(),
        pid,
        exited,
        log: log.to_path_buf(),
    })
}

/// Polls `ready` until it holds; fails if the process exits or `timeout` passes.
async fn wait_for(
    child: &Child,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = *child.exited.borrow() {
            bail!(
                "{} exited ({status}) before it was ready:\n{}",
                child.name,
                tail(&child.log)
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} not ready after {timeout:?}:\n{}",
                child.name,
                tail(&child.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for Ctrl-C or SIGTERM, telling of processes that exit meanwhile.
async fn watch_until_signal(signals: &mut ShutdownSignals, proxies: &[Child], apps: &[Child]) {
    let mut reported = vec![false; proxies.len() + apps.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = signals.recv() => return,
            _ = tick.tick() => {}
        }
        for (i, child) in proxies.iter().chain(apps).enumerate() {
            if let Some(status) = *child.exited.borrow() {
                if !reported[i] {
                    reported[i] = true;
                    eprintln!(
                        "trellis up: {} exited ({status}); its log: {}\n{}",
                        child.name,
                        child.log.display(),
                        tail(&child.log)
                    );
                }
            }
        }
    }
}

/// SIGTERM to each process group, then SIGKILL to those still running after the grace.
async fn stop_all(children: &[Child]) {
    for child in children {
        signal(child, rustix::process::Signal::TERM);
    }
    for child in children {
        let mut exited = child.exited.clone();
        let stopped = tokio::time::timeout(STOP_GRACE, exited.wait_for(Option::is_some))
            .await
            .is_ok();
        if !stopped {
            eprintln!(
                "trellis up: {} did not stop in {STOP_GRACE:?}; killing it",
                child.name
            );
            signal(child, rustix::process::Signal::KILL);
            let _ = tokio::time::timeout(Duration::from_secs(2), exited.wait_for(Option::is_some))
                .await;
        }
    }
}

/// Signals the child's whole process group (what it started too).
fn signal(child: &Child, signal: rustix::process::Signal) {
    if child.exited.borrow().is_some() {
        return;
    }
    if let Some(pid) = rustix::process::Pid::from_raw(child.pid) {
        if let Err(error) = rustix::process::kill_process_group(pid, signal) {
            tracing::debug!(%error, name = %child.name, "cannot signal");
        }
    }
}

/// What a newcomer needs: where to curl, where to look, how to stop.
fn summary(
    dir: &Path,
    control: &trellis_control::BoundAddrs,
    workloads: &[Planned],
    ingresses: &[Ingress],
    state: &Path,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nTrellis mesh is up: {} workloads, mTLS between every sidecar.\n",
        workloads.len()
    );
    for g in ingresses {
        let _ = writeln!(out, "  ingress        http://{}/   → {}", g.listen, g.to);
    }
    let _ = writeln!(
        out,
        "  control plane  {} (gRPC), http://{}/debug/proxies",
        control.grpc, control.admin
    );
    let _ = writeln!(
        out,
        "\n  {:<22} {:<24} {:<26} STATUS",
        "WORKLOAD", "APP", "SIDECAR ADMIN"
    );
    for w in workloads {
        let ports: Vec<String> = w
            .spec
            .ports
            .values()
            .map(|p| format!("{}:{p}", w.spec.address))
            .collect();
        let _ = writeln!(
            out,
            "  {:<22} {:<24} {:<26} ready",
            w.key.to_string(),
            ports.join(","),
            format!("http://{}/", w.admin)
        );
    }
    for g in ingresses {
        let _ = writeln!(
            out,
            "  {:<22} {:<24} {:<26} ready",
            g.key.to_string(),
            "-",
            format!("http://{}/", g.admin)
        );
    }
    let _ = writeln!(out, "\nTry:");
    if let Some(g) = ingresses.first() {
        let _ = writeln!(out, "  curl http://{}/", g.listen);
    }
    let _ = writeln!(
        out,
        "  trellis proxy-status{}",
        if control.admin.port() == 15014 {
            String::new()
        } else {
            format!(" --control-admin {}", control.admin)
        }
    );
    if let Some(w) = workloads.first() {
        let _ = writeln!(out, "  curl http://{}/metrics", w.admin);
    }
    let _ = writeln!(
        out,
        "  edit the resources in {} (a route's weights, say): the change is pushed at once",
        dir.display()
    );
    let _ = writeln!(
        out,
        "\nLogs: {}/logs   Ctrl-C stops everything.",
        state.display()
    );
    out
}

/// `$(NAME)` replaced by `env`'s value (left as written when unknown).
fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) if env.contains_key(&after[..end]) => {
                out.push_str(&env[&after[..end]]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("$(");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `http-alt` → `HTTP_ALT`.
fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Ports for the mesh's listeners, each bound (so held) until the pool is dropped, just
/// before the processes that listen on them start: all distinct, and none taken meanwhile.
/// They come from below the kernel's ephemeral range, where outgoing connections (which use
/// ephemeral ports) cannot take them while they are not yet listened on.
#[derive(Default)]
struct PortPool {
    held: Vec<TcpListener>,
    next: u32,
    /// Ports that are not to be handed out (free now, but someone else's).
    reserved: std::collections::HashSet<u16>,
}

impl PortPool {
    /// A free port on loopback.
    fn take(&mut self) -> anyhow::Result<SocketAddr> {
        const FLOOR: u32 = 20_000;
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32_768);
        if ephemeral_low > FLOOR + 1_000 {
            // A different starting point per run, so two meshes rarely probe the same ports.
            if self.next == 0 {
                self.next = std::process::id() % (ephemeral_low - FLOOR);
            }
            for _ in 0..(ephemeral_low - FLOOR) {
                let port = FLOOR + self.next % (ephemeral_low - FLOOR);
                self.next += 1;
                let Ok(port) = u16::try_from(port) else {
                    continue;
                };
                if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                    let addr = listener.local_addr()?;
                    self.held.push(listener);
                    return Ok(addr);
                }
            }
        }
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("no free port on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        self.held.push(listener);
        Ok(addr)
    }

    /// `addr` if it is free now (port 0: any free port), else a free port on loopback.
    fn take_or_any(&mut self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        if addr.port() != 0 {
            if let Ok(listener) = TcpListener::bind(addr) {
                self.held.push(listener);
                return Ok(addr);
            }
        }
        self.take()
    }
}

/// The last lines of a log, indented.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(15);
    lines[start..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_and_unknown_ones_stay() {
        let env = BTreeMap::from([("PORT_HTTP".to_string(), "18080".to_string())]);
        assert_eq!(expand("127.0.0.1:$(PORT_HTTP)", &env), "127.0.0.1:18080");
        assert_eq!(expand("$(NOPE) $(PORT_HTTP)$(", &env), "$(NOPE) 18080$(");
        assert_eq!(env_name("http-alt"), "HTTP_ALT");
    }

    #[test]
    fn the_built_in_demo_is_valid_and_runs_every_workload() {
        let files: Vec<(String, String)> = DEMO
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        let resources = Resources::load(&files).unwrap();
        let (workloads, ingresses) =
            plan(&resources, "cluster.local", &mut PortPool::default()).unwrap();
        assert_eq!(workloads.len(), resources.workloads.len());
        assert_eq!(ingresses.len(), 1);
        assert_eq!(ingresses[0].to, "frontend.shop:8080");
    }
}
