//! `#[repr(C)]` types shared by the kernel programs (tracer-ebpf) and the tracer.
//!
//! The layout is the ABI between the two sides: both are built from this one file, so
//! they cannot drift. With the `user` feature the types implement `aya::Pod` so the
//! tracer can read them out of BPF maps.
#![no_std]

/// Key of the in-kernel drop aggregation: one entry per (namespace, interface, reason,
/// location, protocol). Its cardinality is bounded by the kernel's own code paths, not by
/// traffic: addresses and ports are deliberately not part of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DropKey {
    /// Kernel address inside the function that freed the skb (`kfree_skb`'s `location`).
    pub location: u64,
    /// Inode of the network namespace of the device (or socket) the skb belonged to; 0 unknown.
    pub netns: u32,
    /// Ingress interface index in that namespace (`dev->ifindex`, else `skb_iif`); 0 unknown.
    pub ifindex: u32,
    /// Raw `enum skb_drop_reason` value; [`REASON_UNKNOWN`] when the kernel reports none.
    pub reason: u32,
    /// Ethertype of the packet in host order (`0x0800` IPv4, `0x86dd` IPv6, ...).
    pub ethertype: u16,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6); 0 when not IP or unread.
    pub l4_proto: u8,
    /// Explicit padding, always 0, so the key has no uninitialised bytes.
    pub pad: u8,
}

/// Per-CPU value of the drop aggregation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub packets: u64,
    pub bytes: u64,
}

/// One sampled drop with its flow, sent to userspace through the ring buffer. Fixed size
/// and `#[repr(C)]`: no per-event formatting or allocation in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSample {
    /// `bpf_ktime_get_ns()`: monotonic nanoseconds since boot.
    pub timestamp_ns: u64,
    pub location: u64,
    pub netns: u32,
    pub ifindex: u32,
    pub reason: u32,
    /// `skb->len`.
    pub len: u32,
    pub ethertype: u16,
    pub l4_proto: u8,
    /// Explicit padding, always 0.
    pub pad: u8,
    /// Transport ports in host order; 0 when the protocol has none or they were unread.
    pub sport: u16,
    pub dport: u16,
    /// Addresses in network order; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// `reason` of a drop seen on a kernel whose `kfree_skb` has no reason argument (< 5.17).
pub const REASON_UNKNOWN: u32 = u32::MAX;

/// Offset value meaning "this field does not exist on the running kernel".
pub const NO_OFFSET: u32 = u32::MAX;

/// Indexes into the per-CPU `STATS` array.
pub mod stat {
    /// Every drop event the program saw (the total the aggregation must add up to).
    pub const EVENTS: u32 = 0;
    /// Events that could not be counted because the aggregation map was full.
    pub const MAP_FULL: u32 = 1;
    /// Samples not taken because the per-CPU sampling rate was exhausted.
    pub const SAMPLES_SUPPRESSED: u32 = 2;
    /// Samples lost because the ring buffer was full (userspace too slow).
    pub const SAMPLES_LOST: u32 = 3;
    /// Samples written to the ring buffer.
    pub const SAMPLES_SENT: u32 = 4;
    /// Number of slots in `STATS`.
    pub const COUNT: u32 = 5;
}

/// Per-CPU state of the sampling rate limit: a one-second window and what it used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleWindow {
    pub start_ns: u64,
    pub taken: u64,
}

/// Size of the sample ring buffer in bytes (a power of two, a multiple of the page size).
pub const SAMPLE_RING_BYTES: u32 = 1 << 20;

/// Maximum number of distinct [`DropKey`]s held in the kernel at once.
pub const MAX_DROP_KEYS: u32 = 16_384;

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are #[repr(C)], Copy, contain only integers, and have no padding that
    // is left uninitialised (DropKey's explicit `pad` fills its only gap).
    unsafe impl aya::Pod for super::DropKey {}
    // SAFETY: #[repr(C)], two u64 fields, no padding.
    unsafe impl aya::Pod for super::DropCounts {}
    // SAFETY: #[repr(C)], integers and byte arrays laid out without gaps (explicit `pad`).
    unsafe impl aya::Pod for super::DropSample {}
}
