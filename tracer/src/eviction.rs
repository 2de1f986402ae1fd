//! Keys of namespaces and interfaces that are gone leave the kernel's tables.
//!
//! Every container brings a new host-side interface and a new namespace, so with churn
//! the kernel's drop keys would fill its hash map and every later drop would only be
//! `uncounted`. Here each key read at collection time is judged: its namespace gone (its
//! inode held by another namespace, or no file or process refers to it any more), its
//! interface gone, or alive. A dead key is shown under `gone` at once (so no later
//! namespace inherits its names), and once it has been dead for [`GRACE`] its counts are
//! moved into a retained table in userspace and the key is deleted from the kernel: the
//! totals stay exact and monotonic, the series of a dead namespace folds into the
//! `netns="gone"` series of the same reason, function and protocol.
//!
//! Exactness rests on one fact: a namespace's cookie is never reused, so a key of a
//! dead namespace is never counted again once the namespace's last packets are freed
//! (the grace covers its teardown). A key is read and deleted in two steps; the only
//! drop that could land in between is one of a dead interface in a living namespace
//! (a packet that outlived its device in a socket queue). Cache slots are reset only
//! when, at that index, every CPU's slot holds a key of a dead namespace, so no CPU can
//! be claiming or counting in one while userspace writes it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use tracer_common::{DropCounts, DropKey, IFINDEX_GONE, NETNS_GONE};

use crate::netns::{Names, NamespaceState};

/// How long a key must have been dead before it is deleted from the kernel: a namespace
/// is torn down by a kernel worker after its last reference goes, and the packets freed
/// meanwhile may still be counted under its key.
pub const GRACE: Duration = Duration::from_secs(1);

/// How often the interfaces behind keys of living namespaces are checked by entering the
/// namespace (those in the namespace loop's link tables are checked at every read).
const INTERFACES_CHECKED_EVERY: Duration = Duration::from_secs(1);

/// An interface newer than any its namespace's link table has seen is judged gone only
/// once its key has been known this long: the table learns a new interface from an
/// event, which the namespace loop may not have read yet when the first packets through
/// it are counted.
const INTERFACE_JUDGED_AFTER: Duration = Duration::from_secs(2);

/// What became of the namespace or interface of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Alive,
    /// The namespace is gone: both labels read `gone`.
    NamespaceGone,
    /// The namespace lives, the interface is gone: the interface label reads `gone`.
    InterfaceGone,
}

impl Fate {
    /// The key its counts are kept under once evicted.
    #[must_use]
    pub fn folded(self, key: &DropKey) -> DropKey {
        match self {
            Fate::Alive => *key,
            Fate::NamespaceGone => DropKey {
                netns: NETNS_GONE,
                netns_cookie: 0,
                ifindex: IFINDEX_GONE,
                ..*key
            },
            Fate::InterfaceGone => DropKey {
                ifindex: IFINDEX_GONE,
                ..*key
            },
        }
    }
}

/// The judgement and the retained counts; owned by the collector, under its maps lock.
#[derive(Default)]
pub struct Evictions {
    /// When the collector first read each key (a namespace missing from a scan made
    /// before that may just be newer than the scan).
    first_seen: HashMap<DropKey, Instant>,
    /// When each key was first judged dead.
    dead_since: HashMap<DropKey, Instant>,
    /// Interfaces found gone, by (namespace inode, cookie, ifindex). Interface indexes
    /// are not handed out again in a namespace (they count up), so this is final.
    gone_interfaces: HashSet<(u32, u64, u32)>,
    interfaces_checked: HashMap<(u32, u64), Instant>,
    /// Counts of evicted keys, under their folded key.
    retained: BTreeMap<DropKey, DropCounts>,
    /// Cookies judged replaced, so that [`Names`] can forget them once no key has them.
    replaced_cookies: HashSet<u64>,
}

