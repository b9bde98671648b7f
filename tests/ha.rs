//! Contract §9 with two `serve` instances, each folding the whole stream into its own database:
//! one publishes, the other takes over when it dies, never both, and the numbers never go back.
//! The takeover runs on one server (the lease needs no cluster); the pause on a three-server
//! cluster. `tests/cluster.rs` kills servers and instances under load.

mod common;

use async_nats::jetstream;
use common::process::{command, spawn_serve_with};
use futures::StreamExt;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use truebit_projections::Projections;
use truebit_testkit::{
    signal, NatsCluster, NatsServer, Reaped, SIGCONT, SIGKILL, SIGSTOP, SIGTERM,
};

/// Starts `serve --instance NAME` on the server(s) at `url`, its streams at `replicas`.
fn instance(url: &str, dir: &Path, name: &str, replicas: usize) -> Reaped {
    let mut c = command(url, &dir.join(format!("{name}.redb")));
    c.env("INSTANCE", name)
        .env("REPLICAS", replicas.to_string());
    let (child, log) = spawn_serve_with(c);
    // Echoed, so that a failed exit shows what the instance said.
    let name = name.to_string();
    std::thread::spawn(move || {
        for line in log {
            eprintln!("[{name}] {line}");
        }
    });
    child
}

fn heartbeats(node: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|_| {
            common::msg(
                "truebit.heartbeat",
                json!({"version": "1.0", "type": "heartbeat", "timestamp": chrono::Utc::now().to_rfc3339(),
                       "nodeId": node, "data": {"status": "online"}}),
            )
        })
        .collect()
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
    let mut traffic = heartbeats("node-1", 50);
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
    let mut traffic = heartbeats("node-2", 30);
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
    let last = common::publish(&js, &heartbeats("node-1", 10)).await;
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
