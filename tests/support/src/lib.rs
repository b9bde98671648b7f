//! Test and benchmark support for truebit-federation: real `nats-server` processes, a TCP proxy
//! that can hold a connection open but silent, a simulated fleet of nodes with the counts it
//! expects, and the shared fixtures.
//!
//! ```no_run
//! let server = truebit_testkit::NatsServer::start();
//! println!("a JetStream server of our own at {}", server.url());
//! ```

mod cluster;
mod fleet;
mod proxy;
mod publish;
mod server;

pub use cluster::NatsCluster;
pub use fleet::{Expected, Fleet, Simulated};
pub use proxy::TcpProxy;
pub use publish::{publish_all, publish_all_with_headers};
pub use server::{
    nats_server_binary, signal, NatsServer, Reaped, SIGCONT, SIGINT, SIGKILL, SIGSTOP, SIGTERM,
};

use std::path::PathBuf;

/// The messages of today's TypeScript monitor, from `shared/fixtures/` beside the repository
/// (or `TRUEBIT_SHARED`), as `(subject, payload)` pairs.
pub fn monitor_fixtures() -> Vec<(String, Vec<u8>)> {
    let path = shared_dir().join("fixtures/monitor-messages.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; set TRUEBIT_SHARED to the shared/ folder",
            path.display()
        )
    });
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

/// The `shared/` folder beside the repository, or `TRUEBIT_SHARED`.
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRUEBIT_SHARED") {
        return dir.into();
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|a| a.join("shared"))
        .find(|p| p.join("fixtures").is_dir())
        .unwrap_or_else(|| {
            panic!(
                "no shared/fixtures above {}; set TRUEBIT_SHARED",
                here.display()
            )
        })
}
