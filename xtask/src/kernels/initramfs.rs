//! The guests' initramfs: static busybox, an `/init` that mounts what the tracer needs
//! and runs the self-tests the kernel command line names, and the dropgate binary with
//! the shared libraries it links (the guest has no other userland).
//!
//! The newc cpio is written in memory (the `cpio` crate) rather than by the `cpio` tool,
//! so that `/dev/console` (without it `/init` has no stdout) needs no `mknod`
//! privileges, then gzip'd.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};
use flate2::{write::GzEncoder, Compression};

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Marks the moment the guest's userland starts (boot time ends there).
pub const READY_MARKER: &str = "DROPGATE-GUEST-READY";
/// Follows each self-test with its exit code.
pub const EXIT_MARKER: &str = "DROPGATE-SELFTEST-EXIT";
/// The kernel command-line variable listing the self-tests: runs separated by `;`,
/// the arguments of one run by `,` (the kernel hands unknown `name=value` to init's
/// environment).
pub const RUNS_VARIABLE: &str = "dropgate_runs";

/// `/init`. tracefs is where the classic tracepoint's layout is read; bpffs is mounted
/// as `dropgate run` would find it on a host; `/sys/kernel/btf/vmlinux` is in sysfs.
const INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin RUST_LOG=warn
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
echo "DROPGATE-GUEST-READY $(uname -r)"
IFS=';'
for run in $dropgate_runs; do
  IFS=','
  /bin/dropgate selftest $run
  echo "DROPGATE-SELFTEST-EXIT $?"
  IFS=';'
done
poweroff -f
"#;

/// Where the late-module self-test finds its module files in the guest.
pub const LATE_MODULES_DIR: &str = "/lib/late";

