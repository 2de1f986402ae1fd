//! `dropgate diagnose --probe` on Docker-like hosts built in namespaces, with no other
//! host sending anything: the probe's own connection attempt shows where traffic from
//! outside dies, and nothing of the probe is left afterwards, also when it is killed.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dropgate_tests::{
    dropgate::run_diagnose, dropgate_bin, is_root, may_run, netns::DockerLikeHost,
};

fn privileged(test: &str) -> bool {
    may_run(test, is_root(), "root (namespaces, veths, iptables, BPF)")
}

/// The topology with a default route on the host (its uplink, as on a real machine).
fn host() -> DockerLikeHost {
    let topo = DockerLikeHost::build();
    topo.host.sh(&format!(
        "ip route add default via {}",
        DockerLikeHost::EXT_ADDR
    ));
    topo.start_http_service();
    topo
}

fn probe(topo: &DockerLikeHost, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["--duration", "4s", "--netns", &topo.host.name, "--probe"];
    args.extend(extra);
    let (status, text) = run_diagnose(&args, &[], || {});
    (status.code(), text)
}

/// Links whose name starts with the probe's prefix, in the host namespace.
fn probe_links(topo: &DockerLikeHost) -> String {
    topo.host
        .sh("ip -o link show | grep -o 'dgp[0-9]*[hp]' || true")
        .trim()
        .to_owned()
}

#[test]
fn forwarding_off_the_probe_names_ip_error_and_the_fix_then_reachable_after_it() {
    if !privileged("forwarding_off_the_probe_names_ip_error_and_the_fix_then_reachable_after_it") {
        return;
    }
    let topo = host();
    let before = topo.host.snmp("Ip", "InAddrErrors");
    let (code, text) = probe(&topo, &[]);
    println!("--- broken ---\n{text}");
    assert_eq!(code, Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("probe "))
        .unwrap_or_else(|| panic!("a probe line: {text}"));
    assert!(
        line.starts_with(
            "probe 10.231.0.1:9091/tcp (published -> 172.31.231.2:80): TCP SYN from 198.1"
        ),
        "{line}"
    );
    assert!(
        line.contains("(settings of vh-ext)") && line.contains("UNREACHABLE"),
        "{line}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("dropped at ip_error (IP_INADDRERRORS) on dgp")),
        "the SYN's drop named: {text}"
    );
    assert!(
        text.contains(
            "after the fix, `dropgate diagnose --probe 10.231.0.1:9091/tcp` answers: reachable"
        ),
        "{text}"
    );
    assert!(
        text.contains("PROBLEM [forwarding_off]: forwarding is off on vh-ext")
            && text.contains("fix: sysctl -w net.ipv4.ip_forward=1"),
        "the probe's drops feed the finding and its fix: {text}"
    );
    assert!(
        topo.host.snmp("Ip", "InAddrErrors") > before,
        "the kernel counted the probe's drops too"
    );
    assert_eq!(probe_links(&topo), "", "no probe link left");

    topo.set_forwarding(true);
    let (code, text) = probe(&topo, &[]);
    println!("--- fixed ---\n{text}");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("no problem found"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("probe 10.231.0.1:9091/tcp")
                && l.contains("reachable: answered in")
                && l.contains("HTTP GET / answered 200")),
        "{text}"
    );
    assert_eq!(probe_links(&topo), "", "no probe link left");

    // The same in the JSON report.
    let (code, json) = probe(&topo, &["9091", "--json"]);
    assert_eq!(code, Some(0), "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON report");
    let first = &report["probes"][0];
    assert_eq!(first["target"]["port"], 9091, "{first}");
    assert_eq!(
        first["target"]["published_to"], "172.31.231.2:80",
        "{first}"
    );
    assert_eq!(first["outcome"]["result"], "reachable", "{first}");
    assert_eq!(first["outcome"]["http_status"], 200, "{first}");
}

