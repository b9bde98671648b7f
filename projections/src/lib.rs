//! The projections of the TrueBit federation: tasks, invoices and nodes folded from validated
//! events into redb, and the network snapshot of contract §5.3 computed over them.
//!
//! This crate never touches the network. It is handed batches of [`Input`]s (a stream sequence
//! and the validated event or the reason it was refused) and folds each exactly once: the
//! sequence of the last folded input is committed in the same write transaction as the changes it
//! produced, and an input at or below it is skipped. That is what makes redelivery, crashes and
//! restarts harmless.
//!
//! Tasks and invoices, keyed by random hashes, are stored so that a new one is appended rather
//! than written into a random page: first in creation order, then sealed in sorted runs of
//! [`DEFAULT_RUN_LEN`] (see `src/runs.rs`, and [`Options`]).
//!
//! ```
//! use truebit_projections::{Input, Period, Projections};
//! use truebit_streams::validate;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = Projections::open(dir.path().join("aggregator.redb")).unwrap();
//! let stored_at = chrono::Utc::now();
//! let hb = format!(r#"{{"version":"1.0","type":"heartbeat","nodeId":"node-1",
//!     "timestamp":"{}","data":{{"continentBucket":"EU"}}}}"#, stored_at.to_rfc3339());
//! let event = validate("truebit.heartbeat", hb.as_bytes(), stored_at).map_err(|r| r.reason);
//!
//! db.apply(&[Input { seq: 1, event: event.clone() }]).unwrap();
//! db.apply(&[Input { seq: 1, event }]).unwrap(); // redelivered: folded once
//!
//! let now = stored_at.timestamp() / 60;
//! let snapshot = db.snapshot(now, Period::All).unwrap();
//! assert_eq!((snapshot.active_nodes, snapshot.total_nodes), (1, 1));
//! assert_eq!(db.node("node-1").unwrap().unwrap().heartbeat_count, 1);
//! ```

mod counters;
mod error;
mod fold;
mod records;
mod runs;
mod snapshot;
mod tables;

pub use error::Error;
pub use runs::DEFAULT_RUN_LEN;
pub use snapshot::{rate, Period, Snapshot, MAX_DISTINCT};
pub use tables::SCHEMA_VERSION;

use counters::{buckets_of, cover, Counters, MINUTE, TOTAL};
use records::{decode, encode, InvoiceRecord, NodeRecord, TaskRecord};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableHandle};
use runs::{Changes, Kind, Locator, Place, Records};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tables::meta;
use truebit_streams::{
    Continent, Digest, Event, EventKind, ExecutionTime, Location, Magnitude, Memory, Minute, Reason,
};

/// One message of the stream, ready to fold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Its sequence in `TRUEBIT_EVENTS`.
    pub seq: u64,
    /// The validated event, or why it was refused (refusals are counted, not folded).
    pub event: Result<Event, Reason>,
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
}

/// The projections database.
pub struct Projections {
    db: Database,
    path: PathBuf,
    run_len: u64,
    /// Held by a fold from its first read to its commit, so that whoever locks it sees the
    /// locators and the tables at the same commit. Loaded on first use: `stats` and
    /// `replay --verify` open the database without needing them, and at ten million tasks they
    /// are a scan of the hot tables and 20 MB of filters.
    locators: Mutex<Option<Locators>>,
}

struct Locators {
    tasks: Locator,
    invoices: Locator,
}

/// The locked locators, once loaded.
struct Loaded<'a>(MutexGuard<'a, Option<Locators>>);

impl std::ops::Deref for Loaded<'_> {
    type Target = Locators;
    fn deref(&self) -> &Locators {
        self.0.as_ref().expect("loaded before a Loaded is made")
    }
}

impl std::ops::DerefMut for Loaded<'_> {
    fn deref_mut(&mut self) -> &mut Locators {
        self.0.as_mut().expect("loaded before a Loaded is made")
    }
}

/// How a new database is laid out. A database that exists keeps the layout it was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// How many tasks (and, apart, invoices) are gathered in creation order before they are
    /// sealed into a run sorted by hash: see [`DEFAULT_RUN_LEN`]. Two databases are compared
    /// table by table (`replay --verify`), so they compare equal only with the same run length.
    pub run_len: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            run_len: DEFAULT_RUN_LEN,
        }
    }
}

/// A task as the projections hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    pub first_seen_at: Minute,
    pub last_seen_at: Minute,
    pub chain_id: Option<String>,
    pub task_type: Option<String>,
    /// `completed`, `failed` or `received`.
    pub state: &'static str,
    pub success: Option<bool>,
    pub status: Option<String>,
    pub execution_time: Option<ExecutionTime>,
    pub gas_used: Option<Magnitude>,
    pub cached: Option<bool>,
    pub reporting_nodes: usize,
}

