//! Every redb table of the projections, in one place.
//!
//! Records are stored as postcard bytes and decoded by [`crate::records`], which turns a record it
//! cannot read into an error rather than a panic. `SCHEMA_VERSION` in [`META`] names the layout;
//! a database of another version is refused before any of these tables is read.

use crate::runs::Kind;
use redb::TableDefinition;

/// The layout these definitions describe. Bump it with any change to a table or a record.
/// Version 2 moved tasks and invoices into hot tables and sealed runs ([`crate::runs`]).
pub const SCHEMA_VERSION: u64 = 2;

/// Small named values: `schema_version`, `last_seq`, `nodes`, `publishers`, `stream`,
/// `run_len`, `tasks_created`, `invoices_created`.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Task creation number → `taskIdHash`, then the task record, for tasks not yet sealed.
pub const TASKS_HOT: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks_hot");
/// `(run, taskIdHash)` → task record, for sealed tasks.
pub const TASKS: TableDefinition<(u32, &[u8; 32]), &[u8]> = TableDefinition::new("tasks");
/// Run → Bloom filter of the task hashes sealed in it.
pub const TASK_FILTERS: TableDefinition<u32, &[u8]> = TableDefinition::new("task_filters");
/// Invoice creation number → `invoiceIdHash`, then the invoice record.
pub const INVOICES_HOT: TableDefinition<u64, &[u8]> = TableDefinition::new("invoices_hot");
/// `(run, invoiceIdHash)` → invoice record, for sealed invoices.
pub const INVOICES: TableDefinition<(u32, &[u8; 32]), &[u8]> = TableDefinition::new("invoices");
/// Run → Bloom filter of the invoice hashes sealed in it.
pub const INVOICE_FILTERS: TableDefinition<u32, &[u8]> = TableDefinition::new("invoice_filters");

pub const TASK_RECORDS: Kind = Kind {
    name: "tasks",
    hot: TASKS_HOT,
    runs: TASKS,
    filters: TASK_FILTERS,
    created: meta::TASKS_CREATED,
};

pub const INVOICE_RECORDS: Kind = Kind {
    name: "invoices",
    hot: INVOICES_HOT,
    runs: INVOICES,
    filters: INVOICE_FILTERS,
    created: meta::INVOICES_CREATED,
};
/// `nodeId` → node record (nodes that heartbeated or joined).
pub const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// Every `nodeId` that sent anything → a small number, so that a task's reporters stay small.
pub const PUBLISHERS: TableDefinition<&str, u32> = TableDefinition::new("publishers");
/// `(level, index)` → counters of the entities attributed to that time bucket: level 0 is
/// minutes since the epoch, 1 hours, 2 days, and 3 holds the grand total at index 0.
pub const COUNTERS: TableDefinition<(u8, i64), &[u8]> = TableDefinition::new("counters");
/// Rejection reason → messages folded with that reason (the live fold also dead-letters them).
pub const REJECTIONS: TableDefinition<&str, u64> = TableDefinition::new("rejections");
/// Event type → messages of that type folded.
pub const EVENTS: TableDefinition<&str, u64> = TableDefinition::new("events");

pub mod meta {
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const LAST_SEQ: &str = "last_seq";
    pub const NODES: &str = "nodes";
    pub const PUBLISHERS: &str = "publishers";
    pub const STREAM: &str = "stream";
    pub const RUN_LEN: &str = "run_len";
    pub const TASKS_CREATED: &str = "tasks_created";
    pub const INVOICES_CREATED: &str = "invoices_created";
}
