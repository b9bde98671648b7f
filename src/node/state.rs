//! The agent's memory, in one redb file in `--state-dir`: its `nodeId`, what it has read (EventDB
//! keys, log positions, `.gz` files), what it knows of each execution and invoice, the outbox of
//! events not yet acknowledged by JetStream, and the last network snapshot.
//!
//! What was read and the events it produced are committed in one transaction, so that a crash
//! loses neither and a restart produces nothing twice.
//!
//! Nothing here is loaded whole: an execution, an invoice or an EventDB key is looked up when a
//! record names it, those waiting for their grace period are found through an index by time
//! (`waiting`), and the heartbeat's counts are kept as two counters, so that the agent's memory
//! does not grow with the runner's history.

use super::tracker::{Execution, InvoiceState, Key, Recall, Tracker};
use crate::Error;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EXECUTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("executions");
const INVOICES: TableDefinition<&str, &[u8]> = TableDefinition::new("invoices");
const SEEN: TableDefinition<&str, ()> = TableDefinition::new("eventdb_keys");
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("log_files");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// `(since, "e:<executionId>" | "i:<invoiceId>")`: what waits for its grace period, by when it
/// began (see [`Execution::waits_since`]).
const WAITING: TableDefinition<(i64, &str), ()> = TableDefinition::new("waiting");

const NODE_ID: &str = "node_id";
const RUNNING: &str = "running";
const SNAPSHOT: &str = "snapshot";
/// The heartbeat's counts: executions counted, and active (two big-endian u64).
const COUNTS: &str = "counts";
/// The layout of this file: 2 since `waiting` and `counts` exist.
const LAYOUT: &str = "layout";
/// When JetStream acknowledged the agent's latest messages (Unix ms), for the rate limit to
/// survive a restart (see [`super::publisher::Pacer`]).
const RECENT_ACKS: &str = "recent_acks";
/// The last `n` given to a heartbeat, join or leave (contract §10's `<nodeId>:<type>:<n>`).
const STATUS_COUNTER: &str = "status_counter";

/// Where a followed log file was left: its identity (device and inode) and the byte offset of
/// the first entry not yet taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub offset: u64,
}

/// An event as it waits to be published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub subject: String,
    pub msg_id: String,
    #[serde(with = "payload")]
    pub payload: Vec<u8>,
}

/// A payload kept as the JSON text it is, not as an array of numbers (a quarter of the bytes
/// on disk and in a commit's write buffer); an outbox written as numbers before still reads.
mod payload {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_seq(bytes),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Kept {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Kept::deserialize(d)? {
            Kept::Text(t) => t.into_bytes(),
            Kept::Bytes(b) => b,
        })
    }
}

/// The memory redb may use for the state's page cache and write buffer: what the agent looks up
/// is recent or found through an index, and the operating system's page cache holds the rest.
const CACHE_BYTES: usize = 8 << 20;

/// The last snapshot received, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// Unix seconds when the agent received it.
    pub received_at: i64,
    /// The same in milliseconds, which `stale` needs: an aggregator may publish more often than
    /// once a second. 0 in a snapshot kept by an agent before this field existed.
    #[serde(default)]
    pub received_ms: i64,
    /// Its `Truebit-Last-Seq` header (contract §9 Fencing); `None` for one read from KV
    /// `latest`, which carries no headers, or kept before this field existed.
    #[serde(default)]
    pub last_seq: Option<u64>,
    pub body: serde_json::Value,
}

impl Kept {
    /// When it was received, in Unix milliseconds.
    pub fn received_ms(&self) -> i64 {
        if self.received_ms != 0 {
            self.received_ms
        } else {
            self.received_at.saturating_mul(1000)
        }
    }

