//! The rules of contract §3 and §4 for single fields, shared by the reference validator and the
//! fast path so that both judge every field by the very same code.

use crate::rejection::{Reason, Rejection};
use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};

/// Payloads above this many bytes are dead-lettered as `too_large`.
pub const MAX_PAYLOAD: usize = 8 * 1024;

/// How far a node's clock may run ahead of the time JetStream stored its message.
pub const MAX_CLOCK_SKEW_SECS: i64 = 5 * 60;

/// The clock check: the envelope's timestamp as an event minute, or why it is refused.
pub(crate) fn check_time(timestamp: &str, stored_at: DateTime<Utc>) -> Result<i64, Rejection> {
    checked_instant(timestamp, stored_at).map(|time| time.timestamp().div_euclid(60))
}

/// [`check_time`]'s checks, and the instant itself (to the nanosecond, floored), for an operator
/// event whose freshness and order are judged to the millisecond (contract §7).
pub(crate) fn checked_instant(
    timestamp: &str,
    stored_at: DateTime<Utc>,
) -> Result<DateTime<Utc>, Rejection> {
    let clock = |detail: String| Rejection::new(Reason::Clock, detail);
    let Instant { time, finer } = parse_date_time(timestamp).map_err(|problem| {
        clock(format!(
            "timestamp {timestamp:?} is not an RFC 3339 date-time: {problem}"
        ))
    })?;
    let earliest = Utc
        .with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date");
    if time < earliest {
        return Err(clock(format!("timestamp {timestamp} is before 2020-01-01")));
    }
    let ahead = time - stored_at;
    let limit = Duration::seconds(MAX_CLOCK_SKEW_SECS);
    if ahead > limit || (ahead == limit && finer) {
        let skew = ahead.num_seconds();
        return Err(clock(format!(
            "timestamp {timestamp} is {skew} s after the message was stored; at most {MAX_CLOCK_SKEW_SECS} s is allowed"
        )));
    }
    Ok(time)
}

/// The instant a timestamp names, to the nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Instant {
    /// Truncated to the nanosecond, which floors it: the event minute is exact.
    pub time: DateTime<Utc>,
    /// Whether fraction digits beyond the nanosecond were not all zero, i.e. the instant lies
    /// strictly after `time`: so a bound is exact, however many digits a node sends.
    pub finer: bool,
}

