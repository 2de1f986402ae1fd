//! `dropgate_gateway_rejected_total{reason}`: every request the gateway refused, by
//! reason, exposed on the gateway's own `/metrics`.
//!
//! Handlers do not count: an error response carries its [`Reason`] as a response
//! extension (see [`crate::api::ApiError`]) and the guard in front of every route
//! counts what passes through it, so a rejection is counted once, wherever it was
//! decided. Every reason is exposed from the start (at 0), so the family always
//! exists and its name is reserved against pushes like the tracer's families.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::build_info::BuildInfo;
use crate::model::{Counter, LabelPair, Metric, MetricFamily, MetricType};
use crate::persistence::SaveFailures;
use crate::source::MetricSource;
use crate::status::StatusSection;
use crate::store::GroupsExpired;

/// Name of the family.
pub const REJECTED_TOTAL: &str = "dropgate_gateway_rejected_total";

/// Why a request was refused; the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The path matched a deny rule (404).
    DeniedPath,
    /// A write from a network outside `--web.allow-push-from` (403).
    PushNotAllowed,
    /// Missing or wrong basic-auth credentials (401).
    Unauthorized,
    /// Too many basic-auth password checks queued (429) or waited for too long (503).
    AuthBusy,
    /// The body exceeded `--web.max-body-bytes` (413).
    BodyTooLarge,
    /// A series had more labels than `--push.max-labels-per-series` (400).
    TooManyLabels,
    /// A push had more series than `--push.max-series-per-push` (400).
    TooManySeries,
    /// A label name, label value or grouping key over its `--push.max-*-bytes` (400).
    LabelTooLong,
    /// A series with more buckets or quantiles than `--push.max-buckets-per-series` (400).
    TooManyBuckets,
    /// A push whose exposition would exceed `--push.max-render-factor` times its size (400).
    TooCostly,
    /// The push did not parse: URL, encoding, text or protobuf (400).
    InvalidPush,
    /// The push failed the consistency check (400).
    InconsistentPush,
    /// The request head did not arrive within `--web.header-read-timeout` (408).
    HeaderTimeout,
    /// The request was not handled within `--web.request-timeout` (408).
    RequestTimeout,
    /// More connections than `--web.max-connections` (429).
    TooManyConnections,
}

impl Reason {
    /// Every reason, in the order they are exposed.
    pub const ALL: [Self; 15] = [
        Self::AuthBusy,
        Self::BodyTooLarge,
        Self::DeniedPath,
        Self::HeaderTimeout,
        Self::InconsistentPush,
        Self::InvalidPush,
        Self::LabelTooLong,
        Self::PushNotAllowed,
        Self::RequestTimeout,
        Self::TooCostly,
        Self::TooManyBuckets,
        Self::TooManyConnections,
        Self::TooManyLabels,
        Self::TooManySeries,
        Self::Unauthorized,
    ];

    /// The `reason` label value.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::DeniedPath => "denied_path",
            Self::PushNotAllowed => "push_not_allowed",
            Self::Unauthorized => "unauthorized",
            Self::AuthBusy => "auth_busy",
            Self::BodyTooLarge => "body_too_large",
            Self::TooManyLabels => "too_many_labels",
            Self::TooManySeries => "too_many_series",
            Self::LabelTooLong => "label_too_long",
            Self::TooManyBuckets => "too_many_buckets",
            Self::TooCostly => "too_costly",
            Self::InvalidPush => "invalid_push",
            Self::InconsistentPush => "inconsistent_push",
            Self::HeaderTimeout => "header_timeout",
            Self::RequestTimeout => "request_timeout",
            Self::TooManyConnections => "too_many_connections",
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|reason| *reason == self)
            .unwrap_or_default()
    }
}

/// The counters; shared as `Arc<Rejections>` by the guard and the listener.
#[derive(Debug, Default)]
pub struct Rejections {
    counts: [AtomicU64; Reason::ALL.len()],
}

impl Rejections {
    /// Counts one rejection.
    pub fn count(&self, reason: Reason) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for `reason`.
    #[must_use]
    pub fn get(&self, reason: Reason) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    /// The family as exposed on `/metrics`.
    #[must_use]
    pub fn family(&self) -> MetricFamily {
        MetricFamily {
            name: Some(REJECTED_TOTAL.to_owned()),
            help: Some(
                "Requests the gateway refused, by reason: path filter, network, \
                 authentication, limits, invalid or inconsistent pushes."
                    .to_owned(),
            ),
            r#type: Some(MetricType::Counter as i32),
            metric: Reason::ALL
                .iter()
                .map(|reason| Metric {
                    label: vec![LabelPair::new("reason", reason.label())],
                    counter: Some(Counter {
                        value: Some(self.get(*reason) as f64),
                        ..Counter::default()
                    }),
                    ..Metric::default()
                })
                .collect(),
            unit: None,
        }
    }
}

/// A [`MetricSource`] that adds the gateway's own families to another source's.
pub struct WithGatewayMetrics {
    rejections: Arc<Rejections>,
    save_failures: Arc<SaveFailures>,
    groups_expired: Arc<GroupsExpired>,
    build_info: MetricFamily,
    inner: Arc<dyn MetricSource>,
}

impl WithGatewayMetrics {
    /// `inner`'s families plus the rejection and save-failure counters and
    /// `dropgate_build_info`.
    pub fn new(
        rejections: Arc<Rejections>,
        build_info: &BuildInfo,
        inner: Arc<dyn MetricSource>,
    ) -> Self {
        Self {
            rejections,
            save_failures: Arc::default(),
            groups_expired: Arc::default(),
            build_info: build_info.family(),
            inner,
        }
    }

    /// The save-failure counter these metrics expose, for the persister to count in.
    #[must_use]
    pub fn save_failures(&self) -> Arc<SaveFailures> {
        Arc::clone(&self.save_failures)
    }

    /// The expired-groups counter these metrics expose, for the store to count in.
    #[must_use]
    pub fn groups_expired(&self) -> Arc<GroupsExpired> {
        Arc::clone(&self.groups_expired)
    }
}

impl MetricSource for WithGatewayMetrics {
    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.inner.collect();
        families.push(self.save_failures.family());
        families.push(self.groups_expired.family());
        families.push(self.rejections.family());
        families.push(self.build_info.clone());
        families
    }

    // The wrapper adds metrics only; the page sections are the inner source's.
    fn status_sections(&self) -> Vec<StatusSection> {
        self.inner.status_sections()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_exposed_and_counted() {
        let rejections = Rejections::default();
        rejections.count(Reason::DeniedPath);
        rejections.count(Reason::DeniedPath);
        rejections.count(Reason::TooManySeries);
        let family = rejections.family();
        assert_eq!(family.metric.len(), Reason::ALL.len());
        let value = |label: &str| {
            family
                .metric
                .iter()
                .find(|m| m.label[0].value.as_deref() == Some(label))
                .and_then(|m| m.counter.as_ref()?.value)
                .expect("every reason has a sample")
        };
        assert!((value("denied_path") - 2.0).abs() < f64::EPSILON);
        assert!((value("too_many_series") - 1.0).abs() < f64::EPSILON);
        assert!(value("unauthorized").abs() < f64::EPSILON);
        let labels: Vec<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        let mut sorted = labels.clone();
        sorted.sort_unstable();
        assert_eq!(labels, sorted, "ALL is in label order, as exposed");
    }
}
