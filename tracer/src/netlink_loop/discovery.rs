//! What tells the loop that namespaces came or went, so that it looks again at once
//! instead of polling: inotify on the folders of named namespaces (`ip netns` and
//! Docker's), the mount table (each named namespace is a bind mount, and the mount comes
//! after the file that inotify reports), and process events (a program started in a
//! namespace no file names; the end of the process a namespace is named after).
//! Namespaces that get an id in the loop's own namespace (a veth peer moved into a new
//! container) arrive as nsid messages on its netlink socket; drops from a namespace not
//! known yet make [`crate::netns::Names`] look too. A slow rescan catches whatever none
//! of these announce.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use inotify::{Inotify, WatchDescriptor, WatchMask};
use mio::{unix::SourceFd, Interest, Registry, Token};
use netlink_sys::{protocols::NETLINK_CONNECTOR, Socket, SocketAddr};

use crate::netns::NAMED_NAMESPACE_DIRS;

pub struct Discovery {
    inotify: Inotify,
    /// Which of [`NAMED_NAMESPACE_DIRS`] are watched (they may appear later).
    watched: [bool; NAMED_NAMESPACE_DIRS.len()],
    /// The folder behind each watch, to name the files its events are about.
    folders: Vec<(WatchDescriptor, &'static str)>,
    /// `/proc/self/mountinfo`: readable with priority when the mount table changed.
    mounts: Option<File>,
    buffer: Vec<u8>,
}

impl Discovery {
    pub fn new() -> io::Result<Self> {
        let mut discovery = Self {
            inotify: Inotify::init()?,
            watched: [false; NAMED_NAMESPACE_DIRS.len()],
            folders: Vec::new(),
            mounts: File::open("/proc/self/mountinfo").ok(),
            buffer: vec![0; 4096],
        };
        discovery.watch_folders();
        Ok(discovery)
    }

    /// Registers inotify under `files` and the mount table under `mounts`.
    pub fn register(&self, registry: &Registry, files: Token, mounts: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.inotify.as_raw_fd()),
            files,
            Interest::READABLE,
        )?;
        if let Some(table) = &self.mounts {
            registry.register(
                &mut SourceFd(&table.as_raw_fd()),
                mounts,
                Interest::PRIORITY,
            )?;
        }
        Ok(())
    }

    /// Adds watches for the folders that exist now and were not watched yet (they are
    /// made with the first namespace of their kind).
    pub fn watch_folders(&mut self) {
        for (dir, watched) in NAMED_NAMESPACE_DIRS.iter().zip(&mut self.watched) {
            if *watched {
                continue;
            }
            let mask = WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_FROM
                | WatchMask::MOVED_TO
                | WatchMask::DELETE_SELF;
            if let Ok(descriptor) = self.inotify.watches().add(dir, mask) {
                *watched = true;
                self.folders.retain(|(wd, _)| *wd != descriptor);
                self.folders.push((descriptor, dir));
            }
        }
    }

    /// Reads every pending inotify event: the files they are about (created, deleted,
    /// renamed; a folder's own path when it went), empty when there was none. A watched
    /// folder that was removed is watched again once it is back.
    pub fn drain_files(&mut self) -> Vec<PathBuf> {
        let mut changed = Vec::new();
        loop {
            match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => {
                    let mut any = false;
                    for event in events {
                        any = true;
                        let folder = self
                            .folders
                            .iter()
                            .find(|(wd, _)| *wd == event.wd)
                            .map(|(_, dir)| Path::new(*dir));
                        if event.mask.contains(inotify::EventMask::IGNORED) {
                            // The folder itself is gone: look for it again later.
                            self.watched = [false; NAMED_NAMESPACE_DIRS.len()];
                        }
                        match (folder, event.name) {
                            (Some(folder), Some(name)) => changed.push(folder.join(name)),
                            (Some(folder), None) => changed.push(folder.to_path_buf()),
                            _ => {}
                        }
                    }
                    if !any {
                        return changed;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return changed,
            }
        }
    }
}

/// The kernel's process events (the proc connector): a process that starts a program
/// (`exec`) may be the first in a namespace no file names (`unshare -n`, a runtime that
/// keeps no bind mount), and one that ends may have been the one naming its namespace.
/// Needs CAP_NET_ADMIN in the initial user namespace; without it this source is absent
/// and such namespaces wait for the slow rescan.
pub struct ProcessEvents {
    socket: Socket,
    buffer: Vec<u8>,
}

/// What a process event asks of the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEvent {
    /// Process `tgid` started a program: is its namespace known?
    Exec(u32),
    /// Process `tgid` ended: was it the one naming a namespace?
    Exit(u32),
}

/// `CN_IDX_PROC` / `CN_VAL_PROC`: the proc connector's address, also its multicast group.
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
/// `struct nlmsghdr`, then `struct cn_msg` (id: idx, val; seq, ack, len, flags).
const NLMSG_HEADER_LEN: usize = 16;
const CN_MSG_LEN: usize = 20;

