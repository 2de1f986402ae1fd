//! Debian kernel images for the matrix, fetched without installing them and without
//! touching the machine's apt configuration.
//!
//! Each suite gets a private apt state under the cache folder (its own sources.list,
//! lists, package cache and an empty status file), pointed at the Debian mirror the
//! machine's own sources already use. The suite's `linux-image-amd64` names the kernel
//! package; from 7.x the image itself is in a `linux-binary-*` package it depends on,
//! and the modules in a `linux-modules-*` one.
//! Only the `vmlinuz` is kept, one per suite, with the few modules the late-module
//! self-test loads (ipip and what it needs) and those of the conntrack self-test
//! (conntrack, nf_tables and the dependencies their `.modinfo` names); later runs use
//! them without the network.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::cmd;

/// Keys that sign every Debian suite the matrix uses (package debian-archive-keyring).
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The metapackages whose dependency names a suite's current kernel start so; the
/// Debian architecture follows.
const METAPACKAGE_PREFIX: &str = "linux-image-";

/// The modules the late-module self-test loads, in load order; ipip last. Those the
/// kernel has built in are not in its package and are simply not loaded.
pub const LATE_MODULES: [&str; 3] = ["tunnel4", "ip_tunnel", "ipip"];

/// The modules the conntrack self-test needs, before their dependencies are added.
/// crc32c comes first although nothing names it a dependency: libcrc32c asks the
/// crypto API for it when it loads, and the guest has no modprobe to answer that.
/// nft_ct is what makes conntrack hook a namespace at all (a `ct state` rule).
pub const CONNTRACK_MODULES: [&str; 4] = ["crc32c_generic", "nf_conntrack", "nf_tables", "nft_ct"];

/// The file in a module folder that lists its modules in load order.
const LOAD_ORDER: &str = "load-order";

/// A kernel ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-40-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// Uncompressed files of [`LATE_MODULES`] that this kernel has as modules, in
    /// load order (empty when ipip is built in).
    pub late_modules: Vec<PathBuf>,
    /// Uncompressed files of [`CONNTRACK_MODULES`] and their dependencies that this
    /// kernel has as modules, in load order.
    pub conntrack_modules: Vec<PathBuf>,
}

/// The files of `dir` named after [`LATE_MODULES`], in load order; none unless ipip is
/// among them.
fn late_modules_in(dir: &Path) -> Vec<PathBuf> {
    let found: Vec<PathBuf> = LATE_MODULES
        .iter()
        .map(|name| dir.join(format!("{name}.ko")))
        .filter(|path| path.is_file())
        .collect();
    if found.last().is_some_and(|last| last.ends_with("ipip.ko")) {
        found
    } else {
        Vec::new()
    }
}

/// The modules a folder's [`LOAD_ORDER`] lists, in that order; none without it.
fn modules_in_order(dir: &Path) -> Vec<PathBuf> {
    fs::read_to_string(dir.join(LOAD_ORDER))
        .unwrap_or_default()
        .lines()
        .map(|name| dir.join(format!("{name}.ko")))
        .filter(|path| path.is_file())
        .collect()
}

/// `$XDG_CACHE_HOME/dropgate/kernels`, else `~/.cache/dropgate/kernels`: outside the
/// repository, kept between runs.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map_or_else(
            || {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache")
            },
            PathBuf::from,
        );
    base.join("dropgate/kernels")
}

