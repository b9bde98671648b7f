//! Contract §4: the body a dead letter may keep of a node's message that could be read as JSON
//! (`schema`, `clock`, `unauthorized`, `rate_limited`): the fields contract §3 names and nothing
//! else, so that today's monitor's `blockHash` or exact task counts never reach a dead letter.

use crate::json;
use crate::subjects::{event_type, EventType};
use std::borrow::Cow;

/// The envelope's own fields (contract §3), kept for every type.
const ENVELOPE_FIELDS: &[&str] = &["version", "type", "timestamp", "nodeId", "data"];

/// The heartbeat's fields, which the plan's pseudocode reads at the top level too.
const HEARTBEAT_FIELDS: &[&str] = &[
    "status",
    "totalTasksBucket",
    "activeTasksBucket",
    "continentBucket",
    "locationBucket",
];

/// The `data` fields §3 names for each type, and for a heartbeat also the envelope's top level:
/// nothing a node puts in a field that only another type names reaches a dead letter.
fn fields_of(event: Option<EventType>) -> (&'static [&'static str], &'static [&'static str]) {
    let data: &[&str] = match event {
        Some(EventType::TaskReceived) => &["taskIdHash", "chainId", "taskType"],
        Some(EventType::TaskCompleted) => &[
            "taskIdHash",
            "success",
            "status",
            "executionTimeBucket",
            "gasUsedBucket",
            "cached",
        ],
        Some(EventType::Heartbeat) => HEARTBEAT_FIELDS,
        Some(EventType::InvoiceCreated) => &[
            "invoiceIdHash",
            "taskIdHash",
            "chainId",
            "stepsComputedBucket",
            "memoryUsedBucket",
            "operation",
        ],
        Some(EventType::NodeJoined | EventType::NodeLeft) => &["status"],
        None => &[],
    };
    let top = match event {
        Some(EventType::Heartbeat) => HEARTBEAT_FIELDS,
        _ => &[],
    };
    (top, data)
}

/// What a named field keeps in place of an object: its content is named by no one.
const OBJECT: &str = "\"<object>\"";
/// What a named field keeps in place of an array.
const ARRAY: &str = "\"<array>\"";

/// The JSON object a dead letter keeps of `payload`, a node's message on `subject`: only the
/// fields contract §3 names for the type that `subject` carries, in the order sent, every value
/// as sent byte for byte (a number keeps its spelling, a string its escapes). `data`, when it is
/// an object, keeps only that type's data fields; a subject that carries no node event keeps
/// none of them. A named field whose value is an object or an array (other than `data`) keeps
/// the string `"<object>"` or `"<array>"` instead, so that no unnamed content rides through a
/// named one.
///
/// `None` when the payload is not a JSON object as contract §4 reads it (not UTF-8, not JSON,
/// a duplicate key, nesting deeper than 128, …): the caller keeps the first 1 KiB as sent, as
/// for `malformed`. An operator event's dead letter keeps its first 1 KiB too (§4); this is for
/// node messages.
pub fn contract_fields(subject: &str, payload: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(payload).ok()?;
    let (top, data) = fields_of(event_type(subject));
    keep(
        text,
        &|key| ENVELOPE_FIELDS.contains(&key) || top.contains(&key),
        Some(data),
    )
    .map(String::into_bytes)
}

