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
//! The modules follow the life of the data: `tables` (every redb table, in one registry),
//! `store` (the file, its metadata, a batch's commit), `writer` and `fold` (what a batch does to
//! the records), `views` and `reader` (records and snapshots read back), `compare` (a whole
//! database copied or compared).
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
mod compare;
mod counters;
mod error;
mod fold;
mod history;
mod outbox;
mod reader;
mod records;
mod runs;
mod snapshot;
mod store;
mod tables;
mod views;
mod writer;

pub use error::Error;
pub use history::{Point, Step};
pub use outbox::PendingDeadLetter;
pub use runs::DEFAULT_RUN_LEN;
pub use store::{Options, Projections, CACHE_BYTES};
pub use tables::SCHEMA_VERSION;
pub use views::{InvoiceView, KeyView, NodeView, TaskView};

use truebit_streams::{DeadLetter, Message, Minute, Reason, Rejection, Signer};

/// One message of the stream, ready to fold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Its sequence in `TRUEBIT_EVENTS`.
    pub seq: u64,
    /// The minute JetStream stored it: the clock of rate limits (contract §7).
    pub stored_minute: Minute,
    /// What its signature headers show, checked ahead of the fold.
    pub signer: Signer,
    /// The message as read, or why it was refused (refusals are counted, not folded).
    pub event: Result<Message, Refusal>,
}

impl Input {
    /// An unsigned message, as today's monitors send them, stored in minute 0: for a fold that
    /// stays `open`.
    pub fn unsigned(seq: u64, event: Result<Message, Refusal>) -> Self {
        Input {
            seq,
            stored_minute: 0,
            signer: Signer::Unsigned,
            event,
        }
    }
}

/// Whether a fold records dead letters in the outbox: the live fold does; a replay only counts
/// refusals, since it never publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbox {
    Record,
    Skip,
}

/// A message the fold counts as refused instead of folding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    /// What goes to `TRUEBIT_DLQ`, recorded in the outbox by the commit that folds the refusal.
    /// The live fold has one; a replay only counts (it never publishes).
    pub dead_letter: Option<DeadLetter>,
}

impl Refusal {
    /// A refusal with its dead letter, for the live fold.
    pub fn dead_lettered(rejection: &Rejection, subject: &str, seq: u64, payload: &[u8]) -> Self {
        Refusal {
            reason: rejection.reason,
            dead_letter: Some(DeadLetter::new(rejection, subject, seq, payload)),
        }
    }
}

/// A refusal that is only counted, as a replay folds it.
impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Refusal {
            reason,
            dead_letter: None,
        }
    }
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Self {
        rejection.reason.into()
    }
}

/// What one [`Projections::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Inputs folded (events and refusals).
    pub folded: u64,
    /// Inputs at or below the last folded sequence: already folded, so skipped.
    pub skipped: u64,
    /// The last folded sequence after this batch.
    pub last_seq: u64,
    /// Node messages checked in `audit` or `enforce` mode (contract §7), by outcome:
    /// [`ADMISSION_OUTCOMES`] in that order.
    pub admission: [u64; 3],
}

/// The outcomes of an admission check, in the order of [`Applied::admission`].
pub const ADMISSION_OUTCOMES: [&str; 3] = ["admitted", "unauthorized", "rate_limited"];
