//! The same findings as `dropgate diagnose`, kept up to date while `dropgate run` runs,
//! so that the next sysctl reset shows up in minutes as `dropgate_problem` and on the
//! status page. Each round compares the host and the traced drops with the previous
//! round, exactly like a diagnose window.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use super::{
    findings::{self, Evidence, Finding, TracedDrop},
    host::HostState,
    own_drops,
};
use crate::{drop_class::DropClass, netns::OWN_NAMESPACE, samples::DropEvent, tracer::Tracer};

/// At most this many samples of dropgate's own namespace are kept per round.
const ROUND_SAMPLES_MAX: usize = 1000;

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
    let task = tokio::spawn(async move {
        let mut before = tokio::task::spawn_blocking(HostState::read)
            .await
            .unwrap_or_default();
        let mut baseline: Vec<TracedDrop> = own_drops(&collector);
        // This round's own samples, gathered as they are published: the hub keeps the
        // newest samples of every namespace for the API (or none, with
        // `--trace.recent-samples 0`), and other namespaces' would push ours out.
        let mut feed = samples.subscribe();
        loop {
            let recent = round_samples(&mut feed, round).await;
            let Ok(after) = tokio::task::spawn_blocking(HostState::read).await else {
                continue;
            };
            let now = own_drops(&collector);
            let delta = super::subtract(&now, &baseline);
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

/// The samples of dropgate's own namespace published during the next `round`; socket
/// housekeeping is left out, it is not evidence of lost traffic.
async fn round_samples(
    feed: &mut tokio::sync::broadcast::Receiver<Arc<DropEvent>>,
    round: Duration,
) -> Vec<DropEvent> {
    use tokio::sync::broadcast::error::RecvError;
    let end = tokio::time::Instant::now() + round;
    let mut kept = Vec::new();
    loop {
        match tokio::time::timeout_at(end, feed.recv()).await {
            Err(_) => return kept,
            Ok(Ok(event)) => {
                if event.netns == OWN_NAMESPACE
                    && event.class != DropClass::Local
                    && kept.len() < ROUND_SAMPLES_MAX
                {
                    kept.push((*event).clone());
                }
            }
            // Missed some while busy: the ones that follow still count.
            Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) => {
                tokio::time::sleep_until(end).await;
                return kept;
            }
        }
    }
}
