//! The silent killers beyond forwarding, each built alone in namespaces and named by
//! `dropgate diagnose` with its evidence: a stale DNAT nobody answers ARP for, a PMTU
//! black hole, no route, conntrack INVALID drops, Docker's own chains and firewall
//! managers' FORWARD policies. Every scenario asserts its finding is the only one, the
//! same kind in `--json`, and (for one per family) as `dropgate_problem{kind}` and on
//! the status page of `dropgate run`.

use std::time::{Duration, Instant};

use dropgate_tests::{
    diagnose::{diagnose, kinds, line_starting, only_finding, privileged, RunInNamespace},
    docker::{docker_available, DockerEngine, ENGINE_ADDR, IMAGE},
    dropgate::run_diagnose,
    may_run,
    netns::DockerLikeHost,
};

/// The published port 9092 DNAT-ed to an address on the bridge that nobody has: a
/// container that was stopped and whose rule stayed.
const STALE_ADDR: &str = "172.31.231.9";
const STALE_PORT: u16 = 9092;

fn stale_dnat(topo: &DockerLikeHost) {
    topo.host.sh(&format!(
        "iptables -t nat -A PREROUTING -p tcp --dport {STALE_PORT} -j DNAT --to-destination {STALE_ADDR}:80"
    ));
}

fn curl_stale(topo: &DockerLikeHost) {
    let out = topo.ext.sh_output(&format!(
        "curl -s -m 4 http://{}:{STALE_PORT}/",
        DockerLikeHost::HOST_ADDR
    ));
    assert!(
        !out.status.success(),
        "nobody answers behind the stale DNAT"
    );
}

#[test]
fn stale_dnat_to_an_absent_address_is_a_neighbour_failure() {
    if !privileged("stale_dnat_to_an_absent_address_is_a_neighbour_failure") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    stale_dnat(&topo);
    let (out, text) = diagnose(&topo.host, &[], || {
        assert_eq!(
            topo.curl_from_ext("/", 3),
            Some(200),
            "the live port answers"
        );
    });
    assert_eq!(
        out.code(),
        Some(0),
        "healthy before any traffic to the stale port:\n{text}"
    );

    let text = only_finding(&topo.host, "neighbour_failed", || curl_stale(&topo));
    let verdict = line_starting(&text, "PROBLEM [neighbour_failed]: ");
    assert!(
        verdict.contains(&format!(
            "nobody answers ARP for {STALE_ADDR} on br0; published port {STALE_PORT} -> {STALE_ADDR}:80 points there"
        )) && verdict.contains("NEIGH_FAILED"),
        "{verdict}"
    );
    assert!(
        text.contains(&format!(
            "evidence: DNAT: -A PREROUTING -p tcp -m tcp --dport {STALE_PORT} -j DNAT --to-destination {STALE_ADDR}:80"
        )),
        "the DNAT rule is quoted:\n{text}"
    );
    assert!(
        text.contains(&format!("evidence: ip neigh: {STALE_ADDR} dev br0 ")),
        "the neighbour table's entry:\n{text}"
    );
    assert!(
        text.contains(&format!("fix: remove the stale DNAT: iptables -t nat -D PREROUTING -p tcp -m tcp --dport {STALE_PORT}")),
        "{text}"
    );

    let run = RunInNamespace::start(&topo.host, "2s", &[]);
    run.shows("neighbour_failed", STALE_ADDR, || curl_stale(&topo));
}

/// The container side's link at 1280 while the container itself says 1500 (so TCP's
/// MSS does not save the day), and a route for `ext` to reach the container directly.
fn small_container_link(topo: &DockerLikeHost) {
    topo.host.sh("ip link set vh-ctr mtu 1280");
    topo.ext.sh(&format!(
        "ip route add 172.31.231.0/24 via {}",
        DockerLikeHost::HOST_ADDR
    ));
}

/// Three DF pings of `size` bytes from `ext` to the container; whether any came back.
fn df_pings_answered(topo: &DockerLikeHost, size: u32) -> bool {
    topo.ext
        .sh_output(&format!(
            "ping -M do -s {} -c 3 -i 0.3 -W 1 {}",
            size - 28,
            DockerLikeHost::CTR_ADDR
        ))
        .status
        .success()
}

