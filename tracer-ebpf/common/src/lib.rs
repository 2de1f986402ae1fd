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
    /// `net->net_cookie` of that namespace (kernels >= 5.14; 0 before or unknown). Never
    /// reused, unlike the inode: it tells a namespace from a later one with the same inode.
    pub netns_cookie: u64,
    /// Inode of the network namespace of the device (or socket) the skb belonged to; 0 unknown.
    pub netns: u32,
    /// Ingress interface index in that namespace (`skb_iif`, else `dev->ifindex` for
    /// packets made here or not yet received); 0 unknown.
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

impl DropKey {
    /// The key as its four 64-bit words, in memory order (the layout is fixed: see the
    /// layout test). Comparing and hashing words costs a quarter of the instructions
    /// of going field by field, on the kernel's per-drop path.
    // Inlined into the kernel program's hot path: a BPF-to-BPF call would cost more.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    #[must_use]
    pub fn words(&self) -> [u64; 4] {
        [
            self.location,
            self.netns_cookie,
            u64::from(self.netns) | (u64::from(self.ifindex) << 32),
            u64::from(self.reason)
                | (u64::from(self.ethertype) << 32)
                | (u64::from(self.l4_proto) << 48)
                | (u64::from(self.pad) << 56),
        ]
    }

    /// Whether two keys are equal, word by word: four compares, where `==` compares
    /// field by field and `words() == words()` becomes a `memcmp` call in BPF.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    #[must_use]
    pub fn same_as(&self, other: &Self) -> bool {
        let (a, b) = (self.words(), other.words());
        a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
    }

    /// Hash of this key for the per-CPU drop cache (its slot is `hash & (slots - 1)`): a
    /// multiplicative hash of the key's words, upper half. Cheap in the kernel (two
    /// multiplies, no helper call).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    #[must_use]
    pub fn cache_hash(&self) -> u32 {
        let [location, cookie, place, kind] = self.words();
        // Bits 32-47 of a product (the slot) depend only on bits 0-47 of its input:
        // the rotations bring every field's low bits below bit 40 (the protocol byte
        // sits at bit 48 of `kind`; the cookie's low bits land at 32).
        let mixed = (location ^ cookie.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (place ^ kind.rotate_left(24)).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        // The upper bits of a product depend on every bit of its input.
        (mixed >> 32) as u32
    }
}

/// One slot of the per-CPU drop cache (`DROP_CACHE`): a direct-mapped array in front of
/// the hash map. A slot belongs to the first key that lands in it, for good; another key
/// with the same slot is counted in the hash map instead. Every event is counted in
/// exactly one of the two, so their sum is exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSlot {
    pub key: DropKey,
    /// `packets == 0`: the slot is still free.
    pub counts: DropCounts,
}

/// Default number of slots of the per-CPU drop cache (a power of two; the tracer's
/// `--trace.cache-slots`). A host sees tens of distinct drop keys, so nearly all of them
/// get a slot of their own; userspace reads every slot on each collection, so it stays
/// small.
pub const DROP_CACHE_SLOTS: u32 = 256;

/// Largest `--trace.cache-slots`.
pub const MAX_DROP_CACHE_SLOTS: u32 = 1 << 16;

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
    /// Which side of the packet's path `ifindex` is on (see [`direction`]).
    pub direction: u8,
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

/// Helper number of the `call` instruction the kernel programs emit where they mean the
/// `bpf_rdonly_cast` kfunc; the loader rewrites every such instruction before loading.
/// No helper has this number, so a call left unrewritten is refused by the verifier.
pub const RDONLY_CAST_PLACEHOLDER: i32 = 0x0dca_5701;

