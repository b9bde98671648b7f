//! The dead-letter outbox: refusals recorded by the commit that folded them, waiting for the
//! service to see them stored in `TRUEBIT_DLQ`.
//!
//! An entry is the dead letter followed by the minute JetStream stored the refused message, so
//! that no instance sends a letter for a message older than `TRUEBIT_DLQ`'s `max_age` (contract
//! §9). Entries written before the minute was kept are the dead letter alone; they decode with
//! no minute, and are sent as before.

use crate::records::read_outbox_entry;
use crate::{tables, Error, Projections};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use truebit_streams::{DeadLetter, Minute};

/// A dead letter waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDeadLetter {
    /// The refused message's sequence in `TRUEBIT_EVENTS`.
    pub seq: u64,
    pub dead_letter: DeadLetter,
    /// The minute JetStream stored the refused message; `None` for an entry recorded before
    /// the outbox kept it.
    pub stored_minute: Option<Minute>,
}

fn decode_entry(seq: u64, bytes: &[u8]) -> Result<PendingDeadLetter, Error> {
    let (dead_letter, stored_minute) = read_outbox_entry(bytes)?;
    Ok(PendingDeadLetter {
        seq,
        dead_letter,
        stored_minute,
    })
}

impl Projections {
    /// Up to `limit` dead letters not yet dropped, oldest original sequence first.
    pub fn pending_dead_letters(&self, limit: usize) -> Result<Vec<(u64, DeadLetter)>, Error> {
        Ok(self
            .outbox(limit)?
            .into_iter()
            .map(|p| (p.seq, p.dead_letter))
            .collect())
    }

