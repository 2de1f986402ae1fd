//! One thread and one epoll for every network namespace's netlink socket.
//!
//! A Docker or Kubernetes host has a namespace per container. For each, dropgate keeps a
//! NETLINK_ROUTE socket that follows its forwarding state (NETCONF), its links and its
//! addresses. A netlink socket belongs to the namespace it was made in, so this thread
//! enters each namespace only to make its socket, returns at once, and then serves every
//! socket from one epoll (mio, already built for tokio): the thread count and the idle
//! cost do not grow with the number of namespaces, and the state arrives as events, not
//! by polling. What is known is kept per namespace in a [`View`] that scrapes and the
//! enrichment read as copies.
//!
//! Namespaces are learned from events ([`discovery`]) with a slow rescan behind them. A
//! socket keeps its namespace alive, so once a namespace is no longer referred to by any
//! file, process, thread or descriptor (see [`Names`]) its socket is closed at once, and it
//! can end.

mod discovery;
pub mod watched;

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use mio::{unix::SourceFd, Events, Interest, Poll, Token, Waker};

use crate::{
    enrich::rtnetlink::BridgeSubnet,
    forwarding::NamespaceForwarding,
    netns::{Names, OWN_NAMESPACE},
};

use self::{
    discovery::{Discovery, ProcessEvent, ProcessEvents},
    watched::{OpenError, View, Watched},
};

/// Whatever the events say, every namespace source is read again this often.
const SAFETY_RESCAN: Duration = Duration::from_secs(30);
/// Events come in bursts (a file, then its mount; a hundred containers at once): one
/// rescan at most this often serves a whole burst.
const RESCAN_AT_MOST_EVERY: Duration = Duration::from_millis(100);
/// Process events are read in batches this far apart: a busy host (a build, probes that
/// exec every second) starts many programs, and a wake-up for each would cost more than
/// the look at it.
const PROCESS_EVENTS_EVERY: Duration = Duration::from_millis(250);

const WAKER: Token = Token(0);
const FILES: Token = Token(1);
const MOUNTS: Token = Token(2);
const PROCESSES: Token = Token(3);
/// Namespace sockets are registered under their inode plus this.
const FIRST_NAMESPACE: usize = 16;

/// A handle on the loop; the thread ends once every handle is dropped.
pub struct NetlinkLoop {
    shared: Arc<Shared>,
    waker: Arc<Waker>,
}

/// What the thread and the readers share.
struct Shared {
    views: Mutex<HashMap<u32, View>>,
    /// Told whenever a namespace came or went or an interface went (what can make drop
    /// keys evictable), so that the evictor sleeps until there is one.
    changed: tokio::sync::Notify,
}

impl Shared {
    fn tell_change(&self) {
        self.changed.notify_one();
    }
}

