//! The fast path agrees with the reference validator: on every message it accepts, the reference
//! accepts the very same event. Kept apart from both, so that the fast path depends on nothing of
//! the reference's, not even in its tests.

use crate::fast::accept;
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

/// Null is common in today's monitor (`"chainId": null`): the fast path takes it, in every
/// optional field and as `data`, rather than sending such messages to the slow path.
#[test]
fn the_fast_path_takes_null_in_optional_fields_and_as_data() {
    let at = DateTime::parse_from_rfc3339("2026-11-02T08:01:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let required = ["taskIdHash", "invoiceIdHash"];
    let mut taken = 0;
    for (subject, sample) in samples() {
        let mut all_null = sample.clone();
        if let Some(Value::Object(data)) = all_null.get_mut("data") {
            for (key, value) in data.iter_mut() {
                if !required.contains(&key.as_str()) {
                    *value = Value::Null;
                }
            }
        }
        let mut null_data = sample.clone();
        null_data["data"] = Value::Null;
        for v in [all_null, null_data] {
            let payload = v.to_string();
            if let Ok(event) = reference(subject, payload.as_bytes(), at) {
                assert_eq!(
                    accept(subject, payload.as_bytes(), at),
                    Some(event),
                    "{payload}"
                );
                taken += 1;
            }
        }
    }
    // Six with null fields, three with null data (heartbeat and node events need none).
    assert_eq!(taken, 9);
}

/// The fast path remembers the first unnamed keys of an object on the stack and the rest on the
/// heap: a key twice is caught wherever the two fall.
#[test]
fn the_fast_path_steps_aside_on_a_key_twice_however_many_keys_come_between() {
    let at = DateTime::parse_from_rfc3339("2026-11-02T08:01:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let message = |extra: &[String]| {
        format!(
            r#"{{"version":"1.0","type":"node_joined","timestamp":"2026-11-02T08:00:00Z","nodeId":"n",{}"data":{{{}"status":"online"}}}}"#,
            extra
                .iter()
                .map(|k| format!(r#""{k}":0,"#))
                .collect::<String>(),
            extra
                .iter()
                .map(|k| format!(r#""{k}":{{"{k}":0}},"#))
                .collect::<String>(),
        )
    };
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let subject = "truebit.nodes.joined";
    assert!(accept(subject, message(&keys).as_bytes(), at).is_some());
    for (a, b) in [(0, 1), (0, 11), (7, 8), (8, 11), (10, 11)] {
        let mut twice = keys.clone();
        twice[b] = twice[a].clone();
        let payload = message(&twice);
        assert_eq!(accept(subject, payload.as_bytes(), at), None, "{a}, {b}");
        assert_eq!(
            reference(subject, payload.as_bytes(), at).map_err(|r| r.reason),
            Err(crate::Reason::Malformed)
        );
    }
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
        1 => Just(json!("2026-11-02 08:00:00Z")),
        1 => Just(json!("2026-11-02T07:59:60Z")),
        1 => Just(json!("2026-11-02t08:00:00z")),
        1 => Just(json!("2026-11-02T13:30:00+05:30")),
        1 => Just(json!("2026-02-30T08:00:00Z")),
        1 => Just(json!("2026-11-02T08:00:00.Z")),
        1 => Just(json!("2.0")),
        1 => Just(json!("heartbeat")),
        1 => Just(json!("12345678901234567890")),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(137.0)),
        1 => Just(json!("137.0")),
        1 => Just(json!("137.00")),
        1 => Just(json!("137.")),
        1 => Just(json!("-0")),
        1 => Just(json!("+1.0")),
        1 => Just(json!("01.0")),
        1 => Just(json!(" 1")),
        1 => Just(json!("1.7.3")),
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
        // A key twice, where no slot of the fast path holds it: at the top, in data, deeper.
        7 => text.replacen('{', "{\"x\":1,\"x\":2,", 1),
        8 => text.replacen(
            "\"data\":{",
            "\"data\":{\"blockHash\":\"a\",\"blockHash\":\"a\",",
            1,
        ),
        9 => text.replacen('}', ",\"extra\":{\"deep\":[{\"k\":1,\"k\":1}]}}", 1),
        10 => text.replacen('{', "{\"x\":1,\"\\u0078\":2,", 1),
        // Nesting about the two limits: serde_json's 127 and the contract's 128.
        11..=13 => {
            let n = 125 + usize::from(edit - 11);
            let deep = format!(",\"deep\":{}{}}}", "[".repeat(n), "]".repeat(n));
            text.replacen('}', &deep, 1)
        }
        14 => text.replacen('}', ",\"big\":1e400}", 1),
        15 => text.replacen('}', ",\"big\":1.7976931348623158e308}", 1),
        16 => text.replacen('}', ",\"odd\":\"\\udc00\"}", 1),
        // Numbers no `Value` writes this way.
        17 => text.replacen("\"chainId\":\"1\"", "\"chainId\":-0", 1),
        18 => text.replacen("\"chainId\":137", "\"chainId\":1.37e2", 1),
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
        text in 0u8..24,
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
