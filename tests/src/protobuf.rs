//! A protobuf encoder for `io.prometheus.client.MetricFamily`, just enough to write push
//! bodies by hand (field numbers from `metrics.proto`), and to split a delimited
//! exposition into its families. Hand-written so that the tests do not share the
//! gateway's own codec: a bug there must not cancel out.

/// `Content-Type` of a delimited protobuf push (and of the exposition in protobuf).
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

// `MetricType` numbers.
pub const COUNTER: u64 = 0;
pub const GAUGE: u64 = 1;
pub const SUMMARY: u64 = 2;
pub const UNTYPED: u64 = 3;
pub const HISTOGRAM: u64 = 4;

/// Appends `value` as a protobuf varint.
pub fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, field << 3 | wire);
}

/// A length-delimited field.
pub fn bytes(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    key(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// A 64-bit (double) field.
pub fn double(out: &mut Vec<u8>, field: u64, value: f64) {
    key(out, field, 1);
    out.extend_from_slice(&value.to_le_bytes());
}

/// A varint field.
pub fn uint(out: &mut Vec<u8>, field: u64, value: u64) {
    key(out, field, 0);
    varint(out, value);
}

/// `MetricFamily` with `name`, optional `help`, `kind` and the encoded `metrics`.
pub fn family(name: &str, help: Option<&str>, kind: u64, metrics: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    bytes(&mut out, 1, name.as_bytes());
    if let Some(help) = help {
        bytes(&mut out, 2, help.as_bytes());
    }
    uint(&mut out, 3, kind);
    for metric in metrics {
        bytes(&mut out, 4, metric);
    }
    out
}

/// `Metric` with `labels`, the value message `value` in field `field` (gauge 2,
/// counter 3, summary 4, untyped 5, histogram 7) and an optional timestamp.
pub fn metric(labels: &[(&str, &str)], field: u64, value: &[u8], ts: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in labels {
        let mut pair = Vec::new();
        bytes(&mut pair, 1, name.as_bytes());
        bytes(&mut pair, 2, value.as_bytes());
        bytes(&mut out, 1, &pair);
    }
    bytes(&mut out, field, value);
    if let Some(ts) = ts {
        uint(&mut out, 6, ts);
    }
    out
}

/// `Gauge`, `Counter` or `Untyped`: one double in field 1.
pub fn simple(value: f64) -> Vec<u8> {
    let mut out = Vec::new();
    double(&mut out, 1, value);
    out
}

/// `Counter` with `value` and an exemplar: `labels`, `exemplar_value`, and a timestamp of
/// `seconds` since the epoch.
pub fn counter_with_exemplar(
    value: f64,
    labels: &[(&str, &str)],
    exemplar_value: f64,
    seconds: u64,
) -> Vec<u8> {
    let mut exemplar = Vec::new();
    for (name, label_value) in labels {
        let mut pair = Vec::new();
        bytes(&mut pair, 1, name.as_bytes());
        bytes(&mut pair, 2, label_value.as_bytes());
        bytes(&mut exemplar, 1, &pair);
    }
    double(&mut exemplar, 2, exemplar_value);
    let mut timestamp = Vec::new();
    uint(&mut timestamp, 1, seconds);
    bytes(&mut exemplar, 3, &timestamp);
    let mut out = Vec::new();
    double(&mut out, 1, value);
    bytes(&mut out, 2, &exemplar);
    out
}

/// `Summary` with count, sum and `(quantile, value)` pairs.
pub fn summary(count: u64, sum: f64, quantiles: &[(f64, f64)]) -> Vec<u8> {
    let mut out = Vec::new();
    uint(&mut out, 1, count);
    double(&mut out, 2, sum);
    for (q, v) in quantiles {
        let mut quantile = Vec::new();
        double(&mut quantile, 1, *q);
        double(&mut quantile, 2, *v);
        bytes(&mut out, 3, &quantile);
    }
    out
}

/// `Histogram` with count, sum and `(upper bound, cumulative count)` buckets.
pub fn histogram(count: u64, sum: f64, buckets: &[(f64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    uint(&mut out, 1, count);
    double(&mut out, 2, sum);
    for (bound, cumulative) in buckets {
        let mut bucket = Vec::new();
        uint(&mut bucket, 1, *cumulative);
        double(&mut bucket, 2, *bound);
        bytes(&mut out, 3, &bucket);
    }
    out
}

/// Messages, each preceded by its varint length.
pub fn delimited(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for message in messages {
        varint(&mut out, message.len() as u64);
        out.extend_from_slice(message);
    }
    out
}

/// Splits a delimited stream into its messages; `None` if it is cut short.
pub fn split_delimited(mut data: &[u8]) -> Option<Vec<&[u8]>> {
    let mut messages = Vec::new();
    while !data.is_empty() {
        let (len, used) = read_varint(data)?;
        let len = usize::try_from(len).ok()?;
        data = &data[used..];
        messages.push(data.get(..len)?);
        data = &data[len..];
    }
    Some(messages)
}

fn read_varint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0_u64;
    for (i, byte) in data.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The `name` (field 1) of an encoded `MetricFamily`, which writers put first.
pub fn family_name(message: &[u8]) -> Option<String> {
    if message.first() != Some(&0x0a) {
        return None;
    }
    let (len, used) = read_varint(&message[1..])?;
    let name = message.get(1 + used..1 + used + usize::try_from(len).ok()?)?;
    Some(String::from_utf8_lossy(name).into_owned())
}

/// The families of a delimited exposition whose names do not start with `prefix`, each
/// still encoded; `None` if the stream is cut short or a family has no leading name.
pub fn families_except(data: &[u8], prefix: &str) -> Option<Vec<Vec<u8>>> {
    split_delimited(data)?
        .into_iter()
        .filter_map(|message| match family_name(message) {
            Some(name) if name.starts_with(prefix) => None,
            Some(_) => Some(Some(message.to_vec())),
            None => Some(None),
        })
        .collect()
}
