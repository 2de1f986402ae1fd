//! Drop scenarios of a Docker-like host, each in namespaces of its own: the reason and
//! the place dropgate reports must be the kernel's, and forwarding-on must be quiet.

use std::time::Duration;

use dropgate_tests::{
    dropgate::{DropgateRun, Watch},
    is_root, may_run,
    netns::DockerLikeHost,
};

const DROPS: &str = "dropgate_packets_dropped_total";

fn privileged(test: &str) -> bool {
    may_run(test, is_root(), "root (namespaces, iptables, BPF)")
}

/// Drops of `reason` in the host namespace, summed over locations and interfaces.
fn host_drops(dropgate: &DropgateRun, topo: &DockerLikeHost, reason: &str) -> f64 {
    dropgate.value(DROPS, &[("netns", &topo.host.name), ("reason", reason)])
}

/// Runs `scenario` (set up in `host`), then sends a request from `ext` that must fail,
/// and returns the exposition afterwards.
fn failing_request(topo: &DockerLikeHost, dropgate: &DropgateRun) -> String {
    assert_eq!(
        topo.curl_from_ext("/-/healthy", 2),
        None,
        "the request from ext must not get through"
    );
    dropgate.scrape()
}

#[test]
fn forward_policy_drop_is_netfilter_drop() {
    if !privileged("forward_policy_drop_is_netfilter_drop") {
        return;
    }
    for (tool, location) in [
        ("iptables-nft", "nft_do_chain"),
        ("iptables-legacy", "nf_hook_slow"),
    ] {
        let topo = DockerLikeHost::build();
        topo.start_http_service();
        topo.set_forwarding(true);
        topo.host.sh(&format!("{tool} -P FORWARD DROP"));
        let dropgate = DropgateRun::start(&[]);
        let before = dropgate.value(
            DROPS,
            &[
                ("netns", &topo.host.name),
                ("reason", "NETFILTER_DROP"),
                ("location", location),
            ],
        );
        let exposition = failing_request(&topo, &dropgate);
        let after = dropgate_tests::http::sample_sum(
            &exposition,
            DROPS,
            &[
                ("netns", &topo.host.name),
                ("reason", "NETFILTER_DROP"),
                ("location", location),
            ],
        );
        assert!(
            after > before,
            "{tool}: NETFILTER_DROP at {location} expected in host:\n{exposition}"
        );
        assert_eq!(
            host_drops(&dropgate, &topo, "IP_INADDRERRORS") as u64,
            0,
            "{tool}: forwarding is on, so no ip_error drops"
        );
        if tool == "iptables-legacy" {
            // Legacy tables live beside nft's; clear them so the next run starts clean.
            topo.host.sh("iptables-legacy -P FORWARD ACCEPT");
        }
    }
}

#[test]
fn nft_drop_rule_is_netfilter_drop() {
    if !privileged("nft_drop_rule_is_netfilter_drop") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    topo.host.sh("nft add table inet dg && \
         nft add chain inet dg forward_dg '{ type filter hook forward priority 0; }' && \
         nft add rule inet dg forward_dg tcp dport 80 drop");
    let dropgate = DropgateRun::start(&[]);
    let exposition = failing_request(&topo, &dropgate);
    let dropped = dropgate_tests::http::sample_sum(
        &exposition,
        DROPS,
        &[
            ("netns", &topo.host.name),
            ("reason", "NETFILTER_DROP"),
            ("location", "nft_do_chain"),
            ("protocol", "tcp"),
        ],
    );
    assert!(
        dropped >= 1.0,
        "NETFILTER_DROP at nft_do_chain expected:\n{exposition}"
    );
}

#[test]
fn strict_rp_filter_with_a_spoofed_source_is_ip_rpfilter() {
    if !privileged("strict_rp_filter_with_a_spoofed_source_is_ip_rpfilter") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.set_forwarding(true);
    topo.strict_rp_filter_with_spoofable_source();
    let dropgate = DropgateRun::start(&[]);
    let out = topo.ping_with_spoofed_source();
    assert!(
        !out.status.success(),
        "pings with a spoofed source must not be answered"
    );
    let dropped = dropgate.value(
        DROPS,
        &[
            ("netns", &topo.host.name),
            ("reason", "IP_RPFILTER"),
            ("interface", DockerLikeHost::HOST_UPLINK),
            ("protocol", "icmp"),
        ],
    );
    assert!(
        dropped >= 3.0,
        "three IP_RPFILTER drops of icmp on the uplink expected, got {dropped}"
    );
}

#[test]
fn forwarding_on_is_quiet() {
    if !privileged("forwarding_on_is_quiet") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    let dropgate = DropgateRun::start(&[]);
    for _ in 0..3 {
        assert_eq!(
            topo.curl_from_ext("/", 3),
            Some(200),
            "forwarding on: requests get through"
        );
    }
    for reason in ["IP_INADDRERRORS", "NETFILTER_DROP", "IP_RPFILTER"] {
        assert_eq!(
            host_drops(&dropgate, &topo, reason) as u64,
            0,
            "no {reason} with a healthy host"
        );
    }
}

