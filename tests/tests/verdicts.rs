//! Verdicts that must hold on real host shapes, built in namespaces: no false alarm on a
//! healthy Docker-like host (FORWARD policy DROP with bridge ACCEPTs, INPUT drops of
//! scans), the rule that dropped named among several, nft-only hosts without iptables
//! binaries, and no `forwarding_off` where nothing needs forwarding.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use dropgate_tests::{
    diagnose::{diagnose, diagnose_env, privileged, RunInNamespace},
    docker::{docker_available, DockerEngine, ENGINE_ADDR, IMAGE},
    may_run,
    netns::{DockerLikeHost, Netns},
    tempdir::TempDir,
};

/// Docker's filter rules for one bridge and one published port, the way dockerd lays
/// them out: FORWARD policy DROP, DOCKER-USER first, then accepts for the bridge.
fn docker_like_filter(topo: &DockerLikeHost) {
    topo.host.sh(&format!(
        "iptables -N DOCKER-USER && iptables -A DOCKER-USER -j RETURN && \
         iptables -N DOCKER && \
         iptables -P FORWARD DROP && \
         iptables -A FORWARD -j DOCKER-USER && \
         iptables -A FORWARD -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT && \
         iptables -A FORWARD -o br0 -j DOCKER && \
         iptables -A FORWARD -i br0 ! -o br0 -j ACCEPT && \
         iptables -A FORWARD -i br0 -o br0 -j ACCEPT && \
         iptables -A DOCKER -d {ctr}/32 ! -i br0 -o br0 -p tcp -m tcp --dport {port} -j ACCEPT",
        ctr = DockerLikeHost::CTR_ADDR,
        port = DockerLikeHost::CTR_PORT,
    ));
}

/// An internet-facing host's INPUT rule against port-22 scans.
const SCAN_RULE_COMMENT: &str = "drop ssh scans";

fn drop_ssh_scans(ns: &Netns) {
    ns.sh(&format!(
        "iptables -A INPUT -p tcp --dport 22 -m comment --comment '{SCAN_RULE_COMMENT}' -j DROP"
    ));
}

/// A few SYNs from `ext` to the host's port 22, which the INPUT rule drops.
fn scan_port_22(topo: &DockerLikeHost) {
    for _ in 0..3 {
        let out = topo.ext.sh_output(&format!(
            "curl -s -m 1 http://{}:22/",
            DockerLikeHost::HOST_ADDR
        ));
        assert!(!out.status.success(), "the scan must be dropped");
    }
}

fn published_port_works(topo: &DockerLikeHost) {
    for _ in 0..3 {
        assert_eq!(
            topo.curl_from_ext("/", 3),
            Some(200),
            "the published port must answer from ext"
        );
    }
}

/// The legacy tables of a namespace: reading them must never create them.
fn legacy_tables(ns: &Netns) -> String {
    ns.sh("cat /proc/net/ip_tables_names 2>/dev/null || true")
        .trim()
        .to_owned()
}

