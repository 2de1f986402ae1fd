//! Prometheus text format 0.0.4 parser.
//!
//! Existing clients must see the same verdicts from dropgate as from the Go pushgateway
//! (1.5.1, which uses `expfmt.TextParser` of `prometheus/common` v0.37), so this parser
//! follows that parser's state machine step by step: the same bytes are consumed in the
//! same order, which is what makes the line numbers, the error texts and the odd corners
//! (`# EOF` is a comment, a trailing blank after the value is read as an empty timestamp,
//! `h_bucket` without `le` adds an empty histogram) come out identical. Families are
//! returned in order of first appearance (Go returns a map), and families that end up
//! without samples are dropped, as in Go.
//!
//! With UTF-8 names allowed ([`NameRules::Utf8`], `--push.enable-utf8-names`), names
//! may also be quoted as in prometheus/common ≥ 0.61 (pushgateway 1.11):
//! `{"my.metric", "lbl.x"="v"} 1`, `"my.metric"{a="b"} 1`, `# TYPE "my.metric" gauge`;
//! inside the braces the metric name comes first. Without, those bodies get 1.9's
//! verdicts, with a hint at the flag after Go's message.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher as _, RandomState};

use super::limits::{LimitError, PushLimits};
use crate::model::{
    Bucket, Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType, Quantile, Untyped,
};
use crate::names::NameRules;

/// A text format error, displayed exactly as Go's parser words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("text format parsing error in line {line}: {message}")]
pub struct TextParseError {
    /// 1-based line number where parsing failed.
    pub line: usize,
    /// Go's message text after the line prefix.
    pub message: String,
    /// Whether the error is at a quoted name, which only `--push.enable-utf8-names`
    /// reads: the HTTP answer then adds [`TextParseError::hint`] after Go's text (the
    /// error itself stays Go's, word for word).
    pub utf8_hint: bool,
}

impl TextParseError {
    /// A word on `--push.enable-utf8-names` when it would have made the body parse
    /// (see `utf8_hint`), else nothing.
    #[must_use]
    pub fn hint(&self) -> &'static str {
        if self.utf8_hint {
            " (quoted UTF-8 metric and label names are accepted only with --push.enable-utf8-names)"
        } else {
            ""
        }
    }
}

