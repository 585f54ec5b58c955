//! `trellis check DIR`: validate a directory of resources offline, as the control plane would.
//!
//! Reads every `*.yaml` and `*.yml` file under DIR (recursively, skipping hidden entries, in
//! path order) and prints `ok: N resources (Services: a, ...)`, or every error as
//! `FILE:LINE:COL: FIELD: REASON` on stderr. With `--workload NAME`, it then prints the proxy
//! config compiled for that workload's sidecar. Exit status: 0 when valid, 1 when not, 2 when
//! DIR or a file in it cannot be read.

use std::path::{Path, PathBuf};

use std::process::ExitCode;
use trellis_control::sources::{Files, read_files};

use trellis_model::ConfigErrors;
use trellis_model::resources::{CompileOptions, Compiler, Kind, Resources};

#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// A directory of resources (or a single file).
    dir: PathBuf,
    /// Also print the proxy config compiled for this workload's sidecar.
    #[arg(long, value_name = "NAME")]
    workload: Option<String>,
    /// The namespace of --workload.
    #[arg(
        long,
        value_name = "NS",
        default_value = "default",
        requires = "workload"
    )]
    namespace: String,
    /// How to print the compiled config.
    #[arg(long, value_enum, default_value_t = Format::Yaml, requires = "workload")]
    output: Format,
    /// The trust domain of the workloads' SPIFFE IDs.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Yaml,
    Json,
}

const INVALID: u8 = 1;
const UNREADABLE: u8 = 2;

pub(crate) fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let Files { texts, mut errors } = match read_files(&args.dir) {
        Ok(files) => files,
        Err((path, error)) => {
            eprintln!("trellis: cannot read {}: {error}", path.display());
            return Ok(ExitCode::from(UNREADABLE));
        }
    };
    if texts.is_empty() && errors.is_empty() {
        eprintln!(
            "trellis: no *.yaml or *.yml files under {}",
            args.dir.display()
        );
        return Ok(ExitCode::from(INVALID));
    }
    let files = texts;
    let resources = match Resources::load(&files) {
        Ok(resources) if errors.is_empty() => resources,
        Ok(_) => return Ok(report(&args.dir, ConfigErrors(errors))),
        Err(ConfigErrors(more)) => {
            errors.extend(more);
            return Ok(report(&args.dir, ConfigErrors(errors)));
        }
    };

    let summary = summary(&resources);
    let Some(workload) = &args.workload else {
        println!("{summary}");
        return Ok(ExitCode::SUCCESS);
    };
    // The config goes to stdout alone, so that it can be piped.
    eprintln!("{summary}");
    let options = CompileOptions {
        trust_domain: args.trust_domain.clone(),
        ..CompileOptions::default()
    };
    let config = match Compiler::new(&resources, options).proxy(workload, &args.namespace) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("trellis: {error}");
            return Ok(ExitCode::from(INVALID));
        }
    };
    let text = match args.output {
        Format::Yaml => serde_saphyr::to_string(&config)?,
        Format::Json => serde_json::to_string_pretty(&config)? + "\n",
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `ok: 12 resources (Services: 6, Workloads: 5, HTTPRoutes: 1)`: the kinds present.
fn summary(resources: &Resources) -> String {
    let counts: Vec<String> = Kind::ALL
        .iter()
        .filter(|kind| resources.count(**kind) > 0)
        .map(|kind| format!("{}: {}", kind.plural(), resources.count(*kind)))
        .collect();
    let total = resources.len();
    let noun = if total == 1 { "resource" } else { "resources" };
    if counts.is_empty() {
        format!("ok: {total} {noun}")
    } else {
        format!("ok: {total} {noun} ({})", counts.join(", "))
    }
}

fn report(dir: &Path, errors: ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    let n = errors.0.len();
    let noun = if n == 1 { "error" } else { "errors" };
    eprintln!("trellis: {n} {noun} in {}", dir.display());
    ExitCode::from(INVALID)
}
