//! Loads the kernel programs, fills in the running kernel's offsets, and attaches to
//! `kfree_skb`: `tp_btf` when the kernel allows it, the classic tracepoint otherwise.
//!
//! Everything is owned by the returned [`Probe`]: dropping it (or the process dying, even
//! by SIGKILL) closes the file descriptors and the kernel unloads the programs, maps and
//! links. Nothing is pinned.

use std::{fmt, io, path::Path};

use aya::{
    programs::{BtfTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use tracer_common::{
    field, DropSample, DROP_CACHE_SLOTS, FIELD_LOAD_PLACEHOLDER, MAX_DROP_CACHE_SLOTS,
    MAX_DROP_KEYS, NO_OFFSET, RDONLY_CAST_PLACEHOLDER, SAMPLE_RING_BYTES,
};

use crate::btf::{Btf, BtfError};

/// The compiled kernel programs (built by build.rs from tracer-ebpf).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Errors starting the probe; each says what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The binary was built with `AYA_BUILD_SKIP=1`.
    #[error("this dropgate was built without its kernel programs (AYA_BUILD_SKIP); rebuild with `cargo xtask setup && cargo build`")]
    NotBuilt,
    /// Not running as root / without CAP_BPF and CAP_PERFMON.
    #[error("tracing drops needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN); run with sudo, or use `dropgate gateway` for the gateway alone")]
    NotPrivileged,
    /// The options make no sense (a CLI value the parser let through).
    #[error("invalid tracer option: {0}")]
    Options(String),
    /// The kernel's BTF could not be used.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// The kernel refused to create the maps or load the programs.
    #[error("the kernel refused to load dropgate's BPF programs: {0:#}; check that BPF is permitted (lockdown, kernel.unprivileged_bpf_disabled, seccomp of the container)")]
    Load(#[source] anyhow::Error),
    /// Neither hook could be attached.
    #[error("cannot attach to kfree_skb: tp_btf failed ({tp_btf:#}) and the tracepoint failed ({tracepoint:#}); the kernel needs CONFIG_BPF_EVENTS and tracefs")]
    Attach {
        tp_btf: anyhow::Error,
        tracepoint: anyhow::Error,
    },
}

/// Which kernel hook the program runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    TpBtf,
    Tracepoint,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::TpBtf => "tp_btf/kfree_skb",
            Hook::Tracepoint => "tracepoint/skb/kfree_skb",
        })
    }
}

/// How the programs read packet bytes (and, on the classic tracepoint, the skb).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketReads {
    /// Direct loads through pointers cast with the `bpf_rdonly_cast` kfunc (>= 6.2).
    Kfunc,
    /// A `bpf_probe_read_kernel` call per read.
    Helper,
}

impl fmt::Display for PacketReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PacketReads::Kfunc => "bpf_rdonly_cast",
            PacketReads::Helper => "bpf_probe_read_kernel",
        })
    }
}

/// Which hook to use; `Auto` tries tp_btf first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HookChoice {
    #[default]
    Auto,
    TpBtf,
    Tracepoint,
}

/// How to load the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    pub hook: HookChoice,
    /// Per-packet samples per second and CPU sent to userspace (0: none). Counting is
    /// exact whatever this is.
    pub samples_per_sec: u32,
    /// Slots per CPU of the drop cache in front of the hash map (a power of two, at most
    /// `MAX_DROP_CACHE_SLOTS`; 0 turns the cache off).
    pub cache_slots: u32,
    /// Capacity of the drop hash map (distinct keys held in the kernel at once).
    pub max_keys: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            hook: HookChoice::Auto,
            samples_per_sec: 1000,
            cache_slots: DROP_CACHE_SLOTS,
            max_keys: MAX_DROP_KEYS,
        }
    }
}

/// Struct offsets of the running kernel, handed to the programs as globals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkbOffsets {
    pub skb_len: u32,
    pub skb_dev: u32,
    pub skb_sk: u32,
    pub skb_skb_iif: u32,
    pub skb_protocol: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_data: u32,
    pub skb_mac_header: u32,
    pub dev_ifindex: u32,
    pub dev_nd_net: u32,
    pub sock_net: u32,
    pub net_ns_inum: u32,
    /// `NO_OFFSET` on kernels before 5.14 (no `net_cookie`): namespaces are then told
    /// apart by inode alone.
    pub net_cookie: u32,
}

