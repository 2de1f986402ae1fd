//! What a drop means for traffic: the `class` label of the drop counters.
//!
//! Most of what the kernel frees "as dropped" on a healthy host is not traffic loss:
//! sockets that close with data queued, unix sockets, capture filters, ping sockets
//! seeing echo replies meant for another socket. Counting those is right (every drop is
//! counted exactly), alerting on them is not. The class splits them off without hiding
//! anything:
//! - `transit`: a packet on its way through or into this host was lost and the sender
//!   was not told (forwarding off, a DROP rule, rp_filter, no neighbour, too big, ...);
//! - `refused`: it arrived, nothing accepts it, and the sender is told (RST, ICMP
//!   unreachable);
//! - `local`: the normal end of a local conversation, not traffic loss.
//!
//! The class is a function of reason, dropping function and protocol, all of which are
//! labels already, so it adds no series and costs nothing in the kernel. Anything the
//! table does not know is `transit`: a new cause must never be hidden. The table is
//! [`TABLE`]; users amend it with `--trace.class REASON[@LOCATION]=CLASS`.

use std::{fmt, str::FromStr};

use serde::Serialize;

/// What a drop means for traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropClass {
    /// Lost on its way through or into the host; the sender was not told.
    Transit,
    /// Nothing accepts it and the sender is told (RST, ICMP unreachable).
    Refused,
    /// The normal end of a local conversation; not traffic loss.
    Local,
}

impl DropClass {
    /// The label value.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            DropClass::Transit => "transit",
            DropClass::Refused => "refused",
            DropClass::Local => "local",
        }
    }
}

impl fmt::Display for DropClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for DropClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "transit" => Ok(DropClass::Transit),
            "refused" => Ok(DropClass::Refused),
            "local" => Ok(DropClass::Local),
            other => Err(format!(
                "unknown drop class {other:?}: use transit, refused or local"
            )),
        }
    }
}

/// Which dropping functions a table line applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// Any function.
    Any,
    /// Exactly this function.
    Function(String),
    /// Every function whose name starts with this (a family such as `unix_`).
    Prefix(String),
}

impl Location {
    fn matches(&self, location: &str) -> bool {
        match self {
            Location::Any => true,
            Location::Function(name) => location == name,
            Location::Prefix(prefix) => location.starts_with(prefix.as_str()),
        }
    }

    /// More specific lines win over general ones.
    fn specificity(&self) -> u8 {
        match self {
            Location::Any => 0,
            Location::Prefix(_) => 1,
            Location::Function(_) => 2,
        }
    }
}

/// One line of the table: a reason (`*` for any: kernels before 5.17 have none and
/// report `unknown`), where, optionally a protocol label, and the class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub reason: String,
    pub location: Location,
    pub protocol: Option<String>,
    pub class: DropClass,
}

impl Rule {
    fn matches(&self, reason: &str, location: &str, protocol: &str) -> bool {
        (self.reason == "*" || self.reason == reason)
            && self.location.matches(location)
            && self.protocol.as_deref().is_none_or(|p| p == protocol)
    }

    fn specificity(&self) -> u8 {
        u8::from(self.reason != "*") * 4
            + self.location.specificity()
            + u8::from(self.protocol.is_some())
    }
}

impl FromStr for Rule {
    type Err = String;

    /// `REASON[@LOCATION]=CLASS`; LOCATION may end in `*` for a prefix, REASON may be
    /// `*`. E.g. `NO_SOCKET@__udp4_lib_rcv=local`, `*@vhost_*=local`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (what, class) = s.rsplit_once('=').ok_or_else(|| {
            format!("{s:?}: expected REASON[@LOCATION]=CLASS, e.g. NO_SOCKET@__udp4_lib_rcv=local")
        })?;
        let class = class.parse()?;
        let (reason, location) = match what.split_once('@') {
            Some((reason, location)) => (reason, Some(location)),
            None => (what, None),
        };
        if reason.is_empty() || location.is_some_and(str::is_empty) {
            return Err(format!(
                "{s:?}: the reason (or *) and the location after @ must not be empty"
            ));
        }
        let location = match location {
            None | Some("*") => Location::Any,
            Some(l) => match l.strip_suffix('*') {
                Some(prefix) => Location::Prefix(prefix.to_owned()),
                None => Location::Function(l.to_owned()),
            },
        };
        Ok(Rule {
            reason: reason.to_owned(),
            location,
            protocol: None,
            class,
        })
    }
}

use DropClass::{Local, Refused};

