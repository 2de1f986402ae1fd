//! The exposition: what `GET /metrics` writes.
//!
//! Text format 0.0.4 byte for byte as Go's `expfmt.MetricFamilyToText` writes it (so
//! scrapers and diff-based tests see no difference from the pushgateway), or delimited
//! protobuf or OpenMetrics ([`crate::openmetrics`]) when the `Accept` header asks for it,
//! negotiated like Go's `expfmt.NegotiateIncludingOpenMetrics`.
//! Sorting follows `client_golang`'s gatherer. Writing appends to one `Vec<u8>` without
//! allocating per sample, because a scrape of the whole store is the hot path.

use std::cmp::Ordering;
use std::io::Write as _;

use crate::codec::protobuf::encode_delimited;
use crate::model::{LabelPair, Metric, MetricFamily, MetricType};

/// `Content-Type` of the text exposition (without the escaping parameter).
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of the delimited protobuf exposition (without the escaping parameter).
pub const CONTENT_TYPE_PROTOBUF: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// The name escaping a scrape negotiated (`escaping=` of `Accept`, Prometheus 3), as
/// the pushgateway ≥ 1.8 names it in its `Content-Type`. Legacy names are the same in
/// every scheme; names beyond them (`--push.enable-utf8-names`) are escaped as
/// [`crate::names::escape`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escaping {
    /// Names as they are, quoted in the text formats when not legacy.
    AllowUtf8,
    /// Invalid characters become `_` (the default of pushgateway 1.11).
    Underscores,
    /// `.` becomes `_dot_`, `_` becomes `__`, other invalid characters `__`.
    Dots,
    /// `U__` and code points (the default of pushgateway 1.8 and 1.9, prometheus/common
    /// 0.5x).
    Values,
}

impl Escaping {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "allow-utf-8" => Some(Self::AllowUtf8),
            "underscores" => Some(Self::Underscores),
            "dots" => Some(Self::Dots),
            "values" => Some(Self::Values),
            _ => None,
        }
    }
}

/// What a scrape's `Accept` negotiated: the format and the name escaping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub format: Format,
    pub escaping: Escaping,
}

impl Negotiated {
    /// The `Content-Type` header: the format's, with `; escaping=…` as upstream ≥ 1.8.
    #[must_use]
    pub fn content_type(self) -> String {
        let escaping = match self.escaping {
            Escaping::AllowUtf8 => "allow-utf-8",
            Escaping::Underscores => "underscores",
            Escaping::Dots => "dots",
            Escaping::Values => "values",
        };
        format!("{}; escaping={escaping}", self.format.content_type())
    }
}

/// An exposition format negotiated from `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Text format 0.0.4.
    Text,
    /// Varint length-delimited protobuf.
    DelimitedProtobuf,
    /// OpenMetrics text (`version` 1.0.0 or 0.0.1 in the `Content-Type`; the same body).
    OpenMetrics { version_1_0: bool },
}

impl Format {
    /// The `Content-Type` header value for this format.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => CONTENT_TYPE_TEXT,
            Format::DelimitedProtobuf => CONTENT_TYPE_PROTOBUF,
            Format::OpenMetrics { version_1_0: true } => crate::openmetrics::CONTENT_TYPE,
            Format::OpenMetrics { version_1_0: false } => {
                "application/openmetrics-text; version=0.0.1; charset=utf-8"
            }
        }
    }

    /// Appends `families` to `out` in this format; families without metrics are left
    /// out in all, as `client_golang`'s gatherer drops them. OpenMetrics' final `# EOF`
    /// is the caller's (it ends the whole exposition).
    pub fn write(self, families: &[MetricFamily], out: &mut Vec<u8>) {
        match self {
            Format::Text => write_text(families, out),
            Format::DelimitedProtobuf => {
                for family in families.iter().filter(|f| !f.metric.is_empty()) {
                    encode_delimited(std::slice::from_ref(family), out);
                }
            }
            Format::OpenMetrics { .. } => crate::openmetrics::write(families, out),
        }
    }
}

/// Picks the format from an `Accept` header like Go's `expfmt.NegotiateIncludingOpenMetrics`
/// (v0.54): the clauses are ranked by `q` and specificity, and the first that names
/// delimited protobuf, OpenMetrics or `text/plain` (version 0.0.4 or none) decides;
/// otherwise text. (The pushgateway uses plain `Negotiate` and never serves
/// OpenMetrics.) The escaping is the last valid `escaping=` seen in rank order up to and
/// including the deciding clause — so a preferred clause that did not match still
/// passes its escaping on, as upstream's loop does — else `values`.
///
/// Go would also serve protobuf's text and compact-text encodings; we answer those
/// clients with the text format.
#[must_use]
pub fn negotiate(accept: Option<&str>) -> Negotiated {
    negotiate_defaulting(accept, Escaping::Values)
}

