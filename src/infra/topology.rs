//! Contract §2 on a server: the JetStream streams, consumer, KV bucket and object store, created
//! idempotently. Their names are the wire contract's ([`truebit_streams::names`]).
//!
//! Every config is written out in full here rather than taken from a client default, so that what
//! the aggregator asks of JetStream is readable in one place and the same on every server version.
//! The KV bucket's backing stream in particular is created by hand: async-nats's
//! `create_key_value` first parses the account info, which the `nats-server` 2.9 that Debian ships
//! answers in a shape it rejects.

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType, Stream};
use async_nats::jetstream::{self, kv, Context};
use std::time::Duration;

pub use truebit_streams::names::{
    CHECKPOINT_BUCKET, CONFIG_BUCKET, CONSUMER, DEFAULT_DIGEST_EVERY, DIGEST_EVERY_KEY, DLQ_STREAM,
    EVENTS_STREAM, HISTORY_STREAM, LEADER_BUCKET, SALT_KEY, STATS_BUCKET,
};
use truebit_streams::subjects;

/// JetStream refuses messages above this size outright; between [`truebit_streams::MAX_PAYLOAD`] and this,
/// they are stored and then dead-lettered as `too_large`, so that the operator sees them.
pub const MAX_STORED_MESSAGE: i32 = 64 * 1024;
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How far a durable consumer may lag the database before it is recreated at the database's
/// position rather than left to redeliver what was already folded.
const MAX_REDELIVERY_TO_SKIP: u64 = 10_000;

/// The settings of the topology that come from the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyConfig {
    /// Replicas of every stream: 1 on a single server, 3 on a cluster.
    pub replicas: usize,
    /// How long raw events are kept; zero keeps them forever, so that `replay` can rebuild all.
    pub events_max_age: Duration,
    /// How long dead letters are kept.
    pub dlq_max_age: Duration,
    /// How long the published history (`TRUEBIT_STATS`) is kept; zero keeps it forever.
    pub stats_max_age: Duration,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            replicas: 1,
            events_max_age: Duration::ZERO,
            dlq_max_age: Duration::from_secs(30 * 24 * 3600),
            stats_max_age: Duration::from_secs(400 * 24 * 3600),
        }
    }
}

/// Handles on the topology, once it exists.
#[derive(Clone)]
pub struct Topology {
    pub events: Stream,
    pub dlq: Stream,
    pub history: Stream,
    pub stats: kv::Store,
    pub leader: kv::Store,
    pub checkpoints: jetstream::object_store::ObjectStore,
}

// The object store handle has no Debug of its own.
impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("events", &EVENTS_STREAM)
            .field("dlq", &DLQ_STREAM)
            .field("history", &HISTORY_STREAM)
            .field("stats", &STATS_BUCKET)
            .field("leader", &LEADER_BUCKET)
            .field("checkpoints", &CHECKPOINT_BUCKET)
            .finish()
    }
}

/// Why the topology could not be made as the contract wants it.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("stream {stream} exists with {setting} = {have}, but the aggregator needs {want}, and JetStream cannot change that setting in place; move its data elsewhere and delete the stream (nats stream rm {stream}), or point the aggregator at another server")]
    Immutable {
        stream: String,
        setting: &'static str,
        have: String,
        want: String,
    },
    #[error("stream {stream} exists with other settings ({settings}) and JetStream refused to update it: {source}; update it by hand or delete it")]
    Update {
        stream: String,
        settings: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("JetStream did not answer {what}: {source}; check that the server runs with JetStream enabled (-js) and that this user may use it")]
    JetStream {
        what: String,
        #[source]
        source: async_nats::Error,
    },
}

