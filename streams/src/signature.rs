//! Contract §7, signing: a node signs every message it publishes with an Ed25519 key in the NATS
//! nkey encoding. Header `Truebit-Key` holds its public key (`U…`), header `Truebit-Signature`
//! the base64url (no padding) of the signature over `<subject>` `\n` `<payload>`.
//!
//! Checking a signature needs nothing but the message, so it happens ahead of the fold (and on
//! as many cores as there are); whether the key may publish is the registry's question, asked in
//! the fold, in stream order.

use crate::names::{HEADER_KEY, HEADER_SIGNATURE};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use data_encoding::BASE64URL_NOPAD;
use ed25519_zebra::VerificationKey;
use nkeys::KeyPair;
use std::collections::HashMap;

mod batch;

/// An nkey public key of a user (`U…`), as it travels and as the registry stores it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(String);

impl PublicKey {
    /// A user public key in the nkey encoding, checksum and all; `None` for anything else
    /// (an account key, a seed, a typo).
    pub fn parse(s: &str) -> Option<PublicKey> {
        if !s.starts_with('U') {
            return None;
        }
        KeyPair::from_public_key(s).ok()?;
        Some(PublicKey(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key that can sign: the holder's seed. Its [`Debug`] shows the public key only, so that a
/// seed never reaches a log by accident.
pub struct SigningKey {
    pair: KeyPair,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public)
    }
}

impl SigningKey {
    /// A new user key pair, from the operating system's random source.
    pub fn generate() -> SigningKey {
        Self::from_pair(KeyPair::new_user())
    }

    /// The key of a user seed (`SU…`); `None` when `seed` is not one. The error says nothing
    /// of the seed itself.
    pub fn from_seed(seed: &str) -> Option<SigningKey> {
        let pair = KeyPair::from_seed(seed.trim()).ok()?;
        if !pair.public_key().starts_with('U') {
            return None;
        }
        Some(Self::from_pair(pair))
    }

    fn from_pair(pair: KeyPair) -> SigningKey {
        let public = PublicKey(pair.public_key());
        SigningKey { pair, public }
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The seed, for the file its holder keeps. Nothing else should ask for it.
    pub fn seed(&self) -> String {
        self.pair
            .seed()
            .expect("a generated or parsed key has its seed")
    }

    /// The two headers that sign `payload` on `subject`.
    pub fn sign(&self, subject: &str, payload: &[u8]) -> [(&'static str, String); 2] {
        let signature = self
            .pair
            .sign(&signed_bytes(subject, payload))
            .expect("a key with a seed signs");
        [
            (HEADER_KEY, self.public.0.clone()),
            (HEADER_SIGNATURE, BASE64URL_NOPAD.encode(&signature)),
        ]
    }
}

/// The bytes a signature covers.
fn signed_bytes(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(subject.len() + 1 + payload.len());
    bytes.extend_from_slice(subject.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(payload);
    bytes
}

/// What a message's signature headers show, before any registry is asked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Signer {
    /// Neither header: today's monitors, which only an `open` network admits.
    #[default]
    Unsigned,
    /// A header missing, or one that is not a public key or a signature: why, in a sentence, and
    /// the key `Truebit-Key` names when it is one, so that a forgery counts under the key it
    /// names however it is malformed (contract §7).
    Malformed {
        key: Option<PublicKey>,
        why: &'static str,
    },
    /// A well-formed key and signature that do not match the message.
    Forged(PublicKey),
    /// Signed by this key.
    Verified(PublicKey),
}

impl Signer {
    /// The key the message names, signed by it or not.
    pub fn key(&self) -> Option<&PublicKey> {
        match self {
            Signer::Forged(k) | Signer::Verified(k) => Some(k),
            Signer::Malformed { key, .. } => key.as_ref(),
            Signer::Unsigned => None,
        }
    }
}

/// Checks signatures, remembering the keys it has decoded: decoding a public key is the dearer
/// half of a check, and a network has few keys and many messages.
///
/// The rule is Ed25519 as ZIP-215 states it (the `ed25519-zebra` crate): one check of a
/// message and a check of it within any batch always agree, so that a batch check
/// ([`Verifier::check_all`]) decides exactly as checking one message at a time, whatever the
/// batch, and a replay decides as the live fold did. Every signature made by an Ed25519 signer
/// passes it.
#[derive(Default)]
pub struct Verifier {
    keys: HashMap<String, Option<Decoded>>,
}

/// A user public key, decoded once.
#[derive(Clone)]
struct Decoded {
    public: PublicKey,
    bytes: [u8; 32],
    key: Option<VerificationKey>,
    /// The key's point, for the batch equation ([`batch`]); present exactly when `key` is.
    point: Option<EdwardsPoint>,
}

/// What a message's headers show before its signature is checked.
enum Headers<'a> {
    /// Decided by the headers alone.
    Decided(Signer),
    /// A key (as the cache holds it) and a signature of the right shapes: the Ed25519 check
    /// decides.
    Check(&'a Decoded, ed25519::Signature),
}

/// More distinct keys than this and the cache starts again, so that a flood of made-up keys
/// cannot grow it without bound.
const MAX_CACHED_KEYS: usize = 100_000;

/// A message to check: `(subject, payload, Truebit-Key, Truebit-Signature)`.
pub type Signed<'a> = (&'a str, &'a [u8], Option<&'a str>, Option<&'a str>);

impl Verifier {
    pub fn new() -> Self {
        Verifier::default()
    }

    /// What the headers `key` and `signature` (their values, if present) show about `payload`
    /// published on `subject`.
    pub fn check(
        &mut self,
        subject: &str,
        payload: &[u8],
        key: Option<&str>,
        signature: Option<&str>,
    ) -> Signer {
        match self.headers(key, signature) {
            Headers::Decided(signer) => signer,
            Headers::Check(decoded, signature) => {
                let verified = decoded.key.is_some_and(|k| {
                    k.verify(&signature, &signed_bytes(subject, payload))
                        .is_ok()
                });
                verdict(decoded.public.clone(), verified)
            }
        }
    }

    /// [`Verifier::check`] of every message, in order, with their Ed25519 checks done together:
    /// one batch equation for all of them, several times cheaper than one check each; only
    /// when it fails is each checked alone, to find which.
    pub fn check_all(&mut self, messages: &[Signed<'_>]) -> Vec<Signer> {
        let mut out: Vec<Option<Signer>> = Vec::with_capacity(messages.len());
        let mut pending: Vec<(usize, Decoded, ed25519::Signature, Vec<u8>)> = Vec::new();
        for &(subject, payload, key, signature) in messages {
            match self.headers(key, signature) {
                Headers::Decided(signer) => out.push(Some(signer)),
                Headers::Check(decoded, signature) => {
                    let bytes = signed_bytes(subject, payload);
                    pending.push((out.len(), decoded.clone(), signature, bytes));
                    out.push(None);
                }
            }
        }
        let all_good = match pending.len() {
            0 => true,
            1 => false, // one alone is checked alone, below
            _ => {
                // A key that is no point forges every signature: no equation can hold.
                let entries: Option<Vec<batch::Entry<'_>>> = pending
                    .iter()
                    .map(|(_, decoded, signature, message)| {
                        Some(batch::Entry {
                            key: &decoded.bytes,
                            point: decoded.point.as_ref()?,
                            signature: signature.to_bytes(),
                            message,
                        })
                    })
                    .collect();
                entries.is_some_and(|entries| batch::holds(&entries, &mut rand_core::OsRng))
            }
        };
        for (i, decoded, signature, bytes) in pending {
            let verified = all_good
                || decoded
                    .key
                    .is_some_and(|k| k.verify(&signature, &bytes).is_ok());
            out[i] = Some(verdict(decoded.public, verified));
        }
        out.into_iter()
            .map(|s| s.expect("every message decided"))
            .collect()
    }

    /// Everything but the Ed25519 check: which headers there are, and whether they have the
    /// shapes of a user key and a signature.
    fn headers(&mut self, key: Option<&str>, signature: Option<&str>) -> Headers<'_> {
        let (key, signature) = match (key, signature) {
            (None, None) => return Headers::Decided(Signer::Unsigned),
            (Some(k), Some(s)) => (k.trim(), s.trim()),
            (None, Some(_)) => {
                return Headers::Decided(Signer::Malformed {
                    key: None,
                    why: "Truebit-Signature without Truebit-Key",
                })
            }
            (Some(k), None) => {
                return Headers::Decided(Signer::Malformed {
                    key: PublicKey::parse(k.trim()),
                    why: "Truebit-Key without Truebit-Signature",
                })
            }
        };
        if !self.keys.contains_key(key) {
            if self.keys.len() >= MAX_CACHED_KEYS {
                self.keys.clear();
            }
            self.keys.insert(key.to_string(), decode(key));
        }
        // A hit costs a lookup, not an allocation: most messages come from a known key.
        let Some(decoded) = self.keys.get(key).and_then(Option::as_ref) else {
            return Headers::Decided(Signer::Malformed {
                key: None,
                why: "Truebit-Key is not an nkey user public key (U…)",
            });
        };
        let malformed = |why| {
            Headers::Decided(Signer::Malformed {
                key: Some(decoded.public.clone()),
                why,
            })
        };
        let Ok(signature) = BASE64URL_NOPAD.decode(signature.as_bytes()) else {
            return malformed("Truebit-Signature is not base64url without padding");
        };
        let Ok(signature) = <[u8; 64]>::try_from(signature.as_slice()) else {
            return malformed("Truebit-Signature is not 64 bytes");
        };
        Headers::Check(decoded, ed25519::Signature::from_bytes(&signature))
    }
}

/// A user key (`U…`, checksum and all) and its Ed25519 point; `None` for anything else.
fn decode(key: &str) -> Option<Decoded> {
    let public = PublicKey::parse(key)?;
    let (_, raw) = nkeys::from_public_key(key).ok()?;
    // A key that is no point on the curve verifies nothing: every signature is forged.
    let key = VerificationKey::try_from(raw).ok();
    let point = key
        .as_ref()
        .and_then(|_| CompressedEdwardsY(raw).decompress());
    Some(Decoded {
        public,
        bytes: raw,
        key,
        point,
    })
}

fn verdict(public: PublicKey, verified: bool) -> Signer {
    if verified {
        Signer::Verified(public)
    } else {
        Signer::Forged(public)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(signed: &'a [(&'static str, String); 2]) -> (Option<&'a str>, Option<&'a str>) {
        (Some(signed[0].1.as_str()), Some(signed[1].1.as_str()))
    }

    /// A batch decides each message as checking it alone does: all good, one forged among
    /// good ones (the batch equation fails, and only that one is found), malformed and
    /// unsigned ones beside them, one alone.
    #[test]
    fn a_batch_decides_each_message_as_one_check_does() {
        let keys: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate()).collect();
        let payloads: Vec<Vec<u8>> = (0..12)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect();
        let mut headers: Vec<(Option<String>, Option<String>)> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let [(_, k), (_, s)] = keys[i % 3].sign("truebit.heartbeat", p);
                (Some(k), Some(s))
            })
            .collect();
        let as_signed = |headers: &[(Option<String>, Option<String>)]| -> Vec<Signer> {
            let messages: Vec<Signed> = payloads
                .iter()
                .zip(headers)
                .map(|(p, (k, s))| {
                    (
                        "truebit.heartbeat",
                        p.as_slice(),
                        k.as_deref(),
                        s.as_deref(),
                    )
                })
                .collect();
            let batch = Verifier::new().check_all(&messages);
            let one = messages
                .iter()
                .map(|&(sub, p, k, s)| Verifier::new().check(sub, p, k, s))
                .collect::<Vec<_>>();
            assert_eq!(batch, one, "a batch decides as one at a time");
            batch
        };
        let all = as_signed(&headers);
        assert!(
            all.iter().all(|s| matches!(s, Signer::Verified(_))),
            "{all:?}"
        );

        // Message 5 carries message 4's signature, made by another key over another payload.
        headers[5].1 = headers[4].1.clone();
        headers[7] = (None, None);
        headers[9].1 = Some("not base64!".into());
        let mixed = as_signed(&headers);
        for (i, signer) in mixed.iter().enumerate() {
            let expected = match i {
                5 => "forged",
                7 => "unsigned",
                9 => "malformed",
                _ => "verified",
            };
            let got = match signer {
                Signer::Verified(_) => "verified",
                Signer::Forged(_) => "forged",
                Signer::Unsigned => "unsigned",
                Signer::Malformed { .. } => "malformed",
            };
            assert_eq!(got, expected, "message {i}: {signer:?}");
        }
        assert_eq!(
            mixed[5].key(),
            Some(keys[2].public_key()),
            "forged under the key it names"
        );

        let lone = Verifier::new().check_all(&[(
            "s",
            b"p",
            headers[5].0.as_deref(),
            headers[5].1.as_deref(),
        )]);
        assert!(matches!(lone[0], Signer::Forged(_)), "{lone:?}");
    }

