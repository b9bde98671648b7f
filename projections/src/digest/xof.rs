//! An element's 2 KiB of BLAKE3 output, eight output blocks at a time.
//!
//! An LtHash element is BLAKE3's extendable output of 2048 bytes: 32 output blocks, each one
//! compression of the same root block under its own counter. The `blake3` crate (1.8) computes
//! them in parallel only with AVX-512; on a machine with AVX2 alone it compresses them one at a
//! time: 2.5-3.7 µs an element on this project's benchmark machine, about half of what the
//! fold spends on an event. Here the 32 blocks are compressed eight at a time in AVX2
//! registers and added into the lanes in place: 1.0-1.6 µs (both timed in a loop beside a
//! soak; the benchmarks' README has what it does to the fold's rate).
//!
//! Only the output is computed here, and only for an input of one chunk (1024 bytes, every
//! record this project hashes but a very large counters row); anything else, and every machine
//! without AVX2, goes to the `blake3` crate. The tests compare the two on every length.

// Off x86_64 everything below but `accumulate` is unused: the crate does all the work there.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::LANES;

/// The longest input hashed here; longer ones span several chunks, a tree BLAKE3's own code
/// builds.
const CHUNK: usize = 1024;
const BLOCK: usize = 64;

/// Adds (`add`) or subtracts the 1024 little-endian `u16`s of BLAKE3's extendable output of
/// `pieces` concatenated into `lanes`, lane by lane, wrapping.
pub(crate) fn accumulate(pieces: &[&[u8]], lanes: &mut [u16; LANES], add: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        if len <= CHUNK && std::is_x86_feature_detected!("avx2") {
            let mut input = [0u8; CHUNK];
            let mut at = 0;
            for piece in pieces {
                input[at..at + piece.len()].copy_from_slice(piece);
                at += piece.len();
            }
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { avx2::accumulate(&Root::of(&input[..len]), lanes, add) };
            return;
        }
    }
    let mut hasher = blake3::Hasher::new();
    for piece in pieces {
        hasher.update(piece);
    }
    let mut bytes = [0u8; 2 * LANES];
    hasher.finalize_xof().fill(&mut bytes);
    let lanes = lanes.iter_mut().zip(bytes.chunks_exact(2));
    if add {
        for (lane, b) in lanes {
            *lane = lane.wrapping_add(u16::from_le_bytes([b[0], b[1]]));
        }
    } else {
        for (lane, b) in lanes {
            *lane = lane.wrapping_sub(u16::from_le_bytes([b[0], b[1]]));
        }
    }
}

const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];

/// The order in which each of the seven rounds reads the block's words.
const SCHEDULE: [[usize; 16]; 7] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8],
    [3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1],
    [10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6],
    [12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4],
    [9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7],
    [11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13],
];

const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;
const ROOT: u32 = 8;

/// What every output block of a one-chunk input is compressed from: the chaining value after
/// all but the last block, and the last block with its length and flags.
struct Root {
    cv: [u32; 8],
    block: [u32; 16],
    len: u32,
    flags: u32,
}

impl Root {
    fn of(input: &[u8]) -> Root {
        debug_assert!(input.len() <= CHUNK);
        let mut cv = IV;
        let mut rest = input;
        let mut start = CHUNK_START;
        while rest.len() > BLOCK {
            let (block, tail) = rest.split_at(BLOCK);
            cv = compress(&cv, &words(block), BLOCK as u32, start);
            start = 0;
            rest = tail;
        }
        let mut last = [0u8; BLOCK];
        last[..rest.len()].copy_from_slice(rest);
        Root {
            cv,
            block: words(&last),
            len: rest.len() as u32,
            flags: start | CHUNK_END | ROOT,
        }
    }
}

fn words(block: &[u8]) -> [u32; 16] {
    let mut words = [0u32; 16];
    for (w, b) in words.iter_mut().zip(block.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    words
}

/// One compression of a non-final block of chunk 0, as a chaining value: the few blocks before
/// a record's last one.
fn compress(cv: &[u32; 8], m: &[u32; 16], len: u32, flags: u32) -> [u32; 8] {
    #[rustfmt::skip]
    let mut s = [
        cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7],
        IV[0], IV[1], IV[2], IV[3], 0, 0, len, flags,
    ];
    #[inline(always)]
    fn g(s: &mut [u32; 16], [a, b, c, d]: [usize; 4], x: u32, y: u32) {
        s[a] = s[a].wrapping_add(s[b]).wrapping_add(x);
        s[d] = (s[d] ^ s[a]).rotate_right(16);
        s[c] = s[c].wrapping_add(s[d]);
        s[b] = (s[b] ^ s[c]).rotate_right(12);
        s[a] = s[a].wrapping_add(s[b]).wrapping_add(y);
        s[d] = (s[d] ^ s[a]).rotate_right(8);
        s[c] = s[c].wrapping_add(s[d]);
        s[b] = (s[b] ^ s[c]).rotate_right(7);
    }
    rounds!(g, s, m);
    std::array::from_fn(|i| s[i] ^ s[i + 8])
}

