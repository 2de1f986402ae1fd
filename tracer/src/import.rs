//! `dropgate import --from URL [--to URL]`: copies every group of a running pushgateway
//! into a running dropgate, for a migration without losing what jobs pushed last.
//!
//! The source is read through its `/api/v1/metrics` (JSON, every group with its
//! families); each group is rebuilt as `MetricFamily` values and PUT to the target under
//! the same grouping key, as a delimited protobuf body (exact floats and HELP texts, no
//! text-format quoting to get wrong). The source's own push gauges
//! (`push_time_seconds`, `push_failure_time_seconds`) are not pushed: the target keeps
//! its own. Each group succeeds or fails on its own; the caller reports them one by one.

mod client;

use std::{collections::BTreeMap, fmt::Write as _};

use gateway::{
    codec::protobuf::encode_delimited,
    exposition::CONTENT_TYPE_PROTOBUF,
    model::{
        Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Quantile,
        Summary, Untyped,
    },
    store::{PUSH_FAILURE_TIME_NAME, PUSH_TIME_NAME},
};
use serde_json::{Map, Value};

pub use client::{BaseUrl, UrlError};

/// Why the import could not start (a group that fails is reported, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// `--from` or `--to` is not a usable URL.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The source could not be reached or read.
    #[error("cannot read {url}: {source}; is the pushgateway running there?")]
    Fetch {
        /// The URL read.
        url: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The source answered, but not with success.
    #[error(
        "{url} answered {status}: {body}; is it a pushgateway (with its route prefix in the URL)?"
    )]
    Status {
        /// The URL read.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer.
        body: String,
    },
    /// The source's answer is not the JSON of `/api/v1/metrics`.
    #[error("{url} did not answer with the JSON of a pushgateway's /api/v1/metrics: {why}")]
    Json {
        /// The URL read.
        url: String,
        /// What did not fit.
        why: String,
    },
}

/// One group of the source, rebuilt for pushing.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceGroup {
    /// Its grouping labels (`job` and the rest).
    pub labels: BTreeMap<String, String>,
    /// Its families without the push gauges, or why they could not be rebuilt.
    pub families: Result<Vec<MetricFamily>, String>,
}

/// What became of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOutcome {
    /// The group's grouping labels.
    pub labels: BTreeMap<String, String>,
    /// How many families were pushed (0 when it failed).
    pub families: usize,
    /// Why it failed; `None` when it was imported.
    pub error: Option<String>,
}

impl GroupOutcome {
    /// One line for people: `imported {job="a"}: 3 families` or `FAILED {job="a"}: why`.
    #[must_use]
    pub fn line(&self) -> String {
        let labels = self
            .labels
            .iter()
            .map(|(name, value)| format!("{name}={value:?}"))
            .collect::<Vec<_>>()
            .join(",");
        match &self.error {
            None => format!(
                "imported {{{labels}}}: {} famil{}",
                self.families,
                if self.families == 1 { "y" } else { "ies" }
            ),
            Some(why) => format!("FAILED {{{labels}}}: {why}"),
        }
    }
}

/// Copies every group from the pushgateway at `from` into the gateway at `to`, calling
/// `on_group` as each one is done. Returns the outcomes in the source's order.
pub fn import(
    from: &str,
    to: &str,
    mut on_group: impl FnMut(&GroupOutcome),
) -> Result<Vec<GroupOutcome>, ImportError> {
    let from = BaseUrl::parse(from)?;
    let to = BaseUrl::parse(to)?;
    let groups = fetch(&from)?;
    Ok(groups
        .into_iter()
        .map(|group| {
            let outcome = push(&to, group);
            on_group(&outcome);
            outcome
        })
        .collect())
}

