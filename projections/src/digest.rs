//! The state digest of contract §11: a homomorphic multiset hash of every folded record, per
//! table, kept up to date by each commit from what it changes (never a scan), and the same
//! digest computed from scratch by reading every record, which is what `audit` trusts.
//!
//! The hash is LtHash as Solana's accounts lattice hash defines it: 1024 lanes of `u16`; an
//! element is the BLAKE3 extendable output (2048 bytes, read as little-endian `u16`s) of its
//! input; a set is the lane-wise wrapping sum of its elements, so that adding a record and
//! taking one out are each one element's work, in any order; its 32-byte checksum is BLAKE3 of
//! the 2048 bytes of its lanes. `streams/PROTOCOL.md` ("The state digest") says exactly what
//! goes into an element, so that anyone can compute it again. An element's output is most of
//! the digest's cost; [`xof`] computes it eight blocks at a time where the CPU has AVX2.
//!
//! What is hashed are the *logical* records: a task is `taskIdHash → record` whether it sits in
//! the hot table or in a sealed run, since which of the two holds it depends on the run length
//! a database was created with. The runs' Bloom filters are an index derived from the records,
//! and the position and bookkeeping keys of `meta` are not state: neither is hashed.

mod xof;

use crate::tables::{self, meta};
use crate::Error;
use redb::ReadableTable;
use std::fmt;

/// The name of the algorithm, first in every digest's text: `lthash16:<64 hex>`.
pub const ALGORITHM: &str = "lthash16";

/// The hashed tables, in the registry's order ([`tables::each`]); `tasks` and `invoices` are
/// the logical records of their hot tables and runs together.
pub const DIGESTED: [&str; 11] = [
    "meta",
    "tasks",
    "invoices",
    "nodes",
    "publishers",
    "counters",
    "rejections",
    "events",
    "keys",
    "admission",
    "operator_clock",
];

/// The keys of `meta` folded from the stream, in the digest; the others (the schema version,
/// the last sequence, the stream's identity, the run length, the root key, the digest's own
/// marker) are position, layout or configuration.
pub const DIGESTED_META: [&str; 6] = [
    meta::NODES,
    meta::PUBLISHERS,
    meta::TASKS_CREATED,
    meta::INVOICES_CREATED,
    meta::ADMISSION_MODE,
    meta::OPERATOR_MESSAGES,
];

/// The index of a hashed table in [`DIGESTED`].
pub(crate) fn slot(table: &str) -> usize {
    DIGESTED
        .iter()
        .position(|t| *t == table)
        .expect("a digested table")
}

pub const LANES: usize = 1024;
const BYTES: usize = LANES * 2;

/// A lattice hash: the multiset of elements added minus those taken out.
#[derive(Clone, PartialEq, Eq)]
pub struct LtHash(pub [u16; LANES]);

impl fmt::Debug for LtHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LtHash({})", hex(&self.checksum()))
    }
}

impl LtHash {
    /// The hash of the empty set.
    pub const fn identity() -> Self {
        LtHash([0; LANES])
    }

    /// The element of what `hasher` has been given.
    pub fn of(hasher: &blake3::Hasher) -> Self {
        let mut bytes = [0u8; BYTES];
        hasher.finalize_xof().fill(&mut bytes);
        let mut lanes = [0u16; LANES];
        for (lane, b) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([b[0], b[1]]);
        }
        LtHash(lanes)
    }

    /// The element of one record: see `streams/PROTOCOL.md`.
    pub fn element(table: &str, key: &[u8], value: &[u8]) -> Self {
        let mut element = LtHash::identity();
        element.mix(table, key, value, true);
        element
    }

    /// Adds (`add`) or takes out the element of one record, straight from the hash's output:
    /// no element is made, which saves a third of the work of [`LtHash::element`] then
    /// [`LtHash::add`].
    pub fn mix(&mut self, table: &str, key: &[u8], value: &[u8], add: bool) {
        let key_len = (key.len() as u32).to_le_bytes();
        let pieces: [&[u8]; 5] = [table.as_bytes(), &[0], &key_len, key, value];
        xof::accumulate(&pieces, &mut self.0, add);
    }

    pub fn add(&mut self, other: &LtHash) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    pub fn sub(&mut self, other: &LtHash) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.wrapping_sub(*b);
        }
    }

    pub fn is_identity(&self) -> bool {
        self.0.iter().all(|l| *l == 0)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|l| l.to_le_bytes()).collect()
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != BYTES {
            return Err(Error::Corrupt {
                table: "digest",
                detail: format!("a lattice hash of {} bytes, not {BYTES}", bytes.len()),
            });
        }
        let mut lanes = [0u16; LANES];
        for (lane, b) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([b[0], b[1]]);
        }
        Ok(LtHash(lanes))
    }

    /// BLAKE3 of the lanes as 2048 little-endian bytes.
    pub fn checksum(&self) -> [u8; 32] {
        *blake3::hash(&self.to_bytes()).as_bytes()
    }
}

