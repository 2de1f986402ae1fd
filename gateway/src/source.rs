//! The seam between the gateway and whatever else produces metrics in the process.

use crate::model::MetricFamily;
use crate::status::StatusSection;

/// A producer of metric families that the gateway merges into every scrape.
///
/// `collect` is called once per scrape, possibly from several scrapes at once, so it
/// must be cheap and must not block on I/O for long. Family names returned here are
/// reserved: a push that defines one of them is rejected, so a scrape can never see two
/// definitions of the same family.
pub trait MetricSource: Send + Sync + 'static {
    /// The families as of now, each with its samples; order does not matter.
    fn collect(&self) -> Vec<MetricFamily>;

    /// Sections this source adds to the status page (`<route-prefix>/`), above the
    /// pushed groups, in this order. Called once per page view, so the same rules as
    /// for `collect` apply. The page escapes everything in them. None by default.
    fn status_sections(&self) -> Vec<StatusSection> {
        Vec::new()
    }
}

/// A source with no families, for `dropgate gateway` (no tracer in the process).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSource;

impl MetricSource for NoSource {
    fn collect(&self) -> Vec<MetricFamily> {
        Vec::new()
    }
}