/// [`negotiate`], with `default` as the escaping when no clause names one (see
/// [`crate::names::NameRules::default_escaping`]).
#[must_use]
pub fn negotiate_defaulting(accept: Option<&str>, default: Escaping) -> Negotiated {
    let mut escaping = default;
    let decided = |format, escaping| Negotiated { format, escaping };
    for clause in parse_accept(accept.unwrap_or_default()) {
        if let Some(asked) = clause.param("escaping").and_then(Escaping::parse) {
            escaping = asked;
        }
        if clause.media_type == "application/vnd.google.protobuf"
            && clause.param("proto") == Some("io.prometheus.client.MetricFamily")
        {
            match clause.param("encoding") {
                Some("delimited") => return decided(Format::DelimitedProtobuf, escaping),
                Some("text" | "compact-text") => return decided(Format::Text, escaping),
                _ => {}
            }
        }
        let version = clause.param("version").unwrap_or_default();
        // As prometheus/common's NegotiateIncludingOpenMetrics: 1.0.0, 0.0.1, any 1.x, or
        // no version (taken as 0.0.1).
        if clause.media_type == "application/openmetrics-text"
            && (version.is_empty() || version == "0.0.1" || version.starts_with("1."))
        {
            let version_1_0 = version.starts_with("1.");
            return decided(Format::OpenMetrics { version_1_0 }, escaping);
        }
        if clause.media_type == "text/plain" && (version.is_empty() || version == "0.0.4") {
            return decided(Format::Text, escaping);
        }
    }
    decided(Format::Text, escaping)
}

/// One clause of an `Accept` header.
struct AcceptClause<'a> {
    /// `type/subtype`, as written.
    media_type: String,
    main: &'a str,
    sub: &'a str,
    q: f64,
    params: Vec<(&'a str, &'a str)>,
}

impl AcceptClause<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
    }
}

/// Clauses of an `Accept` header that take part in the negotiation; later ones are
/// ignored. Scrapers send a handful; the sort below is quadratic in their number, and
/// anyone may send `GET /metrics`.
pub const MAX_ACCEPT_CLAUSES: usize = 32;

/// goautoneg's `ParseAccept`, with its ranking and its insertion sort (what Go's
/// `sort.Sort` does for short lists), so that ties fall the same way; only the first
/// [`MAX_ACCEPT_CLAUSES`] clauses count.
fn parse_accept(header: &str) -> Vec<AcceptClause<'_>> {
    let mut clauses: Vec<AcceptClause<'_>> = Vec::new();
    for part in header.split(',').take(MAX_ACCEPT_CLAUSES) {
        let mut pieces = part.trim_matches(' ').split(';');
        let range = pieces.next().unwrap_or_default();
        let mut halves = range.split('/');
        let main = halves.next().unwrap_or_default().trim_matches(' ');
        let sub = match (halves.next(), halves.next()) {
            (None, None) if main == "*" => "*",
            (Some(sub), None) => sub.trim_matches(' '),
            _ => continue,
        };
        let mut clause = AcceptClause {
            media_type: format!("{main}/{sub}"),
            main,
            sub,
            q: 1.0,
            params: Vec::new(),
        };
        for param in pieces {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let key = key.trim_matches(' ');
            if key == "q" {
                // Go ignores the parse error and keeps the zero it returns; the value
                // is not trimmed there either.
                clause.q = crate::codec::text::parse_go_float(value.as_bytes())
                    .filter(|q| q.is_finite())
                    .unwrap_or(0.0);
            } else {
                clause.params.push((key, value.trim_matches(' ')));
            }
        }
        clauses.push(clause);
    }
    let ranks_before = |a: &AcceptClause<'_>, b: &AcceptClause<'_>| {
        a.q > b.q || (a.main != "*" && b.main == "*") || (a.sub != "*" && b.sub == "*")
    };
    for i in 1..clauses.len() {
        let mut j = i;
        while j > 0 && ranks_before(&clauses[j], &clauses[j - 1]) {
            clauses.swap(j, j - 1);
            j -= 1;
        }
    }
    clauses
}

/// Sorts families by name, and each family's metrics by number of labels, then label
/// values in order, then timestamp (missing last), as `client_golang`'s gatherer does.
///
/// Label pairs are compared by position, so they are expected to be sorted by name
/// within each metric already (the store keeps them that way).
pub fn sort_families(families: &mut [MetricFamily]) {
    families.sort_by(|a, b| a.name.cmp(&b.name));
    for family in families {
        family.metric.sort_by(compare_metrics);
    }
}

