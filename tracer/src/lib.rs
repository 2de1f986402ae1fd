//! dropgate's tracer: everything between the kernel and the gateway.
//!
//! - [`btf`] reads the running kernel's types (offsets, drop-reason names);
//! - [`loader`] loads and attaches the `kfree_skb` programs with those offsets;
//! - [`kallsyms`] and [`netns`] turn kernel numbers into names;
//! - [`collector`] turns the in-kernel counts into metric families for the gateway.

pub mod api;
pub mod btf;
pub mod build_info;
pub mod cli;
pub mod collector;
pub mod diagnose;
pub mod drop_class;
pub mod enrich;
pub mod eviction;
pub mod forwarding;
pub mod http_client;
pub mod import;
pub mod kallsyms;
pub mod loader;
pub mod netlink;
pub mod netlink_loop;
pub mod netns;
pub mod privileges;
pub mod program_stats;
pub mod samples;
pub mod selftest;
pub mod status;
pub mod tracer;
