//! Snapshots out: `truebit.stats.aggregated`, the `truebit-stats` KV bucket, and a history
//! record in `TRUEBIT_STATS` (contract §8) for each publish.

use crate::http::{Metrics, Published, Status};
use async_nats::jetstream::kv;
use async_nats::HeaderMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use truebit_projections::Projections;
use truebit_replay::task::blocking;
use truebit_streams::names::HEADER_LAST_SEQ;
use truebit_streams::{subjects, HistoryRecord, Minute, Snapshot};

#[derive(Clone)]
pub(crate) struct Publisher {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    kv: kv::Store,
    db: Arc<Projections>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
}

/// The current minute: the snapshot time `T` of contract §5.1.
pub(crate) fn now_minute() -> Minute {
    chrono::Utc::now().timestamp().div_euclid(60)
}

impl Publisher {
    pub fn new(
        client: async_nats::Client,
        kv: kv::Store,
        db: Arc<Projections>,
        metrics: Arc<Metrics>,
        status: Arc<Status>,
    ) -> Self {
        Publisher {
            js: async_nats::jetstream::new(client.clone()),
            client,
            kv,
            db,
            metrics,
            status,
        }
    }

    pub fn db(&self) -> Arc<Projections> {
        self.db.clone()
    }

    pub async fn snapshots(&self, at: Minute) -> Result<Vec<Snapshot>, crate::Error> {
        let db = self.db.clone();
        Ok(blocking(move || db.snapshots(at)).await?)
    }

    async fn snapshots_with_seq(&self, at: Minute) -> Result<(u64, Vec<Snapshot>), crate::Error> {
        let db = self.db.clone();
        Ok(blocking(move || db.snapshots_with_seq(at)).await?)
    }

    /// Publishes the snapshot of every period at the current minute, stamped with the last
    /// sequence folded into it. Failures are logged, not fatal: the next interval publishes again.
    pub async fn publish(&self) {
        let started = Instant::now();
        let (applied, snapshots) = match self.snapshots_with_seq(now_minute()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot compute the snapshot");
                return;
            }
        };
        let computed = started.elapsed();
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LAST_SEQ, applied.to_string().as_str());
        for snapshot in &snapshots {
            let body =
                serde_json::to_vec(&snapshot.to_period_message()).expect("JSON values serialize");
            if let Err(e) = self.kv.put(snapshot.period.kv_key(), body.into()).await {
                tracing::warn!(error = %e, key = %snapshot.period.kv_key(), "cannot store the snapshot in KV");
            }
            if let Some(latest) = snapshot.period.latest_key() {
                let body =
                    serde_json::to_vec(&snapshot.to_message()).expect("JSON values serialize");
                if let Err(e) = self.kv.put(latest, body.clone().into()).await {
                    tracing::warn!(error = %e, "cannot store the snapshot under latest");
                }
                match self
                    .client
                    .publish_with_headers(subjects::STATS_AGGREGATED, headers.clone(), body.into())
                    .await
                {
                    Ok(()) => {
                        self.metrics.snapshots_published.inc();
                        self.status.set_published(Published {
                            when: SystemTime::now(),
                            seq: applied,
                            message: snapshot.to_message(),
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot publish the snapshot"),
                }
                self.store_history(&HistoryRecord::of(snapshot, applied))
                    .await;
            }
        }
        self.metrics.snapshot_age.set(0.0);
        if let Some(all) = snapshots.iter().find(|s| s.period.latest_key().is_some()) {
            tracing::info!(
                applied,
                tasks = all.total_tasks,
                active_nodes = all.active_nodes,
                compute_ms = computed.as_secs_f64() * 1e3,
                total_ms = started.elapsed().as_secs_f64() * 1e3,
                "published snapshot"
            );
        }
    }

    /// Appends the record of a publish to `TRUEBIT_STATS`; a failure is logged, and the history
    /// has a gap there (the next publish stores the next record).
    async fn store_history(&self, record: &HistoryRecord) {
        let stored = match self
            .js
            .publish(subjects::STATS_HISTORY, record.to_json().into())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => {
                self.metrics.history_records.inc();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot store the history record in TRUEBIT_STATS")
            }
        }
    }
}
