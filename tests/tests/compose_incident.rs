//! The incident itself, with real Docker and docker-compose: a gateway service on a
//! bridge network with port 9091 published to the container's port 80, the Docker host
//! `H` (dockerd in a namespace of the test's own) and a remote host `R` wired to it by
//! veth. With `net.ipv4.ip_forward = 0` in `H`, pushes from `R` hang while pushes from
//! inside `H` succeed; `dropgate diagnose` on `H` must name the container, the published
//! port, the forwarding setting and the fix, and after the fix exit 0 while the remote
//! push reaches the gateway.
//!
//! The gateway in the container is `dropgate gateway` itself: the image is busybox-static
//! imported offline, and the dynamically linked binary runs with the host's `/lib`,
//! `/lib64` and `/usr/lib` mounted read-only. Traffic stays inside the test's namespaces;
//! every wait is bounded; the compose project, the containers, dockerd, the namespaces
//! and the temporary folder are removed by Drop guards, also when the test fails.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use dropgate_tests::{
    docker::{docker_available, on_path, ComposeProject, DockerEngine, ENGINE_ADDR, IMAGE, UPLINK},
    dropgate_bin, is_root, may_run,
    netns::Netns,
    process::Guarded,
};

const PUBLISHED_PORT: u16 = 9091;
const SERVICE: &str = "pushgateway";
/// Where the compose file mounts the binary under test inside the container.
const BIN_IN_CONTAINER: &str = "/usr/local/bin/dropgate";

/// The incident's compose file, with our gateway where the Pushgateway was.
fn compose_file(dropgate: &std::path::Path) -> String {
    format!(
        r#"# Shaped like the incident's: a gateway on a bridge network, port 9091 published.
version: "3.7"
services:
  {SERVICE}:
    image: {IMAGE}
    command: ["{BIN_IN_CONTAINER}", "gateway", "--web.listen-address", "0.0.0.0:80"]
    ports:
      - "{PUBLISHED_PORT}:80"
    volumes:
      # The image holds only busybox: the binary uses the host's libraries.
      - "/lib:/lib:ro"
      - "/lib64:/lib64:ro"
      - "/usr/lib:/usr/lib:ro"
      - "{bin}:{BIN_IN_CONTAINER}:ro"
    networks:
      - monitoring
networks:
  monitoring:
    driver: bridge
"#,
        bin = dropgate.display()
    )
}

/// Runs `curl -s -m <timeout_s> args...` in `ns`; the HTTP status and the body, `None`
/// when no answer came (a timeout, a refused connection).
fn curl(ns: &Netns, timeout_s: u32, args: &str) -> Option<(u16, String)> {
    let out = ns.sh_output(&format!(
        "curl -s -m {timeout_s} -w '\\n%{{http_code}}' {args}"
    ));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (out.status.success() && code != 0).then(|| (code, body.to_owned()))
}

/// Pushes `<metric> 1` with PUT to `addr:9091/metrics/job/<job>` from `ns`; the status.
fn push(ns: &Netns, addr: &str, job: &str, metric: &str, timeout_s: u32) -> Option<u16> {
    let out = ns.sh_output(&format!(
        "printf '{metric} 1\\n' | curl -s -o /dev/null -w '%{{http_code}}' -m {timeout_s} \
         -X PUT --data-binary @- http://{addr}:{PUBLISHED_PORT}/metrics/job/{job}"
    ));
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code != 0).then_some(code)
}

/// `GET /metrics` of the gateway from `ns`; the body, `None` when no answer came.
fn scrape(ns: &Netns, addr: &str) -> Option<String> {
    curl(ns, 3, &format!("http://{addr}:{PUBLISHED_PORT}/metrics"))
        .filter(|(code, _)| *code == 200)
        .map(|(_, body)| body)
}

/// What `docker inspect` tells of the service's container: its name, its address on
/// the project's network, and that network's bridge (`br-<first 12 digits of its id>`).
struct Container {
    name: String,
    ip: String,
    bridge: String,
}

fn inspect(engine: &DockerEngine, compose: &ComposeProject) -> Container {
    let id = compose.container_id(SERVICE);
    let name = engine
        .docker(&["inspect", "-f", "{{.Name}}", &id])
        .trim_start_matches('/')
        .to_owned();
    let ip = engine.docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &id,
    ]);
    assert!(
        ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "the container has one IPv4 address on the project's network: {ip:?}"
    );
    let network = format!("{}_monitoring", compose.name);
    let network_id = engine.docker(&["network", "inspect", "-f", "{{.Id}}", &network]);
    let bridge = format!("br-{}", network_id.get(..12).expect("a network id"));
    Container { name, ip, bridge }
}

/// Waits until the gateway in the container answers `/-/ready` from inside `H`.
fn wait_gateway_ready(engine: &DockerEngine, compose: &ComposeProject) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let ready = curl(
            &engine.netns,
            2,
            &format!("http://{ENGINE_ADDR}:{PUBLISHED_PORT}/-/ready"),
        );
        if ready.is_some_and(|(code, _)| code == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let logs = compose.compose_output(&["logs", "--no-color", SERVICE]);
    let ps = compose.compose_output(&["ps"]);
    panic!(
        "the gateway in the container did not become ready within 30 s\nps:\n{}\nlogs:\n{}",
        dropgate_tests::docker::text(&ps),
        dropgate_tests::docker::text(&logs)
    );
}

