//! `diagnose --probe`: reproduce a connection from another host without another host.
//!
//! A short-lived network namespace is attached to the host by a veth pair and set up so
//! that its packets enter the host the way outside traffic does: through an interface
//! with the uplink's forwarding and reverse-path settings, from an address that is not
//! the host's own, to the uplink's address. A real connection attempt (TCP SYN, or a UDP
//! datagram; an HTTP GET when the port answers) then takes the same path as a client's
//! in the other data centre — DNAT of the published port, the forwarding decision, the
//! FORWARD chain — and the live trace says where it died.
//!
//! Nothing outlives the probe: the namespace is never named (no `/run/netns` bind
//! mount), only held by a file descriptor of this process, so it — and the veth pair
//! with its addresses and routes — is freed by the kernel as soon as the process ends,
//! also when it is killed. Links of a probe whose process is gone are still removed at
//! the next start, in case a kernel is slow to free them. The firewall is never touched.

use std::{
    fmt,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use futures_util::TryStreamExt as _;
use serde::Serialize;

use super::host::HostState;
use crate::{enrich::Destination, samples::DropEvent};

/// Prefix of the probe's link names: `dgp<pid>h` on the host, `dgp<pid>p` inside.
const LINK_PREFIX: &str = "dgp";
/// How long a TCP connection attempt may take (the SYN is sent again after 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait for a UDP answer or an HTTP status line.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What to probe, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeSpec {
    /// Every published port found in the DNAT rules.
    Published,
    /// One port on the uplink's address(es).
    Port { port: u16, protocol: Protocol },
    /// One address and port.
    Address {
        addr: IpAddr,
        port: u16,
        protocol: Protocol,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

impl std::str::FromStr for ProbeSpec {
    type Err = String;

    /// `published`, `PORT[/tcp|/udp]`, `ADDR:PORT[/proto]` or `[IPV6]:PORT[/proto]`.
    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() || text == "published" {
            return Ok(Self::Published);
        }
        let (rest, protocol) = match text.rsplit_once('/') {
            Some((rest, "tcp")) => (rest, Protocol::Tcp),
            Some((rest, "udp")) => (rest, Protocol::Udp),
            Some((_, other)) => {
                return Err(format!(
                    "probe {text:?}: protocol {other:?} is neither tcp nor udp, e.g. 9091/tcp or 53/udp"
                ))
            }
            None => (text, Protocol::Tcp),
        };
        let bad = || {
            format!("probe {text:?}: expected PORT[/tcp|/udp], ADDR:PORT[/tcp|/udp] or [IPV6]:PORT, e.g. 9091 or 10.0.0.5:9091/tcp")
        };
        if let Ok(port) = rest.parse::<u16>() {
            return if port == 0 {
                Err(bad())
            } else {
                Ok(Self::Port { port, protocol })
            };
        }
        let socket: SocketAddr = rest.parse().map_err(|_| bad())?;
        if socket.port() == 0 {
            return Err(bad());
        }
        Ok(Self::Address {
            addr: socket.ip(),
            port: socket.port(),
            protocol,
        })
    }
}

/// One connection attempt to make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Where a DNAT rule sends it (`172.18.0.2:80`), when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_to: Option<String>,
}

impl Target {
    fn endpoint(&self) -> String {
        match self.addr {
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
            IpAddr::V4(a) => format!("{a}:{}", self.port),
        }
    }
}

/// What happened to one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// TCP connected (or UDP answered); the HTTP status if the port speaks HTTP.
    Reachable {
        #[serde(skip_serializing_if = "Option::is_none")]
        http_status: Option<u16>,
        millis: u64,
    },
    /// Something answered that the port is closed (TCP RST, ICMP port unreachable):
    /// the path works, nothing listens. Not reachable: the service is not there.
    Refused,
    /// No answer within the timeout.
    NoAnswer,
}

/// A drop of the probe's own packets, from the live trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeDrop {
    pub reason: String,
    pub location: String,
    pub interface: String,
    pub packets: u64,
}

/// One probe's result.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    pub target: Target,
    /// The probe's source (inside its namespace) and source port.
    pub source: String,
    /// The host-side interface the probe's packets came in on.
    pub ingress: String,
    /// The uplink whose settings the ingress copied.
    pub copied_from: String,
    pub outcome: Outcome,
    /// The probe's packets the kernel dropped, by where (empty if none were traced).
    pub drops: Vec<ProbeDrop>,
    /// Who was behind the destination its dropped packets had (bridge, Docker network,
    /// container, compose service), as the trace named it.
    #[serde(skip_serializing_if = "Destination::is_empty")]
    pub behind: Destination,
}

