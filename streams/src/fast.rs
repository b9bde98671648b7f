//! The fast path of validation: a message that is valid through and through, read without
//! building a JSON tree.
//!
//! [`accept`] borrows every string it keeps from the payload and skips the fields the contract
//! does not name, so a valid message costs one pass of the parser and a handful of small
//! allocations for the event itself. It never refuses anything: whatever it does not accept
//! outright (an escaped string, a duplicate key, a number where a string belongs, any failed
//! check) goes to [`crate::validate::reference`], which decides and names the reason. So the
//! reference alone defines what is valid; this module only has to agree with it on the messages
//! it accepts, and the tests below check that it does.

use crate::event::{Digest, Event, EventKind, Heartbeat, Invoice, Location, Outcome};
use crate::labels::{ActiveTasks, Continent, ExecutionTime, Magnitude, Memory, TotalTasks};
use crate::subjects::{self, EventType};
use crate::validate::{chain_digits, check_time, major_is_one, valid_node_id, word, MAX_PAYLOAD};
use chrono::{DateTime, Utc};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The event, when the message is valid and simple enough to be read here; `None` otherwise.
pub(crate) fn accept(subject: &str, payload: &[u8], stored_at: DateTime<Utc>) -> Option<Event> {
    if payload.len() > MAX_PAYLOAD {
        return None;
    }
    // Checked whole first: the parser does not look inside the strings it skips.
    let text = std::str::from_utf8(payload).ok()?;
    let wire: Envelope = serde_json::from_str(text).ok()?;
    let expected = subjects::event_type(subject)?;
    if !major_is_one(wire.version.str()?) || wire.ty.str()? != expected.as_str() {
        return None;
    }
    let node_id = wire.node_id.str()?;
    if !valid_node_id(node_id) {
        return None;
    }
    let timestamp = wire.timestamp.str()?;
    let kind = kind(expected, &wire)?;
    let minute = check_time(timestamp, stored_at).ok()?;
    Some(Event {
        node_id: node_id.to_owned(),
        minute,
        kind,
    })
}

fn kind<'a>(expected: EventType, wire: &Envelope<'a>) -> Option<EventKind> {
    Some(match expected {
        EventType::TaskReceived => {
            let data = wire.data.as_ref()?;
            EventKind::TaskReceived {
                task: data.task.digest()?,
                chain_id: data.chain_id.chain_id()?,
                task_type: data.task_type.word()?,
            }
        }
        EventType::TaskCompleted => {
            let data = wire.data.as_ref()?;
            EventKind::TaskCompleted {
                task: data.task.digest()?,
                outcome: Outcome {
                    success: data.success.boolean()?,
                    status: data.heartbeat.status.word()?,
                    execution_time: data.execution_time.label(ExecutionTime::parse)?,
                    gas_used: data.gas_used.label(Magnitude::parse)?,
                    cached: data.cached.boolean()?,
                },
            }
        }
        EventType::InvoiceCreated => {
            let data = wire.data.as_ref()?;
            EventKind::InvoiceCreated(Invoice {
                invoice: data.invoice.digest()?,
                task: data.task.optional_digest()?,
                chain_id: data.chain_id.chain_id()?,
                steps_computed: data.steps_computed.label(Magnitude::parse)?,
                memory_used: data.memory_used.label(Memory::parse)?,
                operation: data.operation.word()?,
            })
        }
        EventType::Heartbeat => {
            // A field in `data` wins, even as null; else the envelope's, as the plan had them.
            let nested = |pick: fn(&Heartbeats<'a>) -> Slot<'a>| -> Slot<'a> {
                match wire.data.as_ref().map(|d| pick(&d.heartbeat)) {
                    Some(slot) if !matches!(slot, Slot::Absent) => slot,
                    _ => pick(&wire.heartbeat),
                }
            };
            EventKind::HeartbeatReported(Heartbeat {
                status: nested(|h| h.status).word()?,
                total_tasks: nested(|h| h.total_tasks).label(TotalTasks::parse)?,
                active_tasks: nested(|h| h.active_tasks).label(ActiveTasks::parse)?,
                continent: nested(|h| h.continent).label(Continent::parse)?,
                location: nested(|h| h.location).label(Location::parse)?,
            })
        }
        EventType::NodeJoined | EventType::NodeLeft => {
            let status = match &wire.data {
                Some(data) => data.heartbeat.status.word()?,
                None => None,
            };
            if expected == EventType::NodeJoined {
                EventKind::NodeJoined { status }
            } else {
                EventKind::NodeLeft { status }
            }
        }
    })
}