/// An invoice as the projections hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceView {
    pub first_seen_at: Minute,
    pub last_seen_at: Minute,
    pub task: Option<Digest>,
    pub chain_id: Option<String>,
    pub steps_computed: Option<Magnitude>,
    pub memory_used: Option<Memory>,
    pub operation: Option<String>,
    pub reporting_nodes: usize,
}

/// A node as the projections hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub first_seen_at: Minute,
    pub last_seen_at: Option<Minute>,
    pub heartbeat_count: u64,
    pub offline: bool,
    pub status: Option<String>,
    pub continent: Option<Continent>,
    pub location: Option<Location>,
}

impl Projections {
    /// Opens the database at `path`, creating it (and its folder) if it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, Options::default())
    }

    /// Like [`Projections::open`], with `options` for a database that it creates.
    pub fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: path.clone(),
                source,
            })?;
        }
        let db = builder().create(&path).map_err(|e| open_error(&path, e))?;
        Self::init(db, path, options)
    }

    /// Opens an existing database; [`Error::Missing`] if there is none at `path`.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(Error::Missing { path });
        }
        let db = builder().open(&path).map_err(|e| open_error(&path, e))?;
        Self::init(db, path, Options::default())
    }

    fn init(db: Database, path: PathBuf, options: Options) -> Result<Self, Error> {
        let txn = db.begin_write()?;
        let run_len = {
            let mut meta_table = txn.open_table(tables::META)?;
            match read_u64(&meta_table, meta::SCHEMA_VERSION)? {
                None => {
                    meta_table.insert(
                        meta::SCHEMA_VERSION,
                        tables::SCHEMA_VERSION.to_le_bytes().as_slice(),
                    )?;
                }
                Some(found) if found != tables::SCHEMA_VERSION => {
                    return Err(Error::SchemaVersion {
                        path,
                        found,
                        expected: tables::SCHEMA_VERSION,
                    });
                }
                Some(_) => {}
            }
            let run_len = match read_u64(&meta_table, meta::RUN_LEN)? {
                Some(stored) => stored,
                None => {
                    let run_len = options.run_len.max(1);
                    meta_table.insert(meta::RUN_LEN, run_len.to_le_bytes().as_slice())?;
                    run_len
                }
            };
            // Every table exists from the start, so that readers never meet a missing one.
            for kind in [tables::TASK_RECORDS, tables::INVOICE_RECORDS] {
                txn.open_table(kind.hot)?;
                txn.open_table(kind.runs)?;
                txn.open_table(kind.filters)?;
            }
            txn.open_table(tables::NODES)?;
            txn.open_table(tables::PUBLISHERS)?;
            txn.open_table(tables::COUNTERS)?;
            txn.open_table(tables::REJECTIONS)?;
            txn.open_table(tables::EVENTS)?;
            run_len
        };
        txn.commit()?;
        Ok(Projections {
            db,
            path,
            run_len,
            locators: Mutex::new(None),
        })
    }

    fn locators(&self) -> Result<Loaded<'_>, Error> {
        // The locators change only after a commit, in a few steps that cannot panic.
        let mut guard = self.locators.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            let read = self.db.begin_read()?;
            *guard = Some(Locators {
                tasks: Locator::load(&read, tables::TASK_RECORDS)?,
                invoices: Locator::load(&read, tables::INVOICE_RECORDS)?,
            });
        }
        Ok(Loaded(guard))
    }

    /// Finds one record, from a read transaction begun under the locators' lock.
    fn find<R: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        locator: impl Fn(&Locators) -> &Locator,
        hash: &[u8; 32],
    ) -> Result<Option<R>, Error> {
        let locators = self.locators()?;
        let txn = self.db.begin_read()?;
        let (hot, runs) = (txn.open_table(kind.hot)?, txn.open_table(kind.runs)?);
        let found = locator(&locators).find(kind, &hot, &runs, hash)?;
        Ok(found.map(|(_, record)| record))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sequence of the last folded input; 0 for a new database.
    pub fn last_seq(&self) -> Result<u64, Error> {
        let txn = self.db.begin_read()?;
        Ok(read_u64(&txn.open_table(tables::META)?, meta::LAST_SEQ)?.unwrap_or(0))
    }

    /// The identity of the stream this database was folded from, as set by
    /// [`Projections::set_stream_identity`].
    pub fn stream_identity(&self) -> Result<Option<String>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(tables::META)?;
        let value = table.get(meta::STREAM)?;
        Ok(value.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    pub fn set_stream_identity(&self, identity: &str) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        txn.open_table(tables::META)?
            .insert(meta::STREAM, identity.as_bytes())?;
        txn.commit()?;
        Ok(())
    }

    /// Folds a batch in one durable write transaction, together with the sequence of its last
    /// input. Inputs at or below the last folded sequence are skipped.
    pub fn apply(&self, batch: &[Input]) -> Result<Applied, Error> {
        let mut locators = self.locators()?;
        let txn = self.db.begin_write()?;
        let (applied, tasks, invoices) = {
            let mut w = Writer::open(&txn, &locators, self.run_len)?;
            let mut applied = Applied {
                last_seq: w.last_seq,
                ..Applied::default()
            };
            for input in batch {
                if input.seq <= w.last_seq {
                    applied.skipped += 1;
                    continue;
                }
                w.last_seq = input.seq;
                applied.folded += 1;
                match &input.event {
                    Ok(event) => w.fold(event)?,
                    Err(reason) => *w.rejections.entry(reason.as_str()).or_default() += 1,
                }
            }
            applied.last_seq = w.last_seq;
            let (tasks, invoices) = w.flush()?;
            (applied, tasks, invoices)
        };
        txn.commit()?;
        locators.tasks.committed(tasks);
        locators.invoices.committed(invoices);
        Ok(applied)
    }

    /// The snapshot at minute `at` over `period`.
    pub fn snapshot(&self, at: Minute, period: Period) -> Result<Snapshot, Error> {
        let reader = Reader::open(&self.db)?;
        reader.snapshot(at, period, &reader.recent(at)?, &reader.last_day(at)?)
    }

    /// The snapshots of every period at minute `at`, from one consistent view.
    pub fn snapshots(&self, at: Minute) -> Result<Vec<Snapshot>, Error> {
        Ok(self.snapshots_with_seq(at)?.1)
    }

    /// The snapshots of every period at minute `at`, and the last folded sequence they hold,
    /// from one consistent view: what a publisher stamps on them while batches commit beside it.
    pub fn snapshots_with_seq(&self, at: Minute) -> Result<(u64, Vec<Snapshot>), Error> {
        let reader = Reader::open(&self.db)?;
        let recent = reader.recent(at)?;
        let day = reader.last_day(at)?;
        let snapshots = Period::ALL
            .into_iter()
            .map(|p| reader.snapshot(at, p, &recent, &day))
            .collect::<Result<_, _>>()?;
        Ok((reader.last_seq, snapshots))
    }

    pub fn task(&self, id: &Digest) -> Result<Option<TaskView>, Error> {
        let Some(t) = self.find::<TaskRecord>(tables::TASK_RECORDS, |l| &l.tasks, &id.0)? else {
            return Ok(None);
        };
        let outcome = t.outcome.clone().unwrap_or(records::StoredOutcome {
            success: None,
            status: None,
            execution_time: None,
            gas_used: None,
            cached: None,
        });
        Ok(Some(TaskView {
            first_seen_at: t.first_seen,
            last_seen_at: t.last_seen,
            chain_id: t.chain_id,
            task_type: t.task_type,
            state: match outcome.success {
                Some(true) => "completed",
                Some(false) => "failed",
                None => "received",
            },
            success: outcome.success,
            status: outcome.status,
            execution_time: outcome
                .execution_time
                .and_then(|i| ExecutionTime::from_index(i as usize)),
            gas_used: outcome
                .gas_used
                .and_then(|i| Magnitude::from_index(i as usize)),
            cached: outcome.cached,
            reporting_nodes: t.reporters.len(),
        }))
    }

    pub fn invoice(&self, id: &Digest) -> Result<Option<InvoiceView>, Error> {
        let kind = tables::INVOICE_RECORDS;
        let Some(i) = self.find::<InvoiceRecord>(kind, |l| &l.invoices, &id.0)? else {
            return Ok(None);
        };
        Ok(Some(InvoiceView {
            first_seen_at: i.first_seen,
            last_seen_at: i.last_seen,
            task: i.task.map(Digest),
            chain_id: i.chain_id,
            steps_computed: i
                .steps_computed
                .and_then(|b| Magnitude::from_index(b as usize)),
            memory_used: i.memory_used.and_then(|b| Memory::from_index(b as usize)),
            operation: i.operation,
            reporting_nodes: i.reporters.len(),
        }))
    }

    pub fn node(&self, node_id: &str) -> Result<Option<NodeView>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(tables::NODES)?;
        let Some(bytes) = table.get(node_id)? else {
            return Ok(None);
        };
        let n: NodeRecord = decode("nodes", bytes.value())?;
        Ok(Some(NodeView {
            first_seen_at: n.first_seen,
            last_seen_at: n.last_seen,
            heartbeat_count: n.heartbeat_count,
            offline: n.offline,
            status: n.status,
            continent: n.continent.and_then(|c| Continent::from_index(c as usize)),
            location: n.location.map(|(lat_tenths, lon_tenths)| Location {
                lat_tenths,
                lon_tenths,
            }),
        }))
    }

    /// How many refused messages were folded, by reason.
    pub fn rejections(&self) -> Result<BTreeMap<String, u64>, Error> {
        count_table(&self.db, tables::REJECTIONS)
    }

    /// How many events of each type were folded.
    pub fn event_counts(&self) -> Result<BTreeMap<String, u64>, Error> {
        count_table(&self.db, tables::EVENTS)
    }

    /// Up to `limit` differences between this database and `other`, record by record and
    /// counter by counter, each as a sentence naming the table and the key. Empty when they
    /// hold the same state. The stream identity is not compared: a rebuild may not have one.
    pub fn differences(&self, other: &Projections, limit: usize) -> Result<Vec<String>, Error> {
        let (a, b) = (self.db.begin_read()?, other.db.begin_read()?);
        let mut out = Vec::new();
        diff_table(&a, &b, tables::META, "meta", limit, &mut out)?;
        for kind in [tables::TASK_RECORDS, tables::INVOICE_RECORDS] {
            diff_table(&a, &b, kind.hot, kind.hot.name(), limit, &mut out)?;
            diff_table(&a, &b, kind.runs, kind.runs.name(), limit, &mut out)?;
            diff_table(&a, &b, kind.filters, kind.filters.name(), limit, &mut out)?;
        }
        diff_table(&a, &b, tables::NODES, "nodes", limit, &mut out)?;
        diff_table(&a, &b, tables::PUBLISHERS, "publishers", limit, &mut out)?;
        diff_table(&a, &b, tables::COUNTERS, "counters", limit, &mut out)?;
        diff_table(&a, &b, tables::REJECTIONS, "rejections", limit, &mut out)?;
        diff_table(&a, &b, tables::EVENTS, "events", limit, &mut out)?;
        out.truncate(limit);
        Ok(out)
    }

    /// Writes a consistent copy of the whole database to a new file at `path` (which must not
    /// exist) from one read transaction, so that folding goes on meanwhile. Returns the last
    /// folded sequence the copy holds.
    pub fn checkpoint_to(&self, path: &Path) -> Result<u64, Error> {
        let read = self.db.begin_read()?;
        let last_seq = read_u64(&read.open_table(tables::META)?, meta::LAST_SEQ)?.unwrap_or(0);
        let copy = builder().create(path).map_err(|e| open_error(path, e))?;
        let write = copy.begin_write()?;
        // One big transaction that nobody reads before it commits: no need to sync pages twice.
        copy_table(&read, &write, tables::META)?;
        for kind in [tables::TASK_RECORDS, tables::INVOICE_RECORDS] {
            copy_table(&read, &write, kind.hot)?;
            copy_table(&read, &write, kind.runs)?;
            copy_table(&read, &write, kind.filters)?;
        }
        copy_table(&read, &write, tables::NODES)?;
        copy_table(&read, &write, tables::PUBLISHERS)?;
        copy_table(&read, &write, tables::COUNTERS)?;
        copy_table(&read, &write, tables::REJECTIONS)?;
        copy_table(&read, &write, tables::EVENTS)?;
        write.commit()?;
        Ok(last_seq)
    }

    /// Numbers of tasks, invoices and nodes held.
    pub fn record_counts(&self) -> Result<(u64, u64, u64), Error> {
        let txn = self.db.begin_read()?;
        let count = |kind: Kind| -> Result<u64, Error> {
            Ok(txn.open_table(kind.hot)?.len()? + txn.open_table(kind.runs)?.len()?)
        };
        Ok((
            count(tables::TASK_RECORDS)?,
            count(tables::INVOICE_RECORDS)?,
            txn.open_table(tables::NODES)?.len()?,
        ))
    }
}

