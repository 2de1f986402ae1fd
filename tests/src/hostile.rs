//! The hostile-request corpus of issue 19: requests that cost a gateway far more than
//! their size (long and many labels, many series, buckets and families, duplicated
//! protobuf, empty protobuf metrics, a long grouping key, a huge `Accept` header,
//! compression bombs), and how to measure what each one costs a server process: the
//! time to its answer and the growth of its resident memory.
//!
//! Shared by `tests/tests/gateway_hostile.rs` (dropgate against the bounds) and the
//! `hostile` binary that `cargo xtask bench hostile` runs against dropgate and the
//! pushgateway side by side.
// Test data built once per run: `format!` reads better than `write!` into a String.
#![allow(clippy::format_push_string, clippy::format_collect)]

use std::io::Write as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gateway::{Reply, Request, Server};
use crate::protobuf::{bytes, delimited, double, family, histogram, metric, simple, uint};

/// Content type of a delimited protobuf push.
pub const PROTOBUF: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// One hostile request.
pub struct Case {
    /// Short name, for tables and messages.
    pub name: String,
    /// The finding it is about.
    pub finding: &'static str,
    /// The request.
    pub request: Request,
}

fn case(name: impl Into<String>, finding: &'static str, request: Request) -> Case {
    Case {
        name: name.into(),
        finding,
        request,
    }
}

fn text_push(path: &str, body: String) -> Request {
    Request::new("PUT", path).body(body)
}

fn protobuf_push(path: &str, body: Vec<u8>) -> Request {
    Request::new("PUT", path)
        .header("Content-Type", PROTOBUF)
        .body(body)
}

/// `count` one-line series of one family, `m{i="<n>"} 1`.
fn one_line_series(count: usize) -> String {
    let mut body = String::with_capacity(count * 16);
    for i in 0..count {
        body.push_str(&format!("m{{i=\"{i}\"}} 1\n"));
    }
    body
}

/// A gzip body that decodes to `len` zero bytes.
fn gzip_zeros(len: usize) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![0_u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        encoder.write_all(&chunk[..n]).expect("gzip into memory");
        left -= n;
    }
    encoder.finish().expect("gzip into memory")
}

/// A framed snappy body that decodes to `len` bytes of `m 1\n` repeated.
fn snappy_repeats(len: usize) -> Vec<u8> {
    let mut encoder = snap::write::FrameEncoder::new(Vec::new());
    let line = b"# comment that repeats\n";
    let mut written = 0;
    while written < len {
        encoder.write_all(line).expect("snappy into memory");
        written += line.len();
    }
    encoder.into_inner().expect("snappy into memory")
}

