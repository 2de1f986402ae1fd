//! The push store: metric groups keyed by [`GroupingKey`], and the index that keeps
//! every push's consistency check proportional to the push.
//!
//! Concurrency and ownership: the store is shared as `Arc<MetricStore>`. Writes are
//! [`WriteCommand`] values applied one at a time under a single writer lock; the check
//! of a push against the store is done under that lock, so two pushes can never both
//! pass a check that only one of them could. Reads (scrape, `/api/v1/metrics`,
//! persistence) hold the read lock just long enough to clone `Arc`s of the groups'
//! families and of cached per-family renderings; building the response happens after
//! the lock is released. Stored families are immutable once stored (replaced, never
//! edited), which is what makes those `Arc`s a consistent snapshot.
//!
//! The index maps each family name to its type, the groups that have it and the set of
//! its series identities across groups; it is updated on every write, so a push is
//! checked against it in time proportional to the push (fix 5 of the spec), not by
//! re-gathering the whole store as upstream does.

mod check;
mod expiry;
mod group_labels;
mod render;
mod round_trip;
mod stored;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

pub use check::{go_type_name, Inconsistency, ReservedNames, RESERVED_PREFIX};
pub use expiry::{run as run_expiry, Expiry, GroupsExpired, Ttl, GROUPS_EXPIRED_TOTAL};
pub use render::{exposition, exposition_chunks, RenderedFamily};
pub use stored::StoredFamily;

use crate::grouping::GroupingKey;
use crate::model::{Gauge, Metric, MetricFamily, MetricType};
use crate::names::NameRules;
use check::{
    apply_grouping_labels, prepare, same_identity, series_hash, suffix_clash, PreparedFamily,
};
use group_labels::GroupLabels;
use render::RenderCache;

/// Name of the gauge holding the last successful change of a group.
pub const PUSH_TIME_NAME: &str = "push_time_seconds";
/// HELP of [`PUSH_TIME_NAME`], as upstream words it.
pub const PUSH_TIME_HELP: &str =
    "Last Unix time when changing this group in the Pushgateway succeeded.";
/// Name of the gauge holding the last failed change of a group.
pub const PUSH_FAILURE_TIME_NAME: &str = "push_failure_time_seconds";
/// HELP of [`PUSH_FAILURE_TIME_NAME`], as upstream words it.
pub const PUSH_FAILURE_TIME_HELP: &str =
    "Last Unix time when changing this group in the Pushgateway failed.";

/// A change to the store, as received from the HTTP API (or built by a test).
#[derive(Debug, Clone)]
pub enum WriteCommand {
    /// `PUT`: the group's families become exactly the pushed ones.
    Put {
        /// The group.
        key: GroupingKey,
        /// The parsed body.
        families: Vec<MetricFamily>,
        /// How long the group may then go without a push.
        ttl: Ttl,
    },
    /// `POST`: the pushed families replace same-named families of the group; the
    /// group's other families stay.
    Post {
        /// The group.
        key: GroupingKey,
        /// The parsed body.
        families: Vec<MetricFamily>,
        /// How long the group may then go without a push.
        ttl: Ttl,
    },
    /// `DELETE`: the group with exactly this key goes away (a no-op if absent).
    Delete {
        /// The group.
        key: GroupingKey,
    },
    /// `/api/v1/admin/wipe`: every group goes away.
    Wipe,
}

/// Why the store refused a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The push failed the consistency check; the store is unchanged except for the
    /// group's `push_failure_time_seconds` (see [`MetricStore::apply`]).
    #[error("pushed metrics are invalid or inconsistent with existing metrics: {0}")]
    Inconsistent(#[from] Inconsistency),
}

/// A consistent copy of one group, for `/api/v1/metrics` and persistence.
#[derive(Debug, Clone)]
pub struct GroupSnapshot {
    /// The group's key.
    pub key: Arc<GroupingKey>,
    /// Its families, push gauges included, sorted by name.
    pub families: Vec<StoredFamily>,
    /// Its expiry, as persisted.
    pub expiry: Expiry,
    /// When it expires, if it does.
    pub deadline: Option<SystemTime>,
}

