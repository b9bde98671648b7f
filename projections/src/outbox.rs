//! The dead-letter outbox: refusals recorded by the commit that folded them, waiting for the
//! service to see them stored in `TRUEBIT_DLQ`.

use crate::records::decode;
use crate::{tables, Error, Projections};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use truebit_streams::DeadLetter;

impl Projections {
    /// Up to `limit` dead letters not yet dropped, oldest original sequence first.
    pub fn pending_dead_letters(&self, limit: usize) -> Result<Vec<(u64, DeadLetter)>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(tables::OUTBOX)?;
        let mut out = Vec::new();
        for row in table.iter()?.take(limit) {
            let (seq, bytes) = row?;
            out.push((seq.value(), decode("outbox", bytes.value())?));
        }
        Ok(out)
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
