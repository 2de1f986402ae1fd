//! The incident with a real Docker engine: dockerd runs in a network namespace of the
//! test's own (`nsenter --net`, every path in a temporary folder), a busybox container
//! publishes port 9091, a second namespace plays the remote host, and with
//! `ip_forward=0` in the engine's namespace the dropped request's sample must name the
//! container and its bridge.
//!
//! The machine's own namespace is never touched: docker0, Docker's iptables chains and
//! the forwarding switch all live in the test's namespace. The test installs nothing
//! (`cargo xtask setup` installs docker.io and busybox-static).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use dropgate_tests::{dropgate::Watch, is_root, may_run, netns::Netns, process::Guarded};

/// The engine's address as the remote namespace sees it.
const ENGINE_ADDR: &str = "10.233.0.1";
const REMOTE_ADDR: &str = "10.233.0.2";
const PUBLISHED_PORT: u16 = 9091;
const IMAGE: &str = "local/busybox:1";
const CONTAINER: &str = "web";
/// Bound on every docker CLI call (seconds, for coreutils `timeout`).
const DOCKER_CLI_TIMEOUT_S: &str = "60";

/// Whether `program` is an executable on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            use std::os::unix::fs::PermissionsExt as _;
            fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Whether `path` is an ELF executable without a program interpreter (statically linked):
/// the image has no libraries, so busybox must be busybox-static's.
fn is_static_elf(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(elf) = fs::read(path) else {
        return false;
    };
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // 64-bit little-endian ELF only (the machines are x86_64).
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        u32_at(phoff + i * usize::from(phentsize)).is_some_and(|p_type| p_type != PT_INTERP)
    })
}

const BUSYBOX: &str = "/bin/busybox";

fn docker_available() -> bool {
    on_path("dockerd")
        && on_path("docker")
        && on_path("timeout")
        && is_static_elf(Path::new(BUSYBOX))
}

