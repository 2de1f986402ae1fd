//! The `.deb`: a staging tree laid out as it will be installed, the control files, and
//! `dpkg-deb --build`. Debian policy's expectations are met by hand (copyright,
//! changelog, compressed docs, conffiles, md5sums) and checked with `lintian`.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};

use super::{Arch, Artifacts, VERSION};
use crate::cmd;

/// The unit, in the folder systemd reads packaged units from on Debian 12.
const UNIT: &str = "lib/systemd/system/dropgate.service";

/// Files every package must contain, checked in its contents list.
const EXPECTED: &[&str] = &[
    "./usr/bin/dropgate",
    "./lib/systemd/system/dropgate.service",
    "./etc/default/dropgate",
    "./usr/share/man/man1/dropgate.1.gz",
    "./usr/share/bash-completion/completions/dropgate",
    "./usr/share/zsh/vendor-completions/_dropgate",
    "./usr/share/fish/vendor_completions.d/dropgate.fish",
    "./usr/share/doc/dropgate/README.md.gz",
    "./usr/share/doc/dropgate/copyright",
    "./usr/share/doc/dropgate/changelog.gz",
    "./usr/share/lintian/overrides/dropgate",
];

/// The man page and completions, as the binary generates them.
pub struct Generated {
    man: Vec<u8>,
    bash: Vec<u8>,
    zsh: Vec<u8>,
    fish: Vec<u8>,
}