/// The shipped classification: (reason or `*`, location: `""` any, `name` exact,
/// `name*` prefix, protocol label or `""`, class). Only `local` and `refused` lines are
/// listed: whatever matches none of them is `transit`. Each line says why.
#[rustfmt::skip]
pub const TABLE: &[(&str, &str, &str, DropClass)] = &[
    // -- local: sockets ending their own conversations --------------------------------
    // A socket closed with received data still queued (TCP RSTs the peer, unix drops).
    ("SOCKET_CLOSE",      "",                      "", Local),
    // Queues freed as a socket is torn down (every closed TCP connection's leftovers).
    ("QUEUE_PURGE",       "",                      "", Local),
    // Data arriving after the application closed the socket; the peer gets a RST.
    ("TCP_ABORT_ON_DATA", "",                      "", Local),
    // Unix sockets are not network traffic at all.
    ("UNIX_DISCONNECT",   "",                      "", Local),
    ("UNIX_SKIP_OOB",     "",                      "", Local),
    ("*",                 "unix_*",                "", Local),
    // Neither are vsock (VM to host) nor netlink (kernel to process) messages.
    ("*",                 "vsock_*",               "", Local),
    ("*",                 "virtio_transport_*",    "", Local),
    ("*",                 "netlink_*",             "", Local),
    // TCP discarding a duplicate of data or acks it already has: retransmissions, not loss.
    ("TCP_OLD_DATA",      "",                      "", Local),
    ("TCP_OLD_SEQUENCE",  "",                      "", Local),
    ("TCP_OFOMERGE",      "",                      "", Local),
    ("TCP_OLD_ACK",       "",                      "", Local),
    ("TCP_TOO_OLD_ACK",   "",                      "", Local),
    ("TCP_RFC7323_TW_PAWS", "",                    "", Local),
    // The RST segment itself, consumed after it reset the connection.
    ("TCP_RESET",         "",                      "", Local),
    // Packet sockets (tcpdump) get clones: a filter miss or a full capture ring loses
    // the capture's copy, never the traffic.
    ("SOCKET_FILTER",     "packet_rcv",            "", Local),
    ("SOCKET_FILTER",     "tpacket_rcv",           "", Local),
    ("PACKET_SOCK_ERROR", "",                      "", Local),
    ("*",                 "packet_rcv",            "", Local),
    ("*",                 "tpacket_rcv",           "", Local),
    // Echo replies reach every raw ICMP socket (ping's) and then the ping-socket
    // lookup, which finds none: a second delivery of a packet that already arrived.
    ("NO_SOCKET",         "ping_rcv",              "", Local),
    // Frames for another host's MAC, seen because an interface is promiscuous
    // (bridges, captures): not addressed to this host in the first place.
    ("OTHERHOST",         "",                      "", Local),
    // Multicast to groups nobody on this host joined (IPv6 ND/MLD chatter, IGMP):
    // every link coming up sends some.
    ("NOT_SPECIFIED",     "ip6_mc_input",          "", Local),
    ("*",                 "ip_rcv_finish_core",    "igmp", Local),
    ("*",                 "igmp_rcv",              "", Local),
    // -- refused: the sender is told ---------------------------------------------------
    // No socket for the port: TCP answers with a RST, UDP with ICMP port unreachable.
    ("NO_SOCKET",         "",                      "", Refused),
    // No handler for the IP protocol: ICMP protocol unreachable.
    ("IP_NOPROTO",        "",                      "", Refused),
    // Kernels without drop reasons (before 5.17) report `unknown`: by location only.
    ("unknown",           "sk_stream_kill_queues", "", Local),
    ("unknown",           "skb_queue_purge*",      "", Local),
    ("unknown",           "__skb_queue_purge*",    "", Local),
    ("unknown",           "ip6_mc_input",          "", Local),
    ("unknown",           "tcp_v4_rcv",            "", Refused),
    ("unknown",           "tcp_v6_rcv",            "", Refused),
    ("unknown",           "__udp4_lib_rcv",        "", Refused),
    ("unknown",           "__udp6_lib_rcv",        "", Refused),
];

