//! OpenTelemetry (OTLP/HTTP) metric exports, turned into pushed groups.
//!
//! A batch job instrumented with an OpenTelemetry SDK cannot be scraped (it ends) and
//! does not speak the Pushgateway's format; this module lets it export to dropgate as it
//! would to a Collector. [`wire`] reads and answers the two encodings of OTLP/HTTP
//! (protobuf and JSON), [`names`] turns OTLP names and units into Prometheus names the
//! way Prometheus's own OTLP ingestion does, [`translate`] turns one export into one
//! group per (job, instance) resource, and [`delta`] adds delta points to what the
//! group holds so that Prometheus sees cumulative series. The HTTP route lives in
//! [`crate::api`]; the store sees ordinary `PUT`s.

pub mod budget;
pub mod delta;
pub mod names;
pub mod translate;
pub mod wire;

pub use translate::{translate, OtlpGroup, Translation};
pub use wire::{Encoding, WireError};
