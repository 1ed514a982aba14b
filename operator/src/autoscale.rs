//! The miner autoscaling rule: `desired = clamp(ceil(queue / target), min, max)`, with a
//! scale-down stabilisation window so a briefly empty queue does not tear down warm GPU pods.

use std::time::Duration;

/// A `Miner` fleet's autoscaling settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Autoscaling {
    pub min: u32,
    pub max: u32,
    /// Open tasks one miner is expected to take on.
    pub target_tasks_per_miner: u32,
    /// How long a lower recommendation must persist before the fleet shrinks.
    pub scale_down_window: Duration,
}

/// The replica count the queue asks for, before stabilisation.
pub fn recommended(queue: u64, a: &Autoscaling) -> u32 {
    let target = u64::from(a.target_tasks_per_miner.max(1));
    let want = queue.div_ceil(target);
    let want = u32::try_from(want).unwrap_or(u32::MAX);
    want.clamp(a.min, a.max.max(a.min))
}

/// Stabilised scaling: scale up at once; scale down only to the highest recommendation seen
/// within the window. `history` holds `(age, recommendation)` pairs from earlier reconciles.
pub fn desired(queue: u64, a: &Autoscaling, history: &[(Duration, u32)]) -> u32 {
    let now = recommended(queue, a);
    history
        .iter()
        .filter(|(age, _)| *age <= a.scale_down_window)
        .map(|(_, r)| *r)
        .fold(now, u32::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(min: u32, max: u32, target: u32) -> Autoscaling {
        Autoscaling {
            min,
            max,
            target_tasks_per_miner: target,
            scale_down_window: Duration::from_secs(300),
        }
    }

    #[test]
    fn follows_the_queue_within_bounds() {
        let a = cfg(1, 10, 2);
        assert_eq!(recommended(0, &a), 1);
        assert_eq!(recommended(1, &a), 1);
        assert_eq!(recommended(3, &a), 2);
        assert_eq!(recommended(20, &a), 10);
        assert_eq!(recommended(1_000, &a), 10);
        assert_eq!(recommended(0, &cfg(0, 5, 1)), 0);
    }

    #[test]
    fn scale_down_waits_for_the_window() {
        let a = cfg(1, 10, 1);
        let recent = [(Duration::from_secs(60), 8)];
        assert_eq!(desired(2, &a, &recent), 8);
        let old = [(Duration::from_secs(600), 8)];
        assert_eq!(desired(2, &a, &old), 2);
        // Scaling up never waits.
        assert_eq!(desired(9, &a, &recent), 9);
    }

    proptest! {
        #[test]
        fn always_within_bounds(queue: u64, min in 0u32..50, span in 0u32..50, target in 0u32..10) {
            let a = cfg(min, min + span, target);
            let r = recommended(queue, &a);
            prop_assert!(r >= a.min && r <= a.max);
        }
    }
}
