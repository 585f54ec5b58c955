//! `trellis iptables print|apply|clean`: the transparent capture rules for a workload's
//! network namespace, installed the way an init container does before the app starts.
//!
//! Everything lives in four chains of the nat table (`TRELLIS_INBOUND`, `TRELLIS_IN_REDIRECT`,
//! `TRELLIS_OUTPUT`, `TRELLIS_REDIRECT`) entered by one jump from `PREROUTING` and one from
//! `OUTPUT`, so `clean` removes exactly what `apply` added. `apply` is one
//! `iptables-restore --noflush` transaction that declares (creates or flushes) the chains and
//! refills them, so applying twice is the same as once. The rule text comes from
//! [`rules`] (pure, golden-tested); this module only reads `iptables-save` and runs
//! `iptables-restore`: whichever `iptables` is installed (legacy or the nft shim), or one
//! chosen with `--backend`.

use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};

mod rules;
#[cfg(test)]
mod tests;

use rules::{Capture, Cidr, Family, Saved, Select};

#[derive(Debug, clap::Args)]
pub(crate) struct IptablesArgs {
    #[command(subcommand)]
    command: IptablesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum IptablesCommand {
    /// Print the rules (iptables-save format) and change nothing.
    Print(CaptureArgs),
    /// Install the rules in this network namespace; run again, same result.
    Apply {
        #[command(flatten)]
        capture: CaptureArgs,
        /// Print the iptables-restore input instead of running it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove exactly what apply added (the jumps, then the TRELLIS_* chains).
    Clean {
        #[command(flatten)]
        backend: BackendArgs,
        /// Print the iptables-restore input instead of running it.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Lists are comma-separated; flags that take one may be repeated; `''` is the empty list.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("proxy")
        .required(true)
        .multiple(true)
        .args(["proxy_uid", "proxy_gid"])
))]
struct CaptureArgs {
    /// Where captured inbound connections go (the proxy's `inbound` listener).
    #[arg(long, default_value_t = 15006, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    inbound_port: u16,
    /// Where captured outbound connections go (the proxy's `outbound_transparent` listener).
    #[arg(long, default_value_t = 15001, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    outbound_port: u16,
    /// The proxy's mesh (mTLS) port: inbound connections to it are never captured.
    #[arg(long, default_value_t = 15008, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    mesh_port: u16,
    /// The user id the proxy runs as: its own connections are never captured.
    #[arg(long, value_name = "UID,...", value_parser = parse_ids)]
    proxy_uid: Vec<Ids>,
    /// The group id the proxy runs as: its own connections are never captured.
    #[arg(long, value_name = "GID,...", value_parser = parse_ids)]
    proxy_gid: Vec<Ids>,
    /// Inbound ports to capture: `*` (all but the mesh port and the excluded ones), a list,
    /// or '' for no inbound capture.
    #[arg(long, default_value = "*", value_name = "PORTS", value_parser = parse_port_select)]
    include_inbound_ports: Select<u16>,
    /// With --include-inbound-ports '*': inbound ports left alone (the proxy's admin port,
    /// ssh, a health check from the node).
    #[arg(long, value_name = "PORT,...", value_parser = parse_ports)]
    exclude_inbound_ports: Vec<Ports>,
    /// Outbound destination ports never captured.
    #[arg(long, value_name = "PORT,...", value_parser = parse_ports)]
    exclude_outbound_ports: Vec<Ports>,
    /// Outbound destinations never captured (CIDRs or addresses).
    #[arg(long, value_name = "CIDR,...", value_parser = parse_cidrs)]
    exclude_outbound_cidrs: Vec<Cidrs>,
    /// Outbound destinations to capture: `*`, a list of CIDRs, or '' for no outbound capture.
    #[arg(long, default_value = "*", value_name = "CIDRS", value_parser = parse_cidr_select)]
    include_outbound_cidrs: Select<Cidr>,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Debug, clap::Args)]
struct BackendArgs {
    /// Also IPv6 (ip6tables). Without it IPv6 is left alone: not captured.
    #[arg(long)]
    ipv6: bool,
    /// Which iptables: the one on PATH (`auto`), or `legacy` / `nft` explicitly.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Auto,
    Legacy,
    Nft,
}

#[derive(Debug, Clone)]
struct Ids(Vec<u32>);
#[derive(Debug, Clone)]
struct Ports(Vec<u16>);
#[derive(Debug, Clone)]
struct Cidrs(Vec<Cidr>);

