//! Three (or more) `nats-server`s of the test's own, clustered with routes on 127.0.0.1, with
//! JetStream replicated between them: each member a [`NatsServer`] that can be killed and started
//! again on its port and store.

use crate::NatsServer;
use std::time::{Duration, Instant};

pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

/// A port the kernel hands out, given back for a server to listen on.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl NatsCluster {
    /// Starts `n` servers named `n0`, `n1`, … routed to each other, and waits until JetStream
    /// answers through every one of them.
    pub fn start(n: usize) -> Self {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let list = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let servers = routes
            .iter()
            .enumerate()
            .map(|(i, port)| {
                NatsServer::start_with_config(&format!(
                    "server_name: n{i}\ncluster {{\n  name: truebit\n  listen: 127.0.0.1:{port}\n  routes: [{list}]\n}}\n"
                ))
            })
            .collect();
        NatsCluster { servers }
    }

    /// Every member's client URL, comma-separated, as `NATS_URL` takes them.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until the JetStream API answers (a meta leader is elected), at most `within`.
    pub async fn wait_for_jetstream(&self, within: Duration) {
        let client = async_nats::connect(self.servers[0].url())
            .await
            .expect("connect to the cluster");
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + within;
        loop {
            // A stream that does not exist: any answer at all means JetStream is serving.
            match js.get_stream("NO_SUCH_STREAM").await {
                Err(e)
                    if matches!(
                        e.kind(),
                        async_nats::jetstream::context::GetStreamErrorKind::JetStream(_)
                    ) =>
                {
                    return
                }
                _ if Instant::now() > deadline => {
                    panic!("JetStream in the cluster did not answer within {within:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}
