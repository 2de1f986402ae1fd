//! Varint length-delimited `MetricFamily` streams: the protobuf push body and the
//! protobuf exposition.
//!
//! Each message is preceded by its length as a varint of at most five bytes (protobuf's
//! `writeDelimitedTo`, Go's `pbutil`). Decoding never trusts a length prefix beyond the
//! bytes actually present, so a hostile prefix cannot make us allocate.

use std::collections::HashMap;
use std::mem::size_of;

use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;

use super::limits::{LimitError, PushLimits};
use crate::model::{Bucket, Histogram, LabelPair, Metric, MetricFamily, Summary};

/// Longest varint a length prefix may use (Go's `binary.MaxVarintLen32`).
const MAX_PREFIX_BYTES: usize = 5;

/// What was wrong with a delimited protobuf body.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    /// A length prefix ran over five bytes without ending.
    #[error("invalid varint32 length prefix at byte {offset}: more than 5 bytes")]
    InvalidLength {
        /// Byte offset where the prefix starts.
        offset: usize,
    },
    /// The body ended inside a length prefix.
    #[error("unexpected EOF: the length prefix at byte {offset} is cut off")]
    TruncatedLength {
        /// Byte offset where the prefix starts.
        offset: usize,
    },
    /// A length prefix announced more bytes than the body has left.
    #[error(
        "unexpected EOF: the message at byte {offset} announces {length} bytes \
         but only {available} follow its length prefix"
    )]
    TruncatedMessage {
        /// Byte offset where the message's length prefix starts.
        offset: usize,
        /// The announced message length.
        length: u64,
        /// Bytes left in the body.
        available: usize,
    },
    /// A message is not a valid `io.prometheus.client.MetricFamily`.
    #[error("invalid MetricFamily message at byte {offset}: {source}")]
    InvalidMessage {
        /// Byte offset where the message's length prefix starts.
        offset: usize,
        /// What protobuf decoding found wrong.
        source: prost::DecodeError,
    },
    /// The body goes over a limit of the push (found before decoding the message).
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// Decodes every length-delimited `MetricFamily` in `body`.
///
/// Like the Go pushgateway, which collects the families into a map by name, a family
/// whose name repeats an earlier one replaces it (keeping the earlier position). Unlike
/// it, a body cut off inside a prefix or a message is an error rather than a silent end.
pub fn decode_delimited(body: &[u8]) -> Result<Vec<MetricFamily>, ProtobufError> {
    decode_delimited_limited(body, PushLimits::UNLIMITED)
}

/// [`decode_delimited`] under `limits`: each message's series, labels, label lengths
/// and buckets are counted on its wire bytes before it is decoded, so that a message
/// over a limit is refused without building its structs (an empty `Metric` takes 2
/// bytes on the wire and hundreds once decoded).
pub fn decode_delimited_limited(
    body: &[u8],
    limits: PushLimits,
) -> Result<Vec<MetricFamily>, ProtobufError> {
    let mut families: Vec<MetricFamily> = Vec::new();
    // Position of each name in `families`: a repeated name replaces in constant time.
    let mut positions: HashMap<Option<String>, usize> = HashMap::new();
    let mut counts = Counts::default();
    let mut offset = 0;
    while offset < body.len() {
        let (length, prefix_len) = read_length_prefix(&body[offset..], offset)?;
        let start = offset + prefix_len;
        let available = body.len() - start;
        let end = match usize::try_from(length) {
            Ok(length) if length <= available => start + length,
            _ => {
                return Err(ProtobufError::TruncatedMessage {
                    offset,
                    length,
                    available,
                })
            }
        };
        counts.family(&body[start..end], limits)?;
        limits.check_decoded(counts.decoded, body.len())?;
        let family = MetricFamily::decode(&body[start..end])
            .map_err(|source| ProtobufError::InvalidMessage { offset, source })?;
        if let Some(&at) = positions.get(&family.name) {
            families[at] = family;
        } else {
            positions.insert(family.name.clone(), families.len());
            families.push(family);
        }
        offset = end;
    }
    Ok(families)
}

/// What the messages of one body would decode into, counted on their wire bytes.
#[derive(Default)]
struct Counts {
    families: usize,
    series: usize,
    /// Bytes the decoded structs will take, about (heap blocks are rounded up).
    decoded: usize,
}

