//! The persistence file against a hostile or failing disk, on the real binary:
//! a full disk (a small tmpfs, mounted in a private mount namespace of the gateway's
//! own, so the machine's mounts are untouched) makes saves fail, and they are retried
//! and counted until space comes back, with no push in between; a file whose checksum
//! holds but whose times overflow is quarantined, not a crash at every start.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dropgate_tests::{
    dropgate_bin,
    gateway::{loopback_addr, Request, TempDir},
    http, is_root, may_run,
    process::{run_bounded, Guarded},
};

const FAILURES: &str = "dropgate_gateway_persistence_failures_total";

/// The value of an unlabelled sample in a text exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let reply = Request::new("GET", "/metrics")
        .send(addr)
        .expect("scrape the gateway");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.text()
}

/// Runs `command` inside the mount namespace of `pid` (where the tmpfs is).
fn in_mounts_of(pid: u32, args: &[&str]) -> std::process::Output {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--mount=/proc/{pid}/ns/mnt"))
        .arg("--")
        .args(args);
    run_bounded(command, Duration::from_secs(10), "nsenter")
}

#[test]
fn a_full_disk_is_retried_and_counted_until_space_comes_back() {
    if !may_run(
        "a_full_disk_is_retried_and_counted_until_space_comes_back",
        is_root(),
        "root (a tmpfs in a private mount namespace)",
    ) {
        return;
    }
    let dir = TempDir::new("full-disk");
    let mount = dir.join("state");
    std::fs::create_dir(&mount).expect("mount point");
    let addr = loopback_addr();
    // unshare and sh exec in place: the child's pid is the gateway's.
    let script = r#"mount -t tmpfs -o size=64k,mode=0700 "dropgate-test-$$" "$1" || exit 97
dd if=/dev/zero of="$1/filler" bs=4k 2>/dev/null
exec "$2" gateway --web.listen-address "$3" --persistence.file "$1/metrics.db" --persistence.interval 100ms"#;
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&mount)
        .arg(dropgate_bin())
        .arg(addr.to_string())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null());
    let mut gateway = Guarded::spawn(command, "dropgate gateway on a full tmpfs");
    assert!(
        http::wait_ok(addr, "/-/ready", Duration::from_secs(20)),
        "the gateway did not start (running: {})",
        gateway.is_running()
    );
    let pid = gateway.child.id();
    assert_eq!(
        sample(&scrape(addr), FAILURES),
        Some(0.0),
        "exposed from the start"
    );

    let pushed = Request::new("PUT", "/metrics/job/kept")
        .body("kept_value 42\n")
        .send(addr)
        .expect("push");
    assert_eq!(pushed.status, 200, "{}", pushed.text());
    // Failures keep coming with no further push: the save is retried.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut failures = 0.0;
    while failures < 3.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        failures = sample(&scrape(addr), FAILURES).expect("the counter is exposed");
    }
    assert!(failures >= 3.0, "only {failures} failed saves seen in 20 s");
    let listing = in_mounts_of(pid, &["ls", "-a", &mount.display().to_string()]);
    let names = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(
        !names.contains("metrics.db"),
        "nothing saved on a full disk: {names}"
    );
    assert!(
        !names.contains("in_progress"),
        "no temp file left behind: {names}"
    );

    // Space comes back; the next retry saves, still without a push.
    let filler = mount.join("filler").display().to_string();
    assert!(in_mounts_of(pid, &["rm", &filler]).status.success());
    let store = mount.join("metrics.db").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saved = Vec::new();
    while saved.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        saved = in_mounts_of(pid, &["cat", &store]).stdout;
    }
    assert!(saved.starts_with(b"DGSTORE\0"), "saved once space was back");
    assert!(
        saved
            .windows(b"kept_value".len())
            .any(|w| w == b"kept_value"),
        "the pushed group is in the file"
    );
    let settled = sample(&scrape(addr), FAILURES).expect("counter");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sample(&scrape(addr), FAILURES),
        Some(settled),
        "no failures once saved"
    );
    let status = gateway
        .stop("TERM", Duration::from_secs(15))
        .expect("exits on SIGTERM");
    assert!(status.success(), "a clean stop after recovering: {status}");
}

/// Writes `bytes` with the file's magic, version 1 and a valid CRC around them.
fn with_valid_checksum(body: &[u8]) -> Vec<u8> {
    let mut file = b"DGSTORE\0".to_vec();
    file.extend_from_slice(&1u32.to_le_bytes());
    file.extend_from_slice(body);
    let crc = crc32(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    file
}

/// CRC-32 (IEEE), bit by bit: the test states the format on its own.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One group `{job="x"}` with one family `m` stored at `seconds` since 1970.
fn one_group_at(seconds: u64) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&u32::try_from(bytes.len()).expect("small").to_le_bytes());
        out.extend_from_slice(bytes);
    }
    // MetricFamily { name: "m", type: GAUGE, metric: [{ gauge: { value: 1 } }] }
    let family = [
        0x0a, 0x01, b'm', 0x18, 0x01, 0x22, 0x0b, 0x12, 0x09, 0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f,
    ];
    let mut record = 1u32.to_le_bytes().to_vec();
    put(&mut record, b"job");
    put(&mut record, b"x");
    record.extend_from_slice(&1u32.to_le_bytes());
    record.extend_from_slice(&seconds.to_le_bytes());
    record.extend_from_slice(&0u32.to_le_bytes());
    put(&mut record, &family);
    let mut body = 1u64.to_le_bytes().to_vec();
    put(&mut body, &record);
    body
}

fn start_on(file: &Path) -> (Guarded, std::net::SocketAddr) {
    let addr = loopback_addr();
    let mut command = Command::new(dropgate_bin());
    command
        .args(["gateway", "--web.listen-address", &addr.to_string()])
        .arg(format!("--persistence.file={}", file.display()))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut process = Guarded::spawn(command, "dropgate gateway");
    let ready = http::wait_ok(addr, "/-/ready", Duration::from_secs(20));
    assert!(ready, "did not start (running: {})", process.is_running());
    (process, addr)
}

#[test]
fn a_file_with_an_overflowing_time_is_quarantined_on_the_first_start() {
    let dir = TempDir::new("overflow-file");
    let file = dir.join("metrics.db");
    // The control: the same file with an ordinary time is restored.
    std::fs::write(&file, with_valid_checksum(&one_group_at(1_700_000_000))).expect("write");
    let (mut gateway, addr) = start_on(&file);
    assert!(
        scrape(addr).contains("m{instance=\"\",job=\"x\"} 1\n"),
        "restored"
    );
    assert!(gateway
        .stop("TERM", Duration::from_secs(15))
        .is_some_and(|s| s.success()));

    let hostile = with_valid_checksum(&one_group_at(1 << 63));
    std::fs::write(&file, &hostile).expect("write");
    for start in 0..2 {
        let (mut gateway, addr) = start_on(&file);
        assert!(
            !scrape(addr).contains("job=\"x\""),
            "start {start}: starts empty"
        );
        let status = gateway
            .stop("TERM", Duration::from_secs(15))
            .expect("exits on SIGTERM");
        assert!(status.success(), "start {start}: {status}");
    }
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "quarantined once, on the first start");
    assert_eq!(
        std::fs::read(kept[0].path()).expect("kept"),
        hostile,
        "kept as it was"
    );
}
