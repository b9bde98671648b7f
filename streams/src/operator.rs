//! Contract §7, the key registry's events: what an operator says on `truebit.admin.keys`, read as
//! strictly as a node's message (§4's checks, in order), and the one reading of any message,
//! node's or operator's: [`read`].

use crate::event::{Event, Minute};
use crate::rejection::Rejection;
use crate::rules::{checked_instant, major_is_one, valid_node_id};
use crate::signature::PublicKey;
use crate::subjects::{ADMIN_KEYS, ADMIN_PREFIX};
use crate::validate::{kind_of, read_object, required_str, validate};
use crate::KEEP_AS_SENT;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// A message of the stream, once read: a node's event or an operator's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Node(Event),
    Operator(Operator),
}

impl From<Event> for Message {
    fn from(event: Event) -> Self {
        Message::Node(event)
    }
}

/// An operator event, and the first KiB of it as sent: its dead letter, should its signature not
/// hold, keeps that (it holds public keys only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub minute: Minute,
    /// Its `timestamp` in milliseconds since the epoch, floored: an event applies only when this
    /// is later than that of every event applied before for its [target](OperatorKind::target).
    pub at_ms: i64,
    /// When JetStream stored it, in milliseconds since the epoch: an event applies only when
    /// `at_ms` lies within [`MAX_CLOCK_SKEW_SECS`](crate::MAX_CLOCK_SKEW_SECS) of this, so that a
    /// stored copy published again later is refused (contract §7, "fresh").
    pub stored_ms: i64,
    pub kind: OperatorKind,
    pub sent: Vec<u8>,
}

/// What an operator did, in the past tense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorKind {
    KeyIssued(KeyGrant),
    KeyRevoked {
        key: PublicKey,
        reason: Option<String>,
    },
    AdmissionSet {
        mode: Mode,
    },
}

/// What an operator event changes, for its order (contract §7, "newer"): one key, or the mode.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target<'a> {
    Key(&'a PublicKey),
    Mode,
}

impl Target<'_> {
    /// The target as stored: a public key (`U…`), or `mode`, which no public key spells.
    pub fn as_str(&self) -> &str {
        match self {
            Target::Key(key) => key.as_str(),
            Target::Mode => "mode",
        }
    }
}

impl OperatorKind {
    /// What this event changes: events for one target apply in the order of their timestamps.
    pub fn target(&self) -> Target<'_> {
        match self {
            OperatorKind::KeyIssued(grant) => Target::Key(&grant.key),
            OperatorKind::KeyRevoked { key, .. } => Target::Key(key),
            OperatorKind::AdmissionSet { .. } => Target::Mode,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            OperatorKind::KeyIssued(_) => "key_issued",
            OperatorKind::KeyRevoked { .. } => "key_revoked",
            OperatorKind::AdmissionSet { .. } => "admission_set",
        }
    }
}

/// A key as `key_issued` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    pub key: PublicKey,
    pub name: String,
    /// The only `nodeId` the key may publish as, if bound.
    pub node_id: Option<String>,
    pub permissions: Permissions,
    /// Messages per minute of JetStream's stored time.
    pub rate_limit: u32,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    pub publish: bool,
    pub admin: bool,
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [(self.publish, "publish"), (self.admin, "admin")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        f.write_str(&names.join(","))
    }
}

/// How node messages are admitted (contract §7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Every message admitted, signed or not: how a network starts.
    #[default]
    Open,
    /// Every check made and counted; nothing refused.
    Audit,
    /// What fails a check is dead-lettered.
    Enforce,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Open, Mode::Audit, Mode::Enforce];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rate limit of a key whose `key_issued` names none.
pub const DEFAULT_RATE_LIMIT: u32 = 60;
/// The most a key may be granted: a node heartbeats once a minute and reports its tasks; this is
/// room for a very busy one, not a way to switch the limit off.
pub const MAX_RATE_LIMIT: u32 = 1_000_000;

