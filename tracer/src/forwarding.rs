//! IPv4 and IPv6 forwarding state of every network namespace, and every change to it.
//!
//! Forwarding is the setting behind the incident: Docker turns it on, a sysctl reload
//! turns it off again, and published ports stop working for other hosts. Each
//! namespace's socket in the namespace loop ([`crate::netlink_loop`]) asks the kernel for
//! the state of every interface of both families (one `RTM_GETNETCONF` dump with
//! `AF_UNSPEC`) and then receives `RTM_NEWNETCONF` events of both, so a flip is seen when
//! it happens, not at the next poll.
//! This module says what to ask for and what the answers mean.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    netlink::{attributes, netlink_messages},
    netlink_loop::NetlinkLoop,
};

pub const RTM_NEWNETCONF: u16 = 80;
const RTM_GETNETCONF: u16 = 82;
const NETCONFA_IFINDEX: u16 = 1;
const NETCONFA_FORWARDING: u16 = 2;
const NETCONFA_IFINDEX_ALL: i32 = -1;
const NETCONFA_IFINDEX_DEFAULT: i32 = -2;
const RTNLGRP_IPV4_NETCONF: u32 = 24;
const RTNLGRP_IPV6_NETCONF: u32 = 25;

/// The multicast groups (`RTNLGRP_*`) every namespace's socket joins for forwarding.
pub const NETCONF_GROUPS: &[u32] = &[RTNLGRP_IPV4_NETCONF, RTNLGRP_IPV6_NETCONF];
/// The address families whose NETCONF state is dumped when a namespace is found:
/// `AF_UNSPEC` has the kernel answer for every family with NETCONF (IPv4, IPv6, MPLS) in
/// one dump; a second dump could only start once the first is done.
pub const NETCONF_DUMP_FAMILIES: &[u8] = &[libc::AF_UNSPEC as u8];

/// The address family a NETCONF message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    fn from_byte(family: u8) -> Option<Self> {
        match i32::from(family) {
            libc::AF_INET => Some(Self::Ipv4),
            libc::AF_INET6 => Some(Self::Ipv6),
            // MPLS (and any later family) has NETCONF messages too: not ours.
            _ => None,
        }
    }
}

/// Forwarding state of one namespace.
#[derive(Clone, Debug, Default)]
pub struct NamespaceForwarding {
    /// `net.ipv4.ip_forward` (`conf/all/forwarding`), once known.
    pub all: Option<bool>,
    /// Per interface: name and `conf/<if>/forwarding`.
    pub interfaces: BTreeMap<i32, (String, bool)>,
    /// How often `all` changed while dropgate watched.
    pub changes: u64,
    /// How often `ipv6_all` changed while dropgate watched.
    pub ipv6_changes: u64,
    /// `net.ipv6.conf.all.forwarding`, once known. For IPv6 this one switch decides
    /// whether anything is forwarded (with `force_forwarding` per interface from
    /// kernel 6.17); the per-interface value below sets router or host behaviour.
    pub ipv6_all: Option<bool>,
    /// Per interface: name and `net.ipv6.conf.<if>.forwarding`.
    pub ipv6_interfaces: BTreeMap<i32, (String, bool)>,
}

/// An update decoded from one netlink message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetconfUpdate {
    pub family: Family,
    pub ifindex: i32,
    pub forwarding: bool,
}

/// Forwarding in every known namespace; cheap to read at scrape time.
pub struct ForwardingWatch {
    /// `None` when the namespace loop could not start: nothing is known.
    namespaces: Option<Arc<NetlinkLoop>>,
}

impl ForwardingWatch {
    /// Reads the forwarding state the namespace loop keeps.
    pub fn new(namespaces: Option<Arc<NetlinkLoop>>) -> Arc<Self> {
        Arc::new(Self { namespaces })
    }

    /// A copy of the current state, by namespace label, sorted by label.
    pub fn snapshot(&self) -> Vec<(String, NamespaceForwarding)> {
        self.namespaces
            .as_ref()
            .map(|namespaces| namespaces.forwarding())
            .unwrap_or_default()
    }
}

pub fn apply(ns: &mut NamespaceForwarding, update: NetconfUpdate) {
    let (all, interfaces, changes) = match update.family {
        Family::Ipv4 => (&mut ns.all, &mut ns.interfaces, &mut ns.changes),
        Family::Ipv6 => (
            &mut ns.ipv6_all,
            &mut ns.ipv6_interfaces,
            &mut ns.ipv6_changes,
        ),
    };
    match update.ifindex {
        NETCONFA_IFINDEX_ALL => {
            // `dropgate_forwarding_changes_total{family}`: flips of the family's global
            // switch; the first reading is the state found, not a change.
            if all.is_some_and(|was| was != update.forwarding) {
                *changes += 1;
            }
            *all = Some(update.forwarding);
        }
        NETCONFA_IFINDEX_DEFAULT => {}
        ifindex => {
            let name = u32::try_from(ifindex)
                .ok()
                .and_then(crate::netns::index_to_name)
                .unwrap_or_else(|| format!("if{ifindex}"));
            interfaces.insert(ifindex, (name, update.forwarding));
        }
    }
}