impl ProbeResult {
    #[must_use]
    pub fn reachable(&self) -> bool {
        // A packet lost on the way and sent again still got there.
        matches!(self.outcome, Outcome::Reachable { .. })
    }

    /// The probe command that checks this target again after a fix.
    #[must_use]
    pub fn again(&self) -> String {
        format!(
            "dropgate diagnose --probe {}/{}",
            self.target.endpoint(),
            self.target.protocol
        )
    }

    /// Report lines for people.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        let sent = match self.target.protocol {
            Protocol::Tcp => "TCP SYN",
            Protocol::Udp => "UDP datagram",
        };
        let behind: Vec<String> = [
            self.target
                .published_to
                .as_ref()
                .map(|to| format!("published -> {to}")),
            self.behind
                .container
                .as_ref()
                .map(|c| format!("container {c}")),
            self.behind
                .service
                .as_ref()
                .map(|s| format!("compose service {s}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        let published = if behind.is_empty() {
            String::new()
        } else {
            format!(" ({})", behind.join(", "))
        };
        let happened = match &self.outcome {
            Outcome::Reachable {
                http_status,
                millis,
            } => {
                let http = http_status
                    .map(|s| format!(", HTTP GET / answered {s}"))
                    .unwrap_or_default();
                format!("reachable: answered in {millis} ms{http}")
            }
            Outcome::Refused => "REFUSED: the path works, but nothing listens behind it".to_owned(),
            Outcome::NoAnswer => "UNREACHABLE: no answer".to_owned(),
        };
        let mut lines = vec![format!(
            "probe {}/{}{published}: {sent} from {} entering on {} (settings of {}): {happened}",
            self.target.endpoint(),
            self.target.protocol,
            self.source,
            self.ingress,
            self.copied_from
        )];
        for d in &self.drops {
            lines.push(format!(
                "  dropped at {} ({}) on {}: {} of its packets seen",
                d.location, d.reason, d.interface, d.packets
            ));
        }
        if !self.reachable() {
            if self.drops.is_empty() {
                lines.push(
                    "  no drop of it traced: it died where the kernel does not free packets as drops (e.g. a firewall REJECT elsewhere, or the service itself)".to_owned(),
                );
            }
            lines.push(format!(
                "  after the fix, `{}` answers: reachable",
                self.again()
            ));
        }
        lines
    }
}

/// The interface outside traffic comes in on (the one holding the default route) and
/// its addresses.
#[derive(Clone, Debug)]
struct Uplink {
    name: String,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
}

/// The default route's interface per family, from `/proc/net/route` and
/// `/proc/net/ipv6_route` (of this namespace).
fn default_route_interfaces(route: &str, ipv6_route: &str) -> (Option<String>, Option<String>) {
    let v4 = route.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
    });
    let v6 = ipv6_route.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() == 10 && f[0].chars().all(|c| c == '0') && f[1] == "00" && f[9] != "lo")
            .then(|| f[9].to_owned())
    });
    (v4, v6)
}

/// Runs the probes `specs` asks for. `samples` returns the trace's recent samples (the
/// flow's drops are picked out of them); `host` is what diagnose read. The link is
/// returned for the caller to remove once it has read the drop counts (they name it).
///
/// # Errors
/// Where the probe cannot be set up: no privileges, no uplink, netlink refusing.
pub async fn run(
    specs: &[ProbeSpec],
    host: &HostState,
    samples: impl Fn() -> Vec<DropEvent>,
) -> anyhow::Result<(Vec<ProbeResult>, ProbeLink)> {
    remove_stale_links().await;
    let given = specs.iter().find_map(|spec| match spec {
        ProbeSpec::Address { addr, .. } => Some(*addr),
        _ => None,
    });
    let uplink = uplink(given).await?;
    let targets = targets(specs, host, &uplink)?;
    if targets.is_empty() {
        bail!("nothing to probe: no published port found in the DNAT rules; name one with --probe PORT or --probe ADDR:PORT");
    }
    let link = ProbeLink::create(&uplink)
        .await
        .context("setting up the probe's namespace (needs CAP_NET_ADMIN and CAP_SYS_ADMIN)")?;
    let mut results = Vec::new();
    for target in targets {
        let source_addr = match target.addr {
            IpAddr::V4(_) => IpAddr::V4(link.v4.1),
            IpAddr::V6(_) => match link.v6 {
                Some((_, inside)) => IpAddr::V6(inside),
                None => continue,
            },
        };
        let ns = link
            .namespace
            .try_clone()
            .context("duplicating the namespace handle")?;
        let attempt = target.clone();
        let (source_port, outcome) =
            tokio::task::spawn_blocking(move || attempt_in(&ns, source_addr, &attempt))
                .await
                .context("the probe thread stopped")??;
        let drops = settled_drops(&samples, source_addr, source_port, &outcome).await;
        let behind = flow_samples(&samples(), source_addr, source_port)
            .find(|e| !e.target.is_empty())
            .map(|e| e.target.clone())
            .unwrap_or_default();
        results.push(ProbeResult {
            source: SocketAddr::new(source_addr, source_port).to_string(),
            ingress: link.host_name.clone(),
            copied_from: uplink.name.clone(),
            target,
            outcome,
            drops,
            behind,
        });
    }
    Ok((results, link))
}

