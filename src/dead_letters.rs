//! Publishing the dead-letter outbox (contract §4): the fold records each dead letter in the same
//! commit as the message's position; this sends them to `TRUEBIT_DLQ`, oldest first, with
//! `Nats-Msg-Id: dlq-<seq>`, and drops each from the outbox once JetStream has stored it. A crash
//! between the two sends it again, and JetStream's duplicate window stores it once.

use crate::backoff::Backoff;
use crate::http::metrics::ReasonLabel;
use crate::http::Metrics;
use crate::Error;
use async_nats::jetstream;
use async_nats::HeaderMap;
use std::sync::Arc;
use tokio::sync::watch;
use truebit_projections::Projections;
use truebit_replay::task::blocking;
use truebit_streams::DeadLetter;

/// Dead letters sent before their acks are awaited and the outbox is trimmed.
const CHUNK: usize = 256;
/// How long a stopping `serve` tries to empty the outbox.
const LAST_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Publishes the outbox at start and whenever a commit may have added to it, until the
/// committer ends (it owns `applied`'s sender); then once more, so that a clean stop leaves
/// nothing behind that it could have sent.
pub(crate) async fn publish(
    js: jetstream::Context,
    db: Arc<Projections>,
    mut applied: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Backoff::new();
    loop {
        match drain(&js, &db, &metrics).await {
            Ok(()) => {
                backoff.reset();
                if applied.changed().await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot store dead letters in TRUEBIT_DLQ yet; they wait in the outbox");
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { break },
                    _ = backoff.wait() => {}
                }
            }
        }
    }
    // Bounded, so that a stop while NATS is away does not hang: what is left waits on disk.
    match tokio::time::timeout(LAST_DRAIN, drain(&js, &db, &metrics)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "stopping with dead letters in the outbox; the next start sends them")
        }
        Err(_) => {
            tracing::warn!("stopping with dead letters in the outbox; the next start sends them")
        }
    }
}

/// Sends everything in the outbox; an error leaves the unsent part there.
async fn drain(
    js: &jetstream::Context,
    db: &Arc<Projections>,
    metrics: &Metrics,
) -> Result<(), Error> {
    loop {
        let pending = {
            let db = db.clone();
            blocking(move || db.pending_dead_letters(CHUNK)).await?
        };
        if pending.is_empty() {
            return Ok(());
        }
        let mut acks = Vec::with_capacity(pending.len());
        for (_, dead) in &pending {
            acks.push(send(js, dead).await?);
        }
        for (ack, (_, dead)) in acks.into_iter().zip(&pending) {
            let stored = ack
                .await
                .map_err(|e| Error::nats("storing a dead letter", e))?;
            // A copy JetStream already held (sent before a crash) is not stored again.
            let reason = dead
                .subject
                .strip_prefix(truebit_streams::subjects::DLQ_PREFIX)
                .and_then(truebit_streams::Reason::parse);
            if let (false, Some(reason)) = (stored.duplicate, reason) {
                metrics
                    .dead_letters
                    .get_or_create(&ReasonLabel {
                        reason: reason.as_str(),
                    })
                    .inc();
            }
        }
        let seqs: Vec<u64> = pending.iter().map(|(seq, _)| *seq).collect();
        tracing::debug!(count = seqs.len(), "dead letters stored");
        let db = db.clone();
        blocking(move || db.drop_dead_letters(&seqs)).await?;
    }
}

async fn send(
    js: &jetstream::Context,
    dead: &DeadLetter,
) -> Result<jetstream::context::PublishAckFuture, Error> {
    let mut headers = HeaderMap::new();
    for (name, value) in &dead.headers {
        headers.insert(name.as_str(), value.as_str());
    }
    js.publish_with_headers(dead.subject.clone(), headers, dead.payload.clone().into())
        .await
        .map_err(|e| Error::nats("publishing a dead letter", e))
}
