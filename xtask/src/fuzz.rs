//! `cargo xtask fuzz [--seconds N] [TARGET]`: the fuzz targets of the parsers that read
//! input from outside (the gateway's text parser, protobuf decoder, push paths and path
//! filter, body decoding, persistence file decoder, web config parser; the tracer's BTF
//! reader) under libFuzzer for a bounded time each; any crash fails the task and names
//! the input that caused it.
//!
//! Every unit is bounded too, as the gateway bounds every request: one input may use
//! at most [`RSS_LIMIT_MB`] of resident memory (and no single allocation more) and
//! [`UNIT_TIMEOUT_SECS`] of time; one over either is a failure like a crash, with
//! its input kept, so a slow or memory-hungry input cannot pass unnoticed.
//!
//! The targets live in `gateway/fuzz` and `tracer/fuzz`, workspaces of their own built by
//! cargo-fuzz with nightly (installed here when missing). The committed corpus
//! (`<crate>/fuzz/corpus`) is only read: new inputs go to `target/fuzz/corpus`, crashes to
//! `target/fuzz/artifacts`, so the repository's corpus stays small.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{self, stdout_of, workspace_root};

/// Every target with the crate whose `fuzz/` holds it, in the order they run.
const TARGETS: &[(&str, &str)] = &[
    ("gateway", "text_parser"),
    ("gateway", "protobuf_decoder"),
    ("gateway", "path_labels"),
    ("gateway", "body_decoder"),
    ("gateway", "persistence_decoder"),
    ("gateway", "web_config"),
    ("gateway", "otlp_export"),
    ("tracer", "btf_reader"),
    ("tracer", "netlink_framing"),
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
    let targets: Vec<(&str, &str)> = match only {
        Some(name) => match TARGETS.iter().find(|(_, target)| *target == name) {
            Some(&found) => vec![found],
            None => bail!(
                "no fuzz target {name:?}; the targets are {}",
                TARGETS
                    .iter()
                    .map(|(_, target)| *target)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        None => TARGETS.to_vec(),
    };
    cargo_fuzz()?;
    let root = workspace_root();
    let scratch = root.join("target/fuzz");
    let mut built = Vec::new();
    let mut table = Vec::new();
    for (krate, target) in targets {
        let krate = root.join(krate);
        if !built.contains(&krate) {
            cmd::run(nightly_cargo().current_dir(&krate).args(["fuzz", "build"]))?;
            built.push(krate.clone());
        }
        let corpus = scratch.join("corpus").join(target);
        let artifacts = scratch.join("artifacts").join(target);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let seeds = krate.join("fuzz/corpus").join(target);
        let started = Instant::now();
        let output = nightly_cargo()
            .current_dir(&krate)
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
                "fuzz target {target} failed ({}); the input is in {} — reproduce with `cd {} && cargo +nightly fuzz run {target} <file>`",
                output.status,
                artifacts.display(),
                krate.display()
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
