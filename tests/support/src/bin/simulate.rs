//! A live simulated fleet: `simulate [--nodes N] [--tasks-per-second R] [--seconds S]`, publishing
//! to `NATS_URL` (default nats://127.0.0.1:4222) what today's monitor publishes. It stops by
//! itself after `--seconds` (default 600), so that a forgotten one never runs forever.

use async_nats::jetstream;
use std::time::Duration;
use truebit_testkit::{publish_all, Fleet};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut nodes = 25u64;
    let mut rate = 20u64;
    let mut seconds = 600u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value: u64 = args
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage(&flag));
        match flag.as_str() {
            "--nodes" => nodes = value.max(1),
            "--tasks-per-second" => rate = value,
            "--seconds" => seconds = value,
            _ => usage(&flag),
        }
    }
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url).await.unwrap_or_else(|e| {
        eprintln!("simulate: cannot reach NATS at {url}: {e}");
        std::process::exit(3)
    });
    let js = jetstream::new(client);
    eprintln!("simulate: {nodes} nodes, {rate} tasks/s, for {seconds} s, to {url}");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut fleet = Fleet::new(nodes, 1);
    fleet.span = chrono::Duration::seconds(1);
    for second in 0..seconds {
        tick.tick().await;
        fleet.end = chrono::Utc::now();
        fleet.first_task = second * rate;
        let (messages, _) = fleet.generate(rate);
        publish_all(
            &js,
            messages
                .iter()
                .map(|m| (m.subject, m.payload.as_slice(), Some(m.msg_id.as_str()))),
        )
        .await;
    }
}

fn usage(flag: &str) -> ! {
    eprintln!("simulate: bad argument {flag}; usage: simulate [--nodes N] [--tasks-per-second R] [--seconds S]");
    std::process::exit(2)
}
