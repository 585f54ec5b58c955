//! The allocator of both binaries: mimalloc 3 instead of glibc's malloc, with transparent huge
//! pages off for the process.
//!
//! Per request, callgrind (`bench/instructions --mode l7`): proxy A 51.0k -> 48.5k instructions,
//! B 53.9k -> 50.5k (HTTP/2 mode: -7 % and -9 %; L4: -3.5 %), for about 0.4 MB more idle RSS
//! (bench/README.md, "ninth session"). mimalloc 2, tried in the second and third sessions, cost
//! 6.5-7 MB per proxy and was dropped for that.
//!
//! Huge pages: with the kernel's THP setting `always`, mimalloc's arenas fault in 2 MiB pages
//! and an idle proxy reads 13 MB instead of 8. The crate's `no_thp` feature only stops mimalloc
//! asking for huge pages (`MADV_HUGEPAGE`); turning them off for the process
//! (`PR_SET_THP_DISABLE`) is mimalloc's `MIMALLOC_ALLOW_THP=0`, an environment variable that
//! nobody should have to set for a sidecar, and from `main` it comes too late: Rust's runtime
//! has allocated by then, and the pages it touched are huge already (2-4 MB of them). So
//! [`THP_OFF`] runs before everything that allocates: an `.init_array` entry with priority 100
//! runs after glibc has loaded us and before mimalloc's own constructor (which has no priority
//! when built with gcc) and Rust's `main`. Child processes inherit the setting: `trellis up`
//! gives its own back ([`restore_inherited_thp`]) before it starts workloads' commands, which
//! should run with the node's setting, not the proxy's (its proxies and demo apps are `trellis`
//! and turn it off again for themselves).

use std::sync::atomic::{AtomicBool, Ordering};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The one unsafe attribute in the workspace: placing a function pointer in `.init_array` is
// how a program runs code before its `main` (Rust's std puts its own at priority 99).
#[allow(unsafe_code)]
#[unsafe(link_section = ".init_array.00100")]
#[used]
static THP_OFF: extern "C" fn() = transparent_huge_pages_off;

/// Whether THP was off for this process when it started (set by its parent).
static THP_WAS_OFF: AtomicBool = AtomicBool::new(false);

extern "C" fn transparent_huge_pages_off() {
    // Nothing to report to yet, and nothing to do if it fails (Linux before 3.15): the process
    // then runs with the kernel's setting.
    let was_off = rustix::thread::transparent_huge_pages_are_disabled().unwrap_or(false);
    THP_WAS_OFF.store(was_off, Ordering::Relaxed);
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// Put this process's THP setting back to what it started with, for the processes it starts
/// from then on. Only `trellis up` calls it (the `trellis-proxy` binary links this module too).
#[allow(dead_code)]
pub(crate) fn restore_inherited_thp() {
    let _ = rustix::thread::disable_transparent_huge_pages(THP_WAS_OFF.load(Ordering::Relaxed));
}