/// Kernel structure fields the programs load through BTF-typed pointers.
///
/// aya emits no CO-RE relocations, so the programs cannot carry the running kernel's
/// offsets. Reading each offset from `.rodata` at run time costs a map-value load, an
/// add and a check per field, which on the per-drop path is most of the program. So a
/// typed load is emitted with a placeholder as its offset, `FIELD_LOAD_PLACEHOLDER +`
/// the field's number, and the loader writes the field's offset (from the kernel's BTF)
/// into each such instruction before loading: one instruction per field, as compiled C.
pub mod field {
    pub const SKB_LEN: u8 = 0;
    pub const SKB_DEV: u8 = 1;
    pub const SKB_SK: u8 = 2;
    pub const SKB_SKB_IIF: u8 = 3;
    pub const SKB_PROTOCOL: u8 = 4;
    pub const SKB_HEAD: u8 = 5;
    pub const SKB_NETWORK_HEADER: u8 = 6;
    pub const DEV_IFINDEX: u8 = 7;
    pub const DEV_ND_NET: u8 = 8;
    pub const SOCK_NET: u8 = 9;
    pub const NET_NS_INUM: u8 = 10;
    pub const NET_COOKIE: u8 = 11;
    pub const SKB_DATA: u8 = 12;
    pub const SKB_MAC_HEADER: u8 = 13;
    /// Number of fields.
    pub const COUNT: u8 = 14;
}

/// `off` of a typed load whose offset the loader fills in: this plus the field's number
/// (see [`field`]). No real field of the structures read is this far in, and an
/// instruction left unpatched reads past its type and is refused by the verifier.
pub const FIELD_LOAD_PLACEHOLDER: i16 = 0x7f00;

/// Values of [`DropSample::direction`].
pub mod direction {
    /// No interface is known (`ifindex` 0).
    pub const UNKNOWN: u8 = 0;
    /// The interface the packet came in on (`skb_iif`, a received frame's device).
    pub const INGRESS: u8 = 1;
    /// The interface the packet was going out of (`skb->dev` on the transmit path).
    pub const EGRESS: u8 = 2;
}

/// Indexes into [`CpuState::stats`].
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
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

/// Everything the program keeps per CPU besides the drop counts, in one array slot so
/// that a drop costs a single (inlined) map lookup for all of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuState {
    /// Counters, indexed by the [`stat`] constants.
    pub stats: [u64; stat::COUNT as usize],
    /// The sampling rate limit: start of the current one-second window and the samples
    /// it took.
    pub window_start_ns: u64,
    pub window_taken: u64,
    /// The `jiffies` at which the clock was last read for the window.
    pub window_checked_jiffies: u64,
    /// The drop cache slot that counted this CPU's previous drop (tried first).
    pub last_slot: u64,
}

/// Size of the sample ring buffer in bytes (a power of two, a multiple of the page size).
pub const SAMPLE_RING_BYTES: u32 = 1 << 20;

/// Default number of distinct [`DropKey`]s the kernel's hash map holds at once
/// (`--trace.max-keys`); keys of namespaces and interfaces that are gone are evicted.
pub const MAX_DROP_KEYS: u32 = 16_384;

/// `DropKey::netns` of counts folded in userspace from keys whose namespace is gone.
pub const NETNS_GONE: u32 = u32::MAX;

/// `DropKey::ifindex` of counts folded in userspace from keys whose interface is gone.
pub const IFINDEX_GONE: u32 = u32::MAX;

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are #[repr(C)], Copy, contain only integers, and have no padding that
    // is left uninitialised (DropKey's explicit `pad` fills its only gap).
    unsafe impl aya::Pod for super::DropKey {}
    // SAFETY: #[repr(C)], two u64 fields, no padding.
    unsafe impl aya::Pod for super::DropCounts {}
    // SAFETY: #[repr(C)], integers and byte arrays laid out without gaps (explicit `pad`).
    unsafe impl aya::Pod for super::DropSample {}
    // SAFETY: #[repr(C)], a DropKey (32 bytes, no gaps) then DropCounts (16 bytes).
    unsafe impl aya::Pod for super::DropSlot {}
    // SAFETY: #[repr(C)], only u64 fields and an array of u64.
    unsafe impl aya::Pod for super::CpuState {}
}