impl SkbOffsets {
    /// Reads every offset from BTF; a missing field is an error naming it.
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        Ok(Self {
            skb_len: btf.member_offset("sk_buff", "len")?,
            skb_dev: btf.member_offset("sk_buff", "dev")?,
            skb_sk: btf.member_offset("sk_buff", "sk")?,
            skb_skb_iif: btf.member_offset("sk_buff", "skb_iif")?,
            skb_protocol: btf.member_offset("sk_buff", "protocol")?,
            skb_head: btf.member_offset("sk_buff", "head")?,
            skb_network_header: btf.member_offset("sk_buff", "network_header")?,
            skb_data: btf.member_offset("sk_buff", "data")?,
            skb_mac_header: btf.member_offset("sk_buff", "mac_header")?,
            dev_ifindex: btf.member_offset("net_device", "ifindex")?,
            dev_nd_net: btf.member_offset("net_device", "nd_net")?,
            sock_net: btf.member_offset("sock", "__sk_common.skc_net")?,
            net_ns_inum: btf.member_offset("net", "ns.inum")?,
            net_cookie: btf.member_offset("net", "net_cookie").unwrap_or(NO_OFFSET),
        })
    }

    fn globals(&self) -> [(&'static str, u32); 14] {
        [
            ("SKB_LEN", self.skb_len),
            ("SKB_DEV", self.skb_dev),
            ("SKB_SK", self.skb_sk),
            ("SKB_SKB_IIF", self.skb_skb_iif),
            ("SKB_PROTOCOL", self.skb_protocol),
            ("SKB_HEAD", self.skb_head),
            ("SKB_NETWORK_HEADER", self.skb_network_header),
            ("SKB_DATA", self.skb_data),
            ("SKB_MAC_HEADER", self.skb_mac_header),
            ("DEV_IFINDEX", self.dev_ifindex),
            ("DEV_ND_NET", self.dev_nd_net),
            ("SOCK_NET", self.sock_net),
            ("NET_NS_INUM", self.net_ns_inum),
            ("NET_COOKIE", self.net_cookie),
        ]
    }
}

impl SkbOffsets {
    /// The offset of each [`field`], indexed by its number, for the typed loads.
    fn by_field(&self) -> [u32; field::COUNT as usize] {
        let mut offsets = [NO_OFFSET; field::COUNT as usize];
        for (id, offset) in [
            (field::SKB_LEN, self.skb_len),
            (field::SKB_DEV, self.skb_dev),
            (field::SKB_SK, self.skb_sk),
            (field::SKB_SKB_IIF, self.skb_skb_iif),
            (field::SKB_PROTOCOL, self.skb_protocol),
            (field::SKB_HEAD, self.skb_head),
            (field::SKB_NETWORK_HEADER, self.skb_network_header),
            (field::SKB_DATA, self.skb_data),
            (field::SKB_MAC_HEADER, self.skb_mac_header),
            (field::DEV_IFINDEX, self.dev_ifindex),
            (field::DEV_ND_NET, self.dev_nd_net),
            (field::SOCK_NET, self.sock_net),
            (field::NET_NS_INUM, self.net_ns_inum),
            (field::NET_COOKIE, self.net_cookie),
        ] {
            offsets[usize::from(id)] = offset;
        }
        offsets
    }
}

/// Byte offsets of the classic tracepoint's record fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointLayout {
    pub skbaddr: u32,
    pub location: u32,
    /// `NO_OFFSET` on kernels whose tracepoint has no reason (< 5.17).
    pub reason: u32,
    /// `NO_OFFSET` on kernels whose tracepoint has no receiving socket (< 6.11).
    pub rx_sk: u32,
}

