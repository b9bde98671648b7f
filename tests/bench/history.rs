//! The history benchmark: `cargo bench --bench history [-- --tasks N]`.
//!
//! Builds a database of N tasks with the fold alone (as `fold` does: the simulated fleet's
//! messages, validated ahead of the clock, folded in commits of 32,768 events), then times what
//! `/api/history` computes for its three default answers: 24h at 1 minute, 7d at 1 hour and
//! all at 1 day (the projections' series and the JSON, with a year of history records per
//! minute for the node counts). It prints figures and asserts nothing about speed.

use std::time::{Duration, Instant};
use truebit_federation::serve::http::api::{render_history, Range};
use truebit_federation::NodeHistory;
use truebit_projections::{Input, Projections, Step};
use truebit_streams::HistoryRecord;
use truebit_testkit::Fleet;

fn tasks_arg() -> u64 {
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--tasks" {
            return it
                .next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .expect("a number after --tasks");
        }
    }
    1_000_000
}

fn main() {
    const CHUNK: u64 = 250_000;
    let tasks = tasks_arg();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.redb");
    let db = Projections::open(&path).unwrap();
    let fleet = Fleet::new(1000, 2026);
    let stored_at = chrono::Utc::now();
    let (mut seq, mut first) = (0u64, 0u64);
    let started = Instant::now();
    while first < tasks {
        let chunk = Fleet {
            first_task: first,
            ..fleet.clone()
        };
        let mut inputs = Vec::new();
        chunk.for_each(CHUNK.min(tasks - first), |m| {
            seq += 1;
            let event = truebit_streams::read(m.subject, &m.payload, stored_at);
            inputs.push(Input::unsigned(
                seq,
                event.map_err(truebit_projections::Refusal::from),
            ));
        });
        for batch in inputs.chunks(32_768) {
            db.apply(batch, truebit_projections::Outbox::Record)
                .unwrap();
        }
        first += CHUNK;
    }
    println!(
        "built     {tasks} tasks, {seq} events in {:.1} s, database {} MiB",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&path).unwrap().len() >> 20
    );

    // A year of history records, one a minute, as a 30 s publish interval keeps them.
    let nodes = NodeHistory::default();
    let now = chrono::Utc::now().timestamp() / 60;
    for m in (now - 365 * 1440)..=now {
        nodes.insert(&HistoryRecord {
            t: truebit_streams::minute_timestamp(m),
            seq: m as u64,
            active_nodes: 900,
            total_nodes: 1000,
            tasks: 0,
            completed: 0,
            failed: 0,
            cached: 0,
            invoices: 0,
        });
    }

    for (range, step) in [
        (Range::parse("24h").unwrap(), Step::Minute),
        (Range::parse("7d").unwrap(), Step::Hour),
        (Range::parse("all").unwrap(), Step::Day),
    ] {
        let mut times = Vec::new();
        let mut bytes = 0;
        let mut points = 0;
        for _ in 0..20 {
            let t = Instant::now();
            let from = range.minutes().map(|r| step.floor(now) - r);
            let series = db.history(from, now, step, u64::MAX).unwrap().unwrap();
            let body = render_history(range, step, now, &series, &nodes);
            times.push(t.elapsed());
            bytes = body.len();
            points = series.len();
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "history   range {:>3} step {}: {points:>5} points, {bytes:>7} bytes: median {:.2} ms, max {:.2} ms (20 runs)",
            range.as_str(),
            step.as_str(),
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
        );
    }
}
