//! The database file: opening it, its metadata, and folding a batch into it in one commit.

use crate::batch::{Applied, Outbox};
use crate::digest::{self, StateDigest};
use crate::input::Input;
use crate::runs::{Kind, Locator, Locators, DEFAULT_RUN_LEN};
use crate::tables::meta::{read_root, read_u64};
use crate::tables::{self, meta};
use crate::writer::Writer;
use crate::Error;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use truebit_streams::{Message, PublicKey};

/// The projections database.
pub struct Projections {
    pub(crate) db: Database,
    path: PathBuf,
    run_len: u64,
    /// Held by a fold from its first read to its commit, so that whoever locks it sees the
    /// locators and the tables at the same commit. Loaded on first use: `stats` and
    /// `replay --verify` open the database without needing them, and at ten million tasks they
    /// are a scan of the hot tables and 20 MB of filters.
    locators: Mutex<Option<Locators>>,
    /// Whether commits keep the state digest ([`crate::digest`]); off only for benchmarks.
    digest_on: AtomicBool,
    /// Commits end at each multiple of this stream sequence and record the digest there
    /// (contract §11); 0 records no points.
    digest_every: AtomicU64,
    /// The view of the database right after the newest commit that ended at a digest point,
    /// when [`Projections::keep_point_views`] asked for it: a checkpoint copies that state, so
    /// that anyone can check a checkpoint against the digest published for its sequence.
    point_view: Mutex<Option<(u64, Arc<redb::ReadTransaction>)>>,
    keep_point_views: AtomicBool,
}

