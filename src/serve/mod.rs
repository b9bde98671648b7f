//! `serve`: catch up, fold live, publish snapshots, answer `stats` queries.
//!
//! The fold is a two-stage pipeline: [`receive`] pulls, orders ([`order`]) and validates the
//! next batches while [`commit`] folds and commits the previous ones and acks them. Dead letters
//! leave through the outbox ([`dead_letters`]).

mod catch_up;
mod checkpoint;
mod commit;
mod dead_letters;
pub mod history;
pub mod http;
mod lag;
mod leader;
pub mod metrics;
mod order;
mod publish;
mod query;
mod receive;
pub mod status;

use crate::infra::nats::NatsConfig;
use crate::infra::topology::{self, AckMode, TopologyConfig};
use crate::Error;
use async_nats::jetstream;
use catch_up::CatchUp;
use history::NodeHistory;
use http::AppState;
use leader::Leader;
use metrics::Metrics;
use order::Order;
use publish::Publisher;
use receive::Receiver;
use status::Status;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use truebit_projections::task::{blocking, joined};
use truebit_projections::Projections;
use truebit_streams::names::{consumer_name, DEFAULT_INSTANCE};
use truebit_streams::PublicKey;

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
    /// How the durable consumer is acked after each commit.
    pub ack_mode: AckMode,
    /// The root key of the key registry (contract §7): the first admin.
    pub admin_key: Option<PublicKey>,
    /// This instance's name (contract §9): its consumer is `aggregator-<name>`, and the lease
    /// names it; `None` is the single instance of §2 (`aggregator`, lease value `default`).
    pub instance: Option<String>,
    /// Where HTTP is served (contract §8); `None` serves none. [`ServeConfig::new`] leaves it
    /// `None`; the command line's default is `127.0.0.1:8480`.
    pub http_addr: Option<SocketAddr>,
    /// Set to the address HTTP listens on once it does (port 0 picks a free one).
    pub http_bound: Arc<OnceLock<SocketAddr>>,
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
            ack_mode: AckMode::default(),
            admin_key: None,
            instance: None,
            // Embedded, HTTP is opt-in; the command line's default is 127.0.0.1:8480.
            http_addr: None,
            http_bound: Arc::default(),
        }
    }
}

