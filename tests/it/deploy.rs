//! `deploy/nats-server.conf` as shipped: the aggregator can do its job, and a node can publish
//! its events and read the stats but do nothing else.

use crate::common;

use async_nats::jetstream;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;
use truebit_federation::{serve, ServeConfig};
use truebit_testkit::NatsServer;

/// The shipped configuration with test passwords. The test server picks its own client port and
/// store dir, and the HTTP port would clash between tests. The WebSocket listener gets `ws`'s
/// port and certificate, or is left out.
fn deploy_config(ws: Option<(u16, &Path, &Path)>) -> String {
    let read = |name: &str| {
        std::fs::read_to_string(format!("{}/deploy/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    // The test server's config lives in a temporary folder: the include goes in as text.
    let text =
        read("nats-server.conf").replace("include \"accounts.conf\"", &read("accounts.conf"));
    let text = text
        .replace("$AGGREGATOR_PASSWORD", "\"agg-secret\"")
        .replace("$MONITOR_PASSWORD", "\"monitor-secret\"")
        .replace("$OPERATOR_PASSWORD", "\"operator-secret\"")
        .replace("$AUDITOR_PASSWORD", "\"auditor-secret\"");
    let mut out = Vec::new();
    let mut in_websocket = 0usize;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("websocket {") {
            in_websocket = 1;
            if ws.is_none() {
                continue;
            }
        } else if in_websocket > 0 {
            in_websocket += line.matches('{').count();
            in_websocket -= line.matches('}').count();
            match ws {
                None => continue,
                Some((port, cert, key)) => {
                    if t.starts_with("port:") {
                        out.push(format!("  port: {port}"));
                    } else if t.starts_with("cert_file") {
                        out.push(format!("    cert_file: {:?}", cert.display().to_string()));
                    } else if t.starts_with("key_file") {
                        out.push(format!("    key_file: {:?}", key.display().to_string()));
                    } else {
                        out.push(line.to_string());
                    }
                    continue;
                }
            }
        }
        if ["http_port", "port:", "store_dir"]
            .iter()
            .any(|k| t.starts_with(k))
        {
            continue;
        }
        out.push(line.to_string());
    }
    out.join("\n")
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
    let server = NatsServer::start_with_config(&deploy_config(None));
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::new(server.url(), dir.path().join("a.redb"));
    config.publish_interval = Duration::from_millis(200);
    config.nats.user = Some("aggregator".into());
    config.nats.password = Some("agg-secret".into());
    let (stop, stopped) = oneshot::channel::<()>();
    let aggregator = tokio::spawn(serve(config, async move {
        let _ = stopped.await;
    }));

    let node = connect(&server, "monitor", "monitor-secret").await;
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
    let admin = js
        .publish("truebit.admin.keys", "{}".into())
        .await
        .unwrap()
        .await;
    assert!(admin.is_err(), "nodes cannot publish operator events");

    // Only the operator's user may: JetStream stores (and the fold will judge) what it sends.
    let operator = connect(&server, "operator", "operator-secret").await;
    // The operator finds the aggregator's micro service and asks it for a snapshot.
    let ping = tokio::time::timeout(
        common::PATIENCE,
        operator.request("$SRV.PING.truebit-stats", "".into()),
    )
    .await
    .unwrap()
    .expect("the micro service answers discovery");
    let ping: serde_json::Value = serde_json::from_slice(&ping.payload).unwrap();
    assert_eq!(ping["name"], "truebit-stats");
    let snapshot = operator
        .request("truebit.stats.query", r#"{"period":"1h"}"#.into())
        .await
        .expect("the operator may query stats");
    let snapshot: serde_json::Value = serde_json::from_slice(&snapshot.payload).unwrap();
    assert_eq!(snapshot["period"], "1h");
    let stored = jetstream::new(operator)
        .publish("truebit.admin.keys", "{}".into())
        .await
        .unwrap()
        .await;
    assert!(stored.is_ok(), "{stored:?}");
    let aggregator_user = connect(&server, "aggregator", "agg-secret").await;
    let refused = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(aggregator_user)
        .publish("truebit.admin.keys", "{}".into())
        .await
        .unwrap()
        .await;
    assert!(refused.is_err(), "not even the aggregator's user");
    // Its history records are stored: the user may write TRUEBIT_STATS.
    let history = jetstream::new(connect(&server, "aggregator", "agg-secret").await)
        .get_stream("TRUEBIT_STATS")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let last = history
            .get_last_raw_message_by_subject("truebit.stats.history")
            .await
            .expect("a history record");
        let record: serde_json::Value = serde_json::from_slice(&last.payload).unwrap();
        if record["totalNodes"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let _ = stop.send(());
    aggregator.await.unwrap().unwrap();
}

/// A third party checks the published numbers as user `auditor` (contract §11): `audit` runs
/// with it, and it can read the streams but change nothing, not even an aggregator's consumer.
#[tokio::test]
async fn an_auditor_audits_with_read_access_and_nothing_more() {
    let server = NatsServer::start_with_config(&deploy_config(None));
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::new(server.url(), dir.path().join("a.redb"));
    config.publish_interval = Duration::from_millis(200);
    config.digest_every = Some(5);
    config.nats.user = Some("aggregator".into());
    config.nats.password = Some("agg-secret".into());
    let (stop, stopped) = oneshot::channel::<()>();
    let aggregator = tokio::spawn(serve(config, async move {
        let _ = stopped.await;
    }));
    let node = jetstream::new(connect(&server, "monitor", "monitor-secret").await);
    let aggregator_user = connect(&server, "aggregator", "agg-secret").await;
    common::wait_folded(&aggregator_user, 0).await;
    let mut last = 0;
    for i in 0..12 {
        let body = json!({"version": "1.0", "type": "heartbeat", "timestamp": chrono::Utc::now().to_rfc3339(),
            "nodeId": format!("node-{i}"), "data": {"continentBucket": "EU"}});
        last = node
            .publish(
                "truebit.heartbeat",
                serde_json::to_vec(&body).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence;
    }
    common::wait_folded(&aggregator_user, last).await;
    common::wait_folded(&aggregator_user, last).await;

    let audit = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_truebit-federation"))
            .env("NATS_URL", server.url())
            .env("NATS_USER", "auditor")
            .env("NATS_PASSWORD", "auditor-secret")
            .arg("audit")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = audit(&[]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("audit passed"), "{said}");

    let auditor = connect(&server, "auditor", "auditor-secret").await;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(auditor.clone());
    let mut events = js
        .get_stream("TRUEBIT_EVENTS")
        .await
        .expect("may read the record");
    assert!(events.info().await.unwrap().state.messages >= 12);
    assert!(
        js.publish("truebit.heartbeat", "{}".into())
            .await
            .unwrap()
            .await
            .is_err(),
        "may not publish events"
    );
    assert!(
        js.publish("truebit.stats.history", "{}".into())
            .await
            .unwrap()
            .await
            .is_err(),
        "may not publish history"
    );
    assert!(
        js.delete_stream("TRUEBIT_STATS").await.is_err(),
        "may not delete"
    );
    assert!(events.purge().await.is_err(), "may not purge");
    assert!(
        events.delete_message(1).await.is_err(),
        "may not delete a message"
    );
    let consumer = async_nats::jetstream::consumer::pull::Config {
        durable_name: Some("aggregator".into()),
        ..Default::default()
    };
    assert!(
        events.create_consumer(consumer).await.is_err(),
        "may not make or change a durable consumer, the aggregator's least of all"
    );
    assert!(
        js.get_key_value("truebit-stats").await.is_err(),
        "may not open the stats bucket to write it"
    );
    let kv = js
        .get_key_value("truebit-config")
        .await
        .expect("may read the settings");
    assert!(
        kv.put("digest-every", "7".into()).await.is_err(),
        "may not change them"
    );

    let _ = stop.send(());
    aggregator.await.unwrap().unwrap();
}

/// Today's monitors connect over `wss://` as user `monitor`: the shipped WebSocket listener with
/// TLS takes them, and what they publish there is captured like anything else.
#[tokio::test]
async fn a_monitor_connects_over_websocket_with_tls_and_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    // A port the kernel hands out, given back for nats-server to listen on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = NatsServer::start_with_config(&deploy_config(Some((port, &cert_path, &key_path))));
    let admin = async_nats::ConnectOptions::with_user_and_password(
        "aggregator".into(),
        "agg-secret".into(),
    )
    .connect(server.url())
    .await
    .unwrap();
    truebit_federation::topology::ensure(&jetstream::new(admin.clone()), &Default::default())
        .await
        .unwrap();

    let monitor = async_nats::ConnectOptions::with_user_and_password(
        "monitor".into(),
        "monitor-secret".into(),
    )
    .add_root_certificates(cert_path.clone())
    .connect(format!("wss://localhost:{port}"))
    .await
    .expect("a monitor connects over wss:// with the hub's certificate");
    let body = json!({"version": "1.0", "type": "node_joined", "timestamp": chrono::Utc::now().to_rfc3339(),
        "nodeId": "node-ws", "data": {"status": "online"}});
    let ack = jetstream::new(monitor)
        .publish(
            "truebit.nodes.joined",
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .expect("JetStream stores what came over the WebSocket");
    let stored = jetstream::new(admin)
        .get_stream("TRUEBIT_EVENTS")
        .await
        .unwrap()
        .get_raw_message(ack.sequence)
        .await
        .unwrap();
    assert_eq!(stored.payload, serde_json::to_vec(&body).unwrap());

    let plain = async_nats::ConnectOptions::with_user_and_password(
        "monitor".into(),
        "monitor-secret".into(),
    )
    .connection_timeout(Duration::from_secs(2))
    .connect(format!("ws://localhost:{port}"))
    .await;
    assert!(plain.is_err(), "the WebSocket listener speaks TLS only");
}

/// `deploy/cluster/nats-cluster.conf` is a configuration nats-server accepts, with the shared
/// accounts and a certificate in place.
#[test]
fn the_cluster_configuration_is_one_nats_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let conf = std::fs::read_to_string(format!("{deploy}/cluster/nats-cluster.conf"))
        .unwrap()
        .replace("/etc/nats/tls/server.crt", cert_path.to_str().unwrap())
        .replace("/etc/nats/tls/server.key", key_path.to_str().unwrap())
        .replace("/data/nats", dir.path().join("store").to_str().unwrap());
    std::fs::create_dir(dir.path().join("cluster")).unwrap();
    std::fs::copy(
        format!("{deploy}/accounts.conf"),
        dir.path().join("accounts.conf"),
    )
    .unwrap();
    let path = dir.path().join("cluster/nats-cluster.conf");
    std::fs::write(&path, conf).unwrap();
    let out = std::process::Command::new(truebit_testkit::nats_server_binary())
        .args(["-t", "-c"])
        .arg(&path)
        .env("SERVER_NAME", "nats-1")
        .env("AGGREGATOR_PASSWORD", "a")
        .env("MONITOR_PASSWORD", "m")
        .env("OPERATOR_PASSWORD", "o")
        .env("AUDITOR_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
