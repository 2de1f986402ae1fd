//! How one group's family is kept: compact, and ready to be merged into a scrape.
//!
//! A decoded `MetricFamily` costs about 600 bytes per metric (prost's structs hold
//! every field of every metric type inline), so a family is kept as its protobuf
//! encoding (for `/api/v1/metrics`, persistence and the protobuf exposition) plus the
//! text lines of each metric, tagged with the key the exposition sorts by. A scrape
//! then merges a family by sorting those pieces and copying bytes, without decoding or
//! formatting a single float: the rendering happens once, at push time.

use std::cmp::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use prost::Message as _;

use crate::exposition::write_text;
use crate::model::{LabelPair, MetricFamily, MetricType};

/// A family as stored in one group: immutable, shared by `Arc` with readers.
///
/// Everything variable-sized lives in one buffer: the name, the protobuf encoding, each
/// metric's text lines and each metric's sort key, so a stored family costs three
/// allocations (the `Arc`, the buffer, the series table) whatever its content.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFamily {
    /// `name | protobuf | text of metric 0 | key 0 | text of metric 1 | key 1 | ...`
    buffer: Bytes,
    name_end: u32,
    encoded_end: u32,
    kind: MetricType,
    has_help: bool,
    /// Where each metric's text and key end in `buffer` (each starts where the
    /// previous piece ended), with its series hash.
    series: Box<[Series]>,
    pushed_at: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Series {
    text_end: u32,
    key_end: u32,
    /// Hash of the series identity (see `check::series_hash`).
    hash: u64,
}

impl StoredFamily {
    /// Renders and encodes `family`; `hashes` are the series hashes, one per metric.
    pub(crate) fn new(
        mut family: MetricFamily,
        kind: MetricType,
        hashes: &[u64],
        pushed_at: SystemTime,
    ) -> Self {
        let mut buffer = Vec::new();
        buffer.extend_from_slice(family.name.as_deref().unwrap_or_default().as_bytes());
        let name_end = to_u32(buffer.len());
        family.encode(&mut buffer).unwrap_or_default();
        let encoded_end = to_u32(buffer.len());
        let header_lines = 1 + usize::from(family.help.is_some());
        let mut series = Vec::with_capacity(family.metric.len());
        let metrics = std::mem::take(&mut family.metric);
        // Each metric is rendered alone (moved in, not cloned) so that its lines can be
        // cut out; the `# HELP`/`# TYPE` header in front is dropped every time.
        for (i, metric) in metrics.into_iter().enumerate() {
            let key = sort_key(&metric.label);
            family.metric = vec![metric];
            let start = buffer.len();
            write_text(std::slice::from_ref(&family), &mut buffer);
            let lines_start =
                after_lines(&buffer[start..], header_lines).map_or(buffer.len(), |at| start + at);
            buffer.drain(start..lines_start);
            let text_end = to_u32(buffer.len());
            buffer.extend_from_slice(&key);
            series.push(Series {
                text_end,
                key_end: to_u32(buffer.len()),
                hash: hashes.get(i).copied().unwrap_or_default(),
            });
        }
        buffer.shrink_to_fit();
        Self {
            buffer: Bytes::from(buffer),
            name_end,
            encoded_end,
            kind,
            has_help: family.help.is_some(),
            series: series.into_boxed_slice(),
            pushed_at,
        }
    }

    /// The family's name.
    #[must_use]
    pub fn name(&self) -> &str {
        // Written from a `String` in `new`.
        std::str::from_utf8(&self.buffer[..self.name_end as usize]).unwrap_or_default()
    }

    /// The family's type.
    #[must_use]
    pub fn kind(&self) -> MetricType {
        self.kind
    }

    /// When the write that stored it happened (`time_stamp` in `/api/v1/metrics`).
    #[must_use]
    pub fn pushed_at(&self) -> SystemTime {
        self.pushed_at
    }

    /// The family, decoded (grouping labels applied, labels sorted by name).
    #[must_use]
    pub fn family(&self) -> MetricFamily {
        // We encoded it ourselves, so it decodes.
        MetricFamily::decode(self.encoded()).unwrap_or_default()
    }

    /// The family in protobuf, as stored.
    #[must_use]
    pub fn encoded(&self) -> Bytes {
        self.buffer
            .slice(self.name_end as usize..self.encoded_end as usize)
    }

    /// Whether the family has a HELP text.
    pub(crate) fn has_help(&self) -> bool {
        self.has_help
    }

    /// Whether the family has at least one metric.
    pub(crate) fn has_metrics(&self) -> bool {
        !self.series.is_empty()
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

    /// Each metric's sort key and text lines.
    pub(crate) fn pieces(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut start = self.encoded_end as usize;
        self.series.iter().map(move |series| {
            let (text_end, key_end) = (series.text_end as usize, series.key_end as usize);
            let piece = (
                &self.buffer[text_end..key_end],
                &self.buffer[start..text_end],
            );
            start = key_end;
            piece
        })
    }

    /// The series hashes, one per metric.
    pub(crate) fn hashes(&self) -> impl Iterator<Item = u64> + '_ {
        self.series.iter().map(|series| series.hash)
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
