//! `trellis`: the service mesh in one binary. Each subcommand lives in its own module.

mod allocator;
mod ca;
mod cert;
mod check;
mod control;
mod demo_app;
mod entry;
mod iptables;
mod proxy;
mod status;
mod up;

use clap::{Parser, Subcommand};

/// Trellis: a small, fast service mesh.
#[derive(Debug, Parser)]
#[command(name = "trellis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole mesh on this machine: control plane, CA, a sidecar per workload, the
    /// workloads (the built-in demo shop when no file is given). Ctrl-C stops everything.
    Up(up::UpArgs),
    /// Run one sidecar proxy from a static config file.
    Proxy(proxy::ProxyArgs),
    /// Run the small HTTP/TCP service the demo and the tests use.
    DemoApp(demo_app::DemoAppArgs),
    /// Manage the mesh CA: init, issue, rotate, retire.
    Ca(ca::CaArgs),
    /// Inspect certificates in human terms.
    Cert(cert::CertArgs),
    /// Validate a directory of resources; --workload prints a sidecar's compiled config.
    Check(check::CheckArgs),
    /// Run the control plane (the mesh CA's signing service); `control token` mints join tokens.
    Control(control::ControlArgs),
    /// List every proxy the control plane knows: identity, ACKed version, sync state, last NACK.
    ProxyStatus(status::ProxyStatusArgs),
    /// Print the config a proxy has applied (its /config_dump), found by name or admin address.
    ProxyConfig(status::ProxyConfigArgs),
    /// Transparent capture rules for a workload's network namespace: print, apply, clean.
    Iptables(iptables::IptablesArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    entry::run("trellis", async {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Proxy(args) => proxy::run(args).await,
            Command::Ca(args) => ca::run(args).await,
            Command::Cert(args) => cert::run(args).await,
            Command::Check(args) => check::run(&args),
            Command::Iptables(args) => iptables::run(args),
            Command::Control(args) => control::run(args).await,
            Command::ProxyStatus(args) => status::proxy_status(args).await,
            Command::ProxyConfig(args) => status::proxy_config(args).await,
            Command::DemoApp(args) => {
                trellis_runtime::init_tracing(trellis_runtime::TracingOptions::default())?;
                demo_app::run(args)
                    .await
                    .map(|()| std::process::ExitCode::SUCCESS)
            }
        }
    })
}
