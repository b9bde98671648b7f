//! Rebuilding every projection from `TRUEBIT_EVENTS`: the streams are the record.
//!
//! [`rebuild`] reads the stream from its first message with an ordered consumer and folds each
//! message with the very functions `serve` uses ([`truebit_streams::validate`] and
//! [`truebit_projections::Projections::apply`]), judging each one against the time JetStream
//! stored it, so that a rebuild decides exactly as the live fold did. It writes a new database
//! and never touches an existing one; swapping it in is the caller's decision.
//!
//! ```no_run
//! # async fn example() -> Result<(), truebit_replay::Error> {
//! let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
//! let js = async_nats::jetstream::new(client);
//! let rebuilt = truebit_replay::rebuild(&js, "rebuilt.redb".as_ref(), None, |seq, target| {
//!     eprintln!("{seq}/{target}");
//! })
//! .await?;
//! println!("folded {} messages up to sequence {}", rebuilt.folded, rebuilt.last_seq);
//! # Ok(())
//! # }
//! ```

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use truebit_projections::{Input, Projections};
use truebit_streams::topology::EVENTS_STREAM;

/// Messages folded per database transaction during a rebuild.
const BATCH: usize = 5000;

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rebuilt {
    /// The stream's first sequence when the rebuild started: above 1, older events are gone.
    pub first_seq: u64,
    /// The last sequence folded.
    pub last_seq: u64,
    /// Messages folded (events and refusals).
    pub folded: u64,
    pub seconds: f64,
}

impl Rebuilt {
    /// Events folded per second.
    pub fn rate(&self) -> f64 {
        self.folded as f64 / self.seconds.max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} already exists; a rebuild writes a new database: remove it or choose another --output")]
    OutputExists { path: PathBuf },
    #[error("{what} failed on NATS: {detail}; check that the server runs with JetStream and holds stream {EVENTS_STREAM}")]
    Nats { what: &'static str, detail: String },
    #[error(transparent)]
    Projections(#[from] truebit_projections::Error),
}

fn nats(what: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Nats {
        what,
        detail: e.to_string(),
    }
}

/// Rebuilds into a new database at `output`, from the stream's first message up to `to_seq`
/// (default: the stream's last sequence when the rebuild starts). `progress` is called after
/// every batch with the last folded sequence and the target.
pub async fn rebuild(
    js: &jetstream::Context,
    output: &Path,
    to_seq: Option<u64>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Rebuilt, Error> {
    if output.exists() {
        return Err(Error::OutputExists {
            path: output.to_path_buf(),
        });
    }
    let started = Instant::now();
    let mut stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| nats("opening the stream", e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| nats("reading the stream", e))?
        .clone();
    let state = info.state.clone();
    let target = to_seq.map_or(state.last_sequence, |t| t.min(state.last_sequence));
    let path = output.to_path_buf();
    let identity = truebit_streams::topology::stream_identity(&info);
    let db = Arc::new(
        blocking(move || {
            let db = Projections::open(path)?;
            db.set_stream_identity(&identity)?;
            Ok(db)
        })
        .await?,
    );
    let mut rebuilt = Rebuilt {
        first_seq: state.first_sequence,
        last_seq: 0,
        folded: 0,
        seconds: 0.0,
    };
    if target == 0 || state.messages == 0 {
        rebuilt.seconds = started.elapsed().as_secs_f64();
        return Ok(rebuilt);
    }

    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| nats("creating an ordered consumer", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| nats("reading the stream", e))?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut last = 0;
    while last < target {
        let msg = match messages.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(nats("reading the stream", e)),
            None => {
                return Err(nats(
                    "reading the stream",
                    "the ordered consumer ended early",
                ))
            }
        };
        let info = msg
            .info()
            .map_err(|e| nats("reading message metadata", e))?;
        last = info.stream_sequence;
        if last > target {
            break;
        }
        let event = truebit_streams::validate(&msg.subject, &msg.payload, info.published)
            .map_err(|r| r.reason);
        batch.push(Input { seq: last, event });
        if batch.len() == BATCH || last >= target {
            let inputs = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            let db = db.clone();
            let applied = blocking(move || db.apply(&inputs)).await?;
            rebuilt.folded += applied.folded;
            rebuilt.last_seq = applied.last_seq;
            progress(applied.last_seq, target);
        }
    }
    if !batch.is_empty() {
        let db = db.clone();
        let applied = blocking(move || db.apply(&batch)).await?;
        rebuilt.folded += applied.folded;
        rebuilt.last_seq = applied.last_seq;
        progress(applied.last_seq, target);
    }
    rebuilt.seconds = started.elapsed().as_secs_f64();
    Ok(rebuilt)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, truebit_projections::Error> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Error::from),
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}
