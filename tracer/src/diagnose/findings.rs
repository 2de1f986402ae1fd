//! From evidence to verdicts: pure rules that turn the host's configuration, the kernel's
//! counters and the traced drops of one window into findings, each with what was seen
//! and how to fix it. Table-tested without a kernel.

use serde::Serialize;

use super::{
    firewall::{Hook, Rule},
    host::{Dnat, HostState, IpFamily},
};
use crate::samples::DropEvent;

// Causes beyond forwarding and the firewall's own rules, one module per family.
mod bridged;
mod chains;
mod conntrack;
mod mtu;
mod neighbour;
mod no_route;

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
    /// `net.ipv6.conf.all.forwarding = 0` where IPv6 forwarding is needed.
    Ipv6ForwardingOff,
    /// IPv6 forwarding off for one ingress interface: `all.forwarding = 0` with
    /// `force_forwarding` on other interfaces only.
    Ipv6ForwardingOffInterface,
    /// Nobody answers ARP/ND for the next hop (a stale DNAT to a stopped container).
    NeighbourFailed,
    /// Packets too big for the egress link (a PMTU black hole when ICMP is filtered).
    PacketTooBig,
    /// No route for forwarded traffic or its replies.
    NoRoute,
    /// A rule drops what conntrack marks INVALID.
    ConntrackInvalid,
    /// The conntrack table is full: new connections are dropped.
    ConntrackFull,
    /// Docker's isolation between its networks drops the traffic.
    DockerIsolation,
    /// A rule in DOCKER-USER (the administrator's chain) drops the traffic.
    DockerUserDrop,
    /// ufw's or firewalld's FORWARD rules or policy drop the traffic.
    FirewallManagerDrop,
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
            Kind::Ipv6ForwardingOff => "ipv6_forwarding_off",
            Kind::Ipv6ForwardingOffInterface => "ipv6_forwarding_off_interface",
            Kind::NeighbourFailed => "neighbour_failed",
            Kind::PacketTooBig => "packet_too_big",
            Kind::NoRoute => "no_route",
            Kind::ConntrackInvalid => "conntrack_invalid",
            Kind::ConntrackFull => "conntrack_full",
            Kind::DockerIsolation => "docker_isolation",
            Kind::DockerUserDrop => "docker_user_drop",
            Kind::FirewallManagerDrop => "firewall_manager_drop",
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

    fn ip6_in_addr_errors_delta(&self) -> u64 {
        self.before.map_or(0, |b| {
            self.after
                .ipv6
                .counters
                .in_addr_errors
                .saturating_sub(b.ipv6.counters.in_addr_errors)
        })
    }

    fn in_addr_errors_delta(&self) -> u64 {
        self.before.map_or(0, |b| {
            self.after
                .counters
                .in_addr_errors
                .saturating_sub(b.counters.in_addr_errors)
        })
    }

    /// Drop rules whose counter moved during the window, most packets first (ruleset
    /// order among equals).
    fn rule_hits(&self) -> Vec<RuleHit<'_>> {
        let Some(before) = self.before else {
            return Vec::new();
        };
        let mut hits: Vec<RuleHit> = self
            .after
            .drop_rules
            .iter()
            .filter_map(|rule| {
                let packets = rule.packets_since(&before.drop_rules)?;
                (packets > 0).then_some(RuleHit { rule, packets })
            })
            .collect();
        hits.sort_by_key(|h| std::cmp::Reverse(h.packets));
        hits
    }

    /// The destinations of the samples `pred` selects, each with its samples, in
    /// address order.
    fn sampled_destinations(
        &self,
        pred: impl Fn(&DropEvent) -> bool,
    ) -> Vec<(std::net::IpAddr, Vec<&DropEvent>)> {
        let mut by_dst: std::collections::BTreeMap<std::net::IpAddr, Vec<&DropEvent>> =
            std::collections::BTreeMap::new();
        for s in self.samples.iter().filter(|s| pred(s)) {
            if let Some(dst) = s.dst {
                by_dst.entry(dst).or_default().push(s);
            }
        }
        by_dst.into_iter().collect()
    }

    /// Whether the sampled drops that `pred` selects were all of this host's own
    /// packets (from one of its addresses): then the sending socket was told (an
    /// error from connect or send), nothing was lost silently on its way through.
    /// False without such samples, so that a drop is never hidden for lack of them.
    fn only_own_traffic(&self, pred: impl Fn(&DropEvent) -> bool) -> bool {
        let mut sampled = self.samples.iter().filter(|s| pred(s)).peekable();
        sampled.peek().is_some() && sampled.all(|s| s.src.is_some_and(|a| self.after.is_local(a)))
    }

    /// The DNAT rules that send traffic to `addr`.
    fn dnat_to(&self, addr: std::net::IpAddr) -> Vec<&Dnat> {
        let addr = addr.to_string();
        self.after
            .dnat
            .iter()
            .filter(|d| d.to_addr == addr)
            .collect()
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

/// A drop rule that dropped `packets` during the window.
struct RuleHit<'a> {
    rule: &'a Rule,
    packets: u64,
}

impl RuleHit<'_> {
    fn on_forward_path(&self) -> bool {
        self.rule.hooks.contains(&Hook::Forward)
    }

    /// On the FORWARD path and named by no finding of its own ([`chains::claimed`]).
    fn generic_forward(&self, host: &HostState) -> bool {
        self.on_forward_path() && chains::claimed(self.rule, host).is_none()
    }

    fn line(&self) -> String {
        format!(
            "{} packets: {} ({}; {})",
            self.packets,
            self.rule.text,
            self.rule.place(),
            hooks_label(&self.rule.hooks)
        )
    }
}

/// `published port 9091 -> 172.18.0.2:80`.
/// `published port 9091 -> 172.18.0.2:80`, an IPv6 target in brackets as a URL has it.
fn published_port(d: &Dnat) -> String {
    format!(
        "published port {} -> {}",
        d.dport,
        host_port(&d.to_addr, d.to_port.map_or("*".into(), |p| p.to_string()))
    )
}

