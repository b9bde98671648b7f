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
//! let options = truebit_replay::Options::default(); // from the stream, to its end
//! let rebuilt = truebit_replay::rebuild(&js, "rebuilt.redb".as_ref(), options, |seq, target| {
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
use truebit_projections::{Applied, Outbox, Projections};
use truebit_streams::names::{checkpoint_name, checkpoint_seq, CHECKPOINT_BUCKET, EVENTS_STREAM};
use truebit_streams::PublicKey;

use truebit_projections::task::{blocking, joined};
use truebit_projections::{inputs, Checks, Stored};

/// Messages folded per database transaction during a rebuild: large, because a commit's cost
/// grows with the pages it touches far more slowly than with the events it holds.
const BATCH: usize = 20_000;

/// How a rebuild starts and ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Stop at this sequence (default: the stream's last when the rebuild starts).
    pub to_seq: Option<u64>,
    /// Start from the newest checkpoint that covers the stream's beginning even when the stream
    /// is whole. Without it, a checkpoint is used only when the stream no longer starts at 1.
    pub prefer_checkpoint: bool,
    /// Rebuild without the events that neither the stream nor a checkpoint holds any more.
    pub allow_gap: bool,
    /// The root key (`ADMIN_KEY`) to fold the key registry with: the live fold's, or the
    /// rebuild decides otherwise than it did.
    pub admin_key: Option<PublicKey>,
    /// The network's `digest-every` (contract §11): the rebuild ends a commit at each multiple
    /// and records the digest there, as the live fold does; 0 records none.
    pub digest_every: u64,
    /// The output already holds the state at this sequence (a checkpoint the caller fetched
    /// and checked, see [`download_checkpoint`]): fold on from there, and choose no checkpoint.
    pub base: Option<u64>,
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rebuilt {
    /// The stream's first sequence when the rebuild started: above 1, older events are gone.
    pub first_seq: u64,
    /// The last sequence folded.
    pub last_seq: u64,
    /// Messages folded (events and refusals), not counting those a checkpoint brought.
    pub folded: u64,
    /// The checkpoint the rebuild started from, by sequence.
    pub checkpoint: Option<u64>,
    pub seconds: f64,
}

impl Rebuilt {
    /// Counts a committed batch and reports the progress.
    fn record(&mut self, applied: Applied, target: u64, progress: &mut impl FnMut(u64, u64)) {
        self.folded += applied.folded;
        self.last_seq = applied.last_seq;
        progress(applied.last_seq, target);
    }

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
    #[error("sequences {from}..={to} are no longer in {EVENTS_STREAM} (expired or deleted) and no checkpoint covers them, so a rebuild would miss what they counted; restore them, or pass --allow-gap to rebuild without them")]
    Gap { from: u64, to: u64 },
    #[error("{what} {path} failed: {source}; check that folder's permissions and free space")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Projections(#[from] truebit_projections::Error),
}

