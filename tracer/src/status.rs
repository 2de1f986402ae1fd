//! The trace side's sections of the status page in `dropgate run`: the current findings
//! with their evidence and fix, a drop summary per namespace, interface and reason, and
//! the forwarding state of every namespace.
//!
//! They are handed to the gateway as plain tables ([`StatusSection`]), so the gateway
//! renders and escapes them without knowing where they come from. Building them is a
//! pure function of what the tracer already keeps, table-tested without a kernel.

use std::collections::{BTreeMap, BTreeSet};

use gateway::status::{StatusCell, StatusColumn, StatusRow, StatusSection, Tone};
use tracer_common::DropCounts;

use crate::{
    collector::DropLabels,
    diagnose::findings::{Finding, Severity},
    drop_class::DropClass,
    forwarding::NamespaceForwarding,
};

/// At most this many drop rows: the page is for reading, `/metrics` has every series.
const DROP_ROWS: usize = 100;

/// The four sections, most urgent first.
#[must_use]
pub fn sections(
    findings: &[Finding],
    notes: &[String],
    drops: &BTreeMap<DropLabels, DropCounts>,
    forwarding: &[(String, NamespaceForwarding)],
) -> Vec<StatusSection> {
    vec![
        findings_section(findings, notes),
        drops_section(drops, Shown::Traffic),
        forwarding_section(forwarding),
        drops_section(drops, Shown::Local),
    ]
}

fn findings_section(findings: &[Finding], notes: &[String]) -> StatusSection {
    let rows = findings
        .iter()
        .map(|finding| {
            let tone = match finding.severity {
                Severity::Critical => Tone::Critical,
                Severity::Warning => Tone::Warning,
            };
            StatusRow::new(
                tone,
                vec![
                    vec![
                        finding.severity.label().to_owned(),
                        finding.kind.label().to_owned(),
                    ]
                    .into(),
                    finding.summary.clone().into(),
                    finding.evidence.clone().into(),
                    finding.fix.clone().into(),
                ],
            )
        })
        .collect();
    StatusSection {
        title: "Findings".into(),
        // The notes of the round (drops by the host's own INPUT/OUTPUT policy) follow
        // the description: seen, named, and not a problem.
        notes: std::iter::once(
            "What keeps traffic from reaching this host's containers, rechecked continuously from its configuration, the kernel's counters and the drops traced in dropgate's own network namespace (the same verdicts as `dropgate diagnose`).".to_owned(),
        )
        .chain(notes.iter().map(|n| format!("Note: {n}")))
        .collect(),
        columns: vec![
            StatusColumn::text("severity"),
            StatusColumn::text("problem"),
            StatusColumn::text("evidence"),
            StatusColumn::text("fix"),
        ],
        rows,
        empty: "No problem found in the last round of checks.".into(),
    }
}

/// One row of the drop summary: the series of one (namespace, interface, reason).
#[derive(Default)]
struct DropSummary {
    packets: u64,
    bytes: u64,
    locations: BTreeSet<String>,
    protocols: BTreeSet<&'static str>,
}

/// Which drops a table shows: the page leads with the ones that concern traffic and
/// keeps socket housekeeping in a table of its own, further down.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// `transit` and `refused`.
    Traffic,
    /// `local`.
    Local,
}

