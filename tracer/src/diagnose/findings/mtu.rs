//! Packets too big for the link they must leave by (`PKT_TOO_BIG` in `ip_forward` /
//! `ip6_forward`): the kernel drops a DF packet (every IPv6 packet) larger than the
//! egress MTU and answers with ICMP "fragmentation needed" (ICMPv6 "packet too big"),
//! from which the sender learns to send smaller. Where that ICMP is filtered, the
//! sender never learns and the connection hangs after its handshake: a PMTU black
//! hole. The finding names both MTUs and whether a rule here filters the ICMP.

use std::net::IpAddr;

use super::{
    interfaces_of, sum, Evidence, Finding, Hook, Kind, Rule, RuleHit, Severity, TracedDrop,
};

/// Whether `rule` drops ICMP "fragmentation needed" / ICMPv6 "packet too big" on its
/// way out of or through this host: a rule naming that type, all of ICMP's
/// destination-unreachable, or ICMP as a whole.
fn filters_frag_needed(rule: &Rule) -> bool {
    if !rule.drops()
        || rule.policy
        || !rule
            .hooks
            .iter()
            .any(|h| matches!(h, Hook::Output | Hook::Forward | Hook::Postrouting))
    {
        return false;
    }
    let text = rule.text.to_ascii_lowercase();
    let words: Vec<&str> = text.split_whitespace().collect();
    let names_type = [
        "fragmentation-needed",
        "frag-needed",
        "destination-unreachable",
        "packet-too-big",
    ]
    .iter()
    .any(|t| text.contains(t));
    let numeric = words.windows(2).any(|w| {
        (w[0] == "--icmp-type" && (w[1] == "3" || w[1] == "3/4"))
            || (w[0] == "--icmpv6-type" && (w[1] == "2" || w[1].starts_with("2/")))
    });
    // `-p icmp -j DROP` or `ip protocol icmp drop`: every ICMP type, this one included.
    let all_icmp = !text.contains("type")
        && words.windows(2).any(|w| {
            matches!(
                w[0],
                "-p" | "--protocol" | "protocol" | "l4proto" | "nexthdr"
            ) && matches!(w[1], "icmp" | "1" | "ipv6-icmp" | "icmpv6" | "58")
        });
    names_type || numeric || all_icmp
}

/// Whether `rule` is a filter of "fragmentation needed" that matters to this window's
/// too-big drops (so it belongs to the MTU finding, not to the notes).
pub(super) fn filtered_by(ev: &Evidence, rule: &Rule) -> bool {
    !ev.drops_where(|d| d.reason == "PKT_TOO_BIG").is_empty() && filters_frag_needed(rule)
}

