//! Validated events: what a node said, with every field checked and nothing else kept.

use crate::labels::{ActiveTasks, Continent, ExecutionTime, Magnitude, Memory, TotalTasks};
use std::fmt;

/// Minutes since the Unix epoch: the resolution of every time in the projections.
pub type Minute = i64;

/// The current minute: the snapshot time `T` of contract §5.1 when no `--at` is given.
pub fn now_minute() -> Minute {
    chrono::Utc::now().timestamp().div_euclid(60)
}

/// An RFC 3339 time, floored to the minute (`--at`, `at=`); the error says how to write one.
pub fn parse_minute(text: &str) -> Result<Minute, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp().div_euclid(60))
        .map_err(|e| {
            format!("{text:?} is not an RFC 3339 time ({e}); write it like 2026-11-25T10:30:00Z")
        })
}

/// A SHA-256 digest as nodes send it: 64 lowercase hex characters on the wire, 32 bytes here.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Parses exactly 64 lowercase hex characters.
    pub fn parse_hex(s: &str) -> Option<Digest> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(Digest(out))
    }

    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A location bucket: latitude and longitude in tenths of a degree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub lat_tenths: i16,
    pub lon_tenths: i16,
}

impl Location {
    /// Parses `"lat,lon"` with exactly one decimal each, latitude within ±90 and longitude
    /// within ±180.
    pub fn parse(s: &str) -> Option<Location> {
        let (lat, lon) = s.split_once(',')?;
        let lat = parse_tenths(lat, 2)?;
        let lon = parse_tenths(lon, 3)?;
        ((-900..=900).contains(&lat) && (-1800..=1800).contains(&lon)).then_some(Location {
            lat_tenths: lat,
            lon_tenths: lon,
        })
    }
}

/// `-?D{1,max_int_digits}.D` as tenths.
fn parse_tenths(s: &str, max_int_digits: usize) -> Option<i16> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = digits.split_once('.')?;
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > max_int_digits || frac.len() != 1 {
        return None;
    }
    if !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let tenths = int.parse::<i16>().ok()? * 10 + frac.parse::<i16>().ok()?;
    Some(if negative { -tenths } else { tenths })
}

impl fmt::Display for Location {
    // One canonical spelling per bucket, so that "-0.0" and "0.0" count as one place.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn part(f: &mut fmt::Formatter<'_>, t: i16) -> fmt::Result {
            let sign = if t < 0 { "-" } else { "" };
            let a = t.unsigned_abs();
            write!(f, "{sign}{}.{}", a / 10, a % 10)
        }
        part(f, self.lat_tenths)?;
        f.write_str(",")?;
        part(f, self.lon_tenths)
    }
}

/// A validated message from a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The node's pseudonym, 1–128 characters of `[A-Za-z0-9._:-]`.
    pub node_id: String,
    /// The envelope's timestamp, floored to the minute.
    pub minute: Minute,
    pub kind: EventKind,
}

/// What happened, in the past tense. `None` always means "not known".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    TaskReceived {
        task: Digest,
        chain_id: Option<String>,
        task_type: Option<String>,
    },
    TaskCompleted {
        task: Digest,
        outcome: Outcome,
    },
    HeartbeatReported(Heartbeat),
    InvoiceCreated(Invoice),
    NodeJoined {
        status: Option<String>,
    },
    NodeLeft {
        status: Option<String>,
    },
}

/// The result of a task as one `task_completed` reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub success: Option<bool>,
    pub status: Option<String>,
    pub execution_time: Option<ExecutionTime>,
    pub gas_used: Option<Magnitude>,
    pub cached: Option<bool>,
}

/// A node's periodic report of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    pub status: Option<String>,
    pub total_tasks: Option<TotalTasks>,
    pub active_tasks: Option<ActiveTasks>,
    pub continent: Option<Continent>,
    pub location: Option<Location>,
}

/// An invoice as first reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub invoice: Digest,
    pub task: Option<Digest>,
    pub chain_id: Option<String>,
    pub steps_computed: Option<Magnitude>,
    pub memory_used: Option<Memory>,
    pub operation: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_and_refuse_anything_but_lowercase_hex() {
        let hex = "dc5bd914475128116974a3e7e7c848deca52b87aea9f8f3e31f7511b993a582b";
        assert_eq!(Digest::parse_hex(hex).unwrap().to_hex(), hex);
        assert!(Digest::parse_hex(&hex.to_uppercase()).is_none());
        assert!(Digest::parse_hex(&hex[1..]).is_none());
        assert!(Digest::parse_hex(&format!("{}g", &hex[1..])).is_none());
    }

    #[test]
    fn locations_need_one_decimal_and_a_range() {
        assert_eq!(
            Location::parse("52.5,13.5").unwrap().to_string(),
            "52.5,13.5"
        );
        assert_eq!(
            Location::parse("-34.0,151.0").unwrap().to_string(),
            "-34.0,151.0"
        );
        assert_eq!(Location::parse("-0.0,0.0").unwrap().to_string(), "0.0,0.0");
        assert_eq!(
            Location::parse("90.0,-180.0").unwrap().to_string(),
            "90.0,-180.0"
        );
        for bad in [
            "52,13",
            "52.55,13.5",
            "90.1,0.0",
            "0.0,180.1",
            "a.b,1.0",
            "1.0",
            "+1.0,1.0",
            " 1.0,1.0",
        ] {
            assert!(Location::parse(bad).is_none(), "{bad} should be refused");
        }
    }
}
