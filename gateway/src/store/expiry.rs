//! Group expiry (`--push.ttl`, and a push's own `Dropgate-Push-TTL`): a group not
//! pushed to for its time to live goes away, from every view at once.
//!
//! Each group with a deadline has one entry in an ordered set of (deadline, key), kept
//! with the group under the store's lock. A successful push moves its group's entry;
//! a task sleeps until shortly after the earliest deadline ([`SWEEP_DELAY`], so that
//! close deadlines go together) or the next change of the store, and removes the
//! groups whose deadline has passed, checked again under the writer lock, so a group
//! pushed to in the meantime is never removed. A scrape does nothing for
//! expiry: its cost does not grow with the number of groups that may expire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::grouping::GroupingKey;
use crate::model::{Counter, Metric, MetricFamily, MetricType};

use super::{MetricStore, State};

/// Name of the family that counts expired groups.
pub const GROUPS_EXPIRED_TOTAL: &str = "dropgate_gateway_groups_expired_total";

/// How long a group may go without a push, as one push asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ttl {
    /// The gateway's `--push.ttl` (never, when that is 0).
    #[default]
    Default,
    /// Never: the group stays until deleted.
    Never,
    /// This long after the push.
    After(Duration),
}

/// A group's expiry as the store keeps and persists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiry {
    /// `--push.ttl` after the group's last push (whatever it is at the time: a
    /// restart with another `--push.ttl` applies the new one).
    #[default]
    Default,
    /// At this time (the push asked for its own time to live).
    At(SystemTime),
    /// Never (the push asked for that).
    Never,
}

impl Expiry {
    /// What a push at `now` asking for `ttl` gives its group.
    pub(crate) fn of_push(ttl: Ttl, now: SystemTime) -> Self {
        match ttl {
            Ttl::Default => Self::Default,
            Ttl::Never => Self::Never,
            Ttl::After(ttl) => now.checked_add(ttl).map_or(Self::Never, Self::At),
        }
    }

    /// The deadline, for a group last pushed at `pushed_at`, under `default`.
    pub(crate) fn deadline(
        self,
        pushed_at: SystemTime,
        default: Option<Duration>,
    ) -> Option<SystemTime> {
        match self {
            Self::Default => pushed_at.checked_add(default?),
            Self::At(at) => Some(at),
            Self::Never => None,
        }
    }
}

/// Groups expired since start, exposed as [`GROUPS_EXPIRED_TOTAL`] (at 0 from the
/// start, so that a rate works before the first expiry).
#[derive(Debug, Default)]
pub struct GroupsExpired(AtomicU64);

impl GroupsExpired {
    /// Groups expired so far.
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, count: u64) {
        self.0.fetch_add(count, Ordering::Relaxed);
    }

    /// The family as exposed on `/metrics`.
    #[must_use]
    pub fn family(&self) -> MetricFamily {
        MetricFamily {
            name: Some(GROUPS_EXPIRED_TOTAL.to_owned()),
            help: Some(
                "Groups removed because they were not pushed to within their time to live."
                    .to_owned(),
            ),
            r#type: Some(MetricType::Counter as i32),
            metric: vec![Metric {
                #[allow(clippy::cast_precision_loss)] // Exact far beyond any real count.
                counter: Some(Counter {
                    value: Some(self.get() as f64),
                    ..Counter::default()
                }),
                ..Metric::default()
            }],
            unit: None,
        }
    }
}

impl MetricStore {
    /// Expires groups after `--push.ttl` (`ttl`; zero: never, unless a push asks) and
    /// counts them in `expired`.
    #[must_use]
    pub fn with_expiry(mut self, ttl: Duration, expired: Arc<GroupsExpired>) -> Self {
        self.default_ttl = (!ttl.is_zero()).then_some(ttl);
        self.expired = expired;
        self
    }

    /// Removes every group whose deadline is `now` or earlier; returns how many.
    pub fn expire(&self, now: SystemTime) -> usize {
        if self.next_deadline().is_none_or(|at| at > now) {
            return 0;
        }
        let mut state = self.write();
        let mut expired = 0;
        while let Some((at, key)) = state.deadlines.first() {
            if *at > now {
                break;
            }
            let key = Arc::clone(key);
            state.remove_group(&key);
            expired += 1;
        }
        drop(state);
        if expired > 0 {
            self.expired.add(expired as u64);
            tracing::debug!(groups = expired, "groups expired");
            self.bump();
        }
        expired
    }

    /// The earliest deadline of a group, if any group has one.
    #[must_use]
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.read().deadlines.first().map(|(at, _)| *at)
    }

    /// Groups expired since start.
    #[must_use]
    pub fn groups_expired(&self) -> u64 {
        self.expired.get()
    }
}

impl State {
    /// Gives the group `key` (which exists) `expiry`, for a push at `pushed_at`.
    pub(super) fn set_expiry(
        &mut self,
        key: &Arc<GroupingKey>,
        expiry: Expiry,
        pushed_at: SystemTime,
        default: Option<Duration>,
    ) {
        let deadline = expiry.deadline(pushed_at, default);
        let Some(group) = self.groups.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(&mut group.deadline, deadline);
        group.expiry = expiry;
        if let Some(old) = old {
            self.deadlines.remove(&(old, Arc::clone(key)));
        }
        if let Some(deadline) = deadline {
            self.deadlines.insert((deadline, Arc::clone(key)));
        }
    }

    /// Forgets the deadline of a group that is being removed.
    pub(super) fn forget_deadline(&mut self, key: &Arc<GroupingKey>, deadline: Option<SystemTime>) {
        if let Some(deadline) = deadline {
            self.deadlines.remove(&(deadline, Arc::clone(key)));
        }
    }
}

/// How long after the earliest deadline the task sweeps: every group due by then goes
/// in the same sweep, so that groups whose deadlines are close together cost the
/// cached exposition one re-render (each removal invalidates the families the group
/// had), not one each; and a group goes at most this much after its deadline.
pub const SWEEP_DELAY: Duration = Duration::from_millis(250);

/// Expires `store`'s groups, until aborted: sleeps until [`SWEEP_DELAY`] after the
/// earliest deadline, or until the store changes (a push may bring an earlier one).
pub async fn run(store: Arc<MetricStore>) {
    let mut store_version = store.subscribe();
    loop {
        store_version.borrow_and_update();
        let sweep_at = store.next_deadline().map(|at| {
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + wait + SWEEP_DELAY
        });
        let woken = match sweep_at {
            Some(sweep_at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(sweep_at) => {
                        store.expire(SystemTime::now());
                        Ok(())
                    }
                    moved = store_version.changed() => moved,
                }
            }
            None => store_version.changed().await,
        };
        if woken.is_err() {
            return;
        }
    }
}
