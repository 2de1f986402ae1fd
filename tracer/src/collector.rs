//! Turns the kernel's per-CPU drop counts into Prometheus metric families.
//!
//! The kernel keeps one entry per [`DropKey`]; here they are summed over CPUs, the
//! numbers are given names (reason from BTF, function from kallsyms, namespace and
//! interface names), and keys that name the same series (two call sites in one
//! function) are added together. Keys of namespaces and interfaces that are gone are
//! evicted (see [`crate::eviction`]) with their counts kept here, so every series is a
//! true monotonic counter and the totals stay exact. Reading happens at scrape time: the
//! counts are exact as of the scrape, with no sampling interval in between.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Instant,
};

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use gateway::model::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use tracer_common::{
    stat, CpuState, DropCounts, DropKey, DropSlot, IFINDEX_GONE, NETNS_GONE, REASON_UNKNOWN,
};

use crate::{
    btf::Btf,
    drop_class::{Classifier, DropClass},
    enrich::Enricher,
    eviction::{Evictions, Fate},
    kallsyms::Kallsyms,
    loader::Probe,
    netns::Names,
    samples::Namer,
};

/// Label value of the namespace or interface of counts whose key was evicted.
pub const GONE: &str = "gone";

/// Drop reasons by number, from the running kernel's `enum skb_drop_reason`.
pub struct ReasonNames {
    names: HashMap<u32, String>,
}

impl ReasonNames {
    /// Reads the enum from BTF. Kernels before 5.17 have none: every reason is `unknown`.
    #[must_use]
    pub fn from_btf(btf: &Btf) -> Self {
        let names = btf
            .enum_values("skb_drop_reason")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, value)| {
                let short = name.strip_prefix("SKB_DROP_REASON_")?;
                Some((u32::try_from(value).ok()?, short.to_owned()))
            })
            .collect();
        Self { names }
    }

    /// The label value for a raw reason.
    #[must_use]
    pub fn name(&self, reason: u32) -> String {
        if reason == REASON_UNKNOWN {
            return "unknown".into();
        }
        if let Some(name) = self.names.get(&reason) {
            return name.clone();
        }
        // 6.4+ put a subsystem id in the high 16 bits (mac80211, openvswitch, ...);
        // those enums are not the core one.
        match reason >> 16 {
            0 => format!("REASON_{reason}"),
            subsystem => format!("SUBSYS_{subsystem}_{}", reason & 0xffff),
        }
    }
}

/// Protocol label: a small closed set, so the label stays low-cardinality.
#[must_use]
pub fn protocol_name(ethertype: u16, l4_proto: u8) -> &'static str {
    match (ethertype, l4_proto) {
        (0x0800 | 0x86dd, 6) => "tcp",
        (0x0800 | 0x86dd, 17) => "udp",
        (0x0800, 1) => "icmp",
        (0x86dd, 58) => "icmpv6",
        (0x0800, 2) => "igmp",
        (0x0800 | 0x86dd, 132) => "sctp",
        (0x0800 | 0x86dd, 47) => "gre",
        (0x0800, _) => "ipv4",
        (0x86dd, _) => "ipv6",
        (0x0806, _) => "arp",
        (0, _) => "unknown",
        _ => "other",
    }
}

/// The labels of one dropped-packets series, in the exposition's order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DropLabels {
    /// What the drop means for traffic; a function of the other labels.
    pub class: DropClass,
    pub interface: String,
    pub location: String,
    pub netns: String,
    pub protocol: &'static str,
    pub reason: String,
}

/// Reads the probe's maps and names what it finds; the trace side's `MetricSource`.
pub struct DropCollector {
    maps: Mutex<Maps>,
    reasons: Arc<ReasonNames>,
    kallsyms: Arc<Kallsyms>,
    names: Arc<Names>,
    view: Arc<View>,
    hook: String,
    kernel: String,
}

/// How drops are presented: their class, and which namespaces are reported.
#[derive(Debug, Default)]
pub struct View {
    pub classes: Classifier,
    /// Report only drops in these namespaces (names as in the `netns` label); empty: all.
    pub namespaces: Vec<String>,
}

impl View {
    /// Whether drops in the namespace named `netns` are reported.
    #[must_use]
    pub fn reports(&self, netns: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == netns)
    }
}

struct Maps {
    /// The per-CPU drop cache and the hash map behind it: each event is in one of them.
    cache: PerCpuArray<MapData, DropSlot>,
    cache_slots: u32,
    drops: PerCpuHashMap<MapData, DropKey, DropCounts>,
    cpu: PerCpuArray<MapData, CpuState>,
    evictions: Evictions,
    /// When every key was last read (and judged for eviction).
    last_read: Option<std::time::Instant>,
}

