//! `truebit-federation node` (contract §10): runs beside a TrueBit runner, reads its EventDB and
//! logs, publishes anonymized, signed events through JetStream with nothing lost, and gives the
//! node the network's numbers.
//!
//! Each file does one job: [`runner`] reads the raw formats, [`tracker`] turns them into events
//! (with [`truebit_streams::anonymize`] deciding what may leave), [`eventdb`] and [`logs`] watch
//! the files (`folder` lists them), [`state`] remembers what was read and keeps the outbox,
//! [`publisher`] sends it, [`network`] follows the snapshots, [`http`] shows them.

pub mod eventdb;
#[cfg(test)]
mod fixtures_test;
mod folder;
pub mod http;
pub mod logs;
pub mod network;
pub mod publisher;
pub mod runner;
pub mod state;
pub mod tracker;

use crate::infra::shutdown::{Shutdown, Stop};
use crate::{Error, NatsConfig};
use state::{Batch, Outgoing, State};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Notify};
use tracker::Tracker;
use truebit_streams::anonymize::{self, Salt};
use truebit_streams::names::{CONFIG_BUCKET, SALT_KEY};
use truebit_streams::{Event, EventKind, Heartbeat};

/// The settings of §10.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub nats: NatsConfig,
    /// The runner's `*-eventDB.json`, or a folder that holds it.
    pub eventdb: Option<PathBuf>,
    /// The runner's debug log folder.
    pub logs: Option<PathBuf>,
    pub salt: Option<String>,
    pub key_seed: Option<PathBuf>,
    pub node_id: Option<String>,
    pub state_dir: PathBuf,
    /// `None`: no HTTP endpoint.
    pub http_addr: Option<SocketAddr>,
    /// The aggregator's publish interval: a snapshot older than two is `stale`.
    pub publish_interval: Duration,
    pub heartbeat_interval: Duration,
    /// How often the runner's files are looked at.
    pub poll_interval: Duration,
    /// How long an event waits for a better source of its time or figures (see [`tracker`]).
    pub grace: Duration,
    /// Most events the outbox holds; when full, the runner's files are not read until it drains.
    pub outbox_max: u64,
    /// The key's `rateLimit` (contract §7): most messages sent in any minute.
    pub rate_limit: u32,
}

impl NodeConfig {
    pub fn new(nats_url: &str, state_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            nats: NatsConfig::new(nats_url),
            eventdb: None,
            logs: None,
            salt: None,
            key_seed: None,
            node_id: None,
            state_dir: state_dir.into(),
            http_addr: Some(SocketAddr::from(([127, 0, 0, 1], 8481))),
            publish_interval: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            grace: Duration::from_secs(60),
            outbox_max: 100_000,
            rate_limit: 60,
        }
    }
}

