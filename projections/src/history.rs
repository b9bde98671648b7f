//! History (contract §8): the task and invoice figures of a run of time steps, read from the same
//! minute, hour and day counters as snapshots. Exact, over all time, and the same after a replay,
//! since the counters are part of the folded state.
//!
//! A point opens its step `[t, t + S)` and counts the tasks whose `first_seen_at` lies in it and
//! that are, now, completed, failed or cached (as §5.3 counts them); invoices likewise. The step
//! that holds `at` is cut at `at`, so that the points of a series that starts at the first task
//! sum to the snapshot of `all` at `at`, whatever lies later in the counters (clock skew lets an
//! event be a few minutes ahead of the wall clock).
//!
//! Each step of a series is one counter row of its own level (a minute, an hour, a day): a
//! series costs one range read of as many rows as it has points, plus at most five runs for the
//! step cut at `at`, whatever the number of tasks.

use crate::counters::{Counters, DAY, HOUR, MINUTE, MINUTES_PER_DAY, MINUTES_PER_HOUR};
use crate::reader::Reader;
use crate::records::decode;
use crate::{Error, Projections};
use truebit_streams::Minute;

/// The length of a step of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Minute,
    Hour,
    Day,
}

impl Step {
    pub const ALL: [Step; 3] = [Step::Minute, Step::Hour, Step::Day];

    pub fn minutes(self) -> i64 {
        match self {
            Step::Minute => 1,
            Step::Hour => MINUTES_PER_HOUR,
            Step::Day => MINUTES_PER_DAY,
        }
    }

    /// `1m`, `1h`, `1d`, as the query string spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Minute => "1m",
            Step::Hour => "1h",
            Step::Day => "1d",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.as_str() == s)
    }

    /// The first minute of the step that holds `minute`.
    pub fn floor(self, minute: Minute) -> Minute {
        minute.div_euclid(self.minutes()) * self.minutes()
    }

    fn level(self) -> u8 {
        match self {
            Step::Minute => MINUTE,
            Step::Hour => HOUR,
            Step::Day => DAY,
        }
    }
}

/// One step of a series: the tasks and invoices first seen in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Point {
    /// The first minute of the step.
    pub at: Minute,
    pub tasks: u64,
    pub completed: u64,
    pub failed: u64,
    pub cached: u64,
    pub invoices: u64,
}

impl Point {
    fn of(at: Minute, c: &Counters) -> Self {
        let n = |v: i64| v.max(0) as u64;
        Point {
            at,
            tasks: n(c.tasks),
            completed: n(c.completed),
            failed: n(c.failed),
            cached: n(c.cached),
            invoices: n(c.invoices),
        }
    }
}

impl Projections {
    /// One point per step from the step that holds `from` to the step that holds `at`, both
    /// included; `from` of `None` starts at the step of the first task or invoice (no point at
    /// all when there is none at or before `at`). Points after `at` are never counted.
    ///
    /// `Ok(Err(n))` when that would be `n` points, more than `max_points`: decided before
    /// anything is allocated, since a far `at` over a small step would be millions.
    pub fn history(
        &self,
        from: Option<Minute>,
        at: Minute,
        step: Step,
        max_points: u64,
    ) -> Result<Result<Vec<Point>, u64>, Error> {
        let reader = Reader::open(&self.db)?;
        let from = match from {
            Some(from) => from,
            None => match first_minute(&reader)? {
                Some(first) if first <= at => first,
                _ => return Ok(Ok(Vec::new())),
            },
        };
        let (first, last) = (step.floor(from), step.floor(at));
        if first > last {
            return Ok(Ok(Vec::new()));
        }
        let size = step.minutes();
        let count = ((last - first) / size + 1) as u64;
        if count > max_points {
            return Ok(Err(count));
        }
        let mut points: Vec<Point> = (0..=(last - first) / size)
            .map(|i| Point {
                at: first + i * size,
                ..Point::default()
            })
            .collect();
        // Every whole step before the last, one row each.
        let (lo, hi) = (first / size, last / size - 1);
        if lo <= hi {
            for row in reader
                .counters
                .range((step.level(), lo)..=(step.level(), hi))?
            {
                let (key, bytes) = row?;
                let (_, index) = key.value();
                let counters: Counters = decode("counters", bytes.value())?;
                points[(index - lo) as usize] = Point::of(index * size, &counters);
            }
        }
        // The last step, cut at `at`.
        let cut = reader.sum(last, at)?;
        *points.last_mut().expect("at least one point") = Point::of(last, &cut);
        Ok(Ok(points))
    }
}

/// The minute of the first task or invoice, if any.
fn first_minute(reader: &Reader) -> Result<Option<Minute>, Error> {
    // Coarse to fine: the first day with any, then its first hour, then its first minute. Rows
    // that hold only nodes are skipped.
    let mut range = (i64::MIN, i64::MAX);
    let mut found = None;
    for (level, size) in [
        (DAY, MINUTES_PER_DAY),
        (HOUR, MINUTES_PER_HOUR),
        (MINUTE, 1),
    ] {
        found = None;
        for row in reader.counters.range((level, range.0)..=(level, range.1))? {
            let (key, bytes) = row?;
            let counters: Counters = decode("counters", bytes.value())?;
            if counters.tasks > 0 || counters.invoices > 0 {
                let index = key.value().1;
                found = Some(index * size);
                let per = if level == DAY {
                    MINUTES_PER_DAY / MINUTES_PER_HOUR
                } else {
                    MINUTES_PER_HOUR
                };
                range = (index * per, index * per + per - 1);
                break;
            }
        }
        if found.is_none() {
            return Ok(None);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_floor() {
        assert_eq!(Step::parse("1h"), Some(Step::Hour));
        assert_eq!(Step::parse("2h"), None);
        assert_eq!(Step::Day.floor(1441), 1440);
        assert_eq!(Step::Hour.floor(-1), -60);
    }
}
