//! What the host's configuration says, read from the namespace dropgate runs in:
//! forwarding and rp_filter sysctls, br_netfilter, the FORWARD policy and Docker's chains
//! in iptables (nft and legacy) and nftables, published-port DNAT rules, bridges and
//! their subnets, the kernel's own IP counters, and which sysctl files turn forwarding off.
//!
//! Every reader tolerates a missing tool or file: what could not be read is recorded in
//! `unchecked` with the reason, and the verdict says so.

use std::{collections::BTreeMap, net::IpAddr, path::Path, process::Command};

use serde::Serialize;

use super::{
    datapath::Datapath,
    firewall::{parse_iptables_save, parse_nft_ruleset, Hook, Rule},
};
use crate::enrich::rtnetlink::{bridges_in, BridgeSubnet};

/// A published port: traffic to `dport` is DNAT-ed to `to_addr:to_port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Dnat {
    pub protocol: String,
    pub dport: u16,
    pub to_addr: String,
    pub to_port: Option<u16>,
    /// The rule as the tool printed it.
    pub rule: String,
    /// Whether traffic from other hosts reaches it: its chain runs in PREROUTING, it
    /// matches no loopback destination (`-p 127.0.0.1:9091:80`) and it does not point
    /// at loopback. Only such a DNAT needs forwarding.
    pub from_other_hosts: bool,
}

impl Dnat {
    /// The family of the DNAT target (an address that does not parse counts as IPv4,
    /// as iptables' own syntax would have it).
    #[must_use]
    pub fn family(&self) -> IpFamily {
        match self.to_addr.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => IpFamily::V6,
            _ => IpFamily::V4,
        }
    }
}

/// IPv4 or IPv6: forwarding, counters and NAT are separate for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum IpFamily {
    V4,
    V6,
}

/// Whether `rule` sees packets of `family`: by the tool (`ip6tables-*` or `iptables-*`)
/// or, for nft, by the table's family (`inet` sees both).
#[must_use]
pub fn rule_applies_to(rule: &Rule, family: IpFamily) -> bool {
    if rule.tool == "nft" {
        let table_family = rule.table.split_whitespace().next().unwrap_or("");
        return match family {
            IpFamily::V4 => matches!(table_family, "ip" | "inet"),
            IpFamily::V6 => matches!(table_family, "ip6" | "inet"),
        };
    }
    rule.tool.starts_with("ip6tables") == (family == IpFamily::V6)
}

/// An interface's IPv4 settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub forwarding: bool,
    pub rp_filter: u8,
    /// The bridge this interface is a port of. A bridged packet is labelled with the
    /// port it came in on, but routing (forwarding, rp_filter) sees the bridge.
    pub master: Option<String>,
}

/// A sysctl file line that sets forwarding off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SysctlSource {
    pub file: String,
    pub line: usize,
    pub text: String,
}

/// The kernel's own IPv4 counters (`/proc/net/snmp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IpCounters {
    pub in_addr_errors: u64,
    pub in_no_routes: u64,
    pub forw_datagrams: u64,
}

/// The kernel's own IPv6 counters (`/proc/net/snmp6`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ip6Counters {
    /// `Ip6InAddrErrors`: what `ip6_forward` drops with forwarding off, among others.
    pub in_addr_errors: u64,
    pub in_no_routes: u64,
    pub out_forw_datagrams: u64,
    /// `Ip6InTooBigErrors`: packets `ip6_forward` dropped as too big for their egress
    /// link (IPv6's counterpart of IPv4's `FragFails` there: routers never fragment).
    pub in_too_big_errors: u64,
}

/// An interface's IPv6 forwarding settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ipv6Interface {
    pub name: String,
    /// `net.ipv6.conf.<if>.forwarding`: router or host behaviour on this interface (router
    /// advertisements, neighbour flags). It does not decide whether packets arriving
    /// there are forwarded: `all.forwarding` does.
    pub forwarding: bool,
    /// `net.ipv6.conf.<if>.force_forwarding` (kernel 6.17 and later; `None` before):
    /// packets arriving here are forwarded even with `all.forwarding = 0`.
    pub force_forwarding: Option<bool>,
}

