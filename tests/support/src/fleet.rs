//! A simulated fleet of TrueBit nodes, publishing what today's monitor publishes.
//!
//! Deterministic for a seed, and it knows the counts its stream should fold to, so that tests
//! can assert exact numbers after crashes and benchmarks can check what they measured.

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;

/// One message as a node would publish it.
#[derive(Debug, Clone)]
pub struct Simulated {
    pub subject: &'static str,
    pub payload: Vec<u8>,
    /// Unique per publication, for JetStream's duplicate window.
    pub msg_id: String,
    /// The node that publishes it (see [`Fleet::node_id`]).
    pub node: u64,
}

/// What folding a simulated stream must give.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub events: u64,
    pub tasks: u64,
    pub completed: u64,
    pub failed: u64,
    pub cached: u64,
    pub invoices: u64,
    pub nodes: u64,
    pub heartbeats: u64,
    /// Tasks reported by two nodes.
    pub shared_tasks: u64,
}

/// A fleet of `nodes` nodes whose tasks are spread over `span` ending at `end`.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub nodes: u64,
    pub seed: u64,
    pub end: DateTime<Utc>,
    pub span: Duration,
    /// The index of the first task generated, so that successive calls make new tasks.
    pub first_task: u64,
}

const CHAINS: [&str; 4] = ["1", "5", "137", "42161"];
/// The language prefixes of the runner's task ids, which the node agent sends as `taskType`.
const TYPES: [&str; 3] = ["rs", "js", "py"];
const EXEC: [&str; 9] = [
    "<100ms",
    "100-500ms",
    "500ms-1s",
    "1-5s",
    "5-10s",
    "10-30s",
    "30s-1m",
    ">1m",
    "unknown",
];
const MAGNITUDE: [&str; 6] = ["<100K", "100K-1M", "1M-10M", "10M-100M", ">100M", "unknown"];
const MEMORY: [&str; 5] = ["<64MB", "64-256MB", "256MB-1GB", ">1GB", "unknown"];
/// Where the simulated nodes run: cities on every continent a node is likely on (none on
/// Antarctica), weighted roughly as compute is spread, as (continent, latitude and longitude in
/// tenths of a degree). A node keeps its place; nodes at one city spread over a few tenths.
const SITES: [(&str, i64, i64); 16] = [
    ("EU", 525, 134),   // Berlin
    ("EU", 489, 24),    // Paris
    ("EU", 523, 49),    // Amsterdam
    ("EU", 601, 249),   // Helsinki
    ("NA", 407, -740),  // New York
    ("NA", 378, -1224), // San Francisco
    ("NA", 437, -794),  // Toronto
    ("NA", 390, -771),  // Ashburn
    ("AS", 357, 1397),  // Tokyo
    ("AS", 13, 1038),   // Singapore
    ("AS", 191, 729),   // Mumbai
    ("AS", 375, 1270),  // Seoul
    ("SA", -236, -466), // São Paulo
    ("SA", -346, -584), // Buenos Aires
    ("AF", -339, 184),  // Cape Town
    ("OC", -339, 1512), // Sydney
];

impl Fleet {
    /// A fleet whose tasks span the last day.
    pub fn new(nodes: u64, seed: u64) -> Self {
        Fleet {
            nodes,
            seed,
            end: Utc::now(),
            span: Duration::hours(24),
            first_task: 0,
        }
    }

    /// The messages for `tasks` tasks with their heartbeats and joins, in publish order, and the
    /// counts they fold to.
    pub fn generate(&self, tasks: u64) -> (Vec<Simulated>, Expected) {
        let mut out = Vec::with_capacity(tasks as usize * 4);
        let expected = self.for_each(tasks, |m| out.push(m));
        (out, expected)
    }

