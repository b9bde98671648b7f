//! Subject names of contract §1, and which event type each inbound subject carries.

/// The prefix of every subject the project uses.
pub const PREFIX: &str = "truebit.";

pub const TASKS_RECEIVED: &str = "truebit.tasks.received";
pub const TASKS_COMPLETED: &str = "truebit.tasks.completed";
pub const HEARTBEAT: &str = "truebit.heartbeat";
pub const INVOICES_CREATED: &str = "truebit.invoices.created";
pub const NODES_JOINED: &str = "truebit.nodes.joined";
pub const NODES_LEFT: &str = "truebit.nodes.left";
/// Operator events (the key registry of contract §7), in the same total order as node events.
pub const ADMIN: &str = "truebit.admin.>";
/// What every operator subject starts with.
pub const ADMIN_PREFIX: &str = "truebit.admin.";
/// The key registry's events (contract §7): the one operator subject defined.
pub const ADMIN_KEYS: &str = "truebit.admin.keys";

/// The network snapshot, published every interval.
pub const STATS_AGGREGATED: &str = "truebit.stats.aggregated";
/// Each publish appends a [`crate::HistoryRecord`] here, captured by `TRUEBIT_STATS`.
pub const STATS_HISTORY: &str = "truebit.stats.history";
/// Each digest point (contract §11): the leader's state digest at a multiple of the network's
/// `digest-every`, as a [`crate::DigestPoint`], captured by `TRUEBIT_STATS`.
pub const STATS_DIGEST: &str = "truebit.stats.digest";
/// Request-reply: `stats` asks a running `serve` for a snapshot here.
pub const STATS_QUERY: &str = "truebit.stats.query";
/// Request-reply: `keys list` asks a running `serve` for the key registry here.
pub const KEYS_QUERY: &str = "truebit.keys.query";
/// Request-reply: `replay` asks a running `serve` whether its `ADMIN_KEY` is the one the
/// database serve holds was folded with.
pub const ADMIN_KEY_QUERY: &str = "truebit.stats.admin-key";
/// Dead letters go to `truebit.dlq.<reason>`.
pub const DLQ_PREFIX: &str = "truebit.dlq.";

/// The six inbound node subjects.
pub const INBOUND: [&str; 6] = [
    TASKS_RECEIVED,
    TASKS_COMPLETED,
    HEARTBEAT,
    INVOICES_CREATED,
    NODES_JOINED,
    NODES_LEFT,
];

/// The `type` field each inbound subject must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    TaskReceived,
    TaskCompleted,
    Heartbeat,
    InvoiceCreated,
    NodeJoined,
    NodeLeft,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TaskReceived => "task_received",
            EventType::TaskCompleted => "task_completed",
            EventType::Heartbeat => "heartbeat",
            EventType::InvoiceCreated => "invoice_created",
            EventType::NodeJoined => "node_joined",
            EventType::NodeLeft => "node_left",
        }
    }
}

/// The event type an inbound subject carries; `None` for any other subject.
pub fn event_type(subject: &str) -> Option<EventType> {
    Some(match subject {
        TASKS_RECEIVED => EventType::TaskReceived,
        TASKS_COMPLETED => EventType::TaskCompleted,
        HEARTBEAT => EventType::Heartbeat,
        INVOICES_CREATED => EventType::InvoiceCreated,
        NODES_JOINED => EventType::NodeJoined,
        NODES_LEFT => EventType::NodeLeft,
        _ => return None,
    })
}