/// The IPv6 side of the host: its forwarding switches, counters and published ports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ipv6State {
    /// `net.ipv6.conf.all.forwarding`; `None` without IPv6.
    pub forwarding: Option<bool>,
    pub interfaces: Vec<Ipv6Interface>,
    pub counters: Ip6Counters,
    /// IPv6 source NAT (ip6tables MASQUERADE/SNAT, nft `ip6`/`inet` masquerade/snat).
    pub source_nat: Vec<String>,
    pub forwarding_off_sources: Vec<SysctlSource>,
}

impl Ipv6State {
    /// The interface named `name`.
    pub fn interface(&self, name: &str) -> Option<&Ipv6Interface> {
        self.interfaces.iter().find(|i| i.name == name)
    }
}

/// Everything read from the host, at one moment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostState {
    pub ip_forward: Option<bool>,
    pub rp_filter_all: u8,
    pub interfaces: Vec<Interface>,
    /// `None` when br_netfilter is not loaded.
    pub bridge_nf_call_iptables: Option<bool>,
    /// `net.bridge.bridge-nf-call-ip6tables`: bridged IPv6 passes ip6tables (and nft's
    /// `ip6`/`inet` hooks); `None` when br_netfilter is not loaded.
    pub bridge_nf_call_ip6tables: Option<bool>,
    /// Every rule and chain policy that drops, with its hooks and counter.
    pub drop_rules: Vec<Rule>,
    /// Docker's chains or tables exist (iptables `DOCKER*` chains, nft `docker*` tables).
    pub docker_chains: bool,
    pub dnat: Vec<Dnat>,
    /// Source NAT (MASQUERADE/SNAT/masquerade) rules: containers or VMs behind a bridge
    /// reaching other hosts through this one, which needs forwarding.
    pub source_nat: Vec<String>,
    /// This namespace's own addresses: a drop of a packet to one of them was on its way
    /// in, not through.
    pub local_addresses: Vec<IpAddr>,
    pub bridges: Vec<BridgeSubnet>,
    pub forwarding_off_sources: Vec<SysctlSource>,
    pub counters: IpCounters,
    /// MTUs, neighbours, routes, conntrack: what decides whether a packet can leave.
    pub datapath: Datapath,
    /// Firewall managers whose chains or tables are in the ruleset (`ufw`, `firewalld`).
    pub firewall_managers: Vec<String>,
    pub ipv6: Ipv6State,
    /// Checks that could not run, with why.
    pub unchecked: BTreeMap<String, String>,
}

/// The value of the sysctl at `path` under `/proc/sys` (`net/ipv4/ip_forward`), trimmed.
pub(super) fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(path))
        .ok()
        .map(|s| s.trim().to_owned())
}

impl HostState {
    /// Reads everything it can.
    pub fn read() -> Self {
        let mut state = Self {
            ip_forward: sysctl("net/ipv4/ip_forward").map(|v| v == "1"),
            rp_filter_all: sysctl("net/ipv4/conf/all/rp_filter")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            bridge_nf_call_iptables: sysctl("net/bridge/bridge-nf-call-iptables").map(|v| v == "1"),
            bridge_nf_call_ip6tables: sysctl("net/bridge/bridge-nf-call-ip6tables")
                .map(|v| v == "1"),
            counters: ip_counters(),
            forwarding_off_sources: sysctl_file_lines(sets_forwarding_off),
            datapath: Datapath::read(),
            ipv6: Ipv6State {
                forwarding: sysctl("net/ipv6/conf/all/forwarding").map(|v| v == "1"),
                interfaces: ipv6_interfaces(),
                counters: ip6_counters(
                    &std::fs::read_to_string("/proc/net/snmp6").unwrap_or_default(),
                ),
                forwarding_off_sources: sysctl_file_lines(sets_ipv6_forwarding_off),
                ..Ipv6State::default()
            },
            ..Self::default()
        };
        state.interfaces = interfaces();
        state.local_addresses = local_addresses(
            &std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default(),
            &std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default(),
        );
        match bridges_in("self", Path::new("/proc/self/ns/net")) {
            Ok(bridges) => state.bridges = bridges,
            Err(err) => {
                state.unchecked.insert("bridges".into(), err.to_string());
            }
        }
        state.read_firewall();
        state
    }

