//! Asking a running `serve` over NATS: a command whose database file is held by `serve` asks the
//! micro service `truebit-stats` instead (contract §8; the responder is `serve/query.rs`).

use crate::Error;
use serde_json::Value;
use std::time::Duration;
use truebit_streams::{subjects, AdminKeyQuery, PublicKey, StatsQuery};

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
    ask_on(client, subjects::ADMIN_KEY_QUERY, body)
        .await
        .map(drop)
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
