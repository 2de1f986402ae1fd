//! `cargo xtask dist`: what an SRE installs without a toolchain, built by one command
//! that a person runs locally and `cargo xtask test` runs the same way.
//!
//! For x86_64 and aarch64: a static (musl), stripped `dropgate` with the build
//! information in it; a `.deb` (the binary, the systemd unit, `/etc/default/dropgate`,
//! the man page and completions generated from the binary's own clap definitions, the
//! Prometheus rules and dashboard, the README); and an OCI image holding the binary
//! alone. The eBPF object inside comes from the same source for both, compiled for the
//! BPF target; aya-build sets `bpf_target_arch` to the binary's architecture (aya's
//! helper bindings are per architecture), so the two objects differ in those symbol
//! names only. Everything lands in `target/dist/`.
//!
//! The packaging is spelled out here rather than delegated (cargo-deb, a Docker engine)
//! so that what goes where can be read in one file; `check` verifies the artifacts with
//! the tools an installer would use (`file`, `dpkg-deb`, `lintian`, `skopeo`).

mod deb;
mod image;
mod install_test;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::cmd;

/// The workspace version, which is the package's and the image tag's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Debian's `prometheus-pushgateway` binary (1.5.1, bookworm), which does less: the
/// static binary must stay below it.
const SIZE_TARGET_BYTES: u64 = 11_000_000;

/// A target architecture and its names in the tools that need one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch {
    /// Rust's and the kernel's name (`uname -m`).
    pub name: &'static str,
    /// The rustup target.
    pub rust_target: &'static str,
    /// Debian's architecture name.
    pub deb: &'static str,
    /// The C cross compiler (ring's C parts and the linker), if not the host's.
    pub cross_gcc: Option<&'static str>,
}

pub const ARCHES: [Arch; 2] = [
    Arch {
        name: "x86_64",
        rust_target: "x86_64-unknown-linux-musl",
        deb: "amd64",
        cross_gcc: None,
    },
    Arch {
        name: "aarch64",
        rust_target: "aarch64-unknown-linux-musl",
        deb: "arm64",
        cross_gcc: Some("aarch64-linux-gnu-gcc"),
    },
];

/// What `dist` made for one architecture.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub arch: Arch,
    pub binary: PathBuf,
    pub deb: PathBuf,
    pub image: PathBuf,
}

/// `target/dist`.
pub fn dist_dir() -> PathBuf {
    cmd::target_dir().join("dist")
}

/// `cargo xtask dist [ARCH]`: builds, packages and checks.
pub fn dist_task(only: Option<&str>) -> Result<()> {
    let artifacts = dist(only)?;
    check(&artifacts)?;
    for a in &artifacts {
        for path in [&a.binary, &a.deb, &a.image] {
            println!("{:>12} bytes  {}", size(path)?, path.display());
        }
    }
    Ok(())
}

/// Builds every artifact (of `only` that architecture, if given).
pub fn dist(only: Option<&str>) -> Result<Vec<Artifacts>> {
    let arches: Vec<Arch> = ARCHES
        .into_iter()
        .filter(|a| only.is_none_or(|o| o == a.name || o == a.deb))
        .collect();
    if arches.is_empty() {
        bail!(
            "unknown architecture {only:?}: use one of {}",
            ARCHES.map(|a| a.name).join(", ")
        );
    }
    crate::setup::dist_tools()?;
    let out = dist_dir();
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut binaries = Vec::new();
    for arch in &arches {
        binaries.push((*arch, static_binary(*arch, &out)?));
    }
    // The man page and completions come from a binary that runs here; the clap
    // definitions are the same in every architecture's binary.
    let host = match binaries
        .iter()
        .find(|(a, _)| a.name == std::env::consts::ARCH)
    {
        Some((_, binary)) => binary.clone(),
        None => static_binary(
            ARCHES
                .into_iter()
                .find(|a| a.name == std::env::consts::ARCH)
                .context("this host's architecture is not one dist builds for")?,
            &out,
        )?,
    };
    let generated = deb::Generated::from_binary(&host)?;
    binaries
        .into_iter()
        .map(|(arch, binary)| {
            let deb = deb::build(arch, &binary, &generated, &out)?;
            let image = image::build(arch, &binary, &out)?;
            Ok(Artifacts {
                arch,
                binary,
                deb,
                image,
            })
        })
        .collect()
}

/// The static binary for the architecture named `name` (`x86_64`, `aarch64`), built
/// if needed: what the kernel matrix boots.
pub fn static_binary_for(name: &str) -> Result<PathBuf> {
    let arch = ARCHES
        .into_iter()
        .find(|a| a.name == name)
        .with_context(|| format!("dist builds no {name} binary"))?;
    crate::setup::dist_tools()?;
    let out = dist_dir();
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    static_binary(arch, &out)
}