/// The per-table checksums of one state, in [`DIGESTED`] order, and the state digest over them.
#[derive(Clone, PartialEq, Eq)]
pub struct StateDigest {
    pub tables: [[u8; 32]; DIGESTED.len()],
}

impl StateDigest {
    pub(crate) fn of(hashes: &[LtHash]) -> Self {
        let mut tables = [[0u8; 32]; DIGESTED.len()];
        for (t, h) in tables.iter_mut().zip(hashes) {
            *t = h.checksum();
        }
        StateDigest { tables }
    }

    /// BLAKE3 of the table checksums concatenated in [`DIGESTED`] order.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(self.tables.concat().as_slice()).as_bytes()
    }

    /// `lthash16:<hex>`, as headers and messages carry it.
    pub fn text(&self) -> String {
        format!("{ALGORITHM}:{}", hex(&self.hash()))
    }

    /// Each table with its checksum in hex, in [`DIGESTED`] order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        DIGESTED
            .iter()
            .zip(self.tables.iter())
            .map(|(n, c)| (*n, hex(c)))
    }

    /// The tables whose checksums differ from `other`'s.
    pub fn differing(&self, other: &StateDigest) -> Vec<&'static str> {
        DIGESTED
            .iter()
            .zip(self.tables.iter().zip(other.tables.iter()))
            .filter(|(_, (a, b))| a != b)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Reads back the per-table checksums of a published point, by table name; `None` when a
    /// table is missing or a checksum is not 64 hex digits.
    pub fn from_named<'a>(named: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        let mut tables = [[0u8; 32]; DIGESTED.len()];
        for (t, name) in tables.iter_mut().zip(DIGESTED) {
            *t = unhex(named(name)?)?;
        }
        Some(StateDigest { tables })
    }

    /// The point as published on `truebit.stats.digest`.
    pub fn to_point(&self, seq: u64, checkpoint: bool) -> truebit_streams::DigestPoint {
        truebit_streams::DigestPoint {
            seq,
            digest: self.text(),
            tables: self.named().map(|(n, h)| (n.to_string(), h)).collect(),
            checkpoint,
        }
    }

    /// A published point's per-table checksums; `None` when they are not this algorithm's
    /// tables, or do not give the point's own digest.
    pub fn from_point(point: &truebit_streams::DigestPoint) -> Option<Self> {
        let digest = Self::from_named(|n| point.tables.get(n).map(|s| s.as_str()))?;
        (digest.text() == point.digest).then_some(digest)
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        self.tables.concat()
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != 32 * DIGESTED.len() {
            return Err(Error::Corrupt {
                table: "digest_points",
                detail: format!("a digest point of {} bytes", bytes.len()),
            });
        }
        let mut tables = [[0u8; 32]; DIGESTED.len()];
        for (t, chunk) in tables.iter_mut().zip(bytes.chunks_exact(32)) {
            t.copy_from_slice(chunk);
        }
        Ok(StateDigest { tables })
    }
}

impl fmt::Debug for StateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.text())?;
        for (name, hex) in self.named() {
            write!(f, " {name}={}", &hex[..12])?;
        }
        Ok(())
    }
}

impl fmt::Display for StateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A counter row's key as hashed: the level, then the index as 8 little-endian bytes.
pub(crate) fn counter_key(key: (u8, i64)) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = key.0;
    out[1..].copy_from_slice(&key.1.to_le_bytes());
    out
}

/// What one commit adds to and takes from each table's hash.
pub(crate) struct Delta {
    hashes: Vec<LtHash>,
    touched: [bool; DIGESTED.len()],
    pub(crate) on: bool,
}

