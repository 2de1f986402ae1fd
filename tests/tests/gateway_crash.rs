//! Crash safety: `kill -9` the real `dropgate gateway` at random moments while it takes
//! pushes and writes its persistence file every 50 ms, at least 100 times, and restart
//! it on the same file each time.
//!
//! Push `n` replaces group `instance=<n mod 8>` with 500 series all of value `n`, so
//! any state the store ever had is "every push up to some m": group g holds the last
//! push ≤ m that went to g. After each restart the restored store must be exactly such
//! a state (no group with mixed values or missing series: nothing torn), with m no
//! older than what the previous restart restored (a persisted state is never lost) and
//! no newer than the last push sent. Pushes are numbered on from the restored m, as the
//! ones after it died unsaved with the process. The corrupt-file quarantine must never
//! trigger.
//! `DROPGATE_SEED=<n>` replays the kill times.

mod hardening;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hardening::{seed, Client, Gateway, Rng, TempDir};

const GROUPS: u64 = 8;
const SERIES: usize = 500;
const KILLS: usize = 100;
/// The loop stops after this long even if it has not killed `KILLS` times (and fails).
const TIME_BOUND: Duration = Duration::from_mins(4);

fn body(n: u64) -> Vec<u8> {
    let mut text = String::from("# TYPE crash_value gauge\n");
    for series in 0..SERIES {
        let _ = writeln!(text, "crash_value{{series=\"{series}\"}} {n}");
    }
    text.into_bytes()
}

/// group → (number of series, the distinct values they hold).
fn groups(exposition: &str) -> BTreeMap<u64, (usize, Vec<u64>)> {
    let mut groups: BTreeMap<u64, (usize, Vec<u64>)> = BTreeMap::new();
    for line in exposition.lines().filter(|l| l.starts_with("crash_value{")) {
        let instance = line
            .split("instance=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|g| g.parse().ok())
            .unwrap_or_else(|| panic!("a crash_value line without its group: {line}"));
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("a crash_value line without a value: {line}"))
            as u64;
        let entry = groups.entry(instance).or_default();
        entry.0 += 1;
        if !entry.1.contains(&value) {
            entry.1.push(value);
        }
    }
    groups
}

/// Checks that `exposition` is the state after pushes 1..=m for some m, returns m.
fn restored_prefix(exposition: &str, round: usize) -> u64 {
    let groups = groups(exposition);
    let mut m = 0;
    for (group, (count, values)) in &groups {
        assert_eq!(
            (*count, values.len()),
            (SERIES, 1),
            "round {round}: group {group} is torn: {count} series, values {values:?}"
        );
        m = m.max(values[0]);
    }
    for group in 0..GROUPS {
        // The last push ≤ m that went to `group`, if any.
        let last = (m >= group && m > 0)
            .then(|| m - (m - group) % GROUPS)
            .filter(|n| *n >= 1);
        let have = groups.get(&group).map(|(_, values)| values[0]);
        assert_eq!(
            have, last,
            "round {round}: group {group} does not belong to the state after push {m}"
        );
    }
    m
}

#[test]
fn kill_minus_nine_never_leaves_a_torn_or_lost_store() {
    let dir = TempDir::new("crash");
    let store = dir.join("store");
    let mut rng = Rng::new(seed("crash"));
    let persistence = [
        format!("--persistence.file={}", store.display()),
        "--persistence.interval=50ms".to_owned(),
    ];
    let args: Vec<&str> = persistence.iter().map(String::as_str).collect();
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut previous = 0;
    let mut kills = 0;
    let mut restores = 0;
    while kills < KILLS && started.elapsed() < TIME_BOUND {
        let gateway = Gateway::start(&dir, &args);
        let exposition = gateway.scrape();
        let m = restored_prefix(&exposition, kills);
        assert!(
            m >= previous,
            "round {kills}: restored the state after push {m}, older than the {previous} restored before"
        );
        let last_sent = sent.load(Ordering::SeqCst);
        assert!(
            m <= last_sent,
            "round {kills}: restored push {m}, but only {last_sent} were sent"
        );
        if m > previous {
            restores += 1;
        }
        previous = m;
        // Pushes after m died with the process (sent, perhaps applied, not saved):
        // number on from m, so that the history the store follows has no hole.
        sent.store(m, Ordering::SeqCst);

        // Push from another thread; kill -9 from this one at a random moment.
        let stop = Arc::new(AtomicBool::new(false));
        let pusher = {
            let (stop, sent, addr) = (Arc::clone(&stop), Arc::clone(&sent), gateway.addr);
            std::thread::spawn(move || {
                let mut client = Client::new(addr);
                while !stop.load(Ordering::SeqCst) {
                    let n = sent.load(Ordering::SeqCst) + 1;
                    let group = n % GROUPS;
                    sent.store(n, Ordering::SeqCst);
                    let path = format!("/metrics/job/crash/instance/{group}");
                    match client.request("PUT", &path, &[], &body(n)) {
                        Ok(answer) => assert_eq!(answer.status, 200, "push {n}: {}", answer.text()),
                        Err(_) => break, // the gateway is gone
                    }
                }
            })
        };
        let life = Duration::from_millis(20 + rng.below(230) as u64);
        std::thread::sleep(life);
        let mut gateway = gateway;
        gateway.process.child.kill().expect("kill -9 the gateway");
        let _ = gateway.process.child.wait();
        stop.store(true, Ordering::SeqCst);
        pusher.join().expect("the pusher thread");
        kills += 1;

        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list the temp dir")
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains(".corrupt-")),
            "round {kills}: the persistence file was found corrupt and moved aside: {names:?}\n{}",
            gateway.log_text()
        );
        assert!(
            !gateway.log_text().contains("corrupt"),
            "round {kills}: {}",
            gateway.log_text()
        );
    }
    // One more start: the last kill's file loads as well.
    let gateway = Gateway::start(&dir, &args);
    let m = restored_prefix(&gateway.scrape(), kills);
    assert!(m >= previous && m <= sent.load(Ordering::SeqCst));
    // Temporary files of writes cut short are left behind (one per killed process
    // at most); they are never read, only reported.
    let leftovers = std::fs::read_dir(dir.path())
        .expect("list the temp dir")
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .contains(".in_progress.")
        })
        .count();
    eprintln!(
        "crash: {kills} kills in {:.1}s, {} pushes sent, restored state moved forward {restores} times, \
         last restored push {m}; {leftovers} temporary files of cut writes left behind",
        started.elapsed().as_secs_f64(),
        sent.load(Ordering::SeqCst)
    );
    assert!(kills >= KILLS, "only {kills} kills within {TIME_BOUND:?}");
}
