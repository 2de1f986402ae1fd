//! Saving the store to `--persistence.file` and restoring it at start.
//!
//! Our own versioned format, all integers little-endian:
//!
//! ```text
//! "DGSTORE\0"  u32 version (2)  u64 group count
//! per group:   u32 record length, then the record:
//!              u32 label count, per label: u32 len + name, u32 len + value
//!              u32 family count, per family: u64 seconds + u32 nanos since 1970 (when it was
//!              stored), u32 len + the io.prometheus.client.MetricFamily protobuf
//!              (version 2) u8 expiry: 0 `--push.ttl` after the last push, 1 at the time
//!              that follows (u64 seconds + u32 nanos since 1970), 2 never
//! u32 CRC-32 (IEEE) of every byte before it
//! ```
//!
//! Version 1 files (before group expiry) are read as well, every group's expiry being
//! `--push.ttl` after its last push.
//!
//! Writes go to a temporary file in the same directory (created exclusively, mode
//! 0600, never through a symlink), which is synced, renamed over
//! the target, and the directory synced, so a crash leaves the old or the new file,
//! never a mix. A file that cannot be read or decoded is renamed aside to
//! `<file>.corrupt-<unix time>` and never overwritten (fix 4 of the spec); if even the
//! rename fails, the gateway refuses to start rather than overwrite it later.

use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message as _;
use tokio::time::Instant;

use crate::grouping::GroupingKey;
use crate::model::{Counter, Metric, MetricFamily, MetricType};
use crate::store::{Expiry, GroupSnapshot, MetricStore, RestoredGroup};

const MAGIC: &[u8; 8] = b"DGSTORE\0";
/// The format version this code writes (it reads this and [`FIRST_VERSION`]).
pub const FORMAT_VERSION: u32 = 2;
/// The first format version, without group expiry.
pub const FIRST_VERSION: u32 = 1;

const EXPIRY_DEFAULT: u8 = 0;
const EXPIRY_AT: u8 = 1;
const EXPIRY_NEVER: u8 = 2;

