//! The OTLP/HTTP wire: which encoding a request uses, decoding its body, and encoding
//! the answers (an `ExportMetricsServiceResponse`, or a `google.rpc.Status` for a
//! refusal) in the request's own encoding, as the OTLP specification asks.
//!
//! OTLP/JSON is the protobuf JSON mapping with OTLP's changes (integers for enums,
//! hex trace ids, lowerCamelCase names); `opentelemetry-proto`'s serde implements it,
//! taking 64-bit integers as strings or numbers.

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use otlp_prost::Message as _;

/// Media type of OTLP protobuf bodies.
pub const PROTOBUF_MEDIA_TYPE: &str = "application/x-protobuf";
/// Media type of OTLP JSON bodies.
pub const JSON_MEDIA_TYPE: &str = "application/json";

/// The encoding of an OTLP/HTTP request, and so of its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Binary protobuf (`application/x-protobuf`).
    Protobuf,
    /// OTLP/JSON (`application/json`).
    Json,
}

/// Why an OTLP body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The `Content-Type` is neither OTLP encoding (answer 415).
    #[error("unsupported Content-Type {0:?}: OTLP/HTTP metrics are sent as application/x-protobuf or application/json")]
    UnsupportedType(String),
    /// The protobuf body is not an `ExportMetricsServiceRequest` (answer 400).
    #[error("the body is not a valid protobuf ExportMetricsServiceRequest: {0}")]
    Protobuf(#[from] otlp_prost::DecodeError),
    /// The JSON body is not an OTLP/JSON `ExportMetricsServiceRequest` (answer 400).
    #[error("the body is not a valid OTLP/JSON ExportMetricsServiceRequest: {0}")]
    Json(#[from] serde_json::Error),
}

impl Encoding {
    /// The encoding a `Content-Type` names (its parameters, e.g. `charset`, aside).
    pub fn of_content_type(content_type: Option<&str>) -> Result<Self, WireError> {
        let raw = content_type.unwrap_or_default();
        let media_type = raw.split(';').next().unwrap_or_default().trim();
        if media_type.eq_ignore_ascii_case(PROTOBUF_MEDIA_TYPE) {
            Ok(Self::Protobuf)
        } else if media_type.eq_ignore_ascii_case(JSON_MEDIA_TYPE) {
            Ok(Self::Json)
        } else {
            Err(WireError::UnsupportedType(raw.to_owned()))
        }
    }

    /// The `Content-Type` of answers in this encoding.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => PROTOBUF_MEDIA_TYPE,
            Self::Json => JSON_MEDIA_TYPE,
        }
    }

    /// Decodes a (decompressed) request body.
    pub fn decode(self, body: &[u8]) -> Result<ExportMetricsServiceRequest, WireError> {
        Ok(match self {
            Self::Protobuf => ExportMetricsServiceRequest::decode(body)?,
            Self::Json => serde_json::from_slice(body)?,
        })
    }

    /// The success answer; with `partial_success` when points were rejected (or a
    /// warning is given).
    #[must_use]
    pub fn success(self, rejected_points: u64, message: &str) -> Vec<u8> {
        let response = ExportMetricsServiceResponse {
            partial_success: (rejected_points > 0 || !message.is_empty()).then(|| {
                ExportMetricsPartialSuccess {
                    rejected_data_points: i64::try_from(rejected_points).unwrap_or(i64::MAX),
                    error_message: message.to_owned(),
                }
            }),
        };
        match self {
            Self::Protobuf => response.encode_to_vec(),
            // Serialising plain structs of strings and integers cannot fail.
            Self::Json => serde_json::to_vec(&response).unwrap_or_default(),
        }
    }

    /// A refusal's body: a `google.rpc.Status` with the gRPC `code` and the message.
    #[must_use]
    pub fn status(self, code: i32, message: &str) -> Vec<u8> {
        match self {
            Self::Protobuf => RpcStatus {
                code,
                message: message.to_owned(),
            }
            .encode_to_vec(),
            Self::Json => serde_json::to_vec(&serde_json::json!({
                "code": code,
                "message": message,
            }))
            .unwrap_or_default(),
        }
    }
}

