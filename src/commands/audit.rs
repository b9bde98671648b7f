//! `audit` (contract §11): anyone who can read the streams checks a published number. It
//! rebuilds the projections up to a published record's sequence in a temporary file, from the
//! newest checkpoint whose own digest checks, else from the start; computes the state digest by
//! reading every record; compares it, and the digest points on the way, with what the network
//! published; and recomputes the record's headline figures at its time.

use crate::{Error, NatsConfig};
use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use futures::StreamExt;
use std::collections::BTreeMap;
use truebit_projections::task::blocking;
use truebit_projections::{Projections, StateDigest};
use truebit_streams::names::{
    CHECKPOINT_BUCKET, EVENTS_STREAM, HEADER_STATE_DIGEST, HISTORY_STREAM,
};
use truebit_streams::{subjects, DigestPoint, HistoryRecord, Minute, Period, PublicKey};

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub nats: NatsConfig,
    /// Audit the state at this sequence (the history record of it, else its digest point).
    pub seq: Option<u64>,
    /// Audit the newest history record at or before this minute.
    pub at: Option<Minute>,
    /// The network's root key, as `replay` needs it.
    pub admin_key: Option<PublicKey>,
}

/// What is audited: a sequence, the digest published for it, and the history record, if any.
struct Target {
    seq: u64,
    digest: String,
    record: Option<HistoryRecord>,
    /// Where it was read, for the report.
    source: String,
}