impl TopologyError {
    fn js(what: impl Into<String>, source: impl Into<async_nats::Error>) -> Self {
        TopologyError::JetStream {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// JetStream refuses a duplicate window longer than the stream's `max_age`.
fn duplicate_window(max_age: Duration) -> Duration {
    if max_age.is_zero() {
        DUPLICATE_WINDOW
    } else {
        DUPLICATE_WINDOW.min(max_age)
    }
}

/// `TRUEBIT_EVENTS`: the record of everything nodes and operators said.
pub fn events_stream_config(cfg: &TopologyConfig) -> Config {
    let mut subjects: Vec<String> = subjects::INBOUND.iter().map(|s| s.to_string()).collect();
    subjects.push(subjects::ADMIN.to_string());
    Config {
        name: EVENTS_STREAM.to_string(),
        description: Some(
            "TrueBit federation events: the record every aggregate is derived from".into(),
        ),
        subjects,
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: cfg.events_max_age,
        max_message_size: MAX_STORED_MESSAGE,
        duplicate_window: duplicate_window(cfg.events_max_age),
        num_replicas: cfg.replicas,
        ..Default::default()
    }
}

/// `TRUEBIT_DLQ`: every rejected message, with its reason in the headers.
pub fn dlq_stream_config(cfg: &TopologyConfig) -> Config {
    Config {
        name: DLQ_STREAM.to_string(),
        description: Some("TrueBit federation dead letters".into()),
        subjects: vec![format!("{}>", subjects::DLQ_PREFIX)],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: cfg.dlq_max_age,
        duplicate_window: duplicate_window(cfg.dlq_max_age),
        num_replicas: cfg.replicas,
        ..Default::default()
    }
}

/// `TRUEBIT_STATS`: one compact record per published snapshot (contract §8), the network's
/// history for the dashboard and any NATS client.
pub fn history_stream_config(cfg: &TopologyConfig) -> Config {
    Config {
        name: HISTORY_STREAM.to_string(),
        description: Some("TrueBit network history: a record per published snapshot".into()),
        subjects: vec![
            subjects::STATS_HISTORY.to_string(),
            subjects::STATS_DIGEST.to_string(),
        ],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: cfg.stats_max_age,
        duplicate_window: duplicate_window(cfg.stats_max_age),
        num_replicas: cfg.replicas,
        ..Default::default()
    }
}

/// The stream behind the `truebit-stats` KV bucket, as `nats kv add` would make it.
pub fn stats_bucket_stream_config(cfg: &TopologyConfig) -> Config {
    Config {
        name: format!("KV_{STATS_BUCKET}"),
        description: Some("TrueBit network snapshots for late joiners".into()),
        subjects: vec![format!("$KV.{STATS_BUCKET}.>")],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        max_messages_per_subject: 1,
        discard: DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: cfg.replicas,
        ..Default::default()
    }
}

/// The stream behind the `truebit-leader` KV bucket: one value per key, no expiry (the lease's
/// clock is each instance's own, contract §9).
pub fn leader_bucket_stream_config(cfg: &TopologyConfig) -> Config {
    Config {
        name: format!("KV_{LEADER_BUCKET}"),
        description: Some("the lease of the TrueBit aggregator instance that publishes".into()),
        subjects: vec![format!("$KV.{LEADER_BUCKET}.>")],
        ..stats_bucket_stream_config(cfg)
    }
}

/// The stream behind the `truebit-config` KV bucket: the network's settings, the federation salt
/// among them (contract §2, §10).
pub fn config_bucket_stream_config(cfg: &TopologyConfig) -> Config {
    Config {
        name: format!("KV_{CONFIG_BUCKET}"),
        description: Some("TrueBit network settings: the federation salt".into()),
        subjects: vec![format!("$KV.{CONFIG_BUCKET}.>")],
        max_messages_per_subject: 1,
        ..stats_bucket_stream_config(cfg)
    }
}

/// Writes the federation salt when the bucket has none; never overwrites one. Returns whether
/// it wrote it.
pub async fn put_salt_if_absent(js: &Context, salt: &str) -> Result<bool, TopologyError> {
    let kv = js
        .get_key_value(CONFIG_BUCKET)
        .await
        .map_err(|e| TopologyError::js(format!("opening KV bucket {CONFIG_BUCKET}"), e))?;
    match kv
        .create(SALT_KEY, salt.to_string().into_bytes().into())
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(TopologyError::js(
            format!("writing the salt to {CONFIG_BUCKET}"),
            e,
        )),
    }
}

/// The network's `digest-every` (contract §11): the value in `truebit-config`, written there
/// first (`flag`, else the default) when the network has none and `write` allows it. A flag that
/// disagrees with the network's value is an error naming both, since instances that cut their
/// commits elsewhere would record no point in common.
pub async fn digest_every(
    js: &Context,
    flag: Option<u64>,
    write: bool,
) -> Result<u64, crate::Error> {
    let kv = js
        .get_key_value(CONFIG_BUCKET)
        .await
        .map_err(|e| TopologyError::js(format!("opening KV bucket {CONFIG_BUCKET}"), e))?;
    let read = |bytes: &[u8]| -> Result<u64, crate::Error> {
        let text = String::from_utf8_lossy(bytes);
        text.trim().parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            crate::Error::Usage(format!(
                "the KV key {DIGEST_EVERY_KEY} of {CONFIG_BUCKET} holds {text:?}, not a positive number; put the network's value back (nats kv put {CONFIG_BUCKET} {DIGEST_EVERY_KEY} 10000)"
            ))
        })
    };
    let stored = kv.get(DIGEST_EVERY_KEY).await.map_err(|e| {
        TopologyError::js(
            format!("reading {DIGEST_EVERY_KEY} from {CONFIG_BUCKET}"),
            e,
        )
    })?;
    let network = match stored {
        Some(bytes) => read(&bytes)?,
        None if write => {
            let want = flag.unwrap_or(DEFAULT_DIGEST_EVERY);
            match kv
                .create(DIGEST_EVERY_KEY, want.to_string().into_bytes().into())
                .await
            {
                Ok(_) => want,
                // Another instance wrote it first: its value is the network's.
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    let again = kv.get(DIGEST_EVERY_KEY).await.map_err(|e| {
                        TopologyError::js(
                            format!("reading {DIGEST_EVERY_KEY} from {CONFIG_BUCKET}"),
                            e,
                        )
                    })?;
                    read(&again.unwrap_or_default())?
                }
                Err(e) => {
                    return Err(TopologyError::js(
                        format!("writing {DIGEST_EVERY_KEY} to {CONFIG_BUCKET}"),
                        e,
                    )
                    .into())
                }
            }
        }
        None => flag.unwrap_or(DEFAULT_DIGEST_EVERY),
    };
    match flag {
        Some(flag) if flag != network => Err(crate::Error::Usage(format!(
            "--digest-every / DIGEST_EVERY is {flag}, but the network's value (KV key {DIGEST_EVERY_KEY} of {CONFIG_BUCKET}) is {network}; it is one value for the whole network: drop the flag, or set it to {network}"
        ))),
        _ => Ok(network),
    }
}

