//! The incident in its IPv6 form, on a dual-stack Docker-like host built in namespaces:
//! IPv6 forwarding off globally or only for the ingress interface, each family's
//! finding alone, ip6tables and nft `inet` FORWARD drops quoted by rule, and a healthy
//! dual-stack host. The drops `ip6_forward` makes are counted exactly against the
//! namespace's own `Ip6InAddrErrors`.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use dropgate_tests::{
    diagnose::{diagnose, line_starting, only_finding, privileged, verdicts, RunInNamespace},
    docker::{docker_available, on_path, ComposeProject, DockerEngine, IMAGE, UPLINK},
    dropgate::{run_diagnose, DropgateRun, Watch},
    is_root, may_run,
    netns::{DockerLikeHost, Netns},
    process::Guarded,
};

/// The host's address on its uplink, as `ext` sees it.
const HOST6: &str = "fd31:10::1";
const EXT6: &str = "fd31:10::2";
const BRIDGE6: &str = "fd31:231::1";
const CTR6: &str = "fd31:231::2";

/// Adds IPv6 to the topology the way Docker's IPv6 networks look: a ULA subnet on the
/// bridge, the container routed through it, and the published port DNAT-ed by
/// ip6tables too. Forwarding of both families is left off, as `build` leaves IPv4.
/// Starts a dual-stack HTTP service on the container's port 80.
fn dual_stack() -> DockerLikeHost {
    let topo = DockerLikeHost::build();
    // `nodad`: the addresses are usable at once, so no test waits on duplicate
    // address detection.
    topo.host.sh(&format!(
        "ip addr add {HOST6}/64 dev {up} nodad && ip addr add {BRIDGE6}/64 dev br0 nodad && \
         sysctl -qw net.ipv6.conf.all.forwarding=0 && \
         ip6tables -t nat -A PREROUTING -p tcp --dport {p} -j DNAT --to-destination [{CTR6}]:{cp}",
        up = DockerLikeHost::HOST_UPLINK,
        p = DockerLikeHost::PUBLISHED_PORT,
        cp = DockerLikeHost::CTR_PORT,
    ));
    topo.ext.sh(&format!(
        "ip addr add {EXT6}/64 dev ve-ext nodad && ip -6 route add default via {HOST6}"
    ));
    topo.ctr.sh(&format!(
        "ip addr add {CTR6}/64 dev eth0 nodad && ip -6 route add default via {BRIDGE6}"
    ));
    // `::` takes both families (IPV6_V6ONLY is off by default).
    topo.ctr
        .sh("(/usr/bin/python3 -m http.server 80 --bind :: >/dev/null 2>&1 &) ; sleep 0.5");
    topo
}

fn set_ipv6_forwarding(topo: &DockerLikeHost, on: bool) {
    topo.host.sh(&format!(
        "sysctl -qw net.ipv6.conf.all.forwarding={}",
        u8::from(on)
    ));
}

/// curl from `ext` to the host's IPv6 address and published port.
fn curl6_from_ext(topo: &DockerLikeHost, timeout_s: u32) -> Option<u16> {
    let out = topo.ext.sh_output(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -m {timeout_s} http://[{HOST6}]:{}/",
        DockerLikeHost::PUBLISHED_PORT
    ));
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code != 0).then_some(code)
}

