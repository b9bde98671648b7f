//! The node agent's benchmark (issue 17, item 8): `cargo bench --bench node [-- --executions N
//! --log-mib M --poll-ms P]`, by default a million executions and a 2 GiB debug log.
//!
//! Builds a runner's history in a temporary folder, in the formats of `src/node/runner.rs` (as
//! `tests/it/node.rs` writes them): an EventDB of N executions (task_created in the runner's form,
//! computed_outcome, an invoice for every other one) and a debug log of M MiB (the received,
//! stdout and completion entries of those executions, then of further ones until the size is
//! reached). Runs the agent binary on it beside a real nats-server with no stream, so that
//! everything it makes waits in its outbox (the outbox is allowed to hold it all, so that every
//! file is read), and prints:
//!
//! - how long it took to read the history through, and the state directory's size;
//! - its peak RSS (`VmHWM`) over the whole run;
//! - the CPU time of one idle poll: the process's CPU time over 20 polls once the history was
//!   read and nothing changes, divided by 20 (an upper bound: the heartbeat and the publisher's
//!   retries are counted with it).
//!
//! - the CPU time and the wall time the agent spends on the runner rewriting its EventDB with
//!   one execution more (the file is read again, a record at a time, and every key looked up).
//!
//! It asserts nothing about speed or size; the goal is RSS under 64 MiB and a poll under 10 ms.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use truebit_testkit::procfs::{dir_size, usage, Usage};
use truebit_testkit::runner::{write_eventdb, write_log};
use truebit_testkit::{NatsServer, Reaped};

const BIN: &str = env!("CARGO_BIN_EXE_truebit-federation");

fn arg(name: &str, default: u64) -> u64 {
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == name {
            return it
                .next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| panic!("a number after {name}"));
        }
    }
    default
}

fn main() {
    let executions = arg("--executions", 1_000_000);
    let log_mib = arg("--log-mib", 2048);
    let poll_ms = arg("--poll-ms", 1000);
    let dir = tempfile::tempdir().unwrap();
    let runner = dir.path().join("runner");
    let logs = runner.join("debug");
    std::fs::create_dir_all(&logs).unwrap();
    let eventdb = runner.join("node-eventDB.json");
    let base_s = chrono::Utc::now().timestamp() - 30 * 86_400;

    let started = Instant::now();
    write_eventdb(&eventdb, executions, base_s * 1000).unwrap();
    let in_log = write_log(&logs.join("worker-runner-node.log"), log_mib << 20, base_s).unwrap();
    println!(
        "built     EventDB of {executions} executions ({} MiB), log of {} MiB telling of {in_log}, in {:.1} s",
        std::fs::metadata(&eventdb).unwrap().len() >> 20,
        log_mib,
        started.elapsed().as_secs_f64()
    );

    let server = NatsServer::start();
    let state = dir.path().join("state");
    let agent_log = dir.path().join("agent.log");
    let mut agent = Reaped(
        Command::new(BIN)
            .arg("node")
            .env("NATS_URL", server.url())
            .env("FEDERATION_SALT", "a-benchmark-salt")
            .env("STATE_DIR", &state)
            .env("NODE_ID", "node-bench")
            .env("NODE_HTTP_ADDR", "off")
            .env("EVENTDB", &eventdb)
            .env("RUNNER_LOGS", &logs)
            .env("OUTBOX_MAX", "1000000000")
            .env("NODE_POLL_INTERVAL", poll_ms.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&agent_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let pid = agent.id();
    let started = Instant::now();
    let through = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            panic!(
                "the agent exited ({status}); its log is in {}",
                agent_log.display()
            );
        }
        let text = std::io::BufReader::new(std::fs::File::open(&agent_log).unwrap())
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("read the runner's files to their end"));
        if text {
            break started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // The sweep after the read-through, then quiet: two windows of 2 s with little CPU.
    let mut last = usage(pid).cpu;
    let mut quiet = 0;
    while quiet < 2 {
        std::thread::sleep(Duration::from_secs(2));
        let now = usage(pid).cpu;
        quiet = if now - last < Duration::from_millis(200) {
            quiet + 1
        } else {
            0
        };
        last = now;
    }
    let settled = started.elapsed();
    let polls = 20;
    let before = usage(pid).cpu;
    std::thread::sleep(Duration::from_millis(poll_ms * polls));
    let Usage {
        peak_kib,
        cpu: after,
        ..
    } = usage(pid);
    println!(
        "read      through in {:.1} s, settled in {:.1} s; state directory {} MiB",
        through.as_secs_f64(),
        settled.as_secs_f64(),
        dir_size(&state) >> 20
    );
    println!(
        "peak RSS  {:.1} MiB (goal: under 64)",
        peak_kib as f64 / 1024.0
    );
    println!(
        "idle poll {:.2} ms of CPU (over {polls} polls of {poll_ms} ms; goal: under 10)",
        (after - before).as_secs_f64() * 1e3 / polls as f64
    );

    // The runner adds an execution: it rewrites the EventDB whole.
    let tmp = runner.join("eventDB.tmp");
    write_eventdb(&tmp, executions + 1, base_s * 1000).unwrap();
    let before = usage(pid).cpu;
    let started = Instant::now();
    std::fs::rename(&tmp, &eventdb).unwrap();
    let mut last = before;
    let mut quiet = 0;
    while quiet < 2 {
        std::thread::sleep(Duration::from_secs(1));
        let now = usage(pid).cpu;
        quiet = if now - last < Duration::from_millis(100) {
            quiet + 1
        } else {
            0
        };
        last = now;
    }
    let Usage {
        peak_kib,
        cpu: after,
        ..
    } = usage(pid);
    println!(
        "rewrite   of the EventDB with one execution more: {:.1} s of CPU, quiet again after {:.1} s; peak RSS now {:.1} MiB",
        (after - before).as_secs_f64(),
        started.elapsed().as_secs_f64() - 2.0,
        peak_kib as f64 / 1024.0
    );
    truebit_testkit::signal(&agent, truebit_testkit::SIGTERM);
    let _ = agent.wait();
}
