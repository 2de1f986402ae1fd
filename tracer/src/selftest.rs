//! `dropgate selftest`: proves on the running kernel that the probe counts exactly what
//! the kernel itself counts, and names the reason right.
//!
//! It loads the probe as `dropgate run` does, then, on a thread of its own inside a
//! network namespace it creates (so neither the traffic nor the sysctls touch the
//! machine's own namespace), turns IPv4 forwarding off and injects IPv4 frames for a
//! non-local address on `lo` through AF_PACKET. The kernel drops each one in
//! `ip_error` and counts it in `/proc/net/snmp` `Ip: InAddrErrors`; the probe's count
//! for that location, namespace, interface and protocol must equal that delta. Matching
//! on namespace, interface and protocol too means every struct offset the probe reads
//! is checked, not only the hook's arguments. The result is one machine-readable line,
//! which the kernel matrix (`cargo xtask test-kernels`) reads from each guest's console.
//!
//! With `--late-modules` (guests only) it then loads ipip and its dependencies, as
//! dockerd or firewalld load their modules after dropgate started, and drops IPv6
//! packets on ipip's fallback device `tunl0`, which only carries IPv4 and MPLS: ipip
//! frees each in `ipip_tunnel_xmit`. Those drops must be named after that function,
//! which the symbol table read at start does not have.
//!
//! With `--conntrack-modules` (guests only) it last fills a small conntrack table and
//! checks the drops, conntrack's counters and `diagnose`'s finding: see [`conntrack`].

mod conntrack;

use std::{
    ffi::CString,
    fmt::Write as _,
    fs::File,
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use crate::{
    btf::Btf,
    collector::{DropCollector, View},
    kallsyms::Kallsyms,
    loader::{self, HookChoice, LoadOptions, SkbOffsets},
    netns::inode_of,
};

/// The result line starts with this, so it can be found among console noise.
pub const LINE_PREFIX: &str = "DROPGATE-SELFTEST";

/// The frames go from and to addresses of the self-test's own namespace only.
const SOURCE: [u8; 4] = [10, 253, 0, 1];
/// Not assigned to anything in that namespace: the kernel would have to forward it.
const DESTINATION: [u8; 4] = [10, 253, 0, 2];
/// The injection interface; the only one a fresh namespace has.
const INTERFACE: &str = "lo";
/// How long the kernel gets to process the injected frames.
const SETTLE: Duration = Duration::from_secs(3);
/// ipip's fallback tunnel, made in every namespace once the module is loaded.
const TUNNEL: &str = "tunl0";
/// The ipip function that frees a packet it cannot carry.
const TUNNEL_DROP_FUNCTION: &str = "ipip_tunnel_xmit";

/// What to test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelftestOptions {
    /// Which hook to load (as `dropgate run --trace.hook`).
    pub hook: HookChoice,
    /// Frames to inject; each must become one `ip_error` drop.
    pub packets: u32,
    /// Deliberately hand the probe a wrong `sk_buff.dev` offset: the self-test must
    /// then fail. Proves that the test can fail; never useful otherwise.
    pub corrupt_offset: bool,
    /// Module files to load after the probe, in order (ipip last): see the module doc.
    pub late_modules: Vec<PathBuf>,
    /// Module files that make conntrack work (guests only): see [`conntrack`].
    pub conntrack_modules: Vec<PathBuf>,
}

impl Default for SelftestOptions {
    fn default() -> Self {
        Self {
            hook: HookChoice::Auto,
            packets: 100,
            corrupt_offset: false,
            late_modules: Vec::new(),
            conntrack_modules: Vec::new(),
        }
    }
}

pub use conntrack::ConntrackReport;

/// What the late-module part measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LateModuleReport {
    /// The location labels of every drop added in the tunnel's namespace, `+`-joined;
    /// `none` if none.
    pub location: String,
    /// Drops in the tunnel's namespace named after [`TUNNEL_DROP_FUNCTION`].
    pub count: u64,
}

