//! Names for network namespaces and interfaces, as the kernel program reports them only
//! by number (netns inode, ifindex).
//!
//! A namespace is named after its bind mount (`ip netns` in `/run/netns`, Docker's in
//! `/run/docker/netns`), else after a process living in it, else after a process one of
//! whose other threads lives in it or that holds it open (found by a walk made only when a
//! drop names a namespace nothing else refers to), else by its inode. Interface
//! names are asked from inside the namespace they belong to (an ifindex means nothing
//! outside it). The namespace loop keeps every watched namespace's links from its
//! netlink events and answers from them ([`Names::use_links`]); only for a namespace it
//! does not watch (no loop: `diagnose`, `watch`) a short-lived thread enters the
//! namespace, asks the kernel with `SIOCGIFNAME`, and ends, so the rest of the process
//! never changes namespace.
//!
//! Inodes are not identities: a new namespace may get a dead one's inode. The kernel
//! program also reports the namespace's `net_cookie`, which is never reused; here each
//! inode's live cookie is learned (`SO_NETNS_COOKIE` on a socket made inside it), so
//! that counts and names of a dead namespace are never given to its successor.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, RwLock},
    time::{Duration, Instant},
};

/// Label value for the namespace dropgate itself runs in.
pub const OWN_NAMESPACE: &str = "root";

/// Label value for the machine's initial namespace when dropgate runs in another one.
pub const INIT_NAMESPACE: &str = "init";

/// Folders holding one bind-mounted namespace file per named namespace.
pub const NAMED_NAMESPACE_DIRS: [&str; 3] =
    ["/run/netns", "/run/docker/netns", "/var/run/docker/netns"];

/// Re-scanning is cheap but not free: at most this often when a name is missing.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Time between two walks of every thread and descriptor: the last walk's cost times
/// [`WALK_COST_FACTOR`] (at most 1 % of a core while walks are asked for), within these
/// bounds: a new namespace is named within a second on a small host (a walk of 80
/// processes takes ~4 ms), and on a host with 100k descriptors (a walk of ~0.4 s) one
/// walk per 10 s at most, however many namespaces ask.
const WALK_GAP_MIN: Duration = Duration::from_secs(1);
const WALK_GAP_MAX: Duration = Duration::from_secs(10);
const WALK_COST_FACTOR: u32 = 100;

/// A namespace found held and asked for is checked to be still held at most this often.
const HELD_CHECKED_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
struct Namespace {
    name: String,
    /// A file that refers to the namespace, to enter it.
    path: PathBuf,
}

/// The cookie of the namespace that had an inode when it was last asked.
#[derive(Clone, Debug)]
struct LiveCookie {
    cookie: u64,
    /// The file it was asked through: another file for the inode means ask again.
    path: PathBuf,
}

#[derive(Default)]
struct State {
    namespaces: HashMap<u32, Namespace>,
    interfaces: HashMap<(u32, u32), String>,
    cookies: HashMap<u32, LiveCookie>,
    /// Cookies seen under an inode that another namespace held when asked: gone for good
    /// (two living namespaces never share an inode).
    dead_cookies: HashSet<u64>,
    last_scan: Option<Instant>,
    /// Told whenever a scan finds the set of namespaces changed.
    on_change: Option<Box<dyn Fn() + Send + Sync>>,
    /// Namespace files in the folders as of the last look, with their inodes.
    entries: HashMap<PathBuf, u32>,
    /// Every process's namespace inode as of the last look.
    pids: HashMap<u32, u32>,
    /// Namespaces the last walk found held by a thread that is not its process's main
    /// one, or by an open descriptor; every look checks that each is still held there.
    held: HashMap<u32, Namespace>,
    /// When the last walk started (it is rate-limited), and the gap it earned.
    last_walk: Option<Instant>,
    walk_gap: Duration,
    /// A walk runs (without the lock): no second one meanwhile.
    walking: bool,
    /// When the namespaces found held were last checked.
    held_checked: Option<Instant>,
    /// Since when no namespace found held has been let go: a namespace missing from a
    /// look then was referred to by nothing at that time. `None` while the last walk is
    /// out of date (a holder let one go after it).
    walk_covers: Option<Instant>,
}

/// Whether the namespace a drop key names still exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceState {
    /// It exists (or cannot be told apart from one that does: never evicted).
    Alive,
    /// Gone for certain: another namespace holds its inode now (its cookie differs).
    Replaced,
    /// No file, process, thread or descriptor refers to it in the look made at `scanned`.
    Missing { scanned: Instant },
}

