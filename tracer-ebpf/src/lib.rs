//! Empty on purpose: the kernel programs are the `tracer` binary target of this crate.
#![no_std]
