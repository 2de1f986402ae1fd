//! The fleet as the README sets it up, with real Prometheus servers: three "hosts"
//! (Docker-like namespace topologies, one `dropgate run` each), a Prometheus in agent
//! mode that finds them through `file_sd` and remote-writes to a central Prometheus
//! (`--web.enable-remote-write-receiver`) where the shipped rules run.
//!
//! While all three are busy and healthy, no dropgate alert is pending or firing. With
//! forwarding off on one host, its alerts go pending for that host only. Every query of
//! the shipped dashboard returns data from the central Prometheus.
//!
//! The Prometheus servers and the hosts' scrape addresses live in a "site" namespace
//! wired to each host by a veth, so nothing listens in the machine's own namespace.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use dropgate_tests::{
    busy, dashboard, dropgate_bin, is_root, may_run,
    netns::{DockerLikeHost, Netns},
    process::Guarded,
    tempdir::TempDir,
};

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer/dist");
const CENTRAL: &str = "127.0.0.1:9090";
const AGENT: &str = "127.0.0.1:9095";
const HOSTS: usize = 3;

/// One host of the fleet: its topology, its dropgate and the address the site scrapes.
struct FleetHost {
    topo: DockerLikeHost,
    addr: String,
    _dropgate: Guarded,
}

/// A command run in `ns` through `nsenter`, which (unlike `ip netns exec`) leaves
/// /sys as it is, so tracefs and BTF stay where dropgate looks for them.
fn in_netns(ns: &Netns, program: &Path) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", ns.name))
        .arg(program);
    command
}