/// What the self-test measured, and whether that is a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelftestReport {
    /// `uname -r`.
    pub kernel: String,
    /// The hook the probe runs on (`tp_btf/kfree_skb`, `tracepoint/skb/kfree_skb`).
    pub hook: String,
    /// How the probe reads packet bytes (`bpf_rdonly_cast` or `bpf_probe_read_kernel`).
    pub reads: String,
    /// The reason name(s) the probe reported for the injected drops, `+`-joined if
    /// several; `none` if it attributed none of them.
    pub reason: String,
    /// The reason name this kernel must report (see [`expected_reason`]).
    pub expected_reason: String,
    /// Frames injected.
    pub packets: u32,
    /// Drops the probe attributed to `ip_error` in the self-test's namespace, on `lo`,
    /// as UDP.
    pub count: u64,
    /// Every `ip_error` drop the probe saw, however attributed (tells a wrong offset
    /// from a missing event).
    pub ip_error_total: u64,
    /// The kernel's own count of the drops: the `InAddrErrors` delta in the namespace.
    pub in_addr_errors_delta: u64,
    /// `count == in_addr_errors_delta`.
    pub exact: bool,
    /// Reading BTF, loading and attaching, in milliseconds.
    pub load_ms: u64,
    /// Whether this run used a deliberately wrong offset.
    pub corrupt_offset: bool,
    /// The late-module part, when asked for.
    pub late_module: Option<LateModuleReport>,
    /// The conntrack part, when asked for.
    pub conntrack: Option<ConntrackReport>,
    /// Exact, every frame dropped, and the expected reason (and, with late modules,
    /// every tunnel drop named after the module's function; with conntrack, its part
    /// passed).
    pub pass: bool,
}

impl SelftestReport {
    /// `DROPGATE-SELFTEST {...}`: one line of JSON after the prefix.
    #[must_use]
    pub fn line(&self) -> String {
        let mut json = String::from("{");
        let strings = [
            ("kernel", &self.kernel),
            ("hook", &self.hook),
            ("reads", &self.reads),
            ("reason", &self.reason),
            ("expected_reason", &self.expected_reason),
        ];
        for (key, value) in strings {
            let _ = write!(json, "\"{key}\":{},", json_string(value));
        }
        let numbers = [
            ("packets", u64::from(self.packets)),
            ("count", self.count),
            ("ip_error_total", self.ip_error_total),
            ("in_addr_errors_delta", self.in_addr_errors_delta),
            ("load_ms", self.load_ms),
        ];
        for (key, value) in numbers {
            let _ = write!(json, "\"{key}\":{value},");
        }
        if let Some(late) = &self.late_module {
            let _ = write!(
                json,
                "\"late_module_location\":{},\"late_module_count\":{},",
                json_string(&late.location),
                late.count
            );
        }
        if let Some(ct) = &self.conntrack {
            let _ = write!(
                json,
                "\"conntrack\":{{\"max\":{},\"count\":{},\"refused\":{},\"traced_as\":{},\"traced\":{},\"elsewhere\":{},\
                 \"stat_drop\":{},\"stat_early_drop\":{},\"stat_insert_failed\":{},\"finding\":{},\"fix\":{},\"pass\":{}}},",
                ct.max,
                ct.count,
                ct.refused,
                json_string(&ct.traced_as),
                ct.traced,
                json_string(&ct.elsewhere),
                ct.stat_drop,
                ct.stat_early_drop,
                ct.stat_insert_failed,
                ct.finding.as_deref().map_or_else(|| "null".to_owned(), json_string),
                ct.fix.as_deref().map_or_else(|| "null".to_owned(), json_string),
                ct.pass
            );
        }
        let _ = write!(
            json,
            "\"exact\":{},\"corrupt_offset\":{},\"pass\":{}}}",
            self.exact, self.corrupt_offset, self.pass
        );
        format!("{LINE_PREFIX} {json}")
    }
}