/// `count` pings from `ext` straight to the container (routed, no NAT); how many were
/// answered.
fn ping6_ctr(topo: &DockerLikeHost, count: u32) -> u32 {
    let out = topo
        .ext
        .sh_output(&format!("ping -6 -n -c {count} -i 0.2 -W 1 {CTR6}"));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" packets transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// The host's `Ip6InAddrErrors` (`/proc/net/snmp6` of its namespace).
fn ip6_in_addr_errors(ns: &Netns) -> u64 {
    ns.sh("cat /proc/net/snmp6")
        .lines()
        .find_map(|l| l.strip_prefix("Ip6InAddrErrors"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Ip6InAddrErrors in /proc/net/snmp6")
}

#[test]
fn ipv6_forwarding_off_is_named_and_its_drops_counted_exactly() {
    if !privileged("ipv6_forwarding_off_is_named_and_its_drops_counted_exactly") {
        return;
    }
    let topo = dual_stack();
    topo.set_forwarding(true);
    let (out, text) = diagnose(&topo.host, &[], || {
        assert_eq!(
            topo.curl_from_ext("/", 3),
            Some(200),
            "IPv4 forwarding is on: the published port answers over IPv4"
        );
        assert_eq!(curl6_from_ext(&topo, 2), None, "and hangs over IPv6");
    });
    assert_eq!(out.code(), Some(1), "{text}");
    let found = verdicts(&text);
    assert_eq!(found.len(), 1, "the IPv6 finding alone:\n{text}");
    assert!(
        found[0].starts_with("PROBLEM [ipv6_forwarding_off]: IPv6 forwarding is off on vh-ext (net.ipv6.conf.all.forwarding = 0); published port 9091 -> [fd31:231::2]:80 (bridge br0)"),
        "names IPv6 forwarding, the ingress interface, the port and the bridge:\n{text}"
    );
    assert!(
        text.contains("evidence: /proc/net/snmp6 Ip6InAddrErrors rose by")
            && text.contains("in ip6_forward (IP_INADDRERRORS) on vh-ext")
            && text.contains("fix: sysctl -w net.ipv6.conf.all.forwarding=1")
            && text.contains("/etc/sysctl.d/99-dropgate-ipv6-forwarding.conf")
            && text.contains("network_mode: host"),
        "evidence and fix:\n{text}"
    );

    // The counts: every packet ip6_forward refused, and nothing else, as the kernel's
    // own counter of the namespace says.
    let dropgate = DropgateRun::start(&[]);
    let host = topo.host.name.as_str();
    let refused = |d: &DropgateRun| {
        d.value(
            "dropgate_packets_dropped_total",
            &[
                ("netns", host),
                ("location", "ip6_forward"),
                ("reason", "IP_INADDRERRORS"),
            ],
        ) as u64
    };
    let before_traced = refused(&dropgate);
    let before_kernel = ip6_in_addr_errors(&topo.host);
    assert_eq!(ping6_ctr(&topo, 7), 0, "no ping is forwarded");
    assert_eq!(curl6_from_ext(&topo, 1), None);
    let kernel = ip6_in_addr_errors(&topo.host) - before_kernel;
    assert!(
        kernel >= 7,
        "the kernel counted the refused packets: {kernel}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut traced = refused(&dropgate) - before_traced;
    while traced < kernel && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        traced = refused(&dropgate) - before_traced;
    }
    assert_eq!(
        traced, kernel,
        "ip6_forward drops counted exactly against the Ip6InAddrErrors delta"
    );
    let exposition = dropgate.scrape();
    assert!(
        exposition.contains(&format!(
            "dropgate_ipv6_forwarding{{interface=\"all\",netns=\"{host}\"}} 0"
        )),
        "net.ipv6.conf.all.forwarding = 0 in the metric:\n{exposition}"
    );
    assert!(
        exposition.contains(&format!(
            "dropgate_ipv4_forwarding{{interface=\"all\",netns=\"{host}\"}} 1"
        )),
        "IPv4 stays on:\n{exposition}"
    );
    // A flip is seen when it happens (NETCONF event), not at a poll.
    set_ipv6_forwarding(&topo, true);
    let on_line = format!("dropgate_ipv6_forwarding{{interface=\"all\",netns=\"{host}\"}} 1");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut on = false;
    while !on && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        on = dropgate.scrape().contains(&on_line);
    }
    assert!(on, "the flip to 1 reaches the metric");
    assert_eq!(curl6_from_ext(&topo, 3), Some(200), "and IPv6 works again");
}

/// Kernels from 6.17 forward what arrives on an interface with `force_forwarding = 1`
/// while `all.forwarding = 0`: IPv6 forwarding is then off for the other interfaces only.
#[test]
fn ipv6_forwarding_off_only_for_the_ingress_interface() {
    if !privileged("ipv6_forwarding_off_only_for_the_ingress_interface") {
        return;
    }
    let topo = dual_stack();
    topo.set_forwarding(true);
    let force = topo
        .host
        .sh_output("test -e /proc/sys/net/ipv6/conf/br0/force_forwarding");
    if !may_run(
        "ipv6_forwarding_off_only_for_the_ingress_interface",
        force.status.success(),
        "a kernel with net.ipv6.conf.<if>.force_forwarding (6.17 or later)",
    ) {
        return;
    }
    // The container side forwards its replies; what arrives on the uplink is refused.
    topo.host
        .sh("sysctl -qw net.ipv6.conf.br0.force_forwarding=1");
    let (out, text) = diagnose(&topo.host, &[], || {
        assert_eq!(curl6_from_ext(&topo, 2), None, "the uplink's traffic dies");
        assert_eq!(ping6_ctr(&topo, 3), 0);
    });
    assert_eq!(out.code(), Some(1), "{text}");
    let found = verdicts(&text);
    assert_eq!(found.len(), 1, "{text}");
    assert!(
        found[0].starts_with("PROBLEM [ipv6_forwarding_off_interface]: IPv6 forwarding is off for traffic arriving on vh-ext (net.ipv6.conf.all.forwarding = 0 and net.ipv6.conf.vh-ext.force_forwarding = 0)"),
        "{text}"
    );
    assert!(
        text.contains("fix: sysctl -w net.ipv6.conf.vh-ext.force_forwarding=1")
            && text.contains("fix: sysctl -w net.ipv6.conf.all.forwarding=1")
            && text.contains("br0 forward with force_forwarding = 1"),
        "{text}"
    );
}

#[test]
fn each_family_off_alone_gives_its_own_finding_alone() {
    if !privileged("each_family_off_alone_gives_its_own_finding_alone") {
        return;
    }
    let topo = dual_stack();
    // IPv6 on, IPv4 off.
    set_ipv6_forwarding(&topo, true);
    topo.set_forwarding(false);
    let (out, text) = diagnose(&topo.host, &[], || {
        assert_eq!(curl6_from_ext(&topo, 3), Some(200), "IPv6 passes");
        assert_eq!(topo.curl_from_ext("/", 2), None, "IPv4 hangs");
    });
    assert_eq!(out.code(), Some(1), "{text}");
    let found = verdicts(&text);
    assert_eq!(found.len(), 1, "{text}");
    assert!(
        found[0].starts_with(
            "PROBLEM [forwarding_off]: forwarding is off on vh-ext (net.ipv4.ip_forward = 0)"
        ),
        "{text}"
    );
    assert!(!text.contains("ipv6"), "no IPv6 finding or fix:\n{text}");

    // IPv4 on, IPv6 off.
    set_ipv6_forwarding(&topo, false);
    topo.set_forwarding(true);
    let (out, text) = diagnose(&topo.host, &[], || {
        assert_eq!(topo.curl_from_ext("/", 3), Some(200), "IPv4 passes");
        assert_eq!(curl6_from_ext(&topo, 2), None, "IPv6 hangs");
    });
    assert_eq!(out.code(), Some(1), "{text}");
    let found = verdicts(&text);
    assert_eq!(found.len(), 1, "{text}");
    assert!(
        found[0].starts_with("PROBLEM [ipv6_forwarding_off]:"),
        "{text}"
    );
    assert!(
        !text.contains("net.ipv4.ip_forward"),
        "no IPv4 finding or fix:\n{text}"
    );
}

#[test]
fn healthy_dual_stack_host_has_no_finding() {
    if !privileged("healthy_dual_stack_host_has_no_finding") {
        return;
    }
    let topo = dual_stack();
    topo.set_forwarding(true);
    set_ipv6_forwarding(&topo, true);
    // The uplink's own IPv6 `forwarding` off only makes it behave as a host there: the
    // kernel still forwards what arrives on it, so it must be no finding.
    topo.host.sh(&format!(
        "sysctl -qw net.ipv6.conf.{}.forwarding=0",
        DockerLikeHost::HOST_UPLINK
    ));
    let (out, text) = diagnose(&topo.host, &[], || {
        for _ in 0..2 {
            assert_eq!(topo.curl_from_ext("/", 3), Some(200), "IPv4 passes");
            assert_eq!(curl6_from_ext(&topo, 3), Some(200), "IPv6 passes");
        }
        assert_eq!(ping6_ctr(&topo, 3), 3, "routed IPv6 passes");
    });
    assert_eq!(out.code(), Some(0), "{text}");
    assert!(text.starts_with("no problem found"), "{text}");
}

/// Adds a FORWARD drop of IPv6 web traffic with `tool` (`ip6tables-nft` or
/// `ip6tables-legacy`) and checks that the finding quotes it with its comment.
fn ip6tables_rule_is_quoted(tool: &str) {
    let topo = dual_stack();
    topo.set_forwarding(true);
    set_ipv6_forwarding(&topo, true);
    topo.host.sh(&format!(
        "{tool} -A FORWARD -p tcp --dport 81 -m comment --comment 'first: old admin port' -j DROP && \
         {tool} -A FORWARD -p tcp --dport 80 -m comment --comment 'v6 web closed' -j DROP"
    ));
    let (out, text) = diagnose(&topo.host, &[], || {
        assert_eq!(
            topo.curl_from_ext("/", 3),
            Some(200),
            "IPv4 is not filtered"
        );
        assert_eq!(
            curl6_from_ext(&topo, 2),
            None,
            "the ip6tables rule drops it"
        );
    });
    assert_eq!(out.code(), Some(1), "{text}");
    let found = verdicts(&text);
    assert_eq!(found.len(), 1, "{text}");
    assert!(
        found[0].starts_with("PROBLEM [forward_policy_drop]: the FORWARD path drops traffic (")
            && found[0].contains(
                "-A FORWARD -p tcp -m tcp --dport 80 -m comment --comment \"v6 web closed\" -j DROP"
            )
            && found[0].contains(&format!("({tool} table filter chain FORWARD, comment \"v6 web closed\")")),
        "the headline quotes the ip6tables rule:\n{text}"
    );
    assert!(!found[0].contains("first:"), "{text}");
}

#[test]
fn the_finding_quotes_the_ip6tables_forward_drop_rule() {
    if !privileged("the_finding_quotes_the_ip6tables_forward_drop_rule") {
        return;
    }
    ip6tables_rule_is_quoted("ip6tables-nft");
}

#[test]
fn the_finding_quotes_the_legacy_ip6tables_forward_drop_rule() {
    if !privileged("the_finding_quotes_the_legacy_ip6tables_forward_drop_rule") {
        return;
    }
    ip6tables_rule_is_quoted("ip6tables-legacy");
}

#[test]
fn the_finding_quotes_the_nft_inet_rule_dropping_ipv6() {
    if !privileged("the_finding_quotes_the_nft_inet_rule_dropping_ipv6") {
        return;
    }
    let topo = dual_stack();
    topo.set_forwarding(true);
    set_ipv6_forwarding(&topo, true);
    topo.host.sh(&format!(
        "nft add table inet dgv6 && \
         nft add chain inet dgv6 fw '{{ type filter hook forward priority 0; policy accept; }}' && \
         nft add rule inet dgv6 fw ip6 daddr {CTR6} tcp dport 81 counter drop comment '\"first: old admin port\"' && \
         nft add rule inet dgv6 fw ip6 daddr {CTR6} tcp dport 80 counter drop comment '\"v6 web closed\"'"
    ));
    let (out, text) = diagnose(&topo.host, &[], || {
        assert_eq!(
            topo.curl_from_ext("/", 3),
            Some(200),
            "IPv4 is not filtered"
        );
        assert_eq!(curl6_from_ext(&topo, 2), None, "the inet rule drops it");
    });
    assert_eq!(out.code(), Some(1), "{text}");
    let found = verdicts(&text);
    assert_eq!(found.len(), 1, "{text}");
    assert!(
        found[0].contains(&format!(
            "ip6 daddr {CTR6} tcp dport 80 counter drop comment \"v6 web closed\""
        )) && found[0].contains("nft table inet dgv6 chain fw"),
        "the headline quotes the inet rule:\n{text}"
    );
}

/// One UDP datagram from `ext` to the container's `port`, carrying the IPv6 extension
/// header set with the socket option `option` (`IPV6_HOPOPTS`, `IPV6_DSTOPTS`; none
/// for `""`) and `size` bytes (above the MTU: sent as fragments).
fn udp6_with_extension(topo: &DockerLikeHost, option: &str, port: u16, size: usize) {
    // An 8-byte options header: next header and length (filled by the kernel), then
    // a PadN option of 4 bytes so the header is one 8-byte unit.
    let set = if option.is_empty() {
        String::new()
    } else {
        format!(
            "s.setsockopt(socket.IPPROTO_IPV6, socket.{option}, bytes([0, 0, 1, 4, 0, 0, 0, 0]))\n"
        )
    };
    topo.ext.sh(&format!(
        "python3 -c '\nimport socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n{set}s.sendto(bytes({size}), (\"{CTR6}\", {port}))\n'"
    ));
}

/// Samples of IPv6 packets behind extension headers name the upper-layer protocol and
/// its ports, as the kernel's own parser would: hop-by-hop and destination options,
/// and fragments (the first carries the ports; later ones keep the protocol).
#[test]
fn samples_follow_ipv6_extension_headers_to_protocol_and_ports() {
    if !privileged("samples_follow_ipv6_extension_headers_to_protocol_and_ports") {
        return;
    }
    let topo = dual_stack();
    topo.set_forwarding(true);
    let watch = Watch::start(
        &[
            "--json",
            "--netns",
            &topo.host.name,
            "--location",
            "ip6_forward",
            "--host",
            CTR6,
        ],
        Duration::from_secs(2),
    );
    let cases = [
        ("IPV6_HOPOPTS", 5353, 16),
        ("IPV6_DSTOPTS", 5354, 16),
        ("", 5355, 3000),
    ];
    for (option, port, size) in cases {
        udp6_with_extension(&topo, option, port, size);
        // Past the watch's per-second sample limit.
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut samples: Vec<serde_json::Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline && samples.len() < 4 {
        if let Some(line) = watch.next_line(Duration::from_millis(500)) {
            samples.push(serde_json::from_str(&line).expect("a JSON sample"));
        }
    }
    // `--host` with an IPv6 address lets only the container's packets through.
    assert!(samples.iter().all(|s| s["dst"] == CTR6), "{samples:?}");
    let to_ctr: Vec<&serde_json::Value> = samples.iter().collect();
    let ports: Vec<u64> = to_ctr.iter().filter_map(|s| s["dport"].as_u64()).collect();
    for (option, port, _) in cases {
        assert!(
            ports.contains(&u64::from(port)),
            "the packet with {option:?} is sampled with its port {port}: {samples:?}"
        );
    }
    assert!(
        to_ctr.iter().all(|s| s["protocol"] == "udp"),
        "every sample names udp, none an extension header: {samples:?}"
    );
}

/// The Docker host's IPv6 address on its uplink, and the remote host's.
const ENGINE6: &str = "fd33:10::1";
const REMOTE6: &str = "fd33:10::2";
const WEB_SERVICE: &str = "web";

/// A web service on an IPv6-enabled bridge network, port 9091 published (compose file
/// format 2.4: `enable_ipv6` is not in format 3 for docker-compose 1.29).
fn ipv6_compose_file() -> String {
    format!(
        r#"version: "2.4"
services:
  {WEB_SERVICE}:
    image: {IMAGE}
    command: ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"]
    ports:
      - "{port}:80"
    networks:
      - front
networks:
  front:
    driver: bridge
    enable_ipv6: true
    ipam:
      config:
        - subnet: 172.29.33.0/24
        - subnet: fd33:233::/64
"#,
        port = DockerLikeHost::PUBLISHED_PORT
    )
}

/// curl from `ns` to `[addr]:9091`; the HTTP status, `None` when no answer came.
fn curl6(ns: &Netns, addr: &str, timeout_s: u32) -> Option<u16> {
    let out = ns.sh_output(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -m {timeout_s} http://[{addr}]:{}/",
        DockerLikeHost::PUBLISHED_PORT
    ));
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code != 0).then_some(code)
}

/// The remote host of [`DockerEngine::wire_remote`], with IPv6 on the same link.
fn wire_remote6(engine: &DockerEngine) -> Netns {
    let remote = engine.wire_remote();
    engine
        .netns
        .sh(&format!("ip addr add {ENGINE6}/64 dev {UPLINK} nodad"));
    remote.sh(&format!(
        "ip addr add {REMOTE6}/64 dev ve-remote nodad && ip -6 route add default via {ENGINE6}"
    ));
    remote
}

/// The container's name and IPv6 address, from `docker inspect`.
fn name_and_ipv6(engine: &DockerEngine, id: &str) -> (String, String) {
    let name = engine
        .docker(&["inspect", "-f", "{{.Name}}", id])
        .trim_start_matches('/')
        .to_owned();
    let ip6 = engine.docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}",
        id,
    ]);
    (name, ip6)
}

