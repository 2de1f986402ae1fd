//! Types shared by the kernel programs and the tracer: map keys, values, globals.
#![no_std]
