//! The load test: `cargo bench --bench load [-- --nodes N --minutes M --tasks-per-node-per-minute R --interval-ms I]`.
//!
//! A fleet of N nodes (default 10,000) publishes at real-time rate for M minutes (default 3):
//! every node heartbeats once a minute, at its own offset within the minute, and the fleet
//! reports R tasks per node per minute (default 1), each a receipt, a completion and, for most,
//! an invoice. The release `serve` folds them while the test records:
//! - when each snapshot arrives on `truebit.stats.aggregated`: every gap between two must be
//!   within 1 s of the publish interval,
//! - the lag of the durable consumer `aggregator`, sampled every second: messages stored but
//!   not yet delivered, plus those delivered but not yet acked (acked means committed),
//! - at the end, that the snapshot counts every task, invoice and node published.
//!
//! It prints its figures, and exits non-zero when a snapshot was late or a count is off.

use futures::StreamExt;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use truebit_testkit::{publish_realtime, signal, Load, NatsServer, Reaped, SIGTERM};

struct Args {
    nodes: u64,
    minutes: u64,
    tasks_per_node_per_minute: f64,
    interval_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 10_000,
        minutes: 3,
        tasks_per_node_per_minute: 1.0,
        interval_ms: 30_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> f64 {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .expect("a number after the flag")
        };
        match flag.as_str() {
            "--nodes" => a.nodes = value() as u64,
            "--minutes" => a.minutes = value() as u64,
            "--tasks-per-node-per-minute" => a.tasks_per_node_per_minute = value(),
            "--interval-ms" => a.interval_ms = value() as u64,
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ok = rt.block_on(run(&server, &args, dir.path()));
    // exit() skips destructors: the server and the folder go first.
    drop((server, dir));
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(server: &NatsServer, args: &Args, dir: &std::path::Path) -> bool {
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    truebit_federation::topology::ensure(&js, &Default::default())
        .await
        .unwrap();
    let mut snapshots = client
        .subscribe(truebit_streams::subjects::STATS_AGGREGATED)
        .await
        .unwrap();
    client.flush().await.unwrap();

    let mut serve = Reaped(
        Command::new(env!("CARGO_BIN_EXE_truebit-federation"))
            .arg("serve")
            .env("NATS_URL", server.url())
            .env("DB_PATH", dir.join("load.redb"))
            .env("PUBLISH_INTERVAL", args.interval_ms.to_string())
            // Beside an aggregator already on 8480 (the quick start's), on a free port.
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = serve.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("  serve: {line}");
        }
    });
    // The first snapshot comes right after start-up catch-up: serve is folding live.
    tokio::time::timeout(Duration::from_secs(30), snapshots.next())
        .await
        .expect("serve publishes a snapshot after start-up")
        .unwrap();
    println!(
        "load       {} nodes heartbeating every minute, {} tasks per node per minute, for {} min; snapshots every {} ms",
        args.nodes, args.tasks_per_node_per_minute, args.minutes, args.interval_ms
    );

    // Snapshot arrivals, recorded as they come.
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Some(_msg) = snapshots.next().await {
                arrivals.lock().unwrap().push(Instant::now());
            }
        })
    };
    // The consumer's lag, sampled every second while the fleet publishes.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = {
        let js = js.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut lags = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {}
                }
                if let Ok(info) = consumer_info(&js).await {
                    lags.push(info.num_pending + info.num_ack_pending as u64);
                }
            }
            lags
        })
    };

    let load = Load {
        nodes: args.nodes,
        tasks_per_node_per_minute: args.tasks_per_node_per_minute,
        duration: Duration::from_secs(args.minutes * 60),
    };
    let published = publish_realtime(&client, &load).await;
    let _ = stop_tx.send(true);
    let lags = sampler.await.unwrap();

    // Let serve finish what it holds, and one more snapshot come out with everything in it.
    let drained = Instant::now();
    loop {
        let info = consumer_info(&js).await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            drained.elapsed() < Duration::from_secs(120),
            "serve did not drain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain = drained.elapsed();
    tokio::time::sleep(Duration::from_millis(args.interval_ms + 1500)).await;
    let rss = truebit_testkit::procfs::usage(serve.id()).peak_kib;
    let latest = async_nats::jetstream::new(client.clone())
        .get_key_value("truebit-stats")
        .await
        .unwrap()
        .get("latest")
        .await
        .unwrap()
        .expect("a latest snapshot in KV");
    signal(&serve, SIGTERM);
    let status = serve.wait().unwrap();
    recorder.abort();
    let arrivals = arrivals.lock().unwrap().clone();

    let interval = Duration::from_millis(args.interval_ms).as_secs_f64();
    let gaps: Vec<f64> = arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let worst = gaps
        .iter()
        .map(|g| (g - interval).abs())
        .fold(0.0, f64::max);
    let late = gaps.iter().filter(|g| (*g - interval).abs() > 1.0).count();
    let mean_lag = lags.iter().sum::<u64>() as f64 / lags.len().max(1) as f64;
    let mut sorted = lags.clone();
    sorted.sort_unstable();
    let p99 = sorted
        .get((sorted.len() * 99 / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    println!(
        "published  {} events in {:.0} s ({:.0} events/s): {} heartbeats, {} tasks, {} invoices",
        published.events,
        published.seconds,
        published.events as f64 / published.seconds,
        published.heartbeats,
        published.tasks,
        published.invoices
    );
    println!(
        "snapshots  {} gaps between publishes, worst {:.3} s off the {:.0} s interval, {late} late by more than 1 s",
        gaps.len(),
        worst,
        interval
    );
    println!(
        "lag        consumer behind by {:.1} messages on average, p99 {p99}, max {} ({} samples, one a second); drained {:.2} s after the last publish",
        mean_lag,
        sorted.last().copied().unwrap_or(0),
        lags.len(),
        drain.as_secs_f64()
    );
    println!("serve RSS  {:.1} MiB peak (VmHWM)", rss as f64 / 1024.0);

    let snapshot: serde_json::Value = serde_json::from_slice(&latest).unwrap();
    let data = &snapshot["data"];
    let counts = [
        ("totalTasks", published.tasks),
        ("totalInvoices", published.invoices),
        ("totalNodes", args.nodes),
        ("activeNodes", args.nodes),
    ];
    let mut ok = status.success() && late == 0 && gaps.len() as u64 >= 2;
    for (field, expected) in counts {
        let got = data[field].as_u64().unwrap_or(0);
        println!("count      {field} {got}, published {expected}");
        ok &= got == expected;
    }
    println!("result     {}", if ok { "ok" } else { "FAILED" });
    ok
}

async fn consumer_info(
    js: &async_nats::jetstream::Context,
) -> Result<async_nats::jetstream::consumer::Info, async_nats::Error> {
    let stream = js.get_stream("TRUEBIT_EVENTS").await?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("aggregator").await?;
    Ok(consumer.info().await?.clone())
}