impl TracepointLayout {
    /// Parses a tracefs `format` file.
    #[must_use]
    pub fn parse(format: &str) -> Option<Self> {
        let field = |name: &str| {
            format.lines().find_map(|line| {
                let line = line.trim();
                let decl = line.strip_prefix("field:")?.split(';').next()?;
                if decl.rsplit([' ', '*']).next()? != name {
                    return None;
                }
                let offset = line
                    .split(';')
                    .find_map(|part| part.trim().strip_prefix("offset:"))?;
                offset.parse::<u32>().ok()
            })
        };
        Some(Self {
            skbaddr: field("skbaddr")?,
            location: field("location")?,
            reason: field("reason").unwrap_or(NO_OFFSET),
            rx_sk: field("rx_sk").unwrap_or(NO_OFFSET),
        })
    }

    /// Reads the layout of `skb/kfree_skb`, mounting tracefs if it is not mounted.
    pub fn read() -> anyhow::Result<Self> {
        use anyhow::Context as _;
        const CANDIDATES: [&str; 2] = [
            "/sys/kernel/tracing/events/skb/kfree_skb/format",
            "/sys/kernel/debug/tracing/events/skb/kfree_skb/format",
        ];
        if !CANDIDATES.iter().any(|p| Path::new(p).exists()) {
            mount_tracefs().context("tracefs is not mounted and mounting it failed")?;
        }
        let text = CANDIDATES
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .context("no skb/kfree_skb tracepoint in tracefs")?;
        Self::parse(&text).context("the skb/kfree_skb format lacks skbaddr or location")
    }
}

fn mount_tracefs() -> io::Result<()> {
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "mount -t tracefs exited with {status}"
        )))
    }
}

/// The loaded and attached probe. Dropping it detaches and unloads everything.
pub struct Probe {
    pub ebpf: Ebpf,
    pub hook: Hook,
    /// Whether the hook reports a drop reason on this kernel.
    pub has_reason: bool,
    /// Slots per CPU of the `DROP_CACHE` map (0: off).
    pub cache_slots: u32,
    /// How packet bytes are read on this kernel.
    pub reads: PacketReads,
}

/// Loads the programs with the running kernel's offsets and attaches one of them.
pub fn load(options: &LoadOptions, btf: &Btf) -> Result<Probe, LoadError> {
    load_with(options, btf, |_| {})
}

/// [`load`], with `adjust` applied to the offsets read from BTF before the kernel gets
/// them. The self-test uses it to prove that a wrong offset is caught.
pub fn load_with(
    options: &LoadOptions,
    btf: &Btf,
    adjust: impl FnOnce(&mut SkbOffsets),
) -> Result<Probe, LoadError> {
    let choice = options.hook;
    if options.cache_slots > MAX_DROP_CACHE_SLOTS || options.cache_slots.count_ones() > 1 {
        return Err(LoadError::Options(format!(
            "cache slots must be 0 or a power of two up to {MAX_DROP_CACHE_SLOTS}, not {}",
            options.cache_slots
        )));
    }
    if options.max_keys == 0 {
        return Err(LoadError::Options("max keys must be at least 1".into()));
    }
    if OBJECT.is_empty() {
        return Err(LoadError::NotBuilt);
    }
    if !crate::privileges::can_load_bpf() {
        return Err(LoadError::NotPrivileged);
    }
    crate::privileges::raise_memlock_limit();
    let mut offsets = SkbOffsets::from_btf(btf)?;
    adjust(&mut offsets);
    // Parameters of the tp_btf prototype: (void *, skb, location[, reason[, rx_sk]]).
    let btf_params = btf.typedef_fn_params("btf_trace_kfree_skb").unwrap_or(0);
    let btf_has_reason = btf_params >= 4;
    let layout = if choice == HookChoice::TpBtf {
        None
    } else {
        match TracepointLayout::read() {
            Ok(layout) => Some(layout),
            Err(err) => {
                tracing::debug!("classic tracepoint unavailable: {err:#}");
                None
            }
        }
    };

    let tp = layout.unwrap_or(TracepointLayout {
        skbaddr: NO_OFFSET,
        location: NO_OFFSET,
        reason: NO_OFFSET,
        rx_sk: NO_OFFSET,
    });
    let flags = Flags {
        has_reason: u8::from(btf_has_reason),
        has_rx_sk: u8::from(btf_params >= 5),
    };
    // With the kfunc first, where the kernel has it; a kernel whose verifier refuses it
    // anyway gets the build in which every packet byte is a helper read.
    let cast = RdonlyCast::from_btf(btf);
    if let Some(cast) = &cast {
        match load_object(options, &offsets, flags, &tp, Some(cast), layout.is_some()) {
            Ok(probe) => return Ok(probe),
            Err(err) => tracing::info!(
                "loading with bpf_rdonly_cast failed ({err:#}); loading with helper reads instead"
            ),
        }
    }
    load_object(options, &offsets, flags, &tp, None, layout.is_some())
}

