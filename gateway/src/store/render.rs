//! Scrape assembly: the store's families merged across groups, cached per family, and
//! merged by name with the families of the process's own [`MetricSource`].
//!
//! A scrape is the hot read path, so each family's merged rendering is kept until a
//! write touches that family: a scrape after a push re-renders only the pushed families
//! and the push gauges, and a scrape with no write since the last one only copies
//! cached bytes. The merge of a family follows upstream: the series of every group that
//! has the family, sorted by number of labels then label values, under the HELP of the
//! first group (in grouping-key order) that has one.
//!
//! Names are escaped as the scrape negotiated (`escaping=`, see [`crate::names`]) only
//! in families that have a non-legacy name: every scheme leaves legacy names alone, so
//! the other families keep one rendering per format whatever the scrape asked, and
//! cost nothing more. A family with UTF-8 names is rendered per format and escaping.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};

use bytes::Bytes;

use crate::exposition::{sort_families, Escaping, Format};
use crate::grouping::GroupingKey;
use crate::model::{MetricFamily, MetricType};
use crate::names::escape_family;
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
    /// Its type (the store admits one per name).
    pub kind: MetricType,
}

impl MetricStore {
    /// Every family of the store with at least one series, merged across groups and
    /// rendered in `format` with names escaped by `escaping`, sorted by (unescaped)
    /// name.
    #[must_use]
    pub fn rendered_families(&self, format: Format, escaping: Escaping) -> Vec<RenderedFamily> {
        let state = self.read();
        state
            .families
            .iter()
            .filter_map(|(name, entry)| {
                let bytes = entry.rendered(name, format, escaping);
                (!bytes.is_empty()).then(|| RenderedFamily {
                    name: Arc::clone(name),
                    bytes,
                    kind: entry.kind,
                })
            })
            .collect()
    }
}

/// A family's merged renderings, kept until a write changes the family.
#[derive(Debug, Default)]
pub(super) struct RenderCache {
    text: Option<CachedText>,
    protobuf: Option<Bytes>,
    /// OpenMetrics text, the same for both versions (only the `Content-Type` differs).
    openmetrics: Option<Bytes>,
    /// Families with UTF-8 names: each format and escaping asked for so far.
    escaped: Vec<(Format, Escaping, Bytes)>,
}

/// The merged text and where each series is in it, so that members leaving can be
/// taken out by copying the rest, in order, instead of merging everything again.
#[derive(Debug)]
struct CachedText {
    bytes: Bytes,
    /// The member (by address) whose HELP heads the family: its leaving changes the
    /// header (only: the lines stay in order).
    header_from: usize,
    header_len: usize,
    /// Each series' end in `bytes` and its member, in exposition order.
    series: Vec<(usize, usize)>,
    /// Members gone since `bytes` was made, whose lines the next read leaves out.
    gone: HashSet<usize>,
}

impl RenderCache {
    /// The member with key `key` left the family.
    pub(super) fn forget_member(&mut self, key: &GroupingKey) {
        self.protobuf = None;
        self.openmetrics = None;
        self.escaped.clear();
        if let Some(cached) = &mut self.text {
            cached.gone.insert(address(key));
        }
    }
}

/// A member's identity while it is in the family: the address of its shared key. A
/// member joining invalidates the cache, so a reused address is never taken for a gone
/// member's.
fn address(key: &GroupingKey) -> usize {
    std::ptr::from_ref(key) as usize
}

