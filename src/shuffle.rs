//! The verifiable pre-queue shuffle.
//!
//! Fans who arrive before a room opens all get the same chance: at opening,
//! their order is a uniformly random permutation of their sequence numbers
//! (1 … N, the pseudonymous ids the room publishes). The randomness comes
//! from a 32-byte seed fixed *before* opening: the room publishes
//! `commitment = SHA-256(seed)` while fans queue, and reveals the seed once
//! it opens. Anyone can then check the commitment and recompute the order
//! with `waitroom verify-shuffle`, or with this description:
//!
//! 1. `order = [1, 2, …, N]`.
//! 2. For `i` from `N − 1` down to `1` (Fisher–Yates): draw `j` uniform in
//!    `0 ..= i` and swap `order[i]` and `order[j]`.
//! 3. Draws come from a stream of 64-bit words: block `k` (k = 0, 1, …) is
//!    `SHA-256(seed ‖ k as 8 bytes little-endian)`, read as four
//!    little-endian `u64`s. A draw for bound `b = i + 1` takes the next word
//!    `w`, rejects it if `w ≥ 2⁶⁴ − (2⁶⁴ mod b)` (so every `j` is equally
//!    likely) and otherwise returns `w mod b`.
//! 4. `order[r − 1]` is the sequence number whose place in line is `r`.
//!
//! What it does not prove: that every entry is a real person. The operator
//! could add entries of its own; the commitment only stops it from choosing
//! the seed after seeing who queued.

use aws_lc_rs::digest::{SHA256, digest};

/// A room's shuffle seed.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed(pub [u8; 32]);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The seed is secret until the room opens.
        f.write_str("Seed(<secret>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    #[error("a seed is 64 hexadecimal characters (32 bytes)")]
    BadHex,
}

impl Seed {
    pub fn random() -> Seed {
        Seed(rand::random())
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Result<Seed, SeedError> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(SeedError::BadHex);
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let text = std::str::from_utf8(chunk).map_err(|_| SeedError::BadHex)?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| SeedError::BadHex)?;
        }
        Ok(Seed(out))
    }

    /// `SHA-256(seed)` in hex: published before opening.
    pub fn commitment(&self) -> String {
        hex(digest(&SHA256, &self.0).as_ref())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stream of 64-bit words drawn from the seed (step 3 above).
struct Words<'a> {
    seed: &'a Seed,
    block: u64,
    buf: [u64; 4],
    used: usize,
}

impl Words<'_> {
    fn next_word(&mut self) -> u64 {
        if self.used == 4 {
            let mut input = [0u8; 40];
            input[..32].copy_from_slice(&self.seed.0);
            input[32..].copy_from_slice(&self.block.to_le_bytes());
            let d = digest(&SHA256, &input);
            for (i, chunk) in d.as_ref().chunks(8).enumerate() {
                let mut w = [0u8; 8];
                w.copy_from_slice(chunk);
                self.buf[i] = u64::from_le_bytes(w);
            }
            self.block += 1;
            self.used = 0;
        }
        self.used += 1;
        self.buf[self.used - 1]
    }

    /// Uniform in `0..bound` by rejection sampling.
    fn below(&mut self, bound: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % bound + 1) % bound;
        loop {
            let w = self.next_word();
            if w <= zone {
                return w % bound;
            }
        }
    }
}

/// The order of the pre-queue: element `r − 1` is the sequence number at
/// place `r`. Sequence numbers are 1 … `len`.
pub fn order(seed: &Seed, len: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (1..=len).collect();
    let mut words = Words {
        seed,
        block: 0,
        buf: [0; 4],
        used: 4,
    };
    for i in (1..order.len()).rev() {
        let j = words.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(n: u8) -> Seed {
        Seed([n; 32])
    }

    #[test]
    fn the_order_is_a_permutation_and_depends_only_on_the_seed() {
        let a = order(&seed(7), 1000);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=1000).collect::<Vec<_>>());
        assert_eq!(a, order(&seed(7), 1000), "deterministic");
        assert_ne!(a, order(&seed(8), 1000));
        assert_eq!(order(&seed(1), 0), Vec::<u32>::new());
        assert_eq!(order(&seed(1), 1), vec![1]);
    }

    #[test]
    fn every_place_is_equally_likely_for_every_fan() {
        // 5 fans, 60 000 shuffles from seeds derived from a fixed one: each
        // (fan, place) cell should hold about 12 000. Chi-square over the 25
        // cells with 16 degrees of freedom: 99.9th percentile ≈ 39.3.
        let n = 5usize;
        let trials = 60_000u32;
        let mut counts = vec![vec![0u32; n]; n];
        for t in 0..trials {
            let mut s = [0u8; 32];
            s[..4].copy_from_slice(&t.to_le_bytes());
            s[31] = 0xA5;
            for (place, seq) in order(&Seed(s), n as u32).iter().enumerate() {
                counts[*seq as usize - 1][place] += 1;
            }
        }
        let expected = trials as f64 / n as f64;
        let chi2: f64 = counts
            .iter()
            .flatten()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 39.3, "chi-square {chi2:.1}: {counts:?}");
    }

    #[test]
    fn seeds_round_trip_through_hex_and_commit() {
        let s = Seed::random();
        assert_eq!(Seed::from_hex(&s.to_hex()), Ok(s.clone()));
        assert_eq!(s.commitment().len(), 64);
        assert_ne!(s.commitment(), s.to_hex());
        assert_eq!(
            Seed([0; 32]).commitment(),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
        for bad in ["", "zz", &"0".repeat(63), &"g".repeat(64)] {
            assert_eq!(Seed::from_hex(bad), Err(SeedError::BadHex), "{bad:?}");
        }
        assert_eq!(format!("{s:?}"), "Seed(<secret>)");
    }

    #[test]
    fn rejection_sampling_stays_in_bounds() {
        let s = seed(3);
        let mut w = Words {
            seed: &s,
            block: 0,
            buf: [0; 4],
            used: 4,
        };
        for bound in [1u64, 2, 3, 7, 1 << 40, u64::MAX] {
            for _ in 0..100 {
                assert!(w.below(bound) < bound);
            }
        }
    }
}