pub(crate) fn run(args: IptablesArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        IptablesCommand::Print(args) => {
            let (capture, families) = args.capture()?;
            print!("{}", print(&capture, &families));
        }
        IptablesCommand::Apply { capture, dry_run } => {
            let backend = capture.backend.backend;
            let (capture, families) = capture.capture()?;
            for family in families {
                let saved = read_saved(backend, family, dry_run)?;
                let input = capture.ruleset(family).apply_input(&saved);
                if dry_run {
                    print_dry_run(backend, family, &input);
                } else {
                    restore(backend, family, &input)?;
                    eprintln!(
                        "trellis: {} capture rules applied (inbound to port {}, outbound to port {})",
                        family.command(),
                        capture.inbound_port,
                        capture.outbound_port
                    );
                }
            }
        }
        IptablesCommand::Clean { backend, dry_run } => {
            for family in backend.families() {
                let saved = read_saved(backend.backend, family, dry_run)?;
                match saved.clean_input() {
                    None => eprintln!("trellis: no {} capture rules to clean", family.command()),
                    Some(input) if dry_run => print_dry_run(backend.backend, family, &input),
                    Some(input) => {
                        restore(backend.backend, family, &input)?;
                        eprintln!("trellis: {} capture rules removed", family.command());
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `trellis iptables print` shows: each family's rules, IPv4 first.
fn print(capture: &Capture, families: &[Family]) -> String {
    families
        .iter()
        .map(|family| capture.ruleset(*family).print())
        .collect::<Vec<_>>()
        .join("\n")
}

impl CaptureArgs {
    /// The options as rules input, checked as a whole; and the families to apply them to.
    fn capture(self) -> anyhow::Result<(Capture, Vec<Family>)> {
        let flat = |lists: Vec<Ids>| lists.into_iter().flat_map(|l| l.0).collect::<Vec<_>>();
        let ports = |lists: Vec<Ports>| lists.into_iter().flat_map(|l| l.0).collect::<Vec<_>>();
        let families = self.backend.families();
        let capture = Capture {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            mesh_port: self.mesh_port,
            proxy_uids: flat(self.proxy_uid),
            proxy_gids: flat(self.proxy_gid),
            inbound_ports: self.include_inbound_ports,
            exclude_inbound_ports: ports(self.exclude_inbound_ports),
            exclude_outbound_ports: ports(self.exclude_outbound_ports),
            exclude_outbound_cidrs: self
                .exclude_outbound_cidrs
                .into_iter()
                .flat_map(|l| l.0)
                .collect(),
            include_outbound_cidrs: self.include_outbound_cidrs,
        };
        let mut problems = Vec::new();
        if capture.proxy_uids.is_empty() && capture.proxy_gids.is_empty() {
            problems.push(
                "--proxy-uid or --proxy-gid must name the proxy (its own connections must not \
                 be captured, or it would loop into itself)"
                    .to_owned(),
            );
        }
        let ports = [
            ("--inbound-port", capture.inbound_port),
            ("--outbound-port", capture.outbound_port),
            ("--mesh-port", capture.mesh_port),
        ];
        for (i, (a, x)) in ports.iter().enumerate() {
            for (b, y) in &ports[i + 1..] {
                if x == y {
                    problems.push(format!("{a} and {b} are both {x}"));
                }
            }
        }
        if !self.backend.ipv6 {
            let included = match &capture.include_outbound_cidrs {
                Select::All => &[][..],
                Select::Only(cidrs) => cidrs,
            };
            for cidr in capture.exclude_outbound_cidrs.iter().chain(included) {
                if cidr.family() == Family::V6 {
                    problems.push(format!("{cidr} is IPv6: add --ipv6"));
                }
            }
        }
        if !problems.is_empty() {
            bail!("bad options:\n  - {}", problems.join("\n  - "));
        }
        Ok((capture, families))
    }
}

impl BackendArgs {
    fn families(&self) -> Vec<Family> {
        if self.ipv6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }
}

impl Backend {
    /// `iptables-save`, `ip6tables-legacy-restore`, ...
    fn program(self, family: Family, tool: &str) -> String {
        let variant = match self {
            Backend::Auto => "",
            Backend::Legacy => "-legacy",
            Backend::Nft => "-nft",
        };
        format!("{}{variant}-{tool}", family.command())
    }
}

/// What is in the nat table now. A dry run that cannot read it (not root, no iptables)
/// says so and plans against an empty table.
fn read_saved(backend: Backend, family: Family, dry_run: bool) -> anyhow::Result<Saved> {
    let program = backend.program(family, "save");
    let out = Command::new(&program)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output();
    let result = match out {
        Ok(out) if out.status.success() => Ok(Saved::parse(&String::from_utf8_lossy(&out.stdout))),
        Ok(out) => Err(anyhow::anyhow!(
            "{program} -t nat failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            PRIVILEGE_HINT
        )),
        Err(error) => Err(anyhow::anyhow!(
            "cannot run {program}: {error} (is iptables installed?)"
        )),
    };
    match result {
        Err(error) if dry_run => {
            eprintln!("trellis: {error:#}\ntrellis: planning against an empty nat table");
            Ok(Saved::default())
        }
        other => other,
    }
}

/// Feeds `input` to `iptables-restore --noflush --wait`: one transaction, applied whole or
/// not at all; `--wait` takes the xtables lock in turn with anyone else changing rules.
fn restore(backend: Backend, family: Family, input: &str) -> anyhow::Result<()> {
    let program = backend.program(family, "restore");
    let mut child = Command::new(&program)
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program} (is iptables installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing the rules to {program}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} --noflush failed ({}): {}{}\n--- its input ---\n{input}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            PRIVILEGE_HINT
        );
    }
    Ok(())
}

const PRIVILEGE_HINT: &str =
    " (run as root or with CAP_NET_ADMIN, inside the workload's network namespace)";

fn print_dry_run(backend: Backend, family: Family, input: &str) {
    println!(
        "# dry run: would feed this to {} --noflush --wait",
        backend.program(family, "restore")
    );
    print!("{input}");
}

fn parse_ids(value: &str) -> Result<Ids, String> {
    rules::parse_list(value, rules::parse_id).map(Ids)
}

fn parse_ports(value: &str) -> Result<Ports, String> {
    rules::parse_list(value, rules::parse_port).map(Ports)
}

fn parse_cidrs(value: &str) -> Result<Cidrs, String> {
    rules::parse_list(value, str::parse).map(Cidrs)
}

fn parse_port_select(value: &str) -> Result<Select<u16>, String> {
    Select::parse(value, rules::parse_port)
}

fn parse_cidr_select(value: &str) -> Result<Select<Cidr>, String> {
    Select::parse(value, str::parse)
}