/// Real dockerd with IPv6 and ip6tables (its DNAT of published ports over IPv6), a
/// compose service on an IPv6 network: with IPv6 forwarding off on the Docker host, the
/// remote host's IPv6 requests hang, and `diagnose` names the IPv6 incident with the
/// container and its compose service; IPv4 keeps working and is no finding.
#[test]
fn the_ipv6_compose_incident_names_container_and_service() {
    let this = "the_ipv6_compose_incident_names_container_and_service";
    if !may_run(this, is_root(), "root (namespaces, ip6tables, BPF)")
        || !may_run(
            this,
            docker_available() && on_path("docker-compose"),
            "dockerd, docker, docker-compose and a static /bin/busybox (cargo xtask setup)",
        )
    {
        return;
    }
    // `ip6tables` makes dockerd DNAT published ports over IPv6 (experimental in 20.10).
    let engine = DockerEngine::start_with_options(
        "dock6",
        &[
            "\"experimental\": true",
            "\"ipv6\": true",
            "\"ip6tables\": true",
            "\"fixed-cidr-v6\": \"fd33:1::/64\"",
        ],
    );
    engine.import_busybox();
    let compose = ComposeProject::up(
        &engine,
        &format!("dgipv6{}", std::process::id()),
        &ipv6_compose_file(),
    );
    let remote = wire_remote6(&engine);
    let (name, ip6) = name_and_ipv6(&engine, &compose.container_id(WEB_SERVICE));
    assert!(
        ip6.parse::<std::net::Ipv6Addr>().is_ok(),
        "the container has an IPv6 address: {ip6:?}"
    );
    assert_eq!(
        engine
            .netns
            .sh("sysctl -n net.ipv6.conf.all.forwarding")
            .trim(),
        "1",
        "dockerd turns IPv6 forwarding on for an IPv6 network"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answered = None;
    while answered.is_none() && Instant::now() < deadline {
        answered = curl6(&remote, ENGINE6, 2);
    }
    assert_eq!(
        answered,
        Some(200),
        "IPv6 forwarding on: the remote host reaches the published port over IPv6\n{}",
        engine.netns.sh("ip6tables-save -t nat 2>&1 || true")
    );

    engine.netns.sh("sysctl -qw net.ipv6.conf.all.forwarding=0");
    let (out, text) = run_diagnose(
        &[
            "--duration",
            "6s",
            "--netns",
            &engine.netns.name,
            "--docker-host",
            &engine.host(),
        ],
        &[],
        // Short requests early in the window: the samples' container names come from
        // dockerd's API, which leaves them time to arrive before the window ends.
        || {
            for _ in 0..3 {
                assert_eq!(curl6(&remote, ENGINE6, 1), None, "IPv6 hangs");
            }
        },
    );
    assert_eq!(out.code(), Some(1), "{text}");
    let found = verdicts(&text);
    assert_eq!(found.len(), 1, "the IPv6 finding alone:\n{text}");
    let want = format!(
        "PROBLEM [ipv6_forwarding_off]: IPv6 forwarding is off on {UPLINK} (net.ipv6.conf.all.forwarding = 0); published port {} -> [{ip6}]:80 (bridge br-",
        DockerLikeHost::PUBLISHED_PORT
    );
    assert!(found[0].starts_with(&want), "want {want}...\n{text}");
    assert!(
        found[0].contains(&format!(
            "container {name}, compose service {WEB_SERVICE}) dropped"
        )),
        "names the container and its compose service:\n{text}"
    );
    assert!(
        text.contains("fix: sysctl -w net.ipv6.conf.all.forwarding=1"),
        "{text}"
    );
}

/// `diagnose --json`, `dropgate_problem` and the status page of `dropgate run` (inside
/// the host's namespace, so its findings are that host's) carry the IPv6 finding.
#[test]
fn the_ipv6_finding_reaches_json_the_problem_metric_and_the_status_page() {
    if !privileged("the_ipv6_finding_reaches_json_the_problem_metric_and_the_status_page") {
        return;
    }
    let topo = dual_stack();
    topo.set_forwarding(true);
    let (out, json) = diagnose(&topo.host, &["--json"], || {
        assert_eq!(curl6_from_ext(&topo, 2), None);
    });
    assert_eq!(out.code(), Some(1), "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("a JSON report");
    let findings = report["findings"].as_array().expect("findings");
    assert_eq!(findings.len(), 1, "{json}");
    assert_eq!(findings[0]["kind"], "ipv6_forwarding_off", "{json}");
    assert_eq!(
        findings[0]["interface"],
        DockerLikeHost::HOST_UPLINK,
        "{json}"
    );
    assert!(
        findings[0]["fix"][0] == "sysctl -w net.ipv6.conf.all.forwarding=1",
        "{json}"
    );
    assert_eq!(
        report["host"]["ipv6"]["forwarding"], false,
        "the host state carries the IPv6 switch: {json}"
    );

    // `dropgate run` in the namespace, checking every 2 s.
    let run = RunInNamespace::start(&topo.host, "2s", &[]);
    let get = |path: &str| run.get(path);
    let problem = format!(
        "dropgate_problem{{interface=\"{}\",kind=\"ipv6_forwarding_off\",severity=\"critical\"}} 1",
        DockerLikeHost::HOST_UPLINK
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut metrics, mut page) = (String::new(), String::new());
    while Instant::now() < deadline {
        // Traffic in every round: the critical finding holds while drops are seen.
        let _ = curl6_from_ext(&topo, 1);
        metrics = get("/metrics").unwrap_or_default();
        page = get("/").unwrap_or_default();
        if metrics.contains(&problem) && page.contains("ipv6_forwarding_off") {
            break;
        }
    }
    assert!(
        metrics.contains(&problem),
        "want {problem} in:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("dropgate_problem") || l.contains("forwarding"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        page.contains("ipv6_forwarding_off") && page.contains("net.ipv6.conf.all.forwarding"),
        "the status page shows the finding and the IPv6 switch"
    );
    assert!(
        !metrics.contains("kind=\"forwarding_off\""),
        "IPv4 forwarding is on: no IPv4 problem"
    );
}

/// A port published over IPv6 by a native nft `inet` NAT rule (what Docker's nftables
/// backend and firewalld write) is recognised like ip6tables' DNAT: it needs IPv6
/// forwarding, and the verdict names it.
#[test]
fn an_nft_inet_dnat_over_ipv6_is_a_published_port() {
    if !privileged("an_nft_inet_dnat_over_ipv6_is_a_published_port") {
        return;
    }
    let topo = dual_stack();
    topo.set_forwarding(true);
    topo.host.sh(&format!(
        "ip6tables -t nat -F PREROUTING && \
         nft add table inet dgnat6 && \
         nft add chain inet dgnat6 pre '{{ type nat hook prerouting priority dstnat; policy accept; }}' && \
         nft add rule inet dgnat6 pre ip6 daddr {HOST6} tcp dport 9092 counter dnat ip6 to [{CTR6}]:80"
    ));
    let curl = || {
        let out = topo
            .ext
            .sh_output(&format!("curl -s -o /dev/null -m 2 http://[{HOST6}]:9092/"));
        out.status.success()
    };
    // Nothing sent yet: the published port alone needs forwarding (a warning).
    let (out, text) = diagnose(&topo.host, &[], || {});
    assert_eq!(out.code(), Some(1), "{text}");
    let found = verdicts(&text);
    assert_eq!(found.len(), 1, "{text}");
    assert!(
        found[0].starts_with("WARNING [ipv6_forwarding_off]: IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0): published port 9092 -> [fd31:231::2]:80 cannot be reached from other hosts over IPv6"),
        "{text}"
    );
    assert!(
        text.contains(&format!("evidence: DNAT: ip6 daddr {HOST6} tcp dport 9092")),
        "the nft rule is evidence:\n{text}"
    );
    set_ipv6_forwarding(&topo, true);
    assert!(
        curl(),
        "with IPv6 forwarding on, the nft DNAT reaches the container"
    );
}

/// A UDP sender pinned to `cpu` in `ns`: `rate` datagrams a second to `target`'s closed
/// port for `seconds`, each dropped (NO_SOCKET) there. Bounded in count and time.
fn paced_udp(ns: &Netns, cpu: usize, target: &str, rate: u32, seconds: u32) -> Guarded {
    let mut command = ns.command("taskset");
    command
        .args(["-c", &cpu.to_string(), "python3", "-c"])
        .arg(format!(
            "import socket, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             end = time.monotonic() + {seconds}\n\
             for _ in range({rate} * {seconds}):\n\
             \x20   if time.monotonic() > end: break\n\
             \x20   s.sendto(b'x', ('{target}', 9))\n\
             \x20   time.sleep(1 / {rate})\n"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Guarded::spawn(command, "a paced UDP sender")
}

/// On a host where other namespaces drop packets all the time (a busy Docker host),
/// the samples of the diagnosed namespace are kept for the verdict: it still names the
/// bridge behind the IPv6 destination. Before, diagnose read the last 1,000 samples of
/// every namespace at the end of the window, and others' drops had pushed its own out.
#[test]
fn the_verdict_keeps_its_own_samples_on_a_host_busy_with_other_namespaces() {
    if !privileged("the_verdict_keeps_its_own_samples_on_a_host_busy_with_other_namespaces") {
        return;
    }
    let topo = dual_stack();
    topo.set_forwarding(true);
    // Another pair of namespaces whose drops are sampled at the kernel's limit (100 a
    // second per CPU) on both CPUs for the whole window: more than 1,000 samples.
    let noisy = Netns::create("noisy");
    let sink = Netns::create("sink");
    noisy.sh(&format!(
        "ip link add ve-noisy type veth peer name ve-sink netns {} && \
         ip addr add 10.237.0.1/24 dev ve-noisy && ip link set ve-noisy up",
        sink.name
    ));
    sink.sh("ip addr add 10.237.0.2/24 dev ve-sink && ip link set ve-sink up");
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut senders = Vec::new();
    let (out, text) = diagnose(&topo.host, &["--duration", "12s"], || {
        assert_eq!(curl6_from_ext(&topo, 2), None, "IPv6 hangs");
        for cpu in 0..cpus.min(4) {
            senders.push(paced_udp(&noisy, cpu, "10.237.0.2", 300, 11));
        }
    });
    drop(senders);
    assert_eq!(out.code(), Some(1), "{text}");
    let found = verdicts(&text);
    assert_eq!(found.len(), 1, "{text}");
    assert!(
        found[0].contains("published port 9091 -> [fd31:231::2]:80 (bridge br0)"),
        "the sampled destination is still named:\n{text}"
    );
}

/// `dropgate run`'s rounds name the sampled destination on the status page even when
/// the API keeps no samples (`--trace.recent-samples 0`) and, by the same token, when
/// other namespaces' samples fill what it keeps: each round gathers its own namespace's
/// samples as they come.
#[test]
fn run_rounds_keep_their_own_samples() {
    if !privileged("run_rounds_keep_their_own_samples") {
        return;
    }
    let topo = dual_stack();
    topo.set_forwarding(true);
    let run = RunInNamespace::start(&topo.host, "2s", &["--trace.recent-samples", "0"]);
    let named = "[fd31:231::2]:80 (bridge br0)";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut page = String::new();
    while Instant::now() < deadline {
        let _ = curl6_from_ext(&topo, 1);
        page = run.get("/").unwrap_or_default();
        if page.contains(named) {
            break;
        }
    }
    assert!(
        page.contains(named),
        "the status page names the destination behind the drops:\n{}",
        page.lines()
            .filter(|l| l.contains("ipv6"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Three UDP datagrams of `size` bytes (IPv6 header included) from `ext` to the
/// container. IPv6 routers never fragment, so each is dropped whole where it does not
/// fit. `IPV6_PMTUDISC_PROBE` sends at the link's MTU whatever `ext` learnt of the path
/// from an earlier "packet too big", so that every round sends all three too big.
fn big_udp6(topo: &DockerLikeHost, size: u32) {
    topo.ext.sh(&format!(
        "python3 - <<'EOF'
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, 23, 3)  # IPV6_MTU_DISCOVER = IPV6_PMTUDISC_PROBE
for _ in range(3):
    s.sendto(b'x' * {payload}, ('{CTR6}', 9))
EOF",
        payload = size - 48,
    ));
}

const TOO_BIG_RULE_COMMENT: &str = "no icmpv6 errors out";

/// The container side's link at 1280 (IPv6's minimum) while the uplink carries 1500:
/// with ICMPv6 "packet too big" filtered on its way back, a PMTU black hole.
#[test]
fn ipv6_packets_bigger_than_the_container_link_are_an_mtu_black_hole() {
    if !privileged("ipv6_packets_bigger_than_the_container_link_are_an_mtu_black_hole") {
        return;
    }
    let topo = dual_stack();
    topo.set_forwarding(true);
    set_ipv6_forwarding(&topo, true);
    topo.host.sh("ip link set vh-ctr mtu 1280");
    let (out, text) = diagnose(&topo.host, &[], || {
        let fits = topo
            .ext
            .sh_output(&format!("ping -6 -n -M do -s 1152 -c 3 -i 0.3 -W 1 {CTR6}"));
        assert!(fits.status.success(), "1200 bytes fit");
    });
    assert_eq!(out.code(), Some(0), "packets that fit: healthy\n{text}");

    // Nothing filters "packet too big": the sender is told, a warning.
    let text = only_finding(&topo.host, "packet_too_big", || big_udp6(&topo, 1400));
    let verdict = line_starting(&text, "WARNING [packet_too_big]: ");
    assert!(
        verdict.contains(&format!(
            "3 packets of up to 1400 bytes to {CTR6} do not fit br0 (MTU 1280; they came in on vh-ext, MTU 1500); the kernel answers with ICMPv6 \"packet too big\""
        )),
        "{verdict}"
    );

    topo.host.sh(&format!(
        "ip6tables -A OUTPUT -p ipv6-icmp --icmpv6-type packet-too-big -m comment --comment '{TOO_BIG_RULE_COMMENT}' -j DROP"
    ));
    let text = only_finding(&topo.host, "packet_too_big", || big_udp6(&topo, 1400));
    let verdict = line_starting(&text, "PROBLEM [packet_too_big]: ");
    assert!(
        verdict.starts_with(&format!(
            "PROBLEM [packet_too_big]: MTU black hole: 3 packets of up to 1400 bytes to {CTR6} do not fit br0 (MTU 1280; they came in on vh-ext, MTU 1500) and ICMPv6 \"packet too big\" is filtered here"
        )),
        "names both MTUs and the filtered ICMPv6:\n{verdict}"
    );
    assert!(
        text.contains("evidence: ICMPv6 \"packet too big\" filtered: 3 packets: -A OUTPUT -p ipv6-icmp -m icmp6 --icmpv6-type 2")
            && text.contains(TOO_BIG_RULE_COMMENT),
        "the filtering rule and its counter:\n{text}"
    );
    assert!(
        text.contains("evidence: /proc/net/snmp6 Ip6InTooBigErrors rose by 3"),
        "the kernel's own count of the too-big packets:\n{text}"
    );
    assert!(
        text.contains("fix: let ICMPv6 \"packet too big\" (type 2) through")
            && text.contains("ip link set br0 mtu 1500")
            && text.contains("ip6tables -t mangle -A FORWARD -p tcp"),
        "the fixes are IPv6's own:\n{text}"
    );
    assert!(
        !text.contains("note: "),
        "the filtered ICMPv6 is the finding's evidence, not a note:\n{text}"
    );
}

/// A published port DNAT-ed by ip6tables to an address on the bridge that nobody
/// has: neighbour discovery never gets an answer.
const STALE6: &str = "fd31:231::9";
const STALE6_PORT: u16 = 9092;

#[test]
fn ipv6_stale_dnat_to_an_absent_address_is_a_neighbour_failure() {
    if !privileged("ipv6_stale_dnat_to_an_absent_address_is_a_neighbour_failure") {
        return;
    }
    let topo = dual_stack();
    topo.set_forwarding(true);
    set_ipv6_forwarding(&topo, true);
    topo.host.sh(&format!(
        "ip6tables -t nat -A PREROUTING -p tcp --dport {STALE6_PORT} -j DNAT --to-destination [{STALE6}]:80"
    ));
    let curl_stale = || {
        let out = topo
            .ext
            .sh_output(&format!("curl -s -m 4 http://[{HOST6}]:{STALE6_PORT}/"));
        assert!(
            !out.status.success(),
            "nobody answers behind the stale DNAT"
        );
    };
    let text = only_finding(&topo.host, "neighbour_failed", curl_stale);
    let verdict = line_starting(&text, "PROBLEM [neighbour_failed]: ");
    assert!(
        verdict.contains(&format!(
            "nobody answers neighbour discovery for {STALE6} on br0; published port {STALE6_PORT} -> [{STALE6}]:80 points there"
        )) && verdict.contains(" in neigh_invalidate"),
        "names the address and the published port:\n{verdict}"
    );
    assert!(
        text.contains(&format!(
            "evidence: DNAT: -A PREROUTING -p tcp -m tcp --dport {STALE6_PORT} -j DNAT --to-destination [{STALE6}]:80"
        )),
        "the ip6tables rule is quoted:\n{text}"
    );
    assert!(
        text.contains(&format!(
            "fix: remove the stale DNAT: ip6tables -t nat -D PREROUTING -p tcp -m tcp --dport {STALE6_PORT}"
        )),
        "the fix removes it with ip6tables:\n{text}"
    );
    assert!(
        text.contains(&format!("ip -6 neigh show {STALE6}")),
        "the fix looks at the IPv6 neighbour table:\n{text}"
    );

    let run = RunInNamespace::start(&topo.host, "2s", &[]);
    run.shows("neighbour_failed", STALE6, curl_stale);
}

/// `dropgate_forwarding_changes_total` counts flips of each family's global switch
/// under its own `family` label: IPv6's flips are not lost, nor counted as IPv4's.
#[test]
fn ipv6_forwarding_flips_are_counted_by_family() {
    if !privileged("ipv6_forwarding_flips_are_counted_by_family") {
        return;
    }
    let ns = Netns::create("v6flip");
    ns.sh("sysctl -qw net.ipv6.conf.all.forwarding=0 net.ipv4.ip_forward=0");
    let dropgate = DropgateRun::start(&[]);
    let netns = ns.name.as_str();
    let known = format!("dropgate_ipv6_forwarding{{interface=\"all\",netns=\"{netns}\"}} 0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dropgate.scrape().contains(&known) {
        assert!(
            Instant::now() < deadline,
            "dropgate never saw the namespace's IPv6 switch"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let changes = |family: &str| {
        dropgate.value(
            "dropgate_forwarding_changes_total",
            &[("netns", netns), ("family", family)],
        ) as u64
    };
    let (v4, v6) = (changes("ipv4"), changes("ipv6"));
    for on in [1, 0, 1] {
        ns.sh(&format!("sysctl -qw net.ipv6.conf.all.forwarding={on}"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while changes("ipv6") < v6 + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(changes("ipv6"), v6 + 3, "three flips of IPv6 forwarding");
    assert_eq!(changes("ipv4"), v4, "no IPv4 flip");
    ns.sh("sysctl -qw net.ipv4.ip_forward=1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while changes("ipv4") < v4 + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(changes("ipv4"), v4 + 1, "one flip of IPv4 forwarding");
    assert_eq!(changes("ipv6"), v6 + 3, "IPv6 unchanged by it");
}

/// A second container on the bridge, `fd31:231::3`, with its own namespace.
const CTR6_2: &str = "fd31:231::3";

/// br_netfilter with IPv6: bridged IPv6 frames between two containers on br0 pass
/// ip6tables' FORWARD chain when `net.bridge.bridge-nf-call-ip6tables = 1`, and a rule
/// there drops them. br_netfilter is built into this machine's kernel (no
/// `/proc/modules`: no module support to load or unload), and since Linux 5.3 its
/// `net.bridge.bridge-nf-call-*` switches are per network namespace (a new namespace
/// starts with 1), so the whole path runs in the test's own namespaces; a kernel with
/// br_netfilter as a module that is not loaded cannot show this path, and the test
/// says so rather than loading it.
#[test]
fn ipv6_bridged_traffic_dropped_by_ip6tables_through_br_netfilter() {
    let this = "ipv6_bridged_traffic_dropped_by_ip6tables_through_br_netfilter";
    if !privileged(this)
        || !may_run(
            this,
            std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-ip6tables").exists(),
            "br_netfilter (built in, or loaded by the machine's owner)",
        )
    {
        return;
    }
    let topo = dual_stack();
    topo.set_forwarding(true);
    set_ipv6_forwarding(&topo, true);
    let ctr2 = Netns::create("v6ctr2");
    topo.host.sh(&format!(
        "ip link add vh-v6ctr2 type veth peer name eth0 netns {} && \
         ip link set vh-v6ctr2 master br0 up && \
         sysctl -qw net.bridge.bridge-nf-call-ip6tables=1 && \
         ip6tables -A FORWARD -p tcp --dport 80 -m comment --comment 'v6 web closed' -j DROP",
        ctr2.name
    ));
    ctr2.sh(&format!(
        "ip addr add {CTR6_2}/64 dev eth0 nodad && ip link set eth0 up && ip link set lo up"
    ));
    let across = || {
        let out = ctr2.sh_output(&format!("curl -s -m 2 http://[{CTR6}]:80/"));
        assert!(!out.status.success(), "ip6tables drops the bridged request");
    };
    let text = only_finding(&topo.host, "forward_policy_drop", across);
    let verdict = line_starting(&text, "PROBLEM [forward_policy_drop]: ");
    assert!(
        verdict.contains(
            "-A FORWARD -p tcp -m tcp --dport 80 -m comment --comment \"v6 web closed\" -j DROP"
        ),
        "the headline quotes the ip6tables rule:\n{verdict}"
    );
    assert!(
        text.contains("br0 is a bridge and net.bridge.bridge-nf-call-ip6tables = 1"),
        "the br_netfilter path is named:\n{text}"
    );
    assert!(
        text.contains("sysctl -w net.bridge.bridge-nf-call-ip6tables=0"),
        "and the switch that takes bridged IPv6 out of ip6tables:\n{text}"
    );

    // With the switch off, the bridge carries the frames without asking ip6tables.
    topo.host
        .sh("sysctl -qw net.bridge.bridge-nf-call-ip6tables=0");
    let (out, text) = diagnose(&topo.host, &[], || {
        let out = ctr2.sh_output(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' -m 3 http://[{CTR6}]:80/"
        ));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200");
    });
    assert_eq!(out.code(), Some(0), "bridged IPv6 passes: healthy\n{text}");
}
