//! Contract §7, decided in the fold: whether a node message is admitted, and whether an
//! operator event may change the registry. Pure functions over what was folded before the
//! message (its key's record, the root key) and what the message carries (its [`Signer`],
//! checked ahead of the fold, and the minute JetStream stored it): so a replay decides exactly
//! as the live fold did.

use crate::records::KeyRecord;
use truebit_streams::{KeyGrant, Minute, Operator, PublicKey, Reason, Signer, MAX_CLOCK_SKEW_SECS};

/// What the registry says of one node message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Admitted,
    /// `unauthorized` or `rate_limited`, and a sentence for the operator.
    Refused(Reason, String),
}

impl Verdict {
    pub fn outcome(&self) -> &'static str {
        match self {
            Verdict::Admitted => "admitted",
            Verdict::Refused(reason, _) => reason.as_str(),
        }
    }
}

/// Checks a node message signed as `signer`, claiming `node_id`, stored in minute `stored`,
/// against its key's record, and counts the outcome on the record. Called in `audit` and
/// `enforce` alike, so that `audit` shows exactly what `enforce` would do.
pub(crate) fn admit(
    signer: &Signer,
    record: Option<&mut KeyRecord>,
    node_id: &str,
    stored: Minute,
) -> Verdict {
    let unauthorized = |detail: String| Verdict::Refused(Reason::Unauthorized, detail);
    let bad_signature = match signer {
        Signer::Verified(_) => None,
        Signer::Unsigned => Some("the message is not signed".to_string()),
        Signer::Malformed { why, .. } => Some((*why).to_string()),
        Signer::Forged(key) => Some(format!("the signature does not verify with key {key}")),
    };
    // A message that names a key of the registry counts under it whatever is wrong with its
    // signature, so that the operator sees whom someone tries to forge (contract §7).
    let (Some(key), Some(record)) = (signer.key(), record) else {
        return unauthorized(bad_signature.unwrap_or_else(|| match signer.key() {
            Some(key) => format!("key {key} is not in the registry"),
            None => "the message names no key".into(),
        }));
    };
    let verdict = if let Some(why) = bad_signature {
        unauthorized(why)
    } else if record.revoked_at.is_some() {
        unauthorized(format!("key {key} ({}) is revoked", record.name))
    } else if !record.permissions.publish {
        unauthorized(format!("key {key} ({}) may not publish", record.name))
    } else if record
        .node_id
        .as_deref()
        .is_some_and(|bound| bound != node_id)
    {
        unauthorized(format!(
            "key {key} ({}) is bound to another nodeId than {node_id}",
            record.name
        ))
    } else {
        if record.window.0 != stored {
            record.window = (stored, 0);
        }
        if record.window.1 >= record.rate_limit {
            Verdict::Refused(
                Reason::RateLimited,
                format!(
                    "key {key} ({}) already had {} messages in this minute, its limit",
                    record.name, record.rate_limit
                ),
            )
        } else {
            record.window.1 += 1;
            Verdict::Admitted
        }
    };
    match &verdict {
        Verdict::Admitted => record.admitted += 1,
        Verdict::Refused(Reason::RateLimited, _) => record.rate_limited += 1,
        Verdict::Refused(_, _) => record.unauthorized += 1,
    }
    verdict
}

/// Whether an operator event signed as `signer` may change the registry: signed, and by the
/// root key or by a key of the registry with `admin` that is not revoked. `Err` says why not.
pub(crate) fn authorize_operator(
    signer: &Signer,
    root: Option<&PublicKey>,
    record: Option<&KeyRecord>,
) -> Result<(), String> {
    let key = match signer {
        Signer::Verified(key) => key,
        Signer::Unsigned => return Err("an operator event must be signed by an admin key".into()),
        Signer::Malformed { why, .. } => return Err((*why).into()),
        Signer::Forged(key) => return Err(format!("the signature does not verify with key {key}")),
    };
    if root == Some(key) {
        return Ok(());
    }
    match record {
        None => Err(format!(
            "key {key} is neither ADMIN_KEY nor in the registry"
        )),
        Some(r) if r.revoked_at.is_some() => Err(format!("key {key} ({}) is revoked", r.name)),
        Some(r) if !r.permissions.admin => Err(format!(
            "key {key} ({}) does not have the admin permission",
            r.name
        )),
        Some(_) => Ok(()),
    }
}