/// The object `text` holds, with only the fields `named` accepts; `data`, in an envelope, is
/// filtered by `data_fields`. `None` when `text` is not an object.
fn keep(text: &str, named: &dyn Fn(&str) -> bool, data_fields: Option<&[&str]>) -> Option<String> {
    let members = json::members(text).ok()??;
    let mut out = String::from("{");
    for (key, span) in members {
        if !named(key.as_str()) {
            continue;
        }
        let raw = &text[span];
        let value: Cow<str> = match (raw.as_bytes().first(), data_fields) {
            (Some(b'{'), Some(fields)) if key == "data" => {
                keep(raw, &|k| fields.contains(&k), None)?.into()
            }
            (Some(b'{'), _) => OBJECT.into(),
            (Some(b'['), _) => ARRAY.into(),
            _ => raw.into(),
        };
        if out.len() > 1 {
            out.push(',');
        }
        // The key as read (escapes resolved) is one of ours: plain ASCII, quoted as is.
        out.push('"');
        out.push_str(&key);
        out.push_str("\":");
        out.push_str(&value);
    }
    out.push('}');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subjects::{HEARTBEAT, INVOICES_CREATED, TASKS_COMPLETED, TASKS_RECEIVED};
    use serde_json::{json, Value};

    const TASK: &str = "dc5bd914475128116974a3e7e7c848deca52b87aea9f8f3e31f7511b993a582b";

    fn kept(subject: &str, payload: &str) -> Value {
        let out = contract_fields(subject, payload.as_bytes()).expect("an object");
        serde_json::from_slice(&out).expect("the kept body is JSON")
    }

    /// Today's monitor's messages, with a canary in every field §3 does not name, at every
    /// level: none may survive, and every named field must come out as it went in.
    #[test]
    fn only_named_fields_survive_and_they_survive_unchanged() {
        let task = json!({
            "version": "1.0", "type": "task_completed", "timestamp": "2026-11-02T08:00:00.000Z",
            "nodeId": "node-a37c1f69-f85a-48e1-8492-a9d82759a3b6",
            "canaryTop": "CANARY-top-1",
            "data": {"chainId": "1", "blockNumber": 26612000, "blockHash": "0xCANARY-blockhash",
                "taskHash": "0xCANARY-taskhash", "taskIdHash": TASK, "status": "completed",
                "success": true, "executionTimeBucket": "<100ms", "gasUsedBucket": "<100K",
                "cached": false, "canaryData": {"deep": ["CANARY-data-deep"]}},
            "taskHash": "0xCANARY-top-taskhash",
            "trailer": ["CANARY-array", {"x": "CANARY-in-array"}],
        });
        let heartbeat = json!({
            "version": "1.0", "type": "heartbeat", "timestamp": "2026-11-02T08:00:00.000Z",
            "nodeId": "node-76fdd2ee-8dc8-43dc-862c-1b056120b215",
            "data": {"status": "online", "activeTasks": 7_111_111, "totalTasks": 8_222_222,
                "totalInvoices": 9_333_333, "activeTasksBucket": ">5", "totalTasksBucket": ">1K",
                "continentBucket": "EU", "locationBucket": "52.5,13.5"},
            "continentBucket": "NA", "ip": "CANARY-203.0.113.7",
        });
        let invoice = json!({
            "version": "1.0", "type": "invoice_created", "timestamp": "2026-11-02T08:00:00.000Z",
            "nodeId": "node-a",
            "data": {"invoiceIdHash": null, "taskIdHash": TASK, "chainId": 137,
                "stepsComputedBucket": ">100M", "memoryUsedBucket": "unknown",
                "operation": "compute", "invoiceId": "CANARY-invoice-id"},
        });
        let canaries = [
            "CANARY",
            "26612000",
            "7111111",
            "8222222",
            "9333333",
            "blockNumber",
            "blockHash",
            "taskHash",
            "activeTasks\"",
            "totalTasks\"",
            "totalInvoices",
            "canaryTop",
            "canaryData",
            "trailer",
            "invoiceId\"",
            "\"ip\"",
        ];
        for (subject, message) in [
            (TASKS_COMPLETED, task),
            (HEARTBEAT, heartbeat),
            (INVOICES_CREATED, invoice),
        ] {
            let payload = message.to_string();
            let out =
                String::from_utf8(contract_fields(subject, payload.as_bytes()).unwrap()).unwrap();
            for canary in canaries {
                assert!(!out.contains(canary), "{canary} leaked: {out}");
            }
            // Every named field, and nothing else, with the value it had.
            let kept: Value = serde_json::from_str(&out).unwrap();
            let mut expected = message.clone();
            let (top_fields, data_fields) = fields_of(event_type(subject));
            let top = expected.as_object_mut().unwrap();
            top.retain(|k, _| {
                ENVELOPE_FIELDS.contains(&k.as_str()) || top_fields.contains(&k.as_str())
            });
            if let Some(Value::Object(data)) = top.get_mut("data") {
                data.retain(|k, _| data_fields.contains(&k.as_str()));
            }
            assert_eq!(kept, expected);
            let keys =
                |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
            assert_eq!(keys(&kept), keys(&expected), "the order sent");
            assert_eq!(
                keys(&kept["data"]),
                keys(&expected["data"]),
                "the order sent"
            );
        }
    }

    #[test]
    fn a_named_field_holding_an_object_or_array_keeps_a_placeholder() {
        let payload = r#"{"version":{"secret":"CANARY-1"},"nodeId":["CANARY-2"],
            "data":{"taskIdHash":{"a":"CANARY-3"},"chainId":[1,2],"status":"ok"},
            "status":{"nested":{"deeper":"CANARY-4"}}}"#;
        let out = contract_fields(HEARTBEAT, payload.as_bytes()).unwrap();
        assert!(!String::from_utf8_lossy(&out).contains("CANARY"));
        assert_eq!(
            kept(HEARTBEAT, payload),
            json!({"version": "<object>", "nodeId": "<array>",
                "data": {"status": "ok"}, "status": "<object>"})
        );
        assert_eq!(
            kept(TASKS_RECEIVED, payload),
            json!({"version": "<object>", "nodeId": "<array>",
                "data": {"taskIdHash": "<object>", "chainId": "<array>"}})
        );
        // `data` is filtered as data only at the top: an array there is a placeholder too.
        assert_eq!(
            kept(HEARTBEAT, r#"{"data":["CANARY"],"type":"heartbeat"}"#),
            json!({"data": "<array>", "type": "heartbeat"})
        );
    }

    #[test]
    fn values_are_kept_byte_for_byte() {
        // The operator sees what the node sent: the number as spelled, the escapes as written.
        let payload = r#"{"type":"task_received","data":{"chainId":18446744073709551616,"taskType":"\u0057ASM","taskIdHash":null},"timestamp":"2026-11-02 08:00:00Z"}"#;
        let out = contract_fields(TASKS_RECEIVED, payload.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), payload);
    }

    /// Contract §4: a field that §3 names for another type than the subject's is dropped too,
    /// so that nothing a node puts there reaches the dead letters.
    #[test]
    fn a_field_named_only_for_another_type_is_dropped() {
        let cases = [
            (
                TASKS_RECEIVED,
                r#"{"type":"task_received","data":{"taskIdHash":"t","success":"CANARY","cached":"CANARY","operation":"CANARY"},"continentBucket":"CANARY"}"#,
                json!({"type": "task_received", "data": {"taskIdHash": "t"}}),
            ),
            (
                INVOICES_CREATED,
                r#"{"type":"invoice_created","data":{"invoiceIdHash":"i","taskType":"CANARY","status":"CANARY","executionTimeBucket":"CANARY"}}"#,
                json!({"type": "invoice_created", "data": {"invoiceIdHash": "i"}}),
            ),
            (
                HEARTBEAT,
                r#"{"type":"heartbeat","data":{"status":"online","taskIdHash":"CANARY","chainId":"CANARY"},"taskType":"CANARY"}"#,
                json!({"type": "heartbeat", "data": {"status": "online"}}),
            ),
            (
                "truebit.nodes.joined",
                r#"{"type":"node_joined","data":{"status":"online","continentBucket":"CANARY"},"status":"CANARY"}"#,
                json!({"type": "node_joined", "data": {"status": "online"}}),
            ),
            (
                "truebit.unknown",
                r#"{"type":"heartbeat","data":{"status":"CANARY"}}"#,
                json!({"type": "heartbeat", "data": {}}),
            ),
        ];
        for (subject, payload, expected) in cases {
            assert_eq!(kept(subject, payload), expected, "{subject}");
        }
    }

    #[test]
    fn escaped_keys_are_read_as_the_keys_they_spell() {
        // `node\u0049d` is `nodeId` to every reader, so it is kept, under its plain name.
        let out = contract_fields(
            HEARTBEAT,
            br#"{"node\u0049d":"n","\u0062lockHash":"CANARY"}"#,
        )
        .unwrap();
        assert_eq!(out, br#"{"nodeId":"n"}"#);
    }

    #[test]
    fn what_is_not_a_json_object_as_the_contract_reads_it_gives_none() {
        for payload in [
            &b"\xff{}"[..],
            b"{not json",
            b"[1,2]",
            b"\"text\"",
            b"",
            br#"{"a":1,"a":2}"#,
            br#"{"a":"\ud800"}"#,
            br#"{"a":1e400}"#,
        ] {
            assert_eq!(contract_fields(HEARTBEAT, payload), None, "{payload:?}");
        }
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert_eq!(
            contract_fields(HEARTBEAT, format!(r#"{{"x":{deep}}}"#).as_bytes()),
            None
        );
        assert_eq!(contract_fields(HEARTBEAT, b" {} "), Some(b"{}".to_vec()));
    }
}
