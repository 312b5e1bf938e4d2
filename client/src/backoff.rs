//! Bounded exponential backoff with seeded jitter, for reconnects and retries.
//!
//! The wait doubles per failure up to a ceiling, then is spread by ±20% so
//! that clients that failed together do not retry together. The jitter comes
//! from the caller's generator, never from the OS, so simulated runs replay.

use sluice_core::rng::Rng;

/// Doublings after which the wait stays at the ceiling; also keeps the shift
/// below overflow.
const DOUBLINGS_MAX: u32 = 20;

/// Spread of the jitter, in percent either side of the nominal wait.
const JITTER_PERCENT: u64 = 20;

/// The wait before attempt `failures + 1`, given `failures >= 1` failures so
/// far: `base_ms * 2^(failures-1)`, capped at `max_ms`, with jitter.
pub fn backoff_ms(failures: u32, base_ms: u64, max_ms: u64, rng: &mut Rng) -> u64 {
    assert!(base_ms <= max_ms, "backoff base above its ceiling");
    let doublings = failures.saturating_sub(1).min(DOUBLINGS_MAX);
    let nominal_ms = base_ms.saturating_mul(1u64 << doublings).min(max_ms);
    let spread_ms = (nominal_ms as u128 * JITTER_PERCENT as u128 / 100) as u64;
    if spread_ms == 0 {
        return nominal_ms;
    }
    let offset_ms = rng.next_u64() % (2 * spread_ms + 1);
    (nominal_ms - spread_ms)
        .saturating_add(offset_ms)
        .min(max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_stays_under_the_ceiling() {
        let mut rng = Rng::from_seed(3);
        let waits: Vec<u64> = (1..=12)
            .map(|n| backoff_ms(n, 100, 1_000, &mut rng))
            .collect();
        assert!((80..=120).contains(&waits[0]), "{waits:?}");
        assert!((160..=240).contains(&waits[1]), "{waits:?}");
        assert!((320..=480).contains(&waits[2]), "{waits:?}");
        assert!(
            waits[4..].iter().all(|&w| (800..=1_000).contains(&w)),
            "{waits:?}"
        );
    }

    #[test]
    fn same_seed_same_waits() {
        let run = |seed| {
            let mut rng = Rng::from_seed(seed);
            (1..10)
                .map(|n| backoff_ms(n, 50, 5_000, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut rng = Rng::from_seed(1);
        assert!(backoff_ms(u32::MAX, u64::MAX / 2, u64::MAX / 2, &mut rng) <= u64::MAX / 2);
        assert!(backoff_ms(3, u64::MAX, u64::MAX, &mut rng) >= u64::MAX / 10 * 8);
        assert_eq!(backoff_ms(1, 0, 0, &mut rng), 0);
    }
}