/// The current kernel of Debian `suite` for Debian architecture `arch` whose release
/// starts with `series`, from the cache or fetched into it.
pub fn kernel(suite: &str, series: &str, arch: &str) -> Result<Kernel> {
    // amd64 keeps the folder it always had, so existing caches stay valid.
    let dir = if arch == "amd64" {
        cache_dir().join(suite)
    } else {
        cache_dir().join(format!("{suite}-{arch}"))
    };
    let vmlinuz = dir.join("vmlinuz");
    let release_file = dir.join("release");
    let modules = dir.join("late-modules");
    let conntrack = dir.join("conntrack-modules");
    // A cache from before the late or conntrack modules (no folder, or no load order)
    // is fetched again once.
    if let (true, true, true, Ok(release)) = (
        vmlinuz.is_file(),
        modules.is_dir(),
        conntrack.join(LOAD_ORDER).is_file(),
        fs::read_to_string(&release_file),
    ) {
        return Ok(Kernel {
            release: release.trim().to_owned(),
            vmlinuz,
            late_modules: late_modules_in(&modules),
            conntrack_modules: modules_in_order(&conntrack),
        });
    }
    // Scratch space per process, so that two runs fetching at once share neither apt's
    // lock nor files; removed whatever happens. Only the image is kept: the apt state
    // is tens of megabytes and cheap to rebuild.
    let scratch = dir.join(format!("fetch.{}", std::process::id()));
    let fetched = fetch(suite, series, arch, &scratch);
    let kernel = fetched.and_then(|fetched| {
        let Fetched {
            release,
            vmlinuz: extracted,
            late_modules: extracted_modules,
            conntrack_modules: extracted_conntrack,
        } = fetched;
        fs::write(&release_file, format!("{release}\n"))
            .with_context(|| format!("writing {}", release_file.display()))?;
        for (from, to) in [
            (&extracted_modules, &modules),
            (&extracted_conntrack, &conntrack),
        ] {
            let _ = fs::remove_dir_all(to);
            fs::rename(from, to)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        }
        // The image appearing is what makes the cache entry complete.
        fs::rename(&extracted, &vmlinuz)
            .with_context(|| format!("moving {} to {}", extracted.display(), vmlinuz.display()))?;
        Ok(Kernel {
            release,
            vmlinuz,
            late_modules: late_modules_in(&modules),
            conntrack_modules: modules_in_order(&conntrack),
        })
    });
    let _ = fs::remove_dir_all(&scratch);
    kernel
}

/// `/bin/busybox` of Debian `suite`'s busybox-static for `arch`, from the cache or
/// fetched into it: the userland of a guest that is not this machine's architecture.
pub fn busybox(suite: &str, arch: &str) -> Result<PathBuf> {
    let dir = cache_dir().join(format!("busybox-{suite}-{arch}"));
    let busybox = dir.join("busybox");
    if busybox.is_file() {
        return Ok(busybox);
    }
    let scratch = dir.join(format!("fetch.{}", std::process::id()));
    let fetched = (|| {
        let apt = PrivateApt::create(&scratch.join("apt"), suite, arch)?;
        eprintln!("xtask: fetching {suite}'s busybox-static for {arch}");
        apt.update()?;
        let download = scratch.join("download");
        fs::create_dir_all(&download)
            .with_context(|| format!("creating {}", download.display()))?;
        apt.download("busybox-static", &download)?;
        let deb = download
            .read_dir()?
            .flatten()
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
            .context("apt-get download busybox-static left no .deb")?;
        let extracted = extract(&deb, &scratch.join("root"), "./bin/busybox")?;
        fs::rename(&extracted, &busybox)
            .with_context(|| format!("moving {} to {}", extracted.display(), busybox.display()))
    })();
    let _ = fs::remove_dir_all(&scratch);
    fetched.map(|()| busybox)
}

/// What [`fetch`] left in its scratch folder.
struct Fetched {
    release: String,
    vmlinuz: PathBuf,
    /// A folder with the late modules the kernel has.
    late_modules: PathBuf,
    /// A folder with the conntrack modules and their [`LOAD_ORDER`].
    conntrack_modules: PathBuf,
}

