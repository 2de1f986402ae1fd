//! The gateway: a Prometheus Pushgateway-compatible server.
//!
//! It stores pushed metric groups, checks every push against the whole store before
//! accepting it, and serves the pushed groups merged with the families of any
//! [`MetricSource`] (the tracer, in `dropgate run`) on one `/metrics`. It knows nothing
//! about eBPF: the tracer is just another source of [`model::MetricFamily`] values (and
//! of plain-text [`status::StatusSection`]s for the status page).
#![forbid(unsafe_code)]

pub mod api;
pub mod build_info;
pub mod codec;
pub mod config;
pub mod exposition;
pub mod grouping;
pub mod model;
pub mod names;
pub mod native_histogram;
pub mod openmetrics;
pub mod otlp;
pub mod persistence;
pub mod server;
pub mod source;
pub mod status;
pub mod store;
pub mod web;

pub use source::MetricSource;