pub(super) fn packet_too_big(ev: &Evidence, out: &mut Vec<Finding>) {
    let drops: Vec<&TracedDrop> = ev.drops_where(|d| d.reason == "PKT_TOO_BIG");
    let count = sum(&drops);
    if count == 0 || ev.only_own_traffic(|s| s.reason == "PKT_TOO_BIG") {
        return;
    }
    let host = ev.after;
    let data = &host.datapath;
    let ingress = interfaces_of(&drops);
    let mut locations: Vec<&str> = drops.iter().map(|d| d.location.as_str()).collect();
    locations.sort_unstable();
    locations.dedup();
    let mut evidence = vec![format!(
        "{count} packets dropped as PKT_TOO_BIG in {} on {}",
        locations.join(", "),
        ingress.join(", ")
    )];
    for name in &ingress {
        if let Some(mtu) = data.mtu(name) {
            evidence.push(format!("ingress {name}: MTU {mtu}"));
        }
    }
    let ipv6 = ev
        .samples
        .iter()
        .any(|s| s.reason == "PKT_TOO_BIG" && s.dst.is_some_and(|d| d.is_ipv6()));
    let egress = egress_links(ev, &mut evidence);
    kernel_counts(ev, &mut evidence);
    let icmp = if ipv6 {
        "ICMPv6 \"packet too big\""
    } else {
        "ICMP \"fragmentation needed\""
    };
    let (hits, idle) = frag_needed_filters(ev);
    for hit in &hits {
        evidence.push(format!("{icmp} filtered: {}", hit.line()));
    }
    for rule in &idle {
        evidence.push(format!(
            "{icmp} may be filtered by: {} ({})",
            rule.text,
            rule.place()
        ));
    }
    let filtered = !hits.is_empty() || !idle.is_empty();
    let (first_dst, largest, out_dev, out_mtu) = egress
        .first()
        .map_or((None, 0, None, None), |(a, l, d, m)| {
            (Some(*a), *l, d.clone(), *m)
        });
    let what = match (first_dst, &out_dev, out_mtu) {
        (Some(dst), Some(dev), Some(mtu)) => format!(
            "{count} packets of up to {largest} bytes to {dst} do not fit {dev} (MTU {mtu}{})",
            ingress
                .first()
                .and_then(|i| data
                    .mtu(i)
                    .map(|m| format!("; they came in on {i}, MTU {m}")))
                .unwrap_or_default()
        ),
        (Some(dst), _, _) => format!(
            "{count} packets of up to {largest} bytes to {dst} are too big for their egress link"
        ),
        _ => format!("{count} forwarded packets are too big for their egress link"),
    };
    let summary = if filtered {
        format!("MTU black hole: {what} and {icmp} is filtered here, so the senders are never told to send smaller")
    } else {
        format!("{what}; the kernel answers with {icmp}, which must reach the senders or their connections hang")
    };
    let in_mtu = ingress.first().and_then(|i| data.mtu(i));
    let filters: Vec<&Rule> = hits
        .iter()
        .map(|h| h.rule)
        .chain(idle.iter().copied())
        .collect();
    let fix = fixes(ipv6, out_dev.as_deref(), out_mtu, in_mtu, &filters);
    out.push(Finding {
        kind: Kind::PacketTooBig,
        severity: if filtered {
            Severity::Critical
        } else {
            Severity::Warning
        },
        interface: out_dev.or_else(|| ingress.first().cloned()),
        summary,
        evidence,
        fix,
    });
}

/// The kernel's own counts of the too-big drops in the window: IPv4's `FragFails`,
/// IPv6's `Ip6InTooBigErrors`.
fn kernel_counts(ev: &Evidence, evidence: &mut Vec<String>) {
    let (host, data) = (ev.after, &ev.after.datapath);
    if let Some(before) = ev.before {
        let fails = data.frag_fails.saturating_sub(before.datapath.frag_fails);
        if fails > 0 {
            evidence.push(format!("/proc/net/snmp Ip FragFails rose by {fails}"));
        }
        let too_big = host
            .ipv6
            .counters
            .in_too_big_errors
            .saturating_sub(before.ipv6.counters.in_too_big_errors);
        if too_big > 0 {
            evidence.push(format!(
                "/proc/net/snmp6 Ip6InTooBigErrors rose by {too_big}"
            ));
        }
    }
}

/// Match the MTUs, let the ICMP through, clamp TCP's MSS, each in the family's words.
fn fixes(
    ipv6: bool,
    out_dev: Option<&str>,
    out_mtu: Option<u32>,
    in_mtu: Option<u32>,
    filters: &[&Rule],
) -> Vec<String> {
    let number = |m: Option<u32>| m.map_or("<mtu>".into(), |m| m.to_string());
    let mut fix = vec![format!(
        "make the MTUs match along the path: give the container network the smallest MTU on the way (dockerd \"mtu\" in /etc/docker/daemon.json, or compose `driver_opts: {{com.docker.network.driver.mtu: {}}}`), or raise it: ip link set {} mtu {}",
        number(out_mtu),
        out_dev.unwrap_or("<egress interface>"),
        number(in_mtu)
    )];
    let (icmp, tool) = if ipv6 {
        ("ICMPv6 \"packet too big\" (type 2)", "ip6tables")
    } else {
        ("ICMP \"fragmentation needed\" (type 3 code 4)", "iptables")
    };
    for rule in filters {
        fix.push(format!(
            "let {icmp} through: remove or narrow {} ({})",
            rule.text,
            rule.place()
        ));
    }
    fix.push(format!("for TCP, clamp the MSS of forwarded connections: {tool} -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"));
    fix
}

