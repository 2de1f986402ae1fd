//! `dropgate diagnose`: one command from "it hangs" to the cause and the fix.
//!
//! It reads the host's configuration ([`host`]), watches the kernel's counters and, when
//! privileged, traces drops over a short window, then turns the evidence into findings
//! ([`findings`]) with a verdict, the evidence and the fix. Without privileges it runs
//! the checks it can and says which it could not.

pub mod datapath;
pub mod findings;
pub mod firewall;
pub mod host;
pub mod probe;
pub mod watch;

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use serde::Serialize;

use self::{
    findings::{Evidence, Finding, TracedDrop},
    host::HostState,
};
use crate::{
    drop_class::{Classifier, DropClass},
    loader::{HookChoice, LoadOptions},
    netns::OWN_NAMESPACE,
    samples::DropEvent,
    tracer::{Tracer, TracerOptions},
};

/// Exit codes of `diagnose`.
pub mod exit {
    /// No problem found and every check ran.
    pub const HEALTHY: u8 = 0;
    /// At least one problem found.
    pub const PROBLEM: u8 = 1;
    /// No problem found, but some checks could not run.
    pub const UNCHECKED: u8 = 2;
}

/// The outcome of one diagnosis.
#[derive(Debug, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// What was seen that is not a problem (the host's own firewall dropping traffic
    /// addressed to it); never changes the exit code.
    pub notes: Vec<String>,
    /// Checks that could not run, with why.
    pub unchecked: BTreeMap<String, String>,
    /// Drops traced in this namespace during the window (empty without a trace).
    pub drops: Vec<TracedDrop>,
    pub window_seconds: f64,
    /// `--probe`: the connection attempts made and what happened to each.
    pub probes: Vec<probe::ProbeResult>,
    pub host: HostState,
}

impl Report {
    /// The exit code this report calls for.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        if !self.findings.is_empty() || self.probes.iter().any(|p| !p.reachable()) {
            exit::PROBLEM
        } else if self.unchecked.is_empty() {
            exit::HEALTHY
        } else {
            exit::UNCHECKED
        }
    }

    /// The report for people.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        if self.findings.is_empty() && self.probes.iter().all(probe::ProbeResult::reachable) {
            let _ = writeln!(out, "no problem found ({:.0}s window)", self.window_seconds);
        }
        for p in &self.probes {
            for line in p.lines() {
                let _ = writeln!(out, "{line}");
            }
        }
        for f in &self.findings {
            let severity = match f.severity {
                findings::Severity::Critical => "PROBLEM",
                findings::Severity::Warning => "WARNING",
            };
            let _ = writeln!(out, "{severity} [{}]: {}", f.kind.label(), f.summary);
            for e in &f.evidence {
                let _ = writeln!(out, "  evidence: {e}");
            }
            for fix in &f.fix {
                let _ = writeln!(out, "  fix: {fix}");
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        for (check, why) in &self.unchecked {
            let _ = writeln!(out, "not checked: {check}: {why}");
        }
        out
    }
}

/// What `diagnose` does.
#[derive(Clone, Debug)]
pub struct DiagnoseOptions {
    pub duration: Duration,
    pub hook: HookChoice,
    pub docker_host: Option<String>,
    /// How drops are classified; `local` ones are not evidence of anything.
    pub classes: Classifier,
    /// `--probe`: connection attempts to make from a namespace entering like outside
    /// traffic (empty: none).
    pub probes: Vec<probe::ProbeSpec>,
}

