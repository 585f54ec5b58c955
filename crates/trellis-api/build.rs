//! Compiles `proto/**/*.proto` with protox (a protobuf compiler in Rust: no protoc to install)
//! and generates prost messages and tonic clients and servers from the result.

use std::path::Path;

const PROTOS: &[&str] = &[
    "trellis/ca/v1/ca.proto",
    "trellis/demo/v1/demo.proto",
    "trellis/discovery/v1/discovery.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    // protox reports errors with the file, line and column; show them as they are.
    let descriptors = protox::compile(PROTOS, [root]).map_err(|e| format!("{e:?}"))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `connect(url)` helper: callers bring their own channel (ours speak TLS with
        // SPIFFE verification, which tonic's transport would not do).
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
