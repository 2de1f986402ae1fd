//! A real Prometheus server (Debian's) that scrapes one target every second, for the
//! tests that check what Prometheus itself makes of dropgate's exposition.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{gateway::loopback_addr, http, process::Guarded, tempdir::TempDir};

/// Debian's `prometheus` binary.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Whether Debian's Prometheus is installed.
#[must_use]
pub fn installed() -> bool {
    Path::new(PROMETHEUS).exists()
}

/// A running Prometheus, stopped (SIGKILL) when dropped.
pub struct Prometheus {
    /// Its HTTP API.
    pub web: SocketAddr,
    process: Guarded,
}

impl Prometheus {
    /// Starts Prometheus with its data in `dir`, scraping `target` every second as job
    /// `dropgate` with `honor_labels` (as a pushgateway is scraped), and `extra` flags;
    /// returns once it is ready.
    ///
    /// # Panics
    /// When it cannot start or is not ready within a minute.
    #[must_use]
    pub fn scraping(dir: &TempDir, target: SocketAddr, extra: &[&str]) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: dropgate\n    honor_labels: true\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let web = loopback_addr();
        let mut command = Command::new(PROMETHEUS);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .args(extra)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut process = Guarded::spawn(command, "prometheus");
        assert!(
            http::wait_ok(web, "/-/ready", Duration::from_mins(1)),
            "prometheus did not become ready on {web} (running: {})",
            process.is_running()
        );
        Self { web, process }
    }

    /// Polls the instant `query` until it returns a sample or `timeout` passes; returns
    /// the last answer (`Null` when there was none).
    #[must_use]
    pub fn query_until_found(&self, query: &str, timeout: Duration) -> Value {
        self.poll(&format!("/api/v1/query?query={}", encode(query)), timeout)
    }

    /// Polls an API `path` until its `data` holds something non-empty (a result, a list
    /// of exemplars) or `timeout` passes; returns the last answer.
    #[must_use]
    pub fn poll(&self, path: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = http::get(self.web, path)
                .ok()
                .filter(|r| r.status == 200)
                .and_then(|r| serde_json::from_str::<Value>(&r.body).ok());
            if let Some(answer) = &answer {
                let data = &answer["data"];
                let found = data["result"].as_array().map_or_else(
                    || {
                        data.as_array().is_some_and(|d| {
                            d.iter()
                                .any(|s| s["exemplars"].as_array().is_some_and(|e| !e.is_empty()))
                        })
                    },
                    |r| !r.is_empty(),
                );
                if found {
                    return answer.clone();
                }
            }
            if Instant::now() >= deadline {
                return answer.unwrap_or(Value::Null);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// SIGTERM and wait for a clean exit; `false` if it did not stop within 20 s.
    pub fn stop(&mut self) -> bool {
        self.process.stop("TERM", Duration::from_secs(20)).is_some()
    }
}

/// Percent-encoding of a query parameter (everything but unreserved characters).
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
