//! Contract §7 at the fold: given a registry folded from operator events, when a node message
//! arrives, then it is admitted, counted or refused exactly as the mode says, at exactly its
//! stream position; and folding in any batching decides the same as one message at a time.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use truebit_projections::{Checks, Input, Outbox, Projections, Stored};
use truebit_streams::{
    operator_payload, Event, EventKind, Heartbeat, KeyGrant, Message, Minute, Mode, Operator,
    OperatorKind, Permissions, PublicKey, Signer, SigningKey,
};

const T0: Minute = 29_000_000;
const NODE: &str = "node-1";

/// A database folding one network's messages, with its root key.
struct Net {
    _dir: tempfile::TempDir,
    db: Projections,
    root: PublicKey,
    seq: u64,
}

fn key() -> PublicKey {
    SigningKey::generate().public_key().clone()
}

/// Each operator event a test makes is a new one: a millisecond later than the one before, and
/// stored as it was written.
fn operator(kind: OperatorKind) -> Message {
    static CLOCK: AtomicI64 = AtomicI64::new(T0 * 60_000);
    let at_ms = CLOCK.fetch_add(1, Ordering::Relaxed);
    stored_copy(kind, at_ms, at_ms)
}

/// An operator event written at `at_ms` and stored at `stored_ms`: a copy of an old event when
/// `at_ms` is another event's.
fn stored_copy(kind: OperatorKind, at_ms: i64, stored_ms: i64) -> Message {
    Message::Operator(Operator {
        minute: at_ms.div_euclid(60_000),
        at_ms,
        stored_ms,
        kind,
        sent: b"{\"as\":\"sent\"}".to_vec(),
    })
}

fn heartbeat(node: &str) -> Message {
    Message::Node(Event {
        node_id: node.into(),
        minute: T0,
        kind: EventKind::HeartbeatReported(Heartbeat::default()),
    })
}

fn grant(k: &PublicKey, node: Option<&str>, publish: bool, admin: bool, rate: u32) -> OperatorKind {
    OperatorKind::KeyIssued(KeyGrant {
        key: k.clone(),
        name: "a node".into(),
        node_id: node.map(str::to_string),
        permissions: Permissions { publish, admin },
        rate_limit: rate,
    })
}

impl Net {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Projections::open(dir.path().join("p.redb")).unwrap();
        let root = key();
        db.bind_admin_key(Some(&root)).unwrap();
        Net {
            _dir: dir,
            db,
            root,
            seq: 0,
        }
    }

    fn input(&mut self, signer: Signer, message: Message, stored: Minute) -> Input {
        self.seq += 1;
        Input::new(self.seq, stored, signer, Ok(message))
    }

    fn fold(&mut self, signer: Signer, message: Message, stored: Minute) -> u64 {
        let input = self.input(signer, message, stored);
        self.db.apply(&[input], Outbox::Record).unwrap();
        self.seq
    }

    /// An operator event signed by the root key.
    fn admin(&mut self, kind: OperatorKind) -> u64 {
        let root = Signer::Verified(self.root.clone());
        self.fold(root, operator(kind), T0)
    }

    fn heartbeats(&self) -> u64 {
        self.db.node(NODE).unwrap().map_or(0, |n| n.heartbeat_count)
    }

    /// The reason of the dead letter waiting for the message at `seq`, if any.
    fn dead_letter(&self, seq: u64) -> Option<String> {
        self.db
            .pending_dead_letters(1000)
            .unwrap()
            .into_iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, d)| d.header("Truebit-Dlq-Reason").unwrap().to_string())
    }
}

/// The rules of §7, one case each: what the registry holds, and how the message is signed.
fn cases() -> Vec<(&'static str, &'static str)> {
    vec![
        ("unsigned", "unauthorized"),
        ("badly signed", "unauthorized"),
        ("malformed headers", "unauthorized"),
        ("unknown key", "unauthorized"),
        ("revoked key", "unauthorized"),
        ("key bound to another nodeId", "unauthorized"),
        ("key without publish", "unauthorized"),
        ("the 61st message of a minute", "rate_limited"),
    ]
}

