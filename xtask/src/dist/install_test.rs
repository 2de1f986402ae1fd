//! `cargo xtask test-install`: the amd64 `.deb` on a freshly bootstrapped Debian 12
//! booted with systemd as PID 1, as an SRE would meet it.
//!
//! debootstrap (minbase, plus systemd, iproute2, curl, bpftool) is cached under
//! `target/dist/install-test/rootfs`; each run copies the package and a script into it,
//! packs it as the initramfs (`rdinit=/lib/systemd/systemd`: no disk drivers needed) and
//! boots the matrix's cached Debian 12 kernel under qemu (TCG). A oneshot unit runs the
//! script: install, the unit active, `/metrics`, the incident's drop (`ip_error`,
//! forwarding off, in a namespace of its own: `dropgate selftest`) counted by the
//! service, stop (no kfree_skb program left), purge (no file left). The console is kept
//! in `console.log` beside the root.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};

use super::dist_dir;
use crate::cmd;

/// Runs in the guest; one `=== ` line per result, read back by [`check_console`].
const SCRIPT: &str = r#"#!/bin/bash
exec > /dev/ttyS0 2>&1
echo "=== pid1: $(cat /proc/1/comm)"
dpkg -i /root/dropgate.deb
for i in $(seq 1 100); do curl -sf -o /dev/null http://127.0.0.1:9091/-/ready && break; sleep 0.2; done
echo "=== active: $(systemctl is-active dropgate)"
systemctl status dropgate --no-pager -l | head -12
curl -s http://127.0.0.1:9091/metrics | grep '^dropgate_build_info' | sed 's/^/=== metrics: /'
dropgate selftest
sleep 1
curl -s http://127.0.0.1:9091/metrics | grep '^dropgate_packets_dropped_total' | grep ip_error | sed 's/^/=== incident: /'
systemctl stop dropgate
echo "=== programs after stop: $(bpftool prog show | grep -c kfree_skb)"
dpkg --purge dropgate
left=0
for f in /usr/bin/dropgate /lib/systemd/system/dropgate.service /etc/default/dropgate /var/lib/dropgate /usr/share/dropgate /usr/share/doc/dropgate; do
  [ -e "$f" ] && { echo "left: $f"; left=$((left+1)); }
done
echo "=== files after purge: $left"
echo "=== units after purge: $(systemctl list-unit-files dropgate.service --no-legend | wc -l)"
echo "=== done"
systemctl poweroff -f
"#;

const UNIT: &str = "[Unit]\nDescription=dropgate package install test\n\
[Service]\nType=oneshot\nExecStart=/root/install-test.sh\n\
[Install]\nWantedBy=multi-user.target\n";

/// Boots the guest with `deb` installed by its script and checks what it printed.
pub fn test_install(deb: &Path, vmlinuz: &Path) -> Result<()> {
    let dir = dist_dir().join("install-test");
    let root = dir.join("rootfs");
    if !root.join("usr/sbin/bpftool").exists() {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&dir)?;
        eprintln!(
            "xtask: debootstrapping Debian 12 into {} (cached)",
            root.display()
        );
        cmd::run(
            Command::new("debootstrap")
                .args(["--variant=minbase"])
                .arg("--include=systemd,systemd-sysv,dbus,iproute2,curl,bpftool")
                .args(["bookworm"])
                .arg(&root)
                .arg("http://deb.debian.org/debian")
                .stdout(Stdio::null()),
        )
        .context("debootstrap failed: is deb.debian.org reachable?")?;
    }
    fs::copy(deb, root.join("root/dropgate.deb"))?;
    fs::write(root.join("root/install-test.sh"), SCRIPT)?;
    cmd::run(
        Command::new("chmod")
            .arg("755")
            .arg(root.join("root/install-test.sh")),
    )?;
    let units = root.join("etc/systemd/system");
    fs::write(units.join("install-test.service"), UNIT)?;
    let wants = units.join("multi-user.target.wants/install-test.service");
    let _ = fs::remove_file(&wants);
    std::os::unix::fs::symlink("/etc/systemd/system/install-test.service", &wants)?;

    let initrd = dir.join("rootfs.cpio.gz");
    cmd::run(
        Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
            .arg(&initrd)
            .current_dir(&root),
    )
    .context("packing the root as an initramfs (cpio, gzip)")?;
    let console = dir.join("console.log");
    eprintln!("xtask: booting Debian 12 with systemd under qemu (about 2 minutes under TCG)");
    let out = Command::new("timeout")
        .arg(Duration::from_mins(6).as_secs().to_string())
        .args([
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "2G",
        ])
        .args([
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-kernel",
        ])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 rdinit=/lib/systemd/systemd panic=-1 quiet systemd.show_status=0",
        ])
        .stdin(Stdio::null())
        .output()
        .context("cannot run qemu-system-x86_64")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    fs::write(&console, &text)?;
    check_console(&text).with_context(|| format!("console in {}", console.display()))
}

/// The results the script printed, each as it must be.
fn check_console(console: &str) -> Result<()> {
    let results: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("=== "))
        .collect();
    let has = |want: &dyn Fn(&str) -> bool| results.iter().any(|r| want(r));
    for (what, ok) in [
        ("systemd is PID 1", has(&|r| r == "pid1: systemd")),
        (
            "the unit is active after install",
            has(&|r| r == "active: active"),
        ),
        (
            "/metrics answers with dropgate_build_info",
            has(&|r| r.starts_with("metrics: dropgate_build_info{")),
        ),
        (
            "the incident's drops are counted by the service",
            has(&|r| {
                r.starts_with("incident: ")
                    && r.contains("location=\"ip_error\"")
                    && r.contains("reason=\"IP_INADDRERRORS\"")
            }),
        ),
        (
            "no kfree_skb program left after stop",
            has(&|r| r == "programs after stop: 0"),
        ),
        (
            "no file left after purge",
            has(&|r| r == "files after purge: 0"),
        ),
        (
            "no unit left after purge",
            has(&|r| r == "units after purge: 0"),
        ),
        ("the script ran to its end", has(&|r| r == "done")),
    ] {
        ensure!(ok, "install test: not shown: {what}; results: {results:?}");
    }
    for line in &results {
        eprintln!("xtask: install test: {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_console;

    #[test]
    fn every_result_is_required() {
        let good = "=== pid1: systemd\n=== active: active\n\
                    === metrics: dropgate_build_info{version=\"0.1.0\"} 1\n\
                    === incident: dropgate_packets_dropped_total{location=\"ip_error\",reason=\"IP_INADDRERRORS\"} 100\n\
                    === programs after stop: 0\n=== files after purge: 0\n\
                    === units after purge: 0\n=== done\n";
        assert!(check_console(good).is_ok());
        for (name, bad) in [
            ("inactive", good.replace("active: active", "active: failed")),
            ("attached", good.replace("after stop: 0", "after stop: 1")),
            (
                "files",
                good.replace("purge: 0\n=== units", "purge: 2\n=== units"),
            ),
            ("cut short", good.replace("=== done\n", "")),
        ] {
            assert!(check_console(&bad).is_err(), "{name}");
        }
    }
}