/// Resolves and downloads `suite`'s kernel in `scratch`.
fn fetch(suite: &str, series: &str, arch: &str, scratch: &Path) -> Result<Fetched> {
    let apt = PrivateApt::create(&scratch.join("apt"), suite, arch)?;
    let metapackage = format!("{METAPACKAGE_PREFIX}{arch}");
    eprintln!(
        "xtask: fetching the {suite} kernel (private apt state in {})",
        apt.root.display()
    );
    apt.update()?;
    let image = depends_with_prefix(&apt.show(&metapackage)?, "linux-image-", &metapackage)
        .with_context(|| format!("{suite}'s {metapackage} depends on no linux-image-* package"))?;
    let release = image
        .strip_prefix("linux-image-")
        .expect("matched on this prefix")
        .to_owned();
    ensure!(
        release.starts_with(&format!("{series}.")),
        "{suite}'s current kernel is {release}, not a {series}.x one; update the matrix's table"
    );
    let image_show = apt.show(&image)?;
    // From 7.x the image and the modules are packages of their own.
    let modules_package = depends_with_prefix(&image_show, "linux-modules-", &metapackage);
    let package = depends_with_prefix(&image_show, "linux-binary-", &metapackage).unwrap_or(image);
    let deb = download_one(&apt, &package, &scratch.join("download"))?;
    let extracted = extract_vmlinuz(&deb, &scratch.join("root"))?;
    let modules_deb = match modules_package {
        Some(modules_package) => {
            download_one(&apt, &modules_package, &scratch.join("download-modules"))?
        }
        None => deb,
    };
    let modules = extract_late_modules(
        &modules_deb,
        &scratch.join("modules-root"),
        &scratch.join("late"),
    )?;
    let conntrack_modules = extract_with_dependencies(
        &modules_deb,
        &CONNTRACK_MODULES,
        &scratch.join("conntrack-root"),
        &scratch.join("conntrack"),
    )?;
    Ok(Fetched {
        release,
        vmlinuz: extracted,
        late_modules: modules,
        conntrack_modules,
    })
}

/// `apt-get download package` into the folder `into`; the `.deb` it left.
fn download_one(apt: &PrivateApt, package: &str, into: &Path) -> Result<PathBuf> {
    fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    apt.download(package, into)?;
    fs::read_dir(into)
        .with_context(|| format!("reading {}", into.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))
}

/// Extracts `net/ipv4`'s modules from the package and leaves [`LATE_MODULES`],
/// uncompressed (Debian compresses them with xz, newer ones maybe zstd), in `into`.
fn extract_late_modules(deb: &Path, scratch: &Path, into: &Path) -> Result<PathBuf> {
    fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    // A kernel with everything built in has no such folder; then there is nothing to load.
    if extract(deb, scratch, "*/kernel/net/ipv4/*").is_err() {
        return Ok(into.to_path_buf());
    }
    for name in LATE_MODULES {
        for (suffix, decompress) in [
            (".ko", None),
            (".ko.xz", Some("xz")),
            (".ko.zst", Some("zstd")),
        ] {
            let Some(found) = find_regular_file(scratch, &format!("{name}{suffix}"))?.filter(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy() == format!("{name}{suffix}"))
            }) else {
                continue;
            };
            let target = into.join(format!("{name}.ko"));
            match decompress {
                None => {
                    fs::copy(&found, &target)
                        .with_context(|| format!("copying {}", found.display()))?;
                }
                Some(tool) => {
                    let output = Command::new(tool)
                        .arg("-dc")
                        .arg(&found)
                        .output()
                        .with_context(|| format!("cannot run {tool}"))?;
                    ensure!(
                        output.status.success(),
                        "{tool} -dc {} failed",
                        found.display()
                    );
                    fs::write(&target, output.stdout)
                        .with_context(|| format!("writing {}", target.display()))?;
                }
            }
            break;
        }
    }
    Ok(into.to_path_buf())
}

/// Extracts the modules named `wanted` and, before each, the modules it depends on
/// (their `.modinfo`), uncompressed, into `into`, with their [`LOAD_ORDER`]. Those
/// the kernel has built in are not in its package and are left out.
fn extract_with_dependencies(
    deb: &Path,
    wanted: &[&str],
    scratch: &Path,
    into: &Path,
) -> Result<PathBuf> {
    fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    // Where netfilter, its libraries and crc32c live; the rest of the tree is hundreds
    // of megabytes not needed here.
    for pattern in ["*/kernel/net/*", "*/kernel/lib/*", "*/kernel/crypto/*"] {
        // A kernel with all of one folder built in has no such folder.
        let _ = extract(deb, scratch, pattern);
    }
    let mut files = BTreeMap::new();
    index_modules(scratch, &mut files)?;
    let mut order: Vec<String> = Vec::new();
    for name in wanted {
        add_with_dependencies(name, &files, into, &mut order, 0)?;
    }
    fs::write(into.join(LOAD_ORDER), order.join("\n") + "\n")
        .with_context(|| format!("writing {}", into.join(LOAD_ORDER).display()))?;
    Ok(into.to_path_buf())
}

