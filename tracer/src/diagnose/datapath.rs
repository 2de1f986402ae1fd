//! The parts of the host's data path that decide whether a forwarded packet can leave:
//! link MTUs, the neighbour (ARP/ND) table, the routes, the kernel's fragmentation
//! counter and conntrack's table and statistics.
//!
//! These explain the drops that are not about forwarding or the firewall: a packet too
//! big for the egress link, a next hop nobody answers for, no route at all, a full or
//! confused connection tracker. Reading runs `ip` and reads `/proc`; parsing is pure and
//! table-tested, and the lookups the findings need (which link a destination leaves
//! by, what the neighbour table says of it) live here too.

use std::{net::IpAddr, path::Path, process::Command};

use serde::Serialize;

use crate::enrich::Subnet;

/// One interface's MTU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    pub name: String,
    pub mtu: u32,
}

/// One entry of the neighbour table (`ip neigh`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Neighbour {
    pub addr: IpAddr,
    pub dev: String,
    /// `REACHABLE`, `STALE`, `FAILED`, `INCOMPLETE`, ...
    pub state: String,
}

/// One route of the main table (`ip route`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub dest: Subnet,
    pub dev: Option<String>,
    pub via: Option<IpAddr>,
    /// A route's own `mtu` attribute, which wins over the link's.
    pub mtu: Option<u32>,
    /// The route as `ip route` prints it.
    pub text: String,
}

/// Conntrack's table size and statistics (summed over CPUs), this namespace's view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Conntrack {
    /// `net.netfilter.nf_conntrack_count`.
    pub count: u64,
    /// `net.netfilter.nf_conntrack_max` (machine-wide).
    pub max: u64,
    /// Packets conntrack could not place in any connection.
    pub invalid: u64,
    /// New connections dropped because the table was full.
    pub drop: u64,
    /// Entries evicted early to make room.
    pub early_drop: u64,
    pub insert_failed: u64,
}

/// Everything of the data path read at one moment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Datapath {
    pub links: Vec<Link>,
    pub neighbours: Vec<Neighbour>,
    pub routes: Vec<Route>,
    /// `/proc/net/snmp` Ip FragFails: packets too big for the egress link with DF set.
    pub frag_fails: u64,
    /// `/proc/net/netstat` IpExt InNoRoutes: packets received that no route covers.
    pub in_no_routes: u64,
    /// `None` when conntrack is not loaded in this namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<Conntrack>,
}

impl Datapath {
    /// Reads what it can; a missing tool or file leaves its part empty.
    #[must_use]
    pub fn read() -> Self {
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let mut routes = parse_routes(&ip(&["-o", "-4", "route", "show"]));
        routes.extend(parse_routes(&ip(&["-o", "-6", "route", "show"])));
        Self {
            links: parse_links(&ip(&["-o", "link", "show"])),
            neighbours: parse_neighbours(&ip(&["neigh", "show"])),
            routes,
            frag_fails: snmp_field(
                &std::fs::read_to_string("/proc/net/snmp").unwrap_or_default(),
                "Ip",
                "FragFails",
            )
            .unwrap_or(0),
            in_no_routes: snmp_field(
                &std::fs::read_to_string("/proc/net/netstat").unwrap_or_default(),
                "IpExt",
                "InNoRoutes",
            )
            .unwrap_or(0),
            conntrack: read_conntrack(Path::new("/proc/net")),
        }
    }

    /// The MTU of interface `name`.
    #[must_use]
    pub fn mtu(&self, name: &str) -> Option<u32> {
        self.links.iter().find(|l| l.name == name).map(|l| l.mtu)
    }

    /// The route `addr` takes: the longest matching prefix of the main table.
    #[must_use]
    pub fn route_to(&self, addr: IpAddr) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.dest.contains(addr))
            .max_by_key(|r| r.dest.prefix())
    }

    /// What the neighbour table says of `addr`.
    #[must_use]
    pub fn neighbour(&self, addr: IpAddr) -> Option<&Neighbour> {
        self.neighbours.iter().find(|n| n.addr == addr)
    }
}

