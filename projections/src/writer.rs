//! One batch's write transaction: the fold applied to the records it touches.

use crate::admission::{self, admit, authorize_operator, in_order, Verdict};
use crate::batch::Outbox;
use crate::counters::{buckets_of, Counters};
use crate::digest::{counter_key, slot, Delta, DIGESTED_META};
use crate::fold;
use crate::input::{Input, Refusal};
use crate::records::{decode, encode, InvoiceRecord, KeyRecord, NodeRecord, TaskRecord};
use crate::runs::{Changes, Kind, Locator, Locators, Place, Records};
use crate::tables::meta::{read_mode, read_root, read_u64};
use crate::tables::{self, meta};
use crate::Error;
use redb::{ReadableTable, Table};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use truebit_streams::{
    subjects, DeadLetter, Digest, Event, EventKind, Minute, Mode, Operator, OperatorKind,
    PublicKey, Reason, Rejection, Verifier,
};

/// One batch's write transaction, with a write-behind overlay of the records it touches.
///
/// Each record a batch touches is read and decoded once, folded in memory event by event in
/// stream order, and written once, in key order, when the batch is flushed. Its contribution to
/// the counters moves once too, from what the table held before the batch to what it holds
/// after: the per-event moves in between would cancel out. This is what keeps a batch's cost
/// near one B-tree update per distinct record rather than several per event.
pub(crate) struct Writer<'t, 'l> {
    meta: Table<'t, &'static str, &'static [u8]>,
    locators: &'l Locators,
    tasks: Records<'t>,
    invoices: Records<'t>,
    nodes: Table<'t, &'static str, &'static [u8]>,
    publishers: Table<'t, &'static str, u32>,
    counters: Table<'t, (u8, i64), &'static [u8]>,
    rejection_table: Table<'t, &'static str, u64>,
    outbox: Table<'t, u64, &'static [u8]>,
    event_table: Table<'t, &'static str, u64>,
    keys: Table<'t, &'static str, &'static [u8]>,
    admission_table: Table<'t, &'static str, u64>,
    operator_clock: Table<'t, &'static str, i64>,
    pub(crate) last_seq: u64,
    node_count: u64,
    publisher_count: u64,
    publisher_ids: HashMap<String, u32>,
    task_overlay: HashMap<[u8; 32], Touched<TaskRecord, Place>>,
    invoice_overlay: HashMap<[u8; 32], Touched<InvoiceRecord, Place>>,
    node_overlay: HashMap<String, Touched<NodeRecord>>,
    rejections: HashMap<&'static str, u64>,
    events: HashMap<&'static str, u64>,
    key_overlay: HashMap<String, Touched<KeyRecord>>,
    /// The operator clock's entries this batch moved: target → the last applied `timestamp` (ms).
    clock_overlay: HashMap<String, i64>,
    /// Node messages checked in `audit` and `enforce`, by outcome.
    admission: HashMap<&'static str, u64>,
    mode: Mode,
    root: Option<PublicKey>,
    operator_messages: u64,
    outbox_mode: Outbox,
    /// Checks the signatures the reader left to the fold ([`crate::Checks`]).
    verifier: Verifier,
    /// What this batch adds to and takes from each table's hash ([`crate::digest`]).
    delta: Delta,
    /// The digested `meta` values as the batch found them.
    meta_before: Vec<Option<Vec<u8>>>,
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
    pub(crate) fn open(
        txn: &'t redb::WriteTransaction,
        locators: &'l Locators,
        run_len: u64,
        outbox_mode: Outbox,
        digest_on: bool,
    ) -> Result<Self, Error> {
        let meta_table = txn.open_table(tables::META)?;
        let meta_before = DIGESTED_META
            .iter()
            .map(|k| Ok(meta_table.get(*k)?.map(|v| v.value().to_vec())))
            .collect::<Result<Vec<_>, Error>>()?;
        let last_seq = read_u64(&meta_table, meta::LAST_SEQ)?.unwrap_or(0);
        let mode = read_mode(&meta_table)?;
        let root = read_root(&meta_table)?;
        let operator_messages = read_u64(&meta_table, meta::OPERATOR_MESSAGES)?.unwrap_or(0);
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
            outbox: txn.open_table(tables::OUTBOX)?,
            event_table: txn.open_table(tables::EVENTS)?,
            keys: txn.open_table(tables::KEYS)?,
            admission_table: txn.open_table(tables::ADMISSION)?,
            operator_clock: txn.open_table(tables::OPERATOR_CLOCK)?,
            last_seq,
            node_count,
            publisher_count,
            publisher_ids: HashMap::new(),
            task_overlay: HashMap::new(),
            invoice_overlay: HashMap::new(),
            node_overlay: HashMap::new(),
            rejections: HashMap::new(),
            events: HashMap::new(),
            key_overlay: HashMap::new(),
            clock_overlay: HashMap::new(),
            admission: HashMap::new(),
            mode,
            root,
            operator_messages,
            outbox_mode,
            verifier: Verifier::new(),
            delta: Delta::new(digest_on),
            meta_before,
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
                self.delta
                    .add(slot("publishers"), node_id.as_bytes(), &id.to_le_bytes());
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

    fn key(&mut self, key: &str) -> Result<&mut Touched<KeyRecord>, Error> {
        let table = &self.keys;
        touch(&mut self.key_overlay, key, || {
            Ok(((), load(table, "keys", key)?))
        })
    }

    /// The admission mode as folded so far.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Node messages this batch checked with `outcome` so far.
    pub(crate) fn admission_checked(&self, outcome: &str) -> u64 {
        self.admission.get(outcome).copied().unwrap_or(0)
    }

    /// Counts a refused message, and records its dead letter, if it has one, in the outbox with
    /// the minute the message was stored.
    pub(crate) fn refuse(&mut self, input: &Input, refusal: &Refusal) -> Result<(), Error> {
        *self.rejections.entry(refusal.reason.as_str()).or_default() += 1;
        if let (Some(dead), Outbox::Record) = (&refusal.dead_letter, self.outbox_mode) {
            let entry = crate::records::outbox_entry(dead, input.stored_minute);
            self.outbox.insert(input.seq, entry.as_slice())?;
        }
        Ok(())
    }

    /// A node's message: admitted or not by the registry (contract §7), then folded if admitted.
    pub(crate) fn node_message(&mut self, input: &Input, event: &Event) -> Result<(), Error> {
        if self.mode != Mode::Open {
            let signer = input.signer(&mut self.verifier);
            let verdict = match signer.key() {
                Some(key) => {
                    let stored = self.key(key.as_str())?;
                    let mut record = stored.now.take();
                    let verdict =
                        admit(signer, record.as_mut(), &event.node_id, input.stored_minute);
                    stored.now = record;
                    verdict
                }
                None => admit(signer, None, &event.node_id, input.stored_minute),
            };
            *self.admission.entry(verdict.outcome()).or_default() += 1;
            if let (Mode::Enforce, Verdict::Refused(reason, detail)) = (self.mode, verdict) {
                // The body is the event as read: only the fields the contract names.
                let dead_letter = (self.outbox_mode == Outbox::Record).then(|| {
                    let rejection = Rejection::new(reason, detail);
                    DeadLetter::new(&rejection, event.subject(), input.seq, &event.payload())
                });
                return self.refuse(
                    input,
                    &Refusal {
                        reason,
                        dead_letter,
                    },
                );
            }
        }
        self.fold(event)
    }

    /// An operator's event: it changes the registry if an admin key signed it, in every mode.
    pub(crate) fn operator(&mut self, input: &Input, op: &Operator) -> Result<(), Error> {
        self.operator_messages += 1;
        let signer = input.signer(&mut self.verifier);
        let signer_record = match signer.key() {
            Some(key) => self.key(key.as_str())?.now.clone(),
            None => None,
        };
        let target = op.kind.target();
        let last_applied = match self.clock_overlay.get(target.as_str()) {
            Some(at) => Some(*at),
            None => self.operator_clock.get(target.as_str())?.map(|v| v.value()),
        };
        if let Err(detail) = authorize_operator(signer, self.root.as_ref(), signer_record.as_ref())
            .and_then(|()| in_order(op, last_applied))
        {
            let dead_letter = (self.outbox_mode == Outbox::Record).then(|| {
                let rejection = Rejection::new(Reason::Unauthorized, detail);
                DeadLetter::new(&rejection, subjects::ADMIN_KEYS, input.seq, &op.sent)
            });
            return self.refuse(
                input,
                &Refusal {
                    reason: Reason::Unauthorized,
                    dead_letter,
                },
            );
        }
        *self.events.entry(op.kind.type_name()).or_default() += 1;
        self.clock_overlay
            .insert(target.as_str().to_string(), op.at_ms);
        match &op.kind {
            OperatorKind::KeyIssued(grant) => {
                let k = self.key(grant.key.as_str())?;
                k.now = Some(admission::key_issued(k.now.take(), grant, op.minute));
            }
            OperatorKind::KeyRevoked { key, reason } => {
                let k = self.key(key.as_str())?;
                k.now = admission::key_revoked(k.now.take(), reason, op.minute);
            }
            OperatorKind::AdmissionSet { mode } => self.mode = *mode,
        }
        Ok(())
    }

    fn fold(&mut self, event: &Event) -> Result<(), Error> {
        *self.events.entry(event.type_name()).or_default() += 1;
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
    pub(crate) fn flush(mut self) -> Result<(Changes, Changes, Delta), Error> {
        let mut deltas: HashMap<Minute, Counters> = HashMap::new();
        let on = self.delta.on;
        // Tasks and invoices, encoded once: the bytes are written here and hashed into the
        // digest on another thread meanwhile. Two 2 KiB hash outputs per changed record are
        // most of what the digest costs, and writing the records is most of a commit.
        let mut rows: Vec<Row> = Vec::new();
        for (id, t) in changed_in_order(std::mem::take(&mut self.task_overlay)) {
            shift(&mut deltas, &t, |r| Some(r.first_seen), Counters::task);
            let record = t.now.as_ref().expect("a task, once created, stays");
            rows.push(Row::of(true, id, t.at, t.before.as_ref(), on, record));
        }
        for (id, i) in changed_in_order(std::mem::take(&mut self.invoice_overlay)) {
            shift(&mut deltas, &i, |r| Some(r.first_seen), Counters::invoice);
            let record = i.now.as_ref().expect("an invoice, once created, stays");
            rows.push(Row::of(false, id, i.at, i.before.as_ref(), on, record));
        }
        // Both threads take chunks of rows until none is left: the other thread starts at once,
        // this one once it has written everything, so that hashing ends about when writing does.
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let hashing = (on && rows.len() >= HASH_APART_FROM)
                .then(|| scope.spawn(|| hash_rows(&rows, &next)));
            if on && hashing.is_none() {
                self.delta.merge(hash_rows(&rows, &next));
            }
            for row in &rows {
                let records = if row.task {
                    &mut self.tasks
                } else {
                    &mut self.invoices
                };
                records.put(&row.id, row.at, row.new, row.bytes.as_slice())?;
            }
            self.flush_rest(deltas)?;
            if let Some(hashing) = hashing {
                self.delta.merge(hash_rows(&rows, &next));
                self.delta
                    .merge(hashing.join().expect("hashing records does not panic"));
            }
            Ok::<_, Error>(())
        })?;
        let tasks = self.tasks.finish(&self.locators.tasks, &mut self.meta)?;
        let invoices = self
            .invoices
            .finish(&self.locators.invoices, &mut self.meta)?;
        let meta_slot = slot("meta");
        for (key, before) in DIGESTED_META.iter().zip(&self.meta_before) {
            let after = self.meta.get(*key)?.map(|v| v.value().to_vec());
            self.delta.change(
                meta_slot,
                key.as_bytes(),
                before.as_deref(),
                after.as_deref(),
            );
        }
        Ok((tasks, invoices, self.delta))
    }

