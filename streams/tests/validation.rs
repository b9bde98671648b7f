//! Contract §3 and §4, checked message by message.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use truebit_streams::{
    validate, Continent, Digest, EventKind, ExecutionTime, Heartbeat, Location, Magnitude, Outcome,
    Reason, Rejection,
};

const TASK: &str = "dc5bd914475128116974a3e7e7c848deca52b87aea9f8f3e31f7511b993a582b";
const NODE: &str = "node-a37c1f69-f85a-48e1-8492-a9d82759a3b6";

fn stored() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 8, 3, 0).unwrap()
}

fn envelope(ty: &str, data: Value) -> Value {
    json!({"version": "1.0", "type": ty, "timestamp": "2026-11-02T08:00:00.000Z", "nodeId": NODE, "data": data})
}

fn check(subject: &str, v: &Value) -> Result<truebit_streams::Event, Rejection> {
    validate(subject, &serde_json::to_vec(v).unwrap(), stored())
}

fn schema_path(subject: &str, v: &Value) -> String {
    let r = check(subject, v).expect_err("should be refused");
    assert_eq!(r.reason, Reason::Schema, "{r}");
    r.path.expect("schema rejections name a path")
}

#[test]
fn every_fixture_is_accepted_except_the_three_invoices_without_an_id() {
    let fixtures = truebit_testkit::monitor_fixtures();
    assert_eq!(fixtures.len(), 268);
    let mut refused = Vec::new();
    for (subject, payload) in &fixtures {
        let v: Value = serde_json::from_slice(payload).unwrap();
        // The fixtures were made with a clock pinned to their event time.
        let at = DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc);
        if let Err(r) = validate(subject, payload, at) {
            refused.push((v["type"].as_str().unwrap().to_string(), r));
        }
    }
    assert_eq!(refused.len(), 3, "{refused:?}");
    for (ty, r) in refused {
        assert_eq!(ty, "invoice_created");
        assert_eq!(r.reason, Reason::Schema);
        assert_eq!(r.path.as_deref(), Some("$.data.invoiceIdHash"));
    }
}

#[test]
fn a_monitor_task_event_keeps_only_the_contract_fields() {
    let v = envelope(
        "task_received",
        json!({"chainId": "1", "blockNumber": 26612000, "blockHash": "0xabc",
        "taskHash": "0xdef", "taskType": "WASM", "taskIdHash": TASK}),
    );
    let e = check("truebit.tasks.received", &v).unwrap();
    assert_eq!(e.node_id, NODE);
    assert_eq!(e.minute, stored().timestamp() / 60 - 3);
    assert_eq!(
        e.kind,
        EventKind::TaskReceived {
            task: Digest::parse_hex(TASK).unwrap(),
            chain_id: Some("1".into()),
            task_type: Some("wasm".into()),
        }
    );
}

#[test]
fn completions_carry_their_whole_outcome() {
    let v = envelope(
        "task_completed",
        json!({"taskIdHash": TASK, "success": false, "status": "Failed",
        "executionTimeBucket": "5-10s", "gasUsedBucket": "unknown", "cached": true, "chainId": "bogus!"}),
    );
    let EventKind::TaskCompleted { outcome, .. } =
        check("truebit.tasks.completed", &v).unwrap().kind
    else {
        panic!("not a completion")
    };
    assert_eq!(outcome.success, Some(false));
    assert_eq!(outcome.status.as_deref(), Some("failed"));
    assert_eq!(outcome.execution_time, Some(ExecutionTime::To10s));
    assert_eq!(outcome.gas_used, None, "`unknown` is not known");
    assert_eq!(outcome.cached, Some(true));
}

