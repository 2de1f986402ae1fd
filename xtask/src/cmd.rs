//! Running commands with the context a failure needs (what ran, where, how it ended).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace, as cargo
/// reads it there), else the workspace's `target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// Builds the `dropgate` binary (release or debug profile) and returns its path.
pub fn build_dropgate(release: bool) -> Result<PathBuf> {
    let mut build = cargo();
    build.arg("build");
    if release {
        build.arg("--release");
    }
    run(build.args(["--package", "tracer", "--bin", "dropgate"]))?;
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir().join(profile).join("dropgate"))
}

/// Runs `command`, inheriting stdio; an unsuccessful exit is an error naming it.
pub fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Passed and failed tests, added up from `cargo test`'s `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

impl Tally {
    /// Adds the counts of one `test result: ok. 3 passed; 0 failed; ...` line.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next()) {
                match (n.parse::<u64>(), what) {
                    (Ok(n), "passed") => self.passed += n,
                    (Ok(n), "failed") => self.failed += n,
                    _ => {}
                }
            }
        }
    }
}

/// Runs a `cargo test` command, passing its output through, and counts its results.
/// An unsuccessful exit is an error naming the command.
pub fn run_tests(command: &mut Command) -> Result<Tally> {
    use std::io::{BufRead as _, Write as _};
    let shown = format!("{command:?}");
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let mut tally = Tally::default();
    let stdout = child.stdout.take().expect("piped stdout");
    let mut out = std::io::stdout().lock();
    for line in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
    {
        tally.add_line(&line);
        let _ = writeln!(out, "{line}");
    }
    drop(out);
    let status = child
        .wait()
        .with_context(|| format!("waiting for {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(tally)
}

/// Runs `command`; its trimmed stdout if it succeeded, `None` otherwise or if absent.
pub fn stdout_of(command: &mut Command) -> Option<String> {
    let out = command.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether we run as root (apt, namespaces and BPF need it).
pub fn is_root() -> bool {
    stdout_of(Command::new("id").arg("-u")).is_some_and(|uid| uid == "0")
}

/// `cargo` as invoked by the user (keeps the toolchain xtask runs under), with
/// `$CARGO_HOME/bin` on `PATH` so the eBPF build finds the bpf-linker that setup installed
/// even where that folder is not on the user's `PATH` (fresh machines, CI).
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    let bin = cargo_home().join("bin");
    let mut paths: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if !paths.contains(&bin) {
        paths.insert(0, bin);
    }
    if let Ok(path) = std::env::join_paths(paths) {
        command.env("PATH", path);
    }
    command
}

/// Cargo's home: `$CARGO_HOME`, else `~/.cargo`.
pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn adds_up_test_result_lines() {
        let mut tally = Tally::default();
        for line in [
            "test result: ok. 60 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.02s",
            "test result: FAILED. 2 passed; 4 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.41s",
            "running 3 tests",
            "test foo ... ok",
        ] {
            tally.add_line(line);
        }
        assert_eq!(
            tally,
            Tally {
                passed: 62,
                failed: 4
            }
        );
    }
}
