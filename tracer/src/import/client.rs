//! The import's HTTP side, enough to read a pushgateway's JSON and push groups:
//! `http://` only, one request per connection (`Connection: close`) through hyper (see
//! [`crate::http_client`]). The import runs once, on the order of a request per group, so
//! a connection pool would buy nothing here.

use std::{
    io,
    net::{SocketAddr, ToSocketAddrs as _},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{CONNECTION, CONTENT_TYPE, HOST, USER_AGENT},
    Request,
};
use tokio::{net::TcpStream, time::timeout};

use crate::http_client::{self, HttpError};

/// How long connecting to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may stay silent (before its head, between pieces of its body).
const IO_TIMEOUT: Duration = Duration::from_mins(1);
/// The largest response read: far above a pushgateway's JSON with thousands of groups,
/// and a bound on what a wrong URL can make us hold.
const MAX_RESPONSE: usize = 512 * 1024 * 1024;

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

pub use crate::http_client::Response;

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
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(HOST, &self.host)
            .header(
                USER_AGENT,
                concat!("dropgate-import/", env!("CARGO_PKG_VERSION")),
            )
            .header(CONNECTION, "close");
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        http_client::block_on(async {
            let stream = self.connect().await?;
            http_client::exchange(stream, request, MAX_RESPONSE, IO_TIMEOUT)
                .await
                .map_err(into_io)
        })
        .map_err(into_io)?
    }

    async fn connect(&self) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
        for addr in &self.addrs {
            match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(error)) => last = error,
                Err(_) => {
                    last = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {addr} took over {CONNECT_TIMEOUT:?}"),
                    );
                }
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

/// The import reports failures as I/O errors with hyper's reason in the message.
fn into_io(error: HttpError) -> io::Error {
    let kind = match error {
        HttpError::Stalled(_) => io::ErrorKind::TimedOut,
        HttpError::Invalid(_) | HttpError::TooLarge { .. } => io::ErrorKind::InvalidData,
        HttpError::Runtime(_) => io::ErrorKind::Other,
    };
    io::Error::new(kind, error)
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
            let (addr, server) = crate::http_client::test_server::tcp(raw);
            let base = BaseUrl::parse(&format!("http://{addr}")).expect("a loopback URL");
            let got = base.request("GET", "/", None, b"").ok();
            server.join().expect("the test server ends");
            assert_eq!(
                got.as_ref().map(|r| (r.status, r.body.as_slice())),
                want,
                "case {name}"
            );
        }
    }
}
