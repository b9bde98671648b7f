//! The binary as an operator runs it: signals, crashes, exit codes, `stats` beside `serve`.

use crate::common;

use crate::common::process::{command, run, spawn_serve, spawn_serve_with};
use async_nats::jetstream;
use futures::StreamExt;
use std::path::Path;
use truebit_projections::Projections;
use truebit_testkit::{signal, Fleet, NatsServer, SIGKILL, SIGTERM};

async fn publish_fleet(
    js: &jetstream::Context,
    fleet: &Fleet,
    tasks: u64,
) -> (u64, truebit_testkit::Expected) {
    let (messages, expected) = fleet.generate(tasks);
    let mut last = 0;
    for chunk in messages.chunks(5000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for m in chunk {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", m.msg_id.as_str());
            acks.push(
                js.publish_with_headers(m.subject, headers, m.payload.clone().into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            last = ack.await.unwrap().sequence;
        }
    }
    (last, expected)
}

/// Every count the simulated fleet knows, read back from the database.
fn assert_exact(db_path: &Path, fleet: &Fleet, expected: &truebit_testkit::Expected) {
    let db = Projections::open_existing(db_path).unwrap();
    common::assert_fleet_counts(&db, expected);
    // Heartbeats are not idempotent: folding one twice would show here.
    let heartbeats: u64 = (0..fleet.nodes)
        .filter_map(|n| db.node(&fleet.node_id(n)).unwrap())
        .map(|n| n.heartbeat_count)
        .sum();
    assert_eq!(heartbeats, expected.heartbeats);
    assert!(db.rejections().unwrap().is_empty());
}

#[tokio::test]
async fn serve_sigkilled_three_times_catching_up_on_200000_events_ends_exact_and_so_does_a_replay()
{
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("aggregator.redb");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    assert!(run(command(&server.url(), &db).arg("init"))
        .status
        .success());

    let fleet = Fleet::new(200, 42);
    let (last, expected) = publish_fleet(&js, &fleet, 64_000).await;
    assert!(last >= 200_000, "the fleet published {last} events");

    // Watch the aggregator's acks, and kill it at a quarter, a half and three quarters.
    let mut acks = client
        .subscribe("$JS.ACK.TRUEBIT_EVENTS.aggregator.>")
        .await
        .unwrap();
    for quarter in 1..=3 {
        let (mut serve, _log) = spawn_serve(&server.url(), &db);
        loop {
            let ack = tokio::time::timeout(common::PATIENCE, acks.next())
                .await
                .expect("acks flow")
                .unwrap();
            let stream_seq: u64 = ack.subject.split('.').nth(5).unwrap().parse().unwrap();
            if stream_seq > last / 4 * quarter {
                break;
            }
        }
        signal(&serve, SIGKILL);
        serve.wait().unwrap();
        let folded = Projections::open_existing(&db).unwrap().last_seq().unwrap();
        assert!(folded < last, "killed mid-way: {folded} of {last}");
    }

    let (mut serve, _log) = spawn_serve(&server.url(), &db);
    common::wait_folded(&client, last).await;
    signal(&serve, SIGTERM);
    assert!(serve.wait().unwrap().success(), "SIGTERM exits 0");
    assert_exact(&db, &fleet, &expected);

    let swap = run(command(&server.url(), &db).arg("replay"));
    assert!(
        swap.status.success(),
        "{}",
        String::from_utf8_lossy(&swap.stderr)
    );
    assert_exact(&db, &fleet, &expected);
    let verify = run(command(&server.url(), &db).args(["replay", "--verify"]));
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[tokio::test]
async fn stats_reads_the_file_or_asks_the_running_serve() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("aggregator.redb");

    let missing = run(command(&server.url(), &db).arg("stats"));
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains(&db.display().to_string()), "{err}");

    let (mut serve, _log) = spawn_serve(&server.url(), &db);
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let ts = chrono::Utc::now().to_rfc3339();
    let body = serde_json::json!({"version": "1.0", "type": "task_received", "timestamp": ts, "nodeId": "node-1",
        "data": {"taskIdHash": common::hash(1), "chainId": "1"}});
    let seq = common::publish(&js, &[common::msg("truebit.tasks.received", body)]).await;
    common::wait_folded(&client, seq).await;

    // serve holds the database: stats asks it over NATS.
    let live = run(command(&server.url(), &db).args(["stats", "--json", "--period", "24h"]));
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let live: serde_json::Value = serde_json::from_slice(&live.stdout).unwrap();
    assert_eq!(
        (live["period"].as_str(), live["data"]["totalTasks"].as_u64()),
        (Some("24h"), Some(1))
    );

    signal(&serve, SIGTERM);
    assert!(serve.wait().unwrap().success());

    // Now the file is free: stats reads it directly, and says the same.
    let offline =
        run(command("nats://127.0.0.1:1", &db).args(["stats", "--json", "--period", "24h"]));
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let offline: serde_json::Value = serde_json::from_slice(&offline.stdout).unwrap();
    assert_eq!(offline["data"], live["data"]);
    let human = run(command(&server.url(), &db).args(["stats", "--at", "2030-01-01T00:00:00Z"]));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("TrueBit network at 2030-01-01T00:00:00.000Z over all")
            && text.contains("tasks          1"),
        "{text}"
    );
}

