//! `cargo xtask setup`: everything a fresh Debian machine needs, installed only when
//! missing, so a second run takes seconds.
//!
//! The eBPF build needs the nightly toolchain with `rust-src` (for `-Z build-std=core`)
//! and `bpf-linker`. bpf-linker must link the *same* LLVM major that nightly rustc emits
//! bitcode for; Debian's LLVM is older, so it is built against nightly's own
//! `libLLVM.so` through a small prefix of symlinks that bpf-linker's build script takes
//! as `LLVM_PREFIX` (it needs only `lib/libLLVM.so`; the binary keeps a RUNPATH to it).

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{self, cargo_home, stdout_of};

/// Debian packages the build, the tests and the benches use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "iputils-ping",
    "tcpdump",
    "bpftool",
    "bpftrace",
    "curl",
    // The gateway's TLS tests make their certificates and check handshakes with it.
    "openssl",
    "python3",
    "python3-prometheus-client",
    "python3-venv",
    "prometheus-pushgateway",
    "prometheus",
    "wrk",
    "ca-certificates",
    // The Docker e2e test starts its own engine in a namespace and builds its image from
    // busybox-static (no registry); the kernel matrix boots guests under qemu with a
    // busybox-static userland.
    "docker.io",
    // The compose incident e2e runs the incident's compose file (Debian's compose 1.29).
    "docker-compose",
    "qemu-system-x86",
    "busybox-static",
    // The matrix's guests load modules from their kernel's package, which Debian
    // compresses with xz (zstd is ready for when it switches).
    "xz-utils",
    "zstd",
    // The status page test loads the page in headless Chromium and keeps a screenshot.
    "chromium",
];

/// What `cargo xtask dist` needs besides the build: the musl C compiler and the arm64
/// cross toolchain (ring's C parts, the aarch64 linker), and the packaging tools and
/// their checkers.
const DIST_APT_PACKAGES: &[&str] = &[
    "musl-tools",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "file",
    "lintian",
    "skopeo",
    // The arm64 guest of the kernel matrix.
    "qemu-system-arm",
    // The install test: a fresh Debian 12 root, packed as the guest's initramfs.
    "debootstrap",
    "cpio",
];

/// The rustup targets of the static binaries.
const DIST_TARGETS: &[&str] = &["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Python packages from PyPI that Debian 12 does not carry in the version the tests
/// need, pinned, installed into one virtual environment ([`python_venv_dir`]) so the
/// system's Python stays as Debian ships it. The tests find it through the same path.
const PIP_PACKAGES: &[&str] = &[
    // The OTLP push test: the real OpenTelemetry SDK and its OTLP/HTTP exporter.
    "opentelemetry-sdk==1.45.2",
    "opentelemetry-exporter-otlp-proto-http==1.45.2",
    // The UTF-8 names push test: Debian's python3-prometheus-client (0.16) cannot make
    // UTF-8 names; 0.22 quotes them in the text it pushes.
    "prometheus-client==0.22.1",
];

pub fn setup() -> Result<()> {
    let started = std::time::Instant::now();
    apt_packages()?;
    dist_tools()?;
    nightly_with_rust_src()?;
    bpf_linker()?;
    python_venv()?;
    mounts();
    eprintln!(
        "xtask: setup complete in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The dist toolchain (see [`DIST_APT_PACKAGES`], [`DIST_TARGETS`]), when missing.
pub fn dist_tools() -> Result<()> {
    apt_install(DIST_APT_PACKAGES)?;
    let installed = stdout_of(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup not found; install Rust with rustup (https://rustup.rs)")?;
    let missing: Vec<&str> = DIST_TARGETS
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l == *t))
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: adding rustup targets: {}", missing.join(" "));
        cmd::run(
            Command::new("rustup")
                .args(["target", "add"])
                .args(&missing),
        )?;
    }
    Ok(())
}

fn apt_packages() -> Result<()> {
    apt_install(APT_PACKAGES)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|pkg| {
            stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_none_or(|status| !status.ends_with("installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "Debian packages missing: {}; run `cargo xtask setup` as root (or `sudo apt-get install {}`)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install failed; the packages above are needed by the tests")
}

fn nightly_with_rust_src() -> Result<()> {
    let toolchains = stdout_of(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup not found; install Rust with rustup (https://rustup.rs)")?;
    if !toolchains.lines().any(|t| t.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain (for the eBPF build)");
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = stdout_of(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|c| c.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to nightly (for -Z build-std=core)");
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The LLVM major of nightly rustc, e.g. 22 from `LLVM version: 22.1.4`.
fn nightly_llvm_major() -> Result<u32> {
    let verbose = stdout_of(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("`rustc +nightly -vV` failed")?;
    verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse().ok())
        .context("`rustc +nightly -vV` printed no LLVM version")
}

fn bpf_linker() -> Result<()> {
    let major = nightly_llvm_major()?;
    let bin = cargo_home().join("bin/bpf-linker");
    // A bpf-linker built for another LLVM major produces objects the verifier may reject
    // or fails to read the bitcode, so the stamp records which LLVM it was built for.
    let stamp = cargo_home().join(format!(
        "dropgate/bpf-linker-{BPF_LINKER_VERSION}-llvm-{major}"
    ));
    if stamp.exists()
        && Command::new(&bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let sysroot = PathBuf::from(
        stdout_of(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
            .context("`rustc +nightly --print sysroot` failed")?,
    );
    let libllvm = std::fs::read_dir(sysroot.join("lib"))
        .context("reading the nightly sysroot")?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        })
        .with_context(|| format!("no libLLVM.so.{major}* in {}/lib", sysroot.display()))?;
    let shim = cargo_home().join(format!("dropgate/llvm-{major}"));
    let shim_lib = shim.join("lib");
    std::fs::create_dir_all(&shim_lib)
        .with_context(|| format!("creating {}", shim_lib.display()))?;
    let soname = libllvm.file_name().expect("a file name").to_owned();
    for link in [shim_lib.join("libLLVM.so"), shim_lib.join(&soname)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (about a minute)");
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &shim),
    )
    .context("building bpf-linker failed")?;
    std::fs::write(&stamp, b"").with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// `~/.cache/dropgate/pyenv`: the virtual environment holding [`PIP_PACKAGES`].
pub fn python_venv_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/dropgate/pyenv")
}

/// Creates the venv and installs the pinned packages, when the stamp of exactly this list
/// is missing (so a second run costs nothing and a changed pin reinstalls).
fn python_venv() -> Result<()> {
    let venv = python_venv_dir();
    let stamp = venv.join(format!("dropgate-{:016x}", {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        PIP_PACKAGES.hash(&mut h);
        h.finish()
    }));
    if stamp.exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing into {}: {}",
        venv.display(),
        PIP_PACKAGES.join(" ")
    );
    cmd::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .context("`python3 -m venv` failed; Debian needs the python3-venv package")?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PIP_PACKAGES),
    )
    .context("pip install into the test venv failed (needs https://pypi.org)")?;
    std::fs::write(&stamp, b"").with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// tracefs (for the classic tracepoint's layout) and bpffs are mounted on most systems;
/// where they are not, mount them (root only; harmless when already mounted).
fn mounts() {
    if !cmd::is_root() {
        return;
    }
    for (fstype, target) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        let mounted = std::fs::read_to_string("/proc/mounts")
            .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(target)));
        if !mounted && std::path::Path::new(target).exists() {
            let _ = Command::new("mount")
                .args(["-t", fstype, fstype, target])
                .status();
        }
    }
}
