//! The ZIP-215 batch equation, with each key's point decoded once for the process.
//!
//! `ed25519-zebra`'s batch verifier decodes every distinct key of a batch anew. Its own comment
//! counts the cost: `n + m` point decompressions for `n` signatures from `m` keys. A batch from a
//! fleet of signing nodes has nearly as many keys as messages, and a decompression is an
//! exponentiation in the field: about half of what the batch costs goes to decoding keys that
//! the [`super::Verifier`] already holds decoded. Here the keys come decoded, so a batch
//! decompresses only its `n` signatures' `R` points.
//!
//! The equation is the one `ed25519-zebra` checks (ZIP-215):
//! `8·(−Σ zᵢsᵢ·B + Σ zᵢ·Rᵢ + Σ (Σ zᵢkᵢ)·A) = 0`, with `kᵢ = SHA-512(Rᵢ ‖ A ‖ Mᵢ)` and random
//! 128-bit `zᵢ`. It holds whenever every signature passes a single ZIP-215 check, and fails with
//! probability 1 − 2⁻¹²⁸ otherwise; the caller then checks each alone, with `ed25519-zebra`, so
//! that every verdict is a single check's.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha512};
use std::collections::HashMap;

/// One signature to check: its key (encoded, and decoded as a point), the signature, and the
/// signed bytes.
pub(crate) struct Entry<'a> {
    pub key: &'a [u8; 32],
    pub point: &'a EdwardsPoint,
    pub signature: [u8; 64],
    pub message: &'a [u8],
}

/// Whether the batch equation holds for `entries`; `false` also when a signature's `R` is no
/// point or its `s` is not canonical, which fails its single check too.
pub(crate) fn holds(entries: &[Entry<'_>], rng: &mut (impl RngCore + CryptoRng)) -> bool {
    // The zᵢ, from one read of the random source rather than one per signature.
    let mut random = vec![0u8; 16 * entries.len()];
    rng.fill_bytes(&mut random);
    let mut b_coeff = Scalar::ZERO;
    let mut r_coeffs = Vec::with_capacity(entries.len());
    let mut rs = Vec::with_capacity(entries.len());
    // Each distinct key once, with the sum of its zᵢkᵢ.
    let mut at: HashMap<&[u8; 32], usize> = HashMap::with_capacity(entries.len());
    let mut a_coeffs: Vec<Scalar> = Vec::with_capacity(entries.len());
    let mut a_points: Vec<EdwardsPoint> = Vec::with_capacity(entries.len());
    for (entry, z) in entries.iter().zip(random.chunks_exact(16)) {
        let (r_bytes, s_bytes) = entry.signature.split_at(32);
        let r_bytes: [u8; 32] = r_bytes.try_into().expect("32 bytes");
        let s_bytes: [u8; 32] = s_bytes.try_into().expect("32 bytes");
        let Some(r) = CompressedEdwardsY(r_bytes).decompress() else {
            return false;
        };
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r_bytes)
                .chain_update(entry.key)
                .chain_update(entry.message)
                .finalize()
                .into(),
        );
        let z = Scalar::from(u128::from_le_bytes(z.try_into().expect("16 bytes")));
        b_coeff -= z * s;
        r_coeffs.push(z);
        rs.push(r);
        let i = *at.entry(entry.key).or_insert_with(|| {
            a_coeffs.push(Scalar::ZERO);
            a_points.push(*entry.point);
            a_points.len() - 1
        });
        a_coeffs[i] += z * k;
    }
    let check = EdwardsPoint::vartime_multiscalar_mul(
        std::iter::once(&b_coeff)
            .chain(a_coeffs.iter())
            .chain(r_coeffs.iter()),
        std::iter::once(&ED25519_BASEPOINT_POINT)
            .chain(a_points.iter())
            .chain(rs.iter()),
    );
    check.mul_by_cofactor().is_identity()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::SigningKey;
    use data_encoding::BASE64URL_NOPAD;

    /// A message as `(key, point, signature, signed bytes)`.
    type Message = ([u8; 32], EdwardsPoint, [u8; 64], Vec<u8>);

    /// Twelve messages from three keys.
    fn signed() -> Vec<Message> {
        let keys: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate()).collect();
        (0..12)
            .map(|i| {
                let key = &keys[i % 3];
                let payload = format!("{{\"n\":{i}}}");
                let [_, (_, signature)] = key.sign("truebit.heartbeat", payload.as_bytes());
                let (_, raw) = nkeys::from_public_key(key.public_key().as_str()).unwrap();
                let signature = BASE64URL_NOPAD.decode(signature.as_bytes()).unwrap();
                (
                    raw,
                    CompressedEdwardsY(raw).decompress().unwrap(),
                    signature.try_into().unwrap(),
                    format!("truebit.heartbeat\n{payload}").into_bytes(),
                )
            })
            .collect()
    }

    fn entries(signed: &[Message]) -> Vec<Entry<'_>> {
        signed
            .iter()
            .map(|(key, point, signature, message)| Entry {
                key,
                point,
                signature: *signature,
                message,
            })
            .collect()
    }

    /// The equation holds for good signatures, so that a batch of them costs one check; and it
    /// fails for a changed message, a signature moved to another message, and an `s` that is
    /// not canonical.
    #[test]
    fn the_equation_holds_for_good_signatures_only() {
        let good = signed();
        assert!(holds(&entries(&good), &mut rand_core::OsRng));

        let mut changed = good.clone();
        changed[3].3.push(b' ');
        assert!(!holds(&entries(&changed), &mut rand_core::OsRng));

        let mut moved = good.clone();
        moved[7].2 = moved[4].2;
        assert!(!holds(&entries(&moved), &mut rand_core::OsRng));

        let mut wide = good.clone();
        wide[0].2[32..].fill(0xff);
        assert!(!holds(&entries(&wide), &mut rand_core::OsRng));
    }
}