fn drops_section(drops: &BTreeMap<DropLabels, DropCounts>, shown: Shown) -> StatusSection {
    let mut summary: BTreeMap<(DropClass, &str, &str, &str), DropSummary> = BTreeMap::new();
    for (labels, counts) in drops {
        if (labels.class == DropClass::Local) != (shown == Shown::Local) {
            continue;
        }
        let row = summary
            .entry((
                labels.class,
                &labels.netns,
                &labels.interface,
                &labels.reason,
            ))
            .or_default();
        row.packets += counts.packets;
        row.bytes += counts.bytes;
        row.locations.insert(labels.location.clone());
        row.protocols.insert(labels.protocol);
    }
    let mut rows: Vec<_> = summary.into_iter().collect();
    // Most dropped first; ties in label order, so the page does not shuffle.
    rows.sort_by(|(a_key, a), (b_key, b)| b.packets.cmp(&a.packets).then(a_key.cmp(b_key)));
    let total = rows.len();
    let mut notes = vec![match shown {
        Shown::Traffic => "Packets the kernel dropped since dropgate started, per class, network namespace, interface and drop reason, summed over the dropping functions and protocols listed: transit means traffic was lost without the sender being told, refused that the sender was told (RST, ICMP unreachable). Socket housekeeping is under \"Local drops\" below. Every series: dropgate_packets_dropped_total on /metrics.",
        Shown::Local => "Drops of class local: the normal end of local conversations (sockets closed with data queued, unix sockets, capture filters, ping's second delivery), not traffic loss. Counted exactly like the others, shown apart so they do not hide what matters.",
    }
    .to_owned()];
    if total > DROP_ROWS {
        notes.push(format!(
            "Showing the {DROP_ROWS} rows with the most drops of {total}."
        ));
    }
    let join = |items: Vec<&str>| items.join(", ");
    StatusSection {
        title: match shown {
            Shown::Traffic => "Drops",
            Shown::Local => "Local drops",
        }
        .into(),
        notes,
        columns: vec![
            StatusColumn::text("class"),
            StatusColumn::text("namespace"),
            StatusColumn::text("interface"),
            StatusColumn::text("reason"),
            StatusColumn::text("dropped in"),
            StatusColumn::text("protocols"),
            StatusColumn::number("packets"),
            StatusColumn::number("bytes"),
        ],
        rows: rows
            .into_iter()
            .take(DROP_ROWS)
            .map(|((class, netns, interface, reason), row)| {
                StatusRow::new(
                    if class == DropClass::Transit {
                        Tone::Warning
                    } else {
                        Tone::Normal
                    },
                    vec![
                        class.label().into(),
                        netns.into(),
                        interface.into(),
                        reason.into(),
                        join(row.locations.iter().map(String::as_str).collect()).into(),
                        join(row.protocols.iter().copied().collect()).into(),
                        row.packets.to_string().into(),
                        row.bytes.to_string().into(),
                    ],
                )
            })
            .collect(),
        empty: match shown {
            Shown::Traffic => "No packet lost or refused since dropgate started.",
            Shown::Local => "No local drop since dropgate started.",
        }
        .into(),
    }
}

