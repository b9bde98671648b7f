//! The node half of the history (contract §8): `activeNodes` and `totalNodes` as published, read
//! from `TRUEBIT_STATS`. Every instance follows the stream from its start with an ordered
//! consumer and keeps, per minute, the last record published in it, so that `/api/history`
//! answers from memory: some 50 bytes a minute, 25 MB for a year of them, and no more than the
//! stream's `max_age` (`STATS_MAX_AGE`) holds, as minutes older than that are forgotten as the
//! stream forgets them. The leader's own records come back the same way, so what the dashboard
//! shows is what any NATS client reads.

use crate::infra::follow::Following;
use crate::infra::shutdown::Shutdown;
use async_nats::jetstream::stream::Stream;
use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};
use truebit_streams::{subjects, HistoryRecord, Minute};

/// Nodes as a published record counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCounts {
    pub active: u64,
    pub total: u64,
}

/// The records of `TRUEBIT_STATS` read so far, the last of each minute.
#[derive(Debug, Default)]
pub struct NodeHistory {
    by_minute: RwLock<BTreeMap<Minute, NodeCounts>>,
}

impl NodeHistory {
    pub fn insert(&self, record: &HistoryRecord) {
        if let Some(minute) = record.minute() {
            self.by_minute
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    minute,
                    NodeCounts {
                        active: record.active_nodes,
                        total: record.total_nodes,
                    },
                );
        }
    }

    /// Forgets the minutes before `minute`.
    pub fn forget_before(&self, minute: Minute) {
        let mut map = self
            .by_minute
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        while map.first_key_value().is_some_and(|(&m, _)| m < minute) {
            map.pop_first();
        }
    }

    /// For each minute asked, in increasing order, the counts of the last record at or before it.
    pub fn at_or_before(
        &self,
        minutes: impl IntoIterator<Item = Minute>,
    ) -> Vec<Option<NodeCounts>> {
        let map = self
            .by_minute
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        minutes
            .into_iter()
            .map(|m| map.range(..=m).next_back().map(|(_, c)| *c))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_minute
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads `TRUEBIT_STATS` from its start and follows it until `stop`.
pub async fn follow(stream: Stream, history: std::sync::Arc<NodeHistory>, mut stop: Shutdown) {
    // How many minutes back the stream may still hold a record (rounded up, so that a minute
    // it holds part of is kept); `None` when it keeps everything.
    let max_age = stream.cached_info().config.max_age;
    let keep = (!max_age.is_zero()).then(|| max_age.as_secs().div_ceil(60) as Minute);
    let mut records = Following::new(stream, "TRUEBIT_STATS", 1).only(subjects::STATS_HISTORY);
    while let Some(followed) = records.next(&mut stop).await {
        let Some(record) = HistoryRecord::parse(&followed.message.payload) else {
            tracing::debug!("a TRUEBIT_STATS message that is not a history record; skipped");
            continue;
        };
        history.insert(&record);
        // By the clock the stream expires by, not the publisher's: one record with a clock
        // ahead must not wipe what the stream holds.
        if let Some(keep) = keep {
            history.forget_before(followed.stored.timestamp().div_euclid(60) - keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(minute: Minute, active: u64) -> HistoryRecord {
        HistoryRecord {
            t: chrono::DateTime::from_timestamp(minute * 60, 0)
                .unwrap()
                .to_rfc3339(),
            seq: minute as u64,
            active_nodes: active,
            total_nodes: active,
            tasks: 0,
            completed: 0,
            failed: 0,
            cached: 0,
            invoices: 0,
        }
    }

    #[test]
    fn the_last_record_of_a_minute_counts_and_forgotten_minutes_are_gone() {
        let history = NodeHistory::default();
        for minute in 0..10 {
            history.insert(&record(minute, minute as u64));
        }
        history.insert(&record(3, 30));
        assert_eq!(history.len(), 10);
        let at = |m| history.at_or_before([m])[0].map(|c| c.active);
        assert_eq!(at(3), Some(30), "the later record of minute 3 replaced it");
        assert_eq!(at(100), Some(9));

        history.forget_before(5);
        assert_eq!(history.len(), 5);
        assert_eq!(at(4), None, "nothing at or before minute 4 is kept");
        assert_eq!(at(5), Some(5));
    }
}