#[test]
fn healthy_docker_like_host_with_input_scan_drops_has_no_finding() {
    if !privileged("healthy_docker_like_host_with_input_scan_drops_has_no_finding") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    docker_like_filter(&topo);
    drop_ssh_scans(&topo.host);
    let (out, text) = diagnose(&topo.host, &[], || {
        published_port_works(&topo);
        scan_port_22(&topo);
    });
    assert_eq!(
        out.code(),
        Some(0),
        "a healthy Docker-like host whose INPUT drops scans has no problem:\n{text}"
    );
    assert!(text.starts_with("no problem found"), "{text}");
    assert!(
        text.contains(SCAN_RULE_COMMENT) && text.contains("note: "),
        "the scan drops are named as the host's own policy: {text}"
    );
    assert_eq!(
        legacy_tables(&topo.host),
        "",
        "diagnose created iptables-legacy tables"
    );

    // The same host watched by `dropgate run`: scraped after every burst of published
    // traffic and scans, across rounds that saw both, no dropgate_problem at 1 (a
    // finding lasts only as long as its round, so it is looked for while traffic flows).
    let run = RunInNamespace::start(&topo.host, "2s", &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut problems = Vec::new();
    let mut noted = false;
    while Instant::now() < deadline {
        published_port_works(&topo);
        scan_port_22(&topo);
        problems.extend(run.problems());
        noted |= run
            .get("/")
            .is_some_and(|page| page.contains(SCAN_RULE_COMMENT));
    }
    assert_eq!(
        problems,
        Vec::<String>::new(),
        "dropgate run raised a problem on a healthy host"
    );
    assert!(
        noted,
        "the status page names the INPUT rule that dropped the scans as a note"
    );
    assert_eq!(
        legacy_tables(&topo.host),
        "",
        "dropgate run's rounds created iptables-legacy tables"
    );
}

/// Three FORWARD DROP rules with comments, added with `tool`; only the third matches
/// the published traffic, and the headline must quote it.
fn third_rule_is_quoted(tool: &str) {
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    topo.host.sh(&format!(
        "{tool} -A FORWARD -p tcp --dport 81 -m comment --comment 'first: old admin port' -j DROP && \
         {tool} -A FORWARD -p udp --dport 80 -m comment --comment 'second: no udp' -j DROP && \
         {tool} -A FORWARD -p tcp --dport 80 -m comment --comment 'third: web closed for maintenance' -j DROP",
    ));
    let (out, text) = diagnose(&topo.host, &[], || {
        assert_eq!(topo.curl_from_ext("/", 2), None, "the third rule drops it");
    });
    assert_eq!(out.code(), Some(1), "{text}");
    let headline = text.lines().next().expect("a verdict line");
    assert!(
        headline.starts_with("PROBLEM [forward_policy_drop]: the FORWARD path drops traffic (")
            && headline.contains(
                "-A FORWARD -p tcp -m tcp --dport 80 -m comment --comment \"third: web closed for maintenance\" -j DROP"
            )
            && headline.contains(&format!("({tool} table filter chain FORWARD")),
        "the headline quotes the third rule: {headline}"
    );
    assert!(
        !headline.contains("first:") && !headline.contains("second:"),
        "{headline}"
    );
}

#[test]
fn the_finding_quotes_the_third_forward_drop_rule_that_matched() {
    if !privileged("the_finding_quotes_the_third_forward_drop_rule_that_matched") {
        return;
    }
    third_rule_is_quoted("iptables-nft");
}

/// Legacy tables that exist (the test made them in its namespace) are read, with their
/// counters.
#[test]
fn the_finding_quotes_the_third_legacy_forward_drop_rule_that_matched() {
    if !privileged("the_finding_quotes_the_third_legacy_forward_drop_rule_that_matched") {
        return;
    }
    third_rule_is_quoted("iptables-legacy");
}

#[test]
fn the_finding_quotes_the_nft_inet_rule_that_matched() {
    if !privileged("the_finding_quotes_the_nft_inet_rule_that_matched") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    topo.host.sh("nft add table inet dgv && \
         nft add chain inet dgv fw '{ type filter hook forward priority 0; policy accept; }' && \
         nft add rule inet dgv fw tcp dport 81 counter drop comment '\"first: old admin port\"' && \
         nft add rule inet dgv fw udp dport 80 counter drop comment '\"second: no udp\"' && \
         nft add rule inet dgv fw tcp dport 80 counter drop comment '\"third: web closed\"'");
    let (out, text) = diagnose(&topo.host, &[], || {
        assert_eq!(topo.curl_from_ext("/", 2), None, "the third rule drops it");
    });
    assert_eq!(out.code(), Some(1), "{text}");
    let headline = text.lines().next().expect("a verdict line");
    assert!(
        headline.contains("tcp dport 80 counter drop comment \"third: web closed\"")
            && headline.contains("nft table inet dgv chain fw"),
        "the headline quotes the third nft rule: {headline}"
    );
}

/// The host's filter and NAT in native nftables only (what Docker's nftables backend and
/// firewalld give), and a PATH with `nft` but no iptables binary.
fn nft_only_host(topo: &DockerLikeHost) -> TempDir {
    topo.host.sh(&format!(
        "nft flush ruleset && nft -f - <<'EOF'
table ip dgnat {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport {port} counter dnat to {ctr}:{cport}
    }}
    chain post {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 172.31.231.0/24 oifname != \"br0\" masquerade
    }}
}}
table inet dgfilter {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        oifname \"br0\" ip daddr {ctr} tcp dport {cport} counter accept
        iifname \"br0\" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        tcp dport 22 counter drop comment \"{SCAN_RULE_COMMENT}\"
    }}
}}
EOF",
        port = DockerLikeHost::PUBLISHED_PORT,
        ctr = DockerLikeHost::CTR_ADDR,
        cport = DockerLikeHost::CTR_PORT,
    ));
    let bin = TempDir::new("nft-only-path");
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nft installed (cargo xtask setup)");
    std::os::unix::fs::symlink(nft, bin.path().join("nft")).expect("link nft");
    bin
}