/// What an event-fed link table says of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// It exists, with this name.
    Named(String),
    /// It does not exist (any more).
    Gone,
    /// Not in the table, and newer than every interface the table has seen: it may
    /// exist with its event not read yet.
    NotSeenYet,
}

/// What the link tables say of interfaces `ifindexes` of namespace `inode`; `None` when
/// they do not know that namespace's interfaces (not watched, or its first dump of links
/// not complete yet).
pub type LinkNames = Box<dyn Fn(u32, &[u32]) -> Option<Vec<LinkState>> + Send + Sync>;

/// Resolves namespace inodes and (namespace, ifindex) pairs to names; caches both.
pub struct Names {
    own: u32,
    state: Mutex<State>,
    /// The namespace loop's link tables, when it runs.
    links: RwLock<Option<LinkNames>>,
}

impl Default for Names {
    fn default() -> Self {
        Self::new()
    }
}

impl Names {
    #[must_use]
    pub fn new() -> Self {
        let own = inode_of(Path::new("/proc/self/ns/net")).unwrap_or(0);
        Self {
            own,
            state: Mutex::new(State::default()),
            links: RwLock::new(None),
        }
    }

    /// Answers interface questions from `links` (the namespace loop's tables) for every
    /// namespace it knows, instead of entering the namespace to ask: on a host with many
    /// namespaces that is a thread and two `setns` per question.
    pub fn use_links(&self, links: LinkNames) {
        *self.links.write().expect("link names lock") = Some(links);
    }

    /// Whether the link tables answer for namespace `inode` (a question costs a lookup,
    /// not a thread).
    pub fn knows_links(&self, inode: u32) -> bool {
        self.link_names(inode, &[]).is_some()
    }

    /// What the link tables say about `ifindexes` of namespace `inode`, if they know it.
    fn link_names(&self, inode: u32, ifindexes: &[u32]) -> Option<Vec<LinkState>> {
        let links = self.links.read().expect("link names lock");
        links.as_ref().and_then(|links| links(inode, ifindexes))
    }

    /// Inode of the namespace dropgate runs in.
    #[must_use]
    pub fn own_inode(&self) -> u32 {
        self.own
    }

    /// A label value for the namespace with this inode.
    pub fn namespace(&self, inode: u32) -> String {
        if inode == 0 {
            return "unknown".into();
        }
        if inode == self.own {
            return OWN_NAMESPACE.into();
        }
        let state = self.look_for(self.state.lock().expect("names lock"), inode);
        state
            .namespaces
            .get(&inode)
            .map_or_else(|| inode.to_string(), |ns| ns.name.clone())
    }

    /// A label value for interface `ifindex` of namespace `inode`.
    pub fn interface(&self, inode: u32, ifindex: u32) -> String {
        if ifindex == 0 {
            return "none".into();
        }
        if let Some(mut names) = self.link_names(inode, &[ifindex]) {
            return match names.pop() {
                Some(LinkState::Named(name)) => name,
                // Where its counts go once the key is judged (it may have gone since
                // this read's judgement): no series in between.
                Some(LinkState::Gone) => crate::collector::GONE.into(),
                // Maybe not told yet: the number, as when it cannot be asked.
                _ => format!("if{ifindex}"),
            };
        }
        let mut state = self.state.lock().expect("names lock");
        if let Some(name) = state.interfaces.get(&(inode, ifindex)) {
            return name.clone();
        }
        let path = if inode == self.own {
            Some(PathBuf::from("/proc/self/ns/net"))
        } else {
            state = self.look_for(state, inode);
            state.namespaces.get(&inode).map(|ns| ns.path.clone())
        };
        match path.and_then(|path| interface_name_in(&path, ifindex)) {
            Some(name) => {
                state.interfaces.insert((inode, ifindex), name.clone());
                name
            }
            // Not cached: the interface may appear (or its namespace get a name) later.
            None => format!("if{ifindex}"),
        }
    }

