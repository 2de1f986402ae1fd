//! What the kernel program reads from a dropped skb: the interface label is the one the
//! packet came in on, also when it is dropped on its way out, and a packet held by a
//! socket is not named after the word `skb->dev` (which the socket's queue reuses).

use std::time::{Duration, Instant};

use dropgate_tests::{
    dropgate::{DropgateRun, Watch},
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

/// Fragments of datagrams that never complete wait in the reassembly queue, an rbtree
/// whose node shares its memory with `skb->dev`: the struct layout says such a drop
/// could read another skb as its device. The kernel proves that reading wrong for this
/// path: the head fragment is freed in `ip_expire` with `dev` restored, a fragment
/// chained to a run keeps its `dev`, and a tree node is erased leftmost-first before it
/// is freed in `inet_frag_rbtree_purge`, so its `rb_left` (the word `dev` shares) is
/// always NULL there, never a pointer. Those nodes have no device and no socket: their
/// namespace cannot be known from the skb, and dropgate says `unknown` with the index of
/// the interface they came in on rather than guess. Every fragment the kernel took
/// into reassembly is counted, under the receiver's `fr` or under that honest unknown,
/// and under nothing else.
#[test]
fn timed_out_fragments_keep_their_namespace_and_interface() {
    if !may_run("fragment queue e2e", is_root(), "root (namespaces, BPF)") {
        return;
    }
    let sender = Netns::create("fragsend");
    let receiver = Netns::create("fragrecv");
    // A veth pair first, so `fr` is not the receiver's second interface: a wrong read
    // cannot name it by chance.
    receiver.sh("ip link add d1 type veth peer name d2");
    sender.sh(&format!(
        "ip link add fs type veth peer name fr netns {r} && \
         ip addr add 10.78.0.1/24 dev fs && ip link set fs up",
        r = receiver.name
    ));
    // The reassembly timeout is per namespace: one second instead of thirty.
    receiver.sh("ip addr add 10.78.0.2/24 dev fr && ip link set fr up && \
         sysctl -qw net.ipv4.ipfrag_time=1");
    let dropgate = DropgateRun::start(&["--trace.samples-per-sec", "0"]);
    let before = dropgate.scrape();
    let reassembly_before = receiver.snmp("Ip", "ReasmReqds");
    // Ten datagrams, each sent as its first three fragments only (raw IPv4, MF set).
    sender.sh(
        "python3 -c \"
import socket, struct
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
src, dst = socket.inet_aton('10.78.0.1'), socket.inet_aton('10.78.0.2')
for ident in range(100, 110):
    for offset in (0, 1480, 2960):
        h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 1500, ident, 0x2000 | offset // 8, 64, 17, 0, src, dst)
        h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
        s.sendto(h + b'x' * 1480, ('10.78.0.2', 0))
\"",
    );
    let fragments = receiver.snmp("Ip", "ReasmReqds") - reassembly_before;
    assert_eq!(
        fragments, 30,
        "the receiver took every fragment into reassembly"
    );
    // Wait for the timeout (1 s) and the queue's expiry to run.
    let deadline = Instant::now() + Duration::from_secs(15);
    let reason = [("reason", "FRAG_REASM_TIMEOUT")];
    let after = loop {
        let now = dropgate.scrape();
        if count(&now, &reason) - count(&before, &reason) >= fragments || Instant::now() > deadline
        {
            break now;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let fr_index = receiver
        .sh("cat /sys/class/net/fr/ifindex")
        .trim()
        .to_owned();
    let unknown_interface = format!("if{fr_index}");
    let named = [
        ("reason", "FRAG_REASM_TIMEOUT"),
        ("netns", receiver.name.as_str()),
        ("interface", "fr"),
    ];
    let unknown = [
        ("reason", "FRAG_REASM_TIMEOUT"),
        ("netns", "unknown"),
        ("interface", unknown_interface.as_str()),
    ];
    let grew = |labels: &[(&str, &str)]| count(&after, labels) - count(&before, labels);
    let lines: Vec<&str> = after
        .lines()
        .filter(|l| l.contains("FRAG_REASM_TIMEOUT"))
        .collect();
    eprintln!("timed-out fragments:\n{}", lines.join("\n"));
    assert!(
        grew(&named) >= 20,
        "the head fragments (ip_expire) and the chained ones keep the receiver and fr:\n{}",
        lines.join("\n")
    );
    assert_eq!(
        grew(&named) + grew(&unknown),
        fragments,
        "every timed-out fragment is under the receiver's fr or an honest unknown:\n{}",
        lines.join("\n")
    );
    assert_eq!(
        grew(&reason),
        fragments,
        "and none is counted under any other namespace or interface:\n{}",
        lines.join("\n")
    );
}

/// A sample says which side of the packet's path its interface is: a forwarded datagram
/// dropped on its way out (mangle POSTROUTING, `skb->dev` already the bridge) names the
/// uplink it came in on as `ingress`; a datagram the host itself sends, dropped at the
/// same hook, has no incoming interface and names the bridge it was leaving by as
/// `egress`. Both in `watch --json` and in the plain line.
#[test]
fn a_sample_says_whether_its_interface_is_ingress_or_egress() {
    if !may_run(
        "sample direction e2e",
        is_root(),
        "root (namespaces, iptables, BPF)",
    ) {
        return;
    }
    let topo = DockerLikeHost::build();
    topo.set_forwarding(true);
    topo.host.sh(
        "iptables -t mangle -A POSTROUTING -o br0 -p udp --dport 7 -j DROP && \
         iptables -t mangle -A POSTROUTING -o br0 -p udp --dport 8 -j DROP",
    );
    topo.ext.sh(&format!(
        "ip route replace 172.31.231.0/24 via {}",
        DockerLikeHost::HOST_ADDR
    ));
    let watch_args = ["--netns", &topo.host.name, "--reason", "NETFILTER_DROP"];
    // Both attach while the second one settles.
    let plain = Watch::start(&watch_args, Duration::ZERO);
    let json = Watch::start(
        &[&["--json"][..], &watch_args[..]].concat(),
        Duration::from_secs(3),
    );
    let send = |from: &Netns, port: u16| {
        from.command(env!("CARGO_BIN_EXE_flood"))
            .args([
                &format!("{}:{port}", DockerLikeHost::CTR_ADDR),
                "--count",
                "3",
                "--seconds",
                "5",
                "--batch",
                "1",
            ])
            .output()
            .expect("run flood")
    };
    let forwarded = send(&topo.ext, 7);
    assert!(forwarded.status.success(), "flood from ext: {forwarded:?}");
    // The host's own sender learns of the drop: netfilter's verdict is its send's EPERM.
    let own = send(&topo.host, 8);
    assert!(
        String::from_utf8_lossy(&own.stderr).contains("Operation not permitted"),
        "the host's datagrams were dropped on their way out: {own:?}"
    );
    let collect = |watch: &Watch| {
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while lines.len() < 6 && Instant::now() < deadline {
            if let Some(line) = watch.next_line(Duration::from_millis(500)) {
                lines.push(line);
            }
        }
        lines
    };
    let json_lines = collect(&json);
    let with = |port: &str| -> Vec<&String> {
        json_lines
            .iter()
            .filter(|l| l.contains(&format!("\"dport\":{port}")))
            .collect()
    };
    let (forwarded, own) = (with("7"), with("8"));
    assert!(
        !forwarded.is_empty() && !own.is_empty(),
        "samples of both drops: {json_lines:#?}"
    );
    for line in forwarded {
        for want in [
            format!("\"interface\":\"{}\"", DockerLikeHost::HOST_UPLINK),
            "\"direction\":\"ingress\"".to_owned(),
        ] {
            assert!(line.contains(&want), "forwarded sample {line} lacks {want}");
        }
    }
    for line in own {
        for want in ["\"interface\":\"br0\"", "\"direction\":\"egress\""] {
            assert!(line.contains(want), "host's own sample {line} lacks {want}");
        }
    }
    let plain_lines = collect(&plain);
    let uplink = format!(" {}(ingress) udp ", DockerLikeHost::HOST_UPLINK);
    assert!(
        plain_lines.iter().any(|l| l.contains(&uplink))
            && plain_lines.iter().any(|l| l.contains(" br0(egress) udp ")),
        "watch lines say ingress and egress: {plain_lines:#?}"
    );
}