/// Sets the registry up for `case` and returns the signer of the message under test.
fn given(net: &mut Net, case: &str) -> Signer {
    let k = key();
    match case {
        "unsigned" => Signer::Unsigned,
        "malformed headers" => Signer::Malformed {
            key: None,
            why: "Truebit-Key without Truebit-Signature",
        },
        "badly signed" => {
            net.admin(grant(&k, None, true, false, 60));
            Signer::Forged(k)
        }
        "unknown key" => Signer::Verified(k),
        "revoked key" => {
            net.admin(grant(&k, None, true, false, 60));
            net.admin(OperatorKind::KeyRevoked {
                key: k.clone(),
                reason: None,
            });
            Signer::Verified(k)
        }
        "key bound to another nodeId" => {
            net.admin(grant(&k, Some("node-2"), true, false, 60));
            Signer::Verified(k)
        }
        "key without publish" => {
            net.admin(grant(&k, None, false, true, 60));
            Signer::Verified(k)
        }
        "the 61st message of a minute" => {
            net.admin(grant(&k, None, true, false, 60));
            let me = Signer::Verified(k.clone());
            for _ in 0..60 {
                net.fold(me.clone(), heartbeat(NODE), T0);
            }
            me
        }
        other => panic!("no case {other}"),
    }
}

#[test]
fn each_rule_in_each_mode() {
    for mode in Mode::ALL {
        for (case, reason) in cases() {
            let mut net = Net::new();
            net.admin(OperatorKind::AdmissionSet { mode });
            let signer = given(&mut net, case);
            let before = net.heartbeats();
            let counted_before = net.db.admission_counts().unwrap();
            let seq = net.fold(signer, heartbeat(NODE), T0);
            let counted = net.db.admission_counts().unwrap();
            let label = format!("{case} in {mode}");
            let more = |outcome: &str| {
                counted.get(outcome).copied().unwrap_or(0)
                    - counted_before.get(outcome).copied().unwrap_or(0)
            };
            match mode {
                Mode::Open => {
                    assert_eq!(net.heartbeats(), before + 1, "{label}: folded");
                    assert!(
                        counted.is_empty(),
                        "{label}: open counts nothing: {counted:?}"
                    );
                    assert_eq!(net.dead_letter(seq), None, "{label}");
                }
                Mode::Audit => {
                    assert_eq!(net.heartbeats(), before + 1, "{label}: folded");
                    assert_eq!(more(reason), 1, "{label}: counted under {reason}");
                    assert_eq!(net.dead_letter(seq), None, "{label}: audit refuses nothing");
                }
                Mode::Enforce => {
                    assert_eq!(net.heartbeats(), before, "{label}: not folded");
                    assert_eq!(more(reason), 1, "{label}");
                    assert_eq!(net.dead_letter(seq).as_deref(), Some(reason), "{label}");
                    assert_eq!(net.db.rejections().unwrap()[reason], 1, "{label}");
                }
            }
        }
    }
}

#[test]
fn the_first_message_of_the_next_minute_is_admitted_again() {
    let mut net = Net::new();
    net.admin(OperatorKind::AdmissionSet {
        mode: Mode::Enforce,
    });
    let k = key();
    net.admin(grant(&k, Some(NODE), true, false, 60));
    let me = Signer::Verified(k.clone());
    for _ in 0..60 {
        net.fold(me.clone(), heartbeat(NODE), T0 + 7);
    }
    let limited = net.fold(me.clone(), heartbeat(NODE), T0 + 7);
    let next = net.fold(me, heartbeat(NODE), T0 + 8);
    assert_eq!(net.dead_letter(limited).as_deref(), Some("rate_limited"));
    assert_eq!(net.dead_letter(next), None);
    assert_eq!(net.heartbeats(), 61);
    let keys = net.db.keys().unwrap();
    let mine = keys.iter().find(|v| v.public_key == k.as_str()).unwrap();
    assert_eq!(
        (mine.admitted, mine.rate_limited, mine.unauthorized),
        (61, 1, 0)
    );
}

