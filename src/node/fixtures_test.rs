//! The agent's derivation against `tests/fixtures/runner-node/`: what `expected.json` says a
//! correct agent derives, and nothing raw in any byte it would send.

use super::eventdb::EventDb;
use super::logs::Logs;
use super::runner::{classify, Entries};
use super::state::Batch;
use super::tracker::Tracker;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use truebit_streams::anonymize::{self, Salt};
use truebit_streams::{Event, EventKind};

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/runner-node")
}

/// The three samples, under the names a runner gives them, in a folder of the test's own.
fn copied() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("eventDB-sample.json", "node-eventDB.json"),
        ("worker-runner-node.log", "worker-runner-node.log"),
        ("worker-runner-node.1.log.gz", "worker-runner-node.1.log.gz"),
    ] {
        std::fs::copy(fixtures().join(from), dir.path().join(to)).unwrap();
    }
    dir
}

/// Every event the agent derives from the samples, after the grace period.
fn derive(salt: &Salt) -> Vec<Event> {
    let dir = copied();
    let mut tracker = Tracker::default();
    let mut logs = Logs::new(dir.path().into(), BTreeMap::new(), HashSet::new());
    let mut batch = Batch::default();
    let now = 1_900_000_000;
    logs.read_gz_once(
        &mut tracker,
        now,
        &mut batch,
        usize::MAX,
        &mut |_, _| Ok(()),
    )
    .unwrap();
    logs.poll(&mut tracker, now, &mut batch).unwrap();
    logs.poll(&mut tracker, now, &mut batch).unwrap();
    let mut seen = HashSet::new();
    EventDb::new(dir.path().into())
        .poll(&mut |r| {
            if seen.insert(r.key()) {
                tracker.record(&r, now);
            }
            Ok(())
        })
        .unwrap();
    let mut events: Vec<Event> = tracker
        .ready(now, 60, None, "node-a", salt)
        .into_iter()
        .map(|r| r.event)
        .collect();
    assert!(
        events.iter().all(|e| !matches!(e.kind, EventKind::TaskCompleted { .. })
            || !matches!(&e.kind, EventKind::TaskCompleted { outcome, .. } if outcome.success.is_none())),
        "before the grace period, no outcome-only completion"
    );
    events.extend(
        tracker
            .ready(now + 60, 60, None, "node-a", salt)
            .into_iter()
            .map(|r| r.event),
    );
    assert!(
        tracker
            .ready(now + 600, 60, None, "node-a", salt)
            .is_empty(),
        "each event once"
    );
    events
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

#[test]
fn log_entries_are_counted_by_kind_as_expected() {
    let expected = expected();
    for (name, text) in [
        (
            "worker-runner-node.log",
            std::fs::read_to_string(fixtures().join("worker-runner-node.log")).unwrap(),
        ),
        ("worker-runner-node.1.log.gz", {
            use std::io::Read as _;
            let mut s = String::new();
            flate2::read::GzDecoder::new(
                std::fs::File::open(fixtures().join("worker-runner-node.1.log.gz")).unwrap(),
            )
            .read_to_string(&mut s)
            .unwrap();
            s
        }),
    ] {
        let mut entries = Entries::default();
        let mut all: Vec<_> = text.lines().filter_map(|l| entries.push(l)).collect();
        all.extend(entries.finish());
        let mut by_kind = BTreeMap::<String, u64>::new();
        for e in &all {
            *by_kind.entry(classify(e).name().into()).or_default() += 1;
        }
        let want = &expected["logEntries"][name];
        assert_eq!(
            all.len() as u64,
            want["entries"].as_u64().unwrap(),
            "{name}"
        );
        let want: BTreeMap<String, u64> = serde_json::from_value(want["byKind"].clone()).unwrap();
        assert_eq!(by_kind, want, "{name}");
    }
}

#[test]
fn the_samples_give_the_expected_events() {
    let salt = Salt::new("federation-test-salt").unwrap();
    let events = derive(&salt);
    let expected = expected();
    let secs = |v: &Value| super::runner::time(Some(v)).unwrap();
    let tasks = expected["tasks"].as_array().unwrap();
    for t in tasks {
        let exec = t["executionId"].as_str().unwrap();
        let hash = salt.task(exec);
        let received: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::TaskReceived {
                    task,
                    chain_id,
                    task_type,
                } if *task == hash => Some((e.minute, chain_id.clone(), task_type.clone())),
                _ => None,
            })
            .collect();
        let task_id = t["taskId"].as_str().unwrap();
        assert_eq!(
            received,
            [(
                anonymize::floor_5min(secs(&t["receivedAt"])),
                t["chainId"].as_str().map(str::to_string),
                Some(task_id[..2].to_string()),
            )],
            "{exec}"
        );
        let completed: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::TaskCompleted { task, outcome } if *task == hash => Some(outcome),
                _ => None,
            })
            .collect();
        if t["completed"] == true {
            assert_eq!(completed.len(), 1, "{exec}");
            let o = completed[0];
            assert_eq!(o.success, t["success"].as_bool(), "{exec}");
            assert_eq!(o.status.as_deref(), t["status"].as_str(), "{exec}");
            assert_eq!(
                o.execution_time.map(|b| b.label()),
                t["executionTimeBucket"].as_str(),
                "{exec}"
            );
            assert_eq!(
                o.gas_used.map(|b| b.label()),
                t["gasUsedBucket"].as_str(),
                "{exec}"
            );
            assert_eq!(o.cached, t["cached"].as_bool(), "{exec}");
        } else {
            assert!(completed.is_empty(), "{exec} is still running");
        }
    }
    let received = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TaskReceived { .. }))
        .count();
    assert_eq!(received, tasks.len(), "one task_received per execution");
    let invoices = expected["invoices"].as_array().unwrap();
    for i in invoices {
        let id = i["invoiceId"].as_str().unwrap();
        let found: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::InvoiceCreated(inv) if inv.invoice == salt.invoice(id) => Some(inv),
                _ => None,
            })
            .collect();
        assert_eq!(found.len(), 1, "{id}");
        let inv = found[0];
        assert_eq!(
            inv.task,
            Some(salt.task(i["executionId"].as_str().unwrap())),
            "{id} links to its execution"
        );
        assert_eq!(
            inv.steps_computed.map(|b| b.label()),
            i["stepsComputedBucket"].as_str()
        );
        assert_eq!(
            inv.memory_used.map(|b| b.label()),
            i["memoryUsedBucket"].as_str()
        );
        assert_eq!(inv.operation.as_deref(), i["operations"][0].as_str());
    }
    let invoice_events = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::InvoiceCreated(_)))
        .count();
    assert_eq!(invoice_events, invoices.len());
}

