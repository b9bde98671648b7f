//! `serve`: catch up, fold live, publish snapshots, answer `stats` queries.
//!
//! The fold is a two-stage pipeline: [`receive`] pulls, orders ([`order`]) and validates the
//! next batches while [`commit`] folds and commits the previous ones and acks them. Dead letters
//! leave through the outbox ([`dead_letters`]).

mod catch_up;
mod checkpoint;
mod commit;
mod dead_letters;
mod digests;
pub mod http;
mod lag;
mod leader;
pub mod metrics;
pub mod node_history;
mod order;
mod query;
mod receive;
mod running;
mod service;
mod snapshots;
mod start;
pub mod status;

use crate::infra::nats::NatsConfig;
use crate::infra::shutdown::Shutdown;
use crate::infra::topology::{AckMode, TopologyConfig};
use crate::Error;
use service::Service;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
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
    /// `--digest-every`: must equal the network's value in `truebit-config` when given; the
    /// network's value (written there first when absent) is used (contract §11).
    pub digest_every: Option<u64>,
    /// Whether commits keep the state digest. Off only to measure what it costs (`--no-digest`,
    /// for benchmarks): such an instance records no points and publishes no digest.
    pub digest: bool,
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
            digest_every: None,
            digest: true,
        }
    }
}

/// Runs the aggregator until `shutdown` completes, then finishes the batch in hand, commits it
/// and returns.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let shutdown = Shutdown::on(shutdown);
    // Bound first, so that a taken address fails the start at once, before anything is touched.
    let listener = bind_http(&config).await?;
    let opened = start::open(&config).await?;
    let (mut service, mut running) = Service::start(&config, opened, listener, &shutdown).await?;
    let ended = service.run(&mut running, shutdown).await;
    running.stop(ended).await?;
    tracing::info!(applied = service.applied(), "stopped");
    Ok(())
}

/// The HTTP listener, if HTTP is on; its address is told through `config.http_bound`.
async fn bind_http(config: &ServeConfig) -> Result<Option<TcpListener>, Error> {
    let Some(addr) = config.http_addr else {
        return Ok(None);
    };
    let listener = http::bind(addr).await?;
    let bound = listener.local_addr().unwrap_or(addr);
    let _ = config.http_bound.set(bound);
    tracing::info!(%bound, "HTTP: dashboard at http://{bound}/, metrics at /metrics");
    Ok(Some(listener))
}
