//! The proxy's CPU time slice: a short one, so that a woken proxy runs soon on a busy core.
//!
//! Since Linux 6.12 the fair scheduler (EEVDF) lets a normal thread ask for its own time slice
//! (`sched_setattr`'s `sched_runtime`, 0.1–100 ms, no privilege needed). A shorter slice does
//! not give a thread more CPU; it gives it an earlier deadline, so when it wakes on a core
//! where another thread is running, the kernel lets it in sooner instead of after the other
//! thread's slice (the base slice × (1 + log2 cores, up to 8 cores): 1.4 ms on this 2-core VM). A
//! sidecar that sleeps between requests and runs a few tens of microseconds per wake-up is
//! exactly the thread the interface is for: its requests stop waiting behind whatever else the
//! node runs (bench/README.md, "twelfth session", for the figures).
//!
//! Older kernels accept the call and ignore the value; [`set_slice`] reads it back and says
//! whether the kernel took it.

use std::io;
use std::time::Duration;

/// The range the kernel accepts (it clamps anything else into it).
pub const MIN_SLICE: Duration = Duration::from_micros(100);
pub const MAX_SLICE: Duration = Duration::from_millis(100);

/// `SCHED_FLAG_RESET_ON_FORK` (linux/sched.h).
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

/// What [`set_slice`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceOutcome {
    /// Threads whose slice was set.
    pub threads: usize,
    /// Threads left alone: a real-time, deadline or idle policy that someone chose on purpose.
    pub skipped: usize,
    /// Whether the kernel kept the value (Linux ≥ 6.12); false when it ignored it.
    pub honoured: bool,
}

/// Sets the time slice of every thread the process has now (a runtime's workers exist once it
/// is built; threads started later, such as tokio's blocking pool, keep the kernel's default).
/// Each thread keeps its policy and nice value. `Duration::ZERO` gives the kernel's default
/// back.
pub fn set_slice(slice: Duration) -> io::Result<SliceOutcome> {
    let ns = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    let mut outcome = SliceOutcome {
        threads: 0,
        skipped: 0,
        honoured: true,
    };
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Some(tid) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let mut attr = match get_attr(tid) {
            Ok(attr) => attr,
            // The thread ended between the listing and the call.
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(error) => return Err(error),
        };
        let policy = attr.sched_policy as libc::c_int;
        if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
            outcome.skipped += 1;
            continue;
        }
        attr.sched_runtime = ns;
        // Keep reset-on-fork if someone set it; no other flag applies to a normal thread.
        attr.sched_flags &= SCHED_FLAG_RESET_ON_FORK;
        match set_attr(tid, &mut attr) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(error) => return Err(error),
        }
        outcome.threads += 1;
        if ns == 0 {
            continue;
        }
        // What the kernel stored, clamped into its range; 0 when it ignores the field.
        let kept = get_attr(tid).map(|attr| attr.sched_runtime).unwrap_or(0);
        if u128::from(kept) != slice.clamp(MIN_SLICE, MAX_SLICE).as_nanos() {
            outcome.honoured = false;
        }
    }
    Ok(outcome)
}

fn empty_attr() -> libc::sched_attr {
    libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: 0,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: 0,
        sched_deadline: 0,
        sched_period: 0,
    }
}

fn get_attr(tid: libc::pid_t) -> io::Result<libc::sched_attr> {
    let mut attr = empty_attr();
    let size = attr.size;
    // SAFETY: sched_getattr writes at most `size` bytes into `attr`, which is a
    // `sched_attr` of exactly that size, alive for the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &raw mut attr,
            size as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(attr)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_attr(tid: libc::pid_t, attr: &mut libc::sched_attr) -> io::Result<()> {
    // SAFETY: sched_setattr reads `attr.size` bytes from `attr` (a whole `sched_attr`, alive
    // for the call; the kernel may write the size it supports back into `size` on E2BIG).
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            tid,
            std::ptr::from_mut(attr),
            0 as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The current thread's slice as the kernel reports it.
    fn own_slice() -> u64 {
        // SAFETY: gettid has no arguments and cannot fail.
        #[allow(unsafe_code)]
        let tid = unsafe { libc::gettid() };
        get_attr(tid).expect("sched_getattr").sched_runtime
    }

    /// Sets the slice of every thread of the test process, and gives the default back at the
    /// end (it changes nothing but scheduling for the other tests meanwhile).
    #[test]
    fn sets_and_clears_the_slice_of_every_thread() {
        let before = own_slice();
        let outcome = set_slice(Duration::from_micros(250)).expect("set_slice");
        assert!(outcome.threads >= 1, "{outcome:?}");
        if !outcome.honoured {
            set_slice(Duration::ZERO).expect("set_slice");
            eprintln!("skipped: this kernel ignores custom slices (Linux < 6.12)");
            return;
        }
        assert_eq!(own_slice(), 250_000);
        // Below the kernel's minimum: clamped, and still reported as honoured.
        let outcome = set_slice(Duration::from_micros(10)).expect("set_slice");
        assert!(outcome.honoured, "{outcome:?}");
        assert_eq!(own_slice(), 100_000);
        // Zero gives the kernel's default back.
        set_slice(Duration::ZERO).expect("set_slice");
        assert_eq!(own_slice(), before);
    }
}