/// Reads one stored message: an operator event on `truebit.admin.>`, else a node event
/// ([`validate`]). Either way the checks of contract §4 run in order; the signature is not looked
/// at here.
pub fn read(subject: &str, payload: &[u8], stored_at: DateTime<Utc>) -> Result<Message, Rejection> {
    if !subject.starts_with(ADMIN_PREFIX) {
        return validate(subject, payload, stored_at).map(Message::Node);
    }
    let envelope = read_object(payload)?;
    if subject != ADMIN_KEYS {
        return Err(Rejection::schema(
            "$.type",
            format!("no operator event is defined for subject {subject}; the key registry's is {ADMIN_KEYS}"),
        ));
    }
    let (timestamp, kind) = operator_schema(&envelope)?;
    let at = checked_instant(timestamp, stored_at)?;
    Ok(Message::Operator(Operator {
        minute: at.timestamp().div_euclid(60),
        at_ms: at.timestamp_millis(),
        stored_ms: stored_at.timestamp_millis(),
        kind,
        sent: payload[..payload.len().min(KEEP_AS_SENT)].to_vec(),
    }))
}

fn operator_schema(envelope: &Map<String, Value>) -> Result<(&str, OperatorKind), Rejection> {
    let version = required_str(envelope, "version", "$.version")?;
    if !major_is_one(version) {
        return Err(Rejection::schema(
            "$.version",
            format!("version {version:?} does not have major 1"),
        ));
    }
    let ty = required_str(envelope, "type", "$.type")?;
    let timestamp = required_str(envelope, "timestamp", "$.timestamp")?;
    let data = match envelope.get("data") {
        Some(Value::Object(data)) => data,
        None | Some(Value::Null) => return Err(Rejection::schema("$.data", "data is required")),
        Some(other) => {
            return Err(Rejection::schema(
                "$.data",
                format!("data must be an object, not {}", kind_of(other)),
            ))
        }
    };
    let kind = match ty {
        "key_issued" => OperatorKind::KeyIssued(KeyGrant {
            key: public_key(data)?,
            name: name(data)?,
            node_id: node_id(data)?,
            permissions: permissions(data)?,
            rate_limit: rate_limit(data)?,
        }),
        "key_revoked" => OperatorKind::KeyRevoked {
            key: public_key(data)?,
            reason: reason(data)?,
        },
        "admission_set" => {
            let mode = required_str(data, "mode", "$.data.mode")?;
            OperatorKind::AdmissionSet {
                mode: Mode::parse(mode).ok_or_else(|| {
                    Rejection::schema(
                        "$.data.mode",
                        format!("mode {mode:?} is not one of open, audit, enforce"),
                    )
                })?,
            }
        }
        other => {
            return Err(Rejection::schema(
                "$.type",
                format!(
                "type {other:?} is not an operator event: key_issued, key_revoked or admission_set"
            ),
            ))
        }
    };
    Ok((timestamp, kind))
}

fn public_key(data: &Map<String, Value>) -> Result<PublicKey, Rejection> {
    let key = required_str(data, "publicKey", "$.data.publicKey")?;
    PublicKey::parse(key).ok_or_else(|| {
        Rejection::schema(
            "$.data.publicKey",
            "publicKey must be an nkey user public key (56 characters starting with U, as `keys new` prints)",
        )
    })
}

/// Printable: no control characters, so that a name is one line wherever it is shown.
fn printable(s: &str, max: usize) -> bool {
    let n = s.chars().count();
    (1..=max).contains(&n) && !s.chars().any(char::is_control)
}

fn name(data: &Map<String, Value>) -> Result<String, Rejection> {
    let name = required_str(data, "name", "$.data.name")?;
    if !printable(name, 64) {
        return Err(Rejection::schema(
            "$.data.name",
            "name must be 1-64 printable characters",
        ));
    }
    Ok(name.to_string())
}

fn node_id(data: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    match data.get("nodeId") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if valid_node_id(id) => Ok(Some(id.clone())),
        Some(_) => Err(Rejection::schema(
            "$.data.nodeId",
            "nodeId must be 1-128 characters of [A-Za-z0-9._:-], as `node --show-id` prints",
        )),
    }
}

