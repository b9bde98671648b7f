//! The live path end to end: nodes publish to a real nats-server, `serve` folds, snapshots come
//! out on NATS and in KV, refusals land in the dead-letter stream.

use crate::common;

use crate::common::{hash, msg, Served};
use async_nats::jetstream;
use serde_json::json;
use truebit_projections::Projections;
use truebit_streams::Digest;
use truebit_streams::Period;

const A: &str = "node-6f1c0e0a-3b7d-4c1e-9a55-2f0b8d1e4c3a";
const B: &str = "node-76fdd2ee-8dc8-43dc-862c-1b056120b215";
const C: &str = "node-a37c1f69-f85a-48e1-8492-a9d82759a3b6";

fn envelope(ty: &str, node: &str, ts: &str, data: serde_json::Value) -> serde_json::Value {
    json!({"version": "1.0", "type": ty, "timestamp": ts, "nodeId": node, "data": data})
}

/// The plan's message formats, on 2024-01-15 as in its examples.
fn plan_example() -> Vec<(String, Vec<u8>)> {
    let (t1, t2, t3, t4) = (hash(1), hash(2), hash(3), hash(4));
    vec![
        msg(
            "truebit.nodes.joined",
            envelope(
                "node_joined",
                A,
                "2024-01-15T10:00:00.000Z",
                json!({"status": "online"}),
            ),
        ),
        msg(
            "truebit.heartbeat",
            envelope(
                "heartbeat",
                A,
                "2024-01-15T10:30:00.000Z",
                json!({"status": "online", "activeTasksBucket": "1", "totalTasksBucket": ">1K", "continentBucket": "EU", "locationBucket": "52.5,13.5", "activeTasks": 1, "totalTasks": 1234}),
            ),
        ),
        msg(
            "truebit.heartbeat",
            envelope(
                "heartbeat",
                B,
                "2024-01-15T10:27:00.000Z",
                json!({"status": "online", "continentBucket": "NA"}),
            ),
        ),
        msg(
            "truebit.nodes.left",
            envelope(
                "node_left",
                B,
                "2024-01-15T10:28:00.000Z",
                json!({"status": "offline"}),
            ),
        ),
        msg(
            "truebit.heartbeat",
            envelope(
                "heartbeat",
                C,
                "2024-01-15T09:00:00.000Z",
                json!({"status": "online", "continentBucket": "AS"}),
            ),
        ),
        msg(
            "truebit.tasks.received",
            envelope(
                "task_received",
                A,
                "2024-01-15T10:00:00.000Z",
                json!({"taskIdHash": t1, "chainId": "1", "taskType": "wasm", "blockNumber": 1, "blockHash": "0xab"}),
            ),
        ),
        msg(
            "truebit.tasks.completed",
            envelope(
                "task_completed",
                A,
                "2024-01-15T10:05:00.000Z",
                json!({"taskIdHash": t1, "success": true, "status": "completed", "executionTimeBucket": "<100ms", "gasUsedBucket": "<100K", "cached": false}),
            ),
        ),
        msg(
            "truebit.tasks.received",
            envelope(
                "task_received",
                A,
                "2024-01-15T10:10:00.000Z",
                json!({"taskIdHash": t2, "chainId": 5, "taskType": "docker"}),
            ),
        ),
        msg(
            "truebit.tasks.completed",
            envelope(
                "task_completed",
                A,
                "2024-01-15T10:15:00.000Z",
                json!({"taskIdHash": t2, "success": false, "status": "failed", "executionTimeBucket": "100-500ms", "gasUsedBucket": "1M-10M", "cached": false}),
            ),
        ),
        // Completed before it was received, by another node.
        msg(
            "truebit.tasks.completed",
            envelope(
                "task_completed",
                B,
                "2024-01-15T10:20:00.000Z",
                json!({"taskIdHash": t3, "success": true, "status": "completed", "executionTimeBucket": "1-5s", "gasUsedBucket": ">100M", "cached": true}),
            ),
        ),
        msg(
            "truebit.tasks.received",
            envelope(
                "task_received",
                B,
                "2024-01-15T09:00:00.000Z",
                json!({"taskIdHash": t3, "chainId": "1", "taskType": "wasm"}),
            ),
        ),
        msg(
            "truebit.tasks.received",
            envelope(
                "task_received",
                C,
                "2024-01-14T10:00:00.000Z",
                json!({"taskIdHash": t4, "chainId": "137"}),
            ),
        ),
        msg(
            "truebit.invoices.created",
            envelope(
                "invoice_created",
                A,
                "2024-01-15T10:30:00.000Z",
                json!({"invoiceIdHash": hash(101), "taskIdHash": t1, "chainId": "1", "stepsComputedBucket": "1M-10M", "memoryUsedBucket": "64-256MB", "operation": "compute"}),
            ),
        ),
        msg(
            "truebit.invoices.created",
            envelope(
                "invoice_created",
                C,
                "2024-01-10T08:00:00.000Z",
                json!({"invoiceIdHash": hash(102), "taskIdHash": null, "chainId": "137", "stepsComputedBucket": "<100K", "memoryUsedBucket": ">1GB"}),
            ),
        ),
    ]
}