/// Runs the self-test. An `Err` means it could not be run at all (no BTF, no
/// privileges, the probe did not load); a failed check is a report with `pass: false`.
pub fn run(options: &SelftestOptions) -> anyhow::Result<SelftestReport> {
    ensure!(
        options.packets > 0,
        "the self-test needs at least one packet"
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    let started = Instant::now();
    let btf = Btf::from_sys_fs()?;
    // Counting only: per-packet samples are not what is being proved.
    let load = LoadOptions {
        hook: options.hook,
        samples_per_sec: 0,
        ..LoadOptions::default()
    };
    let mut probe = if options.corrupt_offset {
        loader::load_with(&load, &btf, corrupt)?
    } else {
        loader::load(&load, &btf)?
    };
    let load_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let hook = probe.hook.to_string();
    let reads = probe.reads.to_string();
    let collector = DropCollector::new(&mut probe, &btf, Kallsyms::load()?, View::default())
        .context("reading the probe's maps")?;
    let reason_names: Vec<String> = btf
        .enum_values("skb_drop_reason")
        .unwrap_or_default()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let expected_reason = expected_reason(probe.has_reason, &reason_names);

    // A thread of its own: the namespace it enters ends with it, and the rest of the
    // process (an async runtime's threads, say) never changes namespace.
    let traffic = std::thread::scope(|scope| {
        scope
            .spawn(|| inject_in_private_namespace(options.packets))
            .join()
    })
    .map_err(|_| anyhow::anyhow!("the traffic thread panicked"))??;

    let (count, ip_error_total, reasons) = ip_error_drops(&collector, &traffic);
    let late_module = if options.late_modules.is_empty() {
        None
    } else {
        Some(late_module(
            &options.late_modules,
            options.packets,
            &collector,
        )?)
    };
    // Last: it loads conntrack, which stays for the rest of the boot.
    let conntrack = if options.conntrack_modules.is_empty() {
        None
    } else {
        Some(conntrack::run(
            &options.conntrack_modules,
            &collector,
            probe.has_reason,
        )?)
    };
    drop(probe);
    let reason = if reasons.is_empty() {
        "none".to_owned()
    } else {
        reasons.join("+")
    };
    let exact = count == traffic.in_addr_errors_delta;
    let pass = exact
        && traffic.in_addr_errors_delta == u64::from(options.packets)
        && reason == expected_reason
        // Other drops may share the namespace (creating tunl0 frees a probe skb per
        // CPU in napi_get_frags_check on 6.1): what must hold is that every tunnel
        // drop carries the module's function.
        && late_module
            .as_ref()
            .is_none_or(|late| late.count == u64::from(options.packets))
        && conntrack.as_ref().is_none_or(|ct| ct.pass);
    Ok(SelftestReport {
        kernel,
        hook,
        reads,
        reason,
        expected_reason: expected_reason.to_owned(),
        packets: options.packets,
        count,
        ip_error_total,
        in_addr_errors_delta: traffic.in_addr_errors_delta,
        exact,
        load_ms,
        corrupt_offset: options.corrupt_offset,
        late_module,
        conntrack,
        pass,
    })
}

/// The probe's `ip_error` drops: those of the traffic's namespace, `lo` and UDP, all
/// of them, and the reasons of the former.
fn ip_error_drops(collector: &DropCollector, traffic: &Traffic) -> (u64, u64, Vec<String>) {
    // Labels as the collector itself names this namespace and its `lo`.
    let names = collector.names();
    let netns = names.namespace(traffic.netns);
    let interface = names.interface(traffic.netns, traffic.ifindex);
    let mut count = 0;
    let mut ip_error_total = 0;
    let mut reasons: Vec<String> = Vec::new();
    for (labels, counts) in collector.drops() {
        if labels.location != "ip_error" {
            continue;
        }
        ip_error_total += counts.packets;
        if labels.netns == netns && labels.interface == interface && labels.protocol == "udp" {
            count += counts.packets;
            if !reasons.contains(&labels.reason) {
                reasons.push(labels.reason);
            }
        }
    }
    (count, ip_error_total, reasons)
}

/// Loads `modules` (the probe, and the symbol table, are already there), drops
/// `packets` IPv6 packets on ipip's `tunl0` in a namespace of its own, and reports how
/// the collector names them.
fn late_module(
    modules: &[PathBuf],
    packets: u32,
    collector: &DropCollector,
) -> anyhow::Result<LateModuleReport> {
    // Only what the tunnel adds counts: a namespace made now may get the inode of the
    // one the ip_error part used (the kernel reuses freed inode numbers at once).
    let before = collector.drops();
    for module in modules {
        load_module(module)?;
    }
    let netns = std::thread::scope(|scope| {
        scope
            .spawn(|| drop_on_tunnel_in_private_namespace(packets))
            .join()
    })
    .map_err(|_| anyhow::anyhow!("the tunnel traffic thread panicked"))??;
    // The symbol table notices new modules at its next check, at most a second after
    // the last one; a scrape at that moment would see the old names, as here.
    std::thread::sleep(Duration::from_millis(1100));
    let netns = collector.names().namespace(netns);
    let mut locations: Vec<String> = Vec::new();
    let mut count = 0;
    for (labels, counts) in collector.drops() {
        let added = counts.packets
            - before
                .get(&labels)
                .map_or(0, |earlier| earlier.packets.min(counts.packets));
        // The tunnel's namespace ends with its thread: by now its keys may already
        // be folded into `gone` (counts move there whole, so the delta still holds).
        if (labels.netns != netns && labels.netns != crate::collector::GONE) || added == 0 {
            continue;
        }
        if labels.location == TUNNEL_DROP_FUNCTION {
            count += added;
        }
        if !locations.contains(&labels.location) {
            locations.push(labels.location);
        }
    }
    Ok(LateModuleReport {
        location: if locations.is_empty() {
            "none".to_owned()
        } else {
            locations.join("+")
        },
        count,
    })
}

/// `insmod`: finit_module(2) of the file at `path`; one already loaded is fine.
fn load_module(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let no_parameters = c"";
    // SAFETY: finit_module reads the module from a descriptor we own and a
    // NUL-terminated parameter string; both outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            no_parameters.as_ptr(),
            0,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err).with_context(|| format!("loading the module {}", path.display()));
        }
    }
    Ok(())
}