    /// The snapshot's own `timestamp` (the aggregator's time, floored to the minute), in Unix
    /// milliseconds; `None` when it has none that parses.
    pub fn stamped_ms(&self) -> Option<i64> {
        let text = self.body.get("timestamp")?.as_str()?;
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// Whether `self`, just received, replaces `newest`, the one kept (contract §9 Fencing): not
    /// when its `Truebit-Last-Seq` is lower, unless its `timestamp` is later (a recreated events
    /// stream starts its sequences again; a cut-off leader's late snapshot is never later). A
    /// snapshot without a sequence (KV `latest`) is judged by its timestamp alone: not when it is
    /// earlier than the kept one's.
    pub fn supersedes(&self, newest: Option<&Kept>) -> bool {
        let Some(newest) = newest else {
            return true;
        };
        let later = match (self.stamped_ms(), newest.stamped_ms()) {
            (Some(new), Some(old)) => new > old,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let earlier = match (self.stamped_ms(), newest.stamped_ms()) {
            (Some(new), Some(old)) => new < old,
            _ => false,
        };
        match (self.last_seq, newest.last_seq) {
            (Some(new), Some(old)) => new >= old || later,
            _ => !earlier,
        }
    }
}

/// What one cycle of reading changed, committed as one.
#[derive(Debug, Default)]
pub struct Batch {
    pub seen: Vec<String>,
    pub logs: BTreeMap<String, LogPosition>,
    pub gz_read: Vec<String>,
    pub events: Vec<Outgoing>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
            && self.logs.is_empty()
            && self.gz_read.is_empty()
            && self.events.is_empty()
    }
}

pub struct State {
    db: Database,
    path: PathBuf,
}

fn db_err(path: &Path) -> impl Fn(redb::Error) -> Error + '_ {
    move |e| {
        Error::Usage(format!(
        "the agent's state {} cannot be used: {e}; check --state-dir / STATE_DIR (another agent may hold it)",
        path.display()
    ))
    }
}

macro_rules! try_db {
    ($self:expr, $e:expr) => {
        $e.map_err(|e| db_err(&$self.path)(e.into()))
    };
}

