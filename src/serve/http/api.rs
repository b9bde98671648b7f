//! `/api/stats`, `/api/history` and `/api/status`: what the dashboard reads, as JSON any client
//! may read too. A bad parameter is a 400 whose JSON says what is allowed.

use super::AppState;
use crate::serve::node_history::{NodeCounts, NodeHistory};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::SystemTime;
use truebit_projections::task::blocking;
use truebit_projections::{Point, Step};
use truebit_streams::{minute_timestamp, Minute, Period};

/// The most points one answer holds: 30 days at one minute, with room.
pub const MAX_POINTS: i64 = 50_000;

fn bad(error: String, allowed: Value) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": error, "allowed": allowed })),
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

/// `at`, floored to the minute; now when absent.
fn at_param(q: &HashMap<String, String>) -> Result<Minute, String> {
    match q.get("at") {
        None => Ok(truebit_streams::now_minute()),
        Some(at) => truebit_streams::parse_minute(at).map_err(|e| format!("at {e}")),
    }
}

fn unknown_params(
    q: &HashMap<String, String>,
    known: &[&str],
    allowed: &Value,
) -> Option<Response> {
    q.keys().find(|k| !known.contains(&k.as_str())).map(|k| {
        bad(
            format!(
                "unknown parameter {k:?}; this endpoint takes {}",
                known.join(", ")
            ),
            allowed.clone(),
        )
    })
}

/// `GET /api/stats?period=P[&at=T]`: the object of KV `period.<P>`, computed now.
pub async fn stats(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let allowed = json!({"period": ["1h", "24h", "7d", "all"], "at": "RFC 3339"});
    if let Some(r) = unknown_params(&q, &["period", "at"], &allowed) {
        return r;
    }
    let period = match Period::parse(q.get("period").map_or("all", String::as_str)) {
        Some(p) => p,
        None => {
            return bad(
                format!("period {:?} is not one of 1h, 24h, 7d, all", q["period"]),
                allowed,
            )
        }
    };
    let at = match at_param(&q) {
        Ok(at) => at,
        Err(e) => return bad(e, allowed),
    };
    let db = state.db.clone();
    match blocking(move || db.snapshot(at, period)).await {
        Ok(s) => axum::Json(s.to_period_message()).into_response(),
        Err(e) => internal(e),
    }
}

/// The range of a history series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Day,
    Week,
    Month,
    All,
}

