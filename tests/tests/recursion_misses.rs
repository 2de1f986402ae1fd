//! Drops the kernel did not trace because the program was already running on that CPU
//! are counted by the kernel only (`bpf_prog_info.recursion_misses`); dropgate exports
//! that number so that events = counted + uncounted + missed can be checked.
//!
//! A nested run needs a `kfree_skb` in an interrupt that arrives while the program runs
//! on the same CPU; loopback and veth traffic drop in softirq context, where that does
//! not happen, and no test here has produced one (a flood of 370,000 drops from two
//! senders left the counter at 0). So this test checks that the metric is the kernel's
//! own number for dropgate's own program, as bpftool reads it.

use std::{process::Command, time::Duration};

use dropgate_tests::{dropgate::DropgateRun, is_root, may_run, netns::Netns};

const MISSES: &str = "dropgate_tracer_recursion_misses_total";

/// Ids of the BPF programs process `pid` holds descriptors of (from its fdinfo), so
/// that programs of other dropgate instances on the machine are never mistaken for its.
fn programs_of(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("list fdinfo");
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// `recursion_misses` of program `id` as bpftool reports it (it leaves the field out
/// while it is 0), and the program's name.
fn bpftool_misses(id: u32) -> (String, u64) {
    let out = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .expect("run bpftool (installed by cargo xtask setup)");
    assert!(out.status.success(), "bpftool prog show id {id} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.split(&format!("\"{name}\":")).nth(1).map(|rest| {
            rest.trim_start_matches('"')
                .split(['"', ',', '}'])
                .next()
                .unwrap_or("")
                .to_owned()
        })
    };
    let name = field("name").unwrap_or_default();
    let misses = field("recursion_misses").map_or(0, |v| {
        v.parse()
            .unwrap_or_else(|e| panic!("recursion_misses {v:?}: {e}"))
    });
    (name, misses)
}

#[test]
fn recursion_misses_are_the_kernels_count_for_our_program() {
    if !may_run(
        "recursion_misses_are_the_kernels_count_for_our_program",
        is_root(),
        "root (namespaces, BPF)",
    ) {
        return;
    }
    let ns = Netns::create("recursion");
    let dropgate = DropgateRun::start(&[]);
    // Drops of our own, so the program has run while the counters are read.
    ns.sh(
        "/usr/bin/python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         [s.sendto(b\"x\", (\"127.0.0.1\", 9)) for _ in range(200)]'",
    );
    std::thread::sleep(Duration::from_millis(200));
    let ours: Vec<(String, u64)> = programs_of(dropgate.process.child.id())
        .into_iter()
        .map(bpftool_misses)
        .filter(|(name, _)| name.starts_with("kfree_skb"))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "dropgate holds exactly one attached kfree_skb program: {ours:?}"
    );
    let exposition = dropgate.scrape();
    assert!(
        exposition.contains(&format!("# TYPE {MISSES} counter")),
        "{MISSES} is exported as a counter"
    );
    let exported = dropgate_tests::http::sample_sum(&exposition, MISSES, &[]) as u64;
    let before = ours[0].1;
    let after = kernel_misses_now(&ours[0].0, dropgate.process.child.id());
    eprintln!("recursion misses: kernel {before} before the scrape, exported {exported}, kernel {after} after");
    assert!(
        before <= exported && exported <= after,
        "the exported count is the kernel's recursion_misses of dropgate's program (a counter read between two reads of it)"
    );
}

/// The kernel's count for our program named `name`, now.
fn kernel_misses_now(name: &str, pid: u32) -> u64 {
    programs_of(pid)
        .into_iter()
        .map(bpftool_misses)
        .find(|(n, _)| n == name)
        .map(|(_, misses)| misses)
        .expect("the program is still attached")
}