/// Counts read from the kernel with the fate of their key, and the retained counts of
/// evicted keys.
type Reading = (Vec<(DropKey, Fate, DropCounts)>, Vec<(DropKey, DropCounts)>);

impl Maps {
    /// Reads every key, judges it, evicts the dead ones that are due (see
    /// [`crate::eviction`]), and returns what is left with the retained counts.
    fn read(&mut self, names: &Names) -> Reading {
        self.last_read = Some(Instant::now());
        // Each CPU's cache slot holds its own key; the same key may sit in the cache on
        // one CPU and in the hash map on another. The label map adds them up.
        let cached: Vec<(u32, Vec<DropSlot>)> = (0..self.cache_slots)
            .filter_map(|index| {
                let per_cpu = self.cache.get(&index, 0).ok()?;
                Some((index, per_cpu.iter().copied().collect::<Vec<_>>()))
            })
            .collect();
        let hashed: Vec<(DropKey, DropCounts)> = self
            .drops
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, sum(&per_cpu)))
            .collect();
        let keys: HashSet<DropKey> = cached
            .iter()
            .flat_map(|(_, slots)| slots.iter())
            .filter(|slot| slot.counts.packets > 0)
            .map(|slot| slot.key)
            .chain(hashed.iter().map(|(key, _)| *key))
            .collect();
        let fates = self.evictions.judge(names, &keys);
        let mut raw = Vec::new();
        let hashed = self.evict_hashed(hashed, &fates, &mut raw);
        let cache_slots = self.evict_cached(cached, &fates, &mut raw);
        if hashed + cache_slots > 0 {
            tracing::debug!(
                hashed,
                cache_slots,
                "evicted drop keys of namespaces and interfaces that are gone"
            );
        }
        let retained = self
            .evictions
            .retained(names)
            .iter()
            .map(|(key, counts)| (*key, *counts))
            .collect();
        (raw, retained)
    }

    /// Deletes the hash map's keys that are due; pushes the others to `raw`.
    fn evict_hashed(
        &mut self,
        hashed: Vec<(DropKey, DropCounts)>,
        fates: &HashMap<DropKey, Fate>,
        raw: &mut Vec<(DropKey, Fate, DropCounts)>,
    ) -> usize {
        let now = Instant::now();
        let mut evicted = 0;
        for (key, counts) in hashed {
            let fate = fates[&key];
            if fate != Fate::Alive && self.evictions.evictable(&key, now) {
                // Read again right before deleting: what counted since is kept too.
                let latest = self.drops.get(&key, 0).map_or(counts, |v| sum(&v));
                if self.drops.remove(&key).is_ok() {
                    self.evictions.retain(&key, fate, latest);
                    evicted += 1;
                    continue;
                }
            }
            raw.push((key, fate, counts));
        }
        evicted
    }

    /// Frees the cache indexes whose slot on every CPU holds a key of a namespace that
    /// is gone for good (so no CPU can count in or claim one of them meanwhile); pushes
    /// the other slots to `raw`.
    fn evict_cached(
        &mut self,
        cached: Vec<(u32, Vec<DropSlot>)>,
        fates: &HashMap<DropKey, Fate>,
        raw: &mut Vec<(DropKey, Fate, DropCounts)>,
    ) -> usize {
        let now = Instant::now();
        let mut evicted = 0;
        for (index, slots) in cached {
            let all_evictable = slots.iter().all(|slot| {
                slot.counts.packets > 0
                    && slot.key.netns_cookie != 0
                    && fates.get(&slot.key) == Some(&Fate::NamespaceGone)
                    && self.evictions.evictable(&slot.key, now)
            });
            if all_evictable {
                let free = PerCpuValues::try_from(vec![DropSlot::default(); slots.len()]);
                if let Ok(free) = free {
                    if self.cache.set(index, free, 0).is_ok() {
                        for slot in &slots {
                            self.evictions
                                .retain(&slot.key, Fate::NamespaceGone, slot.counts);
                        }
                        evicted += slots.len();
                        continue;
                    }
                }
            }
            raw.extend(
                slots
                    .iter()
                    .filter(|slot| slot.counts.packets > 0)
                    .map(|slot| (slot.key, fates[&slot.key], slot.counts)),
            );
        }
        evicted
    }
}

