//! The status page as a person sees it: `dropgate run` on a Docker-like host whose
//! forwarding is off, with traffic from another host being dropped and two pushed
//! groups, loaded in headless Chromium (Debian's `chromium`). The rendered DOM must name
//! the groups, the finding and its fix; the screenshot is kept as a test artifact
//! (`target/test-artifacts/status-page.png`).

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use dropgate_tests::tempdir::TempDir;
use dropgate_tests::{
    dropgate_bin, is_root, may_run,
    netns::DockerLikeHost,
    process::{run_bounded, Guarded},
};

const CHROMIUM: &str = "/usr/bin/chromium";
/// dropgate's port inside the host namespace (a fresh namespace: nothing else listens).
const PORT: u16 = 19_091;

/// `curl <args> http://127.0.0.1:<PORT><path>` inside the host namespace; the body,
/// or `None` unless it answered 2xx.
fn curl_in_host(topo: &DockerLikeHost, args: &str, path: &str) -> Option<String> {
    let out = topo.host.sh_output(&format!(
        "curl -sf -m 5 {args} http://127.0.0.1:{PORT}{path}"
    ));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` every 200 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Headless Chromium inside the host namespace (where dropgate listens), on the page.
fn chromium(topo: &DockerLikeHost, profile: &Path, extra: &[&str]) -> Output {
    let mut command = topo.host.command(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("http://127.0.0.1:{PORT}/"));
    run_bounded(command, Duration::from_secs(90), "chromium")
}

fn artifact_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/status-page.png")
}

/// `dropgate run` on the broken host itself, rechecking every 2 s instead of 15 s.
fn start_dropgate_on_host(topo: &DockerLikeHost) -> Guarded {
    let mut command = topo
        .host
        .command(dropgate_bin().to_str().expect("utf-8 path"));
    command
        .args(["run", "--web.listen-address"])
        .arg(format!("127.0.0.1:{PORT}"))
        .args(["--diagnose.interval", "2s", "--docker-host="])
        .stdout(Stdio::null());
    let dropgate = Guarded::spawn(command, "dropgate run");
    assert!(
        wait_until(Duration::from_secs(30), || {
            curl_in_host(topo, "", "/-/ready").is_some()
        }),
        "dropgate run did not become ready on port {PORT} in {}",
        topo.host.name
    );
    dropgate
}

/// The other host keeps trying the published port (bounded: 60 tries of 1 s), so
/// every round sees fresh drops and the finding stays critical.
fn keep_trying_from_ext(topo: &DockerLikeHost) -> Guarded {
    let mut traffic = topo.ext.command("sh");
    traffic
        .arg("-c")
        .arg(format!(
            "for i in $(seq 60); do curl -s -o /dev/null -m 1 http://{}:{}/; done",
            DockerLikeHost::HOST_ADDR,
            DockerLikeHost::PUBLISHED_PORT
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Guarded::spawn(traffic, "traffic from ext")
}

/// Two groups, one with a label value that is markup.
fn push_two_groups(topo: &DockerLikeHost, dir: &Path) {
    let groups = [
        (
            "/metrics/job/backup/instance/db-1",
            "backup_last_success_seconds 1.7e+09\n",
        ),
        (
            "/metrics/job/nightly-report/team/%3Cops%20%26%20infra%3E",
            "# HELP report_rows Rows in the last report.\n# TYPE report_rows gauge\nreport_rows 1234\n",
        ),
    ];
    for (i, (path, body)) in groups.into_iter().enumerate() {
        let file = dir.join(format!("push-{i}.txt"));
        std::fs::write(&file, body).expect("write the push body");
        let put = format!("-X PUT --data-binary @{}", file.display());
        assert!(
            curl_in_host(topo, &put, path).is_some(),
            "push to {path} failed"
        );
    }
}

/// What the rendered page must show, and that a label stayed text.
fn check_rendered_dom(topo: &DockerLikeHost, profile: &Path) {
    let dom = chromium(topo, profile, &["--dump-dom"]);
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "chromium --dump-dom failed ({}): {}",
        dom.status,
        String::from_utf8_lossy(&dom.stderr)
    );
    for (what, want) in [
        ("the first group's labels", "job=\"backup\""),
        ("the first group's instance", "instance=\"db-1\""),
        ("the second group, escaped", "team=\"&lt;ops &amp; infra&gt;\""),
        ("the second group's family", "report_rows"),
        ("the findings section", "<h2>Findings</h2>"),
        (
            "the finding's severity",
            "<tr class=\"critical\"><td><div>critical</div><div>forwarding_off</div></td>",
        ),
        (
            "the finding's summary",
            "forwarding is off on vh-ext (net.ipv4.ip_forward = 0); published port 9091 -&gt; 172.31.231.2:80 (bridge br0) dropped",
        ),
        ("the fix", "<div>sysctl -w net.ipv4.ip_forward=1</div>"),
        ("the drop summary", "IP_INADDRERRORS"),
        ("the forwarding state", "<h2>Forwarding</h2>"),
    ] {
        assert!(html.contains(want), "{what}: {want:?} not in the page:\n{html}");
    }
    assert!(
        !html.contains("<ops"),
        "a pushed label became markup:\n{html}"
    );
}

/// A 1280x1600 screenshot kept at [`artifact_path`].
fn keep_screenshot(topo: &DockerLikeHost, profile: &Path) {
    let artifact = artifact_path();
    std::fs::create_dir_all(artifact.parent().expect("a parent")).expect("create the artifact dir");
    let _ = std::fs::remove_file(&artifact);
    let shot = chromium(
        topo,
        profile,
        &[
            &format!("--screenshot={}", artifact.display()),
            "--window-size=1280,1600",
        ],
    );
    assert!(
        shot.status.success(),
        "chromium --screenshot failed ({}): {}",
        shot.status,
        String::from_utf8_lossy(&shot.stderr)
    );
    let png = std::fs::read(&artifact).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "not a real screenshot ({} bytes)",
        png.len()
    );
    eprintln!("status page screenshot: {}", artifact.display());
}

#[test]
fn status_page_in_chromium_shows_groups_and_the_forwarding_finding_with_its_fix() {
    if !may_run(
        "status_page_in_chromium",
        is_root() && Path::new(CHROMIUM).exists(),
        "root (namespaces, BPF) and Debian's chromium (cargo xtask setup)",
    ) {
        return;
    }
    let topo = DockerLikeHost::build();
    let profile = TempDir::new("chromium");
    let mut dropgate = start_dropgate_on_host(&topo);
    let _traffic = keep_trying_from_ext(&topo);
    push_two_groups(&topo, profile.path());

    let critical = "kind=\"forwarding_off\",severity=\"critical\"";
    assert!(
        wait_until(Duration::from_mins(1), || {
            curl_in_host(&topo, "", "/metrics").is_some_and(|text| text.contains(critical))
        }),
        "no critical forwarding_off finding within a minute"
    );
    check_rendered_dom(&topo, profile.path());
    keep_screenshot(&topo, profile.path());

    let status = dropgate
        .stop("TERM", Duration::from_secs(10))
        .expect("dropgate exits after SIGTERM");
    assert!(status.success(), "dropgate run exited with {status}");
}
