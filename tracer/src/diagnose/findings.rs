//! From evidence to verdicts: pure rules that turn the host's configuration, the kernel's
//! counters and the traced drops of one window into findings, each with what was seen
//! and how to fix it. Table-tested without a kernel.

use serde::Serialize;

use super::host::{Dnat, HostState};
use crate::samples::DropEvent;

/// What kind of problem a finding is; also the `kind` label of `dropgate_problem`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `net.ipv4.ip_forward = 0` where forwarding is needed.
    ForwardingOff,
    /// Forwarding on globally but off on an ingress interface.
    ForwardingOffInterface,
    /// A FORWARD policy or rule drops the traffic.
    ForwardPolicyDrop,
    /// Netfilter drops without a FORWARD block we can name.
    NetfilterDrop,
    /// Reverse-path filtering drops the traffic.
    RpFilterDrop,
    /// br_netfilter frees DNAT-ed bridged traffic that cannot be routed.
    BrNetfilterDnat,
}

impl Kind {
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Kind::ForwardingOff => "forwarding_off",
            Kind::ForwardingOffInterface => "forwarding_off_interface",
            Kind::ForwardPolicyDrop => "forward_policy_drop",
            Kind::NetfilterDrop => "netfilter_drop",
            Kind::RpFilterDrop => "rp_filter_drop",
            Kind::BrNetfilterDnat => "br_netfilter_dnat",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Traffic is being dropped now.
    Critical,
    /// Traffic that needs this path would be dropped.
    Warning,
}

impl Severity {
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        }
    }
}

/// One problem: the verdict, what shows it, and how to fix it.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub severity: Severity,
    /// The interface concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    pub summary: String,
    pub evidence: Vec<String>,
    pub fix: Vec<String>,
}

/// Drops traced in the window, in dropgate's own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TracedDrop {
    pub reason: String,
    pub location: String,
    pub interface: String,
    pub protocol: String,
    pub packets: u64,
}

/// All evidence of one window.
pub struct Evidence<'a> {
    pub before: Option<&'a HostState>,
    pub after: &'a HostState,
    /// `None` when no trace could run (not privileged).
    pub drops: Option<&'a [TracedDrop]>,
    pub samples: &'a [DropEvent],
}

impl Evidence<'_> {
    fn drops_where(&self, pred: impl Fn(&TracedDrop) -> bool) -> Vec<&TracedDrop> {
        self.drops
            .unwrap_or_default()
            .iter()
            .filter(|d| pred(d))
            .collect()
    }

    fn in_addr_errors_delta(&self) -> u64 {
        self.before.map_or(0, |b| {
            self.after
                .counters
                .in_addr_errors
                .saturating_sub(b.counters.in_addr_errors)
        })
    }

    /// The DNAT rule a sample's destination came from, if any.
    fn dnat_for<'h>(&'h self, sample: &DropEvent) -> Option<&'h Dnat> {
        let dst = sample.dst?.to_string();
        self.after
            .dnat
            .iter()
            .find(|d| d.to_addr == dst && d.to_port.is_none_or(|p| p == sample.dport))
    }
}

fn sum(drops: &[&TracedDrop]) -> u64 {
    drops.iter().map(|d| d.packets).sum()
}

fn interfaces_of(drops: &[&TracedDrop]) -> Vec<String> {
    let mut names: Vec<String> = drops.iter().map(|d| d.interface.clone()).collect();
    names.sort();
    names.dedup();
    names
}

fn persist_forwarding(key: &str) -> Vec<String> {
    vec![
        format!("sysctl -w {key}=1"),
        format!(
            "echo '{key} = 1' > /etc/sysctl.d/99-dropgate-forwarding.conf  # makes it last across reboots and sysctl reloads"
        ),
        "or, where sysctls may not be changed: run the service with host networking (docker-compose `network_mode: host`), which needs no forwarding".into(),
    ]
}

/// Every finding the evidence supports.
#[must_use]
pub fn findings(evidence: &Evidence) -> Vec<Finding> {
    let mut out = Vec::new();
    forwarding(evidence, &mut out);
    netfilter(evidence, &mut out);
    rp_filter(evidence, &mut out);
    br_netfilter(evidence, &mut out);
    out
}

/// Where forwarding is needed and off, globally or on an ingress interface.
fn forwarding(ev: &Evidence, out: &mut Vec<Finding>) {
    let target = published_targets(ev);
    if !forwarding_off_globally(ev, &target, out) {
        forwarding_off_on_interfaces(ev, &target, out);
    }
}

