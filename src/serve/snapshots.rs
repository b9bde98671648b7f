//! Snapshots out: `truebit.stats.aggregated`, the `truebit-stats` KV bucket, and a history
//! record in `TRUEBIT_STATS` (contract §8) for each publish.
//!
//! Fencing (contract §9): every KV write of a snapshot is a compare-and-set on the revision this
//! instance last wrote or read for that key, and the snapshot goes out on the subject (and into
//! the history) only after its `latest` write succeeded. A leader cut off by a partition, whose
//! writes wait in its client and reach the server after another instance published, is
//! refused there, so the published numbers never go back.

use super::leader::Leader;
use super::metrics::Metrics;
use super::status::{Published, Status};
use crate::Error;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::HeaderMap;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};
use truebit_projections::task::blocking;
use truebit_projections::{Projections, StateDigest};
use truebit_streams::names::{
    HEADER_INSTANCE, HEADER_LAST_SEQ, HEADER_STATE_DIGEST, HISTORY_STREAM,
};
use truebit_streams::{subjects, HistoryRecord, Minute, Snapshot};

#[derive(Clone)]
pub(crate) struct SnapshotPublisher {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    kv: kv::Store,
    db: Arc<Projections>,
    lead: Lead,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    revisions: Arc<Mutex<Revisions>>,
}

/// The revision of each snapshot key as this instance last wrote or read it, in one term of
/// leadership: a new term reads them afresh.
#[derive(Default)]
struct Revisions {
    term: u64,
    of: HashMap<String, u64>,
    /// The sequence of the last history record, the same way.
    history: Option<u64>,
}

/// Why a publish stopped before its end; said in the log where it happened.
struct Stopped;

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

impl SnapshotPublisher {
    pub fn new(
        client: async_nats::Client,
        kv: kv::Store,
        db: Arc<Projections>,
        lead: Lead,
        metrics: Arc<Metrics>,
        status: Arc<Status>,
    ) -> Self {
        SnapshotPublisher {
            lead,
            js: async_nats::jetstream::new(client.clone()),
            client,
            kv,
            db,
            metrics,
            status,
            revisions: Arc::default(),
        }
    }

    fn revisions(&self) -> std::sync::MutexGuard<'_, Revisions> {
        // Changed in steps that cannot panic.
        self.revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a snapshot key by a compare-and-set on the revision this instance last wrote or
    /// read for it (read now, the first time in a term). A failed one means another instance
    /// published: this one is fenced, and stops publishing until it has read the lease again.
    async fn write(&self, key: &str, body: Vec<u8>) -> Result<(), Stopped> {
        let known = self.revisions().of.get(key).copied();
        let revision = match known {
            Some(revision) => revision,
            None => match self.kv.entry(key).await {
                Ok(Some(entry)) => entry.revision,
                // Never written: revision 0 is "only if absent".
                Ok(None) => 0,
                Err(e) => {
                    tracing::warn!(error = %e, key, "cannot read the snapshot's revision in KV; not publishing it");
                    return Err(Stopped);
                }
            },
        };
        // The read may have waited long (a connection held silent): the lease is asked again
        // right before the write goes out, so that one sent while this instance no longer leads
        // cannot carry a revision that another leader wrote.
        if !self.lead.leader.leading() {
            tracing::warn!(key, "the lease ran out while publishing; stopped");
            return Err(Stopped);
        }
        match self.kv.update(key, body.into(), revision).await {
            Ok(revision) => {
                self.revisions().of.insert(key.to_string(), revision);
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                let mut revisions = self.revisions();
                revisions.of.clear();
                revisions.history = None;
                drop(revisions);
                tracing::warn!(
                    key,
                    "another instance published a snapshot since this one last did: stopped publishing; reading the lease again"
                );
                self.lead.leader.fence();
                Err(Stopped)
            }
            Err(e) => {
                // It may yet land, late: its revision is read again before the next write.
                self.revisions().of.remove(key);
                tracing::warn!(error = %e, key, "cannot store the snapshot in KV; not publishing it");
                Err(Stopped)
            }
        }
    }

