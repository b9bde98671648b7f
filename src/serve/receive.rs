//! The first stage of the live fold: pull deliveries, put them in stream order without gaps
//! ([`super::order`]), validate each, and hand the batch to the committer.

use super::commit::Ready;
use super::order::{Order, Step};
use crate::infra::backoff::Backoff;
use crate::infra::shutdown::Shutdown;
use crate::Error;
use async_nats::jetstream::{self, consumer::PullConsumer, stream::Stream};
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use truebit_projections::task::joined;
use truebit_projections::{inputs, Checks, Stored};

/// How long a batch waits to fill before it is handed on as it is.
const BATCH_LINGER: Duration = Duration::from_millis(20);

type Delivery = Result<
    jetstream::Message,
    async_nats::error::Error<jetstream::consumer::pull::MessagesErrorKind>,
>;
type Batches = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Vec<Delivery>> + Send>>;

pub(crate) struct Receiver {
    pub events: Stream,
    pub order: Order,
    /// Whether the next batch's signatures are checked ahead: the guess the last commit left.
    pub checks: watch::Receiver<Checks>,
    pub stop: Shutdown,
}

impl Receiver {
    pub async fn run(
        mut self,
        consumer: PullConsumer,
        batch: usize,
        out: mpsc::Sender<Ready>,
    ) -> Result<(), Error> {
        // Opened like a reopen: on a cluster the consumer's leader may be moving at start.
        let Some(mut messages) = reopen(&consumer, batch, &self.stop).await else {
            return Ok(());
        };
        let mut stop = self.stop.clone();
        loop {
            let deliveries = tokio::select! {
                biased;
                _ = stop.recv() => return Ok(()),
                next = messages.next() => match next {
                    Some(deliveries) => deliveries,
                    None => {
                        tracing::warn!("the consumer's message stream ended; reopening it");
                        match reopen(&consumer, batch, &self.stop).await {
                            Some(m) => messages = m,
                            None => return Ok(()),
                        }
                        continue;
                    }
                },
            };
            if let Some(ready) = self.prepare(deliveries).await {
                // Waits while the committer is behind: the backpressure that bounds memory.
                if out.send(ready).await.is_err() {
                    return Ok(()); // the committer failed; serve reports why
                }
            }
        }
    }

    /// Turns a batch of deliveries into inputs; `None` when it must be redelivered instead.
    async fn prepare(&mut self, batch: Vec<Delivery>) -> Option<Ready> {
        // Each delivery with its stream sequence and the time JetStream stored it.
        let mut delivered: Vec<(u64, DateTime<Utc>, jetstream::Message)> =
            Vec::with_capacity(batch.len());
        for item in batch {
            match item {
                Ok(msg) => match msg.info() {
                    Ok(info) => delivered.push((info.stream_sequence, info.published, msg)),
                    Err(e) => {
                        tracing::warn!(error = %e, "a delivery without JetStream metadata; ignored")
                    }
                },
                // Missed heartbeats and the like while the server restarts: the stream recovers.
                Err(e) => tracing::debug!(error = %e, "pull consumer"),
            }
        }
        if delivered.is_empty() {
            return None;
        }
        let seqs: Vec<u64> = delivered.iter().map(|(seq, _, _)| *seq).collect();
        let plan = self.order.plan(&seqs);
        let mut stored = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            match *step {
                Step::Delivered(i) => {
                    let (seq, time, msg) = &delivered[i];
                    let headers = msg.headers.as_ref();
                    stored.push(Stored::new(
                        *seq,
                        msg.subject.to_string(),
                        msg.payload.clone(),
                        *time,
                        |name| Some(headers?.get(name)?.as_str().to_string()),
                    ));
                }
                // The stream is the record: a delivery lost in flight is read from it, or it
                // would be skipped for good once a later sequence is committed.
                Step::Missing { from, to } => match read_range(&self.events, from, to).await {
                    Ok(filled) => stored.extend(filled),
                    Err(e) => {
                        tracing::warn!(error = %e, from, to, "cannot fill a gap from the stream yet; the batch will be redelivered");
                        return None;
                    }
                },
            }
        }
        self.order.advance(&plan);

        // Off the async worker: reading a batch of signed messages is milliseconds of CPU.
        let checks = *self.checks.borrow();
        let inputs = joined(tokio::task::spawn_blocking(move || inputs(stored, checks))).await;
        if tracing::enabled!(tracing::Level::DEBUG) {
            for input in &inputs {
                if let Err(refusal) = &input.event {
                    tracing::debug!(seq = input.seq, reason = %refusal.reason, "refused");
                }
            }
        }
        let acks = delivered
            .iter()
            .filter_map(|(seq, _, msg)| msg.reply.as_ref().map(|reply| (*seq, reply)))
            .map(|(seq, reply)| (seq, async_nats::Subject::from(reply.as_str())))
            .collect();
        Some(Ready { inputs, acks })
    }
}

/// Messages `from..=to` as the stream holds them; sequences it no longer holds are absent.
async fn read_range(events: &Stream, from: u64, to: u64) -> Result<Vec<Stored>, Error> {
    let mut out = Vec::new();
    let mut seq = from;
    while seq <= to {
        match events.get_first_raw_message_by_subject(">", seq).await {
            Ok(raw) if raw.sequence <= to => {
                seq = raw.sequence + 1;
                let headers = &raw.headers;
                out.push(Stored::new(
                    raw.sequence,
                    raw.subject.to_string(),
                    raw.payload.clone(),
                    raw.time,
                    |name| Some(headers.get(name)?.as_str().to_string()),
                ));
            }
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::stream::RawMessageErrorKind::NoMessageFound
                ) =>
            {
                break
            }
            Err(e) => return Err(Error::nats("reading TRUEBIT_EVENTS", e)),
        }
    }
    if !out.is_empty() {
        tracing::info!(
            from,
            to,
            filled = out.len(),
            "filled a delivery gap from the stream"
        );
    }
    Ok(out)
}

async fn open_messages(consumer: &PullConsumer, batch: usize) -> Result<Batches, Error> {
    let messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| Error::nats("pulling from the aggregator's consumer", e))?;
    // The adapter owns the batch being filled, so a select! that drops `next()` loses nothing.
    Ok(Box::pin(messages.chunks_timeout(batch, BATCH_LINGER)))
}

/// Reopens the consumer's message stream, retrying while NATS is away; `None` once asked to
/// stop, which is no failure: there is nothing in hand to lose.
async fn reopen(consumer: &PullConsumer, batch: usize, stop: &Shutdown) -> Option<Batches> {
    let mut backoff = Backoff::new();
    loop {
        if stop.is_shutdown() {
            return None;
        }
        match open_messages(consumer, batch).await {
            Ok(m) => return Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reopen the consumer yet; retrying");
                backoff.wait().await;
            }
        }
    }
}
