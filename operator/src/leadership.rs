//! Stepping down when leadership can no longer be confirmed.
//!
//! The Lease library renews the Lease and reports when another replica holds it, but while
//! the API server cannot be reached it keeps saying "leader": a replica cut off from the API
//! server for longer than the Lease would go on signing chain transactions (submissions,
//! funding, reveals go to the coordinators, not through the API server) while a standby has
//! taken over. client-go's leader election stops leading once its renewals fail for the renew
//! deadline; this does the same from outside the library: it reads the Lease every third of
//! its duration and gives up leading when, for a whole Lease duration, it could not see the
//! Lease held by this replica and renewed.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use tracing::warn;

/// What one reading of the Lease says about this replica's leadership.
#[derive(Debug, PartialEq, Eq)]
pub enum Reading {
    /// Held by this replica and renewed within the Lease duration.
    Confirmed,
    /// Held by another replica: leadership is lost at once.
    Lost(String),
    /// Not confirmed this time (unreadable, not renewed lately): lost if it lasts.
    Unconfirmed(String),
}

/// Judge `lease` (or the error reading it) for `identity` at `now`.
pub fn judge(
    lease: Result<&Lease, String>,
    identity: &str,
    duration: Duration,
    now: Timestamp,
) -> Reading {
    let lease = match lease {
        Ok(l) => l,
        Err(e) => return Reading::Unconfirmed(format!("reading the Lease: {e}")),
    };
    let Some(spec) = lease.spec.as_ref() else {
        return Reading::Unconfirmed("the Lease has no spec".into());
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => {}
        Some(other) => return Reading::Lost(format!("the Lease is held by {other}")),
        None => return Reading::Lost("the Lease is held by no one".into()),
    }
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    match renewed {
        Some(at) if now.duration_since(at).as_secs_f64() <= duration.as_secs_f64() => {
            Reading::Confirmed
        }
        Some(at) => Reading::Unconfirmed(format!("the Lease was last renewed at {at}")),
        None => Reading::Unconfirmed("the Lease has no renew time".into()),
    }
}

/// Resolves (with the reason) once leadership has gone unconfirmed for `duration`, or at once
/// when another replica holds the Lease.
pub async fn lost(api: Api<Lease>, name: String, identity: String, duration: Duration) -> String {
    let every = (duration / 3).max(Duration::from_millis(500));
    let mut last_confirmed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let read = tokio::time::timeout(every, api.get(&name)).await;
        let lease = match read {
            Ok(Ok(l)) => Ok(l),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {every:?}")),
        };
        match judge(
            lease.as_ref().map_err(Clone::clone),
            &identity,
            duration,
            Timestamp::now(),
        ) {
            Reading::Confirmed => last_confirmed = tokio::time::Instant::now(),
            Reading::Lost(why) => return why,
            Reading::Unconfirmed(why) => {
                let since = last_confirmed.elapsed();
                if since >= duration {
                    return format!("leadership unconfirmed for {since:?}: {why}");
                }
                warn!("leadership unconfirmed for {since:?}: {why}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

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
    fn a_lease_confirms_only_its_holder_and_only_while_renewed() {
        let now = Timestamp::now();
        let d = Duration::from_secs(15);
        let ago = |s| {
            now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(s))
                .unwrap()
        };
        assert_eq!(
            judge(Ok(&lease(Some("a"), Some(ago(5)))), "a", d, now),
            Reading::Confirmed
        );
        assert!(matches!(
            judge(Ok(&lease(Some("b"), Some(now))), "a", d, now),
            Reading::Lost(_)
        ));
        assert!(matches!(
            judge(Ok(&lease(None, None)), "a", d, now),
            Reading::Lost(_)
        ));
        // Held by us but not renewed for longer than the Lease: our renewals are failing.
        assert!(matches!(
            judge(Ok(&lease(Some("a"), Some(ago(20)))), "a", d, now),
            Reading::Unconfirmed(_)
        ));
        assert!(matches!(
            judge(Err("connection refused".into()), "a", d, now),
            Reading::Unconfirmed(_)
        ));
    }
}