/// Flags of the tp_btf prototype, handed in as globals.
#[derive(Clone, Copy)]
struct Flags {
    has_reason: u8,
    has_rx_sk: u8,
}

/// What the programs need to use the `bpf_rdonly_cast` kfunc (kernels >= 6.2): its BTF
/// id and those of the types they cast to.
struct RdonlyCast {
    kfunc: u32,
    sk_buff: u32,
    sock: u32,
    iphdr: u32,
    ipv6hdr: u32,
}

impl RdonlyCast {
    fn from_btf(btf: &Btf) -> Option<Self> {
        Some(Self {
            kfunc: btf.func_id("bpf_rdonly_cast")?,
            sk_buff: btf.struct_id("sk_buff").ok()?,
            sock: btf.struct_id("sock").ok()?,
            iphdr: btf.struct_id("iphdr").ok()?,
            ipv6hdr: btf.struct_id("ipv6hdr").ok()?,
        })
    }
}

/// `OBJECT` with every `bpf_rdonly_cast` placeholder (see tracer-ebpf) rewritten: into
/// a call of the kfunc with BTF id `kfunc`, or into `r0 = 0` when there is none. Returns
/// the object and the number of instructions rewritten.
fn rewrite_rdonly_cast(object: &[u8], kfunc: Option<u32>) -> (Vec<u8>, usize) {
    const BPF_CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const BPF_MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const PSEUDO_KFUNC_CALL: u8 = 2; // src_reg of a kfunc call; off 0 = vmlinux BTF
    let mut placeholder = [BPF_CALL, 0, 0, 0, 0, 0, 0, 0];
    placeholder[4..].copy_from_slice(&RDONLY_CAST_PLACEHOLDER.to_le_bytes());
    let replacement = match kfunc {
        Some(id) => {
            let mut insn = [BPF_CALL, PSEUDO_KFUNC_CALL << 4, 0, 0, 0, 0, 0, 0];
            insn[4..].copy_from_slice(&id.to_le_bytes());
            insn
        }
        None => [BPF_MOV64_IMM, 0, 0, 0, 0, 0, 0, 0],
    };
    let mut bytes = object.to_vec();
    let mut rewritten = 0;
    // Instructions are 8-byte aligned in the ELF file, as is the embedded object.
    for insn in bytes.chunks_exact_mut(8) {
        if *insn == placeholder {
            insn.copy_from_slice(&replacement);
            rewritten += 1;
        }
    }
    (bytes, rewritten)
}

/// `object` with the offset of every typed load of a [`field`] patched in (see
/// `tracer_common::field`): each load instruction whose offset is
/// `FIELD_LOAD_PLACEHOLDER + n` gets field `n`'s offset, or becomes `dst = 0` where the
/// field does not exist on this kernel (or lies beyond what an instruction can encode).
/// Returns the object and the number of instructions patched.
fn patch_field_loads(object: &[u8], offsets: &[u32; field::COUNT as usize]) -> (Vec<u8>, usize) {
    // BPF_LDX | BPF_MEM with each size: W, H, B, DW.
    const LOADS: [u8; 4] = [0x61, 0x69, 0x71, 0x79];
    const BPF_MOV64_IMM: u8 = 0xb7;
    let mut bytes = object.to_vec();
    let mut patched = 0;
    // Instructions are 8-byte aligned in the ELF file, as is the embedded object.
    for insn in bytes.chunks_exact_mut(8) {
        let off = i16::from_le_bytes([insn[2], insn[3]]);
        let Some(id) = off.checked_sub(FIELD_LOAD_PLACEHOLDER) else {
            continue;
        };
        let Some(offset) = usize::try_from(id).ok().and_then(|id| offsets.get(id)) else {
            continue;
        };
        if !LOADS.contains(&insn[0]) || insn[4..] != [0; 4] {
            continue;
        }
        if let Ok(offset) = i16::try_from(*offset) {
            insn[2..4].copy_from_slice(&offset.to_le_bytes());
        } else {
            let dst = insn[1] & 0x0f;
            insn.copy_from_slice(&[BPF_MOV64_IMM, dst, 0, 0, 0, 0, 0, 0]);
        }
        patched += 1;
    }
    (bytes, patched)
}

