//! What the fold is handed: an [`Input`] per stored message, made the same way for the live fold
//! and for a rebuild: read ([`truebit_streams::read`]) against the time JetStream stored it, its
//! signature checked (ahead, or when the fold asks: [`Checks`]), and a refusal's dead letter
//! built. That both make their inputs here is what
//! lets a replay decide exactly as the live fold did.

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use std::cell::{OnceCell, RefCell};
use truebit_streams::names::{HEADER_KEY, HEADER_SIGNATURE};
use truebit_streams::{
    read, subjects, DeadLetter, Message, Minute, Mode, Reason, Rejection, Signer, Verifier,
};

/// One message of the stream, ready to fold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Its sequence in `TRUEBIT_EVENTS`.
    pub seq: u64,
    /// The minute JetStream stored it: the clock of rate limits (contract §7).
    pub stored_minute: Minute,
    /// What its signature headers show: checked ahead of the fold, or when the fold first asks
    /// ([`Input::signer`]).
    signature: Signature,
    /// The message as read, or why it was refused (refusals are counted, not folded).
    pub event: Result<Message, Refusal>,
}

/// A signature checked, or the headers and bytes to check it by when it is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Signature {
    Checked(Signer),
    Deferred(Box<Deferred>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Deferred {
    subject: String,
    payload: bytes::Bytes,
    key: Option<String>,
    signature: Option<String>,
    checked: OnceCell<Signer>,
}

impl Input {
    /// A message whose signature was checked as `signer`.
    pub fn new(
        seq: u64,
        stored_minute: Minute,
        signer: Signer,
        event: Result<Message, Refusal>,
    ) -> Self {
        Input {
            seq,
            stored_minute,
            signature: Signature::Checked(signer),
            event,
        }
    }

    /// An unsigned message, as today's monitors send them, stored in minute 0: for a fold that
    /// stays `open`.
    pub fn unsigned(seq: u64, event: Result<Message, Refusal>) -> Self {
        Input::new(seq, 0, Signer::Unsigned, event)
    }

    /// The input for `message`, its signature checked as `signed` says (see [`Checks`]).
    fn read(message: Stored, signed: Signed) -> Input {
        let Stored {
            seq,
            subject,
            payload,
            key,
            signature,
            time,
        } = message;
        let event = read(&subject, &payload, time)
            .map_err(|rejection| Refusal::dead_lettered(&rejection, &subject, seq, &payload));
        let signature = match signed {
            Signed::Checked(signer) => Signature::Checked(signer),
            Signed::Deferred => Signature::Deferred(Box::new(Deferred {
                subject,
                payload,
                key,
                signature,
                checked: OnceCell::new(),
            })),
        };
        Input {
            seq,
            stored_minute: time.timestamp().div_euclid(60),
            signature,
            event,
        }
    }

    /// What the signature headers show, checked with `verifier` now if it was not before.
    pub fn signer(&self, verifier: &mut Verifier) -> &Signer {
        match &self.signature {
            Signature::Checked(signer) => signer,
            Signature::Deferred(d) => d.checked.get_or_init(|| {
                verifier.check(
                    &d.subject,
                    &d.payload,
                    d.key.as_deref(),
                    d.signature.as_deref(),
                )
            }),
        }
    }
}

/// How a message's signature is to be checked while its batch is read.
enum Signed {
    Checked(Signer),
    Deferred,
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

/// Whether the node messages of a batch have their signatures checked ahead of the fold.
///
/// Only `audit` and `enforce` ask who signed a node message (contract §7: in `open` nothing is
/// checked), and the mode is only known in stream order, as the fold reaches each message. So
/// the reader guesses from the mode the last commit left, and a guess is only ever a cost,
/// never a different result: a signature not checked ahead is checked by the fold when it
/// asks ([`Input::signer`]), one at a time. Operator events are always checked ahead: every
/// mode asks who signed them, and they are few.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checks {
    /// In batches, on every core, before the fold: for `audit` and `enforce`.
    Ahead,
    /// When the fold asks: for `open`, where it never does.
    WhenAsked,
}

impl Checks {
    /// The guess for the next batch after a commit that left the network in `mode`.
    pub fn after(mode: Mode) -> Checks {
        match mode {
            Mode::Open => Checks::WhenAsked,
            Mode::Audit | Mode::Enforce => Checks::Ahead,
        }
    }
}

/// The fewest messages read on one thread: below it, the batch equation of Ed25519 gains little
/// and handing work to another thread costs more than it saves.
const MIN_CHUNK: usize = 128;

thread_local! {
    /// Each reading thread keeps its decoded keys for as long as it lives.
    static VERIFIER: RefCell<Verifier> = RefCell::new(Verifier::new());
}

/// The inputs of a batch, in the order of `stored`, read in chunks on a pool of threads that
/// live as long as the process (rayon's): JSON reading and the Ed25519 checks are the dear part
/// of a message and need nothing but the message. Threads that live on keep their decoded keys
/// and their allocator arenas, where threads started for each batch paid for both again.
pub fn inputs(stored: Vec<Stored>, checks: Checks) -> Vec<Input> {
    // One chunk per thread: the batch equation's gain grows with the batch (1.8× at 128
    // messages, 2.6× at 2,048: `cargo bench --bench signatures`).
    let chunk = stored
        .len()
        .div_ceil(rayon::current_num_threads())
        .max(MIN_CHUNK);
    if stored.len() <= chunk {
        return read_chunk(stored, checks);
    }
    let mut messages = stored.into_iter();
    let chunks: Vec<Vec<Stored>> = std::iter::from_fn(|| {
        let part: Vec<Stored> = messages.by_ref().take(chunk).collect();
        (!part.is_empty()).then_some(part)
    })
    .collect();
    chunks
        .into_par_iter()
        .flat_map_iter(|chunk| read_chunk(chunk, checks))
        .collect()
}

fn read_chunk(stored: Vec<Stored>, checks: Checks) -> Vec<Input> {
    // A message without signature headers is decided as unsigned at no cost: deferring it would
    // only keep its bytes alive until the commit.
    let checked_ahead = |m: &Stored| {
        checks == Checks::Ahead
            || m.subject.starts_with(subjects::ADMIN_PREFIX)
            || (m.key.is_none() && m.signature.is_none())
    };
    let messages: Vec<_> = stored
        .iter()
        .filter(|m| checked_ahead(m))
        .map(|m| {
            (
                m.subject.as_str(),
                &m.payload[..],
                m.key.as_deref(),
                m.signature.as_deref(),
            )
        })
        .collect();
    let mut signers = VERIFIER
        .with(|v| v.borrow_mut().check_all(&messages))
        .into_iter();
    drop(messages);
    stored
        .into_iter()
        .map(|m| {
            let signed = if checked_ahead(&m) {
                Signed::Checked(signers.next().expect("one signer per message checked"))
            } else {
                Signed::Deferred
            };
            Input::read(m, signed)
        })
        .collect()
}
