//! Contract §8's history record: what every publish appends to `TRUEBIT_STATS` on
//! `truebit.stats.history`, the plan's `network_stats` table. Compact, so that a year of records
//! at one per 30 s stays small, and readable by any NATS client:
//!
//! ```json
//! {"t":"2026-11-25T10:30:00.000Z","seq":4711,"activeNodes":12,"totalNodes":25,
//!  "tasks":1000,"completed":900,"failed":50,"cached":100,"invoices":400}
//! ```
//!
//! `t` is the snapshot time `T`, `seq` the last stream sequence folded into the snapshot, and the
//! task and invoice figures are the headline ones of P = all.

use crate::event::Minute;
use crate::snapshot::Snapshot;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// The snapshot time, RFC 3339 with milliseconds in UTC (as the snapshot's `timestamp`).
    pub t: String,
    pub seq: u64,
    #[serde(rename = "activeNodes")]
    pub active_nodes: u64,
    #[serde(rename = "totalNodes")]
    pub total_nodes: u64,
    pub tasks: u64,
    pub completed: u64,
    pub failed: u64,
    pub cached: u64,
    pub invoices: u64,
}

impl HistoryRecord {
    /// The record of a published snapshot of P = all, which folded up to `seq`.
    pub fn of(all: &Snapshot, seq: u64) -> Self {
        HistoryRecord {
            t: all.timestamp(),
            seq,
            active_nodes: all.active_nodes,
            total_nodes: all.total_nodes,
            tasks: all.total_tasks,
            completed: all.completed_tasks,
            failed: all.failed_tasks,
            cached: all.cached_tasks,
            invoices: all.total_invoices,
        }
    }

    /// The record's minute; `None` when `t` is not RFC 3339.
    pub fn minute(&self) -> Option<Minute> {
        chrono::DateTime::parse_from_rfc3339(&self.t)
            .ok()
            .map(|t| t.timestamp().div_euclid(60))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a history record serializes")
    }

    /// Reads a record; `None` for anything else (a record written by hand, a future shape).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// A digest point (contract §11) as published on `truebit.stats.digest`:
///
/// ```json
/// {"seq":20000,"digest":"lthash16:<64 hex>","tables":{"meta":"<64 hex>","tasks":"…",…}}
/// ```
///
/// `digest` is the state digest after folding every message up to `seq`; `tables` the checksum
/// of each state table, which names the tables that differ when two digests do. A point with
/// `"checkpoint": true` is the digest of the checkpoint stored at `seq` (not a multiple of
/// `digest-every`), which `audit` checks a checkpoint against before it starts from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestPoint {
    pub seq: u64,
    pub digest: String,
    pub tables: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpoint: bool,
}

impl DigestPoint {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a digest point serializes")
    }

    /// Reads a point; `None` for anything else.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_with_its_minute() {
        let r = HistoryRecord {
            t: "2026-11-25T10:30:00.000Z".into(),
            seq: 7,
            active_nodes: 1,
            total_nodes: 2,
            tasks: 3,
            completed: 2,
            failed: 1,
            cached: 0,
            invoices: 4,
        };
        let bytes = r.to_json();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""activeNodes":1"#), "{text}");
        let back = HistoryRecord::parse(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.minute(), Some(1_795_602_600 / 60));
        assert_eq!(HistoryRecord::parse(b"{}"), None);
    }
}
