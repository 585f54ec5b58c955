//! Golden tests of `trellis iptables print` (the files under `golden/`, reviewed by hand
//! against what Istio's istio-iptables produces for the same options), and the apply/clean
//! plans against scripted `iptables-save` output.
//!
//! After a deliberate change: `TRELLIS_BLESS=1 cargo test -p trellis iptables` rewrites the
//! golden files; review the diff.

use std::path::PathBuf;

use clap::Parser as _;

use super::rules::{Capture, Family, Saved};
use super::{IptablesCommand, print};
use crate::{Cli, Command};

/// Parses `trellis iptables print ARGS...` the way the binary does.
fn parse(args: &[&str]) -> Result<(Capture, Vec<Family>), String> {
    let argv = ["trellis", "iptables", "print"].iter().chain(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let Command::Iptables(iptables) = cli.command else {
        panic!("not the iptables command");
    };
    let IptablesCommand::Print(capture) = iptables.command else {
        panic!("not print");
    };
    capture.capture().map_err(|e| format!("{e:#}"))
}

fn printed(args: &[&str]) -> String {
    let (capture, families) = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    print(&capture, &families)
}

fn golden(name: &str, args: &[&str]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/iptables/golden")
        .join(format!("{name}.txt"));
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.is_empty() {
                "''".to_owned()
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    let got = format!(
        "# trellis iptables print {}\n{}",
        shown.join(" "),
        printed(args)
    );
    if std::env::var_os("TRELLIS_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (TRELLIS_BLESS=1 writes it)", path.display()));
    assert!(
        got == want,
        "{name}: print differs from {}\n--- got ---\n{got}--- want ---\n{want}",
        path.display()
    );
}

#[test]
fn golden_default_proxy_uid() {
    golden("default", &["--proxy-uid", "1337"]);
}

#[test]
fn golden_uid_and_gid_with_exclusions() {
    golden(
        "exclusions",
        &[
            "--proxy-uid",
            "1337",
            "--proxy-gid",
            "1337",
            "--exclude-inbound-ports",
            "15090,15021,15020",
            "--exclude-outbound-ports",
            "22",
            "--exclude-outbound-cidrs",
            "169.254.169.254/32,10.0.0.5",
        ],
    );
}

#[test]
fn golden_included_ports_and_cidrs() {
    golden(
        "include_lists",
        &[
            "--proxy-uid",
            "1337",
            "--include-inbound-ports",
            "8080,9090",
            "--include-outbound-cidrs",
            "10.96.0.0/12,192.168.0.0/16",
            "--exclude-outbound-cidrs",
            "10.96.0.1",
        ],
    );
}

#[test]
fn golden_outbound_only_other_ports() {
    golden(
        "outbound_only",
        &[
            "--proxy-gid",
            "1337",
            "--include-inbound-ports",
            "",
            "--outbound-port",
            "16001",
        ],
    );
}

#[test]
fn golden_ipv6() {
    golden(
        "ipv6",
        &[
            "--proxy-uid",
            "1337",
            "--ipv6",
            "--include-outbound-cidrs",
            "10.96.0.0/12,fd00:10:96::/112",
            "--exclude-outbound-cidrs",
            "fd00:10:96::1",
        ],
    );
}

#[test]
fn options_are_checked_as_a_whole() {
    let err = parse(&["--proxy-uid", ""]).unwrap_err();
    assert!(err.contains("--proxy-uid or --proxy-gid"), "{err}");
    let err = parse(&[
        "--proxy-uid",
        "1",
        "--inbound-port",
        "15001",
        "--exclude-outbound-cidrs",
        "fd00::/8",
    ])
    .unwrap_err();
    assert!(
        err.contains("--inbound-port and --outbound-port are both 15001"),
        "{err}"
    );
    assert!(err.contains("fd00::/8 is IPv6: add --ipv6"), "{err}");
    // clap refuses a missing proxy and values that do not parse, naming them.
    assert!(parse(&[]).unwrap_err().contains("--proxy-uid"));
    let err = parse(&["--proxy-uid", "x"]).unwrap_err();
    assert!(err.contains("not a numeric user or group id"), "{err}");
    let err = parse(&["--proxy-uid", "1", "--exclude-outbound-ports", "22,0"]).unwrap_err();
    assert!(err.contains("\"0\": not a port"), "{err}");
    let err = parse(&[
        "--proxy-uid",
        "1",
        "--exclude-outbound-cidrs",
        "10.0.0.0/33",
    ])
    .unwrap_err();
    assert!(err.contains("prefix length must be 0-32"), "{err}");
}

#[test]
fn repeated_flags_and_lists_add_up_and_cidrs_are_normalised() {
    let (capture, _) = parse(&[
        "--proxy-uid",
        "1337,1338",
        "--proxy-uid",
        "0",
        "--exclude-outbound-cidrs",
        "10.1.2.3/8, 192.168.1.1",
    ])
    .unwrap();
    assert_eq!(capture.proxy_uids, [1337, 1338, 0]);
    let cidrs: Vec<String> = capture
        .exclude_outbound_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(cidrs, ["10.0.0.0/8", "192.168.1.1/32"]);
}

/// What iptables-save prints once `print`'s rules are installed, among other rules.
fn saved_after_apply(capture: &Capture, extra: &str) -> String {
    let input = capture.ruleset(Family::V4).apply_input(&Saved::default());
    let body: Vec<&str> = input
        .lines()
        .filter(|l| l.starts_with(':') || l.starts_with("-A"))
        .collect();
    format!(
        "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j TRELLIS_OUTPUT\nCOMMIT\n\
         *nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         {extra}{}\nCOMMIT\n# Completed\n",
        body.join("\n")
    )
}

#[test]
fn apply_on_a_fresh_table_is_what_print_shows() {
    let capture = Capture::with_uid(1337);
    let ruleset = capture.ruleset(Family::V4);
    let fresh = ruleset.apply_input(&Saved::parse(""));
    assert!(ruleset.print().ends_with(&fresh));
    assert!(fresh.contains("-A PREROUTING -p tcp -j TRELLIS_INBOUND\n"));
    assert!(fresh.contains("-A OUTPUT -p tcp -j TRELLIS_OUTPUT\n"));
}

#[test]
fn apply_again_refills_the_chains_and_keeps_the_jumps() {
    let capture = Capture::with_uid(1337);
    let saved = Saved::parse(&saved_after_apply(
        &capture,
        "-A OUTPUT -d 192.0.2.1/32 -j ACCEPT\n",
    ));
    let again = capture.ruleset(Family::V4).apply_input(&saved);
    assert!(!again.contains("PREROUTING"), "{again}");
    assert!(!again.contains("-A OUTPUT"), "{again}");
    assert!(!again.contains("-D"), "{again}");
    assert!(again.contains(":TRELLIS_OUTPUT - [0:0]\n"), "{again}");
    assert!(
        again.contains("-A TRELLIS_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"),
        "{again}"
    );
}

#[test]
fn apply_with_other_options_replaces_stale_jumps() {
    // Applied with inbound capture, now applied without: the PREROUTING jump goes.
    let before = Capture::with_uid(1337);
    let mut after = before.clone();
    after.inbound_ports = super::rules::Select::Only(Vec::new());
    let saved = Saved::parse(&saved_after_apply(&before, ""));
    let input = after.ruleset(Family::V4).apply_input(&saved);
    let jumps: Vec<&str> = input
        .lines()
        .filter(|l| l.contains("PREROUTING") || l.starts_with("-A OUTPUT") || l.starts_with("-D"))
        .collect();
    assert_eq!(
        jumps,
        [
            "-D PREROUTING -p tcp -j TRELLIS_INBOUND",
            "-D OUTPUT -p tcp -j TRELLIS_OUTPUT",
            "-A OUTPUT -p tcp -j TRELLIS_OUTPUT",
        ]
    );
}

#[test]
fn clean_removes_our_jumps_and_chains_and_nothing_else() {
    let capture = Capture::with_uid(1337);
    let save = saved_after_apply(
        &capture,
        "-A OUTPUT -d 192.0.2.1/32 -j ACCEPT\n-A PREROUTING -p udp -j TRELLIS_INBOUND\n",
    );
    let input = Saved::parse(&save).clean_input().unwrap();
    assert_eq!(
        input,
        "*nat\n\
         -D PREROUTING -p udp -j TRELLIS_INBOUND\n\
         -D PREROUTING -p tcp -j TRELLIS_INBOUND\n\
         -D OUTPUT -p tcp -j TRELLIS_OUTPUT\n\
         -F TRELLIS_INBOUND\n-F TRELLIS_IN_REDIRECT\n-F TRELLIS_OUTPUT\n-F TRELLIS_REDIRECT\n\
         -X TRELLIS_INBOUND\n-X TRELLIS_IN_REDIRECT\n-X TRELLIS_OUTPUT\n-X TRELLIS_REDIRECT\n\
         COMMIT\n"
    );
    let untouched = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                     -A OUTPUT -j MY_TRELLIS_OUTPUT\n:MY_TRELLIS_OUTPUT - [0:0]\nCOMMIT\n";
    assert_eq!(Saved::parse(untouched).clean_input(), None);
    assert_eq!(Saved::parse("").clean_input(), None);
}
