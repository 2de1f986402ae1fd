//! Many namespaces, one event loop: while `dropgate run` runs, 300 namespaces are made
//! and removed in waves (as containers come and go on a busy host). Every one must be
//! named on /metrics, with its forwarding state, while it exists; none may be left on
//! /metrics once it is gone; and dropgate's thread count must not grow with them (it
//! used to hold a thread per namespace).
//!
//! Namespaces that nothing but a process refers to — its main thread, another thread
//! of it, or an open descriptor — must be named while it lives and forgotten after.
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
/// it within this long after `ip netns del` returns (the issue's target is 1 s; the
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
    scrape_for(dropgate, WITHIN, done)
}

/// Scrapes until `done(exposition)` or `within` has passed; the last exposition and
/// whether it was done.
fn scrape_for(
    dropgate: &DropgateRun,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> (String, bool) {
    let deadline = Instant::now() + within;
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
    let dropgate = dropgate_with_its_own_namespace();
    let pid = dropgate.process.child.id();
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
    let dropgate = dropgate_with_its_own_namespace();
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

/// How a helper process keeps a namespace alive after its bind mount is gone.
#[derive(Clone, Copy)]
enum Hold {
    /// An open file descriptor on the namespace file (`/proc/<pid>/fd/<n>`), as a CNI
    /// plugin or a tool that unmounted the namespace but kept it open.
    Descriptor,
    /// A thread other than the main one that entered it with `setns` (its descriptor
    /// closed again), while the main thread stays in the machine's namespace.
    Thread,
}

/// How a holder stops holding its namespace.
#[derive(Clone, Copy)]
enum End {
    /// Its process ends (killed).
    Exit,
    /// It lets go while its process lives on: the descriptor is closed, the thread ends.
    LetGo,
}

/// Python for each [`Hold`]: takes the namespace file as its argument, prints the path
/// through which the namespace can be entered once it is held, lets go of it at a line
/// on stdin, and sleeps (bounded).
const HOLD_BY_DESCRIPTOR: &str = r#"
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
print(f"/proc/{os.getpid()}/fd/{fd}", flush=True)
sys.stdin.readline()
os.close(fd)
time.sleep(120)
"#;
const HOLD_BY_THREAD: &str = r#"
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
def hold():
    fd = os.open(sys.argv[1], os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)
    print(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net", flush=True)
    sys.stdin.readline()
threading.Thread(target=hold, daemon=True).start()
time.sleep(120)
"#;

/// A namespace made with `ip netns add`, held by a python process as `hold` says, then
/// deleted with `ip netns del` (unmounted and unlinked: only the holder keeps it). On
/// drop the holder is killed and the namespace file removed if it is still there.
struct Held {
    bind_name: String,
    holder: std::process::Child,
    /// A line here makes the holder let go.
    let_go: Option<std::process::ChildStdin>,
    /// Where the namespace can be entered while the holder lives.
    path: String,
}

impl Held {
    fn new(how: Hold) -> Self {
        let tag = match how {
            Hold::Descriptor => "fd",
            Hold::Thread => "thread",
        };
        let bind_name = format!("dg-held-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &bind_name])
            .output();
        ip_batch(std::iter::once(format!("netns add {bind_name}")));
        let script = match how {
            Hold::Descriptor => HOLD_BY_DESCRIPTOR,
            Hold::Thread => HOLD_BY_THREAD,
        };
        let mut holder = Command::new("python3")
            .args(["-c", script, &format!("/run/netns/{bind_name}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the python holder");
        let mut held = Self {
            bind_name,
            let_go: holder.stdin.take(),
            holder,
            path: String::new(),
        };
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(held.holder.stdout.take().expect("holder's stdout")),
            &mut line,
        )
        .expect("read the holder's path");
        line.trim().clone_into(&mut held.path);
        assert!(
            held.path.starts_with("/proc/"),
            "the holder printed no namespace path (it failed?): {line:?}"
        );
        ip_batch(std::iter::once(format!("netns del {}", held.bind_name)));
        held
    }

    /// The label dropgate gives a namespace found through a process: `pid:<pid>:<comm>`.
    fn name(&self) -> String {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.holder.id()))
            .expect("read the holder's comm");
        format!("pid:{}:{}", self.holder.id(), comm.trim())
    }

    fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.path)
            .expect("the held namespace's path")
            .ino()
    }

    /// Brings `lo` up inside and sends one datagram to a closed port on 127.0.0.1: one
    /// `NO_SOCKET` drop in this namespace.
    fn drop_one(&self) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path))
            .args([
                "bash",
                "-c",
                "ip link set lo up && echo drop >/dev/udp/127.0.0.1/9",
            ])
            .output()
            .expect("run nsenter");
        assert!(
            out.status.success(),
            "drop inside {}: {}",
            self.path,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn end(&mut self, how: End) {
        match how {
            End::Exit => {
                self.holder.kill().expect("kill the holder");
                self.holder.wait().expect("reap the holder");
            }
            End::LetGo => {
                let mut stdin = self.let_go.take().expect("the holder's stdin");
                stdin.write_all(b"\n").expect("tell the holder to let go");
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.bind_name])
            .stderr(Stdio::null())
            .output();
    }
}