    /// Whether the namespace with this inode and cookie (0: unknown) still exists.
    pub fn namespace_state(&self, inode: u32, cookie: u64) -> NamespaceState {
        if inode == 0 {
            return NamespaceState::Alive;
        }
        let mut state = self.state.lock().expect("names lock");
        let path = if inode == self.own {
            PathBuf::from("/proc/self/ns/net")
        } else {
            state = self.look_for(state, inode);
            match state.namespaces.get(&inode) {
                Some(ns) => ns.path.clone(),
                None => {
                    // Only a walk sees every holder: missing since the last one that is
                    // still up to date, else not judged yet (the next walk will tell).
                    return match (state.walk_covers, state.last_scan) {
                        (Some(walked), Some(scanned)) => NamespaceState::Missing {
                            scanned: walked.min(scanned),
                        },
                        _ => NamespaceState::Alive,
                    };
                }
            }
        };
        if cookie == 0 {
            return NamespaceState::Alive;
        }
        if state.dead_cookies.contains(&cookie) {
            return NamespaceState::Replaced;
        }
        let known = state.cookies.get(&inode).cloned();
        let must_ask = known
            .as_ref()
            .is_none_or(|live| live.path != path || live.cookie != cookie);
        let live = if must_ask {
            let Some(learned) = cookie_in(&path) else {
                // Cannot ask (no permission, raced with its end): never evict on a guess.
                return NamespaceState::Alive;
            };
            if known.as_ref().is_some_and(|k| k.cookie != learned) {
                // Another namespace has the inode now: its interfaces are not the old ones.
                state.interfaces.retain(|(ns, _), _| *ns != inode);
            }
            state.cookies.insert(
                inode,
                LiveCookie {
                    cookie: learned,
                    path,
                },
            );
            learned
        } else {
            known.map_or(cookie, |k| k.cookie)
        };
        if live == cookie {
            NamespaceState::Alive
        } else {
            state.dead_cookies.insert(cookie);
            NamespaceState::Replaced
        }
    }

    /// Which of `ifindexes` are gone from the namespace with this inode, and which are
    /// not in its link table but may just not be told yet (see [`LinkState`]); from the
    /// link tables, else asked from inside the namespace. `None` when it cannot be told.
    pub fn gone_interfaces(&self, inode: u32, ifindexes: &[u32]) -> Option<(Vec<u32>, Vec<u32>)> {
        if let Some(states) = self.link_names(inode, ifindexes) {
            let mut gone = Vec::new();
            let mut not_seen = Vec::new();
            for (ifindex, state) in ifindexes.iter().zip(states) {
                match state {
                    LinkState::Named(_) => {}
                    LinkState::Gone => gone.push(*ifindex),
                    LinkState::NotSeenYet => not_seen.push(*ifindex),
                }
            }
            return Some((gone, not_seen));
        }
        let existing = self.existing_interfaces(inode, ifindexes)?;
        let gone = ifindexes
            .iter()
            .copied()
            .filter(|i| !existing.contains(i))
            .collect();
        Some((gone, Vec::new()))
    }

    /// Which of `ifindexes` exist in the namespace with this inode (asked from inside
    /// it); `None` when it cannot be entered. Forgets the cached names of the others.
    fn existing_interfaces(&self, inode: u32, ifindexes: &[u32]) -> Option<Vec<u32>> {
        let path = if inode == self.own {
            PathBuf::from("/proc/self/ns/net")
        } else {
            self.state
                .lock()
                .expect("names lock")
                .namespaces
                .get(&inode)?
                .path
                .clone()
        };
        let existing: Vec<u32> = in_namespace(&path, || {
            ifindexes
                .iter()
                .copied()
                .filter(|ifindex| index_to_name(*ifindex).is_some())
                .collect()
        })?;
        let mut state = self.state.lock().expect("names lock");
        state.interfaces.retain(|(ns, ifindex), _| {
            *ns != inode || existing.contains(ifindex) || !ifindexes.contains(ifindex)
        });
        Some(existing)
    }

    /// Forgets a dead cookie once no key carries it any more (keeps the set small).
    pub fn forget_cookie(&self, cookie: u64) {
        self.state
            .lock()
            .expect("names lock")
            .dead_cookies
            .remove(&cookie);
    }

    /// Paths of every namespace dropgate knows by name, with the name (looked for
    /// again if the last look is older than a second).
    pub fn named(&self) -> Vec<(u32, String, PathBuf)> {
        let mut state = self.state.lock().expect("names lock");
        Self::rescan(&mut state);
        Self::list(&state)
    }

    /// Like [`Self::named`], but always looks again (the namespace loop, told by an
    /// event that something changed): `full`, or only at entries and processes that are
    /// new since the last look.
    pub fn scan(&self, full: bool) -> Vec<(u32, String, PathBuf)> {
        let mut state = self.state.lock().expect("names lock");
        Self::scan_now(&mut state, full);
        Self::list(&state)
    }

    /// The next look that is not full stats these folder entries again (an event said
    /// they were made, removed or renamed).
    pub fn forget_files(&self, paths: &[PathBuf]) {
        let mut state = self.state.lock().expect("names lock");
        for path in paths {
            state.entries.remove(path);
        }
    }

    /// The next look that is not full asks this process for its namespace again.
    pub fn forget_process(&self, pid: u32) {
        self.state.lock().expect("names lock").pids.remove(&pid);
    }

