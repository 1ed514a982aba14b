//! Per-object exponential backoff for failed reconciles: 1 s, 2 s, 4 s, … up to 5 minutes,
//! reset by the object's next success. A failure only a person can fix waits the longest
//! (the object's next change triggers a reconcile anyway). And the backoff of the watches
//! that trigger reconciles ([`WatchBackoff`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const FIRST: Duration = Duration::from_secs(1);
const LONGEST: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The wait after one more failure of `key`.
    pub fn failed(&self, key: &str, needs_person: bool) -> Duration {
        if needs_person {
            return LONGEST;
        }
        let mut failures = self.failures.lock().expect("backoff lock");
        let n = failures.entry(key.to_string()).or_insert(0);
        let wait = FIRST.saturating_mul(1u32 << (*n).min(16)).min(LONGEST);
        *n = n.saturating_add(1);
        wait
    }

    /// `key` reconciled: its next failure starts over.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().expect("backoff lock").remove(key);
    }

    /// Failures of `key` since its last success (those a person must fix not counted).
    pub fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .expect("backoff lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Forget every key not in `live` (objects deleted while failing).
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.failures
            .lock()
            .expect("backoff lock")
            .retain(|k, _| live.contains(k));
    }
}

/// How a controller's watches retry after an error: 250 ms doubling to at most 5 s, back to
/// the start at the first event that arrives.
///
/// kube-runtime's default (0.8 s doubling to 30 s, reset only after two quiet minutes) is
/// shared by all the watches of one controller, so the five watches of the network controller
/// failing together through a short API-server restart push it to 30 s at once: changes made
/// right after the restart then waited half a minute (measured by
/// `e2e/tests/operator_restart.rs`). One operator's few watches do not need a long backoff
/// to spare the API server.
#[derive(Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const LONGEST: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::LONGEST);
        Some(wait)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_retry_within_five_seconds_and_start_over_after_an_event() {
        use kube::runtime::utils::Backoff as _;
        let mut b = WatchBackoff::default();
        let waits: Vec<u64> = b.by_ref().take(8).map(|d| d.as_millis() as u64).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn waits_double_per_failure_up_to_a_cap_and_reset_on_success() {
        let b = Backoff::default();
        let waits: Vec<u64> = (0..12).map(|_| b.failed("a", false).as_secs()).collect();
        assert_eq!(&waits[..5], &[1, 2, 4, 8, 16]);
        assert_eq!(*waits.last().unwrap(), 300);
        assert_eq!(b.failed("b", false).as_secs(), 1, "objects back off apart");
        b.succeeded("a");
        assert_eq!(b.failed("a", false).as_secs(), 1);
        assert_eq!(b.failed("a", true).as_secs(), 300);
        assert_eq!((b.failures("a"), b.failures("b")), (1, 1));
        b.retain(&["b".to_string()].into());
        assert_eq!((b.failures("a"), b.failures("b")), (0, 1));
    }
}
