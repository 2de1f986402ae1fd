//! `cargo xtask fuzz [--seconds N] [TARGET]`: the gateway's fuzz targets (text parser,
//! protobuf decoder, push paths and the path filter, body decoding, the persistence
//! file decoder, the web config parser) under libFuzzer for a bounded time each; any
//! crash fails the task and names the input that caused it.
//!
//! Every unit is bounded too, as the gateway bounds every request: one input may use
//! at most [`RSS_LIMIT_MB`] of resident memory (and no single allocation more) and
//! [`UNIT_TIMEOUT_SECS`] of time; one over either is a failure like a crash, with
//! its input kept, so a slow or memory-hungry input cannot pass unnoticed.
//!
//! The targets live in `gateway/fuzz`, a workspace of its own built by cargo-fuzz with
//! nightly (installed here when missing). The committed corpus (`gateway/fuzz/corpus`)
//! is only read: new inputs go to `target/fuzz/corpus`, crashes to
//! `target/fuzz/artifacts`, so the repository's corpus stays small.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{self, stdout_of, workspace_root};

/// Every target, in the order they run.
const TARGETS: &[&str] = &[
    "text_parser",
    "protobuf_decoder",
    "path_labels",
    "body_decoder",
    "persistence_decoder",
    "web_config",
];

/// libFuzzer's `-rss_limit_mb` (and so `-malloc_limit_mb`, the largest single
/// allocation): the whole fuzzing process, AddressSanitizer's quarantine and the
/// growing corpus included. A correct build peaked at 207-503 MB per target in
/// 60 s runs (2-vCPU build VM, 2026-12-06), half of this; libFuzzer's default is
/// twice as much again, which would hide a 4 KiB input that allocates a gigabyte.
const RSS_LIMIT_MB: u32 = 1024;
/// libFuzzer's `-timeout`: the most one input may take, in seconds. A correct build
/// handles each in milliseconds (thousands of runs a second); a unit that takes
/// seconds is the quadratic or amplifying work the gateway's limits exist to stop.
const UNIT_TIMEOUT_SECS: u32 = 5;

pub fn fuzz(seconds: u64, only: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match only {
        Some(name) if TARGETS.contains(&name) => vec![name],
        Some(name) => bail!(
            "no fuzz target {name:?}; the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    cargo_fuzz()?;
    let root = workspace_root();
    let gateway = root.join("gateway");
    let scratch = root.join("target/fuzz");
    cmd::run(
        nightly_cargo()
            .current_dir(&gateway)
            .args(["fuzz", "build"]),
    )?;
    let mut table = Vec::new();
    for target in targets {
        let corpus = scratch.join("corpus").join(target);
        let artifacts = scratch.join("artifacts").join(target);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let seeds = gateway.join("fuzz/corpus").join(target);
        let started = Instant::now();
        let output = nightly_cargo()
            .current_dir(&gateway)
            .args(["fuzz", "run", target])
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-timeout={UNIT_TIMEOUT_SECS}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .output()
            .with_context(|| format!("cannot run the fuzz target {target}"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            eprintln!("{log}");
            bail!(
                "fuzz target {target} failed ({}); the input is in {} — reproduce with `cd gateway && cargo +nightly fuzz run {target} <file>`",
                output.status,
                artifacts.display()
            );
        }
        table.push((
            target,
            runs(&log),
            peak_rss(&log),
            corpus_size(&corpus),
            started.elapsed(),
        ));
    }
    eprintln!(
        "xtask: fuzzing found no crash, no unit over {UNIT_TIMEOUT_SECS} s or {RSS_LIMIT_MB} MB\n  target               runs  peak RSS  corpus  time"
    );
    for (target, runs, rss, corpus, elapsed) in table {
        eprintln!(
            "  {target:<19} {runs:>10}  {rss:>5} MB  {corpus:>6}  {:.0}s",
            elapsed.as_secs_f64()
        );
    }
    Ok(())
}

/// Installs cargo-fuzz when `cargo +nightly fuzz` is not there.
fn cargo_fuzz() -> Result<()> {
    if stdout_of(nightly_cargo().args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    cmd::run(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))
}

/// `cargo +nightly` through rustup's proxy: the `cargo` that runs xtask (`$CARGO`) is
/// the stable toolchain's own binary, which knows no `+toolchain`.
fn nightly_cargo() -> Command {
    let proxy = cmd::cargo_home().join("bin/cargo");
    let stable = cmd::cargo();
    let mut nightly = Command::new(if proxy.exists() {
        proxy
    } else {
        "cargo".into()
    });
    nightly.current_dir(workspace_root());
    for (name, value) in stable.get_envs() {
        if let Some(value) = value {
            nightly.env(name, value);
        }
    }
    // rustup picks the toolchain from these when set; `+nightly` must win.
    nightly
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .arg("+nightly");
    nightly
}

/// libFuzzer's `Done N runs` count.
fn runs(log: &str) -> String {
    log.lines()
        .find_map(|line| line.strip_prefix("Done "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?")
        .to_owned()
}

/// libFuzzer's `stat::peak_rss_mb` (printed with `-print_final_stats=1`).
fn peak_rss(log: &str) -> String {
    log.lines()
        .find_map(|line| line.strip_prefix("stat::peak_rss_mb:"))
        .map_or_else(|| "?".to_owned(), |mb| mb.trim().to_owned())
}

fn corpus_size(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}