/// `addr:port`, an IPv6 address in brackets.
fn host_port(addr: &str, port: impl std::fmt::Display) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// Who is behind `addr` as the host and the sample `s` know it, so that a verdict
/// names the bridge and container the user knows rather than an address they would
/// have to look up: ` (bridge br0, container web, compose service web)`, or nothing.
fn behind(host: &HostState, addr: &str, s: &DropEvent) -> String {
    let known: Vec<String> = [
        host.bridge_of(addr).map(|b| format!("bridge {b}")),
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
    if known.is_empty() {
        String::new()
    } else {
        format!(" ({})", known.join(", "))
    }
}

/// The `sampled` targets once each, else every published port of `family`.
fn sampled_or_published(host: &HostState, mut sampled: Vec<String>, family: IpFamily) -> String {
    sampled.sort();
    sampled.dedup();
    if sampled.is_empty() {
        sampled = host.published_in(family).map(published_port).collect();
    }
    sampled.join(", ")
}

fn hooks_label(hooks: &[Hook]) -> String {
    if hooks.is_empty() {
        return "not reached from any hook".into();
    }
    let names: Vec<&str> = hooks.iter().map(|h| h.label()).collect();
    format!("hook {}", names.join(", "))
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
    ipv6_forwarding(evidence, &mut out);
    netfilter(evidence, &mut out);
    rp_filter(evidence, &mut out);
    br_netfilter(evidence, &mut out);
    neighbour::neighbour_failed(evidence, &mut out);
    mtu::packet_too_big(evidence, &mut out);
    no_route::no_route(evidence, &mut out);
    conntrack::invalid(evidence, &mut out);
    conntrack::table_full(evidence, &mut out);
    chains::named_chains(evidence, &mut out);
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
    let sampled = ev
        .samples
        .iter()
        .filter(|s| s.location == "ip_error")
        .filter_map(|s| {
            let d = ev.dnat_for(s)?;
            Some(format!(
                "published port {} -> {}{}",
                d.dport,
                host_port(&d.to_addr, s.dport),
                behind(ev.after, &d.to_addr, s)
            ))
        })
        .collect();
    sampled_or_published(ev.after, sampled, IpFamily::V4)
}

/// `net.ipv4.ip_forward = 0` where something needs it; true when that was found.
fn forwarding_off_globally(ev: &Evidence, target: &str, out: &mut Vec<Finding>) -> bool {
    let host = ev.after;
    let ip_error = ev.drops_where(|d| d.location == "ip_error");
    let traced = sum(&ip_error);
    let snmp = ev.in_addr_errors_delta();
    // A bridge alone needs no forwarding (an L2 bridge that carries the host's own
    // address, as Proxmox and libvirt's bridged networks do; Docker with
    // `iptables=false`): traffic through this host needs it, which a port published to
    // other hosts or source NAT for what sits behind the host says.
    let needs_forwarding =
        host.published_in(IpFamily::V4).next().is_some() || !host.source_nat.is_empty();
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
    for d in host.published_in(IpFamily::V4) {
        evidence.push(format!("DNAT: {}", d.rule));
    }
    for nat in &host.source_nat {
        evidence.push(format!("source NAT: {nat}"));
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
            (false, true) => "forwarding is off (net.ipv4.ip_forward = 0) on a host that source-NATs traffic from behind it: that traffic cannot leave this host".to_owned(),
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
        if count == 0 && host.published_in(IpFamily::V4).next().is_none() {
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

/// The drops `ip6_forward` makes when forwarding is off: IP_INADDRERRORS since the
/// kernel names drop reasons there, before that unnamed.
fn ip6_forward_refused(d: &TracedDrop) -> bool {
    d.location == "ip6_forward"
        && matches!(
            d.reason.as_str(),
            "IP_INADDRERRORS" | "NOT_SPECIFIED" | "unknown"
        )
}

/// Who the IPv6 traffic dropped in `ip6_forward` was for: the published port and the
/// container behind it, or (IPv6 is often routed to containers without NAT) the
/// container the destination belongs to; else every IPv6 published port.
fn ipv6_targets(ev: &Evidence) -> String {
    let sampled = ev
        .samples
        .iter()
        .filter(|s| s.location == "ip6_forward")
        .filter_map(|s| {
            let dst = s.dst?.to_string();
            let behind = behind(ev.after, &dst, s);
            match ev.dnat_for(s) {
                Some(d) => Some(format!(
                    "published port {} -> {}{behind}",
                    d.dport,
                    host_port(&d.to_addr, s.dport)
                )),
                None if !behind.is_empty() => {
                    Some(format!("traffic to {}{behind}", host_port(&dst, s.dport)))
                }
                None => None,
            }
        })
        .collect();
    sampled_or_published(ev.after, sampled, IpFamily::V6)
}

/// The fix for IPv6 forwarding, `first` before the global switch.
fn ipv6_forwarding_fix(first: Option<String>) -> Vec<String> {
    let key = "net.ipv6.conf.all.forwarding";
    first
        .into_iter()
        .chain([
            format!("sysctl -w {key}=1"),
            format!(
                "echo '{key} = 1' > /etc/sysctl.d/99-dropgate-ipv6-forwarding.conf  # makes it last across reboots and sysctl reloads"
            ),
            "if this host takes its own IPv6 address or route from router advertisements, also set net.ipv6.conf.<uplink>.accept_ra=2: with forwarding on, the kernel ignores them otherwise".into(),
            "or, where sysctls may not be changed: run the service with host networking (docker-compose `network_mode: host`), which needs no forwarding".into(),
        ])
        .collect()
}

/// IPv6 forwarding off where it is needed. Unlike IPv4, where the ingress interface's
/// `forwarding` decides, `ip6_forward` looks at `net.ipv6.conf.all.forwarding` only
/// (and, from kernel 6.17, the ingress interface's `force_forwarding`): a per-interface
/// `forwarding = 0` blocks nothing, so it is no finding. Off on one interface means
/// `all` off with `force_forwarding` on for others.
fn ipv6_forwarding(ev: &Evidence, out: &mut Vec<Finding>) {
    let host = ev.after;
    let v6 = &host.ipv6;
    if v6.forwarding != Some(false) {
        return;
    }
    let refused = ev.drops_where(ip6_forward_refused);
    let traced = sum(&refused);
    let snmp = ev.ip6_in_addr_errors_delta();
    // Ip6InAddrErrors also counts other refusals (no route to an unspecified address,
    // bad source addresses): with a trace, the drops in ip6_forward decide; without
    // one, the counter is the only sign.
    let dropping = traced > 0 || (ev.drops.is_none() && snmp > 0);
    let needs_forwarding =
        host.published_in(IpFamily::V6).next().is_some() || !v6.source_nat.is_empty();
    if !dropping && !needs_forwarding {
        return;
    }
    let target = ipv6_targets(ev);
    let forced: Vec<&str> = v6
        .interfaces
        .iter()
        .filter(|i| i.force_forwarding == Some(true))
        .map(|i| i.name.as_str())
        .collect();
    let mut common = Vec::new();
    if snmp > 0 {
        common.push(format!("/proc/net/snmp6 Ip6InAddrErrors rose by {snmp}"));
    }
    common.push("net.ipv6.conf.all.forwarding = 0".to_owned());
    for d in host.published_in(IpFamily::V6) {
        common.push(format!("DNAT: {}", d.rule));
    }
    for nat in &v6.source_nat {
        common.push(format!("source NAT: {nat}"));
    }
    for source in &v6.forwarding_off_sources {
        common.push(format!(
            "{}:{} sets `{}`",
            source.file, source.line, source.text
        ));
    }
    let what = |count: u64| {
        if target.is_empty() {
            format!("{count} forwarded IPv6 packets dropped")
        } else {
            format!("{target} dropped {count} times")
        }
    };
    if !forced.is_empty() {
        ipv6_forwarding_off_on_interfaces(ev, &forced, &refused, &common, &what, out);
        return;
    }
    let ingress = routing_interfaces(host, &refused);
    let mut evidence = Vec::new();
    if traced > 0 {
        evidence.push(format!(
            "{traced} packets dropped in ip6_forward (IP_INADDRERRORS) on {}",
            interfaces_of(&refused).join(", ")
        ));
    }
    evidence.extend(common);
    let summary = if dropping {
        let on = if ingress.is_empty() {
            "this host".to_owned()
        } else {
            ingress.join(", ")
        };
        format!(
            "IPv6 forwarding is off on {on} (net.ipv6.conf.all.forwarding = 0); {}",
            what(traced.max(snmp))
        )
    } else if target.is_empty() {
        "IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0) on a host that source-NATs IPv6 traffic from behind it: that traffic cannot leave this host".to_owned()
    } else {
        format!("IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0): {target} cannot be reached from other hosts over IPv6")
    };
    out.push(Finding {
        kind: Kind::Ipv6ForwardingOff,
        severity: if dropping {
            Severity::Critical
        } else {
            Severity::Warning
        },
        interface: ingress.first().cloned(),
        summary,
        evidence,
        fix: ipv6_forwarding_fix(None),
    });
}

/// With `force_forwarding` on some interfaces, a finding for each ingress interface
/// whose traffic died because it has not.
fn ipv6_forwarding_off_on_interfaces(
    ev: &Evidence,
    forced: &[&str],
    refused: &[&TracedDrop],
    common: &[String],
    what: &dyn Fn(u64) -> String,
    out: &mut Vec<Finding>,
) {
    let host = ev.after;
    for iface in routing_interfaces(host, refused) {
        if forced.contains(&iface.as_str()) {
            continue;
        }
        let here: Vec<&TracedDrop> = refused
            .iter()
            .copied()
            .filter(|d| host.routing_interface(&d.interface) == iface)
            .collect();
        let count = sum(&here);
        let mut evidence = vec![
            format!(
                "{count} packets dropped in ip6_forward (IP_INADDRERRORS) on {}",
                interfaces_of(&here).join(", ")
            ),
            format!(
                "net.ipv6.conf.{iface}.force_forwarding = 0 while {} forward with force_forwarding = 1",
                forced.join(", ")
            ),
        ];
        evidence.extend(common.iter().cloned());
        out.push(Finding {
            kind: Kind::Ipv6ForwardingOffInterface,
            severity: Severity::Critical,
            interface: Some(iface.clone()),
            summary: format!(
                "IPv6 forwarding is off for traffic arriving on {iface} (net.ipv6.conf.all.forwarding = 0 and net.ipv6.conf.{iface}.force_forwarding = 0); {}",
                what(count)
            ),
            evidence,
            fix: ipv6_forwarding_fix(Some(format!(
                "sysctl -w net.ipv6.conf.{iface}.force_forwarding=1  # forwards what arrives on {iface} only; or turn forwarding on for all:"
            ))),
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

/// Netfilter drops, attributed to the rule or policy that made them: by the counters
/// that moved in the window, else by where the sampled packets were going. Only drops
/// of traffic on its way through this host are a problem; drops in INPUT or OUTPUT
/// (a scan of port 22, a blocked outgoing port) are the host's own policy doing its job
/// and appear in [`notes`] instead.
fn netfilter(ev: &Evidence, out: &mut Vec<Finding>) {
    let host = ev.after;
    let traced = ev.drops_where(|d| d.reason == "NETFILTER_DROP");
    let count = sum(&traced);
    let hits = ev.rule_hits();
    // Drops by Docker's own chains, a firewall manager, an INVALID rule or a full
    // conntrack table are named by their own findings.
    let forward: Vec<&RuleHit> = hits.iter().filter(|h| h.generic_forward(host)).collect();
    let unexplained = count.saturating_sub(
        hits.iter().map(|h| h.packets).sum::<u64>() + conntrack::table_full_drops(ev),
    );
    let sampled: Vec<&DropEvent> = ev
        .samples
        .iter()
        .filter(|s| s.reason == "NETFILTER_DROP")
        .collect();
    let through: Vec<&DropEvent> = sampled
        .iter()
        .copied()
        .filter(|s| s.dst.is_some_and(|d| !host.is_local(d)))
        .collect();
    // Counters explain every drop and none was on the FORWARD path, or the drops they
    // do not explain were all addressed to this host: nothing lost in transit.
    if forward.is_empty() && (unexplained == 0 || (!sampled.is_empty() && through.is_empty())) {
        return;
    }
    let mut evidence = Vec::new();
    if count > 0 {
        let mut locations: Vec<&str> = traced.iter().map(|d| d.location.as_str()).collect();
        locations.sort_unstable();
        locations.dedup();
        evidence.push(format!(
            "{count} packets dropped by netfilter ({}) on {}",
            locations.join(", "),
            interfaces_of(&traced).join(", ")
        ));
    }
    evidence.extend(hits.iter().map(RuleHit::line));
    let mut destinations: Vec<String> = through
        .iter()
        .filter_map(|s| {
            Some(format!(
                "{} ({})",
                host_port(&s.dst?.to_string(), s.dport),
                s.protocol
            ))
        })
        .collect();
    destinations.sort();
    destinations.dedup();
    if !destinations.is_empty() {
        evidence.push(format!(
            "sampled drops on their way through this host to {}",
            destinations.join(", ")
        ));
    }
    // FORWARD-path rules that drop but keep no counter (nft rules without `counter`,
    // nft chain policies): the only candidates for what the counters do not explain.
    let uncounted: Vec<&Rule> = host
        .forward_blocks()
        .filter(|r| r.packets.is_none())
        .collect();
    let (kind, summary) = if let Some(top) = forward.first() {
        let packets: u64 = forward.iter().map(|h| h.packets).sum();
        (
            Kind::ForwardPolicyDrop,
            format!(
                "the FORWARD path drops traffic ({packets} packets): {} ({})",
                top.rule.text,
                top.rule.place()
            ),
        )
    } else if let [only] = uncounted.as_slice() {
        (
            Kind::ForwardPolicyDrop,
            format!(
                "the FORWARD path drops traffic ({unexplained} packets): {} ({}; the only FORWARD rule that drops without a counter)",
                only.text,
                only.place()
            ),
        )
    } else {
        for rule in &uncounted {
            evidence.push(format!(
                "drops without a counter: {} ({})",
                rule.text,
                rule.place()
            ));
        }
        (
            Kind::NetfilterDrop,
            format!("netfilter dropped {unexplained} packets that no rule counter accounts for"),
        )
    };
    let mut fix = forward_drop_fixes(host);
    let (bridged, bridged_fix) = bridged::br_netfilter_forward(ev);
    evidence.extend(bridged);
    fix.extend(bridged_fix);
    out.push(Finding {
        kind,
        severity: Severity::Critical,
        interface: interfaces_of(&traced).first().cloned(),
        summary,
        evidence,
        fix,
    });
}

/// How to find and lift a FORWARD-path drop, Docker's way where Docker is here.
fn forward_drop_fixes(host: &HostState) -> Vec<String> {
    let mut fix =
        vec!["list the rules with counters: iptables -vnL FORWARD; nft -a list ruleset".to_owned()];
    if host.docker_chains {
        fix.push("accept the published traffic before the drop, e.g. iptables -I DOCKER-USER -p tcp -d <container> --dport <port> -j ACCEPT".to_owned());
    } else if host.published().any(|d| d.rule.starts_with("-A DOCKER ")) {
        fix.push("Docker's own FORWARD rules are missing (a firewall reload flushed them?): restart dockerd to recreate them".into());
    } else {
        fix.push("accept the traffic before the rule that drops it, or remove that rule".into());
    }
    fix
}

/// What the evidence shows that is not a problem but worth a line: netfilter drops
/// outside the FORWARD path (INPUT, OUTPUT, raw PREROUTING: traffic to or from this
/// host, such as Docker's guard against direct access to containers), by the rule that
/// made them.
#[must_use]
pub fn notes(ev: &Evidence) -> Vec<String> {
    ev.rule_hits()
        .iter()
        .filter(|h| !h.on_forward_path())
        // An ICMP "fragmentation needed" filtered on its way out is part of the MTU
        // finding, not the host's own business.
        .filter(|h| !mtu::filtered_by(ev, h.rule))
        .map(|h| {
            format!(
                "the firewall dropped {} outside the FORWARD path: the host's own policy for traffic to or from it, not a problem",
                h.line()
            )
        })
        .collect()
}

/// The interfaces whose IP settings applied to `drops`: bridge ports mapped to their
/// bridge, in order, without repeats.
fn routing_interfaces(host: &HostState, drops: &[&TracedDrop]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in interfaces_of(drops) {
        let routing = host.routing_interface(&name).to_owned();
        if !out.contains(&routing) {
            out.push(routing);
        }
    }
    out
}

fn rp_filter(ev: &Evidence, out: &mut Vec<Finding>) {
    let drops = ev.drops_where(|d| d.reason == "IP_RPFILTER");
    let count = sum(&drops);
    if count == 0 {
        return;
    }
    let host = ev.after;
    let ifaces = routing_interfaces(host, &drops);
    let mut evidence = vec![format!(
        "{count} packets dropped as IP_RPFILTER on {}",
        interfaces_of(&drops).join(", ")
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

/// br_netfilter frees DNAT-ed bridged traffic that routing refused: forwarding off
/// (globally or on the bridge), strict reverse-path filtering, or no route. The fix
/// depends on which, so the verdict names it rather than always "turn on forwarding".
fn br_netfilter(ev: &Evidence, out: &mut Vec<Finding>) {
    let drops = ev.drops_where(|d| d.location == "br_nf_pre_routing_finish");
    let count = sum(&drops);
    if count == 0 {
        return;
    }
    let host = ev.after;
    // Labelled with the bridge port they came in on; the bridge is what routes them.
    let bridges = routing_interfaces(host, &drops);
    let bridge = bridges
        .first()
        .cloned()
        .unwrap_or_else(|| "<bridge>".into());
    let iface = host.interface(&bridge);
    let rp_filter = iface.map_or(0, |i| i.rp_filter).max(host.rp_filter_all);
    let mut evidence = vec![
        format!(
            "{count} packets freed in br_nf_pre_routing_finish on {}",
            bridges.join(", ")
        ),
        format!(
            "net.bridge.bridge-nf-call-iptables = {}",
            host.bridge_nf_call_iptables
                .map_or("absent", |on| if on { "1" } else { "0" })
        ),
        format!(
            "net.ipv4.ip_forward = {}",
            host.ip_forward
                .map_or("unknown", |on| if on { "1" } else { "0" })
        ),
    ];
    let (cause, fix) = if host.ip_forward == Some(false) {
        (
            "forwarding is off".to_owned(),
            persist_forwarding("net.ipv4.ip_forward"),
        )
    } else if iface.is_some_and(|i| !i.forwarding) {
        let key = format!("net.ipv4.conf.{bridge}.forwarding");
        evidence.push(format!("{key} = 0"));
        (
            format!("forwarding is off on {bridge}"),
            persist_forwarding(&key),
        )
    } else if rp_filter == 1 {
        evidence.push(format!(
            "net.ipv4.conf.{bridge}.rp_filter / all.rp_filter = 1 (strict)"
        ));
        (
            format!("strict reverse-path filtering on {bridge} refuses their source"),
            vec![format!(
                "sysctl -w net.ipv4.conf.{bridge}.rp_filter=2 net.ipv4.conf.all.rp_filter=2  # loose mode"
            )],
        )
    } else {
        (
            "forwarding is on, so routing found no route for their DNAT-ed destination".to_owned(),
            vec![
                "check the route to the DNAT target: ip route get <container address> iif <bridge> from <source>".into(),
                "add the missing route, or fix the DNAT rule that points at an address no route leads to".into(),
            ],
        )
    };
    out.push(Finding {
        kind: Kind::BrNetfilterDnat,
        severity: Severity::Critical,
        interface: bridges.first().cloned(),
        summary: format!(
            "br_netfilter freed {count} DNAT-ed bridged packets that could not be routed ({cause})"
        ),
        evidence,
        fix,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::host::{Interface, IpCounters, Ipv6Interface};

    pub(super) fn dnat() -> Dnat {
        Dnat {
            protocol: "tcp".into(),
            dport: 9091,
            to_addr: "172.18.0.2".into(),
            to_port: Some(80),
            rule: "-A DOCKER -p tcp -m tcp --dport 9091 -j DNAT --to-destination 172.18.0.2:80"
                .into(),
            from_other_hosts: true,
        }
    }

    /// A drop rule (or policy) of iptables-nft's filter table with its counter.
    pub(super) fn rule(
        chain: &str,
        hook: Hook,
        text: &str,
        comment: Option<&str>,
        packets: u64,
    ) -> Rule {
        Rule {
            tool: "iptables-nft".into(),
            table: "filter".into(),
            chain: chain.into(),
            occurrence: 0,
            hooks: vec![hook],
            text: text.into(),
            comment: comment.map(str::to_owned),
            packets: Some(packets),
            policy: text.starts_with("-P "),
            jumps: Vec::new(),
        }
    }

    /// Docker's FORWARD policy DROP and an INPUT rule against port-22 scans, with the
    /// given counters.
    fn docker_filter(policy: u64, scans: u64) -> Vec<Rule> {
        vec![
            rule(
                "INPUT",
                Hook::Input,
                "-A INPUT -p tcp -m tcp --dport 22 -m comment --comment \"drop ssh scans\" -j DROP",
                Some("drop ssh scans"),
                scans,
            ),
            rule("FORWARD", Hook::Forward, "-P FORWARD DROP", None, policy),
        ]
    }

    fn nf_sample(dst: &str) -> DropEvent {
        DropEvent {
            reason: "NETFILTER_DROP".into(),
            location: "nft_do_chain".into(),
            dst: Some(dst.parse().expect("ip")),
            ..sample("nft_do_chain")
        }
    }

    pub(super) fn drop(reason: &str, location: &str, interface: &str, packets: u64) -> TracedDrop {
        TracedDrop {
            reason: reason.into(),
            location: location.into(),
            interface: interface.into(),
            protocol: "tcp".into(),
            packets,
        }
    }

    pub(super) fn sample(location: &str) -> DropEvent {
        DropEvent {
            time: String::new(),
            netns: "root".into(),
            interface: "eth0".into(),
            direction: Some(crate::samples::Direction::Ingress),
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

    pub(super) fn host(ip_forward: bool) -> HostState {
        HostState {
            ip_forward: Some(ip_forward),
            interfaces: vec![
                Interface {
                    name: "eth0".into(),
                    forwarding: ip_forward,
                    rp_filter: 0,
                    master: None,
                },
                Interface {
                    name: "docker0".into(),
                    forwarding: ip_forward,
                    rp_filter: 0,
                    master: None,
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

    /// One scenario: the host before and after the window, what was traced and sampled.
    struct Scenario {
        name: &'static str,
        before: HostState,
        after: HostState,
        drops: Vec<TracedDrop>,
        samples: Vec<DropEvent>,
        want: Vec<Kind>,
    }

    fn scenario(
        name: &'static str,
        host: &HostState,
        drops: Vec<TracedDrop>,
        want: Vec<Kind>,
    ) -> Scenario {
        Scenario {
            name,
            before: host.clone(),
            after: host.clone(),
            drops,
            samples: Vec::new(),
            want,
        }
    }

    #[allow(clippy::too_many_lines)] // one row per scenario reads best as one table
    fn scenarios() -> Vec<Scenario> {
        let healthy = host(true);
        let mut per_if = host(true);
        per_if.interfaces[0].forwarding = false;
        let no_bridges = HostState {
            ip_forward: Some(false),
            ..HostState::default()
        };
        let off = host(false);
        let noise = [
            drop("NO_SOCKET", "__udp4_lib_rcv", "lo", 5),
            drop("NOT_SPECIFIED", "ip6_mc_input", "eth0", 3),
        ];
        // Docker's shape: FORWARD policy DROP, an INPUT rule dropping scans.
        let mut docker_before = host(true);
        docker_before.drop_rules = docker_filter(10, 100);
        docker_before.local_addresses = vec!["10.0.0.1".parse().expect("ip")];
        docker_before.docker_chains = true;
        let mut scans_dropped = docker_before.clone();
        scans_dropped.drop_rules = docker_filter(10, 106);
        let mut policy_dropped = docker_before.clone();
        policy_dropped.drop_rules = docker_filter(14, 100);
        // L2 bridge carrying the host address: a bridge, no DNAT, no source NAT.
        let mut l2_bridge = no_bridges.clone();
        l2_bridge
            .bridges
            .push(crate::enrich::rtnetlink::BridgeSubnet {
                bridge: "vmbr0".into(),
                subnet: crate::enrich::Subnet::parse("10.0.0.0/24").expect("a subnet"),
            });
        let mut nat_bridge = l2_bridge.clone();
        nat_bridge.source_nat.push(
            "iptables-nft table nat chain POSTROUTING: -A POSTROUTING -s 172.18.0.0/16 ! -o br0 -j MASQUERADE".into(),
        );
        let mut loopback_only = host(false);
        loopback_only.dnat[0].from_other_hosts = false;
        // nft: a forward chain with policy drop (no counter) and nothing else that drops.
        let mut nft_policy = host(true);
        nft_policy.local_addresses = vec!["10.0.0.1".parse().expect("ip")];
        nft_policy.drop_rules = vec![Rule {
            tool: "nft".into(),
            table: "inet filter".into(),
            chain: "forward".into(),
            occurrence: 0,
            hooks: vec![Hook::Forward],
            text: "type filter hook forward priority filter; policy drop;".into(),
            comment: None,
            packets: None,
            policy: true,
            jumps: Vec::new(),
        }];
        let mut br_rp = host(true);
        br_rp.interfaces[1].rp_filter = 1;
        let nf = |n| vec![drop("NETFILTER_DROP", "nft_do_chain", "eth0", n)];
        vec![
            scenario("healthy with noise", &healthy, noise.to_vec(), vec![]),
            scenario(
                "a plain host without bridges or DNAT, forwarding off",
                &no_bridges,
                vec![],
                vec![],
            ),
            scenario(
                "forwarding off, nothing dropped yet",
                &off,
                vec![],
                vec![Kind::ForwardingOff],
            ),
            scenario(
                "forwarding off on an L2 bridge carrying the host address (or Docker with iptables=false)",
                &l2_bridge,
                vec![],
                vec![],
            ),
            scenario(
                "forwarding off with source NAT behind a bridge",
                &nat_bridge,
                vec![],
                vec![Kind::ForwardingOff],
            ),
            scenario(
                "forwarding off, the only port published on 127.0.0.1",
                &loopback_only,
                vec![],
                vec![],
            ),
            scenario(
                "off on one interface",
                &per_if,
                vec![drop("IP_INADDRERRORS", "ip_error", "eth0", 2)],
                vec![Kind::ForwardingOffInterface],
            ),
            Scenario {
                name: "Docker's policy, INPUT drops scans: no problem",
                before: docker_before.clone(),
                after: scans_dropped,
                drops: nf(6),
                samples: vec![nf_sample("10.0.0.1")],
                want: vec![],
            },
            Scenario {
                name: "Docker's policy drops forwarded traffic",
                before: docker_before.clone(),
                after: policy_dropped,
                drops: nf(4),
                samples: vec![nf_sample("172.18.0.2")],
                want: vec![Kind::ForwardPolicyDrop],
            },
            Scenario {
                name: "nft policy without counter, samples bound through the host",
                before: nft_policy.clone(),
                after: nft_policy.clone(),
                drops: nf(3),
                samples: vec![nf_sample("172.18.0.2")],
                want: vec![Kind::ForwardPolicyDrop],
            },
            Scenario {
                name: "nft policy without counter, samples all to this host",
                before: nft_policy.clone(),
                after: nft_policy,
                drops: nf(3),
                samples: vec![nf_sample("10.0.0.1")],
                want: vec![],
            },
            scenario(
                "netfilter drops nothing explains",
                &healthy,
                nf(1),
                vec![Kind::NetfilterDrop],
            ),
            scenario(
                "rp_filter",
                &healthy,
                vec![drop("IP_RPFILTER", "ip_rcv_finish_core", "eth0", 3)],
                vec![Kind::RpFilterDrop],
            ),
            scenario(
                "br_netfilter",
                &br_rp,
                vec![drop(
                    "NOT_SPECIFIED",
                    "br_nf_pre_routing_finish",
                    "docker0",
                    2,
                )],
                vec![Kind::BrNetfilterDnat],
            ),
        ]
    }

    #[test]
    fn verdicts_by_scenario() {
        for case in scenarios() {
            let found = findings(&Evidence {
                before: Some(&case.before),
                after: &case.after,
                drops: Some(&case.drops),
                samples: &case.samples,
            });
            let kinds: Vec<Kind> = found.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, case.want, "case {}: {found:?}", case.name);
        }
    }

    #[test]
    fn the_headline_quotes_the_rule_whose_counter_moved() {
        let rules = |third: u64| {
            let mut rules: Vec<Rule> = [
                ("first", "81"),
                ("second", "82"),
                ("third: web closed", "80"),
            ]
            .iter()
            .enumerate()
            .map(|(i, (comment, port))| {
                rule(
                    "FORWARD",
                    Hook::Forward,
                    &format!("-A FORWARD -p tcp -m tcp --dport {port} -m comment --comment \"{comment}\" -j DROP"),
                    Some(comment),
                    if i == 2 { third } else { 7 },
                )
            })
            .collect();
            rules.push(rule("FORWARD", Hook::Forward, "-P FORWARD ACCEPT", None, 0));
            rules
        };
        let mut before = host(true);
        before.drop_rules = rules(0);
        let mut after = host(true);
        after.drop_rules = rules(5);
        let drops = [drop("NETFILTER_DROP", "nft_do_chain", "eth0", 5)];
        let found = findings(&Evidence {
            before: Some(&before),
            after: &after,
            drops: Some(&drops),
            samples: &[],
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].summary,
            "the FORWARD path drops traffic (5 packets): -A FORWARD -p tcp -m tcp --dport 80 -m comment --comment \"third: web closed\" -j DROP (iptables-nft table filter chain FORWARD, comment \"third: web closed\")"
        );
    }

    #[test]
    fn input_drops_are_notes_naming_the_rule_not_findings() {
        let mut before = host(true);
        before.drop_rules = docker_filter(10, 100);
        let mut after = before.clone();
        after.drop_rules = docker_filter(10, 103);
        let drops = [drop("NETFILTER_DROP", "nft_do_chain", "eth0", 3)];
        let evidence = Evidence {
            before: Some(&before),
            after: &after,
            drops: Some(&drops),
            samples: &[],
        };
        assert!(findings(&evidence).is_empty());
        assert_eq!(
            notes(&evidence),
            vec!["the firewall dropped 3 packets: -A INPUT -p tcp -m tcp --dport 22 -m comment --comment \"drop ssh scans\" -j DROP (iptables-nft table filter chain INPUT, comment \"drop ssh scans\"; hook INPUT) outside the FORWARD path: the host's own policy for traffic to or from it, not a problem"]
        );
    }

    #[test]
    fn docker_rules_missing_only_when_its_nat_survived_without_its_filter_chains() {
        let policy = |packets| Rule {
            tool: "nft".into(),
            table: "inet filter".into(),
            chain: "forward".into(),
            occurrence: 0,
            hooks: vec![Hook::Forward],
            text: "ip daddr 172.18.0.2 counter drop".into(),
            comment: None,
            packets: Some(packets),
            policy: false,
            jumps: Vec::new(),
        };
        let nft_dnat = Dnat {
            rule: "iifname != \"docker0\" tcp dport 9091 counter dnat to 172.18.0.2:80".into(),
            ..dnat()
        };
        let cases = [
            (
                "iptables DNAT in DOCKER, no Docker filter chains",
                dnat(),
                false,
                true,
            ),
            (
                "iptables DNAT with Docker's filter chains",
                dnat(),
                true,
                false,
            ),
            ("Docker's nftables backend", nft_dnat.clone(), true, false),
            ("nft-only host without Docker", nft_dnat, false, false),
        ];
        for (name, published, docker_chains, want) in cases {
            let mut before = host(true);
            before.dnat = vec![published];
            before.docker_chains = docker_chains;
            before.drop_rules = vec![policy(0)];
            let mut after = before.clone();
            after.drop_rules = vec![policy(2)];
            let drops = [drop("NETFILTER_DROP", "nft_do_chain", "eth0", 2)];
            let found = findings(&Evidence {
                before: Some(&before),
                after: &after,
                drops: Some(&drops),
                samples: &[],
            });
            assert_eq!(found.len(), 1, "case {name}: {found:?}");
            let says_missing = found[0]
                .fix
                .iter()
                .any(|f| f.contains("Docker's own FORWARD rules are missing"));
            assert_eq!(says_missing, want, "case {name}: {:?}", found[0].fix);
        }
    }

    #[test]
    fn br_netfilter_fix_follows_the_cause() {
        let mut off = host(false);
        off.bridge_nf_call_iptables = Some(true);
        let mut bridge_off = host(true);
        bridge_off.interfaces[1].forwarding = false;
        let mut strict = host(true);
        strict.interfaces[1].rp_filter = 1;
        let no_route = host(true);
        let cases = [
            ("forwarding off", off, "forwarding is off)", "sysctl -w net.ipv4.ip_forward=1"),
            (
                "off on the bridge",
                bridge_off,
                "forwarding is off on docker0)",
                "sysctl -w net.ipv4.conf.docker0.forwarding=1",
            ),
            (
                "strict rp_filter",
                strict,
                "strict reverse-path filtering on docker0 refuses their source)",
                "sysctl -w net.ipv4.conf.docker0.rp_filter=2 net.ipv4.conf.all.rp_filter=2  # loose mode",
            ),
            (
                "no route",
                no_route,
                "no route for their DNAT-ed destination)",
                "check the route to the DNAT target: ip route get <container address> iif <bridge> from <source>",
            ),
        ];
        for (name, mut state, cause, fix) in cases {
            // The drop is labelled with the bridge port the frame came in on (skb_iif);
            // the bridge's settings are the ones that decide.
            state.interfaces.push(Interface {
                name: "veth1a2b".into(),
                forwarding: true,
                rp_filter: 0,
                master: Some("docker0".into()),
            });
            let drops = [drop(
                "NOT_SPECIFIED",
                "br_nf_pre_routing_finish",
                "veth1a2b",
                2,
            )];
            let found = findings(&Evidence {
                before: Some(&state),
                after: &state,
                drops: Some(&drops),
                samples: &[],
            });
            let f = found
                .iter()
                .find(|f| f.kind == Kind::BrNetfilterDnat)
                .unwrap_or_else(|| panic!("case {name}: {found:?}"));
            assert!(f.summary.ends_with(cause), "case {name}: {}", f.summary);
            assert_eq!(f.fix[0], fix, "case {name}");
        }
    }

    /// A dual-stack Docker-like host: IPv4 on, IPv6 `all.forwarding` as given, a port
    /// published over IPv6 too, the ingress `eth0` and the bridge `docker0`.
    fn dual_stack(ipv6_all: bool) -> HostState {
        let mut host = host(true);
        host.dnat.push(Dnat {
            to_addr: "fd18::2".into(),
            rule: "-A DOCKER -p tcp -m tcp --dport 9091 -j DNAT --to-destination [fd18::2]:80"
                .into(),
            ..dnat()
        });
        host.ipv6.forwarding = Some(ipv6_all);
        host.ipv6.interfaces = ["eth0", "docker0"]
            .iter()
            .map(|name| Ipv6Interface {
                name: (*name).into(),
                forwarding: ipv6_all,
                force_forwarding: Some(false),
            })
            .collect();
        host
    }

    fn v6_sample() -> DropEvent {
        let mut s = sample("ip6_forward");
        s.src = Some("fd10::9".parse().expect("ip"));
        s.dst = Some("fd18::2".parse().expect("ip"));
        s.target.container = Some("app_pushgateway_1".into());
        s.target.service = Some("pushgateway".into());
        s
    }

    fn kinds_of(before: &HostState, after: &HostState, drops: &[TracedDrop]) -> Vec<Kind> {
        findings(&Evidence {
            before: Some(before),
            after,
            drops: Some(drops),
            samples: &[],
        })
        .iter()
        .map(|f| f.kind)
        .collect()
    }

    #[test]
    fn ipv6_forwarding_verdicts_by_scenario() {
        let v6_off = dual_stack(false);
        let mut v4_off = dual_stack(true);
        v4_off.ip_forward = Some(false);
        for i in &mut v4_off.interfaces {
            i.forwarding = false;
        }
        // IPv6 on, but the ingress interface's own `forwarding` is 0: the kernel still
        // forwards (only all.forwarding and force_forwarding decide).
        let mut v6_per_if_forwarding_zero = dual_stack(true);
        v6_per_if_forwarding_zero.ipv6.interfaces[0].forwarding = false;
        let mut only_bridge_forced = dual_stack(false);
        only_bridge_forced.ipv6.interfaces[1].force_forwarding = Some(true);
        let mut v6_nat = dual_stack(false);
        v6_nat.dnat.retain(|d| d.family() == IpFamily::V4);
        v6_nat.ipv6.source_nat = vec!["ip6tables-nft table nat chain POSTROUTING: -A POSTROUTING -s fd18::/64 ! -o docker0 -j MASQUERADE".into()];
        let mut v4_only_publishing = dual_stack(false);
        v4_only_publishing
            .dnat
            .retain(|d| d.family() == IpFamily::V4);
        let mut v6_only_publishing = dual_stack(true);
        v6_only_publishing.ip_forward = Some(false);
        v6_only_publishing
            .dnat
            .retain(|d| d.family() == IpFamily::V6);
        let mut no_ipv6 = host(true);
        no_ipv6.ipv6.forwarding = None;
        let healthy = dual_stack(true);
        let v6_drops = |n| vec![drop("IP_INADDRERRORS", "ip6_forward", "eth0", n)];
        let cases: Vec<(&str, &HostState, Vec<TracedDrop>, Vec<Kind>)> = vec![
            ("dual stack healthy", &healthy, vec![], vec![]),
            (
                "IPv6 off, IPv4 on, drops in ip6_forward",
                &v6_off,
                v6_drops(4),
                vec![Kind::Ipv6ForwardingOff],
            ),
            (
                "IPv6 off, nothing dropped yet, a port published over IPv6",
                &v6_off,
                vec![],
                vec![Kind::Ipv6ForwardingOff],
            ),
            (
                "IPv4 off, IPv6 on: the IPv4 finding alone",
                &v4_off,
                vec![drop("IP_INADDRERRORS", "ip_error", "eth0", 3)],
                vec![Kind::ForwardingOff],
            ),
            (
                "IPv6 on, ingress conf.eth0.forwarding = 0: forwarded anyway",
                &v6_per_if_forwarding_zero,
                vec![],
                vec![],
            ),
            (
                "IPv6 off with force_forwarding on the bridge only",
                &only_bridge_forced,
                v6_drops(2),
                vec![Kind::Ipv6ForwardingOffInterface],
            ),
            (
                "IPv6 off, IPv6 source NAT behind the host",
                &v6_nat,
                vec![],
                vec![Kind::Ipv6ForwardingOff],
            ),
            (
                "IPv6 off on a host publishing over IPv4 only, nothing dropped",
                &v4_only_publishing,
                vec![],
                vec![],
            ),
            (
                // Not about forwarding being off: the MTU finding, alone.
                "IPv6 on, ip6_forward drops for another reason",
                &healthy,
                vec![drop("PKT_TOO_BIG", "ip6_forward", "eth0", 2)],
                vec![Kind::PacketTooBig],
            ),
            ("no IPv6 at all", &no_ipv6, vec![], vec![]),
            (
                "IPv4 off on a host publishing over IPv6 only: no IPv4 finding",
                &v6_only_publishing,
                vec![],
                vec![],
            ),
        ];
        for (name, state, drops, want) in cases {
            assert_eq!(kinds_of(state, state, &drops), want, "case {name}");
        }
    }

    #[test]
    fn the_ipv6_verdict_names_interface_container_counter_and_fix() {
        let before = dual_stack(false);
        let mut after = dual_stack(false);
        after.ipv6.counters.in_addr_errors = 4;
        let drops = [drop("IP_INADDRERRORS", "ip6_forward", "eth0", 4)];
        let found = findings(&Evidence {
            before: Some(&before),
            after: &after,
            drops: Some(&drops),
            samples: &[v6_sample()],
        });
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(
            (f.kind, f.severity),
            (Kind::Ipv6ForwardingOff, Severity::Critical)
        );
        assert_eq!(f.interface.as_deref(), Some("eth0"));
        assert_eq!(
            f.summary,
            "IPv6 forwarding is off on eth0 (net.ipv6.conf.all.forwarding = 0); published port 9091 -> [fd18::2]:80 (container app_pushgateway_1, compose service pushgateway) dropped 4 times"
        );
        assert_eq!(
            f.evidence[..3],
            [
                "4 packets dropped in ip6_forward (IP_INADDRERRORS) on eth0".to_owned(),
                "/proc/net/snmp6 Ip6InAddrErrors rose by 4".to_owned(),
                "net.ipv6.conf.all.forwarding = 0".to_owned(),
            ]
        );
        assert!(
            f.evidence.iter().any(|e| e.contains("[fd18::2]:80")),
            "the IPv6 DNAT rule is evidence: {:?}",
            f.evidence
        );
        assert!(
            !f.evidence.iter().any(|e| e.contains("172.18.0.2")),
            "the IPv4 DNAT is not: {:?}",
            f.evidence
        );
        assert_eq!(f.fix[0], "sysctl -w net.ipv6.conf.all.forwarding=1");
        assert!(f.fix[1].contains("/etc/sysctl.d/"), "{:?}", f.fix);
        assert!(f.fix.iter().any(|x| x.contains("network_mode: host")));
    }

    /// IPv6 is often routed to containers without NAT: the sampled destination alone
    /// names who the traffic was for.
    #[test]
    fn routed_ipv6_is_named_by_its_sampled_container() {
        let mut state = dual_stack(false);
        state.dnat.retain(|d| d.family() == IpFamily::V4);
        let mut routed = v6_sample();
        routed.dst = Some("fd18::3".parse().expect("ip"));
        routed.dport = 443;
        let drops = [drop("IP_INADDRERRORS", "ip6_forward", "eth0", 2)];
        let found = findings(&Evidence {
            before: Some(&state),
            after: &state,
            drops: Some(&drops),
            samples: &[routed],
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].summary,
            "IPv6 forwarding is off on eth0 (net.ipv6.conf.all.forwarding = 0); traffic to [fd18::3]:443 (container app_pushgateway_1, compose service pushgateway) dropped 2 times"
        );
    }

    #[test]
    fn without_a_trace_the_ipv6_counter_is_the_evidence() {
        let before = dual_stack(false);
        let mut after = dual_stack(false);
        after.ipv6.counters.in_addr_errors = 3;
        let found = findings(&Evidence {
            before: Some(&before),
            after: &after,
            drops: None,
            samples: &[],
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Critical);
        assert!(
            found[0]
                .summary
                .starts_with("IPv6 forwarding is off on this host (net.ipv6.conf.all.forwarding = 0); published port 9091 -> [fd18::2]:80 dropped 3 times"),
            "{}",
            found[0].summary
        );
        // With a trace, the counter alone (other refusals count there too) is no drop.
        let traced = findings(&Evidence {
            before: Some(&before),
            after: &after,
            drops: Some(&[]),
            samples: &[],
        });
        assert_eq!(traced[0].severity, Severity::Warning, "{traced:?}");
    }

    #[test]
    fn ipv6_off_for_one_interface_names_it_and_both_fixes() {
        let mut state = dual_stack(false);
        state.ipv6.interfaces[1].force_forwarding = Some(true);
        let drops = [drop("IP_INADDRERRORS", "ip6_forward", "eth0", 2)];
        let found = findings(&Evidence {
            before: Some(&state),
            after: &state,
            drops: Some(&drops),
            samples: &[],
        });
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.kind, Kind::Ipv6ForwardingOffInterface);
        assert_eq!(f.interface.as_deref(), Some("eth0"));
        assert!(
            f.summary
                .contains("net.ipv6.conf.eth0.force_forwarding = 0"),
            "{}",
            f.summary
        );
        assert!(f.fix[0].starts_with("sysctl -w net.ipv6.conf.eth0.force_forwarding=1"));
        assert_eq!(f.fix[1], "sysctl -w net.ipv6.conf.all.forwarding=1");
    }
}
