//! Running the real `dropgate` binary in tests: `run` with its gateway on a free loopback
//! port, and `watch` with its output read line by line.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
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
