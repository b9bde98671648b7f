//! The fold: how one validated event changes one record. Pure functions, no I/O and no clock,
//! so that the live fold and a replay decide the same, and tests read as given/when/then.

use crate::records::{InvoiceRecord, NodeRecord, StoredOutcome, TaskRecord};
use truebit_streams::{Heartbeat, Invoice, Minute, Outcome};

impl TaskRecord {
    fn new(minute: Minute) -> Self {
        TaskRecord {
            first_seen: minute,
            last_seen: minute,
            received: false,
            chain_id: None,
            task_type: None,
            outcome: None,
            reporters: Vec::new(),
        }
    }

    fn seen(&mut self, minute: Minute, reporter: u32) {
        self.first_seen = self.first_seen.min(minute);
        self.last_seen = self.last_seen.max(minute);
        add_reporter(&mut self.reporters, reporter);
    }
}

fn add_reporter(reporters: &mut Vec<u32>, reporter: u32) {
    if let Err(at) = reporters.binary_search(&reporter) {
        reporters.insert(at, reporter);
    }
}

/// A node reported receiving the task: the first receipt in stream order sets its metadata.
pub(crate) fn task_received(
    prev: Option<TaskRecord>,
    minute: Minute,
    reporter: u32,
    chain_id: &Option<String>,
    task_type: &Option<String>,
) -> TaskRecord {
    let mut task = prev.unwrap_or_else(|| TaskRecord::new(minute));
    task.seen(minute, reporter);
    if !task.received {
        task.received = true;
        task.chain_id = chain_id.clone();
        task.task_type = task_type.clone();
    }
    task
}

/// A node reported the task's outcome: it replaces the previous outcome as a whole.
pub(crate) fn task_completed(
    prev: Option<TaskRecord>,
    minute: Minute,
    reporter: u32,
    outcome: &Outcome,
) -> TaskRecord {
    let mut task = prev.unwrap_or_else(|| TaskRecord::new(minute));
    task.seen(minute, reporter);
    task.outcome = Some(StoredOutcome::from(outcome));
    task
}

/// A node reported an invoice: the first report sets its metadata.
pub(crate) fn invoice_created(
    prev: Option<InvoiceRecord>,
    minute: Minute,
    reporter: u32,
    invoice: &Invoice,
) -> InvoiceRecord {
    let mut record = prev.unwrap_or_else(|| InvoiceRecord {
        first_seen: minute,
        last_seen: minute,
        task: invoice.task.map(|d| d.0),
        chain_id: invoice.chain_id.clone(),
        steps_computed: invoice.steps_computed.map(|b| b.index() as u8),
        memory_used: invoice.memory_used.map(|b| b.index() as u8),
        operation: invoice.operation.clone(),
        reporters: Vec::new(),
    });
    record.first_seen = record.first_seen.min(minute);
    record.last_seen = record.last_seen.max(minute);
    add_reporter(&mut record.reporters, reporter);
    record
}

fn new_node(minute: Minute) -> NodeRecord {
    NodeRecord {
        first_seen: minute,
        ..NodeRecord::default()
    }
}

/// A heartbeat: the node is seen, back online whatever its status says, and its continent and
/// location are the latest known ones.
pub(crate) fn heartbeat_reported(
    prev: Option<NodeRecord>,
    minute: Minute,
    hb: &Heartbeat,
) -> NodeRecord {
    let mut node = prev.unwrap_or_else(|| new_node(minute));
    node.first_seen = node.first_seen.min(minute);
    node.last_seen = Some(node.last_seen.map_or(minute, |seen| seen.max(minute)));
    node.heartbeat_count += 1;
    node.offline = false;
    if hb.status.is_some() {
        node.status = hb.status.clone();
    }
    if let Some(t) = hb.total_tasks {
        node.total_tasks = Some(t.index() as u8);
    }
    if let Some(a) = hb.active_tasks {
        node.active_tasks = Some(a.index() as u8);
    }
    if let Some(c) = hb.continent {
        node.continent = Some(c.index() as u8);
    }
    if let Some(l) = hb.location {
        node.location = Some((l.lat_tenths, l.lon_tenths));
    }
    node
}

/// A node announced itself. Joining does not end an offline spell: only a heartbeat does.
pub(crate) fn node_joined(
    prev: Option<NodeRecord>,
    minute: Minute,
    status: &Option<String>,
) -> NodeRecord {
    let mut node = prev.unwrap_or_else(|| new_node(minute));
    node.first_seen = node.first_seen.min(minute);
    if status.is_some() {
        node.status = status.clone();
    }
    node
}

/// A node said goodbye. A `nodeId` that never heartbeated or joined is not a node, and leaving
/// does not make it one.
pub(crate) fn node_left(prev: Option<NodeRecord>, status: &Option<String>) -> Option<NodeRecord> {
    let mut node = prev?;
    node.offline = true;
    if status.is_some() {
        node.status = status.clone();
    }
    Some(node)
}

#[cfg(test)]
mod tests {
    //! Given a record, when an event is folded, then the record is…
    use super::*;
    use truebit_streams::{Continent, Digest, ExecutionTime, Location};

    const T0: Minute = 29_000_000;

    fn outcome(success: Option<bool>, cached: Option<bool>) -> Outcome {
        Outcome {
            success,
            status: Some("completed".into()),
            execution_time: Some(ExecutionTime::To5s),
            gas_used: None,
            cached,
        }
    }

