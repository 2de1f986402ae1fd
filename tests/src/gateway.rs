//! The gateway and its real peers in tests: Debian's Go pushgateway and `dropgate gateway`
//! started on loopback, a temp dir removed when the test ends, and an HTTP client that
//! sends any header and hands back headers and raw bytes (protobuf, gzip), which the
//! text-only client in [`crate::http`] cannot.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::{dropgate_bin, http, process::Guarded};

/// Debian's `prometheus-pushgateway` (1.5.1 on bookworm), the reference implementation.
pub const PUSHGATEWAY: &str = "/usr/bin/prometheus-pushgateway";

/// How long a server may take to answer `/-/ready` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM (it saves its store first).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub use crate::tempdir::TempDir;

/// A gateway process listening on `127.0.0.1:<free port>`, killed on drop.
pub struct Server {
    pub process: Guarded,
    pub addr: SocketAddr,
    /// `pushgateway` or `dropgate`, for messages.
    pub name: &'static str,
}

impl Server {
    /// Starts Debian's pushgateway with its store in `persistence_file` (never the default
    /// location) and `extra` flags; waits until it is ready.
    pub fn pushgateway(persistence_file: &Path, extra: &[&str]) -> Self {
        let addr = loopback_addr();
        let mut command = Command::new(PUSHGATEWAY);
        command
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!("--persistence.file={}", persistence_file.display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Self::start(command, addr, "pushgateway", extra)
    }

    /// Starts `dropgate gateway` with `extra` flags; waits until it is ready.
    pub fn dropgate(extra: &[&str]) -> Self {
        let addr = loopback_addr();
        let mut command = Command::new(dropgate_bin());
        command
            .args(["gateway", "--web.listen-address", &addr.to_string()])
            .args(extra)
            // Only warnings and errors reach the test's output.
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        Self::start(command, addr, "dropgate", extra)
    }

    fn start(command: Command, addr: SocketAddr, name: &'static str, extra: &[&str]) -> Self {
        let process = Guarded::spawn(command, name);
        let ready_path = extra
            .iter()
            .find_map(|flag| flag.strip_prefix("--web.route-prefix="))
            .map_or_else(|| "/-/ready".to_owned(), |p| format!("{p}/-/ready"));
        let mut server = Self {
            process,
            addr,
            name,
        };
        assert!(
            http::wait_ok(addr, &ready_path, READY_TIMEOUT),
            "{name} did not become ready on {addr} within {READY_TIMEOUT:?} (still running: {})",
            server.process.is_running()
        );
        server
    }

    /// Sends `request` and returns the whole response.
    pub fn send(&self, request: &Request) -> Reply {
        request.send(self.addr).unwrap_or_else(|err| {
            panic!(
                "{} {} to {}: {err}",
                request.method, request.path, self.name
            )
        })
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        self.send(&Request::new("GET", path))
    }

    /// The text exposition of `GET /metrics`, which must answer 200.
    pub fn scrape(&self) -> String {
        let reply = self.get("/metrics");
        assert_eq!(
            reply.status,
            200,
            "{} GET /metrics: {}",
            self.name,
            reply.text()
        );
        reply.text()
    }

    /// SIGTERM, then waits for the exit (a graceful stop saves the store).
    pub fn terminate(&mut self) -> ExitStatus {
        self.process.stop("TERM", STOP_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM",
                self.name
            )
        })
    }

    /// Waits up to `timeout` for the process to exit on its own (e.g. after `/-/quit`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.process.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process's resident set size in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.process.child.id())
    }
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

/// Families of dropgate's own (process counters such as `dropgate_gateway_rejected_total`,
/// and the tracer's in `dropgate run`): not part of the pushed store, so they neither
/// exist upstream nor survive a restart.
pub const DROPGATE_OWN_PREFIX: &str = "dropgate_";

/// `exposition` (text format) without the families whose names start with one of
/// `prefixes`; a family runs from its first `# HELP`/`# TYPE` line to the next family's.
pub fn without_families(exposition: &str, prefixes: &[&str]) -> String {
    let mut out = String::new();
    let mut family = String::new();
    let mut dropped = false;
    for line in exposition.lines() {
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            let name = rest.split(' ').next().unwrap_or_default();
            if name != family {
                name.clone_into(&mut family);
                dropped = prefixes.iter().any(|p| name.starts_with(p));
            }
        }
        if !dropped {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `127.0.0.1:<free port>`.
pub fn loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], http::free_port()))
}

/// An HTTP/1.1 request with any headers and a binary body.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// `method path` without headers or body.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the request on a new connection (`Connection: close`) and reads the reply.
    pub fn send(&self, addr: SocketAddr) -> std::io::Result<Reply> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_write_timeout(Some(Duration::from_secs(20)))?;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.method,
            self.path,
            self.body.len()
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        // One write: a server that answers before reading the body (an error found in
        // the URL, 413) and then closes would reset the connection if part of the body
        // were still unread in its socket, and the reset can beat its answer to us.
        let mut message = head.into_bytes();
        message.extend_from_slice(&self.body);
        let written = stream.write_all(&message);
        let mut raw = Vec::new();
        let read = stream.read_to_end(&mut raw);
        // Even so, a large body may be cut off by a reset after the answer arrived.
        match Reply::parse(&raw) {
            Ok(reply) => Ok(reply),
            Err(parse) => Err(read.err().or(written.err()).unwrap_or(parse)),
        }
    }
}

/// A response: status, headers (names lowercased) and the raw body (de-chunked).
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> std::io::Result<Self> {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("response without header end"))?;
        let head = String::from_utf8_lossy(&raw[..end]);
        let rest = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut reply = Self {
            status,
            headers,
            body: Vec::new(),
        };
        reply.body = if reply
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            dechunk(rest)?
        } else {
            rest.to_vec()
        };
        Ok(reply)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn dechunk(mut rest: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = || std::io::Error::other("bad chunked encoding");
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}