/// Creates what is missing and updates what differs; fails, naming the setting, when JetStream
/// cannot make an existing stream what the contract wants.
pub async fn ensure(js: &Context, cfg: &TopologyConfig) -> Result<Topology, TopologyError> {
    let events = ensure_stream(js, events_stream_config(cfg)).await?;
    let dlq = ensure_stream(js, dlq_stream_config(cfg)).await?;
    let history = ensure_stream(js, history_stream_config(cfg)).await?;
    ensure_stream(js, stats_bucket_stream_config(cfg)).await?;
    ensure_stream(js, config_bucket_stream_config(cfg)).await?;
    let stats = js
        .get_key_value(STATS_BUCKET)
        .await
        .map_err(|e| TopologyError::js(format!("opening KV bucket {STATS_BUCKET}"), e))?;
    ensure_stream(js, leader_bucket_stream_config(cfg)).await?;
    let leader = js
        .get_key_value(LEADER_BUCKET)
        .await
        .map_err(|e| TopologyError::js(format!("opening KV bucket {LEADER_BUCKET}"), e))?;
    let checkpoints = match js.get_object_store(CHECKPOINT_BUCKET).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(jetstream::object_store::Config {
                bucket: CHECKPOINT_BUCKET.to_string(),
                description: Some("checkpoints of the TrueBit aggregator's projections".into()),
                storage: StorageType::File,
                num_replicas: cfg.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                TopologyError::js(format!("creating object store {CHECKPOINT_BUCKET}"), e)
            })?,
    };
    Ok(Topology {
        events,
        dlq,
        history,
        stats,
        leader,
        checkpoints,
    })
}

