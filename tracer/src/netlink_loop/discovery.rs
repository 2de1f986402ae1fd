//! What tells the loop that namespaces came or went, so that it looks again at once
//! instead of polling: inotify on the folders of named namespaces (`ip netns` and
//! Docker's), and the mount table (each named namespace is a bind mount, and the mount
//! comes after the file that inotify reports). Namespaces that get an id in the loop's
//! own namespace (a veth peer moved into a new container) arrive as nsid messages on its
//! netlink socket; drops from a namespace not known yet make [`crate::netns::Names`]
//! look too. A slow rescan catches whatever none of these announce.

use std::{fs::File, io, os::fd::AsRawFd as _};

use inotify::{Inotify, WatchMask};
use mio::{unix::SourceFd, Interest, Registry, Token};

use crate::netns::NAMED_NAMESPACE_DIRS;

pub struct Discovery {
    inotify: Inotify,
    /// Which of [`NAMED_NAMESPACE_DIRS`] are watched (they may appear later).
    watched: [bool; NAMED_NAMESPACE_DIRS.len()],
    /// `/proc/self/mountinfo`: readable with priority when the mount table changed.
    mounts: Option<File>,
    buffer: Vec<u8>,
}

impl Discovery {
    pub fn new() -> io::Result<Self> {
        let mut discovery = Self {
            inotify: Inotify::init()?,
            watched: [false; NAMED_NAMESPACE_DIRS.len()],
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
            if self.inotify.watches().add(dir, mask).is_ok() {
                *watched = true;
            }
        }
    }

    /// Reads every pending inotify event; whether there was any. A watched folder that
    /// was removed is watched again once it is back.
    pub fn drain_files(&mut self) -> bool {
        let mut any = false;
        loop {
            match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => {
                    let mut none = true;
                    for event in events {
                        none = false;
                        any = true;
                        if event.mask.contains(inotify::EventMask::IGNORED) {
                            // The folder itself is gone: look for it again later.
                            self.watched = [false; NAMED_NAMESPACE_DIRS.len()];
                        }
                    }
                    if none {
                        return any;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return any,
            }
        }
    }
}
