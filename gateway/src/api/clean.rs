//! Unclean paths (`//`, `/./`, `/../`) answered like Go's `http.ServeMux`, which sits in
//! front of the pushgateway's router: a 301 to the cleaned path, for every method,
//! before any route sees the request. Cleaning works on the percent-decoded path, as
//! Go's does. (The path filter denies on its own normalised path before this runs.)

use std::fmt::Write as _;

use axum::{
    extract::Request,
    http::{Method, StatusCode},
    middleware::Next,
    response::Response,
};

use super::redirect;

/// Go's `cleanPath`: `path.Clean` (one slash at a time, no `.`, `..` resolved, rooted),
/// keeping a trailing slash the original had.
#[must_use]
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let mut cleaned = format!("/{}", parts.join("/"));
    if path.ends_with('/') && cleaned != "/" {
        cleaned.push('/');
    }
    cleaned
}

/// Percent-encodes what Go's `url.URL.EscapedPath` would in a path.
fn escape_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The middleware: 301 to the clean path when the request's path is not clean.
pub async fn redirect_unclean(request: Request, next: Next) -> Response {
    let raw = request.uri().path();
    // A path that does not decode is left to the routes, which answer it.
    if let Some(decoded) = percent_decode(raw) {
        let cleaned = clean_path(&decoded);
        if cleaned != decoded {
            let mut location = escape_path(&cleaned);
            if let Some(query) = request.uri().query() {
                location.push('?');
                location.push_str(query);
            }
            // Go writes its small HTML body only for GET.
            let body = (request.method() == Method::GET)
                .then(|| format!("<a href=\"{location}\">Moved Permanently</a>.\n\n"));
            return redirect(StatusCode::MOVED_PERMANENTLY, &location, body);
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_go() {
        let cases = [
            ("clean", "/metrics", "/metrics"),
            ("root", "/", "/"),
            ("double slash in front", "//metrics", "/metrics"),
            ("empty component", "/metrics/job//a/b", "/metrics/job/a/b"),
            ("dot", "/metrics/job/a/./b", "/metrics/job/a/b"),
            (
                "dot-dot inside",
                "/metrics/job/a/../b/c/d",
                "/metrics/job/b/c/d",
            ),
            (
                "dot-dot at the end",
                "/metrics/job/a/b/..",
                "/metrics/job/a",
            ),
            ("trailing slash kept", "/metrics/job/a/", "/metrics/job/a/"),
            ("dot-dot above the root", "/../metrics", "/metrics"),
            ("trailing dot", "/metrics/.", "/metrics"),
        ];
        for (name, path, want) in cases {
            assert_eq!(clean_path(path), want, "case {name}");
        }
    }

    #[test]
    fn escapes_and_decodes() {
        assert_eq!(escape_path("/metrics/job/a b"), "/metrics/job/a%20b");
        assert_eq!(escape_path("/x/é"), "/x/%C3%A9");
        assert_eq!(percent_decode("/a%2Fb%20c").as_deref(), Some("/a/b c"));
        assert_eq!(percent_decode("/bad%zz"), None);
    }
}
