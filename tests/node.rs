//! The node agent (contract §10) against a real nats-server and a real `serve`: two agents with
//! one salt deduplicate, nothing is lost or doubled across an outage and a restart, and a node
//! sees the network's numbers at once, then `stale` when the aggregator stops.

mod common;

use async_nats::jetstream;
use common::{Served, PATIENCE};
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use truebit_federation::{node, Error, NodeConfig};

const SALT: &str = "a-network-salt-for-tests";

/// An agent running in this process, stopped as SIGTERM would stop it.
struct Agent {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), Error>>,
}

impl Agent {
    fn start(config: NodeConfig) -> Agent {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(node(config, async move {
            let _ = rx.await;
        }));
        Agent {
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the agent stops")
            .unwrap()
            .unwrap();
    }
}

fn config(url: &str, state: &Path, eventdb: &Path, node_id: &str) -> NodeConfig {
    let mut c = NodeConfig::new(url, state);
    c.eventdb = Some(eventdb.to_path_buf());
    c.salt = Some(SALT.into());
    c.node_id = Some(node_id.into());
    c.http_addr = None;
    c.grace = Duration::from_secs(1);
    c.poll_interval = Duration::from_millis(100);
    c.publish_interval = Duration::from_millis(200);
    c
}

/// An EventDB in the runner's form, timed now: executions `range`, each with an outcome, and
/// an invoice for every even one. Written to a temporary name and renamed, as a runner would.
fn write_eventdb(path: &Path, range: std::ops::Range<u32>) {
    let now = chrono::Utc::now().timestamp_millis();
    let mut records = Vec::new();
    for i in range {
        let exec = format!("00000000-0000-4000-8000-{i:012}");
        records.push(
            json!({"messageId": format!("m{i}"), "payload": {"type": "task_created",
            "executionId": exec, "timestamp": now,
            "message": {"taskId": format!("rs_{i:064}"), "chainId": "43114",
                        "blockHash": format!("0x{i:064x}")}}}),
        );
        records.push(json!({"type": "computed_outcome", "executionId": exec}));
        if i % 2 == 0 {
            records.push(json!({"type": "invoice", "executionId": exec, "invoiceId": format!("{}", 7_000_000 + i),
                "taskCreated_timeStamp": now,
                "lineItem": [{"operation": "pay", "total_steps_computed": 5_000_000, "peak_memory_used": 1000}]}));
        }
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(&json!({"records": records})).unwrap(),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits for a published snapshot whose data satisfies `ok`.
async fn wait_snapshot(client: &async_nats::Client, ok: impl Fn(&Value) -> bool) -> Value {
    let mut sub = client.subscribe("truebit.stats.aggregated").await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last = Value::Null;
    loop {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await else {
            panic!("no snapshot as wanted; the last: {last}");
        };
        last = serde_json::from_slice(&msg.payload).unwrap();
        if ok(&last["data"]) {
            return last;
        }
    }
}

/// Messages stored per subject in TRUEBIT_EVENTS.
async fn stored(js: &jetstream::Context, subject: &str) -> u64 {
    let stream = js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    let info = stream
        .info_with_subjects(subject)
        .await
        .unwrap()
        .next()
        .await;
    info.map(|r| r.unwrap().1 as u64).unwrap_or(0)
}

fn dirs() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let eventdb = dir.path().join("node-eventDB.json");
    (dir, eventdb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_one_salt_report_one_task_and_link_every_invoice() {
    let mut served = Served::start().await;
    let (a, a_db) = dirs();
    let (b, b_db) = dirs();
    write_eventdb(&a_db, 0..6);
    write_eventdb(&b_db, 3..9);
    let mut wire = served.client.subscribe("truebit.>").await.unwrap();
    let agent_a = Agent::start(config(
        &served.server.url(),
        &a.path().join("state"),
        &a_db,
        "node-a",
    ));
    let agent_b = Agent::start(config(
        &served.server.url(),
        &b.path().join("state"),
        &b_db,
        "node-b",
    ));
    // 9 distinct executions, 3 of them shared; 5 invoices (0, 2, 4, 6, 8), 4 reported twice.
    let snap = wait_snapshot(&served.client, |d| {
        d["totalTasks"] == 9 && d["totalInvoices"] == 5 && d["totalNodes"] == 2
    })
    .await;
    assert_eq!(snap["data"]["chainDistribution"]["43114"], 9);
    assert_eq!(snap["data"]["taskTypeDistribution"]["rs"], 9);
    assert_eq!(snap["data"]["stepsComputedDistribution"]["1M-10M"], 5);
    agent_a.stop().await;
    agent_b.stop().await;
    served.stop().await.unwrap();
    // Every invoice linked: its taskIdHash is a received task's. And nothing raw on the wire.
    let (mut tasks, mut links) = (std::collections::HashSet::new(), Vec::new());
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), wire.next()).await {
        let text = String::from_utf8_lossy(&msg.payload).into_owned();
        let headers = format!("{:?}", msg.headers);
        for raw in ["00000000-0000-4000-8000", "rs_0000", "0x0000", "7000000"] {
            assert!(
                !text.contains(raw) && !headers.contains(raw),
                "{raw} in {text} {headers}"
            );
        }
        if msg.subject.as_str() == "truebit.stats.aggregated" {
            continue;
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        match msg.subject.as_str() {
            "truebit.tasks.received" => {
                tasks.insert(v["data"]["taskIdHash"].as_str().unwrap().to_string());
            }
            "truebit.invoices.created" => {
                links.push(v["data"]["taskIdHash"].as_str().unwrap().to_string());
            }
            _ => {}
        }
    }
    assert_eq!(tasks.len(), 9);
    assert_eq!(links.len(), 6);
    assert!(
        links.iter().all(|l| tasks.contains(l)),
        "every invoice links to a task"
    );
    assert_eq!(
        stored(&served.js, "truebit.tasks.received").await,
        12,
        "6 + 6 reports"
    );
    assert_eq!(
        stored(&served.js, "truebit.invoices.created").await,
        6,
        "3 + 3 reports"
    );
    assert_eq!(stored(&served.js, "truebit.nodes.left").await, 2);
}
