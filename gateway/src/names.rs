//! Metric and label names: which a push may use, and how a scrape sees them.
//!
//! By default names follow the legacy Prometheus rules (`[a-zA-Z_:][a-zA-Z0-9_:]*`,
//! label names without `:` and not starting with `__`), as pushgateway 1.9 does. With
//! `--push.enable-utf8-names` (upstream 1.11) any non-empty UTF-8 name is accepted, and
//! a scrape sees each non-legacy name escaped by the scheme its `Accept` negotiated
//! (`escaping=`, see [`crate::exposition::negotiate`]), as Go's `model.EscapeName`
//! does. Every receiver (text, protobuf, the push path, OTLP) asks the one
//! [`NameRules`] here, so that they cannot disagree on what a valid name is.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::exposition::Escaping;
use crate::model::{LabelPair, MetricFamily};

/// Which names pushes may use: the gateway's `enable_utf8_names` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NameRules {
    /// Legacy Prometheus names only (upstream ≤ 1.10, and 1.11 without the flag).
    #[default]
    Legacy,
    /// Any non-empty UTF-8 name (`--push.enable-utf8-names`).
    Utf8,
}

impl NameRules {
    /// The rules for the `enable_utf8_names` setting.
    #[must_use]
    pub fn new(enable_utf8_names: bool) -> Self {
        if enable_utf8_names {
            Self::Utf8
        } else {
            Self::Legacy
        }
    }

    /// Whether UTF-8 names are allowed.
    #[must_use]
    pub fn utf8(self) -> bool {
        self == Self::Utf8
    }

    /// Whether a metric family may be called `name`.
    #[must_use]
    pub fn allows_metric_name(self, name: &str) -> bool {
        match self {
            Self::Legacy => is_legacy_name(name),
            // A `&str` is UTF-8 already.
            Self::Utf8 => !name.is_empty(),
        }
    }

    /// Whether a pushed label (or grouping label) may be called `name`. Names starting
    /// with `__` are Prometheus' own in both modes.
    #[must_use]
    pub fn allows_label_name(self, name: &str) -> bool {
        match self {
            Self::Legacy => is_legacy_label_name(name) && !name.starts_with("__"),
            Self::Utf8 => !name.is_empty() && !name.starts_with("__"),
        }
    }

    /// The escaping a scrape gets when its `Accept` names none: `values` as upstream
    /// 1.9 (prometheus/common 0.5x) says in its `Content-Type` when UTF-8 names are
    /// off (every name is legacy then, so no scheme changes a byte), `underscores` as
    /// upstream 1.11 (common ≥ 0.61) when they are on.
    #[must_use]
    pub fn default_escaping(self) -> Escaping {
        match self {
            Self::Legacy => Escaping::Values,
            Self::Utf8 => Escaping::Underscores,
        }
    }
}

/// Whether `name` is a legacy Prometheus metric name, `[a-zA-Z_:][a-zA-Z0-9_:]*`: the
/// names that every escaping leaves alone and the text format writes unquoted. (Go's
/// `model.IsValidLegacyMetricName`, which Go also applies to label names when escaping.)
#[must_use]
pub fn is_legacy_name(name: &str) -> bool {
    !name.is_empty() && name.char_indices().all(|(at, c)| is_legacy_char(c, at))
}

/// Whether `name` is a legacy label name, `[a-zA-Z_][a-zA-Z0-9_]*`.
#[must_use]
pub fn is_legacy_label_name(name: &str) -> bool {
    is_legacy_name(name) && !name.contains(':')
}

fn is_legacy_char(c: char, at: usize) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (c.is_ascii_digit() && at > 0)
}

