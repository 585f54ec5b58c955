//! `trellis-proxy`: the sidecar alone, for sidecar images. The same code as `trellis proxy`,
//! without the control plane, the CA, the tools and the demo app linked in: fewer code pages
//! for each sidecar to map (bench/README.md, "Memory").

#[path = "../proxy.rs"]
mod proxy;

use clap::Parser;

/// The Trellis sidecar proxy (`trellis proxy`).
#[derive(Debug, Parser)]
#[command(name = "trellis-proxy", version, about)]
struct Cli {
    #[command(flatten)]
    args: proxy::ProxyArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match trellis_runtime::runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("trellis-proxy: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(proxy::run(cli.args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("trellis-proxy: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
