//! The node half of the history (contract §8): `activeNodes` and `totalNodes` as published, read
//! from `TRUEBIT_STATS`. Every instance follows the stream from its start with an ordered
//! consumer and keeps, per minute, the last record published in it: about half a megabyte per
//! year of minutes, so that `/api/history` answers from memory. The leader's own records come
//! back the same way, so what the dashboard shows is what any NATS client reads.

use crate::backoff::Backoff;
use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};
use tokio::sync::watch;
use truebit_streams::{HistoryRecord, Minute};

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

/// Reads `TRUEBIT_STATS` from its start and follows it until `stop`; reopens after an error,
/// from the record after the last one read.
pub async fn follow(
    stream: Stream,
    history: std::sync::Arc<NodeHistory>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = 1u64;
    let mut backoff = Backoff::new();
    loop {
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: if next <= 1 {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::ByStartSequence {
                        start_sequence: next,
                    }
                },
                ..Default::default()
            })
            .await;
        let mut messages = match consumer {
            Ok(c) => match c.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read TRUEBIT_STATS yet; retrying");
                    tokio::select! { _ = stop.changed() => return, _ = backoff.wait() => continue }
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read TRUEBIT_STATS yet; retrying");
                tokio::select! { _ = stop.changed() => return, _ = backoff.wait() => continue }
            }
        };
        loop {
            let msg = tokio::select! {
                _ = stop.changed() => return,
                msg = messages.next() => msg,
            };
            match msg {
                Some(Ok(msg)) => {
                    backoff.reset();
                    if let Ok(info) = msg.info() {
                        next = info.stream_sequence + 1;
                    }
                    match HistoryRecord::parse(&msg.payload) {
                        Some(record) => history.insert(&record),
                        None => tracing::debug!(
                            "a TRUEBIT_STATS message that is not a history record; skipped"
                        ),
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "following TRUEBIT_STATS; reopening");
                    break;
                }
                None => break,
            }
        }
        tokio::select! { _ = stop.changed() => return, _ = backoff.wait() => {} }
    }
}