/// Three UDP datagrams of `size` bytes (IP header included) with DF set from `ext` to
/// the container. `IP_PMTUDISC_PROBE` keeps DF but ignores what `ext` learnt of the
/// path MTU from an earlier "fragmentation needed", so that every round sends all
/// three (ping's `-M do` would stop after the first, and iputils here has no `probe`).
fn big_df_datagrams(topo: &DockerLikeHost, size: u32) {
    topo.ext.sh(&format!(
        "python3 - <<'EOF'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 3)  # IP_MTU_DISCOVER = IP_PMTUDISC_PROBE
for _ in range(3):
    s.sendto(b'x' * {payload}, ('{ctr}', 9))
EOF",
        payload = size - 28,
        ctr = DockerLikeHost::CTR_ADDR,
    ));
}

const FRAG_RULE_COMMENT: &str = "no icmp unreachables out";

#[test]
fn df_packets_bigger_than_the_container_link_are_an_mtu_black_hole() {
    if !privileged("df_packets_bigger_than_the_container_link_are_an_mtu_black_hole") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.set_forwarding(true);
    small_container_link(&topo);
    let (out, text) = diagnose(&topo.host, &[], || {
        assert!(df_pings_answered(&topo, 1200), "1200 bytes fit");
    });
    assert_eq!(out.code(), Some(0), "packets that fit: healthy\n{text}");

    // Nothing filters "fragmentation needed": the sender is told, a warning.
    let text = only_finding(&topo.host, "packet_too_big", || {
        big_df_datagrams(&topo, 1400);
    });
    let verdict = line_starting(&text, "WARNING [packet_too_big]: ");
    assert!(
        verdict.contains(&format!(
            "3 packets of up to 1400 bytes to {} do not fit br0 (MTU 1280; they came in on vh-ext, MTU 1500)",
            DockerLikeHost::CTR_ADDR
        )),
        "{verdict}"
    );
    assert!(
        text.contains("evidence: /proc/net/snmp Ip FragFails rose by 3"),
        "{text}"
    );

    // The host filters it on its way out: a black hole, naming the rule.
    topo.host.sh(&format!(
        "iptables -A OUTPUT -p icmp --icmp-type fragmentation-needed -m comment --comment '{FRAG_RULE_COMMENT}' -j DROP"
    ));
    let text = only_finding(&topo.host, "packet_too_big", || {
        big_df_datagrams(&topo, 1400);
    });
    let verdict = line_starting(&text, "PROBLEM [packet_too_big]: ");
    assert!(
        verdict
            .starts_with("PROBLEM [packet_too_big]: MTU black hole: 3 packets of up to 1400 bytes")
            && verdict.contains("ICMP \"fragmentation needed\" is filtered here"),
        "{verdict}"
    );
    assert!(
        text.contains("evidence: ICMP \"fragmentation needed\" filtered: 3 packets: -A OUTPUT -p icmp -m icmp --icmp-type 3/4")
            && text.contains(FRAG_RULE_COMMENT),
        "the filtering rule and its counter:\n{text}"
    );
    assert!(
        !text.contains("note: "),
        "the filtered ICMP is the finding's evidence, not a note:\n{text}"
    );

    let run = RunInNamespace::start(&topo.host, "2s", &[]);
    run.shows("packet_too_big", "MTU black hole", || {
        big_df_datagrams(&topo, 1400);
    });
}