    /// What the last look found, without looking again.
    pub fn known(&self) -> Vec<(u32, String, PathBuf)> {
        Self::list(&self.state.lock().expect("names lock"))
    }

    /// Calls `changed` (from whichever thread looked) whenever a look finds namespaces
    /// that came or went.
    pub fn on_change(&self, changed: impl Fn() + Send + Sync + 'static) {
        self.state.lock().expect("names lock").on_change = Some(Box::new(changed));
    }

    fn list(state: &State) -> Vec<(u32, String, PathBuf)> {
        state
            .namespaces
            .iter()
            .map(|(inode, ns)| (*inode, ns.name.clone(), ns.path.clone()))
            .collect()
    }

    /// Makes sure `inode` is looked for: the usual look (bind mounts, processes) if the
    /// last is old enough, then, if that does not know it, the walk of every thread and
    /// descriptor if the last is old enough. The walk runs without the lock (it may take
    /// a good part of a second on a host with very many descriptors, and drop samples and
    /// scrapes need names meanwhile), so the guard is handed back, taken anew.
    fn look_for<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        inode: u32,
    ) -> MutexGuard<'a, State> {
        Self::recheck_held(&mut state, inode);
        if state.namespaces.contains_key(&inode) {
            return state;
        }
        Self::rescan(&mut state);
        let due = !state.walking
            && state
                .last_walk
                .is_none_or(|at| at.elapsed() >= state.walk_gap);
        if state.namespaces.contains_key(&inode) || !due {
            return state;
        }
        let started = Instant::now();
        state.walking = true;
        state.last_walk = Some(started);
        let leaders = state.pids.clone();
        drop(state);
        let held = walk(&leaders);
        let mut state = self.state.lock().expect("names lock");
        state.walking = false;
        state.walk_gap = (started.elapsed() * WALK_COST_FACTOR).clamp(WALK_GAP_MIN, WALK_GAP_MAX);
        if state.last_walk == Some(started) {
            state.walk_covers = Some(started);
        }
        // else a holder let go meanwhile: the walk may have seen it before; the next
        // look drops it again and the next ask walks at once.
        Self::take_held(&mut state, held);
        state
    }

    /// Keeps what a walk found: the namespace loop is told of the ones nothing else
    /// refers to.
    fn take_held(state: &mut State, held: HashMap<u32, Namespace>) {
        state.held = held;
        let mut changed = false;
        for (inode, ns) in &state.held {
            if !state.namespaces.contains_key(inode) {
                state.namespaces.insert(*inode, ns.clone());
                changed = true;
            }
        }
        if changed {
            if let Some(changed) = &state.on_change {
                changed();
            }
        }
    }

    /// Keeps of the namespaces a walk found held by a thread or a descriptor those that
    /// still are (the holder may have let go or ended): one stat each. Returns the others.
    fn check_held(state: &mut State, nsfs: Option<u64>) -> Vec<(u32, Namespace)> {
        state.held_checked = Some(Instant::now());
        let mut let_go = Vec::new();
        state.held.retain(|inode, ns| {
            let held = still_held(&ns.path, *inode, nsfs);
            if !held {
                let_go.push((*inode, ns.clone()));
            }
            held
        });
        if !let_go.is_empty() {
            // The holder may hold it elsewhere now (a child it forked, another
            // descriptor): only a walk can tell it is gone, so the next one that is
            // asked for runs at once. Each of these follows a walk that found the
            // namespace, so walks stay at most twice as frequent as the gap says.
            state.walk_covers = None;
            state.last_walk = None;
        }
        let_go
    }

    /// Checks again (at most every [`HELD_CHECKED_EVERY`]) that the namespaces found
    /// held still are, when one of them is asked for, and forgets those let go. The
    /// look that the end of a holder's process sets off may come before the holder's
    /// other threads have ended, and the next full one is up to 30 s away.
    fn recheck_held(state: &mut State, inode: u32) {
        if !state.held.contains_key(&inode)
            || state
                .held_checked
                .is_some_and(|at| at.elapsed() < HELD_CHECKED_EVERY)
        {
            return;
        }
        let nsfs = std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev());
        let let_go = Self::check_held(state, nsfs);
        let mut changed = false;
        for (inode, ns) in let_go {
            if state
                .namespaces
                .get(&inode)
                .is_some_and(|known| known.path == ns.path)
            {
                state.namespaces.remove(&inode);
                state.interfaces.retain(|(netns, _), _| *netns != inode);
                state.cookies.remove(&inode);
                changed = true;
            }
        }
        if changed {
            if let Some(changed) = &state.on_change {
                changed();
            }
        }
    }

    fn rescan(state: &mut State) {
        if state
            .last_scan
            .is_some_and(|at| at.elapsed() < RESCAN_EVERY)
        {
            return;
        }
        Self::scan_now(state, true);
    }

    /// Looks for namespaces. A full look stats every folder entry and every process's
    /// namespace; otherwise entries and processes seen before are taken from the last
    /// look (a bind mount stays what it is while its file is listed; a process moving to
    /// another namespace shows in a full look, at most 30 s later, or through an exec),
    /// so that a burst of events on a host with many namespaces stays cheap.
    fn scan_now(state: &mut State, full: bool) {
        state.last_scan = Some(Instant::now());
        // `ip netns add` makes the file before it mounts the namespace on it: only a
        // file of the namespace filesystem (the device of our own) is a namespace.
        let nsfs = std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev());
        let mut found: HashMap<u32, Namespace> = HashMap::new();
        let mut entries_seen: HashMap<PathBuf, u32> = HashMap::new();
        for dir in NAMED_NAMESPACE_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let known = (!full).then(|| state.entries.get(&path).copied()).flatten();
                let inode = if let Some(inode) = known {
                    inode
                } else {
                    let Ok(metadata) = std::fs::metadata(&path) else {
                        continue;
                    };
                    if nsfs.is_some_and(|dev| dev != metadata.dev()) {
                        continue;
                    }
                    metadata.ino() as u32
                };
                entries_seen.insert(path.clone(), inode);
                let name = entry.file_name().to_string_lossy().into_owned();
                found.entry(inode).or_insert(Namespace { name, path });
            }
        }
        state.entries = entries_seen;
        // Namespaces without a bind mount (containers started by other runtimes, tools
        // using unshare) are reachable through any process inside them.
        let mut pids_seen: HashMap<u32, u32> = HashMap::new();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for entry in procs.flatten() {
                let pid = entry.file_name();
                let Some(pid) = pid
                    .to_str()
                    .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                let Ok(number) = pid.parse::<u32>() else {
                    continue;
                };
                let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
                let known = (!full).then(|| state.pids.get(&number).copied()).flatten();
                let Some(inode) = known.or_else(|| inode_of(&path)) else {
                    continue;
                };
                pids_seen.insert(number, inode);
                found.entry(inode).or_insert_with(|| {
                    // The name it had, if this process gave it.
                    if let Some(old) = state.namespaces.get(&inode).filter(|ns| ns.path == path) {
                        return old.clone();
                    }
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    // init (1) and kthreadd (2) always live in the machine's initial
                    // namespace; it has no bind mount, so give it a name people know.
                    let name = if matches!(pid, "1" | "2") {
                        INIT_NAMESPACE.to_owned()
                    } else {
                        format!("pid:{pid}:{}", comm.trim())
                    };
                    Namespace { name, path }
                });
            }
        }
        state.pids = pids_seen;
        Self::check_held(state, nsfs);
        for (inode, ns) in &state.held {
            found.entry(*inode).or_insert_with(|| ns.clone());
        }
        // A namespace that is gone takes its interface names with it: a later one with
        // the same inode has interfaces of its own.
        state
            .interfaces
            .retain(|(inode, _), _| found.contains_key(inode));
        state.cookies.retain(|inode, _| found.contains_key(inode));
        let changed = found.len() != state.namespaces.len()
            || found.iter().any(|(inode, ns)| {
                state
                    .namespaces
                    .get(inode)
                    .is_none_or(|old| old.name != ns.name)
            });
        state.namespaces = found;
        if changed {
            if let Some(changed) = &state.on_change {
                changed();
            }
        }
    }
}

