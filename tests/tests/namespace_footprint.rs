//! Many namespaces, one event loop: while `dropgate run` runs, 300 namespaces are made
//! and removed in waves (as containers come and go on a busy host). Every one must be
//! named on /metrics, with its forwarding state, while it exists; none may be left on
//! /metrics once it is gone; and dropgate's thread count must not grow with them (it
//! used to hold a thread per namespace).
//!
//! Counted by the test's own namespace names (pid in the name), never by totals, so
//! other tests' namespaces on the machine change nothing here.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dropgate_tests::{dropgate::DropgateRun, is_root, may_run};

/// Namespaces made over the whole test.
const TOTAL: usize = 300;
/// Made at once, per wave.
const WAVE: usize = 30;
/// Each one must be on /metrics within this long after `ip netns add` returns, and off
/// it within this long after `ip netns del` returns (the target is 1 s; the
/// margin is for a machine shared with other tests).
const WITHIN: Duration = Duration::from_secs(3);
/// The tokio runtime's blocking pool may start a thread or two for the once-a-second map
/// reads and scrapes; anything beyond that grows with the namespaces.
const THREAD_SLACK: u64 = 2;

/// The test's namespaces; every one still there is deleted on drop.
struct Namespaces {
    prefix: String,
    alive: Vec<String>,
}

impl Namespaces {
    fn new() -> Self {
        Self {
            prefix: format!("dg-nsfp-{}", std::process::id()),
            alive: Vec::new(),
        }
    }

    fn add(&mut self, from: usize, count: usize) -> Vec<String> {
        let names: Vec<String> = (from..from + count)
            .map(|i| format!("{}-{i}", self.prefix))
            .collect();
        self.alive.extend(names.iter().cloned());
        ip_batch(names.iter().map(|n| format!("netns add {n}")));
        names
    }

    fn remove(&mut self, names: &[String]) {
        self.alive.retain(|n| !names.contains(n));
        ip_batch(names.iter().map(|n| format!("netns del {n}")));
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let alive = std::mem::take(&mut self.alive);
        ip_batch(alive.iter().map(|n| format!("netns del {n}")));
    }
}

/// `ip -force -batch -` with one command per line.
fn ip_batch(lines: impl Iterator<Item = String>) {
    let script: String = lines.map(|l| l + "\n").collect();
    if script.is_empty() {
        return;
    }
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start ip -batch");
    child
        .stdin
        .take()
        .expect("ip's stdin")
        .write_all(script.as_bytes())
        .expect("write to ip -batch");
    let status = child.wait().expect("wait for ip -batch");
    assert!(status.success(), "ip -batch failed: {status}");
}

fn forwarding_line(name: &str) -> String {
    format!("dropgate_ipv4_forwarding{{interface=\"all\",netns=\"{name}\"}}")
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read dropgate's status")
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads: in /proc/pid/status")
}

