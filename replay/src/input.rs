//! One stored message made into the fold's [`Input`], the same way for the live fold and for a
//! rebuild: read ([`truebit_streams::read`]) against the time JetStream stored it, its signature
//! checked, and a refusal's dead letter built. That both make their inputs here is what lets a
//! replay decide exactly as the live fold did.

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use truebit_projections::{Input, Refusal};
use truebit_streams::names::{HEADER_KEY, HEADER_SIGNATURE};
use truebit_streams::{read, Verifier};

/// The input for the message stored at `seq`.
pub fn input(
    verifier: &mut Verifier,
    seq: u64,
    subject: &str,
    payload: &[u8],
    headers: Option<&HeaderMap>,
    stored_at: DateTime<Utc>,
) -> Input {
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    Input {
        seq,
        stored_minute: stored_at.timestamp().div_euclid(60),
        signer: verifier.check(
            subject,
            payload,
            header(HEADER_KEY),
            header(HEADER_SIGNATURE),
        ),
        event: read(subject, payload, stored_at).map_err(|rejection| {
            tracing::debug!(seq, reason = %rejection.reason, path = rejection.path.as_deref().unwrap_or(""), "refused");
            Refusal::dead_lettered(&rejection, subject, seq, payload)
        }),
    }
}
