//! Nothing lost: more than 200 malformed or hostile requests, in a seeded random order
//! between valid pushes, against the real `dropgate gateway`. After each one the
//! exposition must be byte for byte what it was before, except for exactly what the
//! spec says a refusal changes, computed precisely, not masked:
//! - the one `dropgate_gateway_rejected_total{reason}` sample of the refusal's reason
//!   goes up by one (none for requests that are not refusals: 404, 405, redirects,
//!   and what the HTTP parser refuses before any route);
//! - a push refused by the consistency check sets its group's
//!   `push_failure_time_seconds` to the time of the request (and, for a group that did
//!   not exist, creates it with exactly that line and `push_time_seconds` 0).
//!
//! `DROPGATE_SEED=<n>` replays an order.

mod hardening;

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dropgate_tests::protobuf::{delimited, varint, CONTENT_TYPE as PROTOBUF};
use hardening::{gauge_family, gzip, raw_request, seed, status_of, Client, Gateway, Rng, TempDir};

const BODY_LIMIT: usize = 64 * 1024;
const MAX_LABELS: usize = 32;
const MAX_SERIES: usize = 1000;
const REJECTED: &str = "dropgate_gateway_rejected_total";

/// What a hostile request may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Exactly this reason is counted.
    Reason(&'static str),
    /// One refusal, of any push reason (garbage whose exact verdict is the parser's).
    AnyRefusal,
    /// Nothing at all changes (not a refusal: 404/405/redirect/HTTP parser).
    Nothing,
    /// Either nothing, or one refusal of any reason (a broken HTTP body may be seen
    /// by the parser or by the handler, depending on where it breaks).
    NothingOrRefusal,
}

