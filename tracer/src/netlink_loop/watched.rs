//! One watched namespace: its NETLINK_ROUTE socket (made inside it), the dumps that give
//! its starting state, and what its messages say (forwarding, links, addresses).
//!
//! A netlink socket belongs to the namespace it was created in for its whole life, so
//! the loop thread enters the namespace only to create it and goes back at once; from
//! then on the socket is read from the loop's own namespace like any other descriptor.

use std::{collections::VecDeque, fs::File, io, os::fd::AsRawFd as _, path::Path};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{address::AddressMessage, link::LinkMessage, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::{
    enrich::rtnetlink::{dump_request, messages, Links},
    forwarding::{self, NamespaceForwarding},
    netns::LinkState,
};

/// `RTNLGRP_*` groups every namespace socket joins (besides the forwarding ones).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
/// Only on the own namespace's socket: namespaces that get an id here (a veth peer
/// moved into a new container, `ip netns set`) are announced on it.
pub const RTNLGRP_NSID: u32 = 28;

const RTM_NEWNSID: u16 = 88;
const RTM_DELNSID: u16 = 89;

/// What the loop is told about a namespace's messages.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A namespace got or lost an id in this one: look for namespaces again.
    pub namespaces_changed: bool,
    /// An interface went away: drop keys may name it.
    pub links_removed: bool,
}

/// A dump still to ask for, in order; a netlink socket serves one dump at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dump {
    /// `RTM_GETNETCONF` for one address family.
    Netconf(u8),
    Links,
    Addresses,
}

/// What is known of one namespace: kept by the loop, read by scrapes and enrichment.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub name: String,
    pub forwarding: NamespaceForwarding,
    pub links: Links,
    /// Whether `links` holds every interface: the dump of links is complete (and no
    /// event was lost since). Until then, a missing interface may just not be told yet.
    pub links_complete: bool,
    /// The highest interface index the table has seen. Indexes count up in a namespace,
    /// so a missing one at or below it is gone; above it, its event may be unread yet.
    pub highest_index: u32,
    /// Datagrams received and overflows seen: grows whenever a link, address or
    /// forwarding setting of the namespace may have changed.
    pub datagrams: u64,
}

impl View {
    /// What the table says of interface `index`.
    pub fn link_state(&self, index: u32) -> LinkState {
        match self.links.name(index) {
            Some(name) => LinkState::Named(name.to_owned()),
            None if index <= self.highest_index => LinkState::Gone,
            None => LinkState::NotSeenYet,
        }
    }

    /// The namespace's forwarding state with every interface named from its own links
    /// (an ifindex means nothing outside its namespace).
    pub fn named_forwarding(&self) -> NamespaceForwarding {
        let mut forwarding = self.forwarding.clone();
        let NamespaceForwarding {
            interfaces,
            ipv6_interfaces,
            ..
        } = &mut forwarding;
        for (index, (name, _)) in interfaces.iter_mut().chain(ipv6_interfaces.iter_mut()) {
            let known = u32::try_from(*index)
                .ok()
                .and_then(|index| self.links.name(index));
            *name = known.map_or_else(|| format!("if{index}"), str::to_owned);
        }
        forwarding
    }
}

/// One namespace the loop watches: its socket and the dumps still to ask for.
pub struct Watched {
    pub socket: Socket,
    dumps: VecDeque<Dump>,
    /// Sequence number and kind of the dump in flight.
    in_flight: Option<(u32, Dump)>,
    next_seq: u32,
}

impl Watched {
    /// Creates the namespace's socket from inside it (`own`: the loop's namespace, to go
    /// back to; `None` when `path` is the loop's own namespace) and asks for its state.
    pub fn open(path: &Path, own: Option<&File>, nsid_events: bool) -> Result<Self, OpenError> {
        let socket = match own {
            None => route_socket(nsid_events).map_err(OpenError::Namespace)?,
            Some(own) => {
                let target = File::open(path).map_err(OpenError::Namespace)?;
                set_namespace(&target).map_err(OpenError::Namespace)?;
                let socket = route_socket(nsid_events);
                // Back before anything else: the loop thread must not stay elsewhere.
                set_namespace(own).map_err(OpenError::Return)?;
                socket.map_err(OpenError::Namespace)?
            }
        };
        let mut dumps: VecDeque<Dump> = forwarding::NETCONF_DUMP_FAMILIES
            .iter()
            .map(|family| Dump::Netconf(*family))
            .collect();
        dumps.extend([Dump::Links, Dump::Addresses]);
        let mut watched = Self {
            socket,
            dumps,
            in_flight: None,
            next_seq: 1,
        };
        watched.next_dump().map_err(OpenError::Namespace)?;
        Ok(watched)
    }

