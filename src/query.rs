//! `stats` over NATS: a running `serve` holds the database, so it answers snapshot requests on
//! `truebit.stats.query`.
//!
//! Request: `{"period": "all", "at": "<RFC 3339>"}`, both optional. Reply: the object stored under
//! `period.<P>`, or `{"error": "..."}`.

use crate::publish::Publisher;
use crate::Error;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::watch;
use truebit_streams::{subjects, Minute, Period, StatsQuery};

/// Parses `--at`: RFC 3339, floored to the minute.
pub(crate) fn parse_at(at: &str) -> Result<Minute, String> {
    chrono::DateTime::parse_from_rfc3339(at)
        .map(|t| t.timestamp().div_euclid(60))
        .map_err(|e| {
            format!("--at {at:?} is not an RFC 3339 time ({e}); write it like 2026-11-25T10:30:00Z")
        })
}

pub(crate) fn parse_period(p: &str) -> Result<Period, String> {
    Period::parse(p).ok_or_else(|| format!("period {p:?} is not one of 1h, 24h, 7d, all"))
}

/// Answers queries until `stop` turns true.
pub(crate) async fn answer(
    client: async_nats::Client,
    publisher: Publisher,
    mut stop: watch::Receiver<bool>,
) {
    let (stats, keys) = match tokio::try_join!(
        client.subscribe(subjects::STATS_QUERY),
        client.subscribe(subjects::KEYS_QUERY)
    ) {
        Ok(both) => both,
        Err(e) => {
            tracing::error!(error = %e, "cannot answer stats and keys queries");
            return;
        }
    };
    let mut requests = futures::stream::select(stats, keys);
    loop {
        let request = tokio::select! {
            _ = stop.changed() => break,
            r = requests.next() => match r { Some(r) => r, None => break },
        };
        let Some(reply) = request.reply.clone() else {
            continue;
        };
        let answered = if request.subject.as_str() == subjects::KEYS_QUERY {
            registry(&publisher).await
        } else {
            respond(&publisher, &request.payload).await
        };
        let answer = answered.unwrap_or_else(|e| json!({ "error": e }));
        let body = serde_json::to_vec(&answer).expect("JSON values serialize");
        if let Err(e) = client.publish(reply, body.into()).await {
            tracing::warn!(error = %e, "cannot answer a stats query");
        }
    }
}

async fn respond(publisher: &Publisher, payload: &[u8]) -> Result<Value, String> {
    let query: StatsQuery = if payload.is_empty() {
        StatsQuery::default()
    } else {
        serde_json::from_slice(payload).map_err(|e| {
            format!("the query is not JSON of the form {{\"period\":..,\"at\":..}}: {e}")
        })?
    };
    let period = parse_period(query.period.as_deref().unwrap_or("all"))?;
    let at = match &query.at {
        Some(at) => parse_at(at)?,
        None => crate::publish::now_minute(),
    };
    let snapshots = publisher.snapshots(at).await.map_err(|e| e.to_string())?;
    let snapshot = snapshots
        .into_iter()
        .find(|s| s.period == period)
        .expect("every period is computed");
    Ok(snapshot.to_period_message())
}

async fn registry(publisher: &Publisher) -> Result<Value, String> {
    let db = publisher.db();
    truebit_replay::task::blocking(move || crate::keys::registry_json(&db))
        .await
        .map_err(|e| e.to_string())
}

/// Asks a running `serve` for the key registry.
pub(crate) async fn ask_keys(client: &async_nats::Client) -> Result<Value, Error> {
    ask_on(client, subjects::KEYS_QUERY, Vec::new()).await
}

/// Asks a running `serve` for a snapshot.
pub(crate) async fn ask(client: &async_nats::Client, query: &StatsQuery) -> Result<Value, Error> {
    let body = serde_json::to_vec(query).expect("a query serializes");
    ask_on(client, subjects::STATS_QUERY, body).await
}

async fn ask_on(
    client: &async_nats::Client,
    subject: &'static str,
    body: Vec<u8>,
) -> Result<Value, Error> {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject, body.into()),
    )
    .await
    .map_err(|_| {
        Error::Remote("no answer within 10 s; is serve busy or stuck? check its log".into())
    })?
    .map_err(|e| {
        Error::Remote(format!(
            "{e}; the database is held by another process, but no serve answers on {subject}"
        ))
    })?;
    let value: Value = serde_json::from_slice(&reply.payload)
        .map_err(|e| Error::Remote(format!("an answer that is not JSON: {e}")))?;
    match value.get("error").and_then(Value::as_str) {
        Some(e) => Err(Error::Usage(e.to_string())),
        None => Ok(value),
    }
}
