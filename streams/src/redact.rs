//! Contract §4: the body a dead letter may keep of a node's message that could be read as JSON
//! (`schema`, `clock`, `unauthorized`, `rate_limited`): the fields contract §3 names and nothing
//! else, so that today's monitor's `blockHash` or exact task counts never reach a dead letter.

use crate::json;
use std::borrow::Cow;

/// The envelope's fields that §3 names: its own, and the heartbeat's, which the plan's
/// pseudocode reads at the top level.
const ENVELOPE_FIELDS: &[&str] = &[
    "version",
    "type",
    "timestamp",
    "nodeId",
    "data",
    "status",
    "totalTasksBucket",
    "activeTasksBucket",
    "continentBucket",
    "locationBucket",
];

/// Every `data` field §3 names for any type: a dead letter may be refused for carrying the
/// wrong type, so it keeps what any type would have read.
const DATA_FIELDS: &[&str] = &[
    "taskIdHash",
    "chainId",
    "taskType",
    "success",
    "status",
    "executionTimeBucket",
    "gasUsedBucket",
    "cached",
    "invoiceIdHash",
    "stepsComputedBucket",
    "memoryUsedBucket",
    "operation",
    "totalTasksBucket",
    "activeTasksBucket",
    "continentBucket",
    "locationBucket",
];

/// What a named field keeps in place of an object: its content is named by no one.
const OBJECT: &str = "\"<object>\"";
/// What a named field keeps in place of an array.
const ARRAY: &str = "\"<array>\"";

/// The JSON object a dead letter keeps of `payload`: only the fields contract §3 names, in the
/// order sent, every value as sent byte for byte (a number keeps its spelling, a string its
/// escapes). `data`, when it is an object, keeps only the data fields §3 names for any type. A
/// named field whose value is an object or an array (other than `data`) keeps the string
/// `"<object>"` or `"<array>"` instead, so that no unnamed content rides through a named one.
///
/// `None` when the payload is not a JSON object as contract §4 reads it (not UTF-8, not JSON,
/// a duplicate key, nesting deeper than 128, …): the caller keeps the first 1 KiB as sent, as
/// for `malformed`. An operator event's dead letter keeps its first 1 KiB too (§4); this is for
/// node messages.
pub fn contract_fields(payload: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(payload).ok()?;
    keep(text, ENVELOPE_FIELDS, true).map(String::into_bytes)
}

/// The object `text` holds, with only the `named` fields; `None` when it is not an object.
fn keep(text: &str, named: &[&str], envelope: bool) -> Option<String> {
    let members = json::members(text).ok()??;
    let mut out = String::from("{");
    for (key, span) in members {
        if !named.contains(&key.as_str()) {
            continue;
        }
        let raw = &text[span];
        let value: Cow<str> = match raw.as_bytes().first() {
            Some(b'{') if envelope && key == "data" => keep(raw, DATA_FIELDS, false)?.into(),
            Some(b'{') => OBJECT.into(),
            Some(b'[') => ARRAY.into(),
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
    use serde_json::{json, Value};

    const TASK: &str = "dc5bd914475128116974a3e7e7c848deca52b87aea9f8f3e31f7511b993a582b";

    fn kept(payload: &str) -> Value {
        let out = contract_fields(payload.as_bytes()).expect("an object");
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
        for message in [task, heartbeat, invoice] {
            let payload = message.to_string();
            let out = String::from_utf8(contract_fields(payload.as_bytes()).unwrap()).unwrap();
            for canary in canaries {
                assert!(!out.contains(canary), "{canary} leaked: {out}");
            }
            // Every named field, and nothing else, with the value it had.
            let kept: Value = serde_json::from_str(&out).unwrap();
            let mut expected = message.clone();
            let top = expected.as_object_mut().unwrap();
            top.retain(|k, _| ENVELOPE_FIELDS.contains(&k.as_str()));
            if let Some(Value::Object(data)) = top.get_mut("data") {
                data.retain(|k, _| DATA_FIELDS.contains(&k.as_str()));
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
        let out = contract_fields(payload.as_bytes()).unwrap();
        assert!(!String::from_utf8_lossy(&out).contains("CANARY"));
        assert_eq!(
            kept(payload),
            json!({"version": "<object>", "nodeId": "<array>",
                "data": {"taskIdHash": "<object>", "chainId": "<array>", "status": "ok"},
                "status": "<object>"})
        );
        // `data` is filtered as data only at the top: an array there is a placeholder too.
        assert_eq!(
            kept(r#"{"data":["CANARY"],"type":"heartbeat"}"#),
            json!({"data": "<array>", "type": "heartbeat"})
        );
    }

    #[test]
    fn values_are_kept_byte_for_byte() {
        // The operator sees what the node sent: the number as spelled, the escapes as written.
        let payload = r#"{"type":"task_received","data":{"chainId":18446744073709551616,"taskType":"\u0057ASM","cached":1e2,"taskIdHash":null},"timestamp":"2026-11-02 08:00:00Z"}"#;
        let out = String::from_utf8(contract_fields(payload.as_bytes()).unwrap()).unwrap();
        assert_eq!(out, payload);
        // Data fields are kept by name, not by type: an operator may need to see why a message
        // of one type was refused for carrying another's.
        let stray = r#"{"type":"heartbeat","data":{"taskIdHash":"x","operation":"y","z":1}}"#;
        assert_eq!(
            kept(stray),
            json!({"type": "heartbeat", "data": {"taskIdHash": "x", "operation": "y"}})
        );
    }

    #[test]
    fn escaped_keys_are_read_as_the_keys_they_spell() {
        // `node\u0049d` is `nodeId` to every reader, so it is kept, under its plain name.
        let out = contract_fields(br#"{"node\u0049d":"n","\u0062lockHash":"CANARY"}"#).unwrap();
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
            assert_eq!(contract_fields(payload), None, "{payload:?}");
        }
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert_eq!(
            contract_fields(format!(r#"{{"x":{deep}}}"#).as_bytes()),
            None
        );
        assert_eq!(contract_fields(b" {} "), Some(b"{}".to_vec()));
    }
}
