//! What the kernel program reads from a dropped skb: the interface label is the one the
//! packet came in on, also when it is dropped on its way out, and a packet held by a
//! socket is not named after the word `skb->dev` (which the socket's queue reuses).

use std::time::{Duration, Instant};

use dropgate_tests::{
    dropgate::DropgateRun,
    http::sample_sum,
    is_root, may_run,
    netns::{DockerLikeHost, Netns},
};

const DROPS: &str = "dropgate_packets_dropped_total";

/// Counts are integers far below 2^53.
fn count(exposition: &str, labels: &[(&str, &str)]) -> u64 {
    sample_sum(exposition, DROPS, labels) as u64
}

/// Forwarded datagrams dropped after routing, in mangle POSTROUTING, where `skb->dev`
/// is already the outgoing bridge: the label must still be the uplink they came in on.
#[test]
fn a_forwarded_packet_dropped_on_its_way_out_names_its_ingress_interface() {
    if !may_run(
        "egress drop e2e",
        is_root(),
        "root (namespaces, iptables, BPF)",
    ) {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.set_forwarding(true);
    topo.host
        .sh("iptables -t mangle -A POSTROUTING -o br0 -p udp --dport 7 -j DROP");
    topo.ext.sh(&format!(
        "ip route replace 172.31.231.0/24 via {}",
        DockerLikeHost::HOST_ADDR
    ));
    let dropgate = DropgateRun::start(&["--trace.samples-per-sec", "0"]);
    let sent = 20;
    let out = topo
        .ext
        .command(env!("CARGO_BIN_EXE_flood"))
        .args([
            &format!("{}:7", DockerLikeHost::CTR_ADDR),
            "--count",
            &sent.to_string(),
            "--seconds",
            "5",
            "--batch",
            "1",
        ])
        .output()
        .expect("run flood in ext");
    assert!(out.status.success(), "flood: {out:?}");
    let dropped: u64 = topo
        .host
        .sh("iptables -t mangle -L POSTROUTING -v -x -n | awk '$3 == \"DROP\" {print $1}'")
        .trim()
        .parse()
        .expect("the DROP rule's packet counter");
    assert!(dropped > 0, "the rule dropped the datagrams");
    let netns = topo.host.name.clone();
    let on = |exposition: &str, interface: &str| {
        count(
            exposition,
            &[
                ("netns", &netns),
                ("interface", interface),
                ("reason", "NETFILTER_DROP"),
                ("protocol", "udp"),
            ],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let exposition = loop {
        let exposition = dropgate.scrape();
        if on(&exposition, DockerLikeHost::HOST_UPLINK) >= dropped || Instant::now() > deadline {
            break exposition;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (
            on(&exposition, DockerLikeHost::HOST_UPLINK),
            on(&exposition, "br0")
        ),
        (dropped, 0),
        "all {dropped} drops under the ingress uplink, none under the outgoing bridge"
    );
}

/// Datagrams left unread in a UDP socket are freed when it closes; while queued, their
/// `skb->dev` holds the queue's scratch values. The label must be the interface they came
/// in on (`lo`: the kernel hands no socket with these drops, so the namespace is unknown
/// and `lo` is shown by its index), never "none" from a device read out of scratch values.
#[test]
fn unread_datagrams_freed_at_close_keep_the_interface_they_came_in_on() {
    if !may_run("socket queue drop e2e", is_root(), "root (namespaces, BPF)") {
        return;
    }
    let ns = Netns::create("udpclose");
    let dropgate = DropgateRun::start(&["--trace.samples-per-sec", "0"]);
    let labels = [("location", "udp_destruct_common"), ("protocol", "udp")];
    let none: Vec<(&str, &str)> = labels
        .iter()
        .copied()
        .chain([("interface", "none")])
        .collect();
    let first = dropgate.scrape();
    let (before, none_before) = (count(&first, &labels), count(&first, &none));
    // A receiver that never reads, five datagrams to it over lo, then close.
    ns.sh("python3 -c '
import socket, time
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind((\"127.0.0.1\", 5555))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5): s.sendto(b\"x\" * 100, (\"127.0.0.1\", 5555))
time.sleep(0.2); r.close()
'");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exposition = loop {
        let exposition = dropgate.scrape();
        if count(&exposition, &labels) >= before + 5 || Instant::now() > deadline {
            break exposition;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        count(&exposition, &labels) >= before + 5,
        "the five unread datagrams were dropped at close"
    );
    assert_eq!(
        count(&exposition, &none) - none_before,
        0,
        "no unread datagram is labelled as having come in on no interface"
    );
}
