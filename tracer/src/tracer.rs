//! The running tracer: the attached probe, its collector, and the task that reads
//! samples. `dropgate run` serves it through the gateway; `dropgate watch` prints it.

use std::sync::Arc;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};

use gateway::model::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::{
    btf::Btf,
    collector::{DropCollector, View},
    diagnose::watch::Findings,
    drop_class::Classifier,
    enrich::{BridgeSource, Enricher},
    forwarding::ForwardingWatch,
    kallsyms::Kallsyms,
    loader::{self, Hook, LoadOptions, Probe},
    netlink_loop::NetlinkLoop,
    privileges,
    program_stats::ProgramStats,
    samples::{self, SampleHub},
};

/// What `start` needs.
#[derive(Clone, Debug)]
pub struct TracerOptions {
    pub load: LoadOptions,
    /// Samples kept for `/api/v1/drops`.
    pub recent_samples: usize,
    /// Docker Engine API address for naming containers (`unix:///var/run/docker.sock`);
    /// `None`: no Docker enrichment.
    pub docker_host: Option<String>,
    /// How drops are classified and which namespaces are reported.
    pub classes: Classifier,
    /// Report only these namespaces (`--trace.netns`); empty: all.
    pub namespaces: Vec<String>,
}

/// A started tracer. Dropping it detaches the probe and stops the sample reader.
pub struct Tracer {
    pub collector: Arc<DropCollector>,
    pub samples: Arc<SampleHub>,
    pub forwarding: Arc<ForwardingWatch>,
    /// Every namespace's netlink view (`None` when the loop could not start).
    pub namespaces: Option<Arc<NetlinkLoop>>,
    /// Whether the probe sends samples (`--trace.samples-per-sec` above 0).
    pub sampling: bool,
    pub hook: Hook,
    /// The kernel's counters of the attached program (`None` if its descriptor could
    /// not be duplicated).
    program: Option<Arc<ProgramStats>>,
    reader: tokio::task::JoinHandle<()>,
    evictor: tokio::task::JoinHandle<()>,
    // Declared last: dropped after the reader has been aborted.
    probe: Probe,
}

/// The privileged half of starting: the probe loaded and attached, its maps and the
/// symbol table opened. Creates no thread, so that the capabilities it needed can be
/// dropped before any thread exists (see [`crate::privileges`]).
pub struct Attached {
    collector: Arc<DropCollector>,
    program: Option<Arc<ProgramStats>>,
    ring: RingBuf<MapData>,
    probe: Probe,
    recent_samples: usize,
    docker_host: Option<String>,
    sampling: bool,
}

impl Attached {
    /// Gives up every capability not in `keep` (see
    /// [`privileges::runtime_capabilities`]), checking that the maps stay readable.
    pub fn drop_capabilities(&self, keep: &caps::CapsHashSet) -> anyhow::Result<()> {
        let dropped = privileges::drop_capabilities(keep, || self.collector.can_read_maps())
            .context("dropping the capabilities only loading needed")?;
        tracing::info!(
            capabilities = %privileges::describe(&dropped.kept),
            map_reads = ?dropped.map_reads,
            bounding_set = if dropped.bounding_shrunk { "shrunk" } else { "unchanged (no CAP_SETPCAP)" },
            "dropped capabilities no longer needed, on every thread"
        );
        Ok(())
    }

    /// Starts the threads and tasks that name and read what the probe sees (needs a
    /// tokio runtime).
    pub fn start(self) -> Tracer {
        let hub = Arc::new(SampleHub::new(self.recent_samples));
        // One thread for every namespace's netlink socket: forwarding state for the
        // metrics, bridges for the enrichment.
        let namespaces = match NetlinkLoop::start(self.collector.names()) {
            Ok(namespaces) => Some(Arc::new(namespaces)),
            Err(err) => {
                tracing::warn!(
                    "cannot follow namespaces (no forwarding state, no bridge names): {err}"
                );
                None
            }
        };
        let bridges: BridgeSource = match &namespaces {
            Some(namespaces) => {
                let namespaces = Arc::clone(namespaces);
                Arc::new(move |inode| namespaces.bridges_of(inode))
            }
            None => Arc::new(|_| Vec::new()),
        };
        let enricher = Arc::new(Enricher::new(bridges, self.docker_host.as_deref()));
        let namer = self.collector.namer(enricher);
        let ring = self.ring;
        let reader = tokio::spawn({
            let hub = Arc::clone(&hub);
            async move {
                if let Err(err) = samples::read_samples(ring, namer, hub).await {
                    tracing::error!("reading drop samples stopped: {err}");
                }
            }
        });
        let evictor = tokio::spawn(evict_regularly(
            Arc::clone(&self.collector),
            namespaces.clone(),
        ));
        let forwarding = ForwardingWatch::new(namespaces.clone());
        tracing::info!(hook = %self.probe.hook, reasons = self.probe.has_reason, "tracing kernel drops");
        Tracer {
            collector: self.collector,
            samples: hub,
            forwarding,
            namespaces,
            sampling: self.sampling,
            hook: self.probe.hook,
            program: self.program,
            reader,
            evictor,
            probe: self.probe,
        }
    }
}