/// Whether an operator event that an admin key signed may still apply (contract §7): it must be
/// fresh, stored within [`MAX_CLOCK_SKEW_SECS`] after its `timestamp` (later than that is §4's
/// `clock`, checked before), and newer, to the millisecond, than the last event applied to its
/// target (`last_applied`). So a stored copy published again changes nothing, in the live fold
/// and in a replay alike, while a new event (a re-issue after a revocation) still applies.
pub(crate) fn in_order(op: &Operator, last_applied: Option<i64>) -> Result<(), String> {
    let behind_ms = op.stored_ms - op.at_ms;
    if behind_ms > MAX_CLOCK_SKEW_SECS * 1000 {
        return Err(format!(
            "its timestamp is {} s before JetStream stored it, and an operator event must be stored within {MAX_CLOCK_SKEW_SECS} s of its timestamp: a copy published again changes nothing; publish a new event",
            behind_ms / 1000
        ));
    }
    match last_applied {
        Some(last) if op.at_ms <= last => Err(format!(
            "an operator event for {} with a timestamp at or after this one's was applied before: a copy published again changes nothing; publish a new event",
            op.kind.target().as_str()
        )),
        _ => Ok(()),
    }
}

/// `key_issued`: the record as the grant says, keeping what the key did so far; a revocation ends.
pub(crate) fn key_issued(prev: Option<KeyRecord>, grant: &KeyGrant, minute: Minute) -> KeyRecord {
    let (admitted, unauthorized, rate_limited, window) = prev
        .map(|p| (p.admitted, p.unauthorized, p.rate_limited, p.window))
        .unwrap_or_default();
    KeyRecord {
        name: grant.name.clone(),
        node_id: grant.node_id.clone(),
        permissions: grant.permissions,
        rate_limit: grant.rate_limit,
        issued_at: minute,
        revoked_at: None,
        revoke_reason: None,
        admitted,
        unauthorized,
        rate_limited,
        window,
    }
}