/// One field's value, as far as the fast path reads values: scalars only, strings unescaped.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Slot<'a> {
    #[default]
    Absent,
    Null,
    Bool(bool),
    Unsigned(u64),
    Str(&'a str),
}

/// Each method answers what the reference would: `Some(value)` where it accepts the field,
/// `None` where the fast path steps aside (mostly where the reference refuses).
impl<'a> Slot<'a> {
    fn str(self) -> Option<&'a str> {
        match self {
            Slot::Str(s) => Some(s),
            _ => None,
        }
    }

    fn digest(self) -> Option<Digest> {
        Digest::parse_hex(self.str()?)
    }

    fn optional_digest(self) -> Option<Option<Digest>> {
        match self {
            Slot::Absent | Slot::Null => Some(None),
            other => other.digest().map(Some),
        }
    }

    fn chain_id(self) -> Option<Option<String>> {
        let digits = match self {
            Slot::Absent => return Some(None),
            Slot::Str(s) => s.to_owned(),
            Slot::Unsigned(n) => n.to_string(),
            _ => return None,
        };
        chain_digits(&digits).then_some(Some(digits))
    }

    fn word(self) -> Option<Option<String>> {
        match self {
            Slot::Absent => Some(None),
            Slot::Str(s) => word(s).map(Some),
            _ => None,
        }
    }

    fn boolean(self) -> Option<Option<bool>> {
        match self {
            Slot::Absent => Some(None),
            Slot::Bool(b) => Some(Some(b)),
            _ => None,
        }
    }

    fn label<T>(self, parse: impl Fn(&str) -> Option<T>) -> Option<Option<T>> {
        match self {
            Slot::Absent | Slot::Null | Slot::Str("unknown") => Some(None),
            Slot::Str(s) => parse(s).map(Some),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Slot<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Scalar;
        // The visit methods left out (negative and fractional numbers, escaped strings, arrays,
        // objects) fail the parse, which hands the message to the reference.
        impl<'de> Visitor<'de> for Scalar {
            type Value = Slot<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("null, a boolean, an unsigned integer or an unescaped string")
            }
            fn visit_unit<E>(self) -> Result<Slot<'de>, E> {
                Ok(Slot::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Slot<'de>, E> {
                Ok(Slot::Bool(b))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Slot<'de>, E> {
                Ok(Slot::Unsigned(n))
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Slot<'de>, E> {
                Ok(Slot::Str(s))
            }
        }
        deserializer.deserialize_any(Scalar)
    }
}

/// A value the contract does not name: parsed as strictly as any other (the reference parses
/// it too, and refuses what does not parse) but not kept.
struct Skipped;

impl<'de> Deserialize<'de> for Skipped {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = Skipped;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skipped, A::Error> {
                while seq.next_element::<Skipped>()?.is_some() {}
                Ok(Skipped)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skipped, A::Error> {
                while map.next_entry::<Skipped, Skipped>()?.is_some() {}
                Ok(Skipped)
            }
        }
        deserializer.deserialize_any(Any)
    }
}

/// The heartbeat's fields, which may sit in `data` or at the top level.
#[derive(Default)]
struct Heartbeats<'a> {
    status: Slot<'a>,
    total_tasks: Slot<'a>,
    active_tasks: Slot<'a>,
    continent: Slot<'a>,
    location: Slot<'a>,
}

#[derive(Default)]
struct Data<'a> {
    task: Slot<'a>,
    invoice: Slot<'a>,
    chain_id: Slot<'a>,
    task_type: Slot<'a>,
    success: Slot<'a>,
    execution_time: Slot<'a>,
    gas_used: Slot<'a>,
    cached: Slot<'a>,
    steps_computed: Slot<'a>,
    memory_used: Slot<'a>,
    operation: Slot<'a>,
    /// `status` is here too: completions and node events carry it in `data`.
    heartbeat: Heartbeats<'a>,
}

#[derive(Default)]
struct Envelope<'a> {
    version: Slot<'a>,
    ty: Slot<'a>,
    node_id: Slot<'a>,
    timestamp: Slot<'a>,
    data: Option<Data<'a>>,
    heartbeat: Heartbeats<'a>,
}

/// Stores a named field's value; a field named twice sends the message to the reference.
fn set<'de, A: MapAccess<'de>>(slot: &mut Slot<'de>, map: &mut A) -> Result<(), A::Error> {
    if *slot != Slot::Absent {
        return Err(de::Error::custom("a field named twice"));
    }
    *slot = map.next_value()?;
    Ok(())
}

