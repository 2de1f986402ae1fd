//! Neighbour failure: forwarded packets wait for an ARP (IPv4) or neighbour discovery
//! (IPv6) answer that never comes and are freed with `NEIGH_FAILED` (or queued past
//! the limit: `NEIGH_QUEUEFULL`). The usual cause on a Docker host is a published
//! port whose DNAT still points at a stopped or re-addressed container: routing is
//! fine, the address is on the bridge, and nobody owns it.

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr};

use super::{interfaces_of, published_port, sum, Evidence, Finding, Kind, Severity, TracedDrop};
use crate::{
    diagnose::host::{Dnat, IpFamily},
    samples::DropEvent,
};

/// The drops of the neighbour layer: its reasons (`NEIGH_FAILED`, `NEIGH_QUEUEFULL`,
/// `NEIGH_CREATEFAIL`, `NEIGH_DEAD`, ...), and whatever `neigh_invalidate` frees: for
/// IPv6 it hands each queued packet to `ndisc_error_report`, which frees it without a
/// reason (`NOT_SPECIFIED`), where ARP's counterpart says `NEIGH_FAILED`.
fn is_neighbour_drop(reason: &str, location: &str) -> bool {
    reason.starts_with("NEIGH_") || location == "neigh_invalidate"
}

pub(super) fn neighbour_failed(ev: &Evidence, out: &mut Vec<Finding>) {
    let drops: Vec<&TracedDrop> = ev.drops_where(|d| is_neighbour_drop(&d.reason, &d.location));
    let count = sum(&drops);
    if count == 0 || ev.only_own_traffic(|s| is_neighbour_drop(&s.reason, &s.location)) {
        return;
    }
    let data = &ev.after.datapath;
    let reasons = reason_list(&drops);
    let mut evidence = vec![format!(
        "{count} packets dropped ({reasons}) on {}",
        interfaces_of(&drops).join(", ")
    )];
    let mut named = Vec::new();
    let mut fix = Vec::new();
    let mut egress: Option<String> = None;
    let targets = ev.sampled_destinations(|s| is_neighbour_drop(&s.reason, &s.location));
    for (addr, samples) in &targets {
        let (what, dev) = target(ev, *addr, samples, &mut evidence, &mut fix);
        named.push(what);
        egress = egress.or(dev);
    }
    if targets.is_empty() {
        // Without samples, the table's failed entries are the candidates.
        for n in data
            .neighbours
            .iter()
            .filter(|n| matches!(n.state.as_str(), "FAILED" | "INCOMPLETE"))
        {
            evidence.push(format!("ip neigh: {} dev {} {}", n.addr, n.dev, n.state));
        }
        fix.push(
            "see which next hop fails: ip neigh show nud failed; ip neigh show nud incomplete"
                .into(),
        );
    }
    fix.push("if a container was meant to be there: start it (docker compose up -d) so that it owns the address again".into());
    fix.dedup();
    let summary = if named.is_empty() {
        format!(
            "{count} forwarded packets dropped: no ARP/ND answer for their next hop ({reasons})"
        )
    } else {
        format!(
            "{}: {count} forwarded packets dropped ({reasons})",
            named.join("; ")
        )
    };
    out.push(Finding {
        kind: Kind::NeighbourFailed,
        severity: Severity::Critical,
        interface: egress.or_else(|| interfaces_of(&drops).first().cloned()),
        summary,
        evidence,
        fix,
    });
}

