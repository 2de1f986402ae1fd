//! The running tracer: the attached probe, its collector, and the task that reads
//! samples. `dropgate run` serves it through the gateway; `dropgate watch` prints it.

use std::sync::Arc;

use anyhow::Context as _;
use aya::maps::RingBuf;

use gateway::model::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::{
    btf::Btf,
    collector::{DropCollector, View},
    diagnose::watch::Findings,
    drop_class::Classifier,
    enrich::Enricher,
    forwarding::ForwardingWatch,
    kallsyms::Kallsyms,
    loader::{self, Hook, LoadOptions, Probe},
    privileges,
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
    pub hook: Hook,
    reader: tokio::task::JoinHandle<()>,
    // Declared last: dropped after the reader has been aborted.
    probe: Probe,
}

impl Tracer {
    /// Loads and attaches the probe and starts reading samples (needs a tokio runtime).
    pub fn start(options: &TracerOptions) -> anyhow::Result<Self> {
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
        let hub = Arc::new(SampleHub::new(options.recent_samples));
        let enricher = Arc::new(Enricher::new(
            collector.names(),
            options.docker_host.as_deref(),
        ));
        let namer = collector.namer(enricher);
        let reader = tokio::spawn({
            let hub = Arc::clone(&hub);
            async move {
                if let Err(err) = samples::read_samples(ring, namer, hub).await {
                    tracing::error!("reading drop samples stopped: {err}");
                }
            }
        });
        let forwarding = ForwardingWatch::start(collector.names());
        tracing::info!(hook = %probe.hook, reasons = probe.has_reason, "tracing kernel drops");
        Ok(Self {
            collector,
            samples: hub,
            forwarding,
            hook: probe.hook,
            reader,
            probe,
        })
    }

    /// Everything the trace side exports, as one source for the gateway: drop counts,
    /// forwarding state, and `findings` as `dropgate_problem`.
    #[must_use]
    pub fn metrics(&self, findings: Arc<Findings>) -> Arc<TraceMetrics> {
        Arc::new(TraceMetrics {
            collector: Arc::clone(&self.collector),
            forwarding: Arc::clone(&self.forwarding),
            findings,
        })
    }

    /// Gives up the capabilities that only loading and attaching needed (see
    /// [`privileges::runtime_capabilities`]). Call after the gateway's socket is bound.
    pub fn drop_capabilities(&self, listen_port: u16) {
        let collector = Arc::clone(&self.collector);
        match privileges::drop_capabilities(
            privileges::runtime_capabilities(listen_port),
            move || collector.can_read_maps(),
        ) {
            Ok(set) => {
                tracing::info!(capabilities = %privileges::describe(set), "dropped capabilities no longer needed");
            }
            Err(err) => tracing::warn!("could not drop capabilities: {err}"),
        }
    }

    /// Stops reading samples, detaches and unloads the probe.
    pub fn stop(self) {
        self.reader.abort();
        drop(self.probe);
        tracing::info!("tracer detached");
    }
}

/// The trace side's metric families (drop counts, forwarding state, problems) and its
/// sections of the status page.
pub struct TraceMetrics {
    collector: Arc<DropCollector>,
    forwarding: Arc<ForwardingWatch>,
    findings: Arc<Findings>,
}

impl gateway::MetricSource for TraceMetrics {
    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.collector.collect();
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
            changes.push(Metric {
                label: vec![LabelPair::new("netns", &netns)],
                counter: Some(Counter {
                    value: Some(ns.changes as f64),
                    ..Counter::default()
                }),
                ..Metric::default()
            });
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
                "Changes of net.ipv4.ip_forward seen while dropgate ran, per namespace.".into(),
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
            &self.collector.drops(),
            &self.forwarding.snapshot(),
        )
    }
}
