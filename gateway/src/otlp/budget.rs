//! What an export will take once decoded, counted on its bytes before it is decoded, so
//! that a small body cannot become much memory (the push API's protobuf decoder does
//! the same for its messages; see "What a request may cost" in the README).
//!
//! prost and serde decode a whole message at once: two bytes of protobuf (an empty
//! data point) or three of JSON (`{},`) become a struct of a hundred bytes. So the wire
//! is walked first: protobuf along the OTLP schema, adding the in-memory size of every
//! message, string and packed number it holds; JSON by its objects, each counted as the
//! largest OTLP struct. Either must stay within `--push.max-render-factor` times the
//! body (1 MiB always), as a protobuf push must.

use std::mem::size_of;

use bytes::Buf as _;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, Exemplar, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otlp_prost::encoding::{decode_key, decode_varint, WireType};

use super::Encoding;

/// The OTLP messages an export holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Request,
    ResourceMetrics,
    Resource,
    EntityRef,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    ScopeMetrics,
    Scope,
    Metric,
    Gauge,
    Sum,
    Histogram,
    ExponentialHistogram,
    Summary,
    NumberPoint,
    HistogramPoint,
    ExponentialPoint,
    Buckets,
    SummaryPoint,
    Quantile,
    Exemplar,
}

/// What a field of a message is, by tag (from the OTLP `.proto` files).
enum Field {
    /// A nested message.
    Message(Kind),
    /// Packed 8-byte numbers (`fixed64`, `double`): as large in memory as on the wire.
    PackedFixed,
    /// Packed varints: each becomes 8 bytes.
    PackedVarint,
    /// A string or bytes: its bytes, plus what the struct already counts.
    Bytes,
}

fn field(kind: Kind, tag: u32) -> Field {
    use Field::{Bytes, Message, PackedFixed, PackedVarint};
    use Kind as K;
    match (kind, tag) {
        (K::Request, 1) => Message(K::ResourceMetrics),
        (K::ResourceMetrics, 1) => Message(K::Resource),
        (K::ResourceMetrics, 2) => Message(K::ScopeMetrics),
        (K::Resource | K::KeyValueList | K::ExponentialPoint, 1)
        | (K::Scope, 3)
        | (K::NumberPoint | K::SummaryPoint | K::Exemplar, 7)
        | (K::HistogramPoint, 9)
        | (K::Metric, 12) => Message(K::KeyValue),
        (K::Resource, 3) => Message(K::EntityRef),
        (K::KeyValue, 2) | (K::ArrayValue, 1) => Message(K::AnyValue),
        (K::AnyValue, 5) => Message(K::ArrayValue),
        (K::AnyValue, 6) => Message(K::KeyValueList),
        (K::ScopeMetrics, 1) => Message(K::Scope),
        (K::ScopeMetrics, 2) => Message(K::Metric),
        (K::Metric, 5) => Message(K::Gauge),
        (K::Metric, 7) => Message(K::Sum),
        (K::Metric, 9) => Message(K::Histogram),
        (K::Metric, 10) => Message(K::ExponentialHistogram),
        (K::Metric, 11) => Message(K::Summary),
        (K::Gauge | K::Sum, 1) => Message(K::NumberPoint),
        (K::Histogram, 1) => Message(K::HistogramPoint),
        (K::ExponentialHistogram, 1) => Message(K::ExponentialPoint),
        (K::Summary, 1) => Message(K::SummaryPoint),
        (K::NumberPoint, 5) | (K::HistogramPoint, 8) | (K::ExponentialPoint, 11) => {
            Message(K::Exemplar)
        }
        (K::HistogramPoint, 6 | 7) => PackedFixed,
        (K::ExponentialPoint, 8 | 9) => Message(K::Buckets),
        (K::Buckets, 2) => PackedVarint,
        (K::SummaryPoint, 6) => Message(K::Quantile),
        _ => Bytes,
    }
}

