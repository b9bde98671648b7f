//! Contract §4: the shape of a dead letter.

use crate::rejection::{Reason, Rejection};
use crate::subjects::DLQ_PREFIX;
use async_nats::HeaderMap;
use bytes::Bytes;

pub const HEADER_REASON: &str = "Truebit-Dlq-Reason";
pub const HEADER_PATH: &str = "Truebit-Dlq-Path";
pub const HEADER_DETAIL: &str = "Truebit-Dlq-Detail";
pub const HEADER_ORIGINAL_SUBJECT: &str = "Truebit-Original-Subject";
pub const HEADER_ORIGINAL_SEQ: &str = "Truebit-Original-Seq";

/// A `too_large` dead letter keeps this much of the original body.
pub const TOO_LARGE_KEEP: usize = 1024;

/// A rejected message as it goes to `TRUEBIT_DLQ`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl DeadLetter {
    /// Builds the dead letter of the message at `seq`. Its `Nats-Msg-Id` is derived from `seq`, so
    /// that a re-fold after a crash stores it once.
    pub fn new(rejection: &Rejection, original_subject: &str, seq: u64, original: &Bytes) -> Self {
        let payload = match rejection.reason {
            Reason::TooLarge => original.slice(..original.len().min(TOO_LARGE_KEEP)),
            Reason::Malformed | Reason::Schema | Reason::Clock => original.clone(),
            // Key failures keep no body: it may carry the very credential that was refused.
            Reason::Unauthorized | Reason::RateLimited => Bytes::new(),
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("dlq-{seq}").as_str());
        headers.insert(HEADER_REASON, rejection.reason.as_str());
        headers.insert(
            HEADER_ORIGINAL_SUBJECT,
            header_safe(original_subject).as_str(),
        );
        headers.insert(HEADER_ORIGINAL_SEQ, seq.to_string().as_str());
        if let Some(path) = &rejection.path {
            headers.insert(HEADER_PATH, header_safe(path).as_str());
        }
        headers.insert(HEADER_DETAIL, header_safe(&rejection.detail).as_str());
        DeadLetter {
            subject: format!("{DLQ_PREFIX}{}", rejection.reason),
            headers,
            payload,
        }
    }
}

/// A header value is one line: control characters would end it early.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
