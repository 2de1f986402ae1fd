//! `cargo xtask fuzz [--seconds N] [TARGET]`: the fuzz targets of the parsers that read
//! input from outside (the gateway's text parser, protobuf decoder, push paths and path
//! filter, body decoding; the tracer's BTF reader) under libFuzzer for a bounded time
//! each; any crash fails the task and names the input that caused it.
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
    ("tracer", "btf_reader"),
];

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
        table.push((target, runs(&log), corpus_size(&corpus), started.elapsed()));
    }
    eprintln!("xtask: fuzzing found no crash\n  target            runs        corpus  time");
    for (target, runs, corpus, elapsed) in table {
        eprintln!(
            "  {target:<17} {runs:>10}  {corpus:>6}  {:.0}s",
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

fn corpus_size(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}