/// The flow's traced drops once they have stopped coming in. Samples are named in user
/// space before they are published, which on a busy host with many namespaces can take
/// seconds; an attempt that got no answer waits up to 6 s for its first drop.
async fn settled_drops(
    samples: &impl Fn() -> Vec<DropEvent>,
    source: IpAddr,
    port: u16,
    outcome: &Outcome,
) -> Vec<ProbeDrop> {
    let patience = if matches!(outcome, Outcome::NoAnswer) {
        Duration::from_secs(6)
    } else {
        Duration::from_millis(500)
    };
    let started = Instant::now();
    let mut last: Vec<ProbeDrop> = Vec::new();
    let mut unchanged_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = flow_drops(&samples(), source, port);
        if now != last {
            last = now;
            unchanged_since = Instant::now();
        }
        let quiet = unchanged_since.elapsed() >= Duration::from_millis(400);
        if (quiet && !last.is_empty()) || started.elapsed() >= patience {
            if last.is_empty() && matches!(outcome, Outcome::NoAnswer) {
                // Most often: the kernel's sample budget was spent on a flood of drops
                // elsewhere (the counts stay exact; only the flow is not named).
                let recent = samples();
                tracing::warn!(
                    recent = recent.len(),
                    last = ?recent.last().map(DropEvent::line),
                    "no traced drop of the probe's flow {source} port {port}"
                );
            }
            return last;
        }
    }
}

