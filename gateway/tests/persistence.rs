//! Persistence: a restart gives a byte-identical exposition, a corrupt file is kept
//! aside and never overwritten, and the server restores before it listens and saves
//! on shutdown (over a real socket).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use gateway::codec::text::parse;
use gateway::config::GatewayConfig;
use gateway::exposition::Format;
use gateway::grouping::GroupingKey;
use gateway::model::{Gauge, Metric, MetricFamily, MetricType};
use gateway::persistence::{self, LoadOutcome};
use gateway::server::Gateway;
use gateway::source::NoSource;
use gateway::store::{exposition, Expiry, MetricStore, ReservedNames, Ttl, WriteCommand};

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "dropgate-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).expect("temp dir can be created");
        Self(path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("temp dir is readable")
            .map(|entry| {
                entry
                    .expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn push(store: &MetricStore, put: bool, path: &str, body: &str, at_secs: u64) {
    let key = GroupingKey::from_path(path).expect("valid test path");
    let families = parse(body.as_bytes()).expect("valid test body");
    let command = if put {
        WriteCommand::Put {
            key,
            families,
            ttl: Ttl::Default,
        }
    } else {
        WriteCommand::Post {
            key,
            families,
            ttl: Ttl::Default,
        }
    };
    let now = SystemTime::UNIX_EPOCH + Duration::new(at_secs, 123_456_789);
    let _ = store.apply(command, now);
}

fn filled_store() -> MetricStore {
    let store = MetricStore::new(ReservedNames::default());
    push(
        &store,
        true,
        "job/backup/instance/db1",
        "# HELP done Last success.\n# TYPE done gauge\ndone 1.7e9\n",
        1_700_000_000,
    );
    push(
        &store,
        true,
        "job/backup/instance/db2",
        "# TYPE done gauge\ndone{note=\"a\\\"b\\\\c\\nd\"} NaN\n",
        1_700_000_001,
    );
    push(
        &store,
        true,
        "job@base64/L3Zhcg/path@base64/L3RtcA",
        "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 2\ns_count 3\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n",
        1_700_000_002,
    );
    push(
        &store,
        false,
        "job/backup/instance/db1",
        "# TYPE c counter\nc 42\n",
        1_700_000_003,
    );
    // Rejected (type clash): records a failure time, creates the group with push time 0.
    push(
        &store,
        true,
        "job/other",
        "# TYPE done counter\ndone 1\n",
        1_700_000_004,
    );
    store
}

#[test]
fn round_trip_gives_a_byte_identical_exposition() {
    let dir = TempDir::new("roundtrip");
    let file = dir.file("store");
    let before = filled_store();
    persistence::save(&before, &file).expect("save works");

    let after = MetricStore::new(ReservedNames::default());
    let outcome = persistence::load(&after, &file).expect("load works");
    assert!(
        matches!(
            outcome,
            LoadOutcome::Restored {
                groups: 4,
                skipped: 0
            }
        ),
        "{outcome:?}"
    );
    for format in [Format::Text, Format::DelimitedProtobuf] {
        assert_eq!(
            exposition(
                &after,
                &NoSource,
                format,
                gateway::exposition::Escaping::Values
            ),
            exposition(
                &before,
                &NoSource,
                format,
                gateway::exposition::Escaping::Values
            ),
            "{format:?} exposition is byte-identical after a restart"
        );
    }
    let times = |store: &MetricStore| -> Vec<(String, SystemTime)> {
        store
            .snapshot()
            .iter()
            .flat_map(|group| {
                group.families.iter().map(|family| {
                    (
                        format!("{}{}", group.key, family.name()),
                        family.pushed_at(),
                    )
                })
            })
            .collect()
    };
    assert_eq!(
        times(&after),
        times(&before),
        "push times of every family are kept"
    );
    assert_eq!(dir.entries(), ["store"], "no temporary file is left behind");

    // The restored store goes on checking pushes against what it restored.
    let key = GroupingKey::from_path("job/new").expect("valid path");
    let clash = parse(b"# TYPE done counter\ndone 1\n").expect("valid body");
    assert!(after
        .apply(
            WriteCommand::Put {
                key,
                families: clash,
                ttl: Ttl::Default,
            },
            SystemTime::now()
        )
        .is_err());
}

#[test]
fn a_corrupt_file_is_moved_aside_and_never_overwritten() {
    let good = encode_filled();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let table: [(&str, Vec<u8>, &str); 4] = [
        ("garbage", b"this is not a store".to_vec(), "corrupt"),
        ("checksum mismatch", flipped, "corrupt"),
        ("truncated", good[..good.len() - 7].to_vec(), "corrupt"),
        (
            "newer version",
            [&good[..8], &99u32.to_le_bytes()[..], &good[12..]].concat(),
            "corrupt",
        ),
    ];
    for (name, content, marker) in table {
        let dir = TempDir::new("corrupt");
        let file = dir.file("store");
        std::fs::write(&file, &content).expect("write test file");
        let store = MetricStore::new(ReservedNames::default());
        let outcome = persistence::load(&store, &file).expect("a corrupt file is not fatal");
        let LoadOutcome::MovedAside(aside) = outcome else {
            panic!("{name}: expected the file to be moved aside, got {outcome:?}");
        };
        assert!(
            aside
                .to_string_lossy()
                .contains(&format!("store.{marker}-")),
            "{name}: {aside:?}"
        );
        assert_eq!(
            std::fs::read(&aside).expect("aside file exists"),
            content,
            "{name}: kept as it was"
        );
        assert!(!file.exists(), "{name}: the original name is free");
        assert_eq!(store.group_count(), 0, "{name}: starts empty");

        push(&store, true, "job/fresh", "m 1\n", 1_700_000_000);
        persistence::save(&store, &file).expect("save works");
        assert_eq!(
            std::fs::read(&aside).expect("aside file still exists"),
            content,
            "{name}: never overwritten"
        );
        assert_eq!(
            dir.entries().len(),
            2,
            "{name}: the new file and the kept one"
        );
    }
}

#[test]
fn temp_files_of_dead_writers_are_swept_live_ones_kept() {
    let dir = TempDir::new("sweep");
    let path = dir.file("store");
    persistence::save(&filled_store(), &path).expect("save");
    // A writer killed mid-write (pid 4194304 is above pid_max: never alive) and one that
    // is alive (this process) each left a temp file.
    std::fs::write(dir.file("store.in_progress.4194304"), b"half").expect("write temp");
    let own = format!("store.in_progress.{}", std::process::id());
    std::fs::write(dir.file(&own), b"ours").expect("write temp");
    let store = MetricStore::new(ReservedNames::default());
    assert!(matches!(
        persistence::load(&store, &path).expect("load"),
        LoadOutcome::Restored { .. }
    ));
    assert_eq!(
        dir.entries(),
        vec!["store".to_owned(), own],
        "only the dead writer's file goes"
    );
}

/// Someone who can write to the folder plants a symlink at the temp file's name
/// before a save: the save must neither write through it nor rename it into place.
#[test]
fn a_planted_symlink_at_the_temp_path_is_not_followed() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = TempDir::new("symlink");
    let path = dir.file("store");
    let victim = dir.file("victim");
    std::fs::write(&victim, b"precious").expect("write victim");
    let temp = dir.file(&format!("store.in_progress.{}", std::process::id()));
    for target in [victim.clone(), dir.file("missing")] {
        let _ = std::fs::remove_file(&temp);
        std::os::unix::fs::symlink(&target, &temp).expect("plant the symlink");
        let store = filled_store();
        persistence::save(&store, &path).expect("the save goes through");
        assert!(
            std::fs::read(&victim).expect("victim still there") == b"precious",
            "the symlink's target ({}) was written",
            target.display()
        );
        assert!(
            !dir.file("missing").exists(),
            "a dangling symlink was followed"
        );
        let meta = std::fs::symlink_metadata(&path).expect("the file is there");
        assert!(meta.file_type().is_file(), "the saved file is a symlink");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "only the owner reads it"
        );
        assert_eq!(
            std::fs::read(&path).expect("saved file"),
            persistence::encode(&store.snapshot()),
            "the store is saved"
        );
        assert!(!temp.exists(), "no temp file left");
    }
}

fn encode_filled() -> Vec<u8> {
    persistence::encode(&filled_store().snapshot())
}

#[test]
fn the_format_is_versioned_and_checked() {
    let bytes = encode_filled();
    assert_eq!(&bytes[..8], b"DGSTORE\0");
    assert_eq!(bytes[8..12], persistence::FORMAT_VERSION.to_le_bytes());
    let groups = persistence::decode(&bytes).expect("our own file decodes");
    assert_eq!(groups.len(), 4);
    assert!(matches!(
        persistence::decode(&bytes[..bytes.len() - 1]),
        Err(persistence::FormatError::Checksum { .. })
    ));
    assert!(matches!(
        persistence::decode(b"DGSTORE"),
        Err(persistence::FormatError::BadMagic)
    ));
}

/// A file in the documented format with a valid checksum: one group `{job="hostile"}`
/// whose families are given as (seconds, nanos, family).
fn file_with(families: &[(u64, u32, MetricFamily)]) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&u32::try_from(bytes.len()).expect("small").to_le_bytes());
        out.extend_from_slice(bytes);
    }
    let mut record = Vec::new();
    record.extend_from_slice(&1u32.to_le_bytes());
    put(&mut record, b"job");
    put(&mut record, b"hostile");
    record.extend_from_slice(&u32::try_from(families.len()).expect("few").to_le_bytes());
    for (seconds, nanos, family) in families {
        record.extend_from_slice(&seconds.to_le_bytes());
        record.extend_from_slice(&nanos.to_le_bytes());
        put(&mut record, &family.encode_to_vec());
    }
    let mut out = b"DGSTORE\0".to_vec();
    // A version 1 record (no expiry): files written before expiry must still load.
    out.extend_from_slice(&persistence::FIRST_VERSION.to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes());
    put(&mut out, &record);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn gauge_family(name: &str, value: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name.to_owned()),
        r#type: Some(MetricType::Gauge as i32),
        metric: vec![Metric {
            gauge: Some(Gauge { value: Some(value) }),
            ..Metric::default()
        }],
        ..MetricFamily::default()
    }
}

