//! The fold benchmark: `cargo bench --bench fold [-- --tasks N --commit M --run-len R]`.
//!
//! The fold alone, with no NATS: the simulated fleet's messages (the same mix as `pipeline`)
//! are validated ahead of the clock, a quarter of a million tasks at a time, and then folded
//! into a fresh database in commits of `--commit` events (default 32,768, the largest commit
//! `serve` makes). It prints the fold rate and the database size after each million events, so
//! that what a growing database costs the fold shows on its own, apart from the server and the
//! acks that `pipeline` measures with it. `--run-len` sets the database's run length
//! (`truebit_projections::Options`), to weigh it against memory. `--no-digest` folds without
//! the state digest (contract §11), to weigh what keeping it costs.

use std::time::{Duration, Instant};
use truebit_projections::{Input, Options, Projections};
use truebit_testkit::Fleet;

struct Args {
    tasks: u64,
    commit: usize,
    run_len: u64,
    digest: bool,
}

fn args() -> Args {
    let mut a = Args {
        tasks: 1_000_000,
        commit: 32_768,
        run_len: truebit_projections::DEFAULT_RUN_LEN,
        digest: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> u64 {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .expect("a number after the flag")
        };
        // cargo bench passes --bench too
        match flag.as_str() {
            "--tasks" => a.tasks = value(),
            "--commit" => a.commit = value().max(1) as usize,
            "--run-len" => a.run_len = value().max(1),
            "--no-digest" => a.digest = false,
            _ => {}
        }
    }
    a
}

fn main() {
    const CHUNK: u64 = 250_000;
    let args = args();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fold.redb");
    let options = Options {
        run_len: args.run_len,
    };
    let db = Projections::open_with(&path, options).unwrap();
    db.set_digest(args.digest);
    let fleet = Fleet::new(1000, 2026);
    let stored_at = chrono::Utc::now();

    let (mut seq, mut folded_in) = (0u64, Duration::ZERO);
    let (mut lap_events, mut lap_time) = (0u64, Duration::ZERO);
    let mut first = 0;
    println!(
        "fold      {} tasks from {} nodes, commits of {} events, runs of {}",
        args.tasks, fleet.nodes, args.commit, args.run_len
    );
    while first < args.tasks {
        let chunk = Fleet {
            first_task: first,
            ..fleet.clone()
        };
        let mut inputs = Vec::new();
        chunk.for_each(CHUNK.min(args.tasks - first), |m| {
            seq += 1;
            let event = truebit_streams::read(m.subject, &m.payload, stored_at);
            inputs.push(Input::unsigned(
                seq,
                event.map_err(truebit_projections::Refusal::from),
            ));
        });
        for batch in inputs.chunks(args.commit) {
            let started = Instant::now();
            db.apply(batch, truebit_projections::Outbox::Record)
                .unwrap();
            let took = started.elapsed();
            folded_in += took;
            lap_time += took;
            lap_events += batch.len() as u64;
            if lap_events >= 1_000_000 {
                let (tasks, _, _) = db.record_counts().unwrap();
                println!(
                    "  {:>6.1}M events, {tasks:>9} tasks: {:>7.0} events/s, database {} MiB",
                    batch.last().map_or(0, |i| i.seq) as f64 / 1e6,
                    lap_events as f64 / lap_time.as_secs_f64(),
                    std::fs::metadata(&path).unwrap().len() >> 20,
                );
                (lap_events, lap_time) = (0, Duration::ZERO);
            }
        }
        first += CHUNK;
    }
    let (tasks, invoices, nodes) = db.record_counts().unwrap();
    println!(
        "fold      {:>9.0} events/s over {seq} events ({tasks} tasks, {invoices} invoices, {nodes} nodes), {:.1} s folding",
        seq as f64 / folded_in.as_secs_f64(),
        folded_in.as_secs_f64()
    );
    let size = std::fs::metadata(&path).unwrap().len();
    println!(
        "database  {} MiB, {:.0} bytes per task",
        size >> 20,
        size as f64 / tasks.max(1) as f64
    );
    // The validated inputs of a quarter of a million tasks are part of this peak.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(peak) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        println!("peak RSS  {}", peak.trim_start_matches("VmHWM:").trim());
    }
}
