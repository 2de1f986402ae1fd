//! The text format parser, and the store and exposition behind it.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(families) = gateway::codec::text::parse(data) {
        common::push_and_render(families);
    }
});
