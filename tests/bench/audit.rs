//! The audit benchmark: `cargo bench --bench audit [-- --tasks N]`.
//!
//! Fills a fresh nats-server with the simulated fleet's events (the `pipeline` mix, about 3.2
//! events per task), lets the release `serve` fold them with a checkpoint every few seconds
//! (taken at a digest point, every 10,000 sequences by default), stops it once its last
//! snapshot's history record and a checkpoint are stored, and times the release
//! `truebit-federation audit` of that record twice: from the newest checkpoint, and from the
//! start of the stream (the checkpoints removed). Each must pass.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use truebit_testkit::{signal, Fleet, NatsServer, Reaped, SIGTERM};

const BIN: &str = env!("CARGO_BIN_EXE_truebit-federation");

fn tasks() -> u64 {
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--tasks" {
            return it
                .next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .expect("a number after --tasks");
        }
    }
    1_000_000
}

fn main() {
    let tasks = tasks();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let last = rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
        truebit_federation::topology::ensure(&js, &Default::default())
            .await
            .unwrap();
        let fleet = Fleet::new(1000, 2026);
        let (mut first, mut last) = (0, 0);
        while first < tasks {
            let chunk = Fleet {
                first_task: first,
                ..fleet.clone()
            };
            let (messages, _) = chunk.generate(1_000_000.min(tasks - first));
            last = truebit_testkit::publish_all(
                &js,
                messages
                    .iter()
                    .map(|m| (m.subject, m.payload.as_slice(), Some(m.msg_id.as_str()))),
            )
            .await;
            first += 1_000_000;
        }
        last
    });
    println!(
        "stream     {last} events for {tasks} tasks, published in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut serve = Reaped(
        Command::new(BIN)
            .arg("serve")
            .env("NATS_URL", server.url())
            .env("DB_PATH", dir.path().join("live.redb"))
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("CHECKPOINT_INTERVAL", "5s")
            .env("PUBLISH_INTERVAL", "1000")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = serve.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("caught up") || line.contains("stored checkpoint") {
                eprintln!("  {}", line.split("INFO").last().unwrap_or(&line).trim());
            }
        }
    });
    let newest_point = last - last % 10_000;
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            let history = js.get_stream("TRUEBIT_STATS").await.unwrap();
            let recorded = history
                .get_last_raw_message_by_subject("truebit.stats.history")
                .await
                .ok()
                .and_then(|m| truebit_streams::HistoryRecord::parse(&m.payload))
                .is_some_and(|r| r.seq == last);
            let checkpointed = match js.get_object_store("truebit-checkpoints").await {
                Ok(store) => truebit_replay::checkpoints(&store)
                    .await
                    .unwrap()
                    .last()
                    .is_some_and(|c| *c == newest_point),
                Err(_) => false,
            };
            if recorded && checkpointed {
                break;
            }
            assert!(Instant::now() < deadline, "serve never caught up");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    signal(&serve, SIGTERM);
    serve.wait().unwrap();

    let audit = |what: &str| {
        let started = Instant::now();
        let out = Command::new(BIN)
            .arg("audit")
            .env("NATS_URL", server.url())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rebuilt = said
            .lines()
            .find(|l| l.starts_with("rebuilt"))
            .unwrap_or_default()
            .to_string();
        println!(
            "audit      {:>7.1} s  {what}: {rebuilt}",
            started.elapsed().as_secs_f64()
        );
    };
    audit("from the newest checkpoint");
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
        js.delete_object_store("truebit-checkpoints").await.unwrap();
    });
    audit("from the start, no checkpoint");
}
