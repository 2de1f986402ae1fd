//! Builds the kernel programs (tracer-ebpf) with aya-build and leaves the object in
//! `OUT_DIR`, where src/loader.rs embeds it with `include_bytes_aligned!`.
//!
//! This needs the nightly toolchain with rust-src and bpf-linker (`cargo xtask setup`
//! installs both). `AYA_BUILD_SKIP=1` skips it, e.g. for `cargo doc` on a machine
//! without them; the binary then refuses to start the tracer with a clear message.

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let skip = std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true");
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
    let object = std::path::Path::new(&out_dir).join("tracer");
    if skip {
        // An empty object: the loader detects it and says how to build for real.
        std::fs::write(&object, b"").context("writing the placeholder eBPF object")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let ebpf = Package {
        name: "tracer-ebpf",
        root_dir: "../tracer-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default()).context(
        "building the kernel programs failed; run `cargo xtask setup` (nightly rust-src and bpf-linker)",
    )?;
    // aya-build watches the crate folder; the shared types live in a nested folder too.
    println!("cargo:rerun-if-changed=../tracer-ebpf/common/src");
    Ok(())
}
