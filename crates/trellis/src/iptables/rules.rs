//! The capture rules as text, and the `iptables-restore` input that installs or removes them.
//! Pure: nothing here runs a command, so every option set is golden-tested
//! (`golden/*.txt`) and the plans are tested against scripted `iptables-save` output.
//!
//! Rules are written the way `iptables-save` prints them (`-p tcp -m tcp --dport N`, CIDRs with
//! host bits cleared), so what `print` shows is what `iptables-save` shows once applied.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::str::FromStr;

/// Our chains, all in the nat table. Declaring one in `iptables-restore --noflush` input
/// creates it, or flushes it when it exists: that is what makes `apply` flush-and-refill.
pub(crate) const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];
const INBOUND: &str = "TRELLIS_INBOUND";
const IN_REDIRECT: &str = "TRELLIS_IN_REDIRECT";
const OUTPUT: &str = "TRELLIS_OUTPUT";
const REDIRECT: &str = "TRELLIS_REDIRECT";

/// What to capture, and where to send it: the options an init container passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Capture {
    /// Where captured inbound connections go (the proxy's `inbound` listener).
    pub(crate) inbound_port: u16,
    /// Where captured outbound connections go (the proxy's `outbound_transparent` listener).
    pub(crate) outbound_port: u16,
    /// The mesh transport port: peers' mTLS arrives here and is never captured.
    pub(crate) mesh_port: u16,
    /// The proxy runs as these users and/or groups; their traffic is never captured.
    pub(crate) proxy_uids: Vec<u32>,
    pub(crate) proxy_gids: Vec<u32>,
    /// Inbound ports captured: all (`*`) or a list (empty: no inbound capture).
    pub(crate) inbound_ports: Select<u16>,
    /// With `inbound_ports` = all: ports left alone (the proxy's admin port, ssh, ...).
    pub(crate) exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured.
    pub(crate) exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations never captured (checked before `include_outbound_cidrs`).
    pub(crate) exclude_outbound_cidrs: Vec<Cidr>,
    /// Outbound destinations captured: all (`*`) or a list (empty: no outbound capture).
    pub(crate) include_outbound_cidrs: Select<Cidr>,
}

/// `*` or a list (possibly empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Select<T> {
    All,
    Only(Vec<T>),
}

/// An address range, host bits cleared (as iptables prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Which table family a rule set is for: `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

/// The rules for one family: chain rules and the jumps into them from the built-in chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ruleset {
    pub(crate) family: Family,
    /// `-A PREROUTING ... -j TRELLIS_INBOUND` and `-A OUTPUT ... -j TRELLIS_OUTPUT`.
    jumps: Vec<String>,
    /// `-A TRELLIS_* ...`, in order.
    rules: Vec<String>,
}

/// What `iptables-save -t nat` says is there now, as far as our chains are concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Saved {
    /// Which of our chains exist.
    chains: Vec<String>,
    /// Rules outside our chains that jump to one of them, as saved (`-A CHAIN ...`).
    jumps: Vec<String>,
}

impl Capture {
    /// Istio's defaults: capture every inbound port to 15006 and every outbound destination
    /// to 15001, except the proxy's own traffic (`uid`).
    #[cfg(test)]
    pub(crate) fn with_uid(uid: u32) -> Capture {
        Capture {
            inbound_port: 15006,
            outbound_port: 15001,
            mesh_port: 15008,
            proxy_uids: vec![uid],
            proxy_gids: Vec::new(),
            inbound_ports: Select::All,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            include_outbound_cidrs: Select::All,
        }
    }

    /// The rules for `family`. CIDRs of the other family are left out.
    pub(crate) fn ruleset(&self, family: Family) -> Ruleset {
        let mut jumps = Vec::new();
        let mut rules = Vec::new();
        let mut rule = |chain: &str, spec: String| rules.push(format!("-A {chain} {spec}"));
        let dport = |port: u16| format!("-p tcp -m tcp --dport {port}");

        // Inbound: connections arriving at this namespace, on their way to the app.
        let inbound = !matches!(&self.inbound_ports, Select::Only(ports) if ports.is_empty());
        if inbound {
            jumps.push(format!("-A PREROUTING -p tcp -j {INBOUND}"));
        }
        match &self.inbound_ports {
            Select::All => {
                // The mesh port first: peers' mTLS goes to the proxy itself, untouched.
                for port in std::iter::once(self.mesh_port)
                    .chain(self.exclude_inbound_ports.iter().copied())
                {
                    rule(INBOUND, format!("{} -j RETURN", dport(port)));
                }
                rule(INBOUND, format!("-p tcp -j {IN_REDIRECT}"));
            }
            Select::Only(ports) => {
                for &port in ports {
                    rule(INBOUND, format!("{} -j {IN_REDIRECT}", dport(port)));
                }
            }
        }
        rule(
            IN_REDIRECT,
            format!("-p tcp -j REDIRECT --to-ports {}", self.inbound_port),
        );

        // Outbound: connections this namespace opens. Whatever is not sent to
        // TRELLIS_REDIRECT falls off the end of the chain and goes out as it is.
        jumps.push(format!("-A OUTPUT -p tcp -j {OUTPUT}"));
        for &port in &self.exclude_outbound_ports {
            rule(OUTPUT, format!("{} -j RETURN", dport(port)));
        }
        // The proxy's own connections (to peers, to the app, passthrough) are never captured:
        // that is what keeps it from looping into itself.
        for uid in &self.proxy_uids {
            rule(OUTPUT, format!("-m owner --uid-owner {uid} -j RETURN"));
        }
        for gid in &self.proxy_gids {
            rule(OUTPUT, format!("-m owner --gid-owner {gid} -j RETURN"));
        }
        // The app talking to itself (localhost, or its own address, both routed over lo).
        // Istio instead sends the proxy's lo traffic to the pod's own address back into
        // inbound capture (exempting its 127.0.0.6 source); Trellis's inbound side reaches
        // the app at the pod's address from the proxy's uid, so that rule would loop here, and
        // a pod calling its own service already enters through the mesh port.
        rule(OUTPUT, "-o lo -j RETURN".to_owned());
        for cidr in self
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| c.family() == family)
        {
            rule(OUTPUT, format!("-d {cidr} -j RETURN"));
        }
        match &self.include_outbound_cidrs {
            Select::All => rule(OUTPUT, format!("-j {REDIRECT}")),
            Select::Only(cidrs) => {
                for cidr in cidrs.iter().filter(|c| c.family() == family) {
                    rule(OUTPUT, format!("-d {cidr} -j {REDIRECT}"));
                }
            }
        }
        rule(
            REDIRECT,
            format!("-p tcp -j REDIRECT --to-ports {}", self.outbound_port),
        );

