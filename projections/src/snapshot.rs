//! Contract §5.3: the network snapshot at time `T` over a period `P`, and its JSON.

use crate::counters::Counters;
use serde_json::{json, Map, Value};
use std::fmt;
use truebit_streams::{ExecutionTime, Magnitude, Memory, Minute};

/// The periods a snapshot is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Hour,
    Day,
    Week,
    All,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::Hour, Period::Day, Period::Week, Period::All];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "1h",
            Period::Day => "24h",
            Period::Week => "7d",
            Period::All => "all",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The window's length in minutes; `None` for all time.
    pub fn minutes(self) -> Option<i64> {
        match self {
            Period::Hour => Some(60),
            Period::Day => Some(24 * 60),
            Period::Week => Some(7 * 24 * 60),
            Period::All => None,
        }
    }

    /// The KV key that holds this period's snapshot.
    pub fn kv_key(self) -> String {
        format!("period.{}", self.as_str())
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many distinct values a chain or task-type distribution shows before folding the rest
/// into `other`.
pub const MAX_DISTINCT: usize = 32;

/// One snapshot, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub at: Minute,
    pub period: Period,
    pub active_nodes: u64,
    pub total_nodes: u64,
    pub total_tasks: u64,
    pub completed_tasks: u64,
    pub failed_tasks: u64,
    pub cached_tasks: u64,
    pub tasks_last_24h: u64,
    pub total_invoices: u64,
    pub invoices_last_24h: u64,
    pub execution_time_distribution: Vec<(&'static str, u64)>,
    pub gas_usage_distribution: Vec<(&'static str, u64)>,
    pub steps_computed_distribution: Vec<(&'static str, u64)>,
    pub memory_used_distribution: Vec<(&'static str, u64)>,
    pub chain_distribution: Vec<(String, u64)>,
    pub task_type_distribution: Vec<(String, u64)>,
    pub continent_distribution: Vec<(String, u64)>,
    pub location_distribution: Vec<(String, u64)>,
}

/// A count that the fold keeps non-negative; shown as zero if it ever were not.
fn count(v: i64) -> u64 {
    debug_assert!(
        v >= 0,
        "a negative count: the fold took out more than it put in"
    );
    v.max(0) as u64
}

fn labelled<L: Copy>(
    all: &[L],
    label: impl Fn(L) -> &'static str,
    counts: &[i64],
) -> Vec<(&'static str, u64)> {
    all.iter()
        .zip(counts)
        .map(|(l, c)| (label(*l), count(*c)))
        .collect()
}

/// Keys by count, most first (ties: smaller key first); past [`MAX_DISTINCT`] keys, the 31 most
/// frequent and `other` holding the rest.
fn ranked(map: &std::collections::BTreeMap<String, i64>, capped: bool) -> Vec<(String, u64)> {
    let mut entries: Vec<(String, u64)> = map
        .iter()
        .map(|(k, v)| (k.clone(), count(*v)))
        .filter(|(_, c)| *c > 0)
        .collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if capped && entries.len() > MAX_DISTINCT {
        let rest: u64 = entries.drain(MAX_DISTINCT - 1..).map(|(_, c)| c).sum();
        match entries.iter_mut().find(|(k, _)| k == "other") {
            Some((_, c)) => *c += rest,
            None => entries.push(("other".to_string(), rest)),
        }
    }
    entries
}

/// `100 * part / whole` to one decimal, half away from zero, in exact integer arithmetic.
pub fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    let tenths = (2000 * part as u128 + whole as u128) / (2 * whole as u128);
    tenths as f64 / 10.0
}

impl Snapshot {
    /// Builds the snapshot from the counters of its window, of the last five minutes and of the
    /// last day.
    pub(crate) fn new(
        at: Minute,
        period: Period,
        window: &Counters,
        recent: &Counters,
        day: &Counters,
        total_nodes: u64,
    ) -> Self {
        Snapshot {
            at,
            period,
            active_nodes: count(recent.online_nodes),
            total_nodes,
            total_tasks: count(window.tasks),
            completed_tasks: count(window.completed),
            failed_tasks: count(window.failed),
            cached_tasks: count(window.cached),
            tasks_last_24h: count(day.tasks),
            total_invoices: count(window.invoices),
            invoices_last_24h: count(day.invoices),
            execution_time_distribution: labelled(
                ExecutionTime::ALL,
                ExecutionTime::label,
                &window.execution_time,
            ),
            gas_usage_distribution: labelled(Magnitude::ALL, Magnitude::label, &window.gas_used),
            steps_computed_distribution: labelled(
                Magnitude::ALL,
                Magnitude::label,
                &window.steps_computed,
            ),
            memory_used_distribution: labelled(Memory::ALL, Memory::label, &window.memory_used),
            chain_distribution: ranked(&window.chains, true),
            task_type_distribution: ranked(&window.task_types, true),
            continent_distribution: ranked(&window.continents, false),
            location_distribution: ranked(&window.locations, false),
        }
    }

    pub fn success_rate(&self) -> f64 {
        rate(
            self.completed_tasks,
            self.completed_tasks + self.failed_tasks,
        )
    }

    pub fn cache_hit_rate(&self) -> f64 {
        rate(self.cached_tasks, self.total_tasks)
    }

    /// `T` as the contract writes it: RFC 3339 in UTC with milliseconds.
    pub fn timestamp(&self) -> String {
        chrono::DateTime::<chrono::Utc>::from_timestamp(self.at * 60, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_default()
    }

    /// The message published on `truebit.stats.aggregated` and stored under `latest`.
    pub fn to_message(&self) -> Value {
        json!({"version": "1.0", "type": "network_stats", "timestamp": self.timestamp(), "data": self.data()})
    }

    /// The object stored under `period.<P>`: the message with `"period"` beside `"timestamp"`.
    pub fn to_period_message(&self) -> Value {
        json!({"version": "1.0", "type": "network_stats", "timestamp": self.timestamp(),
               "period": self.period.as_str(), "data": self.data()})
    }

    fn data(&self) -> Value {
        fn object<K: AsRef<str>>(entries: &[(K, u64)]) -> Value {
            Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.as_ref().to_string(), json!(v)))
                    .collect::<Map<_, _>>(),
            )
        }
        json!({
            "activeNodes": self.active_nodes,
            "totalNodes": self.total_nodes,
            "totalTasks": self.total_tasks,
            "completedTasks": self.completed_tasks,
            "failedTasks": self.failed_tasks,
            "cachedTasks": self.cached_tasks,
            "tasksLast24h": self.tasks_last_24h,
            "successRate": self.success_rate(),
            "cacheHitRate": self.cache_hit_rate(),
            "totalInvoices": self.total_invoices,
            "invoicesLast24h": self.invoices_last_24h,
            "executionTimeDistribution": object(&self.execution_time_distribution),
            "gasUsageDistribution": object(&self.gas_usage_distribution),
            "stepsComputedDistribution": object(&self.steps_computed_distribution),
            "memoryUsedDistribution": object(&self.memory_used_distribution),
            "chainDistribution": object(&self.chain_distribution),
            "taskTypeDistribution": object(&self.task_type_distribution),
            "continentDistribution": object(&self.continent_distribution),
            "locationDistribution": object(&self.location_distribution),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn rates_round_half_away_from_zero_exactly() {
        assert_eq!(rate(0, 0), 0.0);
        assert_eq!(rate(1, 16), 6.3, "6.25 rounds up");
        assert_eq!(rate(2, 3), 66.7);
        assert_eq!(rate(1520, 1547), 98.3);
        assert_eq!(rate(5, 5), 100.0);
        assert_eq!(rate(1, 3), 33.3);
        assert_eq!(rate(1, 2000), 0.1, "0.05 rounds up");
        assert_eq!(rate(1, 2001), 0.0);
    }

    #[test]
    fn more_than_32_values_fold_into_other() {
        let map: BTreeMap<String, i64> = (0..40)
            .map(|i| (format!("{i:02}"), 100 - i as i64))
            .collect();
        let r = ranked(&map, true);
        assert_eq!(r.len(), 32);
        assert_eq!(r[0], ("00".to_string(), 100));
        assert_eq!(r[30], ("30".to_string(), 70));
        assert_eq!(
            r[31],
            ("other".to_string(), (31..40).map(|i| 100 - i).sum::<u64>())
        );

        let ties: BTreeMap<String, i64> = (0..33).map(|i| (format!("k{i:02}"), 1)).collect();
        let r = ranked(&ties, true);
        assert_eq!(r[0].0, "k00", "ties go to the smaller key");
        assert_eq!(r[31], ("other".to_string(), 2));

        let exactly: BTreeMap<String, i64> = (0..32).map(|i| (format!("{i}"), 1)).collect();
        assert_eq!(
            ranked(&exactly, true).len(),
            32,
            "32 values are shown as they are"
        );
    }
}
