//! The web config parser (`--web.config.file`): YAML, bcrypt hash checks, headers,
//! TLS settings and inline PEM. Any text must give settings or an error, never a
//! panic. Files it names are looked up beside a config in a folder that does not
//! exist, and absolute paths are read at most 4 MiB each.
#![no_main]

use std::path::Path;

use gateway::web::config_file::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data, Path::new("/nonexistent-dropgate-fuzz/web.yml"));
});
