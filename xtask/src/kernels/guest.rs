//! One boot of a kernel under qemu (TCG: no KVM needed), and what its serial console
//! said: when userland started, and each self-test's result line and exit code.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::initramfs::{EXIT_MARKER, READY_MARKER, RUNS_VARIABLE};

/// The self-test's result line (the JSON follows the space).
const RESULT_PREFIX: &str = "DROPGATE-SELFTEST {";

/// How a guest of one architecture is booted: qemu's system emulator (TCG), its
/// machine options, and the serial console the kernel writes to.
pub struct Machine {
    /// Debian's architecture name (the kernel package's suffix).
    pub deb_arch: &'static str,
    pub qemu: &'static str,
    pub args: &'static [&'static str],
    pub console: &'static str,
}

pub const X86_64: Machine = Machine {
    deb_arch: "amd64",
    qemu: "qemu-system-x86_64",
    args: &["-accel", "tcg", "-cpu", "max", "-m", "512M", "-smp", "1"],
    console: "ttyS0",
};

/// The `virt` board; `pauth-impdef` makes TCG's pointer authentication cheap (the
/// architected algorithm is slow to emulate, and Debian's arm64 kernels use it).
pub const AARCH64: Machine = Machine {
    deb_arch: "arm64",
    qemu: "qemu-system-aarch64",
    args: &[
        "-M",
        "virt",
        "-accel",
        "tcg",
        "-cpu",
        "max,pauth-impdef=on",
        "-m",
        "1G",
        "-smp",
        "1",
    ],
    console: "ttyAMA0",
};

/// What one boot produced.
pub struct Boot {
    /// From starting qemu to `/init` running.
    pub to_userland: Option<Duration>,
    /// One entry per self-test that reported an exit code, in order.
    pub runs: Vec<RunOutput>,
    /// The boot did not end by itself within the time limit.
    pub timed_out: bool,
}

/// What one self-test printed.
#[derive(Debug, Default, PartialEq)]
pub struct RunOutput {
    /// The JSON after `DROPGATE-SELFTEST `, if the run printed one.
    pub result: Option<String>,
    /// Lines that looked like errors (`dropgate: error: ...`, panics).
    pub errors: Vec<String>,
    pub exit_code: Option<i32>,
}

/// Boots `vmlinuz` with `initrd`, running one self-test per entry of `runs` (each the
/// arguments after `dropgate selftest`), and writes the console to `log`.
pub fn boot(
    machine: &Machine,
    vmlinuz: &Path,
    initrd: &Path,
    runs: &[Vec<&str>],
    timeout: Duration,
    log: &Path,
) -> Result<Boot> {
    let runs_value: Vec<String> = runs.iter().map(|args| args.join(",")).collect();
    let append = format!(
        "console={} panic=-1 quiet {RUNS_VARIABLE}={}",
        machine.console,
        runs_value.join(";")
    );
    let started = Instant::now();
    let mut child = Command::new(machine.qemu)
        .args(machine.args)
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {}; `cargo xtask setup` installs it",
                machine.qemu
            )
        })?;
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let lines_tx = lines_tx.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if lines_tx.send((Instant::now(), text)).is_err() {
                    break;
                }
                line.clear();
            }
        });
    }
    drop(lines_tx);

    let deadline = started + timeout;
    let mut console = Vec::new();
    let mut to_userland = None;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok((at, line)) => {
                if to_userland.is_none() && line.contains(READY_MARKER) {
                    to_userland = Some(at - started);
                }
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    fs::write(log, console.join("\n") + "\n")
        .with_context(|| format!("writing {}", log.display()))?;
    Ok(Boot {
        to_userland,
        runs: parse_console(&console),
        timed_out,
    })
}

/// Splits console output into self-test runs: each ends at its exit-code line.
pub fn parse_console(lines: &[String]) -> Vec<RunOutput> {
    let mut runs = Vec::new();
    let mut current = RunOutput::default();
    for line in lines {
        if let Some(at) = line.find(RESULT_PREFIX) {
            current.result = Some(line[at + RESULT_PREFIX.len() - 1..].to_owned());
        } else if let Some(at) = line.find(EXIT_MARKER) {
            current.exit_code = line[at + EXIT_MARKER.len()..].trim().parse().ok();
            runs.push(std::mem::take(&mut current));
        } else if line.contains("error") || line.contains("panicked") {
            current.errors.push(line.trim().to_owned());
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_is_split_into_runs() {
        let console: Vec<String> = [
            "[    0.000000] Linux version 6.1.0",
            "DROPGATE-GUEST-READY 6.1.0-40-amd64",
            "noise DROPGATE-SELFTEST {\"pass\":true}",
            "DROPGATE-SELFTEST-EXIT 0",
            "dropgate: error: the kernel refused to load dropgate's BPF programs",
            "DROPGATE-SELFTEST-EXIT 1",
            "DROPGATE-SELFTEST {\"pass\":false}",
        ]
        .map(str::to_owned)
        .to_vec();
        let runs = parse_console(&console);
        assert_eq!(
            runs,
            vec![
                RunOutput {
                    result: Some("{\"pass\":true}".into()),
                    errors: vec![],
                    exit_code: Some(0),
                },
                RunOutput {
                    result: None,
                    errors: vec![
                        "dropgate: error: the kernel refused to load dropgate's BPF programs"
                            .into()
                    ],
                    exit_code: Some(1),
                },
            ],
            "a result without its exit line (the guest died) is not a run"
        );
    }
}