/// `dockerd --version` says e.g. "Docker version 20.10.24+dfsg1, build 5d6db84".
fn dockerd_major_version() -> Option<u32> {
    let out = Command::new("dockerd").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(2)?;
    version.split('.').next()?.parse().ok()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A Docker engine in a namespace of its own, with every file in a temporary folder.
/// Dropping it removes the containers, stops dockerd (SIGTERM by its pid file), unmounts
/// what it left mounted, deletes the folder, and then (the `netns` field) the namespace.
struct DockerEngine {
    dir: PathBuf,
    socket: PathBuf,
    pidfile: PathBuf,
    daemon: Guarded,
    /// Declared last: deleted after dockerd has stopped.
    netns: Netns,
}

impl DockerEngine {
    fn start() -> Self {
        let netns = Netns::create("dock");
        let dir = std::env::temp_dir().join(format!("dropgate-docker-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the engine's temporary folder");
        let socket = dir.join("docker.sock");
        let pidfile = dir.join("dockerd.pid");
        // Our own daemon.json: the machine's /etc/docker/daemon.json must not change the
        // engine, and before Docker 25 the trust key goes to /etc/docker unless moved.
        let config = match dockerd_major_version() {
            Some(major) if major < 25 => format!(
                "{{\"deprecated-key-path\": \"{}\"}}",
                dir.join("key.json").display()
            ),
            _ => "{}".to_owned(),
        };
        fs::write(dir.join("daemon.json"), config).expect("write daemon.json");
        let log = fs::File::create(dir.join("dockerd.log")).expect("create dockerd.log");
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", netns.name))
            .arg("dockerd")
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log file"))
            .stderr(log);
        let daemon = Guarded::spawn(command, "dockerd");
        let mut engine = Self {
            dir,
            socket,
            pidfile,
            daemon,
            netns,
        };
        engine.wait_ready(Duration::from_secs(30));
        engine
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            assert!(
                self.daemon.is_running(),
                "dockerd exited while starting:\n{}",
                self.log_tail()
            );
            if self.socket.exists() && self.docker_output(&["version"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "dockerd did not answer within {timeout:?}:\n{}",
            self.log_tail()
        );
    }

    /// `docker -H <our socket> args...`, bounded in time, whatever the exit status.
    fn docker_output(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args([DOCKER_CLI_TIMEOUT_S, "docker", "-H", &self.host()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the docker CLI")
    }

    /// Like [`DockerEngine::docker_output`], panicking with the output if it fails.
    fn docker(&self, args: &[&str]) -> String {
        let out = self.docker_output(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}): {}\ndockerd log:\n{}",
            out.status,
            text(&out),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Imports an image of busybox-static and a web root, without any registry.
    fn import_busybox(&self) {
        let rootfs = self.dir.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).expect("create rootfs/bin");
        fs::create_dir_all(rootfs.join("www")).expect("create rootfs/www");
        fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox into the rootfs");
        fs::write(rootfs.join("www/index.html"), "hello from web\n").expect("write index.html");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C '{}' -c . | timeout {DOCKER_CLI_TIMEOUT_S} docker -H '{}' import - {IMAGE}",
                rootfs.display(),
                self.host()
            ))
            .output()
            .expect("run tar | docker import");
        assert!(out.status.success(), "docker import failed: {}", text(&out));
    }

    /// Starts the web container publishing `PUBLISHED_PORT`; its address.
    fn run_web(&self) -> String {
        let publish = format!("{PUBLISHED_PORT}:80");
        self.docker(&[
            "run",
            "-d",
            "--name",
            CONTAINER,
            "-p",
            &publish,
            IMAGE,
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ]);
        let ip = self.docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", CONTAINER]);
        assert!(
            ip.parse::<std::net::Ipv4Addr>().is_ok(),
            "the container has an IPv4 address on the default bridge: {ip:?}"
        );
        ip
    }

    /// Stops dockerd by its pid file: SIGTERM, then SIGKILL if it has not gone in time.
    fn stop_daemon(&mut self) {
        if let Some(pid) = fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.daemon.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.daemon.is_running() {
            eprintln!("dockerd did not stop on SIGTERM within 20 s: killing it");
        }
        // The Guarded daemon kills and reaps whatever is still running when dropped.
    }

    /// Lazily unmounts anything still mounted under our folder, deepest first.
    fn unmount_leftovers(&self) {
        let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let prefix = self.dir.to_string_lossy().into_owned();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|line| line.split_whitespace().nth(4))
            .filter(|point| point.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in mounts {
            let _ = Command::new("umount").args(["-l", point]).status();
        }
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        if self.daemon.is_running() {
            let ids = self.docker_output(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker_output(&args);
            }
        }
        self.stop_daemon();
        if self.daemon.is_running() {
            let _ = self.daemon.child.kill();
            let _ = self.daemon.child.wait();
        }
        self.unmount_leftovers();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The remote host: a namespace wired by veth to the engine's namespace.
fn wire_remote(engine: &DockerEngine) -> Netns {
    let remote = Netns::create("remote");
    // Created in the engine's namespace and moved, so no name appears in the machine's.
    engine.netns.sh(&format!(
        "ip link add vh-remote type veth peer name ve-remote netns {remote} && \
         ip addr add {ENGINE_ADDR}/24 dev vh-remote && ip link set vh-remote up",
        remote = remote.name
    ));
    remote.sh(&format!(
        "ip addr add {REMOTE_ADDR}/24 dev ve-remote && ip link set ve-remote up"
    ));
    remote
}

/// curl from `ns` to `addr:PUBLISHED_PORT`; the HTTP status, `None` when it failed.
fn curl(ns: &Netns, addr: &str, timeout_s: u32) -> Option<u16> {
    let out = ns.sh_output(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -m {timeout_s} http://{addr}:{PUBLISHED_PORT}/index.html"
    ));
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code != 0).then_some(code)
}

/// Sends failing requests from `remote` (a few, bounded) until `watch` prints a sample
/// to `want_dst` that names a container; that line.
fn sample_naming_a_container(watch: &Watch, remote: &Netns, want_dst: &str) -> String {
    // Each failed request drops its SYN and the retransmissions.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    for _ in 0..5 {
        assert_eq!(
            curl(remote, ENGINE_ADDR, 2),
            None,
            "forwarding off: the request from the remote host fails"
        );
        while let Some(line) = watch.next_line(Duration::from_millis(500)) {
            if line.contains(want_dst) && line.contains("\"container\"") {
                return line;
            }
            seen.push(line);
            if Instant::now() > deadline {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
    panic!(
        "no sample of the dropped request named a container; lines seen:\n{}",
        seen.join("\n")
    )
}

#[test]
fn a_dropped_request_to_a_published_port_names_the_container() {
    let test = "a_dropped_request_to_a_published_port_names_the_container";
    if !may_run(test, is_root(), "root (namespaces, iptables, BPF)")
        || !may_run(
            test,
            docker_available(),
            "dockerd, docker and a static /bin/busybox (apt-get install docker.io busybox-static, or cargo xtask setup)",
        )
    {
        return;
    }
    let started = Instant::now();
    let engine = DockerEngine::start();
    engine.import_busybox();
    let container_ip = engine.run_web();
    let remote = wire_remote(&engine);
    // dockerd turned forwarding on in its namespace: the published port answers.
    let mut answered = None;
    for _ in 0..10 {
        answered = curl(&remote, ENGINE_ADDR, 2);
        if answered.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        answered,
        Some(200),
        "with ip_forward=1 the remote host reaches the container"
    );

    engine.netns.sh("sysctl -qw net.ipv4.ip_forward=0");
    let watch = Watch::start(
        &[
            "--json",
            "--docker-host",
            &engine.host(),
            "--netns",
            &engine.netns.name,
            "--location",
            "ip_error",
        ],
        Duration::from_secs(2),
    );
    assert_eq!(
        curl(&engine.netns, ENGINE_ADDR, 2),
        Some(200),
        "from inside the engine's namespace the port still answers"
    );
    let want_dst = format!("\"dst\":\"{container_ip}\"");
    let line = sample_naming_a_container(&watch, &remote, &want_dst);
    eprintln!("docker e2e sample: {line}");
    for want in [
        want_dst,
        "\"dport\":80".to_owned(),
        format!("\"src\":\"{REMOTE_ADDR}\""),
        "\"interface\":\"vh-remote\"".to_owned(),
        "\"protocol\":\"tcp\"".to_owned(),
        format!("\"container\":\"{CONTAINER}\""),
        "\"bridge\":\"docker0\"".to_owned(),
        "\"network\":\"bridge\"".to_owned(),
    ] {
        assert!(
            line.contains(&want),
            "{want} expected in the sample: {line}"
        );
    }
    assert!(
        !line.contains("\"service\""),
        "a container started without compose has no service: {line}"
    );
    drop(watch);
    drop(remote);
    drop(engine);
    eprintln!(
        "docker e2e: container named in the drop sample; {:.1}s including engine start and cleanup",
        started.elapsed().as_secs_f64()
    );
}