#[tokio::test]
async fn the_plans_example_gives_the_hand_computed_stats() {
    let mut served = Served::start().await;
    let last = served.publish(&plan_example()).await;
    served.wait_folded(last).await;
    served.stop().await.unwrap();

    let db = Projections::open_existing(&served.db_path).unwrap();
    let t = chrono::DateTime::parse_from_rfc3339("2024-01-15T10:30:00Z")
        .unwrap()
        .timestamp()
        / 60;
    let all = db.snapshot(t, Period::All).unwrap().to_message();
    // By hand: 4 tasks (t4 only received); t1 and t3 completed, t2 failed, t3 cached; A is the only
    // active node (B left, C's heartbeat is 90 minutes old); 3 of the 4 tasks were first seen in
    // the last 24 h (t4 was a day and half an hour ago); one invoice in the last 24 h.
    let expected = json!({
        "version": "1.0", "type": "network_stats", "timestamp": "2024-01-15T10:30:00.000Z",
        "data": {
            "activeNodes": 1, "totalNodes": 3,
            "totalTasks": 4, "completedTasks": 2, "failedTasks": 1, "cachedTasks": 1,
            "tasksLast24h": 3, "successRate": 66.7, "cacheHitRate": 25.0,
            "totalInvoices": 2, "invoicesLast24h": 1,
            "executionTimeDistribution": {"<100ms": 1, "100-500ms": 1, "500ms-1s": 0, "1-5s": 1, "5-10s": 0, "10-30s": 0, "30s-1m": 0, ">1m": 0},
            "gasUsageDistribution": {"<100K": 1, "100K-1M": 0, "1M-10M": 1, "10M-100M": 0, ">100M": 1},
            "stepsComputedDistribution": {"<100K": 1, "100K-1M": 0, "1M-10M": 1, "10M-100M": 0, ">100M": 0},
            "memoryUsedDistribution": {"<64MB": 0, "64-256MB": 1, "256MB-1GB": 0, ">1GB": 1},
            "chainDistribution": {"1": 2, "137": 1, "5": 1},
            "taskTypeDistribution": {"wasm": 2, "docker": 1, "unknown": 1},
            "continentDistribution": {"AS": 1, "EU": 1, "NA": 1},
            "locationDistribution": {"52.5,13.5": 1}
        }
    });
    assert_eq!(all, expected);
    assert_eq!(
        serde_json::to_string(&all).unwrap(),
        serde_json::to_string(&expected).unwrap(),
        "keys in the contract's order"
    );

    // The last hour: t1 and t2 (t3 was first seen at 09:00), and nodes A and B.
    let hour = db.snapshot(t, Period::Hour).unwrap().to_period_message();
    assert_eq!(hour["period"], "1h");
    assert_eq!(
        (
            hour["data"]["totalTasks"].as_u64(),
            hour["data"]["successRate"].as_f64()
        ),
        (Some(2), Some(50.0))
    );
    assert_eq!(
        hour["data"]["continentDistribution"],
        json!({"EU": 1, "NA": 1})
    );
    assert_eq!(hour["data"]["totalInvoices"], 1);

    let t3 = db
        .task(&Digest::parse_hex(&hash(3)).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        (t3.state, t3.chain_id.as_deref(), t3.cached),
        ("completed", Some("1"), Some(true)),
        "a completion before its receipt is kept"
    );
    assert!(db.node(B).unwrap().unwrap().offline);
}