#[test]
fn heartbeat_fields_are_read_from_data_or_from_the_top_level() {
    let nested = envelope(
        "heartbeat",
        json!({"status": "online", "continentBucket": "EU", "locationBucket": "52.5,13.5",
        "activeTasks": 3, "totalTasks": 1234}),
    );
    let EventKind::HeartbeatReported(hb) = check("truebit.heartbeat", &nested).unwrap().kind else {
        panic!()
    };
    assert_eq!(hb.continent, Some(Continent::Europe));
    assert_eq!(hb.location, Location::parse("52.5,13.5"));

    let mut top = envelope("heartbeat", json!({}));
    top["continentBucket"] = json!("OC");
    top["totalTasksBucket"] = json!(">1K");
    let EventKind::HeartbeatReported(hb) = check("truebit.heartbeat", &top).unwrap().kind else {
        panic!()
    };
    assert_eq!(hb.continent, Some(Continent::Oceania));
    assert_eq!(hb.total_tasks.map(|t| t.label()), Some(">1K"));

    let mut bare = envelope("heartbeat", json!(null));
    bare.as_object_mut().unwrap().remove("data");
    assert!(
        check("truebit.heartbeat", &bare).is_ok(),
        "a heartbeat needs no data"
    );
}

#[test]
fn invoices_normalise_numeric_chains_and_accept_a_null_task() {
    let v = envelope(
        "invoice_created",
        json!({"invoiceIdHash": TASK, "taskIdHash": null, "chainId": 5,
        "stepsComputedBucket": ">100M", "memoryUsedBucket": null, "operation": "compute"}),
    );
    let EventKind::InvoiceCreated(inv) = check("truebit.invoices.created", &v).unwrap().kind else {
        panic!()
    };
    assert_eq!(inv.chain_id.as_deref(), Some("5"));
    assert_eq!(inv.task, None);
    assert_eq!(inv.steps_computed, Some(Magnitude::Over100M));
    assert_eq!(inv.memory_used, None);
}

