//! The failover benchmark: `cargo bench --bench failover [-- --trials 10]`.
//!
//! A three-server JetStream cluster on 127.0.0.1 (`REPLICAS=3`) and two `serve` instances (the
//! release binary). Each trial SIGKILLs the instance that leads and measures the time until the
//! other publishes its first snapshot, then starts the killed one again as a standby and waits
//! until it has caught up. Prints every trial and min / median / max; asserts nothing about speed.

use futures::StreamExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use truebit_testkit::{signal, NatsCluster, Reaped, SIGKILL, SIGTERM};

fn instance(urls: &str, dir: &Path, name: &str) -> Reaped {
    Reaped(
        Command::new(env!("CARGO_BIN_EXE_truebit-federation"))
            .arg("serve")
            .env("NATS_URL", urls)
            .env("DB_PATH", dir.join(format!("{name}.redb")))
            .env("INSTANCE", name)
            .env("REPLICAS", "3")
            .env("PUBLISH_INTERVAL", "1000")
            // Two instances on one machine: each takes a free port.
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Warnings and errors pass through, so that an instance that fails says why.
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the release binary runs"),
    )
}

fn main() {
    let mut trials = 10;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--trials" {
            trials = args.next().and_then(|v| v.parse().ok()).expect("a number");
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = NatsCluster::start(3);
    rt.block_on(cluster.wait_for_jetstream(Duration::from_secs(60)));
    let urls = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<String> = urls.split(',').map(str::to_string).collect();
    let client = rt.block_on(async_nats::connect(servers)).unwrap();
    let mut snapshots = rt
        .block_on(client.subscribe("truebit.stats.aggregated"))
        .unwrap();
    let next = |snapshots: &mut async_nats::Subscriber| -> String {
        rt.block_on(async {
            let m = tokio::time::timeout(Duration::from_secs(120), snapshots.next())
                .await
                .expect("a snapshot within two minutes")
                .unwrap();
            m.headers
                .unwrap()
                .get("Truebit-Instance")
                .unwrap()
                .to_string()
        })
    };
    let mut a = instance(&urls, dir.path(), "a");
    let mut leader = next(&mut snapshots);
    let mut b = instance(&urls, dir.path(), "b");
    std::thread::sleep(Duration::from_secs(3));
    let mut took = Vec::new();
    for trial in 1..=trials {
        let (dead, standby) = if leader == "a" {
            (&mut a, "b")
        } else {
            (&mut b, "a")
        };
        signal(dead, SIGKILL);
        dead.wait().unwrap();
        let killed = Instant::now();
        while next(&mut snapshots) != standby {}
        let t = killed.elapsed();
        println!(
            "trial {trial:>2}  {:.2} s from SIGKILL of {leader} to the first snapshot of {standby}",
            t.as_secs_f64()
        );
        took.push(t);
        *dead = instance(&urls, dir.path(), &leader);
        leader = standby.to_string();
        // The restarted one catches up (it has little to do) before the next trial kills the leader.
        std::thread::sleep(Duration::from_secs(3));
    }
    for p in [&mut a, &mut b] {
        signal(p, SIGTERM);
        let _ = p.wait();
    }
    took.sort();
    let n = took.len();
    let median = (took[(n - 1) / 2] + took[n / 2]) / 2;
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    println!(
        "failover   {n} trials: min {}, median {}, max {} (lease: renew 2 s, take over after 10 s unchanged)",
        s(took[0]),
        s(median),
        s(took[n - 1])
    );
}
