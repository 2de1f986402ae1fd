//! `cargo xtask test`: every check CI runs, in the order that fails fastest.
//!
//! Formatting and lints first, then the host crates' unit and integration tests (in
//! parallel), then the end-to-end crate one test at a time: its tests create network
//! namespaces, iptables rules and BPF programs, and must not see each other's traffic.
//! What ships (`cargo xtask dist`, checked) is built before the end-to-end crate, which
//! runs its image; last the kernel matrix: the static binaries users get, on other
//! kernels and on arm64 under qemu.

use std::time::Instant;

use anyhow::Result;

use crate::{cmd, dist, kernels, setup};

/// Crates tested on the host (tracer-ebpf is for the BPF target only).
const HOST_CRATES: &[&str] = &["gateway", "tracer", "tracer-common", "xtask"];

pub fn test(filter: Option<&str>) -> Result<()> {
    let started = Instant::now();
    setup::setup()?;
    if !cmd::is_root() {
        eprintln!("xtask: not root: privileged end-to-end tests will skip (or fail with DROPGATE_E2E=require)");
    }
    cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))?;
    let mut clippy = cmd::cargo();
    clippy.args(["clippy", "--all-targets"]);
    for krate in HOST_CRATES.iter().chain(&["dropgate-tests"]) {
        clippy.args(["--package", krate]);
    }
    cmd::run(clippy.args(["--", "-D", "warnings"]))?;
    // The e2e tests run the real binary.
    let binary = cmd::build_dropgate(false)?;

    let mut unit = cmd::cargo();
    unit.arg("test");
    for krate in HOST_CRATES {
        unit.args(["--package", krate]);
    }
    if let Some(filter) = filter {
        unit.arg(filter);
    }
    let mut tally = cmd::run_tests(unit.env("DROPGATE_BIN", &binary))?;

    // What ships, checked; the e2e crate runs its image, the kernel matrix its binaries.
    let shipped = dist::dist(None)?;
    dist::check(&shipped)?;
    let shipped_for = |name: &str| {
        shipped
            .iter()
            .find(|a| a.arch.name == name)
            .expect("dist builds both architectures")
    };

    let mut e2e = cmd::cargo();
    // --tests: the e2e crate has no doc tests worth a line of "0 passed".
    e2e.args(["test", "--package", "dropgate-tests", "--tests", "--"]);
    if let Some(filter) = filter {
        e2e.arg(filter);
    }
    tally += cmd::run_tests(
        e2e.args(["--test-threads=1", "--nocapture"])
            .env("DROPGATE_BIN", &binary)
            .env("DROPGATE_IMAGE", &shipped_for(std::env::consts::ARCH).image),
    )?;
    kernels::test_kernels(
        &shipped_for("x86_64").binary,
        &shipped_for("aarch64").binary,
    )?;
    eprintln!(
        "xtask: all tests passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    // One summary line for whoever reads the end of the log (CI does).
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    Ok(())
}