/// `key_revoked`: an unknown key stays unknown.
pub(crate) fn key_revoked(
    prev: Option<KeyRecord>,
    reason: &Option<String>,
    minute: Minute,
) -> Option<KeyRecord> {
    prev.map(|mut r| {
        r.revoked_at = Some(minute);
        r.revoke_reason = reason.clone();
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use truebit_streams::{Permissions, SigningKey};

    fn grant(
        key: &PublicKey,
        node: Option<&str>,
        publish: bool,
        admin: bool,
        limit: u32,
    ) -> KeyGrant {
        KeyGrant {
            key: key.clone(),
            name: "n1".into(),
            node_id: node.map(str::to_string),
            permissions: Permissions { publish, admin },
            rate_limit: limit,
        }
    }

    fn key() -> PublicKey {
        SigningKey::generate().public_key().clone()
    }

    fn refused(v: &Verdict) -> Reason {
        match v {
            Verdict::Refused(r, _) => *r,
            Verdict::Admitted => panic!("admitted"),
        }
    }

    #[test]
    fn a_verified_publisher_is_admitted_up_to_its_rate_then_limited_until_the_next_minute() {
        let k = key();
        let mut r = key_issued(None, &grant(&k, None, true, false, 3), 0);
        let me = Signer::Verified(k);
        for _ in 0..3 {
            assert_eq!(admit(&me, Some(&mut r), "node-1", 100), Verdict::Admitted);
        }
        assert_eq!(
            refused(&admit(&me, Some(&mut r), "node-1", 100)),
            Reason::RateLimited
        );
        assert_eq!(
            refused(&admit(&me, Some(&mut r), "node-1", 100)),
            Reason::RateLimited
        );
        assert_eq!(admit(&me, Some(&mut r), "node-1", 101), Verdict::Admitted);
        assert_eq!((r.admitted, r.rate_limited, r.unauthorized), (4, 2, 0));
        assert_eq!(r.window, (101, 1));
    }

    #[test]
    fn every_unauthorized_case_is_refused_and_counted_where_a_record_exists() {
        let k = key();
        let bound = key_issued(None, &grant(&k, Some("node-1"), true, false, 60), 0);
        let cases: Vec<(Signer, Option<KeyRecord>, &str)> = vec![
            (Signer::Unsigned, None, "not signed"),
            (
                Signer::Malformed {
                    key: None,
                    why: "Truebit-Key without Truebit-Signature",
                },
                None,
                "without",
            ),
            (Signer::Verified(key()), None, "not in the registry"),
            (
                Signer::Forged(k.clone()),
                Some(bound.clone()),
                "does not verify",
            ),
            (
                Signer::Verified(k.clone()),
                key_revoked(Some(bound.clone()), &None, 5),
                "revoked",
            ),
            (
                Signer::Verified(k.clone()),
                Some(key_issued(None, &grant(&k, None, false, true, 60), 0)),
                "may not publish",
            ),
            (
                Signer::Verified(k.clone()),
                Some(bound.clone()),
                "bound to another",
            ),
        ];
        for (signer, mut record, says) in cases {
            let before = record.as_ref().map(|r| r.unauthorized);
            let v = admit(&signer, record.as_mut(), "node-2", 1);
            let Verdict::Refused(Reason::Unauthorized, detail) = &v else {
                panic!("{says}: {v:?}")
            };
            assert!(detail.contains(says), "{detail}");
            assert_eq!(record.map(|r| r.unauthorized), before.map(|n| n + 1));
        }
        let mut bound = bound;
        assert_eq!(
            admit(&Signer::Verified(k), Some(&mut bound), "node-1", 1),
            Verdict::Admitted,
            "the bound node itself"
        );
    }

    #[test]
    fn operator_events_need_the_root_or_an_unrevoked_admin_key() {
        let (root, admin, publisher) = (key(), key(), key());
        let admin_record = key_issued(None, &grant(&admin, None, false, true, 60), 0);
        let pub_record = key_issued(None, &grant(&publisher, None, true, false, 60), 0);
        let v = |k: &PublicKey| Signer::Verified(k.clone());
        assert_eq!(authorize_operator(&v(&root), Some(&root), None), Ok(()));
        assert_eq!(
            authorize_operator(&v(&admin), Some(&root), Some(&admin_record)),
            Ok(())
        );
        assert!(authorize_operator(&v(&admin), Some(&root), None).is_err());
        assert!(authorize_operator(&v(&publisher), Some(&root), Some(&pub_record)).is_err());
        let revoked = key_revoked(Some(admin_record), &None, 9).unwrap();
        assert!(authorize_operator(&v(&admin), Some(&root), Some(&revoked)).is_err());
        assert!(authorize_operator(&Signer::Forged(root.clone()), Some(&root), None).is_err());
        assert!(authorize_operator(&Signer::Unsigned, Some(&root), None).is_err());
        assert!(
            authorize_operator(&v(&root), None, None).is_err(),
            "no root configured"
        );
    }

    #[test]
    fn reissuing_a_key_ends_its_revocation_and_keeps_its_counts() {
        let k = key();
        let mut r = key_issued(None, &grant(&k, None, true, false, 60), 1);
        admit(&Signer::Verified(k.clone()), Some(&mut r), "n", 1);
        let revoked = key_revoked(Some(r), &Some("lost".into()), 2).unwrap();
        assert_eq!(revoked.revoke_reason.as_deref(), Some("lost"));
        let again = key_issued(Some(revoked), &grant(&k, Some("n"), true, false, 10), 3);
        assert_eq!(
            (again.revoked_at, again.issued_at, again.admitted),
            (None, 3, 1)
        );
        assert_eq!(
            (again.rate_limit, again.node_id.as_deref()),
            (10, Some("n"))
        );
        assert_eq!(
            key_revoked(None, &None, 4),
            None,
            "revoking an unknown key changes nothing"
        );
    }
}