    fn read_firewall(&mut self) {
        let mut rules = Vec::new();
        // iptables-nft rules live in nf_tables, so `nft` sees them too; the iptables tool
        // is asked first because it prints its own syntax, comments and the policy
        // counters, and the nft view of its tables is then skipped.
        let mut iptables_tables = Vec::new();
        let mut iptables_missing = Vec::new();
        for (family, tool, legacy, legacy_names) in [
            (
                "ip",
                "iptables-nft",
                "iptables-legacy",
                "/proc/net/ip_tables_names",
            ),
            (
                "ip6",
                "ip6tables-nft",
                "ip6tables-legacy",
                "/proc/net/ip6_tables_names",
            ),
        ] {
            match run(&format!("{tool}-save"), &["-c"]) {
                Ok(text) => {
                    let (found, tables) = parse_iptables_save(tool, &text);
                    rules.extend(found);
                    iptables_tables.extend(tables.iter().map(|t| format!("{family} {t}")));
                }
                Err(why) => iptables_missing.push((tool, why)),
            }
            // Running iptables-legacy creates its tables in the namespace (and loads
            // ip_tables): read it only when its tables already exist.
            let legacy_tables = std::fs::read_to_string(legacy_names)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>();
            if legacy_tables.is_empty() {
                continue;
            }
            // Older distributions (CentOS 7) name the legacy tool plain `iptables-save`;
            // it is legacy when its header does not say nf_tables.
            let plain = legacy.replace("-legacy", "");
            let read = run(&format!("{legacy}-save"), &["-c"]).or_else(|why| {
                run(&format!("{plain}-save"), &["-c"])
                    .ok()
                    .filter(|text| !text.lines().next().unwrap_or("").contains("nf_tables"))
                    .ok_or(why)
            });
            match read {
                Ok(text) => rules.extend(parse_iptables_save(legacy, &text).0),
                Err(why) => {
                    self.unchecked.insert(
                        legacy.into(),
                        format!(
                            "legacy tables exist ({}) but cannot be read: {why}",
                            legacy_tables.join(", ")
                        ),
                    );
                }
            }
        }
        match run("nft", &["list", "ruleset"]) {
            Ok(text) => {
                self.docker_chains |= text
                    .lines()
                    .any(|l| l.starts_with("table ") && l.contains(" docker"));
                rules.extend(parse_nft_ruleset(&text, &iptables_tables));
            }
            Err(why) => {
                self.unchecked.insert("nftables".into(), why);
                // Without nft, iptables-nft is the only view of nf_tables.
                for (tool, why) in iptables_missing {
                    self.unchecked.insert(tool.into(), why);
                }
            }
        }
        self.absorb_rules(rules);
    }

    /// Docker's presence, the published ports, source NAT and the drop rules, from
    /// every rule read.
    fn absorb_rules(&mut self, rules: Vec<Rule>) {
        // Docker's filter chains (DOCKER-USER, DOCKER-FORWARD, ...) are jumped to from
        // FORWARD; the nat table's DOCKER chain alone survives a flush of filter.
        self.docker_chains |= rules.iter().any(|r| {
            matches!(r.table.as_str(), "filter" | "ip filter")
                && (r.chain.starts_with("DOCKER")
                    || r.jumps.iter().any(|j| j.starts_with("DOCKER")))
        });
        self.firewall_managers = super::firewall::managers(&rules);
        self.dnat = rules.iter().filter_map(dnat_of).collect();
        let source_nat = |family: IpFamily| -> Vec<String> {
            rules
                .iter()
                .filter(|r| rule_applies_to(r, family))
                .filter(|r| {
                    r.text.contains("-j MASQUERADE")
                        || r.text.contains("-j SNAT")
                        || (r.tool == "nft"
                            && r.text
                                .split_whitespace()
                                .any(|w| w == "masquerade" || w == "snat"))
                })
                .map(|r| format!("{}: {}", r.place(), r.text))
                .collect()
        };
        // Each family's forwarding is its own switch: IPv6 source NAT needs IPv6
        // forwarding, not IPv4's.
        self.source_nat = source_nat(IpFamily::V4);
        self.ipv6.source_nat = source_nat(IpFamily::V6);
        // The same published port can be read twice (legacy and nft; Docker's DOCKER
        // chain is reached from PREROUTING and OUTPUT): one entry per port and target,
        // the one reachable from other hosts first so that it is the one kept.
        self.dnat.sort_by(|a, b| {
            (
                &a.protocol,
                a.dport,
                &a.to_addr,
                a.to_port,
                !a.from_other_hosts,
            )
                .cmp(&(
                    &b.protocol,
                    b.dport,
                    &b.to_addr,
                    b.to_port,
                    !b.from_other_hosts,
                ))
        });
        self.dnat.dedup_by(|a, b| {
            (&a.protocol, a.dport, &a.to_addr, a.to_port)
                == (&b.protocol, b.dport, &b.to_addr, b.to_port)
        });
        self.drop_rules = rules.into_iter().filter(Rule::drops).collect();
    }

