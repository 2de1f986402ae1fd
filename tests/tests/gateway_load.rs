//! Load: 8 writers and 4 scrapers against the real `dropgate gateway` for 60 s (CI,
//! `DROPGATE_E2E=require`) or 10 s (by hand; `DROPGATE_LOAD_SECS=<n>` sets any length).
//! No answer may be a 5xx, and the final state must equal a sequential replay of what
//! every writer did, writer after writer, on a fresh gateway.
//!
//! The writers contend on purpose: all push the same family names (so every push is
//! checked against the others' groups), all POST their own family into one shared group,
//! and they delete groups and send pushes that the consistency check must refuse. Each
//! operation's outcome depends only on its own writer's history (the shared group holds
//! an anchor series that keeps the refused type clash refused), so any order of the
//! writers' operations gives the same final state; a lost, doubled or torn write shows
//! as a difference. Compared byte for byte except the values of the two push-time
//! gauges (wall-clock times; 0 is kept, it means "never").

mod hardening;

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dropgate_tests::e2e_required;
use hardening::{seed, Client, Gateway, Rng, TempDir};

const WRITERS: usize = 8;
const SCRAPERS: usize = 4;
const GROUPS_PER_WRITER: usize = 4;

/// One operation of a writer and the status it got.
#[derive(Clone, Debug)]
struct Op {
    method: &'static str,
    path: String,
    body: String,
    status: u16,
}

