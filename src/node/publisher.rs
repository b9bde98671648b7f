//! The outbox out to JetStream: oldest first, one at a time so that order holds, each with its
//! `Nats-Msg-Id` and signature headers, dropped from the outbox only once JetStream acknowledged
//! it. While NATS is away the outbox waits; a message sent twice across a crash carries the same
//! `Nats-Msg-Id`, so JetStream stores it once. Never more than `--rate-limit` messages go out in
//! any minute of JetStream's stored time (contract §10, §7), whatever the node's clock says:
//! see [`Pacer`].

use super::state::{Outgoing, State};
use crate::infra::backoff::Backoff;
use async_nats::jetstream;
use async_nats::HeaderMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use truebit_streams::names::HEADER_MSG_ID;
use truebit_streams::SigningKey;

/// Events read from the outbox at a time.
const CHUNK: usize = 256;

/// How long a window of the node's clock holds at most `limit` messages: a minute and a second.
///
/// The aggregator counts a key's messages per UTC minute of the time JetStream STORED them, by
/// the server's clock, which the node cannot read: a PubAck carries no time. It need not: the
/// agent sends one message at a time, each after the last one's acknowledgement, so message
/// `i` is stored at some moment between when its send began (`s_i`) and when its ack came
/// (`r_i`). The rule "a send begins only when fewer than `limit` acks came within the last
/// `WINDOW` of the node's monotonic clock" then means that any `limit + 1` messages are stored
/// more than `WINDOW` apart by the node's clock (for the first `m` and last `n` of them,
/// `t_n - t_m >= s_n - r_m >= WINDOW`). A server minute lasts 60 s of the node's clock give or
/// take the two clocks' difference in RATE, which an offset (however large) does not change
/// and which is parts per million (a crystal drifts about 100 ppm, NTP slews at most 500 ppm:
/// 30 ms a minute); the extra second covers that many times over, and a leap second. So no
/// server minute, wherever its boundaries fall for the node, holds more than `limit`. Reading
/// the server's time instead (a direct get of the stored message) would cost a request per
/// message and still not tell where the next minute begins, for the next message is stored
/// later by an unknown delay.
pub const WINDOW: Duration = Duration::from_secs(61);

/// The rate limit of contract §10: when the latest acknowledgements came, and how long the
/// next send must wait for fewer than `limit` of them to lie within [`WINDOW`]. Pure: instants
/// in, durations out.
#[derive(Debug)]
pub struct Pacer {
    limit: usize,
    window: Duration,
    /// The latest `limit` acknowledgements, oldest first.
    acks: VecDeque<Instant>,
}

impl Pacer {
    pub fn new(limit: u32, window: Duration) -> Self {
        Pacer {
            limit: limit.max(1) as usize,
            window,
            acks: VecDeque::new(),
        }
    }

    /// How long a send that would begin at `now` must wait.
    pub fn wait(&self, now: Instant) -> Duration {
        if self.acks.len() < self.limit {
            return Duration::ZERO;
        }
        let oldest = self.acks[self.acks.len() - self.limit];
        (oldest + self.window).saturating_duration_since(now)
    }

    /// An acknowledgement came at `at`.
    pub fn acked(&mut self, at: Instant) {
        self.acks.push_back(at);
        while self.acks.len() > self.limit {
            self.acks.pop_front();
        }
    }

    /// The acknowledgements as Unix milliseconds, `now` being `now_ms`, to be kept on disk.
    pub fn to_unix_ms(&self, now: Instant, now_ms: i64) -> Vec<i64> {
        self.acks
            .iter()
            .map(|a| now_ms - now.saturating_duration_since(*a).as_millis() as i64)
            .collect()
    }

    /// A pacer that starts where the last run left off: its acknowledgements as kept on disk
    /// (Unix ms; a wall clock stepped back meanwhile makes them look newer, which only waits
    /// longer), and one more at `now`, for the message that may have been stored while its
    /// acknowledgement was lost in a crash.
    pub fn resume(
        limit: u32,
        window: Duration,
        kept_ms: &[i64],
        now: Instant,
        now_ms: i64,
    ) -> Self {
        let mut pacer = Pacer::new(limit, window);
        for ms in kept_ms {
            let ago = Duration::from_millis(now_ms.saturating_sub(*ms).max(0) as u64);
            if ago < window {
                pacer.acked(now.checked_sub(ago).unwrap_or(now));
            }
        }
        pacer.acked(now);
        pacer
    }
}

pub struct Publisher {
    pub js: jetstream::Context,
    pub state: Arc<State>,
    pub key: Option<Arc<SigningKey>>,
    pub wake: Arc<Notify>,
    /// Shared by the publisher of the running agent and the one that sends `node_left`.
    pub pacer: Arc<Mutex<Pacer>>,
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
                self.pace().await;
                self.publish(out).await?;
                let acks = {
                    let mut pacer = self.pacer.lock().unwrap();
                    let now = Instant::now();
                    pacer.acked(now);
                    pacer.to_unix_ms(now, chrono::Utc::now().timestamp_millis())
                };
                self.state
                    .sent(&[*place], Some(&acks))
                    .map_err(|e| e.to_string())?;
                total += 1;
            }
        }
    }

    /// Waits until the rate limit lets one more message go.
    async fn pace(&self) {
        let wait = self.pacer.lock().unwrap().wait(Instant::now());
        if wait.is_zero() {
            return;
        }
        let waiting = self.state.outbox_len().unwrap_or(0);
        let why = "--rate-limit messages went out within the last minute: the rest waits (the key's rateLimit would refuse them)";
        // Once a window, not once a message: short waits follow the long one.
        if wait >= Duration::from_secs(1) {
            tracing::info!(wait_ms = wait.as_millis() as u64, waiting, "{why}");
        } else {
            tracing::debug!(wait_ms = wait.as_millis() as u64, waiting, "{why}");
        }
        tokio::time::sleep(wait).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_lets_limit_acks_lie_within_a_window_and_no_more() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut p = Pacer::new(3, WINDOW);
        for i in 0..3 {
            assert_eq!(p.wait(t0 + s(i)), Duration::ZERO);
            p.acked(t0 + s(i));
        }
        // The fourth waits until the first ack is a window old.
        assert_eq!(p.wait(t0 + s(3)), s(58));
        assert_eq!(p.wait(t0 + s(61)), Duration::ZERO);
        p.acked(t0 + s(61));
        assert_eq!(p.wait(t0 + s(61)), s(1), "then until the second one is");
    }

    #[test]
    fn a_resumed_pacer_counts_the_last_run_and_one_lost_ack() {
        let now = Instant::now();
        let now_ms = 1_796_289_245_000;
        let mut p = Pacer::new(3, WINDOW);
        p.acked(now - Duration::from_secs(70));
        p.acked(now - Duration::from_secs(10));
        let kept = p.to_unix_ms(now, now_ms);
        assert_eq!(kept, [now_ms - 70_000, now_ms - 10_000]);
        let r = Pacer::resume(3, WINDOW, &kept, now, now_ms);
        // 10 s ago and now count; 70 s ago is past the window.
        assert_eq!(r.acks.len(), 2);
        assert_eq!(r.wait(now), Duration::ZERO);
        let r = Pacer::resume(2, WINDOW, &kept, now, now_ms);
        assert_eq!(r.wait(now), Duration::from_secs(51));
    }
}
