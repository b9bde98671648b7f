//! `serve`: catch up, fold live, publish snapshots, answer `stats` queries.

use crate::error::blocking;
use crate::publish::Publisher;
use crate::{query, Error, NatsConfig};
use async_nats::jetstream::{self, consumer::PullConsumer, stream::Stream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use truebit_projections::{Input, Projections};
use truebit_streams::topology::{self, TopologyConfig};
use truebit_streams::{validate, DeadLetter};

/// Everything `serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub nats: NatsConfig,
    pub db_path: PathBuf,
    pub publish_interval: Duration,
    pub topology: TopologyConfig,
    /// The most messages folded in one redb transaction.
    pub batch_size: usize,
    /// How often a checkpoint of the projections is stored; zero never.
    pub checkpoint_interval: Duration,
    /// How many checkpoints are kept.
    pub checkpoints_kept: usize,
}

impl ServeConfig {
    pub fn new(nats_url: impl Into<String>, db_path: impl Into<PathBuf>) -> Self {
        ServeConfig {
            nats: NatsConfig::new(nats_url),
            db_path: db_path.into(),
            publish_interval: Duration::from_secs(30),
            topology: TopologyConfig::default(),
            batch_size: 2000,
            checkpoint_interval: Duration::from_secs(3600),
            checkpoints_kept: 3,
        }
    }
}

/// How long a batch waits to fill before it is folded as it is.
const BATCH_LINGER: Duration = Duration::from_millis(20);
/// How often catch-up reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Runs the aggregator until `shutdown` completes, then finishes the batch in hand, commits it
/// and returns.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let client = config.nats.connect("truebit-federation serve").await?;
    let js = jetstream::new(client.clone());
    let topology = topology::ensure(&js, &config.topology).await?;
    let path = config.db_path.clone();
    let db = Arc::new(blocking(move || Projections::open(path)).await?);
    let applied = {
        let db = db.clone();
        blocking(move || db.last_seq()).await?
    };
    let mut events = topology.events.clone();
    let info = events
        .info()
        .await
        .map_err(|e| Error::nats("reading stream TRUEBIT_EVENTS", e))?
        .clone();
    let target = info.state.last_sequence;
    check_belongs(&db, &topology::stream_identity(&info), applied, target).await?;
    if info.state.messages > 0 && applied + 1 < info.state.first_sequence {
        return Err(Error::CheckFailed(format!(
            "{} has folded up to sequence {applied}, but TRUEBIT_EVENTS now starts at {}: sequences {}..={} expired before they were folded; rebuild with `truebit-federation replay`, which starts from a checkpoint",
            config.db_path.display(),
            info.state.first_sequence,
            applied + 1,
            info.state.first_sequence - 1
        )));
    }
    let consumer = topology::aggregator_consumer(&topology.events, applied).await?;
    tracing::info!(db = %config.db_path.display(), applied, stream_last = target, "serving");

    let publisher = Publisher::new(client.clone(), topology.stats.clone(), db.clone());
    let responder = tokio::spawn(query::answer(
        client.clone(),
        publisher.clone(),
        stop.clone(),
    ));

    // The fold is a two-stage pipeline: the receiver pulls, validates and dead-letters the next
    // batches while the committer folds and commits the previous ones. Batches that queue up
    // while a commit runs are folded together in the next one, so that commits grow with the
    // load: small and prompt when the stream is quiet, large and cheap per event in a burst.
    let (applied_tx, mut applied_rx) = watch::channel(applied);
    let (ready_tx, ready_rx) = mpsc::channel(QUEUED_BATCHES);
    let receiver = Receiver {
        js,
        events: topology.events.clone(),
        cursor: applied,
        stop: stop.clone(),
    };
    let receiving = tokio::spawn(receiver.run(consumer, config.batch_size, ready_tx));
    let mut committing = tokio::spawn(commit(client.clone(), db.clone(), ready_rx, applied_tx));

    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + config.publish_interval,
        config.publish_interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut catch_up = CatchUp::new(applied, target);
    if catch_up.done {
        publisher.publish().await;
    }

    // A checkpoint runs beside the fold (a read transaction does not block writes); one at a time.
    let checkpoint_every = if config.checkpoint_interval.is_zero() {
        Duration::from_secs(365 * 86_400)
    } else {
        config.checkpoint_interval
    };
    let mut checkpoints = tokio::time::interval_at(
        tokio::time::Instant::now() + checkpoint_every,
        checkpoint_every,
    );
    checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checkpointing: Option<tokio::task::JoinHandle<()>> = None;

    let mut stop_rx = stop.clone();
    let failed = loop {
        tokio::select! {
            biased;
            _ = stop_rx.changed() => break None,
            // The committer ends before a stop only when a commit failed.
            result = &mut committing => break Some(result),
            _ = ticker.tick() => publisher.publish().await,
            _ = checkpoints.tick(), if !config.checkpoint_interval.is_zero() => {
                if checkpointing.as_ref().is_none_or(|h| h.is_finished()) {
                    let (store, db, keep) = (topology.checkpoints.clone(), db.clone(), config.checkpoints_kept);
                    checkpointing = Some(tokio::spawn(async move {
                        match crate::checkpoint::write(&store, &db, keep).await {
                            Ok(w) => tracing::info!(seq = w.seq, bytes = w.bytes, copy_ms = w.copy.as_millis() as u64, upload_ms = w.upload.as_millis() as u64, "stored checkpoint"),
                            Err(e) => tracing::warn!(error = %e, "cannot store a checkpoint; the next interval tries again"),
                        }
                    }));
                }
            }
            Ok(()) = applied_rx.changed() => {
                let applied = *applied_rx.borrow_and_update();
                if catch_up.progress(applied) {
                    publisher.publish().await;
                }
            }
        }
    };
    let outcome = match failed {
        // Stopping: the receiver hands over the batch in hand and closes the queue; the
        // committer commits and acks everything queued, then ends.
        None => {
            let received = joined(receiving).await;
            joined(committing).await.and(received)
        }
        // Nothing more can be committed, so nothing more is received: what was received and
        // not committed is redelivered after a restart.
        Some(result) => {
            receiving.abort();
            responder.abort();
            result.unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
        }
    };
    let _ = responder.await;
    if let Some(running) = checkpointing {
        let _ = running.await;
    }
    outcome?;
    tracing::info!(applied = *applied_rx.borrow(), "stopped");
    Ok(())
}

