//! The conntrack part of the self-test (`--conntrack-modules`, kernel matrix guests
//! only): a full connection-tracking table, made on purpose, must show up as traced
//! drops that match conntrack's own `drop` counter, and as `diagnose`'s table-full
//! finding with its fix.
//!
//! `nf_conntrack_max` is machine-wide (writable only from the initial namespace), so
//! this runs only inside a guest of the matrix, never on a real host: it refuses
//! unless the kernel command line carries the matrix's own variable. In a namespace of
//! its own it loads an nft rule that matches `ct state` (conntrack hooks a namespace
//! only once a rule needs it), fills the table with established, and so assured, TCP
//! connections on `lo` (which conntrack cannot evict early), then tries a few more:
//! their SYNs are dropped while the table is full.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context as _};
use tracer_common::DropCounts;

use crate::{
    collector::{DropCollector, DropLabels, GONE},
    diagnose::{
        datapath::{read_conntrack, Conntrack},
        findings::{findings, Evidence, Kind, TracedDrop},
        host::HostState,
    },
    netns::inode_of,
};

/// The table size the guest is set to: small, so that filling it takes few connections.
const TABLE_MAX: u64 = 16;
/// Connections tried once the table is full; each SYN must be one drop.
const REFUSED_CONNECTIONS: u32 = 8;
/// How long one refused connection waits: the SYN is dropped at once, and closing the
/// socket before TCP's first retransmission (1 s) keeps it at one drop per connection.
const REFUSED_WAIT: Duration = Duration::from_millis(200);
/// How long a connection that must succeed may take (TCG is slow).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The sysctl, in the guest's initial namespace.
const MAX_SYSCTL: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
/// The kernel command-line variable only the matrix's guests have.
const GUEST_MARKER: &str = "dropgate_runs=";
/// A rule that needs conntrack on locally sent IPv4 packets. No `counter`: on 5.10 that
/// is a module of its own (nft_counter; nft says ENOENT without it), and nothing here
/// reads it.
const RULESET: &str = "table ip dropgate_selftest {\n\
                       \tchain output {\n\
                       \t\ttype filter hook output priority 0; policy accept;\n\
                       \t\tct state new accept\n\
                       \t}\n\
                       }\n";

/// What the conntrack part measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConntrackReport {
    /// `nf_conntrack_max` during the test.
    pub max: u64,
    /// `nf_conntrack_count` in the test's namespace, with the table full.
    pub count: u64,
    /// Connections tried while the table was full.
    pub refused: u32,
    /// Every drop traced in the test's namespace while the table was full, as
    /// `reason@location`, `+`-joined; `none` if none.
    pub traced_as: String,
    /// Those drops that carry netfilter's reason (or no reason, on kernels without).
    pub traced: u64,
    /// Drops added elsewhere meanwhile (see `Measured::elsewhere`), `; `-joined.
    pub elsewhere: String,
    /// `/proc/net/stat/nf_conntrack` deltas over the same time.
    pub stat_drop: u64,
    pub stat_early_drop: u64,
    pub stat_insert_failed: u64,
    /// The finding's summary, if `diagnose`'s rules named the full table.
    pub finding: Option<String>,
    /// The finding's first fix line.
    pub fix: Option<String>,
    /// Every refused connection is one traced drop and one `drop` count, and the
    /// finding names the table full with its numbers.
    pub pass: bool,
}

/// Whether this process runs in a guest of the kernel matrix (never a real host).
fn in_matrix_guest() -> bool {
    std::fs::read_to_string("/proc/cmdline").is_ok_and(|line| line.contains(GUEST_MARKER))
}

/// Puts the machine-wide table size back when the test ends, however it ends.
struct RestoreMax(String);

impl Drop for RestoreMax {
    fn drop(&mut self) {
        if let Err(err) = std::fs::write(MAX_SYSCTL, &self.0) {
            tracing::warn!("could not restore {MAX_SYSCTL} to {}: {err}", self.0.trim());
        }
    }
}

