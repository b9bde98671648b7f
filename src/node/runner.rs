//! The runner's raw formats, read as `tests/fixtures/runner-node/README.md` describes them: EventDB
//! records by where their `type` sits, and log entries by the monitor's line kinds. Pure: bytes
//! and text in, records out. Nothing here decides what leaves the node; [`super::tracker`] does.

use serde_json::Value;

/// A task's creation, from an EventDB record (runner or plan form) or its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCreated {
    pub execution_id: String,
    /// The language prefix of the runner's `taskId`, the only part of it that leaves.
    pub task_type: Option<String>,
    pub chain_id: Option<String>,
    /// `payload.timestamp` (ISO or epoch ms), in seconds since the epoch.
    pub received_at: Option<i64>,
}

/// An invoice, from an EventDB record or its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceRecord {
    pub invoice_id: String,
    pub execution_id: Option<String>,
    /// `taskCreated_timeStamp` (epoch ms or ISO), in seconds.
    pub task_created_at: Option<i64>,
    /// `lineItem[0]`: steps, peak memory in bytes, operation.
    pub steps: Option<u64>,
    pub memory: Option<u64>,
    pub operation: Option<String>,
}

/// One EventDB record of a kind the agent reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Task(TaskCreated),
    Outcome { execution_id: String },
    Invoice(InvoiceRecord),
}

impl Record {
    /// The record's unique key: re-reading the file adds only the keys not seen before.
    pub fn key(&self) -> String {
        match self {
            Record::Task(t) => format!("task:{}", t.execution_id),
            Record::Outcome { execution_id } => format!("outcome:{execution_id}"),
            Record::Invoice(i) => format!("invoice:{}", i.invoice_id),
        }
    }
}

/// Reads a whole EventDB file. `Err` when it is not (yet) the JSON object `{"records": [...]}`.
pub fn parse_eventdb(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    stream_eventdb(bytes, &mut |r| {
        out.push(r);
        Ok(())
    })?;
    Ok(out)
}

/// Reads an EventDB a record at a time, giving `each` every record of a kind the agent reads:
/// the file, which holds the runner's whole history, is never held whole. `Err` when it is not
/// (yet) the JSON object `{"records": [...]}` (a file caught half-written: the records before
/// the cut were given, each complete, and the file is read again), or when `each` said stop.
pub fn stream_eventdb(
    reader: impl std::io::Read,
    each: &mut dyn FnMut(Record) -> Result<(), String>,
) -> Result<(), String> {
    use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
    struct Doc<'a>(&'a mut dyn FnMut(Record) -> Result<(), String>);
    struct Records<'a>(&'a mut dyn FnMut(Record) -> Result<(), String>);
    impl<'de> Visitor<'de> for Doc<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object with a \"records\" array")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut found = false;
            while let Some(key) = map.next_key::<String>()? {
                if key == "records" && !found {
                    map.next_value_seed(Records(&mut *self.0))?;
                    found = true;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            if found {
                Ok(())
            } else {
                Err(A::Error::custom("no \"records\" array"))
            }
        }
    }
    impl<'de> DeserializeSeed<'de> for Records<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Records<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a \"records\" array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(v) = seq.next_element::<Value>()? {
                if let Some(r) = record(&v) {
                    (self.0)(r).map_err(A::Error::custom)?;
                }
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_reader(reader);
    serde::Deserializer::deserialize_map(&mut de, Doc(each)).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())
}

/// One record, by where its `type` sits; `None` for any other kind.
pub fn record(v: &Value) -> Option<Record> {
    let top = v.get("type").and_then(Value::as_str);
    let payload = v.get("payload").filter(|p| p.is_object());
    match (top, payload) {
        (None, Some(p)) if p.get("type").and_then(Value::as_str) == Some("task_created") => {
            let message = p.get("message").unwrap_or(&Value::Null);
            Some(Record::Task(TaskCreated {
                execution_id: id(p.get("executionId"))?,
                task_type: task_type(message.get("taskId")),
                chain_id: chain_id(message.get("chainId")),
                received_at: time(p.get("timestamp")),
            }))
        }
        (Some("task_created"), None) => Some(Record::Task(TaskCreated {
            execution_id: id(v.get("executionId"))?,
            task_type: task_type(v.get("taskId")),
            chain_id: chain_id(v.get("chainId")),
            received_at: time(v.get("timestamp")),
        })),
        (Some("computed_outcome"), _) => Some(Record::Outcome {
            execution_id: id(v.get("executionId"))?,
        }),
        (Some("invoice"), _) => {
            let item = v
                .get("lineItem")
                .and_then(Value::as_array)
                .and_then(|items| items.first())
                .unwrap_or(&Value::Null);
            Some(Record::Invoice(InvoiceRecord {
                invoice_id: id(v.get("invoiceId"))?,
                execution_id: id(v.get("executionId")),
                task_created_at: time(v.get("taskCreated_timeStamp")),
                steps: count(item.get("total_steps_computed")),
                memory: count(item.get("peak_memory_used")),
                operation: item.get("operation").and_then(Value::as_str).and_then(word),
            }))
        }
        _ => None,
    }
}