/// The in-memory size of one message of `kind` (its element in the parent's `Vec`).
fn size(kind: Kind) -> usize {
    match kind {
        Kind::Request => 0,
        Kind::ResourceMetrics => size_of::<ResourceMetrics>(),
        Kind::Resource => size_of::<Resource>(),
        Kind::EntityRef => size_of::<EntityRef>(),
        Kind::KeyValue => size_of::<KeyValue>(),
        Kind::AnyValue => size_of::<AnyValue>(),
        Kind::ArrayValue => size_of::<ArrayValue>(),
        Kind::KeyValueList => size_of::<KeyValueList>(),
        Kind::ScopeMetrics => size_of::<ScopeMetrics>(),
        Kind::Scope => size_of::<InstrumentationScope>(),
        Kind::Metric => size_of::<Metric>(),
        Kind::Gauge => size_of::<Gauge>(),
        Kind::Sum => size_of::<Sum>(),
        Kind::Histogram => size_of::<Histogram>(),
        Kind::ExponentialHistogram => size_of::<ExponentialHistogram>(),
        Kind::Summary => size_of::<Summary>(),
        Kind::NumberPoint => size_of::<NumberDataPoint>(),
        Kind::HistogramPoint => size_of::<HistogramDataPoint>(),
        Kind::ExponentialPoint => size_of::<ExponentialHistogramDataPoint>(),
        Kind::Buckets => size_of::<Buckets>(),
        Kind::SummaryPoint => size_of::<SummaryDataPoint>(),
        Kind::Quantile => size_of::<
            opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile,
        >(),
        Kind::Exemplar => size_of::<Exemplar>(),
    }
}

/// The largest struct a JSON object can become.
fn largest() -> usize {
    [
        Kind::ResourceMetrics,
        Kind::Resource,
        Kind::EntityRef,
        Kind::KeyValue,
        Kind::AnyValue,
        Kind::ScopeMetrics,
        Kind::Scope,
        Kind::Metric,
        Kind::Histogram,
        Kind::ExponentialHistogram,
        Kind::NumberPoint,
        Kind::HistogramPoint,
        Kind::ExponentialPoint,
        Kind::Buckets,
        Kind::SummaryPoint,
        Kind::Exemplar,
    ]
    .into_iter()
    .map(size)
    .max()
    .unwrap_or(0)
}

/// Bytes the decoded export would take; `None` for protobuf that is not well formed
/// (the decoder then says what is wrong).
#[must_use]
pub fn decoded_bytes(encoding: Encoding, body: &[u8]) -> Option<usize> {
    match encoding {
        Encoding::Protobuf => protobuf_bytes(Kind::Request, body),
        // Each object becomes at most one struct, each string or number at most its
        // text (`largest` covers the struct that holds it).
        Encoding::Json => Some(
            // memchr would count faster; this runs once per export, before decoding.
            body.split(|byte| *byte == b'{')
                .count()
                .saturating_sub(1)
                .saturating_mul(largest())
                .saturating_add(body.len()),
        ),
    }
}

fn protobuf_bytes(kind: Kind, mut buf: &[u8]) -> Option<usize> {
    let mut total = size(kind);
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf).ok()?;
            }
            WireType::SixtyFourBit => buf.advance(8.min(buf.len())),
            WireType::ThirtyTwoBit => buf.advance(4.min(buf.len())),
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                if len > buf.len() {
                    return None;
                }
                let (inner, rest) = buf.split_at(len);
                buf = rest;
                let cost = match field(kind, tag) {
                    Field::Message(child) => protobuf_bytes(child, inner)?,
                    Field::PackedFixed | Field::Bytes => inner.len(),
                    Field::PackedVarint => {
                        8 * inner.iter().filter(|byte| **byte & 0x80 == 0).count()
                    }
                };
                total = total.saturating_add(cost);
            }
            // Groups are not part of OTLP; prost refuses them.
            WireType::StartGroup | WireType::EndGroup => return None,
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use otlp_prost::Message as _;

    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

    #[test]
    fn empty_messages_cost_their_structs() {
        // Three empty ResourceMetrics: six bytes on the wire.
        let body = [0x0a, 0x00, 0x0a, 0x00, 0x0a, 0x00];
        assert_eq!(
            decoded_bytes(Encoding::Protobuf, &body),
            Some(3 * size_of::<ResourceMetrics>())
        );
        assert!(
            3 * size_of::<ResourceMetrics>() > 16 * body.len(),
            "past the factor"
        );
        assert_eq!(
            decoded_bytes(Encoding::Protobuf, &[0x0a, 0x05, 0x00]),
            None,
            "cut off"
        );
    }

    #[test]
    fn a_real_export_is_counted_close_to_what_it_decodes_into() {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/otlp_export/sdk-protobuf"
        ))
        .expect("the seed export of the fuzz corpus");
        let counted = decoded_bytes(Encoding::Protobuf, &body).expect("well formed");
        let request = ExportMetricsServiceRequest::decode(&body[..]).expect("decodes");
        assert!(!request.resource_metrics.is_empty());
        // The SDK's export of five instruments: within the factor of 16 by far.
        assert!(
            counted > body.len() && counted < 16 * body.len(),
            "{counted} for {}",
            body.len()
        );
        let json = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/otlp_export/sdk-json"
        ))
        .expect("the seed export of the fuzz corpus");
        let counted = decoded_bytes(Encoding::Json, &json).expect("counted");
        assert!(counted < 16 * json.len(), "{counted} for {}", json.len());
    }
}