/// In a new namespace of the calling thread: `tunl0` up, and `packets` IPv6 packets
/// sent on it, which ipip drops. Returns the namespace's inode.
fn drop_on_tunnel_in_private_namespace(packets: u32) -> anyhow::Result<u32> {
    // SAFETY: as in inject_in_private_namespace: only this thread's namespace changes,
    // and the thread ends when the caller's scope does.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("creating a namespace for the tunnel");
    }
    let netns = inode_of(Path::new("/proc/thread-self/ns/net"))
        .context("reading the new namespace's inode")?;
    set_interface_up(TUNNEL)?;
    let ifindex = interface_index(TUNNEL)?;
    // SAFETY: plain socket creation; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("opening an AF_PACKET socket");
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = (libc::ETH_P_IPV6 as u16).to_be();
    address.sll_ifindex = i32::try_from(ifindex).context("ifindex out of range")?;
    // A bare IPv6 header (version 6, no payload, hop limit 64), between two
    // documentation addresses: ipip refuses it before looking at any of it.
    let mut packet = [0u8; 40];
    packet[0] = 0x60;
    packet[6] = 59; // no next header
    packet[7] = 64;
    packet[8..10].copy_from_slice(&0x2001_u16.to_be_bytes());
    packet[10..12].copy_from_slice(&0x0db8_u16.to_be_bytes());
    packet[23] = 1;
    packet[24..26].copy_from_slice(&0x2001_u16.to_be_bytes());
    packet[26..28].copy_from_slice(&0x0db8_u16.to_be_bytes());
    packet[39] = 2;
    for i in 0..packets {
        // SAFETY: the buffer and address are valid for the lengths given, for the call.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const address).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("sending packet {i} on {TUNNEL}"));
        }
    }
    Ok(netns)
}

/// The broken offset of `corrupt_offset`: `sk_buff.dev` moved onto the next pointer
/// (`sk`, NULL for received packets), so the probe loses device and namespace.
fn corrupt(offsets: &mut SkbOffsets) {
    offsets.skb_dev += 8;
}

/// The reason the probe must report for an `ip_error` drop with forwarding off: none
/// where the hook has no reason argument (before 5.17), `NOT_SPECIFIED` where the enum
/// predates `IP_INADDRERRORS` (the reason `ip_error` got with it), else that.
fn expected_reason(has_reason: bool, reason_names: &[String]) -> &'static str {
    if !has_reason {
        "unknown"
    } else if reason_names
        .iter()
        .any(|name| name == "SKB_DROP_REASON_IP_INADDRERRORS")
    {
        "IP_INADDRERRORS"
    } else {
        "NOT_SPECIFIED"
    }
}

/// What the traffic thread did, in terms the collector's labels can be matched with.
struct Traffic {
    netns: u32,
    ifindex: u32,
    in_addr_errors_delta: u64,
}

