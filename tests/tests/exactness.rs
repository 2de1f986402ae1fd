//! Exactness under load, and no kernel objects left behind.
//!
//! 1. A flood of more than a million UDP datagrams into the forwarding-off path of the
//!    docker-like topology: dropgate's count for (host netns, `ip_error`,
//!    `IP_INADDRERRORS`) must equal the kernel's own `InAddrErrors` delta exactly, while
//!    the per-packet samples are rate-limited (suppressed or lost, and reported as such).
//!    On both hooks, and with the in-kernel drop cache at its default, off (every drop
//!    through the hash map), and at one slot with two flows on one CPU (one counted in
//!    the cache, the other in the hash map).
//! 2. `dropgate run` stopped by SIGINT (a normal Ctrl-C exit), SIGTERM and SIGKILL: no BPF
//!    program, map or link it held may remain loaded afterwards.

use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use dropgate_tests::{
    dropgate::DropgateRun, http::sample_sum, is_root, may_run, netns::DockerLikeHost,
};

const DROPS: &str = "dropgate_packets_dropped_total";
const SUPPRESSED: &str = "dropgate_samples_suppressed_total";
const LOST: &str = "dropgate_events_lost_total";
const UNCOUNTED: &str = "dropgate_tracer_uncounted_total";

/// The issue asks for at least a million drops in the forwarding-off path.
const FLOOD_PACKETS: u64 = 1_000_000;
/// Bounds one flood run; at the sender's ~300k packets/s a million takes a few seconds.
const FLOOD_SECONDS: u32 = 60;
/// A low sampling rate, so that a flood exhausts it many times over.
const SAMPLES_PER_SEC: &str = "100";

