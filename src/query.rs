//! `stats` over NATS: a running `serve` holds the database, so it answers snapshot requests on
//! `truebit.stats.query` (and `keys list` on `truebit.keys.query`), as the NATS micro service
//! `truebit-stats` (contract §8).
//!
//! Request: `{"period": "all", "at": "<RFC 3339>"}`, both optional. Reply: the object stored under
//! `period.<P>`, or the micro protocol's error headers.
//!
//! A third endpoint, `admin-key` on [`ADMIN_KEY_QUERY`], lets `replay --output` beside a running
//! `serve` check its `ADMIN_KEY` against the database that serve holds (contract §7: a rebuild
//! decides as the live fold did): request `{"adminKey": "<key>"}` (or `null` for none), reply
//! `{"ok": true}` or a 400 error that says what differs and what to do.

use crate::publish::Publisher;
use crate::Error;
use async_nats::service::ServiceExt;
use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::watch;
use truebit_streams::names::STATS_SERVICE;
use truebit_streams::{subjects, Minute, Period, PublicKey, StatsQuery};

/// Request-reply: `replay` asks a running `serve` whether its `ADMIN_KEY` is the one the
/// database serve holds was folded with.
pub(crate) const ADMIN_KEY_QUERY: &str = "truebit.stats.admin-key";

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

/// Answers queries as the NATS micro service `truebit-stats` until `stop` turns true: endpoint
/// `stats` on `truebit.stats.query` and `keys` on `truebit.keys.query`, so that `$SRV.PING`,
/// `$SRV.INFO` and `$SRV.STATS` find it (and count its requests and errors). A failed query is
/// answered with the service error headers (`Nats-Service-Error`, code 400 for a bad query, 500
/// otherwise) and, for older clients, `{"error": ...}` as the body.
pub(crate) async fn answer(
    client: async_nats::Client,
    publisher: Publisher,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let service = client
        .service_builder()
        .description(
            "TrueBit federation statistics: snapshots and the key registry of a running serve",
        )
        .start(STATS_SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| format!("cannot start the NATS micro service {STATS_SERVICE}: {e}"))?;
    let endpoint = |name: &'static str, subject: &'static str| {
        let service = &service;
        async move {
            service
                .endpoint_builder()
                .name(name)
                .add(subject)
                .await
                .map_err(|e| format!("cannot add endpoint {name} on {subject}: {e}"))
        }
    };
    let stats = endpoint("stats", subjects::STATS_QUERY).await?;
    let keys = endpoint("keys", subjects::KEYS_QUERY).await?;
    let admin_key = endpoint("admin-key", ADMIN_KEY_QUERY).await?;
    let mut requests = futures::stream::select(futures::stream::select(stats, keys), admin_key);
    loop {
        let request = tokio::select! {
            _ = stop.changed() => break,
            r = requests.next() => match r {
                Some(r) => r,
                None => return Err(format!("the {STATS_SERVICE} service stopped receiving requests")),
            },
        };
        let answered = match request.message.subject.as_str() {
            subjects::KEYS_QUERY => registry(&publisher).await.map_err(|e| (500, e)),
            ADMIN_KEY_QUERY => check_admin_key(&publisher, &request.message.payload).await,
            _ => respond(&publisher, &request.message.payload).await,
        };
        let sent = match answered {
            Ok(answer) => {
                let body = serde_json::to_vec(&answer).expect("JSON values serialize");
                request.respond(Ok(body.into())).await
            }
            // The micro protocol's error: headers, an empty body, and counted in `$SRV.STATS`.
            Err((code, e)) => {
                request
                    .respond(Err(async_nats::service::error::Error { status: e, code }))
                    .await
            }
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot answer a query");
        }
    }
    if let Err(e) = service.stop().await {
        tracing::debug!(error = %e, "stopping the micro service");
    }
    Ok(())
}

async fn respond(publisher: &Publisher, payload: &[u8]) -> Result<Value, (usize, String)> {
    let query = parse_query(payload).map_err(|e| (400, e))?;
    let period = parse_period(query.period.as_deref().unwrap_or("all")).map_err(|e| (400, e))?;
    let at = match &query.at {
        Some(at) => parse_at(at).map_err(|e| (400, e))?,
        None => crate::publish::now_minute(),
    };
    let snapshots = publisher
        .snapshots(at)
        .await
        .map_err(|e| (500, e.to_string()))?;
    let snapshot = snapshots
        .into_iter()
        .find(|s| s.period == period)
        .expect("every period is computed");
    Ok(snapshot.to_period_message())
}

fn parse_query(payload: &[u8]) -> Result<StatsQuery, String> {
    let query: StatsQuery = if payload.is_empty() {
        StatsQuery::default()
    } else {
        serde_json::from_slice(payload).map_err(|e| {
            format!("the query is not JSON of the form {{\"period\":..,\"at\":..}}: {e}")
        })?
    };
    Ok(query)
}

/// The body of an [`ADMIN_KEY_QUERY`] request.
#[derive(serde::Serialize, serde::Deserialize)]
struct AdminKeyQuery {
    #[serde(rename = "adminKey")]
    admin_key: Option<String>,
}

async fn check_admin_key(publisher: &Publisher, payload: &[u8]) -> Result<Value, (usize, String)> {
    let query: AdminKeyQuery = serde_json::from_slice(payload).map_err(|e| {
        (
            400,
            format!("the query is not JSON of the form {{\"adminKey\": ..}}: {e}"),
        )
    })?;
    let key = match query.admin_key.as_deref() {
        None => None,
        Some(k) => Some(PublicKey::parse(k).ok_or_else(|| {
            (
                400,
                format!("{k:?} is not a public key as `keys new-admin` prints one"),
            )
        })?),
    };
    let db = publisher.db();
    match truebit_projections::task::blocking(move || db.check_admin_key(key.as_ref())).await {
        Ok(()) => Ok(serde_json::json!({"ok": true})),
        Err(e @ truebit_projections::Error::AdminKey { .. }) => Err((400, e.to_string())),
        Err(e) => Err((500, e.to_string())),
    }
}

/// Asks a running `serve` whether `key` is the root key its database was folded with; a
/// different one is [`Error::Usage`], saying what to do.
pub(crate) async fn ask_admin_key(
    client: &async_nats::Client,
    key: Option<&PublicKey>,
) -> Result<(), Error> {
    let body = serde_json::to_vec(&AdminKeyQuery {
        admin_key: key.map(|k| k.to_string()),
    })
    .expect("a query serializes");
    ask_on(client, ADMIN_KEY_QUERY, body).await.map(drop)
}

async fn registry(publisher: &Publisher) -> Result<Value, String> {
    let db = publisher.db();
    truebit_projections::task::blocking(move || crate::keys::registry_json(&db))
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
    if let Some(e) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR))
    {
        let code = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR_CODE))
            .map(|c| c.as_str().to_string());
        return Err(match code.as_deref() {
            Some("400") => Error::Usage(e.as_str().to_string()),
            _ => Error::Remote(e.as_str().to_string()),
        });
    }
    let value: Value = serde_json::from_slice(&reply.payload)
        .map_err(|e| Error::Remote(format!("an answer that is not JSON: {e}")))?;
    match value.get("error").and_then(Value::as_str) {
        Some(e) => Err(Error::Usage(e.to_string())),
        None => Ok(value),
    }
}
