//! `trellis-proxy`: the sidecar alone, for sidecar images. The same code as `trellis proxy`,
//! without the control plane, the CA, the tools and the demo app linked in: fewer code pages
//! for each sidecar to map (bench/README.md, "Memory").

#[path = "../allocator.rs"]
mod allocator;
#[path = "../entry.rs"]
mod entry;
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
    entry::run("trellis-proxy", proxy::run(cli.args))
}
