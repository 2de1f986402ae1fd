//! The hardened gateway from the outside: the real `dropgate gateway` binary, real
//! sockets, real clients. The bypass table over raw sockets, TLS and basic auth with
//! curl and `openssl s_client` (certificates made by openssl in a temp dir; bad and
//! missing passwords, missing and foreign client certificates, a reload to TLS 1.3 and
//! another user, an invalid reload that changes nothing, an invalid file at start), the
//! push network allow-list, and the limits with their counted rejections.

mod hardening;

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use dropgate_tests::{http, may_run};
use hardening::{raw_exchange, status_of, Client, Gateway, TempDir};

const BYPASS_ATTEMPTS: &str = include_str!("../../gateway/tests/data/bypass-attempts.tsv");
const PUSH_BYPASS_ATTEMPTS: &str =
    include_str!("../../gateway/tests/data/push-bypass-attempts.tsv");

fn counted(exposition: &str, reason: &str) -> u64 {
    http::sample_sum(
        exposition,
        "dropgate_gateway_rejected_total",
        &[("reason", reason)],
    ) as u64
}

#[test]
fn bypass_attempts_over_a_real_socket_are_all_denied() {
    let dir = TempDir::new("bypass");
    let gateway = Gateway::start(&dir, &["--web.route-prefix=/pg"]);
    let mut denied = 0;
    let attempts: Vec<(&str, &str)> = BYPASS_ATTEMPTS
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split_once('\t').expect("name<TAB>path"))
        .collect();
    assert!(attempts.len() >= 25);
    for (name, path) in &attempts {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(gateway.addr, request.as_bytes(), Duration::from_secs(5));
        let text = String::from_utf8_lossy(&answer);
        let status = status_of(&answer);
        // 404 from the filter; 400 only where the HTTP parser refuses the target
        // itself (a raw backslash), which is no way in either.
        assert!(
            status == 404 || status == 400,
            "case {name}: {path} answered {status}:\n{text}"
        );
        assert!(
            !text.to_ascii_lowercase().contains("\nserver:"),
            "case {name}: a Server header leaks:\n{text}"
        );
        if status == 404 {
            denied += 1;
        }
    }
    let exposition = http::get(gateway.addr, "/pg/metrics").expect("scrape").body;
    assert_eq!(
        counted(&exposition, "denied_path"),
        denied,
        "every 404 was the filter's"
    );
    assert!(
        denied >= 25,
        "only {denied} of the attempts reached the filter"
    );
}

/// Pushes past `--web.deny-path` rules with curl (`--path-as-is`, so curl sends the
/// path untouched): `@base64`, `;`, percent-encoding, the route prefix. Every one
/// is 404 and no denied group is stored.
#[test]
fn push_bypass_attempts_with_curl_store_nothing() {
    if !may_run(
        "push_bypass_attempts_with_curl_store_nothing",
        hardening::have("curl"),
        "curl",
    ) {
        return;
    }
    let dir = TempDir::new("push-bypass");
    let gateway = Gateway::start(
        &dir,
        &[
            "--web.route-prefix=/pg",
            "--web.deny-path=^/metrics/job/secret(/|$)",
            "--web.deny-path=/team/red(/|$)",
            "--web.deny-path=evil",
        ],
    );
    let attempts: Vec<(&str, &str)> = PUSH_BYPASS_ATTEMPTS
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split_once('\t').expect("name<TAB>path"))
        .collect();
    assert!(attempts.len() >= 25);
    let push = |path: &str| {
        let url = format!("http://{}{path}", gateway.addr);
        curl(
            dir.path(),
            &url,
            &["--path-as-is", "-X", "PUT", "--data-binary", "m 1\n"],
        )
    };
    for (name, path) in &attempts {
        let (exit, status) = push(path);
        assert_eq!((exit, status), (0, 404), "case {name}: PUT {path}");
    }
    assert_eq!(push("/pg/metrics/job/public"), (0, 200), "an allowed push");
    let exposition = http::get(gateway.addr, "/pg/metrics").expect("scrape").body;
    assert!(exposition.contains("job=\"public\""), "{exposition}");
    for denied in ["job=\"secret\"", "team=\"red\"", "evil"] {
        assert!(
            !exposition.to_ascii_lowercase().contains(denied),
            "a denied group was stored ({denied}):\n{exposition}"
        );
    }
    assert_eq!(
        counted(&exposition, "denied_path"),
        attempts.len() as u64,
        "every 404 was the filter's"
    );
}