impl Evictions {
    /// Judges every key read in one collection; returns each one's fate.
    pub fn judge(&mut self, names: &Names, keys: &HashSet<DropKey>) -> HashMap<DropKey, Fate> {
        let now = Instant::now();
        self.first_seen.retain(|key, _| keys.contains(key));
        self.dead_since.retain(|key, _| keys.contains(key));
        for key in keys {
            self.first_seen.entry(*key).or_insert(now);
        }
        let cookies: HashSet<u64> = keys.iter().map(|key| key.netns_cookie).collect();
        self.replaced_cookies.retain(|cookie| {
            let still_used = cookies.contains(cookie);
            if !still_used {
                names.forget_cookie(*cookie);
            }
            still_used
        });
        let mut namespaces: HashMap<(u32, u64), bool> = HashMap::new();
        for key in keys {
            namespaces
                .entry((key.netns, key.netns_cookie))
                .or_insert_with(
                    || match names.namespace_state(key.netns, key.netns_cookie) {
                        NamespaceState::Alive => true,
                        NamespaceState::Replaced => false,
                        // Missing from a scan made after the key was first read: gone. A
                        // scan from before may predate the namespace.
                        NamespaceState::Missing { scanned } => keys
                            .iter()
                            .filter(|k| (k.netns, k.netns_cookie) == (key.netns, key.netns_cookie))
                            .filter_map(|k| self.first_seen.get(k))
                            .all(|first| *first >= scanned),
                    },
                );
        }
        self.check_interfaces(names, keys, &namespaces, now);
        keys.iter()
            .map(|key| {
                let fate = if !namespaces[&(key.netns, key.netns_cookie)] {
                    Fate::NamespaceGone
                } else if self
                    .gone_interfaces
                    .contains(&(key.netns, key.netns_cookie, key.ifindex))
                {
                    Fate::InterfaceGone
                } else {
                    Fate::Alive
                };
                if fate == Fate::Alive {
                    self.dead_since.remove(key);
                } else {
                    self.dead_since.entry(*key).or_insert(now);
                }
                (*key, fate)
            })
            .collect()
    }

    /// Asks each living namespace (at most every `INTERFACES_CHECKED_EVERY`) which of
    /// the interfaces its keys name still exist.
    fn check_interfaces(
        &mut self,
        names: &Names,
        keys: &HashSet<DropKey>,
        namespaces: &HashMap<(u32, u64), bool>,
        now: Instant,
    ) {
        let mut wanted: HashMap<(u32, u64), Vec<u32>> = HashMap::new();
        let mut settled: HashSet<(u32, u64, u32)> = HashSet::new();
        for key in keys {
            let ns = (key.netns, key.netns_cookie);
            if self
                .first_seen
                .get(key)
                .is_some_and(|first| now.duration_since(*first) >= INTERFACE_JUDGED_AFTER)
            {
                settled.insert((key.netns, key.netns_cookie, key.ifindex));
            }
            if key.netns != 0
                && key.ifindex != 0
                && namespaces[&ns]
                && !self
                    .gone_interfaces
                    .contains(&(key.netns, key.netns_cookie, key.ifindex))
            {
                wanted.entry(ns).or_default().push(key.ifindex);
            }
        }
        self.interfaces_checked
            .retain(|ns, _| wanted.contains_key(ns));
        for (ns, mut ifindexes) in wanted {
            if !names.knows_links(ns.0)
                && self
                    .interfaces_checked
                    .get(&ns)
                    .is_some_and(|at| now.duration_since(*at) < INTERFACES_CHECKED_EVERY)
            {
                continue;
            }
            self.interfaces_checked.insert(ns, now);
            ifindexes.sort_unstable();
            ifindexes.dedup();
            let Some((gone, not_seen)) = names.gone_interfaces(ns.0, &ifindexes) else {
                continue;
            };
            let old_enough = not_seen
                .into_iter()
                .filter(|ifindex| settled.contains(&(ns.0, ns.1, *ifindex)));
            for ifindex in gone.into_iter().chain(old_enough) {
                self.gone_interfaces.insert((ns.0, ns.1, ifindex));
            }
        }
    }

    /// Whether a dead key has been dead long enough to leave the kernel.
    #[must_use]
    pub fn evictable(&self, key: &DropKey, now: Instant) -> bool {
        self.dead_since
            .get(key)
            .is_some_and(|since| now.duration_since(*since) >= GRACE)
    }

    /// Whether a read soon has work to do: a key judged dead is within its grace, or a
    /// new key's interface is not judged yet (each plus a second for the read after).
    #[must_use]
    pub fn pending(&self, now: Instant) -> bool {
        let recent =
            |at: &Instant, wait: Duration| now.duration_since(*at) <= wait + Duration::from_secs(1);
        self.dead_since.values().any(|since| recent(since, GRACE))
            || self
                .first_seen
                .values()
                .any(|first| recent(first, INTERFACE_JUDGED_AFTER))
    }

    /// Keeps `counts` of an evicted key under its folded key.
    pub fn retain(&mut self, key: &DropKey, fate: Fate, counts: DropCounts) {
        let entry = self.retained.entry(fate.folded(key)).or_default();
        entry.packets += counts.packets;
        entry.bytes += counts.bytes;
    }