impl GroupSnapshot {
    /// Upstream's `LastPushSuccess`: the failure time is not after the push time.
    #[must_use]
    pub fn last_push_successful(&self) -> bool {
        let gauge = |name: &str| {
            self.families
                .iter()
                .find(|family| family.name() == name)
                .and_then(|family| family.family().metric.first()?.gauge.as_ref()?.value)
        };
        match (gauge(PUSH_FAILURE_TIME_NAME), gauge(PUSH_TIME_NAME)) {
            (Some(failure), Some(success)) => failure <= success,
            _ => true,
        }
    }
}

/// A group read back from persistence, given to [`MetricStore::restore`].
#[derive(Debug, Clone)]
pub struct RestoredGroup {
    /// The group's key.
    pub key: GroupingKey,
    /// Its families with the time each was stored, push gauges included.
    pub families: Vec<(MetricFamily, SystemTime)>,
    /// Its expiry (files written before expiry existed: [`Expiry::Default`]).
    pub expiry: Expiry,
}

/// The push store. See the module documentation for concurrency and ownership.
#[derive(Debug)]
pub struct MetricStore {
    state: RwLock<State>,
    reserved: ReservedNames,
    /// Bumped on every change; persistence waits on it.
    version: watch::Sender<u64>,
    /// `--push.ttl`, when not zero.
    default_ttl: Option<Duration>,
    /// Counts groups removed by expiry.
    expired: Arc<GroupsExpired>,
    /// Which metric and label names pushes may use.
    names: NameRules,
}

#[derive(Debug, Default)]
struct State {
    groups: BTreeMap<Arc<GroupingKey>, Group>,
    /// Every group by what it exposes (its non-empty labels), so that no two groups
    /// expose the same push gauges.
    identities: HashSet<ByIdentity>,
    families: BTreeMap<Arc<str>, FamilyEntry>,
    /// Every group with a deadline, earliest first (see `expiry`).
    deadlines: BTreeSet<(SystemTime, Arc<GroupingKey>)>,
}

#[derive(Debug)]
struct Group {
    /// Sorted by name: groups are small, and a map's nodes cost more than they save.
    families: Vec<StoredFamily>,
    /// The labels every series of the group has, kept once (see `group_labels`).
    labels: Arc<GroupLabels>,
    /// Its expiry, as the last push asked.
    expiry: Expiry,
    /// When it expires (its entry in `State::deadlines`).
    deadline: Option<SystemTime>,
}

impl Group {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.families
            .binary_search_by(|family| family.name().cmp(name))
    }

    fn contains(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    fn insert(&mut self, stored: StoredFamily) {
        match self.position(stored.name()) {
            Ok(at) => self.families[at] = stored,
            Err(at) => self.families.insert(at, stored),
        }
    }

    fn remove(&mut self, name: &str) -> Option<StoredFamily> {
        self.position(name).ok().map(|at| self.families.remove(at))
    }
}

/// The index entry of one family name across groups.
#[derive(Debug)]
struct FamilyEntry {
    kind: MetricType,
    /// The groups that have the family, in key order (the HELP winner is the first
    /// that has a HELP: fix 2 of the spec).
    members: BTreeMap<Arc<GroupingKey>, StoredFamily>,
    /// The series identity hashes of all members. Only hashes: a push's series are
    /// nearly always its own group's again (found in its own stored family), and the
    /// group of another hash is looked for only when a push is about to be refused. An
    /// owner per hash doubled the index, which was a tenth of the store's memory.
    series: HashSet<u64>,
    /// The merged family rendered in each format, until the next change to it.
    rendered: Mutex<RenderCache>,
    /// Whether a member has a non-legacy name, so that scrapes see it escaped as they
    /// negotiated (see `render`); false in every store without UTF-8 names.
    utf8_names: bool,
}

impl MetricStore {
    /// An empty store that rejects pushes of the `reserved` names.
    #[must_use]
    pub fn new(reserved: ReservedNames) -> Self {
        Self {
            state: RwLock::new(State::default()),
            reserved,
            version: watch::Sender::new(0),
            default_ttl: None,
            expired: Arc::default(),
            names: NameRules::Legacy,
        }
    }

