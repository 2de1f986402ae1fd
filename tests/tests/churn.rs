//! Namespace churn: the kernel's drop keys of namespaces and interfaces that are gone
//! must leave its table, their counts must stay exact, and their names must not outlive
//! them or pass to a namespace that comes after.
//!
//! 1. 2,000 short-lived "container" namespaces, each wired to one long-lived "host"
//!    namespace by a veth pair (as Docker does), drop packets both ways on the
//!    forwarding-off path (`ip_error`, IP_INADDRERRORS) and are deleted in turn, with a
//!    small `--trace.max-keys`: nothing may be uncounted, the host's count (its dead
//!    veths folded into `interface="gone"`) must equal its InAddrErrors exactly, the
//!    containers' counts must reach `netns="gone"` in full, and no container's
//!    namespace or interface name may be left on /metrics.
//! 2. A namespace created right after another is deleted (with the same inode where
//!    the kernel hands it out again) has only its own counts and names.
//!
//! The packets are IPv4 with protocol 253 (reserved for experiments), labelled
//! `protocol="ipv4"`, so that other tests' namespaces dying at the same time cannot add
//! to the `gone` series checked here.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::Command,
    time::{Duration, Instant},
};

use dropgate_tests::{
    dropgate::DropgateRun, http::sample_sum, is_root, may_run, netns::snmp_value,
};

const DROPS: &str = "dropgate_packets_dropped_total";
const UNCOUNTED: &str = "dropgate_tracer_uncounted_total";
/// IP protocol of the test's packets: reserved for experiments (RFC 3692), so nothing
/// else on the machine sends it.
const PROTOCOL: i32 = 253;

/// Runs `work` on a thread of its own that first enters the namespace `name`.
fn in_netns<T: Send>(name: &str, work: impl FnOnce() -> T + Send) -> T {
    let file = File::open(format!("/run/netns/{name}")).expect("open the namespace file");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a thread of ours that ends right after `work`.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns into {name}");
                work()
            })
            .join()
            .expect("thread in namespace")
    })
}

/// Sends `count` IPv4 packets of protocol [`PROTOCOL`] to `dest` from the calling
/// thread's namespace.
fn send_raw(dest: [u8; 4], count: u32) {
    // SAFETY: plain socket creation, checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, PROTOCOL) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as u16;
    addr.sin_addr.s_addr = u32::from_ne_bytes(dest);
    let payload = [0u8; 8];
    for _ in 0..count {
        // SAFETY: buffer and address valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                fd,
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert!(sent >= 0, "sendto: {}", std::io::Error::last_os_error());
    }
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
}

/// `Ip: InAddrErrors` of the calling thread's namespace.
fn in_addr_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read snmp");
    snmp_value(&text, "Ip", "InAddrErrors").expect("InAddrErrors")
}

/// Waits (bounded) until the calling thread's InAddrErrors reach `want`; returns them.
fn wait_in_addr_errors(want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = in_addr_errors();
        if now >= want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace added by name and deleted on drop (also when the test fails).
struct Named(String);

impl Named {
    fn add(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        Self(name)
    }

    fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(format!("/run/netns/{}", self.0))
            .expect("namespace file")
            .ino()
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Wires a new container namespace `ctr` to `host` by the veth `host_if` (host side)
/// and `eth0`; turns forwarding off on both sides. Host 10.201.0.1, container
/// 10.201.0.2; each routes one foreign /24 to the other, which it cannot forward.
fn wire(host: &str, ctr: &str, host_if: &str) {
    ip(&[
        "-n", host, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ctr,
    ]);
    ip(&["-n", host, "addr", "add", "10.201.0.1/30", "dev", host_if]);
    ip(&["-n", host, "link", "set", host_if, "up"]);
    ip(&[
        "-n",
        host,
        "route",
        "replace",
        "10.203.0.0/24",
        "via",
        "10.201.0.2",
        "dev",
        host_if,
    ]);
    ip(&["-n", ctr, "addr", "add", "10.201.0.2/30", "dev", "eth0"]);
    ip(&["-n", ctr, "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        ctr,
        "route",
        "add",
        "10.200.0.0/24",
        "via",
        "10.201.0.1",
    ]);
    for ns in [host, ctr] {
        in_netns(ns, || {
            std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "0")
                .expect("forwarding off (inside the test's namespace)");
        });
    }
}

/// Series of `exposition` (drop counts of the test's protocol) whose labels contain
/// `needle`.
fn lines_with<'a>(exposition: &'a str, needle: &str) -> Vec<&'a str> {
    exposition
        .lines()
        .filter(|l| l.starts_with(DROPS) && l.contains(needle))
        .collect()
}

