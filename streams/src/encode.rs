//! Events written back as the envelope of contract §3: what a node publishes for an event, and
//! the body of a dead letter that the registry refuses after the message was read (it holds
//! only what was read, so only the fields §3 names).

use crate::event::{Event, EventKind, Minute};
use crate::subjects;
use serde_json::{json, Map, Value};

/// `minute` as the contract writes a time: RFC 3339 in UTC with milliseconds.
pub fn minute_timestamp(minute: Minute) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(minute * 60, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

impl Event {
    /// The subject this event is published on.
    pub fn subject(&self) -> &'static str {
        match &self.kind {
            EventKind::TaskReceived { .. } => subjects::TASKS_RECEIVED,
            EventKind::TaskCompleted { .. } => subjects::TASKS_COMPLETED,
            EventKind::HeartbeatReported(_) => subjects::HEARTBEAT,
            EventKind::InvoiceCreated(_) => subjects::INVOICES_CREATED,
            EventKind::NodeJoined { .. } => subjects::NODES_JOINED,
            EventKind::NodeLeft { .. } => subjects::NODES_LEFT,
        }
    }

    /// The `type` of its envelope.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            EventKind::TaskReceived { .. } => "task_received",
            EventKind::TaskCompleted { .. } => "task_completed",
            EventKind::HeartbeatReported(_) => "heartbeat",
            EventKind::InvoiceCreated(_) => "invoice_created",
            EventKind::NodeJoined { .. } => "node_joined",
            EventKind::NodeLeft { .. } => "node_left",
        }
    }

    /// The envelope, with `timestamp` at the event's minute and every known field in `data`;
    /// a field that is not known is left out. [`crate::validate`] reads it back as this event.
    pub fn envelope(&self) -> Value {
        let mut data = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                data.insert(k.to_string(), v);
            }
        };
        match &self.kind {
            EventKind::TaskReceived {
                task,
                chain_id,
                task_type,
            } => {
                put("taskIdHash", Some(task.to_hex().into()));
                put("chainId", chain_id.clone().map(Value::from));
                put("taskType", task_type.clone().map(Value::from));
            }
            EventKind::TaskCompleted { task, outcome } => {
                put("taskIdHash", Some(task.to_hex().into()));
                put("success", outcome.success.map(Value::from));
                put("status", outcome.status.clone().map(Value::from));
                put(
                    "executionTimeBucket",
                    outcome.execution_time.map(|b| b.label().into()),
                );
                put("gasUsedBucket", outcome.gas_used.map(|b| b.label().into()));
                put("cached", outcome.cached.map(Value::from));
            }
            EventKind::HeartbeatReported(hb) => {
                put("status", hb.status.clone().map(Value::from));
                put("totalTasksBucket", hb.total_tasks.map(|b| b.label().into()));
                put(
                    "activeTasksBucket",
                    hb.active_tasks.map(|b| b.label().into()),
                );
                put("continentBucket", hb.continent.map(|b| b.label().into()));
                put("locationBucket", hb.location.map(|l| l.to_string().into()));
            }
            EventKind::InvoiceCreated(inv) => {
                put("invoiceIdHash", Some(inv.invoice.to_hex().into()));
                put("taskIdHash", inv.task.map(|t| t.to_hex().into()));
                put("chainId", inv.chain_id.clone().map(Value::from));
                put(
                    "stepsComputedBucket",
                    inv.steps_computed.map(|b| b.label().into()),
                );
                put(
                    "memoryUsedBucket",
                    inv.memory_used.map(|b| b.label().into()),
                );
                put("operation", inv.operation.clone().map(Value::from));
            }
            EventKind::NodeJoined { status } | EventKind::NodeLeft { status } => {
                put("status", status.clone().map(Value::from));
            }
        }
        json!({
            "version": "1.0",
            "type": self.type_name(),
            "timestamp": minute_timestamp(self.minute),
            "nodeId": self.node_id,
            "data": data,
        })
    }

    /// [`Event::envelope`] as the bytes of a message.
    pub fn payload(&self) -> Vec<u8> {
        serde_json::to_vec(&self.envelope()).expect("JSON values serialize")
    }
}

#[cfg(test)]
mod tests {
    use crate::validate;

    /// Every valid message of today's monitor reads back, from its re-encoding, as the same event.
    #[test]
    fn an_event_written_back_reads_as_itself() {
        let mut n = 0;
        for (subject, payload) in truebit_testkit::monitor_fixtures() {
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            let at = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc);
            let Ok(event) = validate(&subject, &payload, at) else {
                continue;
            };
            assert_eq!(event.subject(), subject);
            let again = validate(event.subject(), &event.payload(), at).unwrap();
            assert_eq!(again, event);
            n += 1;
        }
        assert!(n > 200, "{n} fixtures");
    }
}
