//! FORWARD drops named after whoever owns the chain: Docker's isolation between its
//! networks (`DOCKER-ISOLATION-STAGE-*`), the administrator's `DOCKER-USER`, and the
//! firewall managers (ufw's `ufw-*` chains and the FORWARD policy it sets, firewalld's
//! `firewalld` nft table and its zones). Each needs a different fix from "accept the
//! traffic before the drop", so each gets its own finding; the generic netfilter
//! finding leaves these rules to it (see [`claimed`]).

use std::collections::BTreeMap;

use super::{conntrack, interfaces_of, Evidence, Finding, Kind, Rule, RuleHit, Severity};
use crate::diagnose::host::HostState;

/// The finding that names a drop by `rule` on the FORWARD path, when it is not the
/// generic one.
pub(super) fn claimed(rule: &Rule, host: &HostState) -> Option<Kind> {
    if conntrack::matches_invalid(rule) {
        return Some(Kind::ConntrackInvalid);
    }
    if rule.chain.starts_with("DOCKER-ISOLATION") {
        return Some(Kind::DockerIsolation);
    }
    if rule.chain == "DOCKER-USER" {
        return Some(Kind::DockerUserDrop);
    }
    manager(rule, host).map(|_| Kind::FirewallManagerDrop)
}

/// The firewall manager that owns `rule`: ufw for its chains and, where ufw is in
/// use, the filter table's FORWARD policy (its `DEFAULT_FORWARD_POLICY`); firewalld
/// for its nft tables.
fn manager(rule: &Rule, host: &HostState) -> Option<&'static str> {
    if rule.chain.starts_with("ufw-") || rule.chain.starts_with("ufw6-") {
        return Some("ufw");
    }
    if rule.policy
        && rule.tool != "nft"
        && rule.table == "filter"
        && rule.chain == "FORWARD"
        && host.firewall_managers.iter().any(|m| m == "ufw")
    {
        return Some("ufw");
    }
    (rule.tool == "nft" && rule.table.ends_with(" firewalld")).then_some("firewalld")
}

/// The firewalld zone of a chain: `filter_FWD_public_deny` -> `public`.
fn firewalld_zone(chain: &str) -> Option<&str> {
    let rest = chain
        .strip_prefix("filter_FWD_")
        .or_else(|| chain.strip_prefix("filter_FWDO_"))
        .or_else(|| chain.strip_prefix("filter_FWDI_"))?;
    let zone = rest
        .trim_end_matches("_allow")
        .trim_end_matches("_deny")
        .trim_end_matches("_log")
        .trim_end_matches("_pre")
        .trim_end_matches("_post");
    (!zone.is_empty()).then_some(zone)
}

pub(super) fn named_chains(ev: &Evidence, out: &mut Vec<Finding>) {
    let host = ev.after;
    let mut by_kind: BTreeMap<Kind, Vec<RuleHit>> = BTreeMap::new();
    for hit in ev.rule_hits() {
        if !hit.on_forward_path() {
            continue;
        }
        if let Some(
            kind @ (Kind::DockerIsolation | Kind::DockerUserDrop | Kind::FirewallManagerDrop),
        ) = claimed(hit.rule, host)
        {
            by_kind.entry(kind).or_default().push(hit);
        }
    }
    let traced = ev.drops_where(|d| d.reason == "NETFILTER_DROP");
    let interface = interfaces_of(&traced).first().cloned();
    let sampled = sampled_flows(ev);
    for (kind, hits) in by_kind {
        let packets: u64 = hits.iter().map(|h| h.packets).sum();
        let top = hits[0].rule;
        let rule = format!("{} ({})", top.text, top.place());
        let mut evidence: Vec<String> = hits.iter().map(RuleHit::line).collect();
        evidence.extend(sampled.clone());
        let (severity, summary, fix) = match kind {
            Kind::DockerIsolation => (
                Severity::Warning,
                format!("Docker's isolation between its networks dropped {packets} packets: the containers are on different Docker networks ({rule})"),
                vec![
                    "containers on different Docker networks cannot reach each other by design: attach them to a shared network (docker network connect <network> <container>, or one network listed under both services' `networks:` in compose)".into(),
                    "or reach the other container through its published port on the host's address".into(),
                ],
            ),
            Kind::DockerUserDrop => (
                Severity::Critical,
                format!("a rule in DOCKER-USER (the chain Docker leaves for the administrator's own rules) dropped {packets} forwarded packets: {rule}"),
                vec![
                    "if this traffic should pass, accept it before that rule: iptables -I DOCKER-USER -p tcp -d <container> --dport <port> -j ACCEPT".into(),
                    format!("or delete the rule: iptables -D {}", top.text.trim_start_matches("-A ")),
                ],
            ),
            _ => {
                let who = manager(top, host).unwrap_or("the firewall manager");
                let zone = firewalld_zone(&top.chain)
                    .map_or(String::new(), |z| format!(" (zone {z})"));
                let fix = if who == "ufw" {
                    vec![
                        "allow the routed traffic: ufw route allow proto tcp to <container> port <port>".into(),
                        "or set DEFAULT_FORWARD_POLICY=\"ACCEPT\" in /etc/default/ufw and ufw reload (Docker's own FORWARD rules then decide)".into(),
                    ]
                } else {
                    let zone = firewalld_zone(&top.chain).unwrap_or("<zone>");
                    vec![
                        format!("allow forwarding in the zone: firewall-cmd --permanent --zone={zone} --add-forward && firewall-cmd --reload"),
                        "or put Docker's bridges in firewalld's `docker` zone: firewall-cmd --permanent --zone=docker --add-interface=<bridge> && firewall-cmd --reload".into(),
                    ]
                };
                (
                    Severity::Critical,
                    format!("{who}{zone} dropped {packets} forwarded packets: {rule}"),
                    fix,
                )
            }
        };
        out.push(Finding {
            kind,
            severity,
            interface: interface.clone(),
            summary,
            evidence,
            fix,
        });
    }
}

