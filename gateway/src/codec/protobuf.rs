//! Varint length-delimited `MetricFamily` streams: the protobuf push body and the
//! protobuf exposition.
//!
//! Each message is preceded by its length as a varint of at most five bytes (protobuf's
//! `writeDelimitedTo`, Go's `pbutil`). Decoding never trusts a length prefix beyond the
//! bytes actually present, so a hostile prefix cannot make us allocate.

use prost::Message;

use crate::model::MetricFamily;

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
}

/// Decodes every length-delimited `MetricFamily` in `body`.
///
/// Like the Go pushgateway, which collects the families into a map by name, a family
/// whose name repeats an earlier one replaces it (keeping the earlier position). Unlike
/// it, a body cut off inside a prefix or a message is an error rather than a silent end.
pub fn decode_delimited(body: &[u8]) -> Result<Vec<MetricFamily>, ProtobufError> {
    let mut families: Vec<MetricFamily> = Vec::new();
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
        let family = MetricFamily::decode(&body[start..end])
            .map_err(|source| ProtobufError::InvalidMessage { offset, source })?;
        match families.iter_mut().find(|known| known.name == family.name) {
            Some(known) => *known = family,
            None => families.push(family),
        }
        offset = end;
    }
    Ok(families)
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