/// Loads `modules` (conntrack, nf_tables, nft_ct and their dependencies, in order) and
/// runs the test; `has_reason` says whether the kernel's drops carry reasons at all.
pub fn run(
    modules: &[PathBuf],
    collector: &DropCollector,
    has_reason: bool,
) -> anyhow::Result<ConntrackReport> {
    ensure!(
        in_matrix_guest(),
        "the conntrack self-test changes the machine-wide {MAX_SYSCTL}: it runs only in a \
         guest of the kernel matrix (`cargo xtask test-kernels`), whose kernel command \
         line has {GUEST_MARKER}"
    );
    for module in modules {
        super::load_module(module)?;
    }
    let original = std::fs::read_to_string(MAX_SYSCTL)
        .with_context(|| format!("reading {MAX_SYSCTL}; is nf_conntrack loaded?"))?;
    std::fs::write(MAX_SYSCTL, TABLE_MAX.to_string())
        .with_context(|| format!("writing {TABLE_MAX} to {MAX_SYSCTL}"))?;
    let _restore = RestoreMax(original);

    let measured = std::thread::scope(|scope| {
        scope
            .spawn(|| fill_table_in_private_namespace(collector))
            .join()
    })
    .map_err(|_| anyhow::anyhow!("the conntrack traffic thread panicked"))??;
    Ok(judge(&measured, has_reason))
}

/// What the traffic thread saw.
struct Measured {
    before: Conntrack,
    full: Conntrack,
    /// Drops added in the test's namespace while the table was full.
    drops: BTreeMap<DropLabels, u64>,
    /// Drops added elsewhere meanwhile, as `reason@location in netns (protocol)`: where
    /// to look when the namespace's own are missing.
    elsewhere: Vec<String>,
}

/// Turns the measurements into the report, through `diagnose`'s own rules.
fn judge(measured: &Measured, has_reason: bool) -> ConntrackReport {
    let traced_drops: Vec<TracedDrop> = measured
        .drops
        .iter()
        .map(|(labels, packets)| TracedDrop {
            reason: labels.reason.clone(),
            location: labels.location.clone(),
            interface: labels.interface.clone(),
            protocol: labels.protocol.to_owned(),
            packets: *packets,
        })
        .collect();
    let netfilter_reason = if has_reason {
        "NETFILTER_DROP"
    } else {
        "unknown"
    };
    let traced: u64 = traced_drops
        .iter()
        .filter(|d| d.reason == netfilter_reason)
        .map(|d| d.packets)
        .sum();
    let mut traced_as: Vec<String> = traced_drops
        .iter()
        .map(|d| format!("{}@{}", d.reason, d.location))
        .collect();
    traced_as.sort();
    traced_as.dedup();
    // Only conntrack's part of the host is evidence here: the guest has no other
    // configuration a finding could be about.
    let state = |conntrack: Conntrack| {
        let mut state = HostState::default();
        state.datapath.conntrack = Some(conntrack);
        state
    };
    let (before, after) = (state(measured.before), state(measured.full));
    let found = findings(&Evidence {
        before: Some(&before),
        after: &after,
        drops: Some(&traced_drops),
        samples: &[],
    });
    let finding = found.iter().find(|f| f.kind == Kind::ConntrackFull);
    let delta = |f: fn(&Conntrack) -> u64| f(&measured.full).saturating_sub(f(&measured.before));
    let stat_drop = delta(|c| c.drop);
    let refused = u64::from(REFUSED_CONNECTIONS);
    // The finding must name the numbers, the fix, and the drops that were traced (on
    // every kernel: 5.10's have no reason, only netfilter's location).
    let names_numbers = finding.is_some_and(|f| {
        f.summary
            .contains(&format!("full ({} of {})", measured.full.count, TABLE_MAX))
            && f.fix
                .first()
                .is_some_and(|fix| fix.contains("net.netfilter.nf_conntrack_max="))
            && f.evidence
                .iter()
                .any(|line| line.starts_with(&format!("{traced} packets dropped by netfilter")))
    });
    ConntrackReport {
        max: measured.full.max,
        count: measured.full.count,
        refused: REFUSED_CONNECTIONS,
        traced_as: if traced_as.is_empty() {
            "none".into()
        } else {
            traced_as.join("+")
        },
        traced,
        elsewhere: measured.elsewhere.join("; "),
        stat_drop,
        stat_early_drop: delta(|c| c.early_drop),
        stat_insert_failed: delta(|c| c.insert_failed),
        finding: finding.map(|f| f.summary.clone()),
        fix: finding.and_then(|f| f.fix.first().cloned()),
        pass: measured.full.max == TABLE_MAX
            && measured.full.count == TABLE_MAX
            && stat_drop == refused
            && traced == refused
            && names_numbers,
    }
}