impl Generated {
    /// Runs `binary generate ...` (a hidden command) for each.
    pub fn from_binary(binary: &Path) -> Result<Self> {
        let generate = |what: &str| -> Result<Vec<u8>> {
            let out = Command::new(binary)
                .args(["generate", what])
                .output()
                .with_context(|| format!("running {} generate {what}", binary.display()))?;
            ensure!(
                out.status.success() && !out.stdout.is_empty(),
                "{} generate {what} failed: {}",
                binary.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(out.stdout)
        };
        Ok(Self {
            man: generate("man")?,
            bash: generate("bash")?,
            zsh: generate("zsh")?,
            fish: generate("fish")?,
        })
    }
}

/// Builds `out/dropgate_<version>_<arch>.deb`.
pub fn build(arch: Arch, binary: &Path, generated: &Generated, out: &Path) -> Result<PathBuf> {
    let root = cmd::workspace_root();
    let dist = root.join("tracer/dist");
    let stage = out.join(format!("deb-{}", arch.deb));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    let mut tree = Tree {
        root: stage.clone(),
    };
    tree.file("usr/bin/dropgate", 0o755, &fs::read(binary)?)?;
    tree.file(UNIT, 0o644, &read(&dist.join("dropgate.service"))?)?;
    tree.file(
        "etc/default/dropgate",
        0o644,
        &read(&dist.join("dropgate.default"))?,
    )?;
    tree.file(
        "usr/share/man/man1/dropgate.1.gz",
        0o644,
        &gzip(&generated.man)?,
    )?;
    tree.file(
        "usr/share/bash-completion/completions/dropgate",
        0o644,
        &generated.bash,
    )?;
    tree.file(
        "usr/share/zsh/vendor-completions/_dropgate",
        0o644,
        &generated.zsh,
    )?;
    tree.file(
        "usr/share/fish/vendor_completions.d/dropgate.fish",
        0o644,
        &generated.fish,
    )?;
    // The Prometheus rules and the Grafana dashboard, when the tree has them.
    for name in ["dropgate.rules.yml", "dropgate.dashboard.json"] {
        let source = dist.join(name);
        if source.exists() {
            tree.file(
                &format!("usr/share/dropgate/{name}"),
                0o644,
                &read(&source)?,
            )?;
        }
    }
    let doc = "usr/share/doc/dropgate";
    tree.file(
        &format!("{doc}/README.md.gz"),
        0o644,
        &gzip(&read(&root.join("README.md"))?)?,
    )?;
    tree.file(
        &format!("{doc}/copyright"),
        0o644,
        copyright(&embedded_crates(arch)?).as_bytes(),
    )?;
    tree.file(
        &format!("{doc}/changelog.gz"),
        0o644,
        &gzip(changelog()?.as_bytes())?,
    )?;
    tree.file(
        "usr/share/lintian/overrides/dropgate",
        0o644,
        LINTIAN_OVERRIDES.as_bytes(),
    )?;

    let installed_kib = du_kib(&stage)?;
    tree.file(
        "DEBIAN/control",
        0o644,
        control(arch, installed_kib).as_bytes(),
    )?;
    tree.file("DEBIAN/conffiles", 0o644, b"/etc/default/dropgate\n")?;
    tree.file("DEBIAN/postinst", 0o755, POSTINST.as_bytes())?;
    tree.file("DEBIAN/prerm", 0o755, PRERM.as_bytes())?;
    tree.file("DEBIAN/postrm", 0o755, POSTRM.as_bytes())?;
    let sums = md5sums(&stage)?;
    tree.file("DEBIAN/md5sums", 0o644, sums.as_bytes())?;

    let deb = out.join(format!("dropgate_{VERSION}_{}.deb", arch.deb));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// The package's contents, and lintian finding no error (warnings are overridden with
/// a reason in the package, or printed).
pub fn check(a: &Artifacts) -> Result<()> {
    let listing = cmd::stdout_of(Command::new("dpkg-deb").arg("--contents").arg(&a.deb))
        .with_context(|| format!("dpkg-deb --contents {} failed", a.deb.display()))?;
    let paths: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for expected in EXPECTED {
        ensure!(
            paths.contains(expected),
            "{} lacks {expected}; it has:\n{listing}",
            a.deb.display()
        );
    }
    let arch = cmd::stdout_of(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(&a.deb)
            .arg("Architecture"),
    )
    .context("dpkg-deb --field failed")?;
    ensure!(
        arch == a.arch.deb,
        "{}: Architecture {arch}",
        a.deb.display()
    );
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(&a.deb)
        .output()
        .context("running lintian")?;
    let said = String::from_utf8_lossy(&lintian.stdout);
    ensure!(
        lintian.status.success() && !said.lines().any(|l| l.starts_with("E:")),
        "lintian finds errors in {}:\n{said}{}",
        a.deb.display(),
        String::from_utf8_lossy(&lintian.stderr)
    );
    if !said.trim().is_empty() {
        eprintln!("xtask: lintian on {}:\n{said}", a.deb.display());
    }
    Ok(())
}

/// Files written under a staging root with exact permissions.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let full = self.root.join(path);
        let parent = full.parent().expect("paths are inside the root");
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        fs::write(&full, data).with_context(|| format!("writing {}", full.display()))?;
        fs::set_permissions(&full, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", full.display()))?;
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// gzip -9n: best compression, no name or time in the header (reproducible, and what
/// lintian expects of manuals and docs).
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

fn du_kib(dir: &Path) -> Result<u64> {
    let out = cmd::stdout_of(Command::new("du").args(["-sk", "--apparent-size"]).arg(dir))
        .context("du failed")?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du printed no size")
}

/// `DEBIAN/md5sums` of every file but the conffile (dpkg tracks that one itself).
fn md5sums(stage: &Path) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\\0' | sort -z | xargs -0 md5sum")
        .current_dir(stage)
        .output()
        .context("running md5sum")?;
    ensure!(out.status.success(), "md5sum failed");
    Ok(String::from_utf8(out.stdout)?)
}

fn control(arch: Arch, installed_kib: u64) -> String {
    format!(
        "Package: dropgate
Version: {VERSION}
Architecture: {}
Maintainer: dropgate developers <dropgate@example.org>
Installed-Size: {installed_kib}
Section: net
Priority: optional
Homepage: https://example.org/dropgate
Description: kernel packet-drop tracer with a Pushgateway-compatible gateway
 dropgate traces every packet the Linux kernel drops (eBPF on kfree_skb), names
 the reason, the dropping function, the interface and the network namespace,
 and serves the counts as Prometheus metrics beside a Pushgateway-compatible
 push API, on one /metrics. `dropgate diagnose` prints a verdict, the evidence
 and the fix for what drops a host's traffic (e.g. forwarding off behind
 Docker's published ports).
 .
 The binary is static; the service runs with a reduced capability set.
",
        arch.deb
    )
}

/// The changelog a native package carries (Debian's format; this build's commit).
fn changelog() -> Result<String> {
    let git = |args: &[&str]| {
        cmd::stdout_of(
            Command::new("git")
                .args(args)
                .current_dir(cmd::workspace_root()),
        )
    };
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    // The commit's date, so the same commit gives the same package.
    let date = git(&["log", "-1", "--format=%aD"]).context("git log failed")?;
    Ok(format!(
        "dropgate ({VERSION}) unstable; urgency=medium\n\n  * Built from git revision {revision}.\n\n -- dropgate developers <dropgate@example.org>  {date}\n"
    ))
}

/// A crate linked into the binary (or the eBPF object inside it), as `cargo metadata`
/// names it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Crate {
    name: String,
    version: String,
    license: String,
}

/// Every crate the shipped binary contains: the normal (not dev, not build, not
/// proc-macro) dependency closure of `tracer` (the binary) and `tracer-ebpf` (the program it embeds) for this
/// architecture's target, read from Cargo's resolve rather than written down, so the
/// copyright file cannot drift from `Cargo.lock`.
fn embedded_crates(arch: Arch) -> Result<Vec<Crate>> {
    let out = cmd::stdout_of(cmd::cargo().args([
        "metadata",
        "--format-version",
        "1",
        "--locked",
        "--filter-platform",
        arch.rust_target,
    ]))
    .context("cargo metadata failed")?;
    let metadata: serde_json::Value = serde_json::from_str(&out)?;
    crates_in(&metadata, &["tracer", "tracer-ebpf"])
}

fn crates_in(metadata: &serde_json::Value, roots: &[&str]) -> Result<Vec<Crate>> {
    use std::collections::{BTreeSet, HashMap};
    let str_of = |v: &serde_json::Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    let packages: HashMap<String, &serde_json::Value> = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")?
        .iter()
        .map(|p| (str_of(p, "id"), p))
        .collect();
    let nodes: HashMap<String, &serde_json::Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no resolve graph")?
        .iter()
        .map(|n| (str_of(n, "id"), n))
        .collect();
    let workspace: BTreeSet<String> = metadata["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    let mut todo: Vec<String> = packages
        .values()
        .filter(|p| roots.contains(&p["name"].as_str().unwrap_or_default()))
        .map(|p| str_of(p, "id"))
        .collect();
    ensure!(
        todo.len() == roots.len(),
        "cargo metadata lacks one of {roots:?}"
    );
    let mut seen = BTreeSet::new();
    while let Some(id) = todo.pop() {
        // A proc-macro runs in the compiler; neither it nor what only it uses is linked.
        let proc_macro = packages.get(&id).is_some_and(|p| {
            p["targets"].as_array().into_iter().flatten().any(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "proc-macro"))
            })
        });
        if proc_macro || !seen.insert(id.clone()) {
            continue;
        }
        for dep in nodes
            .get(&id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten()
        {
            // `kind` null is a normal dependency: what ends up in the artifact.
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if normal {
                todo.push(str_of(dep, "pkg"));
            }
        }
    }
    let mut crates: Vec<Crate> = seen
        .iter()
        .filter(|id| !workspace.contains(*id))
        .filter_map(|id| packages.get(id))
        .map(|p| Crate {
            name: str_of(p, "name"),
            version: str_of(p, "version"),
            license: p["license"]
                .as_str()
                .map_or_else(|| "see the crate's licence file".to_owned(), str::to_owned),
        })
        .collect();
    crates.sort();
    Ok(crates)
}

