//! The agent's memory, in one redb file in `--state-dir`: its `nodeId`, what it has read (EventDB
//! keys, log positions, `.gz` files), what it knows of each execution and invoice, the outbox of
//! events not yet acknowledged by JetStream, and the last network snapshot.
//!
//! What was read and the events it produced are committed in one transaction, so that a crash
//! loses neither and a restart produces nothing twice.

use super::tracker::{Execution, InvoiceState, Key, Tracker};
use crate::Error;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EXECUTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("executions");
const INVOICES: TableDefinition<&str, &[u8]> = TableDefinition::new("invoices");
const SEEN: TableDefinition<&str, ()> = TableDefinition::new("eventdb_keys");
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("log_files");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

const NODE_ID: &str = "node_id";
const RUNNING: &str = "running";
const SNAPSHOT: &str = "snapshot";
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
    pub payload: Vec<u8>,
}

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
        let db = Database::create(&path).map_err(|e| db_err(&path)(e.into()))?;
        let state = State { db, path };
        let txn = try_db!(state, state.db.begin_write())?;
        for t in [META, EXECUTIONS, INVOICES, FILES] {
            try_db!(state, txn.open_table(t))?;
        }
        try_db!(state, txn.open_table(SEEN))?;
        try_db!(state, txn.open_table(OUTBOX))?;
        try_db!(state, txn.commit())?;
        Ok(state)
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

    /// The tracker as it was left, and the EventDB keys already read.
    pub fn load(&self) -> Result<(Tracker, HashSet<String>), Error> {
        let txn = try_db!(self, self.db.begin_read())?;
        let mut tracker = Tracker::default();
        for row in try_db!(self, try_db!(self, txn.open_table(EXECUTIONS))?.iter())? {
            let (k, v) = try_db!(self, row)?;
            if let Ok(e) = serde_json::from_slice::<Execution>(v.value()) {
                tracker.executions.insert(k.value().to_string(), e);
            }
        }
        for row in try_db!(self, try_db!(self, txn.open_table(INVOICES))?.iter())? {
            let (k, v) = try_db!(self, row)?;
            if let Ok(i) = serde_json::from_slice::<InvoiceState>(v.value()) {
                tracker.invoices.insert(k.value().to_string(), i);
            }
        }
        let meta = try_db!(self, txn.open_table(META))?;
        if let Some(r) = try_db!(self, meta.get(RUNNING))? {
            tracker.running = serde_json::from_slice(r.value()).unwrap_or_default();
        }
        let mut seen = HashSet::new();
        for row in try_db!(self, try_db!(self, txn.open_table(SEEN))?.iter())? {
            let (k, _) = try_db!(self, row)?;
            seen.insert(k.value().to_string());
        }
        Ok((tracker, seen))
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
            let dirty = tracker.as_mut().map(|t| t.take_dirty()).unwrap_or_default();
            for key in dirty {
                let Some(tracker) = tracker.as_ref() else {
                    break;
                };
                match key {
                    Key::Execution(id) => {
                        if let Some(e) = tracker.executions.get(&id) {
                            let bytes = serde_json::to_vec(e).expect("JSON serializes");
                            try_db!(self, executions.insert(id.as_str(), bytes.as_slice()))?;
                        }
                    }
                    Key::Invoice(id) => {
                        if let Some(i) = tracker.invoices.get(&id) {
                            let bytes = serde_json::to_vec(i).expect("JSON serializes");
                            try_db!(self, invoices.insert(id.as_str(), bytes.as_slice()))?;
                        }
                    }
                }
            }
            if let Some(tracker) = &tracker {
                let mut meta = try_db!(self, txn.open_table(META))?;
                let running = serde_json::to_vec(&tracker.running).expect("JSON serializes");
                try_db!(self, meta.insert(RUNNING, running.as_slice()))?;
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
}
