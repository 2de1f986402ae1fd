//! Links, addresses and the bridges among them, from rtnetlink messages
//! (`RTM_NEWLINK`/`RTM_DELLINK`: which interfaces are bridges, from `IFLA_LINKINFO`'s
//! kind; `RTM_NEWADDR`/`RTM_DELADDR`: the subnets), decoded by `netlink-packet-route`.
//! The namespace loop keeps a [`Links`] per namespace from events; `diagnose` asks its
//! own namespace once ([`bridges_in`]).

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io,
    net::IpAddr,
    os::fd::AsRawFd as _,
    path::Path,
    time::Duration,
};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

use super::{EnrichError, Subnet};
use crate::netns::inode_of;

/// Bound on one wait for a netlink answer.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(1);

/// A subnet assigned to a bridge interface.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BridgeSubnet {
    pub bridge: String,
    pub subnet: Subnet,
}

/// A network interface as `RTM_NEWLINK` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "bridge", "veth", ...; `None` for physical devices and lo.
    pub kind: Option<String>,
}

/// An address as `RTM_NEWADDR` describes it: the interface and the subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub index: u32,
    pub subnet: Subnet,
}

/// The interfaces of one namespace, kept from its link and address messages.
#[derive(Clone, Debug, Default)]
pub struct Links {
    links: BTreeMap<u32, Link>,
    /// (interface, address) pairs; a few per interface.
    addresses: Vec<InterfaceAddress>,
}

impl Links {
    /// The name of interface `index`, if it is known.
    pub fn name(&self, index: u32) -> Option<&str> {
        self.links.get(&index).map(|l| l.name.as_str())
    }

    /// The subnets on the namespace's bridges.
    pub fn bridges(&self) -> Vec<BridgeSubnet> {
        let links: Vec<Link> = self.links.values().cloned().collect();
        bridge_subnets(&links, &self.addresses)
    }

    /// Takes in one message (others than links and addresses change nothing).
    pub fn apply(&mut self, message: &RouteNetlinkMessage) {
        match message {
            RouteNetlinkMessage::NewLink(link) => {
                if let Some(link) = link_of(link) {
                    self.links.insert(link.index, link);
                }
            }
            RouteNetlinkMessage::DelLink(link) => {
                let index = link.header.index;
                self.links.remove(&index);
                self.addresses.retain(|a| a.index != index);
            }
            RouteNetlinkMessage::NewAddress(address) => {
                if let Some(address) = address_of(address) {
                    if !self.addresses.contains(&address) {
                        self.addresses.push(address);
                    }
                }
            }
            RouteNetlinkMessage::DelAddress(address) => {
                if let Some(address) = address_of(address) {
                    self.addresses.retain(|a| *a != address);
                }
            }
            _ => {}
        }
    }
}

/// A link message as [`Link`]: index, name and kind.
fn link_of(message: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut kind = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(InfoKind::Bridge) => Some("bridge".to_owned()),
                    LinkInfo::Kind(other) => Some(other.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    Some(Link {
        index: message.header.index,
        name: name?,
        kind,
    })
}

/// An address message as [`InterfaceAddress`]: `IFA_ADDRESS` is the one its prefix
/// applies to (on point-to-point links `IFA_LOCAL` is our end and `IFA_ADDRESS` the
/// peer's), `IFA_LOCAL` only when it is missing.
fn address_of(message: &AddressMessage) -> Option<InterfaceAddress> {
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(addr) => Some(*addr),
        _ => None,
    });
    let local = || {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(addr) => Some(*addr),
            _ => None,
        })
    };
    let addr: IpAddr = address.or_else(local)?;
    Some(InterfaceAddress {
        index: message.header.index,
        subnet: Subnet::new(addr, message.header.prefix_len)?,
    })
}

/// The subnets of the bridges among `links`.
pub fn bridge_subnets(links: &[Link], addresses: &[InterfaceAddress]) -> Vec<BridgeSubnet> {
    let bridges: HashMap<u32, &str> = links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .map(|l| (l.index, l.name.as_str()))
        .collect();
    addresses
        .iter()
        .filter_map(|a| {
            Some(BridgeSubnet {
                bridge: (*bridges.get(&a.index)?).to_owned(),
                subnet: a.subnet,
            })
        })
        .collect()
}