    /// Everything a flush writes after the tasks and invoices.
    fn flush_rest(&mut self, mut deltas: HashMap<Minute, Counters>) -> Result<(), Error> {
        let nodes_slot = slot("nodes");
        for (id, n) in changed_in_order(std::mem::take(&mut self.node_overlay)) {
            shift(&mut deltas, &n, |r| r.last_seen, Counters::node);
            let Some(record) = n.now.as_ref() else {
                continue; // `node_left` of a nodeId that never was a node
            };
            if n.before.is_none() {
                self.node_count += 1;
            }
            let bytes = encode(record);
            self.digest_record(nodes_slot, id.as_bytes(), n.before.as_ref(), &bytes);
            self.nodes.insert(id.as_str(), bytes.as_slice())?;
        }

        let mut rows: HashMap<(u8, i64), Counters> = HashMap::new();
        for (minute, delta) in deltas {
            for key in buckets_of(minute) {
                rows.entry(key).or_default().merge(&delta, 1);
            }
        }
        let mut rows: Vec<_> = rows.into_iter().filter(|(_, d)| !d.is_zero()).collect();
        rows.sort_unstable_by_key(|(key, _)| *key);
        let counters_slot = slot("counters");
        for (key, delta) in rows {
            let stored = self.counters.get(key)?.map(|b| b.value().to_vec());
            let mut current: Counters = match &stored {
                Some(b) => decode("counters", b)?,
                None => Counters::default(),
            };
            current.merge(&delta, 1);
            let bytes = (!current.is_zero()).then(|| encode(&current));
            self.delta.change(
                counters_slot,
                &counter_key(key),
                stored.as_deref(),
                bytes.as_deref(),
            );
            match bytes {
                None => drop(self.counters.remove(key)?),
                Some(bytes) => drop(self.counters.insert(key, bytes.as_slice())?),
            }
        }
        let keys_slot = slot("keys");
        for (key, k) in changed_in_order(std::mem::take(&mut self.key_overlay)) {
            if let Some(record) = &k.now {
                let bytes = encode(record);
                self.digest_record(keys_slot, key.as_bytes(), k.before.as_ref(), &bytes);
                self.keys.insert(key.as_str(), bytes.as_slice())?;
            }
        }
        let mut clock: Vec<_> = std::mem::take(&mut self.clock_overlay)
            .into_iter()
            .collect();
        clock.sort_unstable();
        let clock_slot = slot("operator_clock");
        for (target, at_ms) in clock {
            let before = self
                .operator_clock
                .insert(target.as_str(), at_ms)?
                .map(|v| v.value().to_le_bytes());
            self.delta.change(
                clock_slot,
                target.as_bytes(),
                before.as_ref().map(|b| b.as_slice()),
                Some(&at_ms.to_le_bytes()),
            );
        }
        for (name, table, counts) in [
            ("rejections", &mut self.rejection_table, &self.rejections),
            ("events", &mut self.event_table, &self.events),
            ("admission", &mut self.admission_table, &self.admission),
        ] {
            let at = slot(name);
            for (key, n) in counts {
                let before = table.get(*key)?.map(|v| v.value());
                let after = before.unwrap_or(0) + n;
                table.insert(*key, after)?;
                self.delta.change(
                    at,
                    key.as_bytes(),
                    before.map(u64::to_le_bytes).as_ref().map(|b| b.as_slice()),
                    Some(&after.to_le_bytes()),
                );
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
        self.meta
            .insert(meta::ADMISSION_MODE, self.mode.as_str().as_bytes())?;
        self.meta.insert(
            meta::OPERATOR_MESSAGES,
            self.operator_messages.to_le_bytes().as_slice(),
        )?;
        Ok(())
    }

    /// Takes a changed record's old bytes out of its table's hash and puts the new ones in.
    fn digest_record<R: serde::Serialize>(
        &mut self,
        table: usize,
        key: &[u8],
        before: Option<&R>,
        after: &[u8],
    ) {
        if self.delta.on {
            let before = before.map(encode);
            self.delta
                .change(table, key, before.as_deref(), Some(after));
        }
    }
}

/// Below this many changed tasks and invoices a commit hashes them itself: a thread costs more
/// than it saves on the live fold's small commits.
const HASH_APART_FROM: usize = 512;

/// A changed task or invoice, encoded: written by the commit, hashed into the digest.
struct Row {
    task: bool,
    id: [u8; 32],
    at: Place,
    new: bool,
    /// The stored bytes before the commit, when the digest is kept and the record existed.
    before: Option<Vec<u8>>,
    bytes: Vec<u8>,
}

impl Row {
    fn of<R: serde::Serialize>(
        task: bool,
        id: [u8; 32],
        at: Place,
        before: Option<&R>,
        digest: bool,
        now: &R,
    ) -> Row {
        Row {
            task,
            id,
            at,
            new: before.is_none(),
            before: before.filter(|_| digest).map(encode),
            bytes: encode(now),
        }
    }
}

/// Rows a hashing thread takes at a time.
const HASH_CHUNK: usize = 128;

/// What the rows not yet taken (`next` counts them off) change in the tasks' and invoices'
/// hashes.
fn hash_rows(rows: &[Row], next: &AtomicUsize) -> Delta {
    let (tasks, invoices) = (slot("tasks"), slot("invoices"));
    let mut delta = Delta::new(true);
    loop {
        let from = next.fetch_add(HASH_CHUNK, Ordering::Relaxed);
        if from >= rows.len() {
            return delta;
        }
        for row in &rows[from..(from + HASH_CHUNK).min(rows.len())] {
            let table = if row.task { tasks } else { invoices };
            delta.change(table, &row.id, row.before.as_deref(), Some(&row.bytes));
        }
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
