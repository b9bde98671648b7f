//! `serve`'s own loop: what it starts, and what it does on each event: a publish tick, a change
//! of leadership, a checkpoint tick, a commit.

use super::catch_up::CatchUp;
use super::dead_letters;
use super::digests::{self, PointPublisher};
use super::http::{self, AppState};
use super::lag;
use super::leader::{self, Leader};
use super::metrics::Metrics;
use super::node_history::{self, NodeHistory};
use super::order::Order;
use super::query;
use super::receive::Receiver;
use super::running::{Ended, Running, Staged};
use super::snapshots::{self, LastPublished, SnapshotPublisher};
use super::start::Opened;
use super::status::Status;
use super::{checkpoint, commit, ServeConfig};
use crate::infra::shutdown::{Shutdown, Stop};
use crate::Error;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use truebit_projections::Checks;
use truebit_projections::Projections;
use truebit_streams::names::DEFAULT_INSTANCE;

/// Validated batches that may wait for the committer; a full queue holds the receiver back.
const QUEUED_BATCHES: usize = 16;

/// What the loop needs between events.
pub(super) struct Service {
    publisher: SnapshotPublisher,
    points: PointPublisher,
    leader: Leader,
    became_leader: watch::Receiver<bool>,
    applied: watch::Receiver<u64>,
    catch_up: CatchUp,
    published: LastPublished,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    db: Arc<Projections>,
    checkpoints: async_nats::jetstream::object_store::ObjectStore,
    checkpoints_kept: usize,
    publish_ticks: Interval,
    /// `None` when checkpoints are off.
    checkpoint_ticks: Option<Interval>,
}

