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

mod backoff;
mod checkpoint;
pub mod cli;
mod dead_letters;
mod error;
mod files;
pub mod history;
pub mod http;
mod init;
pub mod keys;
mod leader;
mod nats;
pub mod node;
mod publish;
mod query;
mod replay;
mod serve;
mod stats;
pub mod topology;

pub use error::Error;
pub use history::{NodeCounts, NodeHistory};
pub use init::init;
pub use nats::NatsConfig;
pub use node::{node, NodeConfig};
pub use replay::{replay, ReplayConfig};
pub use serve::{serve, ServeConfig};
pub use stats::{render, stats, StatsConfig};
pub use topology::AckMode;
pub use truebit_streams::names::HEADER_LAST_SEQ;
