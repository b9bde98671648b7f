//! Contract §9 with two `serve` instances, each folding the whole stream into its own database:
//! one publishes, the other takes over when it dies, never both, and the numbers never go back.
//! The takeover runs on one server (the lease needs no cluster); the pause on a three-server
//! cluster. `tests/cluster.rs` kills servers and instances under load.

use crate::common;

use crate::common::process::{command, spawn_serve_with};
use async_nats::jetstream;
use futures::StreamExt;
use std::path::Path;
use std::time::{Duration, Instant};
use truebit_projections::Projections;
use truebit_testkit::{
    signal, NatsCluster, NatsServer, Reaped, TcpProxy, SIGCONT, SIGKILL, SIGSTOP, SIGTERM,
};

/// Starts `serve --instance NAME` on the server(s) at `url`, its streams at `replicas`.
fn instance(url: &str, dir: &Path, name: &str, replicas: usize) -> Reaped {
    instance_with_log(url, dir, name, replicas, 200).0
}

/// [`instance`], with its log lines as it writes them (echoed too, so that a failed exit shows
/// what the instance said).
fn instance_with_log(
    url: &str,
    dir: &Path,
    name: &str,
    replicas: usize,
    interval_ms: u64,
) -> (Reaped, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let mut c = command(url, &dir.join(format!("{name}.redb")));
    c.env("INSTANCE", name)
        .env("REPLICAS", replicas.to_string())
        .env("PUBLISH_INTERVAL", interval_ms.to_string());
    let (child, log) = spawn_serve_with(c);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let name = name.to_string();
    std::thread::spawn(move || {
        for line in log {
            eprintln!("[{name}] {line}");
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// The next snapshot published, with the instance that published it and its last sequence.
async fn next_snapshot(
    sub: &mut async_nats::Subscriber,
    deadline: tokio::time::Instant,
) -> (String, u64) {
    let m = tokio::time::timeout_at(deadline, sub.next())
        .await
        .expect("a snapshot in time")
        .unwrap();
    let h = m.headers.unwrap();
    (
        h.get("Truebit-Instance").unwrap().as_str().to_string(),
        h.get("Truebit-Last-Seq").unwrap().as_str().parse().unwrap(),
    )
}

async fn holder(js: &jetstream::Context) -> Option<String> {
    let kv = js.get_key_value("truebit-leader").await.unwrap();
    kv.get("serve")
        .await
        .unwrap()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

#[tokio::test]
async fn a_standby_takes_over_from_a_killed_leader_and_the_restarted_one_stays_standby() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    let mut snapshots = client.subscribe("truebit.stats.aggregated").await.unwrap();
    let patience = || tokio::time::Instant::now() + common::PATIENCE;

    let mut a = instance(&url, dir.path(), "a", 1);
    let (first, _) = next_snapshot(&mut snapshots, patience()).await;
    assert_eq!(first, "a", "the only instance leads");
    let b = instance(&url, dir.path(), "b", 1);
    let mut traffic = common::heartbeats("node-1", 50);
    traffic.extend((0..5).map(|i| {
        (
            "truebit.heartbeat".to_string(),
            format!("{{bad {i}").into_bytes(),
        )
    }));
    let last = common::publish(&js, &traffic).await;
    // b folds too, but only a publishes.
    let deadline = patience();
    loop {
        let (who, seq) = next_snapshot(&mut snapshots, deadline).await;
        assert_eq!(who, "a", "only the leader publishes");
        if seq >= last {
            break;
        }
    }
    assert_eq!(holder(&js).await.as_deref(), Some("a"));

    signal(&a, SIGKILL);
    a.wait().unwrap();
    let killed = Instant::now();
    let deadline = patience();
    let mut seen_b = false;
    while !seen_b {
        let (who, seq) = next_snapshot(&mut snapshots, deadline).await;
        assert_eq!(who, "b", "nobody else publishes");
        assert!(seq >= last, "numbers never go back: {seq} < {last}");
        seen_b = true;
    }
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(8),
        "not before a's lease ran out: {took:?}"
    );
    assert_eq!(holder(&js).await.as_deref(), Some("b"));

    // More traffic, a restarted a: it catches up as a standby and publishes nothing.
    let mut traffic = common::heartbeats("node-2", 30);
    traffic.extend((0..5).map(|i| {
        (
            "truebit.heartbeat".to_string(),
            format!("{{worse {i}").into_bytes(),
        )
    }));
    let more = common::publish(&js, &traffic).await;
    let mut a = instance(&url, dir.path(), "a", 1);
    let deadline = patience();
    let mut b_published = 0;
    while b_published < 15 {
        let (who, seq) = next_snapshot(&mut snapshots, deadline).await;
        assert_eq!(who, "b", "the restarted instance stays standby");
        if seq >= more {
            b_published += 1;
        }
    }
    let mut b = b;
    for p in [&mut a, &mut b] {
        signal(p, SIGTERM);
        assert!(p.wait().unwrap().success());
    }
    for name in ["a", "b"] {
        let db = Projections::open_existing(dir.path().join(format!("{name}.redb"))).unwrap();
        assert_eq!(db.last_seq().unwrap(), more, "{name} folded everything");
        assert_eq!(db.node("node-1").unwrap().unwrap().heartbeat_count, 50);
        assert_eq!(db.node("node-2").unwrap().unwrap().heartbeat_count, 30);
        assert_eq!(db.rejections().unwrap()["malformed"], 10);
        assert_eq!(
            db.pending_dead_letter_count().unwrap(),
            0,
            "{name} dropped every dead letter it found in TRUEBIT_DLQ"
        );
    }
    // Across the failover, each refused message has exactly one dead letter.
    let mut dlq = js.get_stream("TRUEBIT_DLQ").await.unwrap();
    let stored = dlq.info().await.unwrap().state.messages;
    let mut originals = std::collections::BTreeSet::new();
    for seq in 1..=stored {
        let m = dlq.get_raw_message(seq).await.unwrap();
        let original = m.headers.get("Truebit-Original-Seq").unwrap().to_string();
        assert!(
            originals.insert(original.clone()),
            "two dead letters for {original}"
        );
    }
    assert_eq!(originals.len(), 10);
    assert_eq!(holder(&js).await, None, "SIGTERM hands the lease back");
}

#[tokio::test]
async fn a_leader_paused_past_its_lease_does_not_publish_when_it_wakes() {
    // On the three-server cluster of §9, where the lease is an R3 KV key.
    let cluster = NatsCluster::start(3);
    cluster.wait_for_jetstream(common::PATIENCE).await;
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.urls();
    let client = async_nats::connect(url.split(',').map(str::to_string).collect::<Vec<_>>())
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    let mut snapshots = client.subscribe("truebit.stats.aggregated").await.unwrap();
    let patience = || tokio::time::Instant::now() + common::PATIENCE;

    let a = instance(&url, dir.path(), "a", 3);
    assert_eq!(next_snapshot(&mut snapshots, patience()).await.0, "a");
    let b = instance(&url, dir.path(), "b", 3);
    let last = common::publish(&js, &common::heartbeats("node-1", 10)).await;
    common::wait_folded(&client, last).await;

    signal(&a, SIGSTOP);
    let deadline = patience();
    while next_snapshot(&mut snapshots, deadline).await.0 != "b" {}
    signal(&a, SIGCONT);
    // Whatever a had in hand when it was stopped, it must not publish once awake: watch a while.
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < watch_until {
        match tokio::time::timeout_at(watch_until, snapshots.next()).await {
            Ok(Some(m)) => {
                let who = m
                    .headers
                    .unwrap()
                    .get("Truebit-Instance")
                    .unwrap()
                    .to_string();
                assert_eq!(who, "b", "a published after waking without the lease");
            }
            _ => break,
        }
    }
    assert_eq!(holder(&js).await.as_deref(), Some("b"));
    for mut p in [a, b] {
        signal(&p, SIGTERM);
        assert!(p.wait().unwrap().success());
    }
}

/// Contract §9, fencing: a leader cut off by a partition that keeps its connection open (the
/// proxy holds it silent) has writes waiting in its client; when the partition heals they reach
/// the server after the standby took over and published newer numbers. Neither the subject nor
/// KV steps back: every write of a snapshot is a compare-and-set on the revision the writer
/// last saw, and a snapshot goes out only after its `latest` write succeeded.
#[tokio::test]
async fn a_leader_cut_off_by_a_partition_cannot_move_the_numbers_back() {
    let server = NatsServer::start();
    let proxy = TcpProxy::start(&server.url());
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    let mut snapshots = client.subscribe("truebit.stats.aggregated").await.unwrap();
    let patience = || tokio::time::Instant::now() + common::PATIENCE;
    // Every snapshot on the subject, in order: its last sequence never goes down.
    let mut highest = 0;
    let mut next = |who_seq: (String, u64)| {
        assert!(
            who_seq.1 >= highest,
            "{} published a snapshot at sequence {} after one at {highest}",
            who_seq.0,
            who_seq.1
        );
        highest = who_seq.1;
        who_seq
    };

    // a reaches NATS only through the proxy; b directly. a publishes every second, so that the
    // partition, made right after one of its snapshots, falls well before its next one.
    let (mut a, mut a_log) = instance_with_log(&proxy.url(), dir.path(), "a", 1, 1000);
    assert_eq!(next(next_snapshot(&mut snapshots, patience()).await).0, "a");
    let b = instance(&url, dir.path(), "b", 1);
    let before = common::publish(&js, &common::heartbeats("node-1", 10)).await;
    let deadline = patience();
    while next(next_snapshot(&mut snapshots, deadline).await).1 < before {}

    // Every value each snapshot key takes from here on: the number of nodes never goes down.
    let kv = js.get_key_value("truebit-stats").await.unwrap();
    let mut kv_values = kv.watch_all().await.unwrap();
    let kv_checked = tokio::spawn(async move {
        let mut seen = std::collections::HashMap::<String, u64>::new();
        while let Some(entry) = kv_values.next().await {
            let entry = entry.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
            let nodes = body["data"]["totalNodes"].as_u64().unwrap();
            let was = seen.insert(entry.key.clone(), nodes).unwrap_or(0);
            assert!(
                nodes >= was,
                "KV {} went back from {was} to {nodes} nodes",
                entry.key
            );
        }
    });

    // Cut a off right after one of its snapshots, so that the next one is in its hands.
    while next(next_snapshot(&mut snapshots, patience()).await).0 != "a" {}
    proxy.hold();
    let newer = common::publish(&js, &common::heartbeats("node-2", 10)).await;
    let deadline = patience();
    loop {
        let (who, seq) = next(next_snapshot(&mut snapshots, deadline).await);
        if who == "b" && seq >= newer {
            break;
        }
    }

    // Healed: what a held reaches the server now. a learns it lost the lease by reading it
    // again, which the server answers only after everything a sent before.
    proxy.release();
    let deadline = patience();
    loop {
        let line = tokio::time::timeout_at(deadline, a_log.recv())
            .await
            .expect("a hears from the server again")
            .expect("a is running");
        if line.contains("lost the lease") {
            break;
        }
    }
    // Two more snapshots of b, each sent after the server handled all of a's late writes.
    for _ in 0..2 {
        let (who, _) = next(next_snapshot(&mut snapshots, patience()).await);
        assert_eq!(who, "b", "only b publishes after the partition");
    }
    let latest: serde_json::Value =
        serde_json::from_slice(&kv.get("latest").await.unwrap().unwrap()).unwrap();
    assert_eq!(latest["data"]["totalNodes"], 2, "latest holds b's numbers");
    // Nor does the history in TRUEBIT_STATS go back.
    let mut history = js.get_stream("TRUEBIT_STATS").await.unwrap();
    let last = history.info().await.unwrap().state.last_sequence;
    let mut folded = 0;
    for seq in 1..=last {
        let m = history.get_raw_message(seq).await.unwrap();
        let record: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let at = record["seq"].as_u64().unwrap();
        assert!(
            at >= folded,
            "history record {seq} is of sequence {at}, after one of {folded}"
        );
        folded = at;
    }
    if kv_checked.is_finished() {
        match kv_checked.await {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            ended => panic!("the KV watch ended: {ended:?}"),
        }
    }
    kv_checked.abort();

    let mut b = b;
    for p in [&mut a, &mut b] {
        signal(p, SIGTERM);
        assert!(p.wait().unwrap().success());
    }
}