/// The sequences of the checkpoints in `store`, oldest first.
pub async fn checkpoints(store: &jetstream::object_store::ObjectStore) -> Result<Vec<u64>, Error> {
    let mut objects = store
        .list()
        .await
        .map_err(|e| nats("listing checkpoints", e))?;
    let mut seqs = Vec::new();
    while let Some(info) = objects.next().await {
        let info = info.map_err(|e| nats("listing checkpoints", e))?;
        if !info.deleted {
            seqs.extend(checkpoint_seq(&info.name));
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn nats(what: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Nats {
        what,
        detail: e.to_string(),
    }
}

/// Rebuilds into a new database at `output` up to `options.to_seq`, from the stream's first
/// message or from a checkpoint (see [`Options`]). `progress` is called after every batch with
/// the last folded sequence and the target.
pub async fn rebuild(
    js: &jetstream::Context,
    output: &Path,
    options: Options,
    mut progress: impl FnMut(u64, u64),
) -> Result<Rebuilt, Error> {
    if output.exists() && options.base.is_none() {
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
    let target = options
        .to_seq
        .map_or(state.last_sequence, |t| t.min(state.last_sequence));
    // The first sequence the stream can still deliver (past its end when it is empty).
    let first = if state.messages == 0 {
        state.last_sequence + 1
    } else {
        state.first_sequence
    };
    let identity = truebit_streams::names::stream_identity(&info.config.name, info.created);

    let base = if options.base.is_some() {
        options.base
    } else if options.prefer_checkpoint || first > 1 {
        choose_checkpoint(js, output, first, target, &identity).await?
    } else {
        None
    };
    if base.is_none() && first > 1 && !options.allow_gap && target >= 1 {
        return Err(Error::Gap {
            from: 1,
            to: (first - 1).min(target),
        });
    }
    let path = output.to_path_buf();
    let admin_key = options.admin_key.clone();
    let every = options.digest_every;
    let db = Arc::new(
        blocking(move || {
            let db = Projections::open(path)?;
            db.set_stream_identity(&identity)?;
            db.bind_admin_key(admin_key.as_ref())?;
            db.set_digest_every(every);
            Ok(db)
        })
        .await?,
    );
    let start = base.map_or(first, |seq| seq + 1);
    let mut rebuilt = Rebuilt {
        first_seq: state.first_sequence,
        last_seq: base.unwrap_or(0),
        folded: 0,
        checkpoint: base,
        seconds: 0.0,
    };
    if target < start {
        rebuilt.seconds = started.elapsed().as_secs_f64();
        return Ok(rebuilt);
    }

    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: if start <= 1 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                }
            },
            ..Default::default()
        })
        .await
        .map_err(|e| nats("creating an ordered consumer", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| nats("reading the stream", e))?;
    // Reading and validating the next batch overlaps with committing the previous one: a
    // rebuild costs the slower of the two stages, not their sum.
    let mut batch: Vec<Stored> = Vec::with_capacity(BATCH);
    // The guess for a batch comes from the commit before the one in flight while it is read:
    // a batch read just after a change of mode may check more or fewer signatures ahead than
    // it needs, which costs time, never a different result (see `Checks`).
    let mut checks = Checks::after(db.admission_mode()?);
    let mut committing: Option<tokio::task::JoinHandle<Result<Applied, _>>> = None;
    let mut done = false;
    while !done {
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
        // The target itself may have been deleted: the first message past it ends the rebuild.
        done = info.stream_sequence >= target;
        if info.stream_sequence <= target {
            let headers = msg.headers.as_ref();
            batch.push(Stored::new(
                info.stream_sequence,
                msg.subject.to_string(),
                msg.payload.clone(),
                info.published,
                |name| Some(headers?.get(name)?.as_str().to_string()),
            ));
        }
        if batch.len() == BATCH || (done && !batch.is_empty()) {
            let stored = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            // Read while the previous batch commits, as serve's receiver reads ahead.
            let reading = tokio::task::spawn_blocking(move || inputs(stored, checks));
            if let Some(previous) = committing.take() {
                let applied = joined(previous).await?;
                checks = Checks::after(applied.mode);
                rebuilt.record(applied, target, &mut progress);
            }
            let read = joined(reading).await;
            let db = db.clone();
            // A replay counts refusals; it never publishes their dead letters.
            committing = Some(tokio::task::spawn_blocking(move || {
                db.apply(&read, Outbox::Skip)
            }));
        }
    }
    if let Some(last) = committing {
        rebuilt.record(joined(last).await?, target, &mut progress);
    }
    rebuilt.seconds = started.elapsed().as_secs_f64();
    Ok(rebuilt)
}

/// Downloads into `output` the newest checkpoint at or below `target` that leaves no gap before
/// `first` and was taken from this very stream; `None` when there is none.
async fn choose_checkpoint(
    js: &jetstream::Context,
    output: &Path,
    first: u64,
    target: u64,
    identity: &str,
) -> Result<Option<u64>, Error> {
    let Ok(store) = js.get_object_store(CHECKPOINT_BUCKET).await else {
        return Ok(None);
    };
    for seq in checkpoints(&store).await?.into_iter().rev() {
        if seq > target {
            continue;
        }
        if seq + 1 < first {
            break; // older ones leave a bigger gap
        }
        if download_checkpoint(&store, seq, output, identity).await? {
            tracing::info!(seq, "starting from checkpoint");
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

/// Downloads the checkpoint at `seq` into `output` and says whether it holds what its name
/// says, of this stream (`identity`); one that does not is removed.
pub async fn download_checkpoint(
    store: &jetstream::object_store::ObjectStore,
    seq: u64,
    output: &Path,
    identity: &str,
) -> Result<bool, Error> {
    let mut object = store
        .get(checkpoint_name(seq))
        .await
        .map_err(|e| nats("reading a checkpoint", e))?;
    let mut file = tokio::fs::File::create(output)
        .await
        .map_err(|source| Error::Io {
            what: "creating the file for a checkpoint",
            path: output.to_path_buf(),
            source,
        })?;
    // The copy fails on either side: the object store's reader or the local file.
    tokio::io::copy(&mut object, &mut file)
        .await
        .map_err(|source| Error::Io {
            what: "downloading a checkpoint into",
            path: output.to_path_buf(),
            source,
        })?;
    drop(file);
    let path = output.to_path_buf();
    let (held, belongs) = blocking(move || {
        let db = Projections::open_existing(path)?;
        Ok((db.last_seq()?, db.stream_identity()?))
    })
    .await?;
    if held == seq && belongs.as_deref() == Some(identity) {
        return Ok(true);
    }
    tracing::warn!(
        seq,
        held,
        ?belongs,
        "checkpoint does not match its name or this stream; skipped"
    );
    let _ = std::fs::remove_file(output);
    Ok(false)
}
