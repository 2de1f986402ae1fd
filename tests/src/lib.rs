//! Shared helpers for dropgate's integration and end-to-end tests.
//!
//! Privileged tests (namespaces, BPF) and tests against real peers (pushgateway,
//! promtool, prometheus) skip with a printed reason when they cannot run, but fail when
//! `DROPGATE_E2E=require` is set, as `.ci/run` does: in CI a skip would hide a regression.

pub mod busy;
pub mod dashboard;
pub mod diagnose;
pub mod docker;
pub mod dropgate;
pub mod gateway;
pub mod hostile;
pub mod http;
pub mod netns;
pub mod process;
pub mod prometheus;
pub mod protobuf;
pub mod tempdir;

use std::path::PathBuf;

/// True when `DROPGATE_E2E=require`: every test must run, none may skip.
#[must_use]
pub fn e2e_required() -> bool {
    std::env::var("DROPGATE_E2E").is_ok_and(|v| v == "require")
}

/// Decides whether a test that needs `what` may run. Returns `false` (after printing why)
/// when `available` is false and skipping is allowed; panics when skipping is not allowed.
#[must_use]
pub fn may_run(test: &str, available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        !e2e_required(),
        "{test}: needs {what}, and DROPGATE_E2E=require forbids skipping; run `cargo xtask test` as root"
    );
    eprintln!("SKIP {test}: needs {what} (run `cargo xtask test` as root to include it)");
    false
}

/// Whether this process runs as root (namespaces, iptables and BPF need it).
#[must_use]
pub fn is_root() -> bool {
    // Effective uid is the second field of the `Uid:` line.
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// The `dropgate` binary under test: `$DROPGATE_BIN` (set by `cargo xtask test`), else the
/// workspace's debug build.
#[must_use]
pub fn dropgate_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("DROPGATE_BIN") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/dropgate")
}

/// The Python of the test venv that `cargo xtask setup` fills with the pinned PyPI
/// packages Debian lacks (see `PIP_PACKAGES` in xtask/src/setup.rs), if it exists.
#[must_use]
pub fn venv_python() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let python = home.join(".cache/dropgate/pyenv/bin/python3");
    python.exists().then_some(python)
}
