//! Standard `metav1.Condition`s: set one by type, keeping its transition time while its status
//! holds, so that writing the same facts twice changes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition to set: its type, whether it holds, a CamelCase reason and a message.
pub struct Fact<'a> {
    pub type_: &'a str,
    pub holds: bool,
    pub reason: &'a str,
    pub message: String,
}

/// Set `fact` in `conditions` (a list-map keyed by type) as of `generation`.
pub fn set(conditions: &mut Vec<Condition>, fact: Fact<'_>, generation: Option<i64>, now: &Time) {
    let status = if fact.holds { "True" } else { "False" };
    put(conditions, fact, status, generation, now);
}

/// Set `fact` with status `Unknown` (still being found out; `fact.holds` is not read).
pub fn set_unknown(
    conditions: &mut Vec<Condition>,
    fact: Fact<'_>,
    generation: Option<i64>,
    now: &Time,
) {
    put(conditions, fact, "Unknown", generation, now);
}

fn put(
    conditions: &mut Vec<Condition>,
    fact: Fact<'_>,
    status: &str,
    generation: Option<i64>,
    now: &Time,
) {
    let status = status.to_string();
    let new = Condition {
        type_: fact.type_.to_string(),
        status: status.clone(),
        reason: fact.reason.to_string(),
        message: fact.message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    match conditions.iter_mut().find(|c| c.type_ == fact.type_) {
        Some(old) => {
            let since = if old.status == status {
                old.last_transition_time.clone()
            } else {
                now.clone()
            };
            *old = Condition {
                last_transition_time: since,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_it_holds() {
        let mut c = Vec::new();
        let fact = |holds| Fact {
            type_: "Ready",
            holds,
            reason: "Up",
            message: "up".into(),
        };
        set(&mut c, fact(true), Some(1), &time(10));
        set(&mut c, fact(true), Some(2), &time(20));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, time(10));
        assert_eq!(c[0].observed_generation, Some(2));
        assert_eq!(c[0].status, "True");
        set(&mut c, fact(false), Some(2), &time(30));
        assert_eq!(c[0].last_transition_time, time(30));
        assert_eq!(c[0].status, "False");
    }
}