/// The memory redb may use for its page cache and write buffer together. redb's default (1 GiB)
/// would let a large database grow the process with the number of tasks; past this, pages are
/// read through the operating system's page cache, which the kernel may reclaim. Since new
/// records are appended ([`runs`]), folding reads few pages at random: 64 MiB folded 3M tasks
/// no faster than 32 MiB, and held 34 MB more.
pub const CACHE_BYTES: usize = 32 << 20;

fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(CACHE_BYTES);
    builder
}

fn open_error(path: &Path, e: redb::DatabaseError) -> Error {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Locked {
            path: path.to_path_buf(),
        },
        other => Error::Open {
            path: path.to_path_buf(),
            source: other,
        },
    }
}

fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    def: redb::TableDefinition<K, V>,
) -> Result<(), Error> {
    let source = from.open_table(def)?;
    let mut target = to.open_table(def)?;
    for row in source.iter()? {
        let (k, v) = row?;
        target.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// Merges two tables in key order, noting rows that differ or exist on one side only. It holds
/// one row of each side at a time, so comparing databases of ten million tasks takes no more
/// memory than comparing two of ten.
fn diff_table<K, V>(
    a: &redb::ReadTransaction,
    b: &redb::ReadTransaction,
    def: redb::TableDefinition<K, V>,
    name: &str,
    limit: usize,
    out: &mut Vec<String>,
) -> Result<(), Error>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
    for<'x> K::SelfType<'x>: std::fmt::Debug,
{
    let (left_table, right_table) = (a.open_table(def)?, b.open_table(def)?);
    let (mut left_rows, mut right_rows) = (left_table.iter()?, right_table.iter()?);
    // The stream identity is not part of the state: a rebuild may not have one.
    let skip = |key: &[u8]| name == "meta" && key == meta::STREAM.as_bytes();
    let mut left = next_row(&mut left_rows, skip)?;
    let mut right = next_row(&mut right_rows, skip)?;
    let label = |key: &[u8]| format!("{:?}", K::from_bytes(key));
    while out.len() < limit {
        let order = match (&left, &right) {
            (None, None) => break,
            (Some(l), Some(r)) => K::compare(&l.0, &r.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let (key, _) = left.take().expect("compared above");
                out.push(format!(
                    "{name}: {} only in the first database",
                    label(&key)
                ));
                left = next_row(&mut left_rows, skip)?;
            }
            std::cmp::Ordering::Greater => {
                let (key, _) = right.take().expect("compared above");
                out.push(format!(
                    "{name}: {} only in the second database",
                    label(&key)
                ));
                right = next_row(&mut right_rows, skip)?;
            }
            std::cmp::Ordering::Equal => {
                if let (Some((key, l)), Some((_, r))) = (&left, &right) {
                    if l != r {
                        out.push(format!("{name}: {} differs", label(key)));
                    }
                }
                left = next_row(&mut left_rows, skip)?;
                right = next_row(&mut right_rows, skip)?;
            }
        }
    }
    Ok(())
}

/// A row's key and value, as the bytes redb stores.
type RowBytes = (Vec<u8>, Vec<u8>);

/// The next row, passing over the keys `skip` names.
fn next_row<K: redb::Key + 'static, V: redb::Value + 'static>(
    rows: &mut redb::Range<'_, K, V>,
    skip: impl Fn(&[u8]) -> bool,
) -> Result<Option<RowBytes>, Error> {
    for row in rows.by_ref() {
        let (k, v) = row?;
        let key = K::as_bytes(&k.value()).as_ref().to_vec();
        if !skip(&key) {
            return Ok(Some((key, V::as_bytes(&v.value()).as_ref().to_vec())));
        }
    }
    Ok(None)
}

fn count_table(
    db: &Database,
    def: redb::TableDefinition<&str, u64>,
) -> Result<BTreeMap<String, u64>, Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(def)?;
    let mut out = BTreeMap::new();
    for row in table.iter()? {
        let (k, v) = row?;
        out.insert(k.value().to_string(), v.value());
    }
    Ok(out)
}

fn read_u64(
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

fn event_type(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::TaskReceived { .. } => "task_received",
        EventKind::TaskCompleted { .. } => "task_completed",
        EventKind::HeartbeatReported(_) => "heartbeat",
        EventKind::InvoiceCreated(_) => "invoice_created",
        EventKind::NodeJoined { .. } => "node_joined",
        EventKind::NodeLeft { .. } => "node_left",
    }
}

/// One batch's write transaction, with a write-behind overlay of the records it touches.
///
/// Each record a batch touches is read and decoded once, folded in memory event by event in
/// stream order, and written once, in key order, when the batch is flushed. Its contribution to
/// the counters moves once too, from what the table held before the batch to what it holds
/// after: the per-event moves in between would cancel out. This is what keeps a batch's cost
/// near one B-tree update per distinct record rather than several per event.
struct Writer<'t, 'l> {
    meta: Table<'t, &'static str, &'static [u8]>,
    locators: &'l Locators,
    tasks: Records<'t>,
    invoices: Records<'t>,
    nodes: Table<'t, &'static str, &'static [u8]>,
    publishers: Table<'t, &'static str, u32>,
    counters: Table<'t, (u8, i64), &'static [u8]>,
    rejection_table: Table<'t, &'static str, u64>,
    event_table: Table<'t, &'static str, u64>,
    last_seq: u64,
    node_count: u64,
    publisher_count: u64,
    publisher_ids: HashMap<String, u32>,
    task_overlay: HashMap<[u8; 32], Touched<TaskRecord, Place>>,
    invoice_overlay: HashMap<[u8; 32], Touched<InvoiceRecord, Place>>,
    node_overlay: HashMap<String, Touched<NodeRecord>>,
    rejections: HashMap<&'static str, u64>,
    events: HashMap<&'static str, u64>,
}

/// A record as the table held it before the batch, and as the batch has folded it so far, with
/// where it is stored when its kind has more than one place ([`runs`]).
struct Touched<R, P = ()> {
    before: Option<R>,
    now: Option<R>,
    at: P,
}

impl<R: Clone + PartialEq, P> Touched<R, P> {
    fn loaded((at, before): (P, Option<R>)) -> Self {
        Touched {
            now: before.clone(),
            before,
            at,
        }
    }

    fn changed(&self) -> bool {
        self.before != self.now
    }
}

/// The overlay entry for `key`, loading the stored record on first touch.
fn touch<'o, K, R, P, Q>(
    overlay: &'o mut HashMap<K, Touched<R, P>>,
    key: &Q,
    load: impl FnOnce() -> Result<(P, Option<R>), Error>,
) -> Result<&'o mut Touched<R, P>, Error>
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    R: Clone + PartialEq,
{
    if !overlay.contains_key(key) {
        overlay.insert(key.to_owned(), Touched::loaded(load()?));
    }
    Ok(overlay.get_mut(key).expect("inserted above"))
}

