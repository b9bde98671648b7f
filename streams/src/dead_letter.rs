//! Contract §4: the shape of a dead letter, and how much of the original body it may keep.

use crate::names::{
    HEADER_DLQ_DETAIL, HEADER_DLQ_PATH, HEADER_DLQ_REASON, HEADER_MSG_ID, HEADER_ORIGINAL_SEQ,
    HEADER_ORIGINAL_SUBJECT,
};
use crate::subjects::DLQ_PREFIX;
use crate::validate::{Reason, Rejection};
use serde::{Deserialize, Serialize};

/// A `too_large` or `malformed` dead letter keeps this much of the original body, as sent.
pub const KEEP_AS_SENT: usize = 1024;

/// A rejected message as it goes to `TRUEBIT_DLQ`: plain data, so that the fold can record it in
/// the same commit as the message's position and a publisher send it later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// `truebit.dlq.<reason>`.
    pub subject: String,
    /// Header names and values, in the order they are sent.
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// The dead letter of the message stored at `seq`. Its `Nats-Msg-Id` is `dlq-<seq>`, so
    /// that JetStream stores it once however often it is published.
    pub fn new(rejection: &Rejection, original_subject: &str, seq: u64, original: &[u8]) -> Self {
        let mut headers = vec![
            (HEADER_MSG_ID.to_string(), msg_id(seq)),
            (
                HEADER_DLQ_REASON.to_string(),
                rejection.reason.as_str().to_string(),
            ),
            (
                HEADER_ORIGINAL_SUBJECT.to_string(),
                header_safe(original_subject),
            ),
            (HEADER_ORIGINAL_SEQ.to_string(), seq.to_string()),
        ];
        if let Some(path) = &rejection.path {
            headers.push((HEADER_DLQ_PATH.to_string(), header_safe(path)));
        }
        headers.push((
            HEADER_DLQ_DETAIL.to_string(),
            header_safe(&rejection.detail),
        ));
        DeadLetter {
            subject: format!("{DLQ_PREFIX}{}", rejection.reason),
            headers,
            payload: kept_body(rejection.reason, original),
        }
    }

    /// The value of header `name`, if it has one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The `Nats-Msg-Id` of the dead letter of the message at `seq`.
pub fn msg_id(seq: u64) -> String {
    format!("dlq-{seq}")
}

/// As much of the body as privacy allows: what cannot be read keeps its first KiB as sent (there
/// are no fields to tell apart); what could be read keeps only the fields the contract names, so
/// that a node's raw block data or exact counts never sit in the dead letters.
fn kept_body(reason: Reason, original: &[u8]) -> Vec<u8> {
    match reason {
        Reason::TooLarge | Reason::Malformed => {
            original[..original.len().min(KEEP_AS_SENT)].to_vec()
        }
        Reason::Schema | Reason::Clock | Reason::Unauthorized | Reason::RateLimited => {
            // These follow the JSON checks, so the body is an object; were it not, nothing of it
            // is kept rather than too much.
            crate::redact::contract_fields(original).unwrap_or_default()
        }
    }
}

/// A header value is one line: control characters would end it early.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
