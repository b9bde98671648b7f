//! The TrueBit federation aggregator as a service: it wires the wire contract
//! ([`truebit_streams`]) and the projections ([`truebit_projections`]) to NATS.
//!
//! - [`serve`] catches up on `TRUEBIT_EVENTS` through the durable consumer `aggregator`, folds
//!   live in batches (each acked only after the redb commit that holds it), dead-letters what
//!   it refuses, publishes snapshots every interval and answers `stats` queries.
//! - [`stats`] reads a snapshot from the database file, or asks the `serve` that holds it.
//! - [`init`] creates or updates the topology.
//! - [`node()`] is the node agent: it runs beside a TrueBit runner and publishes what it did.
//! - [`replay`] rebuilds the database from the stream, or verifies it against a rebuild.
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