fn compare_metrics(a: &Metric, b: &Metric) -> Ordering {
    a.label
        .len()
        .cmp(&b.label.len())
        .then_with(|| {
            a.label
                .iter()
                .zip(&b.label)
                .map(|(x, y)| x.value.cmp(&y.value))
                .find(|order| order.is_ne())
                .unwrap_or(Ordering::Equal)
        })
        .then_with(|| match (a.timestamp_ms, b.timestamp_ms) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
}

/// Appends `families` to `out` as text format 0.0.4, in the order given.
///
/// Go refuses to write what it cannot express and fails the scrape; here a scrape never
/// fails, so what Go would reject is left out instead: families without a name or
/// metrics, and metrics lacking the value of their family's type (the store does not
/// let such pushes in). A family without a type is a counter, as Go's `GetType` says;
/// gauge histograms are written as histograms, as newer Go versions do.
pub fn write_text(families: &[MetricFamily], out: &mut Vec<u8>) {
    for family in families {
        write_family(family, out);
    }
}

fn write_family(family: &MetricFamily, out: &mut Vec<u8>) {
    let name = family.name.as_deref().unwrap_or_default();
    if name.is_empty() || family.metric.is_empty() {
        return;
    }
    let kind = match family.r#type.map(MetricType::try_from) {
        None => MetricType::Counter,
        Some(Ok(kind)) => kind,
        Some(Err(_)) => return,
    };
    write_header(name, family.help.as_deref(), kind, out);
    if crate::names::has_utf8_names(family) {
        for metric in &family.metric {
            write_metric_quoting(name, kind, metric, out);
        }
    } else {
        for metric in &family.metric {
            write_metric(name, kind, metric, out);
        }
    }
}

/// The sample lines of one metric of a family called `name` of type `kind`.
pub(crate) fn write_metric(name: &str, kind: MetricType, metric: &Metric, out: &mut Vec<u8>) {
    write_metric_with(name, kind, metric, out, &|_, _| false);
}

/// [`write_metric`] for a family with non-legacy names, as prometheus/common ≥ 0.61
/// writes them (`allow-utf-8`): such a metric name goes first inside the braces,
/// `{"my.metric",a="b"}`, and such a label name is quoted, `"lbl.x"="v"`.
fn write_metric_quoting(name: &str, kind: MetricType, metric: &Metric, out: &mut Vec<u8>) {
    let quote_name = !crate::names::is_legacy_name(name);
    let sample = Sample {
        name,
        metric,
        replace: &|_, _| false,
    };
    sample.write_lines(kind, out, &|out, suffix, extra, value| {
        sample.write_quoting(out, suffix, extra, value, quote_name);
    });
}

/// [`write_metric`], with each label first offered to `replace`: when it returns true it
/// has written the label's stand-in itself (the store writes a group's labels as
/// references to the group, see `store::stored`), and the label is not written out.
pub(crate) fn write_metric_with(
    name: &str,
    kind: MetricType,
    metric: &Metric,
    out: &mut Vec<u8>,
    replace: &dyn Fn(&LabelPair, &mut Vec<u8>) -> bool,
) {
    let sample = Sample {
        name,
        metric,
        replace,
    };
    sample.write_lines(kind, out, &|out, suffix, extra, value| {
        sample.write(out, suffix, extra, value);
    });
}

/// Writes one sample line: the name's suffix, an extra label (`quantile`, `le`) and
/// the value.
type LineWriter<'a> = dyn Fn(&mut Vec<u8>, &str, Option<(&str, f64)>, f64) + 'a;

impl Sample<'_> {
    /// The lines of a metric of type `kind`, each written by `line`.
    fn write_lines(&self, kind: MetricType, out: &mut Vec<u8>, line: &LineWriter<'_>) {
        let metric = self.metric;
        let sample = Line(line);
        match kind {
            MetricType::Counter => {
                if let Some(counter) = &metric.counter {
                    sample.write(out, "", None, counter.value.unwrap_or_default());
                }
            }
            MetricType::Gauge => {
                if let Some(gauge) = &metric.gauge {
                    sample.write(out, "", None, gauge.value.unwrap_or_default());
                }
            }
            MetricType::Untyped => {
                if let Some(untyped) = &metric.untyped {
                    sample.write(out, "", None, untyped.value.unwrap_or_default());
                }
            }
            MetricType::Summary => {
                let Some(summary) = &metric.summary else {
                    return;
                };
                for quantile in &summary.quantile {
                    sample.write(
                        out,
                        "",
                        Some(("quantile", quantile.quantile.unwrap_or_default())),
                        quantile.value.unwrap_or_default(),
                    );
                }
                sample.write(out, "_sum", None, summary.sample_sum.unwrap_or_default());
                let count = count_as_float(summary.sample_count, None);
                sample.write(out, "_count", None, count);
            }
            MetricType::Histogram | MetricType::GaugeHistogram => {
                let Some(histogram) = &metric.histogram else {
                    return;
                };
                let count = count_as_float(histogram.sample_count, histogram.sample_count_float);
                let mut inf_seen = false;
                for bucket in &histogram.bucket {
                    let bound = bucket.upper_bound.unwrap_or_default();
                    let cumulative =
                        count_as_float(bucket.cumulative_count, bucket.cumulative_count_float);
                    sample.write(out, "_bucket", Some(("le", bound)), cumulative);
                    inf_seen |= bound == f64::INFINITY;
                }
                // The +Inf bucket is implied by the count when the pusher left it out.
                if !inf_seen {
                    sample.write(out, "_bucket", Some(("le", f64::INFINITY)), count);
                }
                sample.write(out, "_sum", None, histogram.sample_sum.unwrap_or_default());
                sample.write(out, "_count", None, count);
            }
        }
    }
}

