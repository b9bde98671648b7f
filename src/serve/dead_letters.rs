//! Publishing the dead-letter outbox (contract §4): the fold records each dead letter in the same
//! commit as the message's position; the leader sends them to `TRUEBIT_DLQ`, oldest first, with
//! `Nats-Msg-Id: dlq-<seq>`, and drops each from the outbox once JetStream has stored it. A crash
//! between the two sends it again, and JetStream's duplicate window stores it once.
//!
//! Every instance folds the same refusals into its own outbox, and every instance reads
//! `TRUEBIT_DLQ` ([`follow`]) to drop what is already there (contract §9). A new leader reads
//! it to its end before it sends anything, so each rejected message keeps exactly one dead letter
//! across any number of failovers, also past the duplicate window.

use super::leader::Leader;
use super::metrics::Metrics;
use super::metrics::ReasonLabel;
use crate::infra::backoff::Backoff;
use crate::infra::follow::Following;
use crate::infra::shutdown::Shutdown;
use crate::Error;
use async_nats::jetstream;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use truebit_projections::task::blocking;
use truebit_projections::Projections;
use truebit_streams::names::{DLQ_STREAM, HEADER_ORIGINAL_SEQ, HEADER_ORIGINAL_STREAM};
use truebit_streams::{DeadLetter, Minute};

/// Dead letters sent before their acks are awaited and the outbox is trimmed.
const CHUNK: usize = 256;
/// How long a stopping `serve` tries to empty the outbox.
const LAST_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Publishes the outbox at start and whenever a commit may have added to it, until the
/// committer ends (it owns `applied`'s sender); then once more, so that a clean stop leaves
/// nothing behind that it could have sent.
pub(crate) async fn send_outbox(
    js: jetstream::Context,
    db: Arc<Projections>,
    mut applied: watch::Receiver<u64>,
    leader: Leader,
    dlq: Followed,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Backoff::new();
    // A new leader sends what its outbox holds at once, not at the next commit.
    let mut became = leader.subscribe();
    loop {
        match drain(&js, &db, &leader, &dlq, &metrics).await {
            Ok(()) => {
                backoff.reset();
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { break },
                    Ok(()) = became.changed() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot store dead letters in TRUEBIT_DLQ yet; they wait in the outbox");
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { break },
                    _ = backoff.wait() => {}
                }
            }
        }
    }
    // Bounded, so that a stop while NATS is away does not hang: what is left waits on disk.
    match tokio::time::timeout(LAST_DRAIN, drain(&js, &db, &leader, &dlq, &metrics)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "stopping with dead letters in the outbox; the next start sends them")
        }
        Err(_) => {
            tracing::warn!("stopping with dead letters in the outbox; the next start sends them")
        }
    }
}

/// Sends everything in the outbox while this instance leads; an error leaves the unsent part
/// there. An instance that does not lead keeps its outbox for the day it does (contract §9).
async fn drain(
    js: &jetstream::Context,
    db: &Arc<Projections>,
    leader: &Leader,
    dlq: &Followed,
    metrics: &Metrics,
) -> Result<(), Error> {
    if !leader.leading() {
        return Ok(());
    }
    let max_age = read_to_the_end(js, &dlq.read).await?;
    loop {
        if !leader.leading() {
            return Ok(());
        }
        let pending = {
            let db = db.clone();
            blocking(move || db.outbox(CHUNK)).await?
        };
        if pending.is_empty() {
            return Ok(());
        }
        // Refusals folded after the reader passed their dead letters (this instance was behind
        // the one that stored them) are in TRUEBIT_DLQ already, and a letter for a message
        // stored longer ago than TRUEBIT_DLQ keeps letters would have expired there: both are
        // dropped, not sent (again).
        let now = Utc::now().timestamp();
        let (settled, pending): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|p| dlq.holds(p.seq) || past_max_age(p.stored_minute, max_age, now));
        if !settled.is_empty() {
            let expired = settled.iter().filter(|p| !dlq.holds(p.seq)).count();
            if expired > 0 {
                tracing::info!(
                    count = expired,
                    max_age_s = max_age.as_secs(),
                    "not sending the dead letters of messages stored longer ago than TRUEBIT_DLQ's max_age: they would have expired there"
                );
            }
            let seqs: Vec<u64> = settled.iter().map(|p| p.seq).collect();
            let db = db.clone();
            blocking(move || db.drop_dead_letters(&seqs)).await?;
            continue;
        }
        let mut acks = Vec::with_capacity(pending.len());
        for p in &pending {
            acks.push(send(js, &p.dead_letter, &dlq.stream).await?);
        }
        for (ack, p) in acks.into_iter().zip(&pending) {
            let stored = ack
                .await
                .map_err(|e| Error::nats("storing a dead letter", e))?;
            // A copy JetStream already held (sent before a crash) is not stored again.
            let reason = p
                .dead_letter
                .subject
                .strip_prefix(truebit_streams::subjects::DLQ_PREFIX)
                .and_then(truebit_streams::Reason::parse);
            if let (false, Some(reason)) = (stored.duplicate, reason) {
                metrics
                    .dead_letters
                    .get_or_create(&ReasonLabel {
                        reason: reason.as_str(),
                    })
                    .inc();
            }
        }
        let seqs: Vec<u64> = pending.iter().map(|p| p.seq).collect();
        tracing::debug!(count = seqs.len(), "dead letters stored");
        let db = db.clone();
        blocking(move || db.drop_dead_letters(&seqs)).await?;
    }
}