    #[test]
    fn given_nothing_when_a_completion_arrives_first_then_the_task_exists_without_metadata() {
        let task = task_completed(None, T0 + 5, 1, &outcome(Some(true), Some(false)));
        assert_eq!((task.first_seen, task.last_seen), (T0 + 5, T0 + 5));
        assert!(!task.received);
        assert_eq!(task.chain_id, None);
        assert_eq!(task.outcome.unwrap().success, Some(true));
    }

    #[test]
    fn given_a_completed_task_when_its_receipt_arrives_later_then_it_keeps_the_outcome_and_gains_metadata(
    ) {
        let task = task_completed(None, T0 + 5, 1, &outcome(Some(true), None));
        let task = task_received(Some(task), T0, 1, &Some("137".into()), &Some("wasm".into()));
        assert_eq!((task.first_seen, task.last_seen), (T0, T0 + 5));
        assert_eq!(task.chain_id.as_deref(), Some("137"));
        assert_eq!(task.outcome.unwrap().success, Some(true));
        assert_eq!(task.reporters, vec![1]);
    }

    #[test]
    fn given_a_received_task_when_another_receipt_arrives_then_the_first_metadata_stays() {
        let task = task_received(None, T0, 1, &None, &Some("wasm".into()));
        let task = task_received(Some(task), T0, 2, &Some("1".into()), &Some("docker".into()));
        assert_eq!(
            task.chain_id, None,
            "the first receipt reported no chain, and it decides"
        );
        assert_eq!(task.task_type.as_deref(), Some("wasm"));
        assert_eq!(task.reporters, vec![1, 2]);
    }

    #[test]
    fn given_an_outcome_when_a_later_completion_omits_fields_then_they_become_unknown() {
        let task = task_completed(None, T0, 1, &outcome(Some(false), Some(true)));
        let task = task_completed(Some(task), T0, 3, &Outcome::default());
        assert_eq!(
            task.outcome.unwrap(),
            StoredOutcome {
                success: None,
                status: None,
                execution_time: None,
                gas_used: None,
                cached: None
            }
        );
        assert_eq!(task.reporters, vec![1, 3]);
    }

    #[test]
    fn given_the_same_node_reporting_twice_then_it_counts_once() {
        let task = task_received(None, T0, 7, &None, &None);
        let task = task_completed(Some(task), T0, 7, &Outcome::default());
        assert_eq!(task.reporters, vec![7]);
    }

    #[test]
    fn given_an_invoice_when_reported_again_then_the_first_metadata_stays() {
        let first = Invoice {
            invoice: Digest([1; 32]),
            task: None,
            chain_id: Some("5".into()),
            steps_computed: None,
            memory_used: None,
            operation: Some("compute".into()),
        };
        let second = Invoice {
            chain_id: Some("1".into()),
            operation: Some("solve".into()),
            ..first.clone()
        };
        let inv = invoice_created(None, T0 + 1, 1, &first);
        let inv = invoice_created(Some(inv), T0, 2, &second);
        assert_eq!((inv.first_seen, inv.last_seen), (T0, T0 + 1));
        assert_eq!(inv.chain_id.as_deref(), Some("5"));
        assert_eq!(inv.operation.as_deref(), Some("compute"));
        assert_eq!(inv.reporters.len(), 2);
    }

    #[test]
    fn given_a_node_that_left_when_it_heartbeats_then_it_is_online_whatever_its_status() {
        let node = node_joined(None, T0, &Some("online".into()));
        let node = node_left(Some(node), &Some("offline".into())).unwrap();
        assert!(node.offline);
        let node = node_joined(Some(node), T0 + 1, &None);
        assert!(node.offline, "joining is not a heartbeat");
        let hb = Heartbeat {
            status: Some("offline".into()),
            ..Heartbeat::default()
        };
        let node = heartbeat_reported(Some(node), T0 + 2, &hb);
        assert!(!node.offline);
        assert_eq!(node.last_seen, Some(T0 + 2));
        assert_eq!(node.heartbeat_count, 1);
    }

    #[test]
    fn given_heartbeats_out_of_order_then_last_seen_is_the_latest_and_place_the_last_known() {
        let at = |c, l: &str| Heartbeat {
            continent: c,
            location: Location::parse(l),
            ..Heartbeat::default()
        };
        let node = heartbeat_reported(None, T0 + 10, &at(Some(Continent::Europe), "52.5,13.5"));
        let node = heartbeat_reported(Some(node), T0 + 5, &at(None, "x"));
        assert_eq!(node.last_seen, Some(T0 + 10));
        assert_eq!(
            node.continent,
            Some(Continent::Europe.index() as u8),
            "an unknown continent keeps the known one"
        );
        assert_eq!(node.location, Some((525, 135)));
        let node = heartbeat_reported(Some(node), T0 + 6, &at(Some(Continent::Asia), "1.0,2.0"));
        assert_eq!(
            node.continent,
            Some(Continent::Asia.index() as u8),
            "stream order decides, not event time"
        );
        assert_eq!(node.heartbeat_count, 3);
    }

    #[test]
    fn given_no_node_when_it_leaves_then_there_is_still_no_node() {
        assert_eq!(node_left(None, &None), None);
    }
}
