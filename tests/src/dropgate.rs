//! Running the real `dropgate` binary in tests: `run` with its gateway on a free loopback
//! port, `watch` with its output read line by line, and `diagnose` with traffic sent once
//! its trace is attached.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader, Read as _},
    net::SocketAddr,
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{dropgate_bin, http, process::Guarded};

/// `dropgate run` listening on 127.0.0.1:<free port>, stopped on drop.
pub struct DropgateRun {
    pub process: Guarded,
    pub addr: SocketAddr,
}

impl DropgateRun {
    /// Starts `dropgate run` with `extra` arguments and waits until it is ready.
    pub fn start(extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", http::free_port())
            .parse()
            .expect("loopback address");
        let mut command = Command::new(dropgate_bin());
        command
            .args(["run", "--web.listen-address", &addr.to_string()])
            .args(extra);
        let process = Guarded::spawn(command, "dropgate run");
        assert!(
            http::wait_ok(addr, "/-/ready", Duration::from_secs(20)),
            "dropgate run did not become ready on {addr}"
        );
        Self { process, addr }
    }

    /// The exposition of `/metrics`.
    pub fn scrape(&self) -> String {
        let response = http::get(self.addr, "/metrics").expect("scrape dropgate's /metrics");
        assert_eq!(response.status, 200, "GET /metrics: {}", response.body);
        response.body
    }

    /// Sum of the samples of `name` that carry all of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        http::sample_sum(&self.scrape(), name, labels)
    }
}

/// `dropgate watch` with its stdout delivered line by line.
pub struct Watch {
    process: Guarded,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    /// Starts `dropgate watch` with `args`; waits `settle` for it to attach.
    pub fn start(args: &[&str], settle: Duration) -> Self {
        let mut command = Command::new(dropgate_bin());
        command.arg("watch").args(args).stdout(Stdio::piped());
        let mut process = Guarded::spawn(command, "dropgate watch");
        let stdout = process.child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        std::thread::sleep(settle);
        Self { process, lines }
    }

    /// The process id of `dropgate watch`.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Sends `signal` (e.g. `"INT"` for Ctrl-C) and waits for the exit.
    pub fn stop(&mut self, signal: &str) -> Option<std::process::ExitStatus> {
        self.process.stop(signal, Duration::from_secs(10))
    }

    /// The next line, waiting at most `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }
}

/// The tracer's log line once its probe is attached.
const ATTACHED: &str = "tracing kernel drops";

/// Runs `dropgate diagnose <args>` (with `env` added) and, once its trace is attached,
/// `traffic`; its exit status and report. Waiting for the attach line rather than a
/// fixed time keeps the traffic inside the window on a loaded machine.
pub fn run_diagnose(
    args: &[&str],
    env: &[(&str, &OsStr)],
    traffic: impl FnOnce(),
) -> (ExitStatus, String) {
    let mut command = Command::new(dropgate_bin());
    command
        .arg("diagnose")
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut process = Guarded::spawn(command, "dropgate diagnose");
    let stderr = process.child.stderr.take().expect("piped stderr");
    let (tx, stderr_lines) = mpsc::channel();
    let stderr_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !log.iter().any(|l| l.contains(ATTACHED)) {
        match stderr_lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => log.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Exited before attaching (unprivileged: no trace at all).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if log.iter().any(|l| l.contains(ATTACHED)) {
        // diagnose takes its baseline just after that line.
        std::thread::sleep(Duration::from_millis(500));
    }
    traffic();
    let mut stdout = process.child.stdout.take().expect("piped stdout");
    let mut text = String::new();
    stdout
        .read_to_string(&mut text)
        .expect("read the report of dropgate diagnose");
    // stdout is closed: the report is written and the exit follows.
    let deadline = Instant::now() + Duration::from_mins(1);
    let status = loop {
        if let Some(status) = process.child.try_wait().expect("poll dropgate diagnose") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "dropgate diagnose did not exit within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = stderr_reader.join();
    log.extend(stderr_lines.try_iter());
    eprintln!(
        "--- dropgate diagnose {} ({status}) ---\n{text}--- its log ---\n{}",
        args.join(" "),
        log.join("\n")
    );
    (status, text)
}
