//! Bridges and their subnets in one network namespace, asked from the kernel with an
//! rtnetlink dump of links (`RTM_GETLINK`: which interfaces are bridges, from
//! `IFLA_LINKINFO`'s kind) and of addresses (`RTM_GETADDR`: the subnets).
//!
//! An ifindex or an address means nothing outside its namespace, so the dumps are made
//! by a short-lived thread that enters each namespace in turn (`setns`) and ends: the
//! rest of the process never changes namespace. The decoding is pure and table-tested.

use std::{
    collections::HashMap,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
    time::Duration,
};

use super::{EnrichError, Subnet};
use crate::{
    netlink::{self, attributes, netlink_messages, u32_at, NLMSG_HEADER_LEN},
    netns::inode_of,
};

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

const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;

/// A NUL-terminated (or not) attribute string.
fn attribute_string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// Decodes an `RTM_NEWLINK` payload (ifinfomsg + attributes).
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    let index = u32_at(payload, 4)?;
    let attrs = attributes(payload.get(IFINFOMSG_LEN..)?);
    let mut name = None;
    let mut kind = None;
    for (attr, value) in attrs {
        if attr == libc::IFLA_IFNAME {
            name = Some(attribute_string(value));
        } else if attr == libc::IFLA_LINKINFO {
            kind = attributes(value)
                .into_iter()
                .find(|(a, _)| *a == libc::IFLA_INFO_KIND)
                .map(|(_, v)| attribute_string(v));
        }
    }
    Some(Link {
        index,
        name: name?,
        kind,
    })
}

/// Decodes an `RTM_NEWADDR` payload (ifaddrmsg + attributes).
pub fn parse_address(payload: &[u8]) -> Option<InterfaceAddress> {
    let family = i32::from(*payload.first()?);
    let prefix = *payload.get(1)?;
    let index = u32_at(payload, 4)?;
    // IFA_ADDRESS is the one the prefix applies to (on point-to-point links IFA_LOCAL is
    // our end and IFA_ADDRESS the peer's); IFA_LOCAL only when it is missing.
    let attrs = attributes(payload.get(IFADDRMSG_LEN..)?);
    let value = attrs
        .iter()
        .find(|(a, _)| *a == libc::IFA_ADDRESS)
        .or_else(|| attrs.iter().find(|(a, _)| *a == libc::IFA_LOCAL))
        .map(|(_, v)| *v)?;
    let addr = match family {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?)),
        libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(value).ok()?)),
        _ => return None,
    };
    Some(InterfaceAddress {
        index,
        subnet: Subnet::new(addr, prefix)?,
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
            return Err(error(std::io::Error::last_os_error()));
        }
    }
    let socket = netlink::route_socket(0, NETLINK_TIMEOUT).map_err(error)?;
    let links: Vec<Link> = dump(&socket, libc::RTM_GETLINK, IFINFOMSG_LEN, 1)
        .map_err(error)?
        .iter()
        .filter(|(kind, _)| *kind == libc::RTM_NEWLINK)
        .filter_map(|(_, payload)| parse_link(payload))
        .collect();
    let addresses: Vec<InterfaceAddress> = dump(&socket, libc::RTM_GETADDR, IFADDRMSG_LEN, 2)
        .map_err(error)?
        .iter()
        .filter(|(kind, _)| *kind == libc::RTM_NEWADDR)
        .filter_map(|(_, payload)| parse_address(payload))
        .collect();
    Ok(bridge_subnets(&links, &addresses))
}

/// Sends a dump request of `request` (with a zeroed family header of `header_len`
/// bytes: all families) and collects the answer's messages up to NLMSG_DONE.
fn dump(
    socket: &OwnedFd,
    request: u16,
    header_len: usize,
    seq: u32,
) -> std::io::Result<Vec<(u16, Vec<u8>)>> {
    let message = dump_request(request, header_len, seq);
    // SAFETY: `message` is valid for its length; a zeroed sockaddr_nl addresses the kernel.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&raw const kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buffer = vec![0u8; 64 * 1024];
    let mut messages = Vec::new();
    loop {
        // SAFETY: recv writes at most buffer.len() bytes into the buffer we own.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = usize::try_from(n).unwrap_or_default();
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        for (kind, message_seq, payload) in netlink_messages(&buffer[..n]) {
            if message_seq != seq {
                continue;
            }
            match i32::from(kind) {
                libc::NLMSG_DONE => return Ok(messages),
                libc::NLMSG_ERROR => {
                    // nlmsgerr starts with a negative errno (0: an acknowledgement).
                    let errno = u32_at(payload, 0).map_or(0, u32::cast_signed);
                    if errno != 0 {
                        return Err(std::io::Error::from_raw_os_error(-errno));
                    }
                }
                _ => messages.push((kind, payload.to_vec())),
            }
        }
    }
}

