//! Contract §4: every message is accepted as an [`Event`] or rejected with a [`Rejection`].
//!
//! Checks run in the order of the contract's table (size, then JSON, then schema, then clock), and
//! the first failure is the reason. Only the fields of contract §3 are read; everything else a node
//! sends is dropped here and never reaches a projection.

use crate::event::{Digest, Event, EventKind, Heartbeat, Invoice, Location, Outcome};
use crate::json;
use crate::labels::{ActiveTasks, Continent, ExecutionTime, Magnitude, Memory, TotalTasks};
use crate::rejection::{Reason, Rejection};
use crate::rules::{chain_from_text, check_time, major_is_one, valid_node_id, word, MAX_PAYLOAD};
use crate::subjects::{self, EventType};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Validates one inbound message.
///
/// `stored_at` is the time JetStream stored it: the clock check compares the node's timestamp
/// with it, never with the aggregator's clock, so that a replay years later decides the same.
pub fn validate(
    subject: &str,
    payload: &[u8],
    stored_at: DateTime<Utc>,
) -> Result<Event, Rejection> {
    // Nearly every message is valid: a parse without allocations takes those, and anything it
    // does not accept outright is judged by the reference below, which names the reason.
    if let Some(event) = crate::fast::accept(subject, payload, stored_at) {
        return Ok(event);
    }
    reference(subject, payload, stored_at)
}

/// The validator as the contract reads: a JSON value, then each check in the contract's order.
/// The fast path must agree with it on every message it accepts.
pub(crate) fn reference(
    subject: &str,
    payload: &[u8],
    stored_at: DateTime<Utc>,
) -> Result<Event, Rejection> {
    let envelope = read_object(payload)?;
    let expected = subjects::event_type(subject).ok_or_else(|| {
        Rejection::schema(
            "$.type",
            format!("no event type is defined for subject {subject}"),
        )
    })?;
    let (node_id, timestamp, kind) = check_schema(&envelope, expected)?;
    Ok(Event {
        node_id: node_id.to_owned(),
        minute: check_time(timestamp, stored_at)?,
        kind,
    })
}

/// The first two checks of contract §4, for any message: its size, then one strict reading of it
/// as a JSON object.
pub(crate) fn read_object(payload: &[u8]) -> Result<Map<String, Value>, Rejection> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!(
                "payload is {} bytes; the limit is {MAX_PAYLOAD}",
                payload.len()
            ),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| Rejection::new(Reason::Malformed, format!("payload is not UTF-8: {e}")))?;
    let value = json::parse(text).map_err(|e| {
        Rejection::new(
            Reason::Malformed,
            format!("payload is not JSON as contract §4 reads it: {e}"),
        )
    })?;
    match value {
        Value::Object(envelope) => Ok(envelope),
        _ => Err(Rejection::new(
            Reason::Malformed,
            "payload is JSON but not an object",
        )),
    }
}

/// The schema checks, in the order a reader meets the fields.
fn check_schema(
    envelope: &Map<String, Value>,
    expected: EventType,
) -> Result<(&str, &str, EventKind), Rejection> {
    let version = required_str(envelope, "version", "$.version")?;
    if !major_is_one(version) {
        return Err(Rejection::schema(
            "$.version",
            format!("version {version:?} does not have major 1 (the text before the first '.' must be exactly \"1\")"),
        ));
    }
    let ty = required_str(envelope, "type", "$.type")?;
    if ty != expected.as_str() {
        return Err(Rejection::schema(
            "$.type",
            format!(
                "type {ty:?} does not match the subject, which carries {:?}",
                expected.as_str()
            ),
        ));
    }
    let node_id = required_str(envelope, "nodeId", "$.nodeId")?;
    if !valid_node_id(node_id) {
        return Err(Rejection::schema(
            "$.nodeId",
            "nodeId must be 1-128 characters of [A-Za-z0-9._:-]",
        ));
    }
    let timestamp = required_str(envelope, "timestamp", "$.timestamp")?;

    let data = match envelope.get("data") {
        None | Some(Value::Null) => None,
        Some(Value::Object(data)) => Some(data),
        Some(_) => {
            return Err(Rejection::schema(
                "$.data",
                "data must be an object (or null, or absent)",
            ))
        }
    };
    let needs_data = |field: &str| {
        data.ok_or_else(|| {
            Rejection::schema(format!("$.data.{field}"), format!("{field} is required"))
        })
    };

    let kind = match expected {
        EventType::TaskReceived => {
            let data = Fields::new(needs_data("taskIdHash")?, "$.data");
            EventKind::TaskReceived {
                task: data.required_digest("taskIdHash")?,
                chain_id: data.chain_id("chainId")?,
                task_type: data.word("taskType")?,
            }
        }
        EventType::TaskCompleted => {
            let data = Fields::new(needs_data("taskIdHash")?, "$.data");
            let task = data.required_digest("taskIdHash")?;
            EventKind::TaskCompleted {
                task,
                outcome: Outcome {
                    success: data.boolean("success")?,
                    status: data.word("status")?,
                    execution_time: data.label("executionTimeBucket", ExecutionTime::parse)?,
                    gas_used: data.label("gasUsedBucket", Magnitude::parse)?,
                    cached: data.boolean("cached")?,
                },
            }
        }
        EventType::InvoiceCreated => {
            let data = Fields::new(needs_data("invoiceIdHash")?, "$.data");
            EventKind::InvoiceCreated(Invoice {
                invoice: data.required_digest("invoiceIdHash")?,
                task: data.optional_digest("taskIdHash")?,
                chain_id: data.chain_id("chainId")?,
                steps_computed: data.label("stepsComputedBucket", Magnitude::parse)?,
                memory_used: data.label("memoryUsedBucket", Memory::parse)?,
                operation: data.word("operation")?,
            })
        }
        EventType::Heartbeat => {
            // The plan's pseudocode reads these at the top level; today's monitor nests them in
            // `data`. Take each field from `data` when it is there, else from the envelope.
            let nested = data.map(|d| Fields::new(d, "$.data"));
            let top = Fields::new(envelope, "$");
            let pick = |field: &str| match &nested {
                Some(d) if d.map.contains_key(field) => d,
                _ => &top,
            };
            EventKind::HeartbeatReported(Heartbeat {
                status: pick("status").word("status")?,
                total_tasks: pick("totalTasksBucket")
                    .label("totalTasksBucket", TotalTasks::parse)?,
                active_tasks: pick("activeTasksBucket")
                    .label("activeTasksBucket", ActiveTasks::parse)?,
                continent: pick("continentBucket").label("continentBucket", Continent::parse)?,
                location: pick("locationBucket").label("locationBucket", Location::parse)?,
            })
        }
        EventType::NodeJoined | EventType::NodeLeft => {
            let status = match data {
                Some(d) => Fields::new(d, "$.data").word("status")?,
                None => None,
            };
            if expected == EventType::NodeJoined {
                EventKind::NodeJoined { status }
            } else {
                EventKind::NodeLeft { status }
            }
        }
    };
    Ok((node_id, timestamp, kind))
}