/// Reads and rebuilds the source's groups.
pub fn fetch(from: &BaseUrl) -> Result<Vec<SourceGroup>, ImportError> {
    let url = format!("{}/api/v1/metrics", from.url.trim_end_matches('/'));
    let response = from
        .request("GET", "/api/v1/metrics", None, b"")
        .map_err(|source| ImportError::Fetch {
            url: url.clone(),
            source,
        })?;
    if response.status != 200 {
        let mut body = response.text();
        body.truncate(200);
        return Err(ImportError::Status {
            url,
            status: response.status,
            body,
        });
    }
    parse_groups(&response.body).map_err(|why| ImportError::Json { url, why })
}

/// PUTs one group to the target.
fn push(to: &BaseUrl, group: SourceGroup) -> GroupOutcome {
    let SourceGroup { labels, families } = group;
    let result = families.and_then(|families| {
        let path = grouping_path(&labels)?;
        let mut body = Vec::new();
        encode_delimited(&families, &mut body);
        let response = to
            .request("PUT", &path, Some(CONTENT_TYPE_PROTOBUF), &body)
            .map_err(|error| format!("cannot push to {}: {error}", to.url))?;
        if response.status / 100 == 2 {
            Ok(families.len())
        } else {
            Err(format!(
                "{} answered {}: {}",
                to.url,
                response.status,
                response.text()
            ))
        }
    });
    match result {
        Ok(families) => GroupOutcome {
            labels,
            families,
            error: None,
        },
        Err(why) => GroupOutcome {
            labels,
            families: 0,
            error: Some(why),
        },
    }
}

/// The groups of a pushgateway's `/api/v1/metrics` answer; a group that cannot be
/// rebuilt carries why, so the others still go through.
pub fn parse_groups(json: &[u8]) -> Result<Vec<SourceGroup>, String> {
    let document: Value = serde_json::from_slice(json).map_err(|error| error.to_string())?;
    if document.get("status").and_then(Value::as_str) != Some("success") {
        return Err("its status is not \"success\"".into());
    }
    let data = document
        .get("data")
        .and_then(Value::as_array)
        .ok_or("it has no `data` array")?;
    data.iter()
        .map(|group| {
            let group = group.as_object().ok_or("a group is not an object")?;
            let labels = string_map(group.get("labels")).ok_or("a group has no `labels`")?;
            Ok(SourceGroup {
                labels,
                families: families_of(group),
            })
        })
        .collect()
}

fn families_of(group: &Map<String, Value>) -> Result<Vec<MetricFamily>, String> {
    group
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "labels" | "last_push_successful" | PUSH_TIME_NAME | PUSH_FAILURE_TIME_NAME
            )
        })
        .map(|(name, family)| {
            family_of(name, family).map_err(|why| format!("family {name}: {why}"))
        })
        .collect()
}

fn family_of(name: &str, json: &Value) -> Result<MetricFamily, String> {
    let type_name = json
        .get("type")
        .and_then(Value::as_str)
        .ok_or("no `type`")?;
    let kind = match type_name {
        "COUNTER" => MetricType::Counter,
        "GAUGE" => MetricType::Gauge,
        "SUMMARY" => MetricType::Summary,
        "UNTYPED" => MetricType::Untyped,
        "HISTOGRAM" => MetricType::Histogram,
        "GAUGE_HISTOGRAM" => MetricType::GaugeHistogram,
        other => return Err(format!("unknown type {other:?}")),
    };
    let metric = json
        .get("metrics")
        .and_then(Value::as_array)
        .ok_or("no `metrics`")?
        .iter()
        .map(|metric| metric_of(kind, metric))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(MetricFamily {
        name: Some(name.to_owned()),
        help: json.get("help").and_then(Value::as_str).map(str::to_owned),
        r#type: Some(kind as i32),
        metric,
        unit: None,
    })
}