/// How the request is sent.
#[derive(Clone, Debug)]
enum Send {
    Http {
        method: &'static str,
        path: String,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    Raw(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Hostile {
    name: String,
    send: Send,
    expect: Expect,
    /// The group a consistency-check refusal would mark: (label, value) pairs.
    group: Option<Vec<(String, String)>>,
}

fn http(name: &str, method: &'static str, path: &str, body: &[u8], expect: Expect) -> Hostile {
    Hostile {
        name: name.to_owned(),
        send: Send::Http {
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: body.to_vec(),
        },
        expect,
        group: None,
    }
}

fn with_header(mut hostile: Hostile, name: &'static str, value: &str) -> Hostile {
    if let Send::Http { headers, .. } = &mut hostile.send {
        headers.push((name, value.to_owned()));
    }
    hostile
}

fn on_group(mut hostile: Hostile, job: &str, labels: &[(&str, &str)]) -> Hostile {
    let mut group: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    group.push(("job".to_owned(), job.to_owned()));
    hostile.group = Some(group);
    hostile
}

/// The valid families every group may carry; hostile pushes clash with these.
const VALID_TEXT: &str = "# TYPE nl_requests_total counter\nnl_requests_total{code=\"200\"} 7\n# TYPE nl_temperature gauge\nnl_temperature 21.5\n# TYPE nl_latency histogram\nnl_latency_bucket{le=\"1\"} 1\nnl_latency_bucket{le=\"+Inf\"} 2\nnl_latency_sum 1.5\nnl_latency_count 2\n";

fn bad_text_lines() -> Vec<&'static str> {
    vec![
        "x{",
        "x{a=\"1\" 1",
        "x{a=1} 1",
        "x{a=\"1\",} 1 2 3",
        "x 1 2 3",
        "x NaNx",
        "x 1e",
        "x{a=\"\\q\"} 1",
        "9x 1",
        "x{9a=\"1\"} 1",
        "x{a=\"1\"}",
        "# TYPE nl_new nonsense",
        "# TYPE nl_new counter\n# TYPE nl_new gauge",
        "# HELP 9x help",
        "# TYPE 9x counter",
        "x{a=\"1\"} 1 notatimestamp",
        "{a=\"1\"} 1",
        "x{a=\"unterminated} 1",
        "x{a=\"1\"}{b=\"2\"} 1",
        "x{a=\"1\"} ++1",
        "\u{7f}x 1",
        "x\t\t",
        "# TYPE nl_res gauge\nnl_res{__name__=\"x\"} 1",
        "x{a=\"1\"b=\"2\"} 1",
        "# TYPE nl_sum summary\nnl_sum{quantile=\"x\"} 1",
        "# TYPE nl_h histogram\nnl_h_bucket{le=\"nope\"} 1",
    ]
}

#[allow(clippy::too_many_lines)] // one catalogue, read top to bottom
fn corpus() -> Vec<Hostile> {
    let mut corpus = Vec::new();
    let push = "/metrics/job/ok_1";

    // Bad text: each bad line alone, before and after valid lines.
    for (i, line) in bad_text_lines().into_iter().enumerate() {
        for (where_, body) in [
            ("alone", format!("{line}\n")),
            ("after valid", format!("{VALID_TEXT}{line}\n")),
            ("before valid", format!("{line}\n{VALID_TEXT}")),
        ] {
            let name = format!("bad text {i} {where_}");
            corpus.push(on_group(
                http(&name, "PUT", push, body.as_bytes(), Expect::AnyRefusal),
                "ok_1",
                &[],
            ));
        }
    }
    corpus.push(http(
        "not utf-8",
        "PUT",
        push,
        b"x{a=\"\xff\xfe\"} 1\n",
        Expect::AnyRefusal,
    ));

    // Truncated protobuf: cut anywhere but on a message boundary.
    let families = [
        gauge_family("nl_temperature", "temp", &[(&[("room", "a")], 1.0)]),
        gauge_family(
            "nl_pb_gauge",
            "pb",
            &[(&[("k", "v")], 2.0), (&[("k", "w")], 3.0)],
        ),
        gauge_family("nl_pb_other", "other", &[(&[], 4.0)]),
    ];
    let body = delimited(&families);
    let mut boundaries = vec![0];
    let mut at = 0;
    for family in &families {
        let mut prefix = Vec::new();
        varint(&mut prefix, family.len() as u64);
        at += prefix.len() + family.len();
        boundaries.push(at);
    }
    let cuts: Vec<usize> = (1..body.len())
        .filter(|cut| !boundaries.contains(cut))
        .collect();
    for k in 0..50 {
        let cut = cuts[k * cuts.len() / 50];
        corpus.push(with_header(
            http(
                &format!("protobuf cut at {cut}"),
                "PUT",
                push,
                &body[..cut],
                Expect::Reason("invalid_push"),
            ),
            "Content-Type",
            PROTOBUF,
        ));
    }
    // Oversized or lying protobuf.
    let mut huge_prefix = Vec::new();
    varint(&mut huge_prefix, 1 << 40);
    huge_prefix.extend_from_slice(&families[0]);
    let mut overflow = vec![0xff; 10];
    overflow.push(0x01);
    let mut long_claim = Vec::new();
    varint(&mut long_claim, 5000);
    long_claim.extend_from_slice(&families[0]);
    let many = gauge_family(
        "nl_pb_big",
        "big",
        &[(&[("pad", &"p".repeat(BODY_LIMIT))], 1.0)],
    );
    for (name, bytes, expect) in [
        (
            "protobuf length 2^40",
            huge_prefix,
            Expect::Reason("invalid_push"),
        ),
        (
            "protobuf varint overflow",
            overflow,
            Expect::Reason("invalid_push"),
        ),
        (
            "protobuf length past the end",
            long_claim,
            Expect::Reason("invalid_push"),
        ),
        (
            "protobuf over the body limit",
            delimited(&[many]),
            Expect::Reason("body_too_large"),
        ),
        (
            "protobuf garbage",
            b"\x0a\x05hello\x12".to_vec(),
            Expect::Reason("invalid_push"),
        ),
        (
            "protobuf wrong wire type",
            vec![0x03, 0x0d, 0x00, 0x00],
            Expect::Reason("invalid_push"),
        ),
    ] {
        corpus.push(with_header(
            http(name, "PUT", push, &bytes, expect),
            "Content-Type",
            PROTOBUF,
        ));
    }

    // Bad gzip.
    let zipped = gzip(VALID_TEXT.as_bytes());
    let mut bad_crc = zipped.clone();
    let crc_at = bad_crc.len() - 8;
    bad_crc[crc_at] ^= 0xff;
    let mut bad_data = zipped.clone();
    bad_data[12] ^= 0x55;
    let mut gzip_cases: Vec<(String, Vec<u8>, Expect)> = vec![
        (
            "gzip of nothing".into(),
            Vec::new(),
            Expect::Reason("invalid_push"),
        ),
        (
            "gzip header only".into(),
            zipped[..10].to_vec(),
            Expect::Reason("invalid_push"),
        ),
        (
            "not gzip".into(),
            b"plain text 1\n".to_vec(),
            Expect::Reason("invalid_push"),
        ),
        (
            "gzip bad crc".into(),
            bad_crc,
            Expect::Reason("invalid_push"),
        ),
        ("gzip bad data".into(), bad_data, Expect::AnyRefusal),
        (
            "gzip bomb".into(),
            gzip(&vec![b'#'; BODY_LIMIT * 4]),
            Expect::Reason("body_too_large"),
        ),
        (
            "gzip of bad text".into(),
            gzip(b"x{ 1\n"),
            Expect::Reason("invalid_push"),
        ),
    ];
    for cut in [
        11,
        15,
        20,
        zipped.len() / 2,
        zipped.len() - 4,
        zipped.len() - 1,
    ] {
        gzip_cases.push((
            format!("gzip cut at {cut}"),
            zipped[..cut].to_vec(),
            Expect::Reason("invalid_push"),
        ));
    }
    for (name, bytes, expect) in gzip_cases {
        corpus.push(with_header(
            http(&name, "PUT", push, &bytes, expect),
            "Content-Encoding",
            "gzip",
        ));
    }
    for (name, bytes) in [
        ("snappy garbage", b"not snappy at all".to_vec()),
        ("snappy empty frame", vec![0xff, 0x06, 0x00]),
        (
            "snappy bad chunk",
            vec![
                0xff, 0x06, 0x00, 0x00, b's', b'N', b'a', b'P', b'p', b'Y', 0x02, 0x01, 0x00, 0x00,
            ],
        ),
    ] {
        corpus.push(with_header(
            http(name, "PUT", push, &bytes, Expect::Reason("invalid_push")),
            "Content-Encoding",
            "snappy",
        ));
    }

    // Bad base64 and bad grouping keys.
    for (name, path) in [
        ("base64 job bad chars", "/metrics/job@base64/!!!"),
        ("base64 job bad length", "/metrics/job@base64/a"),
        ("base64 label bad chars", "/metrics/job/ok_1/l@base64/%%%"),
        ("base64 label plus slash", "/metrics/job/ok_1/l@base64/a+b"),
        ("base64 job empty", "/metrics/job@base64/="),
        ("base64 label not utf-8", "/metrics/job/ok_1/l@base64/_w"),
        ("base64 job in padding", "/metrics/job@base64/YQ=Y"),
        ("odd components", "/metrics/job/ok_1/a"),
        ("double underscore", "/metrics/job/ok_1/__a/b"),
        ("bad label name", "/metrics/job/ok_1/a-b/c"),
        ("bad percent escape", "/metrics/job/ok_1/a/%zz"),
        ("digit label", "/metrics/job/ok_1/1a/b"),
    ] {
        corpus.push(http(
            name,
            "PUT",
            path,
            b"x 1\n",
            Expect::Reason("invalid_push"),
        ));
        corpus.push(http(
            &format!("{name} (delete)"),
            "DELETE",
            path,
            b"",
            Expect::Reason("invalid_push"),
        ));
    }

    // Huge labels and too much of everything.
    let labels: Vec<String> = (0..MAX_LABELS + 8).map(|i| format!("l{i}=\"v\"")).collect();
    corpus.push(http(
        "too many labels",
        "PUT",
        push,
        format!("x{{{}}} 1\n", labels.join(",")).as_bytes(),
        Expect::Reason("too_many_labels"),
    ));
    let mut path = String::from("/metrics/job/ok_1");
    for i in 0..MAX_LABELS {
        let _ = write!(path, "/g{i}/v");
    }
    corpus.push(http(
        "too many grouping labels",
        "PUT",
        &path,
        b"x 1\n",
        Expect::Reason("too_many_labels"),
    ));
    let series = (0..=MAX_SERIES).fold(String::new(), |mut text, i| {
        let _ = writeln!(text, "s_{i} 1");
        text
    });
    corpus.push(http(
        "too many series",
        "PUT",
        push,
        series.as_bytes(),
        Expect::Reason("too_many_series"),
    ));
    corpus.push(http(
        "huge label value",
        "PUT",
        push,
        format!("x{{a=\"{}\"}} 1\n", "v".repeat(BODY_LIMIT)).as_bytes(),
        Expect::Reason("body_too_large"),
    ));
    corpus.push(http(
        "huge body of comments",
        "POST",
        push,
        &vec![b'#'; BODY_LIMIT + 1],
        Expect::Reason("body_too_large"),
    ));
    corpus.push(Hostile {
        name: "huge URL".into(),
        send: Send::Raw(
            format!(
                "PUT /metrics/job/ok_1/a/{} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                "v".repeat(1 << 20)
            )
            .into_bytes(),
        ),
        expect: Expect::Nothing,
        group: None,
    });
    corpus.push(Hostile {
        name: "huge header".into(),
        send: Send::Raw(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "h".repeat(1 << 20)
            )
            .into_bytes(),
        ),
        expect: Expect::Nothing,
        group: None,
    });

    // Consistency-check refusals, on existing and on new groups.
    let clashes: [(&str, &str); 10] = [
        (
            "gauge as counter",
            "# TYPE nl_temperature counter\nnl_temperature 1\n",
        ),
        (
            "counter as gauge",
            "# TYPE nl_requests_total gauge\nnl_requests_total 1\n",
        ),
        ("counter as untyped", "nl_requests_total{code=\"500\"} 1\n"),
        (
            "histogram as summary",
            "# TYPE nl_latency summary\nnl_latency_sum 1\nnl_latency_count 1\n",
        ),
        (
            "suffix clash",
            "# TYPE nl_latency_bucket gauge\nnl_latency_bucket 1\n",
        ),
        ("timestamp", "nl_temperature 1 1700000000000\n"),
        (
            "same series twice",
            "# TYPE nl_twice gauge\nnl_twice{a=\"1\"} 1\nnl_twice{a=\"1\"} 2\n",
        ),
        ("reserved prefix", "dropgate_mine 1\n"),
        (
            "the rejection counter",
            "dropgate_gateway_rejected_total{reason=\"x\"} 1\n",
        ),
        (
            "counter as summary",
            "# TYPE nl_requests_total summary\nnl_requests_total{quantile=\"0.5\"} 1\n",
        ),
    ];
    for (name, body) in clashes {
        for (job, method) in [
            ("ok_2", "PUT"),
            ("ok_3", "POST"),
            ("fresh_a", "PUT"),
            ("fresh_b", "POST"),
        ] {
            corpus.push(on_group(
                http(
                    &format!("{name} into {job} ({method})"),
                    method,
                    &format!("/metrics/job/{job}"),
                    body.as_bytes(),
                    Expect::Reason("inconsistent_push"),
                ),
                job,
                &[],
            ));
        }
    }
    corpus.push(on_group(
        with_header(
            http(
                "protobuf type clash",
                "PUT",
                "/metrics/job/ok_2/instance/i2",
                &delimited(&[gauge_family("nl_requests_total", "", &[(&[], 1.0)])]),
                Expect::Reason("inconsistent_push"),
            ),
            "Content-Type",
            PROTOBUF,
        ),
        "ok_2",
        &[("instance", "i2")],
    ));

    // Denied paths and plain misses.
    for path in [
        "/debug/pprof",
        "/%64ebug",
        "//pprof",
        "/metrics/../debug",
        "/DEBUG/pprof/heap",
        "/%2e/pprof",
    ] {
        corpus.push(http(
            &format!("GET {path}"),
            "GET",
            path,
            b"",
            Expect::Reason("denied_path"),
        ));
        corpus.push(http(
            &format!("PUT {path}"),
            "PUT",
            path,
            b"x 1\n",
            Expect::Reason("denied_path"),
        ));
    }
    for (name, method, path) in [
        ("patch", "PATCH", "/metrics/job/ok_1"),
        ("post to /metrics", "POST", "/metrics"),
        ("unknown path", "GET", "/nowhere"),
        ("push without job", "PUT", "/metrics/job/"),
        ("wipe disabled", "PUT", "/api/v1/admin/wipe"),
        ("quit disabled", "PUT", "/-/quit"),
    ] {
        corpus.push(http(name, method, path, b"x 1\n", Expect::Nothing));
    }

    // Broken HTTP.
    for (name, raw) in [
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec()),
        ("binary noise", vec![0, 1, 2, 255, 254, 13, 10, 13, 10]),
        (
            "bad chunk size",
            b"PUT /metrics/job/ok_1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx 1\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "body shorter than announced",
            b"PUT /metrics/job/ok_1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx 1\n".to_vec(),
        ),
        (
            "two content lengths",
            b"PUT /metrics/job/ok_1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 9\r\n\r\nx 1\n".to_vec(),
        ),
    ] {
        corpus.push(Hostile {
            name: name.into(),
            send: Send::Raw(raw),
            expect: Expect::NothingOrRefusal,
            group: None,
        });
    }
    corpus
}

