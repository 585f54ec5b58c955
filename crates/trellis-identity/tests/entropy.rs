//! The build seeds aws-lc's random generator from the kernel, not from CPU jitter: see
//! `.cargo/config.toml`. Jitter seeding costs each process 50-100 ms of CPU at its first
//! random number, which in a proxy is the first request's TLS handshake.
#![allow(unsafe_code)]

#[test]
fn entropy_is_seeded_by_the_kernel() {
    // SAFETY: takes no arguments and only reads which entropy source aws-lc was built with.
    let jitter = unsafe { aws_lc_sys::FIPS_is_entropy_cpu_jitter() };
    assert_eq!(
        jitter, 0,
        "aws-lc was built with CPU jitter entropy: build from the workspace (its \
         .cargo/config.toml sets AWS_LC_SYS_NO_JITTER_ENTROPY=1) or set that variable"
    );
}