impl ProcessEvents {
    pub fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_CONNECTOR)?;
        socket.bind(&SocketAddr::new(0, CN_IDX_PROC))?;
        socket.set_non_blocking(true)?;
        // From 6.6 the kernel drops the events a listener did not ask for (every fork
        // and thread exit of a busy host would otherwise wake the loop); older kernels
        // take only the plain request and ignore a longer one.
        let mut request = PROC_CN_MCAST_LISTEN.to_ne_bytes().to_vec();
        if kernel_at_least(6, 6) {
            request.extend_from_slice(&(PROC_EVENT_EXEC | PROC_EVENT_EXIT).to_ne_bytes());
        }
        socket.send_to(&listen_message(&request), &SocketAddr::new(0, 0), 0)?;
        Ok(Self {
            socket,
            buffer: vec![0; 8192],
        })
    }

    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.socket.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    /// Takes the socket out of the poll; events queue in it meanwhile.
    pub fn deregister(&self, registry: &Registry) -> io::Result<()> {
        registry.deregister(&mut SourceFd(&self.socket.as_raw_fd()))
    }

    /// Every event waiting, in order.
    pub fn drain(&mut self) -> Vec<ProcessEvent> {
        let mut events = Vec::new();
        loop {
            let mut space = &mut self.buffer[..];
            match self.socket.recv(&mut space, 0) {
                Ok(n) if n > 0 => events.extend(parse_process_events(&self.buffer[..n])),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // Lost events (ENOBUFS) are caught by the rescans; nothing else to do.
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {}
                _ => return events,
            }
        }
    }
}

/// A connector message to the proc connector carrying `data`: nlmsghdr (type
/// NLMSG_DONE, as the connector expects), then cn_msg with the data's length.
fn listen_message(data: &[u8]) -> Vec<u8> {
    let total = NLMSG_HEADER_LEN + CN_MSG_LEN + data.len();
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_ne_bytes());
    message.extend_from_slice(&3u16.to_ne_bytes());
    message.extend_from_slice(&[0; 10]);
    message.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    message.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    message.extend_from_slice(&[0; 8]);
    message.extend_from_slice(&(data.len() as u16).to_ne_bytes());
    message.extend_from_slice(&[0; 2]);
    message.extend_from_slice(data);
    message
}

/// Whether the running kernel's release is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let have = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    have >= (major, minor)
}

/// The exec and exit events in one proc connector datagram (one event per message).
pub fn parse_process_events(datagram: &[u8]) -> Vec<ProcessEvent> {
    let u32_at = |data: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    let mut events = Vec::new();
    let mut rest = datagram;
    while let Some(len) = u32_at(rest, 0).map(|l| l as usize) {
        if len < NLMSG_HEADER_LEN || len > rest.len() {
            break;
        }
        let message = &rest[NLMSG_HEADER_LEN..len];
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        // struct proc_event after cn_msg: what, cpu, timestamp_ns (8), then the event:
        // exec and exit both begin with process_pid, process_tgid.
        let event = |at: usize| u32_at(message, CN_MSG_LEN + at);
        let (Some(what), Some(tgid)) = (event(0), event(20)) else {
            continue;
        };
        match what {
            PROC_EVENT_EXEC => events.push(ProcessEvent::Exec(tgid)),
            // A thread's end is not its process's.
            PROC_EVENT_EXIT if event(16) == Some(tgid) => events.push(ProcessEvent::Exit(tgid)),
            _ => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proc connector message: nlmsghdr, cn_msg, proc_event (what, cpu, time, pid,
    /// tgid).
    fn event(what: u32, pid: u32, tgid: u32) -> Vec<u8> {
        let mut body = vec![0u8; CN_MSG_LEN];
        body.extend_from_slice(&what.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend_from_slice(&0u64.to_ne_bytes());
        body.extend_from_slice(&pid.to_ne_bytes());
        body.extend_from_slice(&tgid.to_ne_bytes());
        body.extend_from_slice(&[0; 16]);
        let mut message = ((NLMSG_HEADER_LEN + body.len()) as u32)
            .to_ne_bytes()
            .to_vec();
        message.extend_from_slice(&[0; 12]);
        message.extend(body);
        message
    }

    #[test]
    fn exec_and_process_exit_events_decode_thread_exits_do_not() {
        let mut datagram = event(PROC_EVENT_EXEC, 41, 41);
        datagram.extend(event(PROC_EVENT_EXIT, 42, 41));
        datagram.extend(event(PROC_EVENT_EXIT, 41, 41));
        datagram.extend(event(0x1, 43, 43)); // fork: not asked for
        assert_eq!(
            parse_process_events(&datagram),
            vec![ProcessEvent::Exec(41), ProcessEvent::Exit(41)]
        );
        for cut in [0, 10, 30, datagram.len() - 1] {
            assert!(
                parse_process_events(&datagram[..cut]).len() <= 2,
                "cut at {cut}"
            );
        }
        assert!(parse_process_events(&event(PROC_EVENT_EXEC, 1, 1)[..40]).is_empty());
    }
}