/// Files that pass the checksum but hold values no gateway writes: each one used to
/// be (or could be) a panic at start, before the quarantine, on every restart.
fn hostile_files() -> Vec<(&'static str, Vec<u8>)> {
    let ok = || gauge_family("m", 1.0);
    let now = 1_700_000_000;
    vec![
        ("time 2^63 s", file_with(&[(1 << 63, 0, ok())])),
        (
            "time u64::MAX s",
            file_with(&[(u64::MAX, 999_999_999, ok())]),
        ),
        ("time after 9999", file_with(&[(253_402_300_800, 0, ok())])),
        (
            "nanos of a whole second",
            file_with(&[(now, 1_000_000_000, ok())]),
        ),
        ("nanos u32::MAX", file_with(&[(now, u32::MAX, ok())])),
        (
            "push time 1e19 s",
            file_with(&[
                (now, 0, ok()),
                (now, 0, gauge_family("push_time_seconds", 1e19)),
            ]),
        ),
        (
            "push time +Inf",
            file_with(&[(now, 0, gauge_family("push_time_seconds", f64::INFINITY))]),
        ),
        (
            "push time NaN",
            file_with(&[(now, 0, gauge_family("push_time_seconds", f64::NAN))]),
        ),
        (
            "failure time negative",
            file_with(&[(now, 0, gauge_family("push_failure_time_seconds", -1.0))]),
        ),
    ]
}