/// Module name (dashes as underscores, as `.modinfo` names dependencies) to its file,
/// for every `.ko`, `.ko.xz` and `.ko.zst` under `dir`.
fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            index_modules(&path, files)?;
            continue;
        }
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let name = [".ko", ".ko.xz", ".ko.zst"]
            .iter()
            .find_map(|suffix| file_name.strip_suffix(suffix));
        if let Some(name) = name {
            files.insert(name.replace('-', "_"), path);
        }
    }
    Ok(())
}

/// Puts `name`'s dependencies, then `name`, uncompressed into `into` and onto `order`.
fn add_with_dependencies(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    into: &Path,
    order: &mut Vec<String>,
    depth: u32,
) -> Result<()> {
    ensure!(
        depth < 16,
        "module dependencies of {name} nest too deep (a cycle?)"
    );
    if order.iter().any(|known| known == name) {
        return Ok(());
    }
    // Built in (or absent from this kernel): nothing to load.
    let Some(found) = files.get(name) else {
        return Ok(());
    };
    let target = into.join(format!("{name}.ko"));
    uncompress_module(found, &target)?;
    let elf = fs::read(&target).with_context(|| format!("reading {}", target.display()))?;
    for dependency in module_dependencies(&elf)
        .with_context(|| format!("reading the dependencies of {}", target.display()))?
    {
        add_with_dependencies(&dependency, files, into, order, depth + 1)?;
    }
    order.push(name.to_owned());
    Ok(())
}

/// The modules a kernel module depends on: the `depends=` entry of its `.modinfo`
/// section (NUL-separated `key=value` strings), as `modinfo -F depends` prints it.
fn module_dependencies(elf: &[u8]) -> Result<Vec<String>> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(elf).context("not an ELF file")?;
    let section = file
        .section_by_name(".modinfo")
        .context("no .modinfo section: not a kernel module")?;
    Ok(depends_in_modinfo(
        section.data().context("reading .modinfo")?,
    ))
}

/// The `depends=` list of a `.modinfo` section's contents.
fn depends_in_modinfo(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|byte| *byte == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok()?.strip_prefix("depends="))
        .flat_map(|list| list.split(','))
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Copies a module file to `target`, uncompressing `.ko.xz` and `.ko.zst`.
fn uncompress_module(found: &Path, target: &Path) -> Result<()> {
    let name = found.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        fs::copy(found, target).with_context(|| format!("copying {}", found.display()))?;
        return Ok(());
    };
    let output = Command::new(tool)
        .arg("-dc")
        .arg(found)
        .output()
        .with_context(|| format!("cannot run {tool}"))?;
    ensure!(
        output.status.success(),
        "{tool} -dc {} failed",
        found.display()
    );
    fs::write(target, output.stdout).with_context(|| format!("writing {}", target.display()))
}

/// An apt configuration of our own: nothing read from or written to the machine's.
struct PrivateApt {
    root: PathBuf,
    /// Debian architecture of the packages (not necessarily this machine's).
    arch: String,
}

