//! The dropgate tracer.