/// An identifier: a non-empty string, or a number written as one (`invoiceId` is numeric).
fn id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn task_type(task_id: Option<&Value>) -> Option<String> {
    truebit_streams::anonymize::task_type(task_id?.as_str()?).map(str::to_string)
}

/// `chainId` as the contract takes it: 1–20 digits (a number, or `"137.0"`, normalised).
fn chain_id(v: Option<&Value>) -> Option<String> {
    let text = match v? {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.as_u64()?.to_string(),
        _ => return None,
    };
    let digits = text.strip_suffix(".0").unwrap_or(&text);
    (!digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.to_string())
}

/// `taskType`, `operation`, `status`: 1–32 of `[a-z0-9_-]` after lower-casing, else not sent.
fn word(s: &str) -> Option<String> {
    let w = s.trim().to_ascii_lowercase();
    let ok = (1..=32).contains(&w.len())
        && w.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    ok.then_some(w)
}

/// A non-negative integer, as a JSON number or a string of digits.
fn count(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A time as seconds since the epoch: an ISO-8601 string or epoch milliseconds (number or text).
pub fn time(v: Option<&Value>) -> Option<i64> {
    let ms = match v? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))?,
        Value::String(s) => {
            let s = s.trim();
            if let Ok(ms) = s.parse::<i64>() {
                ms
            } else {
                return chrono::DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|t| t.timestamp());
            }
        }
        _ => return None,
    };
    Some(ms.div_euclid(1000))
}

/// The figures of one `Command execution stdout:` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metering {
    pub elapsed_ns: Option<u128>,
    pub exit_code: Option<i64>,
    pub steps: Option<u64>,
    pub peak_memory: Option<u64>,
    pub cached: Option<bool>,
}

/// What a log entry says, by the first kind that matches in the README's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    Stdout(Metering),
    Stderr,
    TaskReceived(TaskCreated),
    Invoice(InvoiceRecord),
    Completed(String),
    SlotTaken(u32, u32),
    SlotFreed(u32, u32),
    Other,
}

impl LineKind {
    /// The name `expected.json` counts it under.
    pub fn name(&self) -> &'static str {
        match self {
            LineKind::Stdout(_) => "execution_stdout",
            LineKind::Stderr => "execution_stderr",
            LineKind::TaskReceived(_) => "task_received",
            LineKind::Invoice(_) => "invoice",
            LineKind::Completed(_) => "task_completed",
            LineKind::SlotTaken(..) => "slot_acquire",
            LineKind::SlotFreed(..) => "slot_release",
            LineKind::Other => "other",
        }
    }
}

/// One log entry: a header line and the continuation lines under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The header's time, read as UTC, in seconds since the epoch.
    pub at: i64,
    /// The message after the label, then every continuation line, joined with `\n`.
    pub text: String,
}

/// A physical line without ANSI colour codes and a leading `runner-node | ` (as compose prints).
pub fn clean_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("\x1b[") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(after.len());
        rest = if after[end..].starts_with('m') {
            &after[end + 1..]
        } else {
            &after[end..]
        };
    }
    out.push_str(rest);
    let trimmed = out.trim_end_matches(['\r', '\n']);
    if let Some(i) = trimmed.find('|') {
        let head = trimmed[..i].trim();
        if head.ends_with("runner-node") && !head.contains(' ') {
            return trimmed[i + 1..]
                .strip_prefix(' ')
                .unwrap_or(&trimmed[i + 1..])
                .into();
        }
    }
    trimmed.to_string()
}

/// The header of a cleaned line that begins an entry: its time and its message. Any level is
/// accepted; a line that does not start with `YYYY-MM-DD HH:MM:SS` continues the entry above.
pub fn header(line: &str) -> Option<(i64, &str)> {
    let stamp = line.get(..19)?;
    let at = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S")
        .ok()?
        .and_utc()
        .timestamp();
    let rest = line[19..].trim_start();
    // `<level>: @truebit/worker-runner-node[-0x…]:<version> <message>`
    let message = match rest.split_once(": ") {
        Some((level, after)) if level.bytes().all(|b| b.is_ascii_alphabetic()) => {
            match after.strip_prefix('@') {
                Some(labelled) => labelled.split_once(' ').map_or("", |(_, m)| m),
                None => after,
            }
        }
        _ => rest,
    };
    Some((at, message))
}