#[test]
fn nft_only_host_without_iptables_binaries() {
    if !privileged("nft_only_host_without_iptables_binaries") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    let path = nft_only_host(&topo);
    let (out, text) = diagnose_env(
        &topo.host,
        &[],
        &[("PATH", path.path().as_os_str())],
        || {
            published_port_works(&topo);
            scan_port_22(&topo);
        },
    );
    assert_eq!(
        out.code(),
        Some(0),
        "healthy nft-only host, no iptables binary: exit 0\n{text}"
    );
    assert!(!text.contains("not checked"), "{text}");
    assert!(!text.contains("Docker's own FORWARD rules"), "{text}");

    topo.set_forwarding(false);
    let (out, text) = diagnose_env(
        &topo.host,
        &[],
        &[("PATH", path.path().as_os_str())],
        || {
            assert_eq!(topo.curl_from_ext("/", 2), None, "forwarding is off");
        },
    );
    assert_eq!(out.code(), Some(1), "{text}");
    assert!(
        text.starts_with("PROBLEM [forwarding_off]: forwarding is off on vh-ext (net.ipv4.ip_forward = 0); published port 9091 -> 172.31.231.2:80"),
        "{text}"
    );
    assert!(!text.contains("Docker's own FORWARD rules"), "{text}");
    assert_eq!(legacy_tables(&topo.host), "", "no legacy tables created");
}

#[test]
fn no_forwarding_finding_on_an_l2_bridge_carrying_the_host_address() {
    if !privileged("no_forwarding_finding_on_an_l2_bridge_carrying_the_host_address") {
        return;
    }
    // Proxmox/libvirt bridged shape: the uplink is a port of vmbr0, which holds the
    // host's address; a VM sits on the same bridge and is reached at layer 2.
    let ext = Netns::create("l2ext");
    let host = Netns::create("l2host");
    let vm = Netns::create("l2vm");
    host.sh(&format!(
        "ip link add vh-up type veth peer name ve-ext netns {ext} && \
         ip link add vmbr0 type bridge && ip link set vh-up master vmbr0 && \
         ip link add vh-vm type veth peer name eth0 netns {vm} && ip link set vh-vm master vmbr0 && \
         ip addr add 10.232.0.1/24 dev vmbr0 && \
         ip link set vh-up up && ip link set vh-vm up && ip link set vmbr0 up && \
         sysctl -qw net.ipv4.ip_forward=0",
        ext = ext.name,
        vm = vm.name
    ));
    ext.sh("ip addr add 10.232.0.2/24 dev ve-ext && ip link set ve-ext up");
    vm.sh("ip addr add 10.232.0.3/24 dev eth0 && ip link set eth0 up");
    let (out, text) = diagnose(&host, &[], || {
        ext.sh("ping -c 2 -i 0.2 -W 2 10.232.0.3");
        ext.sh("ping -c 2 -i 0.2 -W 2 10.232.0.1");
    });
    assert_eq!(
        out.code(),
        Some(0),
        "an L2 bridge needs no forwarding:\n{text}"
    );
    assert!(!text.contains("forwarding_off"), "{text}");
}

#[test]
fn no_forwarding_finding_when_ports_are_published_on_loopback_only() {
    if !privileged("no_forwarding_finding_when_ports_are_published_on_loopback_only") {
        return;
    }
    // `docker run -p 127.0.0.1:9091:80` on a network without masquerading: the DNAT
    // matches only the host's own loopback traffic.
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.host.sh(&format!(
        "iptables -t nat -F && iptables -t nat -N DOCKER && \
         iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER && \
         iptables -t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER && \
         iptables -t nat -A DOCKER -d 127.0.0.1/32 ! -i br0 -p tcp -m tcp --dport {p} -j DNAT --to-destination {c}:{cp}",
        p = DockerLikeHost::PUBLISHED_PORT,
        c = DockerLikeHost::CTR_ADDR,
        cp = DockerLikeHost::CTR_PORT,
    ));
    let (out, text) = diagnose(&topo.host, &[], || {
        let _ = topo.host.sh_output("curl -s -m 1 http://127.0.0.1:9091/");
    });
    assert_eq!(
        out.code(),
        Some(0),
        "a port published on 127.0.0.1 needs no forwarding:\n{text}"
    );
    assert!(!text.contains("forwarding_off"), "{text}");
}

