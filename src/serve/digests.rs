//! Digest points (contract §11): the leader publishes each one its database recorded on
//! `truebit.stats.digest`, and every instance compares each published point with its own, at
//! once if it has folded that far, else when it gets there. A difference is logged with the
//! tables that differ and counted in `truebit_digest_mismatches_total`; the fold goes on.

use super::leader::Leader;
use super::metrics::Metrics;
use crate::infra::follow::Following;
use crate::infra::shutdown::Shutdown;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::HeaderMap;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;
use truebit_projections::task::blocking;
use truebit_projections::{Projections, StateDigest};
use truebit_streams::names::{HEADER_MSG_ID, HISTORY_STREAM};
use truebit_streams::{subjects, DigestPoint};

/// Publishes the points the database recorded, on the leader only.
#[derive(Clone)]
pub(crate) struct PointPublisher {
    js: async_nats::jetstream::Context,
    db: Arc<Projections>,
    leader: Leader,
    /// The term of leadership and the last point known published in it: a new term reads the
    /// last one from `TRUEBIT_STATS` again.
    last: Arc<Mutex<(u64, Option<u64>)>>,
    /// One publish at a time: the loop calls after each commit, and a slow server must not stack
    /// them up.
    busy: Arc<tokio::sync::Mutex<()>>,
}

impl PointPublisher {
    pub fn new(js: async_nats::jetstream::Context, db: Arc<Projections>, leader: Leader) -> Self {
        PointPublisher {
            js,
            db,
            leader,
            last: Arc::default(),
            busy: Arc::default(),
        }
    }

    /// Publishes every point recorded after the last one published, if this instance leads.
    /// Failures are logged; the next commit tries again.
    pub async fn publish(&self) {
        if !self.leader.leading() {
            return;
        }
        let Ok(_one) = self.busy.try_lock() else {
            return;
        };
        let term = self.leader.term();
        let known = {
            let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            (last.0 == term).then_some(last.1).flatten()
        };
        let from = match known {
            Some(seq) => seq,
            None => match self.last_published().await {
                Ok(seq) => seq,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the last digest point published; trying again after the next commit");
                    return;
                }
            },
        };
        let db = self.db.clone();
        let points = match blocking(move || db.digest_points(from + 1)).await {
            Ok(points) => points,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the digest points");
                return;
            }
        };
        let mut last = from;
        for (seq, digest) in points {
            if !self.leader.leading() {
                break;
            }
            let mut headers = HeaderMap::new();
            // A leader that takes over republishes what its predecessor may have sent.
            headers.insert(HEADER_MSG_ID, format!("digest-{seq}").as_str());
            let body = digest.to_point(seq, false).to_json();
            let stored = match self
                .js
                .publish_with_headers(subjects::STATS_DIGEST, headers, body.into())
                .await
            {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = stored {
                tracing::warn!(error = %e, seq, "cannot publish a digest point; trying again after the next commit");
                break;
            }
            tracing::debug!(seq, digest = %digest, "published digest point");
            last = seq;
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = (term, Some(last));
    }

    /// The sequence of the last point on `truebit.stats.digest`; 0 when there is none.
    async fn last_published(&self) -> Result<u64, crate::Error> {
        let stream = self
            .js
            .get_stream_no_info(HISTORY_STREAM)
            .await
            .map_err(|e| crate::Error::nats("opening TRUEBIT_STATS", e))?;
        match stream
            .get_last_raw_message_by_subject(subjects::STATS_DIGEST)
            .await
        {
            Ok(m) => Ok(DigestPoint::parse(&m.payload).map_or(0, |p| p.seq)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(crate::Error::nats("reading TRUEBIT_STATS", e)),
        }
    }
}

/// Follows the published points from the start of `TRUEBIT_STATS` and compares each with this
/// instance's own, as soon as the fold has reached it, until `stop`.
pub(crate) async fn compare(
    stream: Stream,
    db: Arc<Projections>,
    mut applied: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    mut stop: Shutdown,
) {
    let mut points = Following::new(stream, "TRUEBIT_STATS", 1).only(subjects::STATS_DIGEST);
    // Published points this instance has not folded up to yet.
    let mut waiting: BTreeMap<u64, DigestPoint> = BTreeMap::new();
    loop {
        tokio::select! {
            followed = points.next(&mut stop) => {
                let Some(followed) = followed else { return };
                match DigestPoint::parse(&followed.message.payload) {
                    Some(point) => { waiting.insert(point.seq, point); }
                    None => tracing::warn!(seq = followed.seq, "a message on truebit.stats.digest that is not a digest point; skipped"),
                }
            }
            changed = applied.changed() => if changed.is_err() { return },
        }
        let reached = *applied.borrow();
        let due: Vec<u64> = waiting.range(..=reached).map(|(s, _)| *s).collect();
        for seq in due {
            let point = waiting.remove(&seq).expect("listed above");
            let db = db.clone();
            let mine = match blocking(move || db.digest_point(seq)).await {
                Ok(mine) => mine,
                Err(e) => {
                    tracing::error!(error = %e, seq, "cannot read this instance's digest point");
                    continue;
                }
            };
            check(&point, mine.as_ref(), &metrics);
        }
    }
}

/// Compares a published point with this instance's own at the same sequence.
fn check(published: &DigestPoint, mine: Option<&StateDigest>, metrics: &Metrics) {
    let seq = published.seq;
    let Some(mine) = mine else {
        // A database upgraded, or rebuilt from a checkpoint, after that point: nothing to compare.
        tracing::debug!(
            seq,
            "no digest point of this instance's own at a published one; not compared"
        );
        return;
    };
    if mine.text() == published.digest {
        tracing::debug!(seq, digest = %published.digest, "digest point agrees with the published one");
        return;
    }
    let tables = match StateDigest::from_point(published) {
        Some(theirs) => mine.differing(&theirs).join(", "),
        None => "unknown (the published point does not list its tables' checksums)".to_string(),
    };
    metrics.digest_mismatches.inc();
    tracing::error!(
        seq,
        mine = %mine.text(),
        published = %published.digest,
        tables = %tables,
        "this instance's state differs from the published digest point: the tables named differ; the fold goes on, but check this database with `truebit-federation replay --verify`"
    );
}