/// A task's result, with a panic carried on as a panic.
async fn joined<T>(task: tokio::task::JoinHandle<T>) -> T {
    task.await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
}

/// Refuses a database folded from another incarnation of the stream, or ahead of it: folding on
/// would mix two records. A new or rebuilt database is bound to this stream.
async fn check_belongs(
    db: &Arc<Projections>,
    identity: &str,
    applied: u64,
    stream_last: u64,
) -> Result<(), Error> {
    let hint = "rebuild it from this stream with `truebit-federation replay`, or point --db-path at the right file";
    let known = {
        let db = db.clone();
        blocking(move || db.stream_identity()).await?
    };
    match known {
        Some(known) if known != identity => Err(Error::CheckFailed(format!(
            "{} was folded from stream {known}, but the server has {identity}; {hint}",
            db.path().display()
        ))),
        _ if applied > stream_last => Err(Error::CheckFailed(format!(
            "{} has folded up to sequence {applied}, but the stream ends at {stream_last}: the stream was recreated or purged; {hint}",
            db.path().display()
        ))),
        Some(_) => Ok(()),
        None => {
            let (db, identity) = (db.clone(), identity.to_string());
            blocking(move || db.set_stream_identity(&identity)).await
        }
    }
}

type Delivery = Result<
    jetstream::Message,
    async_nats::error::Error<jetstream::consumer::pull::MessagesErrorKind>,
>;
type Batches = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Vec<Delivery>> + Send>>;

