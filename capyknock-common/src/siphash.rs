//! SipHash-2-4 over exactly 56 bytes: the knock header's pre-filter tag (`wire::header_tag`).
//!
//! Hand-written rather than taken from a crate because the same code runs inside the XDP program:
//! the BPF target has no `core::hash` implementation of `SipHash` with a fixed input length, and the
//! BPF verifier needs code with no slices of unknown length, no loops over them and no panics.
//! This function reads seven little-endian words at constant offsets and one final block, all
//! written out, so LLVM turns it into straight-line code on registers. Reference: Aumasson and
//! Bernstein, "`SipHash`: a fast short-input PRF" (2012); the tests check it against the paper's
//! test vector for 56 bytes and against the `siphasher` crate for random keys and messages.

/// Length of a `SipHash` key.
pub const KEY_LEN: usize = 16;
/// Length of the message [`siphash24`] hashes.
pub const MSG_LEN: usize = 56;

/// The `N`-byte array at constant offset `OFF` of `bytes`.
///
/// The compile-time assertion makes the fallback arm unreachable, so this never panics and
/// compiles to plain loads.
#[inline(always)]
fn le_u64<const L: usize, const OFF: usize>(bytes: &[u8; L]) -> u64 {
    const { assert!(OFF + 8 <= L) };
    match bytes.split_at_checked(OFF) {
        Some((_, rest)) => match rest.first_chunk::<8>() {
            Some(word) => u64::from_le_bytes(*word),
            None => 0,
        },
        None => 0,
    }
}

/// One `SipRound`.
#[inline(always)]
fn round(v: &mut [u64; 4]) {
    let [mut v0, mut v1, mut v2, mut v3] = *v;
    v0 = v0.wrapping_add(v1);
    v1 = v1.rotate_left(13);
    v1 ^= v0;
    v0 = v0.rotate_left(32);
    v2 = v2.wrapping_add(v3);
    v3 = v3.rotate_left(16);
    v3 ^= v2;
    v0 = v0.wrapping_add(v3);
    v3 = v3.rotate_left(21);
    v3 ^= v0;
    v2 = v2.wrapping_add(v1);
    v1 = v1.rotate_left(17);
    v1 ^= v2;
    v2 = v2.rotate_left(32);
    *v = [v0, v1, v2, v3];
}

/// Absorbs one message word with two compression rounds (the "2" of SipHash-2-4).
#[inline(always)]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    round(v);
    round(v);
    v[0] ^= m;
}