impl Delta {
    pub fn new(on: bool) -> Self {
        Delta {
            hashes: if on {
                vec![LtHash::identity(); DIGESTED.len()]
            } else {
                Vec::new()
            },
            touched: [false; DIGESTED.len()],
            on,
        }
    }

    pub fn add(&mut self, table: usize, key: &[u8], value: &[u8]) {
        if self.on {
            self.hashes[table].mix(DIGESTED[table], key, value, true);
            self.touched[table] = true;
        }
    }

    pub fn remove(&mut self, table: usize, key: &[u8], value: &[u8]) {
        if self.on {
            self.hashes[table].mix(DIGESTED[table], key, value, false);
            self.touched[table] = true;
        }
    }

    /// Adds another delta's changes to this one's.
    pub fn merge(&mut self, other: Delta) {
        if !other.on {
            return;
        }
        for (i, hash) in other.hashes.iter().enumerate() {
            if other.touched[i] {
                self.hashes[i].add(hash);
                self.touched[i] = true;
            }
        }
    }

    /// A record that was `before` and is `after` (either absent).
    pub fn change(
        &mut self,
        table: usize,
        key: &[u8],
        before: Option<&[u8]>,
        after: Option<&[u8]>,
    ) {
        if before == after {
            return;
        }
        if let Some(b) = before {
            self.remove(table, key, b);
        }
        if let Some(a) = after {
            self.add(table, key, a);
        }
    }

    /// Adds this commit's changes to the stored hashes, in the commit's transaction.
    pub fn store(self, txn: &redb::WriteTransaction) -> Result<(), Error> {
        let mut table = txn.open_table(tables::DIGEST)?;
        let mut marker = txn.open_table(tables::META)?;
        if !self.on {
            // The stored hashes no longer follow the records: the next open with the digest on
            // computes them again by a scan.
            marker.remove(meta::DIGEST)?;
            return Ok(());
        }
        for (i, hash) in self.hashes.iter().enumerate() {
            if !self.touched[i] || hash.is_identity() {
                continue;
            }
            let mut stored = match table.get(DIGESTED[i])? {
                Some(bytes) => LtHash::from_bytes(bytes.value())?,
                None => LtHash::identity(),
            };
            stored.add(hash);
            table.insert(DIGESTED[i], stored.to_bytes().as_slice())?;
        }
        Ok(())
    }
}