/// The seven rounds of quarter-rounds `g` over state `s` and block words `m`, written out:
/// with every index a constant the state stays in registers. Each round mixes the four
/// columns, then the four diagonals, reading the words in [`SCHEDULE`]'s order.
macro_rules! rounds {
    ($g:ident, $s:ident, $m:ident) => {
        for r in &SCHEDULE {
            $g(&mut $s, [0, 4, 8, 12], $m[r[0]], $m[r[1]]);
            $g(&mut $s, [1, 5, 9, 13], $m[r[2]], $m[r[3]]);
            $g(&mut $s, [2, 6, 10, 14], $m[r[4]], $m[r[5]]);
            $g(&mut $s, [3, 7, 11, 15], $m[r[6]], $m[r[7]]);
            $g(&mut $s, [0, 5, 10, 15], $m[r[8]], $m[r[9]]);
            $g(&mut $s, [1, 6, 11, 12], $m[r[10]], $m[r[11]]);
            $g(&mut $s, [2, 7, 8, 13], $m[r[12]], $m[r[13]]);
            $g(&mut $s, [3, 4, 9, 14], $m[r[14]], $m[r[15]]);
        }
    };
}
use rounds;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Root, BLOCK, IV, LANES, SCHEDULE};
    use std::arch::x86_64::*;

    /// Rotations right by 16 and 8 bits move whole bytes: one shuffle each.
    #[inline(always)]
    unsafe fn rot16(x: __m256i) -> __m256i {
        #[rustfmt::skip]
        let bytes = _mm256_set_epi8(
            13, 12, 15, 14, 9, 8, 11, 10, 5, 4, 7, 6, 1, 0, 3, 2,
            13, 12, 15, 14, 9, 8, 11, 10, 5, 4, 7, 6, 1, 0, 3, 2,
        );
        _mm256_shuffle_epi8(x, bytes)
    }

    #[inline(always)]
    unsafe fn rot8(x: __m256i) -> __m256i {
        #[rustfmt::skip]
        let bytes = _mm256_set_epi8(
            12, 15, 14, 13, 8, 11, 10, 9, 4, 7, 6, 5, 0, 3, 2, 1,
            12, 15, 14, 13, 8, 11, 10, 9, 4, 7, 6, 5, 0, 3, 2, 1,
        );
        _mm256_shuffle_epi8(x, bytes)
    }

    #[inline(always)]
    unsafe fn rot12(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_srli_epi32(x, 12), _mm256_slli_epi32(x, 20))
    }

    #[inline(always)]
    unsafe fn rot7(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_srli_epi32(x, 7), _mm256_slli_epi32(x, 25))
    }

    #[inline(always)]
    unsafe fn add3(a: __m256i, b: __m256i, c: __m256i) -> __m256i {
        _mm256_add_epi32(_mm256_add_epi32(a, b), c)
    }

    /// One quarter-round in each of eight states at once.
    #[inline(always)]
    unsafe fn g(s: &mut [__m256i; 16], [a, b, c, d]: [usize; 4], x: __m256i, y: __m256i) {
        s[a] = add3(s[a], s[b], x);
        s[d] = rot16(_mm256_xor_si256(s[d], s[a]));
        s[c] = _mm256_add_epi32(s[c], s[d]);
        s[b] = rot12(_mm256_xor_si256(s[b], s[c]));
        s[a] = add3(s[a], s[b], y);
        s[d] = rot8(_mm256_xor_si256(s[d], s[a]));
        s[c] = _mm256_add_epi32(s[c], s[d]);
        s[b] = rot7(_mm256_xor_si256(s[b], s[c]));
    }

    /// Transposes eight registers of eight words: word `k` of register `i` becomes word `i` of
    /// register `k`.
    #[inline(always)]
    unsafe fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
        let lo32 = |a, b| _mm256_unpacklo_epi32(a, b);
        let hi32 = |a, b| _mm256_unpackhi_epi32(a, b);
        let (t0, t1) = (lo32(r[0], r[1]), hi32(r[0], r[1]));
        let (t2, t3) = (lo32(r[2], r[3]), hi32(r[2], r[3]));
        let (t4, t5) = (lo32(r[4], r[5]), hi32(r[4], r[5]));
        let (t6, t7) = (lo32(r[6], r[7]), hi32(r[6], r[7]));
        let lo64 = |a, b| _mm256_unpacklo_epi64(a, b);
        let hi64 = |a, b| _mm256_unpackhi_epi64(a, b);
        let (u0, u1, u2, u3) = (lo64(t0, t2), hi64(t0, t2), lo64(t1, t3), hi64(t1, t3));
        let (u4, u5, u6, u7) = (lo64(t4, t6), hi64(t4, t6), lo64(t5, t7), hi64(t5, t7));
        [
            _mm256_permute2x128_si256(u0, u4, 0x20),
            _mm256_permute2x128_si256(u1, u5, 0x20),
            _mm256_permute2x128_si256(u2, u6, 0x20),
            _mm256_permute2x128_si256(u3, u7, 0x20),
            _mm256_permute2x128_si256(u0, u4, 0x31),
            _mm256_permute2x128_si256(u1, u5, 0x31),
            _mm256_permute2x128_si256(u2, u6, 0x31),
            _mm256_permute2x128_si256(u3, u7, 0x31),
        ]
    }

    /// Adds or subtracts the 32 output blocks of `root` into `lanes`, eight blocks at a time:
    /// lane `k` of every register belongs to the block with counter `first + k` until the
    /// transposes turn each block into two registers of its own, 32 lanes of 16 bits.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn accumulate(root: &Root, lanes: &mut [u16; LANES], add: bool) {
        let splat = |w: u32| _mm256_set1_epi32(w as i32);
        let m: [__m256i; 16] = std::array::from_fn(|i| splat(root.block[i]));
        for (group, lanes) in lanes.chunks_exact_mut(8 * BLOCK / 2).enumerate() {
            let first = (group * 8) as i32;
            #[rustfmt::skip]
            let mut s = [
                splat(root.cv[0]), splat(root.cv[1]), splat(root.cv[2]), splat(root.cv[3]),
                splat(root.cv[4]), splat(root.cv[5]), splat(root.cv[6]), splat(root.cv[7]),
                splat(IV[0]), splat(IV[1]), splat(IV[2]), splat(IV[3]),
                _mm256_setr_epi32(first, first + 1, first + 2, first + 3,
                                  first + 4, first + 5, first + 6, first + 7),
                _mm256_setzero_si256(), splat(root.len), splat(root.flags),
            ];
            rounds!(g, s, m);
            // An output block is the state's two halves XORed, then its second half XORed
            // with the chaining value.
            let low = transpose(std::array::from_fn(|i| _mm256_xor_si256(s[i], s[i + 8])));
            let high = transpose(std::array::from_fn(|i| {
                _mm256_xor_si256(s[i + 8], splat(root.cv[i]))
            }));
            for (k, block) in lanes.chunks_exact_mut(BLOCK / 2).enumerate() {
                for (half, output) in block.chunks_exact_mut(16).zip([low[k], high[k]]) {
                    let at = half.as_mut_ptr().cast::<__m256i>();
                    let now = _mm256_loadu_si256(at);
                    let next = if add {
                        _mm256_add_epi16(now, output)
                    } else {
                        _mm256_sub_epi16(now, output)
                    };
                    _mm256_storeu_si256(at, next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `accumulate` must do, by the `blake3` crate alone: `start` plus or minus the output.
    fn reference(start: &[u16; LANES], input: &[u8], add: bool) -> [u16; LANES] {
        let mut bytes = [0u8; 2 * LANES];
        blake3::Hasher::new()
            .update(input)
            .finalize_xof()
            .fill(&mut bytes);
        std::array::from_fn(|i| {
            let word = u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
            if add {
                start[i].wrapping_add(word)
            } else {
                start[i].wrapping_sub(word)
            }
        })
    }

    fn start() -> [u16; LANES] {
        std::array::from_fn(|i| (i as u16).wrapping_mul(40503))
    }

    #[test]
    fn every_length_adds_and_subtracts_blake3s_own_output() {
        for len in 0..=CHUNK + 2 * BLOCK + 1 {
            let input: Vec<u8> = (0..len).map(|i| (i * 31 + len * 7) as u8).collect();
            for add in [true, false] {
                let mut lanes = start();
                accumulate(&[&input], &mut lanes, add);
                assert!(
                    lanes == reference(&start(), &input, add),
                    "length {len}, add {add}"
                );
            }
        }
    }

    #[test]
    fn pieces_hash_as_their_concatenation() {
        let input: Vec<u8> = (0..300u32).map(|i| (i * 13) as u8).collect();
        for cut in [0, 1, 63, 64, 65, 200, 300] {
            let (a, b) = input.split_at(cut);
            let mut lanes = start();
            accumulate(&[a, &[], b], &mut lanes, true);
            assert!(lanes == reference(&start(), &input, true), "cut at {cut}");
        }
    }

    #[test]
    fn the_eight_wide_path_is_blake3s_where_this_machine_has_avx2() {
        // `accumulate` falls back to the crate without AVX2, which would pass the tests above
        // by itself: this one runs the eight-wide path directly (and nothing, without AVX2).
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            for len in [0, 1, 64, 65, 190, CHUNK] {
                let input = vec![0xa5u8; len];
                let mut lanes = start();
                // SAFETY: the CPU has AVX2, checked above.
                unsafe { avx2::accumulate(&Root::of(&input), &mut lanes, false) };
                assert!(lanes == reference(&start(), &input, false), "length {len}");
            }
        }
    }
}