/// The targets of `specs` on this host.
fn targets(specs: &[ProbeSpec], host: &HostState, uplink: &Uplink) -> anyhow::Result<Vec<Target>> {
    let own: Vec<IpAddr> = [uplink.v4.map(IpAddr::V4), uplink.v6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
        .collect();
    let published_to = |port: u16, protocol: Protocol, addr: IpAddr| {
        host.dnat
            .iter()
            .find(|d| {
                d.dport == port
                    && d.protocol == protocol.to_string()
                    && d.to_addr
                        .parse::<IpAddr>()
                        .is_ok_and(|to| to.is_ipv6() == addr.is_ipv6())
            })
            .map(|d| match d.to_port {
                Some(p) if d.to_addr.contains(':') => format!("[{}]:{p}", d.to_addr),
                Some(p) => format!("{}:{p}", d.to_addr),
                None => d.to_addr.clone(),
            })
    };
    let mut out: Vec<Target> = Vec::new();
    let mut add = |addr: IpAddr, port: u16, protocol: Protocol| {
        let target = Target {
            addr,
            port,
            protocol,
            published_to: published_to(port, protocol, addr),
        };
        if !out.contains(&target) {
            out.push(target);
        }
    };
    for spec in specs {
        match spec {
            ProbeSpec::Published => {
                for d in host.published() {
                    let protocol = if d.protocol == "udp" {
                        Protocol::Udp
                    } else {
                        Protocol::Tcp
                    };
                    let family_v6 = d.to_addr.contains(':');
                    for addr in own.iter().filter(|a| a.is_ipv6() == family_v6) {
                        add(*addr, d.dport, protocol);
                    }
                }
            }
            ProbeSpec::Port { port, protocol } => {
                if own.is_empty() {
                    bail!(
                        "the uplink {} has no address to probe; use --probe ADDR:PORT",
                        uplink.name
                    );
                }
                for addr in &own {
                    add(*addr, *port, *protocol);
                }
            }
            ProbeSpec::Address {
                addr,
                port,
                protocol,
            } => add(*addr, *port, *protocol),
        }
    }
    Ok(out)
}

/// The interface outside traffic comes in on: the one holding `holding` (an address
/// the probe was given) if it is local, else the default route's (IPv4 first); with
/// its first IPv4 and global IPv6 address.
async fn uplink(holding: Option<IpAddr>) -> anyhow::Result<Uplink> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let (connection, handle, _) = rtnetlink::new_connection().context("netlink")?;
    let task = tokio::spawn(connection);
    let result = async {
        let mut addresses: Vec<(u32, IpAddr)> = Vec::new();
        let mut dump = handle.address().get().execute();
        while let Some(message) = dump.try_next().await? {
            for attr in &message.attributes {
                if let netlink_packet_route::address::AddressAttribute::Address(addr) = attr {
                    addresses.push((message.header.index, *addr));
                }
            }
        }
        let by_address = holding.and_then(|want| {
            addresses.iter().find(|(_, a)| *a == want).map(|(index, _)| *index)
        });
        let index = if let Some(index) = by_address {
            index
        } else {
            let (v4_dev, v6_dev) =
                default_route_interfaces(&read("/proc/net/route"), &read("/proc/net/ipv6_route"));
            let Some(name) = v4_dev.or(v6_dev) else {
                bail!("no default route here, so no uplink to enter like outside traffic; name an address of this host with --probe ADDR:PORT (the interface holding it is taken as the uplink)");
            };
            index_of(&handle, &name).await?
        };
        let name = handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await?
            .and_then(|link| {
                link.attributes.into_iter().find_map(|a| match a {
                    netlink_packet_route::link::LinkAttribute::IfName(name) => Some(name),
                    _ => None,
                })
            })
            .with_context(|| format!("the uplink (index {index}) has no name"))?;
        let of_uplink = || addresses.iter().filter(|(i, _)| *i == index).map(|(_, a)| *a);
        let v4 = of_uplink().find_map(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        });
        let v6 = of_uplink().find_map(|a| match a {
            IpAddr::V6(a) if (a.segments()[0] & 0xffc0) != 0xfe80 => Some(a),
            _ => None,
        });
        anyhow::Ok(Uplink { name, v4, v6 })
    }
    .await;
    task.abort();
    result
}

/// The namespace and veth pair of one diagnose run.
pub struct ProbeLink {
    /// Holds the namespace alive; closing it (or the process ending) frees it.
    namespace: OwnedFd,
    host_name: String,
    /// Host-side and inside addresses.
    v4: (Ipv4Addr, Ipv4Addr),
    v6: Option<(Ipv6Addr, Ipv6Addr)>,
}

/// The probe's addresses, from the benchmarking range 198.18.0.0/15 (RFC 2544), which
/// no real host or container uses, and a ULA; one /30 (/126) per process.
fn probe_addresses(pid: u32) -> ((Ipv4Addr, Ipv4Addr), (Ipv6Addr, Ipv6Addr)) {
    let block = pid % (1 << 15);
    #[allow(clippy::cast_possible_truncation)]
    let (hi, lo) = ((block >> 6) as u8, ((block & 63) * 4) as u8);
    let v4 = (
        Ipv4Addr::new(198, 18 + (hi >> 7), hi & 0x7f, lo + 1),
        Ipv4Addr::new(198, 18 + (hi >> 7), hi & 0x7f, lo + 2),
    );
    #[allow(clippy::cast_possible_truncation)]
    let (a, b) = ((pid >> 16) as u16, pid as u16);
    let v6 = (
        Ipv6Addr::new(0xfd64, 0x726f, 0x7000, a, b, 0, 0, 1),
        Ipv6Addr::new(0xfd64, 0x726f, 0x7000, a, b, 0, 0, 2),
    );
    (v4, v6)
}

impl ProbeLink {
    async fn create(uplink: &Uplink) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let host_name = format!("{LINK_PREFIX}{pid}h");
        let inside_name = format!("{LINK_PREFIX}{pid}p");
        let (v4, v6) = probe_addresses(pid);
        let with_v6 = uplink.v6.is_some();