    /// Up to `limit` entries of the outbox, oldest original sequence first, each with the
    /// minute its refused message was stored where the entry knows it.
    pub fn outbox(&self, limit: usize) -> Result<Vec<PendingDeadLetter>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(tables::OUTBOX)?;
        let mut out = Vec::new();
        for row in table.iter()?.take(limit) {
            let (seq, bytes) = row?;
            out.push(decode_entry(seq.value(), bytes.value())?);
        }
        Ok(out)
    }

    /// Takes over the outbox of `live` (the database a rebuild replaces): its unsent dead
    /// letters are added to this one's, so that a swap drops none of them (contract §4, §9).
    /// Returns how many were carried.
    pub fn carry_dead_letters(&self, live: &Projections) -> Result<u64, Error> {
        let read = live.db.begin_read()?;
        let from = read.open_table(tables::OUTBOX)?;
        let txn = self.db.begin_write()?;
        let mut carried = 0;
        {
            let mut to = txn.open_table(tables::OUTBOX)?;
            for row in from.iter()? {
                let (seq, bytes) = row?;
                to.insert(seq.value(), bytes.value())?;
                carried += 1;
            }
        }
        txn.commit()?;
        Ok(carried)
    }

    /// How many dead letters wait in the outbox.
    pub fn pending_dead_letter_count(&self) -> Result<u64, Error> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(tables::OUTBOX)?.len()?)
    }

    /// Drops the outbox entries of these original sequences, once their dead letters are stored.
    /// A sequence that is not there is passed over: another instance may have dropped it first.
    pub fn drop_dead_letters(&self, seqs: &[u64]) -> Result<(), Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(tables::OUTBOX)?;
            for seq in seqs {
                table.remove(*seq)?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::encode;
    use crate::{Input, Outbox, Refusal};
    use truebit_streams::{validate, Reason};

    fn refused(seq: u64, live: bool) -> Input {
        let payload = br#"{"version":"1.0","type":"heartbeat","timestamp":"2026-11-02T08:00:00Z","nodeId":"bad node"}"#;
        let rejection = validate("truebit.heartbeat", payload, chrono::Utc::now()).unwrap_err();
        assert_eq!(rejection.reason, Reason::Schema);
        let event = if live {
            Err(Refusal::dead_lettered(
                &rejection,
                "truebit.heartbeat",
                seq,
                payload,
            ))
        } else {
            Err(Refusal::from(rejection))
        };
        Input::unsigned(seq, event)
    }

    #[test]
    fn a_refusal_with_a_dead_letter_waits_in_the_outbox_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Projections::open(dir.path().join("db.redb")).unwrap();
        db.apply(
            &[refused(1, true), refused(2, false), refused(3, true)],
            Outbox::Record,
        )
        .unwrap();
        // Redelivered: folded once, so recorded once.
        db.apply(&[refused(3, true)], Outbox::Record).unwrap();
        let pending = db.pending_dead_letters(10).unwrap();
        let seqs: Vec<u64> = pending.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [1, 3], "a replay's refusal (2) is only counted");
        assert_eq!(pending[1].1.header("Nats-Msg-Id"), Some("dlq-3"));
        assert_eq!(pending[1].1.subject, "truebit.dlq.schema");
        assert_eq!(db.rejections().unwrap()["schema"], 3);

        db.drop_dead_letters(&[1, 99]).unwrap();
        assert_eq!(db.pending_dead_letter_count().unwrap(), 1);
        assert_eq!(db.pending_dead_letters(10).unwrap()[0].0, 3);
        // The outbox is not state: a database without it compares equal.
        let other = Projections::open(dir.path().join("other.redb")).unwrap();
        other
            .apply(
                &[refused(1, false), refused(2, false), refused(3, false)],
                Outbox::Record,
            )
            .unwrap();
        assert_eq!(db.differences(&other, 10).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn an_entry_keeps_the_minute_its_message_was_stored_and_an_older_entry_still_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Projections::open(dir.path().join("db.redb")).unwrap();
        let mut first = refused(1, true);
        first.stored_minute = 29_000_000;
        db.apply(&[first], Outbox::Record).unwrap();
        let mut second = refused(2, true);
        second.stored_minute = 29_000_007;
        // A batch that folds nothing new leaves the entries before it as they were.
        db.apply(&[refused(1, true), second], Outbox::Record)
            .unwrap();
        // An entry as written before the minute was kept: the dead letter alone.
        let older = refused(5, true);
        let Err(Refusal {
            dead_letter: Some(dead),
            ..
        }) = &older.event
        else {
            unreachable!()
        };
        let txn = db.db.begin_write().unwrap();
        txn.open_table(tables::OUTBOX)
            .unwrap()
            .insert(5, encode(dead).as_slice())
            .unwrap();
        txn.commit().unwrap();
        let minutes: Vec<(u64, Option<Minute>)> = db
            .outbox(10)
            .unwrap()
            .iter()
            .map(|p| (p.seq, p.stored_minute))
            .collect();
        assert_eq!(
            minutes,
            [(1, Some(29_000_000)), (2, Some(29_000_007)), (5, None)]
        );
        assert_eq!(db.pending_dead_letters(10).unwrap()[2].1, *dead);
    }

    #[test]
    fn a_rebuild_takes_over_the_unsent_dead_letters_of_the_database_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let live = Projections::open(dir.path().join("live.redb")).unwrap();
        let mut first = refused(3, true);
        first.stored_minute = 7;
        live.apply(&[first, refused(4, true)], Outbox::Record)
            .unwrap();
        live.drop_dead_letters(&[4]).unwrap();
        let rebuilt = Projections::open(dir.path().join("rebuilt.redb")).unwrap();
        rebuilt
            .apply(&[refused(3, false), refused(4, false)], Outbox::Skip)
            .unwrap();
        assert_eq!(rebuilt.pending_dead_letter_count().unwrap(), 0);
        assert_eq!(rebuilt.carry_dead_letters(&live).unwrap(), 1);
        assert_eq!(rebuilt.outbox(10).unwrap(), live.outbox(10).unwrap());
    }

    #[test]
    fn a_stored_dead_letter_that_cannot_be_decoded_is_a_corrupt_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = Projections::open(dir.path().join("db.redb")).unwrap();
        let txn = db.db.begin_write().unwrap();
        txn.open_table(tables::OUTBOX)
            .unwrap()
            .insert(7, encode(&"not a dead letter").as_slice())
            .unwrap();
        txn.commit().unwrap();
        let err = db.pending_dead_letters(1).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Corrupt {
                    table: "outbox",
                    ..
                }
            ),
            "{err}"
        );
    }
}