#[test]
fn no_route_for_a_dnat_target_or_for_replies_names_the_destination() {
    if !privileged("no_route_for_a_dnat_target_or_for_replies_names_the_destination") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    // A published port DNAT-ed to a network this host has no route to.
    topo.host.sh(
        "iptables -t nat -A PREROUTING -p tcp --dport 9093 -j DNAT --to-destination 10.99.0.5:80",
    );
    let text = only_finding(&topo.host, "no_route", || {
        let out = topo.ext.sh_output(&format!(
            "curl -s -m 2 http://{}:9093/",
            DockerLikeHost::HOST_ADDR
        ));
        assert!(!out.status.success(), "no route to the DNAT target");
    });
    let verdict = line_starting(&text, "PROBLEM [no_route]: ");
    assert!(
        verdict.starts_with(
            "PROBLEM [no_route]: no route to 10.99.0.5; published port 9093 -> 10.99.0.5:80 points there: "
        ),
        "{verdict}"
    );
    assert!(
        text.contains("evidence: /proc/net/netstat IpExt InNoRoutes rose by"),
        "{text}"
    );
    assert!(text.contains("IP_INNOROUTES in ip_error"), "{text}");

    // A client whose network this host cannot route back to: the container's replies
    // die on the way out (the request itself came in fine).
    topo.ext.sh(&format!(
        "ip addr add {}/32 dev ve-ext",
        DockerLikeHost::SPOOFED_ADDR
    ));
    let text = only_finding(&topo.host, "no_route", || {
        let out = topo.ext.sh_output(&format!(
            "curl -s -m 2 --interface {} http://{}:{}/",
            DockerLikeHost::SPOOFED_ADDR,
            DockerLikeHost::HOST_ADDR,
            DockerLikeHost::PUBLISHED_PORT
        ));
        assert!(!out.status.success(), "the replies have no route back");
    });
    let verdict = line_starting(&text, "PROBLEM [no_route]: ");
    assert!(
        verdict.starts_with(&format!(
            "PROBLEM [no_route]: no route to {} for traffic from behind br0 (replies",
            DockerLikeHost::SPOOFED_ADDR
        )),
        "{verdict}"
    );
    let run = RunInNamespace::start(&topo.host, "2s", &[]);
    run.shows("no_route", DockerLikeHost::SPOOFED_ADDR, || {
        let _ = topo.ext.sh_output(&format!(
            "curl -s -m 2 --interface {} http://{}:{}/",
            DockerLikeHost::SPOOFED_ADDR,
            DockerLikeHost::HOST_ADDR,
            DockerLikeHost::PUBLISHED_PORT
        ));
    });
}

/// Three bare TCP ACKs from `ext` to the container, for a connection nobody opened.
fn bare_acks(topo: &DockerLikeHost) {
    topo.ext.sh(&format!(
        "python3 - <<'EOF'
import socket, struct
src, dst = '{ext}', '{ctr}'
def csum(b):
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xffff)
    t += t >> 16
    return ~t & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
for i in range(3):
    hdr = struct.pack('!HHIIBBHHH', 40000 + i, 80, 1000, 2000, 5 << 4, 0x10, 65535, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack('!BBH', 0, 6, len(hdr))
    c = csum(pseudo + hdr)
    s.sendto(hdr[:16] + struct.pack('!H', c) + hdr[18:], (dst, 0))
EOF",
        ext = DockerLikeHost::EXT_ADDR,
        ctr = DockerLikeHost::CTR_ADDR,
    ));
}

#[test]
fn conntrack_invalid_drops_name_the_rule_and_the_counter() {
    if !privileged("conntrack_invalid_drops_name_the_rule_and_the_counter") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    topo.ext.sh(&format!(
        "ip route add 172.31.231.0/24 via {}",
        DockerLikeHost::HOST_ADDR
    ));
    // Strict TCP tracking (per namespace): an ACK without a connection is INVALID.
    topo.host.sh(
        "iptables -A FORWARD -m conntrack --ctstate INVALID -m comment --comment 'drop invalid' -j DROP && \
         sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0",
    );
    let (out, text) = diagnose(&topo.host, &[], || {
        assert_eq!(
            topo.curl_from_ext("/", 3),
            Some(200),
            "real connections pass"
        );
    });
    assert_eq!(out.code(), Some(0), "healthy:\n{text}");
    let text = only_finding(&topo.host, "conntrack_invalid", || bare_acks(&topo));
    let verdict = line_starting(&text, "PROBLEM [conntrack_invalid]: ");
    assert_eq!(
        verdict,
        "PROBLEM [conntrack_invalid]: conntrack marks forwarded packets INVALID and -A FORWARD -m conntrack --ctstate INVALID -m comment --comment \"drop invalid\" -j DROP (iptables-nft table filter chain FORWARD, comment \"drop invalid\") drops them (3 packets)"
    );
    assert!(
        text.contains("evidence: /proc/net/stat/nf_conntrack invalid rose by 3"),
        "{text}"
    );
    let run = RunInNamespace::start(&topo.host, "2s", &[]);
    run.shows("conntrack_invalid", "drop invalid", || bare_acks(&topo));
}

