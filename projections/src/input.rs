//! What the fold is handed: an [`Input`] per stored message, made the same way for the live fold
//! and for a rebuild: read ([`truebit_streams::read`]) against the time JetStream stored it, its
//! signature checked, and a refusal's dead letter built. That both make their inputs here is what
//! lets a replay decide exactly as the live fold did.

use chrono::{DateTime, Utc};
use truebit_streams::names::{HEADER_KEY, HEADER_SIGNATURE};
use truebit_streams::{read, DeadLetter, Message, Minute, Reason, Rejection, Signer, Verifier};

/// One message of the stream, ready to fold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Its sequence in `TRUEBIT_EVENTS`.
    pub seq: u64,
    /// The minute JetStream stored it: the clock of rate limits (contract §7).
    pub stored_minute: Minute,
    /// What its signature headers show, checked ahead of the fold.
    pub signer: Signer,
    /// The message as read, or why it was refused (refusals are counted, not folded).
    pub event: Result<Message, Refusal>,
}

impl Input {
    /// An unsigned message, as today's monitors send them, stored in minute 0: for a fold that
    /// stays `open`.
    pub fn unsigned(seq: u64, event: Result<Message, Refusal>) -> Self {
        Input {
            seq,
            stored_minute: 0,
            signer: Signer::Unsigned,
            event,
        }
    }

    /// The input for `message`, checking its signature with `verifier`.
    pub fn read(verifier: &mut Verifier, message: &Stored) -> Input {
        let Stored {
            seq,
            subject,
            payload,
            key,
            signature,
            time,
        } = message;
        Input {
            seq: *seq,
            stored_minute: time.timestamp().div_euclid(60),
            signer: verifier.check(subject, payload, key.as_deref(), signature.as_deref()),
            event: read(subject, payload, *time)
                .map_err(|rejection| Refusal::dead_lettered(&rejection, subject, *seq, payload)),
        }
    }
}

/// A message the fold counts as refused instead of folding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    /// What goes to `TRUEBIT_DLQ`, recorded in the outbox by the commit that folds the refusal.
    /// The live fold has one; a replay only counts (it never publishes).
    pub dead_letter: Option<DeadLetter>,
}

impl Refusal {
    /// A refusal with its dead letter, for the live fold.
    pub fn dead_lettered(rejection: &Rejection, subject: &str, seq: u64, payload: &[u8]) -> Self {
        Refusal {
            reason: rejection.reason,
            dead_letter: Some(DeadLetter::new(rejection, subject, seq, payload)),
        }
    }
}

/// A refusal that is only counted, as a replay folds it.
impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Refusal {
            reason,
            dead_letter: None,
        }
    }
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Self {
        rejection.reason.into()
    }
}

/// A message as JetStream stored it, before it is read as the contract says.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub payload: bytes::Bytes,
    /// The `Truebit-Key` and `Truebit-Signature` headers, where present.
    pub key: Option<String>,
    pub signature: Option<String>,
    pub time: DateTime<Utc>,
}

impl Stored {
    /// The message, with the signature headers that `header` finds by name.
    pub fn new(
        seq: u64,
        subject: String,
        payload: bytes::Bytes,
        time: DateTime<Utc>,
        header: impl Fn(&str) -> Option<String>,
    ) -> Self {
        Stored {
            seq,
            subject,
            payload,
            key: header(HEADER_KEY),
            signature: header(HEADER_SIGNATURE),
            time,
        }
    }
}

/// Below this many messages a batch is read on one thread: splitting costs more than it saves.
const PARALLEL_FROM: usize = 64;

/// The inputs of a batch, read on as many threads as there are `verifiers` (each keeps its own
/// cache of keys). The Ed25519 check is by far the dearest part of a signed message and needs
/// nothing but the message, so it is what spreads over the cores; the order of the inputs is
/// the order of `stored`.
pub fn inputs(stored: &[Stored], verifiers: &mut [Verifier]) -> Vec<Input> {
    let read = |v: &mut Verifier, m: &Stored| Input::read(v, m);
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