/// Why the file could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The file does not start with dropgate's magic bytes.
    #[error("not a dropgate persistence file (wrong magic bytes)")]
    BadMagic,
    /// The file was written by a newer (or unknown) format version.
    #[error("format version {0} is not supported (this dropgate reads versions {FIRST_VERSION} to {FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    /// The file ends early.
    #[error("file is truncated at byte {0}")]
    Truncated(usize),
    /// The checksum does not match the content.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// The CRC in the file.
        stored: u32,
        /// The CRC of the content.
        computed: u32,
    },
    /// A record is malformed.
    #[error("invalid record at byte {offset}: {reason}")]
    InvalidRecord {
        /// Offset of the record.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// A persistence failure, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum PersistenceError {
    /// Writing the file failed; the previous file, if any, is untouched.
    #[error("could not write the persistence file {path}: {source}; check that its directory exists, is writable and has free space")]
    Write {
        /// The persistence file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A corrupt or unreadable file could not be moved aside, so it would be
    /// overwritten; the gateway does not start.
    #[error("the persistence file {path} is unreadable ({reason}) and could not be moved aside to {aside}: {source}; move or delete it yourself, then start again")]
    Quarantine {
        /// The persistence file.
        path: PathBuf,
        /// Why it was unreadable.
        reason: String,
        /// Where it should have gone.
        aside: PathBuf,
        /// The rename error.
        source: io::Error,
    },
}

/// Name of the family that counts failed saves.
pub const SAVE_FAILURES_TOTAL: &str = "dropgate_gateway_persistence_failures_total";

/// Failed saves of the persistence file since start, exposed as
/// [`SAVE_FAILURES_TOTAL`] on the gateway's own `/metrics` (at 0 from the start, so
/// an alert on its rate works before the first failure).
#[derive(Debug, Default)]
pub struct SaveFailures(AtomicU64);

impl SaveFailures {
    fn count(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Failed saves so far.
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// The family as exposed on `/metrics`.
    #[must_use]
    pub fn family(&self) -> MetricFamily {
        MetricFamily {
            name: Some(SAVE_FAILURES_TOTAL.to_owned()),
            help: Some(
                "Saves of the persistence file that failed (each is retried with backoff)."
                    .to_owned(),
            ),
            r#type: Some(MetricType::Counter as i32),
            metric: vec![Metric {
                #[allow(clippy::cast_precision_loss)] // Exact far beyond any real count.
                counter: Some(Counter {
                    value: Some(self.get() as f64),
                    ..Counter::default()
                }),
                ..Metric::default()
            }],
            unit: None,
        }
    }
}

/// What [`load`] found.
#[derive(Debug)]
pub enum LoadOutcome {
    /// No file yet: an empty store.
    Missing,
    /// The file was restored; `skipped` groups failed today's consistency check.
    Restored {
        /// Groups restored.
        groups: usize,
        /// Groups left out, with the reason (a copy of the file is kept aside).
        skipped: usize,
    },
    /// The file was corrupt or unreadable and now lives at this path.
    MovedAside(PathBuf),
}

/// Encodes groups in the format described in the module documentation.
#[must_use]
pub fn encode(groups: &[GroupSnapshot]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(groups.len() as u64).to_le_bytes());
    let mut record = Vec::new();
    for group in groups {
        record.clear();
        let labels = group.key.labels();
        put_len(&mut record, labels.len());
        for (name, value) in labels {
            put_bytes(&mut record, name.as_bytes());
            put_bytes(&mut record, value.as_bytes());
        }
        put_len(&mut record, group.families.len());
        for stored in &group.families {
            let since = stored
                .pushed_at()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            record.extend_from_slice(&since.as_secs().to_le_bytes());
            record.extend_from_slice(&since.subsec_nanos().to_le_bytes());
            put_bytes(&mut record, &stored.encoded());
        }
        match group.expiry {
            Expiry::Default => record.push(EXPIRY_DEFAULT),
            Expiry::Never => record.push(EXPIRY_NEVER),
            Expiry::At(at) => {
                let since = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                record.push(EXPIRY_AT);
                record.extend_from_slice(&since.as_secs().to_le_bytes());
                record.extend_from_slice(&since.subsec_nanos().to_le_bytes());
            }
        }
        put_bytes(&mut out, &record);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a whole file.
pub fn decode(bytes: &[u8]) -> Result<Vec<RestoredGroup>, FormatError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let mut reader = Reader {
        bytes,
        at: MAGIC.len(),
    };
    let version = reader.u32()?;
    if !(FIRST_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let body_end = bytes
        .len()
        .checked_sub(4)
        .ok_or(FormatError::Truncated(bytes.len()))?;
    let stored_crc = u32::from_le_bytes(
        bytes[body_end..]
            .try_into()
            .map_err(|_| FormatError::Truncated(body_end))?,
    );
    let computed = crc32fast::hash(&bytes[..body_end]);
    if stored_crc != computed {
        return Err(FormatError::Checksum {
            stored: stored_crc,
            computed,
        });
    }
    let mut reader = Reader {
        bytes: &bytes[..body_end],
        at: reader.at,
    };
    let count = reader.u64()?;
    let mut groups = Vec::new();
    for _ in 0..count {
        let offset = reader.at;
        let record = reader.bytes()?;
        groups.push(
            decode_group(record, version)
                .map_err(|reason| FormatError::InvalidRecord { offset, reason })?,
        );
    }
    if reader.at != reader.bytes.len() {
        return Err(FormatError::InvalidRecord {
            offset: reader.at,
            reason: "bytes after the last group".to_owned(),
        });
    }
    Ok(groups)
}

fn decode_group(record: &[u8], version: u32) -> Result<RestoredGroup, String> {
    let mut reader = Reader {
        bytes: record,
        at: 0,
    };
    let text = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec()).map_err(|_| "label is not UTF-8".to_owned())
    };
    let label_count = reader.u32().map_err(|e| e.to_string())?;
    let mut labels = std::collections::BTreeMap::new();
    for _ in 0..label_count {
        let name = text(reader.bytes().map_err(|e| e.to_string())?)?;
        let value = text(reader.bytes().map_err(|e| e.to_string())?)?;
        labels.insert(name, value);
    }
    // Whatever names a store may hold; the store's own rules judge the group again
    // when it is restored (with UTF-8 names off, such a group is left out).
    let key = GroupingKey::from_labels(labels, crate::names::NameRules::Utf8)
        .ok_or("grouping key without job or with an improper label name")?;
    let family_count = reader.u32().map_err(|e| e.to_string())?;
    let mut families = Vec::new();
    for _ in 0..family_count {
        let seconds = reader.u64().map_err(|e| e.to_string())?;
        let nanos = reader.u32().map_err(|e| e.to_string())?;
        let at = stored_time(seconds, nanos)?;
        let family = MetricFamily::decode(reader.bytes().map_err(|e| e.to_string())?)
            .map_err(|e| format!("metric family does not decode: {e}"))?;
        check_push_gauges(&family)?;
        families.push((family, at));
    }
    let expiry = if version == FIRST_VERSION {
        Expiry::Default
    } else {
        match reader.take(1).map_err(|e| e.to_string())?[0] {
            EXPIRY_DEFAULT => Expiry::Default,
            EXPIRY_NEVER => Expiry::Never,
            EXPIRY_AT => {
                let seconds = reader.u64().map_err(|e| e.to_string())?;
                let nanos = reader.u32().map_err(|e| e.to_string())?;
                Expiry::At(stored_time(seconds, nanos)?)
            }
            other => return Err(format!("unknown expiry kind {other}")),
        }
    };
    if reader.at != record.len() {
        return Err("bytes after the group's expiry".to_owned());
    }
    Ok(RestoredGroup {
        key,
        families,
        expiry,
    })
}

/// The latest time a file may hold, 9999-12-31T23:59:59Z: far beyond any clock a
/// gateway writes with, and every time up to it adds to `UNIX_EPOCH`, formats as
/// RFC 3339 and converts to a float without overflow. A later one (2^63 s once
/// panicked at start, before the quarantine) means the file was not written by us.
pub const MAX_UNIX_SECONDS: u64 = 253_402_300_799;

/// A family's stored-at time, range-checked.
fn stored_time(seconds: u64, nanos: u32) -> Result<SystemTime, String> {
    if seconds > MAX_UNIX_SECONDS {
        return Err(format!(
            "time {seconds} s since 1970 is after 9999-12-31 (at most {MAX_UNIX_SECONDS})"
        ));
    }
    if nanos > 999_999_999 {
        return Err(format!(
            "time has {nanos} nanoseconds, a whole second or more"
        ));
    }
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::new(seconds, nanos))
        .ok_or_else(|| format!("time {seconds} s since 1970 does not fit this system's clock"))
}