/// Every identifier, address, block datum, exact time and exact figure in the samples.
pub fn raw_values() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                if s.len() >= 8 && !s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    out.push(s.clone());
                }
                if let Ok(inner) = serde_json::from_str::<Value>(s) {
                    if inner.is_object() {
                        walk(&inner, out);
                    }
                }
            }
            Value::Number(n) if n.to_string().trim_start_matches('-').len() >= 6 => {
                out.push(n.to_string())
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            Value::Object(o) => o.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let db: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("eventDB-sample.json")).unwrap())
            .unwrap();
    let mut out = Vec::new();
    walk(&db, &mut out);
    for t in expected()["tasks"].as_array().unwrap() {
        for k in ["elapsedNs", "steps", "peakMemoryBytes"] {
            if let Some(n) = t[k].as_u64() {
                out.push(n.to_string());
            }
        }
    }
    out.push("0x4159892b42de4d958e4c1ce1e0e59988a8d23d53".into());
    out.sort();
    out.dedup();
    out
}

#[test]
fn nothing_raw_is_in_any_byte_the_agent_would_send() {
    let salt = Salt::new("federation-test-salt").unwrap();
    let raw = raw_values();
    assert!(raw.len() > 100, "{} raw values", raw.len());
    for event in derive(&salt) {
        let sent = format!(
            "{}\n{}\n{}",
            event.subject(),
            anonymize::msg_id(&event),
            String::from_utf8(event.payload()).unwrap()
        );
        for r in &raw {
            assert!(!sent.contains(r.as_str()), "{r} leaks in {sent}");
        }
    }
}
