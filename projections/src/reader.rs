//! Snapshots: the counters of a window, summed from one consistent read view.

use crate::counters::{cover, Counters, MINUTE, TOTAL};
use crate::records::decode;
use crate::snapshot::compute;
use crate::tables::meta::read_u64;
use crate::tables::{self, meta};
use crate::{Error, Projections, StateDigest};
use redb::{Database, ReadableDatabase};
use truebit_streams::{Minute, Period, Snapshot};

impl Projections {
    /// The snapshot at minute `at` over `period`.
    pub fn snapshot(&self, at: Minute, period: Period) -> Result<Snapshot, Error> {
        let reader = Reader::open(&self.db)?;
        reader.snapshot(at, period, &reader.recent(at)?, &reader.last_day(at)?)
    }

    /// The snapshots of every period at minute `at`, from one consistent view.
    pub fn snapshots(&self, at: Minute) -> Result<Vec<Snapshot>, Error> {
        Ok(self.snapshots_with_seq(at)?.1)
    }

    /// The snapshots of every period at minute `at`, and the last folded sequence they hold,
    /// from one consistent view: what a publisher stamps on them while batches commit beside it.
    pub fn snapshots_with_seq(&self, at: Minute) -> Result<(u64, Vec<Snapshot>), Error> {
        let (seq, _, snapshots) = self.snapshots_with_digest(at)?;
        Ok((seq, snapshots))
    }

    /// Like [`Projections::snapshots_with_seq`], with the state digest at that sequence
    /// (contract §11), all from one view.
    pub fn snapshots_with_digest(
        &self,
        at: Minute,
    ) -> Result<(u64, StateDigest, Vec<Snapshot>), Error> {
        let reader = Reader::open(&self.db)?;
        let recent = reader.recent(at)?;
        let day = reader.last_day(at)?;
        let snapshots = Period::ALL
            .into_iter()
            .map(|p| reader.snapshot(at, p, &recent, &day))
            .collect::<Result<_, _>>()?;
        Ok((reader.last_seq, reader.digest.clone(), snapshots))
    }
}

/// A consistent read view for snapshots.
pub(crate) struct Reader {
    pub(crate) counters: redb::ReadOnlyTable<(u8, i64), &'static [u8]>,
    total_nodes: u64,
    pub(crate) last_seq: u64,
    digest: StateDigest,
}

/// Active nodes are those heartbeating within this many minutes of `T`.
const ACTIVE_MINUTES: i64 = 5;

impl Reader {
    pub(crate) fn open(db: &Database) -> Result<Self, Error> {
        let txn = db.begin_read()?;
        let meta_table = txn.open_table(tables::META)?;
        Ok(Reader {
            counters: txn.open_table(tables::COUNTERS)?,
            total_nodes: read_u64(&meta_table, meta::NODES)?.unwrap_or(0),
            last_seq: read_u64(&meta_table, meta::LAST_SEQ)?.unwrap_or(0),
            digest: StateDigest::of(&crate::digest::stored(&txn.open_table(tables::DIGEST)?)?),
        })
    }

    fn recent(&self, at: Minute) -> Result<Counters, Error> {
        self.window(Some(at - ACTIVE_MINUTES), at)
    }

    fn last_day(&self, at: Minute) -> Result<Counters, Error> {
        self.window(Period::Day.minutes().map(|m| at - m), at)
    }

    fn snapshot(
        &self,
        at: Minute,
        period: Period,
        recent: &Counters,
        day: &Counters,
    ) -> Result<Snapshot, Error> {
        let window = self.window(period.minutes().map(|m| at - m), at)?;
        Ok(compute(at, period, &window, recent, day, self.total_nodes))
    }

    /// The counters of the minutes `lo..=hi`; `lo` of `None` is the beginning of time.
    fn window(&self, lo: Option<Minute>, hi: Minute) -> Result<Counters, Error> {
        if let Some(lo) = lo {
            return self.sum(lo, hi);
        }
        // All time is the grand total less whatever lies after `hi`, which is usually nothing.
        let mut total = self.row((TOTAL, 0))?;
        let last = self
            .counters
            .range((MINUTE, i64::MIN)..=(MINUTE, i64::MAX))?
            .next_back()
            .transpose()?;
        if let Some((key, _)) = last {
            let (_, latest) = key.value();
            if latest > hi {
                total.merge(&self.sum(hi + 1, latest)?, -1);
            }
        }
        Ok(total)
    }

    pub(crate) fn sum(&self, lo: Minute, hi: Minute) -> Result<Counters, Error> {
        let mut acc = Counters::default();
        for run in cover(lo, hi) {
            for row in self
                .counters
                .range((run.level, run.from)..=(run.level, run.to))?
            {
                let (_, bytes) = row?;
                acc.merge(&decode::<Counters>("counters", bytes.value())?, 1);
            }
        }
        Ok(acc)
    }

    fn row(&self, key: (u8, i64)) -> Result<Counters, Error> {
        match self.counters.get(key)? {
            Some(b) => decode("counters", b.value()),
            None => Ok(Counters::default()),
        }
    }
}
