//! Snapshots out: `truebit.stats.aggregated`, the `truebit-stats` KV bucket, and a history
//! record in `TRUEBIT_STATS` (contract §8) for each publish.

use crate::http::{Metrics, Published, Status};
use crate::leader::Leader;
use crate::Error;
use async_nats::jetstream::kv;
use async_nats::HeaderMap;
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use truebit_projections::Projections;
use truebit_replay::task::blocking;
use truebit_streams::names::{HEADER_INSTANCE, HEADER_LAST_SEQ};
use truebit_streams::{subjects, HistoryRecord, Minute, Snapshot};

#[derive(Clone)]
pub(crate) struct Publisher {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    kv: kv::Store,
    db: Arc<Projections>,
    lead: Lead,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
}

/// Who may publish, and under which name (contract §9).
#[derive(Clone)]
pub(crate) struct Lead {
    pub leader: Leader,
    /// Named on every snapshot, so that an operator sees which instance published it.
    pub instance: String,
    /// What anyone published last: a snapshot behind it is not published.
    pub published: LastPublished,
}

/// The highest `Truebit-Last-Seq` seen on `truebit.stats.aggregated`, whoever published it: how
/// far an instance must have folded before it may take the lease (contract §9).
#[derive(Clone, Default)]
pub(crate) struct LastPublished(Arc<AtomicU64>);

impl LastPublished {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Follows `truebit.stats.aggregated` for as long as the client lives.
pub(crate) async fn last_published(client: &async_nats::Client) -> Result<LastPublished, Error> {
    let mut snapshots = client
        .subscribe(subjects::STATS_AGGREGATED)
        .await
        .map_err(|e| Error::nats("following the published snapshots", e))?;
    let published = LastPublished::default();
    let seen = published.clone();
    tokio::spawn(async move {
        while let Some(m) = snapshots.next().await {
            let seq = m
                .headers
                .as_ref()
                .and_then(|h| h.get(HEADER_LAST_SEQ))
                .and_then(|v| v.as_str().parse::<u64>().ok());
            if let Some(seq) = seq {
                seen.0.fetch_max(seq, Ordering::Relaxed);
            }
        }
    });
    Ok(published)
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
        lead: Lead,
        metrics: Arc<Metrics>,
        status: Arc<Status>,
    ) -> Self {
        Publisher {
            lead,
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
    /// sequence folded into it, if this instance leads (asked again before every write, so that
    /// a lease that ran out midway stops it). Failures are logged, not fatal: the next interval
    /// publishes again.
    pub async fn publish(&self) {
        if !self.lead.leader.leading() {
            return;
        }
        let started = Instant::now();
        let (applied, snapshots) = match self.snapshots_with_seq(now_minute()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot compute the snapshot");
                return;
            }
        };
        let computed = started.elapsed();
        // A new leader whose fold stalled behind what the last one published must not make the
        // numbers go back: it catches up first.
        let ahead = self.lead.published.get();
        if applied < ahead {
            tracing::warn!(
                applied,
                published = ahead,
                "not publishing a snapshot behind the last one published; catching up first"
            );
            return;
        }
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LAST_SEQ, applied.to_string().as_str());
        headers.insert(HEADER_INSTANCE, self.lead.instance.as_str());
        for snapshot in &snapshots {
            if !self.lead.leader.leading() {
                tracing::warn!("the lease ran out while publishing; stopped");
                return;
            }
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
