//! OTLP metric and attribute names as Prometheus names, the way Prometheus's own OTLP
//! ingestion makes them by default (`UnderscoreEscapingWithSuffixes`, following the
//! OpenTelemetry "Prometheus and OpenMetrics compatibility" specification):
//!
//! - a metric name is split into words at every character other than `[a-zA-Z0-9:]`
//!   (so runs of `_` collapse), the unit's Prometheus word is added unless already a
//!   word of the name (`s` → `seconds`, `By` → `bytes`, `ms` → `milliseconds`, ...;
//!   units in braces like `{request}` add nothing), a per-unit adds `per_<word>`
//!   (`1/s` → `per_second`, always), monotonic sums end in `total`, gauges of unit `1`
//!   in `ratio`, the words are joined with `_`, and a leading digit gets a `_` before it;
//! - an attribute name has each run of characters other than `[a-zA-Z0-9]` replaced by
//!   one `_` (a reserved `__x__` keeps its frame), `key_` before a leading digit and
//!   `key` before a single leading `_`.
//!
//! With `--push.enable-utf8-names` Prometheus keeps names as they are (suffixes still
//! added); [`NameMode`] is the one switch for that.

/// How names are made Prometheus names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NameMode {
    /// Legacy names: characters outside the classic sets become `_`.
    #[default]
    Legacy,
    /// UTF-8 names kept as they are (only the suffixes are added).
    Utf8,
}

/// What kind of Prometheus metric a name is made for (it decides the suffixes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// A monotonic sum: ends in `_total`.
    Counter,
    /// A gauge (or a non-monotonic sum): `_ratio` for unit `1`.
    Gauge,
    /// Histograms and summaries: the unit only.
    Other,
}

/// The Prometheus metric name of an OTLP metric.
#[must_use]
pub fn metric_name(name: &str, unit: &str, kind: NameKind, mode: NameMode) -> String {
    let mut words: Vec<String> = match mode {
        NameMode::Legacy => name
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
            .filter(|word| !word.is_empty())
            .map(str::to_owned)
            .collect(),
        NameMode::Utf8 => name
            .split('_')
            .filter(|word| !word.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let (main, per) = unit_words(unit);
    if let Some(main) = main.filter(|main| !words.iter().any(|word| word == main)) {
        words.push(main);
    }
    // Prometheus looks for `per_<unit>` among the words, which a name split at `_`
    // never has: the per-unit is always added.
    if let Some(per) = per {
        words.push("per".to_owned());
        words.push(per);
    }
    match kind {
        NameKind::Counter => {
            words.retain(|word| word != "total");
            words.push("total".to_owned());
        }
        NameKind::Gauge if unit == "1" => {
            words.retain(|word| word != "ratio");
            words.push("ratio".to_owned());
        }
        _ => {}
    }
    let joined = words.join("_");
    if joined.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{joined}")
    } else {
        joined
    }
}

/// The Prometheus words of an OTLP (UCUM) unit: the main unit and the per-unit.
fn unit_words(unit: &str) -> (Option<String>, Option<String>) {
    let (main, per) = match unit.split_once('/') {
        Some((main, per)) => (main.trim(), Some(per.trim())),
        None => (unit.trim(), None),
    };
    let usable = |text: &str| !text.is_empty() && !text.contains(['{', '}']);
    let main = Some(main)
        .filter(|main| usable(main))
        .map(|main| clean_unit(main_unit(main)))
        .filter(|word| !word.is_empty());
    let per = per
        .filter(|per| usable(per))
        .map(|per| clean_unit(per_unit(per)))
        .filter(|word| !word.is_empty());
    (main, per)
}

/// UCUM units Prometheus spells out; others are kept (and cleaned).
fn main_unit(unit: &str) -> &str {
    match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        // Dimensionless: no word (gauges get `ratio` instead).
        "1" => "",
        "%" => "percent",
        other => other,
    }
}

/// The time units of a per-unit, in the singular.
fn per_unit(unit: &str) -> &str {
    match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    }
}