/// Loads the object once (with or without the kfunc) and attaches a hook.
fn load_object(
    options: &LoadOptions,
    offsets: &SkbOffsets,
    flags: Flags,
    tp: &TracepointLayout,
    cast: Option<&RdonlyCast>,
    tracepoint_available: bool,
) -> Result<Probe, LoadError> {
    let choice = options.hook;
    let (object, rewritten) = rewrite_rdonly_cast(OBJECT, cast.map(|c| c.kfunc));
    tracing::debug!(
        "{rewritten} bpf_rdonly_cast placeholders rewritten ({})",
        if cast.is_some() { "kfunc" } else { "r0 = 0" }
    );
    let (object, patched) = patch_field_loads(&object, &offsets.by_field());
    tracing::debug!("{patched} typed field loads given this kernel's offsets");
    let globals = offsets.globals();
    let has_cast = u8::from(cast.is_some());
    let reads = if cast.is_some() {
        PacketReads::Kfunc
    } else {
        PacketReads::Helper
    };
    let ids = cast.map_or([0; 4], |c| [c.sk_buff, c.sock, c.iphdr, c.ipv6hdr]);
    let cache_on = u8::from(options.cache_slots > 0);
    let cache_mask = options.cache_slots.saturating_sub(1);
    // The loader borrows every value until `load`, so they are all bound above it.
    let mut loader = EbpfLoader::new();
    for (name, value) in &globals {
        loader.override_global(name, value, true);
    }
    loader.override_global("BTF_HAS_REASON", &flags.has_reason, true);
    loader.override_global("BTF_HAS_RX_SK", &flags.has_rx_sk, true);
    loader.override_global("TP_SKBADDR", &tp.skbaddr, true);
    loader.override_global("TP_LOCATION", &tp.location, true);
    loader.override_global("TP_REASON", &tp.reason, true);
    loader.override_global("TP_RX_SK", &tp.rx_sk, true);
    loader.override_global("SAMPLES_PER_SEC", &options.samples_per_sec, true);
    loader.override_global("HAS_RDONLY_CAST", &has_cast, true);
    loader.override_global("BTF_ID_SK_BUFF", &ids[0], true);
    loader.override_global("BTF_ID_SOCK", &ids[1], true);
    loader.override_global("BTF_ID_IPHDR", &ids[2], true);
    loader.override_global("BTF_ID_IPV6HDR", &ids[3], true);
    loader.override_global("DROP_CACHE_ON", &cache_on, true);
    loader.override_global("DROP_CACHE_MASK", &cache_mask, true);
    // An array map cannot be empty: off is one slot nobody uses.
    loader.map_max_entries("DROP_CACHE", options.cache_slots.max(1));
    loader.map_max_entries("DROPS", options.max_keys);
    loader.map_max_entries(
        "SAMPLES",
        sample_ring_bytes(options.samples_per_sec, possible_cpus()),
    );
    let mut ebpf = loader.load(&object).map_err(|e| load_error(e.into()))?;

    let tp_btf_result = if choice == HookChoice::Tracepoint {
        Err(anyhow::anyhow!("not tried (--hook tracepoint)"))
    } else {
        attach_tp_btf(&mut ebpf)
    };
    let tp_btf_err = match tp_btf_result {
        Ok(()) => {
            return Ok(Probe {
                ebpf,
                hook: Hook::TpBtf,
                has_reason: flags.has_reason != 0,
                cache_slots: options.cache_slots,
                reads,
            })
        }
        Err(err) => err,
    };
    if choice == HookChoice::TpBtf || !tracepoint_available {
        return Err(LoadError::Attach {
            tp_btf: tp_btf_err,
            tracepoint: anyhow::anyhow!("not available"),
        });
    }
    tracing::warn!("tp_btf/kfree_skb unavailable ({tp_btf_err:#}); using the classic tracepoint");
    attach_tracepoint(&mut ebpf).map_err(|tracepoint| LoadError::Attach {
        tp_btf: tp_btf_err,
        tracepoint,
    })?;
    Ok(Probe {
        ebpf,
        hook: Hook::Tracepoint,
        has_reason: tp.reason != NO_OFFSET,
        cache_slots: options.cache_slots,
        reads,
    })
}

