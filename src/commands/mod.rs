//! The one-shot commands: each does its work and returns what to print, or an error whose exit
//! code `main` decides (contract §6).
//!
//! - [`init`] creates or updates the topology.
//! - [`stats`] prints a snapshot, from the database file or by asking the running `serve`.
//! - [`replay`] rebuilds the database from the stream, or verifies it against a rebuild.
//! - [`audit`] checks a published number against a rebuild from the streams (contract §11).
//! - [`keys`] makes keys and publishes the operator events of the key registry (contract §7).
//!
//! A command whose database is held by a running `serve` asks it over NATS (`ask`).

mod ask;
pub mod audit;
pub mod init;
pub mod keys;
pub mod replay;
pub mod stats;