fn metric_of(kind: MetricType, json: &Value) -> Result<Metric, String> {
    let label = string_map(json.get("labels"))
        .ok_or("a metric without `labels`")?
        .into_iter()
        .map(|(name, value)| LabelPair::new(name, value))
        .collect();
    let mut metric = Metric {
        label,
        ..Metric::default()
    };
    let float = |field: &str| -> Result<f64, String> {
        let text = json.get(field).and_then(Value::as_str).unwrap_or_default();
        go_float(text).ok_or_else(|| format!("`{field}` is not a number: {text:?}"))
    };
    let count = || -> Result<u64, String> {
        let text = json
            .get("count")
            .and_then(Value::as_str)
            .unwrap_or_default();
        text.parse()
            .map_err(|_| format!("`count` is not a count: {text:?}"))
    };
    match kind {
        MetricType::Counter => {
            metric.counter = Some(Counter {
                value: Some(float("value")?),
                ..Counter::default()
            });
        }
        MetricType::Gauge => {
            metric.gauge = Some(Gauge {
                value: Some(float("value")?),
            });
        }
        MetricType::Untyped => {
            metric.untyped = Some(Untyped {
                value: Some(float("value")?),
            });
        }
        MetricType::Summary => {
            let quantile = sorted_pairs(json.get("quantiles"), "quantiles")?
                .into_iter()
                .map(|(quantile, value)| {
                    Some(Quantile {
                        quantile: Some(quantile),
                        value: Some(go_float(&value)?),
                    })
                })
                .collect::<Option<Vec<_>>>()
                .ok_or("a quantile's value is not a number")?;
            metric.summary = Some(Box::new(Summary {
                sample_count: Some(count()?),
                sample_sum: Some(float("sum")?),
                quantile,
                created_timestamp: None,
            }));
        }
        MetricType::Histogram | MetricType::GaugeHistogram => {
            if json.get("buckets").is_none() {
                return Err("a histogram without `buckets` (upstream's JSON leaves out native and gauge histograms)".into());
            }
            let bucket = sorted_pairs(json.get("buckets"), "buckets")?
                .into_iter()
                .map(|(upper_bound, count)| {
                    Some(Bucket {
                        cumulative_count: Some(count.parse().ok()?),
                        upper_bound: Some(upper_bound),
                        ..Bucket::default()
                    })
                })
                .collect::<Option<Vec<_>>>()
                .ok_or("a bucket's count is not a count")?;
            metric.histogram = Some(Box::new(Histogram {
                sample_count: Some(count()?),
                sample_sum: Some(float("sum")?),
                bucket,
                ..Histogram::default()
            }));
        }
    }
    Ok(metric)
}

/// A JSON object of strings as a map; `None` if it is missing or not all strings.
fn string_map(json: Option<&Value>) -> Option<BTreeMap<String, String>> {
    json?
        .as_object()?
        .iter()
        .map(|(name, value)| Some((name.clone(), value.as_str()?.to_owned())))
        .collect()
}

/// Quantiles or buckets (`{"0.5": "1e-05"}`) keyed by number, in numeric order: the
/// JSON object's keys come sorted as text (`"10"` before `"5"`).
fn sorted_pairs(json: Option<&Value>, what: &str) -> Result<Vec<(f64, String)>, String> {
    let map = string_map(json).ok_or_else(|| format!("`{what}` is not an object of strings"))?;
    let mut pairs = map
        .into_iter()
        .map(|(key, value)| Some((go_float(&key)?, value)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("`{what}` has a key that is not a number"))?;
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(pairs)
}

/// A float as Go prints it (`1e-05`, `+Inf`, `NaN`, `-0`).
fn go_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// `/metrics/job/<job>{/<name>/<value>}` for a group's labels, encoded as upstream's
/// clients do: an empty value as `<name>@base64/=`, a value with `/` as
/// `<name>@base64/<URL-safe base64 without padding>`, anything else percent-encoded.
/// (Upstream's clients write a space as `+`, which the pushgateway keeps as a `+`; a
/// space is written `%20` here, so every value arrives unchanged.)
pub fn grouping_path(labels: &BTreeMap<String, String>) -> Result<String, String> {
    let job = labels
        .get("job")
        .filter(|job| !job.is_empty())
        .ok_or("the group has no job label")?;
    let mut path = String::from("/metrics");
    let mut component = |name: &str, value: &str| {
        if value.is_empty() {
            let _ = write!(path, "/{name}@base64/=");
        } else if value.contains('/') {
            let _ = write!(path, "/{name}@base64/{}", base64_url(value.as_bytes()));
        } else {
            let _ = write!(path, "/{name}/{}", percent_encode(value));
        }
    };
    component("job", job);
    for (name, value) in labels.iter().filter(|(name, _)| *name != "job") {
        component(name, value);
    }
    Ok(path)
}

/// RFC 4648 URL-safe base64 without padding (Go's `base64.RawURLEncoding`).
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
        }
    }
    out
}