/// One field of a message on the wire: its number and what follows its key.
enum Field<'a> {
    /// A length-delimited field's bytes.
    Bytes(u32, &'a [u8]),
    /// Any other field (its number), already skipped.
    Other(u32),
}

/// The fields of a message, in order. Malformed input ends the walk quietly: counting
/// is only a bound, and the decoder that runs next names what is wrong.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        if self.0.is_empty() {
            return None;
        }
        let (tag, wire_type) = decode_key(&mut self.0).ok()?;
        let skip = match wire_type {
            WireType::Varint => {
                decode_varint(&mut self.0).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut self.0).ok()?).ok()?;
                let bytes = self.0.get(..len)?;
                self.0 = &self.0[len..];
                return Some(Field::Bytes(tag, bytes));
            }
            // Groups are not part of these messages; the decoder refuses them.
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        self.0 = self.0.get(skip..)?;
        Some(Field::Other(tag))
    }
}

impl Counts {
    /// Counts one `MetricFamily` message against `limits`.
    fn family(&mut self, message: &[u8], limits: PushLimits) -> Result<(), LimitError> {
        self.families += 1;
        limits.check_series(self.families)?;
        // The family, its name, and the name again as a key of the de-duplication map.
        self.decoded += 2 * size_of::<MetricFamily>() + 2 * message.len().min(64) + 64;
        let name = Fields(message)
            .filter_map(|field| match field {
                Field::Bytes(1, name) => Some(String::from_utf8_lossy(name).into_owned()),
                _ => None,
            })
            .last()
            .unwrap_or_default();
        for field in Fields(message) {
            if let Field::Bytes(4, metric) = field {
                self.series += 1;
                limits.check_series(self.series)?;
                self.decoded += count_metric(&name, metric, limits)?;
            }
        }
        Ok(())
    }
}

/// Counts one `Metric`'s labels and buckets (every `summary` and `histogram` field of
/// it, as repeated occurrences merge into one); returns the bytes it decodes into.
fn count_metric(family: &str, metric: &[u8], limits: PushLimits) -> Result<usize, LimitError> {
    let mut labels = 0;
    let mut buckets = 0;
    let mut decoded = size_of::<Metric>();
    for field in Fields(metric) {
        match field {
            Field::Bytes(1, pair) => {
                labels += 1;
                limits.check_labels(family, labels)?;
                decoded += size_of::<LabelPair>() + pair.len();
                for part in Fields(pair) {
                    match part {
                        Field::Bytes(1, name) => limits.check_label_name(family, name.len())?,
                        Field::Bytes(2, value) => limits.check_label_value(family, value.len())?,
                        _ => {}
                    }
                }
            }
            // Summary: `quantile` (3).
            Field::Bytes(4, summary) => {
                decoded += size_of::<Summary>();
                buckets += Fields(summary)
                    .filter(|field| matches!(field, Field::Bytes(3, _)))
                    .count();
            }
            Field::Bytes(7, histogram) => {
                decoded += size_of::<Histogram>();
                buckets += histogram_entries(histogram);
            }
            _ => {}
        }
        limits.check_buckets(family, buckets)?;
    }
    // Every entry counted as a classic bucket, the largest of them.
    Ok(decoded + buckets * size_of::<Bucket>())
}

/// Entries a `Histogram` decodes into: buckets, spans, deltas, counts and exemplars.
/// Packed scalars count by their bytes (at least one per varint, eight per double).
fn histogram_entries(histogram: &[u8]) -> usize {
    Fields(histogram)
        .map(|field| match field {
            Field::Bytes(10 | 13, packed) => packed.len(),
            Field::Bytes(11 | 14, packed) => packed.len() / 8,
            Field::Bytes(3 | 9 | 12 | 16, _) | Field::Other(10 | 11 | 13 | 14) => 1,
            _ => 0,
        })
        .sum()
}

/// Reads the varint at the start of `bytes`; returns its value and encoded length.
fn read_length_prefix(bytes: &[u8], offset: usize) -> Result<(u64, usize), ProtobufError> {
    let mut value = 0_u64;
    for (i, byte) in bytes.iter().take(MAX_PREFIX_BYTES).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if bytes.len() < MAX_PREFIX_BYTES {
        Err(ProtobufError::TruncatedLength { offset })
    } else {
        Err(ProtobufError::InvalidLength { offset })
    }
}

