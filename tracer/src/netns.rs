//! Names for network namespaces and interfaces, as the kernel program reports them only
//! by number (netns inode, ifindex).
//!
//! A namespace is named after its bind mount (`ip netns` in `/run/netns`, Docker's in
//! `/run/docker/netns`), else after a process living in it, else by its inode. Interface
//! names are asked from inside the namespace they belong to (an ifindex means nothing
//! outside it): a short-lived thread enters the namespace, asks the kernel with
//! `SIOCGIFNAME`, and ends, so the rest of the process never changes namespace.

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Label value for the namespace dropgate itself runs in.
pub const OWN_NAMESPACE: &str = "root";

/// Label value for the machine's initial namespace when dropgate runs in another one.
pub const INIT_NAMESPACE: &str = "init";

/// Folders holding one bind-mounted namespace file per named namespace.
const NAMED_NAMESPACE_DIRS: [&str; 3] =
    ["/run/netns", "/run/docker/netns", "/var/run/docker/netns"];

/// Re-scanning is cheap but not free: at most this often when a name is missing.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
struct Namespace {
    name: String,
    /// A file that refers to the namespace, to enter it.
    path: PathBuf,
}

#[derive(Default)]
struct State {
    namespaces: HashMap<u32, Namespace>,
    interfaces: HashMap<(u32, u32), String>,
    last_scan: Option<Instant>,
}

/// Resolves namespace inodes and (namespace, ifindex) pairs to names; caches both.
pub struct Names {
    own: u32,
    state: Mutex<State>,
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
        }
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
        let mut state = self.state.lock().expect("names lock");
        if !state.namespaces.contains_key(&inode) {
            Self::rescan(&mut state);
        }
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
        let mut state = self.state.lock().expect("names lock");
        if let Some(name) = state.interfaces.get(&(inode, ifindex)) {
            return name.clone();
        }
        let path = if inode == self.own {
            Some(PathBuf::from("/proc/self/ns/net"))
        } else {
            if !state.namespaces.contains_key(&inode) {
                Self::rescan(&mut state);
            }
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

    /// Paths of every namespace dropgate knows by name, with the name.
    pub fn named(&self) -> Vec<(u32, String, PathBuf)> {
        let mut state = self.state.lock().expect("names lock");
        Self::rescan(&mut state);
        state
            .namespaces
            .iter()
            .map(|(inode, ns)| (*inode, ns.name.clone(), ns.path.clone()))
            .collect()
    }

    fn rescan(state: &mut State) {
        if state
            .last_scan
            .is_some_and(|at| at.elapsed() < RESCAN_EVERY)
        {
            return;
        }
        state.last_scan = Some(Instant::now());
        let mut found: HashMap<u32, Namespace> = HashMap::new();
        for dir in NAMED_NAMESPACE_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if let Some(inode) = inode_of(&path) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    found.entry(inode).or_insert(Namespace { name, path });
                }
            }
        }
        // Namespaces without a bind mount (containers started by other runtimes, tools
        // using unshare) are reachable through any process inside them.
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for entry in procs.flatten() {
                let pid = entry.file_name();
                let Some(pid) = pid
                    .to_str()
                    .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
                let Some(inode) = inode_of(&path) else {
                    continue;
                };
                found.entry(inode).or_insert_with(|| {
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
        // Interface names of namespaces that are gone can be reused by new inodes only
        // in theory (inodes are not recycled quickly); keep the cache, drop dead names.
        state.namespaces = found;
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

/// The inode of a namespace file (what the kernel program reports as `netns`).
#[must_use]
pub fn inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// Enters the namespace of `ns_path` on a fresh thread and asks for `ifindex`'s name.
fn interface_name_in(ns_path: &Path, ifindex: u32) -> Option<String> {
    let file = File::open(ns_path).ok()?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a thread of our own that does nothing else and ends
                // right after; `file` is an open namespace file for the whole call.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return None;
                }
                index_to_name(ifindex)
            })
            .join()
            .ok()
            .flatten()
    })
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
    fn unknown_namespaces_fall_back_to_their_inode() {
        let names = Names::new();
        assert_eq!(names.namespace(7), "7");
        assert_eq!(names.interface(7, 3), "if3");
    }
}
