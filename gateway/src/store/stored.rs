//! How one group's family is kept: compact, and ready to be merged into a scrape.
//!
//! A decoded `MetricFamily` costs about 600 bytes per metric (prost's structs hold
//! every field of every metric type inline), so a family is kept as bytes: its name,
//! its HELP and the text lines of each metric, tagged with the key the exposition sorts
//! by. A scrape then merges a family by sorting those pieces and copying bytes, without
//! decoding or formatting a single float: the rendering happens once, at push time.
//!
//! The protobuf form (for `/api/v1/metrics`, persistence and the protobuf exposition)
//! is parsed back from that text when asked for, which is rare next to scrapes. Text
//! carries everything a text push has, and that is checked when the family is stored:
//! one whose text does not parse back to the very same protobuf bytes (exemplars,
//! native histograms, `-0`, ...) keeps its encoding as well. Keeping both for every
//! family made the encoding a third of the store's memory.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message as _;

use super::group_labels::GroupLabels;
use super::round_trip;
use super::{PUSH_FAILURE_TIME_HELP, PUSH_TIME_HELP};
use crate::codec::text;
use crate::exposition::{write_header, write_metric_with};
use crate::model::{LabelPair, MetricFamily, MetricType};
use crate::names::is_legacy_name;

/// A family as stored in one group: immutable and cheap to clone (a reference count),
/// so readers share it with the store.
///
/// Everything lives in one reference-counted allocation: a fixed header, the series
/// table, then the name, the HELP, the protobuf encoding if the text does not give it
/// back, and each metric's text lines and sort key. Small pushes are the common case,
/// and per-allocation overhead dominated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFamily {
    bytes: Arc<[u8]>,
    /// The group's labels, which the series' text and sort keys refer to (shared by
    /// every family of the group).
    group: Arc<GroupLabels>,
}

/// Layout of the fixed header (little-endian).
const KIND: usize = 0;
/// Where the HELP is: [`NO_HELP`], [`OWN_HELP`] or [`KNOWN_HELP`] + an index.
const HELP: usize = 1;
/// Whether the protobuf encoding is stored (1) or parsed back from the text (0).
const HAS_ENCODING: usize = 2;
/// Whether a name of the family (its own or a label's) is not a legacy name (1): the
/// scrape then escapes it as negotiated instead of copying the lines made at push time.
const UTF8_NAMES: usize = 3;
const NAME_END: usize = 4;
const HELP_END: usize = 8;
const ENCODED_END: usize = 12;
const SERIES_COUNT: usize = 16;
const PUSHED_NANOS: usize = 20;
const PUSHED_SECS: usize = 24;
const HEADER_LEN: usize = 32;
/// One series table entry: text end (u32), key end (u32), series hash (u64); ends are
/// offsets from the start of the pieces (after the encoding).
const SERIES_LEN: usize = 16;

const NO_HELP: u8 = 0;
/// The HELP follows the name in the body.
const OWN_HELP: u8 = 1;
/// HELP texts every group repeats (the push gauges'), kept once for all.
const KNOWN_HELP: u8 = 2;
const KNOWN_HELPS: [&str; 2] = [PUSH_TIME_HELP, PUSH_FAILURE_TIME_HELP];
/// The protobuf field numbers of `MetricFamily.metric` and `MetricFamily.unit`.
pub(crate) const METRIC_FIELD: u32 = 4;
const UNIT_FIELD: u32 = 5;

impl StoredFamily {
    /// Renders `family`; `hashes` are the series hashes, one per metric.
    ///
    /// The family's metrics are taken out of `family` (see `text_only`).
    pub(crate) fn new(
        family: &mut MetricFamily,
        kind: MetricType,
        hashes: &[u64],
        pushed_at: SystemTime,
        group: &Arc<GroupLabels>,
    ) -> Self {
        let candidate = Self::text_only(family, kind, hashes, pushed_at, group);
        Self::verified(vec![candidate])
            .pop()
            .unwrap_or_else(|| unreachable!("one family verified, one given back"))
    }