/// A dump request for `message`'s kind (every family: a zeroed header).
pub fn dump_request(message: RouteNetlinkMessage, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::from(message));
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    buffer
}

/// The messages of one datagram: (type, sequence number, the whole message).
pub fn messages(mut datagram: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        let buffer = NetlinkBuffer::new_checked(datagram).ok()?;
        let len = buffer.length() as usize;
        let message = (
            buffer.message_type(),
            buffer.sequence_number(),
            &datagram[..len],
        );
        datagram = datagram.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some(message)
    })
}

/// Enters the namespace at `path` (the calling thread stays there) and dumps its links
/// and addresses.
pub fn bridges_in(name: &str, path: &Path) -> Result<Vec<BridgeSubnet>, EnrichError> {
    let error = |source| EnrichError::Netlink {
        namespace: name.to_owned(),
        source,
    };
    let file = File::open(path).map_err(error)?;
    // Already there (the own namespace, usually): no setns, which needs CAP_SYS_ADMIN.
    let here = inode_of(Path::new("/proc/thread-self/ns/net"));
    if here.is_none() || here != inode_of(path) {
        // SAFETY: setns on a thread of our own that only does netlink requests; `file` is
        // an open namespace file for the whole call.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(error(io::Error::last_os_error()));
        }
    }
    Ok(links_here().map_err(error)?.bridges())
}

/// The links and addresses of the calling thread's namespace.
fn links_here() -> io::Result<Links> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    receive_timeout(&socket, NETLINK_TIMEOUT)?;
    let mut links = Links::default();
    let requests = [
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    ];
    for (seq, request) in (1..).zip(requests) {
        dump(&socket, request, seq, &mut links)?;
    }
    Ok(links)
}

/// Sends a dump request and takes its answer into `links`, up to NLMSG_DONE.
fn dump(
    socket: &Socket,
    request: RouteNetlinkMessage,
    seq: u32,
    links: &mut Links,
) -> io::Result<()> {
    socket.send(&dump_request(request, seq), 0)?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut buffer[..], 0)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        for (_, message_seq, message) in messages(&buffer[..n]) {
            if message_seq != seq {
                continue;
            }
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(message) {
                Ok(NetlinkMessage {
                    payload: NetlinkPayload::Done(_),
                    ..
                }) => return Ok(()),
                Ok(NetlinkMessage {
                    payload: NetlinkPayload::Error(error),
                    ..
                }) => {
                    if let Some(code) = error.code {
                        return Err(io::Error::from_raw_os_error(-code.get()));
                    }
                }
                Ok(NetlinkMessage {
                    payload: NetlinkPayload::InnerMessage(inner),
                    ..
                }) => links.apply(&inner),
                // A message the crate does not know is not one of ours.
                _ => {}
            }
        }
    }
}