/// Whether a message stored in `stored_minute` is surely older than `max_age` at `now` (Unix
/// seconds): its dead letter, had it been sent, would have expired from `TRUEBIT_DLQ` (contract
/// §9). The minute is taken at its end, so that a letter is never left unsent for being a
/// minute too old; an entry without the minute, or a stream that keeps letters for ever, sends.
fn past_max_age(stored_minute: Option<Minute>, max_age: Duration, now: i64) -> bool {
    let Some(minute) = stored_minute else {
        return false;
    };
    if max_age.is_zero() {
        return false;
    }
    let age = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    minute
        .saturating_add(1)
        .saturating_mul(60)
        .saturating_add(age)
        <= now
}

async fn send(
    js: &jetstream::Context,
    dead: &DeadLetter,
    stream: &str,
) -> Result<jetstream::context::PublishAckFuture, Error> {
    let mut headers = HeaderMap::new();
    for (name, value) in &dead.headers {
        headers.insert(name.as_str(), value.as_str());
    }
    headers.insert(HEADER_ORIGINAL_STREAM, stream);
    js.publish_with_headers(dead.subject.clone(), headers, dead.payload.clone().into())
        .await
        .map_err(|e| Error::nats("publishing a dead letter", e))
}

/// What [`follow`] has read of `TRUEBIT_DLQ`: how far, and the original sequences whose dead
/// letters it holds. The set is kept because an instance may fold a refusal only after the
/// reader passed its dead letter (a standby catching up); it holds a number per dead letter in
/// the stream (30 days of them by default).
///
/// Only the dead letters of this incarnation of `TRUEBIT_EVENTS` count: a stream made again
/// restarts its sequences at 1 while `TRUEBIT_DLQ` keeps the old one's letters, and taking
/// those for this stream's would drop its refusals unsent. A letter names its stream
/// ([`HEADER_ORIGINAL_STREAM`]); one sent before letters did is judged by the time it was
/// stored, against the time this stream was created.
#[derive(Clone)]
pub(crate) struct Followed {
    pub read: watch::Receiver<u64>,
    stored: Arc<Mutex<HashSet<u64>>>,
    /// This stream's identity, which every dead letter sent here carries.
    stream: Arc<str>,
    /// When this stream was created.
    since: DateTime<Utc>,
}

impl Followed {
    /// Whether a dead letter found in `TRUEBIT_DLQ` is about a message of this stream.
    fn ours(&self, stream: Option<&str>, stored_at: DateTime<Utc>) -> bool {
        match stream {
            Some(stream) => stream == &*self.stream,
            None => stored_at >= self.since,
        }
    }

    fn holds(&self, seq: u64) -> bool {
        self.stored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&seq)
    }
}

