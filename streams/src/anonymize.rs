//! The producer side of the wire contract (§3, §10): what a node may say about the raw figures
//! it holds, and nothing more. Pure, so that every agent anonymizes the same way and a test can
//! pin each rule.
//!
//! - Identifiers leave only as `sha256(FEDERATION_SALT + id)`, one salt for the whole network,
//!   over the runner's `executionId` for tasks (its `taskId` names the deployed task and repeats
//!   across runs) and over `invoiceId` for invoices, so that the aggregator deduplicates across
//!   nodes and links invoices to tasks.
//! - Figures leave only as §3's bucket labels; each lower bound is inclusive.
//! - Times leave floored to 5 minutes.
//! - Every message carries a `Nats-Msg-Id` derived from the event, so that a restart or a re-read
//!   file publishes nothing twice.

use crate::event::{Digest, Event, EventKind, Minute};
use crate::labels::{ActiveTasks, ExecutionTime, Magnitude, Memory, TotalTasks};
use sha2::{Digest as _, Sha256};

/// The federation salt: one for the whole network, never empty.
#[derive(Clone, PartialEq, Eq)]
pub struct Salt(String);

impl std::fmt::Debug for Salt {
    // A salt is not a secret key, but it keeps hashes from being guessed from public ids: it
    // stays out of logs anyway.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(…)")
    }
}

impl Salt {
    /// `None` for an empty (or all-blank) salt, which would hash nothing away.
    pub fn new(salt: &str) -> Option<Salt> {
        (!salt.trim().is_empty()).then(|| Salt(salt.to_string()))
    }

    fn hash(&self, id: &str) -> Digest {
        let mut h = Sha256::new();
        h.update(self.0.as_bytes());
        h.update(id.as_bytes());
        Digest(h.finalize().into())
    }

    /// `taskIdHash`: the hash of one execution, `sha256(salt + executionId)`.
    pub fn task(&self, execution_id: &str) -> Digest {
        self.hash(execution_id)
    }

    /// `invoiceIdHash`: `sha256(salt + invoiceId)`.
    pub fn invoice(&self, invoice_id: &str) -> Digest {
        self.hash(invoice_id)
    }
}

/// The execution-time bucket of a run that took `nanos` nanoseconds.
pub fn execution_time(nanos: u128) -> ExecutionTime {
    const MS: u128 = 1_000_000;
    match nanos {
        n if n < 100 * MS => ExecutionTime::Under100ms,
        n if n < 500 * MS => ExecutionTime::To500ms,
        n if n < 1_000 * MS => ExecutionTime::To1s,
        n if n < 5_000 * MS => ExecutionTime::To5s,
        n if n < 10_000 * MS => ExecutionTime::To10s,
        n if n < 30_000 * MS => ExecutionTime::To30s,
        n if n < 60_000 * MS => ExecutionTime::To1m,
        _ => ExecutionTime::Over1m,
    }
}

/// The bucket of an amount of gas used or of steps computed.
pub fn magnitude(amount: u64) -> Magnitude {
    match amount {
        n if n < 100_000 => Magnitude::Under100K,
        n if n < 1_000_000 => Magnitude::To1M,
        n if n < 10_000_000 => Magnitude::To10M,
        n if n < 100_000_000 => Magnitude::To100M,
        _ => Magnitude::Over100M,
    }
}

/// The bucket of a peak memory of `bytes` (MB = 2^20 bytes).
pub fn memory(bytes: u64) -> Memory {
    const MB: u64 = 1 << 20;
    match bytes {
        b if b < 64 * MB => Memory::Under64MB,
        b if b < 256 * MB => Memory::To256MB,
        b if b < 1024 * MB => Memory::To1GB,
        _ => Memory::Over1GB,
    }
}

/// The bucket of the tasks a node runs right now.
pub fn active_tasks(n: u64) -> ActiveTasks {
    match n {
        0 => ActiveTasks::Zero,
        1 => ActiveTasks::One,
        2..=3 => ActiveTasks::To3,
        4..=5 => ActiveTasks::To5,
        _ => ActiveTasks::Over5,
    }
}