/// `node --show-id`: the `nodeId` this agent publishes as (made and kept on first use).
pub fn show_id(state_dir: &Path, given: Option<&str>) -> Result<String, Error> {
    State::open(state_dir)?.node_id(given)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn outgoing(event: &Event) -> Outgoing {
    Outgoing {
        subject: event.subject().to_string(),
        msg_id: anonymize::msg_id(event),
        payload: event.payload(),
    }
}

/// Puts a heartbeat, join or leave in the outbox, numbered (see [`State::enqueue_numbered`]).
fn enqueue_status(state: &State, node_id: &str, kind: EventKind) -> Result<String, Error> {
    let event = Event {
        node_id: node_id.to_string(),
        minute: anonymize::floor_5min(now()),
        kind,
    };
    state.enqueue_numbered(
        &format!("{node_id}:{}", event.type_name()),
        event.subject().to_string(),
        event.payload(),
    )
}

/// Runs the agent until `shutdown` completes; then says `node_left` and stops.
pub async fn node(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let key = match &config.key_seed {
        Some(path) => Some(Arc::new(crate::infra::seed::read_seed(
            path,
            "the node key seed",
        )?)),
        None => {
            tracing::warn!("no --key-seed / NODE_KEY_SEED: messages go unsigned, which only an open network admits");
            None
        }
    };
    let given_salt = match &config.salt {
        Some(s) => Some(Salt::new(s).ok_or_else(|| {
            Error::Usage("--federation-salt / FEDERATION_SALT is empty; give the network's salt, or leave it unset to read it from the truebit-config KV bucket".into())
        })?),
        None => None,
    };
    let listener = match config.http_addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::Usage(format!("cannot listen on {addr}: {e}; choose another --http-addr / NODE_HTTP_ADDR, or `off`"))
        })?),
        None => None,
    };
    let state = Arc::new(State::open(&config.state_dir)?);
    let node_id = state.node_id(config.node_id.as_deref())?;
    tracing::info!(%node_id, signed_by = ?key.as_ref().map(|k| k.public_key().to_string()), "node agent starting");

    let (connected, _) = broadcast::channel(16);
    let joined_rx = connected.subscribe();
    let network_rx = connected.subscribe();
    let client = config
        .nats
        .connect_patiently("truebit-federation node", connected.clone())
        .await?;
    let js = async_nats::jetstream::new(client.clone());
    let wake = Arc::new(Notify::new());
    let pacer = Arc::new(std::sync::Mutex::new(publisher::Pacer::resume(
        config.rate_limit,
        publisher::WINDOW,
        &state.recent_acks()?,
        Instant::now(),
        chrono::Utc::now().timestamp_millis(),
    )));

    let view: network::View = Arc::new(std::sync::Mutex::new(state.snapshot()?));
    let mut tasks = Vec::new();
    if let Some(listener) = listener {
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /api/federation/network-stats");
        tasks.push(tokio::spawn(http::serve(
            listener,
            view.clone(),
            config.publish_interval,
        )));
    }
    tasks.push(tokio::spawn(network::follow(
        client.clone(),
        state.clone(),
        view,
        network_rx,
    )));
    let publisher = tokio::spawn(
        publisher::Publisher {
            js: js.clone(),
            state: state.clone(),
            key: key.clone(),
            wake: wake.clone(),
            pacer: pacer.clone(),
        }
        .run(),
    );

    // The salt: given, or read from KV until NATS has it.
    let salt: Arc<OnceLock<Salt>> = Arc::new(OnceLock::new());
    if let Some(s) = given_salt {
        let _ = salt.set(s);
    } else {
        tasks.push(tokio::spawn(fetch_salt(js.clone(), salt.clone())));
    }

    let counts = Arc::new(Counts::default());
    let (stop, stopping) = Stop::new();
    let reader = {
        let (state, salt, counts, stop, wake, node_id, config) = (
            state.clone(),
            salt.clone(),
            counts.clone(),
            stopping,
            wake.clone(),
            node_id.clone(),
            config.clone(),
        );
        tokio::task::spawn_blocking(move || {
            read_loop(&config, &state, &salt, &counts, &stop, &wake, &node_id)
        })
    };

    let mut alive = tokio::spawn(say_alive(
        state.clone(),
        node_id.clone(),
        counts.clone(),
        wake.clone(),
        joined_rx,
        config.heartbeat_interval,
    ));
    let mut reader = tokio::spawn(truebit_projections::task::joined(reader));

    // Until asked to stop, or until the reader or the heartbeat cannot go on: an agent that
    // heartbeats while reading nothing would look healthy to the network and to its supervisor.
    let failed = tokio::select! {
        _ = shutdown => None,
        r = &mut reader => Some(match r {
            Ok(Err(e)) => e,
            Ok(Ok(())) => Error::Usage("the reader of the runner's files stopped".into()),
            Err(e) => Error::Usage(format!("the reader of the runner's files failed: {e}")),
        }),
        r = &mut alive => Some(match r {
            Ok(e) => e,
            Err(e) => Error::Usage(format!("the heartbeat failed: {e}")),
        }),
    };
    let read_result = match failed {
        None => {
            tracing::info!("stopping: saying node_left");
            stop.stop();
            reader.await.unwrap_or_else(|e| {
                Err(Error::Usage(format!(
                    "the reader of the runner's files failed: {e}"
                )))
            })
        }
        Some(e) => {
            tracing::error!(error = %e, "the agent cannot go on: stopping, so that its supervisor restarts it");
            stop.stop();
            Err(e)
        }
    };
    alive.abort();
    for t in &tasks {
        t.abort();
    }
    publisher.abort();
    let _ = publisher.await;
    if let Err(e) = enqueue_status(
        &state,
        &node_id,
        EventKind::NodeLeft {
            status: Some("offline".into()),
        },
    ) {
        tracing::error!(error = %e, "cannot put node_left in the outbox");
        // The first failure is the one to report.
        return Err(read_result.err().unwrap_or(e));
    }
    let last = publisher::Publisher {
        js,
        state: state.clone(),
        key,
        wake,
        pacer,
    };
    match tokio::time::timeout(Duration::from_secs(5), last.drain()).await {
        Ok(Ok(_)) => tracing::info!("the outbox is empty; stopped"),
        _ => tracing::warn!(
            waiting = state.outbox_len().unwrap_or(0),
            "NATS did not take everything before stopping; the rest goes at the next start"
        ),
    }
    let _ = client.flush().await;
    read_result
}