/// Runs the flood sender in `ext` towards `target` on CPU 0; returns how many datagrams
/// it sent.
fn flood(topo: &DockerLikeHost, target: &str, packets: u64) -> u64 {
    // On one CPU, with the pings of the mixed case: the drop cache is per CPU.
    let out = topo
        .ext
        .command("taskset")
        .args(["--cpu-list", "0", env!("CARGO_BIN_EXE_flood")])
        .args([
            target,
            "--count",
            &packets.to_string(),
            "--seconds",
            &FLOOD_SECONDS.to_string(),
        ])
        .output()
        .expect("run the flood sender in ext");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "flood failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("flood: {}", stdout.trim());
    stdout
        .split_whitespace()
        .find_map(|field| field.strip_prefix("sent="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("flood printed no sent=N: {stdout}"))
}

#[test]
fn a_million_drops_are_counted_exactly_on_tp_btf() {
    counted_exactly_while_samples_are_limited("tp-btf", None, 0);
}

/// The fallback hook reads the record and the skb differently: it must count just as
/// exactly.
#[test]
fn a_million_drops_are_counted_exactly_on_the_classic_tracepoint() {
    counted_exactly_while_samples_are_limited("tracepoint", None, 0);
}

/// Without the drop cache every drop goes through the hash map.
#[test]
fn a_million_drops_are_counted_exactly_through_the_hash_map_alone() {
    counted_exactly_while_samples_are_limited("tp-btf", Some("0"), 0);
}

/// One cache slot and two flows (ICMP and UDP) dropped on the same CPU: one flow is
/// counted in the slot, the other in the hash map (or both there, if a background drop
/// took the slot first). Each must still be exact.
#[test]
fn drops_split_between_the_cache_and_the_hash_map_are_counted_exactly() {
    counted_exactly_while_samples_are_limited("tp-btf", Some("1"), PINGS);
}

/// ICMP echo requests sent straight to the container's address in the mixed case.
const PINGS: u64 = 500;

fn counted_exactly_while_samples_are_limited(hook: &str, cache_slots: Option<&str>, pings: u64) {
    let slots = cache_slots.unwrap_or("default");
    if !may_run(
        &format!("exactness e2e ({hook}, cache slots {slots})"),
        is_root(),
        "root (namespaces, iptables, BPF)",
    ) {
        return;
    }
    let topo = DockerLikeHost::build();
    // The port published for UDP too (`docker run -p 9091:80/udp`): the datagrams are
    // DNAT-ed to the container and, with forwarding off, freed in `ip_error`.
    topo.host.sh(&format!(
        "iptables -t nat -A PREROUTING -p udp --dport {p} -j DNAT --to-destination {c}:{cp}",
        p = DockerLikeHost::PUBLISHED_PORT,
        c = DockerLikeHost::CTR_ADDR,
        cp = DockerLikeHost::CTR_PORT,
    ));
    // Resolve the host's MAC before the flood, so no datagram waits in (or overflows)
    // ext's neighbour queue.
    topo.ext
        .sh(&format!("ping -c 1 -W 2 {}", DockerLikeHost::HOST_ADDR));

    let mut args = vec![
        "--trace.hook",
        hook,
        "--trace.samples-per-sec",
        SAMPLES_PER_SEC,
    ];
    if let Some(slots) = cache_slots {
        args.extend(["--trace.cache-slots", slots]);
    }
    let dropgate = DropgateRun::start(&args);
    let host_netns = topo.host.name.as_str();
    let ip_error = [
        ("netns", host_netns),
        ("reason", "IP_INADDRERRORS"),
        ("location", "ip_error"),
    ];
    let before = dropgate.scrape();
    let snmp_before = topo.host.snmp("Ip", "InAddrErrors");

    if pings > 0 {
        ping_the_container(&topo, pings);
    }

    let (sent, snmp_delta) = flood_a_million(&topo, snmp_before, pings);
    assert!(
        snmp_delta >= FLOOD_PACKETS + pings,
        "only {snmp_delta} of {sent} datagrams reached ip_error in {host_netns}: the flood \
         did not exercise the forwarding-off path a million times"
    );

    let after = dropgate.scrape();
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample_sum(&after, name, labels) - sample_sum(&before, name, labels)
    };
    let traced = delta(DROPS, &ip_error);
    let suppressed = delta(SUPPRESSED, &[]);
    let lost = delta(LOST, &[]);
    let uncounted = delta(UNCOUNTED, &[]);
    eprintln!(
        "{hook}: sent {sent}; InAddrErrors delta {snmp_delta}; dropgate ip_error {traced}; \
         samples suppressed {suppressed}, lost {lost}; uncounted {uncounted}"
    );
    assert!(
        uncounted < 0.5,
        "the in-kernel table overflowed: {uncounted} drops went uncounted"
    );
    assert_eq!(
        traced as u64, snmp_delta,
        "dropgate's ip_error count must equal the kernel's InAddrErrors delta exactly"
    );
    assert!(
        suppressed + lost > 0.0,
        "with {SAMPLES_PER_SEC} samples/s and a million drops, samples must have been \
         suppressed or lost (and reported)"
    );
    let on_uplink = |protocol: &str| {
        let labels = [
            ("netns", host_netns),
            ("location", "ip_error"),
            ("interface", DockerLikeHost::HOST_UPLINK),
            ("protocol", protocol),
        ];
        (sample_sum(&after, DROPS, &labels) - sample_sum(&before, DROPS, &labels)) as u64
    };
    let (udp, icmp) = (on_uplink("udp"), on_uplink("icmp"));
    assert_eq!(
        icmp,
        pings,
        "every echo request must be counted once, on interface {} as icmp",
        DockerLikeHost::HOST_UPLINK
    );
    assert_eq!(
        udp,
        snmp_delta - pings,
        "every flood drop must be attributed to interface {} and protocol udp",
        DockerLikeHost::HOST_UPLINK
    );
}

/// Floods the published port until the host's `InAddrErrors` has grown by a million
/// (plus the `pings` already counted) since `snmp_before`. Datagrams can in principle be
/// lost before the host's routing decision (a full queue), so it tops up, a bounded
/// number of times. Returns datagrams sent and the `InAddrErrors` delta.
fn flood_a_million(topo: &DockerLikeHost, snmp_before: u64, pings: u64) -> (u64, u64) {
    let target = format!(
        "{}:{}",
        DockerLikeHost::HOST_ADDR,
        DockerLikeHost::PUBLISHED_PORT
    );
    let mut sent = 0;
    let mut snmp_delta = 0;
    for _ in 0..3 {
        sent += flood(topo, &target, FLOOD_PACKETS + pings - snmp_delta);
        snmp_delta = topo.host.snmp("Ip", "InAddrErrors") - snmp_before;
        if snmp_delta >= FLOOD_PACKETS + pings {
            break;
        }
    }
    (sent, snmp_delta)
}

