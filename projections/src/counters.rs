//! Time-bucketed counters: what every entity contributes to the minute it is attributed to.
//!
//! A task or invoice is attributed to the minute of its `first_seen_at`, a node to the minute of
//! its `last_seen_at`. When a record changes, its old contribution is taken out and its new one
//! put in, so that each bucket always counts exactly the entities attributed to it. Buckets exist
//! at three levels (minute, hour, day) plus a grand total, and a window is summed from the fewest
//! buckets that cover it: a snapshot costs a few hundred bucket reads whatever the number of tasks.

use crate::records::{InvoiceRecord, NodeRecord, TaskRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use truebit_streams::{Continent, Location, Minute};

pub(crate) const MINUTES_PER_HOUR: i64 = 60;
pub(crate) const MINUTES_PER_DAY: i64 = 1440;

/// Bucket levels in [`crate::tables::COUNTERS`].
pub(crate) const MINUTE: u8 = 0;
pub(crate) const HOUR: u8 = 1;
pub(crate) const DAY: u8 = 2;
pub(crate) const TOTAL: u8 = 3;

/// Counts of the entities attributed to one bucket. Signed, so that the same type carries the
/// deltas of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub tasks: i64,
    pub completed: i64,
    pub failed: i64,
    pub cached: i64,
    pub execution_time: [i64; 8],
    pub gas_used: [i64; 5],
    pub chains: BTreeMap<String, i64>,
    pub task_types: BTreeMap<String, i64>,
    pub invoices: i64,
    pub steps_computed: [i64; 5],
    pub memory_used: [i64; 4],
    /// Nodes whose last heartbeat falls here, and those of them not offline.
    pub nodes: i64,
    pub online_nodes: i64,
    pub continents: BTreeMap<String, i64>,
    pub locations: BTreeMap<String, i64>,
}

fn bump(map: &mut BTreeMap<String, i64>, key: &str, by: i64) {
    let count = map.entry(key.to_string()).or_insert(0);
    *count += by;
    if *count == 0 {
        map.remove(key);
    }
}

fn bump_at(counts: &mut [i64], index: Option<u8>, by: i64) {
    if let Some(slot) = index.and_then(|i| counts.get_mut(i as usize)) {
        *slot += by;
    }
}

/// The key under which a task without a reported value is counted.
pub(crate) const UNKNOWN: &str = "unknown";

impl Counters {
    /// Adds (`sign` 1) or removes (`sign` -1) what a task contributes.
    pub fn task(&mut self, task: &TaskRecord, sign: i64) {
        self.tasks += sign;
        let outcome = task.outcome.as_ref();
        match outcome.and_then(|o| o.success) {
            Some(true) => self.completed += sign,
            Some(false) => self.failed += sign,
            None => {}
        }
        if outcome.and_then(|o| o.cached) == Some(true) {
            self.cached += sign;
        }
        bump_at(
            &mut self.execution_time,
            outcome.and_then(|o| o.execution_time),
            sign,
        );
        bump_at(&mut self.gas_used, outcome.and_then(|o| o.gas_used), sign);
        bump(
            &mut self.chains,
            task.chain_id.as_deref().unwrap_or(UNKNOWN),
            sign,
        );
        bump(
            &mut self.task_types,
            task.task_type.as_deref().unwrap_or(UNKNOWN),
            sign,
        );
    }

    pub fn invoice(&mut self, invoice: &InvoiceRecord, sign: i64) {
        self.invoices += sign;
        bump_at(&mut self.steps_computed, invoice.steps_computed, sign);
        bump_at(&mut self.memory_used, invoice.memory_used, sign);
    }

    pub fn node(&mut self, node: &NodeRecord, sign: i64) {
        self.nodes += sign;
        if !node.offline {
            self.online_nodes += sign;
        }
        if let Some(c) = node
            .continent
            .and_then(|c| Continent::from_index(c as usize))
        {
            bump(&mut self.continents, c.label(), sign);
        }
        if let Some((lat_tenths, lon_tenths)) = node.location {
            bump(
                &mut self.locations,
                &Location {
                    lat_tenths,
                    lon_tenths,
                }
                .to_string(),
                sign,
            );
        }
    }

    /// `self += sign * other`.
    pub fn merge(&mut self, other: &Counters, sign: i64) {
        self.tasks += sign * other.tasks;
        self.completed += sign * other.completed;
        self.failed += sign * other.failed;
        self.cached += sign * other.cached;
        self.invoices += sign * other.invoices;
        self.nodes += sign * other.nodes;
        self.online_nodes += sign * other.online_nodes;
        let arrays: [(&mut [i64], &[i64]); 4] = [
            (&mut self.execution_time, &other.execution_time),
            (&mut self.gas_used, &other.gas_used),
            (&mut self.steps_computed, &other.steps_computed),
            (&mut self.memory_used, &other.memory_used),
        ];
        for (mine, theirs) in arrays {
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m += sign * t;
            }
        }
        let maps = [
            (&mut self.chains, &other.chains),
            (&mut self.task_types, &other.task_types),
            (&mut self.continents, &other.continents),
            (&mut self.locations, &other.locations),
        ];
        for (mine, theirs) in maps {
            for (k, v) in theirs {
                bump(mine, k, sign * v);
            }
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }
}

