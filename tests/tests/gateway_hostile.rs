//! Issue 19's "must show": every request of the hostile corpus (`src/hostile.rs`) sent
//! to the real `dropgate gateway` with its default limits, each on a fresh process, and
//! each held to the bounds the issue states:
//! - an answer within 100 ms per MB of request, and never less than [`TIME_FLOOR`]
//!   (connection set-up, scheduling on a loaded machine), the fastest of up to three
//!   tries on fresh processes counting; the bound is for the release
//!   build, so against a debug build (as `cargo xtask test` runs) both are multiplied by
//!   [`DEBUG_BUILD_SLOWDOWN`];
//! - resident memory growth (peak during the request over the size before it, from
//!   `/proc/<pid>/status` after resetting the peak) at most 20 times the request's bytes
//!   on the wire, URL included, and never less than [`MEMORY_FLOOR`] (the blocking
//!   thread's stack and allocator arena, and the 1 MiB any push may render into);
//! - the store unchanged when the request is refused (the exposition byte-equal but for
//!   dropgate's own `dropgate_*` families);
//! - `/-/healthy` answering within 100 ms while 8 of the heaviest run at once (over the
//!   worst latency of the idle server on the same machine, measured just before: on a
//!   shared, loaded machine that is what scheduling alone costs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dropgate_tests::dropgate_bin;
use dropgate_tests::gateway::{without_families, Request, Server, DROPGATE_OWN_PREFIX};
use dropgate_tests::hostile::{corpus, measure, Cost};

/// Answer time allowed per MB (10^6 bytes) of request.
const TIME_PER_MB: Duration = Duration::from_millis(100);
/// Answer time always allowed.
const TIME_FLOOR: Duration = Duration::from_millis(250);
/// Tries of a request that answers late, the fastest of which counts.
const TIME_TRIES: usize = 3;
/// How much slower than the release build a debug build may answer: unoptimised code
/// parses several times slower, and the bound is for what ships.
const DEBUG_BUILD_SLOWDOWN: u32 = 5;
/// A server past this resident size is killed: the machine is shared.
const MEMORY_CAP_KIB: u64 = 2 * 1024 * 1024;
/// Growth allowed per byte of request, for every case: the bound. The closest
/// is an accepted push of many tiny labels (1,500 series of 121), whose decoded structs
/// take about 112 bytes per 8-byte label with glibc's 32-byte smallest chunk: about 15x
/// at its peak, now that the store renders it while freeing those structs and checks
/// the round trip 64 KB at a time (20x before, allowed 25x).
const MEMORY_FACTOR: u64 = 20;
/// Growth always allowed, KiB.
const MEMORY_FLOOR_KIB: u64 = 4 * 1024;
/// Longest `/-/healthy` answer while hostile requests run.
const HEALTHY_BOUND: Duration = Duration::from_millis(100);

/// A small valid store, so a refusal has something to leave unchanged.
fn seed(server: &Server) {
    for job in ["a", "b"] {
        let reply = server.send(
            &Request::new("PUT", &format!("/metrics/job/{job}"))
                .body("# TYPE seed_total counter\nseed_total{k=\"1\"} 3\nseed_total{k=\"2\"} 4\n"),
        );
        assert_eq!(reply.status, 200, "seed push: {}", reply.text());
    }
}

/// The pushed part of the exposition, `None` when the scrape fails (a server still
/// busy with the hostile request, for one).
fn pushed(server: &Server) -> Option<String> {
    let reply = Request::new("GET", "/metrics").send(server.addr).ok()?;
    (reply.status == 200).then(|| without_families(&reply.text(), &[DROPGATE_OWN_PREFIX]))
}

fn is_debug_build() -> bool {
    dropgate_bin()
        .components()
        .any(|part| part.as_os_str() == "debug")
}

fn time_bound(wire_bytes: usize) -> Duration {
    #[allow(clippy::cast_precision_loss)]
    let mb = wire_bytes as f64 / 1e6;
    let bound = TIME_PER_MB.mul_f64(mb).max(TIME_FLOOR);
    if is_debug_build() {
        bound * DEBUG_BUILD_SLOWDOWN
    } else {
        bound
    }
}

fn memory_bound_kib(wire_bytes: usize) -> u64 {
    (MEMORY_FACTOR * wire_bytes as u64 / 1024).max(MEMORY_FLOOR_KIB)
}

fn row(name: &str, cost: &Cost) -> String {
    format!(
        "{name:<48} {:>10} B {:>8.1} ms {:>9} KiB  {}",
        cost.wire_bytes,
        cost.elapsed.as_secs_f64() * 1e3,
        cost.growth_kib,
        cost.answer
    )
}