/// Reads and decodes one record.
fn load<K: redb::Key + 'static, R: serde::de::DeserializeOwned>(
    table: &Table<'_, K, &'static [u8]>,
    name: &'static str,
    key: K::SelfType<'_>,
) -> Result<Option<R>, Error> {
    match table.get(key)? {
        Some(bytes) => Ok(Some(decode(name, bytes.value())?)),
        None => Ok(None),
    }
}

/// Takes the old record's contribution out of its bucket and puts the new one's in.
fn shift<R, P>(
    deltas: &mut HashMap<Minute, Counters>,
    touched: &Touched<R, P>,
    minute: fn(&R) -> Option<Minute>,
    add: fn(&mut Counters, &R, i64),
) {
    for (record, sign) in [(&touched.before, -1), (&touched.now, 1)] {
        if let Some(r) = record {
            if let Some(m) = minute(r) {
                add(deltas.entry(m).or_default(), r, sign);
            }
        }
    }
}

/// The overlay's changed entries in key order: B-tree writes in order touch each page once and
/// walk the tree like a merge rather than at random.
fn changed_in_order<K: Ord, R: Clone + PartialEq, P>(
    overlay: HashMap<K, Touched<R, P>>,
) -> Vec<(K, Touched<R, P>)> {
    let mut rows: Vec<_> = overlay.into_iter().filter(|(_, t)| t.changed()).collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    rows
}

