//! The outbox out to JetStream: oldest first, one at a time so that order holds, each with its
//! `Nats-Msg-Id` and signature headers, dropped from the outbox only once JetStream acknowledged
//! it. While NATS is away the outbox waits; a message sent twice across a crash carries the same
//! `Nats-Msg-Id`, so JetStream stores it once.

use super::state::{Outgoing, State};
use crate::infra::backoff::Backoff;
use async_nats::jetstream;
use async_nats::HeaderMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use truebit_streams::names::HEADER_MSG_ID;
use truebit_streams::SigningKey;

/// Events read from the outbox at a time.
const CHUNK: usize = 256;

pub struct Publisher {
    pub js: jetstream::Context,
    pub state: Arc<State>,
    pub key: Option<Arc<SigningKey>>,
    pub wake: Arc<Notify>,
}

/// The headers of one message: its id and, with a key, its signature (contract §7).
pub fn headers(out: &Outgoing, key: Option<&SigningKey>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, out.msg_id.as_str());
    if let Some(key) = key {
        for (name, value) in key.sign(&out.subject, &out.payload) {
            headers.insert(name, value.as_str());
        }
    }
    headers
}

impl Publisher {
    /// Publishes what waits, until the outbox is empty or NATS fails; returns how many went.
    ///
    /// Each event leaves the outbox in the same step as its acknowledgement arrives, with no
    /// `.await` between the two: a drain cut short (a stop, a timeout, an abort) never leaves an
    /// acknowledged event behind to be sent again later, past JetStream's duplicate window.
    pub async fn drain(&self) -> Result<usize, String> {
        let mut total = 0;
        loop {
            let pending = self.state.pending(CHUNK).map_err(|e| e.to_string())?;
            if pending.is_empty() {
                return Ok(total);
            }
            for (place, out) in &pending {
                self.publish(out).await?;
                self.state.sent(&[*place]).map_err(|e| e.to_string())?;
                total += 1;
            }
        }
    }

    async fn publish(&self, out: &Outgoing) -> Result<(), String> {
        let headers = headers(out, self.key.as_deref());
        let ack = self
            .js
            .publish_with_headers(out.subject.clone(), headers, out.payload.clone().into())
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Publishes whenever woken (and every second), backing off while NATS fails.
    pub async fn run(self) {
        let mut backoff = Backoff::new();
        let mut failing = false;
        loop {
            match self.drain().await {
                Ok(n) => {
                    if failing {
                        tracing::info!(
                            published = n,
                            "NATS takes events again; the outbox is sent"
                        );
                    } else if n > 0 {
                        tracing::debug!(published = n, "published");
                    }
                    failing = false;
                    backoff.reset();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                }
                Err(e) => {
                    if !failing {
                        let waiting = self.state.outbox_len().unwrap_or(0);
                        tracing::warn!(error = %e, waiting, "cannot publish to JetStream; events wait in the outbox and go when NATS is back");
                    }
                    failing = true;
                    backoff.wait().await;
                }
            }
        }
    }
}