impl NetlinkLoop {
    /// Starts the thread. Without it (no epoll, no thread: resource limits) nothing is
    /// watched and the views stay empty; that is logged.
    pub fn start(names: Arc<Names>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            views: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        });
        names.use_links({
            let shared = Arc::downgrade(&shared);
            Box::new(move |inode, ifindexes| {
                let shared = shared.upgrade()?;
                let views = shared.views.lock().expect("namespace views lock");
                let view = views.get(&inode).filter(|view| view.links_complete)?;
                Some(
                    ifindexes
                        .iter()
                        .map(|index| view.link_state(*index))
                        .collect(),
                )
            })
        });
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let discovery = Discovery::new()?;
        discovery.register(poll.registry(), FILES, MOUNTS)?;
        let processes = match ProcessEvents::new()
            .and_then(|events| events.register(poll.registry(), PROCESSES).map(|()| events))
        {
            Ok(events) => Some(events),
            Err(err) => {
                tracing::info!("no process events ({err}): namespaces only a process holds are found by the rescan every {}s", SAFETY_RESCAN.as_secs());
                None
            }
        };
        // A namespace found by a lookup elsewhere (a drop from an unknown one) wakes the
        // loop, which then takes it up.
        names.on_change({
            let waker = Arc::downgrade(&waker);
            move || {
                if let Some(waker) = waker.upgrade() {
                    let _ = waker.wake();
                }
            }
        });
        let state = LoopState {
            shared: Arc::downgrade(&shared),
            names,
            poll,
            discovery,
            processes,
            naming_pids: HashSet::new(),
            own: File::open("/proc/thread-self/ns/net")?,
            watched: HashMap::new(),
            last_scan: None,
            last_full_scan: None,
            scan_due: Some(Instant::now()),
            process_batch_due: None,
            buffer: vec![0; 64 * 1024],
        };
        std::thread::Builder::new()
            .name("dropgate-netns".into())
            .spawn(move || state.run())?;
        Ok(Self { shared, waker })
    }

    /// Forwarding state by namespace label, sorted by label.
    pub fn forwarding(&self) -> Vec<(String, NamespaceForwarding)> {
        let views = self.shared.views.lock().expect("namespace views lock");
        let mut out: Vec<(String, NamespaceForwarding)> = views
            .values()
            .map(|view| (view.name.clone(), view.named_forwarding()))
            .collect();
        drop(views);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Returns once a namespace came or went or an interface went away (at once if one
    /// did since the last call returned).
    pub async fn changed(&self) {
        self.shared.changed.notified().await;
    }

    /// A number that grows whenever a link, address or forwarding setting of the
    /// namespace with this inode may have changed; `None` while it is not watched.
    pub fn datagrams_of(&self, inode: u32) -> Option<u64> {
        let views = self.shared.views.lock().expect("namespace views lock");
        views.get(&inode).map(|view| view.datagrams)
    }

    /// The subnets on the bridges of the namespace with this inode.
    pub fn bridges_of(&self, inode: u32) -> Vec<BridgeSubnet> {
        let views = self.shared.views.lock().expect("namespace views lock");
        views
            .get(&inode)
            .map(|view| view.links.bridges())
            .unwrap_or_default()
    }
}

impl Drop for NetlinkLoop {
    fn drop(&mut self) {
        // The thread sees its shared state gone when it wakes.
        let _ = self.waker.wake();
    }
}

/// The thread's own state.
struct LoopState {
    shared: Weak<Shared>,
    names: Arc<Names>,
    poll: Poll,
    discovery: Discovery,
    processes: Option<ProcessEvents>,
    /// Processes that namespaces are named after (`pid:<pid>:<comm>`): their end may
    /// end the namespace, or rename it.
    naming_pids: HashSet<u32>,
    /// The thread's namespace, to come back to after making a socket elsewhere.
    own: File,
    watched: HashMap<u32, Watched>,
    last_scan: Option<Instant>,
    /// The last look that ignored what earlier looks found (every [`SAFETY_RESCAN`]).
    last_full_scan: Option<Instant>,
    /// When the namespaces are to be looked for next.
    scan_due: Option<Instant>,
    /// When the process events that woke the loop are to be read; until then their
    /// socket is out of the poll, so that further events do not wake it.
    process_batch_due: Option<Instant>,
    /// One receive buffer for every socket (a dump's datagram is at most 32 KiB).
    buffer: Vec<u8>,
}

impl LoopState {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let safety = self
                .last_full_scan
                .map_or(now, |at| at + SAFETY_RESCAN)
                .max(now);
            let next = [self.scan_due, self.process_batch_due]
                .into_iter()
                .flatten()
                .fold(safety, Instant::min);
            if let Err(err) = self.poll.poll(&mut events, Some(next - now)) {
                if err.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("namespace loop stopped: {err}");
                    return;
                }
            }
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let mut woken = false;
            for event in &events {
                match event.token() {
                    WAKER => woken = true,
                    FILES => {
                        let changed = self.discovery.drain_files();
                        if !changed.is_empty() {
                            // Made, removed or made again under the same name: each of
                            // these is looked at afresh.
                            self.names.forget_files(&changed);
                            self.rescan_soon();
                        }
                    }
                    MOUNTS => self.rescan_soon(),
                    PROCESSES => self.batch_process_events(),
                    Token(token) => {
                        let Some(inode) = token
                            .checked_sub(FIRST_NAMESPACE)
                            .and_then(|i| u32::try_from(i).ok())
                        else {
                            continue;
                        };
                        if self.read(&shared, inode) {
                            self.rescan_soon();
                        }
                    }
                }
            }
            if woken {
                // Another lookup found namespaces: take up its list as it is.
                let known = self.names.known();
                if let Err(err) = self.follow(&shared, known) {
                    tracing::error!("namespace loop stopped: {err}");
                    return;
                }
            }
            let now = Instant::now();
            if self.process_batch_due.is_some_and(|due| due <= now) {
                self.process_batch_due = None;
                self.process_events();
                self.resume_process_events();
            }
            let full = self
                .last_full_scan
                .is_none_or(|at| now >= at + SAFETY_RESCAN);
            if self.scan_due.is_some_and(|due| due <= now) || full {
                self.scan_due = None;
                self.last_scan = Some(now);
                if full {
                    self.last_full_scan = Some(now);
                }
                self.discovery.watch_folders();
                let found = self.names.scan(full);
                if let Err(err) = self.follow(&shared, found) {
                    tracing::error!("namespace loop stopped: {err}");
                    return;
                }
            }
        }
    }

    /// Process events are waiting: read them [`PROCESS_EVENTS_EVERY`] from now, with
    /// whatever else comes until then.
    fn batch_process_events(&mut self) {
        if self.process_batch_due.is_some() {
            return;
        }
        if let Some(processes) = &self.processes {
            if let Err(err) = processes.deregister(self.poll.registry()) {
                // Still in the poll: read them now, one wake-up each.
                tracing::debug!("process events stay in the poll: {err}");
                self.process_events();
                return;
            }
        }
        self.process_batch_due = Some(Instant::now() + PROCESS_EVENTS_EVERY);
    }

    fn resume_process_events(&mut self) {
        if let Some(processes) = &self.processes {
            if let Err(err) = processes.register(self.poll.registry(), PROCESSES) {
                tracing::warn!("process events no longer followed: {err}");
                self.processes = None;
            }
        }
    }

    /// A program started in a namespace not watched yet, or a process a namespace is
    /// named after ended: look for namespaces again.
    fn process_events(&mut self) {
        let Some(processes) = &mut self.processes else {
            return;
        };
        let mut look = false;
        for event in processes.drain() {
            look |= match event {
                ProcessEvent::Exec(pid) => {
                    let elsewhere =
                        crate::netns::inode_of(Path::new(&format!("/proc/{pid}/ns/net")))
                            .is_some_and(|inode| !self.watched.contains_key(&inode));
                    if elsewhere {
                        // It may have moved since the last look (unshare, then exec).
                        self.names.forget_process(pid);
                    }
                    elsewhere
                }
                ProcessEvent::Exit(pid) => self.naming_pids.contains(&pid),
            };
        }
        if look {
            self.rescan_soon();
        }
    }

    /// Looks for namespaces soon: now, or once the last look is old enough.
    fn rescan_soon(&mut self) {
        let earliest = self
            .last_scan
            .map_or_else(Instant::now, |at| at + RESCAN_AT_MOST_EVERY);
        self.scan_due = Some(self.scan_due.map_or(earliest, |due| due.min(earliest)));
    }

    /// Watches every namespace in `present` (and the own one) and nothing else.
    fn follow(
        &mut self,
        shared: &Shared,
        mut present: Vec<(u32, String, PathBuf)>,
    ) -> Result<(), io::Error> {
        let own = self.names.own_inode();
        present.retain(|(inode, _, _)| *inode != own);
        self.naming_pids = present
            .iter()
            .filter_map(|(_, name, _)| name.strip_prefix("pid:")?.split(':').next()?.parse().ok())
            .collect();
        present.push((
            own,
            OWN_NAMESPACE.into(),
            PathBuf::from("/proc/self/ns/net"),
        ));
        let gone: Vec<u32> = self
            .watched
            .keys()
            .copied()
            .filter(|inode| !present.iter().any(|(i, _, _)| i == inode))
            .collect();
        if !gone.is_empty() {
            shared.tell_change();
        }
        for inode in gone {
            if let Some(watched) = self.watched.remove(&inode) {
                let _ = self.poll.registry().deregister(&mut SourceFd(
                    &std::os::fd::AsRawFd::as_raw_fd(&watched.socket),
                ));
            }
            shared
                .views
                .lock()
                .expect("namespace views lock")
                .remove(&inode);
        }
        for (inode, name, path) in present {
            if self.watched.contains_key(&inode) {
                if let Some(view) = shared
                    .views
                    .lock()
                    .expect("namespace views lock")
                    .get_mut(&inode)
                {
                    if view.name != name {
                        view.name = name;
                    }
                }
                continue;
            }
            let back = (inode != own).then_some(&self.own);
            match Watched::open(&path, back, inode == own) {
                Ok(watched) => {
                    self.poll.registry().register(
                        &mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&watched.socket)),
                        Token(FIRST_NAMESPACE + inode as usize),
                        Interest::READABLE,
                    )?;
                    self.watched.insert(inode, watched);
                    shared.tell_change();
                    shared.views.lock().expect("namespace views lock").insert(
                        inode,
                        View {
                            name,
                            ..View::default()
                        },
                    );
                }
                // Gone between the look and the socket, or not ours to enter.
                Err(OpenError::Namespace(err)) => {
                    tracing::debug!("namespace {name} ({}): {err}", path.display());
                }
                Err(OpenError::Return(err)) => return Err(err),
            }
        }
        Ok(())
    }

    /// Reads everything waiting on a namespace's socket; whether namespaces came or went
    /// (nsid messages).
    fn read(&mut self, shared: &Shared, inode: u32) -> bool {
        let Some(watched) = self.watched.get_mut(&inode) else {
            return false;
        };
        let mut namespaces_changed = false;
        loop {
            let mut space = &mut self.buffer[..];
            match watched.socket.recv(&mut space, 0) {
                Ok(0) => return namespaces_changed,
                Ok(n) => {
                    let mut views = shared.views.lock().expect("namespace views lock");
                    let Some(view) = views.get_mut(&inode) else {
                        return namespaces_changed;
                    };
                    view.datagrams += 1;
                    match watched.receive(&self.buffer[..n], view) {
                        Ok(outcome) => {
                            namespaces_changed |= outcome.namespaces_changed;
                            if outcome.links_removed {
                                shared.tell_change();
                            }
                        }
                        Err(err) => {
                            tracing::debug!("namespace {}: {err}", view.name);
                        }
                    }
                }
                Err(err) => match err.kind() {
                    io::ErrorKind::WouldBlock => return namespaces_changed,
                    io::ErrorKind::Interrupted => {}
                    _ if err.raw_os_error() == Some(libc::ENOBUFS) => {
                        // Events were lost: ask for the whole state again.
                        let mut views = shared.views.lock().expect("namespace views lock");
                        if let Some(view) = views.get_mut(&inode) {
                            view.datagrams += 1;
                            tracing::debug!("namespace {}: events lost, asking again", view.name);
                            if let Err(err) = watched.resync(view) {
                                tracing::debug!("namespace {}: {err}", view.name);
                            }
                        }
                    }
                    _ => {
                        tracing::debug!("namespace {inode}: {err}");
                        return namespaces_changed;
                    }
                },
            }
        }
    }
}
