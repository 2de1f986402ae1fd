//! The operations examples shipped in `tracer/dist` work as written: the docker-compose
//! file runs `dropgate run` with host networking and its few capabilities on a real
//! Docker engine, and the systemd unit verifies and its capability set is enough for
//! `dropgate run` to trace, name the dropping function, serve and persist.
//!
//! Both run in namespaces of the test's own (the engine's, or a plain one for the
//! unit), so the gateway's :9091 never meets the machine's; every wait is bounded and
//! Drop guards remove what was made, also when a test fails.

use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use dropgate_tests::tempdir::TempDir;
use dropgate_tests::{
    docker::{docker_available, on_path, ComposeProject, DockerEngine, IMAGE},
    dropgate_bin, is_root, may_run,
    netns::Netns,
    process::Guarded,
};

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer/dist");
const GATEWAY: &str = "http://127.0.0.1:9091";

/// Capabilities `dropgate run` keeps once attached (CAP_DAC_READ_SEARCH, CAP_NET_ADMIN,
/// CAP_SYS_PTRACE, CAP_SYS_ADMIN), as `/proc/<pid>/status` shows them.
const RUNTIME_CAPS: &str = "0000000000281004";

/// `curl -s -m 3` in `ns`; the body when the answer was 2xx.
fn curl(ns: &Netns, args: &str) -> Option<String> {
    let out = ns.sh_output(&format!("curl -sf -m 3 {args}"));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until the gateway in `ns` answers `/-/ready`; panics with `diagnostics()` when
/// it does not within 30 s or `exited()` says the process is gone.
fn wait_ready(
    ns: &Netns,
    what: &str,
    mut exited: impl FnMut() -> bool,
    diagnostics: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !exited() {
        if curl(ns, &format!("{GATEWAY}/-/ready")).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "{what} did not answer /-/ready (within 30 s, while running):\n{}",
        diagnostics()
    );
}

/// Pushes a metric, makes the kernel drop a datagram (UDP to a closed loopback port:
/// NO_SOCKET in `__udp4_lib_rcv`) and waits until `/metrics` shows both; the exposition.
fn push_and_see_a_drop(ns: &Netns) -> String {
    let pushed = ns.sh_output(&format!(
        "printf 'ops_example_pushed 1\\n' | curl -sf -m 3 -X PUT --data-binary @- \
         {GATEWAY}/metrics/job/ops"
    ));
    assert!(
        pushed.status.success(),
        "the push is accepted: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        ns.sh("bash -c 'echo drop-me > /dev/udp/127.0.0.1/19997'");
        std::thread::sleep(Duration::from_millis(300));
        metrics = curl(ns, &format!("{GATEWAY}/metrics")).unwrap_or_default();
        let named_drop = metrics.lines().any(|l| {
            l.starts_with("dropgate_packets_dropped_total{")
                && l.contains("location=\"__udp4_lib_rcv\"")
                && l.contains("reason=\"NO_SOCKET\"")
        });
        if named_drop && metrics.contains("ops_example_pushed{") {
            return metrics;
        }
    }
    panic!("no pushed metric and named NO_SOCKET drop in /metrics within 10 s:\n{metrics}");
}

/// The effective capabilities of process `pid`, as hex.
fn effective_caps(pid: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read its status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("a CapEff line")
        .trim()
        .to_owned()
}

#[test]
fn the_compose_example_runs_dropgate_with_host_networking_and_few_capabilities() {
    let test = "the_compose_example_runs_dropgate_with_host_networking_and_few_capabilities";
    if !may_run(test, is_root(), "root (namespaces, BPF)")
        || !may_run(
            test,
            docker_available() && on_path("docker-compose"),
            "dockerd, docker, docker-compose and a static /bin/busybox (cargo xtask setup)",
        )
    {
        return;
    }
    let dropgate = dropgate_bin()
        .canonicalize()
        .expect("the dropgate binary under test exists (build it, or set DROPGATE_BIN)");
    let engine = DockerEngine::start("opscompose");
    engine.import_busybox();
    // Only what cannot be had here changes: the image (no registry: busybox and the
    // host's libraries instead of debian:bookworm-slim), the binary's path, and the
    // engine's socket and netns folder in place of the system's.
    let override_file = engine.dir().join("override.yml");
    fs::write(
        &override_file,
        format!(
            "version: \"3.7\"\nservices:\n  dropgate:\n    image: {IMAGE}\n    volumes:\n\
             \x20     - {bin}:/usr/local/bin/dropgate:ro\n\
             \x20     - /lib:/lib:ro\n      - /lib64:/lib64:ro\n      - /usr/lib:/usr/lib:ro\n\
             \x20     - {netns}:/run/docker/netns:ro\n\
             \x20     - {socket}:/var/run/docker.sock:ro\n",
            bin = dropgate.display(),
            netns = engine.exec_root().join("netns").display(),
            socket = engine.socket().display(),
        ),
    )
    .expect("write the override");
    fs::create_dir_all(engine.exec_root().join("netns")).expect("create the netns folder");
    let compose = ComposeProject::up_files(
        &engine,
        &format!("dgops{}", std::process::id()),
        vec![Path::new(DIST).join("docker-compose.yml"), override_file],
    );
    // network_mode: host puts the gateway in the engine's namespace, on its :9091.
    wait_ready(
        &engine.netns,
        "dropgate in the compose example",
        || false,
        || dropgate_tests::docker::text(&compose.compose_output(&["logs", "--no-color"])),
    );
    push_and_see_a_drop(&engine.netns);

    let id = compose.container_id("dropgate");
    let pid = engine.docker(&["inspect", "-f", "{{.State.Pid}}", &id]);
    assert_eq!(
        effective_caps(&pid),
        RUNTIME_CAPS,
        "once attached, only the runtime capabilities are left"
    );
    let stop = compose.compose_output(&["stop", "-t", "30"]);
    assert!(
        stop.status.success(),
        "docker-compose stop: {}",
        dropgate_tests::docker::text(&stop)
    );
    assert_eq!(
        engine.docker(&["inspect", "-f", "{{.State.ExitCode}}", &id]),
        "0",
        "SIGTERM ends dropgate cleanly"
    );
    let logs = dropgate_tests::docker::text(&compose.compose_output(&["logs", "--no-color"]));
    assert!(
        logs.contains("metrics persisted on shutdown"),
        "the pushed group is written to the volume on stop:\n{logs}"
    );
}

/// The unit's `key=` lines.
fn unit_values<'u>(unit: &'u str, key: &str) -> Vec<&'u str> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// The flags the unit runs with: its `DROPGATE_ARGS` default, which the packaged
/// /etc/default/dropgate must repeat (so a package install and a bare unit agree).
fn unit_flags(unit: &str) -> String {
    let defaults = fs::read_to_string(Path::new(DIST).join("dropgate.default"))
        .expect("read tracer/dist/dropgate.default");
    let in_defaults: Vec<&str> = defaults
        .lines()
        .filter_map(|l| l.strip_prefix("DROPGATE_ARGS="))
        .map(|v| v.trim_matches('"'))
        .collect();
    let in_unit: Vec<&str> = unit_values(unit, "Environment")
        .iter()
        .filter_map(|v| v.trim_matches('"').strip_prefix("DROPGATE_ARGS="))
        .collect();
    assert_eq!(in_unit.len(), 1, "the unit sets DROPGATE_ARGS once");
    assert_eq!(
        in_defaults, in_unit,
        "dropgate.default repeats the unit's flags"
    );
    in_unit[0].to_owned()
}