/// Bounds each receive on `socket`, so a kernel that never answers cannot hang the caller.
fn receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    // The field types, not their names: libc deprecates `time_t` and `suseconds_t`
    // on musl (the static builds), whose widths it plans to change.
    let timeout = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(1),
        tv_usec: timeout.subsec_micros().into(),
    };
    // SAFETY: setsockopt reads one timeval of the given size from valid memory.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::{
        address::AddressHeader,
        link::{LinkHeader, LinkInfo},
        AddressFamily,
    };

    use super::*;

    fn subnet(text: &str) -> Subnet {
        Subnet::parse(text).expect("test subnet")
    }

    /// A link message as the kernel sends it, through the crate's encoder and decoder.
    fn link(index: u32, name: &str, kind: Option<InfoKind>) -> RouteNetlinkMessage {
        let mut message = LinkMessage::default();
        message.header = LinkHeader {
            index,
            ..LinkHeader::default()
        };
        message.attributes.push(LinkAttribute::Mtu(1500));
        message.attributes.push(LinkAttribute::IfName(name.into()));
        if let Some(kind) = kind {
            message
                .attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]));
        }
        round_trip(RouteNetlinkMessage::NewLink(message))
    }

    fn address(index: u32, text: &str, local: Option<&str>) -> RouteNetlinkMessage {
        let subnet = subnet(text);
        let (addr, prefix) = text.split_once('/').expect("addr/prefix");
        let addr: IpAddr = addr.parse().expect("address");
        let mut message = AddressMessage::default();
        message.header = AddressHeader {
            family: if addr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            },
            prefix_len: prefix.parse().expect("prefix"),
            index,
            ..AddressHeader::default()
        };
        if let Some(local) = local {
            message
                .attributes
                .push(AddressAttribute::Local(local.parse().expect("local")));
        }
        message.attributes.push(AddressAttribute::Address(addr));
        assert_eq!(subnet.prefix(), message.header.prefix_len);
        round_trip(RouteNetlinkMessage::NewAddress(message))
    }

    /// Encodes `message` as one datagram and decodes it again, as the loop does.
    fn round_trip(message: RouteNetlinkMessage) -> RouteNetlinkMessage {
        let mut message = NetlinkMessage::new(NetlinkHeader::default(), message.into());
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        let (_, _, whole) = messages(&bytes).next().expect("one message");
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(whole)
            .expect("decodes")
            .payload
        {
            NetlinkPayload::InnerMessage(inner) => inner,
            other => panic!("not a route message: {other:?}"),
        }
    }

    #[test]
    fn links_and_addresses_make_bridge_subnets() {
        let mut links = Links::default();
        for message in [
            link(1, "lo", None),
            link(5, "docker0", Some(InfoKind::Bridge)),
            link(7, "veth1a2b", Some(InfoKind::Veth)),
            address(1, "127.0.0.1/8", None),
            address(5, "172.17.0.1/16", None),
            address(5, "fd00:17::1/64", None),
            address(7, "10.1.2.3/24", None),
        ] {
            links.apply(&message);
        }
        assert_eq!(links.name(5), Some("docker0"));
        assert_eq!(
            links.bridges(),
            vec![
                BridgeSubnet {
                    bridge: "docker0".into(),
                    subnet: subnet("172.17.0.1/16")
                },
                BridgeSubnet {
                    bridge: "docker0".into(),
                    subnet: subnet("fd00:17::1/64")
                },
            ],
            "only the bridge's subnets"
        );
        // The bridge goes: its name and subnets with it.
        let mut gone = LinkMessage::default();
        gone.header.index = 5;
        links.apply(&RouteNetlinkMessage::DelLink(gone));
        assert_eq!(links.name(5), None);
        assert!(links.bridges().is_empty());
    }

    #[test]
    fn the_prefix_applies_to_the_peer_address_on_point_to_point_links() {
        let mut links = Links::default();
        links.apply(&link(3, "br-p2p", Some(InfoKind::Bridge)));
        links.apply(&address(3, "10.9.0.0/30", Some("10.9.0.1")));
        assert_eq!(
            links.bridges(),
            vec![BridgeSubnet {
                bridge: "br-p2p".into(),
                subnet: subnet("10.9.0.0/30")
            }]
        );
    }

    #[test]
    fn cut_datagrams_yield_no_message() {
        let whole = dump_request(RouteNetlinkMessage::GetLink(LinkMessage::default()), 9);
        assert_eq!(messages(&whole).count(), 1);
        let (kind, seq, _) = messages(&whole).next().expect("one message");
        assert_eq!((kind, seq), (libc::RTM_GETLINK, 9));
        for cut in [0, 3, 15, whole.len() - 1] {
            assert_eq!(messages(&whole[..cut]).count(), 0, "cut at {cut}");
        }
    }

    /// Needs only the own namespace (no privileges): lo exists and is no bridge.
    #[test]
    fn the_own_namespace_answers_the_dumps() {
        let links = links_here().expect("the own namespace answers rtnetlink");
        assert_eq!(
            links.name(1),
            Some("lo"),
            "the kernel's link messages decode"
        );
        let own = bridges_in("own", Path::new("/proc/self/ns/net"))
            .expect("the own namespace answers rtnetlink");
        assert!(
            own.iter().all(|b| b.bridge != "lo"),
            "lo is not a bridge: {own:?}"
        );
    }
}