/// The sampled netfilter drops as `src (bridge) > dst:port (bridge, container)` lines.
fn sampled_flows(ev: &Evidence) -> Vec<String> {
    let host = ev.after;
    let bridge = |addr: std::net::IpAddr| {
        host.bridge_of(&addr.to_string())
            .map_or(String::new(), |b| format!(" (bridge {b})"))
    };
    let mut flows: Vec<String> = ev
        .samples
        .iter()
        .filter(|s| s.reason == "NETFILTER_DROP")
        .filter_map(|s| {
            let (src, dst) = (s.src?, s.dst?);
            // The Docker network and container behind the destination, as the
            // engine names them: what the user has to connect or open.
            let container: String = [
                s.target.network.as_ref().map(|n| format!(", network {n}")),
                s.target
                    .container
                    .as_ref()
                    .map(|c| format!(", container {c}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            Some(format!(
                "sampled: {src}{} > {dst}:{}{} ({}{container})",
                bridge(src),
                s.dport,
                bridge(dst),
                s.protocol,
            ))
        })
        .collect();
    flows.sort();
    flows.dedup();
    flows.truncate(5);
    flows
}

#[cfg(test)]
mod tests {
    use super::super::tests::{drop, host, rule};
    use super::*;
    use crate::diagnose::firewall::Hook;

    #[test]
    fn firewalld_zones_from_chain_names() {
        assert_eq!(firewalld_zone("filter_FWD_public"), Some("public"));
        assert_eq!(firewalld_zone("filter_FWD_docker_allow"), Some("docker"));
        assert_eq!(firewalld_zone("filter_FORWARD"), None);
    }

    /// name, rules before and after the window, firewall managers, the findings.
    type Case<'a> = (&'a str, Vec<Rule>, Vec<Rule>, Vec<&'a str>, Vec<Kind>);

    fn dropping(chain: &str, text: &str, n: u64) -> Rule {
        let mut r = rule(chain, Hook::Forward, text, None, n);
        r.jumps = vec!["DROP".into()];
        r
    }

    fn firewalld(n: u64) -> Rule {
        Rule {
            tool: "nft".into(),
            table: "inet firewalld".into(),
            ..dropping("filter_FWD_public", "reject with icmpx admin-prohibited", n)
        }
    }

    #[test]
    fn firewalld_verdict_names_the_zone_and_rule() {
        let mut before = host(true);
        before.drop_rules = vec![firewalld(0)];
        let mut after = before.clone();
        after.drop_rules = vec![firewalld(2)];
        let drops = [drop("NETFILTER_DROP", "nft_do_chain", "eth0", 2)];
        let found = super::super::findings(&Evidence {
            before: Some(&before),
            after: &after,
            drops: Some(&drops),
            samples: &[],
        });
        assert_eq!(
            found[0].summary,
            "firewalld (zone public) dropped 2 forwarded packets: reject with icmpx admin-prohibited (nft table inet firewalld chain filter_FWD_public)"
        );
    }

    #[test]
    fn verdicts_by_scenario() {
        let isolation = |n| {
            dropping(
                "DOCKER-ISOLATION-STAGE-2",
                "-A DOCKER-ISOLATION-STAGE-2 -o br-b -j DROP",
                n,
            )
        };
        let user = |n| {
            dropping(
                "DOCKER-USER",
                "-A DOCKER-USER -p tcp -m tcp --dport 80 -j DROP",
                n,
            )
        };
        let ufw_policy = |n| rule("FORWARD", Hook::Forward, "-P FORWARD DROP", None, n);
        let cases: Vec<Case> = vec![
            (
                "isolation",
                vec![isolation(0)],
                vec![isolation(3)],
                vec![],
                vec![Kind::DockerIsolation],
            ),
            (
                "DOCKER-USER",
                vec![user(0)],
                vec![user(3)],
                vec![],
                vec![Kind::DockerUserDrop],
            ),
            (
                "FORWARD policy with ufw",
                vec![ufw_policy(0)],
                vec![ufw_policy(3)],
                vec!["ufw"],
                vec![Kind::FirewallManagerDrop],
            ),
            (
                "FORWARD policy without ufw",
                vec![ufw_policy(0)],
                vec![ufw_policy(3)],
                vec![],
                vec![Kind::ForwardPolicyDrop],
            ),
            (
                "firewalld zone",
                vec![firewalld(0)],
                vec![firewalld(3)],
                vec!["firewalld"],
                vec![Kind::FirewallManagerDrop],
            ),
            (
                "idle isolation rule",
                vec![isolation(3)],
                vec![isolation(3)],
                vec![],
                vec![],
            ),
        ];
        for (name, before_rules, after_rules, managers, want) in cases {
            let mut before = host(true);
            before.drop_rules = before_rules;
            before.firewall_managers = managers.iter().map(|m| (*m).to_owned()).collect();
            let mut after = before.clone();
            after.drop_rules = after_rules;
            let drops = if want.is_empty() {
                vec![]
            } else {
                vec![drop("NETFILTER_DROP", "nft_do_chain", "eth0", 3)]
            };
            let found = super::super::findings(&Evidence {
                before: Some(&before),
                after: &after,
                drops: Some(&drops),
                samples: &[],
            });
            let kinds: Vec<Kind> = found.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, want, "case {name}: {found:?}");
        }
    }
}