impl<'t, 'l> Writer<'t, 'l> {
    fn open(
        txn: &'t redb::WriteTransaction,
        locators: &'l Locators,
        run_len: u64,
    ) -> Result<Self, Error> {
        let meta_table = txn.open_table(tables::META)?;
        let last_seq = read_u64(&meta_table, meta::LAST_SEQ)?.unwrap_or(0);
        let node_count = read_u64(&meta_table, meta::NODES)?.unwrap_or(0);
        let publisher_count = read_u64(&meta_table, meta::PUBLISHERS)?.unwrap_or(0);
        let records = |kind: Kind| -> Result<Records<'t>, Error> {
            let created = read_u64(&meta_table, kind.created)?.unwrap_or(0);
            Records::open(txn, kind, run_len, created)
        };
        let (tasks, invoices) = (
            records(tables::TASK_RECORDS)?,
            records(tables::INVOICE_RECORDS)?,
        );
        Ok(Writer {
            meta: meta_table,
            locators,
            tasks,
            invoices,
            nodes: txn.open_table(tables::NODES)?,
            publishers: txn.open_table(tables::PUBLISHERS)?,
            counters: txn.open_table(tables::COUNTERS)?,
            rejection_table: txn.open_table(tables::REJECTIONS)?,
            event_table: txn.open_table(tables::EVENTS)?,
            last_seq,
            node_count,
            publisher_count,
            publisher_ids: HashMap::new(),
            task_overlay: HashMap::new(),
            invoice_overlay: HashMap::new(),
            node_overlay: HashMap::new(),
            rejections: HashMap::new(),
            events: HashMap::new(),
        })
    }

    /// The small number standing for `node_id` among a record's reporters. Numbers are handed
    /// out in stream order, so that a replay numbers exactly as the live fold did.
    fn publisher(&mut self, node_id: &str) -> Result<u32, Error> {
        if let Some(id) = self.publisher_ids.get(node_id) {
            return Ok(*id);
        }
        let stored = self.publishers.get(node_id)?.map(|id| id.value());
        let id = match stored {
            Some(id) => id,
            None => {
                let id = u32::try_from(self.publisher_count).map_err(|_| Error::Corrupt {
                    table: "publishers",
                    detail: "more than 2^32 distinct nodeIds".into(),
                })?;
                self.publisher_count += 1;
                self.publishers.insert(node_id, id)?;
                id
            }
        };
        self.publisher_ids.insert(node_id.to_string(), id);
        Ok(id)
    }

    fn task(&mut self, id: &Digest) -> Result<&mut Touched<TaskRecord, Place>, Error> {
        let (records, locator) = (&mut self.tasks, &self.locators.tasks);
        touch(&mut self.task_overlay, &id.0, || {
            locate(records, locator, tables::TASK_RECORDS, &id.0)
        })
    }

    fn invoice(&mut self, id: &Digest) -> Result<&mut Touched<InvoiceRecord, Place>, Error> {
        let (records, locator) = (&mut self.invoices, &self.locators.invoices);
        touch(&mut self.invoice_overlay, &id.0, || {
            locate(records, locator, tables::INVOICE_RECORDS, &id.0)
        })
    }

    fn node(&mut self, node_id: &str) -> Result<&mut Touched<NodeRecord>, Error> {
        let table = &self.nodes;
        touch(&mut self.node_overlay, node_id, || {
            Ok(((), load(table, "nodes", node_id)?))
        })
    }

    fn fold(&mut self, event: &Event) -> Result<(), Error> {
        *self.events.entry(event_type(&event.kind)).or_default() += 1;
        let minute = event.minute;
        match &event.kind {
            EventKind::TaskReceived {
                task,
                chain_id,
                task_type,
            } => {
                let reporter = self.publisher(&event.node_id)?;
                let t = self.task(task)?;
                t.now = Some(fold::task_received(
                    t.now.take(),
                    minute,
                    reporter,
                    chain_id,
                    task_type,
                ));
            }
            EventKind::TaskCompleted { task, outcome } => {
                let reporter = self.publisher(&event.node_id)?;
                let t = self.task(task)?;
                t.now = Some(fold::task_completed(
                    t.now.take(),
                    minute,
                    reporter,
                    outcome,
                ));
            }
            EventKind::InvoiceCreated(invoice) => {
                let reporter = self.publisher(&event.node_id)?;
                let i = self.invoice(&invoice.invoice)?;
                i.now = Some(fold::invoice_created(
                    i.now.take(),
                    minute,
                    reporter,
                    invoice,
                ));
            }
            EventKind::HeartbeatReported(hb) => {
                let n = self.node(&event.node_id)?;
                n.now = Some(fold::heartbeat_reported(n.now.take(), minute, hb));
            }
            EventKind::NodeJoined { status } => {
                let n = self.node(&event.node_id)?;
                n.now = Some(fold::node_joined(n.now.take(), minute, status));
            }
            EventKind::NodeLeft { status } => {
                let n = self.node(&event.node_id)?;
                n.now = fold::node_left(n.now.take(), status);
            }
        }
        Ok(())
    }

    /// Writes the overlay, the counters it moved and the batch's position, and hands back what
    /// the task and invoice locators must learn once the transaction commits.
    fn flush(mut self) -> Result<(Changes, Changes), Error> {
        let mut deltas: HashMap<Minute, Counters> = HashMap::new();
        for (id, t) in changed_in_order(std::mem::take(&mut self.task_overlay)) {
            shift(&mut deltas, &t, |r| Some(r.first_seen), Counters::task);
            let record = t.now.as_ref().expect("a task, once created, stays");
            let new = t.before.is_none();
            self.tasks.put(&id, t.at, new, encode(record).as_slice())?;
        }
        for (id, i) in changed_in_order(std::mem::take(&mut self.invoice_overlay)) {
            shift(&mut deltas, &i, |r| Some(r.first_seen), Counters::invoice);
            let record = i.now.as_ref().expect("an invoice, once created, stays");
            let new = i.before.is_none();
            self.invoices
                .put(&id, i.at, new, encode(record).as_slice())?;
        }
        for (id, n) in changed_in_order(std::mem::take(&mut self.node_overlay)) {
            shift(&mut deltas, &n, |r| r.last_seen, Counters::node);
            let Some(record) = n.now.as_ref() else {
                continue; // `node_left` of a nodeId that never was a node
            };
            if n.before.is_none() {
                self.node_count += 1;
            }
            self.nodes.insert(id.as_str(), encode(record).as_slice())?;
        }

        let mut rows: HashMap<(u8, i64), Counters> = HashMap::new();
        for (minute, delta) in deltas {
            for key in buckets_of(minute) {
                rows.entry(key).or_default().merge(&delta, 1);
            }
        }
        let mut rows: Vec<_> = rows.into_iter().filter(|(_, d)| !d.is_zero()).collect();
        rows.sort_unstable_by_key(|(key, _)| *key);
        for (key, delta) in rows {
            let mut current: Counters = match self.counters.get(key)? {
                Some(b) => decode("counters", b.value())?,
                None => Counters::default(),
            };
            current.merge(&delta, 1);
            if current.is_zero() {
                self.counters.remove(key)?;
            } else {
                self.counters.insert(key, encode(&current).as_slice())?;
            }
        }
        for (table, counts) in [
            (&mut self.rejection_table, &self.rejections),
            (&mut self.event_table, &self.events),
        ] {
            for (key, n) in counts {
                let before = table.get(*key)?.map(|v| v.value()).unwrap_or(0);
                table.insert(*key, before + n)?;
            }
        }
        self.meta
            .insert(meta::LAST_SEQ, self.last_seq.to_le_bytes().as_slice())?;
        self.meta
            .insert(meta::NODES, self.node_count.to_le_bytes().as_slice())?;
        self.meta.insert(
            meta::PUBLISHERS,
            self.publisher_count.to_le_bytes().as_slice(),
        )?;
        let tasks = self.tasks.finish(&self.locators.tasks, &mut self.meta)?;
        let invoices = self
            .invoices
            .finish(&self.locators.invoices, &mut self.meta)?;
        Ok((tasks, invoices))
    }
}

