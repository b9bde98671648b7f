//! Contract §5.3 computed: a snapshot from the counters of its window. Its shape on the wire is
//! [`truebit_streams::Snapshot`].

use crate::counters::Counters;
use truebit_streams::{ExecutionTime, Magnitude, Memory, Minute, Period, Snapshot, MAX_DISTINCT};

/// A count that the fold keeps non-negative; shown as zero if it ever were not.
fn count(v: i64) -> u64 {
    debug_assert!(
        v >= 0,
        "a negative count: the fold took out more than it put in"
    );
    v.max(0) as u64
}

fn labelled<L: Copy>(
    all: &[L],
    label: impl Fn(L) -> &'static str,
    counts: &[i64],
) -> Vec<(&'static str, u64)> {
    all.iter()
        .zip(counts)
        .map(|(l, c)| (label(*l), count(*c)))
        .collect()
}

/// Keys by count, most first (ties: smaller key first); past [`MAX_DISTINCT`] keys, the 31 most
/// frequent and `other` holding the rest.
fn ranked(map: &std::collections::BTreeMap<String, i64>, capped: bool) -> Vec<(String, u64)> {
    let mut entries: Vec<(String, u64)> = map
        .iter()
        .map(|(k, v)| (k.clone(), count(*v)))
        .filter(|(_, c)| *c > 0)
        .collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if capped && entries.len() > MAX_DISTINCT {
        let rest: u64 = entries.drain(MAX_DISTINCT - 1..).map(|(_, c)| c).sum();
        match entries.iter_mut().find(|(k, _)| k == "other") {
            Some((_, c)) => *c += rest,
            None => entries.push(("other".to_string(), rest)),
        }
    }
    entries
}

/// Builds the snapshot from the counters of its window, of the last five minutes and of the
/// last day.
pub(crate) fn compute(
    at: Minute,
    period: Period,
    window: &Counters,
    recent: &Counters,
    day: &Counters,
    total_nodes: u64,
) -> Snapshot {
    Snapshot {
        at,
        period,
        active_nodes: count(recent.online_nodes),
        total_nodes,
        total_tasks: count(window.tasks),
        completed_tasks: count(window.completed),
        failed_tasks: count(window.failed),
        cached_tasks: count(window.cached),
        tasks_last_24h: count(day.tasks),
        total_invoices: count(window.invoices),
        invoices_last_24h: count(day.invoices),
        execution_time_distribution: labelled(
            ExecutionTime::ALL,
            ExecutionTime::label,
            &window.execution_time,
        ),
        gas_usage_distribution: labelled(Magnitude::ALL, Magnitude::label, &window.gas_used),
        steps_computed_distribution: labelled(
            Magnitude::ALL,
            Magnitude::label,
            &window.steps_computed,
        ),
        memory_used_distribution: labelled(Memory::ALL, Memory::label, &window.memory_used),
        chain_distribution: ranked(&window.chains, true),
        task_type_distribution: ranked(&window.task_types, true),
        continent_distribution: ranked(&window.continents, false),
        location_distribution: ranked(&window.locations, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn more_than_32_values_fold_into_other() {
        let map: BTreeMap<String, i64> = (0..40)
            .map(|i| (format!("{i:02}"), 100 - i as i64))
            .collect();
        let r = ranked(&map, true);
        assert_eq!(r.len(), 32);
        assert_eq!(r[0], ("00".to_string(), 100));
        assert_eq!(r[30], ("30".to_string(), 70));
        assert_eq!(
            r[31],
            ("other".to_string(), (31..40).map(|i| 100 - i).sum::<u64>())
        );

        let ties: BTreeMap<String, i64> = (0..33).map(|i| (format!("k{i:02}"), 1)).collect();
        let r = ranked(&ties, true);
        assert_eq!(r[0].0, "k00", "ties go to the smaller key");
        assert_eq!(r[31], ("other".to_string(), 2));

        let exactly: BTreeMap<String, i64> = (0..32).map(|i| (format!("{i}"), 1)).collect();
        assert_eq!(
            ranked(&exactly, true).len(),
            32,
            "32 values are shown as they are"
        );
    }
}