#[test]
fn healthy_real_docker_host_with_input_scan_drops_has_no_finding() {
    if !privileged("healthy_real_docker_host_with_input_scan_drops_has_no_finding")
        || !may_run(
            "healthy_real_docker_host_with_input_scan_drops_has_no_finding",
            docker_available(),
            "dockerd, docker and busybox-static (cargo xtask setup)",
        )
    {
        return;
    }
    // dockerd's own ruleset (FORWARD policy DROP, DOCKER-USER, isolation chains, the
    // published port's DNAT and ACCEPT), plus the host's INPUT rule against scans.
    let engine = DockerEngine::start("vdocker");
    engine.import_busybox();
    let remote = engine.wire_remote();
    engine.docker(&[
        "run",
        "-d",
        "--name",
        "web",
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
    drop_ssh_scans(&engine.netns);
    let request = || {
        let out = remote.sh_output(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' -m 3 http://{ENGINE_ADDR}:9091/index.html"
        ));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // The container's httpd may need a moment.
    let deadline = Instant::now() + Duration::from_secs(15);
    while request() != "200" {
        assert!(
            Instant::now() < deadline,
            "the published port never answered:\n{}",
            engine.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let host = engine.host();
    let (out, text) = diagnose(&engine.netns, &["--docker-host", &host], || {
        for _ in 0..3 {
            assert_eq!(request(), "200", "the published port answers from remote");
            let scan = remote.sh_output(&format!("curl -s -m 1 http://{ENGINE_ADDR}:22/"));
            assert!(!scan.status.success(), "the scan is dropped");
        }
    });
    assert_eq!(
        out.code(),
        Some(0),
        "a healthy Docker host whose INPUT drops scans has no problem:\n{text}"
    );
    assert!(
        text.contains(SCAN_RULE_COMMENT),
        "the scan drops are a note: {text}"
    );
}

/// br_netfilter frees a DNAT-ed bridged frame that routing refuses; with forwarding on,
/// the cause here is strict reverse-path filtering (the source has no route back), and
/// the verdict must say so rather than "turn on ip_forward".
#[test]
fn br_netfilter_with_forwarding_on_names_rp_filter_not_forwarding() {
    if !privileged("br_netfilter_with_forwarding_on_names_rp_filter_not_forwarding") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    let ctr2 = Netns::create("vctr2");
    topo.host.sh(&format!(
        "ip link add vh-vctr2 type veth peer name eth0 netns {} && ip link set vh-vctr2 master br0 up && \
         sysctl -qw net.bridge.bridge-nf-call-iptables=1 && \
         sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.br0.rp_filter=1",
        ctr2.name,
    ));
    // A source the host has no route back to, and a frame to the first container's MAC
    // for an address nobody has: the bridge forwards it until br_netfilter hands it to
    // iptables, whose DNAT of :9091 makes it need routing.
    ctr2.sh("ip addr add 172.31.231.3/24 dev eth0 && ip addr add 192.0.2.77/32 dev eth0 && ip link set eth0 up");
    let mac = topo.ctr.sh("cat /sys/class/net/eth0/address");
    ctr2.sh(&format!(
        "ip neigh add 172.31.231.50 lladdr {} dev eth0",
        mac.trim()
    ));
    let (out, text) = diagnose(&topo.host, &[], || {
        let fail = ctr2.sh_output("curl -s -m 2 --interface 192.0.2.77 http://172.31.231.50:9091/");
        assert!(
            !fail.status.success(),
            "the DNAT-ed bridged request must fail"
        );
    });
    assert_eq!(out.code(), Some(1), "{text}");
    let verdict = text
        .lines()
        .find(|l| l.contains("[br_netfilter_dnat]"))
        .unwrap_or_else(|| panic!("a br_netfilter finding: {text}"));
    assert!(
        verdict.contains("strict reverse-path filtering on br0"),
        "{verdict}"
    );
    assert!(
        !text.contains("net.ipv4.ip_forward=1"),
        "forwarding is on: no ip_forward fix\n{text}"
    );
    assert!(text.contains("rp_filter=2"), "the loose-mode fix: {text}");
}
