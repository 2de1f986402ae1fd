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

/// Now, formatted as sample times are.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

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
        let mut since = now_rfc3339();
        loop {
            tokio::time::sleep(round).await;
            let round_end = now_rfc3339();
            let Ok(after) = tokio::task::spawn_blocking(HostState::read).await else {
                continue;
            };
            let now = own_drops(&collector);
            let delta = super::subtract(&now, &baseline);
            let recent: Vec<_> = samples
                .recent(1000)
                .iter()
                // This round's samples only: an older one would keep deciding where
                // drops were going long after the traffic changed. The times are
                // fixed-width RFC 3339 in UTC, so they compare as text. Socket
                // housekeeping is not evidence of lost traffic.
                .filter(|e| {
                    e.netns == OWN_NAMESPACE && e.time >= since && e.class != DropClass::Local
                })
                .map(|e| (**e).clone())
                .collect();
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
            since = round_end;
        }
    });
    (findings, task)
}