/// Runs `dropgate diagnose` on `H` for 6 s; `traffic` runs once its trace is attached.
/// The exit code and the report.
fn diagnose(engine: &DockerEngine, traffic: impl FnOnce()) -> (Option<i32>, String) {
    diagnose_with(engine, &[], traffic)
}

/// [`diagnose`] with `extra` arguments.
fn diagnose_with(
    engine: &DockerEngine,
    extra: &[&str],
    traffic: impl FnOnce(),
) -> (Option<i32>, String) {
    let mut command = Command::new(dropgate_bin());
    command
        .args([
            "diagnose",
            "--duration",
            "6s",
            "--netns",
            &engine.netns.name,
        ])
        .args(["--docker-host", &engine.host()])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut process = Guarded::spawn(command, "dropgate diagnose");
    let mut stdout = process.child.stdout.take().expect("piped stdout");
    let stderr = process.child.stderr.take().expect("piped stderr");
    let (tx, stderr_lines) = mpsc::channel();
    let stderr_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    // The window starts when the tracer says it is attached; send the traffic after it.
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match stderr_lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let attached = line.contains("tracing kernel drops");
                log.push(line);
                if attached {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    assert!(
        log.iter().any(|l| l.contains("tracing kernel drops")),
        "dropgate diagnose attached its trace within 20 s; its log:\n{}",
        log.join("\n")
    );
    // diagnose takes its baseline of the trace's counts just after that line.
    std::thread::sleep(Duration::from_millis(500));
    traffic();
    let deadline = Instant::now() + Duration::from_mins(1);
    let status = loop {
        if let Ok(Some(status)) = process.child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.is_some(),
        "dropgate diagnose --duration 6s ended within 60 s"
    );
    let text = stdout_reader.join().expect("the stdout reader ends");
    let _ = stderr_reader.join();
    log.extend(stderr_lines.try_iter());
    eprintln!(
        "--- dropgate diagnose ({status:?}) ---\n{text}--- its log ---\n{}",
        log.join("\n")
    );
    (status.and_then(|s| s.code()), text)
}

/// The incident's report: the verdict names the ingress interface, the forwarding
/// setting, the published port, the bridge, the container and its compose service; the
/// sysctl fix and Docker's DNAT rule are there too.
fn assert_names_container_port_setting_and_fix(report: &str, container: &Container) {
    let verdict = report.lines().next().expect("a verdict line");
    let want_verdict = format!(
        "PROBLEM [forwarding_off]: forwarding is off on {UPLINK} (net.ipv4.ip_forward = 0); \
         published port {PUBLISHED_PORT} -> {ip}:80 (bridge {bridge}, container {name}, \
         compose service {SERVICE}) dropped",
        ip = container.ip,
        bridge = container.bridge,
        name = container.name,
    );
    assert!(
        verdict.starts_with(&want_verdict),
        "the verdict names the interface, the forwarding setting, the published port, \
         the bridge, the container and its compose service\n want: {want_verdict}...\n  got: {verdict}"
    );
    assert!(
        report
            .lines()
            .any(|l| l == "  fix: sysctl -w net.ipv4.ip_forward=1"),
        "the report gives the sysctl fix:\n{report}"
    );
    assert!(
        report.contains("  evidence: DNAT: ")
            && report.contains(&format!("--dport {PUBLISHED_PORT}")),
        "Docker's DNAT rule for the published port is evidence:\n{report}"
    );
}

/// `GET /metrics` from the remote host shows its push (job `x`) and the one made from
/// the Docker host while forwarding was off (job `local`).
fn assert_both_pushes_arrived(remote: &Netns) {
    let metrics = scrape(remote, ENGINE_ADDR).expect("GET /metrics from the remote host answers");
    let pushed = metrics
        .lines()
        .find(|l| l.starts_with("pushed_from_remote{"))
        .unwrap_or_else(|| panic!("the remote push is in the gateway's /metrics:\n{metrics}"));
    assert!(
        pushed.contains("job=\"x\"") && pushed.ends_with(" 1"),
        "the remote push, in group job=x: {pushed}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pushed_from_docker_host{") && l.contains("job=\"local\"")),
        "the local push made while forwarding was off is there too:\n{metrics}"
    );
}