/// What is known of one address nobody answers for: the verdict's words for it and
/// the interface it is looked for on; evidence and fixes are added as found.
fn target(
    ev: &Evidence,
    addr: IpAddr,
    samples: &[&DropEvent],
    evidence: &mut Vec<String>,
    fix: &mut Vec<String>,
) -> (String, Option<String>) {
    let data = &ev.after.datapath;
    let protocol = if addr.is_ipv4() {
        "ARP"
    } else {
        "neighbour discovery"
    };
    let neighbour = data.neighbour(addr);
    let dev = neighbour
        .map(|n| n.dev.clone())
        .or_else(|| data.route_to(addr).and_then(|r| r.dev.clone()));
    if let Some(n) = neighbour {
        evidence.push(format!("ip neigh: {} dev {} {}", n.addr, n.dev, n.state));
    }
    let shown = if addr.is_ipv4() {
        addr.to_string()
    } else {
        format!("[{addr}]")
    };
    let ports: BTreeSet<String> = samples
        .iter()
        .map(|s| format!("{shown}:{} ({})", s.dport, s.protocol))
        .collect();
    let sources: BTreeSet<String> = samples
        .iter()
        .filter_map(|s| s.src)
        .map(|a| a.to_string())
        .collect();
    evidence.push(format!(
        "sampled packets to {} from {}",
        ports.into_iter().collect::<Vec<_>>().join(", "),
        sources.into_iter().collect::<Vec<_>>().join(", ")
    ));
    let on = dev.as_ref().map_or(String::new(), |d| format!(" on {d}"));
    let mut what = format!("nobody answers {protocol} for {addr}{on}");
    for d in ev.dnat_to(addr) {
        evidence.push(format!("DNAT: {}", d.rule));
        let _ = write!(what, "; {} points there", published_port(d));
        fix.push(stale_dnat_fix(d));
    }
    if let Some(container) = samples.iter().find_map(|s| s.target.container.as_ref()) {
        let _ = write!(what, " (container {container})");
    }
    let on_dev = dev.as_ref().map_or(String::new(), |d| format!(" -I {d}"));
    fix.push(if addr.is_ipv4() {
        format!("see who should answer: ip neigh show {addr}; arping -c 3{on_dev} {addr}")
    } else {
        format!("see who should answer: ip -6 neigh show {addr}; ping -6 -c 3{on_dev} {addr}")
    });
    (what, dev)
}

/// `NEIGH_FAILED in neigh_invalidate, ...`: each reason and where, once.
fn reason_list(drops: &[&TracedDrop]) -> String {
    let mut reasons: Vec<String> = drops
        .iter()
        .map(|d| format!("{} in {}", d.reason, d.location))
        .collect();
    reasons.sort();
    reasons.dedup();
    reasons.join(", ")
}