/// Moves the calling thread into the network namespace `name` (in `/run/netns`) or at
/// the path `name`. Call before other threads exist so that they inherit it.
pub fn enter(name: &str) -> std::io::Result<()> {
    let path = if name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new("/run/netns").join(name)
    };
    let file = File::open(&path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot open network namespace {}: {e}", path.display()),
        )
    })?;
    // SAFETY: setns with a namespace file we hold open for the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            err.kind(),
            format!(
                "cannot enter network namespace {}: {err} (needs CAP_SYS_ADMIN)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Walks every thread and open descriptor of every process for network namespaces held
/// only there. On demand, not in every look: a Docker host has ~100k descriptors (a
/// readlink each), and the look runs every 30 s and on every burst of events, whereas a
/// namespace held this way matters only once a drop (or a key judged for eviction) names
/// it. One walk keeps every such namespace, so the namespace loop follows them all and
/// later looks just check each with one stat.
fn walk(leaders: &HashMap<u32, u32>) -> HashMap<u32, Namespace> {
    let started = Instant::now();
    let nsfs = std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|table| net_namespace_mounts(&table))
        .unwrap_or_default();
    let mut held = walk_holders(std::process::id(), nsfs, leaders, &mounts);
    // Threads of others visiting ours are no news.
    if let Some(own) = inode_of(Path::new("/proc/self/ns/net")) {
        held.remove(&own);
    }
    tracing::debug!(
        "walked threads and descriptors in {:?}; namespaces held there: {:?}",
        started.elapsed(),
        held.iter()
            .map(|(inode, ns)| (inode, &ns.name, &ns.path))
            .collect::<Vec<_>>()
    );
    held
}