/// The stored per-table hashes, as the last commit left them.
pub(crate) fn stored(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<LtHash>, Error> {
    DIGESTED
        .iter()
        .map(|name| match table.get(*name)? {
            Some(bytes) => LtHash::from_bytes(bytes.value()),
            None => Ok(LtHash::identity()),
        })
        .collect()
}

/// Every table's hash from scratch, reading every record once.
pub(crate) fn scan(txn: &redb::ReadTransaction) -> Result<Vec<LtHash>, Error> {
    let mut hashes = vec![LtHash::identity(); DIGESTED.len()];
    let mut put = |table: &str, key: &[u8], value: &[u8]| {
        hashes[slot(table)].mix(table, key, value, true);
    };
    let meta_table = txn.open_table(tables::META)?;
    for key in DIGESTED_META {
        if let Some(v) = meta_table.get(key)? {
            put("meta", key.as_bytes(), v.value());
        }
    }
    for kind in [tables::TASK_RECORDS, tables::INVOICE_RECORDS] {
        for row in txn.open_table(kind.hot)?.iter()? {
            let (_, bytes) = row?;
            let Some((hash, record)) = bytes.value().split_first_chunk::<32>() else {
                return Err(Error::Corrupt {
                    table: kind.name,
                    detail: "a hot record is shorter than its hash".into(),
                });
            };
            put(kind.name, hash, record);
        }
        for row in txn.open_table(kind.runs)?.iter()? {
            let (key, record) = row?;
            put(kind.name, key.value().1, record.value());
        }
    }
    for (name, def) in [("nodes", tables::NODES), ("keys", tables::KEYS)] {
        for row in txn.open_table(def)?.iter()? {
            let (k, v) = row?;
            put(name, k.value().as_bytes(), v.value());
        }
    }
    for row in txn.open_table(tables::PUBLISHERS)?.iter()? {
        let (k, v) = row?;
        put("publishers", k.value().as_bytes(), &v.value().to_le_bytes());
    }
    for row in txn.open_table(tables::COUNTERS)?.iter()? {
        let (k, v) = row?;
        put("counters", &counter_key(k.value()), v.value());
    }
    for (name, def) in [
        ("rejections", tables::REJECTIONS),
        ("events", tables::EVENTS),
        ("admission", tables::ADMISSION),
    ] {
        for row in txn.open_table(def)?.iter()? {
            let (k, v) = row?;
            put(name, k.value().as_bytes(), &v.value().to_le_bytes());
        }
    }
    for row in txn.open_table(tables::OPERATOR_CLOCK)?.iter()? {
        let (k, v) = row?;
        put(
            "operator_clock",
            k.value().as_bytes(),
            &v.value().to_le_bytes(),
        );
    }
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element_of(input: &str) -> LtHash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(input.as_bytes());
        LtHash::of(&hasher)
    }

    /// Values from the tests of Solana's `solana-lattice-hash` (agave, `lattice-hash/src/
    /// lt_hash.rs`, `test_hello_world`): the first and last lanes and the checksum of the
    /// elements of "hello" and "world!".
    #[test]
    fn elements_and_checksums_match_solanas_lattice_hash() {
        let hello = element_of("hello");
        assert_eq!(&hello.0[..4], &[0x8fea, 0x3d16, 0x86b3, 0x9282]);
        assert_eq!(hello.0[LANES - 1], 0x9924);
        assert_eq!(
            hello.checksum(),
            [
                79, 156, 26, 184, 156, 205, 94, 208, 182, 235, 33, 147, 111, 153, 229, 152, 207,
                133, 75, 109, 182, 198, 119, 61, 11, 81, 41, 70, 24, 87, 100, 85,
            ]
        );
        let world = element_of("world!");
        assert_eq!(&world.0[..2], &[0x56dc, 0x1d98]);
        assert_eq!(world.0[LANES - 1], 0x171f);
        assert_eq!(
            world.checksum(),
            [
                171, 53, 185, 10, 179, 49, 48, 151, 87, 43, 141, 13, 43, 152, 121, 1, 144, 7, 120,
                188, 115, 248, 214, 220, 229, 210, 175, 134, 215, 231, 18, 245,
            ]
        );
    }

    #[test]
    fn adding_and_taking_out_commute_and_cancel() {
        let (a, b, c) = (element_of("a"), element_of("b"), element_of("c"));
        let mut x = LtHash::identity();
        x.add(&a);
        x.add(&b);
        x.sub(&a);
        x.add(&c);
        let mut y = LtHash::identity();
        y.add(&c);
        y.add(&b);
        assert_eq!(x, y);
        y.sub(&b);
        y.sub(&c);
        assert!(y.is_identity());
        assert_eq!(LtHash::from_bytes(&x.to_bytes()).unwrap(), x);
    }

    #[test]
    fn an_element_names_its_table_and_splits_key_from_value() {
        let base = LtHash::element("nodes", b"ab", b"c");
        assert_ne!(base, LtHash::element("keys", b"ab", b"c"));
        assert_ne!(base, LtHash::element("nodes", b"a", b"bc"));
        assert_ne!(base, LtHash::element("nodes", b"ab", b"d"));
    }

    fn empty_text() -> String {
        StateDigest::of(&vec![LtHash::identity(); DIGESTED.len()]).text()
    }

    #[test]
    fn a_digest_reads_back_from_its_text_form() {
        let mut hashes = vec![LtHash::identity(); DIGESTED.len()];
        hashes[3] = element_of("x");
        let d = StateDigest::of(&hashes);
        assert!(d.text().starts_with("lthash16:") && d.text().len() == 9 + 64);
        let named: std::collections::HashMap<&str, String> = d.named().collect();
        let back = StateDigest::from_named(|n| named.get(n).map(|s| s.as_str())).unwrap();
        assert_eq!(back, d);
        assert_eq!(
            StateDigest::from_point(&d.to_point(7, false)),
            Some(d.clone())
        );
        let mut forged = d.to_point(7, false);
        forged.digest = empty_text();
        assert_eq!(StateDigest::from_point(&forged), None);
        let empty = StateDigest::of(&vec![LtHash::identity(); DIGESTED.len()]);
        assert_eq!(d.differing(&empty), ["nodes"]);
        assert_eq!(StateDigest::from_bytes(&d.to_bytes()).unwrap(), d);
    }
}