/// A valid push: one of the `ok_*` groups, text, gzip or protobuf, PUT or POST.
fn valid_push(
    rng: &mut Rng,
    round: usize,
) -> (String, &'static str, Vec<(&'static str, String)>, Vec<u8>) {
    let job = format!("ok_{}", rng.below(4));
    let method = if rng.below(2) == 0 { "PUT" } else { "POST" };
    let value = round as f64 + 0.25;
    let text = VALID_TEXT.replace("21.5", &value.to_string());
    match rng.below(3) {
        0 => (
            format!("/metrics/job/{job}"),
            method,
            Vec::new(),
            text.into_bytes(),
        ),
        1 => (
            format!("/metrics/job/{job}"),
            method,
            vec![("Content-Encoding", "gzip".to_owned())],
            gzip(text.as_bytes()),
        ),
        _ => (
            format!("/metrics/job/{job}/instance/pb"),
            method,
            vec![("Content-Type", PROTOBUF.to_owned())],
            delimited(&[
                gauge_family("nl_temperature", "temp", &[(&[("room", "a")], value)]),
                gauge_family("nl_pb_gauge", "pb", &[(&[("k", "v")], value)]),
            ]),
        ),
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// `{a="1",instance="",job="x"}` for a group, as the exposition writes its push gauges.
fn label_text(group: &[(String, String)]) -> String {
    let mut labels = group.to_vec();
    if !labels.iter().any(|(k, _)| k == "instance") {
        labels.push(("instance".to_owned(), String::new()));
    }
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", inner.join(","))
}

/// The counter samples by reason.
fn rejections(exposition: &str) -> Vec<(String, String)> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix(REJECTED))
        .filter_map(|rest| rest.rsplit_once(' '))
        .map(|(labels, value)| (labels.to_owned(), value.to_owned()))
        .collect()
}

