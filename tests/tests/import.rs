//! `dropgate import` against the real thing: Debian's pushgateway on loopback, loaded
//! with 100 groups (grouping labels of every shape, base64 included, every metric
//! type), copied into a `dropgate gateway`. Afterwards every group is there and the two
//! `/metrics` expositions are equal once the push times are masked and each gateway's
//! own families are left out.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use dropgate_tests::tempdir::TempDir;
use dropgate_tests::{
    dropgate_bin, http, may_run,
    process::{run_bounded, Guarded},
};

const PUSHGATEWAY: &str = "/usr/bin/prometheus-pushgateway";
const GROUPS: usize = 100;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], http::free_port()))
}

/// Debian's pushgateway on a free loopback port, persisting into `dir`.
fn start_pushgateway(dir: &Path) -> (Guarded, SocketAddr) {
    let addr = loopback();
    let mut command = Command::new(PUSHGATEWAY);
    command
        .arg(format!("--web.listen-address={addr}"))
        .arg(format!(
            "--persistence.file={}",
            dir.join("pushgateway.db").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let process = Guarded::spawn(command, "prometheus-pushgateway");
    assert!(
        http::wait_ok(addr, "/-/ready", Duration::from_secs(20)),
        "the pushgateway did not become ready on {addr}"
    );
    (process, addr)
}

/// `dropgate gateway` on a free loopback port.
fn start_dropgate() -> (Guarded, SocketAddr) {
    let addr = loopback();
    let mut command = Command::new(dropgate_bin());
    command
        .args(["gateway", "--web.listen-address", &addr.to_string()])
        .stdout(Stdio::null());
    let process = Guarded::spawn(command, "dropgate gateway");
    assert!(
        http::wait_ok(addr, "/-/ready", Duration::from_secs(20)),
        "dropgate gateway did not become ready on {addr}"
    );
    (process, addr)
}

/// `dropgate import --from <from> --to <to>`.
fn import(from: &str, to: &str) -> Output {
    let mut command = Command::new(dropgate_bin());
    command.args(["import", "--from", from, "--to", to]);
    run_bounded(command, Duration::from_mins(1), "dropgate import")
}

/// RFC 4648 URL-safe base64 without padding, as the pushgateway's clients send it.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
        }
    }
    out
}

/// The push path of group `i`: every shape of grouping key a client sends.
fn group_path(i: usize) -> String {
    match i % 6 {
        0 => format!("/metrics/job/batch-{i}"),
        1 => format!("/metrics/job/node/instance/host-{i}.example:9100"),
        2 => format!("/metrics/job/api/instance/pod-{i}/zone/eu-west-1/tier/web"),
        // A value with slashes must travel as base64.
        3 => format!(
            "/metrics/job/backup/path@base64/{}",
            base64_url(format!("/var/backup/{i}").as_bytes())
        ),
        // An explicitly empty instance, and a job with a space and non-ASCII.
        4 => format!("/metrics/job/r%C3%A9port%20{i}/instance@base64/="),
        _ => format!(
            "/metrics/job@base64/{}/team/ops",
            base64_url(format!("cron/{i}").as_bytes())
        ),
    }
}

/// The body of group `i`: every metric type, escapes in HELP and label values, floats
/// of every shape; every tenth group pushes nothing (only the push gauges remain).
fn group_body(i: usize) -> String {
    if i % 10 == 9 {
        return String::new();
    }
    let mut body =
        format!(
        "# HELP import_requests_total Requests handled, with \"quotes\" and a \\\\ backslash.\n\
         # TYPE import_requests_total counter\n\
         import_requests_total{{code=\"200\"}} {ok}\n\
         import_requests_total{{code=\"500\",path=\"C:\\\\dir\\n2\"}} {i}\n\
         # HELP import_temperature_celsius Temperature.\\nSecond line.\n\
         # TYPE import_temperature_celsius gauge\n\
         import_temperature_celsius -{i}.25\n\
         # TYPE import_untyped untyped\n\
         import_untyped{{kind=\"a b\"}} {big}\n\
         import_untyped{{kind=\"tiny\"}} {tiny}\n\
         # HELP import_latency_seconds Latency.\n\
         # TYPE import_latency_seconds summary\n\
         import_latency_seconds{{quantile=\"0.5\"}} 0.0{i}\n\
         import_latency_seconds{{quantile=\"0.9\"}} {q90}\n\
         import_latency_seconds{{quantile=\"0.99\"}} NaN\n\
         import_latency_seconds_sum {sum}\n\
         import_latency_seconds_count {i}\n\
         # HELP import_size_bytes Sizes.\n\
         # TYPE import_size_bytes histogram\n\
         import_size_bytes_bucket{{le=\"5\"}} 1\n\
         import_size_bytes_bucket{{le=\"10\"}} 2\n\
         import_size_bytes_bucket{{le=\"100\"}} {b100}\n\
         import_size_bytes_bucket{{le=\"+Inf\"}} {all}\n\
         import_size_bytes_sum {sum}\n\
         import_size_bytes_count {all}\n",
        ok = i * 1000,
        big = format_args!("1.5e+{}", i % 40),
        tiny = format_args!("3e-{}", i % 12 + 1),
        q90 = if i.is_multiple_of(7) { "+Inf".to_owned() } else { format!("{i}.5") },
        sum = i as f64 * 12.345,
        b100 = i + 2,
        all = i + 3,
    );
    if i.is_multiple_of(4) {
        body.push_str("# TYPE import_only_some gauge\nimport_only_some -0\n");
    }
    body
}