fn permissions(data: &Map<String, Value>) -> Result<Permissions, Rejection> {
    let bad = |detail: String| Rejection::schema("$.data.permissions", detail);
    let list = match data.get("permissions") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => return Err(bad("permissions must not be empty".into())),
        None | Some(Value::Null) => return Err(bad("permissions is required".into())),
        Some(other) => {
            return Err(bad(format!(
                "permissions must be an array, not {}",
                kind_of(other)
            )))
        }
    };
    let mut p = Permissions::default();
    for item in list {
        match item.as_str() {
            Some("publish") => p.publish = true,
            Some("admin") => p.admin = true,
            _ => return Err(bad(format!("{item} is not a permission: publish or admin"))),
        }
    }
    Ok(p)
}

fn rate_limit(data: &Map<String, Value>) -> Result<u32, Rejection> {
    match data.get("rateLimit") {
        None | Some(Value::Null) => Ok(DEFAULT_RATE_LIMIT),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|n| (1..=MAX_RATE_LIMIT as u64).contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| {
                Rejection::schema(
                    "$.data.rateLimit",
                    format!("rateLimit must be a whole number of messages per minute from 1 to {MAX_RATE_LIMIT}"),
                )
            }),
        Some(other) => Err(Rejection::schema(
            "$.data.rateLimit",
            format!("rateLimit must be a number, not {}", kind_of(other)),
        )),
    }
}

fn reason(data: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    match data.get("reason") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(r)) if printable(r, 256) => Ok(Some(r.clone())),
        Some(_) => Err(Rejection::schema(
            "$.data.reason",
            "reason must be 1-256 printable characters",
        )),
    }
}

