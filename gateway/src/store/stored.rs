//! How one group's family is kept: compact, and ready to be merged into a scrape.
//!
//! A decoded `MetricFamily` costs about 600 bytes per metric (prost's structs hold
//! every field of every metric type inline), so a family is kept as its protobuf
//! encoding (for `/api/v1/metrics`, persistence and the protobuf exposition) plus the
//! text lines of each metric, tagged with the key the exposition sorts by. A scrape
//! then merges a family by sorting those pieces and copying bytes, without decoding or
//! formatting a single float: the rendering happens once, at push time.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message as _;

use crate::exposition::write_text;
use crate::model::{LabelPair, MetricFamily, MetricType};

/// A family as stored in one group: immutable and cheap to clone (a reference count),
/// so readers share it with the store.
///
/// Everything lives in one reference-counted allocation: a fixed header, the series
/// table, then the name, the protobuf encoding, and each metric's text lines and sort
/// key. Small pushes are the common case, and per-allocation overhead dominated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFamily(Arc<[u8]>);

/// Layout of the fixed header (little-endian).
const KIND: usize = 0;
const HAS_HELP: usize = 1;
const NAME_END: usize = 4;
const ENCODED_END: usize = 8;
const SERIES_COUNT: usize = 12;
const PUSHED_SECS: usize = 16;
const PUSHED_NANOS: usize = 24;
const HEADER_LEN: usize = 32;
/// One series table entry: text end (u32), key end (u32), series hash (u64); ends are
/// offsets from the start of the body (after the table).
const SERIES_LEN: usize = 16;

impl StoredFamily {
    /// Renders and encodes `family`; `hashes` are the series hashes, one per metric.
    pub(crate) fn new(
        mut family: MetricFamily,
        kind: MetricType,
        hashes: &[u64],
        pushed_at: SystemTime,
    ) -> Self {
        let mut body = Vec::new();
        body.extend_from_slice(family.name.as_deref().unwrap_or_default().as_bytes());
        let name_end = body.len();
        family.encode(&mut body).unwrap_or_default();
        let encoded_end = body.len();
        let header_lines = 1 + usize::from(family.help.is_some());
        let metrics = std::mem::take(&mut family.metric);
        let mut table = Vec::with_capacity(metrics.len() * SERIES_LEN);
        // Each metric is rendered alone (moved in, not cloned) so that its lines can be
        // cut out; the `# HELP`/`# TYPE` header in front is dropped every time.
        for (i, metric) in metrics.into_iter().enumerate() {
            let key = sort_key(&metric.label);
            family.metric = vec![metric];
            let start = body.len();
            write_text(std::slice::from_ref(&family), &mut body);
            let lines_start =
                after_lines(&body[start..], header_lines).map_or(body.len(), |at| start + at);
            body.drain(start..lines_start);
            table.extend_from_slice(&to_u32(body.len()).to_le_bytes());
            body.extend_from_slice(&key);
            table.extend_from_slice(&to_u32(body.len()).to_le_bytes());
            table.extend_from_slice(&hashes.get(i).copied().unwrap_or_default().to_le_bytes());
        }
        let since = pushed_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut header = [0u8; HEADER_LEN];
        header[KIND] = u8::try_from(kind as i32).unwrap_or_default();
        header[HAS_HELP] = u8::from(family.help.is_some());
        header[NAME_END..NAME_END + 4].copy_from_slice(&to_u32(name_end).to_le_bytes());
        header[ENCODED_END..ENCODED_END + 4].copy_from_slice(&to_u32(encoded_end).to_le_bytes());
        header[SERIES_COUNT..SERIES_COUNT + 4]
            .copy_from_slice(&to_u32(table.len() / SERIES_LEN).to_le_bytes());
        header[PUSHED_SECS..PUSHED_SECS + 8].copy_from_slice(&since.as_secs().to_le_bytes());
        header[PUSHED_NANOS..PUSHED_NANOS + 4].copy_from_slice(&since.subsec_nanos().to_le_bytes());
        Self([&header[..], &table, &body].concat().into())
    }

    fn u32_at(&self, at: usize) -> u32 {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(bytes)
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(bytes)
    }

    fn series_count(&self) -> usize {
        self.u32_at(SERIES_COUNT) as usize
    }

    /// The body: name, encoding, pieces.
    fn body(&self) -> &[u8] {
        &self.0[HEADER_LEN + self.series_count() * SERIES_LEN..]
    }

    /// The family's name.
    #[must_use]
    pub fn name(&self) -> &str {
        // Written from a `String` in `new`.
        std::str::from_utf8(&self.body()[..self.u32_at(NAME_END) as usize]).unwrap_or_default()
    }

    /// The family's type.
    #[must_use]
    pub fn kind(&self) -> MetricType {
        MetricType::try_from(i32::from(self.0[KIND])).unwrap_or(MetricType::Untyped)
    }

