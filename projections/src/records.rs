//! What the projections hold per task, invoice and node, and how each is stored.

use serde::{Deserialize, Serialize};
use truebit_streams::{DeadLetter, Minute, Outcome, Permissions};

/// A task, keyed by `taskIdHash` (contract §5.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskRecord {
    pub first_seen: Minute,
    pub last_seen: Minute,
    /// Whether a `task_received` was folded: the first one sets the metadata below.
    pub received: bool,
    pub chain_id: Option<String>,
    pub task_type: Option<String>,
    /// From the last `task_completed` in stream order.
    pub outcome: Option<StoredOutcome>,
    /// Distinct publishers (see [`crate::tables::PUBLISHERS`]), sorted.
    pub reporters: Vec<u32>,
}

/// A completion's outcome, with bucket labels stored by index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredOutcome {
    pub success: Option<bool>,
    pub status: Option<String>,
    pub execution_time: Option<u8>,
    pub gas_used: Option<u8>,
    pub cached: Option<bool>,
}

impl From<&Outcome> for StoredOutcome {
    fn from(o: &Outcome) -> Self {
        StoredOutcome {
            success: o.success,
            status: o.status.clone(),
            execution_time: o.execution_time.map(|b| b.index() as u8),
            gas_used: o.gas_used.map(|b| b.index() as u8),
            cached: o.cached,
        }
    }
}

/// An invoice, keyed by `invoiceIdHash`; its metadata is from the first report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InvoiceRecord {
    pub first_seen: Minute,
    pub last_seen: Minute,
    pub task: Option<[u8; 32]>,
    pub chain_id: Option<String>,
    pub steps_computed: Option<u8>,
    pub memory_used: Option<u8>,
    pub operation: Option<String>,
    pub reporters: Vec<u32>,
}

/// A node, keyed by `nodeId`: created by its first heartbeat or `node_joined`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    /// The event time of the message that created it.
    pub first_seen: Minute,
    /// The latest heartbeat time; `None` until the first heartbeat.
    pub last_seen: Option<Minute>,
    pub heartbeat_count: u64,
    /// From a `node_left` until its next heartbeat in stream order.
    pub offline: bool,
    pub status: Option<String>,
    pub total_tasks: Option<u8>,
    pub active_tasks: Option<u8>,
    pub continent: Option<u8>,
    pub location: Option<(i16, i16)>,
}

/// A key of the registry, keyed by its public key (contract §7): the grant as last issued, its
/// revocation, and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    pub name: String,
    pub node_id: Option<String>,
    pub permissions: Permissions,
    pub rate_limit: u32,
    /// The event time of the `key_issued` that made the record what it is.
    pub issued_at: Minute,
    pub revoked_at: Option<Minute>,
    pub revoke_reason: Option<String>,
    /// Node messages signed by this key that passed every check (in `audit` and `enforce`).
    pub admitted: u64,
    pub unauthorized: u64,
    pub rate_limited: u64,
    /// The minute of JetStream's stored time this key's rate is counted in, and how many of its
    /// messages passed every check in it.
    pub window: (Minute, u32),
}

/// Encodes a record for storage.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("records serialize: they hold no maps with non-string keys")
}

/// Decodes a stored record, naming the table when the bytes are not one.
pub(crate) fn decode<'a, T: Deserialize<'a>>(
    table: &'static str,
    bytes: &'a [u8],
) -> Result<T, crate::Error> {
    postcard::from_bytes(bytes).map_err(|e| crate::Error::Corrupt {
        table,
        detail: e.to_string(),
    })
}

/// An outbox entry: the dead letter, then the minute its refused message was stored.
pub(crate) fn outbox_entry(dead_letter: &DeadLetter, stored_minute: Minute) -> Vec<u8> {
    let mut bytes = encode(dead_letter);
    bytes.extend(encode(&stored_minute));
    bytes
}

/// An outbox entry read back; one written before entries kept the minute has none.
pub(crate) fn read_outbox_entry(
    bytes: &[u8],
) -> Result<(DeadLetter, Option<Minute>), crate::Error> {
    let corrupt = |e: postcard::Error| crate::Error::Corrupt {
        table: "outbox",
        detail: e.to_string(),
    };
    let (dead_letter, rest) = postcard::take_from_bytes::<DeadLetter>(bytes).map_err(corrupt)?;
    let stored_minute = if rest.is_empty() {
        None
    } else {
        Some(decode::<Minute>("outbox", rest)?)
    };
    Ok((dead_letter, stored_minute))
}