/// The sampled destinations of too-big packets: each with the largest packet, the
/// link it leaves by and that link's (or its route's) MTU; one evidence line each.
fn egress_links(
    ev: &Evidence,
    evidence: &mut Vec<String>,
) -> Vec<(IpAddr, u32, Option<String>, Option<u32>)> {
    let data = &ev.after.datapath;
    let mut egress = Vec::new();
    for (addr, samples) in ev.sampled_destinations(|s| s.reason == "PKT_TOO_BIG") {
        let largest = samples.iter().map(|s| s.len).max().unwrap_or(0);
        let route = data.route_to(addr);
        let dev = route.and_then(|r| r.dev.clone());
        let mtu = route
            .and_then(|r| r.mtu)
            .or_else(|| dev.as_deref().and_then(|d| data.mtu(d)));
        let leaves = match (&dev, mtu) {
            (Some(d), Some(m)) => format!("leave by {d} (MTU {m})"),
            (Some(d), None) => format!("leave by {d}"),
            _ => "have no route here".to_owned(),
        };
        evidence.push(format!(
            "sampled packets of up to {largest} bytes to {addr} {leaves}{}",
            route.map_or(String::new(), |r| format!(", route `{}`", r.text))
        ));
        egress.push((addr, largest, dev, mtu));
    }
    egress
}

/// The rules here that filter "fragmentation needed": those whose counter moved in
/// the window (they dropped it), and the others.
fn frag_needed_filters<'e>(ev: &'e Evidence) -> (Vec<RuleHit<'e>>, Vec<&'e Rule>) {
    let hits: Vec<RuleHit> = ev
        .rule_hits()
        .into_iter()
        .filter(|h| filters_frag_needed(h.rule))
        .collect();
    let idle = ev
        .after
        .drop_rules
        .iter()
        .filter(|r| filters_frag_needed(r) && !hits.iter().any(|h| std::ptr::eq(h.rule, *r)))
        .collect();
    (hits, idle)
}

#[cfg(test)]
mod tests {
    use super::super::notes;
    use super::super::tests::{drop, host, rule, sample};
    use super::*;
    use crate::diagnose::datapath::{parse_links, parse_routes};

    #[test]
    fn icmp_filters_that_make_a_black_hole() {
        let cases = [
            (
                "iptables by name",
                Hook::Output,
                "-A OUTPUT -p icmp -m icmp --icmp-type 3/4 -j DROP",
                true,
            ),
            (
                "iptables symbolic",
                Hook::Forward,
                "-A FORWARD -p icmp -m icmp --icmp-type fragmentation-needed -j DROP",
                true,
            ),
            (
                "all of icmp",
                Hook::Output,
                "-A OUTPUT -p icmp -j DROP",
                true,
            ),
            (
                "ip6tables",
                Hook::Forward,
                "-A FORWARD -p ipv6-icmp -m icmp6 --icmpv6-type 2 -j DROP",
                true,
            ),
            (
                "echo only",
                Hook::Output,
                "-A OUTPUT -p icmp -m icmp --icmp-type 8 -j DROP",
                false,
            ),
            ("on INPUT", Hook::Input, "-A INPUT -p icmp -j DROP", false),
            ("tcp", Hook::Output, "-A OUTPUT -p tcp -j DROP", false),
        ];
        for (name, hook, text, want) in cases {
            let chain = hook.label();
            let mut r = rule(chain, hook, text, None, 0);
            r.jumps = vec!["DROP".into()];
            assert_eq!(filters_frag_needed(&r), want, "case {name}");
        }
        let mut nft = rule(
            "output",
            Hook::Output,
            "icmp type destination-unreachable counter drop",
            None,
            0,
        );
        nft.tool = "nft".into();
        assert!(filters_frag_needed(&nft), "nft rule");
    }