/// How to remove a DNAT rule that points at an address nobody has, with the tool of
/// its family.
fn stale_dnat_fix(dnat: &Dnat) -> String {
    let rule = &dnat.rule;
    let tool = match dnat.family() {
        IpFamily::V4 => "iptables",
        IpFamily::V6 => "ip6tables",
    };
    if let Some(spec) = rule.strip_prefix("-A ") {
        let hint = if spec.starts_with("DOCKER ") {
            " (a rule dockerd left behind: restarting dockerd rewrites its rules)"
        } else {
            ""
        };
        format!("remove the stale DNAT: {tool} -t nat -D {spec}{hint}")
    } else {
        format!("remove the stale DNAT `{rule}`: nft -a list ruleset, then nft delete rule <family> <table> <chain> handle <n>")
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{dnat, drop, host, sample};
    use super::*;
    use crate::diagnose::datapath::{parse_neighbours, parse_routes};

    /// A DNAT `rule` to `addr` that nobody has, the neighbour entry and route `ip`
    /// prints for it, and 3 drops of `reason` in `neigh_invalidate` of packets from
    /// `src`, one sampled: the one finding they make.
    fn stale_dnat_finding(
        addr: &str,
        rule: &str,
        (neighbour, route): (&str, &str),
        reason: &str,
        src: &str,
    ) -> Finding {
        let mut state = host(true);
        state.dnat.push(crate::diagnose::host::Dnat {
            dport: 9092,
            to_addr: addr.into(),
            rule: rule.into(),
            ..dnat()
        });
        state.datapath.neighbours = parse_neighbours(neighbour);
        state.datapath.routes = parse_routes(route);
        let mut s = sample("neigh_invalidate");
        s.reason = reason.into();
        s.src = Some(src.parse().expect("ip"));
        s.dst = Some(addr.parse().expect("ip"));
        let drops = [drop(reason, "neigh_invalidate", "eth0", 3)];
        let mut found = super::super::findings(&Evidence {
            before: Some(&state),
            after: &state,
            drops: Some(&drops),
            samples: &[s],
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, Kind::NeighbourFailed);
        found.remove(0)
    }

    #[test]
    fn names_the_address_nobody_answers_for_and_the_dnat_pointing_there() {
        let f = stale_dnat_finding(
            "172.18.0.9",
            "-A PREROUTING -p tcp -m tcp --dport 9092 -j DNAT --to-destination 172.18.0.9:80",
            (
                "172.18.0.9 dev docker0  FAILED\n",
                "172.18.0.0/16 dev docker0 scope link\n",
            ),
            "NEIGH_FAILED",
            "10.0.0.9",
        );
        assert_eq!(f.interface.as_deref(), Some("docker0"));
        assert_eq!(
            f.summary,
            "nobody answers ARP for 172.18.0.9 on docker0; published port 9092 -> 172.18.0.9:80 points there: 3 forwarded packets dropped (NEIGH_FAILED in neigh_invalidate)"
        );
        assert!(
            f.evidence
                .contains(&"ip neigh: 172.18.0.9 dev docker0 FAILED".to_owned()),
            "{:?}",
            f.evidence
        );
        assert!(
            f.fix.contains(&"remove the stale DNAT: iptables -t nat -D PREROUTING -p tcp -m tcp --dport 9092 -j DNAT --to-destination 172.18.0.9:80".to_owned()),
            "{:?}",
            f.fix
        );
    }

    /// IPv6's neighbour discovery frees what it queued without a reason
    /// (`ndisc_error_report`): the location alone says it; the fixes speak IPv6.
    #[test]
    fn ipv6_neighbour_discovery_failures_name_the_address_and_the_ip6tables_rule() {
        let rule =
            "-A PREROUTING -p tcp -m tcp --dport 9092 -j DNAT --to-destination [fd31:231::9]:80";
        let f = stale_dnat_finding(
            "fd31:231::9",
            rule,
            (
                "fd31:231::9 dev br0  INCOMPLETE\n",
                "fd31:231::/64 dev br0 proto kernel metric 256\n",
            ),
            "NOT_SPECIFIED",
            "fd31:10::2",
        );
        assert_eq!(
            f.summary,
            "nobody answers neighbour discovery for fd31:231::9 on br0; published port 9092 -> [fd31:231::9]:80 points there: 3 forwarded packets dropped (NOT_SPECIFIED in neigh_invalidate)"
        );
        assert!(
            f.evidence
                .contains(&"sampled packets to [fd31:231::9]:80 (tcp) from fd31:10::2".to_owned()),
            "{:?}",
            f.evidence
        );
        assert_eq!(
            f.fix[..2],
            [
                format!("remove the stale DNAT: ip6tables -t nat -D {}", &rule[3..]),
                "see who should answer: ip -6 neigh show fd31:231::9; ping -6 -c 3 -I br0 fd31:231::9"
                    .to_owned()
            ]
        );
    }

    /// The host's own packets (a local probe of a dead address, a local send too big
    /// for its route) are told to their socket: no finding. Forwarded ones are.
    #[test]
    fn only_forwarded_traffic_is_a_finding() {
        let mut state = host(true);
        state.local_addresses = vec!["10.0.0.1".parse().expect("ip")];
        let cases = [
            ("NEIGH_FAILED", "neigh_invalidate", Kind::NeighbourFailed),
            ("PKT_TOO_BIG", "ip_forward", Kind::PacketTooBig),
            ("IP_INNOROUTES", "ip_error", Kind::NoRoute),
        ];
        for (reason, location, kind) in cases {
            let drops = [drop(reason, location, "eth0", 2)];
            for (src, want) in [("10.0.0.1", vec![]), ("10.0.0.9", vec![kind])] {
                let mut s = sample(location);
                s.reason = reason.into();
                s.src = Some(src.parse().expect("ip"));
                let found = super::super::findings(&Evidence {
                    before: Some(&state),
                    after: &state,
                    drops: Some(&drops),
                    samples: &[s],
                });
                let kinds: Vec<Kind> = found.iter().map(|f| f.kind).collect();
                assert_eq!(kinds, want, "{reason} from {src}: {found:?}");
            }
        }
    }
}
