//! The second stage of the live fold: fold what the receiver hands over, a commit at a time, and
//! ack each delivery only after the commit that holds its effect.

use super::metrics::Metrics;
use crate::infra::topology::AckMode;
use crate::Error;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use truebit_projections::task::blocking;
use truebit_projections::{Checks, Input, Outbox, Projections};

/// The most messages one commit folds, when that many have queued up.
pub(crate) const COMMIT_MAX: usize = 32_768;

/// A batch ready to commit; its deliveries are acked once the commit that holds its inputs is
/// durable.
pub(crate) struct Ready {
    pub inputs: Vec<Input>,
    /// Each delivery's stream sequence and reply subject. An ack is an empty message to it
    /// (what `jetstream::Message::ack` sends); keeping only these, copied out of the read
    /// buffers, lets the payloads go as soon as they are validated.
    pub acks: Vec<(u64, async_nats::Subject)>,
}

/// Folds what the receiver hands over until it closes the queue.
pub(crate) async fn commit(
    client: async_nats::Client,
    db: Arc<Projections>,
    ack_mode: AckMode,
    mut ready: mpsc::Receiver<Ready>,
    applied: watch::Sender<u64>,
    checks: watch::Sender<Checks>,
    metrics: Arc<Metrics>,
) -> Result<(), Error> {
    // One buffer for every commit, handed to the fold and back: a new one of 32,768 inputs per
    // commit lies above the mmap threshold (see main.rs), so each was mapped and faulted in anew.
    let mut inputs: Vec<Input> = Vec::with_capacity(COMMIT_MAX);
    let mut acks = Vec::with_capacity(COMMIT_MAX);
    while let Some(first) = ready.recv().await {
        let mut next = Some(first);
        while let Some(mut batch) = next {
            inputs.append(&mut batch.inputs);
            acks.append(&mut batch.acks);
            next = if inputs.len() < COMMIT_MAX {
                ready.try_recv().ok()
            } else {
                None
            };
        }
        // Batches are committed in the order they were handed over, so a delivery acked here
        // (a redelivery the receiver skipped, too) was folded by this commit or an earlier one.
        if !inputs.is_empty() {
            let db = db.clone();
            let (done, emptied, took) = blocking(move || {
                let started = std::time::Instant::now();
                let done = db.apply(&inputs, Outbox::Record)?;
                let took = started.elapsed();
                inputs.clear();
                Ok((done, inputs, took))
            })
            .await?;
            inputs = emptied;
            metrics.committed(&done, took.as_secs_f64());
            applied.send_replace(done.last_seq);
            checks.send_replace(Checks::after(done.mode));
        }
        match ack_mode {
            AckMode::Explicit => {
                for (_, reply) in acks.drain(..) {
                    send_ack(&client, reply).await;
                }
            }
            // One ack for the highest sequence acks every delivery at or below it, and all of
            // those are folded: everything the stream holds up to there went through a commit.
            AckMode::All => {
                if let Some((_, reply)) = acks.drain(..).max_by_key(|(seq, _)| *seq) {
                    send_ack(&client, reply).await;
                }
            }
        }
    }
    Ok(())
}

async fn send_ack(client: &async_nats::Client, reply: async_nats::Subject) {
    if let Err(e) = client.publish(reply, Bytes::new()).await {
        tracing::debug!(error = %e, "ack lost; the message will be redelivered and skipped");
    }
}