/// `field` of `group` in `/proc/net/snmp` or `/proc/net/netstat` text (a header line, then a value line).
#[must_use]
pub fn snmp_field(text: &str, group: &str, field: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (header, values) = (lines.next()?, lines.next()?);
    let index = header.split_whitespace().position(|h| h == field)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// `ip -o link` lines: `3: br0: <...> mtu 1280 qdisc ...`.
#[must_use]
pub fn parse_links(text: &str) -> Vec<Link> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.nth(1)?.trim_end_matches(':');
            let name = name.split('@').next()?;
            let mut rest = words.skip_while(|w| *w != "mtu");
            rest.next()?;
            Some(Link {
                name: name.to_owned(),
                mtu: rest.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// `ip neigh` lines: `172.31.231.9 dev br0  FAILED`, `10.0.0.2 dev eth0 lladdr ... REACHABLE`.
#[must_use]
pub fn parse_neighbours(text: &str) -> Vec<Neighbour> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let addr = words.first()?.parse().ok()?;
            let dev = words.windows(2).find(|w| w[0] == "dev")?[1].to_owned();
            Some(Neighbour {
                addr,
                dev,
                state: (*words.last()?).to_owned(),
            })
        })
        .collect()
}

/// `ip -o route` lines: `default via 10.0.0.1 dev eth0`, `10.9.0.0/16 dev br0 mtu lock 1280`.
/// Routes of other types (`unreachable`, `blackhole`, `prohibit`) are kept with no
/// device: they decide too.
#[must_use]
pub fn parse_routes(text: &str) -> Vec<Route> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let first = words.first()?;
            let dest_word = if matches!(*first, "unreachable" | "blackhole" | "prohibit" | "throw")
            {
                words.get(1)?
            } else {
                first
            };
            let dest = match *dest_word {
                "default" if line.contains(':') && !line.contains('.') => Subnet::parse("::/0"),
                "default" => Subnet::parse("0.0.0.0/0"),
                d if d.contains('/') => Subnet::parse(d),
                d => {
                    let addr: IpAddr = d.parse().ok()?;
                    Subnet::new(addr, if addr.is_ipv4() { 32 } else { 128 })
                }
            }?;
            let after = |key: &str| words.windows(2).find(|w| w[0] == key).map(|w| w[1]);
            let mtu = words
                .iter()
                .position(|w| *w == "mtu")
                .and_then(|i| words[i + 1..].iter().find(|w| **w != "lock"))
                .and_then(|m| m.parse().ok());
            Some(Route {
                dest,
                dev: after("dev").map(str::to_owned),
                via: after("via").and_then(|v| v.parse().ok()),
                mtu,
                text: words.join(" "),
            })
        })
        .collect()
}

/// Sums a column of `/proc/net/stat/nf_conntrack` (one hexadecimal row per CPU).
#[must_use]
pub fn conntrack_stat(text: &str, column: &str) -> Option<u64> {
    let mut lines = text.lines();
    let index = lines.next()?.split_whitespace().position(|h| h == column)?;
    Some(
        lines
            .filter_map(|row| row.split_whitespace().nth(index))
            .filter_map(|v| u64::from_str_radix(v, 16).ok())
            .sum(),
    )
}

