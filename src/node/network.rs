//! The node's view of the network: KV `latest` read at start (and after every reconnect), then
//! every snapshot on `truebit.stats.aggregated` (a core subscription, which the client renews
//! after a reconnect), the last one kept on disk, and shown in the monitor's flattened format.

use super::state::{Kept, State};
use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use truebit_streams::names::{LATEST_KEY, STATS_BUCKET};
use truebit_streams::subjects;

/// The last snapshot, shared with the HTTP endpoint.
pub type View = Arc<Mutex<Option<Kept>>>;

const COUNTS: [&str; 11] = [
    "activeNodes",
    "totalNodes",
    "totalTasks",
    "completedTasks",
    "failedTasks",
    "cachedTasks",
    "tasksLast24h",
    "successRate",
    "cacheHitRate",
    "totalInvoices",
    "invoicesLast24h",
];
const DISTRIBUTIONS: [&str; 8] = [
    "executionTimeDistribution",
    "gasUsageDistribution",
    "stepsComputedDistribution",
    "memoryUsedDistribution",
    "chainDistribution",
    "taskTypeDistribution",
    "continentDistribution",
    "locationDistribution",
];

/// `GET /api/federation/network-stats`: the snapshot's `data` at the top level, `lastUpdated`
/// (when the agent received it) and `status`: `connected`, `stale` when none arrived for two
/// publish intervals, `awaiting_data` before the first (every count 0, every distribution `{}`).
/// `now_ms` is the wall clock in Unix milliseconds.
pub fn flattened(kept: Option<&Kept>, now_ms: i64, publish_interval: Duration) -> Value {
    let Some(kept) = kept else {
        let mut out = Map::new();
        for k in COUNTS {
            out.insert(k.into(), json!(0));
        }
        for k in DISTRIBUTIONS {
            out.insert(k.into(), json!({}));
        }
        out.insert("lastUpdated".into(), Value::Null);
        out.insert("status".into(), json!("awaiting_data"));
        return Value::Object(out);
    };
    let mut out = kept
        .body
        .get("data")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let age_ms = now_ms.saturating_sub(kept.received_ms()).max(0) as u128;
    let stale = age_ms > 2 * publish_interval.as_millis();
    out.insert(
        "lastUpdated".into(),
        json!(
            chrono::DateTime::<chrono::Utc>::from_timestamp(kept.received_at, 0)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        ),
    );
    out.insert(
        "status".into(),
        json!(if stale { "stale" } else { "connected" }),
    );
    Value::Object(out)
}

fn keep(state: &State, view: &View, body: &[u8]) {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        tracing::warn!("a snapshot that is not JSON; ignored");
        return;
    };
    let now = chrono::Utc::now();
    let kept = Kept {
        received_at: now.timestamp(),
        received_ms: now.timestamp_millis(),
        body,
    };
    if let Err(e) = state.keep_snapshot(&kept) {
        tracing::warn!(error = %e, "cannot keep the snapshot on disk");
    }
    *view.lock().unwrap() = Some(kept);
}

/// Reads KV `latest`; true when it held a snapshot.
async fn read_latest(js: &jetstream::Context, state: &State, view: &View) -> Result<bool, String> {
    let kv = js
        .get_key_value(STATS_BUCKET)
        .await
        .map_err(|e| e.to_string())?;
    match kv.get(LATEST_KEY).await.map_err(|e| e.to_string())? {
        Some(body) => {
            keep(state, view, &body);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Follows the network's snapshots for as long as the agent runs.
pub async fn follow(
    client: async_nats::Client,
    state: Arc<State>,
    view: View,
    mut connected: broadcast::Receiver<()>,
) {
    let js = jetstream::new(client.clone());
    let mut sub = loop {
        match client.subscribe(subjects::STATS_AGGREGATED).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to the network's snapshots; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // KV `latest` at start: tried until NATS answers, then after every reconnect.
    let mut need_latest = true;
    loop {
        if need_latest {
            match read_latest(&js, &state, &view).await {
                Ok(_) => need_latest = false,
                Err(e) => tracing::debug!(error = %e, "KV latest not readable yet; retrying"),
            }
        }
        let retry = tokio::time::sleep(Duration::from_secs(if need_latest { 1 } else { 3600 }));
        tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => keep(&state, &view, &msg.payload),
                None => return,
            },
            r = connected.recv() => {
                if !matches!(r, Err(broadcast::error::RecvError::Closed)) {
                    need_latest = true;
                }
            }
            _ = retry => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flattened_view_says_connected_stale_or_awaiting() {
        let none = flattened(None, 100, Duration::from_secs(30));
        assert_eq!(none["status"], "awaiting_data");
        assert_eq!(none["totalTasks"], 0);
        assert_eq!(none["chainDistribution"], json!({}));
        assert!(none["lastUpdated"].is_null());
        let kept = Kept {
            received_at: 1_796_289_245,
            received_ms: 1_796_289_245_900,
            body: json!({"version": "1.0", "type": "network_stats", "timestamp": "x",
                         "data": {"totalTasks": 7, "chainDistribution": {"1": 7}}}),
        };
        let at = kept.received_ms;
        let fresh = flattened(Some(&kept), at + 60_000, Duration::from_secs(30));
        assert_eq!(fresh["status"], "connected");
        assert_eq!(fresh["totalTasks"], 7);
        assert_eq!(fresh["chainDistribution"]["1"], 7);
        assert_eq!(fresh["lastUpdated"], "2026-12-03T09:14:05Z");
        let stale = flattened(Some(&kept), at + 60_001, Duration::from_secs(30));
        assert_eq!(stale["status"], "stale");
        // An aggregator publishing every 200 ms: 150 ms later, across a second's boundary, is
        // not stale.
        let fast = Duration::from_millis(200);
        assert_eq!(
            flattened(Some(&kept), at + 150, fast)["status"],
            "connected"
        );
        assert_eq!(flattened(Some(&kept), at + 401, fast)["status"], "stale");
        // A snapshot kept before milliseconds were: its seconds count.
        let old = Kept {
            received_ms: 0,
            ..kept.clone()
        };
        let old_at = old.received_at * 1000;
        assert_eq!(
            flattened(Some(&old), old_at + 60_000, Duration::from_secs(30))["status"],
            "connected"
        );
        assert_eq!(
            flattened(Some(&old), old_at + 60_001, Duration::from_secs(30))["status"],
            "stale"
        );
    }
}