/// `diagnose --probe` with no other traffic: exit 1, the probe's SYN dropped in
/// `ip_error`, the container and compose service named, and the same verdict.
fn assert_the_probe_alone_names_it(engine: &DockerEngine, target: &str, container: &Container) {
    let (code, report) = diagnose_with(engine, &["--probe", target], || {});
    assert_eq!(
        code,
        Some(1),
        "the probe finds the problem alone:\n{report}"
    );
    let probe = report
        .lines()
        .find(|l| l.starts_with("probe "))
        .unwrap_or_else(|| panic!("a probe line:\n{report}"));
    assert!(
        probe.starts_with(&format!(
            "probe {target}/tcp (published -> {ip}:80, container {name}, compose service {SERVICE}): TCP SYN",
            ip = container.ip,
            name = container.name
        )) && probe.contains("UNREACHABLE"),
        "the probe names the container and its compose service: {probe}"
    );
    assert!(
        report.contains("dropped at ip_error (IP_INADDRERRORS)"),
        "{report}"
    );
    assert_names_container_port_setting_and_fix(
        report
            .split_once("\nPROBLEM")
            .map(|(_, rest)| format!("PROBLEM{rest}"))
            .as_deref()
            .unwrap_or(&report),
        container,
    );
}

/// After the fix `diagnose --probe` answers: reachable, with the gateway's HTTP status.
fn assert_the_probe_gets_through(engine: &DockerEngine, target: &str) {
    let (code, report) = diagnose_with(engine, &["--probe", target], || {});
    assert_eq!(
        code,
        Some(0),
        "the probe gets through after the fix:\n{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with(&format!("probe {target}/tcp"))
                && l.contains("reachable: answered in")
                && l.contains("HTTP GET / answered 200")),
        "{report}"
    );
}

#[test]
fn the_compose_incident_is_named_by_diagnose_and_fixed_by_its_sysctl() {
    let test = "the_compose_incident_is_named_by_diagnose_and_fixed_by_its_sysctl";
    if !may_run(test, is_root(), "root (namespaces, iptables, BPF)")
        || !may_run(
            test,
            docker_available() && on_path("docker-compose"),
            "dockerd, docker, docker-compose and a static /bin/busybox (apt-get install docker.io docker-compose busybox-static, or cargo xtask setup)",
        )
    {
        return;
    }
    let started = Instant::now();
    let dropgate: PathBuf = dropgate_bin()
        .canonicalize()
        .expect("the dropgate binary under test exists (build it, or set DROPGATE_BIN)");

    // Declared in this order so that they are dropped in the reverse one: the remote
    // host, then `docker-compose down`, then dockerd and its namespace.
    let engine = DockerEngine::start("compose");
    engine.import_busybox();
    let compose = ComposeProject::up(
        &engine,
        &format!("dgincident{}", std::process::id()),
        &compose_file(&dropgate),
    );
    let remote = engine.wire_remote();
    wait_gateway_ready(&engine, &compose);
    let container = inspect(&engine, &compose);
    eprintln!(
        "compose up: {} at {} on {}, {:.1}s after start",
        container.name,
        container.ip,
        container.bridge,
        started.elapsed().as_secs_f64()
    );

    // The data centre where it worked: dockerd turned forwarding on in its namespace.
    assert_eq!(
        engine.netns.sh("sysctl -n net.ipv4.ip_forward").trim(),
        "1",
        "dockerd turns forwarding on when it creates a bridge network"
    );
    assert_eq!(
        push(&remote, ENGINE_ADDR, "x", "pushed_before_the_reset", 3),
        Some(200),
        "with forwarding on, a push from the remote host reaches the gateway"
    );

    // The other data centre: a sysctl reload turned forwarding off.
    engine.netns.sh("sysctl -qw net.ipv4.ip_forward=0");
    assert_eq!(
        push(&remote, ENGINE_ADDR, "x", "pushed_from_remote", 3),
        None,
        "forwarding off: the push from the remote host hangs"
    );
    assert_eq!(
        push(
            &engine.netns,
            ENGINE_ADDR,
            "local",
            "pushed_from_docker_host",
            3
        ),
        Some(200),
        "forwarding off: a push from the Docker host itself still succeeds"
    );

    let (code, report) = diagnose(&engine, || {
        assert_eq!(
            push(&remote, ENGINE_ADDR, "x", "pushed_from_remote", 3),
            None,
            "during the diagnosis the push from the remote host still hangs"
        );
    });
    assert_eq!(code, Some(1), "diagnose finds a problem:\n{report}");
    assert_names_container_port_setting_and_fix(&report, &container);

    // The same without the remote host: the probe's own SYN shows it.
    let target = format!("{ENGINE_ADDR}:{PUBLISHED_PORT}");
    assert_the_probe_alone_names_it(&engine, &target, &container);

    // The fix the report gives.
    engine.netns.sh("sysctl -w net.ipv4.ip_forward=1");
    let (code, report) = diagnose(&engine, || {
        assert_eq!(
            push(&remote, ENGINE_ADDR, "x", "pushed_from_remote", 3),
            Some(200),
            "after the fix the push from the remote host succeeds"
        );
    });
    assert_eq!(code, Some(0), "healthy after the fix:\n{report}");
    assert!(report.starts_with("no problem found"), "{report}");
    assert_the_probe_gets_through(&engine, &target);

    assert_both_pushes_arrived(&remote);

    drop(remote);
    drop(compose);
    drop(engine);
    eprintln!(
        "compose incident e2e: named, fixed and pushed through in {:.1}s including engine start and cleanup",
        started.elapsed().as_secs_f64()
    );
}
