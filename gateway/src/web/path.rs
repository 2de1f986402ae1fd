//! The normal form of a request path that the filter matches its rules against.
//!
//! The router sees the raw, still percent-encoded path; a rule that matched only that
//! could be walked around with `/%64ebug`, `//debug` or `/metrics/../debug`. So the
//! filter matches a normal form that is at least as "decoded" as anything behind it
//! could see: percent-decoding repeated until nothing changes (a few rounds, so a
//! double-encoded `%2564` is a `d` too), `\` read as `/`, `;parameters` cut off each
//! segment (Tomcat-style `/..;/debug`), empty and `.` segments dropped and `..`
//! segments resolved (never above the root). Case is kept: the filter's rules are
//! matched case-insensitively instead. It is a pure function, table-tested below.

/// Rounds of percent-decoding; three undo any encoding a client can layer on purpose
/// short of a loop, and a longer chain is itself suspicious (it then stays encoded
/// and matches nothing, but the router sees even less).
const DECODE_ROUNDS: usize = 3;

/// The normal form of `raw` (a request path, percent-encoded or not): always starts
/// with `/`, has no empty, `.` or `..` segments and no trailing `/` (except for `/`).
#[must_use]
pub fn normalise(raw: &str) -> String {
    let mut bytes = raw.as_bytes().to_vec();
    for _ in 0..DECODE_ROUNDS {
        let decoded = percent_decode_lenient(&bytes);
        if decoded == bytes {
            break;
        }
        bytes = decoded;
    }
    let text = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        let segment = segment.split(';').next().unwrap_or_default();
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normal = String::with_capacity(text.len() + 1);
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    normal
}

/// `normal` (see [`normalise`]) without the route prefix (a normalised prefix such as
/// `/pg`, or `""`): `Some("/x")` for `/pg/x`, `Some("/")` for `/pg`, `None` when the
/// path is outside the prefix. The prefix is compared case-insensitively, like rules.
#[must_use]
pub fn strip_route_prefix<'a>(normal: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(normal);
    }
    let head = normal.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    match &normal[prefix.len()..] {
        "" => Some("/"),
        rest if rest.starts_with('/') => Some(rest),
        _ => None,
    }
}

/// Decodes every valid `%XX` (either case of hex digits) and leaves anything else as
/// it is: the filter must not fail on paths the router would still route.
fn percent_decode_lenient(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
        if bytes[i] == b'%' {
            if let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) {
                // Two hex digits make at most 255.
                out.push(u8::try_from(high * 16 + low).unwrap_or(u8::MAX));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_forms() {
        let table = [
            ("root", "/", "/"),
            ("empty", "", "/"),
            ("plain", "/metrics", "/metrics"),
            ("trailing slash", "/metrics/", "/metrics"),
            ("double slashes", "//a///b", "/a/b"),
            ("dot segment", "/./a/.", "/a"),
            ("dot-dot", "/a/b/../c", "/a/c"),
            ("dot-dot above root", "/../../a", "/a"),
            ("encoded letter", "/%64ebug", "/debug"),
            ("upper-case hex", "/%2E%2E/x", "/x"),
            ("mixed-case hex", "/a%2fb%2Fc", "/a/b/c"),
            ("double encoding", "/%2564ebug", "/debug"),
            ("triple encoding", "/%252564ebug", "/debug"),
            ("bad escape kept", "/a%zz/b%", "/a%zz/b%"),
            ("backslash", "/a\\..\\b", "/b"),
            ("path parameters", "/..;/a;x=1/b", "/a/b"),
            ("case kept", "/DeBuG", "/DeBuG"),
            ("not utf-8", "/a%ff", "/a\u{fffd}"),
            ("utf-8", "/caf%C3%A9", "/café"),
        ];
        for (name, raw, want) in table {
            assert_eq!(normalise(raw), want, "case {name}: {raw:?}");
        }
    }

    #[test]
    fn route_prefixes() {
        let table = [
            ("no prefix", "/debug", "", Some("/debug")),
            ("under prefix", "/pg/debug", "/pg", Some("/debug")),
            ("the prefix itself", "/pg", "/pg", Some("/")),
            ("prefix in other case", "/PG/debug", "/pg", Some("/debug")),
            ("outside", "/debug", "/pg", None),
            ("longer first segment", "/pgx/debug", "/pg", None),
        ];
        for (name, normal, prefix, want) in table {
            assert_eq!(strip_route_prefix(normal, prefix), want, "case {name}");
        }
    }
}
