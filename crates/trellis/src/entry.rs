//! What both binaries' `main` do around their command: build the runtime
//! (`trellis_runtime::runtime_builder`), run the command on it, and turn an error into one
//! line on stderr and exit code 1.

use std::future::Future;
use std::process::ExitCode;

pub(crate) fn run(name: &str, command: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match trellis_runtime::runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("{name}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("{name}: {error:#}");
            ExitCode::FAILURE
        }
    }
}
