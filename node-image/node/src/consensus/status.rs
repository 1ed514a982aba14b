//! What the consensus engine has lately done, for `/readyz`: a node is ready when it is caught
//! up with its peers and the chain is moving, both as this node saw them on its own clock —
//! never the proposer's block timestamp, which says nothing about this node.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after the last value that arrived through sync a node still counts as catching
/// up (sync hands values over one after another while a node is behind).
pub const SYNC_QUIET: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Seen {
    last_commit: Option<Instant>,
    last_synced: Option<Instant>,
    last_abstained: Option<Instant>,
    height: u64,
}

#[derive(Default)]
pub struct EngineStatus {
    seen: Mutex<Seen>,
}

impl EngineStatus {
    /// This node stored a decided block.
    pub fn committed(&self, height: u64, at: Instant) {
        let mut s = self.seen.lock().expect("status lock");
        s.last_commit = Some(at);
        s.height = height;
    }

    /// A decided value arrived through sync: this node is behind its peers.
    pub fn synced(&self, at: Instant) {
        self.seen.lock().expect("status lock").last_synced = Some(at);
    }

    /// The signer refused a signature (the node is silent to the others there).
    pub fn abstained(&self, at: Instant) {
        self.seen.lock().expect("status lock").last_abstained = Some(at);
    }

    /// Ready, or why not: caught up (no value through sync for `SYNC_QUIET`) and moving
    /// (a block decided here within `stale_after`).
    pub fn readiness(&self, now: Instant, stale_after: Duration) -> Result<(), String> {
        let s = self.seen.lock().expect("status lock");
        let Some(last) = s.last_commit else {
            return Err("no block decided since this node started".into());
        };
        if let Some(synced) = s.last_synced
            && now.saturating_duration_since(synced) < SYNC_QUIET
        {
            return Err(format!(
                "catching up with its peers through sync (at height {})",
                s.height
            ));
        }
        if let Some(abstained) = s.last_abstained
            && now.saturating_duration_since(abstained) < SYNC_QUIET
        {
            return Err(format!(
                "abstaining: its key signed at this height before (at height {}); it follows \
                 without voting until past it",
                s.height
            ));
        }
        let age = now.saturating_duration_since(last);
        if age > stale_after {
            return Err(format!(
                "no block decided for {} ms (height {}; ready within {} ms)",
                age.as_millis(),
                s.height,
                stale_after.as_millis()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_moving_and_not_syncing() {
        let t0 = Instant::now();
        let s = EngineStatus::default();
        let stale = Duration::from_secs(10);
        assert!(
            s.readiness(t0, stale)
                .unwrap_err()
                .contains("no block decided")
        );
        s.committed(5, t0);
        assert_eq!(s.readiness(t0 + Duration::from_secs(1), stale), Ok(()));
        // Stalled: nothing decided for longer than the limit.
        let err = s
            .readiness(t0 + Duration::from_secs(11), stale)
            .unwrap_err();
        assert!(err.contains("no block decided for 11000 ms"), "{err}");
        // Catching up: values arrive through sync, and blocks are decided, but behind peers.
        s.synced(t0 + Duration::from_secs(20));
        s.committed(6, t0 + Duration::from_secs(20));
        let err = s
            .readiness(t0 + Duration::from_secs(21), stale)
            .unwrap_err();
        assert!(err.contains("catching up"), "{err}");
        s.committed(7, t0 + Duration::from_secs(24));
        assert_eq!(s.readiness(t0 + Duration::from_secs(24), stale), Ok(()));
        // Following without signing (after its chain database was lost) is not ready either.
        s.abstained(t0 + Duration::from_secs(30));
        s.committed(8, t0 + Duration::from_secs(30));
        let err = s
            .readiness(t0 + Duration::from_secs(31), stale)
            .unwrap_err();
        assert!(err.contains("abstaining"), "{err}");
    }
}