#[test]
fn an_admin_event_signed_by_anything_but_an_admin_key_changes_nothing_in_any_mode() {
    for mode in Mode::ALL {
        let mut net = Net::new();
        net.admin(OperatorKind::AdmissionSet { mode });
        let publisher = key();
        net.admin(grant(&publisher, None, true, false, 60));
        let stranger = key();
        for signer in [
            Signer::Unsigned,
            Signer::Forged(net.root.clone()),
            Signer::Verified(publisher.clone()),
            Signer::Verified(key()),
        ] {
            let seq = net.fold(
                signer.clone(),
                operator(grant(&stranger, None, true, true, 60)),
                T0,
            );
            assert_eq!(
                net.dead_letter(seq).as_deref(),
                Some("unauthorized"),
                "{signer:?} in {mode}"
            );
            let d = net.db.pending_dead_letters(1000).unwrap();
            let body = &d.iter().find(|(s, _)| *s == seq).unwrap().1.payload;
            assert_eq!(
                body, b"{\"as\":\"sent\"}",
                "an operator event keeps its body as sent"
            );
        }
        assert!(net
            .db
            .keys()
            .unwrap()
            .iter()
            .all(|k| k.public_key != stranger.as_str()));
        assert_eq!(net.db.admission_mode().unwrap(), mode);
    }
}

#[test]
fn an_admin_key_issued_by_the_root_may_issue_and_its_revocation_does_not_revoke_what_it_issued() {
    let mut net = Net::new();
    let deputy = key();
    net.admin(grant(&deputy, None, false, true, 60));
    let node = key();
    let by_deputy = Signer::Verified(deputy.clone());
    let seq = net.fold(
        by_deputy.clone(),
        operator(grant(&node, None, true, false, 60)),
        T0,
    );
    assert_eq!(net.dead_letter(seq), None);
    net.admin(OperatorKind::KeyRevoked {
        key: deputy.clone(),
        reason: Some("left the team".into()),
    });
    let after = net.fold(
        by_deputy,
        operator(OperatorKind::AdmissionSet {
            mode: Mode::Enforce,
        }),
        T0,
    );
    assert_eq!(net.dead_letter(after).as_deref(), Some("unauthorized"));
    assert_eq!(net.db.admission_mode().unwrap(), Mode::Open);
    let keys = net.db.keys().unwrap();
    let issued = keys.iter().find(|k| k.public_key == node.as_str()).unwrap();
    assert_eq!(issued.revoked_at, None, "still valid");
    let gone = keys
        .iter()
        .find(|k| k.public_key == deputy.as_str())
        .unwrap();
    assert_eq!(gone.revoke_reason.as_deref(), Some("left the team"));
}

#[test]
fn a_mode_switch_takes_effect_at_exactly_its_stream_position() {
    let mut net = Net::new();
    let batch = |net: &mut Net, n| {
        (0..n)
            .map(|_| net.input(Signer::Unsigned, heartbeat(NODE), T0))
            .collect::<Vec<_>>()
    };
    let mut inputs = batch(&mut net, 3);
    let root = Signer::Verified(net.root.clone());
    let switch = net.input(
        root,
        operator(OperatorKind::AdmissionSet {
            mode: Mode::Enforce,
        }),
        T0,
    );
    inputs.push(switch);
    inputs.extend(batch(&mut net, 2));
    // All in one commit: the switch still falls between the third and the fourth heartbeat.
    net.db.apply(&inputs, Outbox::Record).unwrap();
    assert_eq!(net.heartbeats(), 3);
    assert_eq!(net.dead_letter(5).as_deref(), Some("unauthorized"));
    assert_eq!(net.dead_letter(6).as_deref(), Some("unauthorized"));
    assert_eq!(net.dead_letter(3), None);
}

