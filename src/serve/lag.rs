//! How far the fold is behind, measured every second for `/metrics`, `/readyz` and the
//! dashboard: the consumer's pending messages (not yet delivered, or delivered and not yet acked
//! after a commit), the stream's last sequence, and the age of the oldest message not folded.

use super::metrics::Metrics;
use super::status::Status;
use crate::infra::shutdown::Shutdown;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::Stream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const EVERY: Duration = Duration::from_secs(1);

pub(crate) async fn watch(
    client: async_nats::Client,
    mut consumer: PullConsumer,
    mut events: Stream,
    applied: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    mut stop: Shutdown,
) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.recv() => return,
            _ = ticker.tick() => {}
        }
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        status.connected.store(connected, Ordering::Relaxed);
        if !connected {
            continue;
        }
        match consumer.info().await {
            Ok(info) => {
                let pending = info.num_pending + info.num_ack_pending as u64;
                metrics.pending.set(pending as i64);
                status.set_pending(pending);
            }
            Err(e) => tracing::debug!(error = %e, "reading the consumer's lag"),
        }
        let last = match events.info().await {
            Ok(info) => info.state.last_sequence,
            Err(e) => {
                tracing::debug!(error = %e, "reading the stream's last sequence");
                continue;
            }
        };
        metrics.stream_last.set(last as i64);
        let folded = *applied.borrow();
        let age = if folded < last {
            match events
                .get_first_raw_message_by_subject(">", folded + 1)
                .await
            {
                Ok(raw) => (chrono::Utc::now() - raw.time).num_milliseconds().max(0) as f64 / 1e3,
                Err(_) => 0.0,
            }
        } else {
            0.0
        };
        metrics.oldest_unfolded_age.set(age);
    }
}
