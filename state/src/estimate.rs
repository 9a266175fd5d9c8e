//! Audience size estimates from a uniform sample of profiles.
//!
//! The sample is hash-based and stable: each profile has a sample rank, a 64-bit mix of its
//! MPID, stored in an index next to the profiles; the sample of size n is the n profiles of
//! lowest rank, a uniform draw without replacement that stays the same from one call to the
//! next (so two drafts are compared on the same users) and costs n index reads however many
//! profiles there are.
//!
//! The estimate is the population times the sampled proportion, with a 95% Wilson score
//! interval with continuity correction, narrowed by the finite-population correction. Too few
//! sampled members make the figure meaningless: the answer is then "too small" (the seed's
//! `~`), unless the sample is the whole population, which makes it exact.
//!
//! Invariants: the interval always contains the estimate; an exact answer has a zero-width
//! interval; nothing here reads or writes the store.

use crate::model::Mpid;

/// Sampled members below which no figure is given.
pub const MIN_SAMPLED_MEMBERS: u64 = 10;
/// The sample size when the caller names none.
pub const DEFAULT_SAMPLE_SIZE: u64 = 10_000;
/// The normal quantile of a two-sided 95% interval.
const Z_95: f64 = 1.959_964;

/// A profile's rank in the sample order (SplitMix64 of the MPID: uniform over `u64`).
pub fn sample_rank(mpid: Mpid) -> u64 {
    let mut z = (mpid as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimate {
    /// Members in the population, with a 95% interval (`exact`: the sample was everyone).
    Size {
        estimate: u64,
        low: u64,
        high: u64,
        exact: bool,
    },
    /// Too few sampled members for a meaningful figure.
    TooSmall,
}

/// The estimate for `members` of `sampled` profiles drawn uniformly without replacement from
/// a population of `population`.
pub fn estimate(members: u64, sampled: u64, population: u64) -> Estimate {
    let population = population.max(sampled);
    if sampled == population {
        return Estimate::Size {
            estimate: members,
            low: members,
            high: members,
            exact: true,
        };
    }
    if members < MIN_SAMPLED_MEMBERS {
        return Estimate::TooSmall;
    }
    let n = sampled as f64;
    let p = members as f64 / n;
    let (low, high) = wilson_cc(members as f64, n);
    // Finite-population correction: sampling without replacement narrows the interval around
    // the proportion.
    let fpc = ((population - sampled) as f64 / (population as f64 - 1.0).max(1.0)).sqrt();
    let low = p - (p - low) * fpc;
    let high = p + (high - p) * fpc;
    let size = population as f64;
    let estimate = (p * size).round() as u64;
    Estimate::Size {
        estimate,
        low: ((low * size).floor() as u64).clamp(members, estimate),
        high: ((high * size).ceil() as u64).clamp(estimate, population - (sampled - members)),
        exact: false,
    }
}

/// Wilson score interval with continuity correction (Newcombe 1998, method 4) of `x`
/// successes in `n` trials.
fn wilson_cc(x: f64, n: f64) -> (f64, f64) {
    let p = x / n;
    let q = 1.0 - p;
    let z2 = Z_95 * Z_95;
    let denom = 2.0 * (n + z2);
    let low = if x == 0.0 {
        0.0
    } else {
        let root = (z2 - 2.0 - 1.0 / n + 4.0 * p * (n * q + 1.0))
            .max(0.0)
            .sqrt();
        ((2.0 * n * p + z2 - 1.0 - Z_95 * root) / denom).max(0.0)
    };
    let high = if x == n {
        1.0
    } else {
        let root = (z2 + 2.0 - 1.0 / n + 4.0 * p * (n * q - 1.0))
            .max(0.0)
            .sqrt();
        ((2.0 * n * p + z2 + 1.0 + Z_95 * root) / denom).min(1.0)
    };
    (low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interval covers the true size in at least 95% of 200 random populations,
    /// definitions (a member fraction) and samples (a salt on the rank).
    #[test]
    fn the_interval_covers_the_exact_size_in_95_percent_of_draws() {
        let mut covered = 0;
        let mut sized = 0;
        let mut state = 0x1234_5678_u64;
        let mut next = || {
            state = sample_rank(state as i64);
            state
        };
        for _ in 0..200 {
            let population = 20_000 + next() % 80_000;
            // Member fractions from 0.5% to 60%.
            let fraction = 0.005 + (next() % 10_000) as f64 / 10_000.0 * 0.595;
            let definition_salt = next();
            let sample_salt = next() as i64;
            let member = |mpid: i64| {
                (sample_rank(mpid ^ definition_salt as i64) as f64 / u64::MAX as f64) < fraction
            };
            let exact = (1..=population as i64).filter(|m| member(*m)).count() as u64;
            let mut ranked: Vec<(u64, i64)> = (1..=population as i64)
                .map(|m| (sample_rank(m ^ sample_salt), m))
                .collect();
            ranked.select_nth_unstable(2_000);
            let sample = &ranked[..2_000];
            let members = sample.iter().filter(|(_, m)| member(*m)).count() as u64;
            match estimate(members, 2_000, population) {
                Estimate::Size {
                    low,
                    high,
                    estimate,
                    exact: false,
                } => {
                    sized += 1;
                    assert!(low <= estimate && estimate <= high);
                    if low <= exact && exact <= high {
                        covered += 1;
                    }
                }
                other => panic!("unexpected {other:?} for {members} of 2000"),
            }
        }
        assert_eq!(sized, 200);
        eprintln!("interval covered the exact size in {covered} of 200 draws");
        assert!(covered >= 190, "covered {covered} of 200");
    }

    #[test]
    fn tiny_audiences_are_too_small_and_a_full_sample_is_exact() {
        assert_eq!(estimate(3, 10_000, 1_000_000), Estimate::TooSmall);
        assert_eq!(estimate(0, 10_000, 1_000_000), Estimate::TooSmall);
        assert_eq!(
            estimate(7, 300, 300),
            Estimate::Size {
                estimate: 7,
                low: 7,
                high: 7,
                exact: true
            }
        );
        let Estimate::Size {
            estimate: e,
            low,
            high,
            ..
        } = estimate(500, 10_000, 1_000_000)
        else {
            panic!("sized");
        };
        assert_eq!(e, 50_000);
        assert!(low < e && e < high && high - low < 10_000, "{low}..{high}");
    }

    #[test]
    fn ranks_are_spread_evenly() {
        let below_half = (0..100_000)
            .filter(|m| sample_rank(*m) < u64::MAX / 2)
            .count();
        assert!((49_000..51_000).contains(&below_half), "{below_half}");
    }
}