/// `curl -s` from the site namespace; the body, or "" when it failed.
fn site_get(site: &Netns, url: &str) -> String {
    let out = site.sh_output(&format!("curl -s -m 5 '{url}'"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The central Prometheus's answer to an instant query, or `None` while it is not up.
fn try_query(site: &Netns, promql: &str) -> Option<serde_json::Value> {
    let out = site.sh_output(&format!(
        "curl -s -m 5 -G 'http://{CENTRAL}/api/v1/query' --data-urlencode {}",
        shell_quote(&format!("query={promql}"))
    ));
    serde_json::from_slice(&out.stdout).ok()
}

fn query(site: &Netns, promql: &str) -> serde_json::Value {
    try_query(site, promql)
        .unwrap_or_else(|| panic!("the central Prometheus did not answer {promql}"))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The (alertname, instance, state) of every dropgate alert the central Prometheus has.
fn alerts(site: &Netns) -> Vec<(String, String, String)> {
    let body = site_get(site, &format!("http://{CENTRAL}/api/v1/alerts"));
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("alerts answer {body:?}: {err}"));
    json["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let field = |k: &str| a["labels"][k].as_str().unwrap_or("").to_owned();
            (
                field("alertname"),
                field("instance"),
                a["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .filter(|(name, _, _)| name.starts_with("Dropgate"))
        .collect()
}

/// Builds host `index`: topology, a veth to the site, dropgate listening there.
fn start_host(index: usize, site: &Netns) -> FleetHost {
    let topo = DockerLikeHost::build_as(&index.to_string());
    topo.start_http_service();
    topo.set_forwarding(true);
    let addr = format!("10.232.{index}.1");
    site.sh(&format!(
        "ip link add s{index} type veth peer name site netns {host} && \
         ip addr add 10.232.{index}.2/24 dev s{index} && ip link set s{index} up",
        host = topo.host.name
    ));
    topo.host.sh(&format!(
        "ip addr add {addr}/24 dev site && ip link set site up"
    ));
    // Not :9091: the host's DNAT rule sends that port to its container.
    let mut command = in_netns(&topo.host, &dropgate_bin());
    // --trace.netns root: every dropgate sees the one kernel of this machine; a host
    // reports its own namespace, as a real host's dropgate does.
    command.args([
        "run",
        "--web.listen-address",
        &format!("{addr}:9092"),
        "--trace.netns",
        "root",
        "--diagnose.interval",
        "2s",
    ]);
    let dropgate = Guarded::spawn(command, &format!("dropgate run on host {index}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while site
        .sh_output(&format!("curl -sf -m 2 http://{addr}:9092/-/ready"))
        .status
        .code()
        != Some(0)
    {
        assert!(
            Instant::now() < deadline,
            "dropgate on host {index} not ready"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // A pushed group, so the dashboard's push-health panels have something to show.
    site.sh(&format!(
        "echo 'job_last_success 1' | curl -sf --data-binary @- http://{addr}:9092/metrics/job/nightly"
    ));
    FleetHost {
        topo,
        addr: format!("{addr}:9092"),
        _dropgate: dropgate,
    }
}

/// The agent (file_sd → remote_write) and the central Prometheus with the rules.
fn start_prometheus(site: &Netns, dir: &TempDir, hosts: &[FleetHost]) -> (Guarded, Guarded) {
    let targets: Vec<&str> = hosts.iter().map(|h| h.addr.as_str()).collect();
    std::fs::write(
        dir.join("dropgate-hosts.json"),
        serde_json::json!([{ "targets": targets, "labels": { "site": "test" } }]).to_string(),
    )
    .expect("write file_sd targets");
    std::fs::write(
        dir.join("agent.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dropgate\n    \
             honor_labels: true\n    file_sd_configs:\n      - files: ['{}']\n        \
             refresh_interval: 1s\nremote_write:\n  - url: http://{CENTRAL}/api/v1/write\n    \
             queue_config:\n      batch_send_deadline: 1s\n",
            dir.join("dropgate-hosts.json").display()
        ),
    )
    .expect("write the agent's config");
    std::fs::write(
        dir.join("central.yml"),
        format!("global:\n  evaluation_interval: 1s\nrule_files:\n  - {DIST}/dropgate.rules.yml\n"),
    )
    .expect("write the central config");
    let prometheus = Path::new("/usr/bin/prometheus");
    let mut central = in_netns(site, prometheus);
    central
        .arg(format!(
            "--config.file={}",
            dir.join("central.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("central").display()
        ))
        .arg(format!("--web.listen-address={CENTRAL}"))
        .arg("--web.enable-remote-write-receiver")
        .stderr(log(dir, "central.log"));
    let central = Guarded::spawn(central, "central prometheus");
    let mut agent = in_netns(site, prometheus);
    agent
        .arg("--enable-feature=agent")
        .arg(format!("--config.file={}", dir.join("agent.yml").display()))
        .arg(format!(
            "--storage.agent.path={}",
            dir.join("agent").display()
        ))
        .arg(format!("--web.listen-address={AGENT}"))
        .stderr(log(dir, "agent.log"));
    let agent = Guarded::spawn(agent, "prometheus agent");
    (central, agent)
}

/// The last lines of a log, for failure messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A log file in `dir` for a server's stderr (read when a wait times out).
fn log(dir: &TempDir, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).expect("create a log file")
}

/// Waits until the central Prometheus has `promql` with at least `want` series.
fn wait_for_series(site: &Netns, dir: &TempDir, promql: &str, want: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = try_query(site, promql)
            .and_then(|answer| answer["data"]["result"].as_array().map(Vec::len))
            .unwrap_or(0);
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "central Prometheus has {got} of {want} series of {promql} after {timeout:?}; \
             central: {}\nagent: {}",
            tail(&dir.join("central.log")),
            tail(&dir.join("agent.log"))
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn fleet_alerts_only_for_the_broken_host() {
    if !may_run(
        "fleet_alerts_only_for_the_broken_host",
        is_root() && dropgate_tests::docker::on_path("prometheus"),
        "root and Debian's prometheus",
    ) {
        return;
    }
    let site = Netns::create("site");
    let dir = TempDir::new("fleet");
    let hosts: Vec<FleetHost> = (1..=HOSTS).map(|i| start_host(i, &site)).collect();
    let (_central, _agent) = start_prometheus(&site, &dir, &hosts);
    wait_for_series(
        &site,
        &dir,
        "dropgate_tracer_info",
        HOSTS,
        Duration::from_mins(1),
    );

    // Busy and healthy, all three at once (rounds interleaved).
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for host in &hosts {
            busy::round(&host.topo, &mut busy::Done::default());
        }
    }
    // Let the last scrapes travel through the agent and the rules evaluate.
    std::thread::sleep(Duration::from_secs(5));
    let healthy = alerts(&site);
    eprintln!("fleet, busy and healthy: dropgate alerts {healthy:?}");
    assert!(
        healthy.is_empty(),
        "no dropgate alert may be pending or firing on a healthy fleet: {healthy:?}"
    );

    // Forwarding off on the second host: its published port hangs for other hosts.
    let broken = &hosts[1];
    broken.topo.set_forwarding(false);
    let deadline = Instant::now() + Duration::from_mins(1);
    let firing = loop {
        let _ = broken.topo.curl_from_ext("/", 1);
        let now = alerts(&site);
        if now.iter().any(|(name, _, _)| name == "DropgateTrafficLost")
            && now.iter().any(|(name, _, _)| name == "DropgateProblem")
        {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "no DropgateTrafficLost and DropgateProblem for the broken host within 60 s: {now:?}"
        );
    };
    eprintln!(
        "fleet, forwarding off on {}: dropgate alerts {firing:?}",
        broken.addr
    );
    for (name, instance, state) in &firing {
        assert_eq!(
            instance, &broken.addr,
            "{name} ({state}) must be about the broken host only"
        );
        assert!(state == "pending" || state == "firing", "{name}: {state}");
    }

    // Every panel of the shipped dashboard has data in the central Prometheus.
    for promql in dashboard::queries(&Path::new(DIST).join("dropgate.dashboard.json")) {
        let result = query(&site, &promql);
        let series = result["data"]["result"].as_array().map_or(0, Vec::len);
        assert!(
            series > 0,
            "dashboard query returned no data: {promql}\n{result}"
        );
    }
}
