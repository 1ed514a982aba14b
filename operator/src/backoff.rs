//! Per-object exponential backoff for failed reconciles: 1 s, 2 s, 4 s, … up to 5 minutes,
//! reset by the object's next success. A failure only a person can fix waits the longest
//! (the object's next change triggers a reconcile anyway).

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