#[test]
fn writes_only_from_the_allowed_networks() {
    let dir = TempDir::new("allow");
    let outside = Gateway::start(&dir, &["--web.allow-push-from=10.0.0.0/8"]);
    let mut client = Client::new(outside.addr);
    let push = client
        .request("PUT", "/metrics/job/a", &[], b"x 1\n")
        .expect("push");
    assert_eq!(push.status, 403, "{}", push.text());
    assert!(push.text().contains("--web.allow-push-from"));
    let scrape = client.request("GET", "/metrics", &[], b"").expect("scrape");
    assert_eq!(scrape.status, 200);
    assert_eq!(counted(&scrape.text(), "push_not_allowed"), 1);

    let inside = Gateway::start(
        &dir,
        &[
            "--web.allow-push-from=10.0.0.0/8",
            "--web.allow-push-from=127.0.0.1/32",
        ],
    );
    let push = Client::new(inside.addr)
        .request("PUT", "/metrics/job/a", &[], b"x 1\n")
        .expect("push");
    assert_eq!(push.status, 200, "{}", push.text());

    let mut bad = Gateway::spawn(&dir, &["--web.allow-push-from=10.0.0.0/33"]);
    let status = bad
        .exit_within(Duration::from_secs(10))
        .expect("a bad network stops the start");
    assert!(!status.success());
    assert!(bad.log_text().contains("10.0.0.0/33"), "{}", bad.log_text());
}