async fn open_messages(consumer: &PullConsumer, batch: usize) -> Result<Batches, Error> {
    let messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| Error::nats("pulling from consumer aggregator", e))?;
    // The adapter owns the batch being filled, so a select! that drops `next()` loses nothing.
    Ok(Box::pin(messages.chunks_timeout(batch, BATCH_LINGER)))
}

async fn reopen(
    consumer: &PullConsumer,
    batch: usize,
    stop: &watch::Receiver<bool>,
) -> Result<Batches, Error> {
    let mut wait = Duration::from_millis(100);
    loop {
        match open_messages(consumer, batch).await {
            Ok(m) => return Ok(m),
            Err(e) if !*stop.borrow() => {
                tracing::warn!(error = %e, "cannot reopen the consumer yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Start-up catch-up: folding up to the stream's last sequence at start.
struct CatchUp {
    target: u64,
    from: u64,
    started: Instant,
    last_report: Instant,
    done: bool,
}

impl CatchUp {
    fn new(applied: u64, target: u64) -> Self {
        let done = applied >= target;
        if done {
            tracing::info!(applied, "caught up");
        }
        CatchUp {
            target,
            from: applied,
            started: Instant::now(),
            last_report: Instant::now(),
            done,
        }
    }

    /// Notes progress; true exactly once, when catch-up completes.
    fn progress(&mut self, applied: u64) -> bool {
        if self.done {
            return false;
        }
        let rate = (applied - self.from) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        if applied >= self.target {
            self.done = true;
            tracing::info!(
                applied,
                folded = applied - self.from,
                seconds = self.started.elapsed().as_secs_f64(),
                rate = rate as u64,
                "caught up"
            );
            return true;
        }
        if self.last_report.elapsed() >= PROGRESS_EVERY {
            self.last_report = Instant::now();
            let eta = (self.target - applied) as f64 / rate.max(1.0);
            tracing::info!(
                applied,
                target = self.target,
                rate = rate as u64,
                eta_seconds = eta as u64,
                "catching up"
            );
        }
        false
    }
}

/// A message taken from the stream, by whichever way it came.
struct Stored {
    seq: u64,
    subject: String,
    payload: Bytes,
    time: DateTime<Utc>,
}

/// Validated batches that may wait for the committer; a full queue holds the receiver back.
const QUEUED_BATCHES: usize = 16;
/// The most messages one commit folds, when that many have queued up.
const COMMIT_MAX: usize = 32_768;

/// A batch ready to commit: its dead letters are stored, and its deliveries are acked once the
/// commit that holds its inputs is durable.
struct Ready {
    inputs: Vec<Input>,
    /// The reply subject of each delivery. An ack is an empty message to it (what
    /// `jetstream::Message::ack` sends); keeping only these, copied out of the read buffers,
    /// lets the payloads go as soon as they are validated.
    acks: Vec<async_nats::Subject>,
}

/// Folds what the receiver hands over, a commit at a time, and acks after each commit.
async fn commit(
    client: async_nats::Client,
    db: Arc<Projections>,
    mut ready: mpsc::Receiver<Ready>,
    applied: watch::Sender<u64>,
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
            let (done, emptied) = blocking(move || {
                let done = db.apply(&inputs)?;
                inputs.clear();
                Ok((done, inputs))
            })
            .await?;
            inputs = emptied;
            applied.send_replace(done.last_seq);
        }
        for reply in acks.drain(..) {
            if let Err(e) = client.publish(reply, Bytes::new()).await {
                tracing::debug!(error = %e, "ack lost; the message will be redelivered and skipped");
            }
        }
    }
    Ok(())
}

/// The first stage of the live fold: pulls, puts deliveries in stream order without gaps,
/// validates and dead-letters.
struct Receiver {
    js: jetstream::Context,
    events: Stream,
    /// The last sequence handed to the committer.
    cursor: u64,
    stop: watch::Receiver<bool>,
}

impl Receiver {
    async fn run(
        mut self,
        consumer: PullConsumer,
        batch: usize,
        out: mpsc::Sender<Ready>,
    ) -> Result<(), Error> {
        let mut messages = open_messages(&consumer, batch).await?;
        let mut stop = self.stop.clone();
        loop {
            let deliveries = tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                next = messages.next() => match next {
                    Some(deliveries) => deliveries,
                    None => {
                        tracing::warn!("the consumer's message stream ended; reopening it");
                        messages = reopen(&consumer, batch, &self.stop).await?;
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
        delivered.sort_by_key(|(seq, _, _)| *seq);

        // Fold in stream order with no gap: a delivery lost in flight (a reconnect, say) would
        // otherwise be skipped for good once a later sequence is committed. The stream is the
        // record, so a gap is filled by reading it.
        let mut stored = Vec::with_capacity(delivered.len());
        let mut cursor = self.cursor;
        for (seq, published, msg) in &delivered {
            if *seq <= cursor {
                continue;
            }
            if *seq > cursor + 1 {
                match self.read_range(cursor + 1, *seq).await {
                    Ok(filled) => stored.extend(filled),
                    Err(e) => {
                        tracing::warn!(error = %e, from = cursor + 1, to = seq - 1, "cannot fill a gap from the stream yet; the batch will be redelivered");
                        return None;
                    }
                }
            }
            stored.push(Stored {
                seq: *seq,
                subject: msg.subject.to_string(),
                payload: msg.payload.clone(),
                time: *published,
            });
            cursor = *seq;
        }

        let mut inputs = Vec::with_capacity(stored.len());
        let mut dead = Vec::new();
        for m in &stored {
            let event = validate(&m.subject, &m.payload, m.time).map_err(|rejection| {
                dead.push(DeadLetter::new(&rejection, &m.subject, m.seq, &m.payload));
                tracing::debug!(seq = m.seq, %rejection, "dead-lettered");
                rejection.reason
            });
            inputs.push(Input { seq: m.seq, event });
        }
        if !dead.is_empty() && !self.store_dead_letters(&dead).await {
            return None; // stopping: nothing committed, nothing acked, all redelivered later
        }
        self.cursor = cursor;
        let acks = delivered
            .iter()
            .filter_map(|(_, _, msg)| msg.reply.as_ref())
            .map(|reply| async_nats::Subject::from(reply.as_str()))
            .collect();
        Some(Ready { inputs, acks })
    }

    /// Messages `from..to` as the stream holds them; sequences it no longer holds are absent.
    async fn read_range(&self, from: u64, to: u64) -> Result<Vec<Stored>, Error> {
        let mut out = Vec::new();
        let mut seq = from;
        while seq < to {
            match self.events.get_first_raw_message_by_subject(">", seq).await {
                Ok(raw) if raw.sequence < to => {
                    seq = raw.sequence + 1;
                    out.push(Stored {
                        seq: raw.sequence,
                        subject: raw.subject.to_string(),
                        payload: raw.payload,
                        time: raw.time,
                    });
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
                to = to - 1,
                filled = out.len(),
                "filled a delivery gap from the stream"
            );
        }
        Ok(out)
    }

    /// Stores dead letters, retrying until JetStream has them all; false if asked to stop first.
    async fn store_dead_letters(&self, dead: &[DeadLetter]) -> bool {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.try_store_dead_letters(dead).await {
                Ok(()) => return true,
                Err(e) => {
                    if *self.stop.borrow() {
                        return false;
                    }
                    tracing::warn!(error = %e, "cannot store dead letters in TRUEBIT_DLQ yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn try_store_dead_letters(&self, dead: &[DeadLetter]) -> Result<(), Error> {
        let mut acks = Vec::with_capacity(dead.len());
        for d in dead {
            let ack = self
                .js
                .publish_with_headers(d.subject.clone(), d.headers.clone(), d.payload.clone())
                .await
                .map_err(|e| Error::nats("publishing a dead letter", e))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| Error::nats("storing a dead letter", e))?;
        }
        Ok(())
    }
}