/// A namespace can be found from a holder's thread or descriptor only by walking every
/// process's threads and descriptors, which dropgate does when a drop names a namespace
/// it does not know, at most every few seconds: this long to show up.
const HELD_WITHIN: Duration = Duration::from_secs(15);

/// The lines of `metrics` that carry `label`, for failure messages.
/// `dropgate run`, once its own namespace shows its forwarding state.
fn dropgate_with_its_own_namespace() -> DropgateRun {
    let dropgate = DropgateRun::start(&[]);
    let (_, ready) = scrape_until(&dropgate, |m| m.contains(&forwarding_line("root")));
    assert!(
        ready,
        "dropgate's own namespace never showed its forwarding state"
    );
    dropgate
}

fn lines_with<'a>(metrics: &'a str, label: &str) -> Vec<&'a str> {
    metrics.lines().filter(|l| l.contains(label)).collect()
}

fn held_namespace_is_named_while_held(test: &str, how: Hold, end: End) {
    if !may_run(test, is_root(), "root (BPF, network namespaces)") {
        return;
    }
    let dropgate = dropgate_with_its_own_namespace();
    let mut held = Held::new(how);
    let name = held.name();
    let inode = held.inode();
    eprintln!("namespace {inode} held as {} ({name})", held.path);
    held.drop_one();
    let named = format!("netns=\"{name}\"");
    let dropped = format!("netns=\"{name}\",protocol=\"udp\"");
    let (metrics, shown) = scrape_for(&dropgate, HELD_WITHIN, |m| {
        m.lines()
            .any(|l| l.starts_with("dropgate_packets_dropped_total") && l.contains(&dropped))
            && m.contains(&forwarding_line(&name))
    });
    let by_inode = format!("netns=\"{inode}\"");
    assert!(
        shown,
        "the drop in the namespace held as {} is not on /metrics under {name} with its \
         forwarding state within {HELD_WITHIN:?}; lines under its name: {:?}; under its \
         inode: {:?}; gone: {:?}",
        held.path,
        lines_with(&metrics, &named),
        lines_with(&metrics, &by_inode),
        lines_with(&metrics, "netns=\"gone\",protocol=\"udp\""),
    );
    assert!(
        lines_with(&metrics, &by_inode).is_empty(),
        "series under the bare inode while the namespace is named: {:?}",
        lines_with(&metrics, &by_inode)
    );
    held.end(end);
    let (metrics, forgotten) = scrape_for(&dropgate, HELD_WITHIN, |m| {
        !m.contains(&named) && !m.contains(&by_inode)
    });
    assert!(
        forgotten,
        "the namespace is still on /metrics {HELD_WITHIN:?} after its holder let go: {:?}",
        lines_with(&metrics, &named)
            .into_iter()
            .chain(lines_with(&metrics, &by_inode))
            .collect::<Vec<_>>()
    );
    if matches!(end, End::LetGo) {
        assert!(
            matches!(held.holder.try_wait(), Ok(None)),
            "the holder ended, so this did not test a holder that lets go and lives on"
        );
    }
}

#[test]
fn a_namespace_only_a_descriptor_holds_is_named_while_it_is_held() {
    held_namespace_is_named_while_held(
        "a_namespace_only_a_descriptor_holds_is_named_while_it_is_held",
        Hold::Descriptor,
        End::Exit,
    );
}

#[test]
fn a_namespace_is_forgotten_once_its_holder_closes_the_descriptor() {
    held_namespace_is_named_while_held(
        "a_namespace_is_forgotten_once_its_holder_closes_the_descriptor",
        Hold::Descriptor,
        End::LetGo,
    );
}

#[test]
fn a_namespace_only_a_thread_holds_is_named_while_it_is_held() {
    held_namespace_is_named_while_held(
        "a_namespace_only_a_thread_holds_is_named_while_it_is_held",
        Hold::Thread,
        End::Exit,
    );
}

#[test]
fn a_namespace_is_forgotten_once_the_thread_holding_it_ends() {
    held_namespace_is_named_while_held(
        "a_namespace_is_forgotten_once_the_thread_holding_it_ends",
        Hold::Thread,
        End::LetGo,
    );
}