#[test]
fn limits_answer_4xx_and_are_counted() {
    let dir = TempDir::new("limits");
    let store = dir.join("store");
    let gateway = Gateway::start(
        &dir,
        &[
            "--web.max-body-bytes=1000",
            "--web.header-read-timeout=500ms",
            "--web.max-connections=4",
            "--push.max-labels-per-series=4",
            "--push.max-series-per-push=3",
            &format!("--persistence.file={}", store.display()),
        ],
    );
    let mut client = Client::new(gateway.addr);
    let ok = client
        .request("PUT", "/metrics/job/j", &[], b"kept 1\n")
        .expect("push");
    assert_eq!(ok.status, 200);
    let table: [(&str, &str, Vec<u8>, u16, &str); 3] = [
        (
            "body",
            "/metrics/job/j",
            vec![b'#'; 2000],
            413,
            "body_too_large",
        ),
        (
            "labels",
            "/metrics/job/j",
            b"x{a=\"1\",b=\"2\",c=\"3\"} 1\n".to_vec(),
            400,
            "too_many_labels",
        ),
        (
            "series",
            "/metrics/job/j",
            b"a 1\nb 1\nc 1\nd 1\n".to_vec(),
            400,
            "too_many_series",
        ),
    ];
    for (name, path, body, status, reason) in table {
        let answer = client.request("PUT", path, &[], &body).expect(name);
        assert_eq!(answer.status, status, "case {name}: {}", answer.text());
        let exposition = gateway.scrape();
        assert_eq!(counted(&exposition, reason), 1, "case {name}");
        assert!(exposition.contains("kept{instance=\"\",job=\"j\"} 1"));
    }

    // A slow head gets 408 after the header timeout.
    let started = Instant::now();
    let slow = raw_exchange(
        gateway.addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(status_of(&slow), 408, "{}", String::from_utf8_lossy(&slow));
    assert!(started.elapsed() < Duration::from_secs(5));

    // Past four connections: 429 (the keep-alive client's connection is closed first,
    // so exactly four are held).
    drop(client);
    std::thread::sleep(Duration::from_millis(100));
    let held: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(gateway.addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let refused = raw_exchange(
        gateway.addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(
        status_of(&refused),
        429,
        "{}",
        String::from_utf8_lossy(&refused)
    );
    drop(held);
    // The held connections time out (counted too) and free their permits.
    std::thread::sleep(Duration::from_millis(800));
    let exposition = gateway.scrape();
    assert_eq!(counted(&exposition, "too_many_connections"), 1);
    assert!(counted(&exposition, "header_timeout") >= 1);

    // SIGTERM: exit 0 with the store saved.
    let mut gateway = gateway;
    let status = gateway
        .process
        .stop("TERM", Duration::from_secs(15))
        .expect("the gateway exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(store.exists(), "the store was saved on the way out");
}

/// Runs `openssl` with `args` in `dir`, panicking with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// A CA `name` (name.pem, name.key) and a leaf `leaf` signed by it with `extensions`.
fn ca_and_leaf(dir: &Path, name: &str, leaf: &str, extensions: &str) {
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj"];
    let ca_subject = format!("/CN={name}");
    ca.push(&ca_subject);
    ca.extend(EC_KEY);
    let (ca_key, ca_pem) = (format!("{name}.key"), format!("{name}.pem"));
    ca.extend(["-keyout", &ca_key, "-out", &ca_pem]);
    openssl(dir, &ca);
    leaf_of(dir, name, leaf, extensions);
}

/// A leaf `leaf` (leaf.pem, leaf.key) signed by the existing CA `ca` with `extensions`.
fn leaf_of(dir: &Path, ca: &str, leaf: &str, extensions: &str) {
    let (ca_key, ca_pem) = (format!("{ca}.key"), format!("{ca}.pem"));
    let (key, csr, pem, ext) = (
        format!("{leaf}.key"),
        format!("{leaf}.csr"),
        format!("{leaf}.pem"),
        format!("{leaf}.ext"),
    );
    let subject = format!("/CN={leaf}");
    let mut request = vec!["req", "-new", "-subj", &subject];
    request.extend(EC_KEY);
    request.extend(["-keyout", &key, "-out", &csr]);
    openssl(dir, &request);
    std::fs::write(dir.join(&ext), extensions).expect("write the extensions file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
}

/// curl's answer: `(exit code, HTTP status or 0)`.
fn curl(dir: &Path, url: &str, extra: &[&str]) -> (i32, u16) {
    let output = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(extra)
        .arg(url)
        .current_dir(dir)
        .output()
        .expect("run curl");
    let code = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (output.status.code().unwrap_or(-1), code)
}

/// `openssl s_client` with `args`, sending `request`; its whole output.
fn s_client(dir: &Path, port: u16, args: &[&str], request: &str) -> (bool, String) {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-brief",
            "-ign_eof",
        ])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let _ = stdin.write_all(request.as_bytes());
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("s_client output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.success(), text)
}

fn web_config(users: &[(&str, &str)], min_version: &str) -> String {
    let mut text = format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_ca_file: clients.pem\n  client_auth_type: RequireAndVerifyClientCert\n  min_version: {min_version}\nhttp_server_config:\n  headers:\n    Strict-Transport-Security: max-age=31536000\nbasic_auth_users:\n"
    );
    for (user, password) in users {
        let hash = bcrypt::hash(password, 4).expect("bcrypt");
        let _ = writeln!(text, "  {user}: {hash}");
    }
    text
}

/// Writes `text` to `path` whole, by rename, as an editor or config tool would.
fn replace_file(path: &Path, text: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).expect("write the new file");
    std::fs::rename(&temp, path).expect("move it in place");
}

#[test]
fn tls_and_basic_auth_with_curl_and_openssl() {
    let tools =
        hardening::have("openssl") && Command::new("curl").arg("--version").output().is_ok();
    if !may_run(
        "tls_and_basic_auth_with_curl_and_openssl",
        tools,
        "openssl and curl",
    ) {
        return;
    }
    let dir = TempDir::new("tls");
    let d = dir.path();
    ca_and_leaf(
        d,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    let client_ext = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";
    ca_and_leaf(d, "clients", "client", client_ext);
    ca_and_leaf(d, "rogue", "intruder", client_ext);
    let config = dir.join("web.yml");
    replace_file(&config, &web_config(&[("alice", "wonderland")], "TLS12"));
    let gateway = Gateway::start(&dir, &[&format!("--web.config.file={}", config.display())]);
    let port = gateway.addr.port();
    let url = format!("https://127.0.0.1:{port}/metrics");
    let trust = ["--cacert", "ca.pem"];
    let me = ["--cert", "client.pem", "--key", "client.key"];
    let with = |extra: &[&str]| -> Vec<String> {
        trust.iter().chain(extra).map(|s| (*s).to_owned()).collect()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(d, &url, &args)
    };
    let mut all = me.to_vec();
    all.extend(["-u", "alice:wonderland"]);
    assert_eq!(run(with(&all)), (0, 200), "client certificate and password");

    let mut wrong = me.to_vec();
    wrong.extend(["-u", "alice:looking-glass"]);
    assert_eq!(run(with(&wrong)), (0, 401), "bad password");
    assert_eq!(run(with(&me)), (0, 401), "no password");
    let mut empty = me.to_vec();
    empty.extend(["-u", "alice:"]);
    assert_eq!(run(with(&empty)), (0, 401), "empty password");

    let (exit, status) = run(with(&["-u", "alice:wonderland"]));
    assert!(
        exit != 0 && status == 0,
        "no client certificate: curl {exit}, HTTP {status}"
    );
    let (exit, status) = run(with(&[
        "--cert",
        "intruder.pem",
        "--key",
        "intruder.key",
        "-u",
        "alice:wonderland",
    ]));
    assert!(
        exit != 0 && status == 0,
        "foreign client certificate: curl {exit}, HTTP {status}"
    );
    let (exit, status) = curl(d, &format!("http://127.0.0.1:{port}/metrics"), &[]);
    assert!(
        status != 200,
        "plain HTTP to the TLS port: curl {exit}, HTTP {status}"
    );

    check_with_openssl(d, port);
    check_reloads(&gateway, &config, &run, &with, &all);
}

/// exporter-toolkit's `client_allowed_sans`: among client certificates signed by the
/// same trusted CA, only those with a SAN equal to a listed value get in — DNS names,
/// URIs and IP addresses, compared exactly (a wildcard SAN is not a listed name).
#[test]
fn client_allowed_sans_admit_only_the_listed_clients() {
    let tools =
        hardening::have("openssl") && Command::new("curl").arg("--version").output().is_ok();
    if !may_run(
        "client_allowed_sans_admit_only_the_listed_clients",
        tools,
        "openssl and curl",
    ) {
        return;
    }
    let dir = TempDir::new("sans");
    let d = dir.path();
    ca_and_leaf(
        d,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    let client = |san: &str| {
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    };
    ca_and_leaf(d, "clients", "pusher", &client("DNS:pusher.batch.example"));
    leaf_of(
        d,
        "clients",
        "spiffe",
        &client("URI:spiffe://batch/nightly"),
    );
    leaf_of(d, "clients", "byip", &client("IP:fd00::7"));
    leaf_of(d, "clients", "other", &client("DNS:other.batch.example"));
    leaf_of(d, "clients", "wildcard", &client("DNS:*.batch.example"));
    let config = dir.join("web.yml");
    replace_file(
        &config,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_ca_file: clients.pem\n  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans:\n    - pusher.batch.example\n    - spiffe://batch/nightly\n    - fd00::7\n    - a.batch.example\n",
    );
    let gateway = Gateway::start(&dir, &[&format!("--web.config.file={}", config.display())]);
    let url = format!("https://127.0.0.1:{}/metrics", gateway.addr.port());
    let as_client = |name: &str| {
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        curl(
            d,
            &url,
            &["--cacert", "ca.pem", "--cert", &cert, "--key", &key],
        )
    };
    for admitted in ["pusher", "spiffe", "byip"] {
        assert_eq!(as_client(admitted), (0, 200), "{admitted} is listed");
    }
    for refused in ["other", "wildcard"] {
        let (exit, status) = as_client(refused);
        assert!(
            exit != 0 && status == 0,
            "{refused}: signed by the trusted CA but not listed: curl {exit}, HTTP {status}"
        );
    }
    let (exit, status) = curl(d, &url, &["--cacert", "ca.pem"]);
    assert!(
        exit != 0 && status == 0,
        "no client certificate: curl {exit}, HTTP {status}"
    );
    assert!(
        gateway
            .log_text()
            .contains("none of its SANs is in client_allowed_sans"),
        "the refusal is logged: {}",
        gateway.log_text()
    );
}

/// openssl s_client: the handshake is verified, TLS 1.2 works, 1.1 does not.
fn check_with_openssl(d: &Path, port: u16) {
    let auth = "Authorization: Basic YWxpY2U6d29uZGVybGFuZA=="; // alice:wonderland
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\nConnection: close\r\n\r\n");
    let client = [
        "-CAfile",
        "ca.pem",
        "-cert",
        "client.pem",
        "-key",
        "client.key",
    ];
    let mut tls12 = client.to_vec();
    tls12.push("-tls1_2");
    let (_, text) = s_client(d, port, &tls12, &request);
    assert!(text.contains("Verification: OK"), "{text}");
    assert!(text.contains("TLSv1.2"), "{text}");
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{text}"
    );
    assert!(!text.to_ascii_lowercase().contains("\nserver:"), "{text}");
    let mut tls11 = client.to_vec();
    tls11.push("-tls1_1");
    let (_, text) = s_client(d, port, &tls11, &request);
    assert!(!text.contains("HTTP/1.1"), "TLS 1.1 must fail: {text}");
}

/// Reload to TLS 1.3 and another user; then an invalid file that changes nothing.
fn check_reloads(
    gateway: &Gateway,
    config: &Path,
    run: &dyn Fn(Vec<String>) -> (i32, u16),
    with: &dyn Fn(&[&str]) -> Vec<String>,
    alice: &[&str],
) {
    let d = config.parent().expect("the config is in the temp dir");
    let port = gateway.addr.port();
    replace_file(config, &web_config(&[("bob", "builder")], "TLS13"));
    let mut bob = vec!["--cert", "client.pem", "--key", "client.key"];
    bob.extend(["-u", "bob:builder"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while run(with(&bob)) != (0, 200) {
        assert!(
            Instant::now() < deadline,
            "the changed web config was not picked up: {}",
            gateway.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(run(with(alice)), (0, 401), "alice is gone after the reload");
    let tls12 = [
        "-CAfile",
        "ca.pem",
        "-cert",
        "client.pem",
        "-key",
        "client.key",
        "-tls1_2",
    ];
    let request = "GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (_, text) = s_client(d, port, &tls12, request);
    assert!(
        !text.contains("HTTP/1.1"),
        "TLS 1.2 refused after the reload: {text}"
    );

    // An invalid file changes nothing, and says why in the log.
    replace_file(
        config,
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: server.key\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gateway.log_text().contains("web config not reloaded") {
        assert!(
            Instant::now() < deadline,
            "no complaint about the invalid file: {}",
            gateway.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gateway.log_text().contains("missing.pem"));
    assert_eq!(
        run(with(&bob)),
        (0, 200),
        "the previous config stays in force"
    );
}

#[test]
fn an_invalid_web_config_stops_the_start_with_a_clear_error() {
    let dir = TempDir::new("badconfig");
    let table = [
        ("unknown key", "basic_auth_user:\n  a: b\n", "unknown field"),
        (
            "plain password",
            "basic_auth_users:\n  alice: wonderland\n",
            "not a bcrypt hash",
        ),
        (
            "missing cert",
            "tls_server_config:\n  cert_file: none.pem\n  key_file: none.key\n",
            "none.pem",
        ),
        ("no such file", "", "cannot read"),
    ];
    for (name, text, want) in table {
        let config = dir.join(&format!("{}.yml", name.replace(' ', "-")));
        if !text.is_empty() {
            std::fs::write(&config, text).expect("write config");
        }
        let mut gateway =
            Gateway::spawn(&dir, &[&format!("--web.config.file={}", config.display())]);
        let status = gateway
            .exit_within(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("case {name}: started anyway"));
        let stderr = gateway.log_text();
        assert!(!status.success(), "case {name}: exit status {status:?}");
        assert!(stderr.contains(want), "case {name}: {stderr}");
        assert!(
            stderr.contains(&config.display().to_string()),
            "case {name}: the error names the file: {stderr}"
        );
    }
}