impl Range {
    pub fn parse(s: &str) -> Option<Range> {
        Some(match s {
            "24h" => Range::Day,
            "7d" => Range::Week,
            "30d" => Range::Month,
            "all" => Range::All,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Range::Day => "24h",
            Range::Week => "7d",
            Range::Month => "30d",
            Range::All => "all",
        }
    }

    /// The range's length in minutes; `None` for all time.
    pub fn minutes(self) -> Option<i64> {
        match self {
            Range::Day => Some(1440),
            Range::Week => Some(7 * 1440),
            Range::Month => Some(30 * 1440),
            Range::All => None,
        }
    }

    pub fn default_step(self) -> Step {
        match self {
            Range::Day => Step::Minute,
            Range::Week | Range::Month => Step::Hour,
            Range::All => Step::Day,
        }
    }
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    range: Option<String>,
    step: Option<String>,
}

/// `GET /api/history?range=24h|7d|30d|all[&step=1m|1h|1d][&at=T]`.
pub async fn history(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let allowed =
        json!({"range": ["24h", "7d", "30d", "all"], "step": ["1m", "1h", "1d"], "at": "RFC 3339"});
    if let Some(r) = unknown_params(&q, &["range", "step", "at"], &allowed) {
        return r;
    }
    let hq = HistoryQuery {
        range: q.get("range").cloned(),
        step: q.get("step").cloned(),
    };
    let range = match Range::parse(hq.range.as_deref().unwrap_or("24h")) {
        Some(r) => r,
        None => {
            return bad(
                format!(
                    "range {:?} is not one of 24h, 7d, 30d, all",
                    hq.range.unwrap_or_default()
                ),
                allowed,
            )
        }
    };
    let step = match hq.step.as_deref() {
        None => range.default_step(),
        Some(s) => match Step::parse(s) {
            Some(step) => step,
            None => return bad(format!("step {s:?} is not one of 1m, 1h, 1d"), allowed),
        },
    };
    match range.minutes() {
        Some(r) if r / step.minutes() + 1 > MAX_POINTS => {
            return bad(
                format!(
                    "range {} at step {} is more than {MAX_POINTS} points; use a longer step",
                    range.as_str(),
                    step.as_str()
                ),
                allowed,
            )
        }
        None if step == Step::Minute => {
            return bad(
                "range all at step 1m could be millions of points; use step 1h or 1d".into(),
                allowed,
            )
        }
        _ => {}
    }
    let at = match at_param(&q) {
        Ok(at) => at,
        Err(e) => return bad(e, allowed),
    };
    let db = state.db.clone();
    let from = range.minutes().map(|r| step.floor(at) - r);
    match blocking(move || db.history(from, at, step, MAX_POINTS as u64)).await {
        // `all` is as long as the network is old, `at` as far as asked: checked before the
        // points are made.
        Ok(Err(count)) => bad(
            format!(
                "range {} at step {} is {count} points, more than {MAX_POINTS}; use a longer step",
                range.as_str(),
                step.as_str(),
            ),
            allowed,
        ),
        Ok(Ok(points)) => {
            let body = render_history(range, step, at, &points, &state.nodes);
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => internal(e),
    }
}

/// The JSON of contract §8's history answer: each point with the task and invoice figures of its
/// step and the node counts of the last history record at or before the step's end (absent
/// when there is none).
pub fn render_history(
    range: Range,
    step: Step,
    at: Minute,
    points: &[Point],
    nodes: &NodeHistory,
) -> Vec<u8> {
    let ends = points.iter().map(|p| (p.at + step.minutes() - 1).min(at));
    let counts = nodes.at_or_before(ends);
    let points: Vec<Value> = points
        .iter()
        .zip(counts)
        .map(|(p, n)| {
            let mut v = json!({
                "t": minute_timestamp(p.at),
                "tasks": p.tasks,
                "completed": p.completed,
                "failed": p.failed,
                "cached": p.cached,
                "invoices": p.invoices,
            });
            if let Some(NodeCounts { active, total }) = n {
                v["activeNodes"] = json!(active);
                v["totalNodes"] = json!(total);
            }
            v
        })
        .collect();
    serde_json::to_vec(&json!({
        "range": range.as_str(),
        "step": step.as_str(),
        "at": minute_timestamp(step.floor(at)),
        "points": points,
    }))
    .expect("JSON values serialize")
}

/// `GET /api/status`: freshness and the last published snapshot, for the dashboard.
pub async fn status(State(state): State<AppState>) -> Response {
    let interval_ms = state.publish_interval.as_millis() as u64;
    let published = state.status.published();
    let now = SystemTime::now();
    let age = published
        .as_ref()
        .map(|p| now.duration_since(p.when).unwrap_or_default().as_secs_f64());
    let stale = age.is_none_or(|a| a * 1000.0 > 2.0 * interval_ms as f64);
    let m = &state.metrics;
    let not_ready = state.status.not_ready();
    axum::Json(json!({
        "now": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "publishIntervalMs": interval_ms,
        "snapshot": published.as_ref().map(|p| p.message.clone()),
        "snapshotPublishedAt": published.as_ref().map(|p| chrono::DateTime::<chrono::Utc>::from(p.when).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "snapshotSeq": published.as_ref().map(|p| p.seq),
        "snapshotAgeSeconds": age,
        "stale": stale,
        "lastAppliedSeq": m.last_applied.get(),
        "streamLastSeq": m.stream_last.get(),
        "lag": state.status.pending(),
        "oldestUnfoldedAgeSeconds": m.oldest_unfolded_age.get(),
        "connected": state.status.connected.load(Ordering::Relaxed),
        "ready": not_ready.is_none(),
        "notReady": not_ready,
        "historyRecords": state.nodes.len(),
    }))
    .into_response()
}
