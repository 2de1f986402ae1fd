//! Scrapes stay answered while network namespaces come and go: the namespace loop
//! follows every namespace and removes vanished ones while scrapes read the forwarding
//! state it keeps, and lookups from drops look for namespaces too. A lock taken in the
//! wrong order anywhere on that path hangs the gateway at the first unlucky moment.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dropgate_tests::{dropgate::DropgateRun, http, is_root, may_run};

/// How long scrapes and churn go on.
const DURATION: Duration = Duration::from_mins(1);
/// Pause between scrapes.
const SCRAPE_EVERY: Duration = Duration::from_millis(10);
/// A correctness bound, not a benchmark: a healthy scrape here takes milliseconds.
const SLOWEST_ALLOWED: Duration = Duration::from_secs(1);
/// Namespaces alive at any time: every look for namespaces walks all of them under the
/// names lock, which widens the window a wrong lock order needs.
const ALIVE: usize = 150;

/// Namespaces `dg-churn-<pid>-<n>` made by this test; whatever is left is deleted on drop.
struct Churn {
    prefix: String,
    alive: std::collections::VecDeque<usize>,
    next: usize,
}

impl Churn {
    fn new() -> Self {
        Self {
            prefix: format!("dg-churn-{}", std::process::id()),
            alive: std::collections::VecDeque::new(),
            next: 0,
        }
    }

    fn name(&self, n: usize) -> String {
        format!("{}-{n}", self.prefix)
    }

    fn add(&mut self) {
        let name = self.name(self.next);
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.alive.push_back(self.next);
        self.next += 1;
    }

    fn remove_oldest(&mut self) {
        if let Some(n) = self.alive.pop_front() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name(n)])
                .status();
        }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        while !self.alive.is_empty() {
            self.remove_oldest();
        }
    }
}

#[test]
fn scrapes_stay_fast_while_namespaces_come_and_go() {
    if !may_run(
        "scrapes_stay_fast_while_namespaces_come_and_go",
        is_root(),
        "root (namespaces, BPF)",
    ) {
        return;
    }
    let mut churn = Churn::new();
    for _ in 0..ALIVE {
        churn.add();
    }
    let dropgate = DropgateRun::start(&[]);
    let addr = dropgate.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = std::thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            let (mut slowest, mut scrapes, mut failures) = (Duration::ZERO, 0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                // The client's read timeout (10 s) bounds a hung scrape.
                let answered = http::get(addr, "/metrics").is_ok_and(|r| r.status == 200);
                slowest = slowest.max(started.elapsed());
                scrapes += 1;
                failures += u32::from(!answered);
                if slowest > SLOWEST_ALLOWED {
                    break;
                }
                std::thread::sleep(SCRAPE_EVERY);
            }
            (slowest, scrapes, failures)
        }
    });
    let started = Instant::now();
    let mut cycles = 0u32;
    while started.elapsed() < DURATION && !scraper.is_finished() {
        churn.remove_oldest();
        churn.add();
        cycles += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let (slowest, scrape_count, failures) = scraper.join().expect("the scraper thread");
    eprintln!(
        "{scrape_count} scrapes, {failures} failed, slowest {slowest:?}; {cycles} namespaces replaced in {:?}",
        started.elapsed()
    );
    assert!(
        slowest <= SLOWEST_ALLOWED,
        "a scrape took {slowest:?} (more than {SLOWEST_ALLOWED:?}) while namespaces came and went"
    );
    assert_eq!(failures, 0, "every scrape is answered with 200");
    assert!(
        scrape_count > 1000,
        "the scraper ran ({scrape_count} scrapes)"
    );
}
