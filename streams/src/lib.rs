//! The wire contract of the TrueBit federation, in and out: what nodes publish, how each message
//! is judged, what a rejected message leaves behind, and what the aggregator publishes. Pure: no
//! I/O here, so that the fold, a replay and a test all read a message the same way.
//! The same protocol in prose, for node implementers: `streams/PROTOCOL.md` in the repository.
//!
//! - [`validate`] turns one stored message into an [`Event`] or a [`Rejection`] with one of the
//!   contract's reasons and the JSON path of the first bad field. It reads only the fields the
//!   contract names: everything else a node sends (today's monitor adds `blockHash`, exact task
//!   counts, …) is dropped here.
//! - [`DeadLetter`] is a rejected message as it goes to `truebit.dlq.<reason>`, keeping no more
//!   of the body than privacy allows: [`contract_fields`] is the body it may keep of a node's
//!   message that could be read, only the fields the contract names.
//! - [`Snapshot`] is the network snapshot as nodes read it, per [`Period`].
//! - [`read`] is the one reading of any stored message: a node's [`Event`] or an operator's
//!   [`Operator`] event of the key registry (contract §7).
//! - [`SigningKey`] signs a message and [`Verifier`] checks one: [`Signer`] is what the headers
//!   show, before the registry is asked whether that key may publish.
//! - [`anonymize`] is the producer side (§10): salted hashes, buckets from raw figures,
//!   5-minute times and the `Nats-Msg-Id` of an event, as a node agent publishes them.
//! - [`HistoryRecord`] is what each publish appends to `TRUEBIT_STATS`: the network's history.
//! - [`subjects`] and [`names`] spell every subject, stream, bucket, key and header.
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
pub mod anonymize;
mod dead_letter;
mod encode;
mod event;
mod fast;
mod history;
mod json;
mod labels;
pub mod names;
mod operator;
mod redact;
mod rejection;
mod rules;
mod signature;
mod snapshot;
pub mod subjects;
mod validate;

pub use dead_letter::{msg_id as dead_letter_msg_id, DeadLetter, KEEP_AS_SENT};
pub use encode::minute_timestamp;
pub use event::{
    now_minute, parse_minute, Digest, Event, EventKind, Heartbeat, Invoice, Location, Minute,
    Outcome,
};
pub use history::{DigestPoint, HistoryRecord};
pub use labels::{ActiveTasks, Continent, ExecutionTime, Magnitude, Memory, TotalTasks};
pub use operator::{
    operator_payload, read, KeyGrant, Message, Mode, Operator, OperatorKind, Permissions, Target,
    DEFAULT_RATE_LIMIT, MAX_RATE_LIMIT,
};
pub use redact::contract_fields;
pub use rejection::{Reason, Rejection};
pub use rules::{MAX_CLOCK_SKEW_SECS, MAX_PAYLOAD};
pub use signature::{PublicKey, Signer, SigningKey, Verifier};
pub use snapshot::{rate, AdminKeyQuery, Period, Snapshot, StatsQuery, MAX_DISTINCT};
pub use validate::validate;
