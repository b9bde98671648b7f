//! The rules of contract §3 and §4 for single fields, shared by the reference validator and the
//! fast path so that both judge every field by the very same code.

use crate::rejection::{Reason, Rejection};
use chrono::{DateTime, TimeZone, Utc};

/// Payloads above this many bytes are dead-lettered as `too_large`.
pub const MAX_PAYLOAD: usize = 8 * 1024;

/// How far a node's clock may run ahead of the time JetStream stored its message.
pub const MAX_CLOCK_SKEW_SECS: i64 = 5 * 60;

/// The clock check: the envelope's timestamp as an event minute, or why it is refused.
pub(crate) fn check_time(timestamp: &str, stored_at: DateTime<Utc>) -> Result<i64, Rejection> {
    let time = DateTime::parse_from_rfc3339(timestamp)
        .map_err(|e| {
            Rejection::new(
                Reason::Clock,
                format!("timestamp {timestamp:?} is not RFC 3339: {e}"),
            )
        })?
        .with_timezone(&Utc);
    let earliest = Utc
        .with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date");
    if time < earliest {
        return Err(Rejection::new(
            Reason::Clock,
            format!("timestamp {timestamp} is before 2020-01-01"),
        ));
    }
    let skew = (time - stored_at).num_seconds();
    if time > stored_at && (time - stored_at) > chrono::Duration::seconds(MAX_CLOCK_SKEW_SECS) {
        return Err(Rejection::new(
            Reason::Clock,
            format!("timestamp {timestamp} is {skew} s after the message was stored; at most {MAX_CLOCK_SKEW_SECS} s is allowed"),
        ));
    }
    Ok(time.timestamp().div_euclid(60))
}

/// Whether `version` has major 1: the text before the first `.` is exactly `1`. Read as text,
/// not as a number, so that `"+1.0"`, `"01.0"` and `" 1"` are not taken for version 1.
pub(crate) fn major_is_one(version: &str) -> bool {
    version.split('.').next() == Some("1")
}

/// `taskType`, `operation`, `status`: lower-cased, then 1–32 characters of `[a-z0-9_-]`.
pub(crate) fn word(s: &str) -> Option<String> {
    let lower = s.to_lowercase();
    let ok = (1..=32).contains(&lower.len())
        && lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    ok.then_some(lower)
}

/// A chain id sent as a string, as the digits it stands for: 1–20 decimal digits, or such digits
/// followed by exactly `.0`, which today's monitor sends when its log held the id as a number
/// (`"137.0"` is chain `137`). Nothing else is a chain id: not `"-0"`, `"137.00"` or `"137."`.
pub(crate) fn chain_from_text(s: &str) -> Option<&str> {
    let digits = s.strip_suffix(".0").unwrap_or(s);
    let ok = (1..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then_some(digits)
}

pub(crate) fn valid_node_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}
