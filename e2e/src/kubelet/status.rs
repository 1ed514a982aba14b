//! A pod's status from what its containers are doing: phase, conditions and container statuses
//! in the shape the kubelet reports them. Pure, so every rule has a test.

use std::net::Ipv4Addr;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// What one container is doing now.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        message: Option<String>,
        started_at: Timestamp,
        finished_at: Timestamp,
    },
}

impl State {
    pub fn waiting(reason: &str, message: Option<String>) -> State {
        State::Waiting {
            reason: reason.to_string(),
            message,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated {
                exit_code,
                signal,
                reason,
                message,
                started_at,
                finished_at,
            } => json!({"terminated": {
                "exitCode": exit_code, "signal": signal, "reason": reason, "message": message,
                "startedAt": started_at, "finishedAt": finished_at,
            }}),
        }
    }
}

/// One container as the status shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub state: State,
    pub last_state: Option<State>,
    pub restart_count: i32,
    pub ready: bool,
    /// Past its startup probe (or started, without one).
    pub started: bool,
    /// The pod's restart policy will not start it again.
    pub finished: bool,
}

impl ContainerView {
    pub fn new(name: &str, image: &str) -> ContainerView {
        ContainerView {
            name: name.to_string(),
            image: image.to_string(),
            state: State::waiting("ContainerCreating", None),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
            finished: false,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "image": self.image,
            "imageID": format!("pot-e2e://{}", self.image),
            "containerID": format!("pot-e2e://{}", self.name),
            "state": self.state.to_json(),
            "lastState": self.last_state.as_ref().map(State::to_json).unwrap_or(json!({})),
            "restartCount": self.restart_count,
            "ready": self.ready,
            "started": self.started,
        })
    }

    fn succeeded(&self) -> bool {
        matches!(self.state, State::Terminated { exit_code: 0, .. })
    }
}

/// Everything a pod's status is made from.
#[derive(Clone, Debug)]
pub struct PodView {
    pub init: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
    pub pod_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub start_time: Timestamp,
    /// Set when the pod could not start at all (a volume or image it needs is missing).
    pub failure: Option<(String, String)>,
}