    #[test]
    fn a_signature_verifies_for_its_subject_and_payload_only() {
        let key = SigningKey::generate();
        let signed = key.sign("truebit.heartbeat", b"{}");
        assert_eq!(signed[0].0, "Truebit-Key");
        assert!(signed[0].1.starts_with('U') && signed[0].1.len() == 56);
        assert!(!signed[1].1.contains('=') && !signed[1].1.contains('+'));
        let (k, s) = headers(&signed);
        let mut v = Verifier::new();
        let me = key.public_key().clone();
        assert_eq!(
            v.check("truebit.heartbeat", b"{}", k, s),
            Signer::Verified(me.clone())
        );
        assert_eq!(
            v.check("truebit.heartbeat", b"{ }", k, s),
            Signer::Forged(me.clone()),
            "another payload"
        );
        assert_eq!(
            v.check("truebit.nodes.left", b"{}", k, s),
            Signer::Forged(me.clone()),
            "another subject"
        );
        let other = SigningKey::generate();
        let theirs = other.sign("truebit.heartbeat", b"{}");
        let (_, s2) = headers(&theirs);
        assert_eq!(
            v.check("truebit.heartbeat", b"{}", k, s2),
            Signer::Forged(me),
            "another key's signature"
        );
    }

    #[test]
    fn missing_and_malformed_headers_say_which() {
        let key = SigningKey::generate();
        let signed = key.sign("s", b"p");
        let (k, s) = headers(&signed);
        let mut v = Verifier::new();
        assert_eq!(v.check("s", b"p", None, None), Signer::Unsigned);
        assert!(matches!(
            v.check("s", b"p", k, None),
            Signer::Malformed { .. }
        ));
        assert!(matches!(
            v.check("s", b"p", None, s),
            Signer::Malformed { .. }
        ));
        let seed = key.seed();
        assert!(
            matches!(v.check("s", b"p", Some(&seed), s), Signer::Malformed { .. }),
            "a seed is not a public key"
        );
        let account = KeyPair::new_account().public_key();
        assert!(matches!(
            v.check("s", b"p", Some(&account), s),
            Signer::Malformed { .. }
        ));
        assert!(matches!(
            v.check("s", b"p", k, Some("not*base64")),
            Signer::Malformed { .. }
        ));
        assert!(matches!(
            v.check("s", b"p", k, Some("AAAA")),
            Signer::Malformed { .. }
        ));
        // A malformed signature still names its key (§7: a forgery counts under the key it
        // names); a header that is no public key names none.
        let named = |signer: Signer| signer.key().map(|k| k.as_str().to_string());
        let mine = Some(key.public_key().as_str().to_string());
        assert_eq!(named(v.check("s", b"p", k, None)), mine);
        assert_eq!(named(v.check("s", b"p", k, Some("not*base64"))), mine);
        assert_eq!(named(v.check("s", b"p", k, Some("AAAA"))), mine);
        assert_eq!(named(v.check("s", b"p", None, s)), None);
        assert_eq!(named(v.check("s", b"p", Some(&seed), s)), None);
    }

    #[test]
    fn seeds_round_trip_and_never_show_in_debug() {
        let key = SigningKey::generate();
        let again = SigningKey::from_seed(&format!("{}\n", key.seed())).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.seed()) && shown.contains(key.public_key().as_str()));
        assert!(SigningKey::from_seed(key.public_key().as_str()).is_none());
        assert!(SigningKey::from_seed("SUnotaseed").is_none());
        assert!(PublicKey::parse(key.public_key().as_str()).is_some());
        let mut typo = key.public_key().as_str().to_string();
        typo.replace_range(10..11, if &typo[10..11] == "A" { "B" } else { "A" });
        assert!(
            PublicKey::parse(&typo).is_none(),
            "the checksum catches a typo"
        );
    }
}
