//! Every redb table of the projections, in one place, and the one list of them ([`each`]) that
//! creating, copying and comparing a database walk.
//!
//! Records are stored as postcard bytes and decoded by [`crate::records`], which turns a record it
//! cannot read into an error rather than a panic. `SCHEMA_VERSION` in [`META`] names the layout;
//! a database of another version is refused before any of these tables is read.

use crate::runs::Kind;
use crate::Error;
use redb::TableDefinition;
use std::fmt::Debug;

/// The layout these definitions describe. Bump it with any change to a table or a record.
/// Version 2 moved tasks and invoices into hot tables and sealed runs ([`crate::runs`]); version
/// 3 added the dead-letter outbox and the key registry (`keys`, `admission`, three meta keys),
/// all of which start empty, so an older database is upgraded in place. Version 4 added
/// `operator_clock`, which an older database can take in place only while no operator event
/// was ever folded into it (`crate::store` decides). Version 5 added the state digest
/// (`digest`, `digest_points`, contract §11): an older database gets its digest computed by one
/// full scan when it is opened, and is otherwise upgraded in place as before.
pub const SCHEMA_VERSION: u64 = 5;

/// Small named values: see [`meta`].
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

/// Public key (`U…`) → key record (contract §7): the registry, folded from operator events.
pub const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// Outcome (`admitted`, `unauthorized`, `rate_limited`) → node messages checked with it, in
/// `audit` and `enforce`.
pub const ADMISSION: TableDefinition<&str, u64> = TableDefinition::new("admission");
/// Target of operator events (a public key, or `mode`) → the `timestamp`, in milliseconds, of the
/// last one applied to it: a later event for it must be newer (contract §7), so that a replayed
/// copy of an old one changes nothing.
pub const OPERATOR_CLOCK: TableDefinition<&str, i64> = TableDefinition::new("operator_clock");

/// Original stream sequence → a dead letter (postcard) not yet known to be in `TRUEBIT_DLQ`: the
/// outbox. Written by the commit that folds the refusal, emptied as the service publishes. Not
/// part of the state: a copy leaves it out and a comparison ignores it, since a rebuild's is
/// always empty.
pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// Table name → the lattice hash (2048 bytes) of that table's records ([`crate::digest`]), as of
/// the last commit, which updates it from what it changed. Valid while [`meta::DIGEST`] is set.
pub const DIGEST: TableDefinition<&str, &[u8]> = TableDefinition::new("digest");
/// Stream sequence (a multiple of the network's `digest-every`) → the per-table checksums of the
/// state there, in [`crate::digest::DIGESTED`] order: the digest points of contract §11.
pub const DIGEST_POINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("digest_points");

/// What a table holds, which decides whether a copy or a comparison of databases includes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Folded from the stream: a checkpoint carries it and `replay --verify` compares it.
    State,
    /// Work in hand for this database's own process, not derived from the stream alone.
    Outbox,
    /// The state's own digest and the points recorded: a checkpoint carries them, so that a
    /// rebuild from it goes on without a scan, but `replay --verify` compares digests rather
    /// than these rows (a database upgraded in place has no points from before its upgrade).
    Digest,
}

/// Something done to every table, whatever its key and value types.
pub trait Visit {
    fn table<K, V>(&mut self, def: TableDefinition<K, V>, role: Role) -> Result<(), Error>
    where
        K: redb::Key + 'static,
        V: redb::Value + 'static,
        for<'x> K::SelfType<'x>: Debug;
}

/// Visits every table defined above, once. A table missing here would be missing from new
/// databases, checkpoints and verification alike; a test reads this file and fails if one is.
pub fn each(v: &mut impl Visit) -> Result<(), Error> {
    v.table(META, Role::State)?;
    for kind in [TASK_RECORDS, INVOICE_RECORDS] {
        v.table(kind.hot, Role::State)?;
        v.table(kind.runs, Role::State)?;
        v.table(kind.filters, Role::State)?;
    }
    v.table(NODES, Role::State)?;
    v.table(PUBLISHERS, Role::State)?;
    v.table(COUNTERS, Role::State)?;
    v.table(REJECTIONS, Role::State)?;
    v.table(EVENTS, Role::State)?;
    v.table(KEYS, Role::State)?;
    v.table(ADMISSION, Role::State)?;
    v.table(OPERATOR_CLOCK, Role::State)?;
    v.table(OUTBOX, Role::Outbox)?;
    v.table(DIGEST, Role::Digest)?;
    v.table(DIGEST_POINTS, Role::Digest)?;
    Ok(())
}

