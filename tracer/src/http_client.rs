//! One HTTP/1.1 exchange through hyper, for the tracer's two small clients: the Docker
//! Engine API on its unix socket (enrich/docker.rs) and `dropgate import` (import/).
//!
//! Both send one request per connection, so hyper's connection-level client is all they
//! need (no pool, no connector: the caller hands over a connected stream). Both are
//! blocking code on threads of their own (the enricher's, the import's `spawn_blocking`),
//! so [`block_on`] runs a call on a current-thread runtime made for it. Answers come from
//! servers we do not control: the body is bounded and every wait has a limit.

use std::{future::Future, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::timeout,
};

/// A complete answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The status as a first line reads (`HTTP/1.1 404 Not Found`), for messages.
    pub status_line: String,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text, for messages (lossy, trimmed).
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

/// Why an exchange gave no complete answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request could not be sent or the answer is not valid HTTP/1.1 (hyper's reason,
    /// e.g. a message cut short or a malformed head).
    #[error("the answer is not valid HTTP/1.1: {}", describe(.0))]
    Invalid(#[source] hyper::Error),
    /// The server sent nothing for this long (while we waited for its head or body).
    #[error("the server sent nothing for {0:?}")]
    Stalled(Duration),
    /// The body is larger than the caller accepts.
    #[error("the answer is larger than {limit} bytes")]
    TooLarge {
        /// The bound in bytes.
        limit: usize,
    },
    /// No runtime could be made for the call (out of file descriptors or memory).
    #[error("cannot start the HTTP client: {0}")]
    Runtime(#[source] std::io::Error),
}

/// hyper's message with its cause (`error reading a body from connection: ...`).
fn describe(error: &hyper::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// Runs `call` to the end on a current-thread runtime of its own. A runtime per call
/// costs microseconds, far below a connection's, and keeps the callers blocking code.
pub fn block_on<F: Future>(call: F) -> Result<F::Output, HttpError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HttpError::Runtime)?;
    Ok(runtime.block_on(call))
}

/// Sends `request` over the connected `io` and reads the whole answer: at most `limit`
/// body bytes, and no wait (for the head, or for the next piece of the body) longer than
/// `stall`. Must run inside a runtime (see [`block_on`]): the connection is driven by a
/// task of its own, which ends with the connection or with the runtime.
pub async fn exchange<I>(
    io: I,
    request: Request<Full<Bytes>>,
    limit: usize,
    stall: Duration,
) -> Result<Response, HttpError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stalled = |_| HttpError::Stalled(stall);
    let (mut sender, connection) = timeout(
        stall,
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await
    .map_err(stalled)?
    .map_err(HttpError::Invalid)?;
    tokio::spawn(connection);
    let answer = timeout(stall, sender.send_request(request))
        .await
        .map_err(stalled)?
        .map_err(HttpError::Invalid)?;
    let status = answer.status();
    let status_line = format!("{:?} {status}", answer.version());
    let mut body = answer.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = timeout(stall, body.frame()).await.map_err(stalled)? {
        if let Ok(data) = frame.map_err(HttpError::Invalid)?.into_data() {
            if bytes.len() + data.len() > limit {
                return Err(HttpError::TooLarge { limit });
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Response {
        status: status.as_u16(),
        status_line,
        body: bytes,
    })
}

/// Servers that send a fixed, raw answer, to see how the client takes real bytes off a
/// real socket (good answers, broken ones, silence).
#[cfg(test)]
pub(crate) mod test_server {
    use std::{
        io::{Read, Write},
        net::{SocketAddr, TcpListener},
        os::unix::net::UnixListener,
        path::PathBuf,
        thread::JoinHandle,
    };

    /// Reads the request head, sends `raw`, closes; with `raw` empty, waits silently
    /// until the client hangs up.
    fn answer<S: Read + Write>(mut stream: S, raw: &[u8]) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        if raw.is_empty() {
            // Silent until the client gives up: its read ends ours.
            let _ = stream.read_to_end(&mut head);
        } else {
            stream.write_all(raw).expect("write the raw answer");
        }
    }

    /// A loopback TCP server for one connection.
    pub fn tcp(raw: &'static [u8]) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept the client");
            answer(stream, raw);
        });
        (addr, server)
    }

    /// A unix socket server for one connection, at a path of this process and `name`;
    /// the socket file is removed once it has answered.
    pub fn unix(name: &str, raw: &'static [u8]) -> (PathBuf, JoinHandle<()>) {
        let path =
            std::env::temp_dir().join(format!("dropgate-http-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind a unix socket");
        let socket_file = path.clone();
        let server = std::thread::spawn(move || {
            let accepted = listener.accept();
            let _ = std::fs::remove_file(&socket_file);
            answer(accepted.expect("accept the client").0, raw);
        });
        (path, server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One GET to a loopback server sending `raw`, with `limit` and `stall`.
    fn get(raw: &'static [u8], limit: usize, stall: Duration) -> Result<Response, HttpError> {
        let (addr, server) = test_server::tcp(raw);
        let request = Request::get("/")
            .header(hyper::header::HOST, addr.to_string())
            .body(Full::default())
            .expect("a valid request");
        let result = block_on(async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connect to the test server");
            exchange(stream, request, limit, stall).await
        })
        .expect("a runtime");
        server.join().expect("the test server ends");
        result
    }

    #[test]
    fn an_answer_within_the_bounds_is_read_whole() {
        let answer = get(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
            4,
            Duration::from_secs(5),
        )
        .expect("a complete answer");
        assert_eq!(
            (answer.status, answer.status_line.as_str(), answer.text()),
            (503, "HTTP/1.1 503 Service Unavailable", "busy".to_owned())
        );
    }

    #[test]
    fn a_body_over_the_limit_is_refused() {
        let cases: [(&str, &[u8]); 2] = [
            (
                "content-length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n0123456789a",
            ),
            (
                "until close",
                b"HTTP/1.1 200 OK\r\n\r\n0123456789a0123456789a",
            ),
        ];
        for (name, raw) in cases {
            let error = get(raw, 10, Duration::from_secs(5)).expect_err(name);
            assert!(
                matches!(error, HttpError::TooLarge { limit: 10 }),
                "{name}: {error}"
            );
        }
    }

    #[test]
    fn a_silent_server_is_given_up_on() {
        let stall = Duration::from_millis(200);
        let error = get(b"", 10, stall).expect_err("no answer");
        assert!(
            matches!(error, HttpError::Stalled(s) if s == stall),
            "{error}"
        );
        assert!(error.to_string().contains("sent nothing"), "{error}");
    }
}