/// A `date-time` of RFC 3339 §5.6, read by its ABNF and nothing looser:
///
/// ```text
/// date-time = full-date ("T" / "t") full-time
/// full-date = 4DIGIT "-" 2DIGIT "-" 2DIGIT        ; a day that exists
/// full-time = 2DIGIT ":" 2DIGIT ":" 2DIGIT ["." 1*DIGIT] ("Z" / "z" / ("+" / "-") 2DIGIT ":" 2DIGIT)
/// ```
///
/// Hours 00–23, minutes 00–59, seconds 00–59: the ABNF's leap second 60 is refused, as contract
/// §4 says, since no node's clock needs it and UTC arithmetic cannot place it. chrono's
/// `parse_from_rfc3339` is not this grammar (it takes a space for the `T`, and second 60), so it
/// is only used for the arithmetic. The error is a phrase for the operator.
pub(crate) fn parse_date_time(s: &str) -> Result<Instant, &'static str> {
    let b = s.as_bytes();
    let number = |from: usize, len: usize| -> Option<u32> {
        let digits = b.get(from..from + len)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let at = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));

    let (Some(year), Some(month), Some(day)) = (number(0, 4), number(5, 2), number(8, 2)) else {
        return Err("it must start with a date YYYY-MM-DD");
    };
    if !at(4, b"-") || !at(7, b"-") {
        return Err("it must start with a date YYYY-MM-DD");
    }
    if !(1..=12).contains(&month) {
        return Err("the month must be 01-12");
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)
        .ok_or("that day does not exist in that month")?;
    if !at(10, b"Tt") {
        return Err("the date and the time must be separated by 'T' or 't'");
    }
    let (Some(hour), Some(minute), Some(second)) = (number(11, 2), number(14, 2), number(17, 2))
    else {
        return Err("the time must be HH:MM:SS");
    };
    if !at(13, b":") || !at(16, b":") {
        return Err("the time must be HH:MM:SS");
    }
    if hour > 23 || minute > 59 {
        return Err("the hour must be 00-23 and the minute 00-59");
    }
    if second > 59 {
        return Err("the second must be 00-59 (a leap second 60 is not accepted)");
    }

    let mut i = 19;
    let mut nanos = 0;
    let mut finer = false;
    if at(i, b".") {
        i += 1;
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err("a '.' after the seconds must be followed by at least one digit");
        }
        for (k, d) in b[i..i + digits].iter().enumerate() {
            if k < 9 {
                nanos = nanos * 10 + u32::from(d - b'0');
            } else {
                finer |= *d != b'0';
            }
        }
        nanos *= 10u32.pow(9u32.saturating_sub(digits as u32));
        i += digits;
    }

    let offset_seconds = if at(i, b"Zz") {
        i += 1;
        0
    } else if at(i, b"+-") {
        let sign = if b[i] == b'-' { -1 } else { 1 };
        let (Some(h), Some(m)) = (number(i + 1, 2), number(i + 4, 2)) else {
            return Err("the offset must be 'Z', 'z' or +HH:MM / -HH:MM");
        };
        if !at(i + 3, b":") {
            return Err("the offset must be 'Z', 'z' or +HH:MM / -HH:MM");
        }
        if h > 23 || m > 59 {
            return Err("the offset's hour must be 00-23 and its minute 00-59");
        }
        i += 6;
        sign * i64::from(h * 3600 + m * 60)
    } else {
        return Err("the time must end with 'Z', 'z' or an offset +HH:MM / -HH:MM");
    };
    if i != b.len() {
        return Err("there is more text after the offset");
    }

    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)
        .ok_or("the time must be HH:MM:SS")?;
    let local = date.and_time(time).and_utc();
    let time = local
        .checked_sub_signed(Duration::seconds(offset_seconds))
        .ok_or("the instant is out of range")?;
    Ok(Instant { time, finer })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn date_times_by_the_abnf_are_read_to_the_nanosecond() {
        for (text, instant) in [
            ("2026-11-02T08:00:00Z", "2026-11-02T08:00:00Z"),
            ("2026-11-02t08:00:00z", "2026-11-02T08:00:00Z"),
            ("2026-11-02T08:00:00.5Z", "2026-11-02T08:00:00.5Z"),
            (
                "2026-11-02T08:00:00.123456789Z",
                "2026-11-02T08:00:00.123456789Z",
            ),
            ("2026-11-02T13:30:00+05:30", "2026-11-02T08:00:00Z"),
            ("2026-11-02T00:15:00-08:00", "2026-11-02T08:15:00Z"),
            ("2026-11-02T08:00:00-00:00", "2026-11-02T08:00:00Z"),
            ("2026-11-02T23:59:59+23:59", "2026-11-02T00:00:59Z"),
            ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"),
            ("2000-02-29T00:00:00Z", "2000-02-29T00:00:00Z"),
            ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00Z"),
        ] {
            let read = parse_date_time(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                read,
                Instant {
                    time: utc(instant),
                    finer: false
                },
                "{text}"
            );
        }
    }

    #[test]
    fn fraction_digits_beyond_the_nanosecond_are_kept_as_a_flag() {
        let read = parse_date_time("2026-11-02T08:00:00.1234567891Z").unwrap();
        assert_eq!(read.time, utc("2026-11-02T08:00:00.123456789Z"));
        assert!(read.finer);
        let zeros = parse_date_time("2026-11-02T08:00:00.123456789000000Z").unwrap();
        assert!(!zeros.finer, "trailing zeros name the same instant");
    }

    #[test]
    fn anything_looser_than_the_abnf_is_refused_with_the_reason() {
        for (text, problem) in [
            ("2026-11-02 08:00:00Z", "separated by 'T'"),
            ("2026-11-02_08:00:00Z", "separated by 'T'"),
            ("2026-11-02T08:00:60Z", "leap second"),
            ("2016-12-31T23:59:60Z", "leap second"),
            ("2026-02-30T00:00:00Z", "does not exist"),
            ("2026-02-29T00:00:00Z", "does not exist"),
            ("2100-02-29T00:00:00Z", "does not exist"),
            ("2026-04-31T00:00:00Z", "does not exist"),
            ("2026-11-00T00:00:00Z", "does not exist"),
            ("2026-13-02T00:00:00Z", "month"),
            ("2026-00-02T00:00:00Z", "month"),
            ("2026-11-02T24:00:00Z", "hour"),
            ("2026-11-02T08:60:00Z", "minute"),
            ("2026-11-02T08:00:00.Z", "at least one digit"),
            ("2026-11-02T08:00:00", "must end with"),
            ("2026-11-02T08:00:00UTC", "must end with"),
            ("2026-11-02T08:00:00+0530", "offset"),
            ("2026-11-02T08:00:00+05", "offset"),
            ("2026-11-02T08:00:00+24:00", "offset's hour"),
            ("2026-11-02T08:00:00+05:60", "offset's hour"),
            ("2026-11-02T08:00:00Zx", "more text"),
            ("2026-11-02T08:00:00Z ", "more text"),
            (" 2026-11-02T08:00:00Z", "start with a date"),
            ("26-11-02T08:00:00Z", "start with a date"),
            ("2026-11-2T08:00:00Z", "start with a date"),
            ("+2026-11-02T08:00:00Z", "start with a date"),
            ("2026/11/02T08:00:00Z", "start with a date"),
            ("2026-11-02T8:00:00Z", "HH:MM:SS"),
            ("2026-11-02T08:00Z", "HH:MM:SS"),
            ("2026-11-02T08-00-00Z", "HH:MM:SS"),
            ("2026-11-02T08:00:00,5Z", "must end with"),
            ("２026-11-02T08:00:00Z", "start with a date"),
            ("", "start with a date"),
        ] {
            let e = parse_date_time(text).expect_err(text);
            assert!(e.contains(problem), "{text:?}: {e}");
        }
    }
}