/// The stored record with this hash and where it is, or the place of a new one.
fn locate<R: serde::de::DeserializeOwned>(
    records: &mut Records<'_>,
    locator: &Locator,
    kind: Kind,
    hash: &[u8; 32],
) -> Result<(Place, Option<R>), Error> {
    Ok(
        match locator.find(kind, &records.hot, &records.runs, hash)? {
            Some((place, record)) => (place, Some(record)),
            None => (records.create(), None),
        },
    )
}

/// A consistent read view for snapshots.
struct Reader {
    counters: redb::ReadOnlyTable<(u8, i64), &'static [u8]>,
    total_nodes: u64,
    last_seq: u64,
}

/// Active nodes are those heartbeating within this many minutes of `T`.
const ACTIVE_MINUTES: i64 = 5;

impl Reader {
    fn open(db: &Database) -> Result<Self, Error> {
        let txn = db.begin_read()?;
        let meta_table = txn.open_table(tables::META)?;
        Ok(Reader {
            counters: txn.open_table(tables::COUNTERS)?,
            total_nodes: read_u64(&meta_table, meta::NODES)?.unwrap_or(0),
            last_seq: read_u64(&meta_table, meta::LAST_SEQ)?.unwrap_or(0),
        })
    }

    fn recent(&self, at: Minute) -> Result<Counters, Error> {
        self.window(Some(at - ACTIVE_MINUTES), at)
    }