        // The namespace: a thread of its own unshares, hands back a descriptor of it and
        // a netlink connection made inside it (a socket keeps the namespace it was
        // created in), and ends, so no thread of the process stays in it.
        let runtime = tokio::runtime::Handle::current();
        let (namespace, (inside_connection, inside)) = tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || {
                let _runtime = runtime.enter();
                // SAFETY: unshare changes only this thread's namespace; the thread ends
                // right after.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let fd = std::fs::File::open("/proc/thread-self/ns/net").map(OwnedFd::from)?;
                let connection = rtnetlink::new_connection().map(|(c, h, _)| (c, h))?;
                Ok((fd, connection))
            })
            .join()
            .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
        })
        .await??;
        let inside_task = tokio::spawn(inside_connection);
        let (connection, host, _) = rtnetlink::new_connection()?;
        let host_task = tokio::spawn(connection);
        let link = Self {
            namespace,
            host_name: host_name.clone(),
            v4,
            v6: with_v6.then_some(v6),
        };
        let setup = async {
            host.link()
                .add(rtnetlink::LinkVeth::new(&host_name, &inside_name).build())
                .execute()
                .await?;
            host.link()
                .set(
                    rtnetlink::LinkUnspec::new_with_name(&inside_name)
                        .setns_by_fd(link.namespace.as_raw_fd())
                        .build(),
                )
                .execute()
                .await?;
            copy_settings(&uplink.name, &host_name)?;
            let host_index = index_of(&host, &host_name).await?;
            add_address(&host, host_index, IpAddr::V4(v4.0), 30).await?;
            if with_v6 {
                add_address(&host, host_index, IpAddr::V6(v6.0), 126).await?;
            }
            host.link()
                .set(
                    rtnetlink::LinkUnspec::new_with_index(host_index)
                        .up()
                        .build(),
                )
                .execute()
                .await?;

            let inside_index =
                configure_inside(&inside, &inside_name, v4, with_v6.then_some(v6)).await?;
            // A packet sent before both ends report carrier is lost without a trace
            // (the first SYN, answered a second late).
            for (handle, index) in [(&host, host_index), (&inside, inside_index)] {
                wait_until_up(handle, index).await?;
            }
            anyhow::Ok(())
        }
        .await;
        inside_task.abort();
        host_task.abort();
        if let Err(err) = setup {
            link.remove().await;
            return Err(err);
        }
        Ok(link)
    }

    /// Removes the veth now (the namespace goes with the descriptor).
    pub async fn remove(self) {
        delete_link(&self.host_name).await;
        drop(self.namespace);
    }
}

/// Inside the probe's namespace: loopback and the veth up, the addresses, and default
/// routes through the host side. Returns the veth's index.
async fn configure_inside(
    inside: &rtnetlink::Handle,
    name: &str,
    v4: (Ipv4Addr, Ipv4Addr),
    v6: Option<(Ipv6Addr, Ipv6Addr)>,
) -> anyhow::Result<u32> {
    let lo = index_of(inside, "lo").await?;
    inside
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await?;
    let index = index_of(inside, name).await?;
    add_address(inside, index, IpAddr::V4(v4.1), 30).await?;
    if let Some(v6) = v6 {
        add_address(inside, index, IpAddr::V6(v6.1), 126).await?;
    }
    inside
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await?;
    inside
        .route()
        .add(
            rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(v4.0)
                .build(),
        )
        .execute()
        .await?;
    if let Some(v6) = v6 {
        inside
            .route()
            .add(
                rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new()
                    .gateway(v6.0)
                    .build(),
            )
            .execute()
            .await?;
    }
    Ok(index)
}

/// Copies what decides how a packet from another host is treated on arrival: IPv4
/// forwarding and reverse-path filtering, accepting local sources, IPv6 forwarding.
fn copy_settings(from: &str, to: &str) -> anyhow::Result<()> {
    for (family, key) in [
        ("ipv4", "forwarding"),
        ("ipv4", "rp_filter"),
        ("ipv4", "accept_local"),
        ("ipv6", "forwarding"),
    ] {
        let source = format!("/proc/sys/net/{family}/conf/{from}/{key}");
        let Ok(value) = std::fs::read_to_string(&source) else {
            continue;
        };
        let target = format!("/proc/sys/net/{family}/conf/{to}/{key}");
        std::fs::write(&target, value.trim()).with_context(|| format!("writing {target}"))?;
    }
    Ok(())
}

async fn index_of(handle: &rtnetlink::Handle, name: &str) -> anyhow::Result<u32> {
    Ok(handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await?
        .with_context(|| format!("link {name} not found"))?
        .header
        .index)
}