#[test]
fn a_file_with_out_of_range_values_is_quarantined_not_a_panic() {
    for (name, content) in hostile_files() {
        let dir = TempDir::new("hostile");
        let file = dir.file("store");
        std::fs::write(&file, &content).expect("write test file");
        let store = MetricStore::new(ReservedNames::default());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            persistence::load(&store, &file)
        }))
        .unwrap_or_else(|_| panic!("{name}: loading panicked"))
        .expect("a bad file is not fatal");
        let LoadOutcome::MovedAside(aside) = outcome else {
            panic!("{name}: expected the file to be moved aside, got {outcome:?}");
        };
        assert_eq!(
            std::fs::read(&aside).expect("aside file exists"),
            content,
            "{name}: kept as it was"
        );
        assert_eq!(store.group_count(), 0, "{name}: starts empty");
    }
    // The bounds themselves are times a gateway can write.
    let edge = file_with(&[(253_402_300_799, 999_999_999, gauge_family("m", 1.0))]);
    assert!(
        persistence::decode(&edge).is_ok(),
        "9999-12-31T23:59:59.999999999Z is a time"
    );
}

#[tokio::test]
async fn a_hostile_file_does_not_stop_the_server_nor_its_status_page() {
    for (name, content) in hostile_files() {
        let dir = TempDir::new("server-hostile");
        let file = dir.file("store");
        std::fs::write(&file, &content).expect("write test file");
        let gateway = Gateway::bind(config_for(&file), Arc::new(NoSource))
            .await
            .unwrap_or_else(|error| panic!("{name}: does not start: {error}"));
        assert_eq!(gateway.state().store().group_count(), 0, "{name}");
        let address = gateway.local_addr().expect("bound address");
        let running = tokio::spawn(gateway.run(std::future::pending()));
        let (status, _) = http(address, "GET", "/", "").await;
        assert_eq!(status, 200, "{name}: status page");
        let (status, _) = http(address, "PUT", "/-/quit", "").await;
        assert_eq!(status, 200, "{name}");
        running.await.expect("server task").expect("clean shutdown");
        let kept = dir
            .entries()
            .into_iter()
            .filter(|entry| entry.starts_with("store.corrupt-"))
            .count();
        assert_eq!(kept, 1, "{name}: {:?}", dir.entries());
    }
}

