//! A runner node's files, generated, in the formats the node agent reads (`src/node/runner.rs`;
//! `tests/fixtures/runner-node/` has real ones): an EventDB of N executions and the debug log's
//! entries of an execution, for the benchmarks that need a runner's history of any size.

use std::io::Write as _;
use std::path::Path;

/// The id of execution `i`.
pub fn execution_id(i: u64) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// Writes an EventDB of executions `0..n` to `path`, streamed: each a `task_created` in the
/// runner's form (created `base_ms + 10 i`), a `computed_outcome`, and an invoice for every
/// other one. The runner rewrites the file whole when it adds an execution; so does this.
pub fn write_eventdb(path: &Path, n: u64, base_ms: i64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    f.write_all(b"{\"records\": [")?;
    for i in 0..n {
        let exec = execution_id(i);
        let ts = base_ms + i as i64 * 10;
        if i > 0 {
            f.write_all(b",")?;
        }
        write!(
            f,
            r#"{{"messageId": "m{i}", "payload": {{"type": "task_created", "executionId": "{exec}", "timestamp": {ts}, "message": {{"taskId": "rs_{i:064}", "chainId": "43114", "blockHash": "0x{i:064x}"}}}}}},"#
        )?;
        write!(
            f,
            r#"{{"type": "computed_outcome", "executionId": "{exec}"}}"#
        )?;
        if i % 2 == 0 {
            write!(
                f,
                r#",{{"type": "invoice", "executionId": "{exec}", "invoiceId": "{}", "taskCreated_timeStamp": {ts}, "lineItem": [{{"operation": "pay", "total_steps_computed": 5000000, "peak_memory_used": 1000}}]}}"#,
                7_000_000 + i
            )?;
        }
    }
    f.write_all(b"]}")?;
    f.flush()
}

/// The debug log's entries of execution `i` at `at_s` (seconds since the epoch): its receipt,
/// the sandbox's stdout, its completion.
pub fn log_entries(i: u64, at_s: i64) -> String {
    let label = "@truebit/worker-runner-node-0x4159892b42de4d958e4c1ce1e0e59988a8d23d53:2.4.1";
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp(at_s, 0).unwrap_or_default();
    let ts = at.format("%Y-%m-%d %H:%M:%S");
    let iso = at.format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let exec = execution_id(i);
    format!(
        "{ts} info: {label} [TaskCreatedSubscriber] Message received from task_created: {{\"messageId\":\"lm{i}\",\"payload\":{{\"type\":\"task_created\",\"executionId\":\"{exec}\",\"timestamp\":\"{iso}\",\"message\":{{\"taskId\":\"py_{i:064}\",\"chainId\":\"43113\"}}}}}}\n\
         {ts} debug: {label} Command execution stdout: {{\"elapsed\":\"1843522917\",\"wasi\":{{\"exitCode\":0}},\"metering\":{{\"last\":{{\"steps\":6214530}},\"peak\":{{\"memory\":23068672}}}},\"execution\":{{\"prepare\":{{\"cached\":false}}}}}}\n\
         {ts} info: {label} Execution {exec} completed\n"
    )
}

/// Writes a debug log of at least `bytes`: the entries of executions 0, 1, … a hundred a second
/// from `base_s`. Returns how many executions it tells of.
pub fn write_log(path: &Path, bytes: u64, base_s: i64) -> std::io::Result<u64> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let (mut written, mut i) = (0u64, 0u64);
    while written < bytes {
        let text = log_entries(i, base_s + (i / 100) as i64);
        f.write_all(text.as_bytes())?;
        written += text.len() as u64;
        i += 1;
    }
    f.flush()?;
    Ok(i)
}
