//! From what the runner's files say to the events a node publishes (contract §10). Pure: records
//! and log entries in, with the time they were read; events out, each exactly once. The state is
//! kept by [`super::state`] across restarts, record by record.
//!
//! Its memory does not grow with the runner's history: it holds only the executions and invoices
//! touched since the state last committed them (and those whose grace period ended), and asks a
//! [`Recall`] (the state database) for one it does not hold when a record or a line names it.
//!
//! An event goes out as soon as the agent knows enough to say it right, and at the latest after
//! a grace period since it was first read, with what is known by then:
//!
//! - `task_received` once a task_created record or log line is known, at `payload.timestamp`,
//!   else its log line's time; a plan-form record with neither waits for the grace period for its
//!   invoice's `taskCreated_timeStamp`, else goes out at the time it was first read.
//! - `task_completed` at the completion line (with the stdout figures attributed before it), or
//!   for an outcome record whose completion line never came, after the grace period: `status`
//!   `completed`, no `success`, the gas bucket from the invoice's steps if known.
//! - `invoice_created` at its log line's time, or after the grace period at the time it was first
//!   read (the EventDB gives an invoice no time of its own).
//!
//! The grace period is for what the runner is writing now: it writes the EventDB and its log
//! about the same moment, in either order. What the agent read before it first reached the end of
//! every file (its history at start-up, or after an outage) waits for nothing: the better source
//! would have been in a file already read.

use super::runner::{InvoiceRecord, LineKind, Metering, Record, TaskCreated};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use truebit_streams::anonymize::{self, Salt};
use truebit_streams::{Event, EventKind, Invoice, Outcome};

/// What the agent knows of one execution, keyed by `executionId`. Stays on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// A task_created record or log line was read.
    pub created: bool,
    pub task_type: Option<String>,
    pub chain_id: Option<String>,
    pub received_at: Option<i64>,
    pub log_received_at: Option<i64>,
    pub invoice_task_created_at: Option<i64>,
    pub invoice_steps: Option<u64>,
    /// When an outcome record was first read (wall clock).
    pub outcome_read_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub metering: Option<Metering>,
    /// When anything about it was first read (wall clock).
    pub first_read_at: i64,
    pub sent_received: bool,
    pub sent_completed: bool,
}

impl Execution {
    fn completed(&self) -> bool {
        self.completed_at.is_some() || self.outcome_read_at.is_some()
    }

    /// Counted in the heartbeat's `totalTasksBucket`: seen received or completed.
    pub fn counted(&self) -> bool {
        self.created || self.completed()
    }

    /// Counted in `activeTasksBucket`: received and not completed.
    pub fn active(&self) -> bool {
        self.created && !self.completed()
    }

    /// When the grace period it waits for began: the receipt of a task with no time of its own
    /// yet, or an outcome record without a completion line. `None` when it waits for no time.
    pub fn waits_since(&self) -> Option<i64> {
        let receipt = (self.created && !self.sent_received).then_some(self.first_read_at);
        let completion = (!self.sent_completed && self.completed_at.is_none())
            .then_some(self.outcome_read_at)
            .flatten();
        match (receipt, completion) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What the agent knows of one invoice, keyed by `invoiceId`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceState {
    pub execution_id: Option<String>,
    pub steps: Option<u64>,
    pub memory: Option<u64>,
    pub operation: Option<String>,
    pub log_at: Option<i64>,
    pub first_read_at: i64,
    pub sent: bool,
}

impl InvoiceState {
    /// When the grace period it waits for (its log line) began; `None` when it waits for none.
    pub fn waits_since(&self) -> Option<i64> {
        (!self.sent && self.log_at.is_none()).then_some(self.first_read_at)
    }
}

/// Where the tracker finds an execution or invoice it does not hold: the state database.
pub trait Recall: Send {
    fn execution(&self, id: &str) -> Result<Option<Execution>, String>;
    fn invoice(&self, id: &str) -> Result<Option<InvoiceState>, String>;
}

/// Nothing to recall: a tracker that holds all it knows.
struct Nothing;

impl Recall for Nothing {
    fn execution(&self, _: &str) -> Result<Option<Execution>, String> {
        Ok(None)
    }
    fn invoice(&self, _: &str) -> Result<Option<InvoiceState>, String> {
        Ok(None)
    }
}

/// A changed record, for the state to write.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Execution(String),
    Invoice(String),
}

/// The executions and invoices in hand, and the order of the tasks the live log has running.
pub struct Tracker {
    pub executions: BTreeMap<String, Execution>,
    pub invoices: BTreeMap<String, InvoiceState>,
    /// Executions received in the followed log and not yet completed there, oldest first: a
    /// stdout entry carries no id and belongs to the last of them.
    pub running: Vec<String>,
    dirty: BTreeSet<Key>,
    recall: Box<dyn Recall>,
    /// The first failure to recall, for the reader to stop on.
    failure: Option<String>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new(Box::new(Nothing))
    }
}