    /// When the write that stored it happened (`time_stamp` in `/api/v1/metrics`).
    #[must_use]
    pub fn pushed_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(self.u64_at(PUSHED_SECS), self.u32_at(PUSHED_NANOS))
    }

    /// The family, decoded (grouping labels applied, labels sorted by name).
    #[must_use]
    pub fn family(&self) -> MetricFamily {
        // We encoded it ourselves, so it decodes.
        MetricFamily::decode(self.encoded()).unwrap_or_default()
    }

    /// The family in protobuf, as stored.
    #[must_use]
    pub fn encoded(&self) -> &[u8] {
        &self.body()[self.u32_at(NAME_END) as usize..self.u32_at(ENCODED_END) as usize]
    }

    /// Whether two handles share the same stored family (not just equal content).
    #[must_use]
    pub fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Whether the family has a HELP text.
    pub(crate) fn has_help(&self) -> bool {
        self.0[HAS_HELP] != 0
    }

    /// Whether the family has at least one metric.
    pub(crate) fn has_metrics(&self) -> bool {
        self.series_count() > 0
    }

    /// The `# HELP`/`# TYPE` lines of the family (empty if it has no metrics).
    pub(crate) fn header(&self) -> Vec<u8> {
        let mut family = self.family();
        family.metric.truncate(1);
        let mut text = Vec::new();
        write_text(std::slice::from_ref(&family), &mut text);
        let header_lines = 1 + usize::from(family.help.is_some());
        let end = after_lines(&text, header_lines).unwrap_or(text.len());
        text.truncate(end);
        text
    }

    fn series(&self) -> impl Iterator<Item = (usize, usize, u64)> + '_ {
        (0..self.series_count()).map(|i| {
            let at = HEADER_LEN + i * SERIES_LEN;
            (
                self.u32_at(at) as usize,
                self.u32_at(at + 4) as usize,
                self.u64_at(at + 8),
            )
        })
    }

    /// Each metric's sort key and text lines.
    pub(crate) fn pieces(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let body = self.body();
        let mut start = self.u32_at(ENCODED_END) as usize;
        self.series().map(move |(text_end, key_end, _)| {
            let piece = (&body[text_end..key_end], &body[start..text_end]);
            start = key_end;
            piece
        })
    }

    /// The series hashes, one per metric.
    pub(crate) fn hashes(&self) -> impl Iterator<Item = u64> + '_ {
        self.series().map(|(_, _, hash)| hash)
    }
}

/// The offset just after the `lines`-th newline of `text`.
fn after_lines(text: &[u8], lines: usize) -> Option<usize> {
    text.iter()
        .enumerate()
        .filter(|(_, byte)| **byte == b'\n')
        .nth(lines.checked_sub(1)?)
        .map(|(at, _)| at + 1)
}

/// A byte string that sorts like `client_golang` sorts metrics in a family: by number
/// of labels, then by label values in order (the labels are sorted by name). The count
/// comes first, big-endian; each value follows with NUL escaped as `00 FF` and ended by
/// `00 00`, which keeps byte order equal to Go's string order.
fn sort_key(labels: &[LabelPair]) -> Box<[u8]> {
    let mut key = Vec::with_capacity(4 + labels.len() * 12);
    key.extend_from_slice(&to_u32(labels.len()).to_be_bytes());
    for pair in labels {
        for &byte in pair.value.as_deref().unwrap_or_default().as_bytes() {
            key.push(byte);
            if byte == 0 {
                key.push(0xFF);
            }
        }
        key.extend_from_slice(&[0, 0]);
    }
    key.into_boxed_slice()
}

/// Orders two sort keys (plain byte order; a function so the intent has a name).
pub(crate) fn compare_keys(a: &[u8], b: &[u8]) -> Ordering {
    a.cmp(b)
}

fn to_u32(value: usize) -> u32 {
    // Bodies are bounded far below 4 GiB by the body limit.
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(values: &[&str]) -> Box<[u8]> {
        let labels: Vec<LabelPair> = values
            .iter()
            .enumerate()
            .map(|(i, v)| LabelPair::new(format!("l{i}"), *v))
            .collect();
        sort_key(&labels)
    }

    #[test]
    fn sort_keys_order_like_client_golang() {
        let ordered = [
            key(&["z"]),
            key(&["", "b"]),
            key(&["a", ""]),
            key(&["a", "b"]),
            key(&["a", "b\0"]),
            key(&["a", "b\0x"]),
            key(&["a", "b\u{1}"]),
            key(&["a", "ba"]),
            key(&["a\0", "a"]),
            key(&["a", "b", "c"]),
        ];
        for pair in ordered.windows(2) {
            assert_eq!(compare_keys(&pair[0], &pair[1]), Ordering::Less, "{pair:?}");
        }
    }
}
