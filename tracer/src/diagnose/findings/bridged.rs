//! Netfilter drops of traffic that was bridged, not routed: two containers on one
//! bridge talk at layer 2, yet with br_netfilter's `net.bridge.bridge-nf-call-iptables`
//! (`-ip6tables` for IPv6) at 1 their frames pass the FORWARD chain of iptables
//! (ip6tables) as if routed, and a rule written for routed traffic drops them. The
//! netfilter finding says so, with the switch, so that the rule is not hunted for on
//! the routed path.

use super::Evidence;
use crate::{diagnose::host::HostState, samples::DropEvent};

/// The bridge a sampled netfilter drop was bridged across: it came in on a port of
/// that bridge and was headed for an address in the bridge's own subnet.
fn bridged_across<'h>(host: &'h HostState, s: &DropEvent) -> Option<&'h str> {
    let master = host.interface(&s.interface)?.master.as_deref()?;
    let dst = s.dst?.to_string();
    (host.bridge_of(&dst) == Some(master)).then_some(master)
}

/// The evidence lines and fixes for the netfilter drops that br_netfilter handed to
/// the FORWARD chain: one of each per bridge and family, nothing when none was bridged.
pub(super) fn br_netfilter_forward(ev: &Evidence) -> (Vec<String>, Vec<String>) {
    let host = ev.after;
    let mut seen: Vec<(&str, bool)> = Vec::new();
    for s in ev.samples.iter().filter(|s| s.reason == "NETFILTER_DROP") {
        let (Some(bridge), Some(dst)) = (bridged_across(host, s), s.dst) else {
            continue;
        };
        if !seen.contains(&(bridge, dst.is_ipv6())) {
            seen.push((bridge, dst.is_ipv6()));
        }
    }
    let (mut evidence, mut fix) = (Vec::new(), Vec::new());
    for (bridge, ipv6) in seen {
        let (key, tool, switch) = if ipv6 {
            (
                "net.bridge.bridge-nf-call-ip6tables",
                "ip6tables",
                host.bridge_nf_call_ip6tables,
            )
        } else {
            (
                "net.bridge.bridge-nf-call-iptables",
                "iptables",
                host.bridge_nf_call_iptables,
            )
        };
        let state = switch.map_or_else(|| "unknown".to_owned(), |on| u8::from(on).to_string());
        evidence.push(format!(
            "{bridge} is a bridge and {key} = {state}: br_netfilter passed traffic bridged between its ports to the FORWARD chain of {tool}, where it was dropped"
        ));
        fix.push(format!(
            "if the rule is meant for routed traffic only, keep bridged traffic out of it: add `-m physdev ! --physdev-is-bridged` to the {tool} rule"
        ));
        fix.push(format!(
            "or, if nothing on this host filters bridged traffic on purpose: sysctl -w {key}=0 (and in /etc/sysctl.d/ to keep it)"
        ));
    }
    (evidence, fix)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{host, sample};
    use super::*;
    use crate::{
        diagnose::host::Interface,
        enrich::{rtnetlink::BridgeSubnet, Subnet},
    };

    #[test]
    fn names_the_switch_of_the_family_for_bridged_drops_only() {
        let mut state = host(true);
        state.interfaces.push(Interface {
            name: "vh-ctr2".into(),
            forwarding: true,
            rp_filter: 0,
            master: Some("br0".into()),
        });
        state.bridges = vec![
            BridgeSubnet {
                bridge: "br0".into(),
                subnet: Subnet::parse("fd31:231::/64").expect("subnet"),
            },
            BridgeSubnet {
                bridge: "br0".into(),
                subnet: Subnet::parse("172.31.231.0/24").expect("subnet"),
            },
        ];
        state.bridge_nf_call_iptables = Some(true);
        state.bridge_nf_call_ip6tables = Some(true);
        let dropped = |interface: &str, dst: &str| {
            let mut s = sample("nft_do_chain");
            s.reason = "NETFILTER_DROP".into();
            s.interface = interface.into();
            s.dst = Some(dst.parse().expect("ip"));
            s
        };
        let lines = |samples: &[DropEvent]| {
            br_netfilter_forward(&Evidence {
                before: Some(&state),
                after: &state,
                drops: None,
                samples,
            })
        };
        let cases: [(&str, Vec<DropEvent>, Vec<&str>); 4] = [
            (
                "IPv6 between two ports",
                vec![dropped("vh-ctr2", "fd31:231::2")],
                vec!["net.bridge.bridge-nf-call-ip6tables = 1"],
            ),
            (
                "IPv4 between two ports",
                vec![dropped("vh-ctr2", "172.31.231.2")],
                vec!["net.bridge.bridge-nf-call-iptables = 1"],
            ),
            (
                "routed: from a port to another network",
                vec![dropped("vh-ctr2", "fd99::1")],
                vec![],
            ),
            (
                "routed: into the bridge from the uplink",
                vec![dropped("eth0", "fd31:231::2")],
                vec![],
            ),
        ];
        for (name, samples, want) in cases {
            let (evidence, fix) = lines(&samples);
            assert_eq!(evidence.len(), want.len(), "case {name}: {evidence:?}");
            for (line, key) in evidence.iter().zip(&want) {
                assert!(
                    line.starts_with(&format!("br0 is a bridge and {key}")),
                    "case {name}: {line}"
                );
            }
            assert_eq!(fix.len(), 2 * want.len(), "case {name}: {fix:?}");
        }
    }
}
