//! A real Docker engine for end-to-end tests, in a network namespace of the test's own.
//!
//! dockerd is started with `nsenter --net` (not `ip netns exec`, which remounts /sys and
//! hides the cgroup mounts), with its data root, exec root, pid file, socket and config
//! in a temporary folder. docker0, Docker's iptables chains and the forwarding switch
//! then live in the test's namespace only; the machine's own is never touched. Images
//! come from busybox-static through `docker import`, without any registry. Dropping the
//! engine removes its containers, stops dockerd by its pid file, unmounts what it left
//! and deletes the folder and the namespace, also when the test fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{netns::Netns, process::Guarded};

/// The statically linked busybox the images are made of (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";
/// The image [`DockerEngine::import_busybox`] makes.
pub const IMAGE: &str = "local/busybox:1";
/// The engine's address on the link to the remote host ([`DockerEngine::wire_remote`]).
pub const ENGINE_ADDR: &str = "10.233.0.1";
/// The remote host's address.
pub const REMOTE_ADDR: &str = "10.233.0.2";
/// The engine's end of that link: the ingress interface of the remote host's traffic.
pub const UPLINK: &str = "vh-remote";
/// Bound on every docker and docker-compose call (seconds, for coreutils `timeout`).
pub const CLI_TIMEOUT_S: &str = "60";