#[test]
fn the_systemd_unit_verifies_and_its_capabilities_are_enough() {
    let test = "the_systemd_unit_verifies_and_its_capabilities_are_enough";
    if !may_run(test, is_root(), "root (namespaces, BPF)")
        || !may_run(
            test,
            on_path("systemd-analyze") && on_path("setpriv"),
            "systemd-analyze (systemd) and setpriv (util-linux)",
        )
    {
        return;
    }
    let dropgate = dropgate_bin()
        .canonicalize()
        .expect("the dropgate binary under test exists (build it, or set DROPGATE_BIN)");
    let unit = fs::read_to_string(Path::new(DIST).join("dropgate.service"))
        .expect("read tracer/dist/dropgate.service");
    let temp = TempDir::new("unit");

    // `verify` checks that ExecStart's binary exists: point it at the one under test.
    let exec_start = unit_values(&unit, "ExecStart");
    assert_eq!(
        exec_start,
        ["/usr/bin/dropgate run $DROPGATE_ARGS"],
        "one ExecStart"
    );
    let flags = unit_flags(&unit);
    let mut args = vec!["run"];
    args.extend(flags.split_whitespace());
    let copy = temp.join("dropgate.service");
    fs::write(
        &copy,
        unit.replace(
            "ExecStart=/usr/bin/dropgate ",
            &format!("ExecStart={} ", dropgate.display()),
        ),
    )
    .expect("write the unit's copy");
    let verify = Command::new("timeout")
        // --man=no: the man page the unit names comes with the package.
        .args(["60", "systemd-analyze", "verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze verify");
    assert!(
        verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify finds nothing to say: {}",
        dropgate_tests::docker::text(&verify)
    );

    // What the unit grants, simulated: the bounding set, no new privileges, and the
    // state directory (here a temporary folder) for the persistence file.
    let bounding: Vec<String> = unit_values(&unit, "CapabilityBoundingSet")
        .iter()
        .flat_map(|line| line.split_whitespace())
        .map(|cap| {
            format!(
                "+{}",
                cap.strip_prefix("CAP_")
                    .expect("capability names start with CAP_")
                    .to_lowercase()
            )
        })
        .collect();
    assert!(!bounding.is_empty(), "the unit bounds the capabilities");
    assert_eq!(unit_values(&unit, "StateDirectory"), ["dropgate"]);
    let state = temp.join("state");
    fs::create_dir_all(&state).expect("create the state folder");
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("/var/lib/dropgate", &state.to_string_lossy()))
        .collect();
    let ns = Netns::create("unit");
    let mut command = ns.command("setpriv");
    command
        .arg("--no-new-privs")
        .arg("--inh-caps=-all")
        .arg(format!("--bounding-set=-all,{}", bounding.join(",")))
        .arg("--")
        .arg(&dropgate)
        .args(&args)
        .args(["--persistence.interval", "1s"]);
    let mut service = Guarded::spawn(command, "dropgate run as the unit runs it");
    wait_ready(
        &ns,
        "dropgate run under the unit's capabilities",
        || !service.is_running(),
        || "its log is on this test's stderr".to_owned(),
    );
    push_and_see_a_drop(&ns);
    let status = service
        .stop("TERM", Duration::from_secs(20))
        .expect("dropgate stops on SIGTERM within 20 s");
    assert!(
        status.success(),
        "SIGTERM ends dropgate cleanly: {status:?}"
    );
    let persisted = fs::read(state.join("metrics.db")).expect("the persistence file is there");
    assert!(
        String::from_utf8_lossy(&persisted).contains("ops_example_pushed"),
        "the pushed group is in the state directory's persistence file"
    );
}