impl DropCollector {
    /// Takes the maps out of the probe (the programs stay attached as long as `probe`
    /// lives) and prepares the name tables.
    pub fn new(
        probe: &mut Probe,
        btf: &Btf,
        kallsyms: Kallsyms,
        view: View,
    ) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            probe
                .ebpf
                .take_map(name)
                .ok_or_else(|| anyhow::anyhow!("map {name} missing from the object"))
        };
        let drops = PerCpuHashMap::try_from(take("DROPS")?)?;
        let cache = PerCpuArray::try_from(take("DROP_CACHE")?)?;
        let cpu = PerCpuArray::try_from(take("CPU_STATE")?)?;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Ok(Self {
            maps: Mutex::new(Maps {
                cache,
                cache_slots: probe.cache_slots,
                drops,
                cpu,
                evictions: Evictions::default(),
                last_read: None,
            }),
            reasons: Arc::new(ReasonNames::from_btf(btf)),
            kallsyms: Arc::new(kallsyms),
            names: Arc::new(Names::new()),
            view: Arc::new(view),
            hook: probe.hook.to_string(),
            kernel,
        })
    }

    /// The namespace and interface names this collector uses.
    #[must_use]
    pub fn names(&self) -> Arc<Names> {
        Arc::clone(&self.names)
    }

    /// A namer for samples that shares this collector's name tables and caches.
    #[must_use]
    pub fn namer(&self, enricher: Arc<Enricher>) -> Namer {
        Namer::new(
            Arc::clone(&self.reasons),
            Arc::clone(&self.kallsyms),
            Arc::clone(&self.names),
            Arc::clone(&self.view),
            enricher,
        )
    }

    /// Current totals per series, summed over CPUs and call sites; evicts the keys of
    /// namespaces and interfaces that are gone on the way (see [`crate::eviction`]).
    pub fn drops(&self) -> BTreeMap<DropLabels, DropCounts> {
        let (raw, retained) = self.maps.lock().expect("maps lock").read(&self.names);
        let mut series: BTreeMap<DropLabels, DropCounts> = BTreeMap::new();
        self.kallsyms.learn(
            raw.iter()
                .map(|(key, _, _)| key.location)
                .chain(retained.iter().map(|(key, _)| key.location)),
        );
        let live = raw
            .into_iter()
            .map(|(key, fate, counts)| (fate.folded(&key), counts));
        for (key, counts) in live.chain(retained) {
            let netns = if key.netns == NETNS_GONE {
                GONE.into()
            } else {
                self.names.namespace(key.netns)
            };
            if !self.view.reports(&netns) {
                continue;
            }
            let location = self.kallsyms.name_at(key.location);
            let protocol = protocol_name(key.ethertype, key.l4_proto);
            let reason = self.reasons.name(key.reason);
            let labels = DropLabels {
                class: self.view.classes.class(&reason, &location, protocol),
                interface: if key.ifindex == IFINDEX_GONE {
                    GONE.into()
                } else {
                    self.names.interface(key.netns, key.ifindex)
                },
                location,
                netns,
                protocol,
                reason,
            };
            let entry = series.entry(labels).or_default();
            entry.packets += counts.packets;
            entry.bytes += counts.bytes;
        }
        series
    }

    /// Reads the maps only to evict the keys of namespaces and interfaces that are gone:
    /// no series are named or built.
    pub fn evict(&self) {
        let _ = self.maps.lock().expect("maps lock").read(&self.names);
    }

    /// Whether keys judged dead at the last read wait for their grace to end, so that
    /// a read soon evicts them.
    pub fn eviction_pending(&self) -> bool {
        self.maps
            .lock()
            .expect("maps lock")
            .evictions
            .pending(Instant::now())
    }

    /// Whether the maps can be read with the process's current privileges.
    pub fn can_read_maps(&self) -> bool {
        let maps = self.maps.lock().expect("maps lock");
        maps.cpu.get(&0, 0).is_ok()
    }

    /// When every key was last read (by a scrape, a diagnose round or the evictor).
    pub fn last_read(&self) -> Option<Instant> {
        self.maps.lock().expect("maps lock").last_read
    }

    /// Whether drops of the namespace labelled `netns` are reported (`--trace.netns`).
    pub fn reports(&self, netns: &str) -> bool {
        self.view.reports(netns)
    }

    /// A counter of the programs' per-CPU state (a `stat` index), summed over CPUs.
    pub fn stat(&self, index: u32) -> u64 {
        let maps = self.maps.lock().expect("maps lock");
        maps.cpu.get(&0, 0).map_or(0, |per_cpu| {
            per_cpu
                .iter()
                .filter_map(|state| state.stats.get(index as usize))
                .sum()
        })
    }
}