/// Every byte but RFC 3986's unreserved characters as `%XX`.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use gateway::grouping::GroupingKey;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn base64_like_go_raw_url_encoding() {
        let cases = [
            ("empty", "", ""),
            ("one byte", "f", "Zg"),
            ("two bytes", "fo", "Zm8"),
            ("three bytes", "foo", "Zm9v"),
            ("path", "/var/backup", "L3Zhci9iYWNrdXA"),
            ("url-safe alphabet", "\u{fb}\u{ff}", "w7vDvw"),
        ];
        for (name, text, want) in cases {
            assert_eq!(base64_url(text.as_bytes()), want, "case {name}");
        }
    }

    #[test]
    fn grouping_paths_round_trip_through_the_gateways_parser() {
        /// Name, grouping labels, and the path they must give.
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            &'static str,
        );
        let cases: [Case; 6] = [
            ("job only", &[("job", "backup")], "/metrics/job/backup"),
            (
                "sorted labels after job",
                &[("zone", "eu"), ("job", "j"), ("instance", "a:1")],
                "/metrics/job/j/instance/a%3A1/zone/eu",
            ),
            (
                "slash needs base64",
                &[("job", "/var/backup"), ("path", "/tmp")],
                "/metrics/job@base64/L3Zhci9iYWNrdXA/path@base64/L3RtcA",
            ),
            (
                "empty value",
                &[("job", "j"), ("instance", "")],
                "/metrics/job/j/instance@base64/=",
            ),
            (
                "space, plus, percent and unicode",
                &[("job", "a b+c%d ü")],
                "/metrics/job/a%20b%2Bc%25d%20%C3%BC",
            ),
            (
                "markup",
                &[("job", "<script>")],
                "/metrics/job/%3Cscript%3E",
            ),
        ];
        for (name, pairs, want) in cases {
            let labels = labels(pairs);
            let path = grouping_path(&labels).expect("a job");
            assert_eq!(path, want, "case {name}");
            let key = GroupingKey::from_path(path.trim_start_matches("/metrics/"))
                .unwrap_or_else(|error| panic!("case {name}: the gateway refuses {path}: {error}"));
            let parsed: BTreeMap<String, String> = key
                .labels()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect();
            assert_eq!(parsed, labels, "case {name}");
        }
        assert!(grouping_path(&labels(&[("instance", "x")])).is_err());
    }

    #[test]
    fn groups_are_rebuilt_from_upstreams_json() {
        let json = br#"{"status":"success","data":[{
            "c_total":{"time_stamp":"2026-11-25T15:50:47Z","type":"COUNTER","metrics":[{"labels":{"instance":"i","job":"j"},"value":"-0"}]},
            "h":{"time_stamp":"2026-11-25T15:50:47Z","type":"HISTOGRAM","help":"A histogram.","metrics":[{"buckets":{"+Inf":"5","0.1":"1","10":"4","5":"3"},"count":"5","labels":{"instance":"i","job":"j"},"sum":"12.5"}]},
            "labels":{"instance":"i","job":"j"},
            "last_push_successful":true,
            "push_failure_time_seconds":{"time_stamp":"2026-11-25T15:50:47Z","type":"GAUGE","metrics":[{"labels":{"instance":"i","job":"j"},"value":"0"}]},
            "push_time_seconds":{"time_stamp":"2026-11-25T15:50:47Z","type":"GAUGE","metrics":[{"labels":{"instance":"i","job":"j"},"value":"1.7e+09"}]},
            "s":{"time_stamp":"2026-11-25T15:50:47Z","type":"SUMMARY","help":"q \"x\"\n","metrics":[{"count":"7","labels":{"instance":"i","job":"j"},"quantiles":{"0.5":"1e-05","0.99":"NaN"},"sum":"1.2345678e+07"}]},
            "u":{"time_stamp":"2026-11-25T15:50:47Z","type":"UNTYPED","metrics":[{"labels":{"a":"x y","instance":"i","job":"j"},"value":"+Inf"}]}
        },{"labels":{"job":"bad"},"last_push_successful":true,
           "x":{"type":"STRANGE","metrics":[]}}]}"#;
        let groups = parse_groups(json).expect("valid JSON");
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].labels, labels(&[("instance", "i"), ("job", "j")]));
        let families = groups[0].families.as_ref().expect("rebuilt");
        let names: Vec<&str> = families.iter().filter_map(|f| f.name.as_deref()).collect();
        assert_eq!(names, ["c_total", "h", "s", "u"], "push gauges left out");
        let counter = &families[0].metric[0];
        assert!(counter
            .counter
            .as_ref()
            .and_then(|c| c.value)
            .is_some_and(|v| v == 0.0));
        assert_eq!(families[0].help, None);
        let histogram = families[1].metric[0].histogram.as_ref().expect("histogram");
        let bounds: Vec<(f64, u64)> = histogram
            .bucket
            .iter()
            .map(|b| {
                (
                    b.upper_bound.unwrap_or_default(),
                    b.cumulative_count.unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            bounds,
            [(0.1, 1), (5.0, 3), (10.0, 4), (f64::INFINITY, 5)],
            "numeric order"
        );
        assert_eq!(histogram.sample_count, Some(5));
        assert_eq!(families[1].help.as_deref(), Some("A histogram."));
        let summary = families[2].metric[0].summary.as_ref().expect("summary");
        assert_eq!(summary.quantile[0].value, Some(1e-05));
        assert!(summary.quantile[1].value.is_some_and(f64::is_nan));
        assert_eq!(summary.sample_sum, Some(12_345_678.0));
        assert_eq!(families[2].help.as_deref(), Some("q \"x\"\n"));
        let untyped = &families[3].metric[0];
        assert_eq!(
            untyped.untyped.as_ref().and_then(|u| u.value),
            Some(f64::INFINITY)
        );
        assert_eq!(untyped.label[0], LabelPair::new("a", "x y"));
        let bad = groups[1].families.as_ref().expect_err("unknown type");
        assert!(bad.contains("family x: unknown type \"STRANGE\""), "{bad}");
    }

    #[test]
    fn answers_that_are_not_upstreams_json_are_refused() {
        let cases: [(&str, &[u8]); 4] = [
            ("not json", b"<html>"),
            ("error status", br#"{"status":"error","data":[]}"#),
            ("no data", br#"{"status":"success"}"#),
            (
                "group without labels",
                br#"{"status":"success","data":[{"x":{}}]}"#,
            ),
        ];
        for (name, json) in cases {
            assert!(parse_groups(json).is_err(), "case {name}");
        }
        assert_eq!(
            parse_groups(br#"{"status":"success","data":[]}"#).expect("empty store"),
            []
        );
    }

    #[test]
    fn outcome_lines() {
        let ok = GroupOutcome {
            labels: labels(&[("job", "j"), ("instance", "a b")]),
            families: 1,
            error: None,
        };
        assert_eq!(ok.line(), "imported {instance=\"a b\",job=\"j\"}: 1 family");
        let failed = GroupOutcome {
            labels: labels(&[("job", "j")]),
            families: 0,
            error: Some("400: no".into()),
        };
        assert_eq!(failed.line(), "FAILED {job=\"j\"}: 400: no");
    }
}
