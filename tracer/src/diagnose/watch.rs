//! The same findings as `dropgate diagnose`, kept up to date while `dropgate run` runs,
//! so that the next sysctl reset shows up in minutes as `dropgate_problem` and on the
//! status page. Each round compares the host and the traced drops with the previous
//! round, exactly like a diagnose window.
//!
//! Reading the host runs `ip`, `iptables-save` and `nft` (a dozen processes): a round
//! does it only when something it reads may have changed — drops traced in dropgate's
//! namespace, a link, address or forwarding event there, a changed nf_tables ruleset, a
//! changed sysctl — and at least every [`FULL_READ_EVERY`] (legacy iptables announces
//! nothing). Otherwise the round judges the last state again, which is what a read
//! would find: an idle host costs no processes.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::{
    findings::{self, Evidence, Finding, TracedDrop},
    host::HostState,
    own_drops,
};
use crate::{
    drop_class::DropClass, netlink_loop::NetlinkLoop, netns::OWN_NAMESPACE, samples::DropEvent,
    tracer::Tracer,
};

/// At most this many samples of dropgate's own namespace are kept per round.
const ROUND_SAMPLES_MAX: usize = 1000;

/// The host is read at least this often, whatever the events say.
const FULL_READ_EVERY: Duration = Duration::from_mins(2);

/// The latest findings; cheap to read from scrapes and page renders.
#[derive(Default)]
pub struct Findings {
    current: RwLock<(Vec<Finding>, Vec<String>)>,
}

impl Findings {
    /// The findings of the last completed round.
    pub fn current(&self) -> Vec<Finding> {
        self.current.read().expect("findings lock").0.clone()
    }

    /// The notes of the last completed round: what was seen that is not a problem.
    pub fn notes(&self) -> Vec<String> {
        self.current.read().expect("findings lock").1.clone()
    }
}

/// Starts the rounds on the tokio runtime; they end when the returned handle is aborted.
pub fn start(tracer: &Tracer, round: Duration) -> (Arc<Findings>, tokio::task::JoinHandle<()>) {
    let findings = Arc::new(Findings::default());
    let collector = Arc::clone(&tracer.collector);
    let samples = Arc::clone(&tracer.samples);
    let shared = Arc::clone(&findings);
    let sampling = tracer.sampling;
    let mut host = HostChanges::new(tracer.namespaces.clone());
    let task = tokio::spawn(async move {
        let mut before = tokio::task::spawn_blocking(HostState::read)
            .await
            .unwrap_or_default();
        let mut read_at = Instant::now();
        host.seen();
        let mut baseline: Vec<TracedDrop> = own_drops(&collector);
        // This round's own samples, gathered as they are published: the hub keeps the
        // newest samples of every namespace for the API (or none, with
        // `--trace.recent-samples 0`), and other namespaces' would push ours out.
        let mut feed = samples.subscribe();
        let mut completeness = SamplesTell::new(&collector, sampling);
        loop {
            let (recent, lagged) = round_samples(&mut feed, round).await;
            // Reading every drop key costs a few system calls each (a thousand keys on a
            // host with a thousand namespaces): skipped when the samples alone show that
            // dropgate's namespace had no drop that counts.
            let (now, delta) = if completeness.none_missed(&collector, lagged) && recent.is_empty()
            {
                (baseline.clone(), Vec::new())
            } else {
                let now = own_drops(&collector);
                let delta = super::subtract(&now, &baseline);
                (now, delta)
            };
            // Asked every round, so that the events are taken in whatever happens.
            let changed = host.seen();
            let after = if changed
                || !delta.is_empty()
                || !recent.is_empty()
                || read_at.elapsed() >= FULL_READ_EVERY
            {
                let Ok(after) = tokio::task::spawn_blocking(HostState::read).await else {
                    continue;
                };
                read_at = Instant::now();
                after
            } else {
                before.clone()
            };
            let evidence = Evidence {
                before: Some(&before),
                after: &after,
                drops: Some(&delta),
                samples: &recent,
            };
            let found = findings::findings(&evidence);
            let notes = findings::notes(&evidence);
            for f in &found {
                tracing::warn!(kind = f.kind.label(), "{}", f.summary);
            }
            *shared.current.write().expect("findings lock") = (found, notes);
            before = after;
            baseline = now;
        }
    });
    (findings, task)
}

/// Whether what the host read sees may have changed since the last look: cheap to ask
/// (a lock, a few sysctl files, a non-blocking read of a netlink socket).
struct HostChanges {
    namespaces: Option<Arc<NetlinkLoop>>,
    own: u32,
    /// The last look's count of the namespace loop's datagrams for dropgate's own
    /// namespace.
    datagrams: Option<u64>,
    /// Joined to nf_tables' change notifications (`nft monitor`'s source, also told of
    /// iptables-nft's changes); `None` where it cannot be (no nf_tables).
    ruleset: Option<Socket>,
    sysctls: Vec<Option<String>>,
}

