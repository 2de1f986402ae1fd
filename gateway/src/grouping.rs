//! Grouping keys: which group of the store a push, a delete or a stored family belongs to.
//!
//! A grouping key is the set of labels named in a push URL,
//! `/metrics/job/<job>{/<name>/<value>}*`, `job` included. Parsing follows the Go
//! pushgateway's `splitLabels` and `decodeBase64` (v1.5.1) so that every client that
//! works there works here, with the same status and error text: the path is
//! percent-decoded first and split afterwards, `@base64` marks an RFC 4648 URL-safe
//! value whose trailing `=` are ignored, a repeated name keeps its last value and the
//! URL's `job` always wins. It is a pure function, table-tested below.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use crate::names::{unescape_values, NameRules};

/// Marks a label name (or `job`) in the URL whose value is base64-encoded.
const BASE64_SUFFIX: &str = "@base64";

/// The labels that identify one group of the store, `job` included, sorted by name.
///
/// Label values may be empty (`/instance/` in a URL gives `instance=""`); empty values
/// are kept, because they overwrite same-named labels of pushed metrics.
///
/// Ordered like a map of its labels (by name, then value, pair after pair), which is
/// the order of groups in the store.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GroupingKey {
    /// Every label's name then value, one after another, sorted by name, names
    /// unique. Two allocations per key rather than one per name and value: the store
    /// keeps a key per group, and a map's node alone took 500 bytes for two labels.
    text: Box<str>,
    /// Where each name and each value ends in `text`. Equal `text` and `ends` are
    /// equal labels, so equality and hashing can be derived; order cannot.
    ends: Box<[u32]>,
}

/// Why a push URL does not name a group. The texts are the Go pushgateway's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupingError {
    /// The path does not start with `job/` or `job@base64/` (a routing mistake).
    #[error("push paths look like /metrics/job/<job>{{/<label>/<value>}}, not {path:?}")]
    NotAPushPath {
        /// The path after `/metrics/`, decoded.
        path: String,
    },
    /// A `%` in the path is not followed by two hex digits.
    #[error("invalid URL escape in path {raw:?}: a '%' must be followed by two hex digits")]
    BadPercentEncoding {
        /// The path after `/metrics/`, as received.
        raw: String,
    },
    /// The job name after `job@base64/` is not valid base64.
    #[error(
        "invalid base64 encoding in job name {decoded}: illegal base64 data at input byte {offset}"
    )]
    JobBase64 {
        /// What Go prints: the part decoded before the error, quoted like Go's `%q`.
        decoded: String,
        /// Index of the offending input byte.
        offset: usize,
    },
    /// The labels part has an odd number of `/`-separated components.
    #[error("odd number of components in label string {}", go_quote(.labels.as_bytes()))]
    OddComponents {
        /// The labels part of the path, with its leading `/`.
        labels: String,
    },
    /// A label name is not `[a-zA-Z_][a-zA-Z0-9_]*` or starts with `__`.
    /// After Go's text, a hint only where the name would pass with UTF-8 names on, so
    /// that 1.9's answers stay byte for byte what they were for everything else.
    #[error("improper label name {}{}", go_quote(.name.as_bytes()), if *.utf8_hint {
        " (label names beyond [a-zA-Z_][a-zA-Z0-9_]* need --push.enable-utf8-names)"
    } else {
        ""
    })]
    ImproperLabelName {
        /// The name, without a `@base64` suffix.
        name: String,
        /// Whether the name would be accepted with `--push.enable-utf8-names`.
        utf8_hint: bool,
    },
    /// A `<name>@base64` label value is not valid base64.
    #[error("invalid base64 encoding for label {name}={}: illegal base64 data at input byte {offset}", go_quote(.value.as_bytes()))]
    LabelBase64 {
        /// The label name, without the suffix.
        name: String,
        /// The value as it was in the path.
        value: String,
        /// Index of the offending input byte.
        offset: usize,
    },
    /// The job name is empty (`job@base64/=`).
    #[error("job name is required")]
    JobRequired,
    /// A decoded job or label value is not UTF-8, which Prometheus label values must be.
    #[error("label {name:?} has a value that is not valid UTF-8 ({}); label values must be UTF-8", go_quote(.value))]
    NotUtf8 {
        /// The label name (`job` for the job).
        name: String,
        /// The decoded bytes.
        value: Vec<u8>,
    },
}