    #[test]
    fn names_both_mtus_and_the_filter() {
        let mut before = host(true);
        before.datapath.links =
            parse_links("3: br0: <UP> mtu 1280 qdisc\n4: eth0: <UP> mtu 1500 qdisc\n");
        before.datapath.routes = parse_routes("172.18.0.0/16 dev br0 scope link\n");
        let mut filter = rule(
            "OUTPUT",
            Hook::Output,
            "-A OUTPUT -p icmp -m icmp --icmp-type 3/4 -j DROP",
            None,
            0,
        );
        filter.jumps = vec!["DROP".into()];
        before.drop_rules = vec![filter.clone()];
        let mut after = before.clone();
        after.drop_rules[0].packets = Some(4);
        after.datapath.frag_fails = 4;
        let mut s = sample("ip_forward");
        s.reason = "PKT_TOO_BIG".into();
        s.len = 1400;
        let drops = [drop("PKT_TOO_BIG", "ip_forward", "eth0", 4)];
        let found = super::super::findings(&Evidence {
            before: Some(&before),
            after: &after,
            drops: Some(&drops),
            samples: std::slice::from_ref(&s),
        });
        let kinds: Vec<Kind> = found.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec![Kind::PacketTooBig], "{found:?}");
        let f = &found[0];
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(
            f.summary,
            "MTU black hole: 4 packets of up to 1400 bytes to 172.18.0.2 do not fit br0 (MTU 1280; they came in on eth0, MTU 1500) and ICMP \"fragmentation needed\" is filtered here, so the senders are never told to send smaller"
        );
        assert!(
            f.evidence
                .iter()
                .any(|e| e
                    .starts_with("ICMP \"fragmentation needed\" filtered: 4 packets: -A OUTPUT")),
            "{:?}",
            f.evidence
        );
        assert!(f
            .evidence
            .contains(&"/proc/net/snmp Ip FragFails rose by 4".to_owned()));
        assert!(
            notes(&Evidence {
                before: Some(&before),
                after: &after,
                drops: Some(&drops),
                samples: std::slice::from_ref(&s),
            })
            .is_empty(),
            "the filtered ICMP is the finding's evidence, not a note"
        );

        // Nothing filters it here: PMTU discovery can work, a warning.
        before.drop_rules.clear();
        after.drop_rules.clear();
        let found = super::super::findings(&Evidence {
            before: Some(&before),
            after: &after,
            drops: Some(&drops),
            samples: std::slice::from_ref(&s),
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Warning);
        assert!(
            found[0]
                .summary
                .ends_with("which must reach the senders or their connections hang"),
            "{}",
            found[0].summary
        );
    }

    #[test]
    fn ipv6_names_packet_too_big_and_the_icmpv6_filter() {
        let mut state = host(true);
        state.datapath.links =
            parse_links("3: br0: <UP> mtu 1280 qdisc\n4: eth0: <UP> mtu 1500 qdisc\n");
        state.datapath.routes = parse_routes("fd29::/64 dev br0 proto kernel metric 256\n");
        let mut filter = rule(
            "FORWARD",
            Hook::Forward,
            "-A FORWARD -p ipv6-icmp -m icmp6 --icmpv6-type 2 -j DROP",
            None,
            0,
        );
        filter.tool = "ip6tables-nft".into();
        filter.jumps = vec!["DROP".into()];
        state.drop_rules = vec![filter];
        let mut after = state.clone();
        after.ipv6.counters.in_too_big_errors = 2;
        let mut s = sample("ip6_forward");
        s.reason = "PKT_TOO_BIG".into();
        s.dst = Some("fd29::2".parse().expect("ip"));
        s.len = 1400;
        let drops = [drop("PKT_TOO_BIG", "ip6_forward", "eth0", 2)];
        let found = super::super::findings(&Evidence {
            before: Some(&state),
            after: &after,
            drops: Some(&drops),
            samples: &[s],
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].summary,
            "MTU black hole: 2 packets of up to 1400 bytes to fd29::2 do not fit br0 (MTU 1280; they came in on eth0, MTU 1500) and ICMPv6 \"packet too big\" is filtered here, so the senders are never told to send smaller"
        );
        assert!(
            found[0]
                .evidence
                .contains(&"/proc/net/snmp6 Ip6InTooBigErrors rose by 2".to_owned()),
            "the kernel's IPv6 count: {:?}",
            found[0].evidence
        );
        let fix = found[0].fix.join("\n");
        assert!(
            fix.contains(
                "let ICMPv6 \"packet too big\" (type 2) through: remove or narrow -A FORWARD"
            ) && fix.contains("ip6tables -t mangle -A FORWARD -p tcp")
                && !fix.contains("ICMP \"fragmentation needed\""),
            "IPv6's own fixes: {fix}"
        );
    }
}