/// Builds the payload of an operator event, as `keys` publishes it.
pub fn operator_payload(kind: &OperatorKind, timestamp: DateTime<Utc>) -> Vec<u8> {
    let data = match kind {
        OperatorKind::KeyIssued(g) => {
            let mut permissions = Vec::new();
            if g.permissions.publish {
                permissions.push("publish");
            }
            if g.permissions.admin {
                permissions.push("admin");
            }
            let mut data = serde_json::json!({
                "publicKey": g.key.as_str(), "name": g.name,
                "permissions": permissions, "rateLimit": g.rate_limit,
            });
            if let Some(node) = &g.node_id {
                data["nodeId"] = node.clone().into();
            }
            data
        }
        OperatorKind::KeyRevoked { key, reason } => {
            let mut data = serde_json::json!({ "publicKey": key.as_str() });
            if let Some(r) = reason {
                data["reason"] = r.clone().into();
            }
            data
        }
        OperatorKind::AdmissionSet { mode } => serde_json::json!({ "mode": mode.as_str() }),
    };
    let body = serde_json::json!({
        "version": "1.0",
        "type": kind.type_name(),
        "timestamp": timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    });
    serde_json::to_vec(&body).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejection::Reason;
    use crate::signature::SigningKey;

    fn at() -> DateTime<Utc> {
        "2026-12-01T10:00:30Z".parse().unwrap()
    }

    fn read_kind(body: Value) -> Result<OperatorKind, Rejection> {
        match read(ADMIN_KEYS, body.to_string().as_bytes(), at())? {
            Message::Operator(op) => Ok(op.kind),
            Message::Node(_) => panic!("an operator subject reads as an operator event"),
        }
    }

    fn envelope(ty: &str, data: Value) -> Value {
        serde_json::json!({"version": "1.0", "type": ty, "timestamp": "2026-12-01T10:00:00.000Z", "data": data})
    }

    #[test]
    fn what_keys_publishes_reads_back_as_the_same_event() {
        let key = SigningKey::generate().public_key().clone();
        for kind in [
            OperatorKind::KeyIssued(KeyGrant {
                key: key.clone(),
                name: "node Ω 1".into(),
                node_id: Some("node-1".into()),
                permissions: Permissions {
                    publish: true,
                    admin: false,
                },
                rate_limit: 120,
            }),
            OperatorKind::KeyRevoked {
                key: key.clone(),
                reason: Some("lost laptop".into()),
            },
            OperatorKind::KeyRevoked { key, reason: None },
            OperatorKind::AdmissionSet {
                mode: Mode::Enforce,
            },
        ] {
            let payload = operator_payload(&kind, at());
            match read(ADMIN_KEYS, &payload, at()).unwrap() {
                Message::Operator(op) => {
                    assert_eq!(op.kind, kind);
                    assert_eq!(op.minute, at().timestamp() / 60);
                    assert_eq!(op.sent, payload);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_grant_without_a_rate_limit_gets_60_and_needs_a_permission() {
        let key = SigningKey::generate().public_key().to_string();
        let kind = read_kind(envelope(
            "key_issued",
            serde_json::json!({"publicKey": key, "name": "n", "permissions": ["admin"]}),
        ))
        .unwrap();
        let OperatorKind::KeyIssued(grant) = kind else {
            panic!()
        };
        assert_eq!(grant.rate_limit, DEFAULT_RATE_LIMIT);
        assert!(grant.permissions.admin && !grant.permissions.publish);
        assert_eq!(grant.node_id, None);
        for (data, path) in [
            (
                serde_json::json!({"publicKey": key, "name": "n", "permissions": []}),
                "$.data.permissions",
            ),
            (
                serde_json::json!({"publicKey": key, "name": "n", "permissions": ["root"]}),
                "$.data.permissions",
            ),
            (
                serde_json::json!({"publicKey": key, "name": "", "permissions": ["publish"]}),
                "$.data.name",
            ),
            (
                serde_json::json!({"publicKey": key, "name": "a\nb", "permissions": ["publish"]}),
                "$.data.name",
            ),
            (
                serde_json::json!({"publicKey": key, "name": "x".repeat(65), "permissions": ["publish"]}),
                "$.data.name",
            ),
            (
                serde_json::json!({"publicKey": "SUAAAA", "name": "n", "permissions": ["publish"]}),
                "$.data.publicKey",
            ),
            (
                serde_json::json!({"publicKey": key, "name": "n", "permissions": ["publish"], "rateLimit": 0}),
                "$.data.rateLimit",
            ),
            (
                serde_json::json!({"publicKey": key, "name": "n", "permissions": ["publish"], "rateLimit": 1.5}),
                "$.data.rateLimit",
            ),
            (
                serde_json::json!({"publicKey": key, "name": "n", "permissions": ["publish"], "nodeId": "bad node"}),
                "$.data.nodeId",
            ),
        ] {
            let r = read_kind(envelope("key_issued", data.clone())).unwrap_err();
            assert_eq!(
                (r.reason, r.path.as_deref()),
                (Reason::Schema, Some(path)),
                "{data}"
            );
        }
    }

    #[test]
    fn other_admin_subjects_and_types_are_schema_errors_after_the_json_checks() {
        let body = envelope("admission_set", serde_json::json!({"mode": "enforce"}));
        let r = read("truebit.admin.other", body.to_string().as_bytes(), at()).unwrap_err();
        assert_eq!(
            (r.reason, r.path.as_deref()),
            (Reason::Schema, Some("$.type"))
        );
        let r = read("truebit.admin.other", b"{oops", at()).unwrap_err();
        assert_eq!(r.reason, Reason::Malformed, "malformed comes first");
        let r = read_kind(envelope(
            "admission_set",
            serde_json::json!({"mode": "closed"}),
        ))
        .unwrap_err();
        assert_eq!(r.path.as_deref(), Some("$.data.mode"));
        let r = read_kind(envelope("key_rotated", serde_json::json!({}))).unwrap_err();
        assert_eq!(r.path.as_deref(), Some("$.type"));
        let mut late = envelope("admission_set", serde_json::json!({"mode": "audit"}));
        late["timestamp"] = "2026-12-01T11:00:00Z".into();
        assert_eq!(read_kind(late).unwrap_err().reason, Reason::Clock);
    }

    #[test]
    fn node_subjects_read_as_node_events() {
        let body = r#"{"version":"1.0","type":"node_joined","timestamp":"2026-12-01T10:00:00Z","nodeId":"node-1"}"#;
        assert!(matches!(
            read("truebit.nodes.joined", body.as_bytes(), at()),
            Ok(Message::Node(_))
        ));
    }
}
