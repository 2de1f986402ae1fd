//! The incident with a real Docker engine: dockerd runs in a network namespace of the
//! test's own (`nsenter --net`, every path in a temporary folder), a busybox container
//! publishes port 9091, a second namespace plays the remote host, and with
//! `ip_forward=0` in the engine's namespace the dropped request's sample must name the
//! container and its bridge.
//!
//! The machine's own namespace is never touched: docker0, Docker's iptables chains and
//! the forwarding switch all live in the test's namespace. The test installs nothing
//! (`cargo xtask setup` installs docker.io and busybox-static).
//!
//! Renaming the container must show in the samples within seconds: dropgate asks the
//! engine again when its event stream tells of a change, not only every minute.

use std::time::{Duration, Instant};

use dropgate_tests::{
    docker::{docker_available, DockerEngine, ENGINE_ADDR, IMAGE, REMOTE_ADDR, UPLINK},
    dropgate::Watch,
    is_root, may_run,
    netns::Netns,
};

const PUBLISHED_PORT: u16 = 9091;
const CONTAINER: &str = "web";
const RENAMED: &str = "web-renamed";
/// A rename must reach the samples well before the minute between refreshes that
/// nothing asked for.
const RENAME_SEEN_WITHIN: Duration = Duration::from_secs(10);

/// Starts the web container publishing `PUBLISHED_PORT`; its address.
fn run_web(engine: &DockerEngine) -> String {
    let publish = format!("{PUBLISHED_PORT}:80");
    engine.docker(&[
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
    let ip = engine.docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", CONTAINER]);
    assert!(
        ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "the container has an IPv4 address on the default bridge: {ip:?}"
    );
    ip
}

/// curl from `ns` to `addr:PUBLISHED_PORT`; the HTTP status, `None` when it failed.
fn curl(ns: &Netns, addr: &str, timeout_s: u32) -> Option<u16> {
    let out = ns.sh_output(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -m {timeout_s} http://{addr}:{PUBLISHED_PORT}/index.html"
    ));
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code != 0).then_some(code)
}

/// Sends failing requests from `remote` (bounded) until `watch` prints a sample to
/// `want_dst` that names container `container` (any container: `None`); that line.
fn sample_naming_a_container(
    watch: &Watch,
    remote: &Netns,
    want_dst: &str,
    container: Option<&str>,
    within: Duration,
) -> String {
    let names = |line: &str| match container {
        Some(name) => line.contains(&format!("\"container\":\"{name}\"")),
        None => line.contains("\"container\""),
    };
    // Each failed request drops its SYN and the retransmissions.
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    for _ in 0..10 {
        assert_eq!(
            curl(remote, ENGINE_ADDR, 2),
            None,
            "forwarding off: the request from the remote host fails"
        );
        while let Some(line) = watch.next_line(Duration::from_millis(500)) {
            if line.contains(want_dst) && names(&line) {
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
        "no sample of the dropped request named container {container:?} within {within:?}; \
         lines seen:\n{}",
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
    let engine = DockerEngine::start("dock");
    engine.import_busybox();
    let container_ip = run_web(&engine);
    let remote = engine.wire_remote();
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
    let line = sample_naming_a_container(&watch, &remote, &want_dst, None, Duration::from_secs(30));
    eprintln!("docker e2e sample: {line}");
    for want in [
        want_dst,
        "\"dport\":80".to_owned(),
        format!("\"src\":\"{REMOTE_ADDR}\""),
        format!("\"interface\":\"{UPLINK}\""),
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

    // Same address, new name: no lookup misses, so only the engine's event says to ask.
    engine.docker(&["rename", CONTAINER, RENAMED]);
    let renamed = Instant::now();
    let line = sample_naming_a_container(
        &watch,
        &remote,
        &format!("\"dst\":\"{container_ip}\""),
        Some(RENAMED),
        RENAME_SEEN_WITHIN,
    );
    eprintln!(
        "docker e2e: the new name in a sample {:.1}s after the rename: {line}",
        renamed.elapsed().as_secs_f64()
    );
    drop(watch);
    drop(remote);
    drop(engine);
    eprintln!(
        "docker e2e: container named in the drop sample; {:.1}s including engine start and cleanup",
        started.elapsed().as_secs_f64()
    );
}
