//! What `dropgate run` and `dropgate watch` may do once attached, read from the kernel's
//! own view of every thread (`/proc/<pid>/task/*/status`): capabilities are per thread,
//! so a drop made on one thread says nothing about the threads that parse network input.

use std::{process::Command, time::Duration};

use dropgate_tests::{
    dropgate::{DropgateRun, Watch},
    is_root, may_run,
    netns::Netns,
    process::Guarded,
};

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The set README's "Privileges" section documents for a port above 1024.
const DOCUMENTED: u64 = (1 << CAP_SYS_ADMIN)
    | (1 << CAP_SYS_PTRACE)
    | (1 << CAP_DAC_READ_SEARCH)
    | (1 << CAP_NET_ADMIN)
    | (1 << CAP_NET_RAW);

const DROPS: &str = "dropgate_packets_dropped_total";

fn privileged(test: &str) -> bool {
    may_run(test, is_root(), "root (namespaces, BPF)")
}

/// One thread's name and capability sets.
#[derive(Debug)]
struct ThreadCaps {
    tid: String,
    name: String,
    effective: u64,
    permitted: u64,
    bounding: u64,
    inheritable: u64,
    ambient: u64,
}

/// Every thread of `pid`, as the kernel reports it.
fn threads(pid: u32) -> Vec<ThreadCaps> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list /proc/<pid>/task");
    let mut out = Vec::new();
    for task in tasks {
        let task = task.expect("a task entry");
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended in between
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| Some(l.strip_prefix(name)?.strip_prefix(':')?.trim()))
                .unwrap_or_else(|| panic!("no {name} in {}", task.path().display()))
                .to_owned()
        };
        let set = |name: &str| {
            u64::from_str_radix(&field(name), 16)
                .unwrap_or_else(|e| panic!("{name} is not hex: {e}"))
        };
        out.push(ThreadCaps {
            tid: task.file_name().to_string_lossy().into_owned(),
            name: field("Name"),
            effective: set("CapEff"),
            permitted: set("CapPrm"),
            bounding: set("CapBnd"),
            inheritable: set("CapInh"),
            ambient: set("CapAmb"),
        });
    }
    out
}