/// Appends `families` to `out` as length-delimited messages.
pub fn encode_delimited(families: &[MetricFamily], out: &mut Vec<u8>) {
    for family in families {
        let length = family.encoded_len();
        out.reserve(length + MAX_PREFIX_BYTES);
        prost::encoding::encode_varint(length as u64, out);
        // A Vec grows as needed, so raw encoding cannot run out of space.
        family.encode_raw(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Gauge, LabelPair, Metric, MetricType};

    fn gauge_family(name: &str, value: f64) -> MetricFamily {
        MetricFamily {
            name: Some(name.to_owned()),
            help: Some("help".to_owned()),
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![Metric {
                label: vec![LabelPair::new("a", "b")],
                gauge: Some(Gauge { value: Some(value) }),
                // Proto2 presence: a zero timestamp must survive the round trip.
                timestamp_ms: Some(0),
                ..Metric::default()
            }],
            unit: None,
        }
    }

    fn encode(families: &[MetricFamily]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_delimited(families, &mut out);
        out
    }

    #[test]
    fn round_trip_keeps_order_and_presence() {
        let families = vec![gauge_family("b", 1.0), gauge_family("a", 2.0)];
        let decoded = decode_delimited(&encode(&families)).expect("own encoding decodes");
        assert_eq!(decoded, families, "same families, same order");
    }

    #[test]
    fn empty_body_is_no_families() {
        let decoded = decode_delimited(&[]).expect("empty body is valid");
        assert!(decoded.is_empty(), "no families");
    }

    #[test]
    fn encoding_matches_prost_length_delimited() {
        let family = gauge_family("m", 3.5);
        let want = family.encode_length_delimited_to_vec();
        assert_eq!(encode(&[family]), want, "same bytes as prost's own framing");
    }

    #[test]
    fn repeated_name_replaces_earlier_family_in_place() {
        let families = vec![
            gauge_family("x", 1.0),
            gauge_family("y", 2.0),
            gauge_family("x", 3.0),
        ];
        let decoded = decode_delimited(&encode(&families)).expect("decodes");
        assert_eq!(
            decoded,
            vec![gauge_family("x", 3.0), gauge_family("y", 2.0)],
            "last x wins, at the first x's position"
        );
    }

    #[test]
    fn malformed_bodies_are_errors_with_offsets() {
        let valid = encode(&[gauge_family("m", 1.0)]);
        let second_at = valid.len();
        let mut cut_message = valid.clone();
        cut_message.extend_from_slice(&valid[..valid.len() - 1]);
        let mut cut_prefix = valid.clone();
        cut_prefix.push(0x80);
        let mut long_prefix = valid.clone();
        long_prefix.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let mut huge_length = valid.clone();
        huge_length.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        // Field 1 (name) as a string of 2 bytes that are not UTF-8.
        let bad_message = vec![4, 0x0a, 2, 0xff, 0xfe];

        let table: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "message cut off",
                cut_message,
                "unexpected EOF: the message at byte",
            ),
            (
                "prefix cut off",
                cut_prefix,
                "unexpected EOF: the length prefix at byte",
            ),
            (
                "prefix over five bytes",
                long_prefix,
                "invalid varint32 length prefix at byte",
            ),
            (
                "length beyond the body",
                huge_length,
                "announces 4294967295 bytes",
            ),
            (
                "not a MetricFamily",
                bad_message,
                "invalid MetricFamily message at byte 0",
            ),
        ];
        for (name, body, want) in table {
            let err = decode_delimited(&body).expect_err(name);
            let text = err.to_string();
            assert!(text.contains(want), "{name}: {text:?} lacks {want:?}");
            if name != "not a MetricFamily" {
                assert!(
                    text.contains(&second_at.to_string()),
                    "{name}: {text:?} names offset {second_at}"
                );
            }
        }
    }

    #[test]
    fn limits_are_counted_on_the_wire_before_decoding() {
        use crate::model::{Bucket, Histogram, Summary};
        let limits = PushLimits {
            max_series: 2,
            max_labels_per_series: 2,
            max_label_name_bytes: 4,
            max_label_value_bytes: 4,
            max_buckets_per_series: 2,
            max_decoded_factor: 16,
        };
        let with = |labels: &[(&str, &str)], metrics: usize| MetricFamily {
            metric: vec![
                Metric {
                    label: labels.iter().map(|(n, v)| LabelPair::new(*n, *v)).collect(),
                    gauge: Some(Gauge { value: Some(1.0) }),
                    ..Metric::default()
                };
                metrics
            ],
            ..gauge_family("m", 1.0)
        };
        let mut buckets = with(&[], 1);
        buckets.metric[0].histogram = Some(Box::new(Histogram {
            bucket: vec![Bucket::default(); 3],
            ..Histogram::default()
        }));
        let mut quantiles = with(&[], 1);
        quantiles.metric[0].summary = Some(Box::new(Summary {
            quantile: vec![crate::model::Quantile::default(); 3],
            ..Summary::default()
        }));
        let table: Vec<(&str, Vec<MetricFamily>, Option<&str>)> = vec![
            (
                "within every limit",
                vec![with(&[("a", "1"), ("b", "2")], 2)],
                None,
            ),
            (
                "third series",
                vec![with(&[], 3)],
                Some("at least 3 series"),
            ),
            (
                "third family",
                vec![
                    gauge_family("a", 1.0),
                    gauge_family("b", 1.0),
                    gauge_family("c", 1.0),
                ],
                Some("at least 3 series (or families)"),
            ),
            (
                "third label",
                vec![with(&[("a", "1"), ("b", "2"), ("c", "3")], 1)],
                Some("at least 3 labels"),
            ),
            (
                "long name",
                vec![with(&[("abcde", "1")], 1)],
                Some("label name of \"m\" is 5 bytes"),
            ),
            (
                "long value",
                vec![with(&[("a", "12345")], 1)],
                Some("label value of \"m\" is 5 bytes"),
            ),
            ("third bucket", vec![buckets], Some("at least 3 buckets")),
            (
                "third quantile",
                vec![quantiles],
                Some("at least 3 buckets"),
            ),
        ];
        for (name, families, want) in table {
            let result = decode_delimited_limited(&encode(&families), limits);
            match want {
                None => assert_eq!(result.expect(name), families, "{name}"),
                Some(want) => {
                    let error = result.expect_err(name);
                    assert!(
                        matches!(error, ProtobufError::Limit(_)),
                        "{name}: {error:?}"
                    );
                    assert!(error.to_string().contains(want), "{name}: {error}");
                }
            }
        }
    }

    #[test]
    fn empty_metrics_are_refused_before_they_are_decoded() {
        // 2 bytes each on the wire; a whole `Metric` each once decoded.
        let mut family = Vec::new();
        for _ in 0..400_000 {
            family.extend_from_slice(&[0x22, 0x00]);
        }
        let mut body = Vec::new();
        prost::encoding::encode_varint(family.len() as u64, &mut body);
        body.extend_from_slice(&family);
        let limits = PushLimits {
            max_decoded_factor: 16,
            ..PushLimits::UNLIMITED
        };
        let error = decode_delimited_limited(&body, limits).expect_err("too costly");
        assert!(
            matches!(
                error,
                ProtobufError::Limit(LimitError::DecodesTooLarge { .. })
            ),
            "{error:?}"
        );
    }

    #[test]
    fn many_repeated_families_keep_the_last_in_linear_time() {
        let families: Vec<MetricFamily> = (0..50_000)
            .map(|i| gauge_family(&format!("f{}", i % 20_000), f64::from(i)))
            .collect();
        let decoded = decode_delimited(&encode(&families)).expect("decodes");
        assert_eq!(decoded.len(), 20_000, "one per name");
        assert_eq!(decoded[0], gauge_family("f0", 40_000.0), "the last f0 wins");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let body = encode(&[gauge_family("m", 1.0), gauge_family("n", 2.0)]);
        let first_end = encode(&[gauge_family("m", 1.0)]).len();
        for cut in 1..body.len() {
            let result = decode_delimited(&body[..cut]);
            if cut == first_end {
                assert_eq!(result.expect("a whole first message").len(), 1, "cut {cut}");
            } else {
                assert!(result.is_err(), "cut at {cut} must be an error");
            }
        }
    }
}
