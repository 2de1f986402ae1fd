//! Push body codecs: the text format parser, the delimited protobuf codec and the
//! `Content-Encoding` decoder, plus the choice between text and protobuf from a
//! request's `Content-Type`. All pure functions: the HTTP layer feeds them bytes and
//! header values, and maps their errors to status codes.

pub mod body;
pub mod limits;
pub mod protobuf;
pub mod text;

/// Media type of protobuf bodies, before its parameters.
const PROTOBUF_MEDIA_TYPE: &str = "application/vnd.google.protobuf";
/// The `proto` parameter naming the message in a protobuf body.
const PROTOBUF_MESSAGE: &str = "io.prometheus.client.MetricFamily";

/// The wire format of a push body, chosen from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushFormat {
    /// Prometheus text format 0.0.4 (the default for anything not protobuf).
    Text,
    /// Varint length-delimited `io.prometheus.client.MetricFamily` messages.
    DelimitedProtobuf,
}

/// Chooses the push body format from a `Content-Type` header value.
///
/// As in the Go pushgateway, only a well-formed
/// `application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
/// encoding=delimited` (any parameter order, spacing, quoting; type and parameter names
/// case-insensitive) selects protobuf; anything else, malformed included, is text.
#[must_use]
pub fn push_format(content_type: Option<&str>) -> PushFormat {
    let Some((media_type, params)) = content_type.and_then(parse_media_type) else {
        return PushFormat::Text;
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    if media_type == PROTOBUF_MEDIA_TYPE
        && param("encoding") == Some("delimited")
        && param("proto") == Some(PROTOBUF_MESSAGE)
    {
        PushFormat::DelimitedProtobuf
    } else {
        PushFormat::Text
    }
}

/// Parses `type/subtype; key=value; ...` like Go's `mime.ParseMediaType`: the type and
/// keys are lower-cased, values may be quoted, a trailing `;` is ignored, and anything
/// malformed or a repeated key yields `None`.
fn parse_media_type(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let (base, mut rest) = header.split_once(';').unwrap_or((header, ""));
    let media_type = base.trim().to_ascii_lowercase();
    if !is_media_type(&media_type) {
        return None;
    }
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let (key, after_key) = take_token(rest);
        let after_key = after_key.trim_start();
        let after_eq = after_key.strip_prefix('=')?;
        if key.is_empty() {
            return None;
        }
        let (value, after_value) = take_value(after_eq.trim_start())?;
        let key = key.to_ascii_lowercase();
        if params.iter().any(|(known, _)| *known == key) {
            return None;
        }
        params.push((key, value));
        let after_value = after_value.trim_start();
        if after_value.is_empty() {
            break;
        }
        // Parameters are separated by ';'; a lone trailing ';' is tolerated.
        rest = after_value.strip_prefix(';')?;
    }
    Some((media_type, params))
}

/// `token` or `token/token`, as Go's `checkMediaTypeDisposition` wants it.
fn is_media_type(text: &str) -> bool {
    let (main, rest) = take_token(text);
    if main.is_empty() {
        return false;
    }
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return false;
    };
    let (sub, rest) = take_token(rest);
    !sub.is_empty() && rest.is_empty()
}

/// RFC 2045 token characters: printable ASCII except blanks and tspecials.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&byte)
}

fn take_token(text: &str) -> (&str, &str) {
    let end = text
        .bytes()
        .position(|b| !is_token_byte(b))
        .unwrap_or(text.len());
    text.split_at(end)
}

/// A token or a quoted string (with backslash escapes), and what follows it.
fn take_value(text: &str) -> Option<(String, &str)> {
    let Some(quoted) = text.strip_prefix('"') else {
        let (token, rest) = take_token(text);
        return (!token.is_empty()).then(|| (token.to_owned(), rest));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &quoted[i + 1..])),
            '\\' => value.push(chars.next()?.1),
            _ => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_format_from_content_type() {
        let table: &[(&str, Option<&str>, PushFormat)] = &[
            ("no header", None, PushFormat::Text),
            ("empty", Some(""), PushFormat::Text),
            ("text", Some("text/plain; version=0.0.4"), PushFormat::Text),
            (
                "canonical protobuf",
                Some("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"),
                PushFormat::DelimitedProtobuf,
            ),
            (
                "parameters swapped, no spaces",
                Some("application/vnd.google.protobuf;encoding=delimited;proto=io.prometheus.client.MetricFamily"),
                PushFormat::DelimitedProtobuf,
            ),
            (
                "upper-case type and keys, spaces around =",
                Some("Application/Vnd.Google.Protobuf; Proto = io.prometheus.client.MetricFamily ; ENCODING=delimited;"),
                PushFormat::DelimitedProtobuf,
            ),
            (
                "quoted values",
                Some("application/vnd.google.protobuf; proto=\"io.prometheus.client.MetricFamily\"; encoding=\"delimited\""),
                PushFormat::DelimitedProtobuf,
            ),
            (
                "values are case-sensitive",
                Some("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=Delimited"),
                PushFormat::Text,
            ),
            (
                "text encoding of protobuf",
                Some("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=text"),
                PushFormat::Text,
            ),
            (
                "missing proto",
                Some("application/vnd.google.protobuf; encoding=delimited"),
                PushFormat::Text,
            ),
            (
                "repeated parameter is malformed",
                Some("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; encoding=delimited"),
                PushFormat::Text,
            ),
            (
                "parameter without value is malformed",
                Some("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; x"),
                PushFormat::Text,
            ),
            (
                "other protobuf message",
                Some("application/vnd.google.protobuf; proto=other.Message; encoding=delimited"),
                PushFormat::Text,
            ),
        ];
        for (name, header, want) in table {
            assert_eq!(push_format(*header), *want, "{name}");
        }
    }
}