/// Builds the initramfs for `binary` into `out` (a `.cpio.gz`), with `modules` (files
/// for the late-module self-test) in [`LATE_MODULES_DIR`].
pub fn build(binary: &Path, out: &Path, modules: &[PathBuf]) -> Result<()> {
    let work = out.with_extension("work");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut archive = Archive::default();
    archive.char_device("dev/console", 0o600, (5, 1));
    archive.char_device("dev/null", 0o666, (1, 3));
    for dir in ["proc", "sys", "tmp", "run"] {
        archive.dir(dir);
    }
    archive.file("init", 0o755, INIT.as_bytes());
    let busybox =
        fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}; install busybox-static"))?;
    archive.file("bin/busybox", 0o755, &busybox);
    archive.symlink("bin/sh", "busybox");
    let dropgate = stripped(binary, &work.join("dropgate"))?;
    archive.file("bin/dropgate", 0o755, &dropgate);
    for library in shared_libraries(binary)? {
        let data = fs::read(&library).with_context(|| format!("reading {}", library.display()))?;
        let inside = library.strip_prefix("/").unwrap_or(&library);
        archive.file(&inside.to_string_lossy(), 0o755, &data);
    }
    for module in modules {
        let data = fs::read(module).with_context(|| format!("reading {}", module.display()))?;
        let name = module
            .file_name()
            .with_context(|| format!("{} has no file name", module.display()))?;
        let inside = format!(
            "{}/{}",
            LATE_MODULES_DIR.trim_start_matches('/'),
            name.to_string_lossy()
        );
        archive.file(&inside, 0o644, &data);
    }
    let mut gzip = GzEncoder::new(Vec::new(), Compression::fast());
    gzip.write_all(&archive.finish())
        .and_then(|()| gzip.finish())
        .and_then(|bytes| fs::write(out, bytes))
        .with_context(|| format!("writing {}", out.display()))?;
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// The binary without debug info (a third of the size: faster to unpack under TCG);
/// the binary as it is where `strip` is missing.
fn stripped(binary: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(scratch)
        .arg(binary)
        .status()
        .is_ok_and(|status| status.success());
    let path = if ok { scratch } else { binary };
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The shared libraries `binary` loads (and the dynamic loader), from `ldd`.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // A static binary: `not a dynamic executable`.
        return Ok(Vec::new());
    }
    parse_ldd(&text)
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim) {
        ensure!(
            !line.contains("not found"),
            "a library of the dropgate binary is missing: {line}"
        );
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.split_ascii_whitespace().next(),
            None => line.split_ascii_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A newc ("070701") cpio archive being written; parents of every entry are added
/// first, as the kernel's unpacker needs them.
#[derive(Default)]
struct Archive {
    bytes: Vec<u8>,
    dirs: BTreeSet<String>,
    next_inode: u32,
}

impl Archive {
    fn dir(&mut self, path: &str) {
        self.parents(path);
        if self.dirs.insert(path.to_owned()) {
            self.entry(path, S_IFDIR | 0o755, &[], (0, 0));
        }
    }

    fn file(&mut self, path: &str, permissions: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, S_IFREG | permissions, data, (0, 0));
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, S_IFLNK | 0o777, target.as_bytes(), (0, 0));
    }

    fn char_device(&mut self, path: &str, permissions: u32, device: (u32, u32)) {
        self.parents(path);
        self.entry(path, S_IFCHR | permissions, &[], device);
    }

    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], device: (u32, u32)) {
        self.next_inode += 1;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let size = u32::try_from(data.len()).expect("initramfs members are below 4 GiB");
        let mut writer = cpio::newc::Builder::new(name)
            .ino(self.next_inode)
            .mode(mode)
            .nlink(nlink)
            .rdev_major(device.0)
            .rdev_minor(device.1)
            .write(&mut self.bytes, size);
        writer
            .write_all(data)
            .and_then(|()| writer.finish())
            .expect("an entry of the size it declares, into memory");
    }

    fn finish(mut self) -> Vec<u8> {
        cpio::newc::trailer(&mut self.bytes).expect("the trailer, into memory");
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_parents_come_first() {
        let mut archive = Archive::default();
        archive.file("bin/x", 0o755, b"hello");
        archive.char_device("dev/console", 0o600, (5, 1));
        let bytes = archive.finish();
        assert_eq!(bytes.len() % 4, 0, "padded to 4 bytes");
        // Read back as the kernel's unpacker would: entry by entry, to the trailer.
        let mut entries = Vec::new();
        let mut rest = bytes.as_slice();
        loop {
            let mut reader = cpio::NewcReader::new(rest).expect("a newc header");
            if reader.entry().is_trailer() {
                break;
            }
            let entry = reader.entry();
            let summary = (
                entry.name().to_owned(),
                entry.ino(),
                entry.mode(),
                entry.nlink(),
                (entry.rdev_major(), entry.rdev_minor()),
            );
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut data).expect("the entry's data");
            entries.push((summary, data));
            rest = reader.finish().expect("the next entry");
        }
        let want = [
            (
                ("bin".to_owned(), 1, S_IFDIR | 0o755, 2, (0, 0)),
                Vec::new(),
            ),
            (
                ("bin/x".to_owned(), 2, S_IFREG | 0o755, 1, (0, 0)),
                b"hello".to_vec(),
            ),
            (
                ("dev".to_owned(), 3, S_IFDIR | 0o755, 2, (0, 0)),
                Vec::new(),
            ),
            (
                ("dev/console".to_owned(), 4, S_IFCHR | 0o600, 1, (5, 1)),
                Vec::new(),
            ),
        ];
        assert_eq!(entries, want, "parents first, then each entry as written");
    }

    #[test]
    fn libraries_from_ldd() {
        let debian = "\tlinux-vdso.so.1 (0x00007ffd1b5f5000)\n\
                      \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f3c)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3b)\n\
                      \t/lib64/ld-linux-x86-64.so.2 (0x00007f3d)\n";
        let want = [
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ]
        .map(PathBuf::from);
        assert_eq!(parse_ldd(debian).expect("parses"), want);
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }
}