/// Runs the checks and, when allowed, a live trace over `duration`.
pub async fn run(options: &DiagnoseOptions) -> Report {
    let before = HostState::read();
    let mut unchecked = before.unchecked.clone();
    let tracer = if crate::privileges::can_load_bpf() {
        match Tracer::start(&TracerOptions {
            load: LoadOptions {
                hook: options.hook,
                // The kernel's sample budget is shared by every namespace: on a host
                // where containers drop thousands of packets a second, a small budget
                // would be spent on theirs and leave none for this namespace's drops.
                samples_per_sec: 10_000,
                ..LoadOptions::default()
            },
            // A probe's few packets must still be there when it looks for them.
            recent_samples: if options.probes.is_empty() {
                1000
            } else {
                10_000
            },
            docker_host: options.docker_host.clone(),
            classes: options.classes.clone(),
            // Only this namespace's drops and samples are evidence.
            namespaces: vec![OWN_NAMESPACE.to_owned()],
        }) {
            Ok(tracer) => Some(tracer),
            Err(err) => {
                unchecked.insert("live trace".into(), format!("{err:#}"));
                None
            }
        }
    } else {
        unchecked.insert(
            "live trace".into(),
            "needs root (CAP_BPF and CAP_PERFMON); the verdict rests on configuration and counters only".into(),
        );
        None
    };
    let baseline = tracer.as_ref().map(|t| own_drops(&t.collector));
    let own_samples = tracer.as_ref().map(|t| collect_own_samples(&t.samples));
    let started = std::time::Instant::now();
    // The link is kept until the drops are read: a deleted interface's counts move to
    // `gone`.
    let (probes, probe_link) = if options.probes.is_empty() {
        (Vec::new(), None)
    } else {
        match run_probes(&options.probes, &before, tracer.as_ref()).await {
            Ok((results, link)) => (results, Some(link)),
            Err(err) => {
                unchecked.insert("probe".into(), format!("{err:#}"));
                (Vec::new(), None)
            }
        }
    };
    // The probes ran inside the window; it lasts `duration` in all.
    tokio::time::sleep(options.duration.saturating_sub(started.elapsed())).await;
    let after = HostState::read();
    unchecked.extend(after.unchecked.clone());
    let (drops, samples): (Option<Vec<TracedDrop>>, Vec<DropEvent>) = match (&tracer, baseline) {
        (Some(tracer), Some(baseline)) => {
            let delta = subtract(&own_drops(&tracer.collector), &baseline);
            let samples = own_samples.map(OwnSamples::take).unwrap_or_default();
            (Some(delta), samples)
        }
        _ => (None, Vec::new()),
    };
    // The probe's packets came in on its own veth, standing in for the uplink whose
    // settings it copied: the findings are about the uplink.
    let (drops, samples) = as_if_on_the_uplink(&probes, drops, samples);
    let evidence = Evidence {
        before: Some(&before),
        after: &after,
        drops: drops.as_deref(),
        samples: &samples,
    };
    let findings = findings::findings(&evidence);
    let notes = findings::notes(&evidence);
    if let Some(link) = probe_link {
        link.remove().await;
    }
    if let Some(tracer) = tracer {
        tracer.stop();
    }
    let mut host = after;
    host.unchecked.clone_from(&unchecked);
    Report {
        findings,
        notes,
        unchecked,
        drops: drops.unwrap_or_default(),
        window_seconds: options
            .duration
            .as_secs_f64()
            .max(started.elapsed().as_secs_f64()),
        probes,
        host,
    }
}

