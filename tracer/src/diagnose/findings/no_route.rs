//! No route: with forwarding on, a packet whose destination no route covers is freed in
//! `ip_error` as `IP_INNOROUTES` (the kernel answers ICMP "net unreachable", which a
//! firewall may eat); one this host sends without a route is `IP_OUTNOROUTES`. A
//! DNAT to an address outside every route, and replies from a container to a client
//! whose network this host cannot reach (an asymmetric path), look like this.
//! Drops in `ip_error` where forwarding is off belong to the forwarding findings.

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr};

use super::{interfaces_of, published_port, sum, Evidence, Finding, Kind, Severity, TracedDrop};
use crate::{diagnose::host::HostState, samples::DropEvent};

fn is_no_route(reason: &str) -> bool {
    matches!(
        reason,
        "IP_INNOROUTES" | "IP_OUTNOROUTES" | "IPV6_NOROUTE" | "IP6_NOROUTE"
    )
}

/// Whether forwarding is off where `drop` came in: then `ip_error` had a different
/// reason to drop it, named by the forwarding findings.
fn forwarding_off_at(host: &HostState, drop: &TracedDrop) -> bool {
    drop.location == "ip_error"
        && (host.ip_forward == Some(false)
            || host
                .interface(host.routing_interface(&drop.interface))
                .is_some_and(|i| !i.forwarding))
}

pub(super) fn no_route(ev: &Evidence, out: &mut Vec<Finding>) {
    let host = ev.after;
    let drops: Vec<&TracedDrop> =
        ev.drops_where(|d| is_no_route(&d.reason) && !forwarding_off_at(host, d));
    let count = sum(&drops);
    if count == 0 || ev.only_own_traffic(|s| is_no_route(&s.reason)) {
        return;
    }
    let mut reasons: Vec<String> = drops
        .iter()
        .map(|d| format!("{} in {}", d.reason, d.location))
        .collect();
    reasons.sort();
    reasons.dedup();
    let ingress = interfaces_of(&drops);
    let mut evidence = vec![format!(
        "{count} packets dropped ({}) on {}",
        reasons.join(", "),
        ingress.join(", ")
    )];
    if let Some(before) = ev.before {
        // InNoRoutes is an IpExt counter of /proc/net/netstat, not of snmp's Ip line.
        let delta = host
            .datapath
            .in_no_routes
            .saturating_sub(before.datapath.in_no_routes);
        if delta > 0 {
            evidence.push(format!(
                "/proc/net/netstat IpExt InNoRoutes rose by {delta}"
            ));
        }
    }
    let mut named = Vec::new();
    let mut fix = Vec::new();
    for (dst, samples) in ev.sampled_destinations(|s| is_no_route(&s.reason)) {
        named.push(destination(ev, dst, &samples, &mut evidence, &mut fix));
    }
    if named.is_empty() {
        fix.push("find the destinations: dropgate watch --reason IP_INNOROUTES; then ip route get <destination>".into());
    }
    let summary = if named.is_empty() {
        format!(
            "{count} packets dropped for lack of a route on {}",
            ingress.join(", ")
        )
    } else {
        format!("{}: {count} packets dropped", named.join("; "))
    };
    out.push(Finding {
        kind: Kind::NoRoute,
        severity: Severity::Critical,
        interface: ingress.first().cloned(),
        summary,
        evidence,
        fix,
    });
}

