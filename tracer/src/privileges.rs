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
