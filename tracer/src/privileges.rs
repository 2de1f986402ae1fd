//! What the process may do: capability checks before loading BPF, with clear errors
//! instead of a bare EPERM from deep inside the loader, and the drop to the few
//! capabilities `dropgate run` and `dropgate watch` keep once attached.
//!
//! Capabilities belong to threads, not processes: `capset` and `PR_CAPBSET_DROP` change
//! the calling thread only, and a new thread starts with a copy of its creator's sets.
//! So the drop happens while the main thread is the only one, and everything started
//! afterwards (the async runtime's workers, the enrichment and forwarding threads)
//! inherits the reduced sets; [`drop_capabilities`] refuses to run otherwise.

use std::collections::BTreeSet;

use caps::{CapSet, Capability, CapsHashSet};

/// Errors dropping capabilities.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Other threads exist: a drop now would leave them with every capability.
    #[error("capabilities must be dropped while the main thread is the only one, but {threads} threads exist; this is a bug in dropgate")]
    NotSingleThreaded { threads: usize },
    /// The kernel refused to read or change a capability set.
    #[error("changing the {set} capability set failed: {source}")]
    Kernel {
        set: &'static str,
        source: caps::errors::CapsError,
    },
    /// The maps could not be read any more with the capabilities that would be kept.
    #[error(
        "the probe's maps cannot be read after dropping capabilities; this is a bug in dropgate"
    )]
    MapsUnreadable,
}

fn kernel(set: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |source| PrivilegeError::Kernel { set, source }
}

fn effective_has(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// Whether the kernel will let us load tracing programs: CAP_BPF with CAP_PERFMON
/// (5.8+), or CAP_SYS_ADMIN.
#[must_use]
pub fn can_load_bpf() -> bool {
    effective_has(Capability::CAP_SYS_ADMIN)
        || (effective_has(Capability::CAP_BPF) && effective_has(Capability::CAP_PERFMON))
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

/// Capabilities `dropgate run` and `dropgate watch` keep once their programs are
/// attached, and why:
/// - CAP_SYS_ADMIN: `setns` into other namespaces to name their interfaces and follow
///   their forwarding state (the kernel has no narrower capability for that);
/// - CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: open `/proc/<pid>/ns/net` of processes in
///   namespaces without a bind mount;
/// - CAP_NET_ADMIN: netlink requests inside those namespaces, and reading the
///   firewall (`nft`, `iptables-nft`) in `run`'s periodic checks;
/// - CAP_NET_RAW: `iptables-legacy` reads its tables through a raw socket (the same
///   periodic checks, on hosts whose Docker still uses the legacy backend);
/// - CAP_NET_BIND_SERVICE: only when listening on a port below 1024.
///
/// Dropped: CAP_BPF and CAP_PERFMON (the maps are read through descriptors already
/// open; see [`drop_capabilities`] for when CAP_BPF stays), CAP_SYSLOG (the symbol
/// table is re-read through a descriptor opened before), and every other capability
/// root has.
#[must_use]
pub fn runtime_capabilities(listen_port: Option<u16>) -> CapsHashSet {
    let mut keep: CapsHashSet = [
        Capability::CAP_SYS_ADMIN,
        Capability::CAP_SYS_PTRACE,
        Capability::CAP_DAC_READ_SEARCH,
        Capability::CAP_NET_ADMIN,
        Capability::CAP_NET_RAW,
    ]
    .into_iter()
    .collect();
    if listen_port.is_some_and(|port| port < 1024) {
        keep.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    keep
}

/// What the kernel checks for a read of a BPF map through a descriptor the process
/// already holds, as measured by [`drop_capabilities`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapReads {
    /// Nothing beyond the descriptor's read mode (kernels from 6.5, where the
    /// `bpf_capable()` check moved from every `bpf()` command to map and program
    /// creation; older ones with `kernel.unprivileged_bpf_disabled=0`).
    NeedNoCapability,
    /// `bpf_capable()`, i.e. CAP_BPF or CAP_SYS_ADMIN (kernels before 6.5 with
    /// `kernel.unprivileged_bpf_disabled` set, Debian's default).
    NeedBpfCapable,
}

/// The outcome of [`drop_capabilities`], for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The effective and permitted sets now (equal).
    pub kept: CapsHashSet,
    /// What map reads were found to need.
    pub map_reads: MapReads,
    /// Whether the bounding set was shrunk too (needs CAP_SETPCAP, which a systemd unit
    /// with a minimal bounding set does not grant; there it is minimal already).
    pub bounding_shrunk: bool,
}

/// Threads of this process, from `/proc/self/task`.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count)
}

