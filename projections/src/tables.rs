//! Every redb table of the projections, in one place.
//!
//! Records are stored as postcard bytes and decoded by [`crate::records`], which turns a record it
//! cannot read into an error rather than a panic. `SCHEMA_VERSION` in [`META`] names the layout;
//! a database of another version is refused before any of these tables is read.

use redb::TableDefinition;

/// The layout these definitions describe. Bump it with any change to a table or a record.
pub const SCHEMA_VERSION: u64 = 1;

/// Small named values: `schema_version`, `last_seq`, `nodes`, `publishers`, `stream`.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `taskIdHash` → task record.
pub const TASKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tasks");
/// `invoiceIdHash` → invoice record.
pub const INVOICES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("invoices");
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
}