/// A [`LineWriter`] with the call shape of [`Sample::write`].
struct Line<'a, 'b>(&'a LineWriter<'b>);

impl Line<'_, '_> {
    fn write(&self, out: &mut Vec<u8>, suffix: &str, extra: Option<(&str, f64)>, value: f64) {
        (self.0)(out, suffix, extra, value);
    }
}

/// The `# HELP` (if any) and `# TYPE` lines of a family.
pub(crate) fn write_header(name: &str, help: Option<&str>, kind: MetricType, out: &mut Vec<u8>) {
    if let Some(help) = help {
        out.extend_from_slice(b"# HELP ");
        write_name(out, name);
        out.push(b' ');
        write_escaped(out, help, false);
        out.push(b'\n');
    }
    out.extend_from_slice(b"# TYPE ");
    write_name(out, name);
    out.extend_from_slice(match kind {
        MetricType::Counter => b" counter\n".as_slice(),
        MetricType::Gauge => b" gauge\n",
        MetricType::Summary => b" summary\n",
        MetricType::Untyped => b" untyped\n",
        MetricType::Histogram | MetricType::GaugeHistogram => b" histogram\n",
    });
}

/// Counts are integers on the wire but printed as floats, like Go's `float64(count)`;
/// a non-zero float count (newer `client_model`) takes precedence, as in newer Go.
#[allow(clippy::cast_precision_loss)]
fn count_as_float(count: Option<u64>, count_float: Option<f64>) -> f64 {
    match count_float {
        Some(value) if value != 0.0 => value,
        _ => count.unwrap_or_default() as f64,
    }
}

/// One metric of a family, written as one or more sample lines.
struct Sample<'a> {
    name: &'a str,
    metric: &'a Metric,
    replace: &'a dyn Fn(&LabelPair, &mut Vec<u8>) -> bool,
}

impl Sample<'_> {
    fn write(&self, out: &mut Vec<u8>, suffix: &str, extra: Option<(&str, f64)>, value: f64) {
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(suffix.as_bytes());
        write_labels(out, &self.metric.label, extra, self.replace);
        out.push(b' ');
        write_float(out, value);
        if let Some(timestamp) = self.metric.timestamp_ms {
            out.push(b' ');
            write_int(out, timestamp);
        }
        out.push(b'\n');
    }
}

impl Sample<'_> {
    /// [`Sample::write`] with non-legacy names quoted (and a quoted metric name inside
    /// the braces).
    fn write_quoting(
        &self,
        out: &mut Vec<u8>,
        suffix: &str,
        extra: Option<(&str, f64)>,
        value: f64,
        quote_name: bool,
    ) {
        let mut separator = b'{';
        if quote_name {
            out.extend_from_slice(b"{\"");
            write_label_value(out, self.name);
            write_label_value(out, suffix);
            out.push(b'"');
            separator = b',';
        } else {
            out.extend_from_slice(self.name.as_bytes());
            out.extend_from_slice(suffix.as_bytes());
        }
        for label in &self.metric.label {
            out.push(separator);
            separator = b',';
            write_name(out, label.name.as_deref().unwrap_or_default());
            out.extend_from_slice(b"=\"");
            write_label_value(out, label.value.as_deref().unwrap_or_default());
            out.push(b'"');
        }
        if let Some((name, value)) = extra {
            out.push(separator);
            separator = b',';
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"=\"");
            write_float(out, value);
            out.push(b'"');
        }
        if separator == b',' {
            out.push(b'}');
        }
        out.push(b' ');
        write_float(out, value);
        if let Some(timestamp) = self.metric.timestamp_ms {
            out.push(b' ');
            write_int(out, timestamp);
        }
        out.push(b'\n');
    }
}

/// A metric or label name: as it is when legacy, else quoted (prometheus/common's
/// `writeName`).
pub(crate) fn write_name(out: &mut Vec<u8>, name: &str) {
    if crate::names::is_legacy_name(name) {
        out.extend_from_slice(name.as_bytes());
    } else {
        out.push(b'"');
        write_label_value(out, name);
        out.push(b'"');
    }
}