    /// The store with `names` as the rules for pushed names (legacy by default).
    #[must_use]
    pub fn with_names(mut self, names: NameRules) -> Self {
        self.names = names;
        self
    }

    /// The rules for pushed names.
    #[must_use]
    pub fn name_rules(&self) -> NameRules {
        self.names
    }

    /// Applies one write at `now`.
    ///
    /// A `Put`/`Post` that passes the check replaces families and sets the group's
    /// `push_time_seconds` to `now` (adding `push_failure_time_seconds` 0 if absent).
    /// One that fails leaves everything as it was, except that the group's
    /// `push_failure_time_seconds` becomes `now`, the group being created (with
    /// `push_time_seconds` 0) if it did not exist, unless creating it would itself
    /// clash with a group exposing the same labels. `Delete` and `Wipe` never fail.
    pub fn apply(&self, command: WriteCommand, now: SystemTime) -> Result<(), StoreError> {
        match command {
            WriteCommand::Put { key, families, ttl } => {
                self.push(key, families, true, ttl, now, true)
            }
            WriteCommand::Post { key, families, ttl } => {
                self.push(key, families, false, ttl, now, true)
            }
            WriteCommand::Delete { key } => {
                let removed = self.write().remove_group(&key);
                if removed {
                    self.bump();
                }
                Ok(())
            }
            WriteCommand::Wipe => {
                let mut state = self.write();
                let changed = !state.groups.is_empty();
                *state = State::default();
                drop(state);
                if changed {
                    self.bump();
                }
                Ok(())
            }
        }
    }

    /// Like [`apply`](Self::apply) for `Put` and `Post`, but a write that fails the
    /// check leaves the store exactly as it was (no `push_failure_time_seconds`): for
    /// OTLP exports, whose senders learn of the failure from the answer and whose
    /// specification wants a refused export to change nothing. `Delete` and `Wipe` are
    /// applied as by `apply`.
    pub fn apply_or_leave(&self, command: WriteCommand, now: SystemTime) -> Result<(), StoreError> {
        match command {
            WriteCommand::Put { key, families, ttl } => {
                self.push(key, families, true, ttl, now, false)
            }
            WriteCommand::Post { key, families, ttl } => {
                self.push(key, families, false, ttl, now, false)
            }
            other => self.apply(other, now),
        }
    }

    fn push(
        &self,
        key: GroupingKey,
        families: Vec<MetricFamily>,
        replace: bool,
        ttl: Ttl,
        now: SystemTime,
        record_failure: bool,
    ) -> Result<(), StoreError> {
        // The checks that need only the push, and the rendering, run before taking the
        // lock: they take time in proportion to the push, and every other push and
        // scrape would wait for them. Under the lock only the index is consulted and
        // the rendered families are swapped in.
        let group = Arc::new(GroupLabels::of(&key));
        let prepared = prepare(&key, families, &self.reserved, self.names).map(|mut prepared| {
            let stored = StoredFamily::new_all(
                prepared.iter_mut().map(
                    |PreparedFamily {
                         family,
                         kind,
                         hashes,
                     }| (family, *kind, hashes.as_slice()),
                ),
                now,
                &group,
            );
            (prepared, stored)
        });
        let mut state = self.write();
        let verdict = prepared.and_then(|(prepared, stored)| {
            state.check(&key, &prepared, &stored, replace)?;
            Ok((prepared, stored))
        });
        match verdict {
            Ok((prepared, stored)) => {
                let key = state.store_push(key, &prepared, stored, replace, now);
                state.set_expiry(&key, Expiry::of_push(ttl, now), now, self.default_ttl);
                drop(state);
                self.bump();
                Ok(())
            }
            Err(inconsistency) if !record_failure => {
                drop(state);
                Err(StoreError::Inconsistent(inconsistency))
            }
            Err(inconsistency) => {
                let changed = state.record_failure(key, now, self.default_ttl);
                drop(state);
                if changed {
                    self.bump();
                }
                Err(StoreError::Inconsistent(inconsistency))
            }
        }
    }