/// A unit word with characters outside `[a-zA-Z0-9:]` as one `_`, no leading `_`.
fn clean_unit(unit: &str) -> String {
    unit.split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

/// The Prometheus label name of an OTLP attribute key.
#[must_use]
pub fn label_name(key: &str, mode: NameMode) -> String {
    if key.is_empty() || mode == NameMode::Utf8 {
        return key.to_owned();
    }
    // `__name__`-style reserved names keep their frame; only the inside is cleaned.
    if key.len() >= 4 && key.starts_with("__") && key.ends_with("__") {
        return format!("__{}__", collapse_invalid(&key[2..key.len() - 2]));
    }
    let sanitized = collapse_invalid(key);
    if sanitized.starts_with(|c: char| c.is_ascii_digit()) {
        format!("key_{sanitized}")
    } else if sanitized.starts_with('_') && !sanitized.starts_with("__") {
        format!("key{sanitized}")
    } else {
        sanitized
    }
}

/// Every run of characters outside `[a-zA-Z0-9]` (underscores included) as one `_`,
/// as the specification asks ("multiple consecutive underscores are replaced with a
/// single underscore").
fn collapse_invalid(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_run = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('_');
            in_run = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_as_prometheus_makes_them() {
        use NameKind::{Counter, Gauge, Other};
        let table: &[(&str, &str, &str, NameKind, &str)] = &[
            (
                "counter gets _total",
                "jobs.processed",
                "",
                Counter,
                "jobs_processed_total",
            ),
            (
                "unit word added",
                "http.server.duration",
                "s",
                Other,
                "http_server_duration_seconds",
            ),
            ("bytes", "payload.size", "By", Other, "payload_size_bytes"),
            (
                "counter with unit",
                "io.read",
                "By",
                Counter,
                "io_read_bytes_total",
            ),
            (
                "braces add nothing",
                "requests",
                "{request}",
                Counter,
                "requests_total",
            ),
            (
                "per unit",
                "throughput",
                "By/s",
                Gauge,
                "throughput_bytes_per_second",
            ),
            (
                "ratio for unit 1",
                "cpu.utilization",
                "1",
                Gauge,
                "cpu_utilization_ratio",
            ),
            ("no ratio for counters", "hits", "1", Counter, "hits_total"),
            (
                "unit already a word",
                "duration_seconds",
                "s",
                Other,
                "duration_seconds",
            ),
            (
                "total moved to the end",
                "total.requests",
                "",
                Counter,
                "requests_total",
            ),
            (
                "runs of invalid chars collapse",
                "a..b__c-d",
                "",
                Gauge,
                "a_b_c_d",
            ),
            ("colons kept", "ns:metric", "", Gauge, "ns:metric"),
            ("leading digit", "5xx.errors", "", Gauge, "_5xx_errors"),
            (
                "unknown unit kept, cleaned",
                "queue.depth",
                "item.s",
                Gauge,
                "queue_depth_item_s",
            ),
            (
                "non-ASCII dropped",
                "températures",
                "Cel",
                Gauge,
                "temp_ratures_celsius",
            ),
        ];
        for (name, otlp, unit, kind, want) in table {
            assert_eq!(
                metric_name(otlp, unit, *kind, NameMode::Legacy),
                *want,
                "{name}"
            );
        }
        assert_eq!(
            metric_name("températures.c", "Cel", NameKind::Gauge, NameMode::Utf8),
            "températures.c_celsius",
            "UTF-8 names are kept"
        );
    }

    #[test]
    fn label_names_as_prometheus_makes_them() {
        let table: &[(&str, &str, &str)] = &[
            ("dots", "http.method", "http_method"),
            ("kept", "status_code", "status_code"),
            ("leading digit", "5xx", "key_5xx"),
            ("single underscore", "_private", "key_private"),
            ("runs collapse", "a__b..c", "a_b_c"),
            ("reserved frame kept", "__meta.x__", "__meta_x__"),
            ("non-ASCII", "région", "r_gion"),
        ];
        for (name, key, want) in table {
            assert_eq!(label_name(key, NameMode::Legacy), *want, "{name}");
        }
    }
}