/// Why a push body was refused by [`parse_limited`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The body does not parse.
    #[error(transparent)]
    Syntax(#[from] TextParseError),
    /// The body parses so far but goes over a limit of the push.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// Parses a whole text format body into families, in order of first appearance.
///
/// Untyped samples get [`MetricType::Untyped`]; summaries and histograms are assembled
/// from their `_sum`, `_count`, `_bucket` and `quantile`/`le` samples. Timestamps are
/// kept in `timestamp_ms` (rejecting them is the store's business, not the parser's).
pub fn parse(body: &[u8]) -> Result<Vec<MetricFamily>, TextParseError> {
    parse_limited(body, PushLimits::UNLIMITED, NameRules::Legacy).map_err(|error| match error {
        TextError::Syntax(error) => error,
        TextError::Limit(_) => unreachable!("no limit to go over"),
    })
}

/// [`parse`], stopping at the first series, label, bucket or family over `limits`, so
/// that a hostile body never turns into more structs than the limits allow; `names`
/// says whether quoted (UTF-8) names are read.
pub fn parse_limited(
    body: &[u8],
    limits: PushLimits,
    names: NameRules,
) -> Result<Vec<MetricFamily>, TextError> {
    let mut parser = Parser::new(body, limits);
    parser.utf8 = names.utf8();
    let mut state = State::StartOfLine;
    loop {
        let next = match state {
            State::StartOfLine => Ok(parser.start_of_line()),
            State::StartComment => parser.start_comment(),
            State::ReadingMetricName => parser.reading_metric_name(),
            State::ReadingBracedName => parser.reading_braced_name(),
            State::ReadingLabels => Ok(parser.reading_labels()),
            State::StartLabelName => parser.start_label_name(),
            State::StartLabelValue => parser.start_label_value(),
            State::ReadingValue => parser.reading_value(),
            State::StartTimestamp => parser.start_timestamp(),
            State::ReadingHelp => parser.reading_help(),
            State::ReadingType => parser.reading_type(),
            State::Done => break,
        };
        state = match next {
            Ok(next) => next,
            Err(halt) => {
                let message = match halt {
                    // Go turns a premature io.EOF into this friendlier text.
                    Halt::Eof => "unexpected end of input stream".to_owned(),
                    Halt::Invalid(message) => message,
                    Halt::Limit(error) => return Err(TextError::Limit(error)),
                };
                return Err(TextError::Syntax(TextParseError {
                    line: parser.line,
                    message,
                    utf8_hint: parser.utf8_hint,
                }));
            }
        };
    }
    let mut families = parser.families;
    families.retain(|family| !family.metric.is_empty());
    Ok(families)
}

/// The states of Go's parser; each method below consumes input and names the next one.
#[derive(Clone, Copy)]
enum State {
    StartOfLine,
    StartComment,
    ReadingMetricName,
    /// The metric name as the first item inside the braces (UTF-8 names only).
    ReadingBracedName,
    ReadingLabels,
    StartLabelName,
    StartLabelValue,
    ReadingValue,
    StartTimestamp,
    ReadingHelp,
    ReadingType,
    Done,
}

/// Why parsing stopped early.
enum Halt {
    /// The input ended in the middle of a line.
    Eof,
    /// The input is malformed; the message is Go's.
    Invalid(String),
    /// The input goes over a limit of the push.
    Limit(LimitError),
}

impl From<LimitError> for Halt {
    fn from(error: LimitError) -> Self {
        Self::Limit(error)
    }
}

type Step<T = State> = Result<T, Halt>;

/// Where the current sample line's value goes within its family.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SampleRole {
    /// An ordinary sample, a quantile or a bucket.
    Plain,
    /// `<summary>_count` or `<histogram>_count`.
    Count,
    /// `<summary>_sum` or `<histogram>_sum`.
    Sum,
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    /// The byte most recently read (Go's `currentByte`).
    byte: u8,
    line: usize,
    /// Scratch buffer for the token being read, reused across lines.
    token: Vec<u8>,
    families: Vec<MetricFamily>,
    by_name: HashMap<String, usize>,
    /// Summary and histogram metrics by family and labels (without `quantile`/`le`),
    /// so that the lines of one summary or histogram end up in one metric.
    compound: HashMap<(usize, Vec<(String, String)>), usize>,
    /// Index into `families` of the family the current line belongs to.
    family: usize,
    /// Labels of the sample line being read.
    labels: Vec<LabelPair>,
    /// Hashes of their names, so that a repeated one is found in constant time per
    /// label (a hash seen before is confirmed on the names).
    label_names: HashSet<u64>,
    name_hasher: RandomState,
    limits: PushLimits,
    /// Series created so far, across families.
    series: usize,
    /// Set while reading the value of a summary's `quantile` or a histogram's `le`
    /// label (named here), which becomes a bound rather than a label.
    bound_label: Option<&'static str>,
    role: SampleRole,
    /// `quantile` or `le` of the current line; NaN when absent, as in Go, so that
    /// `quantile="NaN"` is dropped just like there.
    bound: f64,
    /// Index into the current family's metrics of the metric the value goes to.
    metric: usize,
    /// Whether quoted (UTF-8) names are read.
    utf8: bool,
    /// Set when the error is at a quoted name that `utf8` would have read.
    utf8_hint: bool,
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8], limits: PushLimits) -> Self {
        Self {
            input,
            pos: 0,
            byte: 0,
            line: 0,
            token: Vec::new(),
            families: Vec::new(),
            by_name: HashMap::new(),
            compound: HashMap::new(),
            family: 0,
            labels: Vec::new(),
            label_names: HashSet::new(),
            name_hasher: RandomState::new(),
            limits,
            series: 0,
            bound_label: None,
            role: SampleRole::Plain,
            bound: f64::NAN,
            metric: 0,
            utf8: false,
            utf8_hint: false,
        }
    }

    fn read_byte(&mut self) -> Step<u8> {
        let byte = *self.input.get(self.pos).ok_or(Halt::Eof)?;
        self.pos += 1;
        self.byte = byte;
        Ok(byte)
    }

    fn current_type(&self) -> Option<MetricType> {
        self.families[self.family]
            .r#type
            .and_then(|t| MetricType::try_from(t).ok())
    }

    fn family_name(&self) -> &str {
        self.families[self.family]
            .name
            .as_deref()
            .unwrap_or_default()
    }

    fn is_compound(&self) -> bool {
        matches!(
            self.current_type(),
            Some(MetricType::Summary | MetricType::Histogram)
        )
    }

    fn start_of_line(&mut self) -> State {
        self.line += 1;
        // End of input at the start of a line is the one legitimate end.
        if self.skip_blank_tab().is_err() {
            return State::Done;
        }
        match self.byte {
            b'#' => State::StartComment,
            b'\n' => State::StartOfLine,
            b'{' if self.utf8 => State::ReadingBracedName,
            _ => State::ReadingMetricName,
        }
    }

    fn start_comment(&mut self) -> Step {
        self.skip_blank_tab()?;
        if self.byte == b'\n' {
            return Ok(State::StartOfLine);
        }
        self.read_token_until_whitespace()?;
        if self.byte == b'\n' {
            return Ok(State::StartOfLine);
        }
        let keyword = match self.token.as_slice() {
            b"HELP" => State::ReadingHelp,
            b"TYPE" => State::ReadingType,
            _ => {
                // Any other comment, `# EOF` included, is skipped to the end of line.
                while self.byte != b'\n' {
                    self.read_byte()?;
                }
                return Ok(State::StartOfLine);
            }
        };
        self.skip_blank_tab()?;
        self.read_token_as_metric_name()?;
        if self.byte == b'\n' {
            return Ok(State::StartOfLine);
        }
        if !is_blank_or_tab(self.byte) {
            return Err(invalid(
                self.with_utf8_hint("invalid metric name in comment"),
            ));
        }
        self.set_or_create_current_family()?;
        self.skip_blank_tab()?;
        if self.byte == b'\n' {
            return Ok(State::StartOfLine);
        }
        Ok(keyword)
    }

    fn reading_metric_name(&mut self) -> Step {
        self.read_token_as_metric_name()?;
        if self.token.is_empty() {
            return Err(invalid(self.with_utf8_hint("invalid metric name")));
        }
        self.start_metric()?;
        self.skip_blank_tab_if_current_blank_tab()?;
        Ok(State::ReadingLabels)
    }

    /// The family of the name in `token` becomes current, with a new sample line.
    fn start_metric(&mut self) -> Step<()> {
        self.set_or_create_current_family()?;
        let family = &mut self.families[self.family];
        if family.r#type.is_none() {
            family.r#type = Some(MetricType::Untyped as i32);
        }
        self.labels.clear();
        self.label_names.clear();
        Ok(())
    }

    /// `{"name"` or `{name` at the start of a line, then `,` and the labels or `}`.
    /// Go's parser would also take the name after some labels; here it comes first,
    /// as every writer puts it (and the error says so).
    fn reading_braced_name(&mut self) -> Step {
        self.skip_blank_tab()?;
        self.read_token_as_metric_name()?;
        if self.token.is_empty() {
            return Err(invalid(
                "invalid metric name: inside braces, the metric name must come first, \
                 e.g. {\"my.metric\", label=\"value\"}"
                    .to_owned(),
            ));
        }
        self.skip_blank_tab_if_current_blank_tab()?;
        if self.byte == b'=' {
            return Err(invalid(format!(
                "inside braces, the metric name must come first; found label {} before it",
                quote_str(&self.token)
            )));
        }
        if self.byte != b',' && self.byte != b'}' {
            return Err(invalid(format!(
                "unexpected end of metric name {}",
                quote_rune(self.byte)
            )));
        }
        self.start_metric()?;
        if self.is_compound() {
            self.bound = f64::NAN;
        }
        if self.byte == b',' {
            return Ok(State::StartLabelName);
        }
        self.skip_blank_tab()?;
        Ok(State::ReadingValue)
    }

    /// Go's message; notes when the byte at fault opens a quoted name that only
    /// `--push.enable-utf8-names` reads (see [`TextParseError::hint`]).
    fn with_utf8_hint(&mut self, message: &str) -> String {
        self.utf8_hint = !self.utf8 && (self.byte == b'"' || self.byte == b'{');
        message.to_owned()
    }

    fn reading_labels(&mut self) -> State {
        if self.is_compound() {
            self.bound = f64::NAN;
        }
        if self.byte == b'{' {
            State::StartLabelName
        } else {
            State::ReadingValue
        }
    }

    fn start_label_name(&mut self) -> Step {
        self.skip_blank_tab()?;
        if self.byte == b'}' {
            self.skip_blank_tab()?;
            return Ok(State::ReadingValue);
        }
        self.read_token_as_label_name()?;
        if self.token.is_empty() {
            let message = format!(
                "invalid label name for metric {}",
                quote_str(self.family_name().as_bytes())
            );
            return Err(invalid(self.with_utf8_hint(&message)));
        }
        // Unquoted label names are ASCII by construction of the token; quoted ones
        // were checked to be UTF-8.
        let name = String::from_utf8_lossy(&self.token).into_owned();
        if name == "__name__" {
            return Err(invalid(r#"label name "__name__" is reserved"#.to_owned()));
        }
        // `quantile` of a summary and `le` of a histogram are not labels of the metric.
        self.bound_label = match (self.current_type(), name.as_str()) {
            (Some(MetricType::Summary), "quantile") => Some("quantile"),
            (Some(MetricType::Histogram), "le") => Some("le"),
            _ => None,
        };
        let special = self.bound_label.is_some();
        let mut repeated = false;
        if !special {
            self.limits
                .check_label_name(self.family_name(), name.len())?;
            self.limits
                .check_labels(self.family_name(), self.labels.len() + 1)?;
            repeated = !self.label_names.insert(self.name_hasher.hash_one(&name))
                && self
                    .labels
                    .iter()
                    .any(|label| label.name.as_deref() == Some(name.as_str()));
            self.labels.push(LabelPair {
                name: Some(name),
                value: None,
            });
        }
        self.skip_blank_tab_if_current_blank_tab()?;
        if self.byte != b'=' {
            return Err(invalid(format!(
                "expected '=' after label name, found {}",
                quote_rune(self.byte)
            )));
        }
        // Earlier names were checked on their own turn, so only the new one can clash.
        if repeated {
            return Err(invalid(format!(
                "duplicate label names for metric {}",
                quote_str(self.family_name().as_bytes())
            )));
        }
        Ok(State::StartLabelValue)
    }

    fn start_label_value(&mut self) -> Step {
        self.skip_blank_tab()?;
        if self.byte != b'"' {
            return Err(invalid(format!(
                "expected '\"' at start of label value, found {}",
                quote_rune(self.byte)
            )));
        }
        self.read_token_as_label_value()?;
        self.limits
            .check_label_value(self.family_name(), self.token.len())?;
        let Ok(value) = std::str::from_utf8(&self.token) else {
            return Err(invalid(format!(
                "invalid label value {}",
                quote_str(&self.token)
            )));
        };
        if let Some(label) = self.bound_label {
            let Some(bound) = parse_go_float(value.as_bytes()) else {
                return Err(invalid(format!(
                    "expected float as value for '{label}' label, got {}",
                    quote_str(value.as_bytes())
                )));
            };
            self.bound = bound;
        } else if let Some(pair) = self.labels.last_mut() {
            pair.value = Some(value.to_owned());
        }
        self.skip_blank_tab()?;
        match self.byte {
            b',' => Ok(State::StartLabelName),
            b'}' => {
                self.skip_blank_tab()?;
                Ok(State::ReadingValue)
            }
            // The token still holds the value just read.
            _ => Err(invalid(format!(
                "unexpected end of label value {}",
                quote_str(&self.token)
            ))),
        }
    }

    fn reading_value(&mut self) -> Step {
        // Only now are all labels known, so only now can a summary or histogram line
        // be matched with the metric its earlier lines created.
        let labels = std::mem::take(&mut self.labels);
        let compound = self.is_compound();
        let family = &mut self.families[self.family];
        let next_index = family.metric.len();
        self.metric = if compound {
            let mut key: Vec<(String, String)> = labels
                .iter()
                .map(|l| {
                    (
                        l.name.clone().unwrap_or_default(),
                        l.value.clone().unwrap_or_default(),
                    )
                })
                .collect();
            key.sort_unstable();
            *self
                .compound
                .entry((self.family, key))
                .or_insert(next_index)
        } else {
            next_index
        };
        if self.metric == next_index {
            self.series += 1;
            self.limits.check_series(self.series)?;
            family.metric.push(Metric {
                label: labels,
                ..Metric::default()
            });
        }
        self.read_token_until_whitespace()?;
        let Some(value) = parse_go_float(&self.token) else {
            return Err(invalid(format!(
                "expected float as value, got {}",
                quote_str(&self.token)
            )));
        };
        self.store_value(value)?;
        if self.byte == b'\n' {
            return Ok(State::StartOfLine);
        }
        Ok(State::StartTimestamp)
    }

    fn store_value(&mut self, value: f64) -> Step<()> {
        let kind = self.current_type();
        let (role, bound) = (self.role, self.bound);
        let family = &mut self.families[self.family];
        let name = family.name.as_deref().unwrap_or_default();
        let metric = &mut family.metric[self.metric];
        match kind {
            Some(MetricType::Counter) => {
                metric.counter = Some(Counter {
                    value: Some(value),
                    ..Counter::default()
                });
            }
            Some(MetricType::Gauge) => metric.gauge = Some(Gauge { value: Some(value) }),
            Some(MetricType::Untyped) => metric.untyped = Some(Untyped { value: Some(value) }),
            Some(MetricType::Summary) => {
                let summary = metric.summary.get_or_insert_with(Box::default);
                match role {
                    SampleRole::Count => summary.sample_count = Some(go_float_to_u64(value)),
                    SampleRole::Sum => summary.sample_sum = Some(value),
                    SampleRole::Plain if !bound.is_nan() => {
                        self.limits
                            .check_buckets(name, summary.quantile.len() + 1)?;
                        summary.quantile.push(Quantile {
                            quantile: Some(bound),
                            value: Some(value),
                        });
                    }
                    SampleRole::Plain => {}
                }
            }
            Some(MetricType::Histogram) => {
                let histogram = metric.histogram.get_or_insert_with(Box::default);
                match role {
                    SampleRole::Count => histogram.sample_count = Some(go_float_to_u64(value)),
                    SampleRole::Sum => histogram.sample_sum = Some(value),
                    SampleRole::Plain if !bound.is_nan() => {
                        self.limits
                            .check_buckets(name, histogram.bucket.len() + 1)?;
                        histogram.bucket.push(Bucket {
                            upper_bound: Some(bound),
                            cumulative_count: Some(go_float_to_u64(value)),
                            ..Bucket::default()
                        });
                    }
                    SampleRole::Plain => {}
                }
            }
            // Go sets an error here that the next read overwrites: for a type the text
            // format cannot carry (gauge histogram), the sample is silently valueless.
            Some(MetricType::GaugeHistogram) | None => {}
        }
        Ok(())
    }

    fn start_timestamp(&mut self) -> Step {
        self.skip_blank_tab()?;
        self.read_token_until_whitespace()?;
        let timestamp = std::str::from_utf8(&self.token)
            .ok()
            .and_then(|text| text.parse::<i64>().ok());
        let Some(timestamp) = timestamp else {
            return Err(invalid(format!(
                "expected integer as timestamp, got {}",
                quote_str(&self.token)
            )));
        };
        self.families[self.family].metric[self.metric].timestamp_ms = Some(timestamp);
        self.read_token_until_newline(false)?;
        if !self.token.is_empty() {
            return Err(invalid(format!(
                "spurious string after timestamp: {}",
                quote_str(&self.token)
            )));
        }
        Ok(State::StartOfLine)
    }

    fn reading_help(&mut self) -> Step {
        if self.families[self.family].help.is_some() {
            return Err(invalid(format!(
                "second HELP line for metric name {}",
                quote_str(self.family_name().as_bytes())
            )));
        }
        self.read_token_until_newline(true)?;
        // Go keeps HELP bytes as they are; a Rust String cannot hold invalid UTF-8.
        self.families[self.family].help = Some(String::from_utf8_lossy(&self.token).into_owned());
        Ok(State::StartOfLine)
    }

    fn reading_type(&mut self) -> Step {
        if self.families[self.family].r#type.is_some() {
            return Err(invalid(format!(
                "second TYPE line for metric name {}, or TYPE reported after samples",
                quote_str(self.family_name().as_bytes())
            )));
        }
        self.read_token_until_newline(false)?;
        // Go upper-cases and looks the name up among the protobuf enum names.
        let kind = match String::from_utf8_lossy(&self.token).to_uppercase().as_str() {
            "COUNTER" => MetricType::Counter,
            "GAUGE" => MetricType::Gauge,
            "SUMMARY" => MetricType::Summary,
            "UNTYPED" => MetricType::Untyped,
            "HISTOGRAM" => MetricType::Histogram,
            "GAUGE_HISTOGRAM" => MetricType::GaugeHistogram,
            _ => {
                return Err(invalid(format!(
                    "unknown metric type {}",
                    quote_str(&self.token)
                )))
            }
        };
        self.families[self.family].r#type = Some(kind as i32);
        Ok(State::StartOfLine)
    }

    /// Finds the family the name in `token` belongs to, creating it if needed; a
    /// `_count`, `_sum` (or `_bucket`) name joins an existing summary (or histogram).
    fn set_or_create_current_family(&mut self) -> Step<()> {
        self.role = SampleRole::Plain;
        // Unquoted metric names are ASCII by construction of the token; quoted ones
        // were checked to be UTF-8.
        let name = String::from_utf8_lossy(&self.token);
        if let Some(&index) = self.by_name.get(name.as_ref()) {
            self.family = index;
            return Ok(());
        }
        let role = if name.len() > 6 && name.ends_with("_count") {
            SampleRole::Count
        } else if name.len() > 4 && name.ends_with("_sum") {
            SampleRole::Sum
        } else {
            SampleRole::Plain
        };
        let summary_name = match role {
            SampleRole::Count => &name[..name.len() - 6],
            SampleRole::Sum => &name[..name.len() - 4],
            SampleRole::Plain => &name[..],
        };
        if let Some(&index) = self.by_name.get(summary_name) {
            if self.families[index].r#type == Some(MetricType::Summary as i32) {
                self.family = index;
                self.role = role;
                return Ok(());
            }
        }
        let histogram_name =
            if role == SampleRole::Plain && name.len() > 7 && name.ends_with("_bucket") {
                &name[..name.len() - 7]
            } else {
                summary_name
            };
        if let Some(&index) = self.by_name.get(histogram_name) {
            if self.families[index].r#type == Some(MetricType::Histogram as i32) {
                self.family = index;
                self.role = role;
                return Ok(());
            }
        }
        // A family is counted like a series: a body of headers without samples would
        // otherwise build families without bound.
        self.limits.check_series(self.families.len() + 1)?;
        let name = name.into_owned();
        self.family = self.families.len();
        self.by_name.insert(name.clone(), self.family);
        self.families.push(MetricFamily {
            name: Some(name),
            ..MetricFamily::default()
        });
        Ok(())
    }

    fn skip_blank_tab(&mut self) -> Step<()> {
        while is_blank_or_tab(self.read_byte()?) {}
        Ok(())
    }

    fn skip_blank_tab_if_current_blank_tab(&mut self) -> Step<()> {
        if is_blank_or_tab(self.byte) {
            self.skip_blank_tab()?;
        }
        Ok(())
    }

    /// Collects bytes from the current one up to a blank, tab or newline.
    fn read_token_until_whitespace(&mut self) -> Step<()> {
        self.token.clear();
        while !is_blank_or_tab(self.byte) && self.byte != b'\n' {
            self.token.push(self.byte);
            self.read_byte()?;
        }
        Ok(())
    }

    /// Collects bytes from the current one up to the newline; with `unescape`, `\\` and
    /// `\n` are unescaped and any other escape is an error (HELP text).
    fn read_token_until_newline(&mut self, unescape: bool) -> Step<()> {
        self.token.clear();
        let mut escaped = false;
        loop {
            if unescape && escaped {
                match self.byte {
                    b'\\' => self.token.push(b'\\'),
                    b'n' => self.token.push(b'\n'),
                    other => return Err(invalid_escape(other)),
                }
                escaped = false;
            } else {
                match self.byte {
                    b'\n' => return Ok(()),
                    b'\\' => escaped = true,
                    other => self.token.push(other),
                }
            }
            self.read_byte()?;
        }
    }

    fn read_token_as_metric_name(&mut self) -> Step<()> {
        self.token.clear();
        if self.utf8 && self.byte == b'"' {
            return self.read_quoted_name("metric name");
        }
        if !is_metric_name_start(self.byte) {
            return Ok(());
        }
        loop {
            self.token.push(self.byte);
            if !is_metric_name_continuation(self.read_byte()?) {
                return Ok(());
            }
        }
    }

    fn read_token_as_label_name(&mut self) -> Step<()> {
        self.token.clear();
        if self.utf8 && self.byte == b'"' {
            return self.read_quoted_name("label name");
        }
        if !is_label_name_start(self.byte) {
            return Ok(());
        }
        loop {
            self.token.push(self.byte);
            if !is_label_name_continuation(self.read_byte()?) {
                return Ok(());
            }
        }
    }

    /// Reads a quoted name (the current byte is its opening quote), unescaping `\\`,
    /// `\"` and `\n` as in a label value; the byte after the closing quote is left in
    /// `byte`. `what` names it in errors.
    fn read_quoted_name(&mut self, what: &str) -> Step<()> {
        self.read_quoted(what)?;
        if std::str::from_utf8(&self.token).is_err() {
            return Err(invalid(format!(
                "invalid {what} {}: names must be UTF-8",
                quote_str(&self.token)
            )));
        }
        self.read_byte()?;
        Ok(())
    }

    /// Reads a quoted label value starting after the opening quote, unescaping
    /// `\\`, `\"` and `\n`; the closing quote is left in `byte`.
    fn read_token_as_label_value(&mut self) -> Step<()> {
        self.read_quoted("label value")
    }

    /// The quoted string after an opening quote into `token`, unescaped; stops on the
    /// closing quote (left in `byte`). `what` names it in errors, as Go's parser does.
    fn read_quoted(&mut self, what: &str) -> Step<()> {
        self.token.clear();
        let mut escaped = false;
        loop {
            let byte = self.read_byte()?;
            if escaped {
                match byte {
                    b'"' | b'\\' => self.token.push(byte),
                    b'n' => self.token.push(b'\n'),
                    other => return Err(invalid_escape(other)),
                }
                escaped = false;
                continue;
            }
            match byte {
                b'"' => return Ok(()),
                b'\n' => {
                    return Err(invalid(format!(
                        "{what} {} contains unescaped new-line",
                        quote_str(&self.token)
                    )))
                }
                b'\\' => escaped = true,
                other => self.token.push(other),
            }
        }
    }
}