#[test]
fn an_unreachable_nats_exits_3_and_bad_usage_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.redb");
    let out = run(command("nats://127.0.0.1:1", &db).arg("serve"));
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach NATS at nats://127.0.0.1:1")
    );

    let out = run(command("nats://127.0.0.1:1", &db).args(["serve", "--publish-interval", "5"]));
    assert_eq!(out.status.code(), Some(2));
    let out = run(command("nats://127.0.0.1:1", &db).args(["init", "--events-max-age", "90"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no unit"));
}

#[test]
fn a_stream_jetstream_cannot_convert_fails_init_naming_the_setting() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let mut cfg = truebit_federation::topology::dlq_stream_config(&Default::default());
        cfg.storage = jetstream::stream::StorageType::Memory;
        js.create_stream(cfg).await.unwrap();
    });
    let out = run(command(&server.url(), &dir.path().join("a.redb")).arg("init"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TRUEBIT_DLQ") && err.contains("storage"),
        "{err}"
    );
}

#[tokio::test]
async fn serve_refuses_a_database_from_another_incarnation_of_the_stream() {
    let mut server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("aggregator.redb");
    let client = async_nats::connect(server.url()).await.unwrap();
    let (mut serve, _log) = spawn_serve(&server.url(), &db);
    let js = jetstream::new(client.clone());
    let ts = chrono::Utc::now().to_rfc3339();
    let body = serde_json::json!({"version": "1.0", "type": "heartbeat", "timestamp": ts, "nodeId": "node-1"});
    let seq = common::publish(&js, &[common::msg("truebit.heartbeat", body)]).await;
    common::wait_folded(&client, seq).await;
    signal(&serve, SIGTERM);
    assert!(serve.wait().unwrap().success());

    // The stream is deleted and created again: its sequences start over.
    js.delete_stream("TRUEBIT_EVENTS").await.unwrap();
    drop(client);
    server.restart();
    let out = run(command(&server.url(), &db).arg("serve"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("was folded from stream TRUEBIT_EVENTS@") && err.contains("replay"),
        "{err}"
    );
}

/// Events that expired while `serve` was down are a gap in every number, whether some of the
/// stream is left or none of it: the next start refuses and says to rebuild.
#[tokio::test]
async fn serve_refuses_to_start_past_events_that_all_expired_unfolded() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("aggregator.redb");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let heartbeat = || {
        let ts = chrono::Utc::now().to_rfc3339();
        let body = serde_json::json!({"version": "1.0", "type": "heartbeat", "timestamp": ts, "nodeId": "node-1"});
        common::msg("truebit.heartbeat", body)
    };
    let (mut serve, _log) = spawn_serve(&server.url(), &db);
    let folded = common::publish(&js, &[heartbeat()]).await;
    common::wait_folded(&client, folded).await;
    signal(&serve, SIGTERM);
    assert!(serve.wait().unwrap().success());

    // Two more arrive while serve is down, and then the whole stream expires.
    let last = common::publish(&js, &[heartbeat(), heartbeat()]).await;
    let mut stream = js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    stream.purge().await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!((state.messages, state.last_sequence), (0, last));

    let out = common::process::run_to_exit(command(&server.url(), &db).arg("serve"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "sequences {}..={last} expired before they were folded",
            folded + 1
        )) && err.contains("replay"),
        "{err}"
    );
}