/// Drops every capability not in `keep` from the effective, permitted, inheritable and
/// ambient sets, and from the bounding set where CAP_SETPCAP allows, so that neither a
/// later thread nor a child process gets them back. Must be called before any other
/// thread exists (it checks).
///
/// `can_read_maps` decides whether CAP_BPF must stay: it is called with an empty
/// effective set (the permitted set unchanged, so this is reversible), which asks the
/// kernel exactly the question that matters. Only if the read fails then do reads need
/// `bpf_capable()`, and only if CAP_SYS_ADMIN is not kept anyway does CAP_BPF stay.
/// With CAP_SYS_ADMIN still effective the check could never fail, whatever the kernel.
pub fn drop_capabilities(
    keep: &CapsHashSet,
    can_read_maps: impl Fn() -> bool,
) -> Result<Dropped, PrivilegeError> {
    let threads = thread_count();
    if threads > 1 {
        return Err(PrivilegeError::NotSingleThreaded { threads });
    }
    let permitted = caps::read(None, CapSet::Permitted).map_err(kernel("permitted"))?;
    let effective = caps::read(None, CapSet::Effective).map_err(kernel("effective"))?;

    caps::clear(None, CapSet::Effective).map_err(kernel("effective"))?;
    let map_reads = if can_read_maps() {
        MapReads::NeedNoCapability
    } else {
        MapReads::NeedBpfCapable
    };
    caps::set(None, CapSet::Effective, &effective).map_err(kernel("effective"))?;

    let mut target: CapsHashSet = keep.intersection(&permitted).copied().collect();
    if map_reads == MapReads::NeedBpfCapable
        && !target.contains(&Capability::CAP_SYS_ADMIN)
        && permitted.contains(&Capability::CAP_BPF)
    {
        tracing::info!("this kernel checks CAP_BPF for map reads: keeping it");
        target.insert(Capability::CAP_BPF);
    }

    // The bounding set first: shrinking it needs CAP_SETPCAP in the effective set.
    let bounding_shrunk = caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP).is_ok();
    if bounding_shrunk {
        let bounding = caps::read(None, CapSet::Bounding).map_err(kernel("bounding"))?;
        for cap in bounding.difference(&target) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(kernel("bounding"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(kernel("ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(kernel("inheritable"))?;
    // Effective before permitted: the kernel refuses an effective set larger than the
    // permitted one.
    caps::set(None, CapSet::Effective, &target).map_err(kernel("effective"))?;
    caps::set(None, CapSet::Permitted, &target).map_err(kernel("permitted"))?;
    if !can_read_maps() {
        return Err(PrivilegeError::MapsUnreadable);
    }
    Ok(Dropped {
        kept: caps::read(None, CapSet::Effective).map_err(kernel("effective"))?,
        map_reads,
        bounding_shrunk,
    })
}

/// The names of `set`, sorted, comma-separated (`CAP_NET_ADMIN,CAP_SYS_ADMIN`).
#[must_use]
pub fn describe(set: &CapsHashSet) -> String {
    let names: BTreeSet<String> = set.iter().map(ToString::to_string).collect();
    names.into_iter().collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_set_keeps_only_what_naming_needs() {
        let cases = [
            (
                "high port",
                Some(9091),
                "CAP_DAC_READ_SEARCH,CAP_NET_ADMIN,CAP_NET_RAW,CAP_SYS_ADMIN,CAP_SYS_PTRACE",
            ),
            (
                "port 80 needs CAP_NET_BIND_SERVICE",
                Some(80),
                "CAP_DAC_READ_SEARCH,CAP_NET_ADMIN,CAP_NET_BIND_SERVICE,CAP_NET_RAW,CAP_SYS_ADMIN,CAP_SYS_PTRACE",
            ),
            (
                "no listener (watch)",
                None,
                "CAP_DAC_READ_SEARCH,CAP_NET_ADMIN,CAP_NET_RAW,CAP_SYS_ADMIN,CAP_SYS_PTRACE",
            ),
        ];
        for (name, port, want) in cases {
            let set = runtime_capabilities(port);
            assert_eq!(describe(&set), want, "case {name}");
            for gone in [
                Capability::CAP_BPF,
                Capability::CAP_PERFMON,
                Capability::CAP_SYSLOG,
            ] {
                assert!(!set.contains(&gone), "case {name}: {gone} is not kept");
            }
        }
    }

    #[test]
    fn refuses_to_drop_with_other_threads_running() {
        // A second thread that lives across the call, whatever the harness does
        // (with --test-threads=1 it runs tests on the main thread).
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || wait.recv());
        let keep = runtime_capabilities(None);
        let result = drop_capabilities(&keep, || true);
        release.send(()).expect("the other thread waits");
        other
            .join()
            .expect("the other thread ends")
            .expect("released");
        let err = result.expect_err("more than one thread exists");
        assert!(
            matches!(err, PrivilegeError::NotSingleThreaded { threads } if threads > 1),
            "{err}"
        );
    }
}