/// Most bytes of one joined entry. A runner's entry is a line or a few (a stack trace, a
/// pretty-printed object); past this, its further lines are cut, with a warning, so that a log
/// without headers (or a binary file named `*.log`) cannot grow one entry without end. Every
/// line the agent reads an event from is a header line or near it.
pub const ENTRY_MAX: usize = 1 << 20;

/// Groups cleaned lines into entries; lines before the first header are dropped.
#[derive(Debug, Default)]
pub struct Entries {
    current: Option<Entry>,
    /// The entry in hand was cut at [`ENTRY_MAX`].
    cut: bool,
}

impl Entries {
    /// Takes one physical line; returns the entry it closed, if it began a new one.
    pub fn push(&mut self, raw: &str) -> Option<Entry> {
        let line = clean_line(raw);
        match header(&line) {
            Some((at, message)) => {
                self.cut = false;
                let mut text = message.to_string();
                text.truncate(floor_char_boundary(&text, ENTRY_MAX));
                self.current.replace(Entry { at, text })
            }
            None => {
                if let Some(e) = &mut self.current {
                    if e.text.len() + 1 + line.len() > ENTRY_MAX {
                        if !self.cut {
                            tracing::warn!(at = e.at, max_bytes = ENTRY_MAX, "a log entry longer than the agent keeps: its further lines are cut");
                            self.cut = true;
                        }
                    } else {
                        e.text.push('\n');
                        e.text.push_str(&line);
                    }
                }
                None
            }
        }
    }

    /// The entry in hand, once nothing more can follow it.
    pub fn finish(&mut self) -> Option<Entry> {
        self.current.take()
    }

