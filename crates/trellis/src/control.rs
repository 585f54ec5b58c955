//! `trellis control`: the control plane (the mesh CA's signing service and config push), and
//! `trellis control token`, which mints the join token a workload uses for its first
//! certificate.
//!
//! ```text
//! trellis control --ca-dir DIR [--listen 127.0.0.1:15010] [--admin 127.0.0.1:15014]
//!                 [--resources DIR] [--ready-file PATH] [--cert-ttl 24h] [--max-cert-ttl D]
//! trellis control token --ca-dir DIR --id SPIFFE_ID [--ttl 1h]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use trellis_control::{Config, JoinTokenKey, ListenConfig};
use trellis_identity::{CertificateAuthority, SpiffeId, human};
use trellis_runtime::{DrainOutcome, ShutdownSignals, TracingOptions};

/// With no subcommand, runs the control plane; `token` mints a join token.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct ControlArgs {
    #[command(subcommand)]
    command: Option<ControlCommand>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, clap::Subcommand)]
enum ControlCommand {
    /// Mint a join token: the credential a workload sends with its first CSR. Prints the
    /// token alone on stdout.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The CA directory (made by `trellis ca init --dir`). The join token key is kept there.
    #[arg(long, required = true)]
    ca_dir: Option<PathBuf>,
    /// gRPC over TLS (the signing service and config push).
    #[arg(long, default_value = "127.0.0.1:15010")]
    listen: SocketAddr,
    /// Admin HTTP: /ready, /live, /metrics, /logging, /debug/proxies.
    #[arg(long, default_value = "127.0.0.1:15014")]
    admin: SocketAddr,
    /// The mesh's resources (Services, Workloads, routes, policies: every *.yaml under DIR,
    /// as `trellis check DIR` reads them), compiled into each sidecar's config and pushed.
    /// Watched: an invalid change is refused whole and the config in force stays.
    #[arg(long, value_name = "DIR")]
    resources: Option<PathBuf>,
    /// Once serving, write the bound addresses here as JSON: {"grpc": "...", "admin": "..."}.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Lifetime of the certificates issued when the request asks for none (`24h`, `90m`).
    #[arg(long, default_value = "24h", value_parser = trellis_model::parse_duration)]
    cert_ttl: Duration,
    /// The longest lifetime a request may ask for (default: --cert-ttl).
    #[arg(long, value_parser = trellis_model::parse_duration)]
    max_cert_ttl: Option<Duration>,
    /// The trust domain of a plug-in CA whose certificate names none.
    #[arg(long)]
    trust_domain: Option<String>,
    /// How long SIGTERM waits for open connections before exiting.
    #[arg(long, default_value = "10s", value_parser = trellis_model::parse_duration)]
    drain_timeout: Duration,
    /// Log level or directives for the stderr log (`info`, `debug`, `info,trellis_control=debug`).
    #[arg(long, env = "TRELLIS_LOG", default_value = "info")]
    log_level: String,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The control plane's CA directory.
    #[arg(long)]
    ca_dir: PathBuf,
    /// The identity the token lets its holder claim:
    /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
    #[arg(long, value_parser = parse_id)]
    id: SpiffeId,
    /// How long the token is valid (`1h`, `10m`).
    #[arg(long, default_value = "1h", value_parser = trellis_model::parse_duration)]
    ttl: Duration,
}

pub(crate) async fn run(args: ControlArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(ControlCommand::Token(args)) => token(args),
        None => serve(args.serve).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let Some(ca_dir) = args.ca_dir else {
        eprintln!("trellis: --ca-dir is required");
        return Ok(ExitCode::from(2));
    };
    let mut config = Config::new(ca_dir);
    config.trust_domain = args.trust_domain;
    config.listen = ListenConfig {
        grpc: args.listen,
        admin: args.admin,
    };
    config.ca.default_ttl = args.cert_ttl;
    config.ca.max_ttl = args.max_cert_ttl.unwrap_or(args.cert_ttl);
    config.resources = args.resources;
    config.drain_grace = args.drain_timeout;
    if let Err(errors) = config.validate() {
        eprintln!("trellis: invalid control plane options:\n{errors}");
        return Ok(ExitCode::from(2));
    }

    // Install signal handlers before anything else so an early SIGTERM is not lost.
    let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let log = trellis_runtime::init_tracing(TracingOptions {
        level: args.log_level.clone(),
        access_log: false,
    })?;
    tracing::info!(ca_dir = %config.ca_dir.display(), "starting control plane");
    tracing::debug!(config = ?config, "effective config");
    let grace = config.drain_grace;

    let bound = trellis_control::build(config, log).await?;
    if let Some(path) = &args.ready_file {
        write_atomically(path, &serde_json::to_vec(&bound.addrs)?)
            .with_context(|| format!("cannot write ready file {}", path.display()))?;
    }

    let kind = signals.recv().await;
    tracing::info!(?kind, "shutting down");
    match bound.shutdown(kind, grace).await {
        DrainOutcome::Complete => tracing::info!("drained"),
        DrainOutcome::TimedOut { remaining } => {
            tracing::info!(remaining, "stopped with connections still open")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    if args.ttl.is_zero() {
        eprintln!("trellis: --ttl must be more than 0");
        return Ok(ExitCode::from(2));
    }
    // The CA decides the trust domain: a token for another one could never be used.
    let ca = CertificateAuthority::load(&args.ca_dir)?;
    if args.id.trust_domain() != ca.trust_domain() {
        eprintln!(
            "trellis: {} is in trust domain {}, but the CA in {} signs for {}",
            args.id,
            args.id.trust_domain(),
            args.ca_dir.display(),
            ca.trust_domain()
        );
        return Ok(ExitCode::from(2));
    }
    let (key, created) = JoinTokenKey::load_or_create(&args.ca_dir)?;
    if created {
        eprintln!(
            "created the join token key {}",
            args.ca_dir.join(trellis_control::token::KEY_FILE).display()
        );
    }
    let now = SystemTime::now();
    let token = key.mint_at(&args.id, args.ttl, now);
    println!("{token}");
    eprintln!(
        "join token for {} valid for {} (until {})",
        args.id,
        human::duration(args.ttl),
        human::time(now + args.ttl)
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_id(s: &str) -> Result<SpiffeId, String> {
    s.parse()
        .map_err(|e: trellis_identity::SpiffeIdError| e.to_string())
}

/// Write `bytes` to `path` so that a reader never sees a partial file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
