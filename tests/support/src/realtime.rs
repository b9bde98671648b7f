//! A fleet publishing at real-time rate, as the load and soak benchmarks need it: every node
//! heartbeats once a minute at its own offset within the minute, and the fleet reports tasks at
//! a steady rate, each a receipt, a completion and, for six in ten, an invoice.

use async_nats::HeaderMap;
use sha2::{Digest as _, Sha256};
use std::time::{Duration, Instant};

use crate::fleet::hex;
use crate::Fleet;

/// What the fleet sends, and for how long.
#[derive(Debug, Clone)]
pub struct Load {
    pub nodes: u64,
    pub tasks_per_node_per_minute: f64,
    pub duration: Duration,
}

/// What [`publish_realtime`] published.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub events: u64,
    pub heartbeats: u64,
    pub tasks: u64,
    pub invoices: u64,
    pub seconds: f64,
}

/// How often the publisher wakes to send what is due.
const TICK: Duration = Duration::from_millis(50);

/// Publishes at real-time rate what the fleet sends over `load.duration`, as today's monitor
/// does: core NATS publishes with a `Nats-Msg-Id`, timestamps floored to 5 minutes.
pub async fn publish_realtime(client: &async_nats::Client, load: &Load) -> Published {
    let started = Instant::now();
    let task_rate = load.nodes as f64 * load.tasks_per_node_per_minute / 60.0;
    let mut out = Published::default();
    // The fleet's pseudonyms, `node-<uuid>` as today's monitor makes them.
    let fleet = Fleet::new(load.nodes, 4242);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut next_node, mut minute) = (0u64, 0u64);
    let mut id = 0u64;
    let mut send = |subject: &'static str, body: String, out: &mut Published| {
        id += 1;
        out.events += 1;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("load-{id}").as_str());
        client.publish_with_headers(subject, headers, body.into())
    };
    loop {
        tick.tick().await;
        let elapsed = started.elapsed();
        if elapsed >= load.duration {
            break;
        }
        let stamp = stamp_now();
        // Node n heartbeats at n/N of every minute.
        let due = ((elapsed.as_secs_f64() / 60.0 - minute as f64) * load.nodes as f64) as u64;
        while next_node < due.min(load.nodes) {
            let node = fleet.node_id(next_node);
            let body = format!(
                r#"{{"version":"1.0","type":"heartbeat","nodeId":"{node}","timestamp":"{stamp}","data":{{"status":"online","activeTasks":1,"totalTasks":1200,"totalInvoices":900,"activeTasksBucket":"1","totalTasksBucket":">1K","continentBucket":"{}","locationBucket":"{}.5,{}.5"}}}}"#,
                ["AF", "AS", "EU", "NA", "OC", "SA"][(next_node % 6) as usize],
                (next_node % 170) as i64 - 85,
                (next_node % 350) as i64 - 175
            );
            send("truebit.heartbeat", body, &mut out).await.unwrap();
            out.heartbeats += 1;
            next_node += 1;
        }
        if next_node >= load.nodes && elapsed.as_secs_f64() >= (minute + 1) as f64 * 60.0 {
            minute += 1;
            next_node = 0;
        }
        let tasks_due = (elapsed.as_secs_f64() * task_rate) as u64;
        while out.tasks < tasks_due {
            let i = out.tasks;
            let node = fleet.node_id(i * 7919 % load.nodes);
            let task = hex(&Sha256::digest(format!("load-task-{i}")));
            send("truebit.tasks.received", format!(
                r#"{{"version":"1.0","type":"task_received","nodeId":"{node}","timestamp":"{stamp}","data":{{"chainId":"1","blockNumber":26000000,"blockHash":"0xab","taskHash":"0xcd","taskType":"wasm","taskIdHash":"{task}"}}}}"#
            ), &mut out).await.unwrap();
            send("truebit.tasks.completed", format!(
                r#"{{"version":"1.0","type":"task_completed","nodeId":"{node}","timestamp":"{stamp}","data":{{"taskIdHash":"{task}","status":"completed","success":{},"executionTimeBucket":"1-5s","gasUsedBucket":"1M-10M","cached":{}}}}}"#,
                i % 13 != 0,
                i % 5 == 0
            ), &mut out).await.unwrap();
            if i % 10 < 6 {
                let invoice = hex(&Sha256::digest(format!("load-invoice-{i}")));
                send("truebit.invoices.created", format!(
                    r#"{{"version":"1.0","type":"invoice_created","nodeId":"{node}","timestamp":"{stamp}","data":{{"invoiceIdHash":"{invoice}","taskIdHash":"{task}","chainId":"1","stepsComputedBucket":"1M-10M","memoryUsedBucket":"<64MB","operation":"compute"}}}}"#
                ), &mut out).await.unwrap();
                out.invoices += 1;
            }
            out.tasks += 1;
        }
    }
    client.flush().await.unwrap();
    out.seconds = started.elapsed().as_secs_f64();
    out
}

/// The current time floored to 5 minutes, as today's monitor sends it.
fn stamp_now() -> String {
    let now = chrono::Utc::now().timestamp();
    chrono::DateTime::from_timestamp(now - now.rem_euclid(300), 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}