    /// Loads restored groups into the store, checking each like a push; groups that
    /// fail (e.g. a name reserved since they were stored) are skipped and returned.
    pub fn restore(&self, groups: Vec<RestoredGroup>) -> Vec<(GroupingKey, Inconsistency)> {
        let mut skipped = Vec::new();
        let mut state = self.write();
        for group in groups {
            let mut gauges = Vec::new();
            let mut pushed = Vec::new();
            for (family, at) in group.families {
                match family.name.as_deref() {
                    Some(PUSH_TIME_NAME | PUSH_FAILURE_TIME_NAME) => gauges.push((family, at)),
                    _ => pushed.push((family, at)),
                }
            }
            let times: HashMap<String, SystemTime> = pushed
                .iter()
                .map(|(family, at)| (family.name.clone().unwrap_or_default(), *at))
                .collect();
            let families = pushed.into_iter().map(|(family, _)| family).collect();
            let labels = Arc::new(GroupLabels::of(&group.key));
            let verdict = prepare(&group.key, families, &self.reserved, self.names).and_then(
                |mut prepared| {
                    if state.groups.contains_key(&group.key) {
                        // Two records for one key: the file was not written by us.
                        return Err(Inconsistency::GroupIdentityClash {
                            key: group.key.to_string(),
                            existing: group.key.to_string(),
                        });
                    }
                    let stored: Vec<StoredFamily> = prepared
                        .iter_mut()
                        .map(|p| {
                            let name = p.family.name.as_deref().unwrap_or_default();
                            let pushed_at =
                                times.get(name).copied().unwrap_or(SystemTime::UNIX_EPOCH);
                            StoredFamily::new(&mut p.family, p.kind, &p.hashes, pushed_at, &labels)
                        })
                        .collect();
                    state.check(&group.key, &prepared, &stored, true)?;
                    Ok(stored)
                },
            );
            match verdict {
                Ok(stored) => {
                    let key = state.store_restored(&group.key, stored, &gauges);
                    // Expiry counts from the last push, as the push gauge's time says.
                    let pushed_at = gauges
                        .iter()
                        .find(|(family, _)| family.name.as_deref() == Some(PUSH_TIME_NAME))
                        .map_or(SystemTime::UNIX_EPOCH, |(_, at)| *at);
                    state.set_expiry(&key, group.expiry, pushed_at, self.default_ttl);
                }
                Err(inconsistency) => skipped.push((group.key, inconsistency)),
            }
        }
        drop(state);
        self.bump();
        skipped
    }

    /// A consistent copy of every group, in grouping-key order.
    #[must_use]
    pub fn snapshot(&self) -> Vec<GroupSnapshot> {
        let state = self.read();
        state
            .groups
            .iter()
            .map(|(key, group)| GroupSnapshot {
                key: Arc::clone(key),
                families: group.families.clone(),
                expiry: group.expiry,
                deadline: group.deadline,
            })
            .collect()
    }

    /// The families of one group as stored (grouping labels applied, push gauges
    /// included), or `None` without such a group. For writers that build on what a
    /// group holds (OTLP delta exports).
    #[must_use]
    pub fn group_families(&self, key: &GroupingKey) -> Option<Vec<MetricFamily>> {
        let state = self.read();
        let group = state.groups.get(key)?;
        Some(group.families.iter().map(StoredFamily::family).collect())
    }

    /// Number of groups.
    #[must_use]
    pub fn group_count(&self) -> usize {
        self.read().groups.len()
    }

