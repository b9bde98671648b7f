//! Contract §8 against a real nats-server: `/metrics` read with a Prometheus text parser, the
//! health and readiness answers, `/api/stats` and `/api/history`, the history records in
//! `TRUEBIT_STATS`, and `stats` as the NATS micro service `truebit-stats`.

use crate::common;

use crate::common::{http_get, msg, Served, PATIENCE};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use truebit_testkit::{publish_all, Fleet};

/// `/metrics` parsed by a real Prometheus text-format parser: each sample by name and labels.
async fn scrape(base: &str) -> BTreeMap<String, f64> {
    let answer = http_get(base, "/metrics", None).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        answer.content_type
    );
    let lines = answer.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the Prometheus text format");
    let mut out = BTreeMap::new();
    for sample in scrape.samples {
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let key = if labels.is_empty() {
            sample.metric
        } else {
            format!("{}{{{}}}", sample.metric, labels.join(","))
        };
        out.insert(key, value);
    }
    // Every family of the contract is typed as it should be, with its help text.
    for (family, kind) in [
        ("truebit_events_folded_total", "counter"),
        ("truebit_dead_letters_total", "counter"),
        ("truebit_admission_total", "counter"),
        ("truebit_commit_duration_seconds", "histogram"),
        ("truebit_commit_events", "histogram"),
        ("truebit_consumer_pending_messages", "gauge"),
        ("truebit_oldest_unfolded_age_seconds", "gauge"),
        ("truebit_snapshot_age_seconds", "gauge"),
        ("truebit_database_bytes", "gauge"),
        ("truebit_leader", "gauge"),
        ("truebit_ready", "gauge"),
        ("truebit_last_applied_sequence", "gauge"),
        ("truebit_stream_last_sequence", "gauge"),
    ] {
        assert!(
            answer.body.contains(&format!("# TYPE {family} {kind}\n"))
                && answer.body.contains(&format!("# HELP {family} ")),
            "{family} is not a {kind} with help text:\n{}",
            answer.body
        );
    }
    out
}

fn too_large() -> (String, Vec<u8>) {
    let padding = "x".repeat(9 * 1024);
    msg(
        "truebit.heartbeat",
        json!({"version": "1.0", "type": "heartbeat", "timestamp": "2026-01-01T00:00:00Z",
               "nodeId": "node-big", "data": {"note": padding}}),
    )
}

/// The backlog a restarted serve catches up on: a fleet's messages and one refusal per reason
/// that validation decides.
async fn backlog(served: &Served) -> (u64, truebit_testkit::Expected) {
    let fleet = Fleet {
        span: chrono::Duration::minutes(90),
        ..Fleet::new(12, 11)
    };
    let (messages, expected) = fleet.generate(400);
    publish_all(
        &served.js,
        messages
            .iter()
            .map(|m| (m.subject, m.payload.as_slice(), Some(m.msg_id.as_str()))),
    )
    .await;
    let now = chrono::Utc::now().to_rfc3339();
    let bad = [
        ("truebit.heartbeat".to_string(), b"{not json".to_vec()),
        msg(
            "truebit.heartbeat",
            json!({"version": "1.0", "type": "heartbeat", "timestamp": now}),
        ),
        msg(
            "truebit.tasks.received",
            json!({"version": "1.0", "type": "task_received",
            "timestamp": now, "nodeId": "node-1", "data": {"taskIdHash": "nothex"}}),
        ),
        msg(
            "truebit.heartbeat",
            json!({"version": "1.0", "type": "heartbeat",
            "timestamp": "2019-06-01T00:00:00Z", "nodeId": "node-1"}),
        ),
        too_large(),
    ];
    let last = common::publish(&served.js, &bad).await;
    (last, expected)
}