/// The corpus, every finding of issue 19 about memory and time plus variants.
#[must_use]
#[allow(clippy::too_many_lines)]
pub fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    // Memory amplification by the grouping key: copied into every series.
    cases.push(case(
        "grouping value 60 KB, 2,000 series",
        "amplification: grouping label per series",
        text_push(
            &format!("/metrics/job/x/big/{}", "v".repeat(60_000)),
            one_line_series(2_000),
        ),
    ));
    cases.push(case(
        "grouping value 4 KB, 2,000 series",
        "amplification: grouping label per series",
        text_push(
            &format!("/metrics/job/x/big/{}", "v".repeat(4_000)),
            one_line_series(2_000),
        ),
    ));
    let many_grouping: String = (0..500).map(|i| format!("/l{i}/v")).collect();
    cases.push(case(
        "500 grouping labels",
        "amplification: grouping label per series",
        text_push(
            &format!("/metrics/job/x{many_grouping}"),
            one_line_series(100),
        ),
    ));
    // Protobuf histogram with a long label and many buckets.
    let buckets: Vec<(f64, u64)> = (0..1_000).map(|i| (f64::from(i), 1)).collect();
    for (name, len) in [("1 MiB", 1 << 20), ("16 KB", 16_000)] {
        let big = "l".repeat(len);
        let message = family(
            "h",
            None,
            4,
            &[metric(
                &[("big", &big)],
                7,
                &histogram(1, 1.0, &buckets),
                None,
            )],
        );
        cases.push(case(
            format!("protobuf histogram, {name} label, 1,000 buckets"),
            "amplification: label on every bucket line",
            protobuf_push("/metrics/job/x", delimited(&[message])),
        ));
    }
    // Empty protobuf metrics: 2 bytes on the wire, a whole struct decoded.
    for count in [500_000, 90_000] {
        let empty: Vec<Vec<u8>> = vec![Vec::new(); count];
        cases.push(case(
            format!("protobuf, {count} empty metrics"),
            "amplification: decoded before counted",
            protobuf_push("/metrics/job/x", delimited(&[family("e", None, 1, &empty)])),
        ));
    }
    // Protobuf families: many distinct, and one name repeated.
    let distinct: Vec<Vec<u8>> = (0..99_000)
        .map(|i| {
            let mut out = Vec::new();
            bytes(&mut out, 1, format!("f{i}").as_bytes());
            out
        })
        .collect();
    cases.push(case(
        "protobuf, 99,000 families without metrics",
        "quadratic: family de-duplication",
        protobuf_push("/metrics/job/x", delimited(&distinct)),
    ));
    let gauge = metric(&[], 2, &simple(1.0), None);
    let repeated: Vec<Vec<u8>> = (0..60_000)
        .map(|_| family("same", None, 1, std::slice::from_ref(&gauge)))
        .collect();
    cases.push(case(
        "protobuf, one family 60,000 times",
        "quadratic: family de-duplication",
        protobuf_push("/metrics/job/x", delimited(&repeated)),
    ));
    // Deeply nested unknown groups: prost's recursion limit must stop them.
    let mut deep = Vec::new();
    for _ in 0..50_000 {
        deep.push(0x9b); // field 19, start group
        deep.push(0x01);
    }
    let mut deep_message = Vec::new();
    bytes(&mut deep_message, 1, b"deep");
    deep_message.extend_from_slice(&deep);
    cases.push(case(
        "protobuf, 50,000 nested groups",
        "deep protobuf",
        protobuf_push("/metrics/job/x", delimited(&[deep_message])),
    ));
    // Text labels.
    let labels: String = (0..40_000)
        .map(|i| format!("l{i}=\"\""))
        .collect::<Vec<_>>()
        .join(",");
    cases.push(case(
        "text, 40,000 labels on one series",
        "quadratic: duplicate-label check",
        text_push("/metrics/job/x", format!("m{{{labels}}} 1\n")),
    ));
    let row: String = (0..120)
        .map(|i| format!("l{i}=\"v\""))
        .collect::<Vec<_>>()
        .join(",");
    let wide: String = (0..1_500)
        .map(|i| format!("w{{{row},i=\"{i}\"}} 1\n"))
        .collect();
    cases.push(case(
        "text, 1,500 series of 121 labels",
        "quadratic: duplicate-label check",
        text_push("/metrics/job/x", wide),
    ));
    cases.push(case(
        "text, 2 KB label name",
        "long label name",
        text_push(
            "/metrics/job/x",
            format!("m{{{}=\"v\"}} 1\n", "n".repeat(2_000)),
        ),
    ));
    cases.push(case(
        "text, 1 MiB label value",
        "long label value",
        text_push(
            "/metrics/job/x",
            format!("m{{a=\"{}\"}} 1\n", "v".repeat(1 << 20)),
        ),
    ));
    // Buckets and quantiles.
    let mut many_buckets = String::from("# TYPE h histogram\n");
    for i in 0..100_000 {
        many_buckets.push_str(&format!("h_bucket{{le=\"{i}\"}} 1\n"));
    }
    cases.push(case(
        "text histogram, 100,000 buckets",
        "many buckets",
        text_push("/metrics/job/x", many_buckets),
    ));
    let mut many_quantiles = String::from("# TYPE s summary\n");
    for i in 0..100_000 {
        many_quantiles.push_str(&format!("s{{quantile=\"0.{i}\"}} 1\n"));
    }
    cases.push(case(
        "text summary, 100,000 quantiles",
        "many quantiles",
        text_push("/metrics/job/x", many_quantiles),
    ));
    let mut pb_quantiles = Vec::new();
    uint(&mut pb_quantiles, 1, 1);
    for i in 0..100_000 {
        let mut quantile = Vec::new();
        double(&mut quantile, 1, f64::from(i) / 100_000.0);
        double(&mut quantile, 2, 1.0);
        bytes(&mut pb_quantiles, 3, &quantile);
    }
    cases.push(case(
        "protobuf summary, 100,000 quantiles",
        "many quantiles",
        protobuf_push(
            "/metrics/job/x",
            delimited(&[family("s", None, 2, &[metric(&[], 4, &pb_quantiles, None)])]),
        ),
    ));
    // Many series and families.
    cases.push(case(
        "text, 200,000 series",
        "many series",
        text_push("/metrics/job/x", one_line_series(200_000)),
    ));
    let families: String = (0..200_000)
        .map(|i| format!("# TYPE f{i} gauge\n"))
        .collect();
    cases.push(case(
        "text, 200,000 family headers",
        "many families",
        text_push("/metrics/job/x", families),
    ));
    // The Accept header of a scrape: no authentication needed. 358 KB: the issue's
    // 320 KB took 7.7 s; past about 400 KB the HTTP layer refuses the head (431).
    let accept: String = (0..20_000)
        .map(|i| format!("a/b{i};q=0.{i}"))
        .collect::<Vec<_>>()
        .join(",");
    cases.push(case(
        format!("GET /metrics, {} KB Accept", accept.len() / 1000),
        "quadratic: Accept sort",
        Request::new("GET", "/metrics").header("Accept", &accept),
    ));
    // Compression bombs, just under and over the default body limit once decoded.
    for (name, len) in [("15 MiB", 15 << 20), ("17 MiB", 17 << 20)] {
        cases.push(case(
            format!("gzip bomb, {name} of zeros"),
            "compression bomb",
            Request::new("PUT", "/metrics/job/x")
                .header("Content-Encoding", "gzip")
                .body(gzip_zeros(len)),
        ));
    }
    cases.push(case(
        "snappy bomb, 15 MiB of comments",
        "compression bomb",
        Request::new("PUT", "/metrics/job/x")
            .header("Content-Encoding", "snappy")
            .body(snappy_repeats(15 << 20)),
    ));
    cases
}