/// `name` as a scrape negotiated to `escaping` sees it (Go's `model.EscapeName` for the
/// names `EscapeMetricFamily` escapes): legacy names are never changed; otherwise
/// - `allow-utf-8`: unchanged (the writer quotes it);
/// - `underscores`: each invalid character becomes `_`;
/// - `dots`: `.` becomes `_dot_`, `_` becomes `__`, other invalid characters `__`;
/// - `values`: `U__` and the name with `_` doubled and each invalid character written
///   as `_<hex code point>_`.
#[must_use]
pub fn escape(name: &str, escaping: Escaping) -> Cow<'_, str> {
    if escaping == Escaping::AllowUtf8 || name.is_empty() || is_legacy_name(name) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    match escaping {
        Escaping::AllowUtf8 => unreachable!("returned above"),
        Escaping::Underscores => {
            for (at, c) in name.char_indices() {
                out.push(if is_legacy_char(c, at) { c } else { '_' });
            }
        }
        Escaping::Dots => {
            for (at, c) in name.char_indices() {
                match c {
                    '_' => out.push_str("__"),
                    '.' => out.push_str("_dot_"),
                    c if is_legacy_char(c, at) => out.push(c),
                    _ => out.push_str("__"),
                }
            }
        }
        Escaping::Values => {
            out.push_str("U__");
            for (at, c) in name.char_indices() {
                match c {
                    '_' => out.push_str("__"),
                    c if is_legacy_char(c, at) => out.push(c),
                    // A `char` is always a valid code point: Go's `_FFFD_` case cannot
                    // arise from a Rust string.
                    c => {
                        let _ = write!(out, "_{:x}_", u32::from(c));
                    }
                }
            }
        }
    }
    Cow::Owned(out)
}

/// Decodes a `U__` value-escaped name (Go's `model.UnescapeName` with
/// `ValueEncodingEscaping`): `__` is `_`, `_<hex>_` the character of that code point.
/// A name without the prefix, or one that does not decode (an odd `_`, more than five
/// hex digits as in Go, not a code point), is returned unchanged, as Go does.
#[must_use]
pub fn unescape_values(name: &str) -> Cow<'_, str> {
    let Some(escaped) = name.strip_prefix("U__") else {
        return Cow::Borrowed(name);
    };
    decode_values(escaped).map_or(Cow::Borrowed(name), Cow::Owned)
}

fn decode_values(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '_' {
            out.push(c);
            continue;
        }
        let mut code: u32 = 0;
        let mut digits = 0;
        loop {
            match chars.next()? {
                '_' if digits == 0 => {
                    out.push('_');
                    break;
                }
                '_' => {
                    out.push(char::from_u32(code)?);
                    break;
                }
                hex => {
                    // Go's loop gives up at the sixth digit, so five is the most.
                    if digits == 5 {
                        return None;
                    }
                    code = code * 16 + hex.to_digit(16)?;
                    digits += 1;
                }
            }
        }
    }
    Some(out)
}

/// Whether any name of `family` (its own, or a label's) is not a legacy name: the
/// families whose exposition depends on the escaping.
#[must_use]
pub fn has_utf8_names(family: &MetricFamily) -> bool {
    !is_legacy_name(family.name.as_deref().unwrap_or("x"))
        || family
            .metric
            .iter()
            .flat_map(|metric| &metric.label)
            .any(|label| !is_legacy_name(label.name.as_deref().unwrap_or("x")))
}