/// Reads the federation salt from KV until it is there, saying clearly why nothing is read.
async fn fetch_salt(js: async_nats::jetstream::Context, salt: Arc<OnceLock<Salt>>) {
    let mut said = None::<Instant>;
    loop {
        let found = match js.get_key_value(CONFIG_BUCKET).await {
            Ok(kv) => kv.get(SALT_KEY).await.ok().flatten(),
            Err(_) => None,
        };
        if let Some(s) = found.and_then(|v| Salt::new(&String::from_utf8_lossy(&v))) {
            tracing::info!("read the federation salt from the truebit-config KV bucket");
            let _ = salt.set(s);
            return;
        }
        if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!("no federation salt: neither --federation-salt / FEDERATION_SALT nor the key `salt` of the KV bucket truebit-config (written by `truebit-federation init --federation-salt S`); the runner's files are not read until there is one, because a hash without the network's salt never deduplicates. Retrying");
            said = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `node_joined` on every connect and reconnect; a heartbeat every interval, buckets only.
/// Returns only when one cannot be put in the outbox.
async fn say_alive(
    state: Arc<State>,
    node_id: String,
    counts: Arc<Counts>,
    wake: Arc<Notify>,
    mut connected: broadcast::Receiver<()>,
    every: Duration,
) -> Error {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let event = tokio::select! {
            r = connected.recv() => {
                if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                    // The client is gone; the agent is stopping.
                    std::future::pending::<()>().await;
                }
                EventKind::NodeJoined { status: Some("online".into()) }
            }
            _ = ticks.tick() => EventKind::HeartbeatReported(Heartbeat {
                status: Some("online".into()),
                total_tasks: Some(anonymize::total_tasks(counts.total.load(Ordering::Relaxed))),
                active_tasks: Some(anonymize::active_tasks(counts.active.load(Ordering::Relaxed))),
                continent: None,
                location: None,
            }),
        };
        if let Err(e) = enqueue_status(&state, &node_id, event) {
            return e;
        }
        wake.notify_one();
    }
}

/// In hand past this many executions and invoices, the reader commits what it read so far and
/// lets it go: what bounds the agent's memory, whatever the runner's history.
const HOLD: usize = 4096;
/// EventDB records whose keys are looked up in the state at once.
const KEYS_AT_ONCE: usize = 1024;

/// What the reader's steps share.
struct Reading<'a> {
    state: &'a State,
    salt: &'a Salt,
    node_id: &'a str,
    grace: i64,
    outbox_max: u64,
    wake: &'a Notify,
    counts: &'a Counts,
    /// When every file was first read to its end: what was read by then waits for no grace.
    read_through: Option<i64>,
}

impl Reading<'_> {
    /// Commits what is in hand, what was read and the events ready at `at`, then lets it go.
    fn commit(&self, tracker: &mut Tracker, batch: &mut Batch, at: i64) -> Result<usize, Error> {
        let events: Vec<Outgoing> = tracker
            .ready(at, self.grace, self.read_through, self.node_id, self.salt)
            .iter()
            .map(|r| outgoing(&r.event))
            .collect();
        // A record that could not be recalled was taken for a new one: nothing of this step may
        // be kept.
        if let Some(why) = tracker.take_failure() {
            return Err(Error::Usage(format!(
                "the agent's state cannot be read: {why}"
            )));
        }
        let made = events.len();
        batch.events.extend(events);
        if tracker.has_changes() || !batch.is_empty() {
            self.state.commit(Some(tracker), std::mem::take(batch))?;
        }
        tracker.release();
        self.counts.set(self.state.counts()?);
        if made > 0 {
            tracing::info!(events = made, "read the runner's files");
            self.wake.notify_one();
        }
        Ok(made)
    }

    /// Brings in hand what waited for its grace period until now (or was read before the
    /// files were first read through), and commits the events it makes, [`HOLD`] at a time.
    fn sweep(&self, tracker: &mut Tracker, batch: &mut Batch, at: i64) -> Result<(), Error> {
        let until = (at - self.grace).max(self.read_through.unwrap_or(i64::MIN));
        loop {
            let due = self.state.waiting(until, HOLD)?;
            let more = due.len() >= HOLD;
            for key in due {
                match key {
                    tracker::Key::Execution(id) => tracker.hold_execution(&id),
                    tracker::Key::Invoice(id) => tracker.hold_invoice(&id),
                }
            }
            let made = self.commit(tracker, batch, at)?;
            if !more || made == 0 || self.full()? {
                return Ok(());
            }
        }
    }

    fn full(&self) -> Result<bool, Error> {
        Ok(self.state.outbox_len()? >= self.outbox_max)
    }

    /// Takes a chunk of EventDB records: those whose keys were not read before.
    fn records(
        &self,
        tracker: &mut Tracker,
        batch: &mut Batch,
        chunk: &mut Vec<runner::Record>,
        at: i64,
    ) -> Result<(), Error> {
        let keys: Vec<String> = chunk.iter().map(|r| r.key()).collect();
        let unseen = self.state.unseen(&keys)?;
        for ((record, key), new) in chunk.drain(..).zip(keys).zip(unseen) {
            if new {
                tracker.record(&record, at);
                batch.seen.push(key);
            }
        }
        if tracker.in_hand() >= HOLD {
            self.commit(tracker, batch, at)?;
        }
        Ok(())
    }
}