/// The published ports whose traffic was seen dying in `ip_error`, else all of them.
fn published_targets(ev: &Evidence) -> String {
    let host = ev.after;
    let mut published: Vec<String> = ev
        .samples
        .iter()
        .filter(|s| s.location == "ip_error")
        .filter_map(|s| {
            let d = ev.dnat_for(s)?;
            // Who is behind the address, so that the verdict names the container the
            // user knows rather than an address they would have to look up.
            let behind: Vec<String> = [
                host.bridge_of(&d.to_addr).map(|b| format!("bridge {b}")),
                s.target
                    .container
                    .as_ref()
                    .map(|c| format!("container {c}")),
                s.target
                    .service
                    .as_ref()
                    .map(|c| format!("compose service {c}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            let behind = if behind.is_empty() {
                String::new()
            } else {
                format!(" ({})", behind.join(", "))
            };
            Some(format!(
                "published port {} -> {}:{}{behind}",
                d.dport, d.to_addr, s.dport
            ))
        })
        .collect();
    published.sort();
    published.dedup();
    if published.is_empty() {
        host.dnat
            .iter()
            .map(|d| {
                format!(
                    "published port {} -> {}:{}",
                    d.dport,
                    d.to_addr,
                    d.to_port.map_or("*".into(), |p| p.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        published.join(", ")
    }
}

/// `net.ipv4.ip_forward = 0` where something needs it; true when that was found.
fn forwarding_off_globally(ev: &Evidence, target: &str, out: &mut Vec<Finding>) -> bool {
    let host = ev.after;
    let ip_error = ev.drops_where(|d| d.location == "ip_error");
    let traced = sum(&ip_error);
    let snmp = ev.in_addr_errors_delta();
    let needs_forwarding = !host.dnat.is_empty() || !host.bridges.is_empty();
    let mut evidence = Vec::new();
    let ingress = interfaces_of(&ip_error);
    if traced > 0 {
        evidence.push(format!(
            "{traced} packets dropped in ip_error (IP_INADDRERRORS) on {}",
            ingress.join(", ")
        ));
    }
    if snmp > 0 {
        evidence.push(format!("/proc/net/snmp Ip InAddrErrors rose by {snmp}"));
    }
    evidence.extend(br_netfilter_note(host, &ingress));
    for d in &host.dnat {
        evidence.push(format!("DNAT: {}", d.rule));
    }
    for source in &host.forwarding_off_sources {
        evidence.push(format!(
            "{}:{} sets `{}`",
            source.file, source.line, source.text
        ));
    }
    let dropping = traced > 0 || snmp > 0;
    if host.ip_forward == Some(false) && (dropping || needs_forwarding) {
        let on = if ingress.is_empty() {
            "this host".to_owned()
        } else {
            ingress.join(", ")
        };
        let summary = match (dropping, target.is_empty()) {
            (true, false) => format!("forwarding is off on {on} (net.ipv4.ip_forward = 0); {target} dropped {} times", traced.max(snmp)),
            (true, true) => format!("forwarding is off on {on} (net.ipv4.ip_forward = 0); {} forwarded packets dropped", traced.max(snmp)),
            (false, false) => format!("forwarding is off (net.ipv4.ip_forward = 0): {target} cannot be reached from other hosts"),
            (false, true) => "forwarding is off (net.ipv4.ip_forward = 0) on a host with bridges: their containers cannot be reached from other hosts".to_owned(),
        };
        out.push(Finding {
            kind: Kind::ForwardingOff,
            severity: if dropping {
                Severity::Critical
            } else {
                Severity::Warning
            },
            interface: ingress.first().cloned(),
            summary,
            evidence,
            fix: persist_forwarding("net.ipv4.ip_forward"),
        });
        return true;
    }
    false
}

/// Forwarding on globally, but off on an interface where traffic arrives.
fn forwarding_off_on_interfaces(ev: &Evidence, target: &str, out: &mut Vec<Finding>) {
    let host = ev.after;
    let ip_error = ev.drops_where(|d| d.location == "ip_error");
    if host.ip_forward != Some(true) {
        return;
    }
    for iface in host.interfaces.iter().filter(|i| !i.forwarding) {
        let here: Vec<&TracedDrop> = ip_error
            .iter()
            .copied()
            .filter(|d| d.interface == iface.name)
            .collect();
        let count = sum(&here);
        if count == 0 && host.dnat.is_empty() {
            continue;
        }
        let key = format!("net.ipv4.conf.{}.forwarding", iface.name);
        let mut evidence = vec![format!("{key} = 0 while net.ipv4.ip_forward = 1")];
        if count > 0 {
            evidence.push(format!(
                "{count} packets dropped in ip_error (IP_INADDRERRORS) on {}",
                iface.name
            ));
        }
        let summary = if count > 0 {
            format!(
                "forwarding is off on {} ({key} = 0); {} dropped {count} times",
                iface.name,
                if target.is_empty() {
                    "forwarded traffic"
                } else {
                    target
                }
            )
        } else {
            format!("forwarding is off on {} ({key} = 0): traffic arriving there cannot reach published ports", iface.name)
        };
        let mut fix = persist_forwarding(&key);
        fix.insert(2, "check systemd-networkd `IPForward=` in /etc/systemd/network/*.network, which sets it per interface".into());
        out.push(Finding {
            kind: Kind::ForwardingOffInterface,
            severity: if count > 0 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            interface: Some(iface.name.clone()),
            summary,
            evidence,
            fix,
        });
    }
}

/// Traffic arriving on a bridge was bridged, not routed, until br_netfilter handed it to
/// iptables, whose DNAT made it need routing: the case where containers on one bridge
/// reach each other through a published port.
fn br_netfilter_note(host: &HostState, ingress: &[String]) -> Option<String> {
    let bridge = ingress
        .iter()
        .find(|i| host.bridges.iter().any(|b| &b.bridge == *i))?;
    (host.bridge_nf_call_iptables == Some(true)).then(|| {
        format!(
            "{bridge} is a bridge and net.bridge.bridge-nf-call-iptables = 1: br_netfilter passed bridged traffic to iptables, whose DNAT made it need routing"
        )
    })
}

fn netfilter(ev: &Evidence, out: &mut Vec<Finding>) {
    let drops = ev.drops_where(|d| d.reason == "NETFILTER_DROP");
    let count = sum(&drops);
    if count == 0 {
        return;
    }
    let host = ev.after;
    let mut evidence = vec![format!(
        "{count} packets dropped by netfilter ({}) on {}",
        {
            let mut l: Vec<&str> = drops.iter().map(|d| d.location.as_str()).collect();
            l.sort_unstable();
            l.dedup();
            l.join(", ")
        },
        interfaces_of(&drops).join(", ")
    )];
    evidence.extend(
        host.forward_blocks
            .iter()
            .map(|b| format!("{}: {}", b.tool, b.rule)),
    );
    let kind = if host.forward_blocks.is_empty() {
        Kind::NetfilterDrop
    } else {
        Kind::ForwardPolicyDrop
    };
    let summary = if host.forward_blocks.is_empty() {
        format!("netfilter dropped {count} packets")
    } else {
        format!(
            "the FORWARD path drops traffic ({count} packets): {}",
            host.forward_blocks[0].rule
        )
    };
    let mut fix = vec![
        "list the rules with counters: iptables -vnL FORWARD; nft -a list ruleset".to_owned(),
        "accept the published traffic before the drop, e.g. iptables -I DOCKER-USER -p tcp -d <container> --dport <port> -j ACCEPT".to_owned(),
    ];
    if !host.docker_chains && !host.dnat.is_empty() {
        fix.push("Docker's own FORWARD rules are missing (a firewall reload flushed them?): restart dockerd to recreate them".into());
    }
    out.push(Finding {
        kind,
        severity: Severity::Critical,
        interface: interfaces_of(&drops).first().cloned(),
        summary,
        evidence,
        fix,
    });
}

fn rp_filter(ev: &Evidence, out: &mut Vec<Finding>) {
    let drops = ev.drops_where(|d| d.reason == "IP_RPFILTER");
    let count = sum(&drops);
    if count == 0 {
        return;
    }
    let host = ev.after;
    let ifaces = interfaces_of(&drops);
    let mut evidence = vec![format!(
        "{count} packets dropped as IP_RPFILTER on {}",
        ifaces.join(", ")
    )];
    evidence.push(format!(
        "net.ipv4.conf.all.rp_filter = {}",
        host.rp_filter_all
    ));
    for name in &ifaces {
        if let Some(i) = host.interface(name) {
            evidence.push(format!(
                "net.ipv4.conf.{}.rp_filter = {}",
                i.name, i.rp_filter
            ));
        }
    }
    let first = ifaces
        .first()
        .cloned()
        .unwrap_or_else(|| "<interface>".into());
    out.push(Finding {
        kind: Kind::RpFilterDrop,
        severity: Severity::Critical,
        interface: ifaces.first().cloned(),
        summary: format!(
            "reverse-path filtering drops {count} packets on {}: their source is not routed back through that interface",
            ifaces.join(", ")
        ),
        evidence,
        fix: vec![
            format!("sysctl -w net.ipv4.conf.{first}.rp_filter=2 net.ipv4.conf.all.rp_filter=2  # loose mode"),
            "or add the route back to those sources via that interface (asymmetric routing)".into(),
        ],
    });
}

fn br_netfilter(ev: &Evidence, out: &mut Vec<Finding>) {
    let drops = ev.drops_where(|d| d.location == "br_nf_pre_routing_finish");
    let count = sum(&drops);
    if count == 0 {
        return;
    }
    let host = ev.after;
    out.push(Finding {
        kind: Kind::BrNetfilterDnat,
        severity: Severity::Critical,
        interface: interfaces_of(&drops).first().cloned(),
        summary: format!(
            "br_netfilter freed {count} DNAT-ed bridged packets that could not be routed (forwarding {})",
            if host.ip_forward == Some(false) { "is off" } else { "is off on the bridge" }
        ),
        evidence: vec![
            format!("{count} packets freed in br_nf_pre_routing_finish"),
            format!(
                "net.bridge.bridge-nf-call-iptables = {}",
                host.bridge_nf_call_iptables.map_or("absent", |on| if on { "1" } else { "0" })
            ),
        ],
        fix: persist_forwarding("net.ipv4.ip_forward"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::host::{Interface, IpCounters};

    fn dnat() -> Dnat {
        Dnat {
            protocol: "tcp".into(),
            dport: 9091,
            to_addr: "172.18.0.2".into(),
            to_port: Some(80),
            rule: "-A DOCKER -p tcp -m tcp --dport 9091 -j DNAT --to-destination 172.18.0.2:80"
                .into(),
        }
    }

    fn drop(reason: &str, location: &str, interface: &str, packets: u64) -> TracedDrop {
        TracedDrop {
            reason: reason.into(),
            location: location.into(),
            interface: interface.into(),
            protocol: "tcp".into(),
            packets,
        }
    }

    fn sample(location: &str) -> DropEvent {
        DropEvent {
            time: String::new(),
            netns: "root".into(),
            interface: "eth0".into(),
            protocol: "tcp",
            src: Some("10.0.0.9".parse().expect("ip")),
            sport: 40000,
            dst: Some("172.18.0.2".parse().expect("ip")),
            dport: 80,
            reason: "IP_INADDRERRORS".into(),
            location: location.into(),
            class: crate::drop_class::DropClass::Transit,
            len: 60,
            target: crate::enrich::Destination::default(),
        }
    }

    fn host(ip_forward: bool) -> HostState {
        HostState {
            ip_forward: Some(ip_forward),
            interfaces: vec![
                Interface {
                    name: "eth0".into(),
                    forwarding: ip_forward,
                    rp_filter: 0,
                },
                Interface {
                    name: "docker0".into(),
                    forwarding: ip_forward,
                    rp_filter: 0,
                },
            ],
            dnat: vec![dnat()],
            counters: IpCounters::default(),
            ..HostState::default()
        }
    }

    #[test]
    fn the_incident_verdict_names_interface_port_destination_and_fix() {
        let before = host(false);
        let mut after = host(false);
        after.counters.in_addr_errors = 312;
        let drops = [drop("IP_INADDRERRORS", "ip_error", "eth0", 312)];
        let samples = [sample("ip_error")];
        let found = findings(&Evidence {
            before: Some(&before),
            after: &after,
            drops: Some(&drops),
            samples: &samples,
        });
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(
            (f.kind, f.severity),
            (Kind::ForwardingOff, Severity::Critical)
        );
        assert_eq!(
            f.summary,
            "forwarding is off on eth0 (net.ipv4.ip_forward = 0); published port 9091 -> 172.18.0.2:80 dropped 312 times"
        );
        assert_eq!(f.fix[0], "sysctl -w net.ipv4.ip_forward=1");
        assert!(f.fix[1].contains("/etc/sysctl.d/"), "{:?}", f.fix);
        assert!(f.fix[2].contains("network_mode: host"), "{:?}", f.fix);
    }

    #[test]
    fn the_verdict_names_the_container_and_compose_service_behind_the_port() {
        let before = host(false);
        let mut after = host(false);
        after.bridges.push(crate::enrich::rtnetlink::BridgeSubnet {
            bridge: "br-5e1f".into(),
            subnet: crate::enrich::Subnet::parse("172.18.0.0/16").expect("a subnet"),
        });
        after.counters.in_addr_errors = 3;
        let mut named = sample("ip_error");
        named.target = crate::enrich::Destination {
            bridge: Some("br-5e1f".into()),
            network: Some("incident_monitoring".into()),
            container: Some("incident_pushgateway_1".into()),
            service: Some("pushgateway".into()),
        };
        let mut container_only = sample("ip_error");
        container_only.target.container = Some("web".into());
        let cases = [
            (
                "compose container",
                named,
                "published port 9091 -> 172.18.0.2:80 (bridge br-5e1f, container incident_pushgateway_1, compose service pushgateway) dropped 3 times",
            ),
            (
                "container without compose",
                container_only,
                "published port 9091 -> 172.18.0.2:80 (bridge br-5e1f, container web) dropped 3 times",
            ),
        ];
        for (name, sample, want) in cases {
            let drops = [drop("IP_INADDRERRORS", "ip_error", "eth0", 3)];
            let found = findings(&Evidence {
                before: Some(&before),
                after: &after,
                drops: Some(&drops),
                samples: &[sample],
            });
            assert_eq!(found.len(), 1, "case {name}: {found:?}");
            assert!(
                found[0].summary.ends_with(want),
                "case {name}: {}",
                found[0].summary
            );
        }
    }

    #[test]
    fn verdicts_by_scenario() {
        let healthy = host(true);
        let mut per_if = host(true);
        per_if.interfaces[0].forwarding = false;
        let mut policy = host(true);
        policy
            .forward_blocks
            .push(crate::diagnose::host::ForwardBlock {
                tool: "iptables-nft".into(),
                rule: "-P FORWARD DROP".into(),
            });
        let no_bridges = HostState {
            ip_forward: Some(false),
            ..HostState::default()
        };
        let off = host(false);
        let noise = [
            drop("NO_SOCKET", "__udp4_lib_rcv", "lo", 5),
            drop("NOT_SPECIFIED", "ip6_mc_input", "eth0", 3),
        ];
        let cases: Vec<(&str, &HostState, Vec<TracedDrop>, Vec<Kind>)> = vec![
            ("healthy with noise", &healthy, noise.to_vec(), vec![]),
            (
                "a plain host without bridges or DNAT, forwarding off",
                &no_bridges,
                vec![],
                vec![],
            ),
            (
                "forwarding off, nothing dropped yet",
                &off,
                vec![],
                vec![Kind::ForwardingOff],
            ),
            (
                "off on one interface",
                &per_if,
                vec![drop("IP_INADDRERRORS", "ip_error", "eth0", 2)],
                vec![Kind::ForwardingOffInterface],
            ),
            (
                "FORWARD policy drop",
                &policy,
                vec![drop("NETFILTER_DROP", "nft_do_chain", "eth0", 4)],
                vec![Kind::ForwardPolicyDrop],
            ),
            (
                "nft rule drop without a policy",
                &healthy,
                vec![drop("NETFILTER_DROP", "nft_do_chain", "eth0", 1)],
                vec![Kind::NetfilterDrop],
            ),
            (
                "rp_filter",
                &healthy,
                vec![drop("IP_RPFILTER", "ip_rcv_finish_core", "eth0", 3)],
                vec![Kind::RpFilterDrop],
            ),
            (
                "br_netfilter",
                &healthy,
                vec![drop(
                    "NOT_SPECIFIED",
                    "br_nf_pre_routing_finish",
                    "docker0",
                    2,
                )],
                vec![Kind::BrNetfilterDnat],
            ),
        ];
        for (name, state, drops, want) in cases {
            let found = findings(&Evidence {
                before: Some(state),
                after: state,
                drops: Some(&drops),
                samples: &[],
            });
            let kinds: Vec<Kind> = found.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, want, "case {name}: {found:?}");
        }
    }
}