/// Validated batches that may wait for the committer; a full queue holds the receiver back.
const QUEUED_BATCHES: usize = 16;
/// How long a stop waits for a checkpoint upload in progress.
const CHECKPOINT_GRACE: Duration = Duration::from_secs(20);

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
    // Bound first, so that a taken address fails the start at once, before anything is touched.
    let listener = match config.http_addr {
        Some(addr) => {
            let listener = http::bind(addr).await?;
            let bound = listener.local_addr().unwrap_or(addr);
            let _ = config.http_bound.set(bound);
            tracing::info!(%bound, "HTTP: dashboard at http://{bound}/, metrics at /metrics");
            Some(listener)
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(Status::new(config.batch_size as u64));

    let client = config.nats.connect("truebit-federation serve").await?;
    let js = jetstream::new(client.clone());
    let topology = topology::ensure(&js, &config.topology).await?;
    let path = config.db_path.clone();
    let admin_key = config.admin_key.clone();
    let db = Arc::new(
        blocking(move || {
            let db = Projections::open(path)?;
            db.bind_admin_key(admin_key.as_ref())?;
            Ok(db)
        })
        .await?,
    );
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
    let identity = topology::stream_identity(&info);
    check_belongs(&db, &identity, applied, target).await?;
    // An empty stream that once held messages starts after its last one, so this also catches
    // a stream that expired entirely while serve was down.
    if applied + 1 < info.state.first_sequence {
        return Err(Error::CheckFailed(format!(
            "{} has folded up to sequence {applied}, but TRUEBIT_EVENTS now starts at {}: sequences {}..={} expired before they were folded; rebuild with `truebit-federation replay`, which starts from a checkpoint",
            config.db_path.display(),
            info.state.first_sequence,
            applied + 1,
            info.state.first_sequence - 1
        )));
    }
    let consumer_name = consumer_name(config.instance.as_deref());
    let consumer =
        topology::aggregator_consumer(&topology.events, &consumer_name, applied, config.ack_mode)
            .await?;
    let me = config
        .instance
        .clone()
        .unwrap_or_else(|| DEFAULT_INSTANCE.to_string());
    let leader = Leader::new();
    let (lease_stop_tx, lease_stop) = watch::channel(false);
    let leasing = tokio::spawn(leader::run(
        topology.leader.clone(),
        me.clone(),
        leader.clone(),
        lease_stop,
    ));
    let mut became_leader = leader.subscribe();
    let published = publish::last_published(&client).await?;
    tracing::info!(db = %config.db_path.display(), applied, stream_last = target, "serving");

    metrics.last_applied.set(applied as i64);
    metrics.stream_last.set(target as i64);
    let publisher = Publisher::new(
        client.clone(),
        topology.stats.clone(),
        db.clone(),
        publish::Lead {
            leader: leader.clone(),
            instance: me,
            published: published.clone(),
        },
        metrics.clone(),
        status.clone(),
    );
    let responder = {
        let (client, publisher, stop, status) = (
            client.clone(),
            publisher.clone(),
            stop.clone(),
            status.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = query::answer(client, publisher, stop).await {
                tracing::error!(error = %e, "stats queries go unanswered");
                status.fail(e);
            }
        })
    };
    let nodes = Arc::new(NodeHistory::default());
    let following = tokio::spawn(history::follow(
        topology.history.clone(),
        nodes.clone(),
        stop.clone(),
    ));
    let serving_http = listener.map(|listener| {
        let state = AppState {
            metrics: metrics.clone(),
            status: status.clone(),
            db: db.clone(),
            nodes: nodes.clone(),
            publish_interval: config.publish_interval,
            db_path: config.db_path.clone(),
        };
        tokio::spawn(http::run(listener, state, stop.clone()))
    });

    // The fold is a two-stage pipeline: the receiver pulls, validates and dead-letters the next
    // batches while the committer folds and commits the previous ones. Batches that queue up
    // while a commit runs are folded together in the next one, so that commits grow with the
    // load: small and prompt when the stream is quiet, large and cheap per event in a burst.
    let (applied_tx, mut applied_rx) = watch::channel(applied);
    let (ready_tx, ready_rx) = mpsc::channel(QUEUED_BATCHES);
    let receiver = Receiver {
        events: topology.events.clone(),
        order: Order::new(applied),
        verifiers: truebit_projections::verifiers(),
        stop: stop.clone(),
    };
    let watching = tokio::spawn(lag::watch(
        client.clone(),
        consumer.clone(),
        topology.events.clone(),
        applied_rx.clone(),
        metrics.clone(),
        status.clone(),
        stop.clone(),
    ));
    let receiving = tokio::spawn(receiver.run(consumer, config.batch_size, ready_tx));
    let mut committing = tokio::spawn(commit::commit(
        client.clone(),
        db.clone(),
        config.ack_mode,
        ready_rx,
        applied_tx,
        metrics.clone(),
    ));
    let (dlq_read_tx, dlq_read) = dead_letters::follower(&identity, info.created);
    // Stopped only after the last dead letters went out: a leader reads its own before it ends.
    let (follow_stop_tx, follow_stop) = watch::channel(false);
    let following_dlq = tokio::spawn(dead_letters::follow(
        js.clone(),
        db.clone(),
        dlq_read_tx,
        dlq_read.clone(),
        follow_stop,
    ));
    let dead_letters = tokio::spawn(dead_letters::publish(
        js.clone(),
        db.clone(),
        applied_rx.clone(),
        leader.clone(),
        dlq_read,
        metrics.clone(),
    ));

    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + config.publish_interval,
        config.publish_interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut catch_up = CatchUp::new(applied, target);
    // The lease may be taken once caught up as far as the last snapshot anyone published.
    let eligible = |catch_up: &CatchUp, applied: u64| catch_up.done && applied >= published.get();
    leader.set_eligible(eligible(&catch_up, applied));
    if catch_up.done {
        status
            .caught_up
            .store(true, std::sync::atomic::Ordering::Relaxed);
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
            // The committer ends before a stop is seen here when a commit failed, or when the
            // receiver closed the queue (it saw the stop first, or it panicked).
            result = &mut committing => break Some(result),
            _ = ticker.tick() => {
                leader.set_eligible(eligible(&catch_up, *applied_rx.borrow()));
                publisher.publish().await
            }
            // Taking the lease publishes at once: a takeover need not wait for the interval.
            Ok(()) = became_leader.changed() => {
                let leading = *became_leader.borrow_and_update();
                metrics.leader.set(leading as i64);
                if leading {
                    publisher.publish().await;
                }
            }
            _ = checkpoints.tick(), if !config.checkpoint_interval.is_zero() => {
                if leader.leading() && checkpointing.as_ref().is_none_or(|h| h.is_finished()) {
                    let (store, db, keep, leader) = (topology.checkpoints.clone(), db.clone(), config.checkpoints_kept, leader.clone());
                    checkpointing = Some(tokio::spawn(async move {
                        match checkpoint::write(&store, &db, keep, &leader).await {
                            Ok(w) => tracing::info!(seq = w.seq, bytes = w.bytes, copy_ms = w.copy.as_millis() as u64, upload_ms = w.upload.as_millis() as u64, "stored checkpoint"),
                            Err(e) => tracing::warn!(error = %e, "cannot store a checkpoint; the next interval tries again"),
                        }
                    }));
                }
            }
            Ok(()) = applied_rx.changed() => {
                let applied = *applied_rx.borrow_and_update();
                if catch_up.progress(applied) {
                    status.caught_up.store(true, std::sync::atomic::Ordering::Relaxed);
                    publisher.publish().await;
                }
                leader.set_eligible(eligible(&catch_up, applied));
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
        // The committer ended cleanly before this loop saw a stop: the receiver closed the
        // queue, which it does only once it saw the stop itself (every other task sees it too,
        // so this is an ordinary stop), or by panicking, which must not end in a quiet exit 0.
        Some(Ok(Ok(()))) => joined(receiving).await,
        // A commit failed: its error decides the exit. Nothing more can be committed, so
        // nothing more is received: what was received and not committed is redelivered after
        // a restart.
        Some(result) => {
            receiving.abort();
            let result = result.unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
            responder.abort();
            dead_letters.abort();
            watching.abort();
            following.abort();
            if let Some(h) = &serving_http {
                h.abort();
            }
            following_dlq.abort();
            let _ = lease_stop_tx.send(true);
            result
        }
    };
    let _ = responder.await;
    let _ = dead_letters.await;
    let _ = watching.await;
    let _ = following.await;
    if let Some(mut h) = serving_http {
        // A client that holds a request open does not hold the stop up for long.
        if tokio::time::timeout(Duration::from_secs(5), &mut h)
            .await
            .is_err()
        {
            h.abort();
        }
    }
    let _ = follow_stop_tx.send(true);
    let _ = following_dlq.await;
    // A checkpoint is the leader's to write: it ends (or is given up, its next interval
    // elsewhere writes another) before the lease is handed back, and never holds a stop long.
    if let Some(mut running) = checkpointing {
        if tokio::time::timeout(CHECKPOINT_GRACE, &mut running)
            .await
            .is_err()
        {
            tracing::warn!("stopping in the middle of a checkpoint upload; it is given up");
            running.abort();
        }
    }
    // Handed back only now: the last dead letters and checkpoint went out under it.
    let _ = lease_stop_tx.send(true);
    let _ = leasing.await;
    outcome?;
    tracing::info!(applied = *applied_rx.borrow(), "stopped");
    Ok(())
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
            Ok(blocking(move || db.set_stream_identity(&identity)).await?)
        }
    }
}