#[test]
fn the_root_key_is_bound_once_an_operator_event_was_read() {
    let net_dir = tempfile::tempdir().unwrap();
    let db = Projections::open(net_dir.path().join("p.redb")).unwrap();
    db.bind_admin_key(None).unwrap();
    let (a, b) = (key(), key());
    // Nothing depended on the root yet: a database from before keys takes one.
    db.bind_admin_key(Some(&a)).unwrap();
    db.bind_admin_key(Some(&a)).unwrap();
    db.apply(
        &[Input::new(
            1,
            T0,
            Signer::Unsigned,
            Ok(operator(OperatorKind::AdmissionSet { mode: Mode::Audit })),
        )],
        Outbox::Record,
    )
    .unwrap();
    let err = db.bind_admin_key(Some(&b)).unwrap_err();
    assert!(
        matches!(err, truebit_projections::Error::AdminKey { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(a.as_str()), "{err}");
    assert!(db.bind_admin_key(None).is_err());
    db.check_admin_key(Some(&a)).unwrap();
}

#[test]
fn a_copy_of_an_operator_event_published_again_changes_nothing() {
    let mut net = Net::new();
    let root = Signer::Verified(net.root.clone());
    let k = key();
    let minute = 60_000;
    let t = T0 * 60_000 + 1_000_000_000; // later than any event `operator` makes in this process
    let issue = grant(&k, None, true, false, 60);
    let enforce = OperatorKind::AdmissionSet {
        mode: Mode::Enforce,
    };
    let audit = OperatorKind::AdmissionSet { mode: Mode::Audit };
    let revoke = OperatorKind::KeyRevoked {
        key: k.clone(),
        reason: None,
    };
    let fold = |net: &mut Net, kind: &OperatorKind, at: i64, stored: i64| {
        net.fold(root.clone(), stored_copy(kind.clone(), at, stored), T0)
    };
    fold(&mut net, &audit, t, t);
    fold(&mut net, &issue, t + 1, t + 1);
    fold(&mut net, &enforce, t + 2, t + 2);
    fold(&mut net, &revoke, t + 3, t + 3);
    let revoked = |net: &Net| {
        net.db
            .keys()
            .unwrap()
            .iter()
            .find(|v| v.public_key == k.as_str())
            .unwrap()
            .revoked_at
    };
    assert!(revoked(&net).is_some());

    // Fresh (stored within 5 minutes) but not newer than what its target last applied.
    let again = fold(&mut net, &issue, t + 1, t + 4);
    assert_eq!(net.dead_letter(again).as_deref(), Some("unauthorized"));
    assert!(
        revoked(&net).is_some(),
        "a copy of key_issued does not end the revocation"
    );
    let old_audit = fold(&mut net, &audit, t, t + 4);
    assert_eq!(net.dead_letter(old_audit).as_deref(), Some("unauthorized"));
    assert_eq!(net.db.admission_mode().unwrap(), Mode::Enforce);
    let same_ms = fold(&mut net, &audit, t + 2, t + 4);
    assert_eq!(
        net.dead_letter(same_ms).as_deref(),
        Some("unauthorized"),
        "newer means strictly later, to the millisecond"
    );

    // Newer than anything for its target, but stored more than 5 minutes after it was written:
    // a copy kept back and published later.
    let stale = fold(&mut net, &audit, t + 10, t + 10 + 5 * minute + 1);
    assert_eq!(net.dead_letter(stale).as_deref(), Some("unauthorized"));
    assert_eq!(net.db.admission_mode().unwrap(), Mode::Enforce);
    let on_the_edge = fold(&mut net, &enforce, t + 11, t + 11 + 5 * minute);
    assert_eq!(
        net.dead_letter(on_the_edge),
        None,
        "5 minutes is still fresh"
    );

    // A new event for the key (a re-issue) still ends the revocation.
    let reissue = fold(&mut net, &issue, t + 20, t + 20);
    assert_eq!(net.dead_letter(reissue), None);
    assert_eq!(revoked(&net), None);
    assert_eq!(net.db.rejections().unwrap()["unauthorized"], 4);
}

#[test]
fn a_forgery_counts_under_the_key_it_names_however_its_signature_is_wrong() {
    for mode in [Mode::Audit, Mode::Enforce] {
        let mut net = Net::new();
        net.admin(OperatorKind::AdmissionSet { mode });
        let k = key();
        net.admin(grant(&k, None, true, false, 60));
        for signer in [
            Signer::Forged(k.clone()),
            Signer::Malformed {
                key: Some(k.clone()),
                why: "Truebit-Key without Truebit-Signature",
            },
            Signer::Malformed {
                key: Some(k.clone()),
                why: "Truebit-Signature is not 64 bytes",
            },
        ] {
            let before = net.db.keys().unwrap();
            let before = before.iter().find(|v| v.public_key == k.as_str()).unwrap();
            net.fold(signer.clone(), heartbeat(NODE), T0);
            let after = net.db.keys().unwrap();
            let after = after.iter().find(|v| v.public_key == k.as_str()).unwrap();
            assert_eq!(
                after.unauthorized,
                before.unauthorized + 1,
                "{signer:?} in {mode}: counted under the key it names"
            );
        }
    }
}

/// One step of a random network's life.
#[derive(Debug, Clone)]
enum Step {
    Issue {
        key: usize,
        bound: Option<usize>,
        publish: bool,
        admin: bool,
        rate: u32,
        by: usize,
    },
    Revoke {
        key: usize,
        by: usize,
    },
    Mode {
        mode: usize,
        by: usize,
    },
    /// The last operator event published again, signed as it was: refused, however batched.
    Again,
    Message {
        signer: usize,
        forged: bool,
        node: usize,
        /// Minutes since the last message's stored minute.
        later: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    step_signed_by(|| (0usize..6).boxed())
}

/// The steps, with the signer of each operator event drawn from `by`.
fn step_signed_by(by: impl Fn() -> BoxedStrategy<usize>) -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0usize..4, proptest::option::of(0usize..2), any::<bool>(), any::<bool>(), 1u32..4, by())
            .prop_map(|(key, bound, publish, admin, rate, by)| Step::Issue { key, bound, publish, admin, rate, by }),
        1 => (0usize..4, by()).prop_map(|(key, by)| Step::Revoke { key, by }),
        1 => (0usize..3, by()).prop_map(|(mode, by)| Step::Mode { mode, by }),
        1 => Just(Step::Again),
        8 => (0usize..6, proptest::bool::weighted(0.1), 0usize..2, prop_oneof![4 => Just(0i64), 1 => 1i64..3])
            .prop_map(|(signer, forged, node, later)| Step::Message { signer, forged, node, later }),
    ]
}