/// Two published ports on a Docker-like filter (policy DROP, DOCKER-USER, the bridge's
/// ACCEPTs); a commented rule among other ACCEPT and DROP rules drops the second
/// port's traffic only. The finding names exactly that rule.
#[test]
fn a_forward_rule_dropping_one_published_port_is_named_exactly() {
    if !privileged("a_forward_rule_dropping_one_published_port_is_named_exactly") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.ctr
        .sh("(/usr/bin/python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 &) ; sleep 0.5");
    topo.set_forwarding(true);
    let ctr = DockerLikeHost::CTR_ADDR;
    topo.host.sh(&format!(
        "iptables -t nat -A PREROUTING -p tcp --dport 9094 -j DNAT --to-destination {ctr}:8080 && \
         iptables -P FORWARD DROP && \
         iptables -A FORWARD -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT && \
         iptables -A FORWARD -p tcp -d {ctr} --dport 22 -m comment --comment 'no ssh into containers' -j DROP && \
         iptables -A FORWARD -p tcp -d {ctr} --dport 8080 -m comment --comment 'metrics port closed' -j DROP && \
         iptables -A FORWARD -p udp -d {ctr} -m comment --comment 'no udp' -j DROP && \
         iptables -A FORWARD -o br0 -p tcp -d {ctr} --dport 80 -j ACCEPT && \
         iptables -A FORWARD -o br0 -p tcp -d {ctr} --dport 8080 -j ACCEPT && \
         iptables -A FORWARD -i br0 ! -o br0 -j ACCEPT"
    ));
    let text = only_finding(&topo.host, "forward_policy_drop", || {
        assert_eq!(topo.curl_from_ext("/", 3), Some(200), "port 9091 passes");
        let out = topo.ext.sh_output(&format!(
            "curl -s -m 2 http://{}:9094/",
            DockerLikeHost::HOST_ADDR
        ));
        assert!(!out.status.success(), "port 9094 is dropped");
    });
    let verdict = line_starting(&text, "PROBLEM [forward_policy_drop]: ");
    assert!(
        verdict.ends_with(&format!(
            "-A FORWARD -d {ctr}/32 -p tcp -m tcp --dport 8080 -m comment --comment \"metrics port closed\" -j DROP (iptables-nft table filter chain FORWARD, comment \"metrics port closed\")"
        )),
        "{verdict}"
    );
    for other in ["no ssh into containers", "no udp", "-P FORWARD DROP"] {
        assert!(
            !verdict.contains(other),
            "{other} dropped nothing: {verdict}"
        );
    }
}

/// Emulated firewall managers (their chain and table names, as `ufw` and `firewalld`
/// lay them out; neither can run in a test namespace without taking over the
/// machine's configuration files and D-Bus).
#[test]
fn firewall_manager_forward_policies_are_named_after_the_manager() {
    if !privileged("firewall_manager_forward_policies_are_named_after_the_manager") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    // ufw: FORWARD policy DROP (DEFAULT_FORWARD_POLICY="DROP") and its chains.
    topo.host.sh(
        "iptables -N ufw-before-forward && iptables -N ufw-user-forward && \
         iptables -N ufw-after-forward && \
         iptables -A FORWARD -j ufw-before-forward && \
         iptables -A ufw-before-forward -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT && \
         iptables -A ufw-before-forward -j ufw-user-forward && \
         iptables -A FORWARD -j ufw-after-forward && \
         iptables -P FORWARD DROP",
    );
    let text = only_finding(&topo.host, "firewall_manager_drop", || {
        assert_eq!(topo.curl_from_ext("/", 2), None, "ufw drops routed traffic");
    });
    let verdict = line_starting(&text, "PROBLEM [firewall_manager_drop]: ");
    assert!(
        verdict.starts_with("PROBLEM [firewall_manager_drop]: ufw dropped ")
            && verdict.contains("-P FORWARD DROP (iptables-nft table filter chain FORWARD)"),
        "{verdict}"
    );
    assert!(
        text.contains("fix: allow the routed traffic: ufw route allow"),
        "{text}"
    );
    {
        let run = RunInNamespace::start(&topo.host, "2s", &[]);
        run.shows("firewall_manager_drop", "ufw dropped", || {
            let _ = topo.curl_from_ext("/", 1);
        });
    }

    // firewalld: its own nft table, a zone's forward chain rejecting.
    topo.host.sh(
        "iptables -P FORWARD ACCEPT && iptables -F FORWARD && nft -f - <<'EOF'
table inet firewalld {
    chain filter_FORWARD {
        type filter hook forward priority filter + 10; policy accept;
        ct state established,related accept
        jump filter_FWD_public
    }
    chain filter_FWD_public {
        counter reject with icmpx admin-prohibited
    }
}
EOF",
    );
    let text = only_finding(&topo.host, "firewall_manager_drop", || {
        assert_eq!(topo.curl_from_ext("/", 2), None, "firewalld rejects it");
    });
    let verdict = line_starting(&text, "PROBLEM [firewall_manager_drop]: ");
    assert!(
        verdict.starts_with("PROBLEM [firewall_manager_drop]: firewalld (zone public) dropped ")
            && verdict.contains("(nft table inet firewalld chain filter_FWD_public)"),
        "{verdict}"
    );
    assert!(
        text.contains("firewall-cmd --permanent --zone=public --add-forward"),
        "{text}"
    );
}