impl GroupingKey {
    /// Parses the part of a push URL after `/metrics/`, still percent-encoded, e.g.
    /// `job/backup/instance/db1` or `job@base64/YmFja3Vw/path@base64/L3Zhcg`.
    ///
    /// Checks run in Go's order: the base64 job, then the label components, then the
    /// empty job.
    pub fn from_path(raw: &str) -> Result<Self, GroupingError> {
        Self::from_path_with(raw, NameRules::Legacy)
    }

    /// [`from_path`](Self::from_path) under `names`: with UTF-8 names, a label name
    /// starting `U__` is value-decoded (`U__my_2e_label` is `my.label`, see
    /// [`crate::names::unescape_values`]), also with `@base64` after it, as upstream
    /// 1.11 does, and any other UTF-8 name is taken as it is.
    pub fn from_path_with(raw: &str, names: NameRules) -> Result<Self, GroupingError> {
        let decoded = percent_decode(raw).ok_or_else(|| GroupingError::BadPercentEncoding {
            raw: raw.to_owned(),
        })?;
        let (job_is_base64, rest) = if let Some(rest) = decoded.strip_prefix(b"job/") {
            (false, rest)
        } else if let Some(rest) = decoded.strip_prefix(b"job@base64/") {
            (true, rest)
        } else {
            return Err(GroupingError::NotAPushPath {
                path: String::from_utf8_lossy(&decoded).into_owned(),
            });
        };
        let split = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let (job, labels) = rest.split_at(split);

        let job = if job_is_base64 {
            decode_base64(job).map_err(|(partial, offset)| GroupingError::JobBase64 {
                decoded: go_quote(&partial),
                offset,
            })?
        } else {
            job.to_vec()
        };
        let mut map = split_labels(labels, names)?;
        if job.is_empty() {
            return Err(GroupingError::JobRequired);
        }
        map.insert("job".to_owned(), utf8("job", job)?);
        Ok(Self::from_map(map))
    }

    /// The key of a push or delete request for `path` (the request target's path as
    /// received, still percent-encoded) under `route_prefix` (normalised, e.g. `/pg`
    /// or `""`): `None` when the path is not a push path at all.
    ///
    /// The push handler and the path filter both take the key from here, so the
    /// filter judges exactly the group the handler would write: `@base64`,
    /// percent-decoding and `;` are read the same way by both, by construction.
    #[must_use]
    pub fn of_request_path(
        path: &str,
        route_prefix: &str,
        names: NameRules,
    ) -> Option<Result<Self, GroupingError>> {
        let rest = path.strip_prefix(route_prefix)?.strip_prefix("/metrics/")?;
        Some(Self::from_path_with(rest, names))
    }

    /// The key written as a plain push path, `/metrics/job/<job>{/<name>/<value>}`,
    /// labels after `job` sorted by name, values decoded; a `%` or `/` inside a value
    /// is written `%25` or `%2F`, so each segment is one name or one value. It is the
    /// form deny rules see of a push, whatever encoding its URL used.
    #[must_use]
    pub fn to_push_path(&self) -> String {
        fn push_value(out: &mut String, value: &str) {
            for c in value.chars() {
                match c {
                    '%' => out.push_str("%25"),
                    '/' => out.push_str("%2F"),
                    c => out.push(c),
                }
            }
        }
        let mut out = String::with_capacity(self.text.len() + 2 * self.ends.len() + 16);
        out.push_str("/metrics/job/");
        push_value(&mut out, self.job());
        for (name, value) in self.labels().filter(|(name, _)| *name != "job") {
            out.push('/');
            out.push_str(name);
            out.push('/');
            push_value(&mut out, value);
        }
        out
    }

    fn from_map(labels: BTreeMap<String, String>) -> Self {
        let mut text = String::new();
        let mut ends = Vec::with_capacity(labels.len() * 2);
        // A path is bounded far below 4 GiB by the request limits.
        let end = |text: &String| u32::try_from(text.len()).unwrap_or(u32::MAX);
        for (name, value) in labels {
            text.push_str(&name);
            ends.push(end(&text));
            text.push_str(&value);
            ends.push(end(&text));
        }
        Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }

    /// A key from labels already known to be valid (restored state, tests).
    ///
    /// Returns `None` when `job` is missing or empty or a label name is improper
    /// under `names`.
    #[must_use]
    pub fn from_labels(labels: BTreeMap<String, String>, names: NameRules) -> Option<Self> {
        let job_ok = labels.get("job").is_some_and(|job| !job.is_empty());
        let names_ok = labels.keys().all(|name| names.allows_label_name(name));
        (job_ok && names_ok).then(|| Self::from_map(labels))
    }

    /// The labels, `job` included, sorted by name.
    pub fn labels(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.chunks_exact(2).map(move |ends| {
            let (middle, end) = (ends[0] as usize, ends[1] as usize);
            let pair = (&self.text[start..middle], &self.text[middle..end]);
            start = end;
            pair
        })
    }

    /// [`labels`](Self::labels) as bytes.
    fn byte_pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let text = self.text.as_bytes();
        let mut start = 0;
        self.ends.chunks_exact(2).map(move |ends| {
            let (middle, end) = (ends[0] as usize, ends[1] as usize);
            let pair = (&text[start..middle], &text[middle..end]);
            start = end;
            pair
        })
    }

    /// The value of the label `name`, if the key has it.
    #[must_use]
    pub fn label(&self, name: &str) -> Option<&str> {
        // Keys have a handful of labels.
        self.labels()
            .find(|(other, _)| *other == name)
            .map(|(_, value)| value)
    }

    /// The job name (never empty).
    #[must_use]
    pub fn job(&self) -> &str {
        self.label("job").unwrap_or_default()
    }

    /// The labels that a scraper sees: those with a non-empty value.
    ///
    /// Prometheus treats an empty label value as an absent label, so two keys with the
    /// same identity (`{job="a"}` and `{job="a",instance=""}`) would expose the same
    /// series; the store lets only one of them exist.
    pub fn identity(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.labels().filter(|(_, value)| !value.is_empty())
    }
}

impl Ord for GroupingKey {
    fn cmp(&self, other: &Self) -> Ordering {
        // As bytes, the order of `str`: the store compares keys on every look-up, and
        // cutting `str`s checks char boundaries.
        self.byte_pairs().cmp(other.byte_pairs())
    }
}

impl PartialOrd for GroupingKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for GroupingKey {
    /// As the derived `Debug` of the former slice of pairs printed it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<(&str, &str)> = self.labels().collect();
        f.debug_struct("GroupingKey")
            .field("labels", &labels)
            .finish()
    }
}

impl fmt::Display for GroupingKey {
    /// `{instance="db1",job="backup"}`, values quoted like Go's `%q`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (name, value)) in self.labels().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}={}", go_quote(value.as_bytes()))?;
        }
        f.write_str("}")
    }
}

/// Go's `splitLabels`: `labels` is empty or starts with `/`; `/` alone means no labels.
fn split_labels(
    labels: &[u8],
    names: NameRules,
) -> Result<BTreeMap<String, String>, GroupingError> {
    let mut result = BTreeMap::new();
    if labels.len() <= 1 {
        return Ok(result);
    }
    let components: Vec<&[u8]> = labels[1..].split(|&b| b == b'/').collect();
    if !components.len().is_multiple_of(2) {
        return Err(GroupingError::OddComponents {
            labels: String::from_utf8_lossy(labels).into_owned(),
        });
    }
    for pair in components.chunks_exact(2) {
        let (name, value) = (pair[0], pair[1]);
        let trimmed = name.strip_suffix(BASE64_SUFFIX.as_bytes()).unwrap_or(name);
        let improper = || GroupingError::ImproperLabelName {
            name: String::from_utf8_lossy(trimmed).into_owned(),
            utf8_hint: !names.utf8()
                && std::str::from_utf8(trimmed)
                    .is_ok_and(|name| NameRules::Utf8.allows_label_name(&unescape_values(name))),
        };
        let trimmed_name = std::str::from_utf8(trimmed).map_err(|_| improper())?;
        let label_name = match names {
            NameRules::Legacy => Cow::Borrowed(trimmed_name),
            // Upstream checks the `__` prefix on the name as written; the decoded name
            // is checked too, so that `U_____x` cannot set a reserved `__x`.
            NameRules::Utf8 if trimmed_name.starts_with("__") => return Err(improper()),
            NameRules::Utf8 => unescape_values(trimmed_name),
        };
        if !names.allows_label_name(&label_name) {
            return Err(improper());
        }
        let trimmed_name = &*label_name;
        let value = if trimmed.len() == name.len() {
            value.to_vec()
        } else {
            decode_base64(value).map_err(|(_, offset)| GroupingError::LabelBase64 {
                name: trimmed_name.to_owned(),
                value: String::from_utf8_lossy(value).into_owned(),
                offset,
            })?
        };
        result.insert(trimmed_name.to_owned(), utf8(trimmed_name, value)?);
    }
    Ok(result)
}

