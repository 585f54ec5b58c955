//! `trellis cert inspect FILE...`: certificates in human terms, and whether they verify.
//! Exit status: 0 when every check passed, 1 when one failed (expired, unknown authority,
//! wrong identity, broken chain), 2 when an input could not be read as certificates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use trellis_identity::{InspectOptions, SpiffeId, TrustBundle};

#[derive(Debug, clap::Args)]
pub(crate) struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertCommand {
    /// Describe PEM certificates: subjects, SANs, validity, keys, who signed whom.
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// PEM files, each a certificate or a chain (leaf first) or a bundle of roots.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Check that each chain verifies against these roots (e.g. root-cert.pem).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Check that each leaf carries this identity.
    #[arg(long, value_parser = crate::ca::parse_id)]
    expect_id: Option<SpiffeId>,
}

const CHECK_FAILED: u8 = 1;
const BAD_INPUT: u8 = 2;

pub(crate) async fn run(args: CertArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CertCommand::Inspect(args) => Ok(inspect(&args)),
    }
}

fn inspect(args: &InspectArgs) -> ExitCode {
    let bundle = match &args.bundle {
        Some(path) => match TrustBundle::from_pem_file(path) {
            Ok(bundle) => Some(bundle),
            Err(error) => {
                eprintln!("trellis: the bundle: {error}");
                return ExitCode::from(BAD_INPUT);
            }
        },
        None => None,
    };
    let options = InspectOptions {
        bundle: bundle.as_ref(),
        expect_id: args.expect_id.as_ref(),
        now: SystemTime::now(),
    };
    let mut worst = 0;
    for (i, path) in args.files.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let name = path.display().to_string();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) => {
                eprintln!("trellis: cannot read {name}: {error}");
                worst = BAD_INPUT;
                continue;
            }
        };
        match trellis_identity::inspect(&name, &bytes, options) {
            Ok(report) => {
                print!("{report}");
                for problem in report.problems() {
                    eprintln!("trellis: {name}: {problem}");
                }
                if !report.is_ok() {
                    worst = worst.max(CHECK_FAILED);
                }
            }
            Err(error) => {
                eprintln!("trellis: {error}");
                worst = BAD_INPUT;
            }
        }
    }
    ExitCode::from(worst)
}
