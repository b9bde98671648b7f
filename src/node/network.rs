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
use truebit_streams::names::{HEADER_LAST_SEQ, LATEST_KEY, STATS_BUCKET};
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
/// (when the agent received it) and `status`: `connected`, `stale` when the snapshot's own
/// `timestamp` is older than two publish intervals plus the minute it is floored to (so that a
/// days-old KV `latest` read at start is `stale` at once), `awaiting_data` before the first
/// (every count 0, every distribution `{}`). A snapshot without a `timestamp` that parses is
/// judged by when it was received. `now_ms` is the wall clock in Unix milliseconds.
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
    let (since, allowed) = match kept.stamped_ms() {
        Some(at) => (at, 2 * publish_interval.as_millis() + 60_000),
        None => (kept.received_ms(), 2 * publish_interval.as_millis()),
    };
    let age_ms = now_ms.saturating_sub(since).max(0) as u128;
    let stale = age_ms > allowed;
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

/// Keeps a snapshot received, unless the one kept is newer (see [`Kept::supersedes`]).
fn keep(state: &State, view: &View, body: &[u8], last_seq: Option<u64>) {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        tracing::warn!("a snapshot that is not JSON; ignored");
        return;
    };
    let now = chrono::Utc::now();
    let kept = Kept {
        received_at: now.timestamp(),
        received_ms: now.timestamp_millis(),
        last_seq,
        body,
    };
    {
        let newest = view.lock().unwrap();
        if !kept.supersedes(newest.as_ref()) {
            tracing::info!(
                last_seq,
                timestamp = ?kept.body.get("timestamp"),
                newest_last_seq = ?newest.as_ref().and_then(|k| k.last_seq),
                newest_timestamp = ?newest.as_ref().and_then(|k| k.body.get("timestamp").cloned()),
                "ignored a snapshot behind the newest one kept (a cut-off leader's, sent late)"
            );
            return;
        }
    }
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
            keep(state, view, &body, None);
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
                Some(msg) => {
                    let seq = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(HEADER_LAST_SEQ))
                        .and_then(|v| v.as_str().parse().ok());
                    keep(&state, &view, &msg.payload, seq);
                }
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
            last_seq: None,
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

    fn stamped(timestamp: &str, last_seq: Option<u64>, received_ms: i64) -> Kept {
        Kept {
            received_at: received_ms / 1000,
            received_ms,
            last_seq,
            body: json!({"timestamp": timestamp, "data": {"totalTasks": 1}}),
        }
    }

    #[test]
    fn a_snapshot_is_stale_by_its_own_timestamp() {
        // Stamped 09:14:00 (the minute it was computed in), received at 09:14:59.9.
        let t = 1_796_289_240_000;
        let kept = stamped("2026-12-03T09:14:00.000Z", Some(9), t + 59_900);
        let every = Duration::from_secs(30);
        assert_eq!(
            flattened(Some(&kept), t + 120_000, every)["status"],
            "connected"
        );
        assert_eq!(
            flattened(Some(&kept), t + 120_001, every)["status"],
            "stale"
        );
        // A days-old one, just received (KV `latest` read at start): stale at once.
        let days_old = stamped("2026-11-30T09:14:00.000Z", None, t);
        assert_eq!(flattened(Some(&days_old), t, every)["status"], "stale");
        assert_eq!(flattened(Some(&days_old), t, every)["totalTasks"], 1);
    }

    #[test]
    fn a_late_snapshot_of_a_cut_off_leader_is_ignored() {
        let (t0, t1) = ("2026-12-03T09:14:00.000Z", "2026-12-03T09:15:00.000Z");
        let newest = stamped(t0, Some(100), 0);
        assert!(stamped(t0, Some(100), 0).supersedes(None));
        // Lower sequence, same minute: a cut-off leader's, sent late.
        assert!(!stamped(t0, Some(50), 0).supersedes(Some(&newest)));
        // Lower sequence, later minute: a recreated events stream.
        assert!(stamped(t1, Some(3), 0).supersedes(Some(&newest)));
        // Higher or equal sequence: newer numbers.
        assert!(stamped(t0, Some(101), 0).supersedes(Some(&newest)));
        assert!(stamped(t0, Some(100), 0).supersedes(Some(&newest)));
        // KV `latest` has no sequence: judged by its timestamp.
        let later = stamped(t1, Some(120), 0);
        assert!(!stamped(t0, None, 0).supersedes(Some(&later)));
        assert!(stamped(t1, None, 0).supersedes(Some(&later)));
        // A lower sequence with no timestamp cannot show it is later.
        assert!(!stamped("x", Some(50), 0).supersedes(Some(&newest)));
    }
}