fn duration() -> Duration {
    let secs = std::env::var("DROPGATE_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if e2e_required() { 60 } else { 10 });
    Duration::from_secs(secs)
}

fn next_op(writer: usize, i: u64, rng: &mut Rng) -> (&'static str, String, String) {
    let own = format!(
        "/metrics/job/load/instance/w{writer}_{}",
        rng.below(GROUPS_PER_WRITER)
    );
    match rng.below(10) {
        0..=4 => (
            "PUT",
            own,
            format!(
                "# TYPE load_value gauge\nload_value{{kind=\"a\"}} {i}\nload_value{{kind=\"b\"}} {}\n# TYPE load_ops_total counter\nload_ops_total {i}\n",
                i * 2
            ),
        ),
        5 | 6 => (
            "POST",
            "/metrics/job/load/instance/shared".to_owned(),
            format!("# TYPE load_writer_{writer} gauge\nload_writer_{writer} {i}\n"),
        ),
        7 => ("DELETE", own, String::new()),
        8 => (
            "POST",
            own,
            format!("# TYPE load_ops_total counter\nload_ops_total {i}\n"),
        ),
        _ => (
            "PUT",
            own,
            // load_value is a gauge in the shared group's anchor: always refused.
            format!("# TYPE load_value counter\nload_value {i}\n"),
        ),
    }
}

const ANCHOR: &str = "# TYPE load_value gauge\nload_value{kind=\"anchor\"} 1\n";

fn push_anchor(client: &mut Client) {
    let answer = client
        .request(
            "PUT",
            "/metrics/job/load/instance/shared",
            &[],
            ANCHOR.as_bytes(),
        )
        .expect("push the anchor");
    assert_eq!(answer.status, 200, "{}", answer.text());
}

/// The exposition with the values of the push-time gauges masked (0 kept).
fn masked(exposition: &str) -> String {
    exposition
        .lines()
        .map(|line| {
            let is_time = line.starts_with("push_time_seconds{")
                || line.starts_with("push_failure_time_seconds{");
            match line.rsplit_once(' ') {
                Some((series, value)) if is_time && value != "0" => format!("{series} T"),
                _ => line.to_owned(),
            }
        })
        .fold(String::new(), |mut out, line| {
            let _ = writeln!(out, "{line}");
            out
        })
}

fn spawn_writer(
    writer: usize,
    seed: u64,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Op>> {
    std::thread::spawn(move || {
        let mut rng = Rng::new(seed ^ (writer as u64 + 1).wrapping_mul(0x9e37_79b9));
        let mut client = Client::new(addr);
        let mut ops = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let (method, path, body) = next_op(writer, i, &mut rng);
            let answer = client
                .request(method, &path, &[], body.as_bytes())
                .unwrap_or_else(|err| panic!("writer {writer}: {method} {path}: {err}"));
            assert!(
                answer.status < 500,
                "writer {writer}: {method} {path} answered {}: {}",
                answer.status,
                answer.text()
            );
            ops.push(Op {
                method,
                path,
                body,
                status: answer.status,
            });
        }
        ops
    })
}

fn spawn_scraper(
    scraper: usize,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut client = Client::new(addr);
        let accept = [
            &[][..],
            &[("Accept-Encoding", "gzip")][..],
            &[("Accept", dropgate_tests::protobuf::CONTENT_TYPE)][..],
        ];
        while !stop.load(Ordering::Relaxed) {
            let headers = accept[scraper % accept.len()];
            let answer = client
                .request("GET", "/metrics", headers, b"")
                .unwrap_or_else(|err| panic!("scraper {scraper}: {err}"));
            assert_eq!(answer.status, 200, "scraper {scraper}: {}", answer.text());
            assert!(
                !answer.body.is_empty(),
                "scraper {scraper}: empty exposition"
            );
            done.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// The writers' operations, one writer after another, on the gateway at `addr`; each
/// must get the status it got under load.
fn replay(addr: std::net::SocketAddr, logs: &[Vec<Op>]) {
    let mut client = Client::new(addr);
    push_anchor(&mut client);
    for (writer, ops) in logs.iter().enumerate() {
        for (n, op) in ops.iter().enumerate() {
            let answer = client
                .request(op.method, &op.path, &[], op.body.as_bytes())
                .expect("replay");
            assert_eq!(
                answer.status,
                op.status,
                "writer {writer} op {n}: {} {} answered {} under load, {} in the replay: {}",
                op.method,
                op.path,
                op.status,
                answer.status,
                answer.text()
            );
        }
    }
}

#[test]
fn eight_writers_four_scrapers_equal_the_sequential_replay() {
    let dir = TempDir::new("load");
    let gateway = Gateway::start(&dir, &[]);
    let seed = seed("load");
    let length = duration();
    push_anchor(&mut Client::new(gateway.addr));
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| spawn_writer(writer, seed, gateway.addr, Arc::clone(&stop)))
        .collect();
    let readers: Vec<_> = (0..SCRAPERS)
        .map(|reader| {
            spawn_scraper(
                reader,
                gateway.addr,
                Arc::clone(&stop),
                Arc::clone(&scrapes),
            )
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(length);
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<Vec<Op>> = writers
        .into_iter()
        .map(|w| w.join().expect("a writer failed"))
        .collect();
    for reader in readers {
        reader.join().expect("a scraper failed");
    }
    let elapsed = started.elapsed();
    let concurrent = masked(&gateway.scrape());

    // The same operations, one writer after another, on a fresh gateway.
    let replay_gateway = Gateway::start(&dir, &[]);
    let replay_started = Instant::now();
    replay(replay_gateway.addr, &logs);
    let replayed = masked(&replay_gateway.scrape());
    let total: usize = logs.iter().map(Vec::len).sum();
    let refused = logs.iter().flatten().filter(|op| op.status == 400).count();
    eprintln!(
        "load: {total} writes ({refused} refused as they must be) and {} scrapes in {:.1}s \
         ({:.0} writes/s), no 5xx; replay of the writes took {:.1}s",
        scrapes.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        replay_started.elapsed().as_secs_f64()
    );
    assert!(
        refused > 0 && total > refused,
        "the mix must include both kinds"
    );
    if concurrent != replayed {
        let diff: Vec<String> = concurrent
            .lines()
            .zip(replayed.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("  load   {a}\n  replay {b}"))
            .collect();
        panic!(
            "the state under load differs from the sequential replay:\n{}\n(lines: {} vs {})",
            diff.join("\n"),
            concurrent.lines().count(),
            replayed.lines().count()
        );
    }
}
