//! Connection tracking: packets it marks INVALID that a rule then drops (`-m conntrack
//! --ctstate INVALID -j DROP`, `ct state invalid drop`), and a full table, which makes
//! it drop new connections itself (the kernel's "nf_conntrack: table full, dropping
//! packet"). Evidence is the rule's counter, conntrack's own statistics
//! (`/proc/net/stat/nf_conntrack`) and the table's count against its maximum.

use super::{interfaces_of, sum, Evidence, Finding, Kind, Rule, RuleHit, Severity, TracedDrop};
use crate::diagnose::datapath::Conntrack;

/// Whether `rule` matches conntrack's INVALID state.
pub(super) fn matches_invalid(rule: &Rule) -> bool {
    let text = rule.text.to_ascii_lowercase();
    let words: Vec<&str> = text.split_whitespace().collect();
    words.windows(2).any(|w| {
        matches!(w[0], "--ctstate" | "--state" | "state") && w[1].split(',').any(|s| s == "invalid")
    })
}

/// Whether netfilter freed the packet: its reason, or on kernels without reasons
/// (5.10, where every drop is `unknown`) the function every netfilter verdict of DROP
/// is freed in.
fn netfilter_dropped(d: &TracedDrop) -> bool {
    d.reason == "NETFILTER_DROP" || (d.reason == "unknown" && d.location == "nf_hook_slow")
}

/// Conntrack's statistics before and after the window, when both were read.
fn stats<'e>(ev: &'e Evidence) -> Option<(&'e Conntrack, &'e Conntrack)> {
    Some((
        ev.before?.datapath.conntrack.as_ref()?,
        ev.after.datapath.conntrack.as_ref()?,
    ))
}

pub(super) fn invalid(ev: &Evidence, out: &mut Vec<Finding>) {
    let hits: Vec<RuleHit> = ev
        .rule_hits()
        .into_iter()
        .filter(|h| h.on_forward_path() && matches_invalid(h.rule))
        .collect();
    let packets: u64 = hits.iter().map(|h| h.packets).sum();
    let Some(top) = hits.first() else {
        return;
    };
    let traced = ev.drops_where(netfilter_dropped);
    let mut evidence = Vec::new();
    if !traced.is_empty() {
        evidence.push(format!(
            "{} packets dropped by netfilter on {}",
            sum(&traced),
            interfaces_of(&traced).join(", ")
        ));
    }
    evidence.extend(hits.iter().map(RuleHit::line));
    if let Some((before, after)) = stats(ev) {
        let delta = after.invalid.saturating_sub(before.invalid);
        if delta > 0 {
            evidence.push(format!(
                "/proc/net/stat/nf_conntrack invalid rose by {delta}"
            ));
        }
    }
    let mut flows: Vec<String> = ev
        .samples
        .iter()
        .filter(|s| s.reason == "NETFILTER_DROP")
        .filter_map(|s| {
            Some(format!(
                "{}:{} > {}:{} ({})",
                s.src?, s.sport, s.dst?, s.dport, s.protocol
            ))
        })
        .collect();
    flows.sort();
    flows.dedup();
    flows.truncate(5);
    if !flows.is_empty() {
        evidence.push(format!("sampled: {}", flows.join(", ")));
    }
    out.push(Finding {
        kind: Kind::ConntrackInvalid,
        severity: Severity::Critical,
        interface: interfaces_of(&traced).first().cloned(),
        summary: format!(
            "conntrack marks forwarded packets INVALID and {} ({}) drops them ({packets} packets)",
            top.rule.text,
            top.rule.place()
        ),
        evidence,
        fix: vec![
            "INVALID means conntrack cannot place the packet in a connection it knows: most often the other direction of the flow does not pass this host (asymmetric routing: compare ip route get for both directions), the table was flushed or overflowed mid-connection, or TCP packets fall outside the window it tracked".into(),
            "see each one in the kernel log: sysctl -w net.netfilter.nf_conntrack_log_invalid=255".into(),
            "where the path is asymmetric on purpose: sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1, or exempt that traffic before the INVALID rule".into(),
        ],
    });
}

/// New connections conntrack dropped in the window because its table was full.
pub(super) fn table_full_drops(ev: &Evidence) -> u64 {
    stats(ev).map_or(0, |(before, after)| after.drop.saturating_sub(before.drop))
}