/// A run of buckets of one level: indexes `from..=to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub level: u8,
    pub from: i64,
    pub to: i64,
}

/// The fewest runs of minute, hour and day buckets that cover the minutes `lo..=hi` exactly.
pub(crate) fn cover(lo: Minute, hi: Minute) -> Vec<Run> {
    let mut runs = Vec::with_capacity(5);
    if lo > hi {
        return runs;
    }
    // Whole hours inside [lo, hi]: hour indexes h1..h2 (exclusive).
    let h1 = ceil_div(lo, MINUTES_PER_HOUR);
    let h2 = (hi + 1).div_euclid(MINUTES_PER_HOUR);
    if h1 >= h2 {
        runs.push(Run {
            level: MINUTE,
            from: lo,
            to: hi,
        });
        return runs;
    }
    if lo < h1 * MINUTES_PER_HOUR {
        runs.push(Run {
            level: MINUTE,
            from: lo,
            to: h1 * MINUTES_PER_HOUR - 1,
        });
    }
    let hours_per_day = MINUTES_PER_DAY / MINUTES_PER_HOUR;
    let d1 = ceil_div(h1, hours_per_day);
    let d2 = h2.div_euclid(hours_per_day);
    if d1 >= d2 {
        runs.push(Run {
            level: HOUR,
            from: h1,
            to: h2 - 1,
        });
    } else {
        if h1 < d1 * hours_per_day {
            runs.push(Run {
                level: HOUR,
                from: h1,
                to: d1 * hours_per_day - 1,
            });
        }
        runs.push(Run {
            level: DAY,
            from: d1,
            to: d2 - 1,
        });
        if d2 * hours_per_day < h2 {
            runs.push(Run {
                level: HOUR,
                from: d2 * hours_per_day,
                to: h2 - 1,
            });
        }
    }
    if h2 * MINUTES_PER_HOUR <= hi {
        runs.push(Run {
            level: MINUTE,
            from: h2 * MINUTES_PER_HOUR,
            to: hi,
        });
    }
    runs
}

fn ceil_div(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// The bucket of each level that `minute` falls in.
pub(crate) fn buckets_of(minute: Minute) -> [(u8, i64); 4] {
    [
        (MINUTE, minute),
        (HOUR, minute.div_euclid(MINUTES_PER_HOUR)),
        (DAY, minute.div_euclid(MINUTES_PER_DAY)),
        (TOTAL, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(run: &Run) -> (i64, i64) {
        match run.level {
            MINUTE => (run.from, run.to),
            HOUR => (run.from * 60, run.to * 60 + 59),
            DAY => (run.from * 1440, run.to * 1440 + 1439),
            _ => unreachable!(),
        }
    }

    proptest! {
        #[test]
        fn runs_cover_the_window_exactly_once(lo in -5_000i64..200_000, len in 0i64..30_000) {
            let hi = lo + len;
            let runs = cover(lo, hi);
            let mut next = lo;
            for run in &runs {
                let (a, b) = span(run);
                prop_assert_eq!(a, next, "{:?}", runs);
                prop_assert!(a <= b);
                next = b + 1;
            }
            prop_assert_eq!(next, hi + 1);
            prop_assert!(runs.len() <= 5);
        }
    }

    #[test]
    fn a_week_costs_a_handful_of_runs() {
        let t = 29_000_017;
        let runs = cover(t - 7 * 1440, t);
        assert_eq!(
            runs.iter().map(|r| r.level).collect::<Vec<_>>(),
            vec![MINUTE, HOUR, DAY, HOUR, MINUTE]
        );
        let buckets: i64 = runs.iter().map(|r| r.to - r.from + 1).sum();
        assert!(buckets < 60 + 24 + 7 + 24 + 60, "{buckets}");
    }

    #[test]
    fn merging_a_delta_and_its_negation_leaves_nothing() {
        let mut c = Counters::default();
        let task = TaskRecord {
            first_seen: 1,
            last_seen: 1,
            received: true,
            chain_id: Some("1".into()),
            task_type: None,
            outcome: None,
            reporters: vec![],
        };
        c.task(&task, 1);
        let copy = c.clone();
        c.merge(&copy, -1);
        assert!(c.is_zero(), "{c:?}");
    }
}
