//! `trellis ca init|issue|rotate|retire`: manage the mesh CA, a directory in Istio's plug-in CA
//! layout (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use trellis_identity::ca::{BACKDATE, DEFAULT_TRUST_DOMAIN, files};
use trellis_identity::{CertificateAuthority, Existing, SpiffeId, human};

#[derive(Debug, clap::Args)]
pub(crate) struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CaCommand {
    /// Create a CA: a self-signed root (10 years) and an intermediate that signs workloads.
    Init(InitArgs),
    /// Issue a workload certificate by hand: a new key, its CSR, signed by the CA.
    Issue(IssueArgs),
    /// Make a new root and intermediate; the trust bundle keeps the old root as well.
    Rotate(DirArgs),
    /// Drop the old roots from the trust bundle once no workload depends on them.
    Retire(DirArgs),
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// The CA directory (created if needed).
    #[arg(long)]
    dir: PathBuf,
    /// The trust domain of the mesh's SPIFFE IDs.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Replace a CA already in the directory (every certificate it issued stops verifying).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct IssueArgs {
    /// The CA directory.
    #[arg(long)]
    dir: PathBuf,
    /// The workload's identity: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
    #[arg(long, value_parser = parse_id)]
    id: SpiffeId,
    /// Where to write key.pem, cert.pem, cert-chain.pem and root-cert.pem (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// How long the certificate is valid (`24h`, `90m`, `10s`).
    #[arg(long, default_value = "24h", value_parser = trellis_model::parse_duration)]
    ttl: Duration,
    /// The trust domain of a plug-in CA whose certificate names none.
    #[arg(long)]
    trust_domain: Option<String>,
    /// Overwrite an existing key.pem in the output directory.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct DirArgs {
    /// The CA directory.
    #[arg(long)]
    dir: PathBuf,
}

pub(crate) async fn run(args: CaArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CaCommand::Init(args) => init(args),
        CaCommand::Issue(args) => issue(args),
        CaCommand::Rotate(args) => rotate(&args.dir),
        CaCommand::Retire(args) => retire(&args.dir),
    }
}

fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let existing = if args.force {
        Existing::Replace
    } else {
        Existing::Refuse
    };
    let ca = CertificateAuthority::init(&args.dir, &args.trust_domain, existing)?;
    println!(
        "created a CA for trust domain {} in {}",
        ca.trust_domain(),
        args.dir.display()
    );
    let until = human::time(ca.signing_not_after());
    print_file(
        files::ROOT_CERT,
        format!("trust bundle: {}", ca.root_name()),
    );
    print_file(
        files::CA_CERT,
        format!(
            "signs workloads: {}, valid until {until}",
            ca.signing_name()
        ),
    );
    print_file(files::CA_KEY, "its private key (mode 0600)".to_owned());
    print_file(
        files::CERT_CHAIN,
        format!("{} followed by the root", files::CA_CERT),
    );
    println!(
        "the root's private key is not kept: `trellis ca rotate` makes a new root when one is needed"
    );
    Ok(ExitCode::SUCCESS)
}

fn issue(args: IssueArgs) -> anyhow::Result<ExitCode> {
    let ca = match &args.trust_domain {
        Some(domain) => CertificateAuthority::load_for(&args.dir, domain)?,
        None => CertificateAuthority::load(&args.dir)?,
    };
    let key_path = args.out.join("key.pem");
    if key_path.exists() && !args.force {
        anyhow::bail!(
            "{} already exists; pass --force to replace it",
            key_path.display()
        );
    }
    let (key, issued) = ca.issue(&args.id, args.ttl)?;
    issued.write(&args.out, &key)?;
    // The lifetime asked for, or less when the CA's own certificate ends sooner.
    let issued_at = issued.not_before + BACKDATE;
    let lifetime = issued
        .not_after
        .duration_since(issued_at)
        .unwrap_or_default();
    println!(
        "issued {} (serial {}), valid until {} ({})",
        args.id,
        issued.serial,
        human::time(issued.not_after),
        human::duration(lifetime)
    );
    println!("written to {}:", args.out.display());
    print_file("key.pem", "private key (mode 0600)".to_owned());
    print_file("cert.pem", "certificate".to_owned());
    print_file(
        "cert-chain.pem",
        format!("certificate followed by {}", ca.signing_name()),
    );
    print_file("root-cert.pem", format!("trust bundle: {}", ca.bundle()));
    Ok(ExitCode::SUCCESS)
}

fn rotate(dir: &Path) -> anyhow::Result<ExitCode> {
    let old = CertificateAuthority::load(dir)?;
    let ca = CertificateAuthority::rotate(dir)?;
    println!(
        "rotated the CA in {}: new root {}, new intermediate {}",
        dir.display(),
        ca.root_name(),
        ca.signing_name()
    );
    println!(
        "{} now holds {} roots: {}",
        files::ROOT_CERT,
        ca.bundle().len(),
        ca.bundle()
    );
    println!(
        "certificates issued from now on chain to {}; a workload trusts them once its renewal \
         has brought the new bundle. When every workload has renewed, run \
         `trellis ca retire --dir {}` to drop {}.",
        ca.root_name(),
        dir.display(),
        old.root_name()
    );
    Ok(ExitCode::SUCCESS)
}

fn retire(dir: &Path) -> anyhow::Result<ExitCode> {
    let (ca, retired) = CertificateAuthority::retire(dir)?;
    println!(
        "retired {} from {}; it now holds {}",
        retired.join(", "),
        files::ROOT_CERT,
        ca.bundle()
    );
    Ok(ExitCode::SUCCESS)
}

fn print_file(name: &str, what: String) {
    println!("  {name:<16} {what}");
}

pub(crate) fn parse_id(s: &str) -> Result<SpiffeId, String> {
    s.parse()
        .map_err(|e: trellis_identity::SpiffeIdError| e.to_string())
}