/// `Pending`, `Running`, `Succeeded` or `Failed`, by the kubelet's rules.
pub fn phase(view: &PodView) -> &'static str {
    if view.init.iter().any(|c| c.finished && !c.succeeded()) {
        return "Failed";
    }
    if !view.init.iter().all(ContainerView::succeeded) {
        return "Pending";
    }
    let cs = &view.containers;
    if !cs.is_empty() && cs.iter().all(|c| c.finished) {
        return if cs.iter().all(ContainerView::succeeded) {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    let ever_ran = |c: &ContainerView| {
        matches!(c.state, State::Running { .. } | State::Terminated { .. }) || c.restart_count > 0
    };
    if cs.iter().any(ever_ran) {
        "Running"
    } else {
        "Pending"
    }
}

/// The `status` to patch: phase, conditions, addresses and container statuses.
pub fn pod_status(view: &PodView, now: Timestamp) -> Value {
    let phase = phase(view);
    let initialized = view.init.iter().all(ContainerView::succeeded);
    let containers_ready = !view.containers.is_empty()
        && view.containers.iter().all(|c| c.ready)
        && phase == "Running";
    let condition = |kind: &str, ok: bool, reason: Option<&str>| {
        json!({"type": kind, "status": if ok { "True" } else { "False" },
               "reason": if ok { None } else { reason }, "lastTransitionTime": now})
    };
    let mut status = json!({
        "phase": phase,
        "hostIP": view.host_ip.to_string(),
        "hostIPs": [{"ip": view.host_ip.to_string()}],
        "podIP": view.pod_ip.to_string(),
        "podIPs": [{"ip": view.pod_ip.to_string()}],
        "startTime": view.start_time,
        "conditions": [
            condition("PodReadyToStartContainers", true, None),
            condition("Initialized", initialized, Some("ContainersNotInitialized")),
            condition("ContainersReady", containers_ready, Some("ContainersNotReady")),
            condition("Ready", containers_ready, Some("ContainersNotReady")),
        ],
        "initContainerStatuses": view.init.iter().map(ContainerView::to_json).collect::<Vec<_>>(),
        "containerStatuses": view.containers.iter().map(ContainerView::to_json).collect::<Vec<_>>(),
    });
    if let Some((reason, message)) = &view.failure {
        status["reason"] = json!(reason);
        status["message"] = json!(message);
    }
    status
}

/// Keep a condition's `lastTransitionTime` while its status holds, so an unchanged pod is not
/// written again.
pub fn keep_transition_times(new: &mut Value, old: Option<&Value>) {
    let (Some(new_conds), Some(old_conds)) = (
        new.get_mut("conditions").and_then(Value::as_array_mut),
        old.and_then(|o| o.get("conditions"))
            .and_then(Value::as_array),
    ) else {
        return;
    };
    for c in new_conds {
        if let Some(prev) = old_conds
            .iter()
            .find(|p| p["type"] == c["type"] && p["status"] == c["status"])
        {
            c["lastTransitionTime"] = prev["lastTransitionTime"].clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(containers: Vec<ContainerView>) -> PodView {
        PodView {
            init: vec![],
            containers,
            pod_ip: Ipv4Addr::new(127, 9, 0, 1),
            host_ip: Ipv4Addr::LOCALHOST,
            start_time: Timestamp::UNIX_EPOCH,
            failure: None,
        }
    }

    fn running(name: &str, ready: bool) -> ContainerView {
        ContainerView {
            state: State::Running {
                started_at: Timestamp::UNIX_EPOCH,
            },
            ready,
            started: true,
            ..ContainerView::new(name, "pot-node")
        }
    }

    fn exited(name: &str, code: i32, finished: bool) -> ContainerView {
        ContainerView {
            state: State::Terminated {
                exit_code: code,
                signal: None,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: None,
                started_at: Timestamp::UNIX_EPOCH,
                finished_at: Timestamp::UNIX_EPOCH,
            },
            finished,
            ..ContainerView::new(name, "pot-node")
        }
    }

    #[test]
    fn phases() {
        assert_eq!(phase(&view(vec![ContainerView::new("a", "i")])), "Pending");
        assert_eq!(phase(&view(vec![running("a", false)])), "Running");
        // Restarting (Always): still Running.
        let mut crashing = ContainerView::new("a", "i");
        crashing.state = State::waiting("CrashLoopBackOff", None);
        crashing.restart_count = 2;
        assert_eq!(phase(&view(vec![crashing])), "Running");
        assert_eq!(phase(&view(vec![exited("a", 0, true)])), "Succeeded");
        assert_eq!(
            phase(&view(vec![exited("a", 0, true), exited("b", 1, true)])),
            "Failed"
        );
        // An exit the policy restarts is not the end.
        assert_eq!(phase(&view(vec![exited("a", 1, false)])), "Running");
        let mut v = view(vec![ContainerView::new("a", "i")]);
        v.init = vec![exited("init", 1, true)];
        assert_eq!(phase(&v), "Failed");
        v.init = vec![ContainerView::new("init", "i")];
        assert_eq!(phase(&v), "Pending");
    }

    #[test]
    fn ready_only_when_every_container_is() {
        let now = Timestamp::UNIX_EPOCH;
        let s = pod_status(&view(vec![running("a", true), running("b", false)]), now);
        assert_eq!(s["conditions"][3]["type"], "Ready");
        assert_eq!(s["conditions"][3]["status"], "False");
        let s = pod_status(&view(vec![running("a", true), running("b", true)]), now);
        assert_eq!(s["conditions"][3]["status"], "True");
        assert_eq!(s["podIP"], "127.9.0.1");
        assert_eq!(
            s["containerStatuses"][1]["state"]["running"]["startedAt"],
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn transition_times_hold_while_a_condition_does() {
        let v = view(vec![running("a", true)]);
        let old = pod_status(&v, Timestamp::UNIX_EPOCH);
        let later = Timestamp::from_second(100).unwrap();
        let mut new = pod_status(&v, later);
        keep_transition_times(&mut new, Some(&old));
        assert_eq!(new, old);
        let mut changed = pod_status(&view(vec![running("a", false)]), later);
        keep_transition_times(&mut changed, Some(&old));
        assert_eq!(changed["conditions"][3]["lastTransitionTime"], json!(later));
    }
}