/// Waits (up to 2 s) until link `index` is operationally up.
async fn wait_until_up(handle: &rtnetlink::Handle, index: u32) -> anyhow::Result<()> {
    use netlink_packet_route::link::{LinkAttribute, State};
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let link = handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await?
            .with_context(|| format!("link {index} vanished"))?;
        if link
            .attributes
            .contains(&LinkAttribute::OperState(State::Up))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("link {index} did not come up within 2 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn add_address(
    handle: &rtnetlink::Handle,
    index: u32,
    addr: IpAddr,
    prefix: u8,
) -> anyhow::Result<()> {
    let mut request = handle.address().add(index, addr, prefix);
    // No duplicate address detection: the link is ours alone, and a tentative address
    // would keep the probe from sending for a second or two.
    request.message_mut().header.flags |= netlink_packet_route::address::AddressHeaderFlags::Nodad;
    request.execute().await?;
    Ok(())
}

async fn delete_link(name: &str) {
    let Ok((connection, handle, _)) = rtnetlink::new_connection() else {
        return;
    };
    let task = tokio::spawn(connection);
    if let Ok(index) = index_of(&handle, name).await {
        let _ = handle.link().del(index).execute().await;
    }
    task.abort();
}

/// Deletes probe links left by a dropgate that is gone (normally the kernel frees them
/// with the namespace at once).
async fn remove_stale_links() {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(LINK_PREFIX)
            .and_then(|rest| rest.strip_suffix('h'))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(link = %name, "removing a probe link left by an ended dropgate");
            delete_link(&name).await;
        }
    }
}