/// `push_time_seconds` and `push_failure_time_seconds` are the gateway's own: each
/// value must be a time it could have written (finite, 0 to [`MAX_UNIX_SECONDS`]),
/// since the status page and the JSON API read them as times.
fn check_push_gauges(family: &MetricFamily) -> Result<(), String> {
    let name = family.name.as_deref().unwrap_or_default();
    if !matches!(
        name,
        crate::store::PUSH_TIME_NAME | crate::store::PUSH_FAILURE_TIME_NAME
    ) {
        return Ok(());
    }
    #[allow(clippy::cast_precision_loss)] // A bound, not a value to keep.
    let max = MAX_UNIX_SECONDS as f64;
    for metric in &family.metric {
        let value = metric.gauge.as_ref().and_then(|gauge| gauge.value);
        if let Some(value) = value.filter(|v| !(0.0..=max).contains(v)) {
            return Err(format!(
                "{name} is {value}, not a time from 1970 to 9999-12-31"
            ));
        }
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(FormatError::Truncated(self.bytes.len()))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        let mut buf = [0; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(buf))
    }

    fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Records and counts above 4 GiB are not something a push can produce (body limit).
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!("{name}.in_progress.{}", std::process::id()));
    let written = (|| {
        let mut file = create_exclusively(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Creates `temp` as a new file only the owner can read (O_CREAT | O_EXCL |
/// O_NOFOLLOW, 0600): a symlink someone planted at that name is never written
/// through nor renamed into place. Something already there (a file left by an
/// earlier writer with this pid, or a planted link) is unlinked, which never
/// follows a link, and the creation tried once more; if it is back, the save fails.
fn create_exclusively(temp: &Path) -> io::Result<File> {
    let open = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(temp)
    };
    match open() {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let was_link =
                fs::symlink_metadata(temp).is_ok_and(|meta| meta.file_type().is_symlink());
            fs::remove_file(temp)?;
            if was_link {
                tracing::warn!(
                    file = %temp.display(),
                    "a symlink stood at the persistence temp file's name; it was removed, \
                     not followed; check who can write to this folder"
                );
            }
            open()
        }
        other => other,
    }
}

/// Saves the store's current content to `path`.
pub fn save(store: &MetricStore, path: &Path) -> Result<(), PersistenceError> {
    let bytes = encode(&store.snapshot());
    write_atomically(path, &bytes).map_err(|source| PersistenceError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes temp files a writer left when it was killed mid-write
/// (`<file>.in_progress.<pid>` of a process that no longer exists). They were never
/// renamed into place, so they never were the saved state; the file itself is untouched.
fn sweep_dead_writers_temp_files(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.in_progress.", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let alive = pid.parse::<u32>().is_ok_and(|pid| {
            pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
        });
        if !alive && fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed a temp file left by a writer that died mid-write");
        }
    }
}

