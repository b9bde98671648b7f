//! The node agent (contract §10) against a real nats-server and a real `serve`: two agents with
//! one salt deduplicate, nothing is lost or doubled across an outage and a restart, and a node
//! sees the network's numbers at once, then `stale` when the aggregator stops.

use crate::common;

use crate::common::process::BIN;
use crate::common::{Served, PATIENCE};
use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use truebit_federation::{node, Error, NodeConfig};
use truebit_testkit::{signal, NatsServer, Reaped, SIGCONT, SIGKILL, SIGSTOP, SIGTERM};

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

// ---- helpers of the live tests below --------------------------------------------------------

/// A debug log in the runner's format, timed now: for each execution of `range`, its received
/// line, its stdout metering line and its completion line (`open` leaves the last one without
/// its stdout and completion, as a runner caught mid-task). Appended to `path`.
fn append_log(path: &Path, range: std::ops::Range<u32>, open: bool) {
    use std::io::Write as _;
    let now = chrono::Utc::now();
    let ts = now.format("%Y-%m-%d %H:%M:%S");
    let iso = now.format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let label =
        "info: @truebit/worker-runner-node-0x4159892b42de4d958e4c1ce1e0e59988a8d23d53:2.4.1";
    let mut text = String::new();
    let last = range.end.saturating_sub(1);
    for i in range {
        let exec = format!("11111111-0000-4000-8000-{i:012}");
        let payload = json!({"messageId": format!("lm{i}"), "payload": {"type": "task_created",
            "executionId": exec, "timestamp": iso.to_string(),
            "message": {"taskId": format!("py_{i:064}"), "chainId": "43113"}}});
        text += &format!(
            "{ts} {label} [TaskCreatedSubscriber] Message received from task_created: {payload}\n"
        );
        if open && i == last {
            break;
        }
        text += &close_log_entry(i);
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The stdout and completion lines of execution `i` of [`append_log`].
fn close_log_entry(i: u32) -> String {
    let ts = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S");
    let label = "@truebit/worker-runner-node-0x4159892b42de4d958e4c1ce1e0e59988a8d23d53:2.4.1";
    let exec = format!("11111111-0000-4000-8000-{i:012}");
    let stdout = json!({"elapsed": "1843522917", "wasi": {"exitCode": 0},
        "metering": {"last": {"steps": 6_214_530}, "peak": {"memory": 23_068_672}},
        "execution": {"prepare": {"cached": false}}});
    format!(
        "{ts} debug: {label} Command execution stdout: {stdout}\n{ts} info: {label} Execution {exec} completed\n"
    )
}

/// Every message of TRUEBIT_EVENTS: subject, `Nats-Msg-Id`, body.
async fn stream_messages(js: &jetstream::Context) -> Vec<(String, String, Value)> {
    let mut stream = js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        out.push((
            m.subject.to_string(),
            id,
            serde_json::from_slice(&m.payload).unwrap(),
        ));
    }
    out
}

/// Fails when any message of the stream is there twice: by `Nats-Msg-Id`, and for task and
/// invoice events by content (node, type, hash). Returns the count per subject.
async fn assert_each_once(js: &jetstream::Context) -> BTreeMap<String, u64> {
    let mut ids = HashMap::new();
    let mut contents = HashMap::new();
    let mut per_subject = BTreeMap::new();
    for (subject, id, body) in stream_messages(js).await {
        *per_subject.entry(subject.clone()).or_default() += 1;
        *ids.entry(id).or_insert(0) += 1;
        let hash = body["data"]["invoiceIdHash"]
            .as_str()
            .or(body["data"]["taskIdHash"].as_str());
        if let Some(hash) = hash {
            *contents
                .entry((body["nodeId"].to_string(), subject, hash.to_string()))
                .or_insert(0) += 1;
        }
    }
    // Operator events and the tests' own messages carry no Msg-Id.
    let twice: Vec<_> = ids
        .iter()
        .filter(|(id, n)| **n > 1 && !id.is_empty())
        .collect();
    assert!(twice.is_empty(), "Msg-Ids stored twice: {twice:?}");
    let twice: Vec<_> = contents.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events stored twice: {twice:?}");
    per_subject
}

/// Waits until TRUEBIT_EVENTS holds at least `want` messages on each subject given.
async fn wait_stored(js: &jetstream::Context, want: &[(&str, u64)]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut got = Vec::new();
        for (subject, n) in want {
            got.push((subject, stored(js, subject).await, *n));
        }
        if got.iter().all(|(_, have, n)| have >= n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not stored in time (subject, have, want): {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent as an operator runs it: the binary, its log in `log`.
fn agent_command(url: &str, state: &Path, node_id: &str, log: &Path) -> Command {
    let mut c = Command::new(BIN);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    c.arg("node")
        .env("NATS_URL", url)
        .env("FEDERATION_SALT", SALT)
        .env("STATE_DIR", state)
        .env("NODE_ID", node_id)
        .env("NODE_HTTP_ADDR", "off")
        .env("NODE_GRACE", "0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    c
}

/// Waits for a child to exit; its status code (`None` when killed by a signal).
async fn exited(child: &mut Reaped) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(tokio::time::Instant::now() < deadline, "the agent exits");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free local address for an agent's HTTP endpoint.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET /api/federation/network-stats`: the status line must be 200; returns the body, or
/// `None` while nothing listens yet.
async fn network_stats(addr: SocketAddr) -> Option<Value> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    conn.write_all(
        b"GET /api/federation/network-stats HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Some(serde_json::from_str(body).unwrap())
}

/// Asks the endpoint until its answer satisfies `ok`; returns that answer.
async fn wait_network_stats(addr: SocketAddr, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last = None;
    loop {
        if let Some(v) = network_stats(addr).await {
            if ok(&v) {
                return v;
            }
            last = Some(v);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the endpoint never answered as wanted; the last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Messages on the wire (every publish, duplicates JetStream dropped included), by Msg-Id.
async fn wire_ids(sub: &mut async_nats::Subscriber) -> HashMap<String, u32> {
    let mut ids = HashMap::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        let id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}

// ---- the live tests of issue 13 -------------------------------------------------------------

/// The runner's files half written, the agent stopped by `sig` (the binary, as systemd stops
/// it), the files grow, the agent starts again: every event is stored once and the aggregator
/// counts exactly.
async fn restarted_mid_file(sig: i32) {
    let mut served = Served::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (state, log) = (dir.path().join("state"), dir.path().join("agent.log"));
    let eventdb = dir.path().join("node-eventDB.json");
    let logs = dir.path().join("debug");
    std::fs::create_dir(&logs).unwrap();
    let runner_log = logs.join("worker-runner-node.log");
    let mut wire = served.client.subscribe("truebit.*.*").await.unwrap();
    served.client.flush().await.unwrap();

    // Half written: EventDB executions 0..4; the log's 100..104, the last one still running.
    write_eventdb(&eventdb, 0..4);
    append_log(&runner_log, 100..104, true);
    let start = || {
        let mut c = agent_command(&served.server.url(), &state, "node-restart", &log);
        c.env("EVENTDB", &eventdb).env("RUNNER_LOGS", &logs);
        Reaped(c.spawn().unwrap())
    };
    let mut agent = start();
    wait_stored(
        &served.js,
        &[
            ("truebit.tasks.received", 8),
            ("truebit.tasks.completed", 7),
            ("truebit.invoices.created", 2),
        ],
    )
    .await;
    signal(&agent, sig);
    let code = exited(&mut agent).await;
    if sig == SIGTERM {
        assert_eq!(code, Some(0), "SIGTERM: the agent stops cleanly");
    }

    // The runner went on: 103 completes, 104..108 come; the EventDB is rewritten with 0..8.
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&runner_log)
            .unwrap();
        f.write_all(close_log_entry(103).as_bytes()).unwrap();
    }
    append_log(&runner_log, 104..108, false);
    write_eventdb(&eventdb, 0..8);
    let mut agent = start();
    wait_stored(
        &served.js,
        &[
            ("truebit.tasks.received", 16),
            ("truebit.tasks.completed", 16),
            ("truebit.invoices.created", 4),
        ],
    )
    .await;
    // The log's 8 completed with exit code 0; the EventDB's 8 have an outcome record only,
    // which says nothing of success (contract §10), so they stay `received` in the fold.
    let snap = wait_snapshot(&served.client, |d| {
        d["totalTasks"] == 16 && d["totalInvoices"] == 4
    })
    .await;
    assert_eq!(snap["data"]["completedTasks"], 8, "{snap}");
    assert_eq!(snap["data"]["totalNodes"], 1, "{snap}");
    signal(&agent, SIGTERM);
    assert_eq!(exited(&mut agent).await, Some(0));

    served.stop().await.unwrap();
    let per_subject = assert_each_once(&served.js).await;
    assert_eq!(per_subject["truebit.tasks.received"], 16, "{per_subject:?}");
    assert_eq!(
        per_subject["truebit.tasks.completed"], 16,
        "{per_subject:?}"
    );
    assert_eq!(
        per_subject["truebit.invoices.created"], 4,
        "{per_subject:?}"
    );
    // `node_left` on each SIGTERM, under the contract's Msg-Id `<nodeId>:node_left:<n>`: every
    // one sent is stored.
    let wire = wire_ids(&mut wire).await;
    let lefts: Vec<_> = wire
        .keys()
        .filter(|id| id.contains(":node_left:"))
        .collect();
    assert_eq!(
        lefts.len() as u64,
        per_subject["truebit.nodes.left"],
        "{wire:?}"
    );
    // And not only JetStream's duplicate window kept the stream clean: after a clean stop the
    // agent sent no task or invoice event twice (a SIGKILL may resend what was acknowledged
    // but not yet marked sent, which the Msg-Id covers).
    if sig == SIGTERM {
        let sent_twice: Vec<_> = wire
            .iter()
            .filter(|(id, n)| **n > 1 && !id.is_empty() && !id.contains(":node_"))
            .collect();
        assert!(sent_twice.is_empty(), "sent twice: {sent_twice:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_stopped_by_sigterm_mid_file_publishes_nothing_twice() {
    restarted_mid_file(SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_file_publishes_nothing_twice() {
    restarted_mid_file(SIGKILL).await;
}

/// NATS away for 30 s while the runner keeps writing: the figure, kept because it is
/// longer than every timeout on the way (the agent's 5 s connect timeout, the client's ping
/// interval, the publisher's backoff) and than the 10 s a lease takes over, so the outbox and
/// the reconnects are really exercised, not just a blip between two polls. It is the suite's
/// largest item; the other tests run beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_without_nats_lose_nothing_and_double_nothing() {
    let mut served = Served::start().await;
    let (dir, eventdb) = dirs();
    write_eventdb(&eventdb, 0..4);
    let agent = Agent::start(config(
        &served.server.url(),
        &dir.path().join("state"),
        &eventdb,
        "node-outage",
    ));
    wait_stored(
        &served.js,
        &[
            ("truebit.tasks.received", 4),
            ("truebit.tasks.completed", 4),
        ],
    )
    .await;
    served.server.stop();
    let back = tokio::time::Instant::now() + Duration::from_secs(30);
    // The runner keeps producing: 4 more executions every 8 s, all while NATS is away.
    for step in 2..=4 {
        write_eventdb(&eventdb, 0..4 * step);
        tokio::time::sleep(Duration::from_secs(8)).await;
    }
    tokio::time::sleep_until(back).await;
    served.server.start_again();
    wait_stored(
        &served.js,
        &[
            ("truebit.tasks.received", 16),
            ("truebit.tasks.completed", 16),
            ("truebit.invoices.created", 8),
        ],
    )
    .await;
    wait_snapshot(&served.client, |d| {
        d["totalTasks"] == 16 && d["totalInvoices"] == 8
    })
    .await;
    agent.stop().await;
    served.stop().await.unwrap();
    let per_subject = assert_each_once(&served.js).await;
    assert_eq!(per_subject["truebit.tasks.received"], 16, "{per_subject:?}");
    assert_eq!(
        per_subject["truebit.tasks.completed"], 16,
        "{per_subject:?}"
    );
    assert_eq!(
        per_subject["truebit.invoices.created"], 8,
        "{per_subject:?}"
    );
}

/// A task_received as today's monitor sends it.
fn task_received(n: u64) -> (String, Vec<u8>) {
    common::msg(
        "truebit.tasks.received",
        json!({"version": "1.0", "type": "task_received",
            "timestamp": chrono::Utc::now().to_rfc3339(), "nodeId": "node-elsewhere",
            "data": {"taskIdHash": common::hash(n), "chainId": "137", "taskType": "rs"}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_agent_answers_the_kv_snapshot_at_once() {
    // An aggregator publishes its snapshot of 5 tasks, then stops.
    let mut served = Served::start().await;
    let seq = served
        .publish(&(0..5).map(task_received).collect::<Vec<_>>())
        .await;
    let snap = served.wait_folded(seq).await;
    assert_eq!(snap["data"]["totalTasks"], 5);
    served.stop().await.unwrap();
    let latest = served.js.get_key_value("truebit-stats").await.unwrap();
    let latest: Value =
        serde_json::from_slice(&latest.get("latest").await.unwrap().unwrap()).unwrap();
    assert_eq!(latest["data"]["totalTasks"], 5);

    // Nothing publishes any more: what the agent shows can only come from KV `latest`.
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut c = NodeConfig::new(&served.server.url(), dir.path().join("state"));
    c.salt = Some(SALT.into());
    c.http_addr = Some(addr);
    let agent = Agent::start(c);
    let shown = wait_network_stats(addr, |v| v["status"] != "awaiting_data").await;
    assert_eq!(shown["status"], "connected", "{shown}");
    for (k, v) in latest["data"].as_object().unwrap() {
        assert_eq!(&shown[k], v, "{k}: {shown}");
    }
    assert!(shown["lastUpdated"].is_string(), "{shown}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_says_awaiting_then_connected_then_stale() {
    // Before any aggregator ran: zeros, {} and no lastUpdated.
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut c = NodeConfig::new(&server.url(), dir.path().join("state"));
    c.salt = Some(SALT.into());
    c.http_addr = Some(addr);
    c.publish_interval = Duration::from_millis(200);
    let agent = Agent::start(c);
    let before = wait_network_stats(addr, |_| true).await;
    assert_eq!(before["status"], "awaiting_data", "{before}");
    assert!(before["lastUpdated"].is_null(), "{before}");
    for (k, v) in before.as_object().unwrap() {
        if k.ends_with("Distribution") {
            assert_eq!(v, &json!({}), "{k}");
        } else if k != "status" && k != "lastUpdated" {
            assert_eq!(v, &json!(0), "{k}");
        }
    }
    assert!(before.get("totalTasks").is_some() && before.get("chainDistribution").is_some());

    // An aggregator publishing every 200 ms, as the agent was told: `connected` throughout.
    let mut served = Served::start_on(server, |_| {}).await;
    let seq = served
        .publish(&(0..3).map(task_received).collect::<Vec<_>>())
        .await;
    served.wait_folded(seq).await;
    let shown = wait_network_stats(addr, |v| v["totalTasks"] == 3).await;
    for _ in 0..30 {
        let now = network_stats(addr).await.unwrap();
        assert_eq!(now["status"], "connected", "{now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The aggregator stops: once its last snapshot's timestamp is two intervals and a minute
    // old, the same numbers, `stale`.
    served.stop().await.unwrap();
    let stale = wait_network_stats(addr, |v| v["status"] == "stale").await;
    assert_eq!(stale["totalTasks"], 3, "{stale}");
    assert_eq!(stale["chainDistribution"], shown["chainDistribution"]);
    assert!(stale["lastUpdated"].is_string(), "{stale}");
    agent.stop().await;
}

/// Runs a `keys` command of the binary that must succeed; its first line of output.
fn keys(url: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.env("NATS_URL", url).stdin(Stdio::null());
    common::process::keys(cmd, args)
}

/// `serve` folding with a root admin key that `keys new-admin` wrote to `seed`.
async fn aggregator_with_root_key(seed: &str) -> Served {
    let admin = keys("nats://127.0.0.1:1", &["new-admin", "--out", seed]);
    let admin_key = truebit_streams::PublicKey::parse(&admin).unwrap();
    Served::start_with(move |c| c.admin_key = Some(admin_key.clone())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_agent_is_admitted_by_an_enforcing_aggregator() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let served = aggregator_with_root_key(&path("admin.seed")).await;
    let url = served.server.url();
    // The node makes its key; the operator registers its public half, bound to its nodeId.
    let node_key = keys(&url, &["new", "--out", &path("node.seed")]);
    let admin_seed = ["--admin-seed", &path("admin.seed")];
    keys(
        &url,
        &[
            &["issue", "--name", "node 1", "--node-id", "node-signed"][..],
            &["--public-key", &node_key, "--rate-limit", "1000"],
            &admin_seed,
        ]
        .concat(),
    );
    keys(&url, &[&["mode", "enforce"][..], &admin_seed].concat());
    // Enforcement is on: an unsigned message is refused.
    served.publish(&[task_received(1)]).await;

    let eventdb = dir.path().join("node-eventDB.json");
    write_eventdb(&eventdb, 0..4);
    let log = dir.path().join("agent.log");
    let mut c = agent_command(&url, &dir.path().join("state"), "node-signed", &log);
    c.env("EVENTDB", &eventdb)
        .env("NODE_KEY_SEED", path("node.seed"));
    let mut agent = Reaped(c.spawn().unwrap());
    let snap = wait_snapshot(&served.client, |d| {
        d["totalTasks"] == 4 && d["totalInvoices"] == 2 && d["totalNodes"] == 1
    })
    .await;
    signal(&agent, SIGTERM);
    assert_eq!(exited(&mut agent).await, Some(0));
    let seq = served
        .js
        .get_stream("TRUEBIT_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    served.wait_folded(seq).await;
    // Exactly one dead letter, the unsigned control; every one of the agent's events folded.
    let mut dlq = common::wait_for_dead_letters(&served.js, 1, "no dead letter").await;
    assert_eq!(dlq.info().await.unwrap().state.messages, 1);
    let dead = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(dead.subject.as_str(), "truebit.dlq.unauthorized");
    assert!(
        !String::from_utf8_lossy(&dead.payload).contains("node-signed"),
        "the agent's events are admitted"
    );
    assert_eq!(snap["data"]["taskTypeDistribution"]["rs"], 4, "{snap}");
    let per_subject = assert_each_once(&served.js).await;
    assert_eq!(per_subject["truebit.tasks.received"], 5, "{per_subject:?}");

    // A seed file that others can read is refused, with exit 2 and how to fix it.
    let open_seed = dir.path().join("open.seed");
    std::fs::copy(path("node.seed"), &open_seed).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&open_seed, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .args(["node", "--http-addr", "off", "--federation-salt", SALT])
        .arg("--state-dir")
        .arg(dir.path().join("state2"))
        .arg("--key-seed")
        .arg(&open_seed)
        .env("NATS_URL", &url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

/// `node_joined` on every connect and reconnect (§10), with the Msg-Id `<nodeId>:node_joined:<n>`:
/// a rejoin within the stream's 2-minute duplicate window has an id of its own, and is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_says_node_joined_again_after_a_nats_restart() {
    let mut served = Served::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut joins = served
        .client
        .subscribe("truebit.nodes.joined")
        .await
        .unwrap();
    served.client.flush().await.unwrap();
    let agent = Reaped(
        agent_command(
            &served.server.url(),
            &dir.path().join("state"),
            "node-rejoin",
            &dir.path().join("agent.log"),
        )
        .spawn()
        .unwrap(),
    );
    let msg_id = |m: &async_nats::Message| {
        m.headers
            .as_ref()
            .unwrap()
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str()
            .to_string()
    };
    let first = tokio::time::timeout(PATIENCE, joins.next())
        .await
        .expect("node_joined at start")
        .unwrap();
    // The agent is paused while NATS restarts, so that this test listens before it reconnects.
    served.server.stop();
    signal(&agent, SIGSTOP);
    served.server.start_again();
    let observer = async_nats::connect(served.server.url()).await.unwrap();
    let mut rejoins = observer.subscribe("truebit.nodes.joined").await.unwrap();
    observer.flush().await.unwrap();
    signal(&agent, SIGCONT);
    let second = tokio::time::timeout(PATIENCE, rejoins.next())
        .await
        .expect("node_joined again after the reconnect")
        .unwrap();
    let ids = [msg_id(&first), msg_id(&second)];
    assert!(ids[1].starts_with("node-rejoin:node_joined:"), "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    let snap = wait_snapshot(&served.client, |d| d["totalNodes"] == 1).await;
    assert_eq!(snap["data"]["activeNodes"], 0, "a join is not a heartbeat");
    let js = jetstream::new(observer.clone());
    assert_eq!(
        stored(&js, "truebit.nodes.joined").await,
        2,
        "both stored: {ids:?}"
    );
}

// ---- issue 17: hardening ----------------------------------------------------------------------

/// Heartbeats, joins and leaves of `node_id` stored in TRUEBIT_EVENTS, by subject, and how many
/// times each of their Msg-Ids is there.
async fn status_stored(
    js: &jetstream::Context,
    node_id: &str,
) -> (BTreeMap<String, u64>, HashMap<String, u64>) {
    let (mut per_subject, mut ids) = (BTreeMap::new(), HashMap::new());
    for (subject, id, body) in stream_messages(js).await {
        if body["nodeId"] == node_id
            && (subject.starts_with("truebit.nodes.") || subject == "truebit.heartbeat")
        {
            *per_subject.entry(subject).or_insert(0) += 1;
            *ids.entry(id).or_insert(0) += 1;
        }
    }
    (per_subject, ids)
}

/// Every heartbeat, join and leave is stored (contract §10: `<nodeId>:<type>:<n>`), though all
/// of them fall within JetStream's 2-minute duplicate window; and one whose acknowledgement was
/// lost before a crash, sent again at the next start, is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_heartbeat_join_and_leave_is_stored() {
    let served = Served::start().await;
    let (dir, eventdb) = dirs();
    let state_dir = dir.path().join("state");
    let node_id = "node-status";
    let start = || {
        let mut c = config(&served.server.url(), &state_dir, &eventdb, node_id);
        c.heartbeat_interval = Duration::from_millis(300);
        Agent::start(c)
    };
    let mut heartbeats = 0;
    for run in 1..=3 {
        let agent = start();
        heartbeats += 2;
        wait_stored(
            &served.js,
            &[
                ("truebit.nodes.joined", 1),
                ("truebit.heartbeat", heartbeats),
            ],
        )
        .await;
        agent.stop().await;
        let (per_subject, _) = status_stored(&served.js, node_id).await;
        assert_eq!(
            per_subject.get("truebit.nodes.joined"),
            Some(&run),
            "every start's node_joined is stored: {per_subject:?}"
        );
        assert_eq!(
            per_subject.get("truebit.nodes.left"),
            Some(&run),
            "every stop's node_left is stored: {per_subject:?}"
        );
        heartbeats = per_subject["truebit.heartbeat"];
    }

    // A heartbeat that entered the outbox and reached JetStream, whose ack the agent never saw
    // (it crashed): it waits in the outbox and goes again at the next start.
    let (msg_id, subject, payload) = {
        let state = node::state::State::open(&state_dir).unwrap();
        let event = truebit_streams::Event {
            node_id: node_id.into(),
            minute: truebit_streams::anonymize::floor_5min(chrono::Utc::now().timestamp()),
            kind: truebit_streams::EventKind::HeartbeatReported(Default::default()),
        };
        let prefix = format!("{node_id}:{}", event.type_name());
        state
            .enqueue_numbered(&prefix, event.subject().to_string(), event.payload())
            .unwrap();
        let (_, out) = state.pending(1).unwrap().remove(0);
        (out.msg_id, out.subject, out.payload)
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    served
        .js
        .publish_with_headers(subject, headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let agent = start();
    wait_stored(&served.js, &[("truebit.heartbeat", heartbeats + 3)]).await;
    agent.stop().await;
    let (per_subject, ids) = status_stored(&served.js, node_id).await;
    assert_eq!(ids.get(&msg_id), Some(&1), "re-sent, stored once: {ids:?}");
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    assert_eq!(per_subject["truebit.nodes.joined"], 4, "{per_subject:?}");
    assert_eq!(per_subject["truebit.nodes.left"], 4, "{per_subject:?}");
    assert!(
        ids.keys()
            .all(|id| id.starts_with(&format!("{node_id}:node_"))
                || id.starts_with(&format!("{node_id}:heartbeat"))),
        "{ids:?}"
    );
}

/// A snapshot as the aggregator publishes it, stamped `minutes_ago` before this minute.
fn snapshot_body(minutes_ago: i64, total_tasks: u64) -> Vec<u8> {
    let minute = chrono::Utc::now().timestamp() / 60 - minutes_ago;
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp(minute * 60, 0).unwrap();
    serde_json::to_vec(&json!({"version": "1.0", "type": "network_stats",
        "timestamp": at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "data": {"totalTasks": total_tasks}}))
    .unwrap()
}

/// Publishes a snapshot on `truebit.stats.aggregated` with its `Truebit-Last-Seq`.
async fn publish_snapshot(client: &async_nats::Client, last_seq: u64, body: Vec<u8>) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Truebit-Last-Seq", last_seq.to_string().as_str());
    client
        .publish_with_headers("truebit.stats.aggregated", headers, body.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
}

/// A days-old snapshot in KV `latest` (its aggregator stopped long ago) is `stale` at once,
/// though the agent has just read it; a fresh one on the subject is `connected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_days_old_kv_snapshot_read_at_start_is_stale() {
    // An aggregator made the topology, then stopped days ago.
    let mut served = Served::start().await;
    served.stop().await.unwrap();
    let (server, client) = (&served.server, served.client.clone());
    let kv = served.js.get_key_value("truebit-stats").await.unwrap();
    kv.put("latest", snapshot_body(3 * 24 * 60, 5).into())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut c = NodeConfig::new(&server.url(), dir.path().join("state"));
    c.salt = Some(SALT.into());
    c.http_addr = Some(addr);
    let agent = Agent::start(c);
    let shown = wait_network_stats(addr, |v| v["status"] != "awaiting_data").await;
    assert_eq!(shown["totalTasks"], 5, "{shown}");
    assert_eq!(shown["status"], "stale", "{shown}");
    publish_snapshot(&client, 7, snapshot_body(0, 6)).await;
    let shown = wait_network_stats(addr, |v| v["totalTasks"] == 6).await;
    assert_eq!(shown["status"], "connected", "{shown}");
    agent.stop().await;
}

/// Contract §9 Fencing, the subscriber's part: a snapshot whose `Truebit-Last-Seq` is lower
/// than the newest one's, and not later, is a cut-off leader's sent late: ignored. A lower one
/// that is later (a recreated events stream) is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_ignores_a_late_snapshot_of_a_cut_off_leader() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = (free_addr(), dir.path().join("agent.log"));
    let mut c = agent_command(&server.url(), &dir.path().join("state"), "node-fence", &log);
    c.env("NODE_HTTP_ADDR", addr.to_string());
    let mut agent = Reaped(c.spawn().unwrap());
    // A core subscription keeps nothing for a subscriber not there yet: the newest snapshot is
    // published again until the agent shows it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        publish_snapshot(&client, 100, snapshot_body(0, 10)).await;
        if network_stats(addr)
            .await
            .is_some_and(|v| v["totalTasks"] == 10)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent shows no snapshot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cut-off leader's snapshot, behind (seq 50) and no later (this minute).
    publish_snapshot(&client, 50, snapshot_body(0, 5)).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let shown = network_stats(addr).await.unwrap();
        assert_eq!(
            shown["totalTasks"], 10,
            "the late snapshot is shown: {shown}"
        );
        if std::fs::read_to_string(&log)
            .unwrap()
            .contains("ignored a snapshot behind the newest")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never said it ignored the late snapshot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(network_stats(addr).await.unwrap()["totalTasks"], 10);
    // A recreated stream: sequences start again, the minute is later.
    publish_snapshot(&client, 3, snapshot_body(-1, 3)).await;
    wait_network_stats(addr, |v| v["totalTasks"] == 3).await;
    signal(&agent, SIGTERM);
    assert_eq!(exited(&mut agent).await, Some(0));
}

/// Contract §10: a backlog several minutes long at the key's `rateLimit` goes out paced, so an
/// enforcing aggregator refuses none of it: every event folded, no dead letter, and no minute of
/// JetStream's stored time holding more than the limit of the node's messages, its join and
/// leave included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_goes_out_within_the_rate_limit_and_enforce_refuses_none() {
    const LIMIT: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let served = aggregator_with_root_key(&path("admin.seed")).await;
    let url = served.server.url();
    let node_key = keys(&url, &["new", "--out", &path("node.seed")]);
    let admin_seed = ["--admin-seed", &path("admin.seed")];
    keys(
        &url,
        &[
            &["issue", "--name", "paced", "--node-id", "node-paced"][..],
            &[
                "--public-key",
                &node_key,
                "--rate-limit",
                &LIMIT.to_string(),
            ],
            &admin_seed,
        ]
        .concat(),
    );
    keys(&url, &[&["mode", "enforce"][..], &admin_seed].concat());

    // A runner with history: 3 executions and 2 invoices, 8 events, and the join: 9 messages,
    // three minutes at 4 a minute.
    let eventdb = dir.path().join("node-eventDB.json");
    write_eventdb(&eventdb, 0..3);
    let log = dir.path().join("agent.log");
    let mut c = agent_command(&url, &dir.path().join("state"), "node-paced", &log);
    c.env("EVENTDB", &eventdb)
        .env("NODE_KEY_SEED", path("node.seed"))
        .env("NODE_RATE_LIMIT", LIMIT.to_string())
        .env("HEARTBEAT_INTERVAL", "3600");
    let mut agent = Reaped(c.spawn().unwrap());
    let dlq = served.js.get_stream("TRUEBIT_DLQ").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let refused = dlq.clone().info().await.unwrap().state.messages;
        assert_eq!(refused, 0, "a message of the agent was refused");
        let want = [
            ("truebit.tasks.received", 3),
            ("truebit.tasks.completed", 3),
            ("truebit.invoices.created", 2),
        ];
        let mut all = true;
        for (subject, n) in want {
            all &= stored(&served.js, subject).await >= n;
        }
        if all {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog did not go out in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(&agent, SIGTERM);
    assert_eq!(exited(&mut agent).await, Some(0));
    let mut stream = served.js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let snap = served.wait_folded(last).await;
    assert_eq!(snap["data"]["totalTasks"], 3, "{snap}");
    assert_eq!(snap["data"]["totalInvoices"], 2, "{snap}");
    assert_eq!(
        dlq.clone().info().await.unwrap().state.messages,
        0,
        "no dead letter"
    );
    // The node's messages by the minute JetStream stored them in.
    let mut per_minute = BTreeMap::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        let body: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        if body["nodeId"] == "node-paced" {
            *per_minute.entry(m.time.timestamp() / 60).or_insert(0) += 1;
        }
    }
    assert_eq!(
        per_minute.values().sum::<u64>(),
        10,
        "9 and the leave: {per_minute:?}"
    );
    assert!(
        per_minute.values().all(|n| *n <= LIMIT),
        "more than {LIMIT} in a minute: {per_minute:?}"
    );
    assert!(per_minute.len() >= 3, "{per_minute:?}");
}

/// Contract §10 and issue 17: once the agent has read the EventDB and every log to their end,
/// nothing it read waits `--grace` for a better source that a file would have held already:
/// outcome records without a completion line and invoices without a log line go at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_files_held_at_start_waits_for_no_grace() {
    let served = Served::start().await;
    let (dir, eventdb) = dirs();
    let logs = dir.path().join("debug");
    std::fs::create_dir(&logs).unwrap();
    // The log tells of other executions, the last of which is still running.
    append_log(&logs.join("worker-runner-node.log"), 100..103, true);
    // Executions 0..4 have an outcome record only; 0 and 2 an invoice with no log line.
    write_eventdb(&eventdb, 0..4);
    let mut c = config(
        &served.server.url(),
        &dir.path().join("state"),
        &eventdb,
        "node-nograce",
    );
    c.logs = Some(logs);
    c.grace = Duration::from_secs(3600);
    let agent = Agent::start(c);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let want = [
        ("truebit.tasks.received", 7),
        ("truebit.tasks.completed", 6),
        ("truebit.invoices.created", 2),
    ];
    loop {
        let mut got = Vec::new();
        for (subject, n) in want {
            got.push((subject, stored(&served.js, subject).await, n));
        }
        if got.iter().all(|(_, have, n)| have >= n) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still waiting for --grace (subject, have, want): {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await;
    let per_subject = assert_each_once(&served.js).await;
    assert_eq!(per_subject["truebit.tasks.completed"], 6, "{per_subject:?}");
}

/// Contract §10: an agent that can no longer read says why and exits non-zero, for its
/// supervisor to restart it, instead of heartbeating while reading nothing. Here its EventDB
/// never parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_eventdb_never_parses_exits_saying_why() {
    let served = Served::start().await;
    let (dir, eventdb) = dirs();
    std::fs::write(&eventdb, "this is not the runner's EventDB").unwrap();
    let log = dir.path().join("agent.log");
    let mut c = agent_command(
        &served.server.url(),
        &dir.path().join("state"),
        "node-broken",
        &log,
    );
    c.env("EVENTDB", &eventdb)
        .env("NODE_POLL_INTERVAL", "20")
        .env("HEARTBEAT_INTERVAL", "1");
    let mut agent = Reaped(c.spawn().unwrap());
    let code = exited(&mut agent).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("has not parsed for") && text.contains(&eventdb.display().to_string()),
        "{text}"
    );
}