impl<'a> Heartbeats<'a> {
    /// The slot a heartbeat field's key names, if it names one.
    fn slot(&mut self, key: &str) -> Option<&mut Slot<'a>> {
        Some(match key {
            "status" => &mut self.status,
            "totalTasksBucket" => &mut self.total_tasks,
            "activeTasksBucket" => &mut self.active_tasks,
            "continentBucket" => &mut self.continent,
            "locationBucket" => &mut self.location,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for Data<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Data<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the data object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data<'de>, A::Error> {
                let mut d = Data::default();
                while let Some(key) = map.next_key::<&'de str>()? {
                    let slot = match key {
                        "taskIdHash" => &mut d.task,
                        "invoiceIdHash" => &mut d.invoice,
                        "chainId" => &mut d.chain_id,
                        "taskType" => &mut d.task_type,
                        "success" => &mut d.success,
                        "executionTimeBucket" => &mut d.execution_time,
                        "gasUsedBucket" => &mut d.gas_used,
                        "cached" => &mut d.cached,
                        "stepsComputedBucket" => &mut d.steps_computed,
                        "memoryUsedBucket" => &mut d.memory_used,
                        "operation" => &mut d.operation,
                        other => match d.heartbeat.slot(other) {
                            Some(slot) => slot,
                            None => {
                                map.next_value::<Skipped>()?;
                                continue;
                            }
                        },
                    };
                    set(slot, &mut map)?;
                }
                Ok(d)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the envelope object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
                let mut e = Envelope::default();
                while let Some(key) = map.next_key::<&'de str>()? {
                    let slot = match key {
                        "version" => &mut e.version,
                        "type" => &mut e.ty,
                        "nodeId" => &mut e.node_id,
                        "timestamp" => &mut e.timestamp,
                        "data" => {
                            if e.data.is_some() {
                                return Err(de::Error::custom("data named twice"));
                            }
                            e.data = Some(map.next_value()?);
                            continue;
                        }
                        other => match e.heartbeat.slot(other) {
                            Some(slot) => slot,
                            None => {
                                map.next_value::<Skipped>()?;
                                continue;
                            }
                        },
                    };
                    set(slot, &mut map)?;
                }
                Ok(e)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

#[cfg(test)]
mod tests {
    use super::accept;
    use crate::validate::reference;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn stored_at(payload: &[u8]) -> DateTime<Utc> {
        // The fixtures and the fleet were made with a clock at their event time.
        serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|v| v["timestamp"].as_str().map(str::to_owned))
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc))
    }

    /// Real and simulated messages: those the reference accepts, the fast path accepts too,
    /// with the same event; otherwise a message as common as these would pay the slow path.
    #[test]
    fn the_fast_path_takes_every_valid_message_of_the_monitor_and_the_fleet() {
        let mut messages = truebit_testkit::monitor_fixtures();
        let (fleet, _) = truebit_testkit::Fleet::new(50, 7).generate(300);
        messages.extend(
            fleet
                .into_iter()
                .map(|m| (m.subject.to_string(), m.payload)),
        );
        let mut valid = 0;
        for (subject, payload) in &messages {
            let at = stored_at(payload);
            let fast = accept(subject, payload, at);
            match reference(subject, payload, at) {
                Ok(event) => {
                    valid += 1;
                    assert_eq!(fast, Some(event), "{}", String::from_utf8_lossy(payload));
                }
                Err(r) => assert_eq!(fast, None, "the reference refused it: {r}"),
            }
        }
        assert!(valid > 1000, "only {valid} valid messages");
    }

    /// A valid message of each type, for the mutations below to spoil.
    fn samples() -> Vec<(&'static str, Value)> {
        let hash = "dc5bd914475128116974a3e7e7c848deca52b87aea9f8f3e31f7511b993a582b";
        let envelope = |ty: &str, data: Value| {
            json!({"version": "1.0", "type": ty, "timestamp": "2026-11-02T08:00:00.000Z",
                   "nodeId": "node-a37c1f69-f85a-48e1-8492-a9d82759a3b6", "data": data})
        };
        vec![
            (
                "truebit.tasks.received",
                envelope(
                    "task_received",
                    json!({"taskIdHash": hash, "chainId": "1", "taskType": "wasm", "blockNumber": 12}),
                ),
            ),
            (
                "truebit.tasks.completed",
                envelope(
                    "task_completed",
                    json!({"taskIdHash": hash, "success": true, "status": "completed",
                       "executionTimeBucket": "1-5s", "gasUsedBucket": "<100K", "cached": false}),
                ),
            ),
            (
                "truebit.heartbeat",
                envelope(
                    "heartbeat",
                    json!({"status": "online", "totalTasksBucket": ">1K", "activeTasksBucket": "1",
                       "continentBucket": "EU", "locationBucket": "52.5,13.4", "activeTasks": 1}),
                ),
            ),
            (
                "truebit.invoices.created",
                envelope(
                    "invoice_created",
                    json!({"invoiceIdHash": hash, "taskIdHash": null, "chainId": 137,
                       "stepsComputedBucket": "1M-10M", "memoryUsedBucket": "<64MB",
                       "operation": "compute"}),
                ),
            ),
            (
                "truebit.nodes.joined",
                envelope("node_joined", json!({"status": "online"})),
            ),
            (
                "truebit.nodes.left",
                envelope("node_left", json!({"status": "offline"})),
            ),
        ]
    }

    /// Values that break one rule or another, or none.
    fn replacement() -> impl Strategy<Value = Value> {
        prop_oneof![
            6 => Just(Value::Null),
            3 => any::<bool>().prop_map(Value::Bool),
            3 => any::<i64>().prop_map(|n| json!(n)),
            1 => Just(json!(1.5)),
            1 => Just(json!([])),
            1 => Just(json!({})),
            1 => Just(json!("unknown")),
            1 => Just(json!("")),
            1 => Just(json!("WASM")),
            1 => Just(json!("K\u{212a}")),
            1 => Just(json!("DC5BD914475128116974A3E7E7C848DECA52B87AEA9F8F3E31F7511B993A582B")),
            1 => Just(json!("2019-12-31T23:59:00Z")),
            1 => Just(json!("2099-01-01T00:00:00Z")),
            1 => Just(json!("2.0")),
            1 => Just(json!("heartbeat")),
            1 => Just(json!("12345678901234567890")),
            1 => Just(json!("123456789012345678901")),
            1 => Just(json!("90.0,180.0")),
            1 => Just(json!("-0.0,0.0")),
            1 => Just(json!("EU")),
            1 => Just(json!("\"quoted\" \\ text")),
            1 => "[a-z0-9_ -]{0,40}".prop_map(Value::String),
        ]
    }

    /// The keys a mutation of `sample` may touch: its own, at their level, and the heartbeat's
    /// fields at the other level.
    fn keys(sample: &Value) -> Vec<(bool, String)> {
        let mut keys: Vec<(bool, String)> = sample
            .as_object()
            .unwrap()
            .keys()
            .map(|k| (false, k.clone()))
            .collect();
        if let Some(Value::Object(data)) = sample.get("data") {
            keys.extend(data.keys().map(|k| (true, k.clone())));
        }
        keys.extend([(false, "status".into()), (false, "continentBucket".into())]);
        keys
    }

    /// Raw-text edits that a tree of values cannot express.
    fn text_edit(text: &str, edit: u8) -> String {
        match edit {
            0 => text.replacen("\"nodeId\"", "\"node\\u0049d\"", 1),
            1 => text.replacen(
                "\"version\":\"1.0\"",
                "\"version\":\"1.0\",\"version\":\"1.0\"",
                1,
            ),
            2 => text.replacen("\"status\":\"", "\"status\":\"\\u006f", 1),
            3 => format!("{text} x"),
            4 => format!("[{text}]"),
            5 => text.replacen("\"blockNumber\":12", "\"blockNumber\":\"\\ud800\"", 1),
            6 => text.replacen('}', ",\"extra\":{\"deep\":[1,2,{\"x\":null}]}}", 1),
            _ => text.to_string(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 6000, ..ProptestConfig::default() })]

        /// Whatever the fast path accepts, the reference accepts as the very same event.
        #[test]
        fn the_fast_path_never_accepts_what_the_reference_would_not(
            sample in 0usize..6,
            subject in 0usize..7,
            edits in proptest::collection::vec(
                (any::<proptest::sample::Index>(), proptest::option::of(replacement())), 0..3),
            text in 0u8..12,
        ) {
            let all = samples();
            let (own_subject, mut value) = all[sample].clone();
            let subject = all.get(subject).map_or("truebit.admin.keys", |s| s.0);
            let subject = if text % 2 == 0 { own_subject } else { subject };
            let keys = keys(&value);
            for (index, replacement) in edits {
                let (nested, key) = &keys[index.index(keys.len())];
                let map = match (*nested, value.get_mut("data")) {
                    (true, Some(Value::Object(data))) => data,
                    _ => value.as_object_mut().unwrap(),
                };
                match replacement {
                    Some(v) => { map.insert(key.clone(), v); }
                    None => { map.remove(key); }
                }
            }
            let payload = text_edit(&value.to_string(), text);
            let at = DateTime::parse_from_rfc3339("2026-11-02T08:01:00Z").unwrap().with_timezone(&Utc);
            if let Some(event) = accept(subject, payload.as_bytes(), at) {
                prop_assert_eq!(reference(subject, payload.as_bytes(), at), Ok(event), "{}", payload);
            }
        }
    }
}