/// Conntrack's state as the namespace of `proc_net` (`/proc/net`, or
/// `/proc/thread-self/net` for a thread in a namespace of its own) and of the calling
/// thread (whose namespace the `/proc/sys/net` sysctls follow) sees it.
#[must_use]
pub fn read_conntrack(proc_net: &Path) -> Option<Conntrack> {
    let sysctl = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let count = sysctl("nf_conntrack_count")?;
    let stat = std::fs::read_to_string(proc_net.join("stat/nf_conntrack")).unwrap_or_default();
    let column = |c: &str| conntrack_stat(&stat, c).unwrap_or(0);
    Some(Conntrack {
        count,
        max: sysctl("nf_conntrack_max").unwrap_or(0),
        invalid: column("invalid"),
        drop: column("drop"),
        early_drop: column("early_drop"),
        insert_failed: column("insert_failed"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_of_snmp_and_netstat() {
        let snmp = "Ip: Forwarding DefaultTTL FragFails\nIp: 1 64 3\n";
        let netstat =
            "TcpExt: SyncookiesSent\nTcpExt: 0\nIpExt: InNoRoutes InTruncatedPkts\nIpExt: 2 0\n";
        assert_eq!(snmp_field(snmp, "Ip", "FragFails"), Some(3));
        assert_eq!(snmp_field(netstat, "IpExt", "InNoRoutes"), Some(2));
        assert_eq!(
            snmp_field(snmp, "Ip", "InNoRoutes"),
            None,
            "not an Ip field"
        );
    }

    #[test]
    fn links_and_their_mtu() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN\n\
                    3: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1280 qdisc noqueue state UP\n\
                    5: vh-ctr@if2: <BROADCAST,UP> mtu 1500 qdisc noqueue master br0 state UP\n";
        let got: Vec<(String, u32)> = parse_links(text)
            .into_iter()
            .map(|l| (l.name, l.mtu))
            .collect();
        assert_eq!(
            got,
            vec![
                ("lo".into(), 65536),
                ("br0".into(), 1280),
                ("vh-ctr".into(), 1500)
            ]
        );
    }

    #[test]
    fn neighbour_states() {
        let text = "172.31.231.9 dev br0  FAILED\n\
                    10.231.0.2 dev vh-ext lladdr 02:00:00:00:00:02 REACHABLE\n\
                    fe80::1 dev vh-ext lladdr 02:00:00:00:00:02 router STALE\n";
        let got: Vec<(String, String, String)> = parse_neighbours(text)
            .into_iter()
            .map(|n| (n.addr.to_string(), n.dev, n.state))
            .collect();
        assert_eq!(
            got,
            vec![
                ("172.31.231.9".into(), "br0".into(), "FAILED".into()),
                ("10.231.0.2".into(), "vh-ext".into(), "REACHABLE".into()),
                ("fe80::1".into(), "vh-ext".into(), "STALE".into()),
            ]
        );
    }

    #[test]
    fn routes_and_the_longest_prefix() {
        let text = "default via 10.231.0.254 dev vh-ext\n\
                    10.231.0.0/24 dev vh-ext proto kernel scope link src 10.231.0.1\n\
                    10.99.0.0/16 via 10.231.0.3 dev vh-ext mtu lock 1400\n\
                    unreachable 10.99.7.0/24\n\
                    fd29::/64 dev br0 proto kernel metric 256 pref medium\n";
        let data = Datapath {
            routes: parse_routes(text),
            ..Datapath::default()
        };
        let cases = [
            ("default", "192.0.2.1", Some("vh-ext"), None, "default via"),
            (
                "connected",
                "10.231.0.7",
                Some("vh-ext"),
                None,
                "10.231.0.0/24",
            ),
            (
                "route mtu",
                "10.99.1.1",
                Some("vh-ext"),
                Some(1400),
                "10.99.0.0/16",
            ),
            (
                "unreachable wins by prefix",
                "10.99.7.1",
                None,
                None,
                "unreachable",
            ),
            ("ipv6", "fd29::5", Some("br0"), None, "fd29::/64"),
        ];
        for (name, addr, dev, mtu, text) in cases {
            let route = data
                .route_to(addr.parse().expect("an address"))
                .unwrap_or_else(|| panic!("case {name}: a route"));
            assert_eq!(route.dev.as_deref(), dev, "case {name}");
            assert_eq!(route.mtu, mtu, "case {name}");
            assert!(route.text.starts_with(text), "case {name}: {}", route.text);
        }
        let v4_only = Datapath {
            routes: parse_routes("10.0.0.0/8 dev eth0\n"),
            ..Datapath::default()
        };
        assert!(v4_only.route_to("fd00::1".parse().expect("ip")).is_none());
    }

    #[test]
    fn conntrack_statistics_summed_over_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n\
                    00000002  00000000 00000000 00000000 00000001 00000000 00000000 00000000 00000000 00000000 0000000a 00000000\n\
                    00000002  00000000 00000000 00000000 00000003 00000000 00000000 00000000 00000000 00000000 00000006 00000000\n";
        assert_eq!(conntrack_stat(text, "invalid"), Some(4));
        assert_eq!(conntrack_stat(text, "drop"), Some(16));
        assert_eq!(conntrack_stat(text, "nope"), None);
    }
}