/// Settings a read sees that no netlink event announces.
const UNANNOUNCED_SYSCTLS: [&str; 4] = [
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
];

/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;

impl HostChanges {
    fn new(namespaces: Option<Arc<NetlinkLoop>>) -> Self {
        let own = crate::netns::inode_of(std::path::Path::new("/proc/self/ns/net")).unwrap_or(0);
        let ruleset = ruleset_events()
            .map_err(|err| {
                tracing::debug!("no nf_tables change events ({err}): the host is read every round");
            })
            .ok();
        Self {
            namespaces,
            own,
            datagrams: None,
            ruleset,
            sysctls: Vec::new(),
        }
    }

    /// Whether anything changed since the last call; true when it cannot be told.
    fn seen(&mut self) -> bool {
        let mut changed = false;
        let datagrams = self
            .namespaces
            .as_ref()
            .and_then(|n| n.datagrams_of(self.own));
        changed |= datagrams.is_none() || datagrams != self.datagrams;
        self.datagrams = datagrams;
        match &self.ruleset {
            Some(socket) => changed |= drain(socket),
            None => changed = true,
        }
        let sysctls: Vec<Option<String>> = UNANNOUNCED_SYSCTLS
            .iter()
            .map(|path| super::host::sysctl(path))
            .collect();
        changed |= sysctls != self.sysctls;
        self.sysctls = sysctls;
        changed
    }
}

/// A non-blocking socket joined to nf_tables' change notifications.
fn ruleset_events() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    socket.add_membership(NFNLGRP_NFTABLES)?;
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// Reads everything waiting on `socket`; whether there was anything (or events were
/// lost: the socket's buffer overflowed).
fn drain(socket: &Socket) -> bool {
    let mut buffer = vec![0; 16 * 1024];
    let mut any = false;
    loop {
        match socket.recv(&mut &mut buffer[..], 0) {
            Ok(_) => any = true,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return any,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            // ENOBUFS: notifications were lost, which means there were some.
            Err(_) => return true,
        }
    }
}

/// Whether the samples a round saw are every drop of dropgate's namespace that counts
/// (not socket housekeeping): the probe samples each drop unless sampling is off, the
/// namespace is not reported, or samples were suppressed (a CPU's window used up), lost
/// (the ring full) or missed by the round (it lagged).
struct SamplesTell {
    possible: bool,
    /// Suppressed and lost samples as of the last round.
    missing: (u64, u64),
}

impl SamplesTell {
    fn new(collector: &crate::collector::DropCollector, sampling: bool) -> Self {
        Self {
            possible: sampling && collector.reports(OWN_NAMESPACE),
            missing: Self::missing(collector),
        }
    }

    fn missing(collector: &crate::collector::DropCollector) -> (u64, u64) {
        use tracer_common::stat;
        (
            collector.stat(stat::SAMPLES_SUPPRESSED),
            collector.stat(stat::SAMPLES_LOST),
        )
    }

    /// True when this round's samples are complete; asks the counters every round.
    fn none_missed(&mut self, collector: &crate::collector::DropCollector, lagged: bool) -> bool {
        let missing = Self::missing(collector);
        let complete = self.possible && !lagged && missing == self.missing;
        self.missing = missing;
        complete
    }
}

/// The samples of dropgate's own namespace published during the next `round`; socket
/// housekeeping is left out, it is not evidence of lost traffic. Also whether some
/// samples went by unseen (the round fell behind the feed).
async fn round_samples(
    feed: &mut tokio::sync::broadcast::Receiver<Arc<DropEvent>>,
    round: Duration,
) -> (Vec<DropEvent>, bool) {
    use tokio::sync::broadcast::error::RecvError;
    let end = tokio::time::Instant::now() + round;
    let mut kept = Vec::new();
    let mut lagged = false;
    loop {
        match tokio::time::timeout_at(end, feed.recv()).await {
            Err(_) => return (kept, lagged),
            Ok(Ok(event)) => {
                if event.netns == OWN_NAMESPACE
                    && event.class != DropClass::Local
                    && kept.len() < ROUND_SAMPLES_MAX
                {
                    kept.push((*event).clone());
                }
            }
            // Missed some while busy: the ones that follow still count.
            Ok(Err(RecvError::Lagged(_))) => lagged = true,
            Ok(Err(RecvError::Closed)) => {
                tokio::time::sleep_until(end).await;
                return (kept, true);
            }
        }
    }
}
