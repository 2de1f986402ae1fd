//! Plumbing shared by every netlink user in the tracer (forwarding state, bridges):
//! a NETLINK_ROUTE socket in the calling thread's namespace, and the decoding of
//! datagrams into messages and attributes. Message-specific decoding stays with its user.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

/// Size of `struct nlmsghdr`.
pub const NLMSG_HEADER_LEN: usize = 16;
/// Size of `struct rtattr`'s header.
pub const RTATTR_HEADER_LEN: usize = 4;
/// Attribute types carry flag bits (nested, byte order) above these.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A NETLINK_ROUTE socket in the calling thread's namespace, subscribed to the legacy
/// multicast `groups` bitmask (0: none), whose receives time out after `timeout` so the
/// owner can check whether to stop.
pub fn route_socket(groups: u32, timeout: Duration) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just opened and own exclusively.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    if groups != 0 {
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = groups;
        // SAFETY: bind reads one sockaddr_nl of the given size from valid memory.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // The field types, not their names: libc deprecates `time_t` and `suseconds_t`
    // on musl (the static builds), whose widths it plans to change.
    let timeout = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(1),
        tv_usec: timeout.subsec_micros().into(),
    };
    // SAFETY: setsockopt reads one timeval of the given size from valid memory.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

pub fn align4(len: usize) -> usize {
    (len + 3) & !3
}

pub fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

pub fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// The messages of one netlink datagram: (type, sequence number, payload).
pub fn netlink_messages(mut data: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut messages = Vec::new();
    while data.len() >= NLMSG_HEADER_LEN {
        let Some(len) = u32_at(data, 0).map(|l| l as usize) else {
            break;
        };
        if len < NLMSG_HEADER_LEN || len > data.len() {
            break;
        }
        let kind = u16_at(data, 4).unwrap_or_default();
        let seq = u32_at(data, 8).unwrap_or_default();
        messages.push((kind, seq, &data[NLMSG_HEADER_LEN..len]));
        data = data.get(align4(len)..).unwrap_or_default();
    }
    messages
}

/// The attributes (type without flag bits, value) in `data`.
pub fn attributes(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut attrs = Vec::new();
    while data.len() >= RTATTR_HEADER_LEN {
        let len = usize::from(u16_at(data, 0).unwrap_or_default());
        if len < RTATTR_HEADER_LEN || len > data.len() {
            break;
        }
        let kind = u16_at(data, 2).unwrap_or_default() & NLA_TYPE_MASK;
        attrs.push((kind, &data[RTATTR_HEADER_LEN..len]));
        data = data.get(align4(len)..).unwrap_or_default();
    }
    attrs
}
