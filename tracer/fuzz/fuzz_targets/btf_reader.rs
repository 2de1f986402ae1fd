//! The BTF reader (tracer/src/btf.rs) on arbitrary bytes: parsing, then every query the
//! tracer makes, must return an answer or an error, never panic or run away. Kept ours
//! rather than aya-obj's, whose 0.3 API has no member or enum access (README, "Building
//! by hand").
#![no_main]

#[path = "../../src/btf.rs"]
#[allow(dead_code)]
mod btf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(btf) = btf::Btf::parse(data.to_vec()) else {
        return;
    };
    // Short names, so that the fuzzer (and the seeds) can spell them in the strings.
    for name in ["s", "u", "e"] {
        let _ = btf.struct_id(name);
        let _ = btf.func_id(name);
        let _ = btf.member_offset(name, "a");
        let _ = btf.member_offset(name, "a.b");
        let _ = btf.enum_values(name);
        let _ = btf.typedef_fn_params(name);
    }
});
