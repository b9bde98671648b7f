//! The wire contract of the TrueBit federation: what nodes publish, how each message is judged,
//! and the JetStream topology that holds it.
//!
//! - [`validate`] turns one stored message into an [`Event`] or a [`Rejection`] with one of the
//!   contract's reasons and the JSON path of the first bad field. It reads only the fields the
//!   contract names: everything else a node sends (today's monitor adds `blockHash`, exact task
//!   counts, …) is dropped here.
//! - [`topology`] creates the streams, the durable consumer and the KV bucket, idempotently.
//! - [`DeadLetter`] is the shape of a rejected message on `truebit.dlq.<reason>`, and
//!   [`contract_fields`] the body a dead letter may keep of a node's message that could be read:
//!   only the fields the contract names.
//!
//! ```
//! use chrono::Utc;
//! use truebit_streams::{validate, EventKind, Reason};
//!
//! let payload = br#"{"version":"1.0","type":"task_received","timestamp":"2026-11-02T08:00:00.000Z",
//!   "nodeId":"node-a37c1f69-f85a-48e1-8492-a9d82759a3b6",
//!   "data":{"taskIdHash":"dc5bd914475128116974a3e7e7c848deca52b87aea9f8f3e31f7511b993a582b",
//!           "chainId":"1","taskType":"wasm","blockHash":"0x40cf"}}"#;
//! let event = validate("truebit.tasks.received", payload, Utc::now()).unwrap();
//! assert!(matches!(event.kind, EventKind::TaskReceived { .. }));
//!
//! let wrong_subject = validate("truebit.heartbeat", payload, Utc::now()).unwrap_err();
//! assert_eq!(wrong_subject.reason, Reason::Schema);
//! assert_eq!(wrong_subject.path.as_deref(), Some("$.type"));
//! ```

#[cfg(test)]
mod agreement;
mod dead_letter;
mod event;
mod fast;
mod json;
mod labels;
mod redact;
mod rejection;
mod rules;
pub mod subjects;
pub mod topology;
mod validate;

pub use dead_letter::{
    DeadLetter, HEADER_DETAIL, HEADER_ORIGINAL_SEQ, HEADER_ORIGINAL_SUBJECT, HEADER_PATH,
    HEADER_REASON,
};
pub use event::{Digest, Event, EventKind, Heartbeat, Invoice, Location, Minute, Outcome};
pub use labels::{ActiveTasks, Continent, ExecutionTime, Magnitude, Memory, TotalTasks};
pub use redact::contract_fields;
pub use rejection::{Reason, Rejection};
pub use rules::{MAX_CLOCK_SKEW_SECS, MAX_PAYLOAD};
pub use validate::validate;