    /// The rules that drop on the FORWARD path.
    pub fn forward_blocks(&self) -> impl Iterator<Item = &Rule> {
        self.drop_rules
            .iter()
            .filter(|r| r.hooks.contains(&Hook::Forward))
    }

    /// The DNAT rules that publish a port to other hosts.
    pub fn published(&self) -> impl Iterator<Item = &Dnat> {
        self.dnat.iter().filter(|d| d.from_other_hosts)
    }

    /// The published ports of one family (by the DNAT target's address): each needs
    /// that family's forwarding.
    pub fn published_in(&self, family: IpFamily) -> impl Iterator<Item = &Dnat> {
        self.published().filter(move |d| d.family() == family)
    }

    /// Whether `addr` is one of this namespace's own addresses.
    pub fn is_local(&self, addr: IpAddr) -> bool {
        addr.is_loopback() || self.local_addresses.contains(&addr)
    }

    /// The interface named `name`.
    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// The interface whose IP settings apply to traffic that came in on `name`: its
    /// bridge when it is a bridge port, else itself.
    pub fn routing_interface<'a>(&'a self, name: &'a str) -> &'a str {
        self.interface(name)
            .and_then(|i| i.master.as_deref())
            .unwrap_or(name)
    }

    /// The bridge whose subnet holds `addr`.
    pub fn bridge_of(&self, addr: &str) -> Option<&str> {
        let addr = addr.parse().ok()?;
        self.bridges
            .iter()
            .filter(|b| b.subnet.contains(addr))
            .max_by_key(|b| b.subnet.prefix())
            .map(|b| b.bridge.as_str())
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let hint = if err.contains("ermission denied") || err.contains("must be root") {
            " (needs root)"
        } else {
            ""
        };
        Err(format!(
            "{program} {} failed{hint}: {}",
            args.join(" "),
            err.trim()
        ))
    }
}