/// The table plus the user's `--trace.class` lines, which win over it.
#[derive(Clone, Debug)]
pub struct Classifier {
    rules: Vec<Rule>,
    overrides: Vec<Rule>,
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Classifier {
    /// The shipped table with `overrides` on top.
    #[must_use]
    pub fn new(overrides: Vec<Rule>) -> Self {
        let rules = TABLE
            .iter()
            .map(|&(reason, location, protocol, class)| Rule {
                reason: reason.to_owned(),
                location: match location {
                    "" => Location::Any,
                    l => match l.strip_suffix('*') {
                        Some(prefix) => Location::Prefix(prefix.to_owned()),
                        None => Location::Function(l.to_owned()),
                    },
                },
                protocol: (!protocol.is_empty()).then(|| protocol.to_owned()),
                class,
            })
            .collect();
        Self { rules, overrides }
    }

    /// The class of a drop with these labels: the most specific override that matches,
    /// else the most specific table line, else `transit`.
    #[must_use]
    pub fn class(&self, reason: &str, location: &str, protocol: &str) -> DropClass {
        [&self.overrides, &self.rules]
            .into_iter()
            .find_map(|rules| {
                rules
                    .iter()
                    .filter(|rule| rule.matches(reason, location, protocol))
                    // max_by_key keeps the last of equals; rev() makes it the first.
                    .rev()
                    .max_by_key(|rule| rule.specificity())
                    .map(|rule| rule.class)
            })
            .unwrap_or(DropClass::Transit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (what, reason, location, protocol, class), as the drops of each scenario look on
    /// the kernels of the matrix (see kernel.md's table and tests/busy_host.rs).
    #[rustfmt::skip]
    const KNOWN: &[(&str, &str, &str, &str, DropClass)] = &[
        ("the incident", "IP_INADDRERRORS", "ip_error", "tcp", DropClass::Transit),
        ("FORWARD DROP", "NETFILTER_DROP", "nft_do_chain", "tcp", DropClass::Transit),
        ("rp_filter", "IP_RPFILTER", "ip_rcv_finish_core", "icmp", DropClass::Transit),
        ("stale DNAT", "NEIGH_FAILED", "neigh_invalidate", "tcp", DropClass::Transit),
        ("never seen before", "SOMETHING_NEW", "new_function", "tcp", DropClass::Transit),
        ("closed TCP port", "NO_SOCKET", "tcp_v4_rcv", "tcp", DropClass::Refused),
        ("closed UDP port", "NO_SOCKET", "__udp4_lib_rcv", "udp", DropClass::Refused),
        ("ping's second delivery", "NO_SOCKET", "ping_rcv", "icmp", DropClass::Local),
        ("closed HTTP connection", "QUEUE_PURGE", "sk_stream_kill_queues", "tcp", DropClass::Local),
        ("unix socket", "SOCKET_CLOSE", "unix_release_sock", "unknown", DropClass::Local),
        ("unix socket, no reason", "NOT_SPECIFIED", "unix_stream_connect", "unknown", DropClass::Local),
        ("tcpdump filter", "SOCKET_FILTER", "packet_rcv", "tcp", DropClass::Local),
        ("UDP socket filter", "SOCKET_FILTER", "sk_filter_trim_cap", "udp", DropClass::Transit),
        ("IPv6 multicast", "NOT_SPECIFIED", "ip6_mc_input", "icmpv6", DropClass::Local),
        ("other NOT_SPECIFIED", "NOT_SPECIFIED", "br_nf_pre_routing_finish", "tcp", DropClass::Transit),
        ("IGMP", "NOT_SPECIFIED", "ip_rcv_finish_core", "igmp", DropClass::Local),
        ("no route, not IGMP", "IP_INNOROUTES", "ip_rcv_finish_core", "udp", DropClass::Transit),
        ("5.10 ip_error", "unknown", "ip_error", "tcp", DropClass::Transit),
        ("5.10 closed port", "unknown", "tcp_v4_rcv", "tcp", DropClass::Refused),
        ("5.10 queue purge", "unknown", "sk_stream_kill_queues", "tcp", DropClass::Local),
    ];

    #[test]
    fn classes_of_known_drops() {
        let table = Classifier::default();
        for &(what, reason, location, protocol, want) in KNOWN {
            assert_eq!(table.class(reason, location, protocol), want, "case {what}");
        }
    }

    #[test]
    fn overrides_win_over_the_table_and_parse_strictly() {
        let table = Classifier::new(vec![
            "NO_SOCKET@__udp4_lib_rcv=local".parse().expect("valid"),
            "*@vhost_*=local".parse().expect("valid"),
            "QUEUE_PURGE=transit".parse().expect("valid"),
        ]);
        assert_eq!(
            table.class("NO_SOCKET", "__udp4_lib_rcv", "udp"),
            DropClass::Local
        );
        assert_eq!(
            table.class("NO_SOCKET", "tcp_v4_rcv", "tcp"),
            DropClass::Refused
        );
        assert_eq!(
            table.class("NOT_SPECIFIED", "vhost_net_rx", "tcp"),
            DropClass::Local
        );
        assert_eq!(
            table.class("QUEUE_PURGE", "sk_stream_kill_queues", "tcp"),
            DropClass::Transit
        );
        for bad in ["NO_SOCKET", "NO_SOCKET=lost", "=local", "NO_SOCKET@=local"] {
            assert!(bad.parse::<Rule>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn the_most_specific_override_wins_whatever_the_order() {
        let table = Classifier::new(vec![
            "NO_SOCKET=local".parse().expect("valid"),
            "NO_SOCKET@tcp_v4_rcv=transit".parse().expect("valid"),
        ]);
        assert_eq!(
            table.class("NO_SOCKET", "tcp_v4_rcv", "tcp"),
            DropClass::Transit
        );
        assert_eq!(
            table.class("NO_SOCKET", "__udp4_lib_rcv", "udp"),
            DropClass::Local
        );
    }
}
