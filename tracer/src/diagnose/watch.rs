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
use crate::{drop_class::DropClass, netns::OWN_NAMESPACE, tracer::Tracer};

/// The latest findings; cheap to read from scrapes and page renders.
#[derive(Default)]
pub struct Findings {
    current: RwLock<Vec<Finding>>,
}

impl Findings {
    /// The findings of the last completed round.
    pub fn current(&self) -> Vec<Finding> {
        self.current.read().expect("findings lock").clone()
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
        loop {
            tokio::time::sleep(round).await;
            let Ok(after) = tokio::task::spawn_blocking(HostState::read).await else {
                continue;
            };
            let now = own_drops(&collector);
            let delta = super::subtract(&now, &baseline);
            let recent: Vec<_> = samples
                .recent(1000)
                .iter()
                .filter(|e| e.netns == OWN_NAMESPACE && e.class != DropClass::Local)
                .map(|e| (**e).clone())
                .collect();
            let found = findings::findings(&Evidence {
                before: Some(&before),
                after: &after,
                drops: Some(&delta),
                samples: &recent,
            });
            for f in &found {
                tracing::warn!(kind = f.kind.label(), "{}", f.summary);
            }
            *shared.current.write().expect("findings lock") = found;
            before = after;
            baseline = now;
        }
    });
    (findings, task)
}