/// Counts the dead letters `TRUEBIT_DLQ` holds, by their reason header.
async fn dead_letters_by_reason(js: &async_nats::jetstream::Context) -> BTreeMap<String, u64> {
    let stream = js.get_stream("TRUEBIT_DLQ").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let total = stream.cached_info().state.messages;
    let mut messages = consumer.messages().await.unwrap();
    let mut out = BTreeMap::new();
    for _ in 0..total {
        let m = tokio::time::timeout(PATIENCE, messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let reason = m
            .headers
            .as_ref()
            .unwrap()
            .get("Truebit-Dlq-Reason")
            .unwrap();
        *out.entry(reason.as_str().to_string()).or_insert(0) += 1;
    }
    out
}

#[tokio::test]
async fn metrics_show_the_catch_up_and_count_each_dead_letter_by_reason() {
    let mut served = Served::start().await;
    served.stop().await.unwrap();
    let (last, _) = backlog(&served).await;
    served.serve();
    let base = served.http_url().await;

    // Caught up: the lag falls to 0, the last applied sequence reaches the stream's end, and
    // the instance says it is ready as /readyz does.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let metrics = loop {
        let m = scrape(&base).await;
        if m["truebit_consumer_pending_messages"] == 0.0
            && m["truebit_last_applied_sequence"] == last as f64
            && m["truebit_stream_last_sequence"] == last as f64
            && m["truebit_ready"] == 1.0
        {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never caught up: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(metrics["truebit_events_folded_total"], last as f64);
    assert_eq!(metrics["truebit_oldest_unfolded_age_seconds"], 0.0);
    assert_eq!(metrics["truebit_leader"], 1.0);
    assert!(metrics["truebit_database_bytes"] > 0.0);
    assert!(metrics["truebit_commit_events_count"] >= 1.0, "{metrics:?}");
    assert_eq!(metrics["truebit_commit_events_sum"], last as f64);
    for outcome in ["admitted", "unauthorized", "rate_limited"] {
        assert_eq!(
            metrics[&format!("truebit_admission_total{{outcome={outcome}}}")],
            0.0,
            "open mode checks nothing"
        );
    }
    let ready = http_get(&base, "/readyz", None).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(http_get(&base, "/healthz", None).await.status, 200);

    // Each dead letter, once stored, is counted under its reason, and only those.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stored = dead_letters_by_reason(&served.js).await;
        let m = scrape(&base).await;
        let counted: BTreeMap<String, u64> = m
            .iter()
            .filter_map(|(k, v)| {
                let reason = k
                    .strip_prefix("truebit_dead_letters_total{reason=")?
                    .strip_suffix('}')?;
                (*v > 0.0).then(|| (reason.to_string(), *v as u64))
            })
            .collect();
        if stored.values().sum::<u64>() == 5 && counted == stored {
            assert_eq!(
                stored.keys().map(String::as_str).collect::<Vec<_>>(),
                ["clock", "malformed", "schema", "too_large"]
            );
            for reason in ["unauthorized", "rate_limited"] {
                assert_eq!(
                    m[&format!("truebit_dead_letters_total{{reason={reason}}}")],
                    0.0
                );
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "TRUEBIT_DLQ holds {stored:?}, the metrics count {counted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // OpenMetrics for a scraper that asks for it.
    let open = http_get(
        &base,
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    )
    .await;
    assert!(
        open.content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        open.content_type
    );
    assert!(open.body.ends_with("# EOF\n"));
    served.stop().await.unwrap();
}

#[tokio::test]
async fn the_api_answers_what_kv_holds_and_history_sums_to_the_snapshot() {
    let mut served = Served::start().await;
    let (last, expected) = backlog(&served).await;
    let published = served.wait_folded(last).await;
    let base = served.http_url().await;
    let at = (chrono::Utc::now() + chrono::Duration::minutes(10))
        .format("%Y-%m-%dT%H:%M:00Z")
        .to_string();

    // /api/stats is the object of period.<P>, computed at the request.
    let all = http_get(&base, &format!("/api/stats?period=all&at={at}"), None)
        .await
        .json();
    assert_eq!(all["period"], "all");
    assert_eq!(all["data"]["totalTasks"], expected.tasks);
    assert_eq!(all["data"]["totalInvoices"], expected.invoices);
    let week = http_get(&base, "/api/stats?period=7d", None).await.json();
    assert_eq!(week["period"], "7d");
    assert_eq!(week["data"]["totalNodes"], published["data"]["totalNodes"]);

    // Every step of all time sums to the snapshot of all.
    for step in ["1d", "1h"] {
        let h = http_get(
            &base,
            &format!("/api/history?range=all&step={step}&at={at}"),
            None,
        )
        .await;
        assert_eq!(h.status, 200, "{}", h.body);
        let h = h.json();
        assert_eq!(
            (h["range"].as_str(), h["step"].as_str()),
            (Some("all"), Some(step))
        );
        let points = h["points"].as_array().unwrap();
        let sum = |k: &str| points.iter().map(|p| p[k].as_u64().unwrap()).sum::<u64>();
        for (field, total) in [
            ("tasks", "totalTasks"),
            ("completed", "completedTasks"),
            ("failed", "failedTasks"),
            ("cached", "cachedTasks"),
            ("invoices", "totalInvoices"),
        ] {
            assert_eq!(
                sum(field),
                all["data"][total].as_u64().unwrap(),
                "{field} at step {step}"
            );
        }
    }
    let day = http_get(&base, "/api/history?range=24h", None).await.json();
    assert_eq!(day["step"], "1m");
    assert_eq!(
        day["points"].as_array().unwrap().len(),
        1441,
        "24 h at one minute, both ends"
    );
    let month = http_get(&base, "/api/history?range=30d", None).await.json();
    assert_eq!(
        (
            month["step"].as_str(),
            month["points"].as_array().unwrap().len()
        ),
        (Some("1h"), 721)
    );

    // The node series comes from the records every publish stores in TRUEBIT_STATS.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let h = http_get(&base, "/api/history?range=24h", None).await.json();
        let points = h["points"].as_array().unwrap();
        let latest = points.last().unwrap();
        if latest["totalNodes"] == json!(expected.nodes) {
            assert!(latest["activeNodes"].as_u64().is_some());
            assert!(
                points[0].get("totalNodes").is_none(),
                "no record a day ago: absent, not 0"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no history record in {latest}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut history = served.js.get_stream("TRUEBIT_STATS").await.unwrap();
    let info = history.info().await.unwrap();
    assert_eq!(info.config.max_age, Duration::from_secs(400 * 86_400));
    let record = history
        .get_last_raw_message_by_subject("truebit.stats.history")
        .await
        .unwrap();
    let record: Value = serde_json::from_slice(&record.payload).unwrap();
    assert_eq!(record["totalNodes"], expected.nodes);
    assert_eq!(record["tasks"], expected.tasks);
    assert!(record["seq"].as_u64().unwrap() >= last);

    // A bad parameter is a 400 that says what is allowed.
    for path in [
        "/api/history?range=2d",
        "/api/history?range=24h&step=5m",
        "/api/history?range=all&step=1m",
        "/api/history?range=24h&at=yesterday",
        "/api/stats?period=1y",
        "/api/stats?perod=all",
    ] {
        let answer = http_get(&base, path, None).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        let body = answer.json();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
        assert!(body["allowed"].is_object(), "{path}: {body}");
    }

    // The dashboard and its assets come from this server.
    let page = http_get(&base, "/", None).await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    for asset in [
        "/assets/app.js",
        "/assets/style.css",
        "/assets/vendor/uplot/uPlot.iife.min.js",
        "/assets/vendor/world/world.json",
    ] {
        assert!(
            page.body.contains(asset) || asset.ends_with(".json"),
            "{asset} not linked"
        );
        assert_eq!(http_get(&base, asset, None).await.status, 200, "{asset}");
    }
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "the page names no other host"
    );
    served.stop().await.unwrap();
}

#[tokio::test]
async fn stats_is_a_nats_micro_service() {
    let mut served = Served::start().await;
    let client = &served.client;
    let ask = |subject: &'static str, body: &'static str| async move {
        let reply = tokio::time::timeout(PATIENCE, client.request(subject, body.into()))
            .await
            .unwrap()
            .unwrap();
        reply
    };
    let ping: Value =
        serde_json::from_slice(&ask("$SRV.PING.truebit-stats", "").await.payload).unwrap();
    assert_eq!(ping["name"], "truebit-stats");
    let info: Value =
        serde_json::from_slice(&ask("$SRV.INFO.truebit-stats", "").await.payload).unwrap();
    let mut endpoints: Vec<(&str, &str)> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["subject"].as_str().unwrap()))
        .collect();
    endpoints.sort();
    assert_eq!(
        endpoints,
        [
            ("admin-key", "truebit.stats.admin-key"),
            ("keys", "truebit.keys.query"),
            ("stats", "truebit.stats.query")
        ]
    );

    let snapshot: Value = serde_json::from_slice(
        &ask("truebit.stats.query", r#"{"period":"24h"}"#)
            .await
            .payload,
    )
    .unwrap();
    assert_eq!(snapshot["period"], "24h");
    let refused = ask("truebit.stats.query", r#"{"period":"2h"}"#).await;
    let headers = refused.headers.expect("the service error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "400"
    );
    assert!(headers
        .get("Nats-Service-Error")
        .unwrap()
        .as_str()
        .contains("1h, 24h, 7d, all"));

    let stats: Value =
        serde_json::from_slice(&ask("$SRV.STATS.truebit-stats", "").await.payload).unwrap();
    let stats_endpoint = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "stats")
        .unwrap();
    assert_eq!(
        (
            stats_endpoint["num_requests"].as_u64(),
            stats_endpoint["num_errors"].as_u64()
        ),
        (Some(2), Some(1))
    );
    served.stop().await.unwrap();
}

#[tokio::test]
async fn an_http_address_in_use_stops_the_start_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let server = truebit_testkit::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(&server.url(), &dir.path().join("a.redb"));
    config.http_addr = Some(addr);
    let err = truebit_federation::serve(config, std::future::pending())
        .await
        .expect_err("the address is taken");
    assert_eq!(err.exit_code(), 2);
    let text = err.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("HTTP_ADDR"),
        "{text}"
    );
}