/// Keys 0–3 may be issued; 4 is the root; 5 never exists. Signer 5 of a message is "unsigned".
fn inputs(steps: &[Step], keys: &[PublicKey]) -> Vec<Input> {
    let signer = |i: usize, forged: bool| match (i, forged) {
        (5, _) => Signer::Unsigned,
        (i, true) => Signer::Forged(keys[i].clone()),
        (i, false) => Signer::Verified(keys[i].clone()),
    };
    let mut stored = T0;
    let mut last_operator: Option<(Signer, Message)> = None;
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let (signer, message) = match step {
                Step::Again => last_operator
                    .clone()
                    .unwrap_or_else(|| (Signer::Unsigned, heartbeat("node-a"))),
                Step::Issue {
                    key,
                    bound,
                    publish,
                    admin,
                    rate,
                    by,
                } => (
                    signer(*by, false),
                    operator(grant(
                        &keys[*key],
                        bound.map(|n| ["node-a", "node-b"][n]),
                        *publish,
                        *admin,
                        *rate,
                    )),
                ),
                Step::Revoke { key, by } => (
                    signer(*by, false),
                    operator(OperatorKind::KeyRevoked {
                        key: keys[*key].clone(),
                        reason: None,
                    }),
                ),
                Step::Mode { mode, by } => (
                    signer(*by, false),
                    operator(OperatorKind::AdmissionSet {
                        mode: Mode::ALL[*mode],
                    }),
                ),
                Step::Message {
                    signer: s,
                    forged,
                    node,
                    later,
                } => {
                    stored += later;
                    (signer(*s, *forged), heartbeat(["node-a", "node-b"][*node]))
                }
            };
            if matches!(message, Message::Operator(_)) {
                last_operator = Some((signer.clone(), message.clone()));
            }
            Input::new(i as u64 + 1, stored, signer, Ok(message))
        })
        .collect()
}

