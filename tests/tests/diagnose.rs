//! `dropgate diagnose` on Docker-like hosts built in namespaces: each broken setup gets
//! its finding with the right words and exit code 1; a healthy one exits 0 and says so.

use std::process::{Command, ExitStatus};

use dropgate_tests::{
    dropgate::run_diagnose, dropgate_bin, is_root, may_run, netns::DockerLikeHost,
};

fn privileged(test: &str) -> bool {
    may_run(test, is_root(), "root (namespaces, iptables, BPF)")
}

/// Runs `dropgate diagnose` on the host namespace while `traffic` runs.
fn diagnose(topo: &DockerLikeHost, traffic: impl FnOnce()) -> (ExitStatus, String) {
    run_diagnose(
        &["--duration", "5s", "--netns", &topo.host.name],
        &[],
        traffic,
    )
}

fn request_fails(topo: &DockerLikeHost) {
    assert_eq!(
        topo.curl_from_ext("/", 2),
        None,
        "the request from ext must fail"
    );
}

#[test]
fn the_incident_verdict_names_interface_bridge_destination_and_fix() {
    if !privileged("the_incident_verdict_names_interface_bridge_destination_and_fix") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    let (out, text) = diagnose(&topo, || request_fails(&topo));
    assert_eq!(out.code(), Some(1), "a problem was found");
    let verdict = text.lines().next().expect("a verdict line");
    assert!(verdict.starts_with("PROBLEM [forwarding_off]: forwarding is off on vh-ext (net.ipv4.ip_forward = 0); published port 9091 -> 172.31.231.2:80 (bridge br0) dropped"), "{verdict}");
    assert!(
        text.contains("fix: sysctl -w net.ipv4.ip_forward=1"),
        "the sysctl fix"
    );
    assert!(text.contains("/etc/sysctl.d/"), "how to make it last");
    assert!(
        text.contains("network_mode: host"),
        "the host-network alternative"
    );
    assert!(
        text.contains("InAddrErrors rose by"),
        "the kernel's counter as evidence"
    );

    // After the fix: healthy, and the request gets through.
    topo.set_forwarding(true);
    let (out, text) = diagnose(&topo, || {
        assert_eq!(
            topo.curl_from_ext("/", 3),
            Some(200),
            "fixed: the request from ext succeeds"
        );
    });
    assert_eq!(out.code(), Some(0), "healthy after the fix:\n{text}");
    assert!(text.starts_with("no problem found"), "{text}");
}

#[test]
fn forwarding_off_on_one_interface() {
    if !privileged("forwarding_off_on_one_interface") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    topo.host.sh(&format!(
        "sysctl -qw net.ipv4.conf.{}.forwarding=0",
        DockerLikeHost::HOST_UPLINK
    ));
    let (out, text) = diagnose(&topo, || request_fails(&topo));
    assert_eq!(out.code(), Some(1));
    assert!(
        text.contains("PROBLEM [forwarding_off_interface]: forwarding is off on vh-ext (net.ipv4.conf.vh-ext.forwarding = 0)"),
        "{text}"
    );
    assert!(
        text.contains("fix: sysctl -w net.ipv4.conf.vh-ext.forwarding=1"),
        "{text}"
    );
}

#[test]
fn forward_policy_drop() {
    if !privileged("forward_policy_drop") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    topo.host.sh("iptables -P FORWARD DROP");
    let (out, text) = diagnose(&topo, || request_fails(&topo));
    assert_eq!(out.code(), Some(1));
    assert!(
        text.contains("PROBLEM [forward_policy_drop]: the FORWARD path drops traffic"),
        "{text}"
    );
    assert!(
        text.contains("-P FORWARD DROP"),
        "the policy is evidence: {text}"
    );
}

#[test]
fn rp_filter_drop() {
    if !privileged("rp_filter_drop") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.set_forwarding(true);
    topo.strict_rp_filter_with_spoofable_source();
    let (out, text) = diagnose(&topo, || {
        let _ = topo.ping_with_spoofed_source();
    });
    assert_eq!(out.code(), Some(1));
    assert!(
        text.contains("PROBLEM [rp_filter_drop]: reverse-path filtering drops"),
        "{text}"
    );
    assert!(text.contains("rp_filter=2"), "the loose-mode fix: {text}");
}

#[test]
fn unprivileged_diagnose_says_what_it_could_not_check() {
    if !privileged("unprivileged_diagnose_says_what_it_could_not_check") {
        return;
    }
    // As "nobody" with no capabilities: sysctls and counters only.
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(dropgate_bin())
        .args(["diagnose", "--duration", "1s"])
        .output()
        .expect("run setpriv (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("not checked: live trace: needs root"),
        "{text}"
    );
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "problem (1) or could-not-check (2), never healthy: {:?}\n{text}",
        out.status
    );
}

/// Containers on one bridge reaching each other through a DNAT: br_netfilter hands the
/// bridged frame to iptables, the DNAT makes it need routing, and forwarding is off.
#[test]
fn br_netfilter_dnat_between_containers_on_one_bridge() {
    if !privileged("br_netfilter_dnat_between_containers_on_one_bridge") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    // A second container on br0 that reaches the published port (DNAT in PREROUTING to
    // the first container) with a frame the bridge forwards rather than routes.
    let ctr2 = dropgate_tests::netns::Netns::create("ctr2");
    topo.host.sh(&format!(
        "ip link add vh-ctr2 type veth peer name eth0 netns {} && ip link set vh-ctr2 master br0 up && \
         sysctl -qw net.bridge.bridge-nf-call-iptables=1",
        ctr2.name,
    ));
    ctr2.sh("ip addr add 172.31.231.3/24 dev eth0 && ip link set eth0 up");
    // The frame goes to the first container's MAC for an address nobody has, so the
    // bridge forwards it until br_netfilter gives it to iptables, whose DNAT of :9091
    // then makes it need routing.
    let mac = topo.ctr.sh("cat /sys/class/net/eth0/address");
    ctr2.sh(&format!(
        "ip neigh add 172.31.231.50 lladdr {} dev eth0",
        mac.trim()
    ));
    let (out, text) = diagnose(&topo, || {
        let fail = ctr2.sh_output("curl -s -m 2 http://172.31.231.50:9091/");
        assert!(
            !fail.status.success(),
            "the DNAT-ed bridged request must fail"
        );
    });
    assert_eq!(out.code(), Some(1));
    assert!(
        text.contains("PROBLEM [forwarding_off]: forwarding is off on br0"),
        "{text}"
    );
    assert!(
        text.contains("br0 is a bridge and net.bridge.bridge-nf-call-iptables = 1"),
        "the br_netfilter path is named: {text}"
    );
    assert!(
        text.contains("fix: sysctl -w net.ipv4.ip_forward=1"),
        "{text}"
    );
}
