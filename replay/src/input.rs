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

/// A message as JetStream stored it, before it is read as the contract says.
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub payload: bytes::Bytes,
    pub headers: Option<HeaderMap>,
    pub time: DateTime<Utc>,
}

/// Below this many messages a batch is read on one thread: splitting costs more than it saves.
const PARALLEL_FROM: usize = 64;

/// The inputs of a batch, read on as many threads as there are `verifiers` (each keeps its own
/// cache of keys). The Ed25519 check is by far the dearest part of a signed message and needs
/// nothing but the message, so it is what spreads over the cores; the order of the inputs is
/// the order of `stored`.
pub fn inputs(stored: &[Stored], verifiers: &mut [Verifier]) -> Vec<Input> {
    let read = |v: &mut Verifier, m: &Stored| {
        input(v, m.seq, &m.subject, &m.payload, m.headers.as_ref(), m.time)
    };
    if verifiers.len() < 2 || stored.len() < PARALLEL_FROM {
        let v = verifiers.first_mut().expect("at least one verifier");
        return stored.iter().map(|m| read(v, m)).collect();
    }
    let per = stored.len().div_ceil(verifiers.len());
    std::thread::scope(|scope| {
        let mut parts = Vec::with_capacity(verifiers.len());
        let mut rest = Vec::new();
        for (part, v) in stored.chunks(per).zip(verifiers.iter_mut()) {
            // A machine out of threads reads the part here instead: slower, never a panic.
            match std::thread::Builder::new().spawn_scoped(scope, move || {
                part.iter().map(|m| read(v, m)).collect::<Vec<_>>()
            }) {
                Ok(handle) => parts.push(Ok(handle)),
                Err(_) => parts.push(Err(part)),
            }
        }
        for part in parts {
            match part {
                Ok(handle) => rest.extend(
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                ),
                Err(part) => {
                    let mut v = Verifier::new();
                    rest.extend(part.iter().map(|m| read(&mut v, m)));
                }
            }
        }
        rest
    })
}

/// One verifier per core this machine has.
pub fn verifiers() -> Vec<Verifier> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).map(|_| Verifier::new()).collect()
}