/// One attempt from inside the probe's namespace: the source port used and the outcome.
fn attempt_in(
    namespace: &OwnedFd,
    source: IpAddr,
    target: &Target,
) -> anyhow::Result<(u16, Outcome)> {
    // A dedicated thread: it enters the namespace and ends with the attempt.
    let ns = namespace.try_clone()?;
    let target = target.clone();
    std::thread::spawn(move || -> anyhow::Result<(u16, Outcome)> {
        // SAFETY: setns on this new thread only, with a namespace descriptor we hold.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "entering the probe's namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        let to = SocketAddr::new(target.addr, target.port);
        let domain = socket2::Domain::for_address(to);
        match target.protocol {
            Protocol::Tcp => {
                let socket = socket2::Socket::new(
                    domain,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                socket.bind(&SocketAddr::new(source, 0).into())?;
                let port = local_port(&socket)?;
                let started = Instant::now();
                let outcome = match socket.connect_timeout(&to.into(), CONNECT_TIMEOUT) {
                    Ok(()) => {
                        let millis =
                            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                        let mut stream = std::net::TcpStream::from(socket);
                        Outcome::Reachable {
                            http_status: http_status(&mut stream, &target),
                            millis,
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
                    Err(_) => Outcome::NoAnswer,
                };
                Ok((port, outcome))
            }
            Protocol::Udp => {
                let socket = socket2::Socket::new(
                    domain,
                    socket2::Type::DGRAM,
                    Some(socket2::Protocol::UDP),
                )?;
                socket.bind(&SocketAddr::new(source, 0).into())?;
                let port = local_port(&socket)?;
                socket.connect(&to.into())?;
                socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
                let started = Instant::now();
                let socket = std::net::UdpSocket::from(socket);
                socket.send(b"dropgate probe\n")?;
                let mut buf = [0_u8; 512];
                let outcome = match socket.recv(&mut buf) {
                    Ok(_) => Outcome::Reachable {
                        http_status: None,
                        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
                    Err(_) => Outcome::NoAnswer,
                };
                Ok((port, outcome))
            }
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
}

fn local_port(socket: &socket2::Socket) -> anyhow::Result<u16> {
    socket
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .context("the probe socket has no port")
}

/// `GET /` on a connected stream: the status of an HTTP answer, if one comes.
fn http_status(stream: &mut std::net::TcpStream, target: &Target) -> Option<u16> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: dropgate-probe\r\nConnection: close\r\n\r\n",
        target.endpoint()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0_u8; 64];
    let n = stream.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    let rest = line.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}

/// The samples of the flow from (`source`, `port`), either way.
fn flow_samples(
    samples: &[DropEvent],
    source: IpAddr,
    port: u16,
) -> impl Iterator<Item = &DropEvent> {
    samples.iter().filter(move |e| {
        (e.src == Some(source) && e.sport == port) || (e.dst == Some(source) && e.dport == port)
    })
}

/// The traced drops of the flow from (`source`, `port`), either way, grouped.
fn flow_drops(samples: &[DropEvent], source: IpAddr, port: u16) -> Vec<ProbeDrop> {
    let mut out: Vec<ProbeDrop> = Vec::new();
    for e in flow_samples(samples, source, port) {
        match out.iter_mut().find(|d| {
            d.reason == e.reason && d.location == e.location && d.interface == e.interface
        }) {
            Some(d) => d.packets += 1,
            None => out.push(ProbeDrop {
                reason: e.reason.clone(),
                location: e.location.clone(),
                interface: e.interface.clone(),
                packets: 1,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_refuse_with_a_hint() {
        assert_eq!("".parse(), Ok(ProbeSpec::Published));
        assert_eq!(
            "9091".parse(),
            Ok(ProbeSpec::Port {
                port: 9091,
                protocol: Protocol::Tcp
            })
        );
        assert_eq!(
            "53/udp".parse(),
            Ok(ProbeSpec::Port {
                port: 53,
                protocol: Protocol::Udp
            })
        );
        assert_eq!(
            "10.0.0.5:9091/tcp".parse(),
            Ok(ProbeSpec::Address {
                addr: "10.0.0.5".parse().unwrap(),
                port: 9091,
                protocol: Protocol::Tcp
            })
        );
        assert_eq!(
            "[fd29::1]:80".parse(),
            Ok(ProbeSpec::Address {
                addr: "fd29::1".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp
            })
        );
        for bad in [
            "0",
            "x",
            "9091/sctp",
            "10.0.0.5",
            "10.0.0.5:0",
            "fd29::1:80",
        ] {
            let err = bad.parse::<ProbeSpec>().expect_err(bad);
            assert!(err.contains(bad) && err.contains("e.g."), "{bad}: {err}");
        }
    }

    #[test]
    fn the_default_route_names_the_uplink() {
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     br0\t0012A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
        let ipv6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth1\n";
        assert_eq!(
            default_route_interfaces(route, ipv6),
            (Some("eth0".to_owned()), Some("eth1".to_owned()))
        );
        assert_eq!(default_route_interfaces("header\n", ""), (None, None));
    }

    #[test]
    fn probe_addresses_stay_in_their_ranges_and_differ_per_process() {
        let ((h1, p1), (h6, p6)) = probe_addresses(4_194_303);
        for a in [h1, p1] {
            assert!(
                a.octets()[0] == 198 && (18..=19).contains(&a.octets()[1]),
                "{a}"
            );
        }
        assert_eq!(u32::from(p1) - u32::from(h1), 1);
        assert_eq!(h6.segments()[0], 0xfd64);
        assert_ne!(h6, p6);
        assert_ne!(probe_addresses(1).0, probe_addresses(2).0);
    }

    fn sample(src: &str, sport: u16, dst: &str, dport: u16, reason: &str) -> DropEvent {
        DropEvent {
            time: String::new(),
            netns: "host".into(),
            interface: "dgp1h".into(),
            direction: Some(crate::samples::Direction::Ingress),
            protocol: "tcp",
            src: src.parse().ok(),
            sport,
            dst: dst.parse().ok(),
            dport,
            reason: reason.into(),
            location: "ip_error".into(),
            class: crate::drop_class::DropClass::Transit,
            len: 60,
            target: Destination::default(),
        }
    }

    #[test]
    fn only_the_probes_own_flow_counts() {
        let samples = vec![
            sample("198.18.0.2", 40000, "10.0.0.1", 9091, "IP_INADDRERRORS"),
            sample("198.18.0.2", 40000, "10.0.0.1", 9091, "IP_INADDRERRORS"),
            sample("198.18.0.2", 40001, "10.0.0.1", 9091, "IP_INADDRERRORS"),
            sample("10.0.0.1", 9091, "198.18.0.2", 40000, "NETFILTER_DROP"),
        ];
        let drops = flow_drops(&samples, "198.18.0.2".parse().unwrap(), 40000);
        assert_eq!(
            drops
                .iter()
                .map(|d| (d.reason.as_str(), d.packets))
                .collect::<Vec<_>>(),
            [("IP_INADDRERRORS", 2), ("NETFILTER_DROP", 1)]
        );
    }
}