/// Creates a network namespace for the calling thread, turns forwarding off in it, and
/// injects `packets` frames on its `lo`. Must run on a thread that ends afterwards.
fn inject_in_private_namespace(packets: u32) -> anyhow::Result<Traffic> {
    let outer = inode_of(Path::new("/proc/thread-self/ns/net"));
    // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET changes only the
    // calling thread's namespace, and this thread ends when the caller's scope does.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error())
            .context("creating a network namespace for the self-test (needs CAP_SYS_ADMIN)");
    }
    let netns = inode_of(Path::new("/proc/thread-self/ns/net"))
        .context("reading the new namespace's inode")?;
    // The sysctls below must never reach the machine's own namespace.
    ensure!(
        outer.is_some_and(|outer| outer != netns),
        "the self-test's thread is still in the original network namespace; refusing to change its sysctls"
    );
    set_interface_up(INTERFACE)?;
    for conf in ["all", INTERFACE] {
        let path = format!("/proc/sys/net/ipv4/conf/{conf}/forwarding");
        std::fs::write(&path, "0").with_context(|| format!("writing 0 to {path}"))?;
    }
    let ifindex = interface_index(INTERFACE)?;
    let before = read_in_addr_errors()?;
    send_frames(ifindex, packets)?;
    let wanted = before + u64::from(packets);
    let deadline = Instant::now() + SETTLE;
    let mut after = read_in_addr_errors()?;
    while after < wanted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        after = read_in_addr_errors()?;
    }
    Ok(Traffic {
        netns,
        ifindex,
        in_addr_errors_delta: after - before,
    })
}

/// `Ip: InAddrErrors` of the calling thread's namespace.
fn read_in_addr_errors() -> anyhow::Result<u64> {
    // thread-self, not self: /proc/self/net is the main thread's namespace.
    let path = "/proc/thread-self/net/snmp";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    in_addr_errors(&text).with_context(|| format!("{path} has no Ip InAddrErrors"))
}

/// Parses `InAddrErrors` out of `/proc/net/snmp` (a header line, then a value line).
fn in_addr_errors(snmp: &str) -> Option<u64> {
    let mut ip_lines = snmp.lines().filter(|line| line.starts_with("Ip: "));
    let header = ip_lines.next()?;
    let values = ip_lines.next()?;
    let column = header
        .split_ascii_whitespace()
        .position(|name| name == "InAddrErrors")?;
    values.split_ascii_whitespace().nth(column)?.parse().ok()
}

/// An Ethernet frame carrying an IPv4/UDP datagram from [`SOURCE`] to [`DESTINATION`],
/// addressed to `lo`'s all-zero MAC so the kernel takes it as for this host.
fn frame(id: u16) -> [u8; 42] {
    let mut frame = [0u8; 42];
    // Ethernet: destination and source MAC all zero, EtherType IPv4.
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut frame[14..34];
    ip[0] = 0x45; // version 4, 20-byte header
    ip[2..4].copy_from_slice(&28u16.to_be_bytes()); // total length: IP + UDP headers
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&SOURCE);
    ip[16..20].copy_from_slice(&DESTINATION);
    let checksum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let udp = &mut frame[34..42];
    udp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes()); // discard
    udp[4..6].copy_from_slice(&8u16.to_be_bytes());
    // UDP checksum 0: none, allowed for IPv4.
    frame
}

/// The Internet checksum of an IPv4 header whose checksum field is zero.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn send_frames(ifindex: u32, packets: u32) -> anyhow::Result<()> {
    // SAFETY: plain socket creation; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("opening an AF_PACKET socket");
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    address.sll_ifindex = i32::try_from(ifindex).context("ifindex out of range")?;
    address.sll_halen = 6;
    for i in 0..packets {
        let frame = frame(i as u16);
        // SAFETY: the buffer and address are valid for the lengths given, for the call.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const address).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("sending frame {i} on {INTERFACE}"));
        }
    }
    Ok(())
}

fn interface_index(name: &str) -> anyhow::Result<u32> {
    let c_name = CString::new(name).context("interface name has a NUL")?;
    // SAFETY: c_name is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        bail!("no interface {name} in the self-test's namespace");
    }
    Ok(index)
}

/// ioctl's request argument is an unsigned long in glibc and an int in musl (the
/// static builds); the numbers fit either.
const IOCTL_GET_FLAGS: libc::Ioctl = libc::SIOCGIFFLAGS as libc::Ioctl;
const IOCTL_SET_FLAGS: libc::Ioctl = libc::SIOCSIFFLAGS as libc::Ioctl;

