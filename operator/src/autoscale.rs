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

/// While a scale-down to `recommended` waits for the window, how long until the last higher
/// recommendation in `history` leaves it.
pub fn window_ends(
    recommended: u32,
    a: &Autoscaling,
    history: &[(Duration, u32)],
) -> Option<Duration> {
    history
        .iter()
        .filter(|(age, r)| *r > recommended && *age <= a.scale_down_window)
        .map(|(age, _)| a.scale_down_window - *age + Duration::from_millis(50))
        .max()
}

/// What a pod a scale-down would remove is doing, from its `GET /v1/node/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodWork {
    /// No unfinished task (none training, trained or committed), or the pod never started.
    Idle,
    /// It holds work that a kill would lose (and slash).
    Busy,
    /// Its status could not be read: treated as busy, never killed on a guess.
    Unknown,
}

/// How to move a fleet of `current` pods towards `desired`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePlan {
    /// The StatefulSet's replicas now.
    pub replicas: u32,
    /// Ordinals to drain (they take no new task) before they can go.
    pub drain: Vec<u32>,
}

/// Scale up at once; scale down only over idle pods. A StatefulSet removes its highest
/// ordinals first, so every pod at an ordinal at or above `desired` is drained, and the count
/// drops to just above the highest of them that still holds work (the next plans take it
/// lower as they finish).
pub fn plan(current: u32, desired: u32, work: impl Fn(u32) -> PodWork) -> ScalePlan {
    if desired >= current {
        return ScalePlan {
            replicas: desired,
            drain: Vec::new(),
        };
    }
    let leaving: Vec<u32> = (desired..current).collect();
    let replicas = leaving
        .iter()
        .rev()
        .find(|&&o| work(o) != PodWork::Idle)
        .map_or(desired, |&o| o + 1);
    ScalePlan {
        replicas,
        drain: leaving,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_scale_down_never_removes_a_pod_with_work() {
        use PodWork::{Busy, Idle, Unknown};
        /// (current, desired, work of ordinals 0.., expected replicas, expected drained)
        type Case = (u32, u32, &'static [PodWork], u32, &'static [u32]);
        let table: &[Case] = &[
            // Up, or no change: at once, nothing drained.
            (2, 5, &[Idle, Idle], 5, &[]),
            (3, 3, &[Busy, Busy, Busy], 3, &[]),
            // Down over idle pods: at once.
            (5, 2, &[Busy, Busy, Idle, Idle, Idle], 2, &[2, 3, 4]),
            // The highest pod is busy: nothing goes yet, all three are drained.
            (5, 2, &[Idle, Idle, Idle, Idle, Busy], 5, &[2, 3, 4]),
            // A busy pod in the middle: the ones above it go.
            (5, 2, &[Idle, Idle, Busy, Idle, Idle], 3, &[2, 3, 4]),
            // A pod whose status cannot be read is not killed on a guess.
            (4, 1, &[Idle, Idle, Unknown, Idle], 3, &[1, 2, 3]),
            // Down to zero.
            (2, 0, &[Idle, Idle], 0, &[0, 1]),
        ];
        for (current, desired, work, replicas, drain) in table {
            let p = plan(*current, *desired, |o| work[o as usize]);
            assert_eq!(
                (p.replicas, p.drain.as_slice()),
                (*replicas, *drain),
                "{current} → {desired} with {work:?}"
            );
        }
    }

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
        // The window ends when the last higher recommendation ages out.
        let both = [(Duration::from_secs(60), 8), (Duration::from_secs(200), 5)];
        assert_eq!(
            window_ends(2, &a, &both),
            Some(Duration::from_millis(240_050))
        );
        assert_eq!(window_ends(9, &a, &both), None);
    }

    proptest! {
        #[test]
        fn a_plan_keeps_every_busy_pod_and_reaches_the_goal_when_all_are_idle(
            current in 0u32..20, desired in 0u32..20, busy in proptest::collection::vec(any::<bool>(), 20)
        ) {
            let work = |o: u32| if busy[o as usize] { PodWork::Busy } else { PodWork::Idle };
            let p = plan(current, desired, work);
            for o in 0..current {
                if busy[o as usize] {
                    prop_assert!(o < p.replicas, "busy pod {o} removed");
                }
            }
            prop_assert!(p.replicas >= desired.min(current));
            if (desired..current).all(|o| !busy[o as usize]) {
                prop_assert_eq!(p.replicas, desired);
            }
        }

        #[test]
        fn always_within_bounds(queue: u64, min in 0u32..50, span in 0u32..50, target in 0u32..10) {
            let a = cfg(min, min + span, target);
            let r = recommended(queue, &a);
            prop_assert!(r >= a.min && r <= a.max);
        }
    }
}