#[test]
fn per_interface_forwarding_and_flips_are_reported() {
    if !privileged("per_interface_forwarding_and_flips_are_reported") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    topo.set_forwarding(true);
    topo.host.sh(&format!(
        "sysctl -qw net.ipv4.conf.{}.forwarding=0",
        DockerLikeHost::HOST_UPLINK
    ));
    let dropgate = DropgateRun::start(&[]);
    let host = topo.host.name.as_str();
    // The watcher picks namespaces up within a second or two.
    let mut exposition = String::new();
    for _ in 0..50 {
        exposition = dropgate.scrape();
        if exposition.contains(&format!(
            "dropgate_ipv4_forwarding{{interface=\"{}\",netns=\"{host}\"}}",
            DockerLikeHost::HOST_UPLINK
        )) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let gauge = |exposition: &str, interface: &str| {
        dropgate_tests::http::sample_sum(
            exposition,
            "dropgate_ipv4_forwarding",
            &[("netns", host), ("interface", interface)],
        )
    };
    assert_eq!(
        gauge(&exposition, "all") as u64,
        1,
        "ip_forward=1 in host:\n{exposition}"
    );
    assert_eq!(
        gauge(&exposition, DockerLikeHost::HOST_UPLINK) as u64,
        0,
        "the uplink's forwarding is off"
    );
    assert_eq!(gauge(&exposition, "br0") as u64, 1, "the bridge forwards");

    let exposition = failing_request(&topo, &dropgate);
    let dropped = dropgate_tests::http::sample_sum(
        &exposition,
        DROPS,
        &[
            ("netns", host),
            ("reason", "IP_INADDRERRORS"),
            ("location", "ip_error"),
            ("interface", DockerLikeHost::HOST_UPLINK),
        ],
    );
    assert!(
        dropped >= 1.0,
        "ip_error drops on the uplink expected:\n{exposition}"
    );

    let changes =
        |d: &DropgateRun| d.value("dropgate_forwarding_changes_total", &[("netns", host)]) as u64;
    let before = changes(&dropgate);
    topo.set_forwarding(false);
    topo.set_forwarding(true);
    let mut after = before;
    for _ in 0..50 {
        after = changes(&dropgate);
        if after >= before + 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(after, before + 2, "two flips of ip_forward are two changes");
}

#[test]
fn a_sample_names_the_dnat_destination() {
    if !privileged("a_sample_names_the_dnat_destination") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    let mut watch = Watch::start(
        &[
            "--json",
            "--netns",
            &topo.host.name,
            "--reason",
            "IP_INADDRERRORS",
        ],
        Duration::from_secs(2),
    );
    assert_eq!(
        topo.curl_from_ext("/", 2),
        None,
        "forwarding off: the request fails"
    );
    let line = watch
        .next_line(Duration::from_secs(5))
        .expect("dropgate watch printed a sample of the drop");
    for want in [
        format!("\"dst\":\"{}\"", DockerLikeHost::CTR_ADDR),
        format!("\"dport\":{}", DockerLikeHost::CTR_PORT),
        format!("\"src\":\"{}\"", DockerLikeHost::EXT_ADDR),
        format!("\"interface\":\"{}\"", DockerLikeHost::HOST_UPLINK),
        "\"protocol\":\"tcp\"".to_owned(),
        "\"location\":\"ip_error\"".to_owned(),
    ] {
        assert!(line.contains(&want), "sample {line} lacks {want}");
    }
    // Ctrl-C ends watch cleanly.
    let status = watch.stop("INT").expect("dropgate watch exits on SIGINT");
    assert!(
        status.success(),
        "dropgate watch exited with {status} on SIGINT"
    );
}

#[test]
fn the_drops_api_lists_recent_samples() {
    if !privileged("the_drops_api_lists_recent_samples") {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.start_http_service();
    let dropgate = DropgateRun::start(&[]);
    assert_eq!(
        topo.curl_from_ext("/", 2),
        None,
        "forwarding off: the request fails"
    );
    let response = dropgate_tests::http::get(dropgate.addr, "/api/v1/drops?limit=1000")
        .expect("GET /api/v1/drops");
    assert_eq!(response.status, 200, "{}", response.body);
    let ours = response
        .body
        .split("},{")
        .filter(|e| {
            e.contains(&format!("\"netns\":\"{}\"", topo.host.name))
                && e.contains("\"location\":\"ip_error\"")
        })
        .count();
    assert!(
        ours >= 1,
        "the ip_error sample of the failed request is listed:\n{}",
        response.body
    );
    assert!(
        response
            .body
            .contains(&format!("\"dst\":\"{}\"", DockerLikeHost::CTR_ADDR)),
        "the sample carries the DNAT-ed destination"
    );
}
