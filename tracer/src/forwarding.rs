//! IPv4 and IPv6 forwarding state of every network namespace, and every change to it.
//!
//! Forwarding is the setting behind the incident: Docker turns it on, a sysctl reload
//! turns it off again, and published ports stop working for other hosts. For each
//! namespace dropgate knows, a thread enters it, asks the kernel for the state of every
//! interface of both families (one `RTM_GETNETCONF` dump with `AF_UNSPEC`) and then
//! listens for `RTM_NEWNETCONF` events of both, so a flip is seen when it happens, not
//! at the next poll. A listener ends when its
//! namespace disappears, so dropgate never keeps a deleted namespace alive.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::{
    netlink::{self, attributes, netlink_messages},
    netns::Names,
};

const RTM_NEWNETCONF: u16 = 80;
const RTM_GETNETCONF: u16 = 82;
const NETCONFA_IFINDEX: u16 = 1;
const NETCONFA_FORWARDING: u16 = 2;
const NETCONFA_IFINDEX_ALL: i32 = -1;
const NETCONFA_IFINDEX_DEFAULT: i32 = -2;
const RTNLGRP_IPV4_NETCONF: u32 = 24;
const RTNLGRP_IPV6_NETCONF: u32 = 25;

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

struct Listener {
    name: String,
    stop: Arc<AtomicBool>,
}

/// Watches forwarding in every known namespace; cheap to read at scrape time.
pub struct ForwardingWatch {
    state: Arc<Mutex<HashMap<u32, NamespaceForwarding>>>,
    listeners: Mutex<HashMap<u32, Listener>>,
    names: Arc<Names>,
}

