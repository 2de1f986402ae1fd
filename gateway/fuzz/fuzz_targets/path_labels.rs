//! Push URLs: the grouping-key parser (percent-decoding, base64, label names) and the
//! filter's path normalisation and deny rules.
#![no_main]

use gateway::grouping::GroupingKey;
use gateway::web::filter::PathFilter;
use gateway::web::path::normalise;
use libfuzzer_sys::fuzz_target;

/// Compiled once: the rules are not what is fuzzed.
fn filter() -> &'static PathFilter {
    static FILTER: std::sync::OnceLock<PathFilter> = std::sync::OnceLock::new();
    FILTER.get_or_init(|| PathFilter::new(&[], "/pg").expect("default rules"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = GroupingKey::from_path(path) {
        assert!(!key.job().is_empty(), "a key always has a job");
    }
    let normal = normalise(path);
    assert!(normal.starts_with('/'), "normal forms are absolute");
    assert!(
        !normal.contains("//"),
        "normal forms have no empty segments"
    );
    let _ = filter().is_denied(path);
});
