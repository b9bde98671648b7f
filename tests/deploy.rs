//! `deploy/nats-server.conf` as shipped: the aggregator can do its job, and a node can publish
//! its events and read the stats but do nothing else.

mod common;

use async_nats::jetstream;
use serde_json::json;
use std::time::Duration;
use tokio::sync::oneshot;
use truebit_federation::{serve, ServeConfig};
use truebit_testkit::NatsServer;

fn deploy_config() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nats-server.conf"
    ))
    .unwrap();
    // The test server picks its own port and store dir; the HTTP port would clash between tests.
    text.replace("$AGGREGATOR_PASSWORD", "\"agg-secret\"")
        .replace("$NODE_PASSWORD", "\"node-secret\"")
        .lines()
        .filter(|l| {
            ["http_port", "port:", "store_dir"]
                .iter()
                .all(|k| !l.trim_start().starts_with(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn connect(server: &NatsServer, user: &str, password: &str) -> async_nats::Client {
    // Denied requests get no answer: a short timeout keeps the test quick.
    async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .request_timeout(Some(Duration::from_secs(1)))
        .connect(server.url())
        .await
        .unwrap()
}

#[tokio::test]
async fn nodes_publish_events_and_read_stats_and_nothing_more() {
    let server = NatsServer::start_with_config(&deploy_config());
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::new(server.url(), dir.path().join("a.redb"));
    config.publish_interval = Duration::from_millis(200);
    config.nats.user = Some("aggregator".into());
    config.nats.password = Some("agg-secret".into());
    let (stop, stopped) = oneshot::channel::<()>();
    let aggregator = tokio::spawn(serve(config, async move {
        let _ = stopped.await;
    }));

    let node = connect(&server, "node", "node-secret").await;
    let mut stats = node.subscribe("truebit.stats.aggregated").await.unwrap();
    // The first snapshot means the topology exists: before it, nothing would capture the event.
    use futures::StreamExt;
    tokio::time::timeout(common::PATIENCE, stats.next())
        .await
        .expect("a first snapshot")
        .unwrap();
    let body = json!({"version": "1.0", "type": "heartbeat", "timestamp": chrono::Utc::now().to_rfc3339(),
        "nodeId": "node-1", "data": {"continentBucket": "EU"}});
    // A node publishes with core NATS, as today's monitor does: JetStream captures it.
    node.publish(
        "truebit.heartbeat",
        serde_json::to_vec(&body).unwrap().into(),
    )
    .await
    .unwrap();
    node.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let m = tokio::time::timeout_at(deadline, stats.next())
            .await
            .expect("stats reach the node")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if v["data"]["activeNodes"] == 1 {
            break;
        }
    }

    // The late joiner's path: the KV bucket.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(node.clone());
    let kv = js
        .get_key_value("truebit-stats")
        .await
        .expect("nodes may open the bucket");
    let latest = kv
        .get("latest")
        .await
        .expect("nodes may read it")
        .expect("a snapshot is there");
    assert!(
        serde_json::from_slice::<serde_json::Value>(&latest).unwrap()["data"]["totalNodes"] == 1
    );

    // And nothing else: no writing stats, no operator events, no touching the streams.
    assert!(
        kv.put("latest", "forged".into()).await.is_err(),
        "nodes cannot write the bucket"
    );
    assert!(
        js.delete_stream("TRUEBIT_EVENTS").await.is_err(),
        "nodes cannot delete the record"
    );
    assert!(
        js.get_stream("TRUEBIT_EVENTS").await.is_err(),
        "nodes cannot read raw events"
    );
    let denied = node.request("truebit.stats.query", "{}".into()).await;
    assert!(
        denied.is_err(),
        "nodes cannot query the aggregator directly"
    );

    let _ = stop.send(());
    aggregator.await.unwrap().unwrap();
}
