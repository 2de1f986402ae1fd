//! What the host's configuration says, read from the namespace dropgate runs in:
//! forwarding and rp_filter sysctls, br_netfilter, the FORWARD policy and Docker's chains
//! in iptables (nft and legacy) and nftables, published-port DNAT rules, bridges and
//! their subnets, the kernel's own IP counters, and which sysctl files turn forwarding off.
//!
//! Every reader tolerates a missing tool or file: what could not be read is recorded in
//! `unchecked` with the reason, and the verdict says so.

use std::{collections::BTreeMap, path::Path, process::Command};

use serde::Serialize;

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
}

/// One FORWARD-path policy or drop rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForwardBlock {
    /// `iptables-nft`, `iptables-legacy` or `nft`.
    pub tool: String,
    pub rule: String,
}

/// An interface's IPv4 settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub forwarding: bool,
    pub rp_filter: u8,
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

/// Everything read from the host, at one moment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostState {
    pub ip_forward: Option<bool>,
    pub rp_filter_all: u8,
    pub interfaces: Vec<Interface>,
    /// `None` when br_netfilter is not loaded.
    pub bridge_nf_call_iptables: Option<bool>,
    pub forward_blocks: Vec<ForwardBlock>,
    pub docker_chains: bool,
    pub dnat: Vec<Dnat>,
    pub bridges: Vec<BridgeSubnet>,
    pub forwarding_off_sources: Vec<SysctlSource>,
    pub counters: IpCounters,
    /// Checks that could not run, with why.
    pub unchecked: BTreeMap<String, String>,
}

fn sysctl(path: &str) -> Option<String> {
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
            counters: ip_counters(),
            forwarding_off_sources: forwarding_off_sources(),
            ..Self::default()
        };
        state.interfaces = interfaces();
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
        for (tool, binary) in [
            ("iptables-nft", "iptables-nft"),
            ("iptables-legacy", "iptables-legacy"),
        ] {
            match run(binary, &["-S", "FORWARD"]) {
                Ok(text) => self
                    .forward_blocks
                    .extend(iptables_forward_blocks(tool, &text)),
                Err(why) => {
                    self.unchecked.insert(format!("{tool} FORWARD"), why);
                    continue;
                }
            }
            if let Ok(text) = run(binary, &["-S"]) {
                self.docker_chains |= text.lines().any(|l| l.starts_with("-N DOCKER"));
            }
            match run(binary, &["-t", "nat", "-S"]) {
                Ok(text) => self
                    .dnat
                    .extend(text.lines().filter_map(parse_iptables_dnat)),
                Err(why) => {
                    self.unchecked.insert(format!("{tool} nat"), why);
                }
            }
        }
        match run("nft", &["list", "ruleset"]) {
            Ok(text) => {
                self.forward_blocks.extend(nft_forward_blocks(&text));
                self.dnat.extend(nft_dnat(&text));
            }
            Err(why) => {
                self.unchecked.insert("nftables".into(), why);
            }
        }
        // iptables-nft rules also appear in the nft ruleset: one entry per port and target.
        self.dnat.sort();
        self.dnat.dedup_by(|a, b| {
            (&a.protocol, a.dport, &a.to_addr, a.to_port)
                == (&b.protocol, b.dport, &b.to_addr, b.to_port)
        });
    }

    /// The interface named `name`.
    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name == name)
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
            name,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
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

/// `-P FORWARD DROP` and `-A FORWARD ... -j DROP|REJECT` lines.
#[must_use]
pub fn iptables_forward_blocks(tool: &str, text: &str) -> Vec<ForwardBlock> {
    text.lines()
        .filter(|l| {
            *l == "-P FORWARD DROP"
                || (l.starts_with("-A FORWARD")
                    && (l.ends_with("-j DROP") || l.contains("-j REJECT")))
        })
        .map(|l| ForwardBlock {
            tool: tool.into(),
            rule: l.to_owned(),
        })
        .collect()
}

/// Chains hooked on `forward` with `policy drop`, and `drop`/`reject` rules inside them.
#[must_use]
pub fn nft_forward_blocks(text: &str) -> Vec<ForwardBlock> {
    let mut out = Vec::new();
    let mut table = String::new();
    let mut in_forward = false;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("table ") {
            rest.trim_end_matches(" {").clone_into(&mut table);
        } else if line.starts_with("chain ") {
            in_forward = false;
        } else if line.starts_with("type filter hook forward") {
            in_forward = true;
            if line.contains("policy drop") {
                out.push(ForwardBlock {
                    tool: "nft".into(),
                    rule: format!("table {table}: {line}"),
                });
            }
        } else if in_forward
            && (line.ends_with(" drop") || line == "drop" || line.contains(" reject"))
        {
            out.push(ForwardBlock {
                tool: "nft".into(),
                rule: format!("table {table}: {line}"),
            });
        }
    }
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
    })
}

/// `... tcp dport 9091 ... dnat [ip] to 172.17.0.2:80` rules of `nft list ruleset`.
#[must_use]
pub fn nft_dnat(text: &str) -> Vec<Dnat> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.contains("dnat "))
        .filter_map(|line| {
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
            })
        })
        .collect()
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

/// Lines of sysctl configuration files that turn IPv4 forwarding off, in the order
/// `systemd-sysctl` reads them (a later file wins).
fn forwarding_off_sources() -> Vec<SysctlSource> {
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
                .filter(|(_, line)| sets_forwarding_off(line))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn nft_ruleset_blocks_and_dnat() {
        let ruleset = "table ip nat {\n\tchain PREROUTING {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\ttcp dport 9091 counter packets 3 bytes 180 dnat to 172.31.231.2:80\n\t}\n}\n\
                       table ip filter {\n\tchain FORWARD {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n\
                       table inet dg {\n\tchain forward_dg {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\ttcp dport 80 drop\n\t}\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 22 drop\n\t}\n}\n";
        let blocks: Vec<String> = nft_forward_blocks(ruleset)
            .into_iter()
            .map(|b| b.rule)
            .collect();
        assert_eq!(
            blocks,
            vec![
                "table ip filter: type filter hook forward priority filter; policy drop;"
                    .to_owned(),
                "table inet dg: tcp dport 80 drop".to_owned(),
            ],
            "the input chain's drop rule is not a forward block"
        );
        let dnat = nft_dnat(ruleset);
        assert_eq!(dnat.len(), 1);
        assert_eq!(
            (
                dnat[0].protocol.as_str(),
                dnat[0].dport,
                dnat[0].to_addr.as_str(),
                dnat[0].to_port
            ),
            ("tcp", 9091, "172.31.231.2", Some(80))
        );
    }

    #[test]
    fn iptables_forward_policy() {
        let text = "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n-A FORWARD -o docker0 -j DROP\n";
        let rules: Vec<String> = iptables_forward_blocks("iptables-nft", text)
            .into_iter()
            .map(|b| b.rule)
            .collect();
        assert_eq!(
            rules,
            vec!["-P FORWARD DROP", "-A FORWARD -o docker0 -j DROP"]
        );
        assert!(iptables_forward_blocks("iptables-nft", "-P FORWARD ACCEPT\n").is_empty());
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