/// An `RTM_GETNETCONF` dump request for one address family: nlmsghdr (16 bytes), then
/// netconfmsg (1 byte of family, padded to 4).
#[must_use]
pub fn netconf_dump_request(family: u8, seq: u32) -> Vec<u8> {
    let mut msg = vec![0u8; 20];
    msg[0..4].copy_from_slice(&20u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&RTM_GETNETCONF.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    msg[16] = family;
    msg
}

/// Decodes the NETCONF messages in one netlink datagram.
#[must_use]
pub fn parse_netconf(data: &[u8]) -> Vec<NetconfUpdate> {
    netlink_messages(data)
        .into_iter()
        .filter(|(kind, _, _)| *kind == RTM_NEWNETCONF)
        .filter_map(|(_, _, payload)| {
            // struct netconfmsg is one byte of family, padded to 4.
            let family = Family::from_byte(*payload.first()?)?;
            let (mut ifindex, mut forwarding) = (None, None);
            for (kind, value) in attributes(payload.get(4..)?) {
                let value = i32::from_ne_bytes(value.get(..4)?.try_into().ok()?);
                match kind {
                    NETCONFA_IFINDEX => ifindex = Some(value),
                    NETCONFA_FORWARDING => forwarding = Some(value != 0),
                    _ => {}
                }
            }
            Some(NetconfUpdate {
                family,
                ifindex: ifindex?,
                forwarding: forwarding?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(family: i32, ifindex: i32, forwarding: i32) -> Vec<u8> {
        let mut msg = Vec::new();
        msg.extend_from_slice(&36u32.to_ne_bytes());
        msg.extend_from_slice(&RTM_NEWNETCONF.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[u8::try_from(family).expect("a family byte"), 0, 0, 0]);
        for (kind, value) in [
            (NETCONFA_IFINDEX, ifindex),
            (NETCONFA_FORWARDING, forwarding),
        ] {
            msg.extend_from_slice(&8u16.to_ne_bytes());
            msg.extend_from_slice(&kind.to_ne_bytes());
            msg.extend_from_slice(&value.to_ne_bytes());
        }
        msg
    }

    fn update(family: Family, ifindex: i32, forwarding: bool) -> NetconfUpdate {
        NetconfUpdate {
            family,
            ifindex,
            forwarding,
        }
    }

    #[test]
    fn decodes_netconf_messages_of_both_families() {
        const AF_MPLS: i32 = 28;
        let mut datagram = message(libc::AF_INET, NETCONFA_IFINDEX_ALL, 0);
        datagram.extend(message(libc::AF_INET, 3, 1));
        datagram.extend(message(libc::AF_INET6, NETCONFA_IFINDEX_ALL, 1));
        datagram.extend(message(AF_MPLS, 3, 1));
        datagram.extend(message(libc::AF_INET6, 3, 0));
        assert_eq!(
            parse_netconf(&datagram),
            vec![
                update(Family::Ipv4, -1, false),
                update(Family::Ipv4, 3, true),
                update(Family::Ipv6, -1, true),
                update(Family::Ipv6, 3, false),
            ],
            "MPLS is left out"
        );
        assert!(
            parse_netconf(&datagram[..20]).is_empty(),
            "a cut message is ignored"
        );
    }

    #[test]
    fn counts_changes_of_each_family_global_switch() {
        let mut ns = NamespaceForwarding::default();
        for (family, ifindex, on) in [
            (Family::Ipv4, -1, true),
            (Family::Ipv4, -1, true),
            (Family::Ipv4, -1, false),
            (Family::Ipv4, 2, true),
            (Family::Ipv4, 2, false),
            (Family::Ipv6, -1, true),
            (Family::Ipv6, -1, false),
            (Family::Ipv6, 2, true),
            (Family::Ipv4, -1, true),
        ] {
            apply(&mut ns, update(family, ifindex, on));
        }
        assert_eq!(ns.all, Some(true));
        assert_eq!(
            ns.changes, 2,
            "on->off and off->on of IPv4; the first reading is not a change"
        );
        assert_eq!(
            ns.ipv6_changes, 1,
            "on->off of IPv6, counted apart; interfaces are no change"
        );
        assert_eq!(ns.interfaces.get(&2).map(|(_, on)| *on), Some(false));
        assert_eq!(ns.ipv6_all, Some(false), "IPv6 kept apart from IPv4");
        assert_eq!(ns.ipv6_interfaces.get(&2).map(|(_, on)| *on), Some(true));
    }
}
