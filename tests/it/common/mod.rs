//! Shared by the integration tests: a served aggregator over a real nats-server of the test's own.

pub mod browser;
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
    /// The HTTP address of the running aggregator, once it listens.
    http: std::sync::Arc<std::sync::OnceLock<std::net::SocketAddr>>,
}

pub fn config(url: &str, db_path: &std::path::Path) -> ServeConfig {
    let mut c = ServeConfig::new(url, db_path);
    c.publish_interval = Duration::from_millis(200);
    // HTTP on a free port in every served test, so that it runs beside everything else.
    c.http_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
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
            http: Default::default(),
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
        self.http = Default::default();
        cfg.http_bound = self.http.clone();
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

    /// `http://127.0.0.1:<port>` of the running aggregator's HTTP server.
    pub async fn http_url(&self) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(addr) = self.http.get() {
                return format!("http://{addr}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "serve never listened for HTTP"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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

/// `n` heartbeats of `node`, stamped now.
pub fn heartbeats(node: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|_| {
            msg(
                "truebit.heartbeat",
                serde_json::json!({"version": "1.0", "type": "heartbeat", "timestamp": chrono::Utc::now().to_rfc3339(),
                       "nodeId": node, "data": {"status": "online"}}),
            )
        })
        .collect()
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

/// An HTTP answer, as [`http_get`] read it.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl HttpAnswer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET base + path` with HTTP/1.1 over a plain socket, `Connection: close`: enough for the
/// aggregator's own answers, which all carry a length.
pub async fn http_get(base: &str, path: &str, accept: Option<&str>) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(host).await.unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{accept}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, socket.read_to_end(&mut raw))
        .await
        .expect("an HTTP answer in time")
        .unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    HttpAnswer {
        status,
        content_type,
        body: body.to_string(),
    }
}

/// Waits until `TRUEBIT_DLQ` holds at least `count` dead letters, failing with `missing` after
/// [`PATIENCE`]; returns the stream, to read them.
pub async fn wait_for_dead_letters(
    js: &jetstream::Context,
    count: u64,
    missing: &str,
) -> jetstream::stream::Stream {
    let mut dlq = js.get_stream("TRUEBIT_DLQ").await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while dlq.info().await.unwrap().state.messages < count {
        assert!(tokio::time::Instant::now() < deadline, "{missing}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dlq
}