    fn last_day(&self, at: Minute) -> Result<Counters, Error> {
        self.window(Period::Day.minutes().map(|m| at - m), at)
    }

    fn snapshot(
        &self,
        at: Minute,
        period: Period,
        recent: &Counters,
        day: &Counters,
    ) -> Result<Snapshot, Error> {
        let window = self.window(period.minutes().map(|m| at - m), at)?;
        Ok(Snapshot::new(
            at,
            period,
            &window,
            recent,
            day,
            self.total_nodes,
        ))
    }

    /// The counters of the minutes `lo..=hi`; `lo` of `None` is the beginning of time.
    fn window(&self, lo: Option<Minute>, hi: Minute) -> Result<Counters, Error> {
        if let Some(lo) = lo {
            return self.sum(lo, hi);
        }
        // All time is the grand total less whatever lies after `hi`, which is usually nothing.
        let mut total = self.row((TOTAL, 0))?;
        let last = self
            .counters
            .range((MINUTE, i64::MIN)..=(MINUTE, i64::MAX))?
            .next_back()
            .transpose()?;
        if let Some((key, _)) = last {
            let (_, latest) = key.value();
            if latest > hi {
                total.merge(&self.sum(hi + 1, latest)?, -1);
            }
        }
        Ok(total)
    }

    fn sum(&self, lo: Minute, hi: Minute) -> Result<Counters, Error> {
        let mut acc = Counters::default();
        for run in cover(lo, hi) {
            for row in self
                .counters
                .range((run.level, run.from)..=(run.level, run.to))?
            {
                let (_, bytes) = row?;
                acc.merge(&decode::<Counters>("counters", bytes.value())?, 1);
            }
        }
        Ok(acc)
    }

    fn row(&self, key: (u8, i64)) -> Result<Counters, Error> {
        match self.counters.get(key)? {
            Some(b) => decode("counters", b.value()),
            None => Ok(Counters::default()),
        }
    }
}