async fn http(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.expect("gateway accepts");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request is sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response is read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn config_for(file: &Path) -> GatewayConfig {
    GatewayConfig {
        listen_address: "127.0.0.1:0".parse().expect("loopback address"),
        persistence_file: Some(file.to_path_buf()),
        persistence_interval: Duration::from_hours(1),
        enable_lifecycle: true,
        ..GatewayConfig::default()
    }
}

#[tokio::test]
async fn the_server_saves_on_shutdown_and_restores_before_listening() {
    let dir = TempDir::new("server");
    let file = dir.file("store");

    let gateway = Gateway::bind(config_for(&file), Arc::new(NoSource))
        .await
        .expect("binds");
    let address = gateway.local_addr().expect("bound address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(gateway.run(async move {
        let _ = stopped.await;
    }));
    let (status, _) = http(address, "PUT", "/metrics/job/persisted", "kept 7\n").await;
    assert_eq!(status, 200);
    let (_, first) = http(address, "GET", "/metrics", "").await;
    assert!(!file.exists(), "nothing written before the interval");
    stop.send(()).expect("server is running");
    running.await.expect("server task").expect("clean shutdown");
    assert!(file.exists(), "saved on shutdown");

    let gateway = Gateway::bind(config_for(&file), Arc::new(NoSource))
        .await
        .expect("binds again");
    let address = gateway.local_addr().expect("bound address");
    let running = tokio::spawn(gateway.run(std::future::pending()));
    let (_, second) = http(address, "GET", "/metrics", "").await;
    assert_eq!(
        second, first,
        "ready means restored: the same exposition after restart"
    );
    assert!(second.contains("kept{instance=\"\",job=\"persisted\"} 7\n"));
    // `/-/quit` ends it too, and it saves again.
    std::fs::remove_file(&file).expect("remove to see the next save");
    let (status, _) = http(address, "PUT", "/-/quit", "").await;
    assert_eq!(status, 200);
    running
        .await
        .expect("server task")
        .expect("clean shutdown on quit");
    assert!(file.exists(), "saved on /-/quit");
}

