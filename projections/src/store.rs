//! The database file: opening it, its metadata, and folding a batch into it in one commit.

use crate::batch::{Applied, Outbox};
use crate::input::Input;
use crate::runs::{Kind, Locator, Locators, DEFAULT_RUN_LEN};
use crate::tables::meta::{read_root, read_u64};
use crate::tables::{self, meta};
use crate::writer::Writer;
use crate::Error;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
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
                // Versions 3 and 4 only added tables, which are created below. Version 4's
                // operator clock cannot be derived without the stream, so a database that folded
                // an operator event must be rebuilt for it, lest a replay decide otherwise.
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
        Ok(Projections {
            db,
            path,
            run_len,
            locators: Mutex::new(None),
        })
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
    pub fn apply(&self, batch: &[Input], outbox: Outbox) -> Result<Applied, Error> {
        let mut locators = self.locators()?;
        let txn = self.db.begin_write()?;
        let (applied, tasks, invoices) = {
            let mut w = Writer::open(&txn, &locators, self.run_len, outbox)?;
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
                    Ok(Message::Node(event)) => w.node_message(input, event)?,
                    Ok(Message::Operator(op)) => w.operator(input, op)?,
                    Err(refusal) => w.refuse(input, refusal)?,
                }
            }
            applied.last_seq = w.last_seq;
            applied.mode = w.mode();
            for (slot, outcome) in applied.admission.iter_mut().zip(crate::ADMISSION_OUTCOMES) {
                *slot = w.admission_checked(outcome);
            }
            let (tasks, invoices) = w.flush()?;
            (applied, tasks, invoices)
        };
        txn.commit()?;
        locators.tasks.committed(tasks);
        locators.invoices.committed(invoices);
        Ok(applied)
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