/// `debian/copyright` in the machine-readable format: dropgate's own licence, then every
/// crate and musl the static binary carries, each with its licence expression.
fn copyright(crates: &[Crate]) -> String {
    use std::fmt::Write as _;
    let mut text = String::from(
        "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: dropgate

Files: *
Copyright: 2026 dropgate developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0, is in
 /usr/share/common-licenses/Apache-2.0.
Comment: The static binary also contains musl libc (MIT) and the following Rust
 crates, as resolved in the source's Cargo.lock, each under the licence expression
 its authors declare (the full texts ship in each crate's source):
",
    );
    for c in crates {
        // Writing into a String cannot fail.
        let _ = writeln!(text, " {} {}: {}", c.name, c.version, c.license);
    }
    text
}

/// Each override says why the finding is intended.
const LINTIAN_OVERRIDES: &str = "\
# One static binary is the point of this package: it runs on any distribution release
# and is the same file as in the image. (aarch64 builds a plain static executable,
# x86_64 a static-pie one; each override applies to one of them.)
dropgate: statically-linked-binary [usr/bin/dropgate]
# Rust's static-pie executables are ET_DYN (for address randomisation), so lintian
# takes the binary for a shared library; it is the program.
dropgate: shared-library-lacks-prerequisites [usr/bin/dropgate]
";

/// On install: enable the unit and start it (restart on upgrade), through
/// init-system-helpers where present, as Debian's own packages do.
const POSTINST: &str = r#"#!/bin/sh
# dropgate: enable and start the service on install, restart it on upgrade.
set -e
if [ "$1" = configure ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper unmask dropgate.service >/dev/null || true
        # On a first install was-enabled is true: enable. Later, keep the admin's choice.
        if deb-systemd-helper --quiet was-enabled dropgate.service; then
            deb-systemd-helper enable dropgate.service >/dev/null || true
        else
            deb-systemd-helper update-state dropgate.service >/dev/null || true
        fi
    fi
    if [ -d /run/systemd/system ] && command -v deb-systemd-invoke >/dev/null; then
        systemctl --system daemon-reload >/dev/null || true
        deb-systemd-invoke restart dropgate.service >/dev/null || true
    fi
fi
exit 0
"#;

/// Before removal: stop the service, which detaches the probe.
const PRERM: &str = r#"#!/bin/sh
# dropgate: stop the service before its files go; stopping detaches the probe.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ] && command -v deb-systemd-invoke >/dev/null; then
    deb-systemd-invoke stop dropgate.service >/dev/null || true
fi
exit 0
"#;

/// After removal: forget the unit; on purge also its state (the persistence file).
const POSTRM: &str = r#"#!/bin/sh
# dropgate: forget the unit on remove; on purge also delete its state directory.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper mask dropgate.service >/dev/null || true
fi
if [ "$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge dropgate.service >/dev/null || true
        deb-systemd-helper unmask dropgate.service >/dev/null || true
    fi
    # StateDirectory=dropgate: the pushed groups' persistence file.
    rm -rf /var/lib/dropgate
fi
exit 0
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn names(crates: &[Crate]) -> Vec<&str> {
        crates.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn the_copyright_lists_what_the_static_binary_links_and_nothing_else() {
        let crates = embedded_crates(super::super::ARCHES[0]).unwrap();
        let names = names(&crates);
        // From the binary, from the eBPF object, and the musl-only allocator.
        for linked in ["aya", "hyper", "aya-ebpf", "mimalloc"] {
            assert!(names.contains(&linked), "{linked} missing from {names:?}");
        }
        // A build dependency, proc-macros (and what only they use) and the workspace's own
        // crates are not in the artifact.
        for absent in [
            "aya-build",
            "serde_derive",
            "syn",
            "tracer",
            "gateway",
            "tracer-common",
        ] {
            assert!(!names.contains(&absent), "{absent} listed: {names:?}");
        }
        assert!(crates.iter().all(|c| !c.license.is_empty()));
        let text = copyright(&crates);
        assert!(text.contains(&format!(
            " mimalloc {}: {}\n",
            crates[names.iter().position(|n| *n == "mimalloc").unwrap()].version,
            crates[names.iter().position(|n| *n == "mimalloc").unwrap()].license
        )));
    }

    #[test]
    fn a_glibc_build_would_not_list_the_musl_allocator() {
        let gnu = Arch {
            rust_target: "x86_64-unknown-linux-gnu",
            ..super::super::ARCHES[0]
        };
        let names_gnu: Vec<String> = embedded_crates(gnu)
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert!(!names_gnu.iter().any(|n| n == "mimalloc"));
        assert!(names_gnu.iter().any(|n| n == "aya"));
    }
}