/// The table is full (or nearly): conntrack drops new connections, evicts early.
pub(super) fn table_full(ev: &Evidence, out: &mut Vec<Finding>) {
    let Some(after) = ev.after.datapath.conntrack else {
        return;
    };
    let (dropped, evicted, insert_failed) = stats(ev).map_or((0, 0, 0), |(b, a)| {
        (
            a.drop.saturating_sub(b.drop),
            a.early_drop.saturating_sub(b.early_drop),
            a.insert_failed.saturating_sub(b.insert_failed),
        )
    });
    // 90 % full: the next burst of connections overflows it.
    let nearly_full =
        after.max > 0 && after.count.saturating_mul(10) >= after.max.saturating_mul(9);
    if dropped == 0 && evicted == 0 && !nearly_full {
        return;
    }
    let mut evidence = vec![format!(
        "net.netfilter.nf_conntrack_count = {} of nf_conntrack_max = {}",
        after.count, after.max
    )];
    for (n, what) in [
        (
            dropped,
            "drop rose by {n} (new connections refused: the table was full)",
        ),
        (
            evicted,
            "early_drop rose by {n} (entries evicted to make room)",
        ),
        (insert_failed, "insert_failed rose by {n}"),
    ] {
        if n > 0 {
            evidence.push(format!(
                "/proc/net/stat/nf_conntrack {}",
                what.replace("{n}", &n.to_string())
            ));
        }
    }
    let traced = ev.drops_where(netfilter_dropped);
    if !traced.is_empty() {
        evidence.push(format!(
            "{} packets dropped by netfilter on {}",
            sum(&traced),
            interfaces_of(&traced).join(", ")
        ));
    }
    let summary = if dropped > 0 {
        format!(
            "the conntrack table is full ({} of {}): {dropped} new connections dropped",
            after.count, after.max
        )
    } else {
        format!(
            "the conntrack table is nearly full ({} of {}): new connections will be dropped",
            after.count, after.max
        )
    };
    let doubled = after.max.saturating_mul(2).max(65_536);
    out.push(Finding {
        kind: Kind::ConntrackFull,
        severity: if dropped > 0 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        interface: interfaces_of(&traced).first().cloned(),
        summary,
        evidence,
        fix: vec![
            format!("sysctl -w net.netfilter.nf_conntrack_max={doubled}"),
            format!("echo 'net.netfilter.nf_conntrack_max = {doubled}' > /etc/sysctl.d/99-dropgate-conntrack.conf  # makes it last across reboots"),
            "find what opens so many connections: conntrack -L | awk '{print $1, $5}' | sort | uniq -c | sort -rn | head; shorter timeouts (net.netfilter.nf_conntrack_tcp_timeout_*) also free the table".into(),
        ],
    });
}

#[cfg(test)]
mod tests {
    use super::super::tests::{drop, host, rule};
    use super::*;
    use crate::diagnose::firewall::Hook;

    #[test]
    fn invalid_state_rules() {
        let cases = [
            (
                "iptables",
                "-A FORWARD -m conntrack --ctstate INVALID -j DROP",
                true,
            ),
            (
                "old state match",
                "-A FORWARD -m state --state INVALID,UNTRACKED -j DROP",
                true,
            ),
            ("nft", "ct state invalid counter drop", true),
            (
                "established",
                "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                false,
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(
                matches_invalid(&rule("FORWARD", Hook::Forward, text, None, 0)),
                want,
                "case {name}"
            );
        }
    }

    #[test]
    fn verdicts_by_scenario() {
        let invalid_rule = |n| {
            let mut r = rule(
                "FORWARD",
                Hook::Forward,
                "-A FORWARD -m conntrack --ctstate INVALID -j DROP",
                None,
                n,
            );
            r.jumps = vec!["DROP".into()];
            r
        };
        let ct = |count, invalid, dropped| Conntrack {
            count,
            max: 1000,
            invalid,
            drop: dropped,
            ..Conntrack::default()
        };
        let with = |rules: Vec<Rule>, c: Conntrack| {
            let mut s = host(true);
            s.drop_rules = rules;
            s.datapath.conntrack = Some(c);
            s
        };
        let nf = |n| vec![drop("NETFILTER_DROP", "nft_do_chain", "eth0", n)];
        let cases = [
            (
                "INVALID rule dropped forwarded packets",
                with(vec![invalid_rule(0)], ct(10, 0, 0)),
                with(vec![invalid_rule(3)], ct(10, 3, 0)),
                nf(3),
                vec![Kind::ConntrackInvalid],
            ),
            (
                "INVALID rule idle",
                with(vec![invalid_rule(3)], ct(10, 0, 0)),
                with(vec![invalid_rule(3)], ct(10, 0, 0)),
                vec![],
                vec![],
            ),
            (
                "table full: conntrack dropped new connections, no rule involved",
                with(vec![], ct(1000, 0, 10)),
                with(vec![], ct(1000, 0, 14)),
                nf(4),
                vec![Kind::ConntrackFull],
            ),
            (
                "table full on 5.10: no reasons, netfilter's function",
                with(vec![], ct(1000, 0, 10)),
                with(vec![], ct(1000, 0, 14)),
                vec![drop("unknown", "nf_hook_slow", "none", 4)],
                vec![Kind::ConntrackFull],
            ),
            (
                "table nearly full, nothing dropped yet",
                with(vec![], ct(950, 0, 0)),
                with(vec![], ct(950, 0, 0)),
                vec![],
                vec![Kind::ConntrackFull],
            ),
            (
                "table half full",
                with(vec![], ct(500, 0, 0)),
                with(vec![], ct(500, 0, 0)),
                vec![],
                vec![],
            ),
        ];
        for (name, before, after, drops, want) in cases {
            let found = super::super::findings(&Evidence {
                before: Some(&before),
                after: &after,
                drops: Some(&drops),
                samples: &[],
            });
            let kinds: Vec<Kind> = found.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, want, "case {name}: {found:?}");
            // Traced drops are evidence of the finding, whatever the kernel calls them.
            let traced: u64 = drops.iter().map(|d| d.packets).sum();
            if let (Some(finding), true) = (found.first(), traced > 0) {
                assert!(
                    finding
                        .evidence
                        .iter()
                        .any(|l| l.starts_with(&format!("{traced} packets dropped by netfilter"))),
                    "case {name}: the traced drops are missing from {:?}",
                    finding.evidence
                );
            }
        }
    }
}