/// `ip link set NAME up`, through the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls.
fn set_interface_up(name: &str) -> anyhow::Result<()> {
    // SAFETY: plain socket creation; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("opening a socket for ioctls");
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { mem::zeroed() };
    ensure!(
        name.len() < request.ifr_name.len(),
        "interface name {name} too long"
    );
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        // c_char is i8 on x86_64 and u8 on aarch64: same bits either way.
        *slot = libc::c_char::from_ne_bytes([byte]);
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `request`, a valid
    // ifreq that outlives the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), IOCTL_GET_FLAGS, &raw mut request) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("reading {name}'s flags"));
    }
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    unsafe {
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS reads name and flags.
    if unsafe { libc::ioctl(socket.as_raw_fd(), IOCTL_SET_FLAGS, &raw const request) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setting {name} up"));
    }
    Ok(())
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_addr_errors_from_snmp() {
        let real = "Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams\n\
                    Ip: 2 64 1234 0 17 0\n\
                    Icmp: InMsgs InErrors\n\
                    Icmp: 3 0\n";
        let cases = [
            ("real layout", real, Some(17)),
            ("no Ip lines", "Icmp: InMsgs\nIcmp: 3\n", None),
            ("header without values", "Ip: InAddrErrors\n", None),
            (
                "no such column",
                "Ip: Forwarding DefaultTTL\nIp: 2 64\n",
                None,
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(in_addr_errors(text), want, "case {name}");
        }
    }

    #[test]
    fn expected_reasons() {
        let with = [
            "SKB_DROP_REASON_NOT_SPECIFIED".to_owned(),
            "SKB_DROP_REASON_IP_INADDRERRORS".to_owned(),
        ];
        let without = ["SKB_DROP_REASON_NOT_SPECIFIED".to_owned()];
        let cases = [
            ("5.10: no reason argument", false, &[][..], "unknown"),
            (
                "6.1+: reason in the enum",
                true,
                &with[..],
                "IP_INADDRERRORS",
            ),
            (
                "5.17/5.18: enum without it",
                true,
                &without[..],
                "NOT_SPECIFIED",
            ),
        ];
        for (name, has_reason, names, want) in cases {
            assert_eq!(expected_reason(has_reason, names), want, "case {name}");
        }
    }

    #[test]
    fn frames_carry_a_valid_ipv4_header() {
        let frame = frame(7);
        assert_eq!(&frame[12..14], &[0x08, 0x00], "EtherType IPv4");
        assert_eq!(ipv4_checksum(&frame[14..34]), 0, "header checksum verifies");
        assert_eq!(&frame[30..34], &DESTINATION);
        // A header from RFC 1071 style worked examples: 192.168.0.1 -> 192.168.0.199.
        let known = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&known), 0xb861);
    }

    #[test]
    fn report_line_is_one_line_of_json() {
        let report = SelftestReport {
            kernel: "6.1.0-\"x\"".into(),
            hook: "tp_btf/kfree_skb".into(),
            reads: "bpf_rdonly_cast".into(),
            reason: "IP_INADDRERRORS".into(),
            expected_reason: "IP_INADDRERRORS".into(),
            packets: 100,
            count: 100,
            ip_error_total: 100,
            in_addr_errors_delta: 100,
            exact: true,
            load_ms: 12,
            corrupt_offset: false,
            late_module: None,
            conntrack: None,
            pass: true,
        };
        let with_module = SelftestReport {
            late_module: Some(LateModuleReport {
                location: TUNNEL_DROP_FUNCTION.into(),
                count: 100,
            }),
            ..report.clone()
        };
        assert!(
            with_module.line().contains(
                "\"load_ms\":12,\"late_module_location\":\"ipip_tunnel_xmit\",\"late_module_count\":100,\"exact\""
            ),
            "{}",
            with_module.line()
        );
        assert_eq!(
            report.line(),
            "DROPGATE-SELFTEST {\"kernel\":\"6.1.0-\\\"x\\\"\",\"hook\":\"tp_btf/kfree_skb\",\
             \"reads\":\"bpf_rdonly_cast\",\"reason\":\"IP_INADDRERRORS\",\"expected_reason\":\"IP_INADDRERRORS\",\
             \"packets\":100,\"count\":100,\"ip_error_total\":100,\"in_addr_errors_delta\":100,\
             \"load_ms\":12,\"exact\":true,\"corrupt_offset\":false,\"pass\":true}"
        );
    }
}
