//! Test and benchmark support for truebit-federation: real `nats-server` processes, a TCP proxy
//! that can hold a connection open but silent, a simulated fleet of nodes with the counts it
//! expects (all at once, or at real-time rate), a runner node's files, what a process uses, and
//! the fixtures in `tests/fixtures/`.
//!
//! ```no_run
//! let server = truebit_testkit::NatsServer::start();
//! println!("a JetStream server of our own at {}", server.url());
//! ```

mod cluster;
mod fleet;
pub mod procfs;
mod proxy;
mod publish;
mod realtime;
pub mod runner;
mod server;

pub use cluster::NatsCluster;
pub use fleet::{Expected, Fleet, Simulated};
pub use proxy::TcpProxy;
pub use publish::{publish_all, publish_all_with_headers};
pub use realtime::{publish_realtime, Load, Published};
pub use server::{
    nats_server_binary, signal, NatsServer, Reaped, SIGCONT, SIGINT, SIGKILL, SIGSTOP, SIGTERM,
};

use std::path::PathBuf;

/// The messages of today's TypeScript monitor, from `tests/fixtures/monitor-messages.jsonl`, as
/// `(subject, payload)` pairs.
pub fn monitor_fixtures() -> Vec<(String, Vec<u8>)> {
    let path = fixtures_dir().join("monitor-messages.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a fixture line is JSON");
            let subject = v["subject"]
                .as_str()
                .expect("a fixture has a subject")
                .to_string();
            (
                subject,
                serde_json::to_vec(&v["payload"]).expect("payload serializes"),
            )
        })
        .collect()
}

/// The repository's `tests/fixtures/` folder (see its README for the formats).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}