    /// Asks for everything again (the socket overflowed: events were lost, removals
    /// among them, so what the dumps no longer list must go: the view starts afresh but
    /// for the global switch and its count of changes).
    pub fn resync(&mut self, view: &mut View) -> io::Result<()> {
        view.links = Links::default();
        view.links_complete = false;
        view.forwarding.interfaces.clear();
        view.forwarding.ipv6_interfaces.clear();
        self.dumps = forwarding::NETCONF_DUMP_FAMILIES
            .iter()
            .map(|family| Dump::Netconf(*family))
            .collect();
        self.dumps.extend([Dump::Links, Dump::Addresses]);
        if self.in_flight.is_none() {
            self.next_dump()?;
        }
        Ok(())
    }

    fn next_dump(&mut self) -> io::Result<()> {
        let Some(dump) = self.dumps.pop_front() else {
            self.in_flight = None;
            return Ok(());
        };
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        let request = match dump {
            Dump::Netconf(family) => forwarding::netconf_dump_request(family, seq),
            Dump::Links => dump_request(RouteNetlinkMessage::GetLink(LinkMessage::default()), seq),
            Dump::Addresses => dump_request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                seq,
            ),
        };
        self.socket.send(&request, 0)?;
        self.in_flight = Some((seq, dump));
        Ok(())
    }

    /// Takes in one datagram read from the socket, into the namespace's `view`.
    pub fn receive(&mut self, datagram: &[u8], view: &mut View) -> io::Result<Outcome> {
        let mut outcome = Outcome::default();
        for (kind, seq, message) in messages(datagram) {
            match kind {
                forwarding::RTM_NEWNETCONF => {
                    for update in forwarding::parse_netconf(message) {
                        forwarding::apply(&mut view.forwarding, update);
                    }
                }
                RTM_NEWNSID | RTM_DELNSID => outcome.namespaces_changed = true,
                _ => match NetlinkMessage::<RouteNetlinkMessage>::deserialize(message) {
                    Ok(NetlinkMessage {
                        payload: NetlinkPayload::InnerMessage(inner),
                        ..
                    }) => {
                        if let RouteNetlinkMessage::DelLink(link) = &inner {
                            outcome.links_removed = true;
                            // Its forwarding entry goes with it.
                            if let Ok(index) = i32::try_from(link.header.index) {
                                view.forwarding.interfaces.remove(&index);
                                view.forwarding.ipv6_interfaces.remove(&index);
                            }
                        }
                        if let RouteNetlinkMessage::NewLink(link) = &inner {
                            view.highest_index = view.highest_index.max(link.header.index);
                        }
                        view.links.apply(&inner);
                    }
                    Ok(NetlinkMessage {
                        payload: NetlinkPayload::Done(_) | NetlinkPayload::Error(_),
                        ..
                    }) if self.in_flight.is_some_and(|(s, _)| s == seq) => {
                        // The end of a dump (or its refusal: a kernel without that
                        // family): ask for the next one.
                        if self.in_flight.is_some_and(|(_, dump)| dump == Dump::Links) {
                            view.links_complete = true;
                        }
                        self.next_dump()?;
                    }
                    _ => {}
                },
            }
        }
        Ok(outcome)
    }
}

/// Why a namespace's socket could not be made.
#[derive(Debug)]
pub enum OpenError {
    /// Entering the namespace or making the socket in it failed (it may be gone).
    Namespace(io::Error),
    /// Going back to the loop's own namespace failed: the thread cannot go on.
    Return(io::Error),
}

fn set_namespace(file: &File) -> io::Result<()> {
    // SAFETY: setns with a namespace file held open for the call; only the calling
    // (loop) thread moves, and it moves back before it does anything else.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking NETLINK_ROUTE socket in the calling thread's namespace, joined to the
/// forwarding, link and address groups (and the nsid group if asked).
fn route_socket(nsid_events: bool) -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    let groups = forwarding::NETCONF_GROUPS.iter().copied().chain([
        RTNLGRP_LINK,
        RTNLGRP_IPV4_IFADDR,
        RTNLGRP_IPV6_IFADDR,
    ]);
    for group in groups {
        socket.add_membership(group)?;
    }
    if nsid_events {
        socket.add_membership(RTNLGRP_NSID)?;
    }
    socket.set_non_blocking(true)?;
    Ok(socket)
}
