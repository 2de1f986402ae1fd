//! `Content-Encoding` decoding (gzip, snappy) with its size bound; the first byte
//! picks the encoding.
#![no_main]

use gateway::codec::body::decode;
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let encoding = ["gzip", "snappy", "identity"][usize::from(pick) % 3];
    if let Ok(decoded) = decode(Some(encoding), bytes::Bytes::copy_from_slice(body), LIMIT) {
        assert!(decoded.len() <= LIMIT, "the bound holds");
    }
});