fn load_error(err: anyhow::Error) -> LoadError {
    let denied = err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::PermissionDenied)
            || cause.to_string().contains("Operation not permitted")
    });
    if denied && !crate::privileges::can_load_bpf() {
        LoadError::NotPrivileged
    } else {
        LoadError::Load(err)
    }
}

fn attach_tp_btf(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let btf = aya::Btf::from_sys_fs()?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut("kfree_skb_btf")
        .ok_or_else(|| anyhow::anyhow!("program kfree_skb_btf missing from the object"))?
        .try_into()?;
    program.load("kfree_skb", &btf)?;
    program.attach()?;
    Ok(())
}

fn attach_tracepoint(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let program: &mut TracePoint = ebpf
        .program_mut("kfree_skb_tp")
        .ok_or_else(|| anyhow::anyhow!("program kfree_skb_tp missing from the object"))?
        .try_into()?;
    program.load()?;
    program.attach("skb", "kfree_skb")?;
    Ok(())
}

/// The sample ring's size: a second of samples at the full rate of every CPU, as a
/// power of two between 64 KiB and [`SAMPLE_RING_BYTES`]. The ring is mapped into the
/// process and stays resident: `run`'s default rate needs a quarter of the largest one
/// (1.5 MB less resident memory), `watch`'s the largest.
#[must_use]
pub fn sample_ring_bytes(samples_per_sec: u32, cpus: u32) -> u32 {
    // Each record: the sample and the ring's 8-byte header, rounded to 8 bytes.
    let record = (std::mem::size_of::<DropSample>() as u64 + 8).next_multiple_of(8);
    let second = u64::from(samples_per_sec) * u64::from(cpus.max(1)) * record;
    let bytes = second
        .next_power_of_two()
        .clamp(64 * 1024, u64::from(SAMPLE_RING_BYTES));
    u32::try_from(bytes).unwrap_or(SAMPLE_RING_BYTES)
}