/// A per-CPU value summed over CPUs.
fn sum(per_cpu: &[DropCounts]) -> DropCounts {
    per_cpu
        .iter()
        .fold(DropCounts::default(), |acc, c| DropCounts {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        })
}

fn label_pairs(labels: &DropLabels) -> Vec<LabelPair> {
    vec![
        LabelPair::new("class", labels.class.label()),
        LabelPair::new("interface", &labels.interface),
        LabelPair::new("location", &labels.location),
        LabelPair::new("netns", &labels.netns),
        LabelPair::new("protocol", labels.protocol),
        LabelPair::new("reason", &labels.reason),
    ]
}

fn counter_family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    MetricFamily {
        name: Some(name.into()),
        help: Some(help.into()),
        r#type: Some(MetricType::Counter as i32),
        metric: metrics,
        unit: None,
    }
}

fn counter(labels: Vec<LabelPair>, value: u64) -> Metric {
    Metric {
        label: labels,
        counter: Some(Counter {
            value: Some(value as f64),
            ..Counter::default()
        }),
        ..Metric::default()
    }
}

impl gateway::MetricSource for DropCollector {
    fn collect(&self) -> Vec<MetricFamily> {
        let drops = self.drops();
        let packets = drops
            .iter()
            .map(|(labels, counts)| counter(label_pairs(labels), counts.packets))
            .collect();
        let bytes = drops
            .iter()
            .map(|(labels, counts)| counter(label_pairs(labels), counts.bytes))
            .collect();
        let info = Metric {
            label: vec![
                LabelPair::new("hook", &self.hook),
                LabelPair::new("kernel", &self.kernel),
            ],
            gauge: Some(Gauge { value: Some(1.0) }),
            ..Metric::default()
        };
        vec![
            counter_family(
                "dropgate_packets_dropped_total",
                "Packets the kernel dropped (kfree_skb), by class (transit: traffic lost; refused: the sender was told; local: socket housekeeping), reason, dropping function, interface, network namespace and protocol.",
                packets,
            ),
            counter_family(
                "dropgate_bytes_dropped_total",
                "Bytes of the packets the kernel dropped, with the labels of dropgate_packets_dropped_total.",
                bytes,
            ),
            counter_family(
                "dropgate_tracer_events_total",
                "Drop events the kernel program saw; the sum of dropgate_packets_dropped_total plus the uncounted.",
                vec![counter(Vec::new(), self.stat(stat::EVENTS))],
            ),
            counter_family(
                "dropgate_tracer_uncounted_total",
                "Drop events that could not be counted because the in-kernel table was full.",
                vec![counter(Vec::new(), self.stat(stat::MAP_FULL))],
            ),
            counter_family(
                "dropgate_events_lost_total",
                "Per-packet samples lost because the ring buffer to userspace was full (counts are unaffected).",
                vec![counter(Vec::new(), self.stat(stat::SAMPLES_LOST))],
            ),
            counter_family(
                "dropgate_samples_suppressed_total",
                "Per-packet samples not taken because of the sampling rate limit (counts are unaffected).",
                vec![counter(Vec::new(), self.stat(stat::SAMPLES_SUPPRESSED))],
            ),
            MetricFamily {
                name: Some("dropgate_tracer_info".into()),
                help: Some("The kernel hook the tracer runs on and the kernel release; always 1.".into()),
                r#type: Some(MetricType::Gauge as i32),
                metric: vec![info],
                unit: None,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_labels() {
        let cases = [
            ("tcp over ipv4", 0x0800, 6, "tcp"),
            ("udp over ipv6", 0x86dd, 17, "udp"),
            ("icmp", 0x0800, 1, "icmp"),
            ("icmpv6", 0x86dd, 58, "icmpv6"),
            ("other ipv4", 0x0800, 250, "ipv4"),
            ("arp", 0x0806, 0, "arp"),
            ("no protocol read", 0, 0, "unknown"),
            ("lldp", 0x88cc, 0, "other"),
        ];
        for (name, ethertype, l4, want) in cases {
            assert_eq!(protocol_name(ethertype, l4), want, "case {name}");
        }
    }

    #[test]
    fn reason_names_fall_back_without_inventing_names() {
        let reasons = ReasonNames {
            names: HashMap::from([(87, "IP_INADDRERRORS".to_owned())]),
        };
        assert_eq!(reasons.name(87), "IP_INADDRERRORS");
        assert_eq!(reasons.name(REASON_UNKNOWN), "unknown");
        assert_eq!(reasons.name(9999), "REASON_9999");
        assert_eq!(reasons.name(0x0003_0005), "SUBSYS_3_5");
    }
}