/// Entries of `running` past this many are the oldest, whose completion line was lost: dropped,
/// so that a log of tasks that never complete cannot grow it without end.
const RUNNING_MAX: usize = 1024;

/// An event ready to go, and the raw time that orders it among the others of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub at: i64,
    pub event: Event,
}

impl Tracker {
    pub fn new(recall: Box<dyn Recall>) -> Self {
        Tracker {
            executions: BTreeMap::new(),
            invoices: BTreeMap::new(),
            running: Vec::new(),
            dirty: BTreeSet::new(),
            recall,
            failure: None,
        }
    }

    /// Why an execution or invoice could not be recalled, once.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// Brings an execution into hand from the recall, if it is known there.
    pub fn hold_execution(&mut self, id: &str) {
        if self.executions.contains_key(id) {
            return;
        }
        match self.recall.execution(id) {
            Ok(Some(e)) => {
                self.executions.insert(id.to_string(), e);
            }
            Ok(None) => {}
            Err(why) => {
                self.failure.get_or_insert(why);
            }
        }
    }

    /// Brings an invoice (and its execution) into hand from the recall, if known there.
    pub fn hold_invoice(&mut self, id: &str) {
        if !self.invoices.contains_key(id) {
            match self.recall.invoice(id) {
                Ok(Some(i)) => {
                    self.invoices.insert(id.to_string(), i);
                }
                Ok(None) => {}
                Err(why) => {
                    self.failure.get_or_insert(why);
                }
            }
        }
        if let Some(exec) = self.invoices.get(id).and_then(|i| i.execution_id.clone()) {
            self.hold_execution(&exec);
        }
    }

    /// Lets go of everything in hand, once the state has committed it; keeps `running`.
    pub fn release(&mut self) {
        debug_assert!(self.dirty.is_empty(), "released before the commit");
        self.executions.clear();
        self.invoices.clear();
    }

    /// How many executions and invoices are in hand.
    pub fn in_hand(&self) -> usize {
        self.executions.len() + self.invoices.len()
    }

    fn execution(&mut self, id: &str, now: i64) -> &mut Execution {
        self.hold_execution(id);
        self.dirty.insert(Key::Execution(id.to_string()));
        self.executions
            .entry(id.to_string())
            .or_insert_with(|| Execution {
                first_read_at: now,
                ..Execution::default()
            })
    }

    /// Whether a record changed since the last [`Tracker::take_dirty`].
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The keys changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<Key> {
        std::mem::take(&mut self.dirty)
    }

    /// A new EventDB record, read at `now`.
    pub fn record(&mut self, record: &Record, now: i64) {
        match record {
            Record::Task(t) => self.task_created(t, None, now),
            Record::Outcome { execution_id } => {
                let e = self.execution(execution_id, now);
                e.outcome_read_at.get_or_insert(now);
            }
            Record::Invoice(inv) => self.invoice(inv, None, now),
        }
    }

    fn task_created(&mut self, t: &TaskCreated, log_at: Option<i64>, now: i64) {
        let e = self.execution(&t.execution_id, now);
        e.created = true;
        if e.task_type.is_none() {
            e.task_type = t.task_type.clone();
        }
        if e.chain_id.is_none() {
            e.chain_id = t.chain_id.clone();
        }
        if e.received_at.is_none() {
            e.received_at = t.received_at;
        }
        if let Some(at) = log_at {
            e.log_received_at.get_or_insert(at);
        }
    }

    fn invoice(&mut self, inv: &InvoiceRecord, log_at: Option<i64>, now: i64) {
        if let Some(exec) = &inv.execution_id {
            let e = self.execution(exec, now);
            if e.invoice_task_created_at.is_none() {
                e.invoice_task_created_at = inv.task_created_at;
            }
            if e.invoice_steps.is_none() {
                e.invoice_steps = inv.steps;
            }
        }
        self.hold_invoice(&inv.invoice_id);
        self.dirty.insert(Key::Invoice(inv.invoice_id.clone()));
        let state = self
            .invoices
            .entry(inv.invoice_id.clone())
            .or_insert_with(|| InvoiceState {
                execution_id: inv.execution_id.clone(),
                steps: inv.steps,
                memory: inv.memory,
                operation: inv.operation.clone(),
                first_read_at: now,
                ..InvoiceState::default()
            });
        if let Some(at) = log_at {
            state.log_at.get_or_insert(at);
        }
    }

