//! `cargo xtask run`: the main job — set up, build, and become `dropgate run`.

use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{bail, Result};

use crate::{cmd, setup};

pub fn run(args: &[String]) -> Result<()> {
    setup::setup()?;
    let binary = cmd::build_dropgate(true)?;
    if !cmd::is_root() {
        bail!("dropgate run loads BPF programs and needs root: run `sudo -E cargo xtask run`");
    }
    let mut command = Command::new(&binary);
    command.arg("run");
    if args.is_empty() {
        command.args(["--web.listen-address", "127.0.0.1:9091"]);
    } else {
        command.args(args);
    }
    eprintln!("xtask: exec {command:?}");
    // exec, so that Ctrl-C and SIGTERM reach dropgate itself and it shuts down cleanly.
    let err = command.exec();
    bail!("cannot exec {}: {err}", binary.display())
}