        Ruleset {
            family,
            jumps,
            rules,
        }
    }
}

impl<T> Select<T> {
    /// `*`, or a comma-separated list of `item`s (the empty string is the empty list).
    pub(crate) fn parse(
        value: &str,
        item: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Select<T>, String> {
        if value.trim() == "*" {
            return Ok(Select::All);
        }
        parse_list(value, item).map(Select::Only)
    }
}

/// A comma-separated list; the empty string is the empty list (init containers often pass
/// an empty environment variable).
pub(crate) fn parse_list<T>(
    value: &str,
    item: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|word| !word.is_empty())
        .map(|word| item(word).map_err(|reason| format!("{word:?}: {reason}")))
        .collect()
}

/// A TCP port, 1-65535.
pub(crate) fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(0) | Err(_) => Err("not a port (1-65535)".to_owned()),
        Ok(port) => Ok(port),
    }
}

/// A user or group id (numeric: the name may not exist where the rules are applied).
pub(crate) fn parse_id(value: &str) -> Result<u32, String> {
    value
        .parse()
        .map_err(|_| "not a numeric user or group id".to_owned())
}

impl Cidr {
    pub(crate) fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (one host).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| "not an address or CIDR (like 10.0.0.0/8)".to_owned())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("prefix length must be 0-{max}")),
            },
        };
        // Clear the host bits, as iptables does when it stores the rule.
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(u32::from(32 - prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(u32::from(128 - prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Family {
    /// The command family: `iptables` or `ip6tables`.
    pub(crate) fn command(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl Ruleset {
    /// The `iptables-restore --noflush` input that installs the rules where `saved` is what is
    /// there now. Our chains are declared (created, or flushed when they exist) and refilled;
    /// the jumps into them are left alone when they are already exactly right, otherwise the
    /// old ones are deleted and ours appended. One transaction: it applies whole or not at all.
    pub(crate) fn apply_input(&self, saved: &Saved) -> String {
        let mut out = String::from("*nat\n");
        for chain in CHAINS {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        if saved.jumps != self.jumps {
            for jump in &saved.jumps {
                let _ = writeln!(out, "{}", delete(jump));
            }
            for jump in &self.jumps {
                let _ = writeln!(out, "{jump}");
            }
        }
        for rule in &self.rules {
            let _ = writeln!(out, "{rule}");
        }
        out.push_str("COMMIT\n");
        out
    }

    /// The rules as `trellis iptables print` shows them: what `apply` installs in a namespace
    /// that has none of them yet.
    pub(crate) fn print(&self) -> String {
        format!(
            "# {} rules from trellis iptables\n{}",
            self.family.command(),
            self.apply_input(&Saved::default())
        )
    }
}

impl Saved {
    /// Reads the nat table from `iptables-save` output (other tables are ignored).
    pub(crate) fn parse(save: &str) -> Saved {
        let mut saved = Saved::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
            } else if !in_nat || line.starts_with('#') {
                continue;
            } else if let Some(decl) = line.strip_prefix(':') {
                let chain = decl.split_whitespace().next().unwrap_or_default();
                if CHAINS.contains(&chain) {
                    saved.chains.push(chain.to_owned());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split_whitespace().next().unwrap_or_default();
                if !CHAINS.contains(&chain) && target(rule).is_some_and(|t| CHAINS.contains(&t)) {
                    saved.jumps.push(line.to_owned());
                }
            }
        }
        saved
    }

    /// The `iptables-restore --noflush` input that removes everything `apply` added: the
    /// jumps into our chains, then the chains. `None` when there is nothing of ours.
    pub(crate) fn clean_input(&self) -> Option<String> {
        if self.chains.is_empty() && self.jumps.is_empty() {
            return None;
        }
        let mut out = String::from("*nat\n");
        for jump in &self.jumps {
            let _ = writeln!(out, "{}", delete(jump));
        }
        // Flush all before deleting any: our chains jump to each other.
        for chain in &self.chains {
            let _ = writeln!(out, "-F {chain}");
        }
        for chain in &self.chains {
            let _ = writeln!(out, "-X {chain}");
        }
        out.push_str("COMMIT\n");
        Some(out)
    }
}

/// `-A CHAIN spec` → `-D CHAIN spec`.
fn delete(rule: &str) -> String {
    format!("-D {}", rule.trim_start_matches("-A "))
}

/// The target of a saved rule (`-j X` or `-g X`).
fn target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(word) = words.next() {
        if matches!(word, "-j" | "--jump" | "-g" | "--goto") {
            return words.next();
        }
    }
    None
}