/// The locked locators, once loaded.
pub(crate) struct Loaded<'a>(MutexGuard<'a, Option<Locators>>);

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
                // Versions 3 to 5 only added tables, which are created below (5's digest is
                // computed by a scan below). Version 4's operator clock cannot be derived without
                // the stream, so a database that folded an operator event must be rebuilt for it,
                // lest a replay decide otherwise.
                Some(4) => {
                    meta_table.insert(
                        meta::SCHEMA_VERSION,
                        tables::SCHEMA_VERSION.to_le_bytes().as_slice(),
                    )?;
                }
                Some(2 | 3)
                    if read_u64(&meta_table, meta::OPERATOR_MESSAGES)?.unwrap_or(0) == 0 =>
                {
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
            match read_u64(&meta_table, meta::RUN_LEN)? {
                Some(stored) => stored,
                None => {
                    let run_len = options.run_len.max(1);
                    meta_table.insert(meta::RUN_LEN, run_len.to_le_bytes().as_slice())?;
                    run_len
                }
            }
        };
        // Every table exists from the start, so that readers never meet a missing one.
        tables::each(&mut Create(&txn))?;
        txn.commit()?;
        let db = Projections {
            db,
            path,
            run_len,
            locators: Mutex::new(None),
            digest_on: AtomicBool::new(true),
            digest_every: AtomicU64::new(0),
            point_view: Mutex::new(None),
            keep_point_views: AtomicBool::new(false),
        };
        db.ensure_digest()?;
        Ok(db)
    }

    /// Computes the stored digest by one scan when it does not follow the records: a database
    /// from before version 5, or one folded with the digest off.
    fn ensure_digest(&self) -> Result<(), Error> {
        {
            let read = self.db.begin_read()?;
            if read.open_table(tables::META)?.get(meta::DIGEST)?.is_some() {
                return Ok(());
            }
        }
        // Nothing writes between the scan and its result: this process holds the file, and
        // commits take the locators' lock.
        let _locked = self.locators.lock().unwrap_or_else(PoisonError::into_inner);
        let hashes = digest::scan(&self.db.begin_read()?)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(tables::DIGEST)?;
            for (name, hash) in digest::DIGESTED.iter().zip(&hashes) {
                table.insert(*name, hash.to_bytes().as_slice())?;
            }
            txn.open_table(tables::META)?
                .insert(meta::DIGEST, digest::ALGORITHM.as_bytes())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Turns the incremental digest off (for benchmarks that measure its cost) or on again; a
    /// database folded with it off gets it computed by a scan when next opened with it on.
    pub fn set_digest(&self, on: bool) {
        self.digest_on.store(on, Ordering::Relaxed);
    }

    /// Ends a commit at every multiple of `every` and records the state digest there
    /// (contract §11); 0 records none.
    pub fn set_digest_every(&self, every: u64) {
        self.digest_every.store(every, Ordering::Relaxed);
    }

    /// Keeps a read view of the state at the newest digest point, for checkpoints
    /// ([`Projections::checkpoint_to`]). A view holds the pages it reads until a newer point
    /// replaces it: at most one point's worth of changes.
    pub fn keep_point_views(&self, keep: bool) {
        self.keep_point_views.store(keep, Ordering::Relaxed);
        if !keep {
            *self
                .point_view
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// The view kept at the newest digest point, if any.
    pub(crate) fn point_view(&self) -> Option<(u64, Arc<redb::ReadTransaction>)> {
        self.point_view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The state digest as the last commit left it, kept incrementally.
    pub fn state_digest(&self) -> Result<StateDigest, Error> {
        let read = self.db.begin_read()?;
        let hashes = digest::stored(&read.open_table(tables::DIGEST)?)?;
        Ok(StateDigest::of(&hashes))
    }

    /// The state digest computed from scratch by reading every record: what `audit` and
    /// `replay --verify` trust, and what the incremental one must equal.
    pub fn scan_digest(&self) -> Result<StateDigest, Error> {
        Ok(StateDigest::of(&digest::scan(&self.db.begin_read()?)?))
    }

    /// The last folded sequence and the state digest there, from one view.
    pub fn digest_with_seq(&self) -> Result<(u64, StateDigest), Error> {
        let read = self.db.begin_read()?;
        let last = read_u64(&read.open_table(tables::META)?, meta::LAST_SEQ)?.unwrap_or(0);
        let hashes = digest::stored(&read.open_table(tables::DIGEST)?)?;
        Ok((last, StateDigest::of(&hashes)))
    }

    /// The newest digest point recorded and its digest, if any.
    pub fn last_digest_point(&self) -> Result<Option<(u64, StateDigest)>, Error> {
        let read = self.db.begin_read()?;
        let table = read.open_table(tables::DIGEST_POINTS)?;
        let last = table.last()?;
        last.map(|(k, v)| Ok((k.value(), StateDigest::from_bytes(v.value())?)))
            .transpose()
    }

    /// The digest points recorded at sequences `from..`, in order.
    pub fn digest_points(&self, from: u64) -> Result<Vec<(u64, StateDigest)>, Error> {
        let read = self.db.begin_read()?;
        let table = read.open_table(tables::DIGEST_POINTS)?;
        let mut out = Vec::new();
        for row in table.range(from..)? {
            let (seq, bytes) = row?;
            out.push((seq.value(), StateDigest::from_bytes(bytes.value())?));
        }
        Ok(out)
    }

    /// The digest point recorded at `seq`, if any.
    pub fn digest_point(&self, seq: u64) -> Result<Option<StateDigest>, Error> {
        let read = self.db.begin_read()?;
        let table = read.open_table(tables::DIGEST_POINTS)?;
        let found = table.get(seq)?;
        found
            .map(|b| StateDigest::from_bytes(b.value()))
            .transpose()
    }

    pub(crate) fn locators(&self) -> Result<Loaded<'_>, Error> {
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
    pub(crate) fn find<R: serde::de::DeserializeOwned>(
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
    ///
    /// With digest points on ([`Projections::set_digest_every`]), a batch that reaches a multiple
    /// of `every` is committed in more than one transaction: one ends there and records the
    /// state digest at that sequence, so that every instance and every rebuild records the
    /// same points, however their batches were cut.
    pub fn apply(&self, batch: &[Input], outbox: Outbox) -> Result<Applied, Error> {
        let mut locators = self.locators()?;
        let every = self.digest_every.load(Ordering::Relaxed);
        let digest_on = self.digest_on.load(Ordering::Relaxed);
        let mut total = Applied::default();
        let mut rest = batch;
        loop {
            let txn = self.db.begin_write()?;
            let (applied, tasks, invoices, consumed, point) = {
                let next_point = if every > 0 && digest_on {
                    Some(next_point(&txn, every)?)
                } else {
                    None
                };
                let mut w = Writer::open(&txn, &locators, self.run_len, outbox, digest_on)?;
                let mut applied = Applied {
                    last_seq: w.last_seq,
                    ..Applied::default()
                };
                let mut consumed = 0;
                // The sequences whose state this commit ends at: a point reached, or passed
                // over by a gap in the stream (the state there is the state before the input).
                let mut points = Vec::new();
                for input in rest {
                    if input.seq <= w.last_seq {
                        applied.skipped += 1;
                        consumed += 1;
                        continue;
                    }
                    if let Some(p) = next_point {
                        if input.seq > p {
                            points.extend((p..input.seq).step_by(every as usize));
                            break;
                        }
                    }
                    w.last_seq = input.seq;
                    applied.folded += 1;
                    consumed += 1;
                    match &input.event {
                        Ok(Message::Node(event)) => w.node_message(input, event)?,
                        Ok(Message::Operator(op)) => w.operator(input, op)?,
                        Err(refusal) => w.refuse(input, refusal)?,
                    }
                    if Some(input.seq) == next_point {
                        points.push(input.seq);
                        break;
                    }
                }
                applied.last_seq = w.last_seq;
                applied.mode = w.mode();
                for (slot, outcome) in applied.admission.iter_mut().zip(crate::ADMISSION_OUTCOMES) {
                    *slot = w.admission_checked(outcome);
                }
                let (tasks, invoices, delta) = w.flush()?;
                delta.store(&txn)?;
                if !points.is_empty() {
                    record_points(&txn, &points)?;
                }
                (applied, tasks, invoices, consumed, points.last().copied())
            };
            txn.commit()?;
            if let (Some(point), true) = (point, self.keep_point_views.load(Ordering::Relaxed)) {
                let view = Arc::new(self.db.begin_read()?);
                *self
                    .point_view
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some((point, view));
            }
            locators.tasks.committed(tasks);
            locators.invoices.committed(invoices);
            total.folded += applied.folded;
            total.skipped += applied.skipped;
            total.last_seq = applied.last_seq;
            total.mode = applied.mode;
            for (t, a) in total.admission.iter_mut().zip(applied.admission) {
                *t += a;
            }
            rest = &rest[consumed..];
            if rest.is_empty() {
                return Ok(total);
            }
        }
    }

    /// The root key (`ADMIN_KEY`) this database is folded with, once bound.
    pub fn admin_key(&self) -> Result<Option<Option<PublicKey>>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(tables::META)?;
        if table.get(meta::ADMIN_KEY)?.is_none() {
            return Ok(None);
        }
        Ok(Some(read_root(&table)?))
    }

    /// Whether this database may be folded on with `key` as its root key (contract §7): a
    /// replay must decide as the live fold did, so another key is refused, unless no operator
    /// event was read yet (then no decision depended on it, and a database from before keys
    /// existed takes one).
    pub fn check_admin_key(&self, key: Option<&PublicKey>) -> Result<(), Error> {
        let txn = self.db.begin_read()?;
        admin_key_conflict(&txn.open_table(tables::META)?, &self.path, key)
    }

    /// Binds the database to the root key it is folded with, after [`Self::check_admin_key`].
    pub fn bind_admin_key(&self, key: Option<&PublicKey>) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(tables::META)?;
            admin_key_conflict(&table, &self.path, key)?;
            table.insert(meta::ADMIN_KEY, key.map_or("", |k| k.as_str()).as_bytes())?;
        }
        txn.commit()?;
        Ok(())
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

/// The first multiple of `every` above both the last folded sequence and the last point
/// recorded (a point passed over by a gap is recorded before the sequence it ends at is).
fn next_point(txn: &redb::WriteTransaction, every: u64) -> Result<u64, Error> {
    let last = read_u64(&txn.open_table(tables::META)?, meta::LAST_SEQ)?.unwrap_or(0);
    let recorded = txn
        .open_table(tables::DIGEST_POINTS)?
        .last()?
        .map_or(0, |(seq, _)| seq.value());
    Ok((last.max(recorded) / every + 1) * every)
}

/// Records the state digest that the commit in `txn` leaves, at each of `points`.
fn record_points(txn: &redb::WriteTransaction, points: &[u64]) -> Result<(), Error> {
    let hashes = digest::stored(&txn.open_table(tables::DIGEST)?)?;
    let bytes = StateDigest::of(&hashes).to_bytes();
    let mut table = txn.open_table(tables::DIGEST_POINTS)?;
    for seq in points {
        table.insert(*seq, bytes.as_slice())?;
    }
    Ok(())
}

/// Creates each table that does not exist yet.
struct Create<'a>(&'a redb::WriteTransaction);

impl tables::Visit for Create<'_> {
    fn table<K, V>(
        &mut self,
        def: redb::TableDefinition<K, V>,
        _: tables::Role,
    ) -> Result<(), Error>
    where
        K: redb::Key + 'static,
        V: redb::Value + 'static,
        for<'x> K::SelfType<'x>: std::fmt::Debug,
    {
        self.0.open_table(def)?;
        Ok(())
    }
}

/// The memory redb may use for its page cache and write buffer together. redb's default (1 GiB)
/// would let a large database grow the process with the number of tasks; past this, pages are
/// read through the operating system's page cache, which the kernel may reclaim. Since new
/// records are appended ([`runs`]), folding reads few pages at random: 64 MiB folded 3M tasks
/// no faster than 32 MiB, and held 34 MB more.
pub const CACHE_BYTES: usize = 32 << 20;

pub(crate) fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(CACHE_BYTES);
    builder
}

pub(crate) fn open_error(path: &Path, e: redb::DatabaseError) -> Error {
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

pub(crate) fn count_table(
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

fn admin_key_conflict(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    path: &Path,
    key: Option<&PublicKey>,
) -> Result<(), Error> {
    let current = read_root(table)?;
    let read = read_u64(table, meta::OPERATOR_MESSAGES)?.unwrap_or(0);
    if current.as_ref() != key && read > 0 {
        return Err(Error::AdminKey {
            path: path.to_path_buf(),
            folded: current.map(|k| k.to_string()),
            configured: key.map(|k| k.to_string()),
        });
    }
    Ok(())
}
