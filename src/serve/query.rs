//! `stats` over NATS: a running `serve` holds the database, so it answers snapshot requests on
//! `truebit.stats.query` (and `keys list` on `truebit.keys.query`), as the NATS micro service
//! `truebit-stats` (contract §8).
//!
//! Request: `{"period": "all", "at": "<RFC 3339>"}`, both optional. Reply: the object stored under
//! `period.<P>`, or the micro protocol's error headers.
//!
//! A third endpoint, `admin-key` on [`subjects::ADMIN_KEY_QUERY`], lets `replay --output` beside a running
//! `serve` check its `ADMIN_KEY` against the database that serve holds (contract §7: a rebuild
//! decides as the live fold did): request `{"adminKey": "<key>"}` (or `null` for none), reply
//! `{"ok": true}` or a 400 error that says what differs and what to do.

use super::snapshots::SnapshotPublisher;
use crate::infra::shutdown::Shutdown;
use async_nats::service::ServiceExt;
use futures::StreamExt;
use serde_json::Value;
use truebit_streams::names::STATS_SERVICE;
use truebit_streams::{
    now_minute, parse_minute, subjects, AdminKeyQuery, Period, PublicKey, StatsQuery,
};

/// Answers queries as the NATS micro service `truebit-stats` until `stop` turns true: endpoint
/// `stats` on `truebit.stats.query` and `keys` on `truebit.keys.query`, so that `$SRV.PING`,
/// `$SRV.INFO` and `$SRV.STATS` find it (and count its requests and errors). A failed query is
/// answered with the service error headers (`Nats-Service-Error`, code 400 for a bad query, 500
/// otherwise) and, for older clients, `{"error": ...}` as the body.
pub(crate) async fn answer(
    client: async_nats::Client,
    publisher: SnapshotPublisher,
    mut stop: Shutdown,
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
    let admin_key = endpoint("admin-key", subjects::ADMIN_KEY_QUERY).await?;
    let mut requests = futures::stream::select(futures::stream::select(stats, keys), admin_key);
    loop {
        let request = tokio::select! {
            _ = stop.recv() => break,
            r = requests.next() => match r {
                Some(r) => r,
                None => return Err(format!("the {STATS_SERVICE} service stopped receiving requests")),
            },
        };
        let answered = match request.message.subject.as_str() {
            subjects::KEYS_QUERY => registry(&publisher).await.map_err(|e| (500, e)),
            subjects::ADMIN_KEY_QUERY => {
                check_admin_key(&publisher, &request.message.payload).await
            }
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

async fn respond(publisher: &SnapshotPublisher, payload: &[u8]) -> Result<Value, (usize, String)> {
    let query = parse_query(payload).map_err(|e| (400, e))?;
    let period: Period = query
        .period
        .as_deref()
        .unwrap_or("all")
        .parse()
        .map_err(|e| (400, e))?;
    let at = match &query.at {
        Some(at) => parse_minute(at).map_err(|e| (400, format!("at {e}")))?,
        None => now_minute(),
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

async fn check_admin_key(
    publisher: &SnapshotPublisher,
    payload: &[u8],
) -> Result<Value, (usize, String)> {
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

async fn registry(publisher: &SnapshotPublisher) -> Result<Value, String> {
    let db = publisher.db();
    truebit_projections::task::blocking(move || db.registry_json())
        .await
        .map_err(|e| e.to_string())
}
