//! `cargo xtask bench tracer --footprint`: what an idle `dropgate run` costs the host, and
//! how that grows with the number of network namespaces (one per container on a Docker
//! or Kubernetes host).
//!
//! For 0, 100 and 1,000 extra namespaces (made with `ip netns add`, named after the
//! bench's pid, all deleted at the end also when the bench fails): the process's threads
//! and resident memory once every namespace is named on `/metrics`, its CPU time over a
//! quiet window, and how long a namespace made then takes to show up on `/metrics` with
//! its name and its forwarding state. Measured in service, not just after start: every
//! namespace of a row first has a drop traced in it (a datagram to a closed port on its
//! loopback) and shown on `/metrics` with its names, so the keys, names and eviction
//! checks of a working host are in place while the process idles. Threads and memory come from
//! `/proc/<pid>/status`, CPU time from `/proc/<pid>/stat`: the whole process (threads
//! that ended included) and the processes it ran and waited for (`ip`, `iptables-save`,
//! `nft` of diagnose's rounds), which the host pays for as much. Nothing is asserted: the
//! table is printed and recorded.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::bench::verdict;

/// Extra namespaces per row; each row adds to the namespaces of the one before.
const ROWS: [usize; 3] = [0, 100, 1_000];
/// How long CPU time is summed over, with nothing asked of dropgate meanwhile.
const CPU_WINDOW: Duration = Duration::from_mins(1);
/// After the last namespace is named: let start-up work (dumps, allocations) settle.
const SETTLE: Duration = Duration::from_secs(5);
/// Namespaces made one at a time to time their naming, per row.
const PROBES: usize = 5;
/// Upper bound for every namespace of a row to show up, so a broken build cannot hang.
const NAMED_WITHIN: Duration = Duration::from_mins(2);
/// The thread that serves every namespace's netlink socket (tracer/src/netlink_loop.rs).
const NAMESPACE_LOOP_THREAD: &str = "dropgate-netns";
/// Upper bound for every namespace's drop to show up on /metrics.
const DROPS_WITHIN: Duration = Duration::from_mins(2);
/// Upper bound for one probe namespace to show up.
const PROBE_WITHIN: Duration = Duration::from_mins(1);

/// One row of the table.
struct Row {
    extra: usize,
    /// Of the row's namespaces (dropgate's own not counted), how many were on /metrics
    /// within [`NAMED_WITHIN`].
    named: usize,
    /// Of those, how many showed a drop of their own on /metrics.
    with_drops: usize,
    threads: u64,
    rss_kib: u64,
    /// dropgate and the processes it ran.
    cpu_percent: f64,
    /// Of that, the processes it ran.
    children_percent: f64,
    /// Of that, the namespace loop's thread (absent in builds without one).
    loop_percent: Option<f64>,
    /// Creation to name and forwarding state on /metrics, per probe.
    to_metrics: Vec<Duration>,
}

/// Measures `dropgate` and returns the report.
pub fn run(dropgate: &Path, log: &Path) -> Result<String> {
    let namespaces = Namespaces::new();
    let mut process = Dropgate::start(dropgate, log)?;
    let missing = process.wait_named(&["root"], NAMED_WITHIN)?;
    if missing > 0 {
        bail!("dropgate's own namespace never showed its forwarding state on /metrics");
    }
    let mut rows = Vec::new();
    for extra in ROWS {
        eprintln!("xtask: footprint with {extra} extra namespaces");
        let before = namespaces.made.borrow().len();
        let names = namespaces.grow_to(extra)?;
        let missing = process.wait_named(&names, NAMED_WITHIN)?;
        drop_in(&names[before..])?;
        let without_drops = process.wait_dropped(&names, DROPS_WITHIN)?;
        std::thread::sleep(SETTLE);
        let (threads, rss_kib) = process.status()?;
        let (cpu_before, children_before) = process.cpu_ticks()?;
        let loop_before = process.thread_ticks(NAMESPACE_LOOP_THREAD);
        let started = Instant::now();
        std::thread::sleep(CPU_WINDOW);
        let (cpu_after, children_after) = process.cpu_ticks()?;
        let window = started.elapsed().as_secs_f64();
        let children_percent = ticks_to_seconds(children_after - children_before) / window * 100.0;
        let cpu_percent =
            ticks_to_seconds(cpu_after - cpu_before) / window * 100.0 + children_percent;
        let loop_percent = process
            .thread_ticks(NAMESPACE_LOOP_THREAD)
            .zip(loop_before)
            .map(|(after, before)| ticks_to_seconds(after.saturating_sub(before)) / window * 100.0);
        let mut to_metrics = Vec::new();
        for probe in 0..PROBES {
            to_metrics.push(namespaces.time_probe(&mut process, extra, probe)?);
        }
        rows.push(Row {
            extra,
            named: names.len() - missing,
            with_drops: names.len() - without_drops,
            threads,
            rss_kib,
            cpu_percent,
            children_percent,
            loop_percent,
            to_metrics,
        });
    }
    process.stop();
    drop(namespaces);
    Ok(report(&rows, dropgate))
}

