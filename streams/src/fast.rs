//! The fast path of validation: a message that is valid through and through, read without
//! building a JSON tree.
//!
//! [`accept`] borrows every string it keeps from the payload and skips the fields the contract
//! does not name, so a valid message costs one pass of the parser and a handful of small
//! allocations for the event itself. It never refuses anything: whatever it does not accept
//! outright (an escaped string, a duplicate key, a number where a string belongs, any failed
//! check) goes to the reference validator, which decides and names the reason. So the reference
//! alone defines what is valid; this module only has to agree with it on the messages it
//! accepts, and `agreement.rs` checks that it does. Both take their field rules from
//! `rules.rs`, and this module knows nothing of the reference: the dependency runs one way.

use crate::event::{Digest, Event, EventKind, Heartbeat, Invoice, Location, Outcome};
use crate::labels::{ActiveTasks, Continent, ExecutionTime, Magnitude, Memory, TotalTasks};
use crate::rules::{chain_from_text, check_time, major_is_one, valid_node_id, word, MAX_PAYLOAD};
use crate::subjects::{self, EventType};
use chrono::{DateTime, Utc};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The event, when the message is valid and simple enough to be read here; `None` otherwise.
///
/// serde_json's recursion limit refuses a nesting of 128, which the contract allows: such a
/// message goes to the reference, whose own reader takes it.
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
/// `None` where the fast path steps aside (mostly where the reference refuses). The optional
/// fields take null as "not known", as the reference does; the required ones (`str`, `digest`)
/// step aside on it, and the reference names the field.
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
        match self {
            Slot::Absent | Slot::Null => Some(None),
            Slot::Str(s) => chain_from_text(s).map(|digits| Some(digits.to_owned())),
            // serde_json hands over a u64 only for an integer written without sign, fraction or
            // exponent, as the reference's reader does; the rest steps aside.
            Slot::Unsigned(n) => Some(Some(n.to_string())),
            _ => None,
        }
    }

    fn word(self) -> Option<Option<String>> {
        match self {
            Slot::Absent | Slot::Null => Some(None),
            Slot::Str(s) => word(s).map(Some),
            _ => None,
        }
    }

    fn boolean(self) -> Option<Option<bool>> {
        match self {
            Slot::Absent | Slot::Null => Some(None),
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
            fn visit_f64<E: de::Error>(self, f: f64) -> Result<Skipped, E> {
                // serde_json's reading of a double is not correctly rounded near the largest
                // one (it refuses 1.7976931348623158e308, which rounds to it). It has been seen
                // to err only toward refusing, but nothing promises that: stepping aside well
                // before the edge leaves "beyond the range of a double" to the reference alone.
                if f.abs() < 1e308 {
                    Ok(Skipped)
                } else {
                    Err(E::custom("a number near the edge of a double"))
                }
            }
            fn visit_str<E>(self, _: &str) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skipped, A::Error> {
                while seq.next_element::<Skipped>()?.is_some() {}
                Ok(Skipped)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skipped, A::Error> {
                let mut keys = Unnamed::default();
                while let Some(key) = map.next_key::<&'de str>()? {
                    keys.skip(key, &mut map)?;
                }
                Ok(Skipped)
            }
        }
        deserializer.deserialize_any(Any)
    }
}

/// The keys of one object that no slot holds. A key met twice fails the parse (the reference
/// calls it `malformed`, in an ignored field too); keys are read borrowed, so never escaped, and
/// equal text means equal keys. An object of today's monitor has three such keys at most, so the
/// first few are kept on the stack and scanned: no allocation, no hashing.
#[derive(Default)]
struct Unnamed<'de> {
    first: [&'de str; 8],
    count: usize,
    rest: Vec<&'de str>,
}

impl<'de> Unnamed<'de> {
    fn skip<A: MapAccess<'de>>(&mut self, key: &'de str, map: &mut A) -> Result<(), A::Error> {
        let first = &self.first[..self.count.min(self.first.len())];
        if first.contains(&key) || self.rest.contains(&key) {
            return Err(de::Error::custom("a key named twice"));
        }
        match self.first.get_mut(self.count) {
            Some(free) => *free = key,
            None => self.rest.push(key),
        }
        self.count += 1;
        map.next_value::<Skipped>()?;
        Ok(())
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
                let mut unnamed = Unnamed::default();
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
                                unnamed.skip(other, &mut map)?;
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
                let mut unnamed = Unnamed::default();
                // `data: null` leaves `e.data` as it was, so it cannot tell a second `data`.
                let mut data_seen = false;
                while let Some(key) = map.next_key::<&'de str>()? {
                    let slot = match key {
                        "version" => &mut e.version,
                        "type" => &mut e.ty,
                        "nodeId" => &mut e.node_id,
                        "timestamp" => &mut e.timestamp,
                        "data" => {
                            if data_seen {
                                return Err(de::Error::custom("data named twice"));
                            }
                            data_seen = true;
                            // Null is "not known", as if `data` were absent.
                            e.data = map.next_value::<Option<Data>>()?;
                            continue;
                        }
                        other => match e.heartbeat.slot(other) {
                            Some(slot) => slot,
                            None => {
                                unnamed.skip(other, &mut map)?;
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
