//! The motivating incident, reproduced with namespaces: a published port on a bridge
//! network answers locally but not from another host because `ip_forward=0`, and
//! dropgate names the drop (`IP_INADDRERRORS` in `ip_error`) with the exact count the
//! kernel itself keeps (`InAddrErrors`).

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use dropgate_tests::{
    dropgate::DropgateRun, dropgate_bin, http::sample_sum, is_root, may_run, netns::DockerLikeHost,
    process::Guarded,
};

const DROPS: &str = "dropgate_packets_dropped_total";

/// IDs of loaded BPF programs with one of our program names (bpftool truncates names
/// to 15 characters, which both of ours fit in).
fn our_bpf_programs() -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "list", "--json"])
        .output()
        .expect("run bpftool (installed by cargo xtask setup)");
    let text = String::from_utf8_lossy(&out.stdout);
    // Avoids a JSON dependency: each program object starts with "id":N and has "name".
    text.split("{\"id\":")
        .skip(1)
        .filter(|obj| {
            obj.contains("\"name\":\"kfree_skb_btf\"") || obj.contains("\"name\":\"kfree_skb_tp\"")
        })
        .filter_map(|obj| {
            obj.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// A capability set (`CapEff`, `CapBnd`, ...) of process `pid`.
fn capabilities(pid: u32, set: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(set)?.strip_prefix(':'))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {set} line in /proc/{pid}/status"))
}

/// After attaching, dropgate gives up CAP_BPF and CAP_PERFMON, from the bounding set too.
fn assert_attach_capabilities_dropped(pid: u32) {
    let caps = capabilities(pid, "CapEff");
    let bounding = capabilities(pid, "CapBnd");
    assert_eq!(
        bounding & (1 << 39),
        0,
        "CAP_BPF must leave the bounding set too (CapBnd {bounding:#x})"
    );
    assert_eq!(
        caps & (1 << 39),
        0,
        "CAP_BPF must be dropped after attaching (CapEff {caps:#x})"
    );
    assert_eq!(
        caps & (1 << 38),
        0,
        "CAP_PERFMON must be dropped after attaching (CapEff {caps:#x})"
    );
}

/// The host's InAddrErrors once it has been still for half a second: curl gives up
/// while a SYN retransmission may still be on its way, and both sides must count the
/// same packets.
fn settled_in_addr_errors(topo: &DockerLikeHost) -> u64 {
    let mut last = topo.host.snmp("Ip", "InAddrErrors");
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let now = topo.host.snmp("Ip", "InAddrErrors");
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// Which of `ours` are still loaded, waiting up to 5 s: the kernel frees a program
/// shortly after its last descriptor closes (RCU), not at once.
fn programs_left(ours: &[u64]) -> Vec<u64> {
    let mut left = Vec::new();
    for _ in 0..50 {
        left = our_bpf_programs()
            .into_iter()
            .filter(|id| ours.contains(id))
            .collect();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    left
}

/// The container's service: dropgate's own gateway, as in the incident.
fn start_gateway_in_container(topo: &DockerLikeHost) -> Guarded {
    let mut command = topo
        .ctr
        .command(dropgate_bin().to_str().expect("utf-8 path"));
    command
        .args(["gateway", "--web.listen-address", "0.0.0.0:80"])
        .stdout(Stdio::null());
    let service = Guarded::spawn(command, "gateway in ctr");
    let ready = topo.ctr.sh_output(
        "for i in $(seq 100); do curl -sf -m 1 http://127.0.0.1/-/ready >/dev/null && exit 0; sleep 0.05; done; exit 1",
    );
    assert!(
        ready.status.success(),
        "the container's service did not become ready"
    );
    service
}

#[test]
fn forwarding_off_is_traced_as_ip_error_with_the_kernels_own_count() {
    if !may_run(
        "incident e2e",
        is_root(),
        "root (namespaces, iptables, BPF)",
    ) {
        return;
    }
    let topo = DockerLikeHost::build();
    let _service = start_gateway_in_container(&topo);
    let before_programs = our_bpf_programs();
    let mut dropgate = DropgateRun::start(&[]);
    let ours: Vec<u64> = our_bpf_programs()
        .into_iter()
        .filter(|id| !before_programs.contains(id))
        .collect();
    assert!(!ours.is_empty(), "dropgate run loaded no kfree_skb program");
    assert_attach_capabilities_dropped(dropgate.process.child.id());

    let host_netns = topo.host.name.as_str();
    let ip_error = [
        ("netns", host_netns),
        ("reason", "IP_INADDRERRORS"),
        ("location", "ip_error"),
    ];

    // 1. Forwarding off: cross-host fails, local succeeds, and every drop is counted.
    let snmp_before = topo.host.snmp("Ip", "InAddrErrors");
    let traced_before = dropgate.value(DROPS, &ip_error);
    let from_ext = topo.curl_from_ext("/-/healthy", 3);
    let from_host = topo.curl_from_host("/-/healthy", 3);
    assert_eq!(
        from_ext, None,
        "with ip_forward=0 the request from ext must fail"
    );
    assert_eq!(from_host, Some(200), "the host's own request must succeed");
    let snmp_after = settled_in_addr_errors(&topo);
    let snmp_delta = snmp_after - snmp_before;
    assert!(
        snmp_delta >= 1,
        "the kernel counted no InAddrErrors: the scenario did not drop"
    );
    let exposition = dropgate.scrape();
    let traced = sample_sum(&exposition, DROPS, &ip_error) - traced_before;
    if traced as u64 != snmp_delta {
        // Everything at ip_error, whatever namespace it was attributed to: tells an
        // attribution fault from a missed event.
        for line in exposition
            .lines()
            .filter(|l| l.starts_with(DROPS) && l.contains("ip_error"))
        {
            eprintln!("  ip_error anywhere: {line}");
        }
    }
    eprintln!("forwarding off: InAddrErrors delta {snmp_delta}, dropgate ip_error count {traced}");
    for line in exposition
        .lines()
        .filter(|l| l.starts_with(DROPS) && l.contains(host_netns))
    {
        eprintln!("  {line}");
    }
    assert_eq!(
        traced as u64, snmp_delta,
        "dropgate's count must equal the kernel's InAddrErrors delta"
    );
    let uplink_tcp = [
        ("netns", host_netns),
        ("reason", "IP_INADDRERRORS"),
        ("interface", DockerLikeHost::HOST_UPLINK),
        ("protocol", "tcp"),
    ];
    assert!(
        sample_sum(&exposition, DROPS, &uplink_tcp) >= traced,
        "the drops must be attributed to interface {} and protocol tcp",
        DockerLikeHost::HOST_UPLINK
    );

    // 2. Forwarding on: the request from ext succeeds and no new ip_error drops appear.
    topo.set_forwarding(true);
    let traced_before = dropgate.value(DROPS, &ip_error);
    assert_eq!(
        topo.curl_from_ext("/-/healthy", 5),
        Some(200),
        "with ip_forward=1 the request from ext must succeed"
    );
    let traced_after = dropgate.value(DROPS, &ip_error);
    assert_eq!(
        traced_after as u64, traced_before as u64,
        "no ip_error drops with forwarding on"
    );

    // 3. dropgate exits cleanly on SIGTERM and leaves no program behind.
    let status = dropgate
        .process
        .stop("TERM", Duration::from_secs(10))
        .expect("dropgate exits after SIGTERM");
    assert!(status.success(), "dropgate run exited with {status}");
    let left = programs_left(&ours);
    assert!(
        left.is_empty(),
        "BPF programs {left:?} still loaded after dropgate exited"
    );
}