/// An interval whose first tick is one period from now, and that does not catch up on ticks it
/// missed while the loop was busy.
fn every(period: Duration) -> Interval {
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

impl Service {
    /// Starts every task: the fold's two stages, the lease, the dead letters' sender and
    /// follower, the micro service, the lag watcher, the history follower and HTTP.
    pub async fn start(
        config: &ServeConfig,
        opened: Opened,
        listener: Option<TcpListener>,
        shutdown: &Shutdown,
    ) -> Result<(Service, Running), Error> {
        let Opened {
            client,
            js,
            topology,
            db,
            applied,
            target,
            identity,
            created,
            consumer,
        } = opened;
        let metrics = Arc::new(Metrics::new());
        let status = Arc::new(Status::new(config.batch_size as u64));
        let me = config
            .instance
            .clone()
            .unwrap_or_else(|| DEFAULT_INSTANCE.to_string());
        let leader = Leader::new();
        let (lease_stop, lease_shutdown) = Stop::new();
        let lease = Staged {
            task: tokio::spawn(leader::run(
                topology.leader.clone(),
                me.clone(),
                leader.clone(),
                lease_shutdown,
            )),
            stop: lease_stop,
        };
        let published = snapshots::last_published(&client).await?;
        tracing::info!(db = %config.db_path.display(), applied, stream_last = target, "serving");
        metrics.last_applied.set(applied as i64);
        metrics.stream_last.set(target as i64);
        let publisher = SnapshotPublisher::new(
            client.clone(),
            topology.stats.clone(),
            db.clone(),
            snapshots::Lead {
                leader: leader.clone(),
                instance: me,
                published: published.clone(),
            },
            metrics.clone(),
            status.clone(),
        );
        let responder = {
            let (client, publisher, status) = (client.clone(), publisher.clone(), status.clone());
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = query::answer(client, publisher, shutdown).await {
                    tracing::error!(error = %e, "stats queries go unanswered");
                    status.fail(e);
                }
            })
        };
        let nodes = Arc::new(NodeHistory::default());
        let (applied_tx, applied_rx) = watch::channel(applied);
        // Both read TRUEBIT_STATS, each its own subject, and stop with the process.
        let history = {
            let follow =
                node_history::follow(topology.history.clone(), nodes.clone(), shutdown.clone());
            let compare = digests::compare(
                topology.history.clone(),
                db.clone(),
                applied_rx.clone(),
                metrics.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                tokio::join!(follow, compare);
            })
        };
        let http = listener.map(|listener| {
            let state = AppState {
                metrics: metrics.clone(),
                status: status.clone(),
                db: db.clone(),
                nodes,
                publish_interval: config.publish_interval,
                db_path: config.db_path.clone(),
            };
            tokio::spawn(http::run(listener, state, shutdown.clone()))
        });

        // The fold is a two-stage pipeline: the receiver pulls, validates and dead-letters the
        // next batches while the committer folds and commits the previous ones. Batches that
        // queue up while a commit runs are folded together in the next one, so that commits grow
        // with the load: small and prompt when the stream is quiet, large and cheap per event in
        // a burst.
        let (checks_tx, checks) = watch::channel(Checks::after(db.admission_mode()?));
        let (ready_tx, ready_rx) = mpsc::channel(QUEUED_BATCHES);
        let receiver = Receiver {
            events: topology.events.clone(),
            order: Order::new(applied),
            checks,
            stop: shutdown.clone(),
        };
        let lag = tokio::spawn(lag::watch(
            client.clone(),
            consumer.clone(),
            topology.events.clone(),
            applied_rx.clone(),
            metrics.clone(),
            status.clone(),
            shutdown.clone(),
        ));
        let receiving = tokio::spawn(receiver.run(consumer, config.batch_size, ready_tx));
        let committing = tokio::spawn(commit::commit(
            client,
            db.clone(),
            config.ack_mode,
            ready_rx,
            applied_tx,
            checks_tx,
            metrics.clone(),
        ));
        let (dlq_read_tx, dlq_read) = dead_letters::follower(&identity, created);
        let (dlq_stop, dlq_shutdown) = Stop::new();
        let dlq_follower = Staged {
            task: tokio::spawn(dead_letters::follow(
                topology.dlq.clone(),
                db.clone(),
                dlq_read_tx,
                dlq_read.clone(),
                dlq_shutdown,
            )),
            stop: dlq_stop,
        };
        let points = PointPublisher::new(js.clone(), db.clone(), leader.clone());
        let dead_letters = tokio::spawn(dead_letters::send_outbox(
            js,
            db.clone(),
            applied_rx.clone(),
            leader.clone(),
            dlq_read,
            metrics.clone(),
        ));

        let service = Service {
            became_leader: leader.subscribe(),
            publisher,
            points,
            leader,
            applied: applied_rx,
            catch_up: CatchUp::new(applied, target),
            published,
            metrics,
            status,
            db,
            checkpoints: topology.checkpoints,
            checkpoints_kept: config.checkpoints_kept,
            publish_ticks: every(config.publish_interval),
            checkpoint_ticks: (!config.checkpoint_interval.is_zero())
                .then(|| every(config.checkpoint_interval)),
        };
        service.note_progress(applied);
        let running = Running {
            receiving,
            committing,
            responder,
            dead_letters,
            lag,
            history,
            http,
            dlq_follower,
            checkpoint: None,
            lease,
        };
        Ok((service, running))
    }

    /// Runs until the shutdown is told or the committer ends.
    pub async fn run(&mut self, running: &mut Running, mut shutdown: Shutdown) -> Ended {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.recv() => return Ended::Stopped,
                // The committer ends before a stop is seen here when a commit failed, or when
                // the receiver closed the queue (it saw the stop first, or it panicked).
                result = &mut running.committing => return Ended::Committer(result),
                _ = self.publish_ticks.tick() => self.publish_tick().await,
                // Taking the lease publishes at once: a takeover need not wait for the interval.
                Ok(()) = self.became_leader.changed() => self.leadership_changed().await,
                _ = tick(&mut self.checkpoint_ticks) => self.checkpoint_tick(&mut running.checkpoint),
                Ok(()) = self.applied.changed() => self.committed().await,
            }
        }
    }

    /// The last sequence committed.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    async fn publish_tick(&mut self) {
        self.note_progress(*self.applied.borrow());
        self.publisher.publish().await
    }

    async fn leadership_changed(&mut self) {
        let leading = *self.became_leader.borrow_and_update();
        self.metrics.leader.set(leading as i64);
        if leading {
            self.publisher.publish().await;
            self.points.publish().await;
        }
    }

    /// A checkpoint runs beside the fold (a read transaction does not block writes), one at a
    /// time, and only on the leader.
    fn checkpoint_tick(&mut self, running: &mut Option<tokio::task::JoinHandle<()>>) {
        if !self.leader.leading() || running.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let (store, db, keep, leader) = (
            self.checkpoints.clone(),
            self.db.clone(),
            self.checkpoints_kept,
            self.leader.clone(),
        );
        *running = Some(tokio::spawn(async move {
            match checkpoint::write(&store, &db, keep, &leader).await {
                Ok(w) => tracing::info!(
                    seq = w.seq,
                    bytes = w.bytes,
                    copy_ms = w.copy.as_millis() as u64,
                    upload_ms = w.upload.as_millis() as u64,
                    "stored checkpoint"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot store a checkpoint; the next interval tries again")
                }
            }
        }));
    }

    async fn committed(&mut self) {
        let applied = *self.applied.borrow_and_update();
        // Quick when no point was recorded since the last: one read of the points table.
        let points = self.points.clone();
        tokio::spawn(async move { points.publish().await });
        if self.catch_up.progress(applied) {
            self.status.caught_up.store(true, Ordering::Relaxed);
            self.publisher.publish().await;
        }
        self.note_progress(applied);
    }

    /// The lease may be taken once caught up as far as the last snapshot anyone published.
    fn note_progress(&self, applied: u64) {
        if self.catch_up.done {
            self.status.caught_up.store(true, Ordering::Relaxed);
        }
        self.leader
            .set_eligible(self.catch_up.done && applied >= self.published.get());
    }
}

/// The next tick of `ticks`, or never when there are none.
async fn tick(ticks: &mut Option<Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}