fn interfaces() -> Vec<Interface> {
    let Ok(entries) = std::fs::read_dir("/proc/sys/net/ipv4/conf") else {
        return Vec::new();
    };
    let masters = bridge_masters();
    let mut out: Vec<Interface> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !matches!(name.as_str(), "all" | "default" | "lo"))
        .map(|name| Interface {
            forwarding: sysctl(&format!("net/ipv4/conf/{name}/forwarding"))
                .is_some_and(|v| v == "1"),
            rp_filter: sysctl(&format!("net/ipv4/conf/{name}/rp_filter"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            master: masters.get(&name).cloned(),
            name,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Port -> bridge, from `ip -o link` (netlink, so it is this namespace's view; /sys
/// shows the namespace that mounted it).
fn bridge_masters() -> std::collections::HashMap<String, String> {
    run("ip", &["-o", "link", "show"])
        .map(|text| parse_masters(&text))
        .unwrap_or_default()
}

/// `ip -o link` lines: `3: vh-ctr@if2: <...> mtu 1500 master br0 state UP ...`.
fn parse_masters(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.nth(1)?.trim_end_matches(':');
            let name = name.split('@').next()?;
            let mut rest = fields.skip_while(|f| *f != "master");
            rest.next()?;
            Some((name.to_owned(), rest.next()?.to_owned()))
        })
        .collect()
}

fn ipv6_interfaces() -> Vec<Ipv6Interface> {
    let Ok(entries) = std::fs::read_dir("/proc/sys/net/ipv6/conf") else {
        return Vec::new();
    };
    let mut out: Vec<Ipv6Interface> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !matches!(name.as_str(), "all" | "default" | "lo"))
        .map(|name| Ipv6Interface {
            forwarding: sysctl(&format!("net/ipv6/conf/{name}/forwarding"))
                .is_some_and(|v| v == "1"),
            force_forwarding: sysctl(&format!("net/ipv6/conf/{name}/force_forwarding"))
                .map(|v| v == "1"),
            name,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `/proc/net/snmp6`: one `Name value` pair per line.
#[must_use]
pub fn ip6_counters(text: &str) -> Ip6Counters {
    let field = |name: &str| {
        text.lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0)
    };
    Ip6Counters {
        in_addr_errors: field("Ip6InAddrErrors"),
        in_no_routes: field("Ip6InNoRoutes"),
        out_forw_datagrams: field("Ip6OutForwDatagrams"),
        in_too_big_errors: field("Ip6InTooBigErrors"),
    }
}

fn ip_counters() -> IpCounters {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(header), Some(values)) = (lines.next(), lines.next()) else {
        return IpCounters::default();
    };
    let field = |name: &str| {
        let index = header.split_whitespace().position(|h| h == name)?;
        values.split_whitespace().nth(index)?.parse().ok()
    };
    IpCounters {
        in_addr_errors: field("InAddrErrors").unwrap_or(0),
        in_no_routes: field("InNoRoutes").unwrap_or(0),
        forw_datagrams: field("ForwDatagrams").unwrap_or(0),
    }
}

/// A published port from a DNAT rule of either tool.
fn dnat_of(rule: &Rule) -> Option<Dnat> {
    let mut dnat = if rule.tool == "nft" {
        parse_nft_dnat(&rule.text)?
    } else {
        parse_iptables_dnat(&rule.text)?
    };
    let loopback = |addr: &str| {
        addr.split('/')
            .next()
            .and_then(|a| a.parse::<IpAddr>().ok())
            .is_some_and(|a| a.is_loopback())
    };
    let words: Vec<&str> = rule.text.split_whitespace().collect();
    // `-d 127.0.0.1/32` or `ip daddr 127.0.0.1`, not negated: only the host itself can
    // reach it.
    let local_match = words
        .windows(3)
        .any(|w| w[0] != "!" && matches!(w[1], "-d" | "--destination") && loopback(w[2]))
        || words.windows(2).any(|w| w[0] == "daddr" && loopback(w[1]));
    dnat.from_other_hosts =
        rule.hooks.contains(&Hook::Prerouting) && !local_match && !loopback(&dnat.to_addr);
    Some(dnat)
}

/// IPv4 addresses marked `/32 host LOCAL` in `/proc/net/fib_trie` and the IPv6 ones of
/// `/proc/net/if_inet6`.
#[must_use]
pub fn local_addresses(fib_trie: &str, if_inet6: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut last: Option<IpAddr> = None;
    for line in fib_trie.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.parse().ok();
        } else if line.contains("host LOCAL") {
            out.extend(last);
        }
    }
    for line in if_inet6.lines() {
        let Some(hex) = line.split_whitespace().next() else {
            continue;
        };
        if let Ok(bits) = u128::from_str_radix(hex, 16) {
            out.push(IpAddr::V6(bits.into()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A `-j DNAT --to-destination A[:P]` rule of `iptables -t nat -S`.
#[must_use]
pub fn parse_iptables_dnat(line: &str) -> Option<Dnat> {
    if !line.starts_with("-A ") || !line.contains("-j DNAT") {
        return None;
    }
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let value = |flag: &str| {
        tokens
            .iter()
            .position(|t| *t == flag)
            .and_then(|i| tokens.get(i + 1))
            .copied()
    };
    let dport = value("--dport")?.parse().ok()?;
    let (to_addr, to_port) = split_target(value("--to-destination")?);
    Some(Dnat {
        protocol: value("-p").unwrap_or("all").to_owned(),
        dport,
        to_addr,
        to_port,
        rule: line.to_owned(),
        from_other_hosts: true,
    })
}

/// A `... tcp dport 9091 ... dnat [ip] to 172.17.0.2:80` rule of `nft list ruleset`.
#[must_use]
pub fn parse_nft_dnat(line: &str) -> Option<Dnat> {
    if !line.contains("dnat ") {
        return None;
    }
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let dport_at = tokens.iter().position(|t| *t == "dport")?;
    let dport = tokens.get(dport_at + 1)?.parse().ok()?;
    let protocol = dport_at
        .checked_sub(1)
        .map_or("all", |i| tokens[i])
        .to_owned();
    let to_at = tokens.iter().position(|t| *t == "to")?;
    let (to_addr, to_port) = split_target(tokens.get(to_at + 1)?);
    Some(Dnat {
        protocol,
        dport,
        to_addr,
        to_port,
        rule: line.to_owned(),
        from_other_hosts: true,
    })
}

fn split_target(target: &str) -> (String, Option<u16>) {
    match target.rsplit_once(':') {
        Some((addr, port)) if !addr.contains(':') || addr.starts_with('[') => (
            addr.trim_matches(['[', ']']).to_owned(),
            port.split('-').next().and_then(|p| p.parse().ok()),
        ),
        _ => (target.to_owned(), None),
    }
}

/// Lines of sysctl configuration files that `wanted` picks (those that turn forwarding
/// off), in the order `systemd-sysctl` reads them (a later file wins).
fn sysctl_file_lines(wanted: fn(&str) -> bool) -> Vec<SysctlSource> {
    let mut files = vec![std::path::PathBuf::from("/etc/sysctl.conf")];
    for dir in [
        "/usr/lib/sysctl.d",
        "/lib/sysctl.d",
        "/run/sysctl.d",
        "/etc/sysctl.d",
    ] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            names.sort();
            files.extend(names);
        }
    }
    files
        .iter()
        .filter_map(|file| Some((file, std::fs::read_to_string(file).ok()?)))
        .flat_map(|(file, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, line)| wanted(line))
                .map(|(i, line)| SysctlSource {
                    file: file.display().to_string(),
                    line: i + 1,
                    text: line.trim().to_owned(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `net.ipv4.ip_forward = 0`, `net/ipv4/conf/all/forwarding=0` and the like.
#[must_use]
pub fn sets_forwarding_off(line: &str) -> bool {
    let line = line.trim();
    if line.starts_with('#') || line.starts_with(';') {
        return false;
    }
    let Some((key, value)) = line.split_once('=') else {
        return false;
    };
    let key = key.trim().trim_start_matches('-').replace('/', ".");
    value.trim() == "0"
        && (key == "net.ipv4.ip_forward"
            || (key.starts_with("net.ipv4.conf.") && key.ends_with(".forwarding")))
}

/// `net.ipv6.conf.all.forwarding = 0` and the like: the one IPv6 key that stops
/// forwarding (per-interface `forwarding` only sets router or host behaviour).
#[must_use]
pub fn sets_ipv6_forwarding_off(line: &str) -> bool {
    let line = line.trim();
    if line.starts_with('#') || line.starts_with(';') {
        return false;
    }
    let Some((key, value)) = line.split_once('=') else {
        return false;
    };
    let key = key.trim().trim_start_matches('-').replace('/', ".");
    value.trim() == "0" && key == "net.ipv6.conf.all.forwarding"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_lines_that_turn_ipv6_forwarding_off() {
        let cases = [
            ("plain", "net.ipv6.conf.all.forwarding = 0", true),
            ("slashes", "net/ipv6/conf/all/forwarding=0", true),
            (
                "ignore errors prefix",
                "-net.ipv6.conf.all.forwarding=0",
                true,
            ),
            (
                "per interface only sets router behaviour",
                "net.ipv6.conf.eth0.forwarding = 0",
                false,
            ),
            ("on", "net.ipv6.conf.all.forwarding = 1", false),
            ("comment", "# net.ipv6.conf.all.forwarding = 0", false),
            ("ipv4", "net.ipv4.ip_forward = 0", false),
        ];
        for (name, line, want) in cases {
            assert_eq!(sets_ipv6_forwarding_off(line), want, "case {name}");
        }
    }

    #[test]
    fn ipv6_counters_from_snmp6() {
        let text = "Ip6InReceives                   \t12\nIp6InNoRoutes \t3\nIp6InAddrErrors\t7\nIp6OutForwDatagrams  5\nIp6InTooBigErrors\t2\nIcmp6InMsgs 1\n";
        assert_eq!(
            ip6_counters(text),
            Ip6Counters {
                in_addr_errors: 7,
                in_no_routes: 3,
                out_forw_datagrams: 5,
                in_too_big_errors: 2,
            }
        );
        assert_eq!(ip6_counters(""), Ip6Counters::default());
    }

    #[test]
    fn source_nat_and_published_ports_by_family() {
        let v4 = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
                  [0:0] -A PREROUTING -p tcp -m tcp --dport 9091 -j DNAT --to-destination 172.31.231.2:80\n\
                  [0:0] -A POSTROUTING -s 172.31.231.0/24 ! -o br0 -j MASQUERADE\n\
                  COMMIT\n";
        let v6 = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
                  [0:0] -A PREROUTING -p tcp -m tcp --dport 9092 -j DNAT --to-destination [fd31:231::2]:80\n\
                  [0:0] -A PREROUTING -d ::1/128 -p tcp -m tcp --dport 9093 -j DNAT --to-destination [fd31:231::2]:80\n\
                  [0:0] -A POSTROUTING -s fd31:231::/64 ! -o br0 -j MASQUERADE\n\
                  COMMIT\n";
        let nft = "table ip6 nat6 {\n\tchain pre {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\ttcp dport 9094 dnat ip6 to [fd31:231::3]:80\n\t}\n}\ntable inet nat46 {\n\tchain post {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\toifname \"up0\" masquerade\n\t}\n}\n";
        let mut rules = parse_iptables_save("iptables-nft", v4).0;
        rules.extend(parse_iptables_save("ip6tables-nft", v6).0);
        rules.extend(parse_nft_ruleset(nft, &[]));
        let mut host = HostState::default();
        host.absorb_rules(rules);
        let ports = |family| {
            host.published_in(family)
                .map(|d| (d.dport, d.to_addr.clone(), d.to_port))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ports(IpFamily::V4),
            vec![(9091, "172.31.231.2".to_owned(), Some(80))]
        );
        assert_eq!(
            ports(IpFamily::V6),
            vec![
                (9092, "fd31:231::2".to_owned(), Some(80)),
                (9094, "fd31:231::3".to_owned(), Some(80)),
            ],
            "ip6tables and nft ip6 DNAT; the one bound to ::1 is not published"
        );
        assert_eq!(host.source_nat.len(), 2, "{:?}", host.source_nat);
        assert!(host.source_nat[0].contains("iptables-nft"));
        assert!(host.source_nat[1].contains("inet nat46"));
        assert_eq!(host.ipv6.source_nat.len(), 2, "{:?}", host.ipv6.source_nat);
        assert!(host.ipv6.source_nat[0].contains("ip6tables-nft"));
        assert!(host.ipv6.source_nat[1].contains("inet nat46"));
    }

    #[test]
    fn bridge_ports_and_their_bridge() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
4: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 5a:1c:e1:00:00:01 brd ff:ff:ff:ff:ff:ff
5: vh-ctr@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master br0 state UP mode DEFAULT group default qlen 1000\\    link/ether 5a:1c:e1:00:00:02 brd ff:ff:ff:ff:ff:ff link-netns ctr
";
        let masters = parse_masters(text);
        assert_eq!(masters.get("vh-ctr").map(String::as_str), Some("br0"));
        assert_eq!(masters.len(), 1, "{masters:?}");
    }

    #[test]
    fn dnat_rules_of_iptables() {
        let cases = [
            (
                "docker",
                "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 9091 -j DNAT --to-destination 172.17.0.2:80",
                Some(("tcp", 9091, "172.17.0.2", Some(80))),
            ),
            (
                "no port in target",
                "-A PREROUTING -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.5",
                Some(("udp", 53, "10.0.0.5", None)),
            ),
            ("masquerade", "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE", None),
            ("chain definition", "-N DOCKER", None),
        ];
        for (name, line, want) in cases {
            let got = parse_iptables_dnat(line);
            let got = got
                .as_ref()
                .map(|d| (d.protocol.as_str(), d.dport, d.to_addr.as_str(), d.to_port));
            assert_eq!(got, want, "case {name}");
        }
    }

    #[test]
    fn published_ports_from_both_tools() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n\
                    [0:0] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
                    [0:0] -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n\
                    [0:0] -A DOCKER ! -i br0 -p tcp -m tcp --dport 9091 -j DNAT --to-destination 172.31.231.2:80\n\
                    [0:0] -A DOCKER -d 127.0.0.1/32 ! -i br0 -p tcp -m tcp --dport 9092 -j DNAT --to-destination 172.31.231.2:80\n\
                    [0:0] -A OUTPUT -d 10.0.0.1/32 -p tcp -m tcp --dport 9093 -j DNAT --to-destination 172.31.231.2:80\n\
                    [0:0] -A PREROUTING -p tcp -m tcp --dport 9094 -j DNAT --to-destination 127.0.0.1:80\n\
                    COMMIT\n";
        let nft = "table ip dnat_dg {\n\tchain pre {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\ttcp dport 9095 counter packets 3 bytes 180 dnat to 172.31.231.2:80\n\t\tip daddr 127.0.0.1 tcp dport 9096 dnat to 172.31.231.2:80\n\t}\n}\n";
        let mut rules = parse_iptables_save("iptables-nft", save).0;
        rules.extend(parse_nft_ruleset(nft, &[]));
        let got: Vec<(u16, String, Option<u16>, bool)> = rules
            .iter()
            .filter_map(dnat_of)
            .map(|d| (d.dport, d.to_addr, d.to_port, d.from_other_hosts))
            .collect();
        let ctr = "172.31.231.2".to_owned();
        assert_eq!(
            got,
            vec![
                (9091, ctr.clone(), Some(80), true),
                (9092, ctr.clone(), Some(80), false),
                (9093, ctr.clone(), Some(80), false),
                (9094, "127.0.0.1".to_owned(), Some(80), false),
                (9095, ctr.clone(), Some(80), true),
                (9096, ctr, Some(80), false),
            ],
            "published to other hosts only from PREROUTING, not bound to or pointing at loopback"
        );
    }

    #[test]
    fn one_published_port_per_target_the_one_from_other_hosts_kept() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                    [0:0] -A OUTPUT -d 10.0.0.1/32 -p tcp -m tcp --dport 9091 -j DNAT --to-destination 172.31.231.2:80\n\
                    [0:0] -A PREROUTING -p tcp -m tcp --dport 9091 -j DNAT --to-destination 172.31.231.2:80\n\
                    COMMIT\n";
        let mut host = HostState::default();
        host.absorb_rules(parse_iptables_save("iptables-nft", save).0);
        assert_eq!(host.dnat.len(), 1, "{:?}", host.dnat);
        assert!(host.dnat[0].from_other_hosts, "{:?}", host.dnat);
        assert!(!host.docker_chains, "no Docker chain in filter");
    }

    #[test]
    fn own_addresses() {
        let fib = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.231.0.0\n        /24 link UNICAST\n     |-- 10.231.0.1\n        /32 host LOCAL\n     |-- 10.231.0.255\n        /32 link BROADCAST\nLocal:\n     |-- 10.231.0.1\n        /32 host LOCAL\n";
        let inet6 = "fe80000000000000a8c1abfffe000001 03 40 20 80  vh-ext\n";
        let got = local_addresses(fib, inet6);
        assert_eq!(
            got,
            vec![
                "10.231.0.1".parse::<IpAddr>().expect("ip"),
                "fe80::a8c1:abff:fe00:1".parse().expect("ip"),
            ]
        );
    }

    #[test]
    fn sysctl_lines_that_turn_forwarding_off() {
        let cases = [
            ("plain", "net.ipv4.ip_forward = 0", true),
            ("slashes", "net/ipv4/ip_forward=0", true),
            ("ignore errors prefix", "-net.ipv4.ip_forward=0", true),
            ("per interface", "net.ipv4.conf.eth0.forwarding = 0", true),
            ("on", "net.ipv4.ip_forward = 1", false),
            ("comment", "# net.ipv4.ip_forward = 0", false),
            ("ipv6", "net.ipv6.conf.all.forwarding = 0", false),
        ];
        for (name, line, want) in cases {
            assert_eq!(sets_forwarding_off(line), want, "case {name}");
        }
    }
}
