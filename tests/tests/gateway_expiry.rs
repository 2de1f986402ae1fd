//! Issue 14's group expiry on the real `dropgate gateway`: groups go within a second of
//! their time to live (`--push.ttl`, or a push's own `Dropgate-Push-TTL`) while other
//! groups are pushed and `/metrics` and `/api/v1/metrics` are read all the time, never
//! earlier, and a group pushed again in time never goes; deadlines survive a restart,
//! counting from the pushes before it, and expired groups leave the persistence file.
//!
//! Times are taken by the test around each request: a group must be present in every
//! read that ended before its push started plus its time to live, and absent from
//! every read that started after its push ended plus its time to live plus a second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dropgate_tests::gateway::{Request, Server, TempDir};

/// What the issue allows between a deadline and the group's disappearance.
const SLACK: Duration = Duration::from_secs(1);
const TTL_HEADER: &str = "Dropgate-Push-TTL";

/// One read of the gateway: when it started and ended, and what it answered.
struct Read {
    started: Instant,
    ended: Instant,
    text: String,
}

/// One push: when it started and ended, and the group's time to live.
struct Push {
    job: String,
    started: Instant,
    ended: Instant,
    ttl: Duration,
}

fn has_job(text: &str, job: &str) -> bool {
    text.contains(&format!("job=\"{job}\"")) || text.contains(&format!("\"job\":\"{job}\""))
}

fn push(server: &Server, job: &str, ttl: Option<&str>, value: u32) -> (Instant, Instant) {
    let mut request = Request::new("PUT", &format!("/metrics/job/{job}"))
        .body(format!("# TYPE expiry_test gauge\nexpiry_test {value}\n"));
    if let Some(ttl) = ttl {
        request = request.header(TTL_HEADER, ttl);
    }
    let started = Instant::now();
    let reply = server.send(&request);
    let ended = Instant::now();
    assert_eq!(reply.status, 200, "push to {job}: {}", reply.text());
    (started, ended)
}

/// Every read of `reads` agrees with `push`'s deadline: present before it, absent a
/// second after it. Returns the failures.
fn check_deadline(push: &Push, reads: &[Read]) -> Vec<String> {
    let mut failures = Vec::new();
    let earliest = push.started + push.ttl;
    let latest = push.ended + push.ttl + SLACK;
    for read in reads {
        let present = has_job(&read.text, &push.job);
        if read.started > push.ended && read.ended < earliest && !present {
            failures.push(format!(
                "{} gone {:?} after its push, before its time to live of {:?}",
                push.job,
                read.ended - push.started,
                push.ttl
            ));
        }
        if read.started > latest && present {
            failures.push(format!(
                "{} still there {:?} after its push, more than {:?} past its time to live of {:?}",
                push.job,
                read.started - push.ended,
                SLACK,
                push.ttl
            ));
        }
    }
    failures
}

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Two readers, one of the exposition and one of the JSON API, reading until `done`.
fn spawn_readers(
    server: &Arc<Server>,
    done: &Arc<AtomicBool>,
    reads: &Arc<Mutex<Vec<Read>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    ["/metrics", "/api/v1/metrics"]
        .into_iter()
        .map(|path| {
            let (server, done, reads) = (Arc::clone(server), Arc::clone(done), Arc::clone(reads));
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let reply = server.get(path);
                    let ended = Instant::now();
                    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
                    reads.lock().expect("reads lock").push(Read {
                        started,
                        ended,
                        text: reply.text(),
                    });
                }
            })
        })
        .collect()
}