/// Restores the store from `path`, moving a corrupt or unreadable file aside.
pub fn load(store: &MetricStore, path: &Path) -> Result<LoadOutcome, PersistenceError> {
    sweep_dead_writers_temp_files(path);
    let decoded = match fs::read(path) {
        Ok(bytes) => decode(&bytes).map_err(|error| error.to_string()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(LoadOutcome::Missing),
        Err(error) => Err(format!("read failed: {error}")),
    };
    let groups = match decoded {
        Ok(groups) => groups,
        Err(reason) => {
            let aside = aside_path(path, "corrupt");
            fs::rename(path, &aside).map_err(|source| PersistenceError::Quarantine {
                path: path.to_path_buf(),
                reason: reason.clone(),
                aside: aside.clone(),
                source,
            })?;
            tracing::error!(
                file = %path.display(),
                moved_to = %aside.display(),
                %reason,
                "persistence file is corrupt or unreadable; it was moved aside and kept \
                 there, and the gateway starts with an empty store; inspect or delete it"
            );
            return Ok(LoadOutcome::MovedAside(aside));
        }
    };
    let count = groups.len();
    let skipped = store.restore(groups);
    if !skipped.is_empty() {
        let copy = aside_path(path, "rejected");
        let kept = fs::copy(path, &copy).is_ok();
        for (key, reason) in &skipped {
            tracing::warn!(group = %key, %reason, "restored group left out: it fails the consistency check");
        }
        tracing::warn!(
            file = %path.display(),
            copy = %copy.display(),
            kept,
            "some restored groups were left out; the file as it was is kept in the copy"
        );
    }
    tracing::info!(file = %path.display(), groups = count - skipped.len(), "metrics restored");
    Ok(LoadOutcome::Restored {
        groups: count - skipped.len(),
        skipped: skipped.len(),
    })
}

/// `<file>.<what>-<unix time>`, with `-<n>` added if that exists already.
fn aside_path(path: &Path, what: &str) -> PathBuf {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let base = format!("{}.{what}-{now}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// The first retry after a failed save waits this long (or `interval`, if shorter);
/// each further one twice as long as the one before, up to `interval` (or this, if
/// longer).
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Saves the store whenever it changed, at most once per `interval` (the first time no
/// earlier than `interval` after the call, as upstream), until `stop` resolves; then
/// saves once more, whatever happened, and returns that last result.
///
/// A failed save (disk full, folder gone or read-only) is logged, counted in
/// `failures` and retried with backoff (see [`FIRST_RETRY`]) whether or not anything
/// is pushed meanwhile: the store in memory is newer than the file until one works.
///
/// Changes are watched from the moment of the call, not from the first poll, so a
/// write that lands before the returned future is spawned is not missed.
pub fn run(
    store: Arc<MetricStore>,
    path: PathBuf,
    interval: Duration,
    failures: Arc<SaveFailures>,
    stop: impl Future<Output = ()>,
) -> impl Future<Output = Result<(), PersistenceError>> {
    let mut changes = store.subscribe();
    let started = Instant::now();
    async move {
        let mut last_write = started;
        let mut retry: Option<Duration> = None;
        tokio::pin!(stop);
        loop {
            if let Some(delay) = retry {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut stop => break,
                }
            } else {
                tokio::select! {
                    seen = changes.changed() => if seen.is_err() { break },
                    () = &mut stop => break,
                }
                tokio::select! {
                    () = tokio::time::sleep_until(last_write + interval) => {}
                    () = &mut stop => break,
                }
            }
            changes.borrow_and_update();
            match save_in_background(&store, &path).await {
                Ok(()) => {
                    if retry.take().is_some() {
                        tracing::info!(file = %path.display(), "metrics persisted after failed attempts");
                    } else {
                        tracing::info!(file = %path.display(), "metrics persisted");
                    }
                }
                Err(error) => {
                    let total = failures.count();
                    let delay = next_retry(retry, interval);
                    retry = Some(delay);
                    tracing::error!(
                        %error,
                        retry_in = ?delay,
                        failures_total = total,
                        "error persisting metrics: pushed metrics are kept in memory only \
                         until a save works; it is retried with backoff"
                    );
                }
            }
            last_write = Instant::now();
        }
        let result = save_in_background(&store, &path).await;
        match &result {
            Ok(()) => tracing::info!(file = %path.display(), "metrics persisted on shutdown"),
            Err(_) => {
                failures.count();
            }
        }
        result
    }
}

/// The wait before the next attempt after a failure (`previous`: the last wait, if
/// the last attempt was a retry too).
fn next_retry(previous: Option<Duration>, interval: Duration) -> Duration {
    // Never a busy loop, whatever the interval.
    let floor = Duration::from_millis(10);
    let cap = interval.max(FIRST_RETRY);
    previous
        .map_or(FIRST_RETRY.min(interval), |delay| {
            delay.saturating_mul(2).min(cap)
        })
        .max(floor)
}

async fn save_in_background(store: &Arc<MetricStore>, path: &Path) -> Result<(), PersistenceError> {
    let (store, path) = (Arc::clone(store), path.to_path_buf());
    let task_path = path.clone();
    tokio::task::spawn_blocking(move || save(&store, &task_path))
        .await
        .unwrap_or_else(|join| {
            Err(PersistenceError::Write {
                path,
                source: io::Error::other(join.to_string()),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_the_interval() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let table = [
            ("first, long interval", None, s(300), s(1)),
            ("doubles", Some(s(1)), s(300), s(2)),
            ("capped at the interval", Some(s(256)), s(300), s(300)),
            ("stays capped", Some(s(300)), s(300), s(300)),
            ("first, short interval", None, ms(50), ms(50)),
            (
                "short interval: up to a second",
                Some(ms(800)),
                ms(50),
                s(1),
            ),
            ("zero interval: no busy loop", None, Duration::ZERO, ms(10)),
        ];
        for (name, previous, interval, want) in table {
            assert_eq!(next_retry(previous, interval), want, "case {name}");
        }
    }
}