/// Namespaces held by a thread that lives elsewhere than its process's main thread
/// (`setns`, `unshare`), or by an open descriptor of a namespace file, in every process
/// but `own_pid` (dropgate's own holds, its sockets and short visits, must not keep a
/// namespace named); by inode, each with a path to enter it and the holder's name.
/// `leaders` are the main threads' namespaces as the last look found them, `mounts` the
/// bind mounts of network namespaces.
fn walk_holders(
    own_pid: u32,
    nsfs: Option<u64>,
    leaders: &HashMap<u32, u32>,
    mounts: &HashMap<PathBuf, u32>,
) -> HashMap<u32, Namespace> {
    let mut held: HashMap<u32, Namespace> = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return held;
    };
    for pid in procs.flatten().filter_map(|entry| numbered(&entry)) {
        if pid == own_pid {
            continue;
        }
        let leader = leaders
            .get(&pid)
            .copied()
            .or_else(|| inode_of(Path::new(&format!("/proc/{pid}/ns/net"))));
        let mut found: Vec<(u32, PathBuf)> = Vec::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for tid in tasks.flatten().filter_map(|task| numbered(&task)) {
                if tid == pid {
                    continue;
                }
                let path = PathBuf::from(format!("/proc/{pid}/task/{tid}/ns/net"));
                let Ok(metadata) = std::fs::metadata(&path) else {
                    continue;
                };
                let inode = metadata.ino() as u32;
                if Some(inode) != leader && nsfs.is_none_or(|dev| dev == metadata.dev()) {
                    found.push((inode, path));
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                let path = fd.path();
                let Ok(target) = std::fs::read_link(&path) else {
                    continue;
                };
                // Opened through `/proc/<pid>/ns/net` the link names the namespace;
                // through a bind mount it shows the mount's path, and `/` once that is
                // unmounted (which only the file itself can tell from the root folder).
                // Every other descriptor costs the readlink alone: a Docker host has
                // ~100k of them, mostly sockets, pipes and files.
                let inode = if let Some(inode) = net_namespace_link(target.as_os_str()) {
                    inode
                } else if let Some(inode) = mounts.get(&target) {
                    *inode
                } else if target == Path::new("/") {
                    let Some(inode) = net_namespace_file(&path, nsfs) else {
                        continue;
                    };
                    inode
                } else {
                    continue;
                };
                if Some(inode) != leader {
                    found.push((inode, path));
                }
            }
        }
        if found.is_empty() {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let name = format!("pid:{pid}:{}", comm.trim());
        for (inode, path) in found {
            held.entry(inode).or_insert_with(|| Namespace {
                name: name.clone(),
                path,
            });
        }
    }
    held
}

/// The number a `/proc` entry is named (a process or a thread id); `None` for the rest.
fn numbered(entry: &std::fs::DirEntry) -> Option<u32> {
    entry.file_name().to_str()?.parse().ok()
}

/// The inode of a network namespace from the target of a `/proc/<pid>/fd/<n>` link
/// (`net:[4026532000]`); `None` for any other file.
fn net_namespace_link(target: &std::ffi::OsStr) -> Option<u32> {
    target
        .to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Bind mounts of network namespace files in a mount table (`/proc/self/mountinfo`): mount
/// point to namespace inode. A line reads `id parent dev root mountpoint options... -
/// fstype source options`, and the root of an nsfs mount is `net:[<inode>]`.
fn net_namespace_mounts(mountinfo: &str) -> HashMap<PathBuf, u32> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            if filesystem.split(' ').next()? != "nsfs" {
                return None;
            }
            let mut fields = mount.split(' ').skip(3);
            let inode = net_namespace_link(std::ffi::OsStr::new(fields.next()?))?;
            Some((PathBuf::from(unescape_mount_path(fields.next()?)), inode))
        })
        .collect()
}