/// The image of `cargo xtask dist` (`DROPGATE_IMAGE`, which `cargo xtask test` sets),
/// loaded into a real engine and run with the flags the README documents: it attaches,
/// names a drop in the engine's namespace, serves `/metrics` and stops cleanly.
#[test]
fn the_dist_image_runs_with_the_documented_docker_flags() {
    let test = "the_dist_image_runs_with_the_documented_docker_flags";
    let image = std::env::var_os("DROPGATE_IMAGE").map(std::path::PathBuf::from);
    if !may_run(test, is_root(), "root (namespaces, BPF)")
        || !may_run(
            test,
            docker_available(),
            "dockerd and docker (cargo xtask setup)",
        )
        || !may_run(
            test,
            image.as_ref().is_some_and(|i| i.is_file()),
            "DROPGATE_IMAGE, the image tar of `cargo xtask dist` (cargo xtask test sets it)",
        )
    {
        return;
    }
    let image = image.expect("checked above");
    let engine = DockerEngine::start("image");
    let loaded = engine.docker(&["load", "-i", &image.to_string_lossy()]);
    let tag = loaded
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image: "))
        .unwrap_or_else(|| panic!("docker load names the image it loaded: {loaded}"))
        .trim()
        .to_owned();
    fs::create_dir_all(engine.exec_root().join("netns")).expect("create the netns folder");
    let name = format!("dgimage{}", std::process::id());
    let volume = |from: &Path, to: &str| format!("{}:{to}:ro", from.display());
    // README's `docker run` line; only the engine's own socket and netns folder stand in
    // for the system's, and the persistence volume is the engine's anonymous one.
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--pid",
        "host",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "SYS_ADMIN",
        "--cap-add",
        "SYSLOG",
        "--cap-add",
        "SYS_PTRACE",
        "--cap-add",
        "DAC_READ_SEARCH",
        "--cap-add",
        "NET_ADMIN",
        "--security-opt",
        "apparmor=unconfined",
        "-v",
        "/sys/kernel/btf:/sys/kernel/btf:ro",
        "-v",
        "/sys/kernel/tracing:/sys/kernel/tracing:ro",
        "-v",
        "/var/lib/dropgate",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend([
        "-v".to_owned(),
        volume(&engine.exec_root().join("netns"), "/run/docker/netns"),
        "-v".to_owned(),
        volume(engine.socket(), "/var/run/docker.sock"),
        tag,
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    engine.docker(&refs);
    wait_ready(
        &engine.netns,
        "the dist image under docker run",
        || false,
        || engine.docker(&["logs", &name]),
    );
    let metrics = push_and_see_a_drop(&engine.netns);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dropgate_build_info{") && l.ends_with(" 1")),
        "the image's binary says which build it is:\n{metrics}"
    );
    engine.docker(&["stop", "-t", "30", &name]);
    assert_eq!(
        engine.docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]),
        "0",
        "SIGTERM ends dropgate cleanly: {}",
        engine.docker(&["logs", &name])
    );
}

