//! A keyed full-cycle permutation of `[0, n)` and its shards.
//!
//! Written by hand because no maintained crate offers a random-access keyed permutation of an
//! arbitrary-size domain (format-preserving encryption crates target strings and are far slower).
//! The construction is the usual one (as in masscan's BlackRock): a balanced four-round Feistel
//! network on the smallest even number of bits covering `n`, made into a bijection of `[0, n)`
//! by cycle walking. The domain is below `4n`, so a step takes fewer than four Feistel
//! evaluations on average. The round function is a fast integer mixer, not a cipher: the goal is
//! to spread probes to one host over the whole scan, not secrecy.
//!
//! Shards: shard `i` of `n` takes the positions `p ≡ i (mod n)` of the same permutation, so with
//! the same seed the shards are disjoint and their union is the whole scan.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

const ROUNDS: usize = 4;

/// A keyed bijection of `[0, len)`.
#[derive(Debug, Clone)]
pub struct Permutation {
    len: u64,
    half_bits: u32,
    half_mask: u64,
    round_keys: [u64; ROUNDS],
}

impl Permutation {
    /// A permutation of `[0, len)` keyed by `seed`. `len` must be at least 1.
    pub fn new(len: u64, seed: u64) -> Permutation {
        assert!(len >= 1, "a permutation needs a non-empty domain");
        let bits = (64 - (len - 1).leading_zeros()).max(2);
        let half_bits = bits.div_ceil(2);
        let half_mask = (1u64 << half_bits) - 1;
        let mut round_keys = [0u64; ROUNDS];
        for (round, key) in round_keys.iter_mut().enumerate() {
            let mut hasher = SipHasher13::new_with_keys(seed, 0x7379_6e77_6174_6368);
            hasher.write_u64(round as u64);
            *key = hasher.finish();
        }
        Permutation { len, half_bits, half_mask, round_keys }
    }

    /// Size of the domain.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element at `position` (which must be below `len`).
    #[inline]
    pub fn at(&self, position: u64) -> u64 {
        debug_assert!(position < self.len);
        let mut value = self.feistel(position);
        while value >= self.len {
            value = self.feistel(value);
        }
        value
    }

    #[inline]
    fn feistel(&self, value: u64) -> u64 {
        let mut left = value >> self.half_bits;
        let mut right = value & self.half_mask;
        for key in self.round_keys {
            let mixed = mix(right ^ key) & self.half_mask;
            let next_right = left ^ mixed;
            left = right;
            right = next_right;
        }
        (left << self.half_bits) | right
    }
}

/// The SplitMix64 finaliser: a cheap, well-distributed 64-bit mixer.
#[inline]
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Shard `index` of `count` (`--shard 1/3` is index 0 of 3 in the zero-based form; see
/// [`Shard::parse`], which takes the one-based form users type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Zero-based shard index, below `count`.
    pub index: u64,
    /// Number of shards, at least 1.
    pub count: u64,
}

impl Shard {
    /// The whole scan.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/n` with `1 ≤ i ≤ n` (one-based, as users count).
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (index, count) = text.split_once('/').ok_or_else(|| format!("{text:?} is not of the form i/n"))?;
        let index: u64 = index.trim().parse().map_err(|_| format!("{index:?} is not a shard number"))?;
        let count: u64 = count.trim().parse().map_err(|_| format!("{count:?} is not a shard count"))?;
        if count == 0 || index == 0 || index > count {
            return Err(format!("shard {index}/{count}: need 1 <= i <= n"));
        }
        Ok(Shard { index: index - 1, count })
    }

    /// How many of `total` positions belong to this shard.
    pub fn size(&self, total: u64) -> u64 {
        if self.index >= total { 0 } else { (total - self.index).div_ceil(self.count) }
    }

    /// The `k`-th position of this shard (positions are `index, index + count, ...`).
    pub fn position(&self, k: u64) -> u64 {
        self.index + k * self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_bijection(len: u64, seed: u64) {
        let permutation = Permutation::new(len, seed);
        let mut seen = vec![false; len as usize];
        for position in 0..len {
            let value = permutation.at(position);
            assert!(value < len, "value {value} out of [0, {len})");
            assert!(!seen[value as usize], "value {value} produced twice for len {len}");
            seen[value as usize] = true;
        }
    }

    #[test]
    fn is_a_bijection_for_many_sizes() {
        for len in [1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 64, 97, 127, 128, 1000, 1021, 4096, 65_521, 65_536] {
            for seed in [0, 1, 0xdead_beef] {
                assert_bijection(len, seed);
            }
        }
        assert_bijection(1_000_000, 42);
    }

    #[test]
    fn seeds_change_the_order() {
        let a = Permutation::new(1000, 1);
        let b = Permutation::new(1000, 2);
        let same = (0..1000).filter(|&p| a.at(p) == b.at(p)).count();
        assert!(same < 20, "{same} positions agree between two seeds");
    }

    #[test]
    fn consecutive_positions_spread_over_hosts() {
        // 256 hosts × 4 ports: the first 256 probes should touch many distinct hosts, not
        // hammer one host's four ports back to back.
        let permutation = Permutation::new(1024, 7);
        let hosts: std::collections::HashSet<u64> = (0..256).map(|p| permutation.at(p) / 4).collect();
        assert!(hosts.len() > 120, "only {} hosts in the first 256 probes", hosts.len());
        let adjacent_same_host = (1..1024).filter(|&p| permutation.at(p) / 4 == permutation.at(p - 1) / 4).count();
        assert!(adjacent_same_host < 30, "{adjacent_same_host} back-to-back probes to one host");
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_space() {
        for (len, count) in [(1u64, 3u64), (10, 3), (1000, 7), (4096, 4), (12_345, 10)] {
            let permutation = Permutation::new(len, 99);
            let mut owner = vec![u64::MAX; len as usize];
            for index in 0..count {
                let shard = Shard { index, count };
                for k in 0..shard.size(len) {
                    let value = permutation.at(shard.position(k)) as usize;
                    assert_eq!(owner[value], u64::MAX, "value {value} in two shards");
                    owner[value] = index;
                }
            }
            assert!(owner.iter().all(|&o| o != u64::MAX), "some value in no shard for len {len}");
        }
    }

    #[test]
    fn shard_parsing_is_one_based() {
        assert_eq!(Shard::parse("1/3"), Ok(Shard { index: 0, count: 3 }));
        assert_eq!(Shard::parse("3/3"), Ok(Shard { index: 2, count: 3 }));
        assert!(Shard::parse("0/3").is_err());
        assert!(Shard::parse("4/3").is_err());
        assert!(Shard::parse("1/0").is_err());
        assert!(Shard::parse("a/b").is_err());
    }
}