async fn ensure_stream(js: &Context, want: Config) -> Result<Stream, TopologyError> {
    let name = want.name.clone();
    let mut stream = match js.get_stream(&name).await {
        Ok(stream) => stream,
        Err(e) if is_not_found(&e) => {
            tracing::info!(stream = %name, "creating stream");
            return js
                .create_stream(want)
                .await
                .map_err(|e| TopologyError::js(format!("creating stream {name}"), e));
        }
        Err(e) => return Err(TopologyError::js(format!("looking up stream {name}"), e)),
    };
    let have = stream
        .info()
        .await
        .map_err(|e| TopologyError::js(format!("reading stream {name}"), e))?
        .config
        .clone();

    if have.storage != want.storage {
        return Err(immutable(&name, "storage", &have.storage, &want.storage));
    }
    if have.retention != want.retention {
        return Err(immutable(
            &name,
            "retention",
            &have.retention,
            &want.retention,
        ));
    }
    let differing = differing_settings(&have, &want);
    if differing.is_empty() {
        return Ok(stream);
    }
    tracing::warn!(stream = %name, settings = %differing.join(", "), "updating stream settings");
    js.update_stream(want)
        .await
        .map_err(|e| TopologyError::Update {
            stream: name.clone(),
            settings: differing.join(", "),
            source: e.into(),
        })?;
    js.get_stream(&name)
        .await
        .map_err(|e| TopologyError::js(format!("looking up stream {name}"), e))
}

fn immutable(
    stream: &str,
    setting: &'static str,
    have: &impl std::fmt::Debug,
    want: &impl std::fmt::Debug,
) -> TopologyError {
    TopologyError::Immutable {
        stream: stream.to_string(),
        setting,
        have: format!("{have:?}"),
        want: format!("{want:?}"),
    }
}

/// The settings this module owns that differ, named as `nats stream info` names them.
fn differing_settings(have: &Config, want: &Config) -> Vec<&'static str> {
    let mut have_subjects = have.subjects.clone();
    let mut want_subjects = want.subjects.clone();
    have_subjects.sort();
    want_subjects.sort();
    let checks = [
        ("subjects", have_subjects != want_subjects),
        ("max_age", have.max_age != want.max_age),
        (
            "max_msg_size",
            limit(have.max_message_size.into()) != limit(want.max_message_size.into()),
        ),
        (
            "duplicate_window",
            have.duplicate_window != want.duplicate_window,
        ),
        (
            "replicas",
            have.num_replicas.max(1) != want.num_replicas.max(1),
        ),
        ("discard", have.discard != want.discard),
        (
            "max_msgs_per_subject",
            limit(have.max_messages_per_subject) != limit(want.max_messages_per_subject),
        ),
        ("allow_rollup_hdrs", have.allow_rollup != want.allow_rollup),
        ("deny_delete", have.deny_delete != want.deny_delete),
        ("allow_direct", have.allow_direct != want.allow_direct),
    ];
    checks
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| name)
        .collect()
}

/// A JetStream limit, where 0 (what a config leaves unset) and -1 (what the server reports back
/// for it) both mean "none": without this, every start-up after the first would "update" a
/// stream to what it already is.
fn limit(value: i64) -> Option<i64> {
    (value > 0).then_some(value)
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(js)
        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

fn consumer_not_found(e: &jetstream::context::ConsumerInfoError) -> bool {
    use jetstream::context::ConsumerInfoErrorKind as Kind;
    match e.kind() {
        Kind::NotFound => true,
        Kind::JetStream(js) => js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

/// Names one incarnation of a stream: its name and creation time. A stream deleted and created
/// again under the same name restarts its sequences at 1, and gets another identity.
pub fn stream_identity(info: &jetstream::stream::Info) -> String {
    truebit_streams::names::stream_identity(&info.config.name, info.created)
}

/// How the live fold acks its durable consumer. Either way an ack goes out only after the commit
/// that holds the effect of every message it covers (contract §2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AckMode {
    /// One ack per commit, for its highest sequence, covering every delivery at or below it:
    /// a thousandth of the acks, for the server to process, at the same guarantee.
    #[default]
    All,
    /// An ack per message.
    Explicit,
}

impl AckMode {
    pub fn parse(s: &str) -> Option<AckMode> {
        match s {
            "all" => Some(AckMode::All),
            "explicit" => Some(AckMode::Explicit),
            _ => None,
        }
    }

    fn policy(self) -> AckPolicy {
        match self {
            AckMode::All => AckPolicy::All,
            AckMode::Explicit => AckPolicy::Explicit,
        }
    }
}

/// The config of the durable consumer `name` (`aggregator`, or `aggregator-<instance>`),
/// delivering from `start` (a stream sequence).
pub fn consumer_config(name: &str, start: u64, ack: AckMode) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_string()),
        description: Some("the live fold of the TrueBit federation aggregator".into()),
        deliver_policy: super::follow::deliver_from(start),
        ack_policy: ack.policy(),
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    }
}