    /// The change counter: it moves on every change of the store.
    #[must_use]
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// A receiver that sees [`version`](Self::version) move.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn bump(&self) {
        self.version.send_modify(|version| *version += 1);
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied write behind that
        // readers could trip over more than over a dead server; keep serving.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// The checks of a prepared push against the other groups.
    ///
    /// `stored` are the prepared families rendered, in the same order; a prepared
    /// family's metrics may have been dropped once rendered (see
    /// [`StoredFamily::new_all`]), so a series is looked at in its stored form.
    fn check(
        &self,
        key: &GroupingKey,
        prepared: &[PreparedFamily],
        stored: &[StoredFamily],
        replace: bool,
    ) -> Result<(), Inconsistency> {
        let existing = self.groups.get(key);
        if existing.is_none() {
            if let Some(other) = self.identities.get(&ByIdentity::of(key)) {
                return Err(Inconsistency::GroupIdentityClash {
                    key: key.to_string(),
                    existing: other.0.to_string(),
                });
            }
        }
        let pushed: HashMap<&str, &PreparedFamily> = prepared
            .iter()
            .map(|p| (p.family.name.as_deref().unwrap_or_default(), p))
            .collect();
        // The type a family name will have once the push is stored.
        let kind_after = |name: &str| -> Option<MetricType> {
            if let Some(p) = pushed.get(name) {
                return Some(p.kind);
            }
            let entry = self.families.get(name)?;
            let only_this_group = entry.members.len() == 1 && entry.members.contains_key(key);
            let removed_by_put = replace && !is_push_gauge(name);
            (!(only_this_group && removed_by_put)).then_some(entry.kind)
        };
        for (p, rendered) in prepared.iter().zip(stored) {
            let name = p.family.name.as_deref().unwrap_or_default();
            if let Some(entry) = self.families.get(name) {
                if entry.kind != p.kind {
                    if let Some(other) = entry.members.keys().find(|k| k.as_ref() != key) {
                        return Err(Inconsistency::TypeClash {
                            family: name.to_owned(),
                            pushed: go_type_name(p.kind),
                            existing: go_type_name(entry.kind),
                            group: other.to_string(),
                        });
                    }
                }
                // This group's own stored hashes, sorted, taken at the first hit.
                let mut own: Option<Vec<u64>> = None;
                // The pushed family decoded back, taken at the first hash another group
                // has (rare: a push about to be refused, or a hash collision).
                let mut ours: Option<MetricFamily> = None;
                for (i, hash) in p.hashes.iter().enumerate() {
                    if !entry.series.contains(hash) {
                        continue;
                    }
                    let own = own.get_or_insert_with(|| {
                        let mut own: Vec<u64> = entry
                            .members
                            .get(key)
                            .map(|stored| stored.hashes().collect())
                            .unwrap_or_default();
                        own.sort_unstable();
                        own
                    });
                    if own.binary_search(hash).is_ok() {
                        continue;
                    }
                    // Another group has the hash; confirm on its metrics: equal hashes may
                    // still differ.
                    let ours = ours.get_or_insert_with(|| rendered.family());
                    let Some(metric) = ours.metric.get(i) else {
                        continue;
                    };
                    let owner = entry.members.iter().find(|(owner, stored)| {
                        owner.as_ref() != key
                            && stored.hashes().any(|theirs| theirs == *hash)
                            && stored
                                .family()
                                .metric
                                .iter()
                                .any(|theirs| same_identity(&theirs.label, &metric.label))
                    });
                    if let Some((owner, _)) = owner {
                        return Err(Inconsistency::DuplicateSeries {
                            family: name.to_owned(),
                            metric: check::go_metric_text(metric),
                            other_group: Some(owner.to_string()),
                        });
                    }
                }
            }
            if let Some(clash) = suffix_clash(name, kind_after) {
                return Err(clash);
            }
        }
        Ok(())
    }

    /// Stores a push that passed the check.
    fn store_push(
        &mut self,
        key: GroupingKey,
        prepared: &[PreparedFamily],
        stored: Vec<StoredFamily>,
        replace: bool,
        now: SystemTime,
    ) -> Arc<GroupingKey> {
        let key = self.ensure_group(key);
        if replace {
            // Families the push brings are replaced below; removing them first too would
            // drop and rebuild their index entries when this group is their only member.
            // `prepared` is sorted by name.
            let pushed = |name: &str| {
                prepared
                    .binary_search_by(|p| p.family.name.as_deref().unwrap_or_default().cmp(name))
                    .is_ok()
            };
            let stale: Vec<String> = self.groups[&key]
                .families
                .iter()
                .map(StoredFamily::name)
                .filter(|name| !is_push_gauge(name) && !pushed(name))
                .map(str::to_owned)
                .collect();
            for name in stale {
                self.remove_member(&key, &name);
            }
        }
        for stored in stored {
            self.insert_member(&key, stored);
        }
        self.set_gauge(&key, PUSH_TIME_NAME, PUSH_TIME_HELP, unix_seconds(now), now);
        if !self.groups[&key].contains(PUSH_FAILURE_TIME_NAME) {
            self.set_gauge(
                &key,
                PUSH_FAILURE_TIME_NAME,
                PUSH_FAILURE_TIME_HELP,
                0.0,
                now,
            );
        }
        if let Some(group) = self.groups.get_mut(&key) {
            // A new group's vector grew by doubling; every group keeps its slack.
            group.families.shrink_to_fit();
        }
        key
    }