/// Networks `front` and `back`; `api` (httpd, published on 9091) on `back` at
/// 172.29.2.10, `client` (idle) on `front`.
fn two_networks(engine: &DockerEngine) {
    engine.docker(&["network", "create", "--subnet", "172.29.1.0/24", "front"]);
    engine.docker(&["network", "create", "--subnet", "172.29.2.0/24", "back"]);
    engine.docker(&[
        "run",
        "-d",
        "--name",
        "api",
        "--network",
        "back",
        "--ip",
        "172.29.2.10",
        "-p",
        "9091:80",
        IMAGE,
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    engine.docker(&[
        "run",
        "-d",
        "--name",
        "client",
        "--network",
        "front",
        IMAGE,
        "/bin/busybox",
        "sleep",
        "600",
    ]);
}

/// Real dockerd: two networks; a container on one reaching a container on the other is
/// dropped by DOCKER-ISOLATION; then a DOCKER-USER rule drops the published port.
#[test]
fn docker_isolation_and_docker_user_drops_are_named_as_such() {
    let name = "docker_isolation_and_docker_user_drops_are_named_as_such";
    if !privileged(name)
        || !may_run(
            name,
            docker_available(),
            "dockerd, docker and busybox-static (cargo xtask setup)",
        )
    {
        return;
    }
    let engine = DockerEngine::start("cdocker");
    engine.import_busybox();
    let remote = engine.wire_remote();
    two_networks(&engine);
    let published = || {
        let out = remote.sh_output(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' -m 3 http://{ENGINE_ADDR}:9091/"
        ));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while published() != "404" && published() != "200" {
        assert!(
            Instant::now() < deadline,
            "the published port never answered:\n{}",
            engine.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let across = || {
        // busybox-static's wget crashes in its resolver; nc connects by address.
        let out = engine.docker_output(&[
            "exec",
            "client",
            "/bin/busybox",
            "nc",
            "-w",
            "2",
            "172.29.2.10",
            "80",
        ]);
        assert!(
            !out.status.success(),
            "Docker isolates its networks: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    let host = engine.host();
    let (out, text) = run_diagnose(
        &[
            "--duration",
            "5s",
            "--netns",
            &engine.netns.name,
            "--docker-host",
            &host,
        ],
        &[],
        across,
    );
    assert_eq!(out.code(), Some(1), "{text}");
    assert_eq!(kinds(&text), vec!["docker_isolation".to_owned()], "{text}");
    let verdict = line_starting(&text, "WARNING [docker_isolation]: ");
    assert!(
        verdict.contains("the containers are on different Docker networks")
            && verdict.contains("chain DOCKER-ISOLATION-STAGE-"),
        "{verdict}"
    );
    assert!(text.contains("docker network connect"), "{text}");
    assert!(
        text.contains("> 172.29.2.10:80 (bridge br-")
            && text.contains("network back, container api)"),
        "the sampled flow names the network and container it was headed for:\n{text}"
    );

    engine
        .netns
        .sh("iptables -I DOCKER-USER -p tcp --dport 80 -m comment --comment 'api closed' -j DROP");
    let (out, text) = run_diagnose(
        &[
            "--duration",
            "5s",
            "--netns",
            &engine.netns.name,
            "--docker-host",
            &host,
        ],
        &[],
        || assert_eq!(published(), "000", "DOCKER-USER drops the published port"),
    );
    assert_eq!(out.code(), Some(1), "{text}");
    assert_eq!(kinds(&text), vec!["docker_user_drop".to_owned()], "{text}");
    let verdict = line_starting(&text, "PROBLEM [docker_user_drop]: ");
    assert!(
        verdict.contains("a rule in DOCKER-USER")
            && verdict.contains("--comment \"api closed\" -j DROP"),
        "{verdict}"
    );
}