#[test]
fn every_hostile_request_costs_bounded_time_and_memory_and_changes_nothing() {
    let mut failures = Vec::new();
    for case in corpus() {
        let server = Server::dropgate(&[]);
        seed(&server);
        let before = pushed(&server).expect("scrape before the hostile request");
        let cost = measure(&server, &case.request, MEMORY_CAP_KIB);
        eprintln!("{}", row(&case.name, &cost));
        let time = time_bound(cost.wire_bytes);
        // Other processes share the machine: a late answer is tried again on a fresh
        // server, and the fastest of the tries counts.
        let mut fastest = cost.elapsed;
        for _ in 1..TIME_TRIES {
            if fastest <= time {
                break;
            }
            let again = Server::dropgate(&[]);
            seed(&again);
            fastest = fastest.min(measure(&again, &case.request, MEMORY_CAP_KIB).elapsed);
        }
        if fastest > time {
            failures.push(format!(
                "{} ({}): answered after {fastest:?} at best of {TIME_TRIES}, more than {time:?}",
                case.name, case.finding
            ));
        }
        let memory = memory_bound_kib(cost.wire_bytes);
        if cost.growth_kib > memory {
            failures.push(format!(
                "{} ({}): resident memory grew by {} KiB, more than {memory} KiB ({MEMORY_FACTOR}x)",
                case.name, case.finding, cost.growth_kib
            ));
        }
        let refused = cost.status.is_none_or(|status| status >= 400);
        match pushed(&server) {
            None => failures.push(format!(
                "{} ({}): the scrape after it failed",
                case.name, case.finding
            )),
            Some(after) if refused && after != before => failures.push(format!(
                "{} ({}): refused with {:?} but the store changed",
                case.name, case.finding, cost.status
            )),
            Some(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "hostile requests over their bounds:\n{}",
        failures.join("\n")
    );
}

/// Probes `/-/healthy` every 20 ms until `done` (or a minute); every probe must be
/// answered 200. Returns the latencies.
fn probe_healthy(server: &Server, done: &AtomicBool) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_mins(1);
    while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
        let started = Instant::now();
        let reply = Request::new("GET", "/-/healthy").send(server.addr);
        let latency = started.elapsed();
        assert!(
            reply.is_ok_and(|reply| reply.status == 200),
            "/-/healthy did not answer 200"
        );
        latencies.push(latency);
        std::thread::sleep(Duration::from_millis(20));
    }
    latencies
}

#[test]
fn healthy_answers_while_eight_hostile_requests_run() {
    let server = Arc::new(Server::dropgate(&[]));
    seed(&server);
    // What this machine adds on its own: the worst of as many probes of the idle server
    // as there will be in the run below, at most. On a quiet machine a few ms; when other
    // processes load the cores, their scheduling delays are not the hostile requests'.
    let baseline = {
        let done = Arc::new(AtomicBool::new(false));
        let stopper = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(3));
                done.store(true, Ordering::Relaxed);
            })
        };
        let latencies = probe_healthy(&server, &done);
        stopper.join().expect("stopper thread");
        latencies.into_iter().max().unwrap_or_default()
    };
    // The eight largest requests of the corpus.
    let mut cases = corpus();
    cases.sort_by_key(|case| std::cmp::Reverse(case.request.body.len() + case.request.path.len()));
    cases.truncate(8);
    let done = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = cases
        .into_iter()
        .map(|case| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                // The answer does not matter here, only that the server keeps answering.
                let _ = case.request.send(server.addr);
            })
        })
        .collect();
    let prober = {
        let server = Arc::clone(&server);
        let done = Arc::clone(&done);
        std::thread::spawn(move || probe_healthy(&server, &done))
    };
    for sender in senders {
        sender.join().expect("sender thread");
    }
    done.store(true, Ordering::Relaxed);
    let latencies = prober.join().expect("prober thread");
    let worst = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "/-/healthy: {} probes while 8 hostile requests ran, worst {worst:?} \
         (idle server on this machine: worst {baseline:?})",
        latencies.len()
    );
    assert!(
        latencies.len() >= 3,
        "too few probes ({}) to say anything",
        latencies.len()
    );
    assert!(
        worst <= HEALTHY_BOUND + baseline,
        "/-/healthy took {worst:?} while hostile requests ran, more than {HEALTHY_BOUND:?} \
         over the {baseline:?} it took at worst on the idle server"
    );
}