/// The probes, with the flow's drops read from the trace's recent samples.
async fn run_probes(
    specs: &[probe::ProbeSpec],
    host: &HostState,
    tracer: Option<&Tracer>,
) -> anyhow::Result<(Vec<probe::ProbeResult>, probe::ProbeLink)> {
    let recent = || {
        tracer
            .map(|t| {
                t.samples
                    .recent(10_000)
                    .iter()
                    .map(|e| (**e).clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    probe::run(specs, host, recent).await
}

/// `drops` and `samples` with each probe's ingress interface named as the uplink it
/// stands in for.
fn as_if_on_the_uplink(
    probes: &[probe::ProbeResult],
    drops: Option<Vec<TracedDrop>>,
    mut samples: Vec<DropEvent>,
) -> (Option<Vec<TracedDrop>>, Vec<DropEvent>) {
    let uplink_of = |interface: &str| {
        probes
            .iter()
            .find(|p| p.ingress == interface)
            .map(|p| p.copied_from.clone())
    };
    for sample in &mut samples {
        if let Some(uplink) = uplink_of(&sample.interface) {
            sample.interface = uplink;
        }
    }
    let drops = drops.map(|drops| {
        let mut merged: Vec<TracedDrop> = Vec::new();
        for mut d in drops {
            if let Some(uplink) = uplink_of(&d.interface) {
                d.interface = uplink;
            }
            match merged.iter_mut().find(|m| {
                (&m.reason, &m.location, &m.interface, &m.protocol)
                    == (&d.reason, &d.location, &d.interface, &d.protocol)
            }) {
                Some(m) => m.packets += d.packets,
                None => merged.push(d),
            }
        }
        merged
    });
    (drops, samples)
}

/// At most this many samples of the diagnosed namespace are kept for the verdict.
const OWN_SAMPLES_MAX: usize = 1000;

/// The diagnosed namespace's samples, gathered as they are published.
///
/// The hub keeps only the newest samples of every namespace: on a busy host (other
/// containers dropping all the time) those would push this namespace's out of it
/// before the window ends, and the verdict could no longer name the destination.
struct OwnSamples {
    kept: std::sync::Arc<std::sync::Mutex<Vec<DropEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl OwnSamples {
    /// What was gathered; stops gathering.
    fn take(self) -> Vec<DropEvent> {
        self.task.abort();
        std::mem::take(&mut *self.kept.lock().expect("own samples lock"))
    }
}

fn collect_own_samples(hub: &crate::samples::SampleHub) -> OwnSamples {
    let mut feed = hub.subscribe();
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = std::sync::Arc::clone(&kept);
    let task = tokio::spawn(async move {
        loop {
            match feed.recv().await {
                Ok(event) => {
                    if event.netns == OWN_NAMESPACE && event.class != DropClass::Local {
                        let mut kept = into.lock().expect("own samples lock");
                        if kept.len() < OWN_SAMPLES_MAX {
                            kept.push((*event).clone());
                        }
                    }
                }
                // Missed some while busy: the ones that follow still count.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    OwnSamples { kept, task }
}

/// Drops in `now` that were not yet in `baseline` (both totals since the probe started).
fn subtract(now: &[TracedDrop], baseline: &[TracedDrop]) -> Vec<TracedDrop> {
    let key = |d: &TracedDrop| {
        (
            d.reason.clone(),
            d.location.clone(),
            d.interface.clone(),
            d.protocol.clone(),
        )
    };
    now.iter()
        .filter_map(|d| {
            let was = baseline
                .iter()
                .find(|b| key(b) == key(d))
                .map_or(0, |b| b.packets);
            let packets = d.packets.saturating_sub(was);
            (packets > 0).then(|| TracedDrop {
                packets,
                ..d.clone()
            })
        })
        .collect()
}

/// Drop totals in dropgate's own namespace, per (reason, location, interface, protocol).
fn own_drops(collector: &crate::collector::DropCollector) -> Vec<TracedDrop> {
    collector
        .drops()
        .into_iter()
        .filter(|(labels, _)| labels.netns == OWN_NAMESPACE)
        // An interface that went away takes its past counts to `gone` all at once: no
        // new drops, and nothing a finding should be about.
        .filter(|(labels, _)| labels.interface != crate::collector::GONE)
        // Socket housekeeping is not evidence of lost traffic.
        .filter(|(labels, _)| labels.class != DropClass::Local)
        .map(|(labels, counts)| TracedDrop {
            reason: labels.reason,
            location: labels.location,
            interface: labels.interface,
            protocol: labels.protocol.to_owned(),
            packets: counts.packets,
        })
        .collect()
}