/// `google.rpc.Status` without its `details` (tag 3), which dropgate never sends:
/// two fields, not worth a crate of Google's well-known types.
#[derive(Clone, PartialEq, otlp_prost::Message)]
#[prost(prost_path = "::otlp_prost")]
pub struct RpcStatus {
    /// The gRPC status code (3 `INVALID_ARGUMENT`, 8 `RESOURCE_EXHAUSTED`, ...).
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What was wrong, for the person reading the exporter's log.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC code for data that is wrong and will stay wrong (400).
pub const CODE_INVALID_ARGUMENT: i32 = 3;
/// gRPC code for a request over a size limit (413).
pub const CODE_RESOURCE_EXHAUSTED: i32 = 8;
/// gRPC code for a refused write that a retry will not fix either (consistency).
pub const CODE_FAILED_PRECONDITION: i32 = 9;
/// gRPC code for a server-side failure.
pub const CODE_INTERNAL: i32 = 13;
/// gRPC code for an unsupported encoding (415).
pub const CODE_UNIMPLEMENTED: i32 = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let table: &[(&str, Option<&str>, Option<Encoding>)] = &[
            (
                "protobuf",
                Some("application/x-protobuf"),
                Some(Encoding::Protobuf),
            ),
            (
                "json with charset",
                Some("application/json; charset=utf-8"),
                Some(Encoding::Json),
            ),
            ("capitals", Some("Application/JSON"), Some(Encoding::Json)),
            ("prometheus text", Some("text/plain; version=0.0.4"), None),
            (
                "prometheus protobuf",
                Some("application/vnd.google.protobuf"),
                None,
            ),
            ("none", None, None),
        ];
        for (name, header, want) in table {
            assert_eq!(Encoding::of_content_type(*header).ok(), *want, "{name}");
        }
    }

    #[test]
    fn answers_decode_in_their_encoding() {
        let body = Encoding::Protobuf.success(3, "dropped");
        let back = ExportMetricsServiceResponse::decode(&body[..]).expect("valid protobuf");
        let partial = back.partial_success.expect("partial success set");
        assert_eq!(
            (partial.rejected_data_points, partial.error_message.as_str()),
            (3, "dropped")
        );
        assert!(
            Encoding::Protobuf.success(0, "").is_empty(),
            "full success is an empty message"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&Encoding::Json.success(2, "x")).expect("valid JSON");
        assert_eq!(json["partialSuccess"]["rejectedDataPoints"], 2);
        let status = RpcStatus::decode(&Encoding::Protobuf.status(3, "bad")[..]).expect("status");
        assert_eq!((status.code, status.message.as_str()), (3, "bad"));
        let json: serde_json::Value =
            serde_json::from_slice(&Encoding::Json.status(3, "bad")).expect("valid JSON");
        assert_eq!(
            (json["code"].as_i64(), json["message"].as_str()),
            (Some(3), Some("bad"))
        );
    }

    #[test]
    fn json_takes_otlp_quirks() {
        // 64-bit integers as strings, enums as integers, a oneof flattened.
        let body = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"c","sum":{
            "dataPoints":[{"asInt":"42","timeUnixNano":"1700000000000000000"}],
            "aggregationTemporality":2,"isMonotonic":true}}]}]}]}"#;
        let request = Encoding::Json.decode(body).expect("OTLP/JSON decodes");
        let metric = &request.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(sum)) = &metric.data
        else {
            panic!("a sum: {metric:?}");
        };
        assert_eq!(sum.aggregation_temporality, 2);
        assert!(sum.is_monotonic);
        assert_eq!(sum.data_points[0].time_unix_nano, 1_700_000_000_000_000_000);
        assert!(
            Encoding::Protobuf.decode(&[0x0a, 0xff]).is_err(),
            "truncated protobuf"
        );
    }
}