    /// [`new`](Self::new) for each of the families of one push, their texts checked
    /// together in batches (`round_trip`): a parse per family was a third of a push's
    /// time, and a parse of the whole push held ten times its text at once.
    ///
    /// Each family's metrics are dropped as soon as they are rendered (the caller is
    /// done with them), so that a push's decoded structs and the parse of its rendering
    /// are never held at the same time.
    pub(crate) fn new_all<'a>(
        families: impl Iterator<Item = (&'a mut MetricFamily, MetricType, &'a [u64])>,
        pushed_at: SystemTime,
        group: &Arc<GroupLabels>,
    ) -> Vec<Self> {
        let candidates: Vec<(Self, Vec<u8>)> = families
            .map(|(family, kind, hashes)| Self::text_only(family, kind, hashes, pushed_at, group))
            .collect();
        Self::verified(candidates)
    }

    /// The candidates, each keeping its encoding unless its text gives it back.
    fn verified(candidates: Vec<(Self, Vec<u8>)>) -> Vec<Self> {
        let given_back = round_trip::given_back(&candidates);
        candidates
            .into_iter()
            .zip(given_back)
            .map(|((stored, encoded), given_back)| {
                if given_back {
                    stored
                } else {
                    stored.with_encoding(&encoded)
                }
            })
            .collect()
    }

    /// The family without its encoding, and the encoding.
    ///
    /// The family's metrics are taken out as they are rendered: each is freed once its
    /// lines and its part of the encoding are written, so a push's decoded structs
    /// shrink while its rendering grows instead of both being held whole.
    fn text_only(
        family: &mut MetricFamily,
        kind: MetricType,
        hashes: &[u64],
        pushed_at: SystemTime,
        group: &Arc<GroupLabels>,
    ) -> (Self, Vec<u8>) {
        let name = family.name.clone().unwrap_or_default();
        let name = name.as_str();
        let mut head = name.as_bytes().to_vec();
        let name_end = head.len();
        let help = family.help.as_deref().map_or(NO_HELP, |help| {
            if let Some(at) = KNOWN_HELPS.iter().position(|known| *known == help) {
                return KNOWN_HELP + u8::try_from(at).unwrap_or_default();
            }
            head.extend_from_slice(help.as_bytes());
            OWN_HELP
        });
        let metrics = std::mem::take(&mut family.metric);
        let unit = family.unit.take();
        // The encoding in field order: name, help and type, each metric, the unit.
        let mut encoded = family.encode_to_vec();
        let mut pieces = Vec::new();
        let mut table = Vec::with_capacity(metrics.len() * SERIES_LEN);
        let reference = |pair: &LabelPair, out: &mut Vec<u8>| group.write_reference(pair, out);
        let mut utf8_names = !is_legacy_name(name);
        for (i, metric) in metrics.into_iter().enumerate() {
            utf8_names = utf8_names
                || metric
                    .label
                    .iter()
                    .any(|label| !is_legacy_name(label.name.as_deref().unwrap_or_default()));
            write_metric_with(name, kind, &metric, &mut pieces, &reference);
            table.extend_from_slice(&to_u32(pieces.len()).to_le_bytes());
            write_sort_key(&metric.label, group, &mut pieces);
            table.extend_from_slice(&to_u32(pieces.len()).to_le_bytes());
            table.extend_from_slice(&hashes.get(i).copied().unwrap_or_default().to_le_bytes());
            prost::encoding::message::encode(METRIC_FIELD, &metric, &mut encoded);
        }
        if let Some(unit) = &unit {
            prost::encoding::string::encode(UNIT_FIELD, unit, &mut encoded);
        }
        family.unit = unit;
        let since = pushed_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut header = [0u8; HEADER_LEN];
        header[KIND] = u8::try_from(kind as i32).unwrap_or_default();
        header[HELP] = help;
        header[UTF8_NAMES] = u8::from(utf8_names);
        header[NAME_END..NAME_END + 4].copy_from_slice(&to_u32(name_end).to_le_bytes());
        header[HELP_END..HELP_END + 4].copy_from_slice(&to_u32(head.len()).to_le_bytes());
        header[SERIES_COUNT..SERIES_COUNT + 4]
            .copy_from_slice(&to_u32(table.len() / SERIES_LEN).to_le_bytes());
        header[PUSHED_SECS..PUSHED_SECS + 8].copy_from_slice(&since.as_secs().to_le_bytes());
        header[PUSHED_NANOS..PUSHED_NANOS + 4].copy_from_slice(&since.subsec_nanos().to_le_bytes());

        (
            Self::assemble(header, &table, &head, &[], &pieces, group),
            encoded,
        )
    }

    /// This text-only family with `encoded` kept.
    fn with_encoding(self, encoded: &[u8]) -> Self {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.bytes[..HEADER_LEN]);
        let table_end = HEADER_LEN + self.series_count() * SERIES_LEN;
        let head_end = table_end + self.u32_at(HELP_END) as usize;
        Self::assemble(
            header,
            &self.bytes[HEADER_LEN..table_end],
            &self.bytes[table_end..head_end],
            encoded,
            &self.bytes[head_end..],
            &self.group,
        )
    }

    /// One allocation of `header`, `table`, name and HELP, `encoded` (may be empty: not
    /// stored) and `pieces`.
    fn assemble(
        mut header: [u8; HEADER_LEN],
        table: &[u8],
        head: &[u8],
        encoded: &[u8],
        pieces: &[u8],
        group: &Arc<GroupLabels>,
    ) -> Self {
        header[HAS_ENCODING] = u8::from(!encoded.is_empty());
        header[ENCODED_END..ENCODED_END + 4]
            .copy_from_slice(&to_u32(head.len() + encoded.len()).to_le_bytes());
        Self {
            bytes: [&header[..], table, head, encoded, pieces].concat().into(),
            group: Arc::clone(group),
        }
    }

    fn u32_at(&self, at: usize) -> u32 {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(&self.bytes[at..at + 4]);
        u32::from_le_bytes(bytes)
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&self.bytes[at..at + 8]);
        u64::from_le_bytes(bytes)
    }

    pub(crate) fn series_count(&self) -> usize {
        self.u32_at(SERIES_COUNT) as usize
    }

    /// The body: name, HELP, encoding, pieces.
    fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN + self.series_count() * SERIES_LEN..]
    }

    /// The family's name.
    #[must_use]
    pub fn name(&self) -> &str {
        // Written from a `String` in `new`.
        std::str::from_utf8(&self.body()[..self.u32_at(NAME_END) as usize]).unwrap_or_default()
    }

    /// The family's HELP text.
    fn help(&self) -> Option<&str> {
        match self.bytes[HELP] {
            NO_HELP => None,
            OWN_HELP => {
                let help =
                    &self.body()[self.u32_at(NAME_END) as usize..self.u32_at(HELP_END) as usize];
                // Written from a `String` in `new`.
                Some(std::str::from_utf8(help).unwrap_or_default())
            }
            known => KNOWN_HELPS.get(usize::from(known - KNOWN_HELP)).copied(),
        }
    }

    /// The family's type.
    #[must_use]
    pub fn kind(&self) -> MetricType {
        MetricType::try_from(i32::from(self.bytes[KIND])).unwrap_or(MetricType::Untyped)
    }

    /// When the write that stored it happened (`time_stamp` in `/api/v1/metrics`).
    #[must_use]
    pub fn pushed_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(self.u64_at(PUSHED_SECS), self.u32_at(PUSHED_NANOS))
    }

    /// The family, decoded (grouping labels applied, labels sorted by name).
    #[must_use]
    pub fn family(&self) -> MetricFamily {
        // Either was checked to decode when the family was stored.
        match self.stored_encoding() {
            Some(encoded) => MetricFamily::decode(encoded).unwrap_or_default(),
            None => self.parsed_back().unwrap_or_default(),
        }
    }

    /// The family in protobuf, exactly as it was when stored.
    #[must_use]
    pub fn encoded(&self) -> Cow<'_, [u8]> {
        match self.stored_encoding() {
            Some(encoded) => Cow::Borrowed(encoded),
            None => Cow::Owned(self.family().encode_to_vec()),
        }
    }

    fn stored_encoding(&self) -> Option<&[u8]> {
        (self.bytes[HAS_ENCODING] != 0).then(|| {
            &self.body()[self.u32_at(HELP_END) as usize..self.u32_at(ENCODED_END) as usize]
        })
    }

    /// The family parsed back from its text.
    fn parsed_back(&self) -> Option<MetricFamily> {
        let mut text = Vec::new();
        self.write_text(&mut text);
        let mut families = text::parse(&text).ok()?;
        let family = families.pop()?;
        families.is_empty().then_some(family)
    }

    /// Bytes the family's own allocation takes (the group's labels are shared).
    #[cfg(test)]
    pub(crate) fn stored_len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether two handles share the same stored family (not just equal content).
    #[must_use]
    pub fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.bytes, &other.bytes)
    }

    /// Whether the family has a HELP text.
    pub(crate) fn has_help(&self) -> bool {
        self.bytes[HELP] != NO_HELP
    }

    /// Whether a name of the family (its own, a label's) is not a legacy name.
    pub(crate) fn has_utf8_names(&self) -> bool {
        self.bytes[UTF8_NAMES] != 0
    }

    /// Whether the family has at least one metric.
    pub(crate) fn has_metrics(&self) -> bool {
        self.series_count() > 0
    }

    /// The family's text: the header and every metric's lines, in stored order.
    fn write_text(&self, out: &mut Vec<u8>) {
        write_header(self.name(), self.help(), self.kind(), out);
        for (_, lines) in self.pieces() {
            self.group.expand_text(lines, out);
        }
    }

    /// The labels of the group, which [`pieces`](Self::pieces) refer to.
    pub(crate) fn group(&self) -> &GroupLabels {
        &self.group
    }

    /// The `# HELP`/`# TYPE` lines of the family.
    pub(crate) fn header(&self) -> Vec<u8> {
        let mut text = Vec::new();
        self.write_header(&mut text);
        text
    }

    /// Appends the `# HELP`/`# TYPE` lines of the family.
    pub(crate) fn write_header(&self, out: &mut Vec<u8>) {
        write_header(self.name(), self.help(), self.kind(), out);
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

    /// Each metric's sort key and text lines, with references to the group's labels
    /// (expand them with [`group`](Self::group)).
    pub(crate) fn pieces(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let pieces = &self.body()[self.u32_at(ENCODED_END) as usize..];
        let mut start = 0;
        self.series().map(move |(text_end, key_end, _)| {
            let piece = (&pieces[text_end..key_end], &pieces[start..text_end]);
            start = key_end;
            piece
        })
    }

    /// The series hashes, one per metric.
    pub(crate) fn hashes(&self) -> impl Iterator<Item = u64> + '_ {
        self.series().map(|(_, _, hash)| hash)
    }
}

