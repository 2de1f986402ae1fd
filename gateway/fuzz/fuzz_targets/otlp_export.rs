//! The OTLP export route's reading: protobuf and OTLP/JSON decoding, the translation
//! into groups, delta accumulation against what was stored, and the store and
//! exposition behind it.
#![no_main]

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use gateway::otlp::names::NameMode;
use gateway::otlp::{delta, translate, Encoding};
use gateway::store::{MetricStore, ReservedNames, Ttl, WriteCommand};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        let Ok(request) = encoding.decode(data) else {
            continue;
        };
        let store = Arc::new(MetricStore::new(ReservedNames::default()));
        // Twice: the second round adds its deltas to what the first stored.
        for _ in 0..2 {
            for (key, mut group) in translate(&request, NameMode::Legacy).groups {
                let stored = store.group_families(&key).unwrap_or_default();
                let _ = delta::accumulate(&mut group, &key, &stored);
                let command = WriteCommand::Post {
                    key,
                    families: group.families,
                    ttl: Ttl::Default,
                };
                let _ = store.apply_or_leave(command, SystemTime::now());
            }
        }
        common::render(&store);
    }
});