/// What the heartbeat says of the runner: executions seen, and those received and not completed.
/// The reader sets them as it commits; the heartbeat reads them.
#[derive(Debug, Default)]
struct Counts {
    total: AtomicU64,
    active: AtomicU64,
}

impl Counts {
    fn set(&self, (total, active): (u64, u64)) {
        self.total.store(total, Ordering::Relaxed);
        self.active.store(active, Ordering::Relaxed);
    }
}

/// Reads the runner's files every poll, until `stop`: what was read and the events it made are
/// committed together, at least once a cycle and whenever [`HOLD`] are in hand. Returns `Err`
/// when it cannot go on (the state cannot be read or written, a source failed past its
/// retries): the agent then stops, saying why.
fn read_loop(
    config: &NodeConfig,
    state: &Arc<State>,
    salt: &OnceLock<Salt>,
    counts: &Counts,
    stop: &Shutdown,
    wake: &Notify,
    node_id: &str,
) -> Result<(), Error> {
    let mut tracker = state.tracker()?;
    let (positions, gz_read) = state.logs()?;
    let mut logs = config
        .logs
        .clone()
        .map(|dir| logs::Logs::new(dir, positions, gz_read));
    let mut eventdb = config.eventdb.clone().map(eventdb::EventDb::new);
    let mut first = true;
    let mut full = false;
    counts.set(state.counts()?);
    let pause = |stop: &Shutdown| {
        let until = Instant::now() + config.poll_interval;
        while Instant::now() < until && !stop.is_shutdown() {
            std::thread::sleep(Duration::from_millis(50).min(config.poll_interval));
        }
    };
    let mut reading: Option<Reading> = None;
    while !stop.is_shutdown() {
        let Some(salt) = salt.get() else {
            pause(stop);
            continue;
        };
        let r = reading.get_or_insert_with(|| Reading {
            state,
            salt,
            node_id,
            grace: config.grace.as_secs() as i64,
            outbox_max: config.outbox_max,
            wake,
            counts,
            read_through: None,
        });
        let waiting = state.outbox_len()?;
        if waiting >= config.outbox_max {
            if !full {
                tracing::warn!(waiting, max = config.outbox_max, "the outbox is full: the runner's files are not read until NATS takes what waits (nothing read is lost; a log rotated away meanwhile is)");
            }
            full = true;
            pause(stop);
            continue;
        }
        if full {
            tracing::info!(
                waiting,
                "the outbox has room again: reading the runner's files"
            );
            full = false;
        }
        let at = now();
        let mut batch = Batch::default();
        if let Some(logs) = &mut logs {
            if first {
                logs.read_gz_once(&mut tracker, at, &mut batch, HOLD, &mut |t, b| {
                    r.commit(t, b, at).map(|_| ())
                })?;
            }
            // A step of each log at a time, each committed, until they are read through.
            while logs.poll(&mut tracker, at, &mut batch)? {
                r.commit(&mut tracker, &mut batch, at)?;
                if stop.is_shutdown() || r.full()? {
                    break;
                }
            }
        }
        first = false;
        if let Some(db) = &mut eventdb {
            let mut chunk = Vec::with_capacity(KEYS_AT_ONCE);
            let polled = db.poll(&mut |record| {
                chunk.push(record);
                if chunk.len() >= KEYS_AT_ONCE {
                    r.records(&mut tracker, &mut batch, &mut chunk, at)
                        .map_err(eventdb::Halt::Failed)?;
                    if r.full().map_err(eventdb::Halt::Failed)? {
                        return Err(eventdb::Halt::Full);
                    }
                }
                Ok(())
            });
            // A full outbox stopped it: the rest is read once there is room.
            if let Err(eventdb::Halt::Failed(e)) = polled {
                return Err(e);
            }
            // The records before a cut or a stop are whole: taken like the others.
            r.records(&mut tracker, &mut batch, &mut chunk, at)?;
        }
        if r.read_through.is_none()
            && eventdb.as_ref().is_none_or(|e| e.read_through())
            && logs.as_ref().is_none_or(|l| l.read_through())
        {
            tracing::info!("read the runner's files to their end: what they held goes out now, without waiting --grace for a better source");
            r.read_through = Some(at);
        }
        r.commit(&mut tracker, &mut batch, at)?;
        r.sweep(&mut tracker, &mut batch, at)?;
        pause(stop);
    }
    Ok(())
}