pub(crate) fn required_str<'a>(
    map: &'a Map<String, Value>,
    field: &str,
    path: &str,
) -> Result<&'a str, Rejection> {
    match map.get(field) {
        Some(Value::String(s)) => Ok(s),
        None => Err(Rejection::schema(path, format!("{field} is required"))),
        Some(other) => Err(Rejection::schema(
            path,
            format!("{field} must be a string, not {}", kind_of(other)),
        )),
    }
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields of one JSON object, with the path that error messages name.
///
/// Every optional field reads `null` as "not known", as if it were missing (contract §3: today's
/// monitor sends `"chainId": null` whenever its log nested the task's fields); only the required
/// ones (`required_str`, `required_digest`) refuse it.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: &'static str,
}

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>, prefix: &'static str) -> Self {
        Fields { map, prefix }
    }

    fn err(&self, field: &str, detail: String) -> Rejection {
        Rejection::schema(format!("{}.{field}", self.prefix), detail)
    }

    fn required_digest(&self, field: &str) -> Result<Digest, Rejection> {
        match self.map.get(field) {
            None => Err(self.err(field, format!("{field} is required"))),
            Some(v) => self.digest(field, v),
        }
    }

    /// A hash that may be absent or null ("not known").
    fn optional_digest(&self, field: &str) -> Result<Option<Digest>, Rejection> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self.digest(field, v).map(Some),
        }
    }

    fn digest(&self, field: &str, v: &Value) -> Result<Digest, Rejection> {
        v.as_str().and_then(Digest::parse_hex).ok_or_else(|| {
            self.err(
                field,
                format!(
                    "{field} must be 64 lowercase hex characters, not {}",
                    kind_of(v)
                ),
            )
        })
    }

    /// A chain id: 1–20 decimal digits as a string (with `.0` allowed after them), or a JSON
    /// integer from 0 to 2^64 − 1; either way the event holds the digits.
    fn chain_id(&self, field: &str) -> Result<Option<String>, Rejection> {
        let v = match self.map.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => v,
        };
        match v {
            Value::String(s) => chain_from_text(s)
                .map(|digits| Some(digits.to_owned()))
                .ok_or_else(|| {
                    self.err(
                        field,
                        format!(
                            "{field} must be 1-20 decimal digits (optionally followed by \".0\"), not {s:?}"
                        ),
                    )
                }),
            // "A JSON integer from 0 to 2^64 - 1": the reader keeps a number as a u64 only when
            // it is written as one, without sign, fraction or exponent, and in that range. So
            // 137.0, 1e2, -0 and 2^64 are refused rather than read as integers: none is what
            // today's monitor sends, and a double cannot say which integer it meant above 2^53.
            Value::Number(n) => n.as_u64().map(|n| Some(n.to_string())).ok_or_else(|| {
                self.err(
                    field,
                    format!(
                        "{field} must be an integer from 0 to 2^64-1 written without fraction or exponent, not {n}"
                    ),
                )
            }),
            other => Err(self.err(
                field,
                format!("{field} must be a string of digits or an integer, not {}", kind_of(other)),
            )),
        }
    }

    /// A short lower-case word (`taskType`, `operation`, `status`), lower-cased.
    fn word(&self, field: &str) -> Result<Option<String>, Rejection> {
        let v = match self.map.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => v,
        };
        let Value::String(s) = v else {
            return Err(self.err(
                field,
                format!("{field} must be a string, not {}", kind_of(v)),
            ));
        };
        word(s).map(Some).ok_or_else(|| {
            self.err(
                field,
                format!("{field} must be 1-32 characters of [a-z0-9_-]"),
            )
        })
    }

    fn boolean(&self, field: &str) -> Result<Option<bool>, Rejection> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(
                field,
                format!("{field} must be a boolean, not {}", kind_of(other)),
            )),
        }
    }

    /// A bucket label: absent, null or `unknown` mean "not known".
    fn label<T>(
        &self,
        field: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, Rejection> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s == "unknown" => Ok(None),
            Some(Value::String(s)) => parse(s).map(Some).ok_or_else(|| {
                self.err(
                    field,
                    format!("{field} {s:?} is not one of the contract's labels"),
                )
            }),
            Some(other) => Err(self.err(
                field,
                format!("{field} must be a string label, not {}", kind_of(other)),
            )),
        }
    }
}
