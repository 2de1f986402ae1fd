// Shared by the targets: what happens to families that parsed, as in a push.
use std::sync::Arc;
use std::time::SystemTime;

use gateway::exposition::Format;
use gateway::grouping::GroupingKey;
use gateway::model::MetricFamily;
use gateway::source::NoSource;
use gateway::store::{exposition, MetricStore, ReservedNames, Ttl, WriteCommand};

/// Stores `families` as a push would (the check may refuse them), then renders the
/// store in both formats: whatever parses must never panic further on.
#[allow(dead_code)] // The persistence and OTLP targets store in their own ways.
pub fn push_and_render(families: Vec<MetricFamily>) {
    let store = Arc::new(MetricStore::new(ReservedNames::default()));
    let key = GroupingKey::from_path("job/fuzz/instance/i").expect("a valid key");
    let command = WriteCommand::Put {
        key,
        families,
        ttl: Ttl::Default,
    };
    let _ = store.apply(command, SystemTime::now());
    render(&store);
}

/// Renders the store in both formats; whatever it holds must render.
pub fn render(store: &MetricStore) {
    for format in [Format::Text, Format::DelimitedProtobuf] {
        let _ = exposition(store, &NoSource, format);
    }
}