fn utf8(name: &str, value: Vec<u8>) -> Result<String, GroupingError> {
    String::from_utf8(value).map_err(|err| GroupingError::NotUtf8 {
        name: name.to_owned(),
        value: err.into_bytes(),
    })
}

/// A Prometheus label name that users may set: `[a-zA-Z_][a-zA-Z0-9_]*`, no `__` prefix.
#[must_use]
pub fn is_proper_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') && !name.starts_with("__")
}

/// Percent-decodes a URL path (no `+` → space: that is for query strings).
fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let high = (hex[0] as char).to_digit(16)?;
            let low = (hex[1] as char).to_digit(16)?;
            out.push(u8::try_from(high * 16 + low).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Go's `base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))`.
///
/// On error returns what Go returns with it: the bytes of the complete quanta decoded
/// before the bad one, and the offset Go reports. Like Go, `\r` and `\n` are skipped.
fn decode_base64(input: &[u8]) -> Result<Vec<u8>, (Vec<u8>, usize)> {
    let end = input.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    let input = &input[..end];
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut quantum = [0u8; 4];
    let mut filled = 0;
    for (index, &byte) in input.iter().enumerate() {
        let sextet = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            b'\r' | b'\n' => continue,
            _ => return Err((out, index)),
        };
        quantum[filled] = sextet;
        filled += 1;
        if filled == 4 {
            out.push(quantum[0] << 2 | quantum[1] >> 4);
            out.push(quantum[1] << 4 | quantum[2] >> 2);
            out.push(quantum[2] << 6 | quantum[3]);
            filled = 0;
        }
    }
    match filled {
        0 => {}
        // One sextet cannot make a byte; Go blames the last input byte.
        1 => return Err((out, input.len() - 1)),
        2 => out.push(quantum[0] << 2 | quantum[1] >> 4),
        _ => {
            out.push(quantum[0] << 2 | quantum[1] >> 4);
            out.push(quantum[1] << 4 | quantum[2] >> 2);
        }
    }
    Ok(out)
}

