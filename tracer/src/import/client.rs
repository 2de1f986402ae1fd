//! A small blocking HTTP/1.1 client, enough to read a pushgateway's JSON and push
//! groups: `http://` only, one request per connection (`Connection: close`), bodies
//! with `Content-Length`, chunked or up to EOF. The import runs once, on the order of a
//! request per group, so a connection pool or an async stack would buy nothing here;
//! hyper's client is not enabled in the workspace, and this keeps dependencies as they are.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    time::Duration,
};

/// How long connecting to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read or write may stall.
const IO_TIMEOUT: Duration = Duration::from_mins(1);
/// The largest response read: far above a pushgateway's JSON with thousands of groups,
/// and a bound on what a wrong URL can make us hold.
const MAX_RESPONSE: u64 = 512 * 1024 * 1024;

/// Why a URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not `http://host[:port][/path]`.
    #[error("`{url}` is not a gateway URL: {why}; use e.g. http://127.0.0.1:9091")]
    Invalid {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The host name did not resolve.
    #[error("cannot resolve the host of `{url}`: {source}")]
    Resolve {
        /// The URL given.
        url: String,
        /// The resolver's error.
        source: io::Error,
    },
}

/// A gateway's base URL: where to connect, what to send as `Host`, and the path prefix
/// (its `--web.route-prefix`) to put in front of every route.
#[derive(Clone, Debug)]
pub struct BaseUrl {
    /// The URL as given, for messages.
    pub url: String,
    host: String,
    addrs: Vec<SocketAddr>,
    prefix: String,
}

pub use crate::http1::Response;

impl BaseUrl {
    /// Parses `http://host[:port][/prefix]` (port 80 by default) and resolves the host.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let invalid = |why| UrlError::Invalid {
            url: url.to_owned(),
            why,
        };
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => {
                return Err(invalid(
                    "https is not supported (put the import next to the gateway, or reach it through a local tunnel)",
                ))
            }
            Some(_) => return Err(invalid("only http:// URLs are supported")),
            None => return Err(invalid("it has no http:// scheme")),
        };
        if rest.contains(['?', '#', '@']) {
            return Err(invalid(
                "a query, fragment or user name has no place in a gateway URL",
            ));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            return Err(invalid("it has no host"));
        }
        let (host, port) =
            split_port(authority).ok_or_else(|| invalid("its port is not a number"))?;
        let addrs: Vec<SocketAddr> = (host.trim_start_matches('[').trim_end_matches(']'), port)
            .to_socket_addrs()
            .map_err(|source| UrlError::Resolve {
                url: url.to_owned(),
                source,
            })?
            .collect();
        Ok(Self {
            url: url.to_owned(),
            host: authority.to_owned(),
            addrs,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// `method` on `path` (a route like `/api/v1/metrics`, already percent-encoded,
    /// the prefix is added here) with `body` of `content_type`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> io::Result<Response> {
        let mut stream = self.connect()?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: dropgate-import/{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.prefix,
            self.host,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        if let Some(content_type) = content_type {
            head.push_str("Content-Type: ");
            head.push_str(content_type);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
        parse_response(&raw)
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
        for addr in &self.addrs {
            match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
                Ok(stream) => return Ok(stream),
                Err(error) => last = error,
            }
        }
        Err(last)
    }
}

/// `host:port`, `[v6]:port` or a bare host (port 80).
fn split_port(authority: &str) -> Option<(&str, u16)> {
    let port_at = if authority.starts_with('[') {
        authority.find("]:").map(|at| at + 1)
    } else {
        authority.rfind(':')
    };
    match port_at {
        Some(at) => Some((&authority[..at], authority[at + 1..].parse().ok()?)),
        None => Some((authority, 80)),
    }
}

fn parse_response(raw: &[u8]) -> io::Result<Response> {
    crate::http1::parse_response(raw).map_err(|why| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the answer is not valid HTTP: {why}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let cases = [
            (
                "host and port",
                "http://127.0.0.1:9091",
                Some(("127.0.0.1:9091", "")),
            ),
            (
                "trailing slash",
                "http://127.0.0.1:9091/",
                Some(("127.0.0.1:9091", "")),
            ),
            (
                "prefix",
                "http://127.0.0.1:9091/pg/",
                Some(("127.0.0.1:9091", "/pg")),
            ),
            ("default port", "http://127.0.0.1", Some(("127.0.0.1", ""))),
            ("ipv6", "http://[::1]:9091", Some(("[::1]:9091", ""))),
            ("https", "https://127.0.0.1:9091", None),
            ("no scheme", "127.0.0.1:9091", None),
            ("bad port", "http://127.0.0.1:x", None),
            ("query", "http://127.0.0.1:9091/?a=b", None),
        ];
        for (name, url, want) in cases {
            let got = BaseUrl::parse(url).ok();
            assert_eq!(
                got.as_ref().map(|b| (b.host.as_str(), b.prefix.as_str())),
                want,
                "case {name}"
            );
        }
        let default_port = BaseUrl::parse("http://127.0.0.1").expect("valid");
        assert_eq!(default_port.addrs, ["127.0.0.1:80".parse().expect("addr")]);
    }

    #[test]
    fn responses() {
        /// Name, raw answer, and the status and body it must give (`None`: an error).
        type Case = (&'static str, &'static [u8], Option<(u16, &'static [u8])>);
        let cases: [Case; 5] = [
            (
                "content length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                Some((200, b"ok")),
            ),
            (
                "chunked",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
                Some((200, b"abcde")),
            ),
            (
                "until close",
                b"HTTP/1.1 400 Bad Request\r\n\r\nwhy\n",
                Some((400, b"why\n")),
            ),
            ("cut chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc", None),
            ("not http", b"SSH-2.0-OpenSSH\r\n", None),
        ];
        for (name, raw, want) in cases {
            let got = parse_response(raw).ok();
            assert_eq!(
                got.as_ref().map(|r| (r.status, r.body.as_slice())),
                want,
                "case {name}"
            );
        }
    }
}