/// Bytes a request takes on the wire: request line, headers and body.
#[must_use]
pub fn wire_bytes(request: &Request) -> usize {
    let head = request.method.len() + request.path.len() + " HTTP/1.1\r\n".len() + 1;
    let headers: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 4)
        .sum();
    head + headers + request.body.len()
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
#[must_use]
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|value| value.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the peak resident size (`VmHWM`) of `pid` to its current size, so that the
/// next reading is the peak of what follows. Needs root or the same user.
pub fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .unwrap_or_else(|err| panic!("reset VmHWM of {pid}: {err}"));
}

/// What one request cost a server.
#[derive(Clone, Debug)]
pub struct Cost {
    /// The answer's status, `None` when the server answered nothing (closed, timed out).
    pub status: Option<u16>,
    /// The answer's first line of body, for tables.
    pub answer: String,
    /// Time from sending to the whole answer.
    pub elapsed: Duration,
    /// Peak resident memory during the request minus resident memory before it, KiB.
    pub growth_kib: u64,
    /// Bytes on the wire.
    pub wire_bytes: usize,
    /// Whether the server was killed for going over the memory cap of [`measure`].
    pub capped: bool,
}

/// Kills `pid` (SIGKILL) if its resident size goes over `cap_kib` before `done` is set;
/// returns whether it did. Polls every 5 ms: a process can outgrow the cap by what it
/// allocates in that time, which is far less than a shared machine has spare.
fn watch_memory(pid: u32, cap_kib: u64, done: &AtomicBool) -> bool {
    while !done.load(Ordering::Relaxed) {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return false;
        };
        let rss: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .unwrap_or_default();
        if rss > cap_kib {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Sends `request` to `server` and measures it: the peak is reset first, so the growth
/// is the peak during the request over the resident size before it. A server whose
/// resident size passes `cap_kib` is killed (the machine is shared; a hostile request
/// can take gigabytes), and its growth is reported as the cap.
#[must_use]
pub fn measure(server: &Server, request: &Request, cap_kib: u64) -> Cost {
    let pid = server.process.child.id();
    reset_peak(pid);
    let before = status_kib(pid, "VmRSS");
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || watch_memory(pid, cap_kib, &done))
    };
    let started = Instant::now();
    let reply: Option<Reply> = request.send(server.addr).ok();
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let capped = watcher.join().unwrap_or(true);
    let peak = if capped {
        before + cap_kib
    } else {
        status_kib(pid, "VmHWM")
    };
    Cost {
        capped,
        status: reply.as_ref().map(|reply| reply.status),
        answer: reply.map_or_else(
            || "no answer".to_owned(),
            |reply| {
                let text = reply.text();
                let first = text.lines().next().unwrap_or_default();
                first.chars().take(60).collect()
            },
        ),
        elapsed,
        growth_kib: peak.saturating_sub(before),
        wire_bytes: wire_bytes(request),
    }
}
