//! The guests' initramfs: static busybox, an `/init` that mounts what the tracer needs
//! and runs the self-tests the kernel command line names, the static dropgate binary
//! (the guest has no other userland), and extra files: the modules of the late-module
//! and conntrack self-tests, and (x86_64 guests) this machine's `nft` with its shared
//! libraries (Debian 12's glibc runs on every kernel of the matrix).
//!
//! The newc cpio is written in memory (the `cpio` crate) rather than by the `cpio` tool,
//! so that `/dev/console` (without it `/init` has no stdout) needs no `mknod`
//! privileges, then gzip'd.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
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
/// Where the conntrack self-test finds its module files in the guest.
pub const CONNTRACK_MODULES_DIR: &str = "/lib/conntrack";

/// A file of this machine and where it goes in the guest (an absolute path).
pub struct Extra {
    pub inside: String,
    pub host: PathBuf,
}

/// `files`, each in the guest's folder `dir` under its own name.
pub fn in_folder(dir: &str, files: &[PathBuf]) -> Vec<Extra> {
    files
        .iter()
        .filter_map(|host| {
            let name = host.file_name()?.to_string_lossy().into_owned();
            Some(Extra {
                inside: format!("{dir}/{name}"),
                host: host.clone(),
            })
        })
        .collect()
}

/// This machine's `program` as `/bin/<name>` and the shared libraries `ldd` names for
/// it (with the dynamic loader) at their own paths.
pub fn program_with_libraries(program: &Path) -> Result<Vec<Extra>> {
    let name = program
        .file_name()
        .with_context(|| format!("{} has no file name", program.display()))?
        .to_string_lossy()
        .into_owned();
    let output = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .context("cannot run ldd")?;
    ensure!(
        output.status.success(),
        "ldd {} failed: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let mut extras = vec![Extra {
        inside: format!("/bin/{name}"),
        host: program.to_path_buf(),
    }];
    extras.extend(
        libraries_in_ldd(&String::from_utf8_lossy(&output.stdout))
            .into_iter()
            .map(|library| Extra {
                inside: library.clone(),
                host: PathBuf::from(library),
            }),
    );
    Ok(extras)
}

/// The absolute paths in `ldd`'s output: `name => /path (0x...)` and the loader's
/// `/path (0x...)`; the vDSO has none.
fn libraries_in_ldd(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let path = line.rsplit_once("=>").map_or(line, |(_, right)| right);
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

/// Builds the initramfs for the static `binary` and `busybox` (both of the guest's
/// architecture) into `out` (a `.cpio.gz`), with `extras` (module files, programs).
pub fn build(binary: &Path, busybox: &Path, out: &Path, extras: &[Extra]) -> Result<()> {
    let dropgate = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    ensure!(
        is_static(&dropgate),
        "{} loads shared libraries, which the guests do not have: give the static binary \
         of `cargo xtask dist` (target/dist/dropgate-*)",
        binary.display()
    );
    let mut archive = Archive::default();
    archive.char_device("dev/console", 0o600, (5, 1));
    archive.char_device("dev/null", 0o666, (1, 3));
    for dir in ["proc", "sys", "tmp", "run"] {
        archive.dir(dir);
    }
    archive.file("init", 0o755, INIT.as_bytes());
    let busybox = fs::read(busybox)
        .with_context(|| format!("reading {}; install busybox-static", busybox.display()))?;
    archive.file("bin/busybox", 0o755, &busybox);
    archive.symlink("bin/sh", "busybox");
    archive.file("bin/dropgate", 0o755, &dropgate);
    for extra in extras {
        // Follows symlinks: the guest gets the file itself.
        let data =
            fs::read(&extra.host).with_context(|| format!("reading {}", extra.host.display()))?;
        archive.file(extra.inside.trim_start_matches('/'), 0o755, &data);
    }
    let mut gzip = GzEncoder::new(Vec::new(), Compression::fast());
    gzip.write_all(&archive.finish())
        .and_then(|()| gzip.finish())
        .and_then(|bytes| fs::write(out, bytes))
        .with_context(|| format!("writing {}", out.display()))
}

/// Whether an ELF64 file has no program interpreter (`PT_INTERP`): a static binary.
fn is_static(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |at: usize, len: usize| elf.get(at..at + len);
    let number = |at: usize, len: usize| {
        read(at, len).map(|b| {
            b.iter()
                .rev()
                .fold(0u64, |n, byte| n << 8 | u64::from(*byte))
        })
    };
    // Little-endian ELF64 only: both of dist's targets are.
    if read(0, 6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(entsize), Some(count)) =
        (number(0x20, 8), number(0x36, 2), number(0x38, 2))
    else {
        return false;
    };
    (0..count).all(|i| {
        let at = (phoff + i * entsize) as usize;
        number(at, 4).is_some_and(|kind| kind != u64::from(PT_INTERP))
    })
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
        let nft = "\tlinux-vdso.so.1 (0x00007f382b91f000)\n\
                   \tlibnftables.so.1 => /lib/x86_64-linux-gnu/libnftables.so.1 (0x00007f382b82b000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f382b60f000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f382b921000)\n";
        assert_eq!(
            libraries_in_ldd(nft),
            [
                "/lib/x86_64-linux-gnu/libnftables.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(
            libraries_in_ldd("\tnot a dynamic executable\n").is_empty(),
            "a static program needs nothing"
        );
    }

    #[test]
    fn static_binaries_are_told_from_dynamic_ones() {
        // Real files of every Debian machine the matrix runs on (busybox-static is
        // installed by setup), and two that are no ELF executable at all.
        let cases: [(&str, Vec<u8>, bool); 4] = [
            (
                "busybox-static",
                fs::read(BUSYBOX).expect("busybox-static"),
                true,
            ),
            (
                "dash, dynamic",
                fs::read("/bin/dash").expect("/bin/dash"),
                false,
            ),
            ("a script", b"#!/bin/sh\n".to_vec(), false),
            ("truncated", b"\x7fELF\x02\x01\x01".to_vec(), false),
        ];
        for (name, data, want) in cases {
            assert_eq!(is_static(&data), want, "{name}");
        }
    }
}