/// In a new namespace of the calling thread: the nft rule, a full table, the refused
/// connections; conntrack's state before and while full, and the drops added.
fn fill_table_in_private_namespace(collector: &DropCollector) -> anyhow::Result<Measured> {
    let outer = inode_of(Path::new("/proc/thread-self/ns/net"));
    // SAFETY: as in the self-test's other namespaces: only this thread's namespace
    // changes, and the thread ends when the caller's scope does.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("creating a network namespace for the conntrack self-test");
    }
    let netns = inode_of(Path::new("/proc/thread-self/ns/net"))
        .context("reading the new namespace's inode")?;
    ensure!(
        outer.is_some_and(|outer| outer != netns),
        "the conntrack self-test's thread is still in the original network namespace"
    );
    super::set_interface_up("lo")?;
    load_ruleset()?;
    let proc_net = Path::new("/proc/thread-self/net");
    let read = || {
        read_conntrack(proc_net)
            .context("conntrack is not loaded in the self-test's namespace (no nf_conntrack_count)")
    };

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("listening on lo")?;
    let address = listener.local_addr().context("the listener's address")?;
    let mut open = Vec::new();
    for i in 0..TABLE_MAX {
        let client = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).with_context(|| {
            format!("connection {i} of {TABLE_MAX} (the table is not full yet)")
        })?;
        let (server, _) = listener
            .accept()
            .with_context(|| format!("accepting connection {i}"))?;
        open.push((client, server));
    }
    let before = read()?;
    let drops_before = collector.drops();
    for _ in 0..REFUSED_CONNECTIONS {
        refused_connection(address);
    }
    let full = read()?;
    let names = collector.names();
    let own = names.namespace(netns);
    let (drops, elsewhere) = added(&drops_before, collector.drops(), &own);
    drop(open);
    Ok(Measured {
        before,
        full,
        drops,
        elsewhere,
    })
}

/// One connection attempt that the full table must refuse; an answer is not an error
/// here (the counts tell), only noted.
fn refused_connection(address: SocketAddr) {
    if TcpStream::connect_timeout(&address, REFUSED_WAIT).is_ok() {
        tracing::warn!("a connection got through although the conntrack table is full");
    }
}

/// `nft -f -` with [`RULESET`] in the calling thread's namespace (the child inherits
/// it); `nft` comes from the guest's initramfs.
fn load_ruleset() -> anyhow::Result<()> {
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (the matrix puts it into x86_64 guests)")?;
    nft.stdin
        .take()
        .expect("stdin is piped")
        .write_all(RULESET.as_bytes())
        .context("writing the ruleset to nft")?;
    let output = nft.wait_with_output().context("waiting for nft")?;
    ensure!(
        output.status.success(),
        "nft refused the ruleset: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Packets added to each series between two readings: TCP ones of namespace `netns`
/// (or already folded into `gone`, as a namespace only a thread holds may be), and
/// the others, described.
fn added(
    before: &BTreeMap<DropLabels, DropCounts>,
    after: BTreeMap<DropLabels, DropCounts>,
    netns: &str,
) -> (BTreeMap<DropLabels, u64>, Vec<String>) {
    let mut own = BTreeMap::new();
    let mut elsewhere = Vec::new();
    for (labels, counts) in after {
        let was = before.get(&labels).map_or(0, |c| c.packets);
        let new = counts.packets.saturating_sub(was);
        if new == 0 {
            continue;
        }
        if (labels.netns == netns || labels.netns == GONE) && labels.protocol == "tcp" {
            own.insert(labels, new);
        } else {
            elsewhere.push(format!(
                "{new} {}@{} in {} ({})",
                labels.reason, labels.location, labels.netns, labels.protocol
            ));
        }
    }
    (own, elsewhere)
}