/// Waits until [`follow`] has read every dead letter `TRUEBIT_DLQ` holds now, so that what
/// another leader stored is dropped before this one sends anything; returns the stream's
/// `max_age`.
async fn read_to_the_end(
    js: &jetstream::Context,
    followed: &watch::Receiver<u64>,
) -> Result<Duration, Error> {
    let mut dlq = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(|e| Error::nats("opening TRUEBIT_DLQ", e))?;
    let info = dlq
        .info()
        .await
        .map_err(|e| Error::nats("reading TRUEBIT_DLQ", e))?;
    let (state, max_age) = (info.state.clone(), info.config.max_age);
    if state.messages == 0 {
        return Ok(max_age);
    }
    let end = state.last_sequence;
    let deadline = tokio::time::Instant::now() + READ_TO_END;
    let mut followed = followed.clone();
    let all = format!("{}>", truebit_streams::subjects::DLQ_PREFIX);
    loop {
        let read = *followed.borrow_and_update();
        if read >= end {
            return Ok(max_age);
        }
        // The last sequence may be a letter deleted since, which no reader ever sees: what
        // counts is whether a letter the reader has not read yet is still there.
        let next = dlq
            .raw_message_builder()
            .sequence(read + 1)
            .next_by_subject(all.clone())
            .send()
            .await;
        match next {
            Ok(m) if m.sequence > end => return Ok(max_age),
            Ok(_) => {}
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(max_age),
            Err(e) => return Err(Error::nats("reading TRUEBIT_DLQ", e)),
        }
        tokio::time::timeout_at(deadline, followed.changed())
            .await
            .map_err(|_| {
                Error::nats(
                    "reading TRUEBIT_DLQ to its end",
                    "not done in 30 s; the dead letters wait until it is",
                )
            })?
            .map_err(|_| Error::nats("reading TRUEBIT_DLQ", "the reader stopped"))?;
    }
}

/// How long a new leader waits for the dead letters already stored to be read.
const READ_TO_END: Duration = Duration::from_secs(30);

/// A reader of `TRUEBIT_DLQ` ([`follow`]) and what it has read ([`Followed`]), for the stream
/// `stream` ([`truebit_streams::names::stream_identity`]) created at `since`.
pub(crate) fn follower(stream: &str, since: DateTime<Utc>) -> (watch::Sender<u64>, Followed) {
    let (tx, read) = watch::channel(0);
    (
        tx,
        Followed {
            read,
            stored: Arc::default(),
            stream: stream.into(),
            since,
        },
    )
}

/// Reads `TRUEBIT_DLQ` from its start, for as long as serve runs, noting every dead letter of
/// this stream found there ([`Followed`]) and dropping it from the outbox; `read` carries the
/// last stream sequence read.
pub(crate) async fn follow(
    dlq: Stream,
    db: Arc<Projections>,
    read: watch::Sender<u64>,
    followed: Followed,
    mut stop: Shutdown,
) {
    let mut letters = Following::new(dlq, "TRUEBIT_DLQ", 1).headers_only();
    loop {
        // The first letter whenever it comes, then those that follow within the linger: one
        // commit drops a burst of them from the outbox.
        let Some(first) = letters.next(&mut stop).await else {
            return;
        };
        let mut batch = vec![first];
        let linger = tokio::time::Instant::now() + FOLLOW_LINGER;
        while batch.len() < CHUNK {
            match tokio::time::timeout_at(linger, letters.next(&mut stop)).await {
                Ok(Some(letter)) => batch.push(letter),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let last = batch.last().map_or(0, |letter| letter.seq);
        let seqs: Vec<u64> = batch
            .iter()
            .filter_map(|letter| {
                let header = |name| letter.message.headers.as_ref().and_then(|h| h.get(name));
                let stream = header(HEADER_ORIGINAL_STREAM).map(|v| v.as_str());
                if !followed.ours(stream, letter.stored) {
                    return None;
                }
                header(HEADER_ORIGINAL_SEQ).and_then(|v| v.as_str().parse::<u64>().ok())
            })
            .collect();
        followed
            .stored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(seqs.iter().copied());
        let db = db.clone();
        if let Err(e) = blocking(move || db.drop_dead_letters(&seqs)).await {
            tracing::warn!(error = %e, "cannot drop stored dead letters from the outbox");
            // Read again from the first letter not yet dropped, once the database may be back.
            letters.rewind(*read.borrow() + 1);
            tokio::select! {
                _ = stop.recv() => return,
                _ = tokio::time::sleep(FOLLOW_LINGER) => continue,
            }
        }
        read.send_replace(last);
    }
}

/// Dead letters read are dropped from the outbox in one commit per this long at most.
const FOLLOW_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_letter_is_left_unsent_only_when_its_message_is_surely_older_than_max_age() {
        let stored = 29_000_000; // a minute
        let end_of_minute = (stored + 1) * 60;
        let month = 30 * DAY;
        let month_s = month.as_secs() as i64;
        assert!(!past_max_age(
            Some(stored),
            month,
            end_of_minute + month_s - 1
        ));
        assert!(past_max_age(Some(stored), month, end_of_minute + month_s));
        assert!(
            !past_max_age(Some(stored), Duration::ZERO, i64::MAX),
            "a stream that keeps letters for ever"
        );
        assert!(
            !past_max_age(None, DAY, i64::MAX),
            "an entry from before the minute was kept"
        );
    }
}
