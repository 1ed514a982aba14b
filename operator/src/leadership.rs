//! Stepping down when leadership can no longer be confirmed.
//!
//! The Lease library renews the Lease and reports when another replica holds it, but while
//! the API server cannot be reached it keeps saying "leader": a replica cut off from the API
//! server would go on signing chain transactions (submissions, funding, reveals go to the
//! coordinators, not through the API server) while a standby takes over. client-go's leader
//! election stops leading once its renewals fail for a renew deadline shorter than the Lease;
//! this does the same from outside the library. It reads the Lease often, remembers the last
//! renewal it saw of this replica's hold (`renewTime`, written from this replica's own clock,
//! so no skew between machines enters), and gives up leading once that renewal is older than
//! five sixths of the Lease — before a standby, which waits the whole Lease, may take it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use tracing::warn;

/// What one reading of the Lease says about this replica's leadership.
#[derive(Debug, PartialEq, Eq)]
pub enum Reading {
    /// Held by this replica, last renewed at this time.
    Held(Timestamp),
    /// Held by another replica: leadership is lost at once.
    Lost(String),
    /// Nothing learnt this time (unreadable, no holder, no renew time).
    Unknown(String),
}

/// Judge `lease` (or the error reading it) for `identity`.
pub fn judge(lease: Result<&Lease, String>, identity: &str) -> Reading {
    let lease = match lease {
        Ok(l) => l,
        Err(e) => return Reading::Unknown(format!("reading the Lease: {e}")),
    };
    let Some(spec) = lease.spec.as_ref() else {
        return Reading::Unknown("the Lease has no spec".into());
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => match spec.renew_time.as_ref() {
            Some(t) => Reading::Held(t.0),
            None => Reading::Unknown("the Lease has no renew time".into()),
        },
        Some(other) if !other.is_empty() => Reading::Lost(format!("the Lease is held by {other}")),
        // Released (or being taken over): not proof that another leads, but no renewal either.
        _ => Reading::Unknown("the Lease is held by no one".into()),
    }
}

/// The renew deadline: how old this replica's last renewal may be before it stops leading.
pub fn renew_deadline(duration: Duration) -> Duration {
    duration * 5 / 6
}

/// Whether a hold last renewed at `renewed` is past the renew deadline at `now`.
pub fn overdue(renewed: Timestamp, now: Timestamp, duration: Duration) -> bool {
    now.duration_since(renewed).as_secs_f64() > renew_deadline(duration).as_secs_f64()
}

/// Resolves (with the reason) once this replica's last seen renewal is past the renew
/// deadline, or at once when another replica holds the Lease. Called when leading begins
/// (the Lease was just taken or renewed).
pub async fn lost(api: Api<Lease>, name: String, identity: String, duration: Duration) -> String {
    let every = (duration / 6).max(Duration::from_millis(250));
    let mut renewed = Timestamp::now();
    loop {
        tokio::time::sleep(every).await;
        let read = tokio::time::timeout(every, api.get(&name)).await;
        let lease = match read {
            Ok(Ok(l)) => Ok(l),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {every:?}")),
        };
        match judge(lease.as_ref().map_err(Clone::clone), &identity) {
            Reading::Held(at) => renewed = renewed.max(at),
            Reading::Lost(why) => return why,
            Reading::Unknown(why) => warn!("leadership not confirmed: {why}"),
        }
        let now = Timestamp::now();
        if overdue(renewed, now, duration) {
            return format!(
                "leadership unconfirmed: the Lease was last seen renewed at {renewed}, over {:?} ago",
                renew_deadline(duration)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::SignedDuration;

    fn lease(holder: Option<&str>, renewed: Option<Timestamp>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: renewed.map(MicroTime),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_tells_its_holder_when_it_was_renewed_and_others_that_they_lost() {
        let now = Timestamp::now();
        assert_eq!(
            judge(Ok(&lease(Some("a"), Some(now))), "a"),
            Reading::Held(now)
        );
        assert!(matches!(
            judge(Ok(&lease(Some("b"), Some(now))), "a"),
            Reading::Lost(_)
        ));
        // A released Lease (the old leader's release may even clear a new holder) is no
        // reason to exit at once: only an overdue renewal is.
        assert!(matches!(
            judge(Ok(&lease(None, None)), "a"),
            Reading::Unknown(_)
        ));
        assert!(matches!(
            judge(Ok(&lease(Some(""), Some(now))), "a"),
            Reading::Unknown(_)
        ));
        assert!(matches!(
            judge(Err("connection refused".into()), "a"),
            Reading::Unknown(_)
        ));
    }

    #[test]
    fn leading_ends_before_a_standby_may_take_the_lease() {
        let d = Duration::from_secs(15);
        let now = Timestamp::now();
        let ago = |s: i64| now.checked_sub(SignedDuration::from_secs(s)).unwrap();
        // The operator has the library renew every `duration - grace` (8 s here): a healthy
        // hold is never overdue; one not renewed for 12.5 s is, 2.5 s before a standby may
        // take over.
        assert!(!overdue(ago(10), now, d));
        assert!(!overdue(ago(12), now, d));
        assert!(overdue(ago(13), now, d));
        assert!(renew_deadline(d) < d);
    }
}
