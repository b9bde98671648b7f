//! Whole databases: a copy (a checkpoint) and a comparison (`replay --verify`), both walking the
//! one list of tables in [`crate::tables`].

use crate::store::{builder, open_error};
use crate::tables::meta::read_u64;
use crate::tables::{self, meta, Role, Visit};
use crate::{Error, Projections};
use redb::ReadableTable;
use redb::{ReadableDatabase, TableDefinition, TableHandle};
use std::fmt::Debug;
use std::path::Path;

impl Projections {
    /// Up to `limit` differences between this database and `other`, record by record and
    /// counter by counter, each as a sentence naming the table and the key. Empty when they
    /// hold the same state. The stream identity and the outbox are not compared: a rebuild may
    /// not have the one and never has the other.
    pub fn differences(&self, other: &Projections, limit: usize) -> Result<Vec<String>, Error> {
        let mut diff = Diff {
            a: self.db.begin_read()?,
            b: other.db.begin_read()?,
            limit,
            out: Vec::new(),
        };
        tables::each(&mut diff)?;
        diff.out.truncate(limit);
        Ok(diff.out)
    }

    /// Writes a consistent copy of the state to a new file at `path` (which must not exist) from
    /// one read transaction, so that folding goes on meanwhile. Returns the last folded sequence
    /// the copy holds. The outbox is not copied: a copy is for rebuilding, which never publishes.
    /// With [`Projections::keep_point_views`] on, the copy is of the state at the newest digest
    /// point, whose digest was published and compared by every instance (contract §11).
    pub fn checkpoint_to(&self, path: &Path) -> Result<u64, Error> {
        let read = match self.point_view() {
            Some((_, view)) => view,
            None => std::sync::Arc::new(self.db.begin_read()?),
        };
        let last_seq = read_u64(&read.open_table(tables::META)?, meta::LAST_SEQ)?.unwrap_or(0);
        let copy = builder().create(path).map_err(|e| open_error(path, e))?;
        let write = copy.begin_write()?;
        // One big transaction that nobody reads before it commits: no need to sync pages twice.
        tables::each(&mut Copy {
            from: &read,
            to: &write,
        })?;
        write.commit()?;
        Ok(last_seq)
    }
}

struct Copy<'a> {
    from: &'a redb::ReadTransaction,
    to: &'a redb::WriteTransaction,
}

impl Visit for Copy<'_> {
    fn table<K, V>(&mut self, def: TableDefinition<K, V>, role: Role) -> Result<(), Error>
    where
        K: redb::Key + 'static,
        V: redb::Value + 'static,
        for<'x> K::SelfType<'x>: Debug,
    {
        match role {
            Role::State | Role::Digest => copy_table(self.from, self.to, def),
            // Present and empty, as in a new database.
            Role::Outbox => self.to.open_table(def).map(drop).map_err(Error::from),
        }
    }
}

struct Diff {
    a: redb::ReadTransaction,
    b: redb::ReadTransaction,
    limit: usize,
    out: Vec<String>,
}

impl Visit for Diff {
    fn table<K, V>(&mut self, def: TableDefinition<K, V>, role: Role) -> Result<(), Error>
    where
        K: redb::Key + 'static,
        V: redb::Value + 'static,
        for<'x> K::SelfType<'x>: Debug,
    {
        if role != Role::State {
            return Ok(());
        }
        diff_table(&self.a, &self.b, def, def.name(), self.limit, &mut self.out)
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
