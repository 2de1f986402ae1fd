//! What build of dropgate is running: shown in `/api/v1/status`'s `build_information`
//! (under the pushgateway's keys, so its UI and scripts find them) and as the
//! `dropgate_build_info` gauge, the way Prometheus components expose theirs.
//!
//! The gateway does not read git or the clock itself: the binary embeds the values at
//! build time (tracer/build.rs) and hands them over in [`crate::config::GatewayConfig`].

use crate::model::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

/// Name of the gauge.
pub const BUILD_INFO: &str = "dropgate_build_info";

/// The build's identity; every field is empty when unknown (e.g. built outside git).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    /// The crate version, e.g. `0.1.0`.
    pub version: &'static str,
    /// The git commit built from (full hash).
    pub revision: &'static str,
    /// The git branch built from.
    pub branch: &'static str,
    /// `user@host` that built it.
    pub build_user: &'static str,
    /// When, in the pushgateway's format (`20260105-14:03:59`, UTC).
    pub build_date: &'static str,
    /// The rustc version, e.g. `1.95.0` (the pushgateway's `goVersion`).
    pub rust_version: &'static str,
}

impl Default for BuildInfo {
    /// Only the version, which the gateway knows itself (tests, library use).
    fn default() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            revision: "",
            branch: "",
            build_user: "",
            build_date: "",
            rust_version: "",
        }
    }
}

impl BuildInfo {
    /// `build_information` of `/api/v1/status`: the pushgateway's keys, our values.
    #[must_use]
    pub fn status_fields(&self) -> [(&'static str, &'static str); 6] {
        [
            ("branch", self.branch),
            ("buildDate", self.build_date),
            ("buildUser", self.build_user),
            ("goVersion", self.rust_version),
            ("revision", self.revision),
            ("version", self.version),
        ]
    }

    /// `dropgate_build_info{version,revision,branch,rustversion} 1`.
    #[must_use]
    pub fn family(&self) -> MetricFamily {
        MetricFamily {
            name: Some(BUILD_INFO.to_owned()),
            help: Some(
                "A metric with a constant '1' value labeled by the version, git revision \
                 and branch, and rustc version dropgate was built from."
                    .to_owned(),
            ),
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![Metric {
                label: vec![
                    LabelPair::new("branch", self.branch),
                    LabelPair::new("revision", self.revision),
                    LabelPair::new("rustversion", self.rust_version),
                    LabelPair::new("version", self.version),
                ],
                gauge: Some(Gauge { value: Some(1.0) }),
                ..Metric::default()
            }],
            unit: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_use_the_pushgateways_keys_and_carry_every_value() {
        let info = BuildInfo {
            version: "1.2.3",
            revision: "abc",
            branch: "main",
            build_user: "me@host",
            build_date: "20260101-00:00:00",
            rust_version: "1.95.0",
        };
        let fields: Vec<_> = info.status_fields().to_vec();
        assert_eq!(
            fields,
            [
                ("branch", "main"),
                ("buildDate", "20260101-00:00:00"),
                ("buildUser", "me@host"),
                ("goVersion", "1.95.0"),
                ("revision", "abc"),
                ("version", "1.2.3"),
            ]
        );
        let family = info.family();
        let labels: Vec<_> = family.metric[0]
            .label
            .iter()
            .map(|l| (l.name.as_deref().unwrap(), l.value.as_deref().unwrap()))
            .collect();
        assert_eq!(
            labels,
            [
                ("branch", "main"),
                ("revision", "abc"),
                ("rustversion", "1.95.0"),
                ("version", "1.2.3")
            ]
        );
        assert_eq!(
            family.metric[0].gauge.as_ref().and_then(|g| g.value),
            Some(1.0)
        );
    }
}