/// SipHash-2-4 of a 56-byte message under a 128-bit key.
///
/// Equal to the general SipHash-2-4 (as in the paper and the `siphasher` crate) for 56-byte
/// inputs. The 56 bytes are exactly seven words, so the final block holds only the length byte.
#[inline(always)]
#[must_use]
pub fn siphash24(key: &[u8; KEY_LEN], msg: &[u8; MSG_LEN]) -> u64 {
    let k0 = le_u64::<KEY_LEN, 0>(key);
    let k1 = le_u64::<KEY_LEN, 8>(key);
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    compress(&mut v, le_u64::<MSG_LEN, 0>(msg));
    compress(&mut v, le_u64::<MSG_LEN, 8>(msg));
    compress(&mut v, le_u64::<MSG_LEN, 16>(msg));
    compress(&mut v, le_u64::<MSG_LEN, 24>(msg));
    compress(&mut v, le_u64::<MSG_LEN, 32>(msg));
    compress(&mut v, le_u64::<MSG_LEN, 40>(msg));
    compress(&mut v, le_u64::<MSG_LEN, 48>(msg));
    // Final block: no leftover bytes, the message length in the top byte.
    compress(&mut v, (MSG_LEN as u64) << 56);
    v[2] ^= 0xff;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use core::hash::Hasher;

    use proptest::prelude::*;

    use super::*;

    /// The paper's test key: bytes 00 01 02 .. 0f.
    fn paper_key() -> [u8; 16] {
        core::array::from_fn(|i| i as u8)
    }

    /// The paper's test message of length 56: bytes 00 01 .. 37.
    fn paper_msg() -> [u8; 56] {
        core::array::from_fn(|i| i as u8)
    }

    /// General-length SipHash-2-4 from the `siphasher` crate.
    fn reference(key: &[u8; 16], msg: &[u8]) -> u64 {
        let mut h = siphasher::sip::SipHasher24::new_with_key(key);
        h.write(msg);
        h.finish()
    }

    /// SipHash-2-4 of the messages `00 01 .. (len-1)` for len 0..=63 under the key `00 01 .. 0f`:
    /// `vectors_sip64` of the reference implementation (Aumasson and Bernstein), as
    /// little-endian `u64`s.
    #[rustfmt::skip]
    const PAPER_VECTORS: [u64; 64] = [
        0x726f_db47_dd0e_0e31, 0x74f8_39c5_93dc_67fd, 0x0d6c_8009_d9a9_4f5a, 0x8567_6696_d7fb_7e2d,
        0xcf27_94e0_2771_87b7, 0x1876_5564_cd99_a68d, 0xcbc9_466e_58fe_e3ce, 0xab02_00f5_8b01_d137,
        0x93f5_f579_9a93_2462, 0x9e00_82df_0ba9_e4b0, 0x7a5d_bbc5_94dd_b9f3, 0xf4b3_2f46_226b_ada7,
        0x751e_8fbc_860e_e5fb, 0x14ea_5627_c084_3d90, 0xf723_ca90_8e7a_f2ee, 0xa129_ca61_49be_45e5,
        0x3f2a_cc7f_57c2_9bdb, 0x699a_e9f5_2cbe_4794, 0x4bc1_b3f0_968d_d39c, 0xbb6d_c91d_a779_61bd,
        0xbed6_5cf2_1aa2_ee98, 0xd0f2_cbb0_2e3b_67c7, 0x9353_6795_e3a3_3e88, 0xa80c_038c_cd5c_cec8,
        0xb8ad_50c6_f649_af94, 0xbce1_92de_8a85_b8ea, 0x17d8_35b8_5bbb_15f3, 0x2f2e_6163_076b_cfad,
        0xde4d_aaac_a71d_c9a5, 0xa6a2_5066_8795_6571, 0xad87_a353_5c49_ef28, 0x32d8_92fa_d841_c342,
        0x7127_512f_72f2_7cce, 0xa7f3_2346_f959_78e3, 0x12e0_b01a_bb05_1238, 0x15e0_34d4_0fa1_97ae,
        0x314d_ffbe_0815_a3b4, 0x0279_90f0_2962_3981, 0xcadc_d4e5_9ef4_0c4d, 0x9abf_d876_6a33_735c,
        0x0e3e_a96b_5304_a7d0, 0xad0c_42d6_fc58_5992, 0x1873_06c8_9bc2_15a9, 0xd4a6_0abc_f379_2b95,
        0xf935_451d_e4f2_1df2, 0xa953_8f04_1975_5787, 0xdb9a_cddf_f56c_a510, 0xd06c_98cd_5c09_75eb,
        0xe612_a3cb_9ecb_a951, 0xc766_e62c_fcad_af96, 0xee64_435a_9752_fe72, 0xa192_d576_b245_165a,
        0x0a87_87bf_8ecb_74b2, 0x81b3_e73d_20b4_9b6f, 0x7fa8_220b_a3b2_ecea, 0x2457_31c1_3ca4_2499,
        0xb78d_bfaf_3a8d_83bd, 0xea1a_d565_322a_1a0b, 0x60e6_1c23_a379_5013, 0x6606_d7e4_4628_2b93,
        0x6ca4_ecb1_5c5f_91e1, 0x9f62_6da1_5c96_25f3, 0xe51b_3860_8ef2_5f57, 0x958a_324c_eb06_4572,
    ];

    #[test]
    fn paper_vector_for_56_bytes() {
        assert_eq!(siphash24(&paper_key(), &paper_msg()), PAPER_VECTORS[56]);
        assert_eq!(
            siphash24(&paper_key(), &paper_msg()).to_le_bytes(),
            [0xbd, 0x83, 0x8d, 0x3a, 0xaf, 0xbf, 0x8d, 0xb7]
        );
    }

    #[test]
    fn reference_crate_matches_all_paper_vectors() {
        // The oracle used for random inputs below must itself be right for every length.
        let key = paper_key();
        let msg: [u8; 64] = core::array::from_fn(|i| i as u8);
        for (len, expected) in PAPER_VECTORS.iter().enumerate() {
            assert_eq!(reference(&key, &msg[..len]), *expected, "len {len}");
        }
    }

    #[test]
    fn every_key_and_message_bit_matters() {
        let key = paper_key();
        let msg = paper_msg();
        let base = siphash24(&key, &msg);
        for bit in 0..(16 * 8) {
            let mut k = key;
            k[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(siphash24(&k, &msg), base, "key bit {bit}");
        }
        for bit in 0..(56 * 8) {
            let mut m = msg;
            m[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(siphash24(&key, &m), base, "message bit {bit}");
        }
    }

    proptest! {
        #[test]
        fn matches_siphasher(key in any::<[u8; 16]>(), msg in proptest::collection::vec(any::<u8>(), 56)) {
            let msg: [u8; 56] = msg.try_into().unwrap();
            prop_assert_eq!(siphash24(&key, &msg), reference(&key, &msg));
        }
    }
}