impl Tracer {
    /// Loads and attaches the probe and opens what needs privileges; starts nothing.
    pub fn attach(options: &TracerOptions) -> anyhow::Result<Attached> {
        let btf = Btf::from_sys_fs()?;
        let mut probe = loader::load(&options.load, &btf)?;
        let kallsyms = Kallsyms::load()?;
        let collector = Arc::new(
            DropCollector::new(
                &mut probe,
                &btf,
                kallsyms,
                View {
                    classes: options.classes.clone(),
                    namespaces: options.namespaces.clone(),
                },
            )
            .context("reading the probe's maps")?,
        );
        let ring = RingBuf::try_from(
            probe
                .ebpf
                .take_map("SAMPLES")
                .context("map SAMPLES missing from the object")?,
        )
        .context("opening the sample ring buffer")?;
        let program = match attached_program(&probe) {
            Ok(fd) => Some(Arc::new(ProgramStats::new(fd))),
            Err(err) => {
                tracing::warn!("dropgate_tracer_recursion_misses_total will be missing: {err:#}");
                None
            }
        };
        Ok(Attached {
            collector,
            program,
            ring,
            probe,
            recent_samples: options.recent_samples,
            docker_host: options.docker_host.clone(),
            sampling: options.load.samples_per_sec > 0,
        })
    }

    /// [`Tracer::attach`] and [`Attached::start`] in one, keeping every capability
    /// (`diagnose`, which runs for seconds and drops nothing).
    pub fn start(options: &TracerOptions) -> anyhow::Result<Self> {
        Ok(Self::attach(options)?.start())
    }

    /// Everything the trace side exports, as one source for the gateway: drop counts,
    /// forwarding state, and `findings` as `dropgate_problem`.
    #[must_use]
    pub fn metrics(&self, findings: Arc<Findings>) -> Arc<TraceMetrics> {
        Arc::new(TraceMetrics {
            collector: Arc::clone(&self.collector),
            program: self.program.clone(),
            forwarding: Arc::clone(&self.forwarding),
            findings,
        })
    }

    /// Stops reading samples, detaches and unloads the probe.
    pub fn stop(self) {
        self.reader.abort();
        self.evictor.abort();
        drop(self.probe);
        tracing::info!("tracer detached");
    }
}