fn write_labels(
    out: &mut Vec<u8>,
    labels: &[LabelPair],
    extra: Option<(&str, f64)>,
    replace: &dyn Fn(&LabelPair, &mut Vec<u8>) -> bool,
) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    let mut separator = b'{';
    for label in labels {
        out.push(separator);
        separator = b',';
        if replace(label, out) {
            continue;
        }
        out.extend_from_slice(label.name.as_deref().unwrap_or_default().as_bytes());
        out.extend_from_slice(b"=\"");
        write_label_value(out, label.value.as_deref().unwrap_or_default());
        out.push(b'"');
    }
    if let Some((name, value)) = extra {
        out.push(separator);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=\"");
        write_float(out, value);
        out.push(b'"');
    }
    out.push(b'}');
}

/// A label value as it appears between the quotes of a sample line.
pub(crate) fn write_label_value(out: &mut Vec<u8>, value: &str) {
    write_escaped(out, value, true);
}

/// Escapes `\` and newline (HELP text), and with `quote` also `"` (label values).
pub(crate) fn write_escaped(out: &mut Vec<u8>, text: &str, quote: bool) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'"' if quote => b"\\\"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn write_int(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    write_uint(out, value.unsigned_abs());
}

pub(crate) fn write_uint(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0_u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // The remainder is below 10, so the cast is exact.
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Formats a float like Go's `expfmt` writes sample values: `strconv.FormatFloat(f,
/// 'g', -1, 64)` (shortest digits that round-trip, exponent form below 1e-4 and from
/// 1e6 on), except that -0 prints as `0`; infinities print as `+Inf` and `-Inf`.
#[must_use]
pub fn format_float(value: f64) -> String {
    let mut out = Vec::with_capacity(24);
    write_float(&mut out, value);
    // Only ASCII digits, signs, '.', 'e', "NaN" and "Inf" are written.
    String::from_utf8(out).unwrap_or_default()
}

/// Largest magnitude for which `%g` prints an integer without an exponent.
const PLAIN_INTEGER_LIMIT: f64 = 1e6;

pub(crate) fn write_float(out: &mut Vec<u8>, value: f64) {
    if value == 0.0 {
        out.push(b'0');
        return;
    }
    if value.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if value.is_infinite() {
        out.extend_from_slice(if value > 0.0 { b"+Inf" } else { b"-Inf" });
        return;
    }
    // Fast path for the common integer values: no formatting machinery at all.
    if value.fract() == 0.0 && value.abs() < PLAIN_INTEGER_LIMIT {
        #[allow(clippy::cast_possible_truncation)]
        let integer = value as i64;
        write_int(out, integer);
        return;
    }
    write_float_general(out, value);
}

/// Rust's `{:e}` gives the same shortest round-trip digits as Go; only the layout
/// differs, so the digits and exponent are taken from it and laid out Go's way.
fn write_float_general(out: &mut Vec<u8>, value: f64) {
    let mut buffer = [0_u8; 32];
    let written = {
        let mut cursor = std::io::Cursor::new(&mut buffer[..]);
        // The longest `{:e}` of an f64 is 24 bytes, so this always fits.
        if write!(cursor, "{:e}", value.abs()).is_err() {
            return;
        }
        usize::try_from(cursor.position()).unwrap_or_default()
    };
    let text = &buffer[..written];
    let Some(e_at) = text.iter().position(|&b| b == b'e') else {
        return;
    };
    let (mantissa, exponent) = (&text[..e_at], &text[e_at + 1..]);
    let mut digits = [0_u8; 20];
    let mut count = 0;
    for &byte in mantissa.iter().filter(|b| b.is_ascii_digit()) {
        digits[count] = byte;
        count += 1;
    }
    let digits = &digits[..count];
    let exponent: i32 = std::str::from_utf8(exponent)
        .ok()
        .and_then(|e| e.parse().ok())
        .unwrap_or_default();
    if value < 0.0 {
        out.push(b'-');
    }
    if !(-4..6).contains(&exponent) {
        // d[.ddd]e±XX, at least two exponent digits.
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exponent < 0 { b'-' } else { b'+' });
        if exponent.abs() < 10 {
            out.push(b'0');
        }
        write_uint(out, u64::from(exponent.unsigned_abs()));
    } else if exponent < 0 {
        // 0.000ddd
        out.extend_from_slice(b"0.");
        for _ in 0..(-exponent - 1) {
            out.push(b'0');
        }
        out.extend_from_slice(digits);
    } else {
        // ddd.ddd or ddd000 (exponent is 0..=5 here, so the cast is exact)
        let int_len = exponent.unsigned_abs() as usize + 1;
        if digits.len() > int_len {
            out.extend_from_slice(&digits[..int_len]);
            out.push(b'.');
            out.extend_from_slice(&digits[int_len..]);
        } else {
            out.extend_from_slice(digits);
            for _ in digits.len()..int_len {
                out.push(b'0');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Bucket, Counter, Gauge, Histogram, Quantile, Summary, Untyped};

    #[test]
    fn format_float_matches_go() {
        // Expected texts are what Debian's pushgateway 1.5.1 printed for these values.
        let table: &[(&str, f64, &str)] = &[
            ("zero", 0.0, "0"),
            ("negative zero", -0.0, "0"),
            ("one", 1.0, "1"),
            ("minus one", -1.0, "-1"),
            ("tenth", 0.1, "0.1"),
            ("1e-5 uses exponent", 1e-5, "1e-05"),
            ("1e-4 stays plain", 1e-4, "0.0001"),
            ("small with digits", 0.000_123_4, "0.0001234"),
            ("six digits plain", 123_456.0, "123456"),
            ("999999 plain", 999_999.0, "999999"),
            ("1e6 uses exponent", 1e6, "1e+06"),
            ("seven digits", 1_234_567.0, "1.234567e+06"),
            ("eight digits", 12_345_678.0, "1.2345678e+07"),
            ("1e21", 1e21, "1e+21"),
            ("1e22", 1e22, "1e+22"),
            ("three-digit exponent", 1.5e300, "1.5e+300"),
            ("negative tiny", -2.5e-300, "-2.5e-300"),
            ("smallest subnormal", 5e-324, "5e-324"),
            ("subnormal", 1e-320, "1e-320"),
            (
                "smallest normal",
                2.225_073_858_507_201_4e-308,
                "2.2250738585072014e-308",
            ),
            ("largest", f64::MAX, "1.7976931348623157e+308"),
            ("NaN", f64::NAN, "NaN"),
            ("positive infinity", f64::INFINITY, "+Inf"),
            ("negative infinity", f64::NEG_INFINITY, "-Inf"),
            ("half", 0.5, "0.5"),
            ("negative half", -0.5, "-0.5"),
            ("100000", 100_000.0, "100000"),
            ("fraction below 1e6", 123_456.7, "123456.7"),
            ("1e-6", 0.000_001, "1e-06"),
            ("2e-7", 2e-7, "2e-07"),
            (
                "u64 max as float",
                18_446_744_073_709_551_615.0,
                "1.8446744073709552e+19",
            ),
            (
                "2^53 + 1 rounds",
                9_007_199_254_740_993.0,
                "9.007199254740992e+15",
            ),
            ("shortest round trip", 0.1 + 0.2, "0.30000000000000004"),
            ("short fraction", 3.25, "3.25"),
            ("long fraction", 1234.5678, "1234.5678"),
            ("ten", 10.0, "10"),
            ("negative with fraction", -1_234_567.125, "-1.234567125e+06"),
        ];
        for (name, value, want) in table {
            assert_eq!(format_float(*value), *want, "{name}");
        }
    }

    fn labelled(labels: &[(&str, &str)]) -> Metric {
        Metric {
            label: labels.iter().map(|(n, v)| LabelPair::new(*n, *v)).collect(),
            ..Metric::default()
        }
    }

    fn family(
        name: &str,
        kind: MetricType,
        help: Option<&str>,
        metric: Vec<Metric>,
    ) -> MetricFamily {
        MetricFamily {
            name: Some(name.to_owned()),
            help: help.map(str::to_owned),
            r#type: Some(kind as i32),
            metric,
            unit: None,
        }
    }

    fn text(families: &[MetricFamily]) -> String {
        let mut out = Vec::new();
        write_text(families, &mut out);
        String::from_utf8(out).expect("the exposition is UTF-8")
    }

    fn gauge(value: f64) -> Metric {
        Metric {
            gauge: Some(Gauge { value: Some(value) }),
            ..labelled(&[("a", "x\"y\\z\nw"), ("job", "j")])
        }
    }

    fn summary() -> Metric {
        Metric {
            summary: Some(Box::new(Summary {
                sample_count: Some(4),
                sample_sum: Some(3.5),
                quantile: vec![Quantile {
                    quantile: Some(0.99),
                    value: Some(7.0),
                }],
                created_timestamp: None,
            })),
            ..labelled(&[("job", "j")])
        }
    }

    fn histogram(with_inf: bool) -> Metric {
        let mut bucket = vec![Bucket {
            cumulative_count: Some(1),
            upper_bound: Some(0.25),
            ..Bucket::default()
        }];
        if with_inf {
            bucket.push(Bucket {
                cumulative_count: Some(3),
                upper_bound: Some(f64::INFINITY),
                ..Bucket::default()
            });
        }
        Metric {
            histogram: Some(Box::new(Histogram {
                sample_count: Some(3),
                sample_sum: Some(1.5),
                bucket,
                ..Histogram::default()
            })),
            ..labelled(&[("job", "j")])
        }
    }

    #[test]
    fn write_text_matches_go_layout() {
        let counter = Metric {
            counter: Some(Counter {
                value: Some(2.0),
                ..Counter::default()
            }),
            timestamp_ms: Some(0),
            ..labelled(&[])
        };
        let untyped = Metric {
            untyped: Some(Untyped { value: Some(1e-5) }),
            ..labelled(&[("i", "")])
        };
        let table: Vec<(&str, MetricFamily, &str)> = vec![
            (
                "gauge with help and escapes",
                family(
                    "g",
                    MetricType::Gauge,
                    Some("a \\ b\nc \"q\""),
                    vec![gauge(1.5)],
                ),
                "# HELP g a \\\\ b\\nc \"q\"\n# TYPE g gauge\n\
                 g{a=\"x\\\"y\\\\z\\nw\",job=\"j\"} 1.5\n",
            ),
            (
                "counter without labels, zero timestamp kept",
                family("c", MetricType::Counter, None, vec![counter]),
                "# TYPE c counter\nc 2 0\n",
            ),
            (
                "untyped says so",
                family("u", MetricType::Untyped, None, vec![untyped]),
                "# TYPE u untyped\nu{i=\"\"} 1e-05\n",
            ),
            (
                "empty help is still written",
                family(
                    "e",
                    MetricType::Untyped,
                    Some(""),
                    vec![Metric {
                        untyped: Some(Untyped { value: Some(1.0) }),
                        ..labelled(&[])
                    }],
                ),
                "# HELP e \n# TYPE e untyped\ne 1\n",
            ),
            (
                "summary expands to quantiles, sum, count",
                family("s", MetricType::Summary, None, vec![summary()]),
                "# TYPE s summary\ns{job=\"j\",quantile=\"0.99\"} 7\n\
                 s_sum{job=\"j\"} 3.5\ns_count{job=\"j\"} 4\n",
            ),
            (
                "histogram gets an implied +Inf bucket",
                family("h", MetricType::Histogram, None, vec![histogram(false)]),
                "# TYPE h histogram\nh_bucket{job=\"j\",le=\"0.25\"} 1\n\
                 h_bucket{job=\"j\",le=\"+Inf\"} 3\nh_sum{job=\"j\"} 1.5\nh_count{job=\"j\"} 3\n",
            ),
            (
                "histogram with its own +Inf bucket",
                family("h", MetricType::Histogram, None, vec![histogram(true)]),
                "# TYPE h histogram\nh_bucket{job=\"j\",le=\"0.25\"} 1\n\
                 h_bucket{job=\"j\",le=\"+Inf\"} 3\nh_sum{job=\"j\"} 1.5\nh_count{job=\"j\"} 3\n",
            ),
            (
                "family without metrics is left out",
                family("none", MetricType::Gauge, Some("h"), vec![]),
                "",
            ),
            (
                "metric without its type's value is left out",
                family(
                    "g",
                    MetricType::Gauge,
                    None,
                    vec![labelled(&[("a", "b")]), gauge(1.0)],
                ),
                "# TYPE g gauge\ng{a=\"x\\\"y\\\\z\\nw\",job=\"j\"} 1\n",
            ),
        ];
        for (name, family, want) in table {
            assert_eq!(text(&[family]), want, "{name}");
        }
    }

    #[test]
    fn sort_families_orders_like_client_golang() {
        let metric = |labels: &[(&str, &str)], timestamp: Option<i64>| Metric {
            timestamp_ms: timestamp,
            ..labelled(labels)
        };
        let mut families = vec![
            family(
                "b",
                MetricType::Gauge,
                None,
                vec![
                    metric(&[("a", "2")], None),
                    metric(&[("a", "1"), ("b", "9")], None),
                    metric(&[("a", "1")], None),
                    metric(&[("a", "10")], None),
                    metric(&[("a", "1")], Some(5)),
                    metric(&[], None),
                ],
            ),
            family("a", MetricType::Gauge, None, vec![]),
        ];
        sort_families(&mut families);
        let names: Vec<_> = families
            .iter()
            .map(|f| f.name.clone().expect("named"))
            .collect();
        assert_eq!(names, ["a", "b"], "families by name");
        let order: Vec<(Vec<&str>, Option<i64>)> = families[1]
            .metric
            .iter()
            .map(|m| {
                let values = m
                    .label
                    .iter()
                    .map(|l| l.value.as_deref().expect("value"))
                    .collect();
                (values, m.timestamp_ms)
            })
            .collect();
        let want: Vec<(Vec<&str>, Option<i64>)> = vec![
            (vec![], None),
            (vec!["1"], Some(5)),
            (vec!["1"], None),
            (vec!["10"], None),
            (vec!["2"], None),
            (vec!["1", "9"], None),
        ];
        assert_eq!(
            order, want,
            "fewer labels first, then values bytewise, timestamped first"
        );
    }

    #[test]
    fn negotiate_like_go() {
        let proto = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
        let table: Vec<(&str, Option<String>, Format)> = vec![
            ("no header", None, Format::Text),
            ("empty", Some(String::new()), Format::Text),
            ("anything", Some("*/*".to_owned()), Format::Text),
            ("plain text", Some("text/plain".to_owned()), Format::Text),
            ("delimited protobuf", Some(proto.to_owned()), Format::DelimitedProtobuf),
            (
                "Prometheus' own Accept",
                Some(format!("{proto};q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1")),
                Format::DelimitedProtobuf,
            ),
            (
                "text preferred by q",
                Some(format!("{proto};q=0.5,text/plain;version=0.0.4")),
                Format::Text,
            ),
            (
                "unknown text version skipped",
                Some(format!("text/plain;version=9,{proto};q=0.1")),
                Format::DelimitedProtobuf,
            ),
            (
                "protobuf text encoding answered with text",
                Some(
                    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"
                        .to_owned(),
                ),
                Format::Text,
            ),
            (
                "spaces around parameters",
                Some(
                    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
                        .to_owned(),
                ),
                Format::DelimitedProtobuf,
            ),
            (
                "openmetrics 1.0.0",
                Some("application/openmetrics-text;version=1.0.0".to_owned()),
                Format::OpenMetrics { version_1_0: true },
            ),
            (
                "openmetrics 0.0.1",
                Some("application/openmetrics-text; version=0.0.1".to_owned()),
                Format::OpenMetrics { version_1_0: false },
            ),
            (
                "openmetrics of an unknown version skipped",
                Some("application/openmetrics-text;version=2.0.0,text/plain;q=0.5".to_owned()),
                Format::Text,
            ),
        ];
        for (name, accept, want) in table {
            assert_eq!(negotiate(accept.as_deref()).format, want, "{name}");
        }
    }

    /// Upstream ≥ 1.8 names the escaping in `Content-Type`: `values` by default, the
    /// deciding clause's, or one carried over from a preferred clause that did not match.
    #[test]
    fn escaping_is_negotiated_like_go() {
        let table = [
            (None, "text/plain; version=0.0.4; charset=utf-8; escaping=values"),
            (
                // Prometheus 3's default scrape Accept: OpenMetrics 1.0.0 with allow-utf-8.
                Some("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"),
                "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8",
            ),
            (
                // Prometheus 2's: no escaping anywhere.
                Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=values",
            ),
            (
                // A text 0.0.4 answer still takes the escaping of a preferred clause.
                Some("text/plain;version=1.0.0;escaping=allow-utf-8;q=0.9,text/plain;version=0.0.4;q=0.2"),
                "text/plain; version=0.0.4; charset=utf-8; escaping=allow-utf-8",
            ),
            (
                Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;escaping=underscores"),
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; escaping=underscores",
            ),
            (
                // An unknown scheme is ignored.
                Some("text/plain;version=0.0.4;escaping=shout"),
                "text/plain; version=0.0.4; charset=utf-8; escaping=values",
            ),
            (
                // A later-ranked clause's escaping does not reach back.
                Some("text/plain;version=0.0.4;q=0.9,*/*;escaping=dots;q=0.1"),
                "text/plain; version=0.0.4; charset=utf-8; escaping=values",
            ),
        ];
        for (accept, want) in table {
            assert_eq!(negotiate(accept).content_type(), want, "{accept:?}");
        }
    }

    /// With UTF-8 names on, a scrape that names no escaping gets `underscores`, as
    /// from pushgateway 1.11; one that names it gets what it asked for.
    #[test]
    fn default_escaping_is_the_callers() {
        let table = [
            (None, Escaping::Underscores),
            (Some("text/plain;version=0.0.4"), Escaping::Underscores),
            (
                Some("text/plain;version=0.0.4;escaping=allow-utf-8"),
                Escaping::AllowUtf8,
            ),
            (
                Some("text/plain;version=0.0.4;escaping=values"),
                Escaping::Values,
            ),
        ];
        for (accept, want) in table {
            let got = negotiate_defaulting(accept, Escaping::Underscores).escaping;
            assert_eq!(got, want, "{accept:?}");
        }
    }

    #[test]
    fn protobuf_format_skips_empty_families() {
        let families = vec![
            family("empty", MetricType::Gauge, None, vec![]),
            family(
                "g",
                MetricType::Gauge,
                None,
                vec![Metric {
                    gauge: Some(Gauge { value: Some(1.0) }),
                    ..labelled(&[])
                }],
            ),
        ];
        let mut out = Vec::new();
        Format::DelimitedProtobuf.write(&families, &mut out);
        let decoded = crate::codec::protobuf::decode_delimited(&out).expect("decodes");
        assert_eq!(decoded, families[1..], "only the family with metrics");
    }
}