/// Deliveries the aggregator may hold unacked: what `serve` validates and queues while it
/// commits, with room to spare. Below that, JetStream would pause delivery during every commit.
pub const MAX_ACK_PENDING: i64 = 100_000;

/// Opens the durable consumer so that it delivers the message after `applied`, the last sequence
/// the database holds.
///
/// The database's position is the truth; the consumer is recreated at `applied + 1` whenever it
/// disagrees in a way that would cost something: it acked past `applied` (the database was
/// replaced by an older one: it would skip messages the database never saw), it delivered past
/// `applied` (to a process that died or stopped with messages in flight: they would come back
/// only after `ack_wait`, leaving a gap), or it is far behind (thousands of redeliveries only to
/// be skipped). A consumer a little behind is kept; what it redelivers is skipped as folded.
pub async fn aggregator_consumer(
    events: &Stream,
    name: &str,
    applied: u64,
    ack: AckMode,
) -> Result<PullConsumer, TopologyError> {
    let recreate = match events.consumer_info(name).await {
        Ok(info) => {
            let floor = info.ack_floor.stream_sequence;
            let config_ok = info.config.ack_policy == ack.policy()
                && info.config.max_ack_pending == MAX_ACK_PENDING
                && info.config.filter_subject.is_empty()
                && info.config.filter_subjects.is_empty();
            let position_ok = floor <= applied && applied - floor <= MAX_REDELIVERY_TO_SKIP;
            if !config_ok || !position_ok {
                tracing::warn!(
                    ack_floor = floor,
                    applied,
                    config_ok,
                    "recreating consumer {name} at the database's position"
                );
                events
                    .delete_consumer(name)
                    .await
                    .map_err(|e| TopologyError::js(format!("deleting consumer {name}"), e))?;
            }
            !config_ok || !position_ok
        }
        Err(e) if consumer_not_found(&e) => true,
        Err(e) => return Err(TopologyError::js(format!("reading consumer {name}"), e)),
    };
    if recreate {
        events
            .create_consumer(consumer_config(name, applied + 1, ack))
            .await
            .map_err(|e| TopologyError::js(format!("creating consumer {name}"), e))
    } else {
        events
            .get_consumer(name)
            .await
            .map_err(|e| TopologyError::js(format!("opening consumer {name}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use truebit_testkit::NatsServer;

    /// Each stream as the server reports it back after `ensure` is what `ensure` wants: a
    /// second start-up finds nothing to update.
    #[tokio::test]
    async fn the_server_reports_back_exactly_the_settings_ensure_wants() {
        let server = NatsServer::start();
        let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let cfg = TopologyConfig::default();
        ensure(&js, &cfg).await.unwrap();
        for want in [
            events_stream_config(&cfg),
            dlq_stream_config(&cfg),
            history_stream_config(&cfg),
            stats_bucket_stream_config(&cfg),
            leader_bucket_stream_config(&cfg),
        ] {
            let mut stream = js.get_stream(&want.name).await.unwrap();
            let have = stream.info().await.unwrap().config.clone();
            assert_eq!(
                differing_settings(&have, &want),
                Vec::<&str>::new(),
                "{}",
                want.name
            );
        }
    }
}