impl PrivateApt {
    fn create(root: &Path, suite: &str, arch: &str) -> Result<Self> {
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mirror = debian_mirror()?;
        let sources =
            format!("deb [arch={arch} signed-by={DEBIAN_KEYRING}] {mirror} {suite} main\n");
        let path = root.join("sources.list");
        fs::write(&path, sources).with_context(|| format!("writing {}", path.display()))?;
        let status = root.join("status");
        fs::write(&status, "").with_context(|| format!("writing {}", status.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
            arch: arch.to_owned(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let option = |key: &str, sub: &str| format!("{key}={}", self.root.join(sub).display());
        for setting in [
            option("Dir::Etc::SourceList", "sources.list"),
            option("Dir::Etc::SourceParts", "sources.list.d"),
            option("Dir::Etc::Preferences", "preferences"),
            option("Dir::Etc::PreferencesParts", "preferences.d"),
            option("Dir::State::Lists", "lists"),
            option("Dir::State::Status", "status"),
            option("Dir::Cache", "cache"),
            // The cache folder is usually in a home that apt's `_apt` user cannot enter.
            "APT::Sandbox::User=root".to_owned(),
            format!("APT::Architecture={}", self.arch),
            format!("APT::Architectures={}", self.arch),
            "Acquire::Languages=none".to_owned(),
        ] {
            command.args(["-o", &setting]);
        }
        command
    }

    fn update(&self) -> Result<()> {
        cmd::run(
            self.command("apt-get")
                .args(["update", "-q"])
                .stdout(Stdio::null()),
        )
        .context("apt-get update (private configuration) failed: is the Debian mirror reachable?")
    }

    /// `apt-cache show` of the candidate version.
    fn show(&self, package: &str) -> Result<String> {
        let output = self
            .command("apt-cache")
            .args(["show", "--no-all-versions", package])
            .output()
            .context("cannot run apt-cache")?;
        ensure!(
            output.status.success(),
            "apt-cache show {package} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn download(&self, package: &str, into: &Path) -> Result<()> {
        cmd::run(
            self.command("apt-get")
                .args(["download", "-q", package])
                .current_dir(into)
                .stdout(Stdio::null()),
        )
        .with_context(|| format!("apt-get download {package} failed"))
    }
}

/// The Debian mirror the machine's own apt sources use (deb822 `.sources` or one-line
/// `.list` files), so a local mirror or proxy is honoured.
fn debian_mirror() -> Result<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut parts: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        parts.sort();
        files.extend(parts);
    }
    files
        .iter()
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "list" || ext == "sources")
        })
        .filter_map(|path| fs::read_to_string(path).ok())
        .find_map(|text| mirror_in(&text))
        .context("no Debian mirror (a URI ending in /debian) in /etc/apt/sources.list{,.d}; add one or set up apt first")
}

/// The first archive URI ending in `/debian` (not the security archive) in a sources file.
fn mirror_in(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| {
            let uris = line
                .strip_prefix("URIs:")
                .map(|rest| rest.split_ascii_whitespace().collect::<Vec<_>>());
            // One-line style: `deb [options] URI suite components`.
            let one_line = line.strip_prefix("deb ").map(|rest| {
                let rest = match rest.trim_start().strip_prefix('[') {
                    Some(options) => options.split_once(']').map_or("", |(_, tail)| tail),
                    None => rest,
                };
                rest.split_ascii_whitespace().take(1).collect::<Vec<_>>()
            });
            uris.or(one_line).unwrap_or_default()
        })
        .find(|uri| uri.trim_end_matches('/').ends_with("/debian"))
        .map(|uri| uri.trim_end_matches('/').to_owned())
}

/// The name of the first dependency (in `Depends:`) that starts with `prefix`.
fn depends_with_prefix(show: &str, prefix: &str, metapackage: &str) -> Option<String> {
    let depends = show
        .lines()
        .find_map(|line| line.strip_prefix("Depends: "))?;
    depends
        .split([',', '|'])
        .filter_map(|item| item.split_ascii_whitespace().next())
        .find(|name| name.starts_with(prefix) && *name != metapackage)
        .map(str::to_owned)
}

/// Extracts only the kernel image from a kernel package (the modules would be
/// hundreds of megabytes): `dpkg-deb --fsys-tarfile | tar -x '*vmlinuz*'`.
fn extract_vmlinuz(deb: &Path, into: &Path) -> Result<PathBuf> {
    extract(deb, into, "*vmlinuz*")?;
    find_regular_file(into, "vmlinuz")?
        .with_context(|| format!("{} holds no vmlinuz", deb.display()))
}