impl CachedText {
    /// Leaves out the lines of the members gone since the text was made; when the
    /// member that gave the header is gone, `header` gives the new one (and its member).
    fn without_gone(&mut self, header: impl FnOnce() -> Option<(usize, Vec<u8>)>) {
        if self.gone.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(self.bytes.len());
        let header_len = self.header_len;
        if self.gone.contains(&self.header_from) {
            let (from, text) = header().unwrap_or_default();
            self.header_from = from;
            out.extend_from_slice(&text);
        } else {
            out.extend_from_slice(&self.bytes[..header_len]);
        }
        self.header_len = out.len();
        let mut series = Vec::with_capacity(self.series.len());
        let mut start = header_len;
        for &(end, member) in &self.series {
            if !self.gone.contains(&member) {
                out.extend_from_slice(&self.bytes[start..end]);
                series.push((out.len(), member));
            }
            start = end;
        }
        // No series left: no member has metrics, and the family is not exposed.
        self.bytes = if series.is_empty() {
            Bytes::new()
        } else {
            Bytes::from(out)
        };
        self.series = series;
        self.gone.clear();
    }
}

impl FamilyEntry {
    fn rendered(&self, name: &str, format: Format, escaping: Escaping) -> Bytes {
        let mut cache = self.rendered.lock().unwrap_or_else(PoisonError::into_inner);
        if self.utf8_names {
            // Both OpenMetrics versions have the same body.
            let format = match format {
                Format::OpenMetrics { .. } => Format::OpenMetrics { version_1_0: true },
                other => other,
            };
            if let Some((_, _, bytes)) = cache
                .escaped
                .iter()
                .find(|(f, e, _)| *f == format && *e == escaping)
            {
                return bytes.clone();
            }
            let bytes = self.merged_encoded(name, format, escaping);
            cache.escaped.push((format, escaping, bytes.clone()));
            return bytes;
        }
        match format {
            Format::Text => {
                let cached = cache.text.get_or_insert_with(|| self.merged_text());
                cached.without_gone(|| self.header());
                cached.bytes.clone()
            }
            Format::DelimitedProtobuf => cache
                .protobuf
                .get_or_insert_with(|| self.merged_encoded(name, format, escaping))
                .clone(),
            Format::OpenMetrics { .. } => cache
                .openmetrics
                .get_or_insert_with(|| self.merged_encoded(name, format, escaping))
                .clone(),
        }
    }

    /// Merges the members' pre-rendered metrics: sort the pieces, copy the bytes, each
    /// member's references to its group's labels expanded.
    /// The `# HELP`/`# TYPE` lines and the member they come from: the first member in
    /// key order with metrics and a HELP, or else the first with metrics.
    fn header(&self) -> Option<(usize, Vec<u8>)> {
        let with_metrics = || self.members.iter().filter(|(_, m)| m.has_metrics());
        with_metrics()
            .find(|(_, member)| member.has_help())
            .or_else(|| with_metrics().next())
            .map(|(key, member)| (address(key), member.header()))
    }

    fn merged_text(&self) -> CachedText {
        let Some((header_from, header)) = self.header() else {
            return CachedText {
                bytes: Bytes::new(),
                header_from: 0,
                header_len: 0,
                series: Vec::new(),
                gone: HashSet::new(),
            };
        };
        // The keys are compared expanded: the group labels' values sort among the
        // series' own. Expanded once into one buffer, not at each comparison.
        let mut keys = Vec::new();
        let mut pieces: Vec<(Range<usize>, usize, &GroupLabels, &[u8])> = Vec::new();
        for (key, member) in &self.members {
            let group = member.group();
            for (sort_key, text) in member.pieces() {
                let start = keys.len();
                group.expand_key(sort_key, &mut keys);
                pieces.push((start..keys.len(), address(key), group, text));
            }
        }
        // Stable, so equal keys (impossible after the check) keep grouping-key order.
        pieces.sort_by(|a, b| compare_keys(&keys[a.0.clone()], &keys[b.0.clone()]));
        drop(keys);
        let mut out = Vec::with_capacity(
            header.len()
                + pieces
                    .iter()
                    .map(|(_, _, _, text)| text.len())
                    .sum::<usize>(),
        );
        out.extend_from_slice(&header);
        let mut series = Vec::with_capacity(pieces.len());
        for (_, member, group, text) in pieces {
            group.expand_text(text, &mut out);
            series.push((out.len(), member));
        }
        CachedText {
            bytes: Bytes::from(out),
            header_from,
            header_len: header.len(),
            series,
            gone: HashSet::new(),
        }
    }

