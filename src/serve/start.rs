//! What `serve` opens before anything runs: the NATS connection, the topology, the database,
//! checked against the stream it was folded from, and the durable consumer placed after it.

use super::ServeConfig;
use crate::infra::topology::{self, Topology};
use crate::Error;
use async_nats::jetstream::{self, consumer::PullConsumer};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use truebit_projections::task::blocking;
use truebit_projections::Projections;
use truebit_streams::names::consumer_name;

/// Everything opened, in the state the fold starts from.
pub(super) struct Opened {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub topology: Topology,
    pub db: Arc<Projections>,
    /// The last sequence folded into the database.
    pub applied: u64,
    /// The stream's last sequence at start: where start-up catch-up ends.
    pub target: u64,
    /// Which incarnation of `TRUEBIT_EVENTS` this is, and when it was created.
    pub identity: String,
    pub created: DateTime<Utc>,
    pub consumer: PullConsumer,
}

/// Connects, creates the topology if missing, opens the database and refuses one that does not
/// belong to this stream or that events expired from before they were folded.
pub(super) async fn open(config: &ServeConfig) -> Result<Opened, Error> {
    let client = config.nats.connect("truebit-federation serve").await?;
    let js = jetstream::new(client.clone());
    let topology = topology::ensure(&js, &config.topology).await?;
    let every = topology::digest_every(&js, config.digest_every, true).await?;
    let (path, admin_key, digest) = (
        config.db_path.clone(),
        config.admin_key.clone(),
        config.digest,
    );
    let db = Arc::new(
        blocking(move || {
            let db = Projections::open(path)?;
            db.bind_admin_key(admin_key.as_ref())?;
            db.set_digest(digest);
            db.set_digest_every(every);
            // Checkpoints copy the state at a digest point, so that an auditor can check one.
            db.keep_point_views(true);
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
    let consumer = topology::aggregator_consumer(
        &topology.events,
        &consumer_name(config.instance.as_deref()),
        applied,
        config.ack_mode,
    )
    .await?;
    Ok(Opened {
        client,
        js,
        topology,
        db,
        applied,
        target,
        identity,
        created: info.created,
        consumer,
    })
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