/// `skb->network_header` of an skb whose network header was never set: `__alloc_skb`
/// zeroes the field (`__finalize_skb_around` sets only the mac and transport headers
/// to `~0`), and only `__netif_receive_skb_core`, GRO (`dev_gro_receive`), RPS
/// (`get_rps_cpu`, before hashing) or a driver set it. So it stays 0 on drops between a
/// driver that hands its skb to `netif_rx` and the stack, with no RPS on that queue:
/// backlog overflow (`enqueue_to_backlog`, CPU_BACKLOG), e.g. behind ne2k's or
/// usbnet's `netif_rx`. A set header is never at offset 0: every skb reserves headroom
/// before its data. Without this, such drops read the headroom as IP.
pub const NETWORK_HEADER_UNSET: u16 = 0;
/// `(u16)~0U`: what the mac and transport headers start as, and what the network
/// header was once wrongly assumed to start as; never a real offset either.
pub const HEADER_UNSET_ALL_ONES: u16 = 0xffff;

/// Whether `skb->network_header` (an offset from `skb->head`) points at a header:
/// the one rule the kernel program applies before it reads an IP header, here so the
/// host's tests check that very rule.
// Inlined into the kernel program like the helpers above: no calls on the per-drop path.
#[allow(clippy::inline_always)]
#[inline(always)]
#[must_use]
pub const fn network_header_is_set(offset: u16) -> bool {
    offset != NETWORK_HEADER_UNSET && offset != HEADER_UNSET_ALL_ONES
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets the kernel really leaves in `skb->network_header`, and whether a header
    /// is there. The first case is issue 20: an skb a driver allocated and dropped
    /// before the stack (backlog overflow, generic XDP, the driver itself) has 0 there,
    /// and reading `head + 0` as IP reports the headroom's bytes as protocol and
    /// addresses.
    #[test]
    fn network_header_offsets() {
        let cases = [
            ("never set: __alloc_skb's zero", 0, false),
            ("all ones, as the mac header starts", 0xffff, false),
            (
                "received: NET_SKB_PAD + NET_IP_ALIGN + Ethernet",
                64 + 2 + 14,
                true,
            ),
            ("loopback: LL_MAX_HEADER-style reserve", 128 + 14, true),
            ("a small reserve (AF_PACKET on lo)", 16, true),
        ];
        for (name, offset, want) in cases {
            assert_eq!(network_header_is_set(offset), want, "case {name}");
        }
    }

    #[test]
    fn layouts_shared_with_the_kernel_program_are_fixed() {
        assert_eq!(core::mem::size_of::<DropKey>(), 32);
        assert_eq!(core::mem::size_of::<DropSlot>(), 48);
        assert_eq!(
            core::mem::size_of::<CpuState>(),
            8 * (stat::COUNT as usize + 4)
        );
        assert!(DROP_CACHE_SLOTS.is_power_of_two() && DROP_CACHE_SLOTS <= MAX_DROP_CACHE_SLOTS);
    }

    /// Keys of one host differ in a few fields only (interface, reason, protocol); the
    /// hash must still spread them over the slots, or most would fall to the hash map.
    #[test]
    fn cache_hash_spreads_keys_that_differ_little() {
        let mut used = [false; DROP_CACHE_SLOTS as usize];
        let mut keys = 0;
        for ifindex in 1..=16 {
            for (reason, l4_proto) in [(2, 6), (2, 17), (5, 6), (77, 1)] {
                let key = DropKey {
                    location: 0xffff_ffff_81a0_1234,
                    netns_cookie: 4096,
                    netns: 4_026_531_840,
                    ifindex,
                    reason,
                    ethertype: 0x0800,
                    l4_proto,
                    pad: 0,
                };
                used[(key.cache_hash() & (DROP_CACHE_SLOTS - 1)) as usize] = true;
                keys += 1;
            }
        }
        let distinct = used.iter().filter(|u| **u).count();
        // 64 keys thrown at random into 256 slots land in about 57 distinct ones.
        assert!(distinct >= 50, "{keys} keys share only {distinct} slots");
    }
}