/// Whether `program` is an executable on PATH.
#[must_use]
pub fn on_path(program: &str) -> bool {
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
#[must_use]
pub fn is_static_elf(path: &Path) -> bool {
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

/// Whether an engine can be started here: dockerd, the docker CLI, coreutils `timeout`
/// and a static busybox to build the image from.
#[must_use]
pub fn docker_available() -> bool {
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

/// Standard output and standard error of a finished command, for failure messages.
#[must_use]
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A Docker engine in a namespace of its own, with every file in a temporary folder.
/// Dropping it removes the containers, stops dockerd (SIGTERM by its pid file), unmounts
/// what it left mounted, deletes the folder, and then (the `netns` field) the namespace.
pub struct DockerEngine {
    dir: PathBuf,
    socket: PathBuf,
    pidfile: PathBuf,
    daemon: Guarded,
    /// The engine's network namespace. Declared last: deleted after dockerd has stopped.
    pub netns: Netns,
}

impl DockerEngine {
    /// Starts dockerd in a new namespace `dg-<role>-<pid>` and waits until it answers.
    pub fn start(role: &str) -> Self {
        Self::start_with_options(role, &[])
    }

    /// [`DockerEngine::start`] with `options` (`"key": value` JSON members) added to its
    /// daemon.json, e.g. `"ipv6": true`.
    pub fn start_with_options(role: &str, options: &[&str]) -> Self {
        let netns = Netns::create(role);
        let dir = std::env::temp_dir().join(format!("dropgate-{role}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the engine's temporary folder");
        let socket = dir.join("docker.sock");
        let pidfile = dir.join("dockerd.pid");
        // Our own daemon.json: the machine's /etc/docker/daemon.json must not change the
        // engine, and before Docker 25 the trust key goes to /etc/docker unless moved.
        let mut members: Vec<String> = options.iter().map(|o| (*o).to_owned()).collect();
        if dockerd_major_version().is_some_and(|major| major < 25) {
            members.push(format!(
                "\"deprecated-key-path\": \"{}\"",
                dir.join("key.json").display()
            ));
        }
        let config = format!("{{{}}}", members.join(", "));
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

    /// The engine's API address, `unix://<socket>` (for `-H`, `DOCKER_HOST` and
    /// `dropgate --docker-host`).
    #[must_use]
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The engine's API socket.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The engine's exec root; its `netns/` holds the containers' namespaces (what
    /// `/run/docker/netns` is for a system's dockerd).
    #[must_use]
    pub fn exec_root(&self) -> PathBuf {
        self.dir.join("exec")
    }

    /// The engine's temporary folder; removed with the engine.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last lines of dockerd's log, for failure messages.
    #[must_use]
    pub fn log_tail(&self) -> String {
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
    #[must_use]
    pub fn docker_output(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args([CLI_TIMEOUT_S, "docker", "-H", &self.host()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the docker CLI")
    }

    /// Like [`DockerEngine::docker_output`], panicking with the output if it fails; the
    /// trimmed standard output.
    pub fn docker(&self, args: &[&str]) -> String {
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

    /// Imports [`IMAGE`]: busybox-static and a web root `/www`, without any registry.
    pub fn import_busybox(&self) {
        let rootfs = self.dir.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).expect("create rootfs/bin");
        fs::create_dir_all(rootfs.join("www")).expect("create rootfs/www");
        fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox into the rootfs");
        fs::write(rootfs.join("www/index.html"), "hello from web\n").expect("write index.html");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C '{}' -c . | timeout {CLI_TIMEOUT_S} docker -H '{}' import - {IMAGE}",
                rootfs.display(),
                self.host()
            ))
            .output()
            .expect("run tar | docker import");
        assert!(out.status.success(), "docker import failed: {}", text(&out));
    }

    /// The remote host: a namespace `dg-remote-<pid>` wired by veth to the engine's, the
    /// engine at [`ENGINE_ADDR`] on [`UPLINK`], the remote host at [`REMOTE_ADDR`].
    #[must_use]
    pub fn wire_remote(&self) -> Netns {
        let remote = Netns::create("remote");
        // Created in the engine's namespace and moved, so no name appears in the machine's.
        self.netns.sh(&format!(
            "ip link add {UPLINK} type veth peer name ve-remote netns {remote} && \
             ip addr add {ENGINE_ADDR}/24 dev {UPLINK} && ip link set {UPLINK} up",
            remote = remote.name
        ));
        remote.sh(&format!(
            "ip addr add {REMOTE_ADDR}/24 dev ve-remote && ip link set ve-remote up"
        ));
        remote
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
            let _ = self.daemon.child.kill();
            let _ = self.daemon.child.wait();
        }
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
        self.unmount_leftovers();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A `docker-compose` project on a [`DockerEngine`]: `up -d` on start, `down` on drop.
pub struct ComposeProject<'e> {
    engine: &'e DockerEngine,
    /// Compose files, later ones overriding earlier ones (`-f` each).
    files: Vec<PathBuf>,
    /// The project name (`-p`): prefix of its containers' and networks' names.
    pub name: String,
}

impl<'e> ComposeProject<'e> {
    /// Writes `yaml` to the engine's folder and runs `docker-compose up -d` as project
    /// `name`; panics with compose's and dockerd's output if that fails.
    pub fn up(engine: &'e DockerEngine, name: &str, yaml: &str) -> Self {
        let file = engine.dir.join(format!("{name}.yml"));
        fs::write(&file, yaml).expect("write the compose file");
        Self::up_files(engine, name, vec![file])
    }

    /// Runs `docker-compose -f <file>... up -d` as project `name`, each file overriding
    /// the ones before it; panics with compose's and dockerd's output if that fails.
    pub fn up_files(engine: &'e DockerEngine, name: &str, files: Vec<PathBuf>) -> Self {
        let project = Self {
            engine,
            files,
            name: name.to_owned(),
        };
        let out = project.compose_output(&["up", "-d"]);
        assert!(
            out.status.success(),
            "docker-compose up failed ({}): {}\ndockerd log:\n{}",
            out.status,
            text(&out),
            engine.log_tail()
        );
        project
    }

    /// `docker-compose -p <name> -f <file>... args...` against our engine, bounded in time,
    /// whatever the exit status.
    #[must_use]
    pub fn compose_output(&self, args: &[&str]) -> Output {
        let mut command = Command::new("timeout");
        command
            .arg(CLI_TIMEOUT_S)
            .arg("docker-compose")
            .arg("-p")
            .arg(&self.name);
        for file in &self.files {
            command.arg("-f").arg(file);
        }
        command
            .args(args)
            .env("DOCKER_HOST", self.engine.host())
            // No compose file or project name of the caller's may leak in.
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME")
            .current_dir(&self.engine.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run docker-compose")
    }

    /// The id of `service`'s container.
    #[must_use]
    pub fn container_id(&self, service: &str) -> String {
        let out = self.compose_output(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && !id.is_empty(),
            "docker-compose ps -q {service}: {}",
            text(&out)
        );
        id
    }
}

impl Drop for ComposeProject<'_> {
    fn drop(&mut self) {
        let out = self.compose_output(&["down", "--volumes", "--timeout", "2"]);
        if !out.status.success() {
            // The engine's own drop still removes the containers and the namespace.
            eprintln!("docker-compose down failed: {}", text(&out));
        }
    }
}