impl ForwardingWatch {
    /// Starts watching; a background thread picks up new namespaces every second.
    pub fn start(names: Arc<Names>) -> Arc<Self> {
        let watch = Arc::new(Self {
            state: Arc::default(),
            listeners: Mutex::default(),
            names,
        });
        let weak = Arc::downgrade(&watch);
        std::thread::Builder::new()
            .name("forwarding-scan".into())
            .spawn(move || {
                while let Some(watch) = weak.upgrade() {
                    watch.rescan();
                    drop(watch);
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .expect("spawn the forwarding scanner");
        watch
    }

    /// A copy of the current state, by namespace label.
    ///
    /// Takes one lock at a time, never both: the scanner holds `listeners` while it
    /// starts and stops listeners, and a scrape that held `state` while waiting for
    /// `listeners` could meet a scanner waiting for `state` — and hang the gateway.
    pub fn snapshot(&self) -> Vec<(String, NamespaceForwarding)> {
        let names: HashMap<u32, String> = self
            .listeners
            .lock()
            .expect("listeners lock")
            .iter()
            .map(|(inode, listener)| (*inode, listener.name.clone()))
            .collect();
        let state = self.state.lock().expect("forwarding lock");
        let mut out: Vec<(String, NamespaceForwarding)> = state
            .iter()
            .filter_map(|(inode, ns)| Some((names.get(inode)?.clone(), ns.clone())))
            .collect();
        drop(state);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn rescan(&self) {
        let mut present: Vec<(u32, String, PathBuf)> = self.names.named();
        let own = self.names.own_inode();
        if !present.iter().any(|(inode, _, _)| *inode == own) {
            present.push((
                own,
                crate::netns::OWN_NAMESPACE.into(),
                PathBuf::from("/proc/self/ns/net"),
            ));
        }
        self.follow(present, own);
    }

    /// Stops the listeners of namespaces no longer `present`, forgets their state, and
    /// starts listeners for new ones. Like [`Self::snapshot`], never holds both locks.
    fn follow(&self, present: Vec<(u32, String, PathBuf)>, own: u32) {
        let mut gone = Vec::new();
        {
            let mut listeners = self.listeners.lock().expect("listeners lock");
            listeners.retain(|inode, listener| {
                let keep = present.iter().any(|(i, _, _)| i == inode);
                if !keep {
                    listener.stop.store(true, Ordering::Relaxed);
                    gone.push(*inode);
                }
                keep
            });
            for (inode, name, path) in present {
                if listeners.contains_key(&inode) {
                    continue;
                }
                let name = if inode == own {
                    crate::netns::OWN_NAMESPACE.to_owned()
                } else {
                    name
                };
                let stop = Arc::new(AtomicBool::new(false));
                let state = Arc::clone(&self.state);
                let thread_stop = Arc::clone(&stop);
                let spawned = std::thread::Builder::new()
                    .name(format!("netconf-{inode}"))
                    .spawn(move || {
                        if let Err(err) = listen(&path, inode, &state, &thread_stop) {
                            tracing::debug!("forwarding watch of {} ended: {err}", path.display());
                        }
                    });
                if spawned.is_ok() {
                    listeners.insert(inode, Listener { name, stop });
                }
            }
        }
        if !gone.is_empty() {
            let mut state = self.state.lock().expect("forwarding lock");
            for inode in gone {
                state.remove(&inode);
            }
        }
    }
}

/// Enters the namespace, dumps the forwarding state, then follows NETCONF events.
fn listen(
    ns_path: &PathBuf,
    inode: u32,
    state: &Mutex<HashMap<u32, NamespaceForwarding>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let ns = File::open(ns_path)?;
    // SAFETY: setns on this dedicated thread only; it never returns to the pool.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(ns);
    let groups = (1 << (RTNLGRP_IPV4_NETCONF - 1)) | (1 << (RTNLGRP_IPV6_NETCONF - 1));
    let socket = netlink::route_socket(groups, Duration::from_secs(1))?;
    send_dump_request(&socket)?;
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: recv into a buffer we own, with its true length.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => continue,
                _ => return Err(err),
            }
        }
        let updates = parse_netconf(&buf[..n as usize]);
        if updates.is_empty() {
            continue;
        }
        let mut state = state.lock().expect("forwarding lock");
        // Checked under the lock: once the scanner has removed this namespace's state
        // (after setting `stop`), a late update must not bring it back.
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let ns = state.entry(inode).or_default();
        for update in updates {
            apply(ns, update);
        }
    }
    Ok(())
}

fn apply(ns: &mut NamespaceForwarding, update: NetconfUpdate) {
    let (all, interfaces) = match update.family {
        Family::Ipv4 => (&mut ns.all, &mut ns.interfaces),
        Family::Ipv6 => (&mut ns.ipv6_all, &mut ns.ipv6_interfaces),
    };
    match update.ifindex {
        NETCONFA_IFINDEX_ALL => {
            // `changes` is `dropgate_forwarding_changes_total`: flips of net.ipv4.ip_forward.
            if update.family == Family::Ipv4 && all.is_some_and(|was| was != update.forwarding) {
                ns.changes += 1;
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

fn send_dump_request(socket: &OwnedFd) -> std::io::Result<()> {
    // nlmsghdr (16 bytes) + netconfmsg (1 byte family, padded to 4).
    let mut msg = [0u8; 20];
    msg[0..4].copy_from_slice(&20u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&RTM_GETNETCONF.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // AF_UNSPEC: the kernel answers for every family with NETCONF (IPv4, IPv6, MPLS) in
    // one dump; a second dump could only start once the first is done.
    msg[16] = libc::AF_UNSPEC as u8;
    // SAFETY: send from a buffer we own, with its true length.
    let n = unsafe { libc::send(socket.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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

    /// The scanner must never wait for `state` while holding `listeners`: a scrape
    /// takes `state` first (it did, and any reader may), and the two would wait for
    /// each other forever. Here the test is that scrape, holding `state` while the
    /// scanner forgets a vanished namespace.
    #[test]
    fn forgetting_a_namespace_never_waits_for_state_while_holding_listeners() {
        const GONE: u32 = 7;
        let watch = Arc::new(ForwardingWatch {
            state: Arc::new(Mutex::new(HashMap::from([(
                GONE,
                NamespaceForwarding::default(),
            )]))),
            listeners: Mutex::new(HashMap::from([(
                GONE,
                Listener {
                    name: "gone".into(),
                    stop: Arc::default(),
                },
            )])),
            names: Arc::new(Names::new()),
        });
        let state = watch.state.lock().expect("forwarding lock");
        let scanner = std::thread::spawn({
            let watch = Arc::clone(&watch);
            // Nothing present any more: the listener of GONE is stopped, its state removed.
            move || watch.follow(Vec::new(), 0)
        });
        // While this thread holds `state`, `listeners` must become free.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut free = false;
        while std::time::Instant::now() < deadline {
            // Give the scanner time to reach the point where it needs `state`.
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(listeners) = watch.listeners.try_lock() {
                free = listeners.is_empty();
                if free {
                    break;
                }
            }
        }
        drop(state);
        scanner
            .join()
            .expect("the scanner finishes once state is free");
        assert!(
            free,
            "the scanner held `listeners` while waiting for `state`: a scrape doing the same in the other order deadlocks"
        );
        assert!(
            watch.state.lock().expect("forwarding lock").is_empty(),
            "the vanished namespace's state is forgotten"
        );
        assert!(watch.snapshot().is_empty());
    }

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
    fn counts_changes_of_the_global_ipv4_switch_only() {
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
        assert_eq!(ns.interfaces.get(&2).map(|(_, on)| *on), Some(false));
        assert_eq!(ns.ipv6_all, Some(false), "IPv6 kept apart from IPv4");
        assert_eq!(ns.ipv6_interfaces.get(&2).map(|(_, on)| *on), Some(true));
    }
}
