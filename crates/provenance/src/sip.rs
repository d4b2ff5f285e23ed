//! SipHash-2-4 of short messages, eight at a time: the watermark's keyed
//! function evaluated for a whole vocabulary per step. The lanes are plain
//! arrays that the compiler turns into vector instructions (AVX-512 has a
//! 64-bit rotate); the result is bit for bit `siphasher`'s, which the tests
//! check.

const LANES: usize = 8;
type V = [u64; LANES];

/// The messages the watermark hashes, by shape.
#[derive(Clone, Copy)]
pub enum Message<'a> {
    /// One token id (4 bytes): LeftHash.
    Token,
    /// Two words then the token id (12 bytes): SelfHash, where `words[i]`
    /// is the 64-bit anchor of token `tokens[i]`, written high half first.
    AnchorThenToken(&'a [u64]),
}

/// `out[i] = SipHash-2-4(key, message of tokens[i])`.
pub fn hash_tokens(key: (u64, u64), msg: Message<'_>, tokens: &[u32], out: &mut [u64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            return unsafe { hash_tokens_avx512(key, msg, tokens, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { hash_tokens_avx2(key, msg, tokens, out) };
        }
    }
    hash_tokens_generic(key, msg, tokens, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn hash_tokens_avx512(key: (u64, u64), msg: Message<'_>, tokens: &[u32], out: &mut [u64]) {
    hash_tokens_generic(key, msg, tokens, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn hash_tokens_avx2(key: (u64, u64), msg: Message<'_>, tokens: &[u32], out: &mut [u64]) {
    hash_tokens_generic(key, msg, tokens, out)
}

#[inline(always)]
fn hash_tokens_generic(key: (u64, u64), msg: Message<'_>, tokens: &[u32], out: &mut [u64]) {
    let n = tokens.len().min(out.len());
    let mut at = 0;
    while at < n {
        let len = (n - at).min(LANES);
        let mut t = [0u64; LANES];
        let mut w = [0u64; LANES];
        for i in 0..len {
            t[i] = tokens[at + i] as u64;
            if let Message::AnchorThenToken(words) = msg {
                let m = words[at + i];
                w[i] = m.rotate_left(32);
            }
        }
        let h = match msg {
            Message::Token => sip_lanes(key, None, &t, 4),
            Message::AnchorThenToken(_) => sip_lanes(key, Some(&w), &t, 12),
        };
        out[at..at + len].copy_from_slice(&h[..len]);
        at += len;
    }
}

/// SipHash-2-4 of a message of one optional full 8-byte block followed by
/// a 4-byte tail, `len` bytes in all, per lane.
#[inline(always)]
fn sip_lanes(key: (u64, u64), block: Option<&V>, tail: &V, len: u64) -> V {
    let mut v0 = [key.0 ^ 0x736f_6d65_7073_6575; LANES];
    let mut v1 = [key.1 ^ 0x646f_7261_6e64_6f6d; LANES];
    let mut v2 = [key.0 ^ 0x6c79_6765_6e65_7261; LANES];
    let mut v3 = [key.1 ^ 0x7465_6462_7974_6573; LANES];
    if let Some(m) = block {
        xor(&mut v3, m);
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        xor(&mut v0, m);
    }
    let mut b = [0u64; LANES];
    for i in 0..LANES {
        b[i] = (len << 56) | tail[i];
    }
    xor(&mut v3, &b);
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    xor(&mut v0, &b);
    for x in v2.iter_mut() {
        *x ^= 0xff;
    }
    for _ in 0..4 {
        round(&mut v0, &mut v1, &mut v2, &mut v3);
    }
    let mut out = [0u64; LANES];
    for i in 0..LANES {
        out[i] = v0[i] ^ v1[i] ^ v2[i] ^ v3[i];
    }
    out
}

#[inline(always)]
fn xor(a: &mut V, b: &V) {
    for i in 0..LANES {
        a[i] ^= b[i];
    }
}

#[inline(always)]
fn round(v0: &mut V, v1: &mut V, v2: &mut V, v3: &mut V) {
    for i in 0..LANES {
        v0[i] = v0[i].wrapping_add(v1[i]);
        v1[i] = v1[i].rotate_left(13) ^ v0[i];
        v0[i] = v0[i].rotate_left(32);
        v2[i] = v2[i].wrapping_add(v3[i]);
        v3[i] = v3[i].rotate_left(16) ^ v2[i];
        v0[i] = v0[i].wrapping_add(v3[i]);
        v3[i] = v3[i].rotate_left(21) ^ v0[i];
        v2[i] = v2[i].wrapping_add(v1[i]);
        v1[i] = v1[i].rotate_left(17) ^ v2[i];
        v2[i] = v2[i].rotate_left(32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use siphasher::sip::SipHasher24;
    use std::hash::Hasher;

    fn reference(key: (u64, u64), words: &[u32]) -> u64 {
        let mut h = SipHasher24::new_with_keys(key.0, key.1);
        for w in words {
            h.write(&w.to_le_bytes());
        }
        h.finish()
    }

    #[test]
    fn lanes_equal_siphasher() {
        let key = (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        let tokens: Vec<u32> = (0..37).map(|i| i * 1361 + 7).collect();
        let anchors: Vec<u64> = (0..37u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let mut out = vec![0; tokens.len()];
        hash_tokens(key, Message::Token, &tokens, &mut out);
        for (t, h) in tokens.iter().zip(&out) {
            assert_eq!(*h, reference(key, &[*t]));
        }
        hash_tokens(key, Message::AnchorThenToken(&anchors), &tokens, &mut out);
        for ((t, m), h) in tokens.iter().zip(&anchors).zip(&out) {
            assert_eq!(*h, reference(key, &[(m >> 32) as u32, *m as u32, *t]));
        }
        let mut generic = vec![0; tokens.len()];
        hash_tokens_generic(key, Message::Token, &tokens, &mut generic);
        hash_tokens(key, Message::Token, &tokens, &mut out);
        assert_eq!(generic, out);
    }
}