/// A byte string that sorts like `client_golang` sorts metrics in a family: by number
/// of labels, then by label values in order (the labels are sorted by name).
///
/// Every series keeps one, so it is kept short. The count comes first: one byte below
/// 255, else `FF` and the count big-endian. Each value follows, ended by `00`, with
/// the bytes `00` and `01` written as `01 01` and `01 02`: no value byte is then `00`,
/// so byte order stays Go's string order.
///
/// The values of the group's labels are written as references to `group`.
fn write_sort_key(labels: &[LabelPair], group: &GroupLabels, key: &mut Vec<u8>) {
    match u8::try_from(labels.len()) {
        Ok(count) if count < u8::MAX => key.push(count),
        _ => {
            key.push(u8::MAX);
            key.extend_from_slice(&to_u32(labels.len()).to_be_bytes());
        }
    }
    for pair in labels {
        if !group.write_reference(pair, key) {
            write_key_value(pair.value.as_deref().unwrap_or_default(), key);
        }
        key.push(0);
    }
}

/// One label value in a sort key, escaped (see [`write_sort_key`]).
pub(crate) fn write_key_value(value: &str, key: &mut Vec<u8>) {
    for &byte in value.as_bytes() {
        match byte {
            0 | 1 => key.extend_from_slice(&[1, byte + 1]),
            _ => key.push(byte),
        }
    }
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
    use crate::model::{Counter, Exemplar, Gauge, Histogram, Metric, Timestamp};

    fn key(values: &[&str]) -> Vec<u8> {
        let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        key_of(&values)
    }

    fn key_of(values: &[String]) -> Vec<u8> {
        let labels: Vec<LabelPair> = values
            .iter()
            .enumerate()
            .map(|(i, v)| LabelPair::new(format!("l{i}"), v.as_str()))
            .collect();
        let mut key = Vec::new();
        write_sort_key(&labels, &GroupLabels::default(), &mut key);
        key
    }

    #[test]
    fn sort_keys_order_like_client_golang() {
        let ordered = [
            key(&["z"]),
            key(&["", "b"]),
            key(&["a", ""]),
            key(&["a", "b"]),
            key(&["a", "b\0"]),
            key(&["a", "b\0\0"]),
            key(&["a", "b\0\u{1}"]),
            key(&["a", "b\0x"]),
            key(&["a", "b\u{1}"]),
            key(&["a", "b\u{1}\0"]),
            key(&["a", "b\u{1}\u{2}"]),
            key(&["a", "b\u{2}"]),
            key(&["a", "ba"]),
            key(&["a\0", "a"]),
            key(&["a\u{1}", ""]),
            key(&["a\u{2}", ""]),
            key(&["a", "b", "c"]),
            key(&[""; 254]),
            key(&["z"; 254]),
            key(&[""; 255]),
            key(&["z"; 255]),
            key(&[""; 256]),
            key(&vec![""; 65_536]),
        ];
        for pair in ordered.windows(2) {
            assert_eq!(compare_keys(&pair[0], &pair[1]), Ordering::Less, "{pair:?}");
        }
    }

    /// Byte order of the keys is Go's order of the values, exhaustively over short
    /// values made of the bytes that are escaped and their neighbours.
    #[test]
    fn sort_keys_order_like_go_strings() {
        let alphabet = ["\0", "\u{1}", "\u{2}", "a"];
        let mut values = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = values
                .iter()
                .flat_map(|v| alphabet.iter().map(move |c| format!("{v}{c}")))
                .collect();
            values.extend(longer);
        }
        values.sort();
        values.dedup();
        for a in &values {
            for b in &values {
                for (x, y) in [
                    (vec![a.clone()], vec![b.clone()]),
                    (
                        vec!["x".to_owned(), a.clone(), "y".to_owned()],
                        vec!["x".to_owned(), b.clone(), "a".to_owned()],
                    ),
                ] {
                    let go = x.cmp(&y);
                    assert_eq!(compare_keys(&key_of(&x), &key_of(&y)), go, "{x:?} {y:?}");
                }
            }
        }
    }

    /// A group whose `job` label some test families have: references are exercised.
    fn group() -> Arc<GroupLabels> {
        let key = crate::grouping::GroupingKey::from_path("job/j").expect("valid key");
        Arc::new(GroupLabels::of(&key))
    }

    fn parsed(text: &str) -> MetricFamily {
        let mut families = text::parse(text.as_bytes()).expect("valid test text");
        assert_eq!(families.len(), 1, "one family in {text:?}");
        families.pop().expect("one family")
    }

    fn stored(family: &MetricFamily) -> StoredFamily {
        let mut family = family.clone();
        let family = &mut family;
        let kind = match family.r#type.map(MetricType::try_from) {
            None => MetricType::Counter,
            Some(kind) => kind.expect("a known type"),
        };
        let hashes: Vec<u64> = (0..family.metric.len() as u64).collect();
        StoredFamily::new(family, kind, &hashes, SystemTime::UNIX_EPOCH, &group())
    }

    /// Whatever is left out of the stored bytes, the protobuf given back (persistence,
    /// `/api/v1/metrics`, protobuf scrapes) is the one stored, byte for byte; text
    /// pushes keep no encoding.
    #[test]
    fn protobuf_comes_back_byte_for_byte() {
        let text_pushes = [
            (
                "gauge with help and escapes",
                "# HELP g a \\\\ b\\n \"q\"\n# TYPE g gauge\ng{a=\"x\\\"y\\\\z\\nw\",job=\"j\"} 1.5\n",
            ),
            ("counter without help", "# TYPE c counter\nc 2\nc{x=\"\"} 1e-05\n"),
            ("untyped", "u{i=\"1\"} 7\n"),
            ("empty help", "# HELP e \ne 1\n"),
            ("NaN as Go parses it", "n NaN\n"),
            (
                "summary",
                "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns{quantile=\"0.99\"} 2\ns_sum 3.5\ns_count 4\n",
            ),
            (
                "histogram",
                "# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.25\nh_count 2\n",
            ),
        ];
        let push_gauge = MetricFamily {
            help: Some(super::super::PUSH_TIME_HELP.to_owned()),
            ..gauge(1_700_000_000.123_456_7)
        };
        let summary_count = MetricFamily {
            name: Some("s_count".to_owned()),
            ..gauge(1.0)
        };
        let cases: Vec<(&str, MetricFamily, bool)> = text_pushes
            .iter()
            .map(|(case, text)| (*case, parsed(text), true))
            .chain([("push gauge", push_gauge, true)])
            .chain([(
                "a gauge named like the summary's count",
                summary_count,
                true,
            )])
            .chain(
                protobuf_only()
                    .into_iter()
                    .map(|(case, f)| (case, f, false)),
            )
            .collect();
        let check = |case: &str, stored: &StoredFamily, family: &MetricFamily, text_only| {
            let expected = family.encode_to_vec();
            assert_eq!(&*stored.encoded(), expected.as_slice(), "case {case}");
            assert_eq!(stored.family().encode_to_vec(), expected, "case {case}");
            assert_eq!(stored.stored_encoding().is_none(), text_only, "case {case}");
        };
        for (case, family, text_only) in &cases {
            check(case, &stored(family), family, *text_only);
        }
        // All in one push: the joint check must come to the same verdicts.
        let hashes: Vec<Vec<u64>> = cases
            .iter()
            .map(|(_, family, _)| (0..family.metric.len() as u64).collect())
            .collect();
        let mut families: Vec<MetricFamily> =
            cases.iter().map(|(_, family, _)| family.clone()).collect();
        let all = StoredFamily::new_all(
            families.iter_mut().zip(&hashes).map(|(family, hashes)| {
                let kind =
                    MetricType::try_from(family.r#type.unwrap_or_default()).expect("a known type");
                (family, kind, hashes.as_slice())
            }),
            SystemTime::UNIX_EPOCH,
            &group(),
        );
        for ((case, family, text_only), stored) in cases.iter().zip(&all) {
            check(case, stored, family, *text_only);
        }
        // And a push of text families only is checked by the joint parse alone.
        let mut gauges: Vec<MetricFamily> = (0..3)
            .map(|i| MetricFamily {
                name: Some(format!("g{i}")),
                ..gauge(f64::from(i))
            })
            .collect();
        let all = StoredFamily::new_all(
            gauges
                .iter_mut()
                .map(|f| (f, MetricType::Gauge, [0].as_slice())),
            SystemTime::UNIX_EPOCH,
            &group(),
        );
        assert!(all.iter().all(|stored| stored.stored_encoding().is_none()));
    }

    fn gauge(value: f64) -> MetricFamily {
        MetricFamily {
            name: Some("g".to_owned()),
            help: None,
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![Metric {
                label: vec![LabelPair::new("job", "j")],
                gauge: Some(Gauge { value: Some(value) }),
                ..Metric::default()
            }],
            unit: None,
        }
    }

    /// Families that the text format cannot carry exactly.
    fn protobuf_only() -> Vec<(&'static str, MetricFamily)> {
        let exemplar = Exemplar {
            label: vec![LabelPair::new("trace_id", "abc")],
            value: Some(1.0),
            timestamp: Some(Timestamp {
                seconds: Some(1),
                nanos: Some(2),
            }),
        };
        let counter = |exemplar: Option<Exemplar>| Metric {
            counter: Some(Counter {
                value: Some(3.0),
                exemplar: exemplar.map(Box::new),
                created_timestamp: None,
            }),
            ..Metric::default()
        };
        let native = Histogram {
            sample_count: Some(2),
            sample_sum: Some(1.5),
            schema: Some(3),
            zero_threshold: Some(1e-128),
            positive_delta: vec![1, 1],
            ..Histogram::default()
        };
        let histogram = |kind: MetricType, histogram: Histogram| MetricFamily {
            r#type: Some(kind as i32),
            metric: vec![Metric {
                histogram: Some(Box::new(histogram)),
                ..Metric::default()
            }],
            ..gauge(0.0)
        };
        vec![
            ("Rust's NaN", gauge(f64::NAN)),
            ("negative zero", gauge(-0.0)),
            (
                "exemplar",
                MetricFamily {
                    r#type: Some(MetricType::Counter as i32),
                    metric: vec![counter(Some(exemplar))],
                    ..gauge(0.0)
                },
            ),
            ("native histogram", histogram(MetricType::Histogram, native)),
            (
                "gauge histogram",
                histogram(MetricType::GaugeHistogram, Histogram::default()),
            ),
            (
                "unit",
                MetricFamily {
                    unit: Some("seconds".to_owned()),
                    ..gauge(1.0)
                },
            ),
            (
                "no type",
                MetricFamily {
                    r#type: None,
                    metric: vec![counter(None)],
                    ..gauge(0.0)
                },
            ),
            (
                "no metrics",
                MetricFamily {
                    metric: Vec::new(),
                    ..gauge(0.0)
                },
            ),
        ]
    }

    /// A family larger than one round-trip batch is checked over several: one metric
    /// that text cannot carry, wherever it is, keeps the encoding; none keeps none.
    #[test]
    fn round_trip_spans_batches() {
        let many = |odd_at: Option<usize>| {
            let metric = (0..20_000)
                .map(|i| Metric {
                    label: vec![
                        LabelPair::new("i", i.to_string()),
                        LabelPair::new("job", "j"),
                    ],
                    gauge: Some(Gauge {
                        value: Some(if Some(i) == odd_at { -0.0 } else { 1.0 }),
                    }),
                    ..Metric::default()
                })
                .collect();
            MetricFamily {
                metric,
                ..gauge(0.0)
            }
        };
        for (case, odd_at, text_only) in [
            ("all given back", None, true),
            ("first metric not", Some(0), false),
            ("a metric in the middle not", Some(9_999), false),
            ("last metric not", Some(19_999), false),
        ] {
            let family = many(odd_at);
            let expected = family.encode_to_vec();
            let mut families = [family, many(None)];
            let all = StoredFamily::new_all(
                families.iter_mut().enumerate().map(|(i, f)| {
                    f.name = Some(format!("g{i}"));
                    (f, MetricType::Gauge, [0].as_slice())
                }),
                SystemTime::UNIX_EPOCH,
                &group(),
            );
            assert_eq!(all[0].stored_encoding().is_none(), text_only, "case {case}");
            assert!(
                all[1].stored_encoding().is_none(),
                "case {case}: the next family"
            );
            let mut renamed = MetricFamily::decode(expected.as_slice()).expect("encoded above");
            renamed.name = Some("g0".to_owned());
            assert_eq!(
                all[0].encoded().as_ref(),
                renamed.encode_to_vec(),
                "case {case}"
            );
        }
    }

    /// The pieces and header are what the text exposition of the family writes.
    #[test]
    fn text_is_the_exposition() {
        let family = parsed("# HELP g Some help.\n# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"2\"} 2.5\n");
        let stored = stored(&family);
        let mut text = stored.header();
        for (_, lines) in stored.pieces() {
            text.extend_from_slice(lines);
        }
        let mut expected = Vec::new();
        crate::exposition::write_text(std::slice::from_ref(&family), &mut expected);
        assert_eq!(
            String::from_utf8_lossy(&text),
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(stored.name(), "g");
        assert!(stored.has_help());
    }
}