    /// Records a rejected push; returns whether anything changed.
    fn record_failure(
        &mut self,
        key: GroupingKey,
        now: SystemTime,
        default_ttl: Option<Duration>,
    ) -> bool {
        if !self.groups.contains_key(&key) {
            if self.identities.contains(&ByIdentity::of(&key)) {
                // Creating the group would expose the same push gauges twice.
                return false;
            }
            let key = self.ensure_group(key);
            // A group made by a failed push expires like one made by a push.
            self.set_expiry(&key, Expiry::Default, now, default_ttl);
            self.set_gauge(&key, PUSH_TIME_NAME, PUSH_TIME_HELP, 0.0, now);
            self.set_gauge(
                &key,
                PUSH_FAILURE_TIME_NAME,
                PUSH_FAILURE_TIME_HELP,
                unix_seconds(now),
                now,
            );
            return true;
        }
        let key = self.ensure_group(key);
        self.set_gauge(
            &key,
            PUSH_FAILURE_TIME_NAME,
            PUSH_FAILURE_TIME_HELP,
            unix_seconds(now),
            now,
        );
        true
    }

    fn store_restored(
        &mut self,
        key: &GroupingKey,
        stored: Vec<StoredFamily>,
        gauges: &[(MetricFamily, SystemTime)],
    ) -> Arc<GroupingKey> {
        let key = self.ensure_group(key.clone());
        for stored in stored {
            self.insert_member(&key, stored);
        }
        for (name, help) in [
            (PUSH_TIME_NAME, PUSH_TIME_HELP),
            (PUSH_FAILURE_TIME_NAME, PUSH_FAILURE_TIME_HELP),
        ] {
            let restored = gauges
                .iter()
                .find(|(family, _)| family.name.as_deref() == Some(name))
                .and_then(|(family, at)| {
                    let value = family.metric.first()?.gauge.as_ref()?.value?;
                    Some((value, *at))
                });
            let (value, at) = restored.unwrap_or((0.0, SystemTime::UNIX_EPOCH));
            self.set_gauge(&key, name, help, value, at);
        }
        if let Some(group) = self.groups.get_mut(&key) {
            group.families.shrink_to_fit();
        }
        key
    }

    /// The group's shared key, creating the group if needed.
    fn ensure_group(&mut self, key: GroupingKey) -> Arc<GroupingKey> {
        if let Some((existing, _)) = self.groups.get_key_value(&key) {
            return Arc::clone(existing);
        }
        let key = Arc::new(key);
        self.identities.insert(ByIdentity(Arc::clone(&key)));
        let group = Group {
            families: Vec::new(),
            labels: Arc::new(GroupLabels::of(&key)),
            expiry: Expiry::Default,
            deadline: None,
        };
        self.groups.insert(Arc::clone(&key), group);
        key
    }

    fn remove_group(&mut self, key: &GroupingKey) -> bool {
        let Some((key, group)) = self.groups.remove_entry(key) else {
            return false;
        };
        for stored in &group.families {
            self.unindex(&key, stored.name(), stored);
        }
        self.forget_deadline(&key, group.deadline);
        self.identities.remove(&ByIdentity(key));
        true
    }

    fn set_gauge(
        &mut self,
        key: &Arc<GroupingKey>,
        name: &str,
        help: &str,
        value: f64,
        at: SystemTime,
    ) {
        let mut metric = Metric {
            gauge: Some(Gauge { value: Some(value) }),
            ..Metric::default()
        };
        apply_grouping_labels(&mut metric, key);
        let hash = series_hash(&metric.label);
        let mut family = MetricFamily {
            name: Some(name.to_owned()),
            help: Some(help.to_owned()),
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![metric],
            unit: None,
        };
        let Some(group) = self.groups.get(key) else {
            return;
        };
        let stored = StoredFamily::new(&mut family, MetricType::Gauge, &[hash], at, &group.labels);
        self.insert_member(key, stored);
    }