/// `family` with its name and its series' label names escaped by `escaping`, as Go's
/// `model.EscapeMetricFamily` (legacy names, label values and exemplars unchanged).
#[must_use]
pub fn escape_family(mut family: MetricFamily, escaping: Escaping) -> MetricFamily {
    if escaping == Escaping::AllowUtf8 {
        return family;
    }
    if let Some(name) = &mut family.name {
        if let Cow::Owned(escaped) = escape(name, escaping) {
            *name = escaped;
        }
    }
    for metric in &mut family.metric {
        for LabelPair { name, .. } in &mut metric.label {
            if let Some(name) = name {
                if let Cow::Owned(escaped) = escape(name, escaping) {
                    *name = escaped;
                }
            }
        }
    }
    family
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows written from the examples in the documentation of prometheus/common's
    /// `model` package (`EscapeName`, `UnescapeName`) and its escaping schemes.
    #[test]
    fn escaping_table() {
        use Escaping::{AllowUtf8, Dots, Underscores, Values};
        let table: &[(&str, &str, Escaping, &str)] = &[
            (
                "legacy name unchanged",
                "http_requests_total",
                Underscores,
                "http_requests_total",
            ),
            ("legacy name unchanged by dots", "a_b:c", Dots, "a_b:c"),
            ("legacy name unchanged by values", "a_b", Values, "a_b"),
            ("allow-utf-8 keeps all", "my.metric", AllowUtf8, "my.metric"),
            ("underscores: dot", "my.metric", Underscores, "my_metric"),
            ("underscores: leading digit", "1st", Underscores, "_st"),
            (
                "underscores: multibyte is one character",
                "größe",
                Underscores,
                "gr__e",
            ),
            (
                "dots: dot and underscore",
                "my.metric_x",
                Dots,
                "my_dot_metric__x",
            ),
            ("dots: other characters", "a-b", Dots, "a__b"),
            ("values: dot", "my.metric", Values, "U__my_2e_metric"),
            (
                "values: underscore doubled",
                "a.b_c",
                Values,
                "U__a_2e_b__c",
            ),
            ("values: emoji", "hi\u{1f600}", Values, "U__hi_1f600_"),
            ("values: leading digit", "1a", Values, "U___31_a"),
            ("empty stays empty", "", Values, ""),
        ];
        for (case, name, escaping, want) in table {
            assert_eq!(escape(name, *escaping), *want, "{case}");
        }
    }

    #[test]
    fn value_escaping_round_trips() {
        for name in [
            "my.metric",
            "a.b_c",
            "hi\u{1f600}",
            "1a",
            "größe",
            "x y",
            "_._",
        ] {
            let escaped = escape(name, Escaping::Values);
            assert_eq!(unescape_values(&escaped), name, "{escaped}");
        }
    }

    #[test]
    fn unescape_leaves_undecodable_names_as_they_are() {
        let table = [
            ("no prefix", "my_2e_metric", "my_2e_metric"),
            ("decodes", "U__my_2e_metric", "my.metric"),
            ("upper-case hex", "U__a_2E_b", "a.b"),
            ("dangling underscore", "U__a_", "U__a_"),
            ("unclosed code", "U__a_2e", "U__a_2e"),
            ("not hex", "U__a_zz_", "U__a_zz_"),
            ("five digits", "U__a_00041_", "a\u{41}"),
            ("six digits, as Go", "U__a_000041_", "U__a_000041_"),
            ("surrogate", "U__a_d800_", "U__a_d800_"),
            ("beyond unicode", "U__a_110000_", "U__a_110000_"),
        ];
        for (case, name, want) in table {
            assert_eq!(unescape_values(name), want, "{case}");
        }
    }

    #[test]
    fn rules_by_mode() {
        let table = [
            ("legacy name", "a_b", true, true, true, true),
            ("dotted", "a.b", false, true, false, true),
            ("colon in label", "a:b", true, true, false, true),
            ("reserved label", "__x", true, true, false, false),
            ("empty", "", false, false, false, false),
        ];
        for (case, name, legacy_metric, utf8_metric, legacy_label, utf8_label) in table {
            assert_eq!(
                NameRules::Legacy.allows_metric_name(name),
                legacy_metric,
                "{case}"
            );
            assert_eq!(
                NameRules::Utf8.allows_metric_name(name),
                utf8_metric,
                "{case}"
            );
            assert_eq!(
                NameRules::Legacy.allows_label_name(name),
                legacy_label,
                "{case}"
            );
            assert_eq!(
                NameRules::Utf8.allows_label_name(name),
                utf8_label,
                "{case}"
            );
        }
    }

    #[test]
    fn escape_family_escapes_names_only() {
        let family = MetricFamily {
            name: Some("my.metric".to_owned()),
            metric: vec![crate::model::Metric {
                label: vec![LabelPair::new("lbl.x", "v.1"), LabelPair::new("job", "j")],
                ..crate::model::Metric::default()
            }],
            ..MetricFamily::default()
        };
        assert!(has_utf8_names(&family));
        let escaped = escape_family(family, Escaping::Underscores);
        assert_eq!(escaped.name.as_deref(), Some("my_metric"));
        assert_eq!(
            escaped.metric[0].label,
            [LabelPair::new("lbl_x", "v.1"), LabelPair::new("job", "j")]
        );
        assert!(!has_utf8_names(&escaped));
    }
}