/// The verdict's words for one destination without a route; evidence and fixes are
/// added as found.
fn destination(
    ev: &Evidence,
    dst: IpAddr,
    samples: &[&DropEvent],
    evidence: &mut Vec<String>,
    fix: &mut Vec<String>,
) -> String {
    let host = ev.after;
    let sources: BTreeSet<IpAddr> = samples.iter().filter_map(|s| s.src).collect();
    // From an address behind one of this host's bridges: a container's reply (or its
    // own connection) that cannot get back out.
    let from_bridge = sources
        .iter()
        .find_map(|src| host.bridge_of(&src.to_string()).map(str::to_owned));
    let route = host.datapath.route_to(dst);
    evidence.push(format!(
        "sampled packets from {} to {dst}: {}",
        sources
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        route.map_or("no route matches".to_owned(), |r| format!(
            "the route that matches is `{}`",
            r.text
        ))
    ));
    let mut what = match &from_bridge {
        Some(bridge) => format!(
            "no route to {dst} for traffic from behind {bridge} (replies to a client this host cannot reach: an asymmetric path?)"
        ),
        None => format!("no route to {dst}"),
    };
    fix.insert(
        0,
        format!("add a route that covers {dst} (ip route add <its network> via <gateway>) or a default route"),
    );
    for d in ev.dnat_to(dst) {
        evidence.push(format!("DNAT: {}", d.rule));
        let _ = write!(what, "; {} points there", published_port(d));
        fix.push(format!(
            "or fix the DNAT rule that points at {dst}, which no route leads to: {}",
            d.rule
        ));
    }
    fix.push(match (sources.first(), samples.first()) {
        (Some(src), Some(s)) => format!(
            "see the decision: ip route get {dst} from {src} iif {}",
            s.interface
        ),
        _ => format!("see the decision: ip route get {dst}"),
    });
    what
}

#[cfg(test)]
mod tests {
    use super::super::tests::{dnat, drop, host, sample};
    use super::*;
    use crate::diagnose::datapath::parse_routes;

    fn no_route_sample(src: &str, dst: &str) -> crate::samples::DropEvent {
        let mut s = sample("ip_error");
        s.reason = "IP_INNOROUTES".into();
        s.src = Some(src.parse().expect("ip"));
        s.dst = Some(dst.parse().expect("ip"));
        s
    }

    #[test]
    fn names_the_destination_the_dnat_and_replies_from_behind_a_bridge() {
        let mut state = host(true);
        state.dnat = vec![crate::diagnose::host::Dnat {
            to_addr: "10.99.0.5".into(),
            rule: "-A PREROUTING -p tcp -m tcp --dport 9091 -j DNAT --to-destination 10.99.0.5:80"
                .into(),
            ..dnat()
        }];
        state.bridges.push(crate::enrich::rtnetlink::BridgeSubnet {
            bridge: "docker0".into(),
            subnet: crate::enrich::Subnet::parse("172.18.0.0/16").expect("a subnet"),
        });
        state.datapath.routes = parse_routes("172.18.0.0/16 dev docker0 scope link\n");
        let drops = [drop("IP_INNOROUTES", "ip_error", "eth0", 2)];
        let cases = [
            (
                "stale DNAT",
                no_route_sample("10.0.0.9", "10.99.0.5"),
                "no route to 10.99.0.5; published port 9091 -> 10.99.0.5:80 points there: 2 packets dropped",
            ),
            (
                "replies",
                no_route_sample("172.18.0.2", "198.51.100.7"),
                "no route to 198.51.100.7 for traffic from behind docker0 (replies to a client this host cannot reach: an asymmetric path?): 2 packets dropped",
            ),
        ];
        for (name, s, want) in cases {
            let found = super::super::findings(&Evidence {
                before: Some(&state),
                after: &state,
                drops: Some(&drops),
                samples: &[s],
            });
            let kinds: Vec<Kind> = found.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, vec![Kind::NoRoute], "case {name}: {found:?}");
            assert_eq!(found[0].summary, want, "case {name}");
        }
    }

    #[test]
    fn ip_error_with_forwarding_off_is_not_a_routing_problem() {
        let state = host(false);
        let drops = [drop("IP_INNOROUTES", "ip_error", "eth0", 2)];
        let found = super::super::findings(&Evidence {
            before: Some(&state),
            after: &state,
            drops: Some(&drops),
            samples: &[],
        });
        let kinds: Vec<Kind> = found.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec![Kind::ForwardingOff], "{found:?}");
    }
}
