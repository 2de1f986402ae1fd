//! Ordinary traffic of a busy, healthy Docker-like host, in bounded rounds: what the
//! drop classes are checked against (tests/busy_host.rs, tests/fleet.rs).

use std::time::{Duration, Instant};

use crate::netns::DockerLikeHost;

/// A port nothing listens on, in `host`.
pub const CLOSED_PORT: u16 = 5999;

/// What the rounds did, where the kernel counts the same.
#[derive(Debug, Default)]
pub struct Done {
    /// Datagrams to the closed UDP port (the kernel's Udp NoPorts).
    pub udp_to_closed: u64,
    /// Pings answered (the kernel's Icmp InEchoReps in `ext`).
    pub pings: u64,
}

/// One round of ordinary traffic (bounded: a few seconds at most).
pub fn round(topo: &DockerLikeHost, done: &mut Done) {
    // Published port from the other host, through DNAT and forwarding.
    for _ in 0..5 {
        // The answer does not matter here: with forwarding off it is none.
        let _ = topo.curl_from_ext("/", 2);
    }
    // Connections closed with unread data: ask, then hang up before reading the answer.
    topo.ext.sh(&format!(
        "for i in 1 2 3; do python3 -c \"import socket; s=socket.create_connection(('{h}', {p}), 2); \
         s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); s.close()\" 2>/dev/null; done; true",
        h = DockerLikeHost::HOST_ADDR,
        p = DockerLikeHost::PUBLISHED_PORT
    ));
    // Clients to closed ports: TCP gets a RST, UDP an ICMP port unreachable.
    topo.ext.sh(&format!(
        "for i in 1 2 3; do curl -s -m 1 http://{h}:{CLOSED_PORT}/ >/dev/null; done; \
         python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         [s.sendto(b'x', ('{h}', {CLOSED_PORT})) for _ in range(3)]\"",
        h = DockerLikeHost::HOST_ADDR
    ));
    done.udp_to_closed += 3;
    // Unix-socket chatter: a socket pair closed with a message unread.
    topo.host.sh(
        "python3 -c \"import socket; a, b = socket.socketpair(); a.send(b'x' * 100); b.close(); a.close()\"",
    );
    // Ping between the hosts.
    topo.ext.sh(&format!(
        "ping -c 2 -i 0.2 -W 1 {} >/dev/null; true",
        DockerLikeHost::HOST_ADDR
    ));
    done.pings += 2;
}

/// Runs rounds of the busy script for `length`.
pub fn traffic_for(topo: &DockerLikeHost, length: Duration) -> Done {
    let mut done = Done::default();
    let deadline = Instant::now() + length;
    while Instant::now() < deadline {
        round(topo, &mut done);
    }
    done
}