#[tokio::test]
async fn one_task_from_three_nodes_and_exact_duplicates_fold_once() {
    let mut served = Served::start().await;
    let now = chrono::Utc::now().to_rfc3339();
    let task = hash(7);
    for node in [A, B, C] {
        served
            .publish(&[msg(
                "truebit.tasks.received",
                envelope(
                    "task_received",
                    node,
                    &now,
                    json!({"taskIdHash": task, "chainId": "1"}),
                ),
            )])
            .await;
    }
    // The same heartbeat published twice with one Nats-Msg-Id: JetStream stores it once.
    let hb =
        serde_json::to_vec(&envelope("heartbeat", A, &now, json!({"status": "online"}))).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "hb-1");
    let first = served
        .js
        .publish_with_headers("truebit.heartbeat", headers.clone(), hb.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let again = served
        .js
        .publish_with_headers("truebit.heartbeat", headers, hb.into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(again.duplicate);
    let snapshot = served.wait_folded(first.sequence).await;
    assert_eq!(snapshot["data"]["totalTasks"], 1);
    served.stop().await.unwrap();

    let db = Projections::open_existing(&served.db_path).unwrap();
    assert_eq!(
        db.task(&Digest::parse_hex(&task).unwrap())
            .unwrap()
            .unwrap()
            .reporting_nodes,
        3
    );
    assert_eq!(db.node(A).unwrap().unwrap().heartbeat_count, 1);
}

#[tokio::test]
async fn every_refusal_is_dead_lettered_and_the_messages_behind_it_are_folded() {
    let mut served = Served::start().await;
    let now = chrono::Utc::now();
    let ts = now.to_rfc3339();
    let future = (now + chrono::Duration::minutes(30)).to_rfc3339();
    let mut too_big = envelope("heartbeat", A, &ts, json!({"status": "online"}));
    too_big["pad"] = json!("x".repeat(9000));
    let bad = [
        msg("truebit.heartbeat", too_big),
        ("truebit.heartbeat".to_string(), b"{not json".to_vec()),
        msg(
            "truebit.tasks.received",
            envelope("task_received", A, &ts, json!({"taskIdHash": "ABC"})),
        ),
        msg(
            "truebit.heartbeat",
            envelope("heartbeat", A, &future, json!({})),
        ),
    ];
    let first_bad = served.publish(&bad[..1]).await;
    served.publish(&bad[1..]).await;
    let good = served
        .publish(&[msg(
            "truebit.heartbeat",
            envelope("heartbeat", C, &ts, json!({"continentBucket": "SA"})),
        )])
        .await;
    let snapshot = served.wait_folded(good).await;
    assert_eq!(
        snapshot["data"]["activeNodes"], 1,
        "the good heartbeat behind the bad ones was folded"
    );

    let dlq = served.js.get_stream("TRUEBIT_DLQ").await.unwrap();
    let expected = [
        ("too_large", None),
        ("malformed", None),
        ("schema", Some("$.data.taskIdHash")),
        ("clock", None),
    ];
    for (i, (reason, path)) in expected.iter().enumerate() {
        let m = dlq.get_raw_message(i as u64 + 1).await.unwrap();
        assert_eq!(m.subject.as_str(), format!("truebit.dlq.{reason}"));
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(header("Truebit-Dlq-Reason").as_deref(), Some(*reason));
        assert_eq!(
            header("Truebit-Original-Seq"),
            Some((first_bad + i as u64).to_string())
        );
        assert_eq!(
            header("Truebit-Original-Subject").as_deref(),
            Some(bad[i].0.as_str())
        );
        assert_eq!(header("Truebit-Dlq-Path").as_deref(), *path);
        let kept = if *reason == "too_large" {
            &bad[i].1[..1024]
        } else {
            &bad[i].1[..]
        };
        assert_eq!(&m.payload[..], kept, "{reason} keeps the body");
    }
    served.stop().await.unwrap();
    let db = Projections::open_existing(&served.db_path).unwrap();
    let r = db.rejections().unwrap();
    assert_eq!(
        (r["too_large"], r["malformed"], r["schema"], r["clock"]),
        (1, 1, 1, 1)
    );
}

#[tokio::test]
async fn every_fixture_is_folded_except_the_invoices_without_an_id() {
    let mut served = Served::start().await;
    // The fixtures are from 2026-11-02; stored now, their clocks are in the past, which is fine.
    let fixtures = truebit_testkit::monitor_fixtures();
    let last = served.publish(&fixtures).await;
    served.wait_folded(last).await;
    served.stop().await.unwrap();
    let db = Projections::open_existing(&served.db_path).unwrap();
    assert_eq!(
        db.rejections().unwrap().into_iter().collect::<Vec<_>>(),
        vec![("schema".to_string(), 3)]
    );
    let folded: u64 = db.event_counts().unwrap().values().sum();
    assert_eq!(folded, 268 - 3);
    let dlq = served
        .js
        .get_stream("TRUEBIT_DLQ")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(dlq.state.messages, 3);
    let (tasks, invoices, nodes) = db.record_counts().unwrap();
    assert_eq!(nodes, 3, "three nodes took part");
    assert!(
        tasks >= 30 && invoices > 0,
        "{tasks} tasks, {invoices} invoices"
    );
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-02T08:30:00Z")
        .unwrap()
        .timestamp()
        / 60;
    let snapshot = db
        .snapshot(at, Period::All)
        .unwrap()
        .to_message()
        .to_string();
    for extra in [
        "blockHash",
        "blockNumber",
        "taskHash",
        "totalInvoices\":1",
        "activeTasks\"",
    ] {
        assert!(
            !snapshot.contains(extra),
            "{extra} leaked into the snapshot"
        );
    }
}

#[tokio::test]
async fn a_node_that_left_is_not_active_until_it_heartbeats_again() {
    let mut served = Served::start().await;
    let ts = chrono::Utc::now().to_rfc3339();
    served
        .publish(&[msg(
            "truebit.heartbeat",
            envelope("heartbeat", A, &ts, json!({})),
        )])
        .await;
    let left = served
        .publish(&[msg(
            "truebit.nodes.left",
            envelope("node_left", A, &ts, json!({"status": "offline"})),
        )])
        .await;
    assert_eq!(served.wait_folded(left).await["data"]["activeNodes"], 0);
    let back = served
        .publish(&[msg(
            "truebit.heartbeat",
            envelope("heartbeat", A, &ts, json!({"status": "offline"})),
        )])
        .await;
    assert_eq!(
        served.wait_folded(back).await["data"]["activeNodes"],
        1,
        "a heartbeat ends the offline spell, whatever its status"
    );
    served.stop().await.unwrap();
}

#[tokio::test]
async fn a_late_joiner_reads_the_snapshot_from_kv() {
    let mut served = Served::start().await;
    let ts = chrono::Utc::now().to_rfc3339();
    let last = served
        .publish(&[msg(
            "truebit.tasks.received",
            envelope("task_received", A, &ts, json!({"taskIdHash": hash(1)})),
        )])
        .await;
    let published = served.wait_folded(last).await;
    served.stop().await.unwrap();

    // A node connecting after the publish, with nothing but the bucket's name.
    let late = jetstream::new(async_nats::connect(served.server.url()).await.unwrap());
    let kv = late.get_key_value("truebit-stats").await.unwrap();
    let latest: serde_json::Value =
        serde_json::from_slice(&kv.get("latest").await.unwrap().unwrap()).unwrap();
    assert_eq!(latest, published);
    for period in ["1h", "24h", "7d", "all"] {
        let p: serde_json::Value =
            serde_json::from_slice(&kv.get(format!("period.{period}")).await.unwrap().unwrap())
                .unwrap();
        assert_eq!(p["period"], period);
        assert_eq!(p["data"]["totalTasks"], 1);
    }
}

#[tokio::test]
async fn a_nats_server_restart_in_the_middle_of_folding_loses_nothing() {
    // Pulls of one message, so that folding the first half takes long enough for the restart
    // to come in the middle of it on any machine (one commit per queued handful of messages).
    let mut served = Served::start_with(|c| c.batch_size = 1).await;
    let fleet = truebit_testkit::Fleet::new(50, 7);
    let (messages, expected) = fleet.generate(3000);
    let messages: Vec<(String, Vec<u8>)> = messages
        .into_iter()
        .map(|m| (m.subject.to_string(), m.payload))
        .collect();
    let (first, second) = messages.split_at(messages.len() / 2);
    served.publish(first).await;
    // Restart while the aggregator is folding the first half.
    let mut consumer: jetstream::consumer::PullConsumer = served
        .js
        .get_stream("TRUEBIT_EVENTS")
        .await
        .unwrap()
        .get_consumer("aggregator")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert!(
        info.ack_floor.stream_sequence < first.len() as u64,
        "folding finished before the restart ({} of {}): publish more so that the restart comes mid-fold",
        info.ack_floor.stream_sequence,
        first.len()
    );
    served.server.restart();
    let client = async_nats::connect(served.server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let mut acks = Vec::new();
    for (subject, payload) in second {
        acks.push(
            js.publish(subject.clone(), payload.clone().into())
                .await
                .unwrap(),
        );
    }
    let mut last = 0;
    for ack in acks {
        last = ack.await.unwrap().sequence;
    }
    let snapshot = common::wait_folded(&client, last).await;
    assert_eq!(snapshot["data"]["totalTasks"], expected.tasks);
    served.stop().await.unwrap();

    let db = Projections::open_existing(&served.db_path).unwrap();
    common::assert_fleet_counts(&db, &expected);
}

#[tokio::test]
async fn messages_redelivered_by_a_lagging_consumer_are_folded_once() {
    let mut served = Served::start().await;
    let ts = chrono::Utc::now().to_rfc3339();
    let beats: Vec<_> = (0..50)
        .map(|_| {
            msg(
                "truebit.heartbeat",
                envelope("heartbeat", A, &ts, json!({})),
            )
        })
        .collect();
    let last = served.publish(&beats).await;
    served.wait_folded(last).await;
    served.stop().await.unwrap();

    // A consumer that lags the database (restored from an older backup, say): it will deliver
    // all 50 heartbeats again.
    let stream = served.js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    stream.delete_consumer("aggregator").await.unwrap();
    stream
        .create_consumer(truebit_federation::topology::consumer_config(
            "aggregator",
            1,
            truebit_federation::AckMode::default(),
        ))
        .await
        .unwrap();
    served.serve();
    let one_more = served
        .publish(&[msg(
            "truebit.heartbeat",
            envelope("heartbeat", A, &ts, json!({})),
        )])
        .await;
    served.wait_folded(one_more).await;
    served.stop().await.unwrap();

    let db = Projections::open_existing(&served.db_path).unwrap();
    assert_eq!(db.node(A).unwrap().unwrap().heartbeat_count, 51);
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer("aggregator").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.ack_floor.stream_sequence, one_more,
        "the redelivered messages were acked, not left pending"
    );
}

/// Contract §4: a dead letter that cannot be stored yet waits in the outbox, across a stop and a
/// start, and reaches TRUEBIT_DLQ exactly once when it can; the messages behind it fold at once.
#[tokio::test]
async fn a_dead_letter_that_cannot_be_stored_waits_in_the_outbox_across_a_restart() {
    let mut served = Served::start().await;
    // No stream for truebit.dlq.> any more: every dead letter publish fails for now.
    served.js.delete_stream("TRUEBIT_DLQ").await.unwrap();
    let ts = chrono::Utc::now().to_rfc3339();
    let bad = served
        .publish(&[("truebit.heartbeat".to_string(), b"{not json".to_vec())])
        .await;
    let good = served
        .publish(&[msg(
            "truebit.heartbeat",
            envelope("heartbeat", A, &ts, json!({})),
        )])
        .await;
    let snapshot = served.wait_folded(good).await;
    assert_eq!(
        snapshot["data"]["activeNodes"], 1,
        "the refusal does not hold up the fold"
    );
    served.stop().await.unwrap();
    {
        let db = Projections::open_existing(&served.db_path).unwrap();
        let pending = db.pending_dead_letters(10).unwrap();
        assert_eq!(pending.len(), 1, "kept on disk: {pending:?}");
        assert_eq!(pending[0].0, bad);
        // With the minute JetStream stored the message, against which TRUEBIT_DLQ's max_age is
        // measured (contract §9).
        let stored = db.outbox(1).unwrap()[0]
            .stored_minute
            .expect("a stored minute");
        let now = chrono::Utc::now().timestamp().div_euclid(60);
        assert!(
            (now - 5..=now).contains(&stored),
            "stored in minute {stored}, now is {now}"
        );
    }

    // The next start recreates TRUEBIT_DLQ and sends what waited.
    served.serve();
    served.wait_folded(good).await; // the topology exists again
    let mut dlq = common::wait_for_dead_letters(&served.js, 1, "the outbox was not sent").await;
    let m = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(m.subject.as_str(), "truebit.dlq.malformed");
    assert_eq!(
        m.headers.get("Truebit-Original-Seq").unwrap().as_str(),
        bad.to_string()
    );
    // Sent once more, as after a crash between storing and dropping: stored once.
    let again = served
        .js
        .publish_with_headers(
            "truebit.dlq.malformed",
            m.headers.clone(),
            m.payload.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(again.duplicate, "dlq-<seq> deduplicates");
    served.stop().await.unwrap();
    let db = Projections::open_existing(&served.db_path).unwrap();
    assert_eq!(db.pending_dead_letter_count().unwrap(), 0);
    assert_eq!(dlq.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn a_dead_letter_of_an_earlier_events_stream_does_not_stand_for_this_ones() {
    let mut served = Served::start().await;
    served.stop().await.unwrap();
    // TRUEBIT_EVENTS deleted and made anew restarts its sequences at 1, while TRUEBIT_DLQ keeps
    // the old stream's dead letters. Two of them, each without the `dlq-<seq>` Msg-Id (as when
    // JetStream's duplicate window no longer holds it): one stored before the new stream was
    // made and sent before letters named their stream, for message 1; one naming the old stream,
    // for message 2, stored after the new stream was made.
    served.js.delete_stream("TRUEBIT_EVENTS").await.unwrap();
    let old_letter = |seq: &str, stream: Option<&str>| {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Truebit-Dlq-Reason", "malformed");
        h.insert("Truebit-Original-Subject", "truebit.heartbeat");
        h.insert("Truebit-Original-Seq", seq);
        if let Some(stream) = stream {
            h.insert("Truebit-Original-Stream", stream);
        }
        h
    };
    let js = served.js.clone();
    let store = |headers: async_nats::HeaderMap| {
        let js = js.clone();
        async move {
            js.publish_with_headers("truebit.dlq.malformed", headers, "{old".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    store(old_letter("1", None)).await;
    // The old database belongs to the old stream (serve refuses it); this one folds the new.
    std::fs::remove_file(&served.db_path).unwrap();
    served.serve();
    served.wait_folded(0).await; // TRUEBIT_EVENTS exists again
    let created = served
        .js
        .get_stream("TRUEBIT_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .created;
    let this_stream = truebit_streams::names::stream_identity("TRUEBIT_EVENTS", created);
    store(old_letter(
        "2",
        Some("TRUEBIT_EVENTS@2020-01-01T00:00:00+00:00"),
    ))
    .await;

    let bad = served
        .publish(&[
            ("truebit.heartbeat".to_string(), b"{new".to_vec()),
            ("truebit.heartbeat".to_string(), b"{new".to_vec()),
        ])
        .await;
    assert_eq!(bad, 2, "the new stream starts again at 1");
    let ts = chrono::Utc::now().to_rfc3339();
    let good = served
        .publish(&[msg(
            "truebit.heartbeat",
            envelope("heartbeat", A, &ts, json!({})),
        )])
        .await;
    served.wait_folded(good).await;

    // Each refusal of the new stream gets a dead letter of its own, naming the new stream.
    let dlq = common::wait_for_dead_letters(
        &served.js,
        4,
        "a refusal of the new stream was taken for the old stream's and never sent",
    )
    .await;
    let mut sent = Vec::new();
    for seq in 3..=4 {
        let m = dlq.get_raw_message(seq).await.unwrap();
        assert_eq!(m.payload.as_ref(), b"{new");
        assert_eq!(
            m.headers.get("Truebit-Original-Stream").unwrap().as_str(),
            this_stream
        );
        sent.push(m.headers.get("Truebit-Original-Seq").unwrap().to_string());
    }
    sent.sort();
    assert_eq!(sent, ["1", "2"]);
    served.stop().await.unwrap();
    let db = Projections::open_existing(&served.db_path).unwrap();
    assert_eq!(db.pending_dead_letter_count().unwrap(), 0);
}

/// Contract §9: no instance sends a dead letter for a message stored longer ago than
/// `TRUEBIT_DLQ`'s `max_age` (30 days here): its letter would have expired, so an instance whose
/// outbox still holds one (a new instance on an old stream, a standby restarted after that)
/// does not send the old ones again. The refusal of message 1 is recorded as a fold would have
/// recorded it 31 days after JetStream stored it; message 2, refused now, is sent.
#[tokio::test]
async fn no_dead_letter_is_sent_for_a_message_stored_longer_ago_than_the_dlq_keeps_letters() {
    let mut served = Served::start().await;
    served.stop().await.unwrap();
    let old = served
        .publish(&[("truebit.heartbeat".to_string(), b"{old".to_vec())])
        .await;
    {
        let db = Projections::open_existing(&served.db_path).unwrap();
        let rejection = truebit_streams::validate("truebit.heartbeat", b"{old", chrono::Utc::now())
            .unwrap_err();
        let month_ago = chrono::Utc::now() - chrono::Duration::days(31);
        db.apply(
            &[truebit_projections::Input::new(
                old,
                month_ago.timestamp().div_euclid(60),
                truebit_streams::Signer::Unsigned,
                Err(truebit_projections::Refusal::dead_lettered(
                    &rejection,
                    "truebit.heartbeat",
                    old,
                    b"{old",
                )),
            )],
            truebit_projections::Outbox::Record,
        )
        .unwrap();
        assert_eq!(db.pending_dead_letter_count().unwrap(), 1);
    }
    served.serve();
    let new = served
        .publish(&[("truebit.heartbeat".to_string(), b"{new".to_vec())])
        .await;
    served.wait_folded(new).await;
    let mut dlq =
        common::wait_for_dead_letters(&served.js, 1, "the new refusal was not sent").await;
    served.stop().await.unwrap();
    // Sent in sequence order: had the old one been sent, it would be there before the new one.
    let stored = dlq.info().await.unwrap().state.messages;
    let mut sent = Vec::new();
    for seq in 1..=stored {
        let m = dlq.get_raw_message(seq).await.unwrap();
        sent.push(m.headers.get("Truebit-Original-Seq").unwrap().to_string());
    }
    assert_eq!(
        sent,
        [new.to_string()],
        "only the new refusal has a dead letter"
    );
    let db = Projections::open_existing(&served.db_path).unwrap();
    assert_eq!(
        db.pending_dead_letter_count().unwrap(),
        0,
        "the expired one is dropped, not kept for ever"
    );
}

/// Contract §9: an instance that starts reading `TRUEBIT_DLQ` after its last letter was deleted
/// (an operator's `nats stream rmm`) never sees that sequence; it still reads to the end and
/// sends the next refusal's dead letter.
#[tokio::test]
async fn deleting_the_last_dead_letter_does_not_stop_the_next_ones() {
    let mut served = Served::start().await;
    let bad = served
        .publish(&[
            ("truebit.heartbeat".to_string(), b"{one".to_vec()),
            ("truebit.heartbeat".to_string(), b"{two".to_vec()),
        ])
        .await;
    served.wait_folded(bad).await;
    let mut dlq =
        common::wait_for_dead_letters(&served.js, 2, "the first letters were not sent").await;
    served.stop().await.unwrap();
    let last = dlq.info().await.unwrap().state.last_sequence;
    assert!(dlq.delete_message(last).await.unwrap());
    let state = dlq.info().await.unwrap().state.clone();
    assert_eq!(
        (state.messages, state.last_sequence),
        (1, last),
        "JetStream keeps the deleted letter's sequence as the last"
    );

    served.serve();
    let third = served
        .publish(&[("truebit.heartbeat".to_string(), b"{three".to_vec())])
        .await;
    served.wait_folded(third).await;
    common::wait_for_dead_letters(
        &served.js,
        2,
        "the new refusal's dead letter was never sent after the last letter was deleted",
    )
    .await;
    let m = dlq.get_raw_message(last + 1).await.unwrap();
    assert_eq!(
        m.headers.get("Truebit-Original-Seq").unwrap().as_str(),
        third.to_string()
    );
    served.stop().await.unwrap();
}