/// The keys of [`META`], and how its values read.
pub mod meta {
    use crate::Error;
    use redb::ReadableTable;
    use truebit_streams::{Mode, PublicKey};

    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const LAST_SEQ: &str = "last_seq";
    pub const NODES: &str = "nodes";
    pub const PUBLISHERS: &str = "publishers";
    pub const STREAM: &str = "stream";
    pub const RUN_LEN: &str = "run_len";
    pub const TASKS_CREATED: &str = "tasks_created";
    pub const INVOICES_CREATED: &str = "invoices_created";
    /// `open`, `audit` or `enforce`; absent is `open`.
    pub const ADMISSION_MODE: &str = "admission_mode";
    /// The `ADMIN_KEY` the database is folded with; empty for none.
    pub const ADMIN_KEY: &str = "admin_key";
    /// Operator events read (signed or not): while there are none, the root key may be set.
    pub const OPERATOR_MESSAGES: &str = "operator_messages";
    /// Present (the digest's algorithm) while the table `digest` follows every commit.
    pub const DIGEST: &str = "digest";

    pub(crate) fn read_u64(
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Option<u64>, Error> {
        let Some(v) = table.get(key)? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = v.value().try_into().map_err(|_| Error::Corrupt {
            table: "meta",
            detail: format!("{key} is not 8 bytes"),
        })?;
        Ok(Some(u64::from_le_bytes(bytes)))
    }

    /// The admission mode as folded; `open` until an `admission_set` says otherwise.
    pub(crate) fn read_mode(
        table: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Mode, Error> {
        let Some(v) = table.get(ADMISSION_MODE)? else {
            return Ok(Mode::Open);
        };
        let text = std::str::from_utf8(v.value()).unwrap_or_default();
        Mode::parse(text).ok_or_else(|| Error::Corrupt {
            table: "meta",
            detail: format!("admission_mode is {text:?}"),
        })
    }

    /// The root key the database is bound to; `None` for none (or not bound yet).
    pub(crate) fn read_root(
        table: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Option<PublicKey>, Error> {
        let Some(v) = table.get(ADMIN_KEY)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(v.value()).unwrap_or_default();
        if text.is_empty() {
            return Ok(None);
        }
        PublicKey::parse(text)
            .map(Some)
            .ok_or_else(|| Error::Corrupt {
                table: "meta",
                detail: format!("admin_key is {text:?}, not a public key"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableHandle;
    use std::collections::BTreeSet;

    struct Names(Vec<(String, Role)>);

    impl Visit for Names {
        fn table<K, V>(&mut self, def: TableDefinition<K, V>, role: Role) -> Result<(), Error>
        where
            K: redb::Key + 'static,
            V: redb::Value + 'static,
            for<'x> K::SelfType<'x>: Debug,
        {
            self.0.push((def.name().to_string(), role));
            Ok(())
        }
    }

    /// Every table definition in this file, read from its source text: a table added above and
    /// forgotten in [`each`] fails here.
    #[test]
    fn every_table_defined_in_this_file_is_in_the_registry_once() {
        let source = include_str!("tables.rs");
        let marker = concat!("TableDefinition::", "new(\"");
        let defined: BTreeSet<String> = source
            .match_indices(marker)
            .map(|(at, _)| {
                let rest = &source[at + marker.len()..];
                rest[..rest.find('"').unwrap()].to_string()
            })
            .collect();
        assert!(defined.len() >= 12, "found only {defined:?}");
        let mut visited = Names(Vec::new());
        each(&mut visited).unwrap();
        let names: Vec<&str> = visited.0.iter().map(|(n, _)| n.as_str()).collect();
        let unique: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            unique.len(),
            names.len(),
            "a table visited twice: {names:?}"
        );
        assert_eq!(unique, defined);
        let outside: Vec<&str> = visited
            .0
            .iter()
            .filter(|(_, role)| *role != Role::State)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(
            outside,
            ["outbox", "digest", "digest_points"],
            "only the outbox and the digest's own tables stay out of comparisons"
        );
    }
}
