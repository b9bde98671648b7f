//! `stats`: a snapshot from the database file, or from the running `serve` that holds it.

use super::ask;
use crate::{Error, NatsConfig};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;
use truebit_projections::task::blocking;
use truebit_projections::Projections;
use truebit_streams::{Minute, Period, StatsQuery};

#[derive(Debug, Clone)]
pub struct StatsConfig {
    pub nats: NatsConfig,
    pub db_path: PathBuf,
    pub period: Period,
    /// `None` for now.
    pub at: Option<Minute>,
    pub json: bool,
}

/// The snapshot as the object stored under `period.<P>`.
pub async fn stats(config: &StatsConfig) -> Result<Value, Error> {
    let at = config.at.unwrap_or_else(truebit_streams::now_minute);
    let path = config.db_path.clone();
    match blocking(move || Projections::open_existing(path)).await {
        Ok(db) => {
            let period = config.period;
            let snapshot = blocking(move || db.snapshot(at, period)).await?;
            Ok(snapshot.to_period_message())
        }
        Err(truebit_projections::Error::Locked { .. }) => {
            tracing::debug!("the database is held; asking the running serve");
            let client = config.nats.connect("truebit-federation stats").await?;
            let query = StatsQuery {
                period: Some(config.period.as_str().to_string()),
                at: Some(rfc3339(at)),
            };
            ask::ask(&client, &query).await
        }
        Err(e) => Err(e.into()),
    }
}

fn rfc3339(minute: Minute) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(minute * 60, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// A snapshot for a person to read.
pub fn render(snapshot: &Value) -> String {
    let d = &snapshot["data"];
    let n = |k: &str| d[k].as_u64().unwrap_or(0);
    let f = |k: &str| d[k].as_f64().unwrap_or(0.0);
    let dist = |k: &str| -> String {
        match d[k].as_object() {
            Some(m) if !m.is_empty() => m
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join("  "),
            _ => "-".to_string(),
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "TrueBit network at {} over {}",
        snapshot["timestamp"].as_str().unwrap_or("?"),
        snapshot["period"].as_str().unwrap_or("all")
    );
    let _ = writeln!(
        out,
        "  nodes          {} active, {} seen",
        n("activeNodes"),
        n("totalNodes")
    );
    let _ = writeln!(
        out,
        "  tasks          {} ({} completed, {} failed, {} cached)",
        n("totalTasks"),
        n("completedTasks"),
        n("failedTasks"),
        n("cachedTasks")
    );
    let _ = writeln!(out, "  success rate   {:.1} %", f("successRate"));
    let _ = writeln!(out, "  cache hits     {:.1} %", f("cacheHitRate"));
    let _ = writeln!(out, "  invoices       {}", n("totalInvoices"));
    let _ = writeln!(
        out,
        "  last 24 h      {} tasks, {} invoices",
        n("tasksLast24h"),
        n("invoicesLast24h")
    );
    for (label, key) in [
        ("execution", "executionTimeDistribution"),
        ("gas used", "gasUsageDistribution"),
        ("steps", "stepsComputedDistribution"),
        ("memory", "memoryUsedDistribution"),
        ("chains", "chainDistribution"),
        ("task types", "taskTypeDistribution"),
        ("continents", "continentDistribution"),
        ("locations", "locationDistribution"),
    ] {
        let _ = writeln!(out, "  {label:<14} {}", dist(key));
    }
    out
}