/// Contract §4: a `schema` or `clock` dead letter keeps only the fields §3 names. Today's
/// monitor's raw block data and exact counts, and anything else a node adds, never reach a dead
/// letter (body or header) nor a line of serve's log, even at debug level. A `malformed` body is
/// kept as sent (its first KiB): that canary must show up, or this test could not see one.
#[tokio::test]
async fn no_field_the_contract_does_not_name_reaches_a_dead_letter_or_the_log() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("aggregator.redb");
    let mut cmd = command(&server.url(), &db);
    cmd.env("RUST_LOG", "debug");
    let (serve, log) = spawn_serve_with(cmd);
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());

    let now = chrono::Utc::now();
    let ts = now.to_rfc3339();
    let future = (now + chrono::Duration::hours(1)).to_rfc3339();
    let mut canaries = Vec::new();
    let mut canary = |at: &str| {
        let c = format!("CANARY{}x{at}", canaries.len() + 1000);
        canaries.push(c.clone());
        c
    };
    // Unnamed fields at every level, the shapes today's monitor sends, and nested ones.
    let mut extras = |v: &mut serde_json::Value| {
        v["blockHash"] = canary("top").into();
        v["extra"] = serde_json::json!({"inner": canary("nested"), "list": [canary("list")]});
        let data = v["data"].as_object_mut().unwrap();
        data.insert("blockHash".into(), canary("blockhash").into());
        data.insert("taskHash".into(), canary("taskhash").into());
        data.insert("blockNumber".into(), canary("blocknumber").into());
        data.insert("activeTasks".into(), canary("active").into());
        data.insert("totalTasks".into(), canary("total").into());
        data.insert("totalInvoices".into(), canary("invoices").into());
        data.insert("ip".into(), serde_json::json!({"addr": canary("ip")}));
    };
    let node = "node-6f1c0e0a-3b7d-4c1e-9a55-2f0b8d1e4c3a";
    let env = |ty: &str, ts: &str, node: &str, data: serde_json::Value| serde_json::json!({"version": "1.0", "type": ty, "timestamp": ts, "nodeId": node, "data": data});
    let mut refused = vec![
        // schema: a hash that is not one
        (
            "truebit.tasks.received",
            env(
                "task_received",
                &ts,
                node,
                serde_json::json!({"taskIdHash": "0xabc", "chainId": "1"}),
            ),
        ),
        // schema: a nodeId with a space
        (
            "truebit.heartbeat",
            env(
                "heartbeat",
                &ts,
                "bad node",
                serde_json::json!({"status": "online", "totalTasksBucket": ">1K"}),
            ),
        ),
        // schema: a bucket label not in the contract
        (
            "truebit.tasks.completed",
            env(
                "task_completed",
                &ts,
                node,
                serde_json::json!({"taskIdHash": common::hash(1), "success": true, "executionTimeBucket": "2h"}),
            ),
        ),
        // schema: the type of another subject
        (
            "truebit.invoices.created",
            env(
                "heartbeat",
                &ts,
                node,
                serde_json::json!({"invoiceIdHash": common::hash(2)}),
            ),
        ),
        // clock: an hour ahead of the stored time
        (
            "truebit.heartbeat",
            env(
                "heartbeat",
                &future,
                node,
                serde_json::json!({"status": "online"}),
            ),
        ),
    ];
    for (_, body) in &mut refused {
        extras(body);
    }
    let visible = canary("malformed");
    let mut messages: Vec<(String, Vec<u8>)> = refused
        .iter()
        .map(|(s, b)| common::msg(s, b.clone()))
        .collect();
    messages.push((
        "truebit.heartbeat".into(),
        format!(r#"{{"nodeId":"{visible}","#).into_bytes(),
    ));
    let last = common::publish(&js, &messages).await;
    common::wait_folded(&client, last).await;

    // Every refusal has its dead letter in TRUEBIT_DLQ, through the outbox.
    let dlq =
        common::wait_for_dead_letters(&js, messages.len() as u64, "dead letters missing").await;
    signal(&serve, SIGTERM);
    let mut serve = serve;
    assert!(serve.wait().unwrap().success());
    let lines: Vec<String> = log.try_iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("refused")),
        "debug logging is on and names refusals: {lines:?}"
    );

    let mut seen_malformed = false;
    for seq in 1..=messages.len() as u64 {
        let m = dlq.get_raw_message(seq).await.unwrap();
        let mut text = String::from_utf8_lossy(&m.payload).into_owned();
        for (name, values) in m.headers.iter() {
            text.push_str(&format!("\n{name}: {values:?}"));
        }
        let reason = m.headers.get("Truebit-Dlq-Reason").unwrap().as_str();
        if reason == "malformed" {
            assert!(
                text.contains(&visible),
                "a malformed body is kept as sent: {text}"
            );
            seen_malformed = true;
            continue;
        }
        assert!(["schema", "clock"].contains(&reason), "{reason}");
        for c in &canaries {
            assert!(
                !text.contains(c.as_str()),
                "{c} reached a {reason} dead letter: {text}"
            );
        }
        // What the contract names is kept, for the operator.
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert!(
            body["type"].is_string() && body["data"].is_object(),
            "{body}"
        );
    }
    assert!(seen_malformed);
    for line in &lines {
        for c in &canaries {
            assert!(!line.contains(c.as_str()), "{c} reached the log: {line}");
        }
    }
}
