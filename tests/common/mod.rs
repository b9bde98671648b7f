//! Shared by the integration tests: a served aggregator over a real nats-server of the test's own.
#![allow(dead_code)] // each test binary uses its own part of this

pub mod process;

use async_nats::jetstream;
use futures::StreamExt;
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use truebit_federation::{serve, Error, ServeConfig, HEADER_LAST_SEQ};
use truebit_testkit::NatsServer;

/// Long enough for a loaded 2-core CI machine, short enough to fail a stuck test.
pub const PATIENCE: Duration = Duration::from_secs(120);

pub struct Served {
    pub server: NatsServer,
    pub dir: TempDir,
    pub db_path: PathBuf,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), Error>>>,
    /// Applied to the aggregator's config at every (re)start.
    pub adjust: Box<dyn Fn(&mut ServeConfig) + Send + Sync>,
}

pub fn config(url: &str, db_path: &std::path::Path) -> ServeConfig {
    let mut c = ServeConfig::new(url, db_path);
    c.publish_interval = Duration::from_millis(200);
    c
}

impl Served {
    /// A fresh server and an aggregator serving it.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// The same, with the aggregator's config adjusted first.
    pub async fn start_with(adjust: impl Fn(&mut ServeConfig) + Send + Sync + 'static) -> Self {
        Self::start_on(NatsServer::start(), adjust).await
    }

    /// An aggregator serving a server the test already started.
    pub async fn start_on(
        server: NatsServer,
        adjust: impl Fn(&mut ServeConfig) + Send + Sync + 'static,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("aggregator.redb");
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        let mut s = Served {
            server,
            dir,
            db_path,
            client,
            js,
            stop: None,
            task: None,
            adjust: Box::new(adjust),
        };
        s.serve();
        s.wait_for_topology().await;
        s
    }

    /// Starts (again) the in-process aggregator.
    pub fn serve(&mut self) {
        let (tx, rx) = oneshot::channel();
        let mut cfg = config(&self.server.url(), &self.db_path);
        (self.adjust)(&mut cfg);
        let served = serve(cfg, async move {
            let _ = rx.await;
        });
        // Say at once why serve stopped, rather than leave a test waiting for its snapshots.
        self.task = Some(tokio::spawn(async move {
            let result = served.await;
            if let Err(e) = &result {
                eprintln!("serve failed: {e}");
            }
            result
        }));
        self.stop = Some(tx);
    }

    async fn wait_for_topology(&self) {
        // The aggregator creates the topology before its first snapshot.
        self.wait_folded(0).await;
    }

    /// Stops the aggregator as SIGTERM would, and returns what serve returned.
    pub async fn stop(&mut self) -> Result<(), Error> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("serving");
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("serve stops")
            .expect("serve does not panic")
    }

    /// Publishes through JetStream and returns the stream sequence of the last message.
    pub async fn publish(&self, messages: &[(String, Vec<u8>)]) -> u64 {
        let mut acks = Vec::new();
        for (subject, payload) in messages {
            acks.push(
                self.js
                    .publish(subject.clone(), payload.clone().into())
                    .await
                    .unwrap(),
            );
        }
        let mut last = 0;
        for ack in acks {
            last = ack.await.unwrap().sequence;
        }
        last
    }

    /// Waits until a published snapshot has folded everything up to `seq`; returns it.
    pub async fn wait_folded(&self, seq: u64) -> serde_json::Value {
        wait_folded(&self.client, seq).await
    }
}

/// Waits for a snapshot that has folded `seq`, as every running aggregator publishes them.
pub async fn wait_folded(client: &async_nats::Client, seq: u64) -> serde_json::Value {
    let mut sub = client.subscribe("truebit.stats.aggregated").await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let msg = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("sequence {seq} was not folded in time"))
            .unwrap();
        let folded: u64 = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER_LAST_SEQ))
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        if folded >= seq {
            return serde_json::from_slice(&msg.payload).unwrap();
        }
    }
}

pub async fn publish(js: &jetstream::Context, messages: &[(String, Vec<u8>)]) -> u64 {
    truebit_testkit::publish_all(
        js,
        messages
            .iter()
            .map(|(s, p)| (s.as_str(), p.as_slice(), None)),
    )
    .await
}

/// A message as a node of today's monitor sends it.
pub fn msg(subject: &str, body: serde_json::Value) -> (String, Vec<u8>) {
    (subject.to_string(), serde_json::to_vec(&body).unwrap())
}

pub fn hash(n: u64) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(n.to_le_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The counts a simulated fleet knows, read back from a database: totals over all time and the
/// number of messages folded (each exactly once).
pub fn assert_fleet_counts(
    db: &truebit_projections::Projections,
    expected: &truebit_testkit::Expected,
) {
    let at = chrono::Utc::now().timestamp() / 60 + 10;
    let all = db.snapshot(at, truebit_streams::Period::All).unwrap();
    let got = (
        all.total_tasks,
        all.completed_tasks,
        all.failed_tasks,
        all.cached_tasks,
        all.total_invoices,
        all.total_nodes,
    );
    let want = (
        expected.tasks,
        expected.completed,
        expected.failed,
        expected.cached,
        expected.invoices,
        expected.nodes,
    );
    assert_eq!(
        got, want,
        "(tasks, completed, failed, cached, invoices, nodes)"
    );
    assert_eq!(
        db.event_counts().unwrap().values().sum::<u64>(),
        expected.events,
        "every message folded exactly once"
    );
}
