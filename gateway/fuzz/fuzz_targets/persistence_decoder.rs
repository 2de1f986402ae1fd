//! The persistence file decoder, and restoring what it decodes: a file that passes
//! the checksum but holds anything at all must be refused or restored, never a panic.
//! The input is the file's content between the version and the checksum; the target
//! adds the magic, version and a correct CRC, so the fuzzer reaches the records.
#![no_main]

mod common;

use std::sync::Arc;

use gateway::persistence::{decode, encode, FORMAT_VERSION};
use gateway::store::{MetricStore, ReservedNames};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = b"DGSTORE\0".to_vec();
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(data);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    let Ok(groups) = decode(&file) else {
        return;
    };
    let store = Arc::new(MetricStore::new(ReservedNames::default()));
    let _ = store.restore(groups);
    // What was restored saves and reads back.
    let saved = encode(&store.snapshot());
    let again = decode(&saved).expect("a saved store decodes");
    assert_eq!(again.len(), store.group_count(), "every group is saved");
    common::render(&store);
});