    /// A log entry of the followed log (`running` is the tracker's own) or of a file read once
    /// (`running` is that file's), read at `now`.
    pub fn log_entry(
        &mut self,
        at: i64,
        kind: &LineKind,
        running: Option<&mut Vec<String>>,
        now: i64,
    ) {
        let mut own = std::mem::take(&mut self.running);
        let running = match running {
            Some(r) => r,
            None => &mut own,
        };
        match kind {
            LineKind::TaskReceived(t) => {
                self.task_created(t, Some(at), now);
                running.retain(|id| id != &t.execution_id);
                running.push(t.execution_id.clone());
                if running.len() > RUNNING_MAX {
                    running.remove(0);
                }
            }
            LineKind::Stdout(m) => {
                if let Some(id) = running.last().cloned() {
                    let e = self.execution(&id, now);
                    if e.metering.is_none() {
                        e.metering = Some(m.clone());
                    }
                }
            }
            LineKind::Completed(id) => {
                running.retain(|r| r != id);
                let e = self.execution(id, now);
                e.completed_at.get_or_insert(at);
            }
            LineKind::Invoice(inv) => self.invoice(inv, Some(at), now),
            _ => {}
        }
        self.running = own;
    }

    /// The events that are ready at `now`, each marked sent so that it never goes again;
    /// ordered by their raw time, a task's receipt before its completion.
    ///
    /// `read_through`: when the agent had first read every file to its end (`None` until then).
    /// What was read by then waits for no `grace`: its better source (a log line, an invoice's
    /// time) would have been in a file already read, so none is coming.
    pub fn ready(
        &mut self,
        now: i64,
        grace: i64,
        read_through: Option<i64>,
        node_id: &str,
        salt: &Salt,
    ) -> Vec<Ready> {
        let mut out = Vec::new();
        let event = |at: i64, kind: EventKind| Ready {
            at,
            event: Event {
                node_id: node_id.to_string(),
                minute: anonymize::floor_5min(at),
                kind,
            },
        };
        for (id, e) in self.executions.iter_mut() {
            let due =
                |read_at: i64| now - read_at >= grace || read_through.is_some_and(|t| read_at <= t);
            let completion = !e.sent_completed
                && (e.completed_at.is_some() || e.outcome_read_at.is_some_and(due));
            let receipt_known = e.received_at.or(e.log_received_at);
            let receipt = e.created
                && !e.sent_received
                && (receipt_known.is_some() || completion || due(e.first_read_at));
            if !receipt && !completion {
                continue;
            }
            // Hashed only for an event that goes: not every execution in hand every poll.
            let task = salt.task(id);
            let received_at = receipt_known
                .or(e.invoice_task_created_at)
                .unwrap_or(e.first_read_at);
            if receipt {
                e.sent_received = true;
                out.push(event(
                    received_at,
                    EventKind::TaskReceived {
                        task,
                        chain_id: e.chain_id.clone(),
                        task_type: e.task_type.clone(),
                    },
                ));
                self.dirty.insert(Key::Execution(id.clone()));
            }
            if completion {
                e.sent_completed = true;
                let at = e
                    .completed_at
                    .or(e.outcome_read_at)
                    .unwrap_or(now)
                    .max(if e.created { received_at } else { i64::MIN });
                out.push(event(
                    at,
                    EventKind::TaskCompleted {
                        task,
                        outcome: outcome(e),
                    },
                ));
                self.dirty.insert(Key::Execution(id.clone()));
            }
        }
        for (id, inv) in self.invoices.iter_mut() {
            let due = now - inv.first_read_at >= grace
                || read_through.is_some_and(|t| inv.first_read_at <= t);
            if inv.sent || !(inv.log_at.is_some() || due) {
                continue;
            }
            inv.sent = true;
            self.dirty.insert(Key::Invoice(id.clone()));
            let chain_id = inv
                .execution_id
                .as_ref()
                .and_then(|x| self.executions.get(x))
                .and_then(|e| e.chain_id.clone());
            out.push(event(
                inv.log_at.unwrap_or(inv.first_read_at),
                EventKind::InvoiceCreated(Invoice {
                    invoice: salt.invoice(id),
                    task: inv.execution_id.as_deref().map(|x| salt.task(x)),
                    chain_id,
                    steps_computed: inv.steps.map(anonymize::magnitude),
                    memory_used: inv.memory.map(anonymize::memory),
                    operation: inv.operation.clone(),
                }),
            ));
        }
        let rank = |k: &EventKind| match k {
            EventKind::TaskReceived { .. } => 0,
            EventKind::TaskCompleted { .. } => 1,
            _ => 2,
        };
        out.sort_by_key(|r| (r.at, rank(&r.event.kind)));
        out
    }
}

/// A task's outcome: from its stdout figures when the log had them, else what the outcome
/// record and the invoice say.
fn outcome(e: &Execution) -> Outcome {
    let m = e.metering.clone().unwrap_or_default();
    let success = m.exit_code.map(|c| c == 0);
    Outcome {
        success,
        status: Some(
            if success == Some(false) {
                "failed"
            } else {
                "completed"
            }
            .into(),
        ),
        execution_time: m.elapsed_ns.map(anonymize::execution_time),
        gas_used: m.steps.or(e.invoice_steps).map(anonymize::magnitude),
        cached: m.cached,
    }
}
