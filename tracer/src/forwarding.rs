//! IPv4 forwarding state of every network namespace, and every change to it.
//!
//! Forwarding is the setting behind the incident: Docker turns it on, a sysctl reload
//! turns it off again, and published ports stop working for other hosts. Each
//! namespace's socket in the namespace loop ([`crate::netlink_loop`]) asks the kernel for
//! the state of every interface (`RTM_GETNETCONF` dump) and then receives
//! `RTM_NEWNETCONF` events, so a flip is seen when it happens, not at the next poll.
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

/// The multicast groups (`RTNLGRP_*`) every namespace's socket joins for forwarding.
pub const NETCONF_GROUPS: &[u32] = &[RTNLGRP_IPV4_NETCONF];
/// The address families whose NETCONF state is dumped when a namespace is found.
pub const NETCONF_DUMP_FAMILIES: &[u8] = &[libc::AF_INET as u8];

/// Forwarding state of one namespace.
#[derive(Clone, Debug, Default)]
pub struct NamespaceForwarding {
    /// `net.ipv4.ip_forward` (`conf/all/forwarding`), once known.
    pub all: Option<bool>,
    /// Per interface: name and `conf/<if>/forwarding`.
    pub interfaces: BTreeMap<i32, (String, bool)>,
    /// How often `all` changed while dropgate watched.
    pub changes: u64,
}

/// An update decoded from one netlink message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetconfUpdate {
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
    match update.ifindex {
        NETCONFA_IFINDEX_ALL => {
            if ns.all.is_some_and(|was| was != update.forwarding) {
                ns.changes += 1;
            }
            ns.all = Some(update.forwarding);
        }
        NETCONFA_IFINDEX_DEFAULT => {}
        ifindex => {
            let name = u32::try_from(ifindex)
                .ok()
                .and_then(crate::netns::index_to_name)
                .unwrap_or_else(|| format!("if{ifindex}"));
            ns.interfaces.insert(ifindex, (name, update.forwarding));
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
        .filter(|(kind, _, payload)| {
            *kind == RTM_NEWNETCONF && payload.first() == Some(&(libc::AF_INET as u8))
        })
        .filter_map(|(_, _, payload)| {
            // struct netconfmsg is one byte of family, padded to 4.
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
                ifindex: ifindex?,
                forwarding: forwarding?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(ifindex: i32, forwarding: i32) -> Vec<u8> {
        let mut msg = Vec::new();
        msg.extend_from_slice(&36u32.to_ne_bytes());
        msg.extend_from_slice(&RTM_NEWNETCONF.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
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

    #[test]
    fn decodes_netconf_messages() {
        let mut datagram = message(NETCONFA_IFINDEX_ALL, 0);
        datagram.extend(message(3, 1));
        assert_eq!(
            parse_netconf(&datagram),
            vec![
                NetconfUpdate {
                    ifindex: -1,
                    forwarding: false
                },
                NetconfUpdate {
                    ifindex: 3,
                    forwarding: true
                },
            ]
        );
        assert!(
            parse_netconf(&datagram[..20]).is_empty(),
            "a cut message is ignored"
        );
    }

    #[test]
    fn counts_changes_of_the_global_switch_only() {
        let mut ns = NamespaceForwarding::default();
        for (ifindex, on) in [
            (-1, true),
            (-1, true),
            (-1, false),
            (2, true),
            (2, false),
            (-1, true),
        ] {
            apply(
                &mut ns,
                NetconfUpdate {
                    ifindex,
                    forwarding: on,
                },
            );
        }
        assert_eq!(ns.all, Some(true));
        assert_eq!(
            ns.changes, 2,
            "on->off and off->on; the first reading is not a change"
        );
        assert_eq!(ns.interfaces.get(&2).map(|(_, on)| *on), Some(false));
    }
}