fn forwarding_section(forwarding: &[(String, NamespaceForwarding)]) -> StatusSection {
    let rows = forwarding
        .iter()
        .map(|(netns, ns)| {
            let names = |forwarding: bool| -> StatusCell {
                let mut names: Vec<&str> = ns
                    .interfaces
                    .values()
                    .filter(|(_, on)| *on == forwarding)
                    .map(|(name, _)| name.as_str())
                    .collect();
                names.sort_unstable();
                names.join(", ").into()
            };
            let state = |all: Option<bool>| match all {
                Some(true) => "on",
                Some(false) => "off",
                None => "unknown",
            };
            StatusRow::new(
                if ns.all == Some(true) {
                    Tone::Good
                } else {
                    Tone::Normal
                },
                vec![
                    netns.as_str().into(),
                    state(ns.all).into(),
                    names(true),
                    names(false),
                    ns.changes.to_string().into(),
                    state(ns.ipv6_all).into(),
                    ns.ipv6_changes.to_string().into(),
                ],
            )
        })
        .collect();
    StatusSection {
        title: "Forwarding".into(),
        notes: vec![
            "IPv4 forwarding of every network namespace dropgate knows, as the kernel reports it, updated the moment it changes. A Docker host needs it on for published ports to be reachable from other hosts; containers usually have it off.".into(),
            "IPv6 has one switch, net.ipv6.conf.all.forwarding: with it off nothing is forwarded whatever the interfaces say (from kernel 6.17 except what arrives on an interface with force_forwarding = 1).".into(),
        ],
        columns: vec![
            StatusColumn::text("namespace"),
            StatusColumn::text("net.ipv4.ip_forward"),
            StatusColumn::text("on for"),
            StatusColumn::text("off for"),
            StatusColumn::number("changes seen"),
            StatusColumn::text("net.ipv6.conf.all.forwarding"),
            StatusColumn::number("IPv6 changes seen"),
        ],
        rows,
        empty: "No namespace's forwarding state is known yet.".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::findings::Kind;

    fn labels(netns: &str, interface: &str, reason: &str, location: &str) -> DropLabels {
        DropLabels {
            class: crate::drop_class::Classifier::default().class(reason, location, "tcp"),
            interface: interface.into(),
            location: location.into(),
            netns: netns.into(),
            protocol: "tcp",
            reason: reason.into(),
        }
    }

    fn cells(row: &StatusRow) -> Vec<String> {
        row.cells
            .iter()
            .map(|cell| cell.lines.join(" | "))
            .collect()
    }

    #[test]
    fn findings_keep_summary_evidence_and_fix_with_their_severity() {
        let finding = Finding {
            kind: Kind::ForwardingOff,
            severity: Severity::Critical,
            interface: Some("vh-ext".into()),
            summary: "forwarding is off on vh-ext".into(),
            evidence: vec!["3 packets dropped".into(), "DNAT: rule".into()],
            fix: vec!["sysctl -w net.ipv4.ip_forward=1".into()],
        };
        let section = findings_section(&[finding], &[]);
        assert_eq!(section.rows.len(), 1);
        assert_eq!(section.rows[0].tone, Tone::Critical);
        assert_eq!(
            cells(&section.rows[0]),
            [
                "critical | forwarding_off",
                "forwarding is off on vh-ext",
                "3 packets dropped | DNAT: rule",
                "sysctl -w net.ipv4.ip_forward=1",
            ]
        );
        assert!(findings_section(&[], &[]).rows.is_empty());
    }

    #[test]
    fn notes_follow_the_description_and_add_no_row() {
        let section = findings_section(
            &[],
            &["the firewall dropped 3 packets: -P INPUT DROP".into()],
        );
        assert!(section.rows.is_empty(), "a note is not a finding");
        assert_eq!(
            section.notes.last().map(String::as_str),
            Some("Note: the firewall dropped 3 packets: -P INPUT DROP")
        );
    }

    #[test]
    fn drops_are_summed_per_namespace_interface_and_reason_most_first() {
        let drops = BTreeMap::from([
            (
                labels("host", "eth0", "NO_SOCKET", "tcp_v4_rcv"),
                DropCounts {
                    packets: 2,
                    bytes: 120,
                },
            ),
            (
                labels("dg-host", "vh-ext", "IP_INADDRERRORS", "ip_error"),
                DropCounts {
                    packets: 5,
                    bytes: 300,
                },
            ),
            (
                labels("dg-host", "vh-ext", "IP_INADDRERRORS", "ip_error_2"),
                DropCounts {
                    packets: 1,
                    bytes: 60,
                },
            ),
        ]);
        let section = drops_section(&drops, Shown::Traffic);
        let rows: Vec<Vec<String>> = section.rows.iter().map(cells).collect();
        assert_eq!(
            rows,
            [
                [
                    "transit",
                    "dg-host",
                    "vh-ext",
                    "IP_INADDRERRORS",
                    "ip_error, ip_error_2",
                    "tcp",
                    "6",
                    "360"
                ],
                [
                    "refused",
                    "host",
                    "eth0",
                    "NO_SOCKET",
                    "tcp_v4_rcv",
                    "tcp",
                    "2",
                    "120"
                ],
            ]
        );
        assert_eq!(
            section.rows[0].tone,
            Tone::Warning,
            "lost traffic stands out"
        );
    }

    #[test]
    fn local_drops_have_a_table_of_their_own() {
        let drops = BTreeMap::from([
            (
                labels("host", "", "QUEUE_PURGE", "sk_stream_kill_queues"),
                DropCounts {
                    packets: 500,
                    bytes: 0,
                },
            ),
            (
                labels("host", "eth0", "IP_INADDRERRORS", "ip_error"),
                DropCounts {
                    packets: 3,
                    bytes: 180,
                },
            ),
        ]);
        let traffic = drops_section(&drops, Shown::Traffic);
        assert_eq!(traffic.rows.len(), 1);
        assert_eq!(cells(&traffic.rows[0])[3], "IP_INADDRERRORS");
        let local = drops_section(&drops, Shown::Local);
        assert_eq!(local.title, "Local drops");
        assert_eq!(local.rows.len(), 1);
        assert_eq!(cells(&local.rows[0])[3], "QUEUE_PURGE");
    }

    #[test]
    fn drop_rows_are_capped_with_a_note() {
        let drops: BTreeMap<DropLabels, DropCounts> = (0..DROP_ROWS + 5)
            .map(|i| {
                (
                    labels("host", &format!("if{i}"), "NO_SOCKET", "f"),
                    DropCounts {
                        packets: i as u64,
                        bytes: 0,
                    },
                )
            })
            .collect();
        let section = drops_section(&drops, Shown::Traffic);
        assert_eq!(section.rows.len(), DROP_ROWS);
        assert_eq!(cells(&section.rows[0])[2], format!("if{}", DROP_ROWS + 4));
        assert!(
            section.notes.iter().any(|n| n.contains("of 105")),
            "{:?}",
            section.notes
        );
    }

    #[test]
    fn forwarding_lists_interfaces_on_and_off_per_namespace() {
        let ns = NamespaceForwarding {
            all: Some(false),
            interfaces: BTreeMap::from([
                (1, ("lo".to_owned(), false)),
                (3, ("vh-ext".to_owned(), false)),
                (4, ("br0".to_owned(), true)),
            ]),
            changes: 2,
            ipv6_all: Some(true),
            ipv6_changes: 1,
            ..NamespaceForwarding::default()
        };
        let section = forwarding_section(&[("dg-host".into(), ns)]);
        assert_eq!(section.rows[0].tone, Tone::Normal);
        assert_eq!(
            cells(&section.rows[0]),
            ["dg-host", "off", "br0", "lo, vh-ext", "2", "on", "1"]
        );
        let on = NamespaceForwarding {
            all: Some(true),
            ..NamespaceForwarding::default()
        };
        assert_eq!(
            forwarding_section(&[("host".into(), on)]).rows[0].tone,
            Tone::Good
        );
    }
}