fn outbox(db: &Projections) -> BTreeMap<u64, String> {
    db.pending_dead_letters(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(seq, d)| (seq, d.header("Truebit-Dlq-Reason").unwrap().to_string()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random interleavings of operator events and signed, forged and unsigned node messages,
    /// folded in random batches, give the same registry, counts and verdicts as folding them
    /// one at a time.
    #[test]
    fn any_batching_decides_as_one_at_a_time(
        steps in proptest::collection::vec(step(), 1..120),
        cuts in proptest::collection::vec(1usize..20, 1..20),
    ) {
        let keys: Vec<PublicKey> = (0..6).map(|_| key()).collect();
        let inputs = inputs(&steps, &keys);
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let db = Projections::open(dir.path().join(name)).unwrap();
            db.bind_admin_key(Some(&keys[4])).unwrap();
            db
        };
        let (one, batched) = (open("one.redb"), open("batched.redb"));
        for input in &inputs {
            one.apply(std::slice::from_ref(input), Outbox::Record).unwrap();
        }
        let mut rest = &inputs[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            batched.apply(&rest[..n], Outbox::Record).unwrap();
            rest = &rest[n..];
            i += 1;
        }
        prop_assert_eq!(one.differences(&batched, 10).unwrap(), Vec::<String>::new());
        prop_assert_eq!(outbox(&one), outbox(&batched));
        prop_assert_eq!(one.admission_counts().unwrap(), batched.admission_counts().unwrap());
    }
}

/// [`step`], with most operator events signed by the root key, so that keys get issued and the
/// mode changes often enough for the admission rules to see signed messages.
fn rooted_step() -> impl Strategy<Value = Step> {
    step_signed_by(|| prop_oneof![3 => Just(4usize), 1 => 0usize..6].boxed())
}

/// The steps as the stream would store them: real payloads, signed by real keys (or forged: a
/// signature over other bytes), so that reading them checks real signatures. Keys 0–3 may be
/// issued, 4 is the root, 5 never signs.
fn stored(steps: &[Step], keys: &[SigningKey]) -> Vec<Stored> {
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap();
    let mut minute = T0;
    let mut last_operator: Option<Stored> = None;
    let mut out = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let seq = i as u64 + 1;
        let (by, forged, subject, payload, time) = match step {
            Step::Again => match &last_operator {
                // The same bytes and headers, stored again.
                Some(copy) => {
                    out.push(Stored {
                        seq,
                        ..copy.clone()
                    });
                    continue;
                }
                None => (
                    5,
                    false,
                    "truebit.heartbeat",
                    heartbeat_at("node-a", minute),
                    at(minute * 60_000),
                ),
            },
            Step::Message {
                signer,
                forged,
                node,
                later,
            } => {
                minute += later;
                let payload = heartbeat_at(["node-a", "node-b"][*node], minute);
                (
                    *signer,
                    *forged,
                    "truebit.heartbeat",
                    payload,
                    at(minute * 60_000),
                )
            }
            Step::Issue {
                key,
                bound,
                publish,
                admin,
                rate,
                by,
            } => {
                let kind = grant(
                    keys[*key].public_key(),
                    bound.map(|n| ["node-a", "node-b"][n]),
                    *publish,
                    *admin,
                    *rate,
                );
                operator_stored(*by, kind)
            }
            Step::Revoke { key, by } => operator_stored(
                *by,
                OperatorKind::KeyRevoked {
                    key: keys[*key].public_key().clone(),
                    reason: None,
                },
            ),
            Step::Mode { mode, by } => operator_stored(
                *by,
                OperatorKind::AdmissionSet {
                    mode: Mode::ALL[*mode],
                },
            ),
        };
        let headers = (by != 5).then(|| {
            let signed_bytes = if forged {
                [&payload[..], b" "].concat()
            } else {
                payload.clone()
            };
            keys[by].sign(subject, &signed_bytes)
        });
        let message = Stored::new(seq, subject.into(), payload.into(), time, |name| {
            headers
                .as_ref()?
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        });
        if subject == truebit_streams::subjects::ADMIN_KEYS {
            last_operator = Some(message.clone());
        }
        out.push(message);
    }
    out
}