/// The one counter sample that moved from `before` to `after`: its labels and new
/// value, and the reason; `None` when none moved. Panics on anything else.
fn moved_counter(name: &str, before: &str, after: &str) -> Option<(String, String, String)> {
    let (old, new) = (rejections(before), rejections(after));
    assert_eq!(
        old.len(),
        new.len(),
        "{name}: the counter family changed shape"
    );
    let moved: Vec<(&String, &String, &String)> = old
        .iter()
        .zip(&new)
        .filter(|(o, n)| o.1 != n.1)
        .map(|(o, n)| (&o.0, &o.1, &n.1))
        .collect();
    match moved.as_slice() {
        [] => None,
        [(labels, from, to)] => {
            let (from, to_n): (u64, u64) = (
                from.parse().expect("counter value"),
                to.parse().expect("counter value"),
            );
            assert_eq!(to_n, from + 1, "{name}: counted more than once");
            let reason = labels
                .trim_start_matches("{reason=\"")
                .trim_end_matches("\"}")
                .to_owned();
            Some(((*labels).clone(), (*to).clone(), reason))
        }
        more => panic!("{name}: several reasons counted: {more:?}"),
    }
}

/// Checks `after` against `before` and the request's expectation; see the module docs.
fn check(hostile: &Hostile, status: u16, before: &str, after: &str, t0: f64, t1: f64) {
    let name = &hostile.name;
    let moved = moved_counter(name, before, after);
    let reason = moved.as_ref().map(|(_, _, reason)| reason.clone());
    match (hostile.expect, &reason) {
        (Expect::Reason(want), Some(got)) => assert_eq!(got, want, "{name}: status {status}"),
        (Expect::Reason(want), None) => {
            panic!("{name}: expected {want}, nothing counted (status {status})")
        }
        (Expect::AnyRefusal, None) => panic!("{name}: accepted (status {status})"),
        (Expect::Nothing, Some(got)) => panic!("{name}: counted {got} (status {status})"),
        _ => {}
    }
    if reason.is_some() {
        assert!(
            (400..500).contains(&status),
            "{name}: a refusal answered {status}"
        );
    }
    assert!(!(500..600).contains(&status), "{name}: answered {status}");
    assert!(
        !(200..300).contains(&status),
        "{name}: accepted with {status}"
    );

    // The expected exposition, built from `before`.
    let mut expected: Vec<String> = before.lines().map(str::to_owned).collect();
    if let Some((labels, to, _)) = &moved {
        let line = format!("{REJECTED}{labels} {to}");
        let at = expected
            .iter()
            .position(|l| l.starts_with(&format!("{REJECTED}{labels} ")))
            .expect("the counter line is there");
        expected[at] = line;
    }
    let mut after_lines: Vec<&str> = after.lines().collect();
    if reason.as_deref() == Some("inconsistent_push") {
        let group = hostile.group.as_ref().unwrap_or_else(|| {
            panic!("{name}: refused by the consistency check, but no group was expected")
        });
        let labels = label_text(group);
        let failure = format!("push_failure_time_seconds{labels} ");
        let success = format!("push_time_seconds{labels} ");
        let new_value = after_lines
            .iter()
            .find_map(|l| l.strip_prefix(&failure))
            .unwrap_or_else(|| panic!("{name}: no failure time for {labels}"));
        let when: f64 = new_value.parse().expect("a failure time");
        assert!(
            when >= t0.floor() - 1.0 && when <= t1 + 1.0,
            "{name}: failure time {when} is not the time of the request ({t0}..{t1})"
        );
        if let Some(at) = expected.iter().position(|l| l.starts_with(&failure)) {
            expected[at] = format!("{failure}{new_value}");
        } else {
            // A new group: exactly its two push gauges appear; take them out of `after`.
            let created = [format!("{failure}{new_value}"), format!("{success}0")];
            for line in &created {
                let at = after_lines
                    .iter()
                    .position(|l| l == line)
                    .unwrap_or_else(|| panic!("{name}: {line} missing in the new group"));
                after_lines.remove(at);
            }
        }
    }
    let expected = expected.join("\n");
    let got = after_lines.join("\n");
    if expected != got {
        let diff: Vec<String> = expected
            .lines()
            .zip(got.lines())
            .filter(|(e, g)| e != g)
            .take(5)
            .map(|(e, g)| format!("  expected {e}\n  got      {g}"))
            .collect();
        panic!(
            "{name}: the exposition changed beyond the refusal (status {status}):\n{}\n(lines: expected {}, got {})",
            diff.join("\n"),
            expected.lines().count(),
            got.lines().count()
        );
    }
    assert_eq!(
        before.ends_with('\n'),
        after.ends_with('\n'),
        "{name}: the final newline"
    );
}