/// Where an optional field sits: `(true, name)` in `data`, `(false, name)` at the top level.
type Optional = (bool, &'static str);

/// One valid message of each type with every optional field known, and those fields.
fn fully_known() -> Vec<(&'static str, Value, Vec<Optional>)> {
    let heartbeat_fields = [
        "status",
        "totalTasksBucket",
        "activeTasksBucket",
        "continentBucket",
        "locationBucket",
    ];
    let mut top_heartbeat = envelope("heartbeat", json!({}));
    for (field, label) in heartbeat_fields
        .iter()
        .zip(["online", "1-10", "1", "EU", "52.5,13.5"])
    {
        top_heartbeat[*field] = json!(label);
    }
    let in_data = |fields: &[&'static str]| fields.iter().map(|f| (true, *f)).collect::<Vec<_>>();
    vec![
        (
            "truebit.tasks.received",
            envelope(
                "task_received",
                json!({"taskIdHash": TASK, "chainId": "137", "taskType": "wasm"}),
            ),
            in_data(&["chainId", "taskType"]),
        ),
        (
            "truebit.tasks.completed",
            envelope(
                "task_completed",
                json!({"taskIdHash": TASK, "success": true, "status": "completed",
                    "executionTimeBucket": "1-5s", "gasUsedBucket": "<100K", "cached": false}),
            ),
            in_data(&[
                "success",
                "status",
                "executionTimeBucket",
                "gasUsedBucket",
                "cached",
            ]),
        ),
        (
            "truebit.heartbeat",
            envelope(
                "heartbeat",
                json!({"status": "online", "totalTasksBucket": ">1K", "activeTasksBucket": "0",
                    "continentBucket": "NA", "locationBucket": "40.7,-74.0"}),
            ),
            in_data(&heartbeat_fields),
        ),
        (
            "truebit.heartbeat",
            top_heartbeat,
            heartbeat_fields.iter().map(|f| (false, *f)).collect(),
        ),
        (
            "truebit.invoices.created",
            envelope(
                "invoice_created",
                json!({"invoiceIdHash": TASK, "taskIdHash": TASK, "chainId": 5,
                    "stepsComputedBucket": "1M-10M", "memoryUsedBucket": "<64MB",
                    "operation": "compute"}),
            ),
            in_data(&[
                "taskIdHash",
                "chainId",
                "stepsComputedBucket",
                "memoryUsedBucket",
                "operation",
            ]),
        ),
        (
            "truebit.nodes.joined",
            envelope("node_joined", json!({"status": "online"})),
            in_data(&["status"]),
        ),
        (
            "truebit.nodes.left",
            envelope("node_left", json!({"status": "offline"})),
            in_data(&["status"]),
        ),
    ]
}

#[test]
fn null_in_any_optional_field_means_not_known_as_if_it_were_missing() {
    for (subject, full, fields) in fully_known() {
        let known = check(subject, &full).unwrap();
        // `Some(value)` sets the field, `None` removes it.
        let with = |nested: bool, field: &str, value: Option<Value>| {
            let mut v = full.clone();
            let map = if nested { &mut v["data"] } else { &mut v };
            let map = map.as_object_mut().unwrap();
            match value {
                Some(value) => map.insert(field.to_owned(), value),
                None => map.remove(field),
            };
            v
        };
        for &(nested, field) in &fields {
            // Given a valid message, when one optional field is null,
            let nulled = with(nested, field, Some(Value::Null));
            let missing = with(nested, field, None);
            let read = check(subject, &nulled).unwrap_or_else(|r| panic!("{field}: {r}"));
            // then it is accepted exactly as if the field were missing, and that field only is
            // no longer known.
            assert_eq!(Ok(&read), check(subject, &missing).as_ref(), "{field}");
            assert_ne!(read, known, "{field} was known before it was null");
        }
        // All of them at once.
        let mut all_null = full.clone();
        for &(nested, field) in &fields {
            let map = if nested {
                &mut all_null["data"]
            } else {
                &mut all_null
            };
            map[field] = Value::Null;
        }
        let read = check(subject, &all_null).unwrap();
        assert_eq!(read.node_id, NODE);
        let nothing_known = match read.kind {
            EventKind::TaskReceived {
                chain_id,
                task_type,
                ..
            } => chain_id.is_none() && task_type.is_none(),
            EventKind::TaskCompleted { outcome, .. } => outcome == Outcome::default(),
            EventKind::HeartbeatReported(hb) => hb == Heartbeat::default(),
            EventKind::InvoiceCreated(inv) => {
                inv.task.is_none()
                    && inv.chain_id.is_none()
                    && inv.steps_computed.is_none()
                    && inv.memory_used.is_none()
                    && inv.operation.is_none()
            }
            EventKind::NodeJoined { status } | EventKind::NodeLeft { status } => status.is_none(),
        };
        assert!(nothing_known, "{subject}: {all_null}");
    }
}

#[test]
fn null_data_is_absent_data() {
    // A heartbeat or a node event needs no data: null data is accepted, with nothing known.
    let nothing = [
        EventKind::HeartbeatReported(Heartbeat::default()),
        EventKind::NodeJoined { status: None },
        EventKind::NodeLeft { status: None },
    ];
    for ((subject, ty), expected) in [
        ("truebit.heartbeat", "heartbeat"),
        ("truebit.nodes.joined", "node_joined"),
        ("truebit.nodes.left", "node_left"),
    ]
    .into_iter()
    .zip(nothing)
    {
        assert_eq!(
            check(subject, &envelope(ty, json!(null))).unwrap().kind,
            expected
        );
    }
    // A heartbeat with null data reads its fields at the top level.
    let mut hb = envelope("heartbeat", json!(null));
    hb["continentBucket"] = json!("AS");
    let EventKind::HeartbeatReported(read) = check("truebit.heartbeat", &hb).unwrap().kind else {
        panic!("not a heartbeat")
    };
    assert_eq!(read.continent, Some(Continent::Asia));
    // A task or invoice event with null data lacks its required hash.
    let task = envelope("task_received", json!(null));
    assert_eq!(
        schema_path("truebit.tasks.received", &task),
        "$.data.taskIdHash"
    );
    let done = envelope("task_completed", json!(null));
    assert_eq!(
        schema_path("truebit.tasks.completed", &done),
        "$.data.taskIdHash"
    );
    let invoice = envelope("invoice_created", json!(null));
    assert_eq!(
        schema_path("truebit.invoices.created", &invoice),
        "$.data.invoiceIdHash"
    );
}

#[test]
fn a_heartbeat_field_null_in_data_wins_over_the_top_level() {
    // Given a heartbeat with a field at the top level, when data holds that field as null,
    // then the field is not known: data's word, even null, is the one that counts.
    let mut hb = envelope(
        "heartbeat",
        json!({"continentBucket": null, "status": null}),
    );
    hb["continentBucket"] = json!("EU");
    hb["status"] = json!("online");
    let EventKind::HeartbeatReported(read) = check("truebit.heartbeat", &hb).unwrap().kind else {
        panic!("not a heartbeat")
    };
    assert_eq!(read.continent, None);
    assert_eq!(read.status, None);
}

#[test]
fn null_in_a_required_field_is_a_schema_error_at_its_path() {
    let cases = [
        ("truebit.tasks.received", "task_received", false, "version"),
        ("truebit.tasks.received", "task_received", false, "type"),
        (
            "truebit.tasks.received",
            "task_received",
            false,
            "timestamp",
        ),
        ("truebit.tasks.received", "task_received", false, "nodeId"),
        (
            "truebit.tasks.received",
            "task_received",
            true,
            "taskIdHash",
        ),
        (
            "truebit.tasks.completed",
            "task_completed",
            true,
            "taskIdHash",
        ),
        (
            "truebit.invoices.created",
            "invoice_created",
            true,
            "invoiceIdHash",
        ),
        ("truebit.heartbeat", "heartbeat", false, "nodeId"),
        ("truebit.nodes.left", "node_left", false, "timestamp"),
    ];
    for (subject, ty, nested, field) in cases {
        let mut v = envelope(ty, json!({"taskIdHash": TASK, "invoiceIdHash": TASK}));
        assert!(check(subject, &v).is_ok(), "{ty} is valid before the edit");
        let path = if nested {
            v["data"][field] = Value::Null;
            format!("$.data.{field}")
        } else {
            v[field] = Value::Null;
            format!("$.{field}")
        };
        assert_eq!(schema_path(subject, &v), path);
    }
}

/// The chain a task_received message with `"chainId":<written>` (JSON text) is read with.
fn chain_of(written: &str) -> Result<Option<String>, Rejection> {
    match check_text(&task_text("", &format!(r#","chainId":{written}"#)))?.kind {
        EventKind::TaskReceived { chain_id, .. } => Ok(chain_id),
        other => panic!("not a task_received: {other:?}"),
    }
}

#[test]
fn a_chain_id_is_digits_or_an_unsigned_64_bit_integer_and_is_kept_as_digits() {
    for (written, chain) in [
        (r#""137""#, "137"),
        // Today's monitor writes "137.0" when its log held the id as a number.
        (r#""137.0""#, "137"),
        (r#""0.0""#, "0"),
        ("137", "137"),
        ("0", "0"),
        // Above 2^63, where a signed reading would end.
        ("9223372036854775808", "9223372036854775808"),
        ("18446744073709551615", "18446744073709551615"),
        (r#""18446744073709551615""#, "18446744073709551615"),
        (r#""99999999999999999999""#, "99999999999999999999"),
        (r#""99999999999999999999.0""#, "99999999999999999999"),
    ] {
        assert_eq!(chain_of(written), Ok(Some(chain.into())), "{written}");
    }
    // An invoice reads its chain by the same rule.
    let mut inv = envelope("invoice_created", json!({"invoiceIdHash": TASK}));
    inv["data"]["chainId"] = json!(18446744073709551615u64);
    let EventKind::InvoiceCreated(read) = check("truebit.invoices.created", &inv).unwrap().kind
    else {
        panic!("not an invoice")
    };
    assert_eq!(read.chain_id.as_deref(), Some("18446744073709551615"));
}

#[test]
fn anything_else_as_a_chain_id_is_a_schema_error() {
    for written in [
        // One past 2^64 - 1; -0 is not a chain, as a number or as a string.
        "18446744073709551616",
        "-0",
        r#""-0""#,
        "-1",
        // Only exactly ".0" after the digits.
        r#""137.00""#,
        r#""137.""#,
        r#"".0""#,
        r#""137.5""#,
        // A JSON integer is written as one: no fraction, no exponent.
        "137.0",
        "1e2",
        "1E2",
        "137e0",
        r#""1e2""#,
        r#""+137""#,
        r#"" 137""#,
        r#""0x89""#,
        r#""""#,
        r#""123456789012345678901""#,
        "true",
        "[137]",
    ] {
        let r = chain_of(written).expect_err(written);
        assert_eq!(
            (r.reason, r.path.as_deref()),
            (Reason::Schema, Some("$.data.chainId")),
            "{written}: {r}"
        );
    }
}

#[test]
fn version_needs_major_exactly_1_as_text() {
    let with_version = |version: &str| {
        let mut v = envelope("heartbeat", json!({}));
        v["version"] = json!(version);
        check("truebit.heartbeat", &v)
    };
    for ok in ["1", "1.0", "1.7.3"] {
        assert!(with_version(ok).is_ok(), "{ok:?} has major 1");
    }
    for bad in [
        "+1.0", "01.0", " 1", "+1", "1 .0", "-1", "2.0", "10", "", ".1", "1e0", "１.0",
    ] {
        let r = with_version(bad).expect_err(bad);
        assert_eq!(
            (r.reason, r.path.as_deref()),
            (Reason::Schema, Some("$.version")),
            "{bad:?}: {r}"
        );
    }
}

#[test]
fn size_is_checked_before_anything_else() {
    let big = vec![b'x'; 8 * 1024 + 1];
    assert_eq!(
        validate("truebit.heartbeat", &big, stored())
            .unwrap_err()
            .reason,
        Reason::TooLarge
    );
    let mut v = envelope(
        "task_received",
        json!({"taskIdHash": TASK, "pad": "y".repeat(8000)}),
    );
    v["nodeId"] = json!("n");
    let bytes = serde_json::to_vec(&v).unwrap();
    assert!(bytes.len() <= 8 * 1024);
    assert!(
        validate("truebit.tasks.received", &bytes, stored()).is_ok(),
        "8 KiB and under is fine"
    );
}

#[test]
fn anything_but_a_utf8_json_object_is_malformed() {
    for payload in [&b"\xff\xfe"[..], b"{not json", b"[1,2]", b"\"text\"", b""] {
        let r = validate("truebit.heartbeat", payload, stored()).unwrap_err();
        assert_eq!(r.reason, Reason::Malformed, "{payload:?}");
        assert_eq!(r.path, None);
    }
}

/// A task_received message written by hand, so that a test can say what no `Value` can hold:
/// `top` goes before `data` (with its trailing comma), `inner` after the hash inside `data`.
fn task_text(top: &str, inner: &str) -> String {
    format!(
        r#"{{"version":"1.0","type":"task_received","timestamp":"2026-11-02T08:00:00.000Z","nodeId":"{NODE}",{top}"data":{{"taskIdHash":"{TASK}"{inner}}}}}"#
    )
}

fn check_text(text: &str) -> Result<truebit_streams::Event, Rejection> {
    validate("truebit.tasks.received", text.as_bytes(), stored())
}

fn assert_malformed(text: &str) {
    let r = check_text(text).expect_err("should be refused");
    assert_eq!(r.reason, Reason::Malformed, "{r}: {text}");
    assert_eq!(r.path, None);
}

#[test]
fn a_key_twice_in_any_object_is_malformed_even_where_the_contract_ignores_it() {
    // Given a valid message, when the same key appears twice in one object, then it is
    // malformed: a reader that keeps the first and one that keeps the last would disagree.
    assert!(
        check_text(&task_text("", "")).is_ok(),
        "the message itself is valid"
    );
    assert_malformed(&task_text(r#""nodeId":"node-b","#, ""));
    assert_malformed(&task_text(r#""blockHash":"0x1","blockHash":"0x1","#, ""));
    assert_malformed(&task_text("", r#","chainId":"1","chainId":"1""#));
    assert_malformed(&task_text("", r#","taskHash":null,"taskHash":null"#));
    assert_malformed(&task_text("", r#","extra":[{"deep":{"k":1,"k":2}}]"#));
    // Equal after escapes are resolved: `\u0078` is `x`.
    assert_malformed(&task_text(r#""x":1,"\u0078":2,"#, ""));
    // Not equal: keys differ by case.
    assert!(check_text(&task_text(r#""x":1,"X":2,"#, "")).is_ok());
}

#[test]
fn nesting_of_128_levels_is_read_and_129_is_malformed() {
    // The top-level object is level 1 and `data` level 2, so n arrays in data make 2 + n.
    let deep = |levels: usize| {
        let n = levels - 2;
        task_text(
            "",
            &format!(r#","deep":{}{}"#, "[".repeat(n), "]".repeat(n)),
        )
    };
    assert!(check_text(&deep(127)).is_ok());
    assert!(check_text(&deep(128)).is_ok(), "128 levels are allowed");
    assert_malformed(&deep(129));
    let objects = |levels: usize| {
        let n = levels - 2;
        task_text(
            "",
            &format!(
                r#","deep":{}{}{}"#,
                r#"{"a":"#.repeat(n - 1),
                "{}",
                "}".repeat(n - 1)
            ),
        )
    };
    assert!(check_text(&objects(128)).is_ok());
    assert_malformed(&objects(129));
}

#[test]
fn numbers_beyond_a_double_and_unpaired_surrogates_are_malformed_in_ignored_fields() {
    assert_malformed(&task_text("", r#","blockNumber":1e400"#));
    assert_malformed(&task_text("", r#","blockNumber":-1e400"#));
    assert_malformed(&task_text(&format!(r#""big":1{},"#, "0".repeat(400)), ""));
    assert_malformed(&task_text("", r#","blockHash":"\ud800""#));
    assert_malformed(&task_text("", r#","blockHash":"\udc00\ud800""#));
    assert_malformed(&task_text(r#""note":["\ud83d x"],"#, ""));
    // In range, merely small or large, and a proper surrogate pair: read.
    assert!(check_text(&task_text("", r#","blockNumber":1e-400"#)).is_ok());
    assert!(check_text(&task_text("", r#","blockNumber":1.7976931348623157e308"#)).is_ok());
    assert!(check_text(&task_text("", r#","blockHash":"\ud83d\ude00""#)).is_ok());
}

#[test]
fn schema_errors_name_the_first_bad_field() {
    let ok = envelope("task_received", json!({"taskIdHash": TASK}));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = ok.clone();
        f(&mut v);
        v
    };
    let s = "truebit.tasks.received";
    assert_eq!(
        schema_path(
            s,
            &with(&|v| {
                v.as_object_mut().unwrap().remove("version");
            })
        ),
        "$.version"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["version"] = json!("2.0"))),
        "$.version"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["version"] = json!(1.0))),
        "$.version"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["type"] = json!("task_completed"))),
        "$.type"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["nodeId"] = json!(""))),
        "$.nodeId"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["nodeId"] = json!("node with spaces"))),
        "$.nodeId"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["nodeId"] = json!("n".repeat(129)))),
        "$.nodeId"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["timestamp"] = json!(1700000000))),
        "$.timestamp"
    );
    assert_eq!(schema_path(s, &with(&|v| v["data"] = json!([]))), "$.data");
    assert_eq!(
        schema_path(s, &with(&|v| v["data"] = json!("text"))),
        "$.data"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["data"]["taskIdHash"] = json!(null))),
        "$.data.taskIdHash"
    );
    assert_eq!(
        schema_path(
            s,
            &with(&|v| v["data"]["taskIdHash"] = json!(TASK.to_uppercase()))
        ),
        "$.data.taskIdHash"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["data"]["chainId"] = json!("0x1"))),
        "$.data.chainId"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["data"]["chainId"] = json!(-1))),
        "$.data.chainId"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["data"]["chainId"] = json!(true))),
        "$.data.chainId"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["data"]["chainId"] = json!("1".repeat(21)))),
        "$.data.chainId"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["data"]["taskType"] = json!("has space"))),
        "$.data.taskType"
    );
    assert_eq!(
        schema_path(s, &with(&|v| v["data"]["taskType"] = json!("x".repeat(33)))),
        "$.data.taskType"
    );
    // The first bad field wins: version comes before the hash.
    assert_eq!(
        schema_path(
            s,
            &with(&|v| {
                v["version"] = json!("3");
                v["data"]["taskIdHash"] = json!(1);
            })
        ),
        "$.version"
    );

    let c = "truebit.tasks.completed";
    let done = envelope("task_completed", json!({"taskIdHash": TASK}));
    let mut v = done.clone();
    v["data"]["success"] = json!("true");
    assert_eq!(schema_path(c, &v), "$.data.success");
    let mut v = done.clone();
    v["data"]["cached"] = json!(0);
    assert_eq!(schema_path(c, &v), "$.data.cached");
    let mut v = done.clone();
    v["data"]["executionTimeBucket"] = json!("2-3s");
    assert_eq!(schema_path(c, &v), "$.data.executionTimeBucket");

    let mut hb = envelope("heartbeat", json!({"continentBucket": "XX"}));
    assert_eq!(
        schema_path("truebit.heartbeat", &hb),
        "$.data.continentBucket"
    );
    hb["data"] = json!({"locationBucket": "91.0,0.0"});
    assert_eq!(
        schema_path("truebit.heartbeat", &hb),
        "$.data.locationBucket"
    );
    hb["data"] = json!({});
    hb["activeTasksBucket"] = json!("6");
    assert_eq!(schema_path("truebit.heartbeat", &hb), "$.activeTasksBucket");

    let inv = envelope("invoice_created", json!({"taskIdHash": TASK}));
    assert_eq!(
        schema_path("truebit.invoices.created", &inv),
        "$.data.invoiceIdHash"
    );
    let mut no_data = envelope("invoice_created", json!(null));
    no_data.as_object_mut().unwrap().remove("data");
    assert_eq!(
        schema_path("truebit.invoices.created", &no_data),
        "$.data.invoiceIdHash"
    );

    let admin = envelope("key_issued", json!({}));
    assert_eq!(schema_path("truebit.admin.keys", &admin), "$.type");
}

#[test]
fn clock_checks_come_after_schema_and_use_the_stored_time() {
    let s = "truebit.tasks.received";
    let at = |ts: &str| {
        let mut v = envelope("task_received", json!({"taskIdHash": TASK}));
        v["timestamp"] = json!(ts);
        check(s, &v)
    };
    assert_eq!(at("yesterday").unwrap_err().reason, Reason::Clock);
    assert_eq!(
        at("2019-12-31T23:59:59Z").unwrap_err().reason,
        Reason::Clock
    );
    assert!(at("2020-01-01T00:00:00Z").is_ok());
    // stored() is 08:03; five minutes later is the limit, inclusive.
    assert!(at("2026-11-02T08:08:00Z").is_ok());
    assert_eq!(
        at("2026-11-02T08:08:01Z").unwrap_err().reason,
        Reason::Clock
    );
    assert!(
        at("2026-11-02T10:08:00+02:00").is_ok(),
        "offsets are honoured"
    );

    let mut both = envelope("task_received", json!({"taskIdHash": 7}));
    both["timestamp"] = json!("not a time");
    assert_eq!(
        check(s, &both).unwrap_err().reason,
        Reason::Schema,
        "schema is checked before clock"
    );
}

/// The task_received message with `timestamp` as given, judged at stored() (08:03 UTC).
fn at(ts: &str) -> Result<truebit_streams::Event, Rejection> {
    let mut v = envelope("task_received", json!({"taskIdHash": TASK}));
    v["timestamp"] = json!(ts);
    check("truebit.tasks.received", &v)
}

fn assert_clock(ts: &str) {
    let r = at(ts).expect_err(ts);
    assert_eq!(
        (r.reason, r.path.as_deref()),
        (Reason::Clock, None),
        "{ts}: {r}"
    );
}

fn minute_of(ts: &str) -> i64 {
    let e = at(ts).unwrap_or_else(|r| panic!("{ts}: {r}"));
    e.minute
}

#[test]
fn timestamps_are_rfc_3339_date_times_by_the_abnf_and_nothing_looser() {
    let eight = Utc
        .with_ymd_and_hms(2026, 11, 2, 8, 0, 0)
        .unwrap()
        .timestamp()
        / 60;
    // Given a valid message, when its timestamp spells 08:00 UTC in any way the ABNF allows,
    // then it is read as that minute.
    for ts in [
        "2026-11-02T08:00:00Z",
        "2026-11-02t08:00:00Z",
        "2026-11-02T08:00:00z",
        "2026-11-02t08:00:00.000z",
        "2026-11-02T08:00:59.999999999999Z",
        "2026-11-02T13:30:00+05:30",
        "2026-11-02T13:30:00.0+05:30",
        "2026-11-02T03:00:00-05:00",
        "2026-11-02T08:00:00-00:00",
    ] {
        assert_eq!(minute_of(ts), eight, "{ts}");
    }
    // When it is looser than the ABNF, then it is a clock error, as a time that cannot be read.
    for ts in [
        "2026-11-02 08:00:00Z",
        "2026-11-02 08:00:00.000Z",
        "2026-11-02T07:59:60Z",
        "2026-11-02T08:00:00.Z",
        "2026-02-30T08:00:00Z",
        "2026-02-29T08:00:00Z",
        "2026-11-31T08:00:00Z",
        "2026-11-02T24:00:00Z",
        "2026-11-02T08:00:00",
        "2026-11-02T08:00:00+0530",
        "2026-11-02T08:00:00+05:30:00",
        "2026-11-02",
        "1762070400",
    ] {
        assert_clock(ts);
    }
    // A leap day that exists is a day like any other.
    let mut v = envelope("task_received", json!({"taskIdHash": TASK}));
    v["timestamp"] = json!("2024-02-29T12:00:00Z");
    assert!(check("truebit.tasks.received", &v).is_ok());
}

#[test]
fn the_five_minute_bound_is_exact_to_the_last_fraction_digit() {
    // stored() is 08:03; 08:08 is the last instant allowed, however it is written.
    assert!(at("2026-11-02T08:08:00Z").is_ok());
    assert!(at("2026-11-02T08:08:00.000000000000Z").is_ok());
    assert!(at("2026-11-02T13:38:00+05:30").is_ok());
    assert_clock("2026-11-02T08:08:00.000000001Z");
    assert_clock("2026-11-02T08:08:00.0000000000001Z");
    assert_clock("2026-11-02T13:38:00.1+05:30");
    // Before 2020 is refused whatever the offset says the local date was.
    assert_clock("2020-01-01T00:59:59+01:00");
    assert!(at("2020-01-01T01:00:00+01:00").is_ok());
}

#[test]
fn event_time_is_floored_to_the_minute() {
    let mut v = envelope("heartbeat", json!({}));
    v["timestamp"] = json!("2026-11-02T08:01:59.999Z");
    let e = check("truebit.heartbeat", &v).unwrap();
    assert_eq!(
        e.minute,
        Utc.with_ymd_and_hms(2026, 11, 2, 8, 1, 0)
            .unwrap()
            .timestamp()
            / 60
    );
}

proptest! {
    // Whatever arrives, the answer is an event or a reason: never a panic.
    #[test]
    fn validation_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..300), subject in 0usize..8) {
        let subjects = ["truebit.tasks.received", "truebit.tasks.completed", "truebit.heartbeat",
            "truebit.invoices.created", "truebit.nodes.joined", "truebit.nodes.left", "truebit.admin.x", "other"];
        let _ = validate(subjects[subject], &payload, stored());
    }

    #[test]
    fn mutated_fixture_values_never_panic(field in "[a-zA-Z]{1,20}", value in prop_oneof![
        Just(json!(null)), any::<bool>().prop_map(|b| json!(b)), any::<i64>().prop_map(|n| json!(n)),
        ".{0,80}".prop_map(|s| json!(s)), Just(json!([])), Just(json!({}))]) {
        for ty in ["task_received", "task_completed", "heartbeat", "invoice_created", "node_joined"] {
            let mut v = envelope(ty, json!({"taskIdHash": TASK, "invoiceIdHash": TASK}));
            v["data"][field.clone()] = value.clone();
            let subject = match ty { "task_received" => "truebit.tasks.received", "task_completed" => "truebit.tasks.completed",
                "heartbeat" => "truebit.heartbeat", "invoice_created" => "truebit.invoices.created", _ => "truebit.nodes.joined" };
            let _ = check(subject, &v);
        }
    }
}