    pub fn db(&self) -> Arc<Projections> {
        self.db.clone()
    }

    pub async fn snapshots(&self, at: Minute) -> Result<Vec<Snapshot>, crate::Error> {
        let db = self.db.clone();
        Ok(blocking(move || db.snapshots(at)).await?)
    }

    async fn snapshots_with_digest(
        &self,
        at: Minute,
    ) -> Result<(u64, StateDigest, Vec<Snapshot>), crate::Error> {
        let db = self.db.clone();
        Ok(blocking(move || db.snapshots_with_digest(at)).await?)
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
        let (applied, digest, snapshots) = match self
            .snapshots_with_digest(truebit_streams::now_minute())
            .await
        {
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
        headers.insert(HEADER_STATE_DIGEST, digest.text().as_str());
        {
            let term = self.lead.leader.term();
            let mut revisions = self.revisions();
            if revisions.term != term {
                *revisions = Revisions {
                    term,
                    ..Revisions::default()
                };
            }
        }
        for snapshot in &snapshots {
            if !self.lead.leader.leading() {
                tracing::warn!("the lease ran out while publishing; stopped");
                return;
            }
            let body =
                serde_json::to_vec(&snapshot.to_period_message()).expect("JSON values serialize");
            if self.write(&snapshot.period.kv_key(), body).await.is_err() {
                return;
            }
            if let Some(latest) = snapshot.period.latest_key() {
                let body =
                    serde_json::to_vec(&snapshot.to_message()).expect("JSON values serialize");
                // Only a snapshot whose `latest` write succeeded goes out.
                if self.write(latest, body.clone()).await.is_err() {
                    return;
                }
                if !self.lead.leader.leading() {
                    tracing::warn!("the lease ran out while publishing; stopped");
                    return;
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
                self.store_history(&HistoryRecord::of(snapshot, applied), &digest)
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

    /// Appends the record of a publish to `TRUEBIT_STATS`, fenced as the KV keys are: on the
    /// sequence of the last record this instance wrote or read, so that a cut-off leader's late
    /// record does not land after a newer leader's. A failure is logged, and the history has a
    /// gap there (the next publish stores the next record).
    async fn store_history(&self, record: &HistoryRecord, digest: &StateDigest) {
        let known = self.revisions().history;
        let last = match known {
            Some(seq) => seq,
            None => match self.last_history_seq().await {
                Ok(seq) => seq,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the last history record in TRUEBIT_STATS; not storing this one");
                    return;
                }
            },
        };
        if !self.lead.leader.leading() {
            tracing::warn!("the lease ran out while publishing; the history record is not stored");
            return;
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            last.to_string().as_str(),
        );
        headers.insert(HEADER_LAST_SEQ, record.seq.to_string().as_str());
        headers.insert(HEADER_STATE_DIGEST, digest.text().as_str());
        let stored = match self
            .js
            .publish_with_headers(subjects::STATS_HISTORY, headers, record.to_json().into())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match stored {
            Ok(ack) => {
                self.revisions().history = Some(ack.sequence);
                self.metrics.history_records.inc();
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                self.revisions().history = None;
                tracing::warn!(
                    "another instance stored a history record since this one last did: stopped publishing; reading the lease again"
                );
                self.lead.leader.fence();
            }
            Err(e) => {
                self.revisions().history = None;
                tracing::warn!(error = %e, "cannot store the history record in TRUEBIT_STATS")
            }
        }
    }

    /// The stream sequence of the last history record, 0 if there is none.
    async fn last_history_seq(&self) -> Result<u64, Error> {
        let stream = self
            .js
            .get_stream_no_info(HISTORY_STREAM)
            .await
            .map_err(|e| Error::nats("opening TRUEBIT_STATS", e))?;
        match stream
            .get_last_raw_message_by_subject(subjects::STATS_HISTORY)
            .await
        {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(Error::nats("reading TRUEBIT_STATS", e)),
        }
    }
}