    pub fn pending(&self) -> bool {
        self.current.is_some()
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// What an entry says, by the README's line kinds (first match wins).
pub fn classify(entry: &Entry) -> LineKind {
    let text = &entry.text;
    let first_line = text.lines().next().unwrap_or("");
    if let Some(i) = text.find("Command execution stdout:") {
        let after = &text[i..];
        let json = after
            .find('{')
            .and_then(|j| serde_json::from_str::<Value>(after[j..].trim_end()).ok());
        return LineKind::Stdout(json.map(|v| metering(&v)).unwrap_or_default());
    }
    if text.contains("Command execution stderr:") {
        return LineKind::Stderr;
    }
    if let Some(i) = first_line.find("Message received from task_created:") {
        let json = &first_line[i + "Message received from task_created:".len()..];
        if let Some(Record::Task(t)) = serde_json::from_str::<Value>(json.trim())
            .ok()
            .as_ref()
            .and_then(record)
        {
            return LineKind::TaskReceived(t);
        }
    }
    if first_line.contains("InvoiceSubscriber") {
        if let Some(Record::Invoice(inv)) = first_line
            .find('{')
            .and_then(|j| serde_json::from_str::<Value>(first_line[j..].trim()).ok())
            .as_ref()
            .and_then(record)
        {
            return LineKind::Invoice(inv);
        }
    }
    if let Some(id) = completed(first_line) {
        return LineKind::Completed(id);
    }
    if let Some((a, b)) = after_then_pair(first_line, "Using slot ", "") {
        return LineKind::SlotTaken(a, b);
    }
    if let Some((a, b)) = after_then_pair(first_line, "Released slot (", " now active)") {
        return LineKind::SlotFreed(a, b);
    }
    LineKind::Other
}

/// `Execution <id> completed`: the id, lowercase hex and dashes.
fn completed(line: &str) -> Option<String> {
    let mut rest = line;
    while let Some(i) = rest.find("Execution ") {
        let after = &rest[i + "Execution ".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_digit() || ('a'..='f').contains(&c) || c == '-'))
            .unwrap_or(after.len());
        if end > 0 && after[end..].starts_with(" completed") {
            return Some(after[..end].to_string());
        }
        rest = after;
    }
    None
}

/// `<marker><a>/<b><tail>`.
fn after_then_pair(line: &str, marker: &str, tail: &str) -> Option<(u32, u32)> {
    let after = &line[line.find(marker)? + marker.len()..];
    let (a, rest) = after.split_once('/')?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[end..].starts_with(tail).then_some(())?;
    Some((a.parse().ok()?, rest[..end].parse().ok()?))
}

fn metering(v: &Value) -> Metering {
    let at = |path: &[&str]| path.iter().try_fold(v, |v, k| v.get(k));
    Metering {
        elapsed_ns: at(&["elapsed"]).and_then(|e| match e {
            Value::String(s) => s.trim().parse().ok(),
            Value::Number(n) => n.as_u64().map(u128::from),
            _ => None,
        }),
        exit_code: at(&["wasi", "exitCode"]).and_then(Value::as_i64),
        steps: count(at(&["metering", "last", "steps"])),
        peak_memory: count(at(&["metering", "peak", "memory"])),
        cached: at(&["execution", "prepare", "cached"]).and_then(Value::as_bool),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_are_recognised_by_where_their_type_sits() {
        let runner = json!({"messageId": "m", "payload": {"type": "task_created", "executionId": "e1",
            "timestamp": 1796288045873i64, "message": {"taskId": "rs_ab", "chainId": 137}}});
        assert_eq!(
            record(&runner),
            Some(Record::Task(TaskCreated {
                execution_id: "e1".into(),
                task_type: Some("rs".into()),
                chain_id: Some("137".into()),
                received_at: Some(1_796_288_045),
            }))
        );
        let plan = json!({"type": "task_created", "executionId": "e2", "taskId": "0xabc", "chainId": "1.0"});
        let Some(Record::Task(t)) = record(&plan) else {
            panic!()
        };
        assert_eq!(
            (t.task_type, t.chain_id, t.received_at),
            (None, Some("1".into()), None)
        );
        let both = json!({"type": "task_created", "executionId": "e3", "payload": {"type": "task_created"}});
        assert_eq!(
            record(&both),
            None,
            "a top-level type and a payload is neither form"
        );
        let other = json!({"payload": {"type": "solutions_revealed", "executionId": "e4"}});
        assert_eq!(record(&other), None);
        let inv = json!({"type": "invoice", "invoiceId": 17, "executionId": "e1",
            "taskCreated_timeStamp": "2026-12-02T08:12:44.310Z",
            "lineItem": [{"operation": "Charge", "total_steps_computed": "12", "peak_memory_used": 5e3}]});
        let Some(Record::Invoice(i)) = record(&inv) else {
            panic!()
        };
        assert_eq!(i.invoice_id, "17");
        assert_eq!((i.steps, i.memory), (Some(12), Some(5000)));
        assert_eq!(i.operation.as_deref(), Some("charge"));
        assert_eq!(i.task_created_at, Some(1_796_199_164));
        assert!(parse_eventdb(br#"{"records": [{"type": "computed_outc"#).is_err());
        assert!(parse_eventdb(br#"{"other": []}"#).is_err());
    }

    #[test]
    fn entries_join_continuation_lines_and_strip_colours_and_prefixes() {
        let mut e = Entries::default();
        let lines = [
            "noise before any header",
            "runner-node | \x1b[32m2026-12-03 11:32:48\x1b[0m debug: @truebit/worker-runner-node:2.4.1 Command execution stdout: {",
            "runner-node |   \"elapsed\": 5,",
            "runner-node |   \"wasi\": { \"exitCode\": 0 } }",
            "2026-12-03 11:32:49 trace: @truebit/worker-runner-node-0xabc:2.4.1 Execution 0a-1 completed",
        ];
        let mut closed: Vec<Entry> = lines.iter().filter_map(|l| e.push(l)).collect();
        closed.extend(e.finish());
        assert_eq!(closed.len(), 2);
        assert_eq!(
            classify(&closed[0]),
            LineKind::Stdout(Metering {
                elapsed_ns: Some(5),
                exit_code: Some(0),
                ..Metering::default()
            })
        );
        assert_eq!(classify(&closed[1]), LineKind::Completed("0a-1".into()));
        assert_eq!(closed[1].at - closed[0].at, 1);
    }

    #[test]
    fn a_joined_entry_is_cut_at_its_bound_and_the_next_one_is_whole() {
        let mut e = Entries::default();
        e.push("2026-12-03 11:32:48 debug: @truebit/worker-runner-node:2.4.1 a dump:");
        let line = "x".repeat(1000);
        for _ in 0..3 * ENTRY_MAX / 1000 {
            assert!(e.push(&line).is_none());
        }
        let cut = e
            .push("2026-12-03 11:32:49 info: @truebit/worker-runner-node:2.4.1 Execution 0a-1 completed")
            .unwrap();
        assert!(cut.text.len() <= ENTRY_MAX, "{}", cut.text.len());
        assert!(cut.text.len() > ENTRY_MAX - 1002);
        let next = e.finish().unwrap();
        assert_eq!(classify(&next), LineKind::Completed("0a-1".into()));
    }

    #[test]
    fn slot_lines_and_semaphore_invoice_lines_are_slots() {
        let entry = |t: &str| Entry {
            at: 0,
            text: t.into(),
        };
        assert_eq!(
            classify(&entry(
                "[Semaphore InvoiceSubscriber] processing started. Using slot 1/4"
            )),
            LineKind::SlotTaken(1, 4)
        );
        assert_eq!(
            classify(&entry(
                "[Semaphore TaskCreatedSubscriber] processing completed. Released slot (0/4 now active)"
            )),
            LineKind::SlotFreed(0, 4)
        );
        assert_eq!(classify(&entry("Execution e1 failed")), LineKind::Other);
    }
}
