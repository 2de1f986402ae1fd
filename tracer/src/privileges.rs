//! What the process may do: capability checks before loading BPF, with clear errors
//! instead of a bare EPERM from deep inside the loader.

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from `/proc/self/status`.
#[must_use]
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let hex = line.strip_prefix("CapEff:")?.trim();
                u64::from_str_radix(hex, 16).ok()
            })
        })
        .unwrap_or(0)
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// Whether the kernel will let us load tracing programs: CAP_BPF with CAP_PERFMON
/// (5.8+), or CAP_SYS_ADMIN.
#[must_use]
pub fn can_load_bpf() -> bool {
    let caps = effective_capabilities();
    has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it where we may. Newer
/// kernels account to the memory cgroup and ignore it, so a failure is not an error.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised rlimit struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
    if rc != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SETPCAP: u32 = 8;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_LAST: u32 = 40;

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`; version 3 uses two of them (capabilities 0-31, 32-63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capset(effective: u64, permitted: u64) -> std::io::Result<()> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: 0,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset(2) reads one header and two data structs of the v3 layout, both
    // valid for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Capabilities `dropgate run` keeps once its programs are attached, and why:
/// - CAP_SYS_ADMIN: `setns` into other namespaces to name their interfaces and follow
///   their forwarding state (the kernel has no narrower capability for that);
/// - CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: open `/proc/<pid>/ns/net` of processes in
///   namespaces without a bind mount;
/// - CAP_NET_ADMIN: netlink requests inside those namespaces;
/// - CAP_NET_BIND_SERVICE: only when listening on a port below 1024.
///
/// Dropped: CAP_BPF and CAP_PERFMON (the maps are read through descriptors already
/// open), and every other capability root has.
#[must_use]
pub fn runtime_capabilities(listen_port: u16) -> u64 {
    let mut keep = [
        CAP_SYS_ADMIN,
        CAP_SYS_PTRACE,
        CAP_DAC_READ_SEARCH,
        CAP_NET_ADMIN,
    ]
    .iter()
    .fold(0u64, |set, cap| set | (1 << cap));
    if listen_port < 1024 {
        keep |= 1 << CAP_NET_BIND_SERVICE;
    }
    keep
}

/// Drops every capability not in `keep` from the effective and permitted sets (and the
/// bounding set, so no child can regain them), after checking with `still_works` that
/// the process still does its job without CAP_BPF/CAP_PERFMON: kernels before 6.5 check
/// `bpf_capable()` even for map reads through a descriptor; there they are kept.
/// Returns the capability set in force afterwards.
pub fn drop_capabilities(mut keep: u64, still_works: impl Fn() -> bool) -> std::io::Result<u64> {
    let current = effective_capabilities();
    let bpf = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_ADMIN);
    // Try without the BPF capabilities in the effective set only (reversible). CAP_SETPCAP
    // stays effective until the bounding set has been shrunk, which needs it.
    capset(
        current & (keep | (1 << CAP_SETPCAP)) & !((1 << CAP_BPF) | (1 << CAP_PERFMON)),
        current,
    )?;
    if !still_works() {
        tracing::info!("this kernel needs CAP_BPF to read BPF maps: keeping it");
        keep |= bpf & current;
    }
    let target = current & keep;
    for cap in 0..=CAP_LAST {
        if target & (1 << cap) == 0 {
            // SAFETY: prctl with integer arguments only. EINVAL (a capability this kernel
            // does not know) and EPERM (no CAP_SETPCAP, e.g. under a systemd unit whose
            // bounding set already excludes it) leave the bounding set as it was.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        }
    }
    capset(target, target)?;
    Ok(effective_capabilities())
}

/// Names of the capabilities in `set` that dropgate cares about, for logs.
#[must_use]
pub fn describe(set: u64) -> String {
    let names = [
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
        (CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_BPF, "CAP_BPF"),
    ];
    let known: Vec<&str> = names
        .iter()
        .filter(|(cap, _)| set & (1 << cap) != 0)
        .map(|(_, name)| *name)
        .collect();
    let others = (set & !names.iter().fold(0, |m, (c, _)| m | (1 << c))).count_ones();
    if others == 0 {
        known.join(",")
    } else {
        format!("{} +{others} others", known.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_set_keeps_only_what_naming_needs() {
        let high = runtime_capabilities(9091);
        assert_eq!(
            describe(high),
            "CAP_DAC_READ_SEARCH,CAP_NET_ADMIN,CAP_SYS_PTRACE,CAP_SYS_ADMIN"
        );
        assert_eq!(
            high & (1 << CAP_BPF),
            0,
            "CAP_BPF is not needed after loading"
        );
        assert_eq!(
            high & (1 << CAP_PERFMON),
            0,
            "CAP_PERFMON is not needed after attaching"
        );
        let low = runtime_capabilities(80);
        assert_ne!(
            low & (1 << CAP_NET_BIND_SERVICE),
            0,
            "port 80 needs CAP_NET_BIND_SERVICE"
        );
        assert_eq!(describe((1 << 0) | (1 << CAP_BPF)), "CAP_BPF +1 others");
    }
}
