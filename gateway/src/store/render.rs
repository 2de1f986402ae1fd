//! Scrape assembly: the store's families merged across groups, cached per family, and
//! merged by name with the families of the process's own [`MetricSource`].
//!
//! A scrape is the hot read path, so each family's merged rendering is kept until a
//! write touches that family: a scrape after a push re-renders only the pushed families
//! and the push gauges, and a scrape with no write since the last one only copies
//! cached bytes. The merge of a family follows upstream: the series of every group that
//! has the family, sorted by number of labels then label values, under the HELP of the
//! first group (in grouping-key order) that has one.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};

use bytes::Bytes;

use crate::exposition::{sort_families, Format};
use crate::model::MetricFamily;
use crate::source::MetricSource;

use super::group_labels::GroupLabels;
use super::stored::{compare_keys, StoredFamily};
use super::{FamilyEntry, MetricStore};

/// One family of the store, merged across groups and rendered in one format.
#[derive(Debug, Clone)]
pub struct RenderedFamily {
    /// The family name.
    pub name: Arc<str>,
    /// Its text or delimited protobuf rendering (HELP, TYPE and every series).
    pub bytes: Bytes,
}

impl MetricStore {
    /// Every family of the store with at least one series, merged across groups and
    /// rendered in `format`, sorted by name.
    #[must_use]
    pub fn rendered_families(&self, format: Format) -> Vec<RenderedFamily> {
        let state = self.read();
        state
            .families
            .iter()
            .filter_map(|(name, entry)| {
                let bytes = entry.rendered(name, format);
                (!bytes.is_empty()).then(|| RenderedFamily {
                    name: Arc::clone(name),
                    bytes,
                })
            })
            .collect()
    }
}

impl FamilyEntry {
    fn rendered(&self, name: &str, format: Format) -> Bytes {
        let mut cache = self.rendered.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = match format {
            Format::Text => &mut cache.text,
            Format::DelimitedProtobuf => &mut cache.protobuf,
        };
        if let Some(bytes) = slot {
            return bytes.clone();
        }
        let bytes = match format {
            Format::Text => self.merged_text(),
            Format::DelimitedProtobuf => self.merged_protobuf(name),
        };
        *slot = Some(bytes.clone());
        bytes
    }

    /// Merges the members' pre-rendered metrics: sort the pieces, copy the bytes, each
    /// member's references to its group's labels expanded.
    fn merged_text(&self) -> Bytes {
        let with_metrics = || self.members.values().filter(|m| m.has_metrics());
        let Some(header) = with_metrics()
            .find(|member| member.has_help())
            .or_else(|| with_metrics().next())
            .map(StoredFamily::header)
        else {
            return Bytes::new();
        };
        // The keys are compared expanded: the group labels' values sort among the
        // series' own. Expanded once into one buffer, not at each comparison.
        let mut keys = Vec::new();
        let mut pieces: Vec<(Range<usize>, &GroupLabels, &[u8])> = Vec::new();
        for member in self.members.values() {
            let group = member.group();
            for (key, text) in member.pieces() {
                let start = keys.len();
                group.expand_key(key, &mut keys);
                pieces.push((start..keys.len(), group, text));
            }
        }
        // Stable, so equal keys (impossible after the check) keep grouping-key order.
        pieces.sort_by(|a, b| compare_keys(&keys[a.0.clone()], &keys[b.0.clone()]));
        drop(keys);
        let mut out = Vec::with_capacity(
            header.len() + pieces.iter().map(|(_, _, text)| text.len()).sum::<usize>(),
        );
        out.extend_from_slice(&header);
        for (_, group, text) in pieces {
            group.expand_text(text, &mut out);
        }
        Bytes::from(out)
    }

    /// The protobuf exposition is rare: decode, merge, sort, encode.
    fn merged_protobuf(&self, name: &str) -> Bytes {
        let families: Vec<MetricFamily> = self.members.values().map(StoredFamily::family).collect();
        let help = families
            .iter()
            .filter(|family| !family.metric.is_empty())
            .find_map(|family| family.help.clone());
        let mut merged = MetricFamily {
            name: Some(name.to_owned()),
            help,
            r#type: Some(self.kind as i32),
            metric: families
                .into_iter()
                .flat_map(|family| family.metric)
                .collect(),
            unit: None,
        };
        sort_families(std::slice::from_mut(&mut merged));
        let mut out = Vec::new();
        Format::DelimitedProtobuf.write(std::slice::from_ref(&merged), &mut out);
        Bytes::from(out)
    }
}

/// The whole `/metrics` body: the store's families and `source`'s, sorted by name, as
/// a list of chunks to send one after the other (the store's are shared, not copied).
///
/// Pushes may not use the source's names (they are reserved when the store is made);
/// should the source later return a name that a group has, the source's family is
/// served and the pushed one left out, with one warning in the log.
#[must_use]
pub fn exposition_chunks(
    store: &MetricStore,
    source: &dyn MetricSource,
    format: Format,
) -> Vec<Bytes> {
    static WARNED: AtomicBool = AtomicBool::new(false);

    let pushed = store.rendered_families(format);
    let mut own = source.collect();
    own.retain(|family| !family.metric.is_empty());
    sort_families(&mut own);

    let mut chunks = Vec::with_capacity(pushed.len() + own.len());
    let mut pushed = pushed.into_iter().peekable();
    for family in &own {
        let name = family.name.as_deref().unwrap_or_default();
        while let Some(earlier) = pushed.next_if(|p| &*p.name < name) {
            chunks.push(earlier.bytes);
        }
        if pushed.next_if(|p| &*p.name == name).is_some() && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                family = name,
                "a pushed metric family has the name of one of dropgate's own families; \
                 serving dropgate's and leaving the pushed one out (delete that group)"
            );
        }
        let mut out = Vec::new();
        format.write(std::slice::from_ref(family), &mut out);
        chunks.push(Bytes::from(out));
    }
    chunks.extend(pushed.map(|later| later.bytes));
    chunks
}

/// [`exposition_chunks`] in one buffer.
#[must_use]
pub fn exposition(store: &MetricStore, source: &dyn MetricSource, format: Format) -> Vec<u8> {
    exposition_chunks(store, source, format).concat()
}