pub async fn audit(config: &AuditConfig) -> Result<String, Error> {
    let client = config.nats.connect("truebit-federation audit").await?;
    let js = jetstream::new(client);
    let every = crate::infra::topology::digest_every(&js, None, false).await?;
    let history = js
        .get_stream(HISTORY_STREAM)
        .await
        .map_err(|e| Error::nats("opening TRUEBIT_STATS", e))?;
    let points = published_points(&history).await?;
    let target = target(&history, &points, config).await?;
    let mut report = vec![format!(
        "auditing sequence {} ({}); published digest {}",
        target.seq, target.source, target.digest
    )];

    let temp = std::env::temp_dir().join(format!(
        "truebit-audit-{}-{}.redb",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    let outcome = check(&js, &points, &target, every, config, &temp, &mut report).await;
    let _ = std::fs::remove_file(&temp);
    match outcome? {
        None => {
            report.push("audit passed: every number checked equals what the stream says".into());
            Ok(report.join("\n") + "\n")
        }
        Some(difference) => Err(Error::CheckFailed(format!(
            "{}\naudit FAILED: {difference}",
            report.join("\n")
        ))),
    }
}

/// Rebuilds to the target and compares; `Some(the first difference)` when one is found.
async fn check(
    js: &jetstream::Context,
    points: &BTreeMap<u64, DigestPoint>,
    target: &Target,
    every: u64,
    config: &AuditConfig,
    temp: &std::path::Path,
    report: &mut Vec<String>,
) -> Result<Option<String>, Error> {
    let base = checkpoint(js, points, target.seq, temp, report).await?;
    let options = truebit_replay::Options {
        to_seq: Some(target.seq),
        prefer_checkpoint: false,
        allow_gap: false,
        admin_key: config.admin_key.clone(),
        digest_every: every,
        base,
    };
    let rebuilt = super::replay::run_as("audit", js, temp, options).await?;
    if rebuilt.last_seq < target.seq {
        return Ok(Some(format!(
            "the stream ends at sequence {}, before the audited {}: it was recreated or purged",
            rebuilt.last_seq, target.seq
        )));
    }
    report.push(format!(
        "rebuilt {} messages {} up to sequence {}",
        rebuilt.folded,
        match base {
            Some(seq) => format!("from the checkpoint at sequence {seq}"),
            None => "from the start of the stream".into(),
        },
        target.seq
    ));
    let path = temp.to_path_buf();
    let record_minute = target.record.as_ref().and_then(|r| r.minute());
    let (scanned, own_points, snapshot) = blocking(move || {
        let db = Projections::open_existing(path)?;
        let snapshot = record_minute
            .map(|at| db.snapshot(at, Period::All))
            .transpose()?;
        Ok((db.scan_digest()?, db.digest_points(0)?, snapshot))
    })
    .await?;

    // The points on the way, oldest first: the first that differs is where the record and the
    // published numbers part.
    let mut compared = 0;
    for (seq, mine) in own_points
        .iter()
        .filter(|(s, _)| base.is_none_or(|b| *s > b) && *s <= target.seq)
    {
        let Some(published) = points.get(seq) else {
            continue;
        };
        compared += 1;
        if mine.text() != published.digest {
            return Ok(Some(difference(*seq, mine, published, "digest point")));
        }
    }
    report.push(format!(
        "{compared} digest points on the way (every {every} sequences) equal the published ones"
    ));
    if scanned.text() != target.digest {
        let tables = points
            .get(&target.seq)
            .and_then(StateDigest::from_point)
            .map(|p| format!("; tables that differ: {}", scanned.differing(&p).join(", ")))
            .unwrap_or_default();
        return Ok(Some(format!(
            "the state digest at sequence {}, computed by reading every rebuilt record, is {}, but {} published {}{tables}",
            target.seq, scanned, target.source, target.digest
        )));
    }
    report.push(format!(
        "state digest at sequence {} computed from every record: {} (equal)",
        target.seq, scanned
    ));
    if let (Some(record), Some(snapshot)) = (&target.record, snapshot) {
        let recomputed = HistoryRecord::of(&snapshot, target.seq);
        let fields = [
            ("activeNodes", record.active_nodes, recomputed.active_nodes),
            ("totalNodes", record.total_nodes, recomputed.total_nodes),
            ("tasks", record.tasks, recomputed.tasks),
            ("completed", record.completed, recomputed.completed),
            ("failed", record.failed, recomputed.failed),
            ("cached", record.cached, recomputed.cached),
            ("invoices", record.invoices, recomputed.invoices),
        ];
        for (name, published, recomputed) in fields {
            if published != recomputed {
                return Ok(Some(format!(
                    "the history record at {} (sequence {}) says {name} = {published}, but the stream gives {recomputed}",
                    record.t, target.seq
                )));
            }
        }
        report.push(format!(
            "headline figures at {} recomputed: activeNodes {}, totalNodes {}, tasks {}, completed {}, failed {}, cached {}, invoices {} (equal)",
            record.t,
            recomputed.active_nodes,
            recomputed.total_nodes,
            recomputed.tasks,
            recomputed.completed,
            recomputed.failed,
            recomputed.cached,
            recomputed.invoices
        ));
    }
    Ok(None)
}

fn difference(seq: u64, mine: &StateDigest, published: &DigestPoint, what: &str) -> String {
    let tables = StateDigest::from_point(published)
        .map(|p| mine.differing(&p).join(", "))
        .unwrap_or_else(|| "unknown".into());
    format!(
        "the {what} at sequence {seq} of the rebuild is {mine}, but the network published {}; tables that differ: {tables}",
        published.digest
    )
}

/// Downloads into `temp` the newest checkpoint at or before `seq` whose state, read record by
/// record, gives the digest the network published for its sequence; `None` (start from the
/// stream's beginning) when none does.
async fn checkpoint(
    js: &jetstream::Context,
    points: &BTreeMap<u64, DigestPoint>,
    seq: u64,
    temp: &std::path::Path,
    report: &mut Vec<String>,
) -> Result<Option<u64>, Error> {
    let Ok(store) = js.get_object_store(CHECKPOINT_BUCKET).await else {
        return Ok(None);
    };
    let mut events = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| Error::nats("opening TRUEBIT_EVENTS", e))?;
    let info = events
        .info()
        .await
        .map_err(|e| Error::nats("reading TRUEBIT_EVENTS", e))?;
    let identity = truebit_streams::names::stream_identity(&info.config.name, info.created);
    for at in truebit_replay::checkpoints(&store).await?.into_iter().rev() {
        if at > seq {
            continue;
        }
        let _ = std::fs::remove_file(temp);
        if !truebit_replay::download_checkpoint(&store, at, temp, &identity).await? {
            report.push(format!(
                "checkpoint at sequence {at}: not of this stream or not what its name says; skipped"
            ));
            continue;
        }
        let path = temp.to_path_buf();
        let scanned = blocking(move || Projections::open_existing(path)?.scan_digest()).await?;
        match points.get(&at) {
            Some(published) if published.digest == scanned.text() => {
                report.push(format!(
                    "checkpoint at sequence {at}: its records give {scanned}, the digest point published there (equal); starting from it"
                ));
                return Ok(Some(at));
            }
            Some(published) => report.push(format!(
                "checkpoint at sequence {at}: its records give {scanned}, but the network published {} there; skipped",
                published.digest
            )),
            None => report.push(format!(
                "checkpoint at sequence {at}: no digest point was published there to check it against; skipped"
            )),
        }
    }
    let _ = std::fs::remove_file(temp);
    Ok(None)
}

/// Every digest point on `truebit.stats.digest`, by sequence (the last published for each).
async fn published_points(
    history: &jetstream::stream::Stream,
) -> Result<BTreeMap<u64, DigestPoint>, Error> {
    let mut points = BTreeMap::new();
    for_each(history, subjects::STATS_DIGEST, |message| {
        if let Some(point) = DigestPoint::parse(&message.payload) {
            points.insert(point.seq, point);
        }
        true
    })
    .await?;
    Ok(points)
}

/// Calls `each` with every message on `subject` of `stream`, oldest first, until it returns
/// false or the messages stored when the read began are read.
async fn for_each(
    stream: &jetstream::stream::Stream,
    subject: &str,
    mut each: impl FnMut(&jetstream::Message) -> bool,
) -> Result<(), Error> {
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats("reading TRUEBIT_STATS", e))?;
    let info = consumer.cached_info().num_pending;
    if info == 0 {
        return Ok(());
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| Error::nats("reading TRUEBIT_STATS", e))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| Error::nats("reading TRUEBIT_STATS", e))?;
        let pending = message.info().map(|i| i.pending).unwrap_or(0);
        if !each(&message) || pending == 0 {
            break;
        }
    }
    Ok(())
}