#[test]
fn a_forward_drop_rule_and_per_interface_forwarding_are_each_found_by_the_probe() {
    if !privileged("a_forward_drop_rule_and_per_interface_forwarding_are_each_found_by_the_probe") {
        return;
    }
    let topo = host();
    topo.set_forwarding(true);
    topo.host.sh(&format!(
        "iptables -I FORWARD -p tcp -d {} --dport 80 -m comment --comment 'block the app' -j DROP",
        DockerLikeHost::CTR_ADDR
    ));
    let (code, text) = probe(&topo, &["9091"]);
    println!("--- FORWARD DROP ---\n{text}");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("dropped") && l.contains("NETFILTER_DROP")),
        "{text}"
    );
    topo.host.sh(&format!(
        "iptables -D FORWARD -p tcp -d {} --dport 80 -m comment --comment 'block the app' -j DROP",
        DockerLikeHost::CTR_ADDR
    ));

    // IPv4 forwarding on globally, off on the uplink only: the probe's ingress copies it.
    topo.host.sh(&format!(
        "sysctl -qw net.ipv4.conf.{}.forwarding=0",
        DockerLikeHost::HOST_UPLINK
    ));
    let (code, text) = probe(&topo, &["9091/tcp"]);
    println!("--- uplink forwarding off ---\n{text}");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("UNREACHABLE"), "{text}");
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("dropped")),
        "where it died: {text}"
    );
}

#[test]
fn without_a_default_route_the_probe_says_what_to_give_it() {
    if !privileged("without_a_default_route_the_probe_says_what_to_give_it") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.set_forwarding(true);
    let (code, text) = probe(&topo, &[]);
    assert_eq!(code, Some(2), "unchecked, not healthy: {text}");
    assert!(
        text.contains("not checked: probe: no default route") && text.contains("--probe ADDR:PORT"),
        "{text}"
    );
    // Given the host's address, the interface holding it is the uplink.
    topo.start_http_service();
    let (code, text) = probe(&topo, &["10.231.0.1:9091"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("probe 10.231.0.1:9091/tcp")
                && l.contains("(settings of vh-ext)")
                && l.contains("HTTP GET / answered 200")),
        "{text}"
    );
}