impl State {
    /// Opens (or creates) `state.redb` in `dir`.
    pub fn open(dir: &Path) -> Result<State, Error> {
        std::fs::create_dir_all(dir).map_err(Error::io("creating the state directory", dir))?;
        let path = dir.join("state.redb");
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| db_err(&path)(e.into()))?;
        let state = State { db, path };
        let txn = try_db!(state, state.db.begin_write())?;
        for t in [META, EXECUTIONS, INVOICES, FILES] {
            try_db!(state, txn.open_table(t))?;
        }
        try_db!(state, txn.open_table(SEEN))?;
        try_db!(state, txn.open_table(OUTBOX))?;
        try_db!(state, txn.open_table(WAITING))?;
        try_db!(state, txn.commit())?;
        if state.meta(LAYOUT)?.is_none() {
            state.index_waiting_and_counts()?;
        }
        Ok(state)
    }

    /// A state written before `waiting` and `counts` existed: indexes them once, reading the
    /// executions and invoices a row at a time.
    fn index_waiting_and_counts(&self) -> Result<(), Error> {
        let txn = try_db!(self, self.db.begin_write())?;
        {
            let executions = try_db!(self, txn.open_table(EXECUTIONS))?;
            let invoices = try_db!(self, txn.open_table(INVOICES))?;
            let mut waiting = try_db!(self, txn.open_table(WAITING))?;
            let (mut total, mut active) = (0u64, 0u64);
            for row in try_db!(self, executions.iter())? {
                let (k, v) = try_db!(self, row)?;
                let Ok(e) = serde_json::from_slice::<Execution>(v.value()) else {
                    continue;
                };
                total += e.counted() as u64;
                active += e.active() as u64;
                if let Some(since) = e.waits_since() {
                    let key = format!("e:{}", k.value());
                    try_db!(self, waiting.insert((since, key.as_str()), ()))?;
                }
            }
            for row in try_db!(self, invoices.iter())? {
                let (k, v) = try_db!(self, row)?;
                let Ok(i) = serde_json::from_slice::<InvoiceState>(v.value()) else {
                    continue;
                };
                if let Some(since) = i.waits_since() {
                    let key = format!("i:{}", k.value());
                    try_db!(self, waiting.insert((since, key.as_str()), ()))?;
                }
            }
            let mut meta = try_db!(self, txn.open_table(META))?;
            try_db!(
                self,
                meta.insert(COUNTS, counts_bytes(total, active).as_slice())
            )?;
            try_db!(self, meta.insert(LAYOUT, &2u64.to_be_bytes()[..]))?;
        }
        try_db!(self, txn.commit())
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let txn = try_db!(self, self.db.begin_read())?;
        let table = try_db!(self, txn.open_table(META))?;
        Ok(try_db!(self, table.get(key))?.map(|v| v.value().to_vec()))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        let txn = try_db!(self, self.db.begin_write())?;
        try_db!(
            self,
            try_db!(self, txn.open_table(META))?.insert(key, value)
        )?;
        try_db!(self, txn.commit())
    }

    /// The `nodeId`: `given` if any, else the one made on first start and kept.
    pub fn node_id(&self, given: Option<&str>) -> Result<String, Error> {
        if let Some(id) = given {
            return Ok(id.to_string());
        }
        if let Some(id) = self.meta(NODE_ID)? {
            return Ok(String::from_utf8_lossy(&id).into_owned());
        }
        let id = format!("node-{}", uuid_v4()?);
        self.put_meta(NODE_ID, id.as_bytes())?;
        Ok(id)
    }

    pub fn snapshot(&self) -> Result<Option<Kept>, Error> {
        Ok(self
            .meta(SNAPSHOT)?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    pub fn keep_snapshot(&self, kept: &Kept) -> Result<(), Error> {
        self.put_meta(
            SNAPSHOT,
            &serde_json::to_vec(kept).expect("JSON serializes"),
        )
    }

    /// A tracker that recalls from this state, with the running tasks of the followed log as
    /// they were left.
    pub fn tracker(self: &Arc<Self>) -> Result<Tracker, Error> {
        let mut tracker = Tracker::new(Box::new(StateRecall(self.clone())));
        if let Some(r) = self.meta(RUNNING)? {
            tracker.running = serde_json::from_slice(&r).unwrap_or_default();
        }
        Ok(tracker)
    }

    /// The heartbeat's counts: executions seen received or completed, and those received and
    /// not completed.
    pub fn counts(&self) -> Result<(u64, u64), Error> {
        Ok(self
            .meta(COUNTS)?
            .map(|b| parse_counts(&b))
            .unwrap_or_default())
    }

    /// Which of `keys` (EventDB record keys) were not read before.
    pub fn unseen(&self, keys: &[String]) -> Result<Vec<bool>, Error> {
        let txn = try_db!(self, self.db.begin_read())?;
        let table = try_db!(self, txn.open_table(SEEN))?;
        keys.iter()
            .map(|k| Ok(try_db!(self, table.get(k.as_str()))?.is_none()))
            .collect()
    }

    /// Up to `limit` executions and invoices whose grace period began at or before `until`.
    pub fn waiting(&self, until: i64, limit: usize) -> Result<Vec<Key>, Error> {
        let txn = try_db!(self, self.db.begin_read())?;
        let table = try_db!(self, txn.open_table(WAITING))?;
        let mut out = Vec::new();
        for row in try_db!(self, table.iter())? {
            let (k, _) = try_db!(self, row)?;
            let (since, key) = k.value();
            if since > until || out.len() >= limit {
                break;
            }
            match key.split_once(':') {
                Some(("e", id)) => out.push(Key::Execution(id.to_string())),
                Some(("i", id)) => out.push(Key::Invoice(id.to_string())),
                _ => {}
            }
        }
        Ok(out)
    }

    fn recall<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
    ) -> Result<Option<T>, String> {
        let get = || -> Result<Option<Vec<u8>>, redb::Error> {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(table)?;
            Ok(t.get(id)?.map(|v| v.value().to_vec()))
        };
        match get() {
            Ok(bytes) => Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok())),
            Err(e) => Err(db_err(&self.path)(e).to_string()),
        }
    }

    /// Where each followed log was left (by identity), and the `.gz` files already read.
    pub fn logs(&self) -> Result<(BTreeMap<String, LogPosition>, HashSet<String>), Error> {
        let txn = try_db!(self, self.db.begin_read())?;
        let table = try_db!(self, txn.open_table(FILES))?;
        let (mut logs, mut gz) = (BTreeMap::new(), HashSet::new());
        for row in try_db!(self, table.iter())? {
            let (k, v) = try_db!(self, row)?;
            match k.value().strip_prefix("gz:") {
                Some(name) => {
                    gz.insert(name.to_string());
                }
                None => {
                    if let Ok(p) = serde_json::from_slice(v.value()) {
                        logs.insert(k.value().to_string(), p);
                    }
                }
            }
        }
        Ok((logs, gz))
    }

    /// Commits one cycle: the records the tracker changed, what was read, and the events made.
    pub fn commit(&self, mut tracker: Option<&mut Tracker>, batch: Batch) -> Result<(), Error> {
        let txn = try_db!(self, self.db.begin_write())?;
        {
            let mut executions = try_db!(self, txn.open_table(EXECUTIONS))?;
            let mut invoices = try_db!(self, txn.open_table(INVOICES))?;
            let mut waiting = try_db!(self, txn.open_table(WAITING))?;
            let mut meta = try_db!(self, txn.open_table(META))?;
            let (mut total, mut active) = try_db!(self, meta.get(COUNTS))?
                .map(|v| parse_counts(v.value()))
                .unwrap_or_default();
            let dirty = tracker.as_mut().map(|t| t.take_dirty()).unwrap_or_default();
            for key in dirty {
                let Some(tracker) = tracker.as_ref() else {
                    break;
                };
                // What it was, for the counts and the `waiting` index to follow the change.
                let (before, after, name) = match &key {
                    Key::Execution(id) => {
                        let Some(e) = tracker.executions.get(id) else {
                            continue;
                        };
                        let old: Option<Execution> = try_db!(self, executions.get(id.as_str()))?
                            .and_then(|v| serde_json::from_slice(v.value()).ok());
                        let old = old.unwrap_or_default();
                        total = (total + e.counted() as u64).saturating_sub(old.counted() as u64);
                        active = (active + e.active() as u64).saturating_sub(old.active() as u64);
                        let bytes = serde_json::to_vec(e).expect("JSON serializes");
                        try_db!(self, executions.insert(id.as_str(), bytes.as_slice()))?;
                        (old.waits_since(), e.waits_since(), format!("e:{id}"))
                    }
                    Key::Invoice(id) => {
                        let Some(i) = tracker.invoices.get(id) else {
                            continue;
                        };
                        let old: Option<InvoiceState> = try_db!(self, invoices.get(id.as_str()))?
                            .and_then(|v| serde_json::from_slice(v.value()).ok());
                        let bytes = serde_json::to_vec(i).expect("JSON serializes");
                        try_db!(self, invoices.insert(id.as_str(), bytes.as_slice()))?;
                        (
                            old.and_then(|o| o.waits_since()),
                            i.waits_since(),
                            format!("i:{id}"),
                        )
                    }
                };
                if before != after {
                    if let Some(since) = before {
                        try_db!(self, waiting.remove((since, name.as_str())))?;
                    }
                    if let Some(since) = after {
                        try_db!(self, waiting.insert((since, name.as_str()), ()))?;
                    }
                }
            }
            if let Some(tracker) = &tracker {
                let running = serde_json::to_vec(&tracker.running).expect("JSON serializes");
                try_db!(self, meta.insert(RUNNING, running.as_slice()))?;
                try_db!(
                    self,
                    meta.insert(COUNTS, counts_bytes(total, active).as_slice())
                )?;
            }
            let mut seen = try_db!(self, txn.open_table(SEEN))?;
            for key in &batch.seen {
                try_db!(self, seen.insert(key.as_str(), ()))?;
            }
            let mut files = try_db!(self, txn.open_table(FILES))?;
            for (id, pos) in &batch.logs {
                let bytes = serde_json::to_vec(pos).expect("JSON serializes");
                try_db!(self, files.insert(id.as_str(), bytes.as_slice()))?;
            }
            for name in &batch.gz_read {
                try_db!(self, files.insert(format!("gz:{name}").as_str(), &[][..]))?;
            }
            let mut outbox = try_db!(self, txn.open_table(OUTBOX))?;
            let next = try_db!(self, outbox.last())?.map_or(0, |(k, _)| k.value() + 1);
            for (place, event) in (next..).zip(&batch.events) {
                let bytes = serde_json::to_vec(event).expect("JSON serializes");
                try_db!(self, outbox.insert(place, bytes.as_slice()))?;
            }
        }
        try_db!(self, txn.commit())
    }

    /// Puts events in the outbox, after everything already there.
    pub fn enqueue(&self, events: Vec<Outgoing>) -> Result<(), Error> {
        self.commit(
            None,
            Batch {
                events,
                ..Batch::default()
            },
        )
    }

    /// Puts a heartbeat, join or leave in the outbox with the Msg-Id `<prefix>:<n>` (the prefix
    /// is `<nodeId>:<type>`), `n` the next value of a counter kept here and taken in the same
    /// transaction as the event enters the outbox. So no two are alike (a time in the id repeats
    /// within JetStream's duplicate window, and JetStream would drop all but the first), and a
    /// re-send after a crash carries the id the first send had, which JetStream deduplicates.
    pub fn enqueue_numbered(
        &self,
        prefix: &str,
        subject: String,
        payload: Vec<u8>,
    ) -> Result<String, Error> {
        let txn = try_db!(self, self.db.begin_write())?;
        let msg_id;
        {
            let mut meta = try_db!(self, txn.open_table(META))?;
            let last = try_db!(self, meta.get(STATUS_COUNTER))?
                .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                .map_or(0, u64::from_be_bytes);
            let n = last + 1;
            try_db!(self, meta.insert(STATUS_COUNTER, &n.to_be_bytes()[..]))?;
            msg_id = format!("{prefix}:{n}");
            let out = Outgoing {
                subject,
                msg_id: msg_id.clone(),
                payload,
            };
            let mut outbox = try_db!(self, txn.open_table(OUTBOX))?;
            let next = try_db!(self, outbox.last())?.map_or(0, |(k, _)| k.value() + 1);
            let bytes = serde_json::to_vec(&out).expect("JSON serializes");
            try_db!(self, outbox.insert(next, bytes.as_slice()))?;
        }
        try_db!(self, txn.commit())?;
        Ok(msg_id)
    }

    /// Up to `limit` events waiting, oldest first, with their place in the outbox.
    pub fn pending(&self, limit: usize) -> Result<Vec<(u64, Outgoing)>, Error> {
        let txn = try_db!(self, self.db.begin_read())?;
        let table = try_db!(self, txn.open_table(OUTBOX))?;
        let mut out = Vec::new();
        for row in try_db!(self, table.iter())?.take(limit) {
            let (k, v) = try_db!(self, row)?;
            if let Ok(o) = serde_json::from_slice(v.value()) {
                out.push((k.value(), o));
            }
        }
        Ok(out)
    }

    pub fn outbox_len(&self) -> Result<u64, Error> {
        let txn = try_db!(self, self.db.begin_read())?;
        try_db!(self, try_db!(self, txn.open_table(OUTBOX))?.len())
    }

    /// Drops the events JetStream has acknowledged; with `recent_acks`, keeps when the latest
    /// acknowledgements came, in the same transaction.
    pub fn sent(&self, places: &[u64], recent_acks: Option<&[i64]>) -> Result<(), Error> {
        let txn = try_db!(self, self.db.begin_write())?;
        {
            let mut table = try_db!(self, txn.open_table(OUTBOX))?;
            for place in places {
                try_db!(self, table.remove(*place))?;
            }
            if let Some(acks) = recent_acks {
                let bytes: Vec<u8> = acks.iter().flat_map(|t| t.to_be_bytes()).collect();
                try_db!(
                    self,
                    try_db!(self, txn.open_table(META))?.insert(RECENT_ACKS, bytes.as_slice())
                )?;
            }
        }
        try_db!(self, txn.commit())
    }

    /// When the latest acknowledgements came (Unix ms), as [`State::sent`] kept them.
    pub fn recent_acks(&self) -> Result<Vec<i64>, Error> {
        Ok(self
            .meta(RECENT_ACKS)?
            .unwrap_or_default()
            .chunks_exact(8)
            .map(|c| i64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }
}

/// The state as the tracker's [`Recall`].
struct StateRecall(Arc<State>);

impl Recall for StateRecall {
    fn execution(&self, id: &str) -> Result<Option<Execution>, String> {
        self.0.recall(EXECUTIONS, id)
    }
    fn invoice(&self, id: &str) -> Result<Option<InvoiceState>, String> {
        self.0.recall(INVOICES, id)
    }
}

fn counts_bytes(total: u64, active: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&total.to_be_bytes());
    b[8..].copy_from_slice(&active.to_be_bytes());
    b
}

