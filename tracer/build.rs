//! Builds the kernel programs (tracer-ebpf) with aya-build and leaves the object in
//! `OUT_DIR`, where src/loader.rs embeds it with `include_bytes_aligned!`; and records
//! which build this is (git revision and branch, date, user, rustc) for
//! src/build_info.rs, so `dropgate --version` and `/api/v1/status` can say it.
//!
//! This needs the nightly toolchain with rust-src and bpf-linker (`cargo xtask setup`
//! installs both). `AYA_BUILD_SKIP=1` skips it, e.g. for `cargo doc` on a machine
//! without them; the binary then refuses to start the tracer with a clear message.

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    build_information();
    let skip = std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true");
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
    let object = std::path::Path::new(&out_dir).join("tracer");
    if skip {
        // An empty object: the loader detects it and says how to build for real.
        std::fs::write(&object, b"").context("writing the placeholder eBPF object")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let ebpf = Package {
        name: "tracer-ebpf",
        root_dir: "../tracer-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default()).context(
        "building the kernel programs failed; run `cargo xtask setup` (nightly rust-src and bpf-linker)",
    )?;
    // aya-build watches the crate folder; the shared types live in a nested folder too.
    println!("cargo:rerun-if-changed=../tracer-ebpf/common/src");
    Ok(())
}

/// Sets `DROPGATE_BUILD_{REVISION,BRANCH,DATE,USER,RUSTC,ARCH}` for `env!`.
///
/// Each can be given from outside (a build from a source tarball has no git; a package
/// build names its builder); `SOURCE_DATE_EPOCH` fixes the date for reproducible builds.
/// The script reruns when HEAD moves, so a new commit is never shown with an old hash.
fn build_information() {
    let given = |name: &str| {
        println!("cargo:rerun-if-env-changed={name}");
        std::env::var(name).ok().filter(|v| !v.is_empty())
    };
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    let revision = given("DROPGATE_BUILD_REVISION").or_else(|| git(&["rev-parse", "HEAD"]));
    let branch = given("DROPGATE_BUILD_BRANCH")
        .or_else(|| git(&["rev-parse", "--abbrev-ref", "HEAD"]))
        .filter(|b| b != "HEAD");
    // HEAD (per worktree) names the branch; the branch's ref (loose, or packed) the
    // commit. Only files that exist are watched: cargo reruns always for missing ones.
    let mut watched = Vec::new();
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watched.push(std::path::Path::new(&dir).join("HEAD"));
    }
    if let (Some(common), Some(reference)) = (
        git(&["rev-parse", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        let common = std::path::Path::new(&common);
        watched.push(common.join(reference));
        watched.push(common.join("packed-refs"));
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let epoch = given("SOURCE_DATE_EPOCH")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let user = given("DROPGATE_BUILD_USER").unwrap_or_else(|| {
        let name = std::env::var("USER").unwrap_or_else(|_| "root".to_owned());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{name}@{}", host.trim())
    });
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rust_version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_default();
    for (name, value) in [
        ("REVISION", revision.unwrap_or_default()),
        ("BRANCH", branch.unwrap_or_default()),
        ("DATE", pushgateway_date(epoch)),
        ("USER", user),
        ("RUSTC", rust_version),
        (
            "ARCH",
            std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default(),
        ),
    ] {
        println!("cargo:rustc-env=DROPGATE_BUILD_{name}={value}");
    }
}

/// `20260105-14:03:59` (UTC), the format of the pushgateway's `buildDate`.
fn pushgateway_date(epoch: u64) -> String {
    let (days, secs) = (epoch / 86_400, epoch % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), to need no
    // date crate in a build script.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}:{:02}:{:02}",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}