fn ticks_to_seconds(ticks: u64) -> f64 {
    let hz = crate::cmd::stdout_of(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|hz| hz.trim().parse::<f64>().ok())
        .filter(|hz| *hz > 0.0)
        .unwrap_or(100.0);
    ticks as f64 / hz
}

fn report(rows: &[Row], dropgate: &Path) -> String {
    let mut out = String::new();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(
        out,
        "`cargo xtask bench tracer --footprint`, {}: kernel {}, {} CPUs; `dropgate run` ({}) idle \
         after a drop was traced in every namespace, CPU over {} s, creation-to-`/metrics` over {PROBES} \
         namespaces made one at a time.\n",
        crate::cmd::stdout_of(Command::new("date").arg("-u").arg("+%Y-%m-%d"))
            .unwrap_or_default()
            .trim(),
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        dropgate
            .file_name()
            .map_or(std::borrow::Cow::Borrowed("?"), |name| name.to_string_lossy()),
        CPU_WINDOW.as_secs(),
    );
    out.push_str(
        "| extra namespaces | named on /metrics | with a drop on /metrics | threads | RSS | RSS per extra namespace | idle CPU (% of a core) | of which processes it ran | of which the namespace loop | creation to name + forwarding on /metrics (median, max) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let base = rows.first().map_or(0, |r| r.rss_kib);
    for row in rows {
        let mut sorted = row.to_metrics.clone();
        sorted.sort();
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
        let max = sorted.last().copied().unwrap_or_default();
        let per_ns = if row.extra == 0 {
            "-".to_owned()
        } else {
            format!(
                "{:.1} KB",
                (row.rss_kib as f64 - base as f64) * 1.024 / row.extra as f64
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} MB | {per_ns} | {:.3} | {:.3} | {} | {} ms, {} ms |",
            crate::bench::thousands(row.extra as f64),
            crate::bench::thousands(row.named as f64),
            crate::bench::thousands(row.with_drops as f64),
            row.threads,
            row.rss_kib as f64 * 1.024 / 1000.0,
            row.cpu_percent,
            row.children_percent,
            row.loop_percent
                .map_or_else(|| "-".to_owned(), |p| format!("{p:.3}")),
            median.as_millis(),
            max.as_millis(),
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let per_ns_kb =
            (last.rss_kib as f64 - first.rss_kib as f64) * 1.024 / (last.extra.max(1) as f64);
        let slowest = rows
            .iter()
            .flat_map(|r| r.to_metrics.iter())
            .max()
            .copied()
            .unwrap_or_default();
        let _ = write!(
            out,
            "\nTargets (issue 17): threads at {} namespaces ≤ 12: {}; idle RSS ≤ 20 MB: {}; \
             ≤ 10 KB per extra namespace: {}; idle CPU at {} namespaces ≤ 0.1 %: {}; \
             named with forwarding state within 1 s: {}.\n",
            crate::bench::thousands(last.extra as f64),
            verdict(last.threads <= 12),
            verdict(first.rss_kib as f64 * 1.024 <= 20_000.0),
            verdict(per_ns_kb <= 10.0),
            crate::bench::thousands(last.extra as f64),
            verdict(last.cpu_percent <= 0.1),
            verdict(slowest <= Duration::from_secs(1)),
        );
    }
    out
}

/// The bench's namespaces, all deleted on drop.
struct Namespaces {
    prefix: String,
    made: std::cell::RefCell<Vec<String>>,
}

impl Namespaces {
    fn new() -> Self {
        Self {
            prefix: format!("dg-fp-{}", std::process::id()),
            made: std::cell::RefCell::default(),
        }
    }

    /// Makes namespaces until there are `count`; returns every name.
    fn grow_to(&self, count: usize) -> Result<Vec<String>> {
        let have = self.made.borrow().len();
        let new: Vec<String> = (have..count)
            .map(|i| format!("{}-{i}", self.prefix))
            .collect();
        // Recorded before they are made, so a half-done batch is still deleted.
        self.made.borrow_mut().extend(new.iter().cloned());
        batch(new.iter().map(|name| format!("netns add {name}")))?;
        Ok(self.made.borrow().clone())
    }

    /// Makes one namespace and times it until dropgate shows its name and forwarding
    /// state; deletes it again.
    fn time_probe(&self, process: &mut Dropgate, row: usize, probe: usize) -> Result<Duration> {
        let name = format!("{}-probe-{row}-{probe}", self.prefix);
        self.made.borrow_mut().push(name.clone());
        let started = Instant::now();
        crate::cmd::run(Command::new("ip").args(["netns", "add", &name]))?;
        let line = forwarding_line(&name);
        loop {
            if process.metrics()?.contains(&line) {
                break;
            }
            if started.elapsed() > PROBE_WITHIN {
                bail!("namespace {name} not on /metrics within {PROBE_WITHIN:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = started.elapsed();
        crate::cmd::run(Command::new("ip").args(["netns", "del", &name]))?;
        self.made.borrow_mut().retain(|n| *n != name);
        Ok(took)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.borrow_mut());
        if let Err(err) = batch(made.iter().map(|name| format!("netns del {name}"))) {
            eprintln!("xtask: deleting the bench's namespaces: {err:#}");
        }
    }
}

/// Runs `ip -batch -` with these commands; `-force` goes on past a failing line.
fn batch(lines: impl Iterator<Item = String>) -> Result<()> {
    let script: String = lines.map(|l| l + "\n").collect();
    if script.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting ip -batch")?;
    child
        .stdin
        .take()
        .context("ip's stdin")?
        .write_all(script.as_bytes())
        .context("writing to ip -batch")?;
    let status = child.wait()?;
    if !status.success() {
        bail!("ip -batch failed ({status})");
    }
    Ok(())
}

/// In each namespace: loopback up and one datagram to a closed port on it, which the
/// kernel drops (`NO_SOCKET`) under the namespace and `lo`.
fn drop_in(names: &[String]) -> Result<()> {
    batch(names.iter().map(|name| {
        format!("netns exec {name} bash -c 'ip link set lo up && echo drop >/dev/udp/127.0.0.1/9'")
    }))
}

/// The `/metrics` text that shows a drop counted under a namespace's name.
fn dropped_label(name: &str) -> String {
    format!("netns=\"{name}\",protocol=\"udp\"")
}

/// The `/metrics` line prefix that shows a namespace named, with its forwarding state.
fn forwarding_line(name: &str) -> String {
    format!("dropgate_ipv4_forwarding{{interface=\"all\",netns=\"{name}\"}}")
}

/// `dropgate run` under measurement; stopped on drop.
struct Dropgate {
    child: Child,
    port: u16,
}

impl Dropgate {
    fn start(dropgate: &Path, log: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port for dropgate's listener")?
            .port();
        let log = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(dropgate)
            .args(["run", "--web.listen-address", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", dropgate.display()))?;
        Ok(Self { child, port })
    }

    /// Waits until every namespace in `names` is on /metrics with its forwarding state;
    /// how many were still missing when `within` ran out.
    fn wait_named(&mut self, names: &[impl AsRef<str>], within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("dropgate exited with {status}");
            }
            if let Ok(metrics) = self.metrics() {
                let missing = names
                    .iter()
                    .filter(|n| !metrics.contains(&forwarding_line(n.as_ref())))
                    .count();
                if missing == 0 || Instant::now() > deadline {
                    if missing > 0 {
                        let some: Vec<&str> = names
                            .iter()
                            .map(AsRef::as_ref)
                            .filter(|n| !metrics.contains(&forwarding_line(n)))
                            .take(5)
                            .collect();
                        eprintln!(
                            "xtask: {missing} not on /metrics after {within:?}, e.g. {some:?}"
                        );
                    }
                    return Ok(missing);
                }
            } else if Instant::now() > deadline {
                bail!("dropgate's /metrics did not answer within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every namespace in `names` shows a drop of its own on /metrics; how
    /// many did not within `within`.
    fn wait_dropped(&mut self, names: &[String], within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("dropgate exited with {status}");
            }
            let metrics = self.metrics()?;
            let missing: Vec<&String> = names
                .iter()
                .filter(|n| !metrics.contains(&dropped_label(n)))
                .collect();
            if missing.is_empty() {
                return Ok(0);
            }
            if Instant::now() > deadline {
                eprintln!(
                    "xtask: {} without a drop on /metrics after {within:?}, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                );
                return Ok(missing.len());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn metrics(&self) -> Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        Ok(body)
    }

    /// Threads and resident KiB, from `/proc/<pid>/status`.
    fn status(&self) -> Result<(u64, u64)> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .with_context(|| format!("no {name} in /proc/pid/status"))
        };
        Ok((field("Threads:")?, field("VmRSS:")?))
    }

    /// utime + stime of the thread named `name`, in clock ticks, if there is one.
    fn thread_ticks(&self, name: &str) -> Option<u64> {
        let tasks = fs::read_dir(format!("/proc/{}/task", self.child.id())).ok()?;
        tasks.flatten().find_map(|task| {
            let comm = fs::read_to_string(task.path().join("comm")).ok()?;
            if comm.trim() != name {
                return None;
            }
            let stat = fs::read_to_string(task.path().join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
    }

    /// utime + stime of the whole process, and cutime + cstime (of the children it
    /// waited for), in clock ticks.
    fn cpu_ticks(&self) -> Result<(u64, u64)> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = stat
            .rsplit_once(") ")
            .context("malformed /proc/pid/stat")?
            .1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11).context("no utime")?.parse()?;
        let stime: u64 = fields.get(12).context("no stime")?.parse()?;
        let children_user: u64 = fields.get(13).context("no cutime")?.parse()?;
        let children_system: u64 = fields.get(14).context("no cstime")?.parse()?;
        Ok((utime + stime, children_user + children_system))
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dropgate {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}