fn parse_counts(b: &[u8]) -> (u64, u64) {
    match (b.get(..8), b.get(8..16)) {
        (Some(t), Some(a)) => (
            u64::from_be_bytes(t.try_into().expect("8 bytes")),
            u64::from_be_bytes(a.try_into().expect("8 bytes")),
        ),
        _ => (0, 0),
    }
}

/// A random (version 4) UUID from the operating system's random source.
fn uuid_v4() -> Result<String, Error> {
    use std::io::Read as _;
    let path = Path::new("/dev/urandom");
    let mut b = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(Error::io("reading random bytes from", path))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = State::open(dir.path()).unwrap().node_id(None).unwrap();
        assert!(id.starts_with("node-") && id.len() == 41, "{id}");
        let again = State::open(dir.path()).unwrap().node_id(None).unwrap();
        assert_eq!(again, id);
        let given = State::open(dir.path())
            .unwrap()
            .node_id(Some("n1"))
            .unwrap();
        assert_eq!(given, "n1");
    }

    #[test]
    fn an_outbox_entry_written_with_the_payload_as_numbers_still_reads() {
        let old = br#"{"subject":"s","msg_id":"m","payload":[123,125]}"#;
        let out: Outgoing = serde_json::from_slice(old).unwrap();
        assert_eq!(out.payload, b"{}");
        let new = serde_json::to_string(&out).unwrap();
        assert_eq!(new, r#"{"subject":"s","msg_id":"m","payload":"{}"}"#);
    }

    #[test]
    fn the_outbox_keeps_order_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let out = |i: u8| Outgoing {
            subject: "s".into(),
            msg_id: format!("m{i}"),
            payload: vec![i],
        };
        state.enqueue(vec![out(1), out(2)]).unwrap();
        state.enqueue(vec![out(3)]).unwrap();
        let first = state.pending(1).unwrap()[0].0;
        state.sent(&[first], None).unwrap();
        drop(state);
        let state = State::open(dir.path()).unwrap();
        let ids: Vec<_> = state
            .pending(10)
            .unwrap()
            .into_iter()
            .map(|(_, o)| o.msg_id)
            .collect();
        assert_eq!(ids, ["m2", "m3"]);
        assert_eq!(state.outbox_len().unwrap(), 2);
    }

    #[test]
    fn what_was_read_is_recalled_from_disk_and_what_waits_found_by_time() {
        use crate::node::runner::{LineKind, Record, TaskCreated};
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(State::open(dir.path()).unwrap());
        let salt = truebit_streams::anonymize::Salt::new("s").unwrap();
        let mut t = state.tracker().unwrap();
        // e1: an outcome record only, which waits for its completion line; e2: received.
        t.record(
            &Record::Outcome {
                execution_id: "e1".into(),
            },
            100,
        );
        t.record(
            &Record::Task(TaskCreated {
                execution_id: "e2".into(),
                task_type: None,
                chain_id: None,
                received_at: Some(90),
            }),
            100,
        );
        assert_eq!(t.ready(100, 60, None, "n", &salt).len(), 1, "e2's receipt");
        state.commit(Some(&mut t), Batch::default()).unwrap();
        t.release();
        assert_eq!(t.in_hand(), 0);
        assert_eq!(state.counts().unwrap(), (2, 1));
        // Waiting since 100: due once `now - grace` reaches it.
        assert!(state.waiting(159 - 60, 10).unwrap().is_empty());
        assert_eq!(
            state.waiting(160 - 60, 10).unwrap(),
            [Key::Execution("e1".into())]
        );
        // e2 completes: recalled from disk, its receipt not sent again.
        t.log_entry(120, &LineKind::Completed("e2".into()), None, 120);
        let ready = t.ready(120, 60, None, "n", &salt);
        assert_eq!(ready.len(), 1, "{ready:?}");
        assert_eq!(ready[0].event.type_name(), "task_completed");
        state.commit(Some(&mut t), Batch::default()).unwrap();
        t.release();
        assert_eq!(state.counts().unwrap(), (2, 0));
        // e1's grace ends: found by time, sent, and no longer waiting.
        for key in state.waiting(160 - 60, 10).unwrap() {
            if let Key::Execution(id) = key {
                t.hold_execution(&id);
            }
        }
        assert_eq!(t.ready(160, 60, None, "n", &salt).len(), 1);
        state.commit(Some(&mut t), Batch::default()).unwrap();
        t.release();
        assert!(state.waiting(i64::MAX, 10).unwrap().is_empty());
        // A state of the layout before: the index and the counts are made at open.
        {
            let txn = state.db.begin_write().unwrap();
            txn.open_table(META).unwrap().remove(LAYOUT).unwrap();
            txn.open_table(META).unwrap().remove(COUNTS).unwrap();
            txn.commit().unwrap();
        }
        drop(t);
        let state = Arc::into_inner(state).unwrap();
        drop(state);
        let state = State::open(dir.path()).unwrap();
        assert_eq!(state.counts().unwrap(), (2, 0));
    }
}
