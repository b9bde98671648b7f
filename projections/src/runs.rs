//! Where task and invoice records live, so that a new record costs an append rather than a
//! random B-tree write.
//!
//! Records are keyed by a hash, and hashes are random. In one B-tree keyed by the hash, each new
//! record lands on a leaf of its own: at ten million tasks, a batch with ten thousand new tasks
//! rewrote ten thousand 4 KiB pages, whatever the batch size. So a record is first kept in the
//! *hot* table under its creation number (the n-th record of its kind created, in stream order),
//! where new records fill the last leaf. Whenever `run_len` more records have been created, the
//! oldest `run_len` hot records are *sealed*: moved, sorted by hash, into a run of their own in
//! the runs table, whose key `(run, hash)` makes that an append too, and a Bloom filter of their
//! hashes is stored beside them.
//!
//! A lookup asks an in-memory index of the hot records (hash → creation number), then the
//! filters of the runs from the newest to the oldest, reading a run only when its filter says the
//! hash may be there: a new record costs no read at all, unless a filter errs (about 1 in 100 per
//! run).
//!
//! Which record is where depends only on the order of creation, never on how the stream was cut
//! into batches: after folding up to the same sequence, the live database and a replay hold the
//! same rows in the same tables, which lets `replay --verify` compare them table by table.

use crate::records::decode;
use crate::Error;
use redb::{ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use std::collections::HashMap;

/// How many records are gathered in the hot table before the oldest of them are sealed into a
/// run. Larger runs mean fewer filters to ask per lookup, and a larger in-memory index of the hot
/// records (40 bytes each, in a table sized to the next power of two). `cargo bench --bench fold
/// -- --tasks 3000000` folded as fast with runs of 2^17 as with 2^18 (314k-333k against
/// 321k-339k events/s over two runs each), and the smaller index keeps 21 MB less in memory.
pub const DEFAULT_RUN_LEN: u64 = 1 << 17;

/// The tables and counter of one kind of record.
#[derive(Clone, Copy)]
pub(crate) struct Kind {
    pub name: &'static str,
    /// Creation number → the hash, then the record.
    pub hot: TableDefinition<'static, u64, &'static [u8]>,
    /// `(run, hash)` → the record.
    pub runs: TableDefinition<'static, (u32, &'static [u8; 32]), &'static [u8]>,
    /// Run → the Bloom filter of its hashes.
    pub filters: TableDefinition<'static, u32, &'static [u8]>,
    /// The `meta` key counting the records of this kind created so far.
    pub created: &'static str,
}

/// Where a record is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Hot(u64),
    Run(u32),
}

/// What the process keeps in memory to find the records of one kind: it always matches the last
/// committed transaction, and is rebuilt from the tables when the database is opened.
#[derive(Default)]
pub(crate) struct Locator {
    hot: HashMap<[u8; 32], u64>,
    filters: Vec<Filter>,
}

impl Locator {
    pub fn load(txn: &redb::ReadTransaction, kind: Kind) -> Result<Self, Error> {
        let mut locator = Locator::default();
        let hot = txn.open_table(kind.hot)?;
        locator.hot.reserve(hot.len()? as usize);
        for row in hot.iter()? {
            let (number, bytes) = row?;
            locator
                .hot
                .insert(split(kind, bytes.value())?.0, number.value());
        }
        for row in txn.open_table(kind.filters)?.iter()? {
            let (run, bytes) = row?;
            if run.value() as usize != locator.filters.len() {
                return Err(corrupt(
                    kind,
                    format!("the filter of run {} is missing", locator.filters.len()),
                ));
            }
            locator
                .filters
                .push(Filter::from_bytes(kind, bytes.value())?);
        }
        Ok(locator)
    }

    /// Finds and decodes the record with this hash.
    pub fn find<R: DeserializeOwned>(
        &self,
        kind: Kind,
        hot: &impl ReadableTable<u64, &'static [u8]>,
        runs: &impl ReadableTable<(u32, &'static [u8; 32]), &'static [u8]>,
        hash: &[u8; 32],
    ) -> Result<Option<(Place, R)>, Error> {
        if let Some(&number) = self.hot.get(hash) {
            let Some(bytes) = hot.get(number)? else {
                return Err(corrupt(kind, format!("hot record {number} is missing")));
            };
            return Ok(Some((
                Place::Hot(number),
                decode(kind.name, split(kind, bytes.value())?.1)?,
            )));
        }
        let key = Probe::of(hash);
        for (run, filter) in self.filters.iter().enumerate().rev() {
            if filter.may_contain(key) {
                let run = run as u32;
                if let Some(bytes) = runs.get((run, hash))? {
                    return Ok(Some((Place::Run(run), decode(kind.name, bytes.value())?)));
                }
            }
        }
        Ok(None)
    }

    /// Takes in what a committed transaction changed.
    pub fn committed(&mut self, changes: Changes) {
        self.hot.extend(changes.created);
        if !changes.sealed.is_empty() {
            self.hot.retain(|_, number| *number >= changes.hot_from);
            self.filters.extend(changes.sealed);
        }
    }
}

/// What a write transaction changed that the [`Locator`] must learn once it commits.
#[derive(Default)]
pub(crate) struct Changes {
    created: Vec<([u8; 32], u64)>,
    sealed: Vec<Filter>,
    hot_from: u64,
}

/// One kind's tables in a write transaction.
pub(crate) struct Records<'t> {
    kind: Kind,
    run_len: u64,
    pub hot: Table<'t, u64, &'static [u8]>,
    pub runs: Table<'t, (u32, &'static [u8; 32]), &'static [u8]>,
    filters: Table<'t, u32, &'static [u8]>,
    /// Creation numbers handed out, this batch's included.
    created: u64,
    /// Rows for the hot table, written in creation order at [`Records::finish`].
    hot_rows: Vec<(u64, Vec<u8>)>,
    changes: Changes,
}

