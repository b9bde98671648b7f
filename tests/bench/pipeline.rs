//! The pipeline benchmark: `cargo bench --bench pipeline [-- --events N --snapshot-tasks M]`.
//!
//! Fills a fresh nats-server with a simulated fleet's events and measures, in one run:
//! 1. the raw JetStream consume rate of that stream (a pull consumer acking once per batch),
//! 2. `serve`'s catch-up fold rate over the same stream (the release binary, as deployed),
//! 3. their ratio, and `serve`'s peak RSS,
//! 4. `replay`'s rebuild rate over the same stream, and its ratio to the raw rate,
//! 5. the time to compute the snapshot of every period with M tasks folded, and the size and
//!    write time of one checkpoint of that database.

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use futures::StreamExt;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use truebit_projections::{Input, Projections};
use truebit_testkit::{signal, Fleet, NatsServer, SIGTERM};

/// Events per simulated task, on average (receipt, completion, invoice, heartbeats, repeats).
const EVENTS_PER_TASK: f64 = 3.2;

struct Args {
    events: u64,
    snapshot_tasks: u64,
}

fn args() -> Args {
    let mut a = Args {
        events: 500_000,
        snapshot_tasks: 1_000_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .expect("a number after the flag")
        };
        match flag.as_str() {
            "--events" => a.events = value(),
            "--snapshot-tasks" => a.snapshot_tasks = value(),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = NatsServer::start();
    let fleet = Fleet::new(1000, 2026);
    let tasks = (args.events as f64 / EVENTS_PER_TASK) as u64;

    let (events, publish_secs, bytes) = rt.block_on(fill(&server, &fleet, tasks));
    println!("stream     {events} events ({:.0} bytes each) from {} nodes, published in {publish_secs:.1} s", bytes as f64 / events as f64, fleet.nodes);

    let raw = rt.block_on(raw_consume(&server, events));
    println!(
        "raw        {:>9.0} events/s  (pull consumer, one ack per 1000-message batch)",
        raw
    );

    let (fold, rss_kib) = serve_catch_up(&server, events);
    println!(
        "serve      {:>9.0} events/s  catch-up fold, {:.2} x raw",
        fold,
        fold / raw
    );
    println!(
        "serve RSS  {:>9.1} MiB peak (VmHWM)",
        rss_kib as f64 / 1024.0
    );

    let replay = replay_rate(&server, events);
    println!(
        "replay     {:>9.0} events/s  rebuild, {:.2} x raw",
        replay,
        replay / raw
    );

    let (fold_secs, per_snapshot, checkpoint) =
        rt.block_on(snapshot_cost(&server, &fleet, args.snapshot_tasks));
    println!(
        "snapshot   {:>9.2} ms for all four periods with {} tasks folded (folded directly in {:.0} s)",
        per_snapshot.as_secs_f64() * 1e3,
        args.snapshot_tasks,
        fold_secs
    );
    println!(
        "checkpoint {:>9.1} MiB with {} tasks: copy {:.1} s, upload to the object store {:.1} s",
        checkpoint.bytes as f64 / (1 << 20) as f64,
        args.snapshot_tasks,
        checkpoint.copy.as_secs_f64(),
        checkpoint.upload.as_secs_f64()
    );
}

async fn fill(server: &NatsServer, fleet: &Fleet, tasks: u64) -> (u64, f64, u64) {
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    truebit_streams::topology::ensure(&js, &Default::default())
        .await
        .unwrap();
    let (messages, _) = fleet.generate(tasks);
    let started = Instant::now();
    let bytes: u64 = messages.iter().map(|m| m.payload.len() as u64).sum();
    let last = truebit_testkit::publish_all(
        &js,
        messages
            .iter()
            .map(|m| (m.subject, m.payload.as_slice(), Some(m.msg_id.as_str()))),
    )
    .await;
    (last, started.elapsed().as_secs_f64(), bytes)
}

async fn raw_consume(server: &NatsServer, events: u64) -> f64 {
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::All,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await
        .unwrap();
    let mut seen = 0u64;
    while seen < events {
        let m = messages.next().await.unwrap().unwrap();
        seen += 1;
        if seen.is_multiple_of(1000) || seen == events {
            m.ack().await.unwrap();
        }
    }
    events as f64 / started.elapsed().as_secs_f64()
}

/// Runs the release `serve` over the full stream; its catch-up rate (from its own log) and peak RSS.
fn serve_catch_up(server: &NatsServer, events: u64) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_truebit-federation"))
        .arg("serve")
        .env("NATS_URL", server.url())
        .env("DB_PATH", dir.path().join("bench.redb"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut rate = None;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("catching up") {
            eprintln!("  {}", line.split("INFO").last().unwrap_or(&line).trim());
        }
        if line.contains("caught up") {
            let field = |name: &str| {
                line.split(&format!("{name}="))
                    .nth(1)
                    .and_then(|v| v.split_whitespace().next())
                    .map(str::to_string)
            };
            let folded: f64 = field("folded").and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let seconds: f64 = field("seconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            assert_eq!(folded as u64, events, "serve folded the whole stream");
            rate = Some(folded / seconds);
            break;
        }
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    signal(&child, SIGTERM);
    child.wait().unwrap();
    (rate.expect("serve logged that it caught up"), rss)
}

/// Runs the release `replay --output` over the full stream; its rate as it reports it.
fn replay_rate(server: &NatsServer, events: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("rebuilt.redb");
    let out = Command::new(env!("CARGO_BIN_EXE_truebit-federation"))
        .args(["replay", "--output"])
        .arg(&output)
        .env("NATS_URL", server.url())
        .env("DB_PATH", dir.path().join("unused.redb"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("rebuilt {events} messages")),
        "{text}"
    );
    text.split(" events/s")
        .next()
        .and_then(|t| t.rsplit('(').next())
        .and_then(|r| r.parse().ok())
        .expect("a rate in the summary")
}

/// What one checkpoint of the big database cost.
struct CheckpointCost {
    bytes: u64,
    copy: Duration,
    upload: Duration,
}

/// Folds `tasks` simulated tasks straight into a database, then times snapshots over it and one
/// checkpoint of it (the copy, and its upload to the object store).
async fn snapshot_cost(
    server: &NatsServer,
    fleet: &Fleet,
    tasks: u64,
) -> (f64, Duration, CheckpointCost) {
    let dir = tempfile::tempdir().unwrap();
    let db = Projections::open(dir.path().join("snap.redb")).unwrap();
    let started = Instant::now();
    let mut batch = Vec::with_capacity(20_000);
    let mut seq = 0u64;
    let now = chrono::Utc::now();
    fleet.for_each(tasks, |m| {
        seq += 1;
        let event = truebit_streams::validate(m.subject, &m.payload, now).map_err(|r| r.reason);
        batch.push(Input { seq, event });
        if batch.len() == 20_000 {
            db.apply(&batch).unwrap();
            batch.clear();
        }
    });
    db.apply(&batch).unwrap();
    let fold_secs = started.elapsed().as_secs_f64();
    let at = now.timestamp() / 60;
    db.snapshots(at).unwrap(); // warm the page cache
    let rounds = 20;
    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(db.snapshots(at).unwrap());
    }
    let per_snapshot = started.elapsed() / rounds;

    let path = dir.path().join("checkpoint.redb");
    let started = Instant::now();
    db.checkpoint_to(&path).unwrap();
    let copy = started.elapsed();
    let bytes = std::fs::metadata(&path).unwrap().len();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let store = truebit_streams::topology::ensure(&js, &Default::default())
        .await
        .unwrap()
        .checkpoints;
    let started = Instant::now();
    let mut file = tokio::fs::File::open(&path).await.unwrap();
    store.put("bench", &mut file).await.unwrap();
    let upload = started.elapsed();
    (
        fold_secs,
        per_snapshot,
        CheckpointCost {
            bytes,
            copy,
            upload,
        },
    )
}