#[tokio::test]
async fn a_corrupt_file_does_not_stop_the_server() {
    let dir = TempDir::new("server-corrupt");
    let file = dir.file("store");
    std::fs::write(&file, b"garbage").expect("write test file");
    let gateway = Gateway::bind(config_for(&file), Arc::new(NoSource))
        .await
        .expect("starts anyway");
    assert_eq!(gateway.state().store().group_count(), 0);
    let kept: Vec<String> = dir
        .entries()
        .into_iter()
        .filter(|name| name.starts_with("store.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "{:?}", dir.entries());
}

#[tokio::test]
async fn writes_wait_for_the_interval_and_happen_on_stop() {
    let dir = TempDir::new("interval");
    let file = dir.file("store");
    let store = Arc::new(MetricStore::new(ReservedNames::default()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(persistence::run(
        Arc::clone(&store),
        file.clone(),
        Duration::from_hours(1),
        Arc::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    push(&store, true, "job/a", "m 1\n", 1_700_000_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !file.exists(),
        "at most once per interval, counted from the start"
    );
    stop.send(()).expect("persister is running");
    task.await
        .expect("persister task")
        .expect("final save works");
    let restored = MetricStore::new(ReservedNames::default());
    persistence::load(&restored, &file).expect("the final save is readable");
    assert_eq!(restored.group_count(), 1);

    let dir = TempDir::new("interval-short");
    let file = dir.file("store");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(persistence::run(
        Arc::clone(&store),
        file.clone(),
        Duration::from_millis(50),
        Arc::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    push(&store, true, "job/b", "m 2\n", 1_700_000_001);
    let mut waited = Duration::ZERO;
    while !file.exists() && waited < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    assert!(
        file.exists(),
        "written once the interval has passed after a change"
    );
    stop.send(()).expect("persister is running");
    task.await
        .expect("persister task")
        .expect("final save works");
}

/// A save that fails (here: a file stands where the folder should be, which fails
/// for root too) is counted and retried with backoff without waiting for another
/// push; once the folder is there the store is saved.
#[tokio::test]
async fn a_failed_save_is_retried_without_a_new_push_and_counted() {
    let dir = TempDir::new("retry");
    let folder = dir.file("state");
    let file = folder.join("store");
    std::fs::write(&folder, b"not a folder").expect("block the folder");
    let store = Arc::new(MetricStore::new(ReservedNames::default()));
    let failures = Arc::new(persistence::SaveFailures::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(persistence::run(
        Arc::clone(&store),
        file.clone(),
        Duration::from_millis(50),
        Arc::clone(&failures),
        async move {
            let _ = stopped.await;
        },
    ));
    push(&store, true, "job/kept", "m 1\n", 1_700_000_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while failures.get() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        failures.get() >= 3,
        "retried without a push: {} failures",
        failures.get()
    );
    std::fs::remove_file(&folder).expect("unblock");
    std::fs::create_dir(&folder).expect("the folder is back");
    while !file.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        file.exists(),
        "saved once the folder was back, with no new push"
    );
    let after = failures.get();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(failures.get(), after, "no more attempts once saved");
    let restored = MetricStore::new(ReservedNames::default());
    persistence::load(&restored, &file).expect("the retried save is readable");
    assert_eq!(restored.group_count(), 1);
    stop.send(()).expect("persister is running");
    task.await
        .expect("persister task")
        .expect("final save works");
}

/// The counter is on the gateway's own `/metrics`, at 0 before any failure.
#[tokio::test]
async fn save_failures_are_exposed_on_metrics() {
    let dir = TempDir::new("failures-metric");
    let folder = dir.file("state");
    let mut config = config_for(&folder.join("store"));
    config.persistence_interval = Duration::from_millis(50);
    let gateway = Gateway::bind(config, Arc::new(NoSource))
        .await
        .expect("binds");
    // Blocked only now: at start, an unreadable file stops the gateway (by design).
    std::fs::write(&folder, b"not a folder").expect("block the folder");
    let address = gateway.local_addr().expect("bound address");
    let failures = Arc::clone(gateway.save_failures());
    let running = tokio::spawn(gateway.run(std::future::pending()));
    let (_, before) = http(address, "GET", "/metrics", "").await;
    assert!(
        before.contains("dropgate_gateway_persistence_failures_total 0\n"),
        "{before}"
    );
    let (status, _) = http(address, "PUT", "/metrics/job/a", "m 1\n").await;
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while failures.get() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, after) = http(address, "GET", "/metrics", "").await;
    let exposed: u64 = after
        .lines()
        .find_map(|line| line.strip_prefix("dropgate_gateway_persistence_failures_total "))
        .and_then(|value| value.parse().ok())
        .expect("the counter is exposed");
    assert!(exposed >= 2, "{after}");
    let (status, _) = http(address, "PUT", "/-/quit", "").await;
    assert_eq!(status, 200);
    let result = running.await.expect("server task");
    assert!(result.is_err(), "the final save fails too, and says so");
}

/// Issue 14: each group's expiry is written and read back (version 2), and a file
/// of version 1 reads as `--push.ttl` after the last push (see `hostile_file`).
#[test]
fn expiry_survives_the_file() {
    let store = MetricStore::new(ReservedNames::default())
        .with_expiry(Duration::from_secs(30), Arc::default());
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    for (path, ttl) in [
        ("job/own", Ttl::After(Duration::from_millis(7_250))),
        ("job/default", Ttl::Default),
        ("job/never", Ttl::Never),
    ] {
        let key = GroupingKey::from_path(path).expect("valid test path");
        let families = parse(b"m 1\n").expect("valid test body");
        store
            .apply(WriteCommand::Put { key, families, ttl }, at)
            .expect("valid push");
    }
    let bytes = persistence::encode(&store.snapshot());
    assert_eq!(bytes[8..12], 2u32.to_le_bytes());
    let decoded = persistence::decode(&bytes).expect("our own file decodes");
    let expiries: Vec<(String, Expiry)> = decoded
        .iter()
        .map(|group| (group.key.to_string(), group.expiry))
        .collect();
    let name = |path: &str| GroupingKey::from_path(path).expect("valid").to_string();
    assert_eq!(
        expiries,
        [
            (name("job/default"), Expiry::Default),
            (name("job/never"), Expiry::Never),
            (
                name("job/own"),
                Expiry::At(at + Duration::from_millis(7_250))
            ),
        ]
    );
}

/// UTF-8 names (`--push.enable-utf8-names`) survive a restart: the group's label from
/// the path and the family's names come back as they were pushed.
#[test]
fn utf8_names_survive_a_restart() {
    use gateway::names::NameRules;
    let dir = TempDir::new("utf8");
    let file = dir.file("store");
    let before = MetricStore::new(ReservedNames::default()).with_names(NameRules::Utf8);
    let key = GroupingKey::from_path_with("job/j/U__zone_2e_name/eu", NameRules::Utf8)
        .expect("valid path");
    let families = gateway::codec::text::parse_limited(
        b"# HELP \"my.metric\" Help.\n# TYPE \"my.metric\" gauge\n{\"my.metric\",\"lbl.x\"=\"v\"} 1\n",
        gateway::codec::limits::PushLimits::UNLIMITED,
        NameRules::Utf8,
    )
    .expect("valid body");
    before
        .apply(
            WriteCommand::Put {
                key,
                families,
                ttl: Ttl::Default,
            },
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .expect("accepted");
    persistence::save(&before, &file).expect("save works");

    let after = MetricStore::new(ReservedNames::default()).with_names(NameRules::Utf8);
    let outcome = persistence::load(&after, &file).expect("load works");
    assert!(
        matches!(
            outcome,
            LoadOutcome::Restored {
                groups: 1,
                skipped: 0
            }
        ),
        "{outcome:?}"
    );
    for format in [Format::Text, Format::DelimitedProtobuf] {
        for escaping in [
            gateway::exposition::Escaping::AllowUtf8,
            gateway::exposition::Escaping::Underscores,
        ] {
            let text = exposition(&after, &NoSource, format, escaping);
            assert_eq!(
                text,
                exposition(&before, &NoSource, format, escaping),
                "{format:?} {escaping:?}"
            );
        }
    }
    let text = String::from_utf8(exposition(
        &after,
        &NoSource,
        Format::Text,
        gateway::exposition::Escaping::AllowUtf8,
    ))
    .expect("UTF-8");
    assert!(
        text.contains(
            "{\"my.metric\",instance=\"\",job=\"j\",\"lbl.x\"=\"v\",\"zone.name\"=\"eu\"} 1\n"
        ),
        "{text}"
    );

    // With the flag off, the group fails the check and is left out, the file kept.
    let legacy = MetricStore::new(ReservedNames::default());
    let outcome = persistence::load(&legacy, &file).expect("load works");
    assert!(
        matches!(outcome, LoadOutcome::Restored { groups: 0, .. }),
        "{outcome:?}"
    );
}
