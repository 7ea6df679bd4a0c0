//! Which WABAs a replica polls, pure: jump consistent hashing (Lamping and
//! Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm", 2014) of the
//! WABA id over the replicas. Going from M to M+1 replicas moves about
//! 1/(M+1) of the WABAs, all of them to the new replica.
//!
//! Replicas shard by WABA, never by flow: Graph's quota is per app and WABA,
//! so splitting a WABA's flows over replicas gains nothing. A static flow
//! goes with its WABA when the config names it (`[[flows]] waba`), else by
//! its own id.

use std::fmt;

/// One replica's place: `index` of `total` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub total: u32,
}

impl Default for Shard {
    /// The whole: one replica polls everything.
    fn default() -> Self {
        Shard { index: 0, total: 1 }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {}", self.index, self.total)
    }
}

/// Largest number of shards.
pub const MAX_SHARDS: u32 = 10_000;

impl Shard {
    /// `index` of `total`; `Err` says what is wrong.
    pub fn new(index: u32, total: u32) -> Result<Shard, String> {
        if total == 0 || total > MAX_SHARDS {
            return Err(format!("the total must be between 1 and {MAX_SHARDS}"));
        }
        if index >= total {
            return Err(format!(
                "the index must be below the total ({total}); shards count from 0"
            ));
        }
        Ok(Shard { index, total })
    }

    /// Whether this replica polls the WABA with this id.
    pub fn owns(&self, id: &str) -> bool {
        self.total == 1 || shard_of(id, self.total) == self.index
    }
}

/// The shard (0..`total`) of an id: jump consistent hashing of its FNV-1a
/// 64-bit hash, so any id (numeric or not) has a stable place.
pub fn shard_of(id: &str, total: u32) -> u32 {
    jump(fnv1a(id.as_bytes()), total)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Jump consistent hash: the bucket (0..`buckets`) of `key`.
fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<String> {
        (0..n)
            .map(|i| (102_290_129_340_398 + i * 7919).to_string())
            .collect()
    }

    #[test]
    fn every_id_has_exactly_one_owner_and_the_load_is_even() {
        let ids = ids(10_000);
        for total in [1, 2, 3, 4, 7] {
            let mut counts = vec![0usize; total as usize];
            for id in &ids {
                let owners: Vec<u32> = (0..total)
                    .filter(|i| Shard::new(*i, total).expect("valid").owns(id))
                    .collect();
                assert_eq!(owners.len(), 1, "{id} of {total}");
                counts[owners[0] as usize] += 1;
            }
            let even = ids.len() / total as usize;
            for c in counts {
                assert!(c.abs_diff(even) < even / 10 + 50, "{total}: {c} vs {even}");
            }
        }
    }

    #[test]
    fn one_more_replica_moves_about_its_share_and_only_to_it() {
        let ids = ids(10_000);
        for m in [1u32, 2, 3, 4, 9] {
            let mut moved: usize = 0;
            for id in &ids {
                let (before, after) = (shard_of(id, m), shard_of(id, m + 1));
                if before != after {
                    assert_eq!(after, m, "a moved id goes to the new replica");
                    moved += 1;
                }
            }
            let expected = ids.len() / (m as usize + 1);
            assert!(
                moved.abs_diff(expected) < expected / 10 + 50,
                "{m}->{}: {moved} moved, ~{expected} expected",
                m + 1
            );
        }
    }

    #[test]
    fn known_values_stay_put() {
        // Pinned, so a change of the hash (which would move every WABA on
        // upgrade) shows up as a failing test.
        assert_eq!(jump(0, 1), 0);
        assert_eq!(jump(256, 1024), 520);
        assert_eq!(
            shard_of("102290129340398", 3),
            shard_of("102290129340398", 3)
        );
        assert!(Shard::new(3, 3).is_err());
        assert!(Shard::new(0, 0).is_err());
        assert_eq!(Shard::default().to_string(), "0 of 1");
    }
}
