//! A busy, healthy host makes many drops and loses no traffic: the `class` label must
//! say so. In the test's own Docker-like namespaces, for 20 s: HTTP through the
//! DNAT-ed published port from the other "host", connections closed with unread data,
//! clients to closed TCP and UDP ports, unix-socket chatter, ping, and a tcpdump with a
//! filter. Then no `transit` drop may show in those namespaces, while the `local` and
//! `refused` drops are there and, where the kernel counts the same thing, exact.
//! With `ip_forward=0` the same traffic produces `transit` drops equal to the kernel's
//! InAddrErrors. `dropgate watch` without `--all` prints no `local` line meanwhile.

use std::time::Duration;

use dropgate_tests::{
    busy,
    dropgate::{DropgateRun, Watch},
    http::sample_sum,
    is_root, may_run,
    netns::DockerLikeHost,
    process::Guarded,
};

const DROPS: &str = "dropgate_packets_dropped_total";

/// Sum of the drops of `class` in any of the topology's namespaces.
fn class_drops(exposition: &str, topo: &DockerLikeHost, class: &str) -> f64 {
    [&topo.ext, &topo.host, &topo.ctr]
        .iter()
        .map(|ns| sample_sum(exposition, DROPS, &[("netns", &ns.name), ("class", class)]))
        .sum()
}