/// The bucket of the tasks a node has run in all (`1-10` holds 1 to 9: lower bounds inclusive).
pub fn total_tasks(n: u64) -> TotalTasks {
    match n {
        0 => TotalTasks::Zero,
        1..=9 => TotalTasks::To10,
        10..=49 => TotalTasks::To50,
        50..=99 => TotalTasks::To100,
        100..=499 => TotalTasks::To500,
        500..=999 => TotalTasks::To1K,
        _ => TotalTasks::Over1K,
    }
}

/// A time (seconds since the epoch) floored to 5 minutes, as the minute the envelope carries.
pub fn floor_5min(epoch_secs: i64) -> Minute {
    let minute = epoch_secs.div_euclid(60);
    minute - minute.rem_euclid(5)
}

/// `taskType`: the language prefix of the runner's `taskId` (`rs`, `js`, `py`); else not sent.
pub fn task_type(task_id: &str) -> Option<&'static str> {
    ["rs", "js", "py"]
        .into_iter()
        .find(|p| task_id.strip_prefix(p).is_some_and(|r| r.starts_with('_')))
}

/// The `Nats-Msg-Id` of a task or invoice event: `<nodeId>:<type>:<hash>`, so that two nodes
/// reporting one execution both land, and one node never twice. Heartbeats, joins and leaves are
/// numbered instead, by a counter the node keeps (contract §10; the agent's `State`): their
/// 5-minute timestamp, given here for them, repeats within JetStream's duplicate window.
pub fn msg_id(event: &Event) -> String {
    let key = match &event.kind {
        EventKind::TaskReceived { task, .. } | EventKind::TaskCompleted { task, .. } => {
            task.to_hex()
        }
        EventKind::InvoiceCreated(inv) => inv.invoice.to_hex(),
        _ => crate::encode::minute_timestamp(event.minute),
    };
    format!("{}:{}:{key}", event.node_id, event.type_name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Outcome;

    #[test]
    fn hashes_are_salted_sha256_of_the_id_in_lowercase_hex() {
        let salt = Salt::new("s3cret").unwrap();
        // printf 's3cretabc' | sha256sum
        assert_eq!(
            salt.task("abc").to_hex(),
            "56323e17c718ac66fcb427a5c6a99a32abbe880d89a8b0bc67ff3782de6e90e4"
        );
        let direct: [u8; 32] = Sha256::digest(b"s3cretabc").into();
        assert_eq!(salt.task("abc"), Digest(direct));
        assert_eq!(salt.invoice("abc"), salt.task("abc"), "one rule for both");
        assert_ne!(Salt::new("other").unwrap().task("abc"), salt.task("abc"));
        assert!(Salt::new("").is_none() && Salt::new("  ").is_none());
        assert!(!format!("{salt:?}").contains("s3cret"));
    }

    #[test]
    fn execution_time_at_every_edge() {
        let ms = |m: u128| m * 1_000_000;
        let cases = [
            (0, "<100ms"),
            (ms(100) - 1, "<100ms"),
            (ms(100), "100-500ms"),
            (ms(500) - 1, "100-500ms"),
            (ms(500), "500ms-1s"),
            (ms(1000) - 1, "500ms-1s"),
            (ms(1000), "1-5s"),
            (ms(5000) - 1, "1-5s"),
            (ms(5000), "5-10s"),
            (ms(10_000) - 1, "5-10s"),
            (ms(10_000), "10-30s"),
            (ms(30_000) - 1, "10-30s"),
            (ms(30_000), "30s-1m"),
            (ms(60_000) - 1, "30s-1m"),
            (ms(60_000), ">1m"),
            (u128::MAX, ">1m"),
        ];
        for (n, label) in cases {
            assert_eq!(execution_time(n).label(), label, "{n} ns");
        }
    }

    #[test]
    fn magnitude_at_every_edge() {
        let cases = [
            (0, "<100K"),
            (99_999, "<100K"),
            (100_000, "100K-1M"),
            (999_999, "100K-1M"),
            (1_000_000, "1M-10M"),
            (9_999_999, "1M-10M"),
            (10_000_000, "10M-100M"),
            (99_999_999, "10M-100M"),
            (100_000_000, ">100M"),
            (u64::MAX, ">100M"),
        ];
        for (n, label) in cases {
            assert_eq!(magnitude(n).label(), label, "{n}");
        }
    }

    #[test]
    fn memory_at_every_edge() {
        let mb = |m: u64| m << 20;
        let cases = [
            (0, "<64MB"),
            (mb(64) - 1, "<64MB"),
            (mb(64), "64-256MB"),
            (mb(256) - 1, "64-256MB"),
            (mb(256), "256MB-1GB"),
            (mb(1024) - 1, "256MB-1GB"),
            (mb(1024), ">1GB"),
            (u64::MAX, ">1GB"),
        ];
        for (n, label) in cases {
            assert_eq!(memory(n).label(), label, "{n} bytes");
        }
    }

    #[test]
    fn node_counts_at_every_edge() {
        let active = [(0, "0"), (1, "1"), (2, "2-3"), (3, "2-3"), (4, "4-5")];
        for (n, label) in active.into_iter().chain([(5, "4-5"), (6, ">5")]) {
            assert_eq!(active_tasks(n).label(), label, "{n} active");
        }
        let total = [
            (0, "0"),
            (1, "1-10"),
            (9, "1-10"),
            (10, "10-50"),
            (49, "10-50"),
            (50, "50-100"),
            (99, "50-100"),
            (100, "100-500"),
            (499, "100-500"),
            (500, "500-1K"),
            (999, "500-1K"),
            (1000, ">1K"),
            (u64::MAX, ">1K"),
        ];
        for (n, label) in total {
            assert_eq!(total_tasks(n).label(), label, "{n} total");
        }
    }

    #[test]
    fn times_floor_to_five_minutes_before_the_epoch_too() {
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp();
        let minute = |s: &str| t(s) / 60;
        assert_eq!(
            floor_5min(t("2026-12-03T09:14:05Z")),
            minute("2026-12-03T09:10:00Z")
        );
        assert_eq!(
            floor_5min(t("2026-12-03T09:15:00Z")),
            minute("2026-12-03T09:15:00Z")
        );
        assert_eq!(
            floor_5min(t("2026-12-03T09:19:59Z")),
            minute("2026-12-03T09:15:00Z")
        );
        assert_eq!(floor_5min(-1), -5);
    }

    #[test]
    fn task_types_are_the_language_prefix_only() {
        assert_eq!(task_type("rs_d9e5"), Some("rs"));
        assert_eq!(task_type("js_8fcf"), Some("js"));
        assert_eq!(task_type("py_04fd"), Some("py"));
        assert_eq!(task_type("0x1234"), None);
        assert_eq!(task_type("rsx_1"), None);
        assert_eq!(task_type("go_1"), None);
    }

    #[test]
    fn message_ids_name_the_node_the_type_and_the_hash_or_the_time() {
        let salt = Salt::new("s").unwrap();
        let task = salt.task("e1");
        let completed = Event {
            node_id: "node-a".into(),
            minute: floor_5min(1_796_289_245),
            kind: EventKind::TaskCompleted {
                task,
                outcome: Outcome::default(),
            },
        };
        assert_eq!(
            msg_id(&completed),
            format!("node-a:task_completed:{}", task.to_hex())
        );
        let hb = Event {
            node_id: "node-a".into(),
            minute: completed.minute,
            kind: EventKind::NodeJoined { status: None },
        };
        assert_eq!(msg_id(&hb), "node-a:node_joined:2026-12-03T09:10:00.000Z");
    }
}
