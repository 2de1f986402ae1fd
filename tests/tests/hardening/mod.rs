//! What the hardening tests share: `dropgate gateway` started on a free loopback port,
//! a temp dir, a keep-alive HTTP/1.1 client that hands back status, headers and raw
//! bytes, raw-socket exchanges, a seeded random generator and a small protobuf writer
//! for push bodies. Each test file uses part of it.
#![allow(dead_code)] // every test file compiles this module and uses only some of it

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

pub use dropgate_tests::tempdir::TempDir;
use dropgate_tests::{dropgate_bin, http, process::Guarded};

/// How long `dropgate gateway` may take to accept connections after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// `dropgate gateway` on 127.0.0.1:<free port>, killed on drop; its stderr goes to
/// `log` so a test can read what it said.
pub struct Gateway {
    pub process: Guarded,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Gateway {
    /// Starts the gateway with `args` and waits until it accepts connections.
    pub fn start(dir: &TempDir, args: &[&str]) -> Self {
        let gateway = Self::spawn(dir, args);
        assert!(
            wait_for_port(gateway.addr, READY_TIMEOUT),
            "dropgate gateway did not listen on {} within {READY_TIMEOUT:?}; its log:\n{}",
            gateway.addr,
            gateway.log_text()
        );
        gateway
    }

    /// Starts the gateway without waiting.
    pub fn spawn(dir: &TempDir, args: &[&str]) -> Self {
        let addr = loopback_addr();
        Self::spawn_on(dir, addr, args)
    }

    /// Starts the gateway on `addr` without waiting.
    pub fn spawn_on(dir: &TempDir, addr: SocketAddr, args: &[&str]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let log = dir.join(&format!(
            "gateway-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr = std::fs::File::create(&log).expect("create the gateway's log file");
        let mut command = Command::new(dropgate_bin());
        command
            .arg("gateway")
            .arg(format!("--web.listen-address={addr}"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr);
        Self {
            process: Guarded::spawn(command, "dropgate gateway"),
            addr,
            log,
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn exit_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.process.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// What the gateway logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /metrics` as text; panics on anything but 200.
    pub fn scrape(&self) -> String {
        let answer = http::get(self.addr, "/metrics").expect("scrape the gateway");
        assert_eq!(answer.status, 200, "GET /metrics: {}", answer.body);
        answer.body
    }
}

/// A free port on 127.0.0.1.
pub fn loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], http::free_port()))
}

/// Polls until `addr` accepts a TCP connection.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Sends `raw` bytes on a new connection, half-closes, and reads until the server
/// closes (at most `timeout`); returns what came back.
pub fn raw_exchange(addr: SocketAddr, raw: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to the gateway");
    stream.set_read_timeout(Some(timeout)).expect("set timeout");
    let _ = stream.write_all(raw);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// Like [`raw_exchange`], but closes the sending side after `raw`, so the server sees
/// the end of what the client will ever send.
pub fn raw_request(addr: SocketAddr, raw: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to the gateway");
    stream.set_read_timeout(Some(timeout)).expect("set timeout");
    let _ = stream.write_all(raw);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// The status code of a raw HTTP answer (0 when there is none).
pub fn status_of(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// One HTTP/1.1 answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 connection that reconnects when the server closed it.
pub struct Client {
    addr: SocketAddr,
    reader: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, reader: None }
    }

    /// Sends one request; `headers` are extra `(name, value)` pairs.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Answer> {
        // A connection the server closed while idle fails on first use: retry once
        // on a fresh one (only then; a failure on a fresh connection is real).
        if self.reader.is_some() {
            if let Ok(answer) = self.try_request(method, path, headers, body) {
                return Ok(answer);
            }
            self.reader = None;
        }
        self.try_request(method, path, headers, body)
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Answer> {
        if self.reader.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.set_nodelay(true)?;
            self.reader = Some(BufReader::new(stream));
        }
        let reader = self.reader.as_mut().expect("connected above");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        let stream = reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let answer = read_answer(reader, method == "HEAD");
        if answer.is_err()
            || answer.as_ref().is_ok_and(|a| {
                a.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            })
        {
            self.reader = None;
        }
        answer
    }
}

fn read_answer(reader: &mut BufReader<TcpStream>, head_only: bool) -> std::io::Result<Answer> {
    let bad = |what: &str| std::io::Error::other(what.to_owned());
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(bad("connection closed before an answer"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if head_only {
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| bad("bad chunk"))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// xorshift64*: a seeded generator, so a failing order can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// The seed: `$DROPGATE_SEED` to replay a run, else the clock (printed either way).
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("DROPGATE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: seed {seed} (DROPGATE_SEED={seed} replays this run)");
    seed
}

/// A gauge family as `io.prometheus.client.MetricFamily` protobuf, one sample per
/// label set.
pub fn gauge_family(name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) -> Vec<u8> {
    use dropgate_tests::protobuf::{family, metric, simple, GAUGE};
    let metrics: Vec<Vec<u8>> = samples
        .iter()
        .map(|(labels, value)| metric(labels, 2, &simple(*value), None))
        .collect();
    family(name, Some(help), GAUGE, &metrics)
}

/// `text` gzipped.
pub fn gzip(text: &[u8]) -> Vec<u8> {
    use flate2::{write::GzEncoder, Compression};
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(text).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

/// Whether `program` runs (`program -version` or `--version` exits at all).
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