/// A counter's value on `exposition`, summed over the series carrying `labels`
/// (counts are integers, far below 2^53).
fn count(exposition: &str, labels: &[(&str, &str)]) -> u64 {
    sample_sum(exposition, DROPS, labels) as u64
}

/// One container's life: created, wired to `host`, dropping both ways, deleted.
/// Returns the drops its own namespace counted.
fn container_lifetime(host: &str, pid: u32, i: u32) -> u64 {
    let ctr = Named::add(format!("dg-churn-{pid}-{i}"));
    wire(host, &ctr.0, &format!("dgh{pid}x{i}"));
    // Container -> host: freed in the host's ip_error on the veth.
    let host_now = in_netns(host, in_addr_errors);
    in_netns(&ctr.0, || send_raw([10, 200, 0, 1], PACKETS_EACH_WAY));
    in_netns(host, || {
        wait_in_addr_errors(host_now + u64::from(PACKETS_EACH_WAY))
    });
    // Host -> container: freed in the container's ip_error.
    in_netns(host, || send_raw([10, 203, 0, 1], PACKETS_EACH_WAY));
    in_netns(&ctr.0, || wait_in_addr_errors(u64::from(PACKETS_EACH_WAY)))
    // Dropping `ctr` deletes the namespace and with it both ends of the veth.
}

const CHURN_NAMESPACES: u32 = 2_000;
const PACKETS_EACH_WAY: u32 = 3;