/// A second flow, on the flood's CPU: `pings` echo requests from ext to the container's
/// own address, which the host does not forward either. No reply comes, hence no check
/// of ping's exit status, only of what it sent.
fn ping_the_container(topo: &DockerLikeHost, pings: u64) {
    topo.ext.sh(&format!(
        "ip route replace 172.31.231.0/24 via {}",
        DockerLikeHost::HOST_ADDR
    ));
    let out = topo.ext.sh_output(&format!(
        "taskset --cpu-list 0 ping -q -n -c {pings} -i 0.002 -W 1 {}",
        DockerLikeHost::CTR_ADDR
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{pings} packets transmitted")),
        "ping did not send {pings} echo requests: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// BPF object IDs of one kind, as `bpftool <kind> list --json` reports them.
fn loaded_ids(kind: &str) -> BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args([kind, "list", "--json"])
        .output()
        .expect("run bpftool (installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "bpftool {kind} list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Avoids a JSON dependency: every top-level object starts with `{"id":N`, and no
    // nested object does.
    String::from_utf8_lossy(&out.stdout)
        .split("{\"id\":")
        .skip(1)
        .filter_map(leading_number)
        .collect()
}

fn leading_number(text: &str) -> Option<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Map IDs a program uses (`"map_ids":[..]` of `bpftool prog show id N --json`).
fn map_ids_of_program(id: u64) -> BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .expect("run bpftool");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_once("\"map_ids\":[")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list.split(',').filter_map(leading_number).collect())
        .unwrap_or_default()
}

/// The BPF programs, maps and links a process holds, by ID.
#[derive(Debug, Default)]
struct BpfObjects {
    programs: BTreeSet<u64>,
    maps: BTreeSet<u64>,
    links: BTreeSet<u64>,
}

impl BpfObjects {
    /// Read from the process's file descriptors: each BPF object fd's `fdinfo` names its
    /// ID. This attributes objects to dropgate exactly, even when other processes load
    /// BPF objects meanwhile (bpftool here cannot show owning pids). Maps a program
    /// uses but whose fd was closed are added from the programs.
    fn held_by(pid: u32) -> Self {
        let mut objects = Self::default();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list dropgate's fds");
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let (set, key) = match target.to_string_lossy().as_ref() {
                "anon_inode:bpf-prog" => (&mut objects.programs, "prog_id:"),
                "anon_inode:bpf-map" => (&mut objects.maps, "map_id:"),
                "anon_inode:bpf_link" => (&mut objects.links, "link_id:"),
                _ => continue,
            };
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
            {
                set.insert(id);
            }
        }
        let used: Vec<u64> = objects
            .programs
            .iter()
            .flat_map(|&id| map_ids_of_program(id))
            .collect();
        objects.maps.extend(used);
        objects
    }

    /// Those of `self` still loaded in the kernel.
    fn still_loaded(&self) -> Self {
        Self {
            programs: &self.programs & &loaded_ids("prog"),
            maps: &self.maps & &loaded_ids("map"),
            links: &self.links & &loaded_ids("link"),
        }
    }

    fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.maps.is_empty() && self.links.is_empty()
    }
}

/// Starts `dropgate run`, records what it loaded, stops it with `signal`, and checks that
/// the kernel released all of it.
fn nothing_left_after(signal: &str) {
    let test = format!("cleanup after SIG{signal}");
    if !may_run(&test, is_root(), "root (BPF)") {
        return;
    }
    let before = BpfObjects {
        programs: loaded_ids("prog"),
        maps: loaded_ids("map"),
        links: loaded_ids("link"),
    };
    let mut dropgate = DropgateRun::start(&[]);
    let ours = BpfObjects::held_by(dropgate.process.child.id());
    eprintln!("{test}: dropgate holds {ours:?}");
    assert!(
        !ours.programs.is_empty() && !ours.maps.is_empty(),
        "dropgate run holds no BPF program or map: the fd scan found nothing to check"
    );
    for (kind, held, earlier) in [
        ("program", &ours.programs, &before.programs),
        ("map", &ours.maps, &before.maps),
        ("link", &ours.links, &before.links),
    ] {
        assert!(
            held.is_disjoint(earlier),
            "{kind}s {:?} existed before dropgate started: not new, cannot be ours",
            held & earlier
        );
    }

    let status = dropgate
        .process
        .stop(signal, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("dropgate run did not exit within 10 s of SIG{signal}"));
    if signal == "KILL" {
        assert!(!status.success(), "SIGKILL cannot end in success");
    } else {
        assert!(
            status.success(),
            "dropgate run must exit cleanly on SIG{signal}, exited with {status}"
        );
    }

    // After SIGKILL the kernel frees the objects when it closes the fds, some of it in
    // deferred work: allow a few seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = ours.still_loaded();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = ours.still_loaded();
    }
    assert!(
        left.is_empty(),
        "{test}: still loaded after dropgate exited: {left:?}"
    );
}

#[test]
fn nothing_of_ours_is_left_after_a_normal_exit_sigint() {
    nothing_left_after("INT");
}

#[test]
fn nothing_of_ours_is_left_after_sigterm() {
    nothing_left_after("TERM");
}

#[test]
fn nothing_of_ours_is_left_after_sigkill() {
    nothing_left_after("KILL");
}
