//! The projections of the TrueBit federation: tasks, invoices and nodes folded from validated
//! events into redb, and the network snapshot of contract §5.3 computed over them.
//!
//! This crate never touches the network. It is handed batches of [`Input`]s (a stream sequence
//! and the validated event or the reason it was refused) and folds each exactly once: the
//! sequence of the last folded input is committed in the same write transaction as the changes it
//! produced, and an input at or below it is skipped. That is what makes redelivery, crashes and
//! restarts harmless. A refusal's [`DeadLetter`] is recorded in the outbox in that same
//! transaction ([`Outbox::Record`]), for the service to publish and then
//! [drop](Projections::drop_dead_letters): a crash neither loses nor doubles one.
//!
//! The key registry of contract §7 is folded here too, from operator events in the same stream:
//! whether a node message is admitted is decided in stream order (`admission.rs`), so a replay
//! admits exactly what the live fold admitted.
//!
//! The modules follow the life of the data: `input` (a stored message read into an [`Input`],
//! its signature checked), `tables` (every redb table, in one registry, with the meta keys),
//! `records` (how each is stored), `store` (the file, a batch's commit), `writer`, `fold` and
//! `admission` (what a batch does to the records and the key registry), `views`, `reader` and
//! `history` (records, snapshots and series read back), `outbox` (dead letters waiting),
//! `compare` (a whole database copied or compared), and, with the feature `tokio`, `task` (redb
//! work from async code).
//!
//! Tasks and invoices, keyed by random hashes, are stored so that a new one is appended rather
//! than written into a random page: first in creation order, then sealed in sorted runs of
//! [`DEFAULT_RUN_LEN`] (see `src/runs.rs`, and [`Options`]).
//!
//! ```
//! use truebit_projections::{Input, Outbox, Projections, Refusal};
//! use truebit_streams::Period;
//! use truebit_streams::validate;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = Projections::open(dir.path().join("aggregator.redb")).unwrap();
//! let stored_at = chrono::Utc::now();
//! let hb = format!(r#"{{"version":"1.0","type":"heartbeat","nodeId":"node-1",
//!     "timestamp":"{}","data":{{"continentBucket":"EU"}}}}"#, stored_at.to_rfc3339());
//! let event = validate("truebit.heartbeat", hb.as_bytes(), stored_at).map_err(Refusal::from);
//!
//! let event = event.map(Into::into);
//! db.apply(&[Input::unsigned(1, event.clone())], Outbox::Record).unwrap();
//! db.apply(&[Input::unsigned(1, event)], Outbox::Record).unwrap(); // redelivered: folded once
//!
//! let now = stored_at.timestamp() / 60;
//! let snapshot = db.snapshot(now, Period::All).unwrap();
//! assert_eq!((snapshot.active_nodes, snapshot.total_nodes), (1, 1));
//! assert_eq!(db.node("node-1").unwrap().unwrap().heartbeat_count, 1);
//! ```

mod admission;
mod batch;
mod compare;
mod counters;
pub mod digest;
mod error;
mod fold;
mod history;
mod input;
mod outbox;
mod reader;
mod records;
mod runs;
mod snapshot;
mod store;
mod tables;
#[cfg(feature = "tokio")]
pub mod task;
mod views;
mod writer;

pub use batch::{Applied, Outbox, ADMISSION_OUTCOMES};
pub use digest::StateDigest;
pub use error::Error;
pub use history::{Point, Step};
pub use input::{inputs, Checks, Input, Refusal, Stored};
pub use outbox::PendingDeadLetter;
pub use runs::DEFAULT_RUN_LEN;
pub use store::{Options, Projections, CACHE_BYTES};
pub use tables::SCHEMA_VERSION;
pub use views::{InvoiceView, KeyView, NodeView, TaskView};