#[test]
fn churn_of_namespaces_loses_no_count_and_leaves_no_name() {
    if !may_run("churn e2e", is_root(), "root (namespaces, BPF)") {
        return;
    }
    let pid = std::process::id();
    let host = Named::add(format!("dg-churnhost-{pid}"));
    ip(&["-n", &host.0, "link", "set", "lo", "up"]);
    // Far fewer keys than the churn makes (about 6,000), so only eviction keeps the table
    // from filling; enough for the keys alive at once at full speed on a quiet machine
    // (45 namespaces a second, each key kept about three seconds after its namespace).
    let dropgate =
        DropgateRun::start(&["--trace.max-keys", "2048", "--trace.samples-per-sec", "0"]);
    let host_before = in_netns(&host.0, in_addr_errors);
    let gone_labels = [
        ("netns", "gone"),
        ("location", "ip_error"),
        ("reason", "IP_INADDRERRORS"),
        ("protocol", "ipv4"),
    ];
    let gone_before = count(&dropgate.scrape(), &gone_labels);
    let started = Instant::now();
    let mut ctr_drops = 0;
    let mut max_uncounted = 0_u64;
    for i in 0..CHURN_NAMESPACES {
        ctr_drops += container_lifetime(&host.0, pid, i);
        if i % 100 == 99 {
            let uncounted = dropgate.value(UNCOUNTED, &[]) as u64;
            max_uncounted = max_uncounted.max(uncounted);
            eprintln!(
                "churn: {} namespaces in {:.1}s, uncounted {uncounted}",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let churn_secs = started.elapsed().as_secs_f64();
    let host_delta = in_netns(&host.0, in_addr_errors) - host_before;
    assert_eq!(
        host_delta,
        u64::from(CHURN_NAMESPACES * PACKETS_EACH_WAY),
        "every container's packets reached the host's ip_error"
    );
    // Eviction runs every second with a grace of one: give the last ones time.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (exposition, gone_delta, stale) = loop {
        let exposition = dropgate.scrape();
        let gone_delta = count(&exposition, &gone_labels) - gone_before;
        let stale: Vec<String> = lines_with(&exposition, &format!("dg-churn-{pid}-"))
            .into_iter()
            .chain(lines_with(&exposition, &format!("dgh{pid}x")))
            .map(str::to_owned)
            .collect();
        if (stale.is_empty() && gone_delta >= ctr_drops) || Instant::now() > deadline {
            break (exposition, gone_delta, stale);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "churn: {CHURN_NAMESPACES} namespaces in {churn_secs:.1}s; host drops {host_delta}, container drops {ctr_drops}"
    );
    assert!(
        stale.is_empty(),
        "names of deleted namespaces and interfaces are still served:\n{}",
        stale.join("\n")
    );
    let uncounted = sample_sum(&exposition, UNCOUNTED, &[]) as u64;
    assert_eq!(
        max_uncounted.max(uncounted),
        0,
        "drops went uncounted: the key table filled"
    );
    let host_counted = count(
        &exposition,
        &[
            ("netns", &host.0),
            ("location", "ip_error"),
            ("reason", "IP_INADDRERRORS"),
            ("protocol", "ipv4"),
        ],
    );
    assert_eq!(
        host_counted, host_delta,
        "the host's count (dead veths under interface=\"gone\") equals its InAddrErrors"
    );
    assert_eq!(
        count(
            &exposition,
            &[
                ("netns", &host.0),
                ("interface", "gone"),
                ("protocol", "ipv4")
            ]
        ),
        host_delta,
        "every veth is gone, so all of the host's counts are under interface=\"gone\""
    );
    assert_eq!(
        gone_delta, ctr_drops,
        "the deleted containers' counts are all under netns=\"gone\", none lost, none twice"
    );
}

#[test]
fn a_namespace_made_after_another_is_deleted_inherits_nothing() {
    if !may_run("namespace reuse e2e", is_root(), "root (namespaces, BPF)") {
        return;
    }
    let pid = std::process::id();
    let host = Named::add(format!("dg-reusehost-{pid}"));
    ip(&["-n", &host.0, "link", "set", "lo", "up"]);
    let dropgate = DropgateRun::start(&["--trace.samples-per-sec", "0"]);

    let old = Named::add(format!("dg-old-{pid}"));
    wire(&host.0, &old.0, &format!("dgo{pid}"));
    in_netns(&host.0, || send_raw([10, 203, 0, 1], 5));
    assert_eq!(in_netns(&old.0, || wait_in_addr_errors(5)), 5);
    // Let dropgate name the old namespace and its interface before it goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let old_drops = [
        ("netns", old.0.as_str()),
        ("interface", "eth0"),
        ("protocol", "ipv4"),
    ];
    while count(&dropgate.scrape(), &old_drops) < 5 {
        assert!(
            Instant::now() < deadline,
            "old namespace's drops never named"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let old_inode = old.inode();
    drop(old);

    // The kernel may hand the inode out again (older kernels do at once, the lowest
    // free one); try for a while, keep the first namespace that gets it, or the last.
    let mut new = None;
    for attempt in 0..50 {
        let candidate = Named::add(format!("dg-new{attempt}-{pid}"));
        let reused = candidate.inode() == old_inode;
        new = Some(candidate);
        if reused {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let new = new.expect("at least one attempt");
    let reused = new.inode() == old_inode;
    eprintln!(
        "reuse: inode {old_inode} {}",
        if reused {
            "handed out again"
        } else {
            "not handed out again within 50 namespaces"
        }
    );
    // Its own interfaces: a veth pair first, so that its eth0 has another index.
    ip(&[
        "-n", &new.0, "link", "add", "dgnew0", "type", "veth", "peer", "name", "dgnew1",
    ]);
    wire(&host.0, &new.0, &format!("dgn{pid}"));
    in_netns(&host.0, || send_raw([10, 203, 0, 1], 7));
    assert_eq!(in_netns(&new.0, || wait_in_addr_errors(7)), 7);

    let deadline = Instant::now() + Duration::from_secs(10);
    let exposition = loop {
        let exposition = dropgate.scrape();
        let done = sample_sum(
            &exposition,
            DROPS,
            &[("netns", &new.0), ("protocol", "ipv4")],
        ) >= 7.0
            && lines_with(&exposition, &format!("dg-old-{pid}")).is_empty();
        if done || Instant::now() > deadline {
            break exposition;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let new_series: Vec<&str> = lines_with(&exposition, &format!("netns=\"{}\"", new.0))
        .into_iter()
        .filter(|l| l.contains("protocol=\"ipv4\""))
        .collect();
    assert_eq!(
        count(
            &exposition,
            &[("netns", &new.0), ("interface", "eth0"), ("protocol", "ipv4")]
        ),
        7,
        "the new namespace has its own 7 drops, on its own eth0, and not the old one's 5: {new_series:?}"
    );
    assert!(
        lines_with(&exposition, &format!("dg-old-{pid}")).is_empty(),
        "the deleted namespace's name is still served"
    );
    // The old namespace's 5 drops were on an interface that no longer exists anywhere:
    // no series may carry the old inode as a live namespace with a name it had.
    let old_label = format!("netns=\"{old_inode}\"");
    assert!(
        lines_with(&exposition, &old_label)
            .iter()
            .all(|l| !l.contains("protocol=\"ipv4\"")),
        "the old namespace's counts are still under its inode: {:?}",
        lines_with(&exposition, &old_label)
    );
}