/// CPUs the kernel may run the program on (`/sys/devices/system/cpu/possible`).
fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |cpus| u32::try_from(cpus).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sample_ring_holds_a_second_of_samples_within_bounds() {
        let cases = [
            ("no samples", 0, 2, 64 * 1024),
            ("run's default on 2 CPUs", 1000, 2, 256 * 1024),
            ("watch's default on 2 CPUs", 10_000, 2, SAMPLE_RING_BYTES),
            ("many CPUs", 10_000, 256, SAMPLE_RING_BYTES),
        ];
        for (name, rate, cpus, want) in cases {
            assert_eq!(sample_ring_bytes(rate, cpus), want, "case {name}");
        }
    }

    use super::*;

    #[test]
    fn tracepoint_layouts_of_different_kernels() {
        let newer = "\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
                     \tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
                     \tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;\n\
                     \tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;\n\
                     \tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;\n";
        let v5_10 = "\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
                     \tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
                     \tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;\n";
        let cases = [
            ("6.11+ with rx_sk", newer, Some((8, 16, 36, 24))),
            (
                "5.10 without reason",
                v5_10,
                Some((8, 16, NO_OFFSET, NO_OFFSET)),
            ),
            ("not a format file", "name: x\n", None),
        ];
        for (name, text, want) in cases {
            let got =
                TracepointLayout::parse(text).map(|l| (l.skbaddr, l.location, l.reason, l.rx_sk));
            assert_eq!(got, want, "case {name}");
        }
    }

    #[test]
    fn kfunc_placeholders_are_rewritten_where_instructions_are() {
        let call = |imm: i32| {
            let mut insn = vec![0x85, 0, 0, 0];
            insn.extend_from_slice(&imm.to_le_bytes());
            insn
        };
        // One placeholder at an instruction boundary, one straddling two (data, not an
        // instruction), and an ordinary helper call.
        let mut object = call(RDONLY_CAST_PLACEHOLDER);
        object.extend_from_slice(&[0; 4]);
        object.extend(call(RDONLY_CAST_PLACEHOLDER));
        object.extend_from_slice(&[0; 4]);
        object.extend(call(6));

        let (kfunc, n) = rewrite_rdonly_cast(&object, Some(0x1234));
        assert_eq!(n, 1);
        assert_eq!(kfunc[..8], [0x85, 0x20, 0, 0, 0x34, 0x12, 0, 0]);
        assert_eq!(kfunc[8..], object[8..], "nothing else changes");

        let (helper, n) = rewrite_rdonly_cast(&object, None);
        assert_eq!(n, 1);
        assert_eq!(helper[..8], [0xb7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(helper[8..], object[8..]);

        if !OBJECT.is_empty() {
            assert!(
                rewrite_rdonly_cast(OBJECT, None).1 >= 2,
                "the built programs cast at least the skb and the IP header"
            );
        }
    }

    #[test]
    fn typed_loads_get_the_offsets_of_their_fields() {
        let load = |opcode: u8, regs: u8, off: i16| {
            let mut insn = vec![opcode, regs, 0, 0, 0, 0, 0, 0];
            insn[2..4].copy_from_slice(&off.to_le_bytes());
            insn
        };
        let placeholder = |id: u8| FIELD_LOAD_PLACEHOLDER + i16::from(id);
        let mut offsets = [NO_OFFSET; field::COUNT as usize];
        offsets[usize::from(field::SKB_LEN)] = 112;
        offsets[usize::from(field::NET_COOKIE)] = 40_000; // beyond an instruction's reach
        let mut object = load(0x61, 0x72, placeholder(field::SKB_LEN)); // r2 = *(u32 *)(r7 + ..)
        object.extend(load(0x79, 0x13, placeholder(field::NET_COOKIE)));
        object.extend(load(0x69, 0x21, placeholder(field::SKB_DEV))); // missing on this "kernel"
        object.extend(load(0x61, 0x72, 8)); // an ordinary load
        object.extend(load(0x07, 0x01, placeholder(field::SKB_LEN))); // not a load
        object.extend_from_slice(&[0; 4]);
        object.extend(load(0x61, 0x72, placeholder(field::SKB_LEN))); // straddles: data

        let (patched, n) = patch_field_loads(&object, &offsets);
        assert_eq!(n, 3);
        assert_eq!(patched[..8], [0x61, 0x72, 112, 0, 0, 0, 0, 0]);
        assert_eq!(patched[8..16], [0xb7, 0x03, 0, 0, 0, 0, 0, 0], "r3 = 0");
        assert_eq!(patched[16..24], [0xb7, 0x01, 0, 0, 0, 0, 0, 0], "r1 = 0");
        assert_eq!(patched[24..], object[24..], "nothing else changes");

        if !OBJECT.is_empty() {
            let (_, n) = patch_field_loads(OBJECT, &[0; field::COUNT as usize]);
            assert!(
                n >= usize::from(field::COUNT),
                "every field is loaded at least once in the built programs: {n} loads"
            );
        }
    }

    #[test]
    fn offsets_of_this_kernel_are_plausible() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("SKIP: no kernel BTF");
            return;
        };
        let offsets = SkbOffsets::from_btf(&btf).expect("every field exists on a BTF kernel");
        assert_eq!(offsets.skb_dev, 16);
        assert!(offsets.skb_network_header < offsets.skb_head);
        // `net_cookie` sits deep in the large `struct net`; every other field is near
        // the start of its structure.
        assert!(offsets
            .globals()
            .iter()
            .all(|(name, v)| *v != NO_OFFSET && (*v < 4096 || *name == "NET_COOKIE")));
        assert!(
            offsets.net_cookie < 1 << 16,
            "net_cookie at {}",
            offsets.net_cookie
        );
    }
}