/// Builds `dropgate` for `arch` with the `dist` profile and copies it to
/// `out/dropgate-<version>-<arch>`.
///
/// Each architecture builds in a target folder of its own, so a dist build (minutes:
/// fat LTO) never holds the lock of the folder the debug builds and tests use.
fn static_binary(arch: Arch, out: &Path) -> Result<PathBuf> {
    let target_dir = out.join(format!("build-{}", arch.name));
    let mut build = cmd::cargo();
    build
        .args(["build", "--profile", "dist", "--package", "tracer"])
        .args(["--bin", "dropgate", "--target", arch.rust_target])
        .env("CARGO_TARGET_DIR", &target_dir);
    if let Some(gcc) = arch.cross_gcc {
        let upper = arch.rust_target.replace('-', "_").to_uppercase();
        build
            .env(format!("CC_{}", arch.rust_target.replace('-', "_")), gcc)
            .env(format!("CARGO_TARGET_{upper}_LINKER"), gcc);
    }
    cmd::run(&mut build)?;
    let output = target_dir
        .join(arch.rust_target)
        .join("dist")
        .join("dropgate");
    let copy = out.join(format!("dropgate-{VERSION}-{}", arch.name));
    fs::copy(&output, &copy)
        .with_context(|| format!("copying {} to {}", output.display(), copy.display()))?;
    Ok(copy)
}

/// `cargo xtask test-install`: the amd64 package (`DROPGATE_DEB`, else built) installed,
/// run, stopped and purged on a freshly bootstrapped Debian 12 under systemd.
pub fn test_install_task() -> Result<()> {
    crate::setup::setup()?;
    let deb = match std::env::var_os("DROPGATE_DEB") {
        Some(deb) => PathBuf::from(deb),
        None => dist(Some("x86_64"))?.remove(0).deb,
    };
    test_install(&deb)
}

/// The install test with `deb`, on the matrix's cached Debian 12 kernel.
pub fn test_install(deb: &Path) -> Result<()> {
    let kernel = crate::kernels::fetch::kernel("bookworm", "6.1", "amd64")
        .context("fetching Debian 12's kernel for the install test")?;
    install_test::test_install(deb, &kernel.vmlinuz)
}

/// Checks the artifacts as an installer would meet them; what `cargo xtask test` runs.
pub fn check(artifacts: &[Artifacts]) -> Result<()> {
    let revision = cmd::stdout_of(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(cmd::workspace_root()),
    )
    .context("git rev-parse HEAD failed")?;
    for a in artifacts {
        check_binary(a, &revision)?;
        deb::check(a)?;
        image::check(a)?;
    }
    eprintln!(
        "xtask: dist artifacts checked: {}",
        artifacts
            .iter()
            .map(|a| a.arch.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Static (no program interpreter: `file` says so), for the right machine, below the
/// size target, and, where it runs here, carrying this commit in `--version`.
fn check_binary(a: &Artifacts, revision: &str) -> Result<()> {
    let described =
        cmd::stdout_of(Command::new("file").arg("-b").arg(&a.binary)).context("`file` failed")?;
    ensure!(
        described.starts_with("ELF 64-bit")
            && (described.contains("statically linked") || described.contains("static-pie"))
            && !described.contains("interpreter")
            && !described.contains("not stripped"),
        "{} is not a static, stripped ELF: {described}",
        a.binary.display()
    );
    let machine = if a.arch.name == "x86_64" {
        "x86-64"
    } else {
        "ARM aarch64"
    };
    ensure!(
        described.contains(machine),
        "{} is not for {machine}: {described}",
        a.binary.display()
    );
    let bytes = size(&a.binary)?;
    ensure!(
        bytes < SIZE_TARGET_BYTES,
        "{} is {bytes} bytes, above the {SIZE_TARGET_BYTES} of Debian's pushgateway",
        a.binary.display()
    );
    if a.arch.name == std::env::consts::ARCH {
        let version = cmd::stdout_of(Command::new(&a.binary).arg("--version"))
            .with_context(|| format!("{} --version failed", a.binary.display()))?;
        ensure!(
            version.starts_with(&format!("dropgate {VERSION} "))
                && version.contains(&format!("revision: {revision}"))
                && version.contains("build date:")
                && version.contains("rust version:     1."),
            "{} --version lacks the build information of {revision}:\n{version}",
            a.binary.display()
        );
        check_served_build_info(&a.binary, revision)?;
    }
    Ok(())
}

/// `dropgate gateway` serves the same build in `dropgate_build_info` and
/// `/api/v1/status` (no privileges needed; a free port on 127.0.0.1).
fn check_served_build_info(binary: &Path, revision: &str) -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut gateway = Command::new(binary)
        .args([
            "gateway",
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} gateway", binary.display()))?;
    let get = |path: &str| -> Option<String> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        answer.starts_with("HTTP/1.1 200").then_some(answer)
    };
    let mut metrics = None;
    for _ in 0..100 {
        metrics = get("/metrics");
        if metrics.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = get("/api/v1/status");
    let _ = gateway.kill();
    let _ = gateway.wait();
    let metrics = metrics.context("dropgate gateway did not answer /metrics within 5 s")?;
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("dropgate_build_info{"))
        .context("/metrics has no dropgate_build_info")?;
    ensure!(
        gauge.contains(&format!("revision=\"{revision}\""))
            && gauge.contains(&format!("version=\"{VERSION}\""))
            && gauge.ends_with(" 1"),
        "dropgate_build_info does not name this build ({revision}): {gauge}"
    );
    let status = status.context("no /api/v1/status")?;
    ensure!(
        status.contains(&format!("\"revision\":\"{revision}\""))
            && !status.contains("\"buildDate\":\"\""),
        "/api/v1/status lacks the build information: {status}"
    );
    Ok(())
}

/// A file's size in bytes.
pub fn size(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len())
}