/// Stderr of `dropgate run` for its first seconds, started with `RUST_LOG=rust_log`.
fn run_log(rust_log: &str) -> String {
    let port = dropgate_tests::http::free_port();
    let out = Command::new("timeout")
        .args(["5", &dropgate_bin().to_string_lossy()])
        .args(["run", "--docker-host=", "--web.listen-address"])
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", rust_log)
        .output()
        .expect("run dropgate");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn rust_log_debug_shows_debug_lines_and_info_does_not() {
    if !may_run(
        "rust_log_debug_shows_debug_lines_and_info_does_not",
        is_root(),
        "root (dropgate run loads its probe)",
    ) {
        return;
    }
    // The loader says at debug level how it fitted the probe to this kernel.
    let debug = run_log("debug");
    assert!(
        debug.contains(" DEBUG tracer::loader"),
        "RUST_LOG=debug (the README's replacement for --log.level=debug) shows no debug line:\n{debug}"
    );
    let scoped = run_log("info,tracer::loader=debug");
    assert!(
        scoped.contains(" DEBUG tracer::loader") && !scoped.contains(" DEBUG tracer::privileges"),
        "RUST_LOG=info,tracer::loader=debug:\n{scoped}"
    );
    let info = run_log("info");
    assert!(
        info.contains(" INFO ") && !info.contains(" DEBUG "),
        "RUST_LOG=info:\n{info}"
    );
}