    /// Retained counts, their namespaces judged again: the interface-gone counts of a
    /// namespace that has gone since move under `netns="gone"`.
    pub fn retained(&mut self, names: &Names) -> &BTreeMap<DropKey, DropCounts> {
        let moved: Vec<DropKey> = self
            .retained
            .keys()
            .filter(|key| key.netns != NETNS_GONE && key.netns != 0)
            .filter(|key| {
                !matches!(
                    names.namespace_state(key.netns, key.netns_cookie),
                    NamespaceState::Alive
                )
            })
            .copied()
            .collect();
        for key in moved {
            if let Some(counts) = self.retained.remove(&key) {
                self.retain(&key, Fate::NamespaceGone, counts);
            }
        }
        self.gone_interfaces.retain(|(netns, cookie, _)| {
            matches!(
                names.namespace_state(*netns, *cookie),
                NamespaceState::Alive
            )
        });
        &self.retained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(netns: u32, cookie: u64, ifindex: u32) -> DropKey {
        DropKey {
            location: 0xffff_ffff_8100_0000,
            netns_cookie: cookie,
            netns,
            ifindex,
            reason: 87,
            ethertype: 0x0800,
            l4_proto: 17,
            pad: 0,
        }
    }

    #[test]
    fn folded_keys_keep_reason_function_and_protocol_only() {
        let k = key(4_026_532_000, 77, 5);
        let ns = Fate::NamespaceGone.folded(&k);
        assert_eq!(
            (ns.netns, ns.netns_cookie, ns.ifindex),
            (NETNS_GONE, 0, IFINDEX_GONE)
        );
        assert_eq!(
            (ns.location, ns.reason, ns.ethertype, ns.l4_proto),
            (k.location, k.reason, k.ethertype, k.l4_proto)
        );
        let dev = Fate::InterfaceGone.folded(&k);
        assert_eq!(
            (dev.netns, dev.netns_cookie, dev.ifindex),
            (k.netns, 77, IFINDEX_GONE)
        );
        assert_eq!(Fate::Alive.folded(&k), k);
    }

    #[test]
    fn retained_counts_add_up_per_folded_key() {
        let mut evictions = Evictions::default();
        let counts = |packets| DropCounts {
            packets,
            bytes: packets * 100,
        };
        // Two dead namespaces, same reason/function/protocol: one `gone` series.
        evictions.retain(&key(10, 1, 2), Fate::NamespaceGone, counts(3));
        evictions.retain(&key(11, 2, 2), Fate::NamespaceGone, counts(4));
        let gone = Fate::NamespaceGone.folded(&key(10, 1, 2));
        assert_eq!(evictions.retained[&gone], counts(7));
        assert_eq!(evictions.retained.len(), 1);
    }

    #[test]
    fn a_key_of_a_namespace_replaced_under_its_inode_is_gone_at_once() {
        let names = Names::new();
        let own = names.own_inode();
        let Some(cookie) = crate::netns::own_cookie() else {
            eprintln!("SKIP: no SO_NETNS_COOKIE on this kernel");
            return;
        };
        let mut evictions = Evictions::default();
        let live = key(own, cookie, 1);
        let dead = key(own, cookie + 1_000_000, 1);
        let fates = evictions.judge(&names, &HashSet::from([live, dead]));
        assert_eq!(fates[&live], Fate::Alive, "lo of our own namespace");
        assert_eq!(fates[&dead], Fate::NamespaceGone);
        assert!(
            !evictions.evictable(&dead, Instant::now()),
            "not before the grace"
        );
        assert!(evictions.evictable(&dead, Instant::now() + GRACE));
        assert!(!evictions.evictable(&live, Instant::now() + GRACE));
    }

    #[test]
    fn a_key_of_an_interface_that_never_existed_here_is_gone() {
        let names = Names::new();
        let own = names.own_inode();
        let mut evictions = Evictions::default();
        // ifindexes count up from 1; this one is far beyond any interface made here.
        let ghost = key(own, 0, 0x7fff_fff0);
        let fates = evictions.judge(&names, &HashSet::from([ghost]));
        assert_eq!(
            fates[&ghost],
            Fate::InterfaceGone,
            "asked in the namespace: gone at once"
        );
    }

    #[test]
    fn an_interface_newer_than_the_link_table_is_gone_only_once_its_key_is_old() {
        let names = Names::new();
        let own = names.own_inode();
        names.use_links(Box::new(|_, ifindexes| {
            Some(
                ifindexes
                    .iter()
                    .map(|_| crate::netns::LinkState::NotSeenYet)
                    .collect(),
            )
        }));
        let mut evictions = Evictions::default();
        let ghost = key(own, 0, 0x7fff_fff0);
        let fates = evictions.judge(&names, &HashSet::from([ghost]));
        assert_eq!(
            fates[&ghost],
            Fate::Alive,
            "a key just seen: its interface may not be in the link tables yet"
        );
        assert!(evictions.pending(Instant::now()), "to be judged soon");
        evictions.first_seen.insert(
            ghost,
            Instant::now()
                .checked_sub(INTERFACE_JUDGED_AFTER)
                .expect("uptime over 2 s"),
        );
        evictions.interfaces_checked.clear();
        let fates = evictions.judge(&names, &HashSet::from([ghost]));
        assert_eq!(fates[&ghost], Fate::InterfaceGone);
    }
}
