//! `cargo xtask bench hostile`: issue 19's hostile-request corpus (`tests/src/hostile.rs`)
//! against `dropgate gateway` (release build) and Debian's pushgateway side by side: for
//! each request its size on the wire, and for each server the time to the answer, the
//! growth of resident memory during it and the answer, every case on a fresh process of
//! each with default flags. The `hostile` binary of the e2e crate does the sending and
//! prints the table; a server past 2 GiB resident is killed rather than let it take a
//! shared machine down.
//!
//! This is a benchmark, not a test: the bounds are asserted by
//! `tests/tests/gateway_hostile.rs`; this records the table under "Hostile requests" in
//! BENCHMARKS.md, where the pushgateway's numbers are the peer's amplification.

use std::process::{Command, Stdio};

use anyhow::{ensure, Context as _, Result};

use crate::cmd;

pub fn run() -> Result<()> {
    let pushgateway = "/usr/bin/prometheus-pushgateway";
    ensure!(
        std::path::Path::new(pushgateway).exists(),
        "{pushgateway} not found; apt-get install prometheus-pushgateway"
    );
    let dropgate = cmd::build_dropgate(true)?;
    cmd::run(cmd::cargo().args(["build", "--package", "dropgate-tests", "--bin", "hostile"]))?;
    let hostile = cmd::target_dir().join("debug").join("hostile");
    eprintln!("xtask: bench: hostile corpus against dropgate and the pushgateway");
    let output = Command::new(&hostile)
        .env("DROPGATE_BIN", &dropgate)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {}", hostile.display()))?;
    ensure!(
        output.status.success(),
        "{} failed ({})",
        hostile.display(),
        output.status
    );
    let table = String::from_utf8_lossy(&output.stdout);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    let report = format!(
        "`cargo xtask bench hostile`: each request of the hostile corpus to a fresh \
         `dropgate gateway` (release build) and a fresh Debian `prometheus-pushgateway`, \
         default flags; time to the whole answer, growth of resident memory during the \
         request (peak VmHWM over VmRSS before it), status of the answer; load average \
         {load} at the start.\n\n{table}"
    );
    crate::bench::publish("Hostile requests", &report)
}
