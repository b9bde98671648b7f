//! Contract §11 against a real nats-server: instances compare their state digests at the
//! published digest points, and `audit` checks what was published against a rebuild from the
//! streams, from a checkpoint and from the start, and catches what was altered.

use crate::common::process::{command, spawn_serve_with};
use crate::common::{self, Served};
use redb::ReadableTable;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use truebit_testkit::{signal, Fleet, Reaped, SIGTERM};

const BIN: &str = env!("CARGO_BIN_EXE_truebit-federation");

fn audit(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .env("NATS_URL", url)
        .arg("audit")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn audit_ok(url: &str, args: &[&str]) -> String {
    let out = audit(url, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "audit {args:?} failed: {}",
        text(&out)
    );
    text(&out)
}

fn fleet(tasks: u64, seed: u64) -> Vec<(String, Vec<u8>)> {
    Fleet::new(12, seed)
        .generate(tasks)
        .0
        .into_iter()
        .map(|m| (m.subject.to_string(), m.payload))
        .collect()
}

/// Adds `by` to the count of heartbeats folded, as someone with the file could: a record of the
/// state table `events` changed behind the fold's back.
fn tamper_with_events(db: &Path, by: u64) {
    let raw = redb::Database::open(db).unwrap();
    let txn = raw.begin_write().unwrap();
    {
        let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("events");
        let mut table = txn.open_table(def).unwrap();
        let now = table.get("heartbeat").unwrap().unwrap().value();
        table.insert("heartbeat", now + by).unwrap();
    }
    txn.commit().unwrap();
}

/// Waits for a checkpoint at or after `seq`; returns its sequence.
async fn wait_for_checkpoint(served: &Served, seq: u64) -> u64 {
    let store = served
        .js
        .get_object_store("truebit-checkpoints")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        if let Some(&at) = truebit_replay::checkpoints(&store).await.unwrap().last() {
            if at >= seq {
                return at;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint at or after {seq}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the leader has published the digest point at `seq`.
async fn wait_for_point(js: &async_nats::jetstream::Context, seq: u64) {
    let stream = js.get_stream("TRUEBIT_STATS").await.unwrap();
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        if let Ok(m) = stream
            .get_last_raw_message_by_subject("truebit.stats.digest")
            .await
        {
            let point: truebit_streams::DigestPoint = serde_json::from_slice(&m.payload).unwrap();
            if point.seq >= seq {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "digest point {seq} was never published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_honest_network_audits_clean_from_a_checkpoint_and_from_the_start() {
    let mut served = Served::start_with(|c| {
        c.digest_every = Some(50);
        c.checkpoint_interval = Duration::from_millis(300);
    })
    .await;
    let url = served.server.url();
    let first = served.publish(&fleet(60, 1)).await;
    served.wait_folded(first).await;
    let last = served.publish(&fleet(80, 2)).await;
    assert!(last > 200, "several digest points: {last}");
    served.wait_folded(last).await;
    let at = wait_for_checkpoint(&served, last - last % 50).await;
    assert_eq!(at % 50, 0, "a checkpoint is taken at a digest point: {at}");
    wait_for_point(&served.js, at).await;
    // Folded further: the newest history record lies past the checkpoint.
    let newest = served.publish(&common::heartbeats("node-late", 7)).await;
    served.wait_folded(newest).await;
    served.wait_folded(newest).await;

    let out = audit_ok(&url, &[]);
    assert!(out.contains("audit passed"), "{out}");
    assert!(out.contains("from the checkpoint at sequence"), "{out}");
    assert!(out.contains("headline figures"), "{out}");
    assert!(out.contains("(equal)"), "{out}");

    // A digest point before any checkpoint: from the start.
    let out = audit_ok(&url, &["--seq", "100"]);
    assert!(out.contains("from the start of the stream"), "{out}");
    assert!(out.contains("auditing sequence 100"), "{out}");

    // The newest record at or before a time: now.
    let now = chrono::Utc::now().to_rfc3339();
    let out = audit_ok(&url, &["--at", &now]);
    assert!(out.contains("audit passed"), "{out}");

    // A checkpoint changed after it was stored no longer gives its published digest point:
    // audit passes over it, to an older one or to the start. Stopped first, so that no newer
    // checkpoint replaces it.
    served.stop().await.unwrap();
    let store = served
        .js
        .get_object_store("truebit-checkpoints")
        .await
        .unwrap();
    let newest = *truebit_replay::checkpoints(&store)
        .await
        .unwrap()
        .last()
        .unwrap();
    let name = format!("seq-{newest:020}");
    let copy = served.dir.path().join("checkpoint.redb");
    {
        let mut object = store.get(&name).await.unwrap();
        let mut file = tokio::fs::File::create(&copy).await.unwrap();
        tokio::io::copy(&mut object, &mut file).await.unwrap();
    }
    tamper_with_events(&copy, 1);
    let mut file = tokio::fs::File::open(&copy).await.unwrap();
    store.put(name.as_str(), &mut file).await.unwrap();
    let out = audit_ok(&url, &[]);
    let skipped = format!("checkpoint at sequence {newest}: its records give");
    assert!(out.contains(&skipped) && out.contains("skipped"), "{out}");
    assert!(
        !out.contains(&format!("from the checkpoint at sequence {newest}")),
        "{out}"
    );

    let nothing = audit(&url, &["--seq", "7"]);
    assert_eq!(nothing.status.code(), Some(2), "{}", text(&nothing));
    assert!(
        text(&nothing).contains("nothing was published at sequence 7"),
        "{}",
        text(&nothing)
    );
}

#[tokio::test]
async fn a_history_record_altered_after_publication_is_caught() {
    let mut served = Served::start_with(|c| c.digest_every = Some(50)).await;
    let url = served.server.url();
    let last = served.publish(&fleet(40, 3)).await;
    served.wait_folded(last).await;
    served.wait_folded(last).await;
    served.stop().await.unwrap();
    audit_ok(&url, &[]);

    // The newest record again, with one more task, under the same digest: as if someone with
    // write access to TRUEBIT_STATS had rewritten it.
    let stats = served.js.get_stream("TRUEBIT_STATS").await.unwrap();
    let newest = stats
        .get_last_raw_message_by_subject("truebit.stats.history")
        .await
        .unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&newest.payload).unwrap();
    record["tasks"] = json!(record["tasks"].as_u64().unwrap() + 1);
    let mut headers = async_nats::HeaderMap::new();
    for name in ["Truebit-Last-Seq", "Truebit-State-Digest"] {
        headers.insert(name, newest.headers.get(name).unwrap().as_str());
    }
    served
        .js
        .publish_with_headers(
            "truebit.stats.history",
            headers,
            serde_json::to_vec(&record).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let out = audit(&url, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("says tasks = "), "{}", text(&out));
}

#[tokio::test]
async fn a_database_altered_before_its_publish_is_caught() {
    let mut served = Served::start_with(|c| c.digest_every = Some(50)).await;
    let url = served.server.url();
    let last = served.publish(&fleet(30, 4)).await;
    served.wait_folded(last).await;
    served.stop().await.unwrap();
    tamper_with_events(&served.db_path, 1000);
    served.serve();
    let last = served.publish(&common::heartbeats("node-x", 5)).await;
    served.wait_folded(last).await;
    served.wait_folded(last).await;
    served.stop().await.unwrap();

    let out = audit(&url, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // Caught at the first digest point after the change, naming the table, or else at the
    // record's own digest.
    let said = text(&out);
    assert!(said.contains("audit FAILED"), "{said}");
    assert!(
        said.contains("tables that differ: events")
            || said.contains("computed by reading every rebuilt record"),
        "{said}"
    );
}

/// Starts `serve --instance NAME` with digest points every 10 sequences; its log lines come
/// back as it writes them.
fn instance(
    url: &str,
    dir: &Path,
    name: &str,
    http: &str,
) -> (Reaped, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let mut c = command(url, &dir.join(format!("{name}.redb")));
    c.env("INSTANCE", name)
        .env("HTTP_ADDR", http)
        .env("DIGEST_EVERY", "10")
        .env("RUST_LOG", "info,truebit_federation::serve::digests=debug");
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

/// Waits for a log line with every one of `words`; returns it.
async fn wait_for_line(
    log: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    words: &[&str],
) -> String {
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let line = tokio::time::timeout_at(deadline, log.recv())
            .await
            .unwrap_or_else(|_| panic!("no log line with {words:?}"))
            .expect("the instance runs");
        if words.iter().all(|w| line.contains(w)) {
            return line;
        }
    }
}

#[tokio::test]
async fn an_instance_whose_database_was_altered_counts_a_mismatch_and_names_the_table() {
    let server = truebit_testkit::NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());

    // a leads: b compares what a publishes.
    let mut snapshots = client.subscribe("truebit.stats.aggregated").await.unwrap();
    let (a, mut a_log) = instance(&url, dir.path(), "a", "127.0.0.1:0");
    let first = tokio::time::timeout(common::PATIENCE, futures::StreamExt::next(&mut snapshots))
        .await
        .expect("a publishes")
        .unwrap();
    assert_eq!(
        first
            .headers
            .unwrap()
            .get("Truebit-Instance")
            .unwrap()
            .as_str(),
        "a"
    );
    let (b, mut b_log) = instance(&url, dir.path(), "b", "127.0.0.1:0");
    let last = common::publish(&js, &common::heartbeats("node-1", 25)).await;
    wait_for_point(&js, 20).await;
    // Both compared the points they folded, and agreed.
    wait_for_line(&mut b_log, &["agrees", "seq=20"]).await;

    signal(&b, SIGTERM);
    let mut b = b;
    b.wait().unwrap();
    tamper_with_events(&dir.path().join("b.redb"), 3);
    // A port known beforehand, to read b's metrics at.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (b, mut b_log) = instance(&url, dir.path(), "b", &format!("127.0.0.1:{port}"));
    let base = format!("http://127.0.0.1:{port}");
    let more = common::publish(&js, &common::heartbeats("node-1", 20)).await;
    assert!(more >= last + 20);
    let line = wait_for_line(&mut b_log, &["differs from the published digest point"]).await;
    assert!(line.contains("tables=events"), "{line}");
    let metrics = common::http_get(&base, "/metrics", None).await.body;
    let mismatches: f64 = metrics
        .lines()
        .find(|l| l.starts_with("truebit_digest_mismatches_total "))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no truebit_digest_mismatches_total in {metrics}"));
    assert!(mismatches >= 1.0, "{metrics}");
    // b goes on folding; a, untouched, never disagreed.
    common::wait_folded(&client, more).await;
    while let Ok(line) = a_log.try_recv() {
        assert!(!line.contains("differs from the published"), "{line}");
    }
    drop((a, b));
}
