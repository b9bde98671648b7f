//! The Prometheus metrics of contract §8, registered once with their help texts; each is updated
//! where the work happens (the committer, the outbox publisher, the lag watcher, the publisher),
//! with a few atomic operations, so that the fold's hundred thousand events a second do not
//! notice them.
//!
//! `prometheus-client` encodes OpenMetrics; a scraper that does not ask for it gets the
//! Prometheus text format 0.0.4, which differs only in how a counter's family is named (with its
//! `_total`) and in having no `# EOF`.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use truebit_projections::ADMISSION_OUTCOMES;
use truebit_streams::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Every metric `serve` exposes on `/metrics`.
pub struct Metrics {
    registry: Registry,
    pub events_folded: Counter,
    pub dead_letters: Family<ReasonLabel, Counter>,
    pub admission: Family<OutcomeLabel, Counter>,
    pub last_applied: Gauge,
    pub stream_last: Gauge,
    pub pending: Gauge,
    pub oldest_unfolded_age: Gauge<f64, AtomicU64>,
    pub commit_duration: Histogram,
    pub commit_events: Histogram,
    pub snapshot_age: Gauge<f64, AtomicU64>,
    pub snapshots_published: Counter,
    pub history_records: Counter,
    pub database_bytes: Gauge,
    pub leader: Gauge,
    /// What `/readyz` would answer, as 1 or 0: set at each scrape, so that an alert sees it.
    pub ready: Gauge,
    /// Published digest points (contract §11) that this instance's own differs from.
    pub digest_mismatches: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            events_folded: Counter::default(),
            dead_letters: Family::default(),
            admission: Family::default(),
            last_applied: Gauge::default(),
            stream_last: Gauge::default(),
            pending: Gauge::default(),
            oldest_unfolded_age: Gauge::default(),
            // 1 ms to ~16 s.
            commit_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // 1 to 32,768 events: the largest commit.
            commit_events: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            snapshot_age: Gauge::default(),
            snapshots_published: Counter::default(),
            history_records: Counter::default(),
            database_bytes: Gauge::default(),
            leader: Gauge::default(),
            ready: Gauge::default(),
            digest_mismatches: Counter::default(),
            registry: Registry::default(),
        };
        // Every label known from the start, at 0: a rate over a series that appears late is wrong.
        for reason in Reason::ALL {
            let _ = m.dead_letters.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            });
        }
        for outcome in ADMISSION_OUTCOMES {
            let _ = m.admission.get_or_create(&OutcomeLabel { outcome });
        }
        registry.register(
            "truebit_events_folded",
            "Messages folded by this process since it started (events and refusals), each once",
            m.events_folded.clone(),
        );
        registry.register(
            "truebit_dead_letters",
            "Dead letters this process stored in TRUEBIT_DLQ, by reason (a copy JetStream deduplicated is not counted)",
            m.dead_letters.clone(),
        );
        registry.register(
            "truebit_admission",
            "Node messages checked by this process's fold in audit or enforce mode, by outcome (contract 7)",
            m.admission.clone(),
        );
        registry.register(
            "truebit_last_applied_sequence",
            "The last TRUEBIT_EVENTS sequence committed to the database",
            m.last_applied.clone(),
        );
        registry.register(
            "truebit_stream_last_sequence",
            "The last sequence TRUEBIT_EVENTS holds, as last read",
            m.stream_last.clone(),
        );
        registry.register(
            "truebit_consumer_pending_messages",
            "The lag: messages of the aggregator's consumer not yet delivered or not yet acked after a commit",
            m.pending.clone(),
        );
        registry.register_with_unit(
            "truebit_oldest_unfolded_age",
            "Age of the oldest message of TRUEBIT_EVENTS not yet folded (0 when none)",
            Unit::Seconds,
            m.oldest_unfolded_age.clone(),
        );
        registry.register_with_unit(
            "truebit_commit_duration",
            "Time to fold and commit one database transaction",
            Unit::Seconds,
            m.commit_duration.clone(),
        );
        registry.register(
            "truebit_commit_events",
            "Messages folded per database transaction",
            m.commit_events.clone(),
        );
        registry.register_with_unit(
            "truebit_snapshot_age",
            "Time since this process last published a snapshot (0 before the first)",
            Unit::Seconds,
            m.snapshot_age.clone(),
        );
        registry.register(
            "truebit_snapshots_published",
            "Snapshots this process published on truebit.stats.aggregated",
            m.snapshots_published.clone(),
        );
        registry.register(
            "truebit_history_records",
            "History records this process stored in TRUEBIT_STATS",
            m.history_records.clone(),
        );
        registry.register_with_unit(
            "truebit_database",
            "Size of the projections database file",
            Unit::Bytes,
            m.database_bytes.clone(),
        );
        registry.register(
            "truebit_leader",
            "1 on the instance that publishes snapshots, history and dead letters, else 0",
            m.leader.clone(),
        );
        registry.register(
            "truebit_ready",
            "1 when /readyz answers 200 (connected to NATS, caught up, lag under one batch), else 0",
            m.ready.clone(),
        );
        registry.register(
            "truebit_digest_mismatches",
            "Published digest points (truebit.stats.digest) that this instance's own state digest differs from (contract 11)",
            m.digest_mismatches.clone(),
        );
        Metrics { registry, ..m }
    }

    /// What `/metrics` answers: OpenMetrics when the scraper asks for it, else the Prometheus
    /// text format 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        if openmetrics {
            text
        } else {
            to_text_004(&text)
        }
    }

    /// Counts what one commit folded.
    pub fn committed(&self, applied: &truebit_projections::Applied, seconds: f64) {
        self.events_folded.inc_by(applied.folded);
        self.last_applied.set(applied.last_seq as i64);
        self.commit_duration.observe(seconds);
        self.commit_events.observe(applied.folded as f64);
        for (outcome, n) in ADMISSION_OUTCOMES.into_iter().zip(applied.admission) {
            if n > 0 {
                self.admission
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc_by(n);
            }
        }
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's family takes its samples'
/// name (`x_total`), `# UNIT` lines and `# EOF` go. The samples themselves are the same.
fn to_text_004(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_there_from_the_start_with_its_labels_at_zero() {
        let m = Metrics::new();
        let text = m.encode(false);
        for line in [
            "# TYPE truebit_events_folded_total counter",
            "truebit_events_folded_total 0",
            "truebit_dead_letters_total{reason=\"too_large\"} 0",
            "truebit_dead_letters_total{reason=\"rate_limited\"} 0",
            "truebit_admission_total{outcome=\"unauthorized\"} 0",
            "# TYPE truebit_commit_duration_seconds histogram",
            "truebit_consumer_pending_messages 0",
            "truebit_oldest_unfolded_age_seconds 0.0",
            "truebit_database_bytes 0",
            "truebit_leader 0",
            "truebit_ready 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        m.committed(
            &truebit_projections::Applied {
                folded: 7,
                skipped: 0,
                last_seq: 42,
                admission: [4, 2, 1],
                mode: truebit_streams::Mode::Audit,
            },
            0.003,
        );
        let text = m.encode(false);
        for line in [
            "truebit_events_folded_total 7",
            "truebit_last_applied_sequence 42",
            "truebit_admission_total{outcome=\"admitted\"} 4",
            "truebit_admission_total{outcome=\"unauthorized\"} 2",
            "truebit_admission_total{outcome=\"rate_limited\"} 1",
            "truebit_commit_events_sum 7.0",
            "truebit_commit_duration_seconds_bucket{le=\"0.004\"} 1",
            "truebit_commit_duration_seconds_bucket{le=\"0.002\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        let open = m.encode(true);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(
            open.contains("# TYPE truebit_events_folded counter"),
            "{open}"
        );
    }
}
