//! `trellis-control-scale`: see the crate's library and bench/README.md.

use std::process::ExitCode;

use clap::Parser as _;
use trellis_control_scale::{Args, run};

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("control-scale: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(outcome) => {
            println!("{}", outcome.report.markdown());
            for path in &outcome.written {
                eprintln!("control-scale: wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("control-scale: {error:#}");
            ExitCode::FAILURE
        }
    }
}
