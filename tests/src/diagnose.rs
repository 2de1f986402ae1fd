//! What the scenario tests of `dropgate diagnose` share: running it against one test
//! namespace, reading the finding kinds of its text and `--json` reports, and
//! `dropgate run` started inside a namespace so that its findings, `dropgate_problem`
//! and status page are that namespace's.

use std::{
    ffi::OsStr,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::{
    dropgate::run_diagnose, dropgate_bin, http, is_root, may_run, netns::Netns, process::Guarded,
};

/// Whether a test that builds namespaces, firewall rules and BPF may run (see
/// [`may_run`]).
#[must_use]
pub fn privileged(test: &str) -> bool {
    may_run(
        test,
        is_root(),
        "root (namespaces, iptables, ip6tables, nft, BPF)",
    )
}

/// `dropgate diagnose --netns <ns>` over a 5 s window (unless `extra` names another
/// `--duration`) while `traffic` runs. Without a `--docker-host` in `extra`, Docker is
/// not asked: a test namespace has no containers of the machine's own dockerd.
pub fn diagnose(ns: &Netns, extra: &[&str], traffic: impl FnOnce()) -> (ExitStatus, String) {
    diagnose_env(ns, extra, &[], traffic)
}

/// [`diagnose`] with `env` added to dropgate's environment.
pub fn diagnose_env(
    ns: &Netns,
    extra: &[&str],
    env: &[(&str, &OsStr)],
    traffic: impl FnOnce(),
) -> (ExitStatus, String) {
    let mut args = vec!["--netns", &ns.name];
    if !extra.contains(&"--duration") {
        args.extend(["--duration", "5s"]);
    }
    if !extra.iter().any(|a| a.starts_with("--docker-host")) {
        args.push("--docker-host=");
    }
    args.extend(extra);
    run_diagnose(&args, env, traffic)
}

/// The verdict lines (`PROBLEM [...]`/`WARNING [...]`) of a text report.
#[must_use]
pub fn verdicts(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("PROBLEM [") || l.starts_with("WARNING ["))
        .collect()
}

/// The `[kind]` of every verdict line of a text report.
#[must_use]
pub fn kinds(text: &str) -> Vec<String> {
    verdicts(text)
        .into_iter()
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_owned()))
        .collect()
}

/// The finding kinds of a `--json` report.
#[must_use]
pub fn json_kinds(text: &str) -> Vec<String> {
    let report: serde_json::Value = serde_json::from_str(text).expect("diagnose --json is JSON");
    report["findings"]
        .as_array()
        .expect("a findings array")
        .iter()
        .map(|f| f["kind"].as_str().expect("a kind").to_owned())
        .collect()
}

/// Runs `traffic` under diagnose in text and in `--json`: exit 1, `kind` the only
/// finding in both; the text report.
pub fn only_finding(ns: &Netns, kind: &str, traffic: impl Fn()) -> String {
    let (out, text) = diagnose(ns, &[], &traffic);
    assert_eq!(out.code(), Some(1), "a problem: exit 1\n{text}");
    assert_eq!(kinds(&text), vec![kind.to_owned()], "{kind} alone:\n{text}");
    let (out, json) = diagnose(ns, &["--json"], &traffic);
    assert_eq!(out.code(), Some(1), "{json}");
    assert_eq!(json_kinds(&json), vec![kind.to_owned()], "{json}");
    text
}

/// The line of `text` that starts with `prefix`.
#[must_use]
pub fn line_starting<'t>(text: &'t str, prefix: &str) -> &'t str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("a line starting with {prefix:?} in:\n{text}"))
}

/// `dropgate run` inside a namespace (nsenter, so /sys stays the machine's), its gateway
/// on the namespace's loopback, scraped with curl from inside; stopped on drop.
pub struct RunInNamespace<'n> {
    ns: &'n Netns,
    port: u16,
    _process: Guarded,
}

impl<'n> RunInNamespace<'n> {
    /// Starts it with diagnose rounds of `round` and `extra` arguments; waits until it
    /// is ready.
    pub fn start(ns: &'n Netns, round: &str, extra: &[&str]) -> Self {
        let port = http::free_port();
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg(dropgate_bin())
            .args([
                "run",
                "--web.listen-address",
                &format!("127.0.0.1:{port}"),
                "--diagnose.interval",
                round,
                "--docker-host=",
            ])
            .args(extra)
            .stdout(Stdio::null());
        let run = Self {
            ns,
            port,
            _process: Guarded::spawn(command, "dropgate run in a namespace"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while run.get("/-/ready").is_none() {
            assert!(
                Instant::now() < deadline,
                "dropgate run did not become ready in {}",
                ns.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        run
    }

    /// `GET path`; the body, `None` when no answer came.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<String> {
        let out = self.ns.sh_output(&format!(
            "curl -sf -m 5 http://127.0.0.1:{}{path}",
            self.port
        ));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `dropgate_problem` samples at 1.
    #[must_use]
    pub fn problems(&self) -> Vec<String> {
        self.get("/metrics")
            .expect("scrape dropgate run")
            .lines()
            .filter(|l| l.starts_with("dropgate_problem{") && l.ends_with(" 1"))
            .map(str::to_owned)
            .collect()
    }

    /// Sends `traffic` until `dropgate_problem{kind}` is 1 and the status page names
    /// the kind and `words`; fails after 20 s.
    pub fn shows(&self, kind: &str, words: &str, traffic: impl Fn()) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            traffic();
            let metrics = self.get("/metrics").unwrap_or_default();
            let raised = metrics.lines().any(|l| {
                l.starts_with("dropgate_problem{")
                    && l.contains(&format!("kind=\"{kind}\""))
                    && l.ends_with(" 1")
            });
            let page = self.get("/").unwrap_or_default();
            if raised && page.contains(kind) && page.contains(words) {
                return;
            }
            last = metrics
                .lines()
                .filter(|l| l.starts_with("dropgate_problem"))
                .collect::<Vec<_>>()
                .join("\n");
        }
        panic!("dropgate run never showed {kind} ({words}); problems:\n{last}");
    }
}