/// The series of `class` in the topology's namespaces, for failure messages.
fn class_lines(exposition: &str, topo: &DockerLikeHost, class: &str) -> String {
    exposition
        .lines()
        .filter(|l| l.starts_with(DROPS) && l.contains(&format!("class=\"{class}\"")))
        .filter(|l| {
            [&topo.ext, &topo.host, &topo.ctr]
                .iter()
                .any(|ns| l.contains(&format!("netns=\"{}\"", ns.name)))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How much the samples of `name` with `labels` grew between two scrapes.
fn grew(before: &str, after: &str, labels: &[(&str, &str)]) -> u64 {
    (sample_sum(after, DROPS, labels) - sample_sum(before, DROPS, labels)) as u64
}

/// Healthy: no transit drop at all; refused and local drops exact where the kernel
/// counts the same thing.
fn check_healthy(topo: &DockerLikeHost, before: &str, after: &str, kernel: &Kernel) {
    let transit = class_drops(after, topo, "transit") - class_drops(before, topo, "transit");
    // The per-class counts of the run, for the record (BENCHMARKS.md / closing notes).
    eprintln!(
        "busy run: transit {transit}, refused {}, local {}; {:?}",
        class_drops(after, topo, "refused") - class_drops(before, topo, "refused"),
        class_drops(after, topo, "local") - class_drops(before, topo, "local"),
        kernel.done
    );
    assert_eq!(
        transit as u64,
        0,
        "a healthy host loses no traffic, yet transit drops showed:\n{}",
        class_lines(after, topo, "transit")
    );
    // Refused: every datagram to the closed UDP port, exactly as the kernel counts it.
    assert_eq!(
        kernel.udp_no_ports, kernel.done.udp_to_closed,
        "Udp NoPorts"
    );
    let udp = [
        ("netns", topo.host.name.as_str()),
        ("class", "refused"),
        ("reason", "NO_SOCKET"),
        ("protocol", "udp"),
    ];
    assert_eq!(
        grew(before, after, &udp),
        kernel.udp_no_ports,
        "refused UDP drops must equal Udp NoPorts:\n{}",
        class_lines(after, topo, "refused")
    );
    let tcp = [
        ("netns", topo.host.name.as_str()),
        ("class", "refused"),
        ("reason", "NO_SOCKET"),
        ("protocol", "tcp"),
    ];
    assert!(
        grew(before, after, &tcp) >= 3,
        "SYNs to the closed TCP port are refused:\n{}",
        class_lines(after, topo, "refused")
    );
    // Local: every echo reply is seen a second time by the ping-socket lookup.
    assert_eq!(
        kernel.echo_replies, kernel.done.pings,
        "every ping was answered"
    );
    let ping = [
        ("netns", topo.ext.name.as_str()),
        ("class", "local"),
        ("location", "ping_rcv"),
    ];
    let ping_local = grew(before, after, &ping);
    assert_eq!(
        ping_local,
        kernel.echo_replies,
        "local ping_rcv drops must equal InEchoReps:\n{}",
        class_lines(after, topo, "local")
    );
    let local = class_drops(after, topo, "local") - class_drops(before, topo, "local");
    assert!(
        local as u64 > ping_local,
        "closed connections leave local drops too:\n{}",
        class_lines(after, topo, "local")
    );
}

/// The kernel's own counts over the busy run, next to what the script did.
struct Kernel {
    done: busy::Done,
    udp_no_ports: u64,
    echo_replies: u64,
}

/// watch without --all: refused lines yes, local lines never.
fn check_watch(mut watch: Watch) {
    let mut classes = Vec::new();
    while let Some(line) = watch.next_line(Duration::from_millis(200)) {
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("watch --json printed {line:?}: {err}"));
        classes.push(event["class"].as_str().unwrap_or("(none)").to_owned());
    }
    watch.stop("INT");
    assert!(
        !classes.iter().any(|c| c == "local"),
        "watch without --all printed local drops: {classes:?}"
    );
    assert!(
        classes.iter().any(|c| c == "refused"),
        "watch shows the refused drops, each with its class: {classes:?}"
    );
}

#[test]
fn a_busy_healthy_host_has_no_transit_drops() {
    if !may_run(
        "a_busy_healthy_host_has_no_transit_drops",
        is_root(),
        "root (namespaces, iptables, BPF)",
    ) {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    assert_eq!(
        topo.curl_from_ext("/", 3),
        Some(200),
        "the published port must answer with forwarding on"
    );
    // A capture with a filter, as an admin would leave running.
    let mut tcpdump = std::process::Command::new("ip");
    tcpdump
        .args(["netns", "exec", &topo.host.name, "tcpdump", "-i"])
        .args([
            DockerLikeHost::HOST_UPLINK,
            "-w",
            "/dev/null",
            "udp port 53",
        ])
        .stderr(std::process::Stdio::null());
    let _tcpdump = Guarded::spawn(tcpdump, "tcpdump");

    let dropgate = DropgateRun::start(&[]);
    let watch = Watch::start(
        &["--json", "--netns", &topo.host.name],
        Duration::from_secs(2),
    );
    let udp_before = topo.host.snmp("Udp", "NoPorts");
    let echo_before = topo.ext.snmp("Icmp", "InEchoReps");
    let before = dropgate.scrape();
    let done = busy::traffic_for(&topo, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let after = dropgate.scrape();
    let kernel = Kernel {
        done,
        udp_no_ports: topo.host.snmp("Udp", "NoPorts") - udp_before,
        echo_replies: topo.ext.snmp("Icmp", "InEchoReps") - echo_before,
    };
    check_healthy(&topo, &before, &after, &kernel);
    check_watch(watch);

    // The same traffic with forwarding off: the transit series appear, as many as the
    // kernel's InAddrErrors.
    topo.set_forwarding(false);
    let addr_errors_before = topo.host.snmp("Ip", "InAddrErrors");
    let transit_before = class_drops(&dropgate.scrape(), &topo, "transit");
    busy::traffic_for(&topo, Duration::from_secs(5));
    // Let in-flight retransmissions land before both counts are read.
    std::thread::sleep(Duration::from_secs(3));
    let addr_errors = topo.host.snmp("Ip", "InAddrErrors") - addr_errors_before;
    let after = dropgate.scrape();
    let transit = class_drops(&after, &topo, "transit") - transit_before;
    assert!(
        addr_errors > 0,
        "forwarding off must drop the published-port traffic"
    );
    assert_eq!(
        transit as u64,
        addr_errors,
        "transit drops must equal the kernel's InAddrErrors:\n{}",
        class_lines(&after, &topo, "transit")
    );
}