/// The exposition without the gateways' own families (the pushgateway's Go runtime and
/// `pushgateway_*`, dropgate's `dropgate_*`: a push cannot use that prefix), push times
/// masked.
fn comparable(exposition: &str) -> Vec<String> {
    let own = |name: &str| {
        ["go_", "process_", "pushgateway_", "promhttp_", "dropgate_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
    };
    exposition
        .lines()
        .filter(|line| {
            let name = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
                .unwrap_or(line);
            !own(name)
        })
        .map(|line| match line.strip_prefix("push_time_seconds{") {
            Some(rest) => {
                let labels = rest.rsplit_once(' ').map_or(rest, |(labels, _)| labels);
                format!("push_time_seconds{{{labels} <masked>")
            }
            None => line.to_owned(),
        })
        .collect()
}

/// The grouping labels of every group, read off its `push_time_seconds` series.
fn groups_of(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("push_time_seconds{"))
        .filter_map(|rest| Some(rest.rsplit_once(' ')?.0.strip_suffix('}')?.to_owned()))
        .collect()
}

fn scrape(addr: SocketAddr, what: &str) -> String {
    let response = http::get(addr, "/metrics").unwrap_or_else(|e| panic!("scrape {what}: {e}"));
    assert_eq!(
        response.status, 200,
        "GET /metrics of {what}: {}",
        response.body
    );
    response.body
}

fn push(addr: SocketAddr, path: &str, body: &str) {
    let response = http::request(addr, "PUT", path, body.as_bytes())
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
    assert_eq!(
        response.status, 200,
        "the pushgateway refused PUT {path}: {}",
        response.body
    );
}

fn pushgateway_present(test: &str) -> bool {
    may_run(
        test,
        Path::new(PUSHGATEWAY).exists() && dropgate_bin().exists(),
        "Debian's prometheus-pushgateway and a built dropgate (cargo xtask setup; cargo build)",
    )
}

#[test]
fn import_copies_a_hundred_groups_from_the_pushgateway_exactly() {
    if !pushgateway_present("import_copies_a_hundred_groups_from_the_pushgateway_exactly") {
        return;
    }
    let dir = TempDir::new("import");
    let (_pushgateway, from) = start_pushgateway(dir.path());
    let (_dropgate, to) = start_dropgate();
    for i in 0..GROUPS {
        push(from, &group_path(i), &group_body(i));
    }
    let source = scrape(from, "the pushgateway");
    assert_eq!(
        groups_of(&source).len(),
        GROUPS,
        "the pushgateway holds every group before the import"
    );

    let output = import(&format!("http://{from}"), &format!("http://{to}/"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "dropgate import failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("imported {"))
            .count(),
        GROUPS,
        "one line per group:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("{GROUPS} of {GROUPS} groups imported, 0 failed")),
        "{stdout}"
    );
    assert!(
        stdout.contains("imported {job=\"backup\",path=\"/var/backup/3\"}: 5 families"),
        "the base64 group is reported with its labels:\n{stdout}"
    );

    let copied = scrape(to, "dropgate");
    assert_eq!(
        groups_of(&copied),
        groups_of(&source),
        "every group of the pushgateway is in dropgate"
    );
    let (want, got) = (comparable(&source), comparable(&copied));
    assert!(
        want.len() > GROUPS * 15,
        "the comparison covers every series ({} lines)",
        want.len()
    );
    if let Some((line, (w, g))) = want.iter().zip(&got).enumerate().find(|(_, (w, g))| w != g) {
        panic!(
            "expositions differ at line {}:\n  pushgateway: {w}\n  dropgate:    {g}",
            line + 1
        );
    }
    assert_eq!(
        want.len(),
        got.len(),
        "expositions differ in length:\n{}",
        if want.len() > got.len() {
            want[got.len()..].join("\n")
        } else {
            got[want.len()..].join("\n")
        }
    );
}

#[test]
fn import_reports_each_failed_group_and_exits_non_zero() {
    if !pushgateway_present("import_reports_each_failed_group_and_exits_non_zero") {
        return;
    }
    let dir = TempDir::new("import-fail");
    let (_pushgateway, from) = start_pushgateway(dir.path());
    let (_dropgate, to) = start_dropgate();
    push(from, "/metrics/job/fits", "# TYPE fine gauge\nfine 1\n");
    push(
        from,
        "/metrics/job/clashes",
        "# TYPE taken gauge\ntaken 1\n",
    );
    // In dropgate `taken` is already a counter: that group must be refused.
    let response = http::request(
        to,
        "PUT",
        "/metrics/job/owner",
        b"# TYPE taken counter\ntaken 1\n",
    )
    .expect("push to dropgate");
    assert_eq!(response.status, 200, "{}", response.body);

    let output = import(&format!("http://{from}"), &format!("http://{to}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a failed group fails the import:\n{stdout}"
    );
    assert!(
        stdout.contains("imported {job=\"fits\"}: 1 family"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAILED {job=\"clashes\"}: ") && stdout.contains("answered 400"),
        "the refused group is named with the gateway's answer:\n{stdout}"
    );
    assert!(
        stdout.contains("1 of 2 groups imported, 1 failed"),
        "{stdout}"
    );
    assert!(
        groups_of(&scrape(to, "dropgate")).contains("instance=\"\",job=\"fits\""),
        "the group that fits arrived"
    );

    // A source that is not there: a message that says where, and exit code 1.
    let nothing = loopback();
    let output = import(&format!("http://{nothing}"), &format!("http://{to}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read http://{nothing}/api/v1/metrics")),
        "{stderr}"
    );
}
