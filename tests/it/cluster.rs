//! Contract §9 on a real three-server JetStream cluster on 127.0.0.1, `REPLICAS=3`: two `serve`
//! instances under a steady publish load lose nothing when the server leading the events stream
//! dies, or when the leading instance dies, and a restarted instance stays a standby.

use crate::common;

use crate::common::process::{command, run, spawn_serve_with};
use async_nats::jetstream;
use futures::StreamExt;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use truebit_projections::Projections;
use truebit_testkit::{signal, NatsCluster, Reaped, SIGKILL, SIGTERM};

fn instance(urls: &str, dir: &Path, name: &str) -> (Reaped, std::sync::mpsc::Receiver<String>) {
    let mut c = command(urls, &dir.join(format!("{name}.redb")));
    c.env("INSTANCE", name).env("REPLICAS", "3");
    spawn_serve_with(c)
}

/// Stops an instance as systemd would, and says why if it did not exit 0.
fn terminate(p: &mut Reaped, log: &std::sync::mpsc::Receiver<String>) {
    signal(p, SIGTERM);
    let status = p.wait().unwrap();
    let lines: Vec<String> = log.try_iter().collect();
    assert!(status.success(), "{status}: {}", lines.join("\n"));
}

/// Publishes a heartbeat every 20 ms until told to stop, each retried (with its Nats-Msg-Id, so
/// that JetStream stores it once) until the cluster acknowledges it, whichever server is down.
/// Returns how many were stored and the last stream sequence.
fn load(urls: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let servers: Vec<String> = urls.split(',').map(str::to_string).collect();
        let client = async_nats::connect(servers).await.unwrap();
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client);
        let (mut n, mut last) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            let body = json!({"version": "1.0", "type": "heartbeat", "timestamp": chrono::Utc::now().to_rfc3339(),
                "nodeId": "node-load", "data": {"status": "online"}});
            let payload = serde_json::to_vec(&body).unwrap();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("load-{n}").as_str());
            let deadline = tokio::time::Instant::now() + common::PATIENCE;
            loop {
                let sent = js
                    .publish_with_headers(
                        "truebit.heartbeat",
                        headers.clone(),
                        payload.clone().into(),
                    )
                    .await;
                if let Ok(ack) = sent {
                    if let Ok(ack) = ack.await {
                        last = last.max(ack.sequence);
                        break;
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the cluster stored nothing for two minutes"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (n, last)
    })
}

/// Waits, without blocking the runtime, until `cond` holds.
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what} in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn losing_the_stream_leaders_server_or_the_leading_instance_loses_nothing() {
    let mut cluster = NatsCluster::start(3);
    cluster.wait_for_jetstream(common::PATIENCE).await;
    let urls = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    let mut init = command(&urls, &dir.path().join("unused.redb"));
    init.env("REPLICAS", "3").arg("init");
    let out = run(&mut init);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let client = async_nats::connect(urls.split(',').map(str::to_string).collect::<Vec<_>>())
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    let leaders = Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let mut snapshots = client.subscribe("truebit.stats.aggregated").await.unwrap();
    let seen = leaders.clone();
    let highest = Arc::new(AtomicU64::new(0));
    let high = highest.clone();
    // Collected here, asserted at the end: a panic in this task would go unseen.
    let went_back = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let back_seen = went_back.clone();
    tokio::spawn(async move {
        while let Some(m) = snapshots.next().await {
            let Some(h) = m.headers else { continue };
            let who = h.get("Truebit-Instance").map(|v| v.to_string());
            let seq = h
                .get("Truebit-Last-Seq")
                .and_then(|v| v.as_str().parse::<u64>().ok());
            let (Some(who), Some(seq)) = (who, seq) else {
                continue;
            };
            // Published numbers never go back, whoever publishes.
            let before = high.fetch_max(seq, Ordering::SeqCst);
            if seq < before {
                back_seen.lock().unwrap().push((before, seq));
            }
            seen.lock().unwrap().push((who, seq));
        }
    });

    let (a, a_log) = instance(&urls, dir.path(), "a");
    let (b, b_log) = instance(&urls, dir.path(), "b");
    let stop = Arc::new(AtomicBool::new(false));
    let loading = load(urls.clone(), stop.clone());
    let published_by = |name: &str| {
        leaders
            .lock()
            .unwrap()
            .iter()
            .filter(|(who, _)| who == name)
            .count()
    };
    wait_for("a first snapshot", || !leaders.lock().unwrap().is_empty()).await;
    let first = leaders.lock().unwrap()[0].0.clone();

    // The server that leads TRUEBIT_EVENTS dies, and comes back.
    let mut events = js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    let info = events.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    let leader_server = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap();
    let index: usize = leader_server.trim_start_matches('n').parse().unwrap();
    cluster.servers[index].stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = highest.load(Ordering::SeqCst);
    wait_for("folding going on without that server", || {
        highest.load(Ordering::SeqCst) > before + 20
    })
    .await;
    cluster.servers[index].start_again();

    // The leading instance dies: the other takes over.
    let (mut dead, mut standby, standby_log, standby_name) = if first == "a" {
        drop(a_log);
        (a, b, b_log, "b")
    } else {
        drop(b_log);
        (b, a, a_log, "a")
    };
    signal(&dead, SIGKILL);
    dead.wait().unwrap();
    wait_for("the standby to publish", || published_by(standby_name) > 0).await;

    // The killed one comes back as a standby.
    let dead_name = if standby_name == "a" { "b" } else { "a" };
    let (mut back, back_log) = instance(&urls, dir.path(), dead_name);
    let published_before = published_by(dead_name);
    stop.store(true, Ordering::Relaxed);
    let (sent, last) = loading.await.unwrap();
    common::wait_folded(&client, last).await;
    let settle = published_by(standby_name) + 5;
    wait_for("five more snapshots", || {
        published_by(standby_name) >= settle
    })
    .await;
    assert_eq!(
        published_by(dead_name),
        published_before,
        "the restarted instance publishes nothing while the other leads"
    );

    // Each instance acks only what it committed: both consumers acked to the end means both
    // folded it all, the restarted one too.
    for name in ["a", "b"] {
        let mut consumer: jetstream::consumer::PullConsumer = events
            .get_consumer(&format!("aggregator-{name}"))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + common::PATIENCE;
        while consumer.info().await.unwrap().ack_floor.stream_sequence < last {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    terminate(&mut standby, &standby_log);
    terminate(&mut back, &back_log);
    for name in ["a", "b"] {
        let db = Projections::open_existing(dir.path().join(format!("{name}.redb"))).unwrap();
        assert_eq!(
            db.last_seq().unwrap(),
            last,
            "{name} folded the whole stream"
        );
        assert_eq!(
            db.node("node-load").unwrap().unwrap().heartbeat_count,
            sent,
            "{name}: every message stored once and folded once"
        );
    }
    // The server that died rejoined and caught up: its replica is current.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let info = events.info().await.unwrap().clone();
        let cluster = info.cluster.unwrap();
        let caught_up = cluster.leader.as_deref() == Some(leader_server.as_str())
            || cluster
                .replicas
                .iter()
                .any(|r| r.name == leader_server && r.current && r.lag.unwrap_or(0) == 0);
        if caught_up {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{leader_server} did not catch up: {cluster:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
