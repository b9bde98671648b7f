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

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
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

fn exec_id(i: u64) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// The EventDB: N executions, streamed to disk.
fn write_eventdb(path: &Path, n: u64, base_ms: i64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    f.write_all(b"{\"records\": [").unwrap();
    for i in 0..n {
        let exec = exec_id(i);
        let ts = base_ms + i as i64 * 10;
        if i > 0 {
            f.write_all(b",").unwrap();
        }
        write!(
            f,
            r#"{{"messageId": "m{i}", "payload": {{"type": "task_created", "executionId": "{exec}", "timestamp": {ts}, "message": {{"taskId": "rs_{i:064}", "chainId": "43114", "blockHash": "0x{i:064x}"}}}}}},"#
        )
        .unwrap();
        write!(
            f,
            r#"{{"type": "computed_outcome", "executionId": "{exec}"}}"#
        )
        .unwrap();
        if i % 2 == 0 {
            write!(
                f,
                r#",{{"type": "invoice", "executionId": "{exec}", "invoiceId": "{}", "taskCreated_timeStamp": {ts}, "lineItem": [{{"operation": "pay", "total_steps_computed": 5000000, "peak_memory_used": 1000}}]}}"#,
                7_000_000 + i
            )
            .unwrap();
        }
    }
    f.write_all(b"]}").unwrap();
    f.flush().unwrap();
}

/// The debug log: the executions' entries, from the first on, until `bytes` are written.
/// Returns how many executions it tells of.
fn write_log(path: &Path, bytes: u64, base_s: i64) -> u64 {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let label = "@truebit/worker-runner-node-0x4159892b42de4d958e4c1ce1e0e59988a8d23d53:2.4.1";
    let (mut written, mut i) = (0u64, 0u64);
    while written < bytes {
        let at =
            chrono::DateTime::<chrono::Utc>::from_timestamp(base_s + (i / 100) as i64, 0).unwrap();
        let ts = at.format("%Y-%m-%d %H:%M:%S");
        let iso = at.format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let exec = exec_id(i);
        let text = format!(
            "{ts} info: {label} [TaskCreatedSubscriber] Message received from task_created: {{\"messageId\":\"lm{i}\",\"payload\":{{\"type\":\"task_created\",\"executionId\":\"{exec}\",\"timestamp\":\"{iso}\",\"message\":{{\"taskId\":\"py_{i:064}\",\"chainId\":\"43113\"}}}}}}\n\
             {ts} debug: {label} Command execution stdout: {{\"elapsed\":\"1843522917\",\"wasi\":{{\"exitCode\":0}},\"metering\":{{\"last\":{{\"steps\":6214530}},\"peak\":{{\"memory\":23068672}}}},\"execution\":{{\"prepare\":{{\"cached\":false}}}}}}\n\
             {ts} info: {label} Execution {exec} completed\n"
        );
        f.write_all(text.as_bytes()).unwrap();
        written += text.len() as u64;
        i += 1;
    }
    f.flush().unwrap();
    i
}

/// `(peak RSS in KiB, CPU time)` of a process, from /proc.
fn usage(pid: u32) -> (u64, Duration) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        hwm,
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64),
    )
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 on Linux.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
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
    write_eventdb(&eventdb, executions, base_s * 1000);
    let in_log = write_log(&logs.join("worker-runner-node.log"), log_mib << 20, base_s);
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
    let mut last = usage(pid).1;
    let mut quiet = 0;
    while quiet < 2 {
        std::thread::sleep(Duration::from_secs(2));
        let now = usage(pid).1;
        quiet = if now - last < Duration::from_millis(200) {
            quiet + 1
        } else {
            0
        };
        last = now;
    }
    let settled = started.elapsed();
    let polls = 20;
    let (_, before) = usage(pid);
    std::thread::sleep(Duration::from_millis(poll_ms * polls));
    let (peak_kib, after) = usage(pid);
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
    write_eventdb(&tmp, executions + 1, base_s * 1000);
    let (_, before) = usage(pid);
    let started = Instant::now();
    std::fs::rename(&tmp, &eventdb).unwrap();
    let mut last = before;
    let mut quiet = 0;
    while quiet < 2 {
        std::thread::sleep(Duration::from_secs(1));
        let now = usage(pid).1;
        quiet = if now - last < Duration::from_millis(100) {
            quiet + 1
        } else {
            0
        };
        last = now;
    }
    let (peak_kib, after) = usage(pid);
    println!(
        "rewrite   of the EventDB with one execution more: {:.1} s of CPU, quiet again after {:.1} s; peak RSS now {:.1} MiB",
        (after - before).as_secs_f64(),
        started.elapsed().as_secs_f64() - 2.0,
        peak_kib as f64 / 1024.0
    );
    truebit_testkit::signal(&agent, truebit_testkit::SIGTERM);
    let _ = agent.wait();
}