impl<'t> Records<'t> {
    pub fn open(
        txn: &'t WriteTransaction,
        kind: Kind,
        run_len: u64,
        created: u64,
    ) -> Result<Self, Error> {
        Ok(Records {
            kind,
            run_len,
            hot: txn.open_table(kind.hot)?,
            runs: txn.open_table(kind.runs)?,
            filters: txn.open_table(kind.filters)?,
            created,
            hot_rows: Vec::new(),
            changes: Changes::default(),
        })
    }

    /// The place of a record that does not exist yet: the next creation number.
    pub fn create(&mut self) -> Place {
        self.created += 1;
        Place::Hot(self.created - 1)
    }

    /// Stores a record; `new` when [`Records::create`] gave its place in this transaction.
    pub fn put(
        &mut self,
        hash: &[u8; 32],
        place: Place,
        new: bool,
        record: &[u8],
    ) -> Result<(), Error> {
        match place {
            Place::Run(run) => {
                self.runs.insert((run, hash), record)?;
            }
            Place::Hot(number) => {
                let mut row = Vec::with_capacity(32 + record.len());
                row.extend_from_slice(hash);
                row.extend_from_slice(record);
                self.hot_rows.push((number, row));
                if new {
                    self.changes.created.push((*hash, number));
                }
            }
        }
        Ok(())
    }

    /// Writes the hot rows and the count of records created, seals every run that is now
    /// complete, and hands back what `locator` must learn once the transaction commits.
    pub fn finish(
        mut self,
        locator: &Locator,
        meta: &mut Table<'_, &'static str, &'static [u8]>,
    ) -> Result<Changes, Error> {
        meta.insert(self.kind.created, self.created.to_le_bytes().as_slice())?;
        let mut rows = std::mem::take(&mut self.hot_rows);
        rows.sort_unstable_by_key(|(number, _)| *number);
        for (number, row) in rows {
            self.hot.insert(number, row.as_slice())?;
        }
        let complete = self.created / self.run_len;
        for run in locator.filters.len() as u64..complete {
            self.seal(run)?;
        }
        Ok(self.changes)
    }

    /// Moves the records created `run * run_len .. (run + 1) * run_len` from the hot table into
    /// run `run`, in hash order.
    fn seal(&mut self, run: u64) -> Result<(), Error> {
        let (from, to) = (run * self.run_len, (run + 1) * self.run_len);
        // Hashes and numbers only: the records are read again one at a time, so that sealing
        // holds 40 bytes per record in memory rather than the records themselves.
        let mut order = Vec::with_capacity(self.run_len as usize);
        for row in self.hot.range(from..to)? {
            let (number, bytes) = row?;
            order.push((split(self.kind, bytes.value())?.0, number.value()));
        }
        if order.len() as u64 != self.run_len {
            return Err(corrupt(
                self.kind,
                format!(
                    "run {run} should seal {} hot records, found {}",
                    self.run_len,
                    order.len()
                ),
            ));
        }
        order.sort_unstable();
        let run =
            u32::try_from(run).map_err(|_| corrupt(self.kind, "more than 2^32 runs".into()))?;
        for (hash, number) in &order {
            let record = match self.hot.get(number)? {
                Some(bytes) => split(self.kind, bytes.value())?.1.to_vec(),
                None => {
                    return Err(corrupt(
                        self.kind,
                        format!("hot record {number} is missing"),
                    ))
                }
            };
            self.runs.insert((run, hash), record.as_slice())?;
        }
        self.hot.retain_in(from..to, |_, _| false)?;
        let filter = Filter::build(order.iter().map(|(hash, _)| hash), order.len());
        self.filters.insert(run, filter.to_bytes().as_slice())?;
        self.changes.sealed.push(filter);
        self.changes.hot_from = to;
        Ok(())
    }
}

