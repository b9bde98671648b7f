//! The TrueBit federation aggregator as a service: it wires the wire contract
//! ([`truebit_streams`]) and the projections ([`truebit_projections`]) to NATS. One binary,
//! three kinds of work, a folder each:
//!
//! - [`serve`] (`serve/`) runs for as long as the network does: it catches up on
//!   `TRUEBIT_EVENTS` through its durable consumer, folds live in batches (each acked only after
//!   the redb commit that holds it), sends the dead letters it recorded, and, while it holds the
//!   lease, publishes snapshots, history records and checkpoints; it answers `stats` over NATS
//!   and HTTP (metrics, health, the API, the dashboard). `serve/mod.rs` reads as its table of
//!   contents.
//! - [`node()`] (`node/`) runs beside a TrueBit runner: it reads the runner's files, publishes
//!   anonymized, signed events paced to its key's rate, and shows the node the network's numbers.
//! - [`commands`] run once: [`init`], [`stats`], [`replay`] (and `--verify`), [`audit`], `keys`.
//!
//! `infra/` is what they share (NATS, the topology, shutdown, backoff, files); `cli.rs` the flags;
//! `error.rs` every error and its exit code. A new metric goes in `serve/metrics.rs`, a new
//! endpoint in `serve/http/`, a new command in `commands/` and `cli.rs`, a new event type or
//! field in `truebit_streams` (and its fold in `truebit_projections`).
//!
//! `serve` takes its shutdown as a future, so that tests drive it as `main` does with signals:
//!
//! ```no_run
//! # async fn example() -> Result<(), truebit_federation::Error> {
//! use truebit_federation::{serve, ServeConfig};
//! let config = ServeConfig::new("nats://127.0.0.1:4222", "./data/aggregator.redb");
//! serve(config, async { tokio::signal::ctrl_c().await.ok(); }).await
//! # }
//! ```

pub mod cli;
pub mod commands;
mod error;
pub mod infra;
pub mod node;
pub mod serve;

pub use commands::audit::{audit, AuditConfig};
pub use commands::init::init;
pub use commands::replay::{replay, ReplayConfig};
pub use commands::stats::{render, stats, StatsConfig};
pub use error::Error;
pub use infra::nats::NatsConfig;
pub use infra::topology::{self, AckMode};
pub use node::{node, NodeConfig};
pub use serve::node_history::{NodeCounts, NodeHistory};
pub use serve::{serve, ServeConfig};
pub use truebit_streams::names::HEADER_LAST_SEQ;