/// Sends `hostile` on a connection of its own (a refused request may leave its
/// connection unusable, and must never be retried).
fn send(gateway: &Gateway, hostile: &Hostile) -> u16 {
    match &hostile.send {
        Send::Http {
            method,
            path,
            headers,
            body,
        } => {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            Client::new(gateway.addr)
                .request(method, path, &headers, body)
                .map_or(0, |answer| answer.status)
        }
        Send::Raw(bytes) => status_of(&raw_request(gateway.addr, bytes, Duration::from_secs(10))),
    }
}

#[test]
fn hostile_requests_between_valid_pushes_change_nothing_but_the_refusal() {
    let dir = TempDir::new("nothing-lost");
    let gateway = Gateway::start(
        &dir,
        &[
            &format!("--web.max-body-bytes={BODY_LIMIT}"),
            &format!("--push.max-labels-per-series={MAX_LABELS}"),
            &format!("--push.max-series-per-push={MAX_SERIES}"),
        ],
    );
    let mut rng = Rng::new(seed("nothing_lost"));
    let mut corpus = corpus();
    assert!(
        corpus.len() >= 200,
        "the corpus has only {} requests",
        corpus.len()
    );
    rng.shuffle(&mut corpus);
    let mut client = Client::new(gateway.addr);
    let mut scraper = Client::new(gateway.addr);
    let mut scrape = || {
        let answer = scraper
            .request("GET", "/metrics", &[], b"")
            .expect("scrape the gateway");
        assert_eq!(answer.status, 200, "a scrape failed: {}", answer.text());
        answer.text()
    };
    // Every valid group once, so hostile pushes meet existing families.
    for job in 0..4 {
        let answer = client
            .request(
                "PUT",
                &format!("/metrics/job/ok_{job}"),
                &[],
                VALID_TEXT.as_bytes(),
            )
            .expect("valid push");
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let mut valid = 0;
    for (round, hostile) in corpus.iter().enumerate() {
        if rng.below(2) == 0 {
            let (path, method, headers, body) = valid_push(&mut rng, round);
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let answer = client
                .request(method, &path, &headers, &body)
                .expect("valid push");
            assert_eq!(answer.status, 200, "valid push {path}: {}", answer.text());
            valid += 1;
        }
        let before = scrape();
        let t0 = now();
        let status = send(&gateway, hostile);
        let t1 = now();
        let after = scrape();
        check(hostile, status, &before, &after, t0, t1);
    }
    eprintln!(
        "nothing_lost: {} hostile requests, {valid} valid pushes between them",
        corpus.len()
    );
    assert!(
        gateway.log_text().lines().all(|l| !l.contains("ERROR")),
        "{}",
        gateway.log_text()
    );
}
