//! The gateway's web front: what nginx did in front of the pushgateway, done in
//! process. A path filter on a normalised path ([`path`], [`filter`]), basic
//! authentication and TLS from an exporter-toolkit web config ([`config_file`]),
//! request limits and the count of everything refused ([`rejections`]), all applied by
//! one guard in front of every route ([`guard`]) and by the connection loop
//! ([`listener`]).

pub mod config_file;
pub mod filter;
pub mod guard;
pub mod listener;
pub mod path;
pub mod rejections;