fn invalid(message: String) -> Halt {
    Halt::Invalid(message)
}

fn invalid_escape(byte: u8) -> Halt {
    // Go formats the byte with %c, i.e. as the code point of the same number.
    invalid(format!("invalid escape sequence '\\{}'", char::from(byte)))
}

fn is_blank_or_tab(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

fn is_label_name_start(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_'
}

fn is_label_name_continuation(byte: u8) -> bool {
    is_label_name_start(byte) || byte.is_ascii_digit()
}

fn is_metric_name_start(byte: u8) -> bool {
    is_label_name_start(byte) || byte == b':'
}

fn is_metric_name_continuation(byte: u8) -> bool {
    is_label_name_continuation(byte) || byte == b':'
}

/// The bit pattern of Go's `math.NaN()`, which `strconv.ParseFloat("NaN")` returns.
const GO_NAN_BITS: u64 = 0x7ff8_0000_0000_0001;

/// Parses a float the way Go's `expfmt` does: `strconv.ParseFloat` syntax (decimal,
/// `Inf`/`Infinity` with optional sign, `NaN` without sign, all case-insensitive), no
/// hex, no underscores, and out-of-range values are errors rather than infinities.
pub(crate) fn parse_go_float(text: &[u8]) -> Option<f64> {
    let (negative, unsigned) = match text.first() {
        Some(b'+') => (false, &text[1..]),
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    if unsigned.eq_ignore_ascii_case(b"inf") || unsigned.eq_ignore_ascii_case(b"infinity") {
        return Some(if negative {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if text.eq_ignore_ascii_case(b"nan") {
        // Go's math.NaN() has these bits (Rust's f64::NAN ends in ...0); protobuf scrapes
        // carry the bits, so they must match upstream's.
        return Some(f64::from_bits(GO_NAN_BITS));
    }
    if !is_decimal_float(unsigned) {
        return None;
    }
    // The syntax check above admits only ASCII, so this is valid UTF-8.
    let value: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
    // Go reports overflow as a range error; Rust rounds it to infinity.
    value.is_finite().then_some(value)
}

/// `digits [. digits] [e [sign] digits]` with at least one mantissa digit.
fn is_decimal_float(text: &[u8]) -> bool {
    let mut rest = text;
    let int_digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    rest = &rest[int_digits..];
    let mut frac_digits = 0;
    if let Some((b'.', after)) = rest.split_first() {
        frac_digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        rest = &after[frac_digits..];
    }
    if int_digits + frac_digits == 0 {
        return false;
    }
    if let Some((b'e' | b'E', after)) = rest.split_first() {
        let after = match after.first() {
            Some(b'+' | b'-') => &after[1..],
            _ => after,
        };
        let exp_digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        if exp_digits == 0 {
            return false;
        }
        rest = &after[exp_digits..];
    }
    rest.is_empty()
}

/// Go's `uint64(f)` on amd64, which the pushgateway binaries run on (checked against
/// Debian's 1.5.1): below 2^63 the conversion is signed (so -1 becomes `u64::MAX`),
/// above it is offset by 2^63 and the top bit set again; a conversion out of range
/// (NaN, infinities, huge values) yields the CPU's "integer indefinite", `i64::MIN`.
#[allow(clippy::cast_sign_loss)]
pub(crate) fn go_float_to_u64(value: f64) -> u64 {
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    // x86 CVTTSD2SI.
    let convert = |f: f64| -> i64 {
        if f.is_nan() || !(-TWO_POW_63..TWO_POW_63).contains(&f) {
            i64::MIN
        } else {
            #[allow(clippy::cast_possible_truncation)]
            let truncated = f as i64;
            truncated
        }
    };
    if value < TWO_POW_63 {
        convert(value) as u64
    } else {
        (convert(value - TWO_POW_63) as u64) | (1 << 63)
    }
}

/// Go's `%q` of a string: double-quoted, with `strconv.Quote`'s escapes.
pub(crate) fn quote_str(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_escaped_char(&mut out, c, '"');
        }
        for byte in chunk.invalid() {
            push_hex(&mut out, 'x', u32::from(*byte), 2);
        }
    }
    out.push('"');
    out
}

/// Go's `%q` of a byte: the single-quoted code point of the same number.
fn quote_rune(byte: u8) -> String {
    let mut out = String::with_capacity(6);
    out.push('\'');
    push_escaped_char(&mut out, char::from(byte), '\'');
    out.push('\'');
    out
}

fn push_escaped_char(out: &mut String, c: char, quote: char) {
    if c == quote || c == '\\' {
        out.push('\\');
        out.push(c);
        return;
    }
    if is_go_printable(c) {
        out.push(c);
        return;
    }
    let code = u32::from(c);
    match c {
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        _ if code < 0x20 || code == 0x7f => push_hex(out, 'x', code, 2),
        _ if code < 0x1_0000 => push_hex(out, 'u', code, 4),
        _ => push_hex(out, 'U', code, 8),
    }
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII
/// space. Rust's debug escaping leaves exactly those unescaped when not at the start of
/// a string (grapheme extenders are only escaped first), which is what we ask it here.
fn is_go_printable(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    let mut probe = String::with_capacity(8);
    probe.push('a');
    probe.push(c);
    !probe.escape_debug().any(|e| e == '\\')
}

fn push_hex(out: &mut String, prefix: char, code: u32, width: usize) {
    use std::fmt::Write as _;
    out.push('\\');
    out.push(prefix);
    // Writing to a String cannot fail.
    let _ = write!(out, "{code:0width$x}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_stop_the_parse_where_they_are_crossed() {
        let limits = PushLimits {
            max_series: 2,
            max_labels_per_series: 2,
            max_label_name_bytes: 4,
            max_label_value_bytes: 4,
            max_buckets_per_series: 2,
            max_decoded_factor: 16,
        };
        let table: &[(&str, &str, Option<&str>)] = &[
            ("within every limit", "m{a=\"1\",b=\"2\"} 1\nn 2\n", None),
            ("third series", "m{a=\"1\"} 1\nm{a=\"2\"} 1\nm{a=\"3\"} 1\n", Some("at least 3 series")),
            ("third family without samples", "# TYPE a gauge\n# TYPE b gauge\n# TYPE c gauge\n", Some("at least 3 series (or families)")),
            ("third label", "m{a=\"1\",b=\"2\",c=\"3\"} 1\n", Some("at least 3 labels")),
            ("long name", "m{abcde=\"1\"} 1\n", Some("label name of \"m\" is 5 bytes")),
            ("long value", "m{a=\"12345\"} 1\n", Some("label value of \"m\" is 5 bytes")),
            ("third bucket", "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"3\"} 1\n", Some("at least 3 buckets")),
            ("third quantile", "# TYPE s summary\ns{quantile=\"0.1\"} 1\ns{quantile=\"0.2\"} 1\ns{quantile=\"0.3\"} 1\n", Some("at least 3 buckets or quantiles")),
            // Counted before the rest of the line is read: the syntax error comes later.
            ("limit before a later syntax error", "m{a=\"1\",b=\"2\",c=\"3\"} x\n", Some("at least 3 labels")),
        ];
        for (name, body, want) in table {
            let result = parse_limited(body.as_bytes(), limits, NameRules::Legacy);
            match want {
                None => assert!(result.is_ok(), "{name}: {result:?}"),
                Some(want) => {
                    let error = result.expect_err(name);
                    assert!(matches!(error, TextError::Limit(_)), "{name}: {error:?}");
                    assert!(error.to_string().contains(want), "{name}: {error}");
                }
            }
        }
    }

    /// Each series' label pairs.
    type Series = Vec<Vec<(String, String)>>;

    fn parse_utf8(body: &str) -> Result<Vec<MetricFamily>, TextError> {
        parse_limited(body.as_bytes(), PushLimits::UNLIMITED, NameRules::Utf8)
    }

    /// Family name, then each series' labels, of a parse.
    fn shape(families: &[MetricFamily]) -> Vec<(String, Series)> {
        families
            .iter()
            .map(|family| {
                let series = family
                    .metric
                    .iter()
                    .map(|metric| {
                        metric
                            .label
                            .iter()
                            .map(|l| {
                                (
                                    l.name.clone().unwrap_or_default(),
                                    l.value.clone().unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .collect();
                (family.name.clone().unwrap_or_default(), series)
            })
            .collect()
    }

    #[test]
    fn quoted_names_with_utf8_names() {
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        let table: &[(&str, &str, &str, Series)] = &[
            (
                "name in braces",
                "{\"my.metric\"} 1\n",
                "my.metric",
                vec![pairs(&[])],
            ),
            (
                "name and quoted label",
                "{\"my.metric\", \"lbl.x\"=\"v\"} 1\n",
                "my.metric",
                vec![pairs(&[("lbl.x", "v")])],
            ),
            (
                "quoted name before braces",
                "\"my.metric\"{a=\"b\"} 1\n",
                "my.metric",
                vec![pairs(&[("a", "b")])],
            ),
            (
                "legacy name in braces, quoted label",
                "{m,\"größe\"=\"1\"} 1\n",
                "m",
                vec![pairs(&[("größe", "1")])],
            ),
            (
                "escapes in names",
                "{\"a\\\"b\\\\c\"} 1\n",
                "a\"b\\c",
                vec![pairs(&[])],
            ),
            ("trailing comma", "{\"x.y\",} 1\n", "x.y", vec![pairs(&[])]),
            (
                "HELP and TYPE of a quoted name",
                "# HELP \"my.metric\" the help\n# TYPE \"my.metric\" gauge\n{\"my.metric\"} 2\n",
                "my.metric",
                vec![pairs(&[])],
            ),
            (
                "legacy body unchanged",
                "m{a=\"b\"} 1\n",
                "m",
                vec![pairs(&[("a", "b")])],
            ),
        ];
        for (case, body, name, series) in table {
            let families = parse_utf8(body).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(
                shape(&families),
                [((*name).to_owned(), series.clone())],
                "{case}"
            );
        }
        let typed =
            parse_utf8("# TYPE \"my.metric\" gauge\n# HELP \"my.metric\" h\n{\"my.metric\"} 2\n")
                .expect("typed");
        assert_eq!(typed[0].r#type, Some(MetricType::Gauge as i32));
        assert_eq!(typed[0].help.as_deref(), Some("h"));
        let summary = parse_utf8(
            "# TYPE \"s.x\" summary\n{\"s.x\",quantile=\"0.5\"} 1\n{\"s.x_sum\"} 3\n{\"s.x_count\"} 2\n",
        )
        .expect("summary");
        let summary = summary[0].metric[0].summary.as_ref().expect("one summary");
        assert_eq!(
            (summary.sample_count, summary.sample_sum),
            (Some(2), Some(3.0))
        );
    }

    #[test]
    fn bad_quoted_names_are_refused_clearly() {
        let table: &[(&str, &[u8], &str)] = &[
            (
                "empty name",
                b"{\"\"} 1\n",
                "line 1: invalid metric name: inside braces",
            ),
            (
                "label before name",
                b"{a=\"b\"} 1\n",
                "found label \"a\" before it",
            ),
            (
                "unterminated",
                b"{\"my.metric} 1\n",
                "metric name \"my.metric} 1\" contains unescaped new-line",
            ),
            (
                "newline in label name",
                b"{m,\"a\nb\"=\"v\"} 1\n",
                "label name \"a\" contains unescaped new-line",
            ),
            (
                "bad escape",
                b"{\"a\\tb\"} 1\n",
                "invalid escape sequence '\\t'",
            ),
            (
                "not UTF-8",
                b"{\"a\xffb\"} 1\n",
                "invalid metric name \"a\\xffb\": names must be UTF-8",
            ),
            (
                "two names",
                b"{\"a.b\" \"c\"} 1\n",
                "unexpected end of metric name",
            ),
            (
                "empty label name",
                b"{m,\"\"=\"v\"} 1\n",
                "invalid label name for metric \"m\"",
            ),
            ("missing value", b"{\"a.b\"}\n", "line 1:"),
        ];
        for (case, body, want) in table {
            let error = parse_limited(body, PushLimits::UNLIMITED, NameRules::Utf8)
                .expect_err(case)
                .to_string();
            assert!(error.contains(want), "{case}: {error}");
        }
    }

    /// Without the flag, Go 1.9's verdicts (its message first), and a word on the flag.
    #[test]
    fn quoted_names_without_utf8_names_fail_as_in_go() {
        let table: &[(&str, &str, &str)] = &[
            (
                "name in braces",
                "{\"my.metric\"} 1\n",
                "text format parsing error in line 1: invalid metric name (",
            ),
            (
                "quoted name",
                "\"my.metric\" 1\n",
                "text format parsing error in line 1: invalid metric name (",
            ),
            (
                "quoted label",
                "m{\"lbl.x\"=\"v\"} 1\n",
                "text format parsing error in line 1: invalid label name for metric \"m\" (",
            ),
            (
                "quoted name in TYPE",
                "# TYPE \"my.metric\" gauge\n",
                "text format parsing error in line 1: invalid metric name in comment (",
            ),
        ];
        for (case, body, want) in table {
            let error = parse(body.as_bytes()).expect_err(case);
            let message = error.to_string();
            assert_eq!(format!("{message} ("), *want, "{case}: Go's words");
            assert!(
                error.hint().contains("--push.enable-utf8-names"),
                "{case}: {error:?}"
            );
        }
    }

    #[test]
    fn duplicate_labels_are_found_among_many() {
        let labels: Vec<String> = (0..100).map(|i| format!("l{i}=\"\"")).collect();
        let body = format!("m{{{},l57=\"x\"}} 1\n", labels.join(","));
        let error = parse(body.as_bytes()).expect_err("l57 twice");
        assert!(error.message.contains("duplicate label names"), "{error}");
    }

    #[test]
    fn byte_level_errors_quote_like_go() {
        // Answers of pushgateway 1.5.1 to these bodies.
        let table: &[(&str, &[u8], &str)] = &[
            (
                "label value not UTF-8",
                b"m{a=\"\xff\"} 1\n",
                r#"invalid label value "\xff""#,
            ),
            (
                "value bytes not UTF-8",
                b"m \xff\xfe\n",
                r#"expected float as value, got "\xff\xfe""#,
            ),
            (
                "found byte shown as its Latin-1 code point",
                b"m{a\xc3} 1\n",
                "expected '=' after label name, found '\u{c3}'",
            ),
            (
                "escape of a non-ASCII byte",
                b"m{a=\"\\\xc3\xa9\"} 1\n",
                "invalid escape sequence '\\\u{c3}'",
            ),
            (
                "non-printable code points escaped",
                b"m \xe2\x80\xa8\x01\xc2\xa0\n",
                r#"expected float as value, got "\u2028\x01\u00a0""#,
            ),
            (
                "quote and backslash in a found byte",
                b"m{a\"} 1\n",
                "expected '=' after label name, found '\"'",
            ),
            (
                "single quote is escaped in a rune",
                b"m{a'} 1\n",
                r"expected '=' after label name, found '\''",
            ),
        ];
        for (name, body, want) in table {
            let err = parse(body).expect_err(name);
            assert_eq!(err.message, *want, "{name}");
            assert_eq!(err.line, 1, "{name}");
        }
    }

    #[test]
    fn valid_utf8_with_combining_mark_is_accepted() {
        let families = parse("m{a=\"\u{1f600}\u{301}\"} 1\n".as_bytes()).expect("valid UTF-8");
        let value = families[0].metric[0].label[0].value.as_deref();
        assert_eq!(value, Some("\u{1f600}\u{301}"), "kept as is");
    }

    #[test]
    fn go_float_syntax() {
        let table: &[(&str, &str, Option<f64>)] = &[
            ("integer", "42", Some(42.0)),
            ("signed", "-1.5", Some(-1.5)),
            ("plus sign", "+1", Some(1.0)),
            ("leading dot", ".5", Some(0.5)),
            ("trailing dot", "5.", Some(5.0)),
            ("exponent", "1E5", Some(1e5)),
            ("negative exponent", "2.5e-3", Some(2.5e-3)),
            ("underflow is zero", "1e-400", Some(0.0)),
            ("inf any case", "iNf", Some(f64::INFINITY)),
            ("signed infinity word", "-Infinity", Some(f64::NEG_INFINITY)),
            ("overflow", "1e400", None),
            ("negative overflow", "-1e400", None),
            ("signed nan", "+NaN", None),
            ("hex", "0x10", None),
            ("hex float", "0x1p3", None),
            ("underscore", "1_000", None),
            ("empty", "", None),
            ("dot alone", ".", None),
            ("sign alone", "-", None),
            ("exponent without digits", "1e", None),
            ("exponent alone", "e5", None),
            ("inner space", "1 0", None),
            ("carriage return", "1\r", None),
            ("infinity prefix", "infin", None),
        ];
        for (name, text, want) in table {
            let got = parse_go_float(text.as_bytes());
            assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "{name}");
        }
        assert!(parse_go_float(b"nan").is_some_and(f64::is_nan), "nan");
    }

    #[test]
    fn float_to_count_like_go_on_amd64() {
        // Counts pushgateway 1.5.1 served for `s_count <value>` of a summary.
        let table: &[(&str, f64, u64)] = &[
            ("integer", 2.0, 2),
            ("fraction truncates", 2.7, 2),
            ("minus one wraps", -1.0, u64::MAX),
            ("minus half truncates to zero", -0.5, 0),
            ("above 2^63", 9.3e18, 9_300_000_000_000_000_000),
            ("far too big", 1e30, 1 << 63),
            ("far too small", -1e30, 1 << 63),
            ("NaN", f64::NAN, 1 << 63),
            ("infinity", f64::INFINITY, 1 << 63),
            ("negative infinity", f64::NEG_INFINITY, 1 << 63),
        ];
        for (name, value, want) in table {
            assert_eq!(go_float_to_u64(*value), *want, "{name}");
        }
    }

    #[test]
    fn line_numbers_count_every_line() {
        let table: &[(&str, &str, usize)] = &[
            ("third line", "a 1\n\nb x\n", 3),
            ("comment lines count", "# c\n# HELP a x\na 1\na y\n", 4),
            ("missing final newline", "a 1\nb 2", 2),
        ];
        for (name, body, want) in table {
            let err = parse(body.as_bytes()).expect_err(name);
            assert_eq!(err.line, *want, "{name}: {err}");
        }
    }
}