    /// The protobuf and OpenMetrics expositions are rarer than text: decode (exemplars,
    /// units and created timestamps survive in what a protobuf push stored), merge,
    /// sort, escape the names, encode. (Families with UTF-8 names take this way in
    /// text too.)
    fn merged_encoded(&self, name: &str, format: Format, escaping: Escaping) -> Bytes {
        let families: Vec<MetricFamily> = self.members.values().map(StoredFamily::family).collect();
        let help = families
            .iter()
            .filter(|family| !family.metric.is_empty())
            .find_map(|family| family.help.clone());
        let mut merged = MetricFamily {
            name: Some(name.to_owned()),
            help,
            r#type: Some(self.kind as i32),
            unit: families
                .iter()
                .filter(|family| !family.metric.is_empty())
                .find_map(|family| family.unit.clone()),
            metric: families
                .into_iter()
                .flat_map(|family| family.metric)
                .collect(),
        };
        sort_families(std::slice::from_mut(&mut merged));
        if self.utf8_names {
            merged = escape_family(merged, escaping);
        }
        let mut out = Vec::new();
        format.write(std::slice::from_ref(&merged), &mut out);
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
    escaping: Escaping,
) -> Vec<Bytes> {
    static WARNED: AtomicBool = AtomicBool::new(false);

    // The source's own families have legacy names (dropgate makes them): no escaping.
    let mut pushed = store.rendered_families(format, escaping);
    let mut own = source.collect();
    own.retain(|family| !family.metric.is_empty());
    sort_families(&mut own);
    if matches!(format, Format::OpenMetrics { .. }) {
        // In OpenMetrics a counter, summary or histogram owns its `_created`, `_count`,
        // ... series: a separately pushed family of such a name (a text push of Python's
        // client carries `x_created` gauges) would make the exposition invalid. Those are
        // left out of it (the text and protobuf formats still serve them); Prometheus
        // does not store `_created` lines as samples anyway.
        let typed = pushed
            .iter()
            .map(|p| (&*p.name, p.kind))
            .chain(own.iter().filter_map(|f| {
                let kind = MetricType::try_from(f.r#type.unwrap_or_default()).ok()?;
                Some((f.name.as_deref()?, kind))
            }));
        let owned: std::collections::HashSet<String> = typed
            .flat_map(|(name, kind)| openmetrics_owned(name, kind))
            .collect();
        if !owned.is_empty() {
            pushed.retain(|p| !owned.contains(&*p.name));
            own.retain(|f| !owned.contains(f.name.as_deref().unwrap_or_default()));
        }
    }

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
    if matches!(format, Format::OpenMetrics { .. }) {
        chunks.push(Bytes::from_static(crate::openmetrics::EOF));
    }
    chunks
}

/// The series names an OpenMetrics family of `name` and `kind` writes besides its own.
fn openmetrics_owned(name: &str, kind: MetricType) -> Vec<String> {
    let suffixes: &[&str] = match kind {
        MetricType::Counter => {
            return name
                .strip_suffix("_total")
                .map(|base| vec![format!("{base}_created")])
                .unwrap_or_default();
        }
        MetricType::Summary => &["_count", "_sum", "_created"],
        MetricType::Histogram => &["_bucket", "_count", "_sum", "_created"],
        MetricType::GaugeHistogram => &["_bucket", "_gcount", "_gsum"],
        MetricType::Gauge | MetricType::Untyped => &[],
    };
    suffixes.iter().map(|s| format!("{name}{s}")).collect()
}

/// [`exposition_chunks`] in one buffer.
#[must_use]
pub fn exposition(
    store: &MetricStore,
    source: &dyn MetricSource,
    format: Format,
    escaping: Escaping,
) -> Vec<u8> {
    exposition_chunks(store, source, format, escaping).concat()
}
