//! Contract §4: the shape of a dead letter, and how much of the original body it may keep.

use crate::names::{
    HEADER_DLQ_DETAIL, HEADER_DLQ_PATH, HEADER_DLQ_REASON, HEADER_MSG_ID, HEADER_ORIGINAL_SEQ,
    HEADER_ORIGINAL_SUBJECT,
};
use crate::rejection::{Reason, Rejection};
use crate::subjects::{ADMIN_PREFIX, DLQ_PREFIX};
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
            payload: kept_body(rejection.reason, original_subject, original),
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
/// that a node's raw block data or exact counts never sit in the dead letters. An operator event
/// keeps its first KiB as sent whatever the reason: it holds public keys only, and the operator
/// needs to see what was refused.
fn kept_body(reason: Reason, original_subject: &str, original: &[u8]) -> Vec<u8> {
    if original_subject.starts_with(ADMIN_PREFIX) {
        return original[..original.len().min(KEEP_AS_SENT)].to_vec();
    }
    match reason {
        Reason::TooLarge | Reason::Malformed => {
            original[..original.len().min(KEEP_AS_SENT)].to_vec()
        }
        Reason::Schema | Reason::Clock | Reason::Unauthorized | Reason::RateLimited => {
            // These follow the JSON checks, so the body is an object; were it not, nothing of it
            // is kept rather than too much.
            crate::redact::contract_fields(original_subject, original).unwrap_or_default()
        }
    }
}

/// A header value is one line: control characters would end it early.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(reason: Reason) -> Rejection {
        Rejection {
            reason,
            path: Some("$.nodeId".into()),
            detail: "a line\nthat ends early".into(),
        }
    }

    const BODY: &[u8] = br#"{"version":"1.0","type":"heartbeat","nodeId":"bad node","blockHash":"0xsecret","data":{"status":"online","activeTasks":7}}"#;

    #[test]
    fn a_schema_dead_letter_keeps_only_the_named_fields_and_says_why_in_headers() {
        let d = DeadLetter::new(&rejection(Reason::Schema), "truebit.heartbeat", 42, BODY);
        assert_eq!(d.subject, "truebit.dlq.schema");
        let body = String::from_utf8(d.payload.clone()).unwrap();
        assert!(
            body.contains("bad node") && body.contains("online"),
            "{body}"
        );
        assert!(
            !body.contains("0xsecret") && !body.contains("activeTasks"),
            "{body}"
        );
        assert_eq!(d.header("Nats-Msg-Id"), Some("dlq-42"));
        assert_eq!(d.header("Truebit-Dlq-Reason"), Some("schema"));
        assert_eq!(
            d.header("Truebit-Original-Subject"),
            Some("truebit.heartbeat")
        );
        assert_eq!(d.header("Truebit-Original-Seq"), Some("42"));
        assert_eq!(d.header("Truebit-Dlq-Path"), Some("$.nodeId"));
        assert_eq!(
            d.header("Truebit-Dlq-Detail"),
            Some("a line that ends early"),
            "a header value is one line"
        );
    }

    #[test]
    fn unreadable_bodies_and_operator_events_keep_their_first_kib_as_sent() {
        let long = [b'{'; 3000];
        let d = DeadLetter::new(&rejection(Reason::Malformed), "truebit.heartbeat", 1, &long);
        assert_eq!(d.payload.len(), KEEP_AS_SENT);
        let d = DeadLetter::new(&rejection(Reason::TooLarge), "truebit.heartbeat", 1, &long);
        assert_eq!(d.payload.len(), KEEP_AS_SENT);
        let d = DeadLetter::new(&rejection(Reason::Schema), "truebit.admin.keys", 1, BODY);
        assert_eq!(d.payload, BODY, "an operator event holds public keys only");
    }
}