/// Extracts only the files matching `pattern` from a package (of a kernel package
/// only the image: the modules would be hundreds of megabytes):
/// `dpkg-deb --fsys-tarfile | tar -x PATTERN`; the path of `pattern` if it is one.
fn extract(deb: &Path, into: &Path, pattern: &str) -> Result<PathBuf> {
    fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run dpkg-deb")?;
    let tar_input = dpkg.stdout.take().expect("stdout is piped");
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .args(["--wildcards", pattern])
        .stdin(tar_input)
        .status()
        .context("cannot run tar")?;
    let dpkg = dpkg.wait().context("waiting for dpkg-deb")?;
    ensure!(
        dpkg.success() && tar.success(),
        "extracting {pattern} from {} failed (dpkg-deb {dpkg}, tar {tar})",
        deb.display()
    );
    Ok(into.join(pattern))
}

/// The first regular file (not a symlink) under `dir` whose name starts with `prefix`.
fn find_regular_file(dir: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            if let Some(found) = find_regular_file(&path, prefix)? {
                return Ok(Some(found));
            }
        } else if kind.is_file() && entry.file_name().to_string_lossy().starts_with(prefix) {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Fails unless the tools the fetch needs are present.
pub fn check_tools() -> Result<()> {
    for tool in ["apt-get", "apt-cache", "dpkg-deb", "tar"] {
        if cmd::stdout_of(Command::new("which").arg(tool)).is_none() {
            bail!("{tool} not found: the kernel matrix fetches Debian kernels with apt");
        }
    }
    ensure!(
        Path::new(DEBIAN_KEYRING).is_file(),
        "{DEBIAN_KEYRING} missing: install debian-archive-keyring"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_packages_from_depends() {
        let meta = "Package: linux-image-amd64\nVersion: 6.1.158-1\n\
                    Depends: linux-image-6.1.0-41-amd64 (= 6.1.158-1)\n";
        let v7 = "Package: linux-image-7.3.4+deb13-amd64\n\
                  Pre-Depends: linux-base (>= 4.17~)\n\
                  Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                  linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), \
                  linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)\n";
        let cases = [
            (
                "metapackage",
                meta,
                "linux-image-",
                Some("linux-image-6.1.0-41-amd64"),
            ),
            (
                "7.x image",
                v7,
                "linux-binary-",
                Some("linux-binary-7.3.4+deb13-amd64"),
            ),
            (
                "6.1 image has no binary package",
                meta,
                "linux-binary-",
                None,
            ),
            (
                "Pre-Depends is not read",
                v7,
                "linux-base",
                Some("linux-base-7.3.4+deb13-amd64"),
            ),
        ];
        for (name, show, prefix, want) in cases {
            assert_eq!(
                depends_with_prefix(show, prefix, "linux-image-amd64").as_deref(),
                want,
                "case {name}"
            );
        }
    }

    #[test]
    fn module_dependencies_from_modinfo() {
        let cases: [(&str, &[u8], &[&str]); 4] = [
            (
                "nf_conntrack on 6.1",
                b"license=GPL\0depends=nf_defrag_ipv6,nf_defrag_ipv4,libcrc32c\0retpoline=Y\0",
                &["nf_defrag_ipv6", "nf_defrag_ipv4", "libcrc32c"],
            ),
            ("no dependencies", b"depends=\0intree=Y\0", &[]),
            ("no depends entry", b"license=GPL\0", &[]),
            (
                "a value that only contains the key",
                b"description=depends=x\0depends=nfnetlink\0",
                &["nfnetlink"],
            ),
        ];
        for (name, modinfo, want) in cases {
            assert_eq!(depends_in_modinfo(modinfo), want, "case {name}");
        }
    }

    #[test]
    fn mirrors_from_sources_files() {
        let deb822 = "Types: deb\n# http://snapshot.example/archive\n\
                      URIs: http://mirror.example/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\n";
        let security_first = "deb http://mirror.example/debian-security bookworm-security main\n\
                              deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n";
        let cases = [
            ("deb822", deb822, Some("http://mirror.example/debian")),
            (
                "one-line with options, security listed first",
                security_first,
                Some("http://mirror.example/debian"),
            ),
            (
                "commented out",
                "# deb http://mirror.example/debian bookworm main\n",
                None,
            ),
            ("none", "", None),
        ];
        for (name, text, want) in cases {
            assert_eq!(mirror_in(text).as_deref(), want, "case {name}");
        }
    }
}