#[test]
fn groups_expire_within_a_second_of_their_ttl_under_pushes_and_scrapes() {
    let server = Arc::new(Server::dropgate(&["--push.ttl=2s"]));
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(Mutex::new(Vec::new()));
    let readers = spawn_readers(&server, &done, &reads);
    // A group pushed again every 300 ms, which must never go, and one that stops
    // being pushed, which must then go like the others.
    let keeper = {
        let (server, done) = (Arc::clone(&server), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut value = 0;
            let mut last = None;
            while !done.load(Ordering::Relaxed) {
                last = Some(push(&server, "kept", None, value));
                value += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            last.expect("pushed at least once")
        })
    };
    // Groups pushed once, staggered: the default time to live, and their own.
    let mut pushes = Vec::new();
    for i in 0..6 {
        let (job, ttl, header) = match i % 3 {
            0 => (format!("default-{i}"), Duration::from_secs(2), None),
            1 => (
                format!("own-{i}"),
                Duration::from_millis(1_500),
                Some("1500ms"),
            ),
            _ => (format!("longer-{i}"), Duration::from_secs(3), Some("3s")),
        };
        let (started, ended) = push(&server, &job, header, i);
        pushes.push(Push {
            job,
            started,
            ended,
            ttl,
        });
        std::thread::sleep(Duration::from_millis(250));
    }
    // Long enough for the last of them to go, with the slack.
    std::thread::sleep(Duration::from_secs(3) + SLACK + Duration::from_millis(500));
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().expect("reader thread");
    }
    let _ = keeper.join().expect("keeper thread");
    // At once, while the re-pushed group's last push is still fresh.
    let expired = sample(&server.scrape(), "dropgate_gateway_groups_expired_total");
    let reads = reads.lock().expect("reads lock");

    let mut failures: Vec<String> = pushes
        .iter()
        .flat_map(|p| check_deadline(p, &reads))
        .collect();
    let kept_missing = reads
        .iter()
        .filter(|read| read.started > pushes[0].ended && !has_job(&read.text, "kept"))
        .count();
    if kept_missing > 0 {
        failures.push(format!(
            "the re-pushed group was missing from {kept_missing} reads"
        ));
    }
    let last = reads.last().expect("reads were made");
    let gone_at_end = pushes
        .iter()
        .filter(|p| !has_job(&last.text, &p.job))
        .count();
    eprintln!(
        "{} reads while {} groups expired and one was re-pushed; {gone_at_end} gone at the end",
        reads.len(),
        pushes.len()
    );
    assert!(
        reads.len() >= 20,
        "too few reads ({}) to say anything",
        reads.len()
    );
    assert!(
        failures.is_empty(),
        "expiry out of bounds:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        expired,
        Some(6.0),
        "every group pushed once expired, and only those"
    );
}

#[test]
fn deadlines_survive_a_restart_and_expired_groups_leave_the_file() {
    let dir = TempDir::new("expiry-restart");
    let file = dir.join("store");
    let flags = [
        format!("--persistence.file={}", file.display()),
        "--persistence.interval=200ms".to_owned(),
        "--push.ttl=6s".to_owned(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut first = Server::dropgate(&flags);
    let (started, ended) = push(&first, "restart-default", None, 1);
    let default = Push {
        job: "restart-default".to_owned(),
        started,
        ended,
        ttl: Duration::from_secs(6),
    };
    let (started, ended) = push(&first, "restart-own", Some("8s"), 2);
    let own = Push {
        job: "restart-own".to_owned(),
        started,
        ended,
        ttl: Duration::from_secs(8),
    };
    let (_, never_pushed) = push(&first, "restart-never", Some("0"), 3);
    first.terminate();
    drop(first);

    let second = Server::dropgate(&flags);
    let restarted = Instant::now();
    assert!(
        restarted < default.started + default.ttl,
        "the restart took too long to see anything ({:?})",
        restarted - default.started
    );
    let mut reads = Vec::new();
    let until = own.ended + own.ttl + SLACK + Duration::from_millis(500);
    while Instant::now() < until {
        let started = Instant::now();
        let text = second.scrape();
        reads.push(Read {
            started,
            ended: Instant::now(),
            text,
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut failures = check_deadline(&default, &reads);
    failures.extend(check_deadline(&own, &reads));
    assert!(
        failures.is_empty(),
        "expiry after a restart out of bounds:\n{}",
        failures.join("\n")
    );
    let last = &reads.last().expect("reads were made").text;
    assert!(
        has_job(last, "restart-never"),
        "the group that asked never to expire went ({:?} after its push)",
        never_pushed.elapsed()
    );
    assert_eq!(
        sample(last, "dropgate_gateway_groups_expired_total"),
        Some(2.0)
    );
    // The expiry is a change: the file is saved without the expired groups.
    std::thread::sleep(Duration::from_millis(600));
    let saved = std::fs::read(&file).expect("the persistence file exists");
    let saved = String::from_utf8_lossy(&saved);
    assert!(
        !saved.contains("restart-default") && !saved.contains("restart-own"),
        "an expired group is still in the persistence file"
    );
    assert!(
        saved.contains("restart-never"),
        "the kept group left the file"
    );
}