    /// Calls `emit` with each message in publish order; returns the counts they fold to.
    pub fn for_each(&self, tasks: u64, mut emit: impl FnMut(Simulated)) -> Expected {
        let mut rng = SplitMix(self.seed);
        let mut exp = Expected::default();
        let mut joined: HashSet<u64> = HashSet::new();
        let mut counter = 0u64;
        let mut send = |subject: &'static str, payload: String, node: u64, exp: &mut Expected| {
            counter += 1;
            exp.events += 1;
            emit(Simulated {
                subject,
                payload: payload.into_bytes(),
                msg_id: format!("sim-{}-{}-{counter}", self.seed, self.first_task),
                node,
            });
        };
        let start = self.end - self.span;
        let span_minutes = self.span.num_minutes().max(1) as u64;
        for n in 0..tasks {
            let minute = start + Duration::minutes((n * span_minutes / tasks.max(1)) as i64);
            let i = self.first_task + n;
            let ts = stamp(minute);
            let node = rng.below(self.nodes);
            if joined.insert(node) {
                exp.nodes += 1;
                send(
                    "truebit.nodes.joined",
                    format!(
                        r#"{{"version":"1.0","type":"node_joined","nodeId":"{}","timestamp":"{ts}","data":{{"status":"online"}}}}"#,
                        self.node_id(node)
                    ),
                    node,
                    &mut exp,
                );
            }
            if rng.below(100) < 40 {
                exp.heartbeats += 1;
                let (continent, lat, lon) = SITES[(node % SITES.len() as u64) as usize];
                let spread = (node / SITES.len() as u64 % 7) as i64 - 3;
                let (lat, lon) = (lat + spread, lon - spread);
                send(
                    "truebit.heartbeat",
                    format!(
                        r#"{{"version":"1.0","type":"heartbeat","nodeId":"{}","timestamp":"{ts}","data":{{"status":"online","activeTasks":{},"totalTasks":{},"totalInvoices":{},"activeTasksBucket":"1","totalTasksBucket":">1K","continentBucket":"{continent}","locationBucket":"{}"}}}}"#,
                        self.node_id(node),
                        rng.below(3),
                        1000 + i,
                        900 + i,
                        location(lat, lon)
                    ),
                    node,
                    &mut exp,
                );
            }

            let task = hex(&Sha256::digest(format!("task/{}/{i}", self.seed)));
            let block = hex(&Sha256::digest(format!("block/{}/{i}", self.seed)));
            let chain = CHAINS[rng.below(4) as usize];
            let received = format!(
                r#"{{"version":"1.0","type":"task_received","nodeId":"{{NODE}}","timestamp":"{ts}","data":{{"chainId":"{chain}","blockNumber":{},"blockHash":"0x{block}","taskHash":"0x{block}","taskType":"{}","taskIdHash":"{task}"}}}}"#,
                26_000_000 + i,
                TYPES[rng.below(3) as usize]
            );
            exp.tasks += 1;
            send(
                "truebit.tasks.received",
                received.replace("{NODE}", &self.node_id(node)),
                node,
                &mut exp,
            );
            if rng.below(100) < 10 && self.nodes > 1 {
                // A second node saw the same task, with the same federation-wide hash.
                exp.shared_tasks += 1;
                let other = (node + 1 + rng.below(self.nodes - 1)) % self.nodes;
                if joined.insert(other) {
                    exp.nodes += 1;
                    send(
                        "truebit.nodes.joined",
                        format!(
                            r#"{{"version":"1.0","type":"node_joined","nodeId":"{}","timestamp":"{ts}","data":{{"status":"online"}}}}"#,
                            self.node_id(other)
                        ),
                        other,
                        &mut exp,
                    );
                }
                send(
                    "truebit.tasks.received",
                    received.replace("{NODE}", &self.node_id(other)),
                    other,
                    &mut exp,
                );
            }

            let success = rng.below(100) < 92;
            let cached = rng.below(100) < 20;
            exp.completed += success as u64;
            exp.failed += !success as u64;
            exp.cached += cached as u64;
            let completed = format!(
                r#"{{"version":"1.0","type":"task_completed","nodeId":"{}","timestamp":"{ts}","data":{{"chainId":"{chain}","blockNumber":{},"blockHash":"0x{block}","taskHash":"0x{block}","taskIdHash":"{task}","status":"{}","success":{success},"executionTimeBucket":"{}","gasUsedBucket":"{}","cached":{cached}}}}}"#,
                self.node_id(node),
                26_000_000 + i,
                if success { "completed" } else { "failed" },
                EXEC[rng.below(9) as usize],
                MAGNITUDE[rng.below(6) as usize]
            );
            if rng.below(100) < 5 {
                // The monitor republished after a reconnect: same body, new publication.
                send("truebit.tasks.completed", completed.clone(), node, &mut exp);
            }
            send("truebit.tasks.completed", completed, node, &mut exp);

            if rng.below(100) < 60 {
                exp.invoices += 1;
                let invoice = hex(&Sha256::digest(format!("invoice/{}/{i}", self.seed)));
                send(
                    "truebit.invoices.created",
                    format!(
                        r#"{{"version":"1.0","type":"invoice_created","nodeId":"{}","timestamp":"{ts}","data":{{"invoiceIdHash":"{invoice}","taskIdHash":"{task}","chainId":"{chain}","stepsComputedBucket":"{}","memoryUsedBucket":"{}","operation":"compute"}}}}"#,
                        self.node_id(node),
                        MAGNITUDE[rng.below(6) as usize],
                        MEMORY[rng.below(5) as usize]
                    ),
                    node,
                    &mut exp,
                );
            }
        }
        exp
    }

    /// The `node-<uuid>` pseudonym of node `n`, as today's monitor makes them.
    pub fn node_id(&self, n: u64) -> String {
        let h = hex(&Sha256::digest(format!("node/{}/{n}", self.seed)));
        format!(
            "node-{}-{}-4{}-a{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }
}

/// Floored to 5 minutes, as today's monitor does.
fn stamp(t: DateTime<Utc>) -> String {
    let secs = t.timestamp() - t.timestamp().rem_euclid(300);
    DateTime::<Utc>::from_timestamp(secs, 0)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn location(lat_tenths: i64, lon_tenths: i64) -> String {
    let part = |t: i64| {
        format!(
            "{}{}.{}",
            if t < 0 { "-" } else { "" },
            t.abs() / 10,
            t.abs() % 10
        )
    };
    format!("{},{}", part(lat_tenths), part(lon_tenths))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A small, fast, deterministic generator (Steele, Lea and Flood's SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