/// The record to audit: the newest history record by default, the one at `--seq` or the
/// newest at or before `--at`.
async fn target(
    history: &jetstream::stream::Stream,
    points: &BTreeMap<u64, DigestPoint>,
    config: &AuditConfig,
) -> Result<Target, Error> {
    let digest_of = |m: &jetstream::Message| -> Option<String> {
        Some(
            m.headers
                .as_ref()?
                .get(HEADER_STATE_DIGEST)?
                .as_str()
                .to_string(),
        )
    };
    if config.seq.is_none() && config.at.is_none() {
        return match history
            .get_last_raw_message_by_subject(subjects::STATS_HISTORY)
            .await
        {
            Ok(m) => {
                let record = HistoryRecord::parse(&m.payload).ok_or_else(|| {
                    Error::CheckFailed(format!(
                        "the newest message on {} (TRUEBIT_STATS sequence {}) is not a history record",
                        subjects::STATS_HISTORY,
                        m.sequence
                    ))
                })?;
                let digest = m
                    .headers
                    .get(HEADER_STATE_DIGEST)
                    .map(|v| v.as_str().to_string())
                    .ok_or_else(|| no_digest(record.seq))?;
                Ok(Target {
                    seq: record.seq,
                    digest,
                    source: format!("the newest history record, of {}", record.t),
                    record: Some(record),
                })
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Err(Error::Usage(
                "TRUEBIT_STATS holds no history record yet: nothing was published to audit; audit a digest point with --seq N".into(),
            )),
            Err(e) => Err(Error::nats("reading TRUEBIT_STATS", e)),
        };
    }
    let mut found: Option<(HistoryRecord, Option<String>)> = None;
    for_each(history, subjects::STATS_HISTORY, |m| {
        let Some(record) = HistoryRecord::parse(&m.payload) else {
            return true;
        };
        let fits = match (config.seq, config.at) {
            (Some(seq), _) => record.seq == seq,
            (None, Some(at)) => record.minute().is_some_and(|m| m <= at),
            (None, None) => unreachable!("handled above"),
        };
        if fits {
            found = Some((record, digest_of(m)));
        }
        true
    })
    .await?;
    match found {
        Some((record, Some(digest))) => Ok(Target {
            seq: record.seq,
            digest,
            source: format!("the history record of {}", record.t),
            record: Some(record),
        }),
        Some((record, None)) => Err(no_digest(record.seq)),
        None => match config.seq.and_then(|s| points.get(&s)) {
            Some(point) => Ok(Target {
                seq: point.seq,
                digest: point.digest.clone(),
                record: None,
                source: "the digest point published there".into(),
            }),
            None => Err(Error::Usage(match config.seq {
                Some(seq) => format!(
                    "nothing was published at sequence {seq}: no history record has that sequence and it is no digest point; digest points published: {}",
                    summary(points)
                ),
                None => "no history record at or before --at; give a later time".to_string(),
            })),
        },
    }
}

fn no_digest(seq: u64) -> Error {
    Error::CheckFailed(format!(
        "the history record of sequence {seq} carries no {HEADER_STATE_DIGEST} header: it was published by a build from before contract §11, so there is no digest to check; audit a newer one"
    ))
}

fn summary(points: &BTreeMap<u64, DigestPoint>) -> String {
    match (points.keys().next(), points.keys().next_back()) {
        (Some(first), Some(last)) => format!("{} from {first} to {last}", points.len()),
        _ => "none".into(),
    }
}