/// A hot row's hash and record.
fn split(kind: Kind, row: &[u8]) -> Result<([u8; 32], &[u8]), Error> {
    match row.split_first_chunk::<32>() {
        Some((hash, record)) => Ok((*hash, record)),
        None => Err(corrupt(
            kind,
            "a hot record is shorter than its hash".into(),
        )),
    }
}

fn corrupt(kind: Kind, detail: String) -> Error {
    Error::Corrupt {
        table: kind.name,
        detail,
    }
}

/// A blocked Bloom filter: each hash sets [`PROBES`] bits of one 512-bit block, so that a lookup
/// reads one cache line per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    blocks: Vec<[u64; 8]>,
}

/// Bits of filter per record: with [`PROBES`] bits set per record, about 1 lookup in 100 of an
/// absent hash is let through to read the run.
const BITS_PER_RECORD: usize = 10;
const PROBES: u32 = 7;

/// The two words a filter needs from a hash. Hashes come from nodes, so they are mixed rather
/// than trusted to be random: a node sending hashes that differ only in their last bytes must not
/// pile them all into one block.
#[derive(Clone, Copy)]
pub(crate) struct Probe {
    block: u64,
    bits: u64,
}

impl Probe {
    pub fn of(hash: &[u8; 32]) -> Probe {
        let word =
            |i: usize| u64::from_le_bytes(hash[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let block = mix(word(0) ^ mix(word(1) ^ mix(word(2) ^ mix(word(3)))));
        Probe {
            block,
            bits: mix(block ^ 0x9e37_79b9_7f4a_7c15),
        }
    }
}

/// The finalizer of splitmix64: every input bit flips each output bit with probability ~1/2.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Filter {
    pub fn build<'h>(hashes: impl Iterator<Item = &'h [u8; 32]>, count: usize) -> Filter {
        let blocks = (count * BITS_PER_RECORD).div_ceil(512).max(1);
        let mut filter = Filter {
            blocks: vec![[0; 8]; blocks],
        };
        for hash in hashes {
            let probe = Probe::of(hash);
            let block = filter.block(probe);
            for bit in bits(probe) {
                filter.blocks[block][bit / 64] |= 1 << (bit % 64);
            }
        }
        filter
    }

    pub fn may_contain(&self, probe: Probe) -> bool {
        let block = &self.blocks[self.block(probe)];
        bits(probe).all(|bit| block[bit / 64] & (1 << (bit % 64)) != 0)
    }

    fn block(&self, probe: Probe) -> usize {
        // Multiply-shift maps the word onto 0..len without the bias of a modulo.
        ((probe.block as u128 * self.blocks.len() as u128) >> 64) as usize
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.blocks
            .iter()
            .flatten()
            .flat_map(|word| word.to_le_bytes())
            .collect()
    }

    fn from_bytes(kind: Kind, bytes: &[u8]) -> Result<Filter, Error> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(64) {
            return Err(corrupt(
                kind,
                format!("a filter of {} bytes is not whole blocks", bytes.len()),
            ));
        }
        let blocks = bytes
            .chunks_exact(64)
            .map(|block| {
                let mut words = [0u64; 8];
                for (word, b) in words.iter_mut().zip(block.chunks_exact(8)) {
                    *word = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                }
                words
            })
            .collect();
        Ok(Filter { blocks })
    }
}

/// The bit positions within a block, nine bits of the word each.
fn bits(probe: Probe) -> impl Iterator<Item = usize> {
    (0..PROBES).map(move |i| ((probe.bits >> (9 * i)) & 511) as usize)
}

/// The locators of both kinds of record.
pub(crate) struct Locators {
    pub(crate) tasks: Locator,
    pub(crate) invoices: Locator,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u64) -> [u8; 32] {
        let mut h = [0; 32];
        h[24..].copy_from_slice(&i.to_be_bytes());
        h
    }

    #[test]
    fn a_filter_holds_every_hash_it_was_built_from_and_few_others() {
        // Hashes that differ only in their last bytes: the worst case for an unmixed filter.
        let members: Vec<_> = (0..10_000).map(hash).collect();
        let filter = Filter::build(members.iter(), members.len());
        assert!(members.iter().all(|h| filter.may_contain(Probe::of(h))));
        let strangers = (10_000..110_000)
            .filter(|&i| filter.may_contain(Probe::of(&hash(i))))
            .count();
        // 10 bits and 7 probes per record in 512-bit blocks let about 1% through.
        assert!(
            strangers < 2_000,
            "{strangers} of 100,000 absent hashes passed"
        );
    }

    #[test]
    fn a_filter_reads_back_as_it_was_written() {
        let members: Vec<_> = (0..1_000).map(hash).collect();
        let filter = Filter::build(members.iter(), members.len());
        let kind = crate::tables::TASK_RECORDS;
        assert_eq!(
            Filter::from_bytes(kind, &filter.to_bytes()).unwrap(),
            filter
        );
        assert!(Filter::from_bytes(kind, &[0; 63]).is_err());
    }
}