#[test]
fn a_probe_killed_midway_leaves_nothing_behind() {
    if !privileged("a_probe_killed_midway_leaves_nothing_behind") {
        return;
    }
    let topo = host();
    // No answer for 3 s per attempt: time to kill it while its link exists.
    let mut child = Command::new(dropgate_bin())
        .args(["diagnose", "--duration", "20s", "--netns", &topo.host.name])
        .args(["--probe", "9091", "--probe", "9092"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dropgate diagnose");
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe_links(&topo).is_empty() {
        assert!(Instant::now() < deadline, "the probe link never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id();
    // The probe's namespace: held by dropgate, by no other process, and not named.
    let others: Vec<u32> = all_pids().into_iter().filter(|p| *p != pid).collect();
    let elsewhere = namespace_fds(&others);
    let named = named_namespaces();
    let held: Vec<u64> = namespace_fds(&[pid])
        .into_iter()
        .filter(|ns| !elsewhere.contains(ns) && !named.contains(ns))
        .collect();
    assert!(
        !held.is_empty(),
        "dropgate holds the probe's namespace while probing"
    );
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !probe_links(&topo).is_empty() {
        assert!(
            Instant::now() < deadline,
            "probe links left after SIGKILL: {}",
            probe_links(&topo)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let addresses = topo
        .host
        .sh("ip -o addr show | grep -c '198\\.1[89]\\.' || true");
    assert_eq!(addresses.trim(), "0", "no probe address left");
    let routes = topo.host.sh("ip route show | grep -c 'dgp' || true");
    assert_eq!(routes.trim(), "0", "no probe route left");
    let referenced = namespace_fds(&all_pids());
    let left: Vec<u64> = held
        .iter()
        .filter(|ns| referenced.contains(ns) || named_namespaces().contains(ns))
        .copied()
        .collect();
    assert!(
        left.is_empty(),
        "probe namespaces still referenced: {left:?}"
    );
    assert!(
        !Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list")
            .stdout
            .windows(3)
            .any(|w| w == b"dgp"),
        "no named namespace either"
    );

    // The next run works and also leaves nothing.
    let (code, _) = probe(&topo, &[]);
    assert_eq!(code, Some(1), "forwarding is still off");
    assert_eq!(probe_links(&topo), "");
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Inodes of the network namespaces that the processes `pids` are in or hold open.
fn namespace_fds(pids: &[u32]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut look = |link: std::path::PathBuf| {
        if let Ok(target) = std::fs::read_link(link) {
            let text = target.to_string_lossy().into_owned();
            if let Some(inode) = text
                .strip_prefix("net:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
            {
                out.push(inode);
            }
        }
    };
    for pid in pids {
        look(format!("/proc/{pid}/ns/net").into());
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                look(fd.path());
            }
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                look(task.path().join("ns/net"));
            }
        }
    }
    out
}

/// Inodes of the namespaces named in /run/netns.
fn named_namespaces() -> Vec<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.metadata().ok().map(|m| m.ino()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ipv6_forwarding_off_is_found_by_the_probe_alone() {
    if !privileged("ipv6_forwarding_off_is_found_by_the_probe_alone") {
        return;
    }
    let topo = host();
    topo.set_forwarding(true);
    // Dual stack: the uplink and the bridge get IPv6 too; IPv6 forwarding stays off.
    topo.host.sh(&format!(
        "ip -6 addr add fd31::1/64 dev {up} nodad && ip -6 addr add fd29::1/64 dev br0 nodad && \
         ip -6 route add default via fd31::2 && sysctl -qw net.ipv6.conf.all.forwarding=0",
        up = DockerLikeHost::HOST_UPLINK
    ));
    topo.ext.sh("ip -6 addr add fd31::2/64 dev ve-ext nodad");
    topo.ctr.sh(
        "ip -6 addr add fd29::2/64 dev eth0 nodad && ip -6 route add default via fd29::1 && \
         (/usr/bin/python3 -m http.server 8080 --bind fd29::2 >/dev/null 2>&1 &) ; sleep 0.5",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !topo.ctr.sh("ss -Hltn").contains("[fd29::2]:8080") {
        assert!(Instant::now() < deadline, "the IPv6 service never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = snmp6(&topo, "Ip6InAddrErrors");
    let (code, text) = probe(&topo, &["[fd29::2]:8080"]);
    println!("--- IPv6 forwarding off ---\n{text}");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.lines().any(
            |l| l.starts_with("probe [fd29::2]:8080/tcp: TCP SYN from [fd64:")
                && l.contains("UNREACHABLE")
        ),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("dropped at ip6_forward")),
        "the IPv6 forwarding drop named: {text}"
    );
    assert!(
        snmp6(&topo, "Ip6InAddrErrors") > before,
        "the kernel counted it"
    );

    topo.host.sh("sysctl -qw net.ipv6.conf.all.forwarding=1");
    let (code, text) = probe(&topo, &["[fd29::2]:8080"]);
    println!("--- IPv6 forwarding on ---\n{text}");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("HTTP GET / answered 200"), "{text}");
}

/// A counter of the host namespace's `/proc/net/snmp6` (`name value` lines).
fn snmp6(topo: &DockerLikeHost, field: &str) -> u64 {
    topo.host
        .sh("cat /proc/net/snmp6")
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(char::is_whitespace)?;
            (name == field).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/net/snmp6"))
}

#[test]
fn a_udp_port_is_probed_with_a_datagram() {
    if !privileged("a_udp_port_is_probed_with_a_datagram") {
        return;
    }
    let topo = host();
    // A published UDP port and a service in the container that answers each datagram.
    topo.host.sh(&format!(
        "iptables -t nat -A PREROUTING -p udp --dport 5353 -j DNAT --to-destination {}:5353",
        DockerLikeHost::CTR_ADDR
    ));
    topo.ctr.sh(
        "(/usr/bin/python3 -c 'import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((\"0.0.0.0\",5353))\nwhile True:\n d,a=s.recvfrom(512)\n s.sendto(d,a)' >/dev/null 2>&1 &) ; sleep 0.5",
    );
    let (code, text) = probe(&topo, &["5353/udp"]);
    println!("--- UDP, forwarding off ---\n{text}");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with(
            "probe 10.231.0.1:5353/udp (published -> 172.31.231.2:5353): UDP datagram from"
        ) && l.contains("UNREACHABLE")),
        "{text}"
    );
    assert!(
        text.contains("dropped at ip_error (IP_INADDRERRORS)"),
        "{text}"
    );
    topo.set_forwarding(true);
    let (code, text) = probe(&topo, &["5353/udp"]);
    println!("--- UDP, forwarding on ---\n{text}");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("probe 10.231.0.1:5353/udp")
                && l.contains("reachable: answered in")),
        "{text}"
    );
}

#[test]
fn without_privileges_the_probe_refuses_and_says_what_it_needs() {
    if !privileged("without_privileges_the_probe_refuses_and_says_what_it_needs") {
        return;
    }
    // As nobody, in the machine's namespace: creating the probe's namespace fails before
    // anything is created or sent.
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(dropgate_bin())
        .args(["diagnose", "--duration", "1s", "--probe", "127.0.0.1:9"])
        .output()
        .expect("run setpriv");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "unchecked: {text}");
    assert!(
        text.contains("not checked: probe:")
            && text.contains("needs CAP_NET_ADMIN and CAP_SYS_ADMIN"),
        "{text}"
    );
    assert!(
        !text.contains("probe 127.0.0.1:9"),
        "nothing was probed: {text}"
    );
}