/// Quotes like Go's `%q` (`strconv.Quote`): printable characters as they are, `"` and
/// `\` escaped, control characters and invalid UTF-8 as escapes.
#[must_use]
pub fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                ' '..='~' => out.push(c),
                c if c.is_ascii() => {
                    let _ = write!(out, "\\x{:02x}", u32::from(c));
                }
                c if is_go_printable(c) => out.push(c),
                c if u32::from(c) < 0x1_0000 => {
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                }
                c => {
                    let _ = write!(out, "\\U{:08x}", u32::from(c));
                }
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint` for non-ASCII characters.
fn is_go_printable(c: char) -> bool {
    !c.is_control()
        && !c.is_whitespace()
        && !matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pairs: &[(&str, &str)]) -> GroupingKey {
        GroupingKey::from_map(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    #[allow(clippy::too_many_lines)] // One table of named cases reads best in one piece.
    fn push_paths_parse_like_the_go_pushgateway() {
        type Want = Result<Vec<(&'static str, &'static str)>, &'static str>;
        let table: &[(&str, &str, Want)] = &[
            ("job only", "job/backup", Ok(vec![("job", "backup")])),
            ("job with trailing slash", "job/backup/", Ok(vec![("job", "backup")])),
            (
                "one label",
                "job/backup/instance/db1",
                Ok(vec![("instance", "db1"), ("job", "backup")]),
            ),
            (
                "trailing slash is an empty value",
                "job/backup/instance/",
                Ok(vec![("instance", ""), ("job", "backup")]),
            ),
            (
                "labels sorted whatever their order",
                "job/j/zone/eu/app/web",
                Ok(vec![("app", "web"), ("job", "j"), ("zone", "eu")]),
            ),
            ("repeated name: last wins", "job/j/a/1/a/2", Ok(vec![("a", "2"), ("job", "j")])),
            ("URL job wins over a job label", "job/j/job/other", Ok(vec![("job", "j")])),
            (
                "percent-encoded slash splits",
                "job/x/a%2Fb",
                Ok(vec![("a", "b"), ("job", "x")]),
            ),
            (
                "percent-encoded slash in job splits",
                "job/a%2Fb",
                Err("odd number of components in label string \"/b\""),
            ),
            (
                "encoded space and UTF-8",
                "job/my%20job/name/%C3%A9t%C3%A9",
                Ok(vec![("job", "my job"), ("name", "été")]),
            ),
            (
                "odd components",
                "job/x/a",
                Err("odd number of components in label string \"/a\""),
            ),
            (
                "odd components after decoding",
                "job/x/a%2Fb/c",
                Err("odd number of components in label string \"/a/b/c\""),
            ),
            ("improper name: dash", "job/x/a-b/c", Err("improper label name \"a-b\"")),
            ("improper name: digit first", "job/x/1a/b", Err("improper label name \"1a\"")),
            ("improper name: reserved prefix", "job/x/__a/b", Err("improper label name \"__a\"")),
            ("improper name: empty", "job/x//v", Err("improper label name \"\"")),
            (
                "base64 label",
                "job/x/path@base64/L3Zhci90bXA",
                Ok(vec![("job", "x"), ("path", "/var/tmp")]),
            ),
            (
                "base64 label with padding trimmed",
                "job/x/b@base64/YWJj=",
                Ok(vec![("b", "abc"), ("job", "x")]),
            ),
            (
                "base64 = alone is the empty value",
                "job/x/b@base64/=",
                Ok(vec![("b", ""), ("job", "x")]),
            ),
            (
                "base64 label, illegal character",
                "job/x/a@base64/!!",
                Err("invalid base64 encoding for label a=\"!!\": illegal base64 data at input byte 0"),
            ),
            (
                "base64 label, one dangling character",
                "job/x/c@base64/YWJjZ",
                Err("invalid base64 encoding for label c=\"YWJjZ\": illegal base64 data at input byte 4"),
            ),
            (
                "base64 label, name checked first",
                "job/x/1@base64/!!",
                Err("improper label name \"1\""),
            ),
            ("base64 job", "job@base64/YmFja3Vw", Ok(vec![("job", "backup")])),
            (
                "base64 job with slash inside",
                "job@base64/L3Zhcg/a/b",
                Ok(vec![("a", "b"), ("job", "/var")]),
            ),
            ("base64 job = alone is empty", "job@base64/=", Err("job name is required")),
            (
                "base64 job, illegal character",
                "job@base64/!!",
                Err("invalid base64 encoding in job name \"\": illegal base64 data at input byte 0"),
            ),
            (
                "base64 job error quotes what Go decoded so far",
                "job@base64/YWJj!",
                Err("invalid base64 encoding in job name \"abc\": illegal base64 data at input byte 4"),
            ),
            (
                "base64 job error before label errors",
                "job@base64/!/a",
                Err("invalid base64 encoding in job name \"\": illegal base64 data at input byte 0"),
            ),
            (
                "label error before empty job",
                "job@base64//a",
                Err("odd number of components in label string \"/a\""),
            ),
            ("empty job", "job//a/b", Err("job name is required")),
            (
                "bad percent escape",
                "job/x%zz",
                Err("invalid URL escape in path \"job/x%zz\": a '%' must be followed by two hex digits"),
            ),
            (
                "invalid UTF-8 value",
                "job/x/a/%FF",
                Err("label \"a\" has a value that is not valid UTF-8 (\"\\xff\"); label values must be UTF-8"),
            ),
        ];
        assert!(
            table.len() >= 25,
            "the spec asks for at least 25 named cases"
        );
        for (name, path, want) in table {
            let got = GroupingKey::from_path(path);
            match (want, got) {
                (Ok(pairs), Ok(got)) => assert_eq!(got, key(pairs), "{name}"),
                (Err(text), Err(err)) => {
                    let err = err.to_string();
                    assert!(err.starts_with(text), "{name}: {err}");
                }
                (want, got) => panic!("{name}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn push_paths_of_requests_and_their_plain_form() {
        // (name, request path, route prefix, plain push path or None when not a push)
        let table: &[(&str, &str, &str, Option<&str>)] = &[
            ("plain", "/metrics/job/a", "", Some("/metrics/job/a")),
            (
                "base64 job",
                "/metrics/job@base64/c2VjcmV0",
                "",
                Some("/metrics/job/secret"),
            ),
            (
                "semicolon kept",
                "/metrics/job/x;evil",
                "",
                Some("/metrics/job/x;evil"),
            ),
            (
                "encoded semicolon",
                "/metrics/job/x%3Bevil",
                "",
                Some("/metrics/job/x;evil"),
            ),
            (
                "labels sorted, last repeat wins",
                "/metrics/job/j/z/1/a/2/z/3",
                "",
                Some("/metrics/job/j/a/2/z/3"),
            ),
            (
                "slash in a value",
                "/metrics/job@base64/YS9i",
                "",
                Some("/metrics/job/a%2Fb"),
            ),
            (
                "percent in a value",
                "/metrics/job/%2573",
                "",
                Some("/metrics/job/%2573"),
            ),
            (
                "under the prefix",
                "/pg/metrics/job/a",
                "/pg",
                Some("/metrics/job/a"),
            ),
            ("outside the prefix", "/metrics/job/a", "/pg", None),
            ("not a push path", "/api/v1/metrics", "", None),
        ];
        for (name, path, prefix, want) in table {
            let got = GroupingKey::of_request_path(path, prefix, NameRules::Legacy)
                .map(|key| key.expect("valid key").to_push_path());
            assert_eq!(got.as_deref(), *want, "case {name}");
        }
        assert!(
            matches!(
                GroupingKey::of_request_path("/metrics/job/x/a", "", NameRules::Legacy),
                Some(Err(_))
            ),
            "an invalid push path is still a push path"
        );
    }

    #[test]
    fn display_and_identity() {
        let key = key(&[("instance", ""), ("job", "a\"b")]);
        assert_eq!(key.to_string(), r#"{instance="",job="a\"b"}"#);
        assert_eq!(key.identity().collect::<Vec<_>>(), vec![("job", "a\"b")]);
        assert_eq!(key.job(), "a\"b");
    }

    /// Groups are stored in key order, which decides HELP winners and the order of
    /// `/api/v1/metrics`: it must stay the order of the labels as a map.
    #[test]
    fn keys_order_like_maps_of_their_labels() {
        let pairs: &[&[(&str, &str)]] = &[
            &[("job", "b")],
            &[("instance", ""), ("job", "a")],
            &[("job", "a")],
            &[("job", "a"), ("z", "1")],
            &[("a", "1"), ("job", "a")],
            &[("instance", "x"), ("job", "a")],
            &[("job", "a"), ("z", "")],
        ];
        let mut keys: Vec<GroupingKey> = pairs.iter().map(|p| key(p)).collect();
        keys.sort();
        let mut maps: Vec<BTreeMap<String, String>> = keys
            .iter()
            .map(|k| {
                k.labels()
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect();
        let in_key_order = maps.clone();
        maps.sort();
        assert_eq!(in_key_order, maps);
        assert_eq!(keys[0].label("instance"), None);
        assert_eq!(keys[0].label("a"), Some("1"));
    }

    #[test]
    fn from_labels_requires_a_job_and_proper_names() {
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(GroupingKey::from_labels(labels(&[("job", "j")]), NameRules::Legacy).is_some());
        assert!(GroupingKey::from_labels(labels(&[("job", "")]), NameRules::Legacy).is_none());
        assert!(
            GroupingKey::from_labels(labels(&[("instance", "i")]), NameRules::Legacy).is_none()
        );
        assert!(
            GroupingKey::from_labels(labels(&[("job", "j"), ("__x", "")]), NameRules::Legacy)
                .is_none()
        );
    }

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn utf8_label_names_in_push_paths() {
        let utf8 = |path: &str| GroupingKey::from_path_with(path, NameRules::Utf8);
        let table: &[(&str, &str, Result<Pairs<'_>, &str>)] = &[
            (
                "U__ name decoded",
                "job/j/U__my_2e_label/v",
                Ok(&[("job", "j"), ("my.label", "v")]),
            ),
            (
                "double underscore",
                "job/j/U__a__b_2e_c/v",
                Ok(&[("a_b.c", "v"), ("job", "j")]),
            ),
            (
                "emoji",
                "job/j/U__hi_1f600_/v",
                Ok(&[("hi\u{1f600}", "v"), ("job", "j")]),
            ),
            (
                "with @base64 value",
                "job/j/U__my_2e_label@base64/L3Zhcg",
                Ok(&[("job", "j"), ("my.label", "/var")]),
            ),
            (
                "base64 job and U__ label",
                "job@base64/YmFja3Vw/U__x_2e_y/1",
                Ok(&[("job", "backup"), ("x.y", "1")]),
            ),
            (
                "plain UTF-8 name",
                "job/j/my.label/v",
                Ok(&[("job", "j"), ("my.label", "v")]),
            ),
            (
                "percent-encoded UTF-8",
                "job/j/gr%C3%B6%C3%9Fe/v",
                Ok(&[("größe", "v"), ("job", "j")]),
            ),
            (
                "legacy name unchanged",
                "job/j/U_x/v",
                Ok(&[("U_x", "v"), ("job", "j")]),
            ),
            // Go returns a name it cannot decode as it is; it is a valid name then.
            (
                "undecodable U__ kept",
                "job/j/U__a_zz_/v",
                Ok(&[("U__a_zz_", "v"), ("job", "j")]),
            ),
            (
                "reserved prefix",
                "job/j/__x/v",
                Err("improper label name \"__x\""),
            ),
            (
                "decodes to reserved",
                "job/j/U______x/v",
                Err("improper label name \"U______x\""),
            ),
            ("empty name", "job/j//v", Err("improper label name \"\"")),
        ];
        for (name, path, want) in table {
            match (want, utf8(path)) {
                (Ok(pairs), Ok(got)) => assert_eq!(got, key(pairs), "{name}"),
                (Err(text), Err(err)) => {
                    let err = err.to_string();
                    assert!(err.starts_with(text), "{name}: {err}");
                }
                (want, got) => panic!("{name}: wanted {want:?}, got {got:?}"),
            }
        }
        // Without the flag, as upstream 1.9 (and 1.11 without it): `U__` names are
        // plain legacy names, other UTF-8 names refused with a word on the flag.
        assert_eq!(
            GroupingKey::from_path("job/j/U__my_2e_label/v").expect("legacy name"),
            key(&[("U__my_2e_label", "v"), ("job", "j")])
        );
        let refused = GroupingKey::from_path("job/j/my.label/v").expect_err("dot");
        assert!(
            refused
                .to_string()
                .starts_with("improper label name \"my.label\"")
                && refused.to_string().contains("--push.enable-utf8-names"),
            "{refused}"
        );
        assert!(GroupingKey::from_labels(
            [
                ("job".to_owned(), "j".to_owned()),
                ("a.b".to_owned(), String::new())
            ]
            .into(),
            NameRules::Utf8
        )
        .is_some());
    }

    #[test]
    fn go_quote_escapes_like_strconv_quote() {
        assert_eq!(go_quote(b"plain"), "\"plain\"");
        assert_eq!(go_quote(b"a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\x01\"");
        assert_eq!(go_quote("été 😀".as_bytes()), "\"été 😀\"");
        assert_eq!(go_quote(b"\xff\xfe"), "\"\\xff\\xfe\"");
        assert_eq!(go_quote("\u{a0}".as_bytes()), "\"\\u00a0\"");
    }
}