/// Scrapes until `done(exposition)` or `WITHIN` has passed; the last exposition and
/// whether it was done.
fn scrape_until(dropgate: &DropgateRun, done: impl Fn(&str) -> bool) -> (String, bool) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let metrics = dropgate.scrape();
        if done(&metrics) {
            return (metrics, true);
        }
        if Instant::now() > deadline {
            return (metrics, false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hundreds_of_namespaces_are_named_and_forgotten_without_a_thread_each() {
    if !may_run(
        "hundreds_of_namespaces_are_named_and_forgotten_without_a_thread_each",
        is_root(),
        "root (BPF, network namespaces)",
    ) {
        return;
    }
    let dropgate = DropgateRun::start(&[]);
    let pid = dropgate.process.child.id();
    let (_, ready) = scrape_until(&dropgate, |m| m.contains(&forwarding_line("root")));
    assert!(
        ready,
        "dropgate's own namespace never showed its forwarding state"
    );
    // Let start-up work settle (the first map reads, the blocking pool's first thread).
    for _ in 0..5 {
        dropgate.scrape();
        std::thread::sleep(Duration::from_millis(400));
    }
    let baseline = threads(pid);
    let mut most = baseline;

    let mut namespaces = Namespaces::new();
    let mut made = 0;
    while made < TOTAL {
        let wave = namespaces.add(made, WAVE);
        made += WAVE;
        let (metrics, named) = scrape_until(&dropgate, |m| {
            namespaces
                .alive
                .iter()
                .all(|n| m.contains(&forwarding_line(n)))
        });
        let missing: Vec<&String> = namespaces
            .alive
            .iter()
            .filter(|n| !metrics.contains(&forwarding_line(n)))
            .collect();
        assert!(
            named,
            "{} of {} live namespaces not named with their forwarding state within {WITHIN:?} (after {made} made): {missing:?}",
            missing.len(),
            namespaces.alive.len()
        );
        most = most.max(threads(pid));
        // Remove the older half of what lives: the rest stays through the next wave.
        let older: Vec<String> = namespaces
            .alive
            .iter()
            .filter(|n| !wave.contains(n))
            .cloned()
            .collect();
        let gone: Vec<String> = older
            .into_iter()
            .chain(wave.iter().take(WAVE / 2).cloned())
            .collect();
        namespaces.remove(&gone);
        let (metrics, forgotten) = scrape_until(&dropgate, |m| {
            gone.iter().all(|n| !m.contains(&format!("netns=\"{n}\"")))
        });
        let stale: Vec<&String> = gone
            .iter()
            .filter(|n| metrics.contains(&format!("netns=\"{n}\"")))
            .collect();
        assert!(
            forgotten,
            "{} removed namespaces still on /metrics {WITHIN:?} after `ip netns del`: {stale:?}",
            stale.len()
        );
        most = most.max(threads(pid));
    }
    let last: Vec<String> = namespaces.alive.clone();
    namespaces.remove(&last);
    let prefix = format!("netns=\"{}-", namespaces.prefix);
    let (metrics, clean) = scrape_until(&dropgate, |m| !m.contains(&prefix));
    assert!(
        clean,
        "labels of removed namespaces left on /metrics: {:?}",
        metrics
            .lines()
            .filter(|l| l.contains(&prefix))
            .take(5)
            .collect::<Vec<_>>()
    );
    most = most.max(threads(pid));
    eprintln!(
        "threads: {baseline} before, at most {most} with up to {} namespaces at once",
        WAVE + WAVE / 2
    );
    assert!(
        most <= baseline + THREAD_SLACK,
        "dropgate's threads grew from {baseline} to {most} with the namespaces"
    );
}

/// A process in a namespace of its own, killed on drop (also when the test fails).
struct Unshared(std::process::Child);

impl Drop for Unshared {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_namespace_only_a_process_holds_is_named_while_the_process_lives() {
    if !may_run(
        "a_namespace_only_a_process_holds_is_named_while_the_process_lives",
        is_root(),
        "root (BPF, network namespaces)",
    ) {
        return;
    }
    let dropgate = DropgateRun::start(&[]);
    let (_, ready) = scrape_until(&dropgate, |m| m.contains(&forwarding_line("root")));
    assert!(
        ready,
        "dropgate's own namespace never showed its forwarding state"
    );
    // No bind mount and no veth: only the process refers to the namespace, so only its
    // start (and end) can tell dropgate; the safety rescan is 30 s away.
    let mut process = Unshared(
        Command::new("unshare")
            .args(["--net", "sleep", "60"])
            .spawn()
            .expect("start unshare --net sleep"),
    );
    let name = format!("pid:{}:sleep", process.0.id());
    let (_, named) = scrape_until(&dropgate, |m| m.contains(&forwarding_line(&name)));
    assert!(
        named,
        "the namespace of `unshare --net sleep` is not on /metrics as {name} within {WITHIN:?}"
    );
    process.0.kill().expect("kill the process");
    process.0.wait().expect("reap the process");
    let label = format!("netns=\"{name}\"");
    let (_, forgotten) = scrape_until(&dropgate, |m| !m.contains(&label));
    assert!(
        forgotten,
        "{name} is still on /metrics {WITHIN:?} after its only process ended"
    );
}