    /// Puts `stored` into the group and the index, replacing a same-named family.
    fn insert_member(&mut self, key: &Arc<GroupingKey>, stored: StoredFamily) {
        let kind = stored.kind();
        let name = stored.name();
        if !self.families.contains_key(name) {
            let entry = FamilyEntry {
                kind,
                members: BTreeMap::new(),
                series: HashSet::new(),
                rendered: Mutex::new(RenderCache::default()),
                utf8_names: false,
            };
            self.families.insert(Arc::from(name), entry);
        }
        let entry = self.families.get_mut(name).expect("inserted above");
        // The replaced family leaves the index while the entry stays: dropping the entry
        // with it would rebuild its maps on every push of a group that is alone in it.
        if let Some(old) = entry.members.insert(Arc::clone(key), stored.clone()) {
            entry.forget_series(&old);
        }
        entry.kind = kind;
        entry.series.extend(stored.hashes());
        entry.note_utf8_names(stored.has_utf8_names());
        entry.invalidate();
        if let Some(group) = self.groups.get_mut(key) {
            group.insert(stored);
        }
    }

    /// Takes the group's family `name` out of the group and the index, if present.
    fn remove_member(&mut self, key: &Arc<GroupingKey>, name: &str) {
        let Some(group) = self.groups.get_mut(key) else {
            return;
        };
        let Some(stored) = group.remove(name) else {
            return;
        };
        self.unindex(key, name, &stored);
    }

    fn unindex(&mut self, key: &GroupingKey, name: &str, stored: &StoredFamily) {
        let Some(entry) = self.families.get_mut(name) else {
            return;
        };
        entry.members.remove(key);
        entry.forget_series(stored);
        entry.note_utf8_names(false);
        if entry.members.is_empty() {
            self.families.remove(name);
        } else {
            // A member leaving takes its lines out of the cached rendering at the next
            // scrape, without sorting everything again (expiry removes many at once).
            entry
                .rendered
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .forget_member(key);
        }
    }
}

impl FamilyEntry {
    /// Takes the series of `stored`, a member's family, out of the index. Another
    /// member can share a hash only by a (2^-64) collision of different series, whose
    /// hash then leaves with the first of them to go.
    fn forget_series(&mut self, stored: &StoredFamily) {
        for hash in stored.hashes() {
            self.series.remove(&hash);
        }
    }

    /// Keeps `utf8_names` true while a member has such a name; `added` says whether
    /// the member that just joined has one. Members are counted again only in
    /// families that had one: the others never pay for it.
    fn note_utf8_names(&mut self, added: bool) {
        if added || self.utf8_names {
            self.utf8_names = self.members.values().any(StoredFamily::has_utf8_names);
        }
    }

    fn invalidate(&mut self) {
        *self
            .rendered
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = RenderCache::default();
    }
}

/// A group's key, hashed and compared by its identity (its non-empty labels): the
/// key of the group that a new group's push gauges would collide with.
#[derive(Debug)]
struct ByIdentity(Arc<GroupingKey>);

impl ByIdentity {
    /// For a look-up (a copy: looking up happens only when a group is created).
    fn of(key: &GroupingKey) -> Self {
        Self(Arc::new(key.clone()))
    }
}

impl PartialEq for ByIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.0.identity().eq(other.0.identity())
    }
}

impl Eq for ByIdentity {}

impl Hash for ByIdentity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for label in self.0.identity() {
            label.hash(state);
        }
    }
}

fn is_push_gauge(name: &str) -> bool {
    name == PUSH_TIME_NAME || name == PUSH_FAILURE_TIME_NAME
}

/// Seconds since the epoch as upstream computes them: `UnixNano() / 1e9`.
#[allow(clippy::cast_precision_loss)]
fn unix_seconds(at: SystemTime) -> f64 {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as f64 / 1e9,
        Err(before) => -(before.duration().as_nanos() as f64) / 1e9,
    }
}

#[cfg(test)]
mod tests;