/// Waits until `pid` has threads whose names start with each of `names` (they are
/// started in the background), and returns them all.
fn threads_once_started(pid: u32, names: &[&str]) -> Vec<ThreadCaps> {
    let mut last = Vec::new();
    for _ in 0..100 {
        last = threads(pid);
        if names
            .iter()
            .all(|want| last.iter().any(|t| t.name.starts_with(want)))
        {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("threads {names:?} did not all appear: {last:#?}");
}

/// Every thread holds exactly `want` in its effective and permitted sets (and, where
/// the bounding set could be shrunk, there too), and nothing to pass on.
fn assert_every_thread_holds(threads: &[ThreadCaps], want: u64, bounding: Option<u64>) {
    let wrong: Vec<String> = threads
        .iter()
        .filter(|t| {
            t.effective != want
                || t.permitted != want
                || t.inheritable != 0
                || t.ambient != 0
                || bounding.is_some_and(|b| t.bounding != b)
        })
        .map(|t| {
            format!(
                "{} ({}): CapEff {:#x} CapPrm {:#x} CapBnd {:#x} CapInh {:#x} CapAmb {:#x}",
                t.name, t.tid, t.effective, t.permitted, t.bounding, t.inheritable, t.ambient
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} threads hold other capabilities than {want:#x}:\n  {}",
        wrong.len(),
        threads.len(),
        wrong.join("\n  ")
    );
}

/// Sends UDP datagrams to a closed port inside `ns`: each is dropped (NO_SOCKET) there.
fn drop_some_packets(ns: &Netns) {
    ns.sh(
        "/usr/bin/python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         [s.sendto(b\"x\", (\"127.0.0.1\", 9)) for _ in range(5)]'",
    );
}

/// Drops in `ns` as `dropgate run` reports them, polled until they show up (the maps are
/// read by the threads that lost CAP_BPF, so this proves reads still work).
fn wait_for_drops_in(dropgate: &DropgateRun, ns: &Netns) -> f64 {
    for _ in 0..50 {
        drop_some_packets(ns);
        let seen = dropgate.value(DROPS, &[("netns", &ns.name)]);
        if seen > 0.0 {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    0.0
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("read osrelease");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

#[test]
fn every_thread_of_run_holds_only_the_documented_set() {
    if !privileged("every_thread_of_run_holds_only_the_documented_set") {
        return;
    }
    let ns = Netns::create("privs");
    let dropgate = DropgateRun::start(&[]);
    let pid = dropgate.process.child.id();
    // A scrape or two so the runtime's workers have run handlers.
    dropgate.scrape();
    let threads = threads_once_started(
        pid,
        &["tokio-rt-worker", "dropgate-enrich", "dropgate-netns"],
    );
    assert_every_thread_holds(&threads, DOCUMENTED, Some(DOCUMENTED));
    assert!(
        wait_for_drops_in(&dropgate, &ns) > 0.0,
        "drops in {} are counted after the capabilities are gone",
        ns.name
    );
    // A namespace made later is followed by the namespace loop, whose socket in it is
    // made with the dropped set (the loop enters it with setns, then returns).
    let later = Netns::create("privs-later");
    let line = format!(
        "dropgate_ipv4_forwarding{{interface=\"all\",netns=\"{}\"}}",
        later.name
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !dropgate.scrape().contains(&line) {
        assert!(
            std::time::Instant::now() < deadline,
            "the namespace made after the drop is not followed: {line} not on /metrics"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_every_thread_holds(&self::threads(pid), DOCUMENTED, Some(DOCUMENTED));
}

#[test]
fn every_thread_of_watch_holds_only_the_documented_set() {
    if !privileged("every_thread_of_watch_holds_only_the_documented_set") {
        return;
    }
    let ns = Netns::create("privs-watch");
    let mut watch = Watch::start(&["--netns", &ns.name], Duration::from_secs(2));
    let pid = watch.pid();
    let threads = threads_once_started(pid, &["tokio-rt-worker", "dropgate-enrich"]);
    assert_every_thread_holds(&threads, DOCUMENTED, Some(DOCUMENTED));
    // And it still sees drops: the ring buffer is read after the drop too.
    let mut seen = None;
    for _ in 0..20 {
        drop_some_packets(&ns);
        if let Some(line) = watch.next_line(Duration::from_millis(500)) {
            seen = Some(line);
            break;
        }
    }
    assert!(
        seen.is_some(),
        "dropgate watch printed no drop of {} after dropping its capabilities",
        ns.name
    );
    watch.stop("INT");
}

/// Without CAP_SYS_ADMIN (a unit granting CAP_BPF and CAP_PERFMON instead), nothing that
/// satisfies the kernel's `bpf_capable()` is left once CAP_BPF goes: the maps must still
/// be read, or dropgate must keep CAP_BPF. This is the case the "still works" probe is
/// for; on kernels from 6.5 a read through a descriptor needs no capability at all.
#[test]
fn without_sys_admin_map_reads_survive_the_drop() {
    if !privileged("without_sys_admin_map_reads_survive_the_drop") {
        return;
    }
    let ns = Netns::create("privs-nosa");
    let addr = format!("127.0.0.1:{}", dropgate_tests::http::free_port());
    let mut command = Command::new("setpriv");
    command
        .args(["--inh-caps=-all", "--bounding-set=-sys_admin", "--"])
        .arg(dropgate_tests::dropgate_bin())
        .args(["run", "--web.listen-address", &addr]);
    let process = Guarded::spawn(command, "dropgate run without CAP_SYS_ADMIN");
    let dropgate = DropgateRun {
        process,
        addr: addr.parse().expect("loopback address"),
    };
    assert!(
        dropgate_tests::http::wait_ok(dropgate.addr, "/-/ready", Duration::from_secs(20)),
        "dropgate run without CAP_SYS_ADMIN did not become ready"
    );
    let pid = dropgate.process.child.id();
    let threads = threads_once_started(pid, &["tokio-rt-worker", "dropgate-netns"]);
    let without_sys_admin = DOCUMENTED & !(1 << CAP_SYS_ADMIN);
    let kept_bpf = threads.iter().all(|t| t.effective & (1 << CAP_BPF) != 0);
    if kernel_at_least(6, 5) {
        assert!(
            !kept_bpf,
            "from 6.5 the kernel checks no capability for map reads through a descriptor: CAP_BPF must go"
        );
    }
    let want = if kept_bpf {
        without_sys_admin | (1 << CAP_BPF)
    } else {
        without_sys_admin
    };
    assert_eq!(
        threads[0].effective & (1 << CAP_PERFMON),
        0,
        "CAP_PERFMON is never needed after attaching"
    );
    eprintln!(
        "without CAP_SYS_ADMIN: CAP_BPF {} after the drop",
        if kept_bpf { "kept" } else { "dropped" }
    );
    assert_every_thread_holds(&threads, want, None);
    assert!(
        wait_for_drops_in(&dropgate, &ns) > 0.0,
        "drops in {} are counted after the drop without CAP_SYS_ADMIN",
        ns.name
    );
}
