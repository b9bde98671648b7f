//! Reading a stream from a sequence on and following it for as long as the process runs: an
//! ordered consumer, made again after any failure from the message after the last one handed
//! on, with a backoff between tries. `serve` follows `TRUEBIT_STATS` (the published history) and
//! `TRUEBIT_DLQ` (dead letters already stored) this way.

use super::backoff::Backoff;
use super::shutdown::Shutdown;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::Message;
use futures::StreamExt;

/// Where a consumer starts so that `seq` is the first message it delivers (or the first still
/// stored after it).
pub fn deliver_from(seq: u64) -> DeliverPolicy {
    if seq <= 1 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: seq,
        }
    }
}

/// A message handed on: its stream sequence, and when JetStream stored it.
pub(crate) struct Followed {
    pub message: Message,
    pub seq: u64,
    pub stored: chrono::DateTime<chrono::Utc>,
}

/// A stream followed from a sequence on.
pub(crate) struct Following {
    stream: Stream,
    /// Named in the log when the stream cannot be read.
    name: &'static str,
    headers_only: bool,
    /// Only messages on this subject, when set.
    subject: Option<&'static str>,
    /// The sequence of the next message to hand on.
    next: u64,
    messages: Option<Ordered>,
    backoff: Backoff,
}

impl Following {
    pub fn new(stream: Stream, name: &'static str, from: u64) -> Self {
        Following {
            stream,
            name,
            headers_only: false,
            subject: None,
            next: from,
            messages: None,
            backoff: Backoff::new(),
        }
    }

    /// Only the messages' headers are read.
    pub fn headers_only(mut self) -> Self {
        self.headers_only = true;
        self
    }

    /// Only the messages on `subject`.
    pub fn only(mut self, subject: &'static str) -> Self {
        self.subject = Some(subject);
        self
    }

    /// Reads from `seq` on again: what was handed on after it is handed on once more.
    pub fn rewind(&mut self, seq: u64) {
        self.next = seq;
        self.messages = None;
    }

    /// The next message, with its stream sequence and the time JetStream stored it; `None`
    /// once `shutdown` is told. Cancel-safe: a call dropped while it waits loses nothing.
    pub async fn next(&mut self, shutdown: &mut Shutdown) -> Option<Followed> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match open(&self.stream, self.next, self.headers_only, self.subject).await {
                    Ok(messages) => self.messages = Some(messages),
                    Err(e) => {
                        tracing::warn!(error = %e, stream = self.name, "cannot read the stream yet; retrying");
                        tokio::select! {
                            _ = shutdown.recv() => return None,
                            _ = self.backoff.wait() => {}
                        }
                    }
                }
                continue;
            };
            let next = tokio::select! {
                _ = shutdown.recv() => return None,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let Ok((seq, stored)) =
                        message.info().map(|i| (i.stream_sequence, i.published))
                    else {
                        continue; // not a stream message: nothing to hand on
                    };
                    self.backoff.reset();
                    self.next = seq + 1;
                    return Some(Followed {
                        message,
                        seq,
                        stored,
                    });
                }
                failed => {
                    if let Some(Err(e)) = failed {
                        tracing::debug!(error = %e, stream = self.name, "following; reopening");
                    }
                    self.messages = None;
                    tokio::select! {
                        _ = shutdown.recv() => return None,
                        _ = self.backoff.wait() => {}
                    }
                }
            }
        }
    }
}

/// An ordered consumer on `stream` from `next` on.
async fn open(
    stream: &Stream,
    next: u64,
    headers_only: bool,
    subject: Option<&'static str>,
) -> Result<Ordered, String> {
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: deliver_from(next),
            headers_only,
            filter_subject: subject.map(str::to_string).unwrap_or_default(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}