/// An rtnetlink dump request: nlmsghdr, then a zeroed family header.
fn dump_request(request: u16, header_len: usize, seq: u32) -> Vec<u8> {
    let len = NLMSG_HEADER_LEN + header_len;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(&(len as u32).to_ne_bytes());
    message.extend_from_slice(&request.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.resize(len, 0);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{align4, u16_at, RTATTR_HEADER_LEN};

    fn subnet(text: &str) -> Subnet {
        Subnet::parse(text).expect("test subnet")
    }

    /// An rtattr: length, type, value, padding.
    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((RTATTR_HEADER_LEN + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align4(out.len()), 0);
        out
    }

    /// A netlink message: header, then `body`.
    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HEADER_LEN + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(body);
        out.resize(align4(out.len()), 0);
        out
    }

    fn link_message(index: u32, name: &str, kind: Option<&str>) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        body.extend(attr(libc::IFLA_MTU, &1500u32.to_ne_bytes()));
        body.extend(attr(libc::IFLA_IFNAME, format!("{name}\0").as_bytes()));
        if let Some(kind) = kind {
            // The kernel marks nested attributes with NLA_F_NESTED.
            let info = attr(libc::IFLA_INFO_KIND, format!("{kind}\0").as_bytes());
            body.extend(attr(libc::IFLA_LINKINFO | 0x8000, &info));
        }
        message(libc::RTM_NEWLINK, 1, &body)
    }

    fn address_message(index: u32, family: u8, prefix: u8, addr: &[u8]) -> Vec<u8> {
        let mut body = vec![family, prefix, 0, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        body.extend(attr(libc::IFA_LOCAL, addr));
        body.extend(attr(libc::IFA_ADDRESS, addr));
        body.extend(attr(libc::IFA_LABEL, b"x\0"));
        message(libc::RTM_NEWADDR, 2, &body)
    }

    #[test]
    fn netlink_links_and_addresses_decode() {
        let mut datagram = link_message(1, "lo", None);
        datagram.extend(link_message(5, "docker0", Some("bridge")));
        datagram.extend(link_message(7, "veth1a2b", Some("veth")));
        datagram.extend(message(libc::NLMSG_DONE as u16, 1, &0i32.to_ne_bytes()));
        let messages = netlink_messages(&datagram);
        assert_eq!(messages.len(), 4, "three links and DONE");
        let links: Vec<Link> = messages
            .iter()
            .filter(|(kind, _, _)| *kind == libc::RTM_NEWLINK)
            .filter_map(|(_, _, payload)| parse_link(payload))
            .collect();
        assert_eq!(
            links,
            vec![
                Link {
                    index: 1,
                    name: "lo".into(),
                    kind: None
                },
                Link {
                    index: 5,
                    name: "docker0".into(),
                    kind: Some("bridge".into())
                },
                Link {
                    index: 7,
                    name: "veth1a2b".into(),
                    kind: Some("veth".into())
                },
            ]
        );

        let mut datagram = address_message(1, libc::AF_INET as u8, 8, &[127, 0, 0, 1]);
        datagram.extend(address_message(
            5,
            libc::AF_INET as u8,
            16,
            &[172, 17, 0, 1],
        ));
        let v6: Ipv6Addr = "fd00:17::1".parse().expect("v6");
        datagram.extend(address_message(5, libc::AF_INET6 as u8, 64, &v6.octets()));
        datagram.extend(address_message(7, libc::AF_INET as u8, 24, &[10, 1, 2, 3]));
        let addresses: Vec<InterfaceAddress> = netlink_messages(&datagram)
            .iter()
            .filter_map(|(_, _, payload)| parse_address(payload))
            .collect();
        assert_eq!(addresses.len(), 4, "every address decodes");
        assert_eq!(addresses[1].subnet, subnet("172.17.0.1/16"));
        assert_eq!(addresses[2].subnet, subnet("fd00:17::1/64"));

        let bridges = bridge_subnets(&links, &addresses);
        assert_eq!(
            bridges,
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
    }

    #[test]
    fn truncated_netlink_data_stops_cleanly() {
        let full = link_message(5, "docker0", Some("bridge"));
        for cut in [0, 3, NLMSG_HEADER_LEN - 1, full.len() - 1] {
            assert!(netlink_messages(&full[..cut]).is_empty(), "cut at {cut}");
        }
        // A payload too short for ifinfomsg, and attributes with a bad length.
        assert_eq!(parse_link(&[0u8; 8]), None, "short ifinfomsg");
        let mut bad = vec![0u8; IFINFOMSG_LEN];
        bad.extend_from_slice(&[200, 0, 3, 0, b'x']);
        assert_eq!(parse_link(&bad), None, "attribute longer than the data");
        assert_eq!(parse_address(&[2, 24, 0, 0]), None, "short ifaddrmsg");
    }

    #[test]
    fn the_dump_request_is_a_netlink_header_and_a_zeroed_family_header() {
        let request = dump_request(libc::RTM_GETADDR, IFADDRMSG_LEN, 9);
        assert_eq!(request.len(), NLMSG_HEADER_LEN + IFADDRMSG_LEN);
        let messages = netlink_messages(&request);
        assert_eq!(messages.len(), 1);
        let (kind, seq, payload) = messages[0];
        assert_eq!((kind, seq), (libc::RTM_GETADDR, 9));
        assert!(payload.iter().all(|&b| b == 0), "AF_UNSPEC: every family");
        let flags = u16_at(&request, 6).expect("flags");
        assert_eq!(i32::from(flags), libc::NLM_F_REQUEST | libc::NLM_F_DUMP);
    }

    /// Needs only the own namespace (no privileges): lo exists and is no bridge.
    #[test]
    fn the_own_namespace_answers_the_dumps() {
        let own = bridges_in("own", Path::new("/proc/self/ns/net"))
            .expect("the own namespace answers rtnetlink");
        assert!(
            own.iter().all(|b| b.bridge != "lo"),
            "lo is not a bridge: {own:?}"
        );
    }
}