fn heartbeat_at(node: &str, minute: Minute) -> Vec<u8> {
    Event {
        node_id: node.into(),
        minute,
        kind: EventKind::HeartbeatReported(Heartbeat::default()),
    }
    .payload()
}

/// An operator event as `keys` writes it, a millisecond after the one before, stored at once.
fn operator_stored(
    by: usize,
    kind: OperatorKind,
) -> (
    usize,
    bool,
    &'static str,
    Vec<u8>,
    chrono::DateTime<chrono::Utc>,
) {
    static CLOCK: AtomicI64 = AtomicI64::new(T0 * 60_000 + 30_000);
    let at =
        chrono::DateTime::from_timestamp_millis(CLOCK.fetch_add(1, Ordering::Relaxed)).unwrap();
    (
        by,
        false,
        truebit_streams::subjects::ADMIN_KEYS,
        operator_payload(&kind, at),
        at,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Contract §7, checked only where the fold needs it: the same stored messages, read with
    /// every signature checked ahead one message at a time, read in random batches with the
    /// guess serve and replay make (the mode the last commit left), and read with no node
    /// message's signature checked ahead (the fold checks what it asks for), give the same
    /// registry, counts and dead letters, across changes of mode inside a batch.
    #[test]
    fn checking_signatures_only_when_asked_decides_as_checking_all_ahead(
        steps in proptest::collection::vec(rooted_step(), 1..100),
        cuts in proptest::collection::vec(1usize..300, 1..10),
    ) {
        let keys: Vec<SigningKey> = (0..6).map(|_| SigningKey::generate()).collect();
        let messages = stored(&steps, &keys);
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let db = Projections::open(dir.path().join(name)).unwrap();
            db.bind_admin_key(Some(keys[4].public_key())).unwrap();
            db
        };
        let one = open("one.redb");
        for m in &messages {
            let read = truebit_projections::inputs(vec![m.clone()], Checks::Ahead);
            // Every heartbeat reads: the test is about signatures, not about validation.
            if m.subject == "truebit.heartbeat" {
                prop_assert!(read[0].event.is_ok(), "{:?}", read[0].event);
            }
            one.apply(&read, Outbox::Record).unwrap();
        }
        for guess in ["the last commit's mode", "never ahead"] {
            let batched = open(&format!("{guess}.redb"));
            let mut checks = Checks::WhenAsked;
            let mut rest = &messages[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                let applied = batched.apply(&truebit_projections::inputs(rest[..n].to_vec(), checks), Outbox::Record).unwrap();
                if guess == "the last commit's mode" {
                    checks = Checks::after(applied.mode);
                }
                rest = &rest[n..];
                i += 1;
            }
            prop_assert_eq!(one.differences(&batched, 10).unwrap(), Vec::<String>::new(), "{}", guess);
            prop_assert_eq!(outbox(&one), outbox(&batched), "{}", guess);
            prop_assert_eq!(one.admission_counts().unwrap(), batched.admission_counts().unwrap(), "{}", guess);
        }
    }
}
