//! The framing of netlink datagrams into messages and attributes, for the one message
//! kind no maintained crate decodes: NETCONF (forwarding state; see `forwarding` and
//! README, "Building by hand"). Sockets, links, addresses and nsid messages go through
//! `netlink-sys` and `netlink-packet-route`. Fuzzed: `cargo xtask fuzz netlink_framing`.

/// Size of `struct nlmsghdr`.
pub const NLMSG_HEADER_LEN: usize = 16;
/// Size of `struct rtattr`'s header.
pub const RTATTR_HEADER_LEN: usize = 4;
/// Attribute types carry flag bits (nested, byte order) above these.
const NLA_TYPE_MASK: u16 = 0x3fff;

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