/// Reads the maps whether or not anyone scrapes, so that keys of namespaces and
/// interfaces that are gone leave the kernel's table before churn fills it (a read is
/// what evicts them). A read costs a system call or two per key: with the namespace
/// loop it is made only when the loop saw namespaces come or go or an interface go,
/// while keys wait for their grace, and when no read (a scrape's, a diagnose round's)
/// was made for [`EVICT_SAFETY`] (namespaces no event announces); without the loop,
/// every second. In between the task sleeps.
async fn evict_regularly(collector: Arc<DropCollector>, namespaces: Option<Arc<NetlinkLoop>>) {
    use tokio::time::{sleep_until, Instant};
    let mut last_read: Option<Instant> = None;
    loop {
        if let Some(at) = last_read {
            // At most one read per EVICT_EVERY: a burst of changes is read once.
            sleep_until(at + EVICT_EVERY).await;
            if let Some(namespaces) = namespaces.as_ref() {
                while !collector.eviction_pending() {
                    let read = collector.last_read().map_or(at, Instant::from_std);
                    tokio::select! {
                        () = namespaces.changed() => break,
                        () = sleep_until(read.max(at) + EVICT_SAFETY) => {
                            // Another read may have come meanwhile: wait from that one.
                            let read = collector.last_read().map_or(at, Instant::from_std);
                            if read.max(at).elapsed() >= EVICT_SAFETY {
                                break;
                            }
                        }
                    }
                }
            }
        }
        last_read = Some(Instant::now());
        let collector = Arc::clone(&collector);
        // Blocking: map reads, and (namespaces the loop does not know) threads that
        // enter namespaces to ask them.
        if tokio::task::spawn_blocking(move || collector.evict())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The least time between two reads.
const EVICT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// A read at least this often, whatever the events say.
const EVICT_SAFETY: std::time::Duration = std::time::Duration::from_mins(1);

/// A descriptor of the program that is attached (the other one of the object is never
/// loaded), for the kernel's counters of it.
fn attached_program(probe: &Probe) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd as _;
    let name = match probe.hook {
        Hook::TpBtf => "kfree_skb_btf",
        Hook::Tracepoint => "kfree_skb_tp",
    };
    let program = probe
        .ebpf
        .program(name)
        .with_context(|| format!("program {name} missing from the object"))?;
    Ok(program
        .fd()
        .with_context(|| format!("program {name} has no descriptor"))?
        .as_fd()
        .try_clone_to_owned()?)
}

/// `dropgate_ipv6_forwarding`: `net.ipv6.conf.all.forwarding` as `interface="all"` and
/// each interface's `forwarding`, per namespace.
fn ipv6_forwarding_family(
    snapshot: &[(String, crate::forwarding::NamespaceForwarding)],
) -> MetricFamily {
    let mut metric = Vec::new();
    for (netns, ns) in snapshot {
        let gauge = |interface: &str, on: bool| Metric {
            label: vec![
                LabelPair::new("interface", interface),
                LabelPair::new("netns", netns),
            ],
            gauge: Some(Gauge {
                value: Some(if on { 1.0 } else { 0.0 }),
            }),
            ..Metric::default()
        };
        metric.extend(ns.ipv6_all.map(|all| gauge("all", all)));
        metric.extend(
            ns.ipv6_interfaces
                .values()
                .map(|(name, on)| gauge(name, *on)),
        );
    }
    MetricFamily {
        name: Some("dropgate_ipv6_forwarding".into()),
        help: Some(
            "IPv6 forwarding per namespace and interface (1 on, 0 off); interface=\"all\" is net.ipv6.conf.all.forwarding, the switch that decides whether IPv6 is forwarded."
                .into(),
        ),
        r#type: Some(MetricType::Gauge as i32),
        metric,
        unit: None,
    }
}

/// The trace side's metric families (drop counts, forwarding state, problems) and its
/// sections of the status page.
pub struct TraceMetrics {
    collector: Arc<DropCollector>,
    program: Option<Arc<ProgramStats>>,
    forwarding: Arc<ForwardingWatch>,
    findings: Arc<Findings>,
}

impl gateway::MetricSource for TraceMetrics {
    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.collector.collect();
        if let Some(program) = &self.program {
            match program.recursion_misses() {
                Ok(missed) => families.push(MetricFamily {
                    name: Some("dropgate_tracer_recursion_misses_total".into()),
                    help: Some(
                        "Drop events the kernel did not trace because the program was already running on that CPU (bpf_prog_info.recursion_misses); counted nowhere else."
                            .into(),
                    ),
                    r#type: Some(MetricType::Counter as i32),
                    metric: vec![Metric {
                        counter: Some(Counter {
                            value: Some(missed as f64),
                            ..Counter::default()
                        }),
                        ..Metric::default()
                    }],
                    unit: None,
                }),
                Err(err) => tracing::warn!("reading the program's recursion misses: {err}"),
            }
        }
        let mut state = Vec::new();
        let mut changes = Vec::new();
        for (netns, ns) in self.forwarding.snapshot() {
            let gauge = |interface: &str, on: bool| Metric {
                label: vec![
                    LabelPair::new("interface", interface),
                    LabelPair::new("netns", &netns),
                ],
                gauge: Some(Gauge {
                    value: Some(if on { 1.0 } else { 0.0 }),
                }),
                ..Metric::default()
            };
            if let Some(all) = ns.all {
                state.push(gauge("all", all));
            }
            for (name, on) in ns.interfaces.values() {
                state.push(gauge(name, *on));
            }
            for (family, count) in [("ipv4", ns.changes), ("ipv6", ns.ipv6_changes)] {
                changes.push(Metric {
                    label: vec![
                        LabelPair::new("family", family),
                        LabelPair::new("netns", &netns),
                    ],
                    counter: Some(Counter {
                        value: Some(count as f64),
                        ..Counter::default()
                    }),
                    ..Metric::default()
                });
            }
        }
        families.push(MetricFamily {
            name: Some("dropgate_ipv4_forwarding".into()),
            help: Some(
                "IPv4 forwarding per namespace and interface (1 on, 0 off); interface=\"all\" is net.ipv4.ip_forward."
                    .into(),
            ),
            r#type: Some(MetricType::Gauge as i32),
            metric: state,
            unit: None,
        });
        families.push(ipv6_forwarding_family(&self.forwarding.snapshot()));
        let problems = self
            .findings
            .current()
            .iter()
            .map(|f| Metric {
                label: vec![
                    LabelPair::new("interface", f.interface.as_deref().unwrap_or("")),
                    LabelPair::new("kind", f.kind.label()),
                    LabelPair::new("severity", f.severity.label()),
                ],
                gauge: Some(Gauge { value: Some(1.0) }),
                ..Metric::default()
            })
            .collect();
        families.push(MetricFamily {
            name: Some("dropgate_problem".into()),
            help: Some("A problem dropgate found (1 while it holds); the status page and `dropgate diagnose` say why and how to fix it.".into()),
            r#type: Some(MetricType::Gauge as i32),
            metric: problems,
            unit: None,
        });
        families.push(MetricFamily {
            name: Some("dropgate_forwarding_changes_total".into()),
            help: Some(
                "Changes of net.ipv4.ip_forward (family=\"ipv4\") and net.ipv6.conf.all.forwarding (family=\"ipv6\") seen while dropgate ran, per namespace.".into(),
            ),
            r#type: Some(MetricType::Counter as i32),
            metric: changes,
            unit: None,
        });
        families
    }

    fn status_sections(&self) -> Vec<gateway::status::StatusSection> {
        crate::status::sections(
            &self.findings.current(),
            &self.findings.notes(),
            &self.collector.drops(),
            &self.forwarding.snapshot(),
        )
    }
}
