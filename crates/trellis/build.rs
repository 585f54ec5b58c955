//! Release builds lay the code a proxy runs out in one contiguous stretch.
//!
//! `hot-functions.txt` lists every function the two proxies of `bench/instructions` ran: those run
//! under load first, hottest first, then start-up's. The linker (LLD, Rust's default on x86_64
//! Linux since 1.90) places them in that order at the start of `.text`. A proxy then touches a few
//! hundred pages of code instead of pages spread over the whole binary, each widened by the
//! kernel's 64 KiB fault-around: idle RSS drops by several MB and the hot path shares fewer iTLB
//! entries. A name that no longer exists (a changed function, a new toolchain) is skipped without a
//! word, so a stale list costs memory, never correctness: regenerate it with `bench/instructions
//! --order-file crates/trellis/hot-functions.txt`. The names carry a hash of each crate's features:
//! the list fits `cargo build --release -p trellis` (what `cargo run --release -- up` builds), not
//! a build that adds other packages and so changes those features.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=hot-functions.txt");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    // Another list for another build: scripts/build-pgo links the profile-guided binaries with
    // one made from them (PGO inlines otherwise, so their names differ from this list's).
    println!("cargo:rerun-if-env-changed=TRELLIS_ORDER_FILE");
    let release = env::var("PROFILE").as_deref() == Ok("release");
    let target = env::var("TARGET").unwrap_or_default();
    // Another linker (set by the user's flags) may not know the option: leave it alone then.
    let own_linker = env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("link"))
        || env::vars().any(|(k, _)| k.starts_with("CARGO_TARGET_") && k.ends_with("_LINKER"));
    if !release || target != "x86_64-unknown-linux-gnu" || own_linker || !lld_by_default() {
        return;
    }
    let list = match env::var("TRELLIS_ORDER_FILE") {
        Ok(list) if !list.is_empty() => list,
        _ => match env::var("CARGO_MANIFEST_DIR") {
            Ok(dir) => format!("{dir}/hot-functions.txt"),
            Err(_) => return,
        },
    };
    println!("cargo:rerun-if-changed={list}");
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={list}");
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// rustc 1.90 and later link x86_64 Linux with LLD; before (the workspace accepts 1.87), the
/// system's GNU ld, which knows no symbol ordering file.
fn lld_by_default() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let Ok(out) = std::process::Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let mut parts = version
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    matches!((parts.next(), parts.next()), (Some(1), Some(minor)) if minor >= 90)
}