/// A path of the mount table, where space, tab, newline and backslash are written as
/// octal escapes (`\040`).
fn unescape_mount_path(escaped: &str) -> String {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The inode of the network namespace `path` is a file of (on the namespace filesystem
/// `nsfs`, of type network); `None` for any other file.
fn net_namespace_file(path: &Path, nsfs: Option<u64>) -> Option<u32> {
    let metadata = std::fs::metadata(path).ok()?;
    if nsfs.is_some_and(|dev| dev != metadata.dev()) {
        return None;
    }
    let file = File::open(path).ok()?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only asks the type of the namespace
    // file we hold open for the call; on any other file it fails.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    (kind == libc::CLONE_NEWNET).then_some(metadata.ino() as u32)
}

/// Whether `path` (a thread's namespace or a descriptor) still refers to namespace
/// `inode`: the holder may have closed it, moved, or ended (and its pid or descriptor
/// number be someone else's now).
fn still_held(path: &Path, inode: u32, nsfs: Option<u64>) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|m| m.ino() as u32 == inode && nsfs.is_none_or(|dev| dev == m.dev()))
}

/// The inode of a namespace file (what the kernel program reports as `netns`).
#[must_use]
pub fn inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// Runs `ask` on a fresh thread inside the namespace of `ns_path`; `None` when the
/// namespace cannot be entered.
fn in_namespace<T: Send>(ns_path: &Path, ask: impl FnOnce() -> T + Send) -> Option<T> {
    let file = File::open(ns_path).ok()?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a thread of our own that does nothing else and ends
                // right after; `file` is an open namespace file for the whole call.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return None;
                }
                Some(ask())
            })
            .join()
            .ok()
            .flatten()
    })
}

/// Enters the namespace of `ns_path` on a fresh thread and asks for `ifindex`'s name.
fn interface_name_in(ns_path: &Path, ifindex: u32) -> Option<String> {
    in_namespace(ns_path, || index_to_name(ifindex)).flatten()
}

/// The `net_cookie` of the namespace of `ns_path` (kernels >= 5.14).
fn cookie_in(ns_path: &Path) -> Option<u64> {
    in_namespace(ns_path, own_cookie).flatten()
}

/// The `net_cookie` of the calling thread's namespace: `SO_NETNS_COOKIE` on a socket
/// made in it.
pub(crate) fn own_cookie() -> Option<u64> {
    // SAFETY: plain socket(2); the descriptor is closed below on every path.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is 8 writable bytes and `len` says so, as SO_NETNS_COOKIE needs.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &raw mut len,
        )
    };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    (rc == 0).then_some(cookie)
}

