//! Contract §5.3 on the wire: the network snapshot a node reads from `truebit.stats.aggregated`
//! and the `truebit-stats` KV bucket, the periods it is computed over, and the `stats` query.
//!
//! The numbers are computed by the projections; this module owns only their shape, so that every
//! reader of the project finds what a node receives in one place.

use crate::event::Minute;
use crate::names::LATEST_KEY;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::fmt;

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

    /// The KV key that holds the same JSON as `truebit.stats.aggregated`: only `all` has one.
    pub fn latest_key(self) -> Option<&'static str> {
        (self == Period::All).then_some(LATEST_KEY)
    }
}

/// `1h`, `24h`, `7d` or `all`, for the command line and a query; the error names them.
impl std::str::FromStr for Period {
    type Err = String;

    fn from_str(s: &str) -> Result<Period, String> {
        Period::parse(s).ok_or_else(|| format!("period {s:?} is not one of 1h, 24h, 7d, all"))
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

/// `100 * part / whole` to one decimal, half away from zero, in exact integer arithmetic.
pub fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    let tenths = (2000 * part as u128 + whole as u128) / (2 * whole as u128);
    tenths as f64 / 10.0
}

impl Snapshot {
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

/// A `stats` request to a running `serve` (request-reply on [`crate::subjects::STATS_QUERY`]):
/// `{"period": "all", "at": "<RFC 3339>"}`, both optional. The reply is the object stored under
/// `period.<P>`, or `{"error": "..."}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// An `admin-key` request to a running `serve` (request-reply on
/// [`crate::subjects::ADMIN_KEY_QUERY`]): `{"adminKey": "U…"}`, or `null` for none. The reply is
/// `{"ok": true}`, or the micro protocol's error headers saying what differs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminKeyQuery {
    #[serde(rename = "adminKey")]
    pub admin_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
