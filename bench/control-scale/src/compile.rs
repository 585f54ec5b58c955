//! The control plane's compile, timed in this process over the same directory and with the
//! control plane's own code, one step at a time: read and validate every file
//! (`sources::read_files`, `Resources::load`), the work shared by every proxy
//! (`Compiler::new`), each proxy's config (`Compiler::proxy`) and its wire JSON
//! (`push::wire_json`, which `ConfigStore::set` runs for every proxy on every change).
//!
//! Each config is dropped once measured, so this holds one at a time, unlike the control
//! plane, which holds every sidecar's. Only the simulated proxies' configs are timed (their
//! namespaces are spread like everyone's); [`CompileFigures::estimated_change`] scales the
//! per-proxy cost to every sidecar.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;
use tokio::time::Instant;
use trellis_model::resources::{CompileOptions, Compiler, Resources};

use crate::report::Summary;
use crate::shape::ProxyRef;

/// What compiling costs, step by step.
#[derive(Debug, Clone, Serialize)]
pub struct CompileFigures {
    /// Reading every file and validating the whole set, in ms.
    pub load_ms: f64,
    /// `Compiler::new`: selectors and every Service's endpoints, once per change, in ms.
    pub shared_ms: f64,
    /// One proxy's config (`Compiler::proxy`), in ms.
    pub compile_ms: Summary,
    /// One config's wire JSON (`push::wire_json`), in ms.
    pub serialize_ms: Summary,
    /// The same config through `serde_json::to_vec` alone, in ms: what the wire JSON would
    /// cost without `wire_json`'s detour through a `serde_json::Value` tree (for comparison;
    /// the control plane does not do this).
    pub serialize_plain_ms: Summary,
    /// One config's wire JSON, in bytes.
    pub json_bytes: Summary,
    /// How many configs were timed.
    pub timed: usize,
    /// How many the control plane compiles on every change (every sidecar).
    pub sidecars: usize,
    /// What one change should cost the control plane before it pushes, in ms: load, shared
    /// work, and every sidecar's compile and serialisation at the mean.
    pub estimated_change_ms: f64,
    /// The wire JSON of every sidecar, as the control plane holds it, estimated, in MiB.
    pub estimated_store_mib: f64,
}

/// Times the steps over the resources in `dir`, compiling the configs of `proxies`.
pub fn measure(
    dir: &Path,
    proxies: &[ProxyRef],
    sidecars: usize,
) -> anyhow::Result<CompileFigures> {
    let started = Instant::now();
    let files = trellis_control::sources::read_files(dir)
        .map_err(|(path, error)| anyhow::anyhow!("cannot read {}: {error}", path.display()))?;
    anyhow::ensure!(
        files.errors.is_empty(),
        "unreadable files: {:?}",
        files.errors
    );
    let resources = Resources::load(&files.texts)
        .map_err(|errors| anyhow::anyhow!("the generated resources are invalid:\n{errors}"))?;
    let load = started.elapsed();

    let started = Instant::now();
    let compiler = Compiler::new(&resources, CompileOptions::default());
    let shared = started.elapsed();

    let mut compile = Vec::with_capacity(proxies.len());
    let mut serialize = Vec::with_capacity(proxies.len());
    let mut plain = Vec::with_capacity(proxies.len());
    let mut bytes = Vec::with_capacity(proxies.len());
    for proxy in proxies {
        let started = Instant::now();
        let config = compiler
            .proxy(&proxy.name, &proxy.namespace)
            .with_context(|| format!("cannot compile {}.{}", proxy.name, proxy.namespace))?;
        let compiled = Instant::now();
        let json = trellis_control::push::wire_json(&config);
        serialize.push(compiled.elapsed());
        let serialized = Instant::now();
        let direct = serde_json::to_vec(&config)?;
        plain.push(serialized.elapsed());
        drop(direct);
        compile.push(compiled - started);
        bytes.push(json.len() as f64);
    }
    let compile_ms = Summary::of_durations(&compile);
    let serialize_ms = Summary::of_durations(&serialize);
    let json_bytes = Summary::of(&bytes);
    let per_sidecar = compile_ms.mean + serialize_ms.mean;
    Ok(CompileFigures {
        load_ms: ms(load),
        shared_ms: ms(shared),
        estimated_change_ms: ms(load) + ms(shared) + per_sidecar * sidecars as f64,
        estimated_store_mib: json_bytes.mean * sidecars as f64 / f64::from(1 << 20),
        compile_ms,
        serialize_ms,
        serialize_plain_ms: Summary::of_durations(&plain),
        json_bytes,
        timed: proxies.len(),
        sidecars,
    })
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