/// `if_indextoname` for the calling thread's namespace.
pub fn index_to_name(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes as if_indextoname requires; the result is either
    // null or a pointer into buf holding a NUL-terminated name.
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if ptr.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_named_in_our_own_namespace() {
        let names = Names::new();
        assert_ne!(names.own_inode(), 0, "/proc/self/ns/net has an inode");
        assert_eq!(names.namespace(names.own_inode()), OWN_NAMESPACE);
        assert_eq!(
            names.interface(names.own_inode(), 1),
            "lo",
            "ifindex 1 is always lo"
        );
        assert_eq!(names.interface(names.own_inode(), 0), "none");
        assert_eq!(names.namespace(0), "unknown");
    }

    #[test]
    fn our_own_namespace_is_alive_under_its_cookie_only() {
        let names = Names::new();
        let Some(cookie) = own_cookie() else {
            eprintln!("SKIP: no SO_NETNS_COOKIE on this kernel");
            return;
        };
        assert_ne!(cookie, 0, "cookies start at 1");
        assert_eq!(
            names.namespace_state(names.own_inode(), cookie),
            NamespaceState::Alive
        );
        assert_eq!(
            names.namespace_state(names.own_inode(), cookie + 1_000_000),
            NamespaceState::Replaced,
            "another cookie under our inode is a namespace that is gone"
        );
        assert_eq!(
            names.namespace_state(names.own_inode(), 0),
            NamespaceState::Alive,
            "without a cookie (kernels < 5.14) the inode decides"
        );
    }

    #[test]
    fn interfaces_of_a_namespace_in_the_link_tables_are_answered_from_them() {
        let names = Names::new();
        // Inode 7 is no namespace here: only the tables can name its interfaces.
        names.use_links(Box::new(|inode, ifindexes| {
            (inode == 7).then(|| {
                ifindexes
                    .iter()
                    .map(|i| match i {
                        3 => LinkState::Named("veth-a".to_owned()),
                        4 => LinkState::Gone,
                        _ => LinkState::NotSeenYet,
                    })
                    .collect()
            })
        }));
        assert_eq!(names.interface(7, 3), "veth-a");
        assert_eq!(names.interface(7, 4), "gone", "gone from the tables");
        assert_eq!(names.interface(7, 9), "if9", "not seen yet: its number");
        assert_eq!(
            names.gone_interfaces(7, &[3, 4, 9]),
            Some((vec![4], vec![9])),
            "4 is gone, 9 may be too new to be told"
        );
        assert_eq!(
            names.interface(names.own_inode(), 1),
            "lo",
            "a namespace the tables do not know is still asked"
        );
    }

    #[test]
    fn descriptor_targets_name_network_namespaces_only() {
        for (case, target, want) in [
            (
                "a network namespace",
                "net:[4026532000]",
                Some(4_026_532_000),
            ),
            ("the smallest inode", "net:[1]", Some(1)),
            ("another kind of namespace", "mnt:[4026531841]", None),
            ("a socket", "socket:[123456]", None),
            ("a file", "/run/netns/net:[4026532000]", None),
            ("no closing bracket", "net:[4026532000", None),
            ("not a number", "net:[abc]", None),
            ("too big for an inode", "net:[4294967296]", None),
            ("empty", "", None),
        ] {
            assert_eq!(
                net_namespace_link(std::ffi::OsStr::new(target)),
                want,
                "{case}: {target}"
            );
        }
    }

    #[test]
    fn network_namespace_mounts_are_read_from_the_mount_table() {
        let table = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
48 47 0:4 net:[4026532175] /run/netns/dg-ext-1 rw shared:2 - nsfs nsfs rw
49 47 0:4 net:[4026532438] /var/lib/cni/net\\040ns/a rw shared:3 - nsfs nsfs rw
50 47 0:4 mnt:[4026532501] /run/mnt-ns rw shared:4 - nsfs nsfs rw
51 47 0:4 net:[4026532502] /run/not-nsfs rw - tmpfs tmpfs rw
52 47 0:4 net:[4026532503]
";
        let mounts = net_namespace_mounts(table);
        assert_eq!(
            mounts,
            HashMap::from([
                (PathBuf::from("/run/netns/dg-ext-1"), 4_026_532_175),
                (PathBuf::from("/var/lib/cni/net ns/a"), 4_026_532_438),
            ]),
            "only nsfs mounts of network namespaces, escapes undone"
        );
        for (case, escaped, want) in [
            ("plain", "/run/netns/a", "/run/netns/a"),
            ("space", "/a\\040b", "/a b"),
            ("backslash", "/a\\134b", "/a\\b"),
            ("a lone backslash", "/a\\b", "/a\\b"),
            ("cut short at the end", "/a\\04", "/a\\04"),
        ] {
            assert_eq!(unescape_mount_path(escaped), want, "{case}");
        }
    }

    #[test]
    fn only_network_namespace_files_are_network_namespaces() {
        let nsfs = std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev());
        let own = inode_of(Path::new("/proc/self/ns/net"));
        assert_eq!(
            net_namespace_file(Path::new("/proc/self/ns/net"), nsfs),
            own,
            "our network namespace"
        );
        assert_eq!(
            net_namespace_file(Path::new("/proc/self/ns/uts"), nsfs),
            None,
            "a namespace of another type"
        );
        assert_eq!(
            net_namespace_file(Path::new("/dev/null"), nsfs),
            None,
            "not a namespace"
        );
        assert_eq!(
            net_namespace_file(Path::new("/nonexistent/dropgate"), nsfs),
            None,
            "no such file"
        );
    }

    #[test]
    fn a_descriptor_held_namespace_is_held_while_the_descriptor_is_open() {
        // Our own namespace through a descriptor of ours: the same check as for any
        // holder's, with no root needed.
        let own = inode_of(Path::new("/proc/self/ns/net")).expect("own namespace");
        let nsfs = std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev());
        let file = File::open("/proc/self/ns/net").expect("open own namespace");
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let target = std::fs::read_link(&path).expect("read the descriptor's link");
        assert_eq!(net_namespace_link(target.as_os_str()), Some(own));
        assert!(still_held(&path, own, nsfs), "open: held");
        assert!(!still_held(&path, own + 1, nsfs), "another inode: not held");
        assert!(
            !still_held(Path::new("/proc/self/fd/999999"), own, nsfs),
            "no such descriptor: not held"
        );
    }

    #[test]
    fn unknown_namespaces_fall_back_to_their_inode() {
        let names = Names::new();
        assert_eq!(names.namespace(7), "7");
        assert_eq!(names.interface(7, 3), "if3");
    }
}
