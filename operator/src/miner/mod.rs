//! The `Miner` controller: a fleet's keys and drain token, its headless Service and
//! StatefulSet, its replica count from the network's open-task queue (up at once, down after
//! the stabilisation window and only over drained, idle pods), funding from a paying key, and
//! a status from the StatefulSet, the pods' node API and the chain.
//!
//! Why a StatefulSet rather than pods managed one by one (as KubeRay does): a miner's identity
//! is its ordinal (key file, volume, DNS name), which a StatefulSet keeps across restarts and
//! reschedules for free; the one thing it does not do, choose which pod leaves, is covered by
//! draining the highest ordinals first and lowering `replicas` only past idle ones.

pub mod children;
pub mod funding;
pub mod identity;
pub mod pods;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use pot_protocol::api::AccountInfo;
use pot_protocol::client::Client;
use pot_protocol::{Address, Amount};
use tracing::{info, warn};

use crate::apply;
use crate::autoscale::{self, Autoscaling, PodWork};
use crate::conditions::{self, Fact};
use crate::context::{Context, NODE_API_TIMEOUT, key_of};
use crate::crd::miner::{Miner, MinerStatus};
use crate::crd::network::PotNetwork;
use crate::error::{Error, Result};
use children::Names;
use pods::PodView;

/// How old a queue reading may be for a scaling decision (the poller reads every second).
const QUEUE_FRESH: Duration = Duration::from_secs(2);
/// How soon a fleet that is waiting on pods to finish their work is looked at again.
const DRAIN_RECHECK: Duration = Duration::from_secs(5);

pub async fn reconcile(m: Arc<Miner>, ctx: Arc<Context>) -> Result<Action> {
    if m.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = m.namespace().unwrap_or_default();
    let names = Names::of(&m);
    let Some(net) = ctx.network(&ns, &m.spec.network_ref.name).await? else {
        let message = format!(
            "PotNetwork {} does not exist in {ns}",
            m.spec.network_ref.name
        );
        write_status(&m, &ctx, degraded(&m, "NetworkNotFound", &message)).await?;
        return Ok(Action::requeue(ctx.resync));
    };
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let live = sts_api.get_opt(&names.statefulset()).await?;
    let current = live
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0)
        .max(0) as u32;
    let open = ctx.open_tasks(&net, QUEUE_FRESH).await;
    // What the fleet was last asked for stands in while the queue is unknown, and for a new
    // leader (the StatefulSet may be larger while it drains).
    let asked = m
        .status
        .as_ref()
        .map_or(current, |s| s.desired_replicas.max(0) as u32);
    let (desired, window_ends) = desired_replicas(&m, &ctx, open, asked);
    ctx.gauge_desired(&m, desired);

    let fleet = identity::ensure(&m, &ctx.client, desired.max(current) as usize).await;
    let fleet = match fleet {
        Ok(f) => f,
        Err(Error::Needs { reason, message }) => {
            write_status(&m, &ctx, degraded(&m, reason, &message)).await?;
            return Err(Error::Needs { reason, message });
        }
        Err(e) => return Err(e),
    };
    let mut views = pods::observe(&ctx.client, &m, net.spec.ports.api).await?;
    pods::settle(&mut views, desired, &fleet.drain_token).await;
    let node = Client::with_timeout(ctx.api_url(&net), NODE_API_TIMEOUT);
    // A pod leaves only if the chain shows no duty of its key in an active task — a claim, a
    // validator assignment or a committee seat (a restarted or unscheduled pod reports no work
    // of its own, a revealed claim still needs its checkpoints served, and an assigned
    // validator that leaves is slashed) — and it was seen idle and drained for a while (a
    // drain answer is not a barrier against a task it was just taking).
    let claimed = if desired < current {
        bound_addresses(&node).await
    } else {
        Some(Default::default())
    };
    // Every leaving pod is looked at on every pass, so their idle times run together.
    let work: BTreeMap<u32, PodWork> = (desired..current)
        .map(|o| {
            let holds_claim = match &claimed {
                Some(c) => fleet
                    .addresses
                    .get(o as usize)
                    .is_some_and(|a| c.contains(a)),
                None => true,
            };
            let seen = views.get(&o).map_or(PodWork::Idle, PodView::work);
            let work = if holds_claim { PodWork::Busy } else { seen };
            (o, settled(&ctx, &m, &names.pod(o as usize), work))
        })
        .collect();
    restart_idle_counts_of_kept(&ctx, &m, desired.min(current));
    let plan = autoscale::plan(current, desired, |o| {
        work.get(&o).copied().unwrap_or(PodWork::Busy)
    });

    apply::apply(
        &Api::<Service>::namespaced(ctx.client.clone(), &ns),
        children::headless_service(&m, &net),
    )
    .await?;
    let sts = children::statefulset(&m, &net, plan.replicas as i32);
    let (wrote, sts) = apply::apply_over(&sts_api, sts, live).await?;
    if wrote && plan.replicas != current {
        info!(miner = %m.name_any(), namespace = %ns, from = current, to = plan.replicas, desired, "scaled");
        ctx.event(
            m.as_ref(),
            false,
            "Scaled",
            format!(
                "{current} → {} pods (the queue asks for {desired})",
                plan.replicas
            ),
        )
        .await;
    }

    let live_addresses = &fleet.addresses[..(plan.replicas as usize).min(fleet.addresses.len())];
    let accounts = accounts(&node, live_addresses).await;
    let funding = match &m.spec.funding {
        Some(f) => Some(fund(&m, &ctx, &net, &node, f, live_addresses).await),
        None => None,
    };
    let status = observe(
        &m,
        &sts,
        &plan,
        desired,
        open,
        &views,
        &fleet.addresses,
        &accounts,
        funding,
    );
    let pending_drain = plan.replicas > desired;
    write_status(&m, &ctx, status).await?;
    let mut next = ctx.resync;
    if pending_drain {
        next = next.min(DRAIN_RECHECK);
    }
    if let Some(at) = window_ends {
        next = next.min(at);
    }
    Ok(Action::requeue(next))
}

/// The replicas a fleet should have: `spec.replicas` without autoscaling; with it, the
/// stabilised recommendation for the queue, or the current count while the queue is unknown.
/// Also, while a scale-down waits for the window, how soon it may happen (when to look again:
/// an unchanged queue triggers no reconcile).
fn desired_replicas(
    m: &Miner,
    ctx: &Context,
    open: Option<u64>,
    current: u32,
) -> (u32, Option<Duration>) {
    let Some(a) = &m.spec.autoscaling else {
        return (m.spec.replicas.max(0) as u32, None);
    };
    let rule = Autoscaling {
        min: a.min_replicas.max(0) as u32,
        max: a.max_replicas.max(0) as u32,
        target_tasks_per_miner: a.target_open_tasks_per_miner.max(1) as u32,
        scale_down_window: Duration::from_secs(a.scale_down_stabilization_seconds.max(0) as u64),
    };
    let now = Instant::now();
    let mut all = ctx.scale_history.lock().expect("scale_history lock");
    // After a restart of the operator the fleet's size stands for a recommendation made now:
    // a new leader waits a whole window before it shrinks anything.
    let history = all
        .entry(key_of(m))
        .or_insert_with(|| vec![(now, current.clamp(rule.min, rule.max.max(rule.min)))]);
    let Some(open) = open else {
        return (current.clamp(rule.min, rule.max.max(rule.min)), None);
    };
    // The last recommendation held until now (reconciles come only when something changed).
    if let Some(&(_, last)) = history.last() {
        history.push((now, last));
    }
    history.retain(|(at, _)| now.duration_since(*at) <= rule.scale_down_window);
    let aged: Vec<(Duration, u32)> = history.iter().map(|(at, r)| (now - *at, *r)).collect();
    let desired = autoscale::desired(open, &rule, &aged);
    let recommended = autoscale::recommended(open, &rule);
    history.push((now, recommended));
    let window_ends = autoscale::window_ends(recommended, &rule, &aged);
    (desired, window_ends)
}

/// Pods `0..kept` stay: each starts its idle count afresh if it is asked to leave later, since
/// what it did meanwhile was not watched (a scale-down that was called off must not leave a
/// timer that later passes a pod as long idle).
fn restart_idle_counts_of_kept(ctx: &Context, m: &Miner, kept: u32) {
    let names = Names::of(m);
    for o in 0..kept {
        ctx.forget(&idle_key(m, &names.pod(o as usize)));
    }
}

/// The first-seen key of `pod`'s idle timer.
fn idle_key(m: &Miner, pod: &str) -> String {
    format!("miner/{}/idle/{pod}", key_of(m))
}

/// How long a pod must be seen idle (and drained) before it may be removed.
const IDLE_SETTLE: Duration = Duration::from_secs(5);

/// `work`, with `Idle` only once the pod was idle for [`IDLE_SETTLE`] in a row.
fn settled(ctx: &Context, m: &Miner, pod: &str, work: PodWork) -> PodWork {
    let key = idle_key(m, pod);
    if work != PodWork::Idle {
        ctx.forget(&key);
        return work;
    }
    if ctx.held_for(key) >= IDLE_SETTLE {
        PodWork::Idle
    } else {
        PodWork::Busy
    }
}

/// Every address bound to a task still active on chain; `None` when the chain cannot be
/// asked (then no pod counts as free).
async fn bound_addresses(node: &Client) -> Option<std::collections::BTreeSet<Address>> {
    let tasks = node.tasks(None).await.ok()?;
    Some(bound_to_active_tasks(tasks.iter().map(|t| &t.task)))
}

/// The miners with a claim, the validators assigned to a claim and the members of a
/// challenge committee, of every active task: none of them may leave before the task ends.
fn bound_to_active_tasks<'a>(
    tasks: impl Iterator<Item = &'a pot_protocol::state::Task>,
) -> std::collections::BTreeSet<Address> {
    let mut bound = std::collections::BTreeSet::new();
    for task in tasks.filter(|t| t.is_active()) {
        for (miner, entry) in &task.claims {
            bound.insert(*miner);
            bound.extend(entry.assigned.iter().map(|a| a.validator));
        }
        for challenge in &task.challenges {
            bound.extend(challenge.committee.iter().map(|s| s.member));
        }
    }
    bound
}

/// Stake on its way back to an account's balance (a drained validator's).
pub(crate) fn unbonding(a: &AccountInfo) -> u64 {
    a.unbonding.iter().map(|u| u.amount.0).sum()
}

/// The chain's view of each address (`None` where it could not be read or has no account).
async fn accounts(node: &Client, addresses: &[Address]) -> Vec<Option<AccountInfo>> {
    futures::future::join_all(addresses.iter().map(|a| node.account(a)))
        .await
        .into_iter()
        .map(|r| r.ok())
        .collect()
}

/// Top the fleet up from its funding key; the outcome for the `Funded` condition.
async fn fund(
    m: &Miner,
    ctx: &Context,
    net: &PotNetwork,
    node: &Client,
    funding_spec: &crate::crd::miner::Funding,
    miners: &[Address],
) -> std::result::Result<funding::Funded, String> {
    let ns = m.namespace().unwrap_or_default();
    let payer = crate::key_secret::read(
        &ctx.client,
        &ns,
        &funding_spec.from_secret,
        "Miner",
        "FundingKeyInvalid",
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    let genesis = crate::network::identity::genesis_of(net, &ctx.client)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the network has no genesis yet".to_string())?;
    let p = &genesis.params;
    let spec = &m.spec;
    let (stake, deposit) = if spec.mines() {
        (
            spec.stake.map(Amount).unwrap_or(p.min_miner_bond),
            p.claim_deposit,
        )
    } else {
        (Amount::ZERO, Amount::ZERO)
    };
    let validator_stake = children::validator_stake(m, net).unwrap_or(Amount::ZERO);
    let target = funding::target(stake, validator_stake, deposit, p.tx_fee);
    let sent = funding::fund(
        node,
        &payer,
        (&genesis.chain_id, p.tx_fee),
        miners,
        target,
        funding_spec.max_penalties,
    )
    .await;
    if let Err(e) = &sent {
        warn!(miner = %m.name_any(), "funding: {e}");
    }
    sent
}

/// The status the fleet's StatefulSet, pods and accounts say it has.
#[allow(clippy::too_many_arguments)]
fn observe(
    m: &Miner,
    sts: &StatefulSet,
    plan: &autoscale::ScalePlan,
    desired: u32,
    open: Option<u64>,
    views: &BTreeMap<u32, PodView>,
    addresses: &[Address],
    accounts: &[Option<AccountInfo>],
    funding: Option<std::result::Result<funding::Funded, String>>,
) -> MinerStatus {
    let old = m.status.clone().unwrap_or_default();
    let s = sts.status.clone().unwrap_or_default();
    let ready = s.ready_replicas.unwrap_or(0);
    let scaled = old.desired_replicas != desired as i32;
    let mut status = MinerStatus {
        observed_generation: m.meta().generation,
        replicas: s.replicas,
        ready_replicas: ready,
        desired_replicas: desired as i32,
        selector: Some(crate::network::children::selector_string(
            &children::selector(m),
        )),
        gpus: ready * m.spec.gpus_per_pod,
        open_tasks: open.or(old.open_tasks),
        tasks_in_progress: views
            .values()
            .filter_map(|v| v.status.as_ref()?.as_ref().ok())
            .map(|n| n.unfinished() as u32)
            .sum(),
        tasks_won: accounts
            .iter()
            .flatten()
            .map(|a| a.reputation.tasks_won)
            .sum(),
        holdings: accounts
            .iter()
            .flatten()
            .map(|a| a.balance.0 + a.miner_bond.0 + a.validator_bond.0 + unbonding(a))
            .sum(),
        addresses: addresses[..(plan.replicas as usize).min(addresses.len())]
            .iter()
            .map(|a| a.to_hex())
            .collect(),
        draining: views
            .iter()
            .filter(|(o, _)| **o >= desired && **o < plan.replicas)
            .map(|(_, v)| v.name.clone())
            .collect(),
        last_scale_time: if scaled {
            Some(now())
        } else {
            old.last_scale_time
        },
        conditions: old.conditions,
    };
    let generation = m.meta().generation;
    let now = now();
    let ready_all = ready as u32 >= plan.replicas && s.replicas as u32 == plan.replicas;
    conditions::set(
        &mut status.conditions,
        Fact {
            type_: "Ready",
            holds: ready_all,
            reason: if ready_all {
                "PodsReady"
            } else {
                "PodsNotReady"
            },
            message: format!("{ready}/{} pods ready", plan.replicas),
        },
        generation,
        &now,
    );
    let waiting = plan.replicas > desired;
    let settling = waiting || !ready_all || s.replicas as u32 != desired;
    conditions::set(
        &mut status.conditions,
        Fact {
            type_: "Progressing",
            holds: settling,
            reason: if waiting {
                "DrainingBeforeScaleDown"
            } else if settling {
                "Scaling"
            } else {
                "Stable"
            },
            message: if waiting {
                format!(
                    "{desired} pods wanted; {} drained pods still hold work",
                    plan.replicas - desired
                )
            } else {
                format!("{} of {desired} pods", s.replicas)
            },
        },
        generation,
        &now,
    );
    let unknown: Vec<&str> = views
        .iter()
        .filter(|(o, v)| **o >= desired && v.work() == PodWork::Unknown)
        .map(|(_, v)| v.name.as_str())
        .collect();
    let (degraded, reason, message) = if !unknown.is_empty() {
        (
            true,
            "PodStatusUnknown",
            format!(
                "cannot read the node status of {} (kept until it answers)",
                unknown.join(", ")
            ),
        )
    } else if open.is_none() && m.spec.autoscaling.is_some() {
        (
            true,
            "QueueUnknown",
            "the network's API does not answer; the fleet keeps its size".into(),
        )
    } else {
        (false, "AsExpected", "no problem seen".to_string())
    };
    conditions::set(
        &mut status.conditions,
        Fact {
            type_: "Degraded",
            holds: degraded,
            reason,
            message,
        },
        generation,
        &now,
    );
    if let Some(f) = funding {
        let names = Names::of(m);
        let pod = |a: &Address| match addresses.iter().position(|x| x == a) {
            Some(i) => format!("{} ({a})", names.pod(i)),
            None => a.to_hex(),
        };
        conditions::set(
            &mut status.conditions,
            funded_fact(f, pod),
            generation,
            &now,
        );
    }
    status
}

/// The `Funded` condition for a funding pass's outcome; `pod` names the pod of an address.
fn funded_fact(
    outcome: std::result::Result<funding::Funded, String>,
    pod: impl Fn(&Address) -> String,
) -> Fact<'static> {
    match outcome {
        Err(e) => Fact {
            type_: "Funded",
            holds: false,
            reason: "FundingFailed",
            message: e,
        },
        Ok(f) if !f.withheld.is_empty() => {
            let pods: Vec<String> = f.withheld.iter().map(pod).collect();
            Fact {
                type_: "Funded",
                holds: false,
                reason: "PenalisedPodsWithheld",
                message: format!(
                    "not topping up {} (its key was penalised more than funding.maxPenalties times on chain, counted over the key's life: rejected claims and unreported assignments; find out why in its logs, then raise maxPenalties to fund it again); sent {} transfers to the others",
                    pods.join(", "),
                    f.sent
                ),
            }
        }
        Ok(f) => Fact {
            type_: "Funded",
            holds: true,
            reason: "ToppedUp",
            message: match f.sent {
                0 => "every miner holds its stake and fees".into(),
                n => format!("sent {n} transfers"),
            },
        },
    }
}

/// A fleet that cannot be reconciled until a person acts: `Degraded` with the reason.
fn degraded(m: &Miner, reason: &str, message: &str) -> MinerStatus {
    let mut status = m.status.clone().unwrap_or_default();
    status.observed_generation = m.meta().generation;
    status.selector = Some(crate::network::children::selector_string(
        &children::selector(m),
    ));
    let now = now();
    for (type_, holds) in [("Ready", false), ("Degraded", true)] {
        conditions::set(
            &mut status.conditions,
            Fact {
                type_,
                holds,
                reason,
                message: message.to_string(),
            },
            m.meta().generation,
            &now,
        );
    }
    status
}

/// Whether `new` differs from `old` only in what the chain and the pods' work moved.
pub fn only_progress(old: &MinerStatus, new: &MinerStatus) -> bool {
    let as_old = MinerStatus {
        open_tasks: old.open_tasks,
        tasks_in_progress: old.tasks_in_progress,
        tasks_won: old.tasks_won,
        holdings: old.holdings,
        ..new.clone()
    };
    &as_old == old
}

/// Write `status` unless it is the stored one; progress alone at most once per resync.
async fn write_status(m: &Miner, ctx: &Context, status: MinerStatus) -> Result<()> {
    let key = format!("miner/{}", key_of(m));
    if let Some(old) = m.status.as_ref()
        && (old == &status || (only_progress(old, &status) && ctx.written_recently(&key)))
    {
        return Ok(());
    }
    apply::apply_status(&ctx.client, m, &status).await?;
    ctx.mark_written(key);
    Ok(())
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_funded_condition_names_the_pods_held_back() {
        let held = pot_protocol::SecretKey::from_seed([4; 32]).address();
        let f = funded_fact(
            Ok(funding::Funded {
                sent: 2,
                withheld: vec![held],
            }),
            |a| format!("f-miner-3 ({a})"),
        );
        assert!(!f.holds);
        assert_eq!(f.reason, "PenalisedPodsWithheld");
        assert!(
            f.message.contains(&format!("f-miner-3 ({held})"))
                && f.message.contains("sent 2 transfers"),
            "{}",
            f.message
        );
        let ok = funded_fact(Ok(funding::Funded::default()), |a| a.to_hex());
        assert!(ok.holds && ok.reason == "ToppedUp");
    }

    #[tokio::test]
    async fn a_called_off_scale_down_leaves_no_idle_count_behind() {
        let ctx = Context::for_tests();
        let m: Miner = serde_json::from_value(serde_json::json!({
            "apiVersion": "pot.dev/v1alpha1", "kind": "Miner",
            "metadata": {"name": "f", "namespace": "a"},
            "spec": {"networkRef": {"name": "n"}},
        }))
        .unwrap();
        // Pod 2 was asked to leave and seen idle; then the fleet kept it.
        assert_eq!(settled(&ctx, &m, "f-miner-2", PodWork::Idle), PodWork::Busy);
        std::thread::sleep(Duration::from_millis(20));
        let before = ctx.held_for(idle_key(&m, "f-miner-2"));
        assert!(before >= Duration::from_millis(20));
        restart_idle_counts_of_kept(&ctx, &m, 3);
        assert!(ctx.held_for(idle_key(&m, "f-miner-2")) < before);
    }

    /// An active task with one claim assigned to validators `v1`, `v2` and a challenge whose
    /// committee seats `c1`.
    fn task_binding(
        miner: Address,
        validators: &[Address],
        member: Address,
    ) -> pot_protocol::state::Task {
        use pot_protocol::Hash;
        use pot_protocol::state::*;
        let tt: crate::crd::task::TrainingTask = serde_yaml::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../manifests/task-digits.yaml"
            ))
            .unwrap(),
        )
        .unwrap();
        let windows = crate::task::spec::windows(&tt.spec.windows);
        let at = TxPosition {
            height: 3,
            index: 0,
        };
        let entry = ClaimEntry {
            commitment: Hash([1; 32]),
            committed_at: at,
            deposit: Amount(100),
            collateral: Amount(5000),
            claim: None,
            salt: None,
            assigned: validators
                .iter()
                .map(|v| Assignment {
                    validator: *v,
                    segments: vec![1],
                    collateral: Amount(2500),
                })
                .collect(),
            reports: Default::default(),
        };
        Task {
            id: Hash([7; 32]),
            client: Address([9; 32]),
            spec: crate::task::spec::task_spec(&tt.spec.task).unwrap(),
            bounty: Amount(5000),
            eval_commit: Hash([2; 32]),
            schedule: Schedule::new(1, &windows),
            windows,
            claims: [(miner, entry)].into(),
            eval_set: None,
            challenges: vec![ChallengeEntry {
                challenger: Address([8; 32]),
                commitment: Hash([3; 32]),
                committed_at: at,
                deposit: Amount(100),
                dispute: None,
                committee: vec![Seat {
                    member,
                    collateral: Amount(2500),
                }],
                votes: Default::default(),
            }],
            status: TaskStatus::Active,
        }
    }

    #[test]
    fn claimants_assigned_validators_and_committee_members_of_active_tasks_cannot_leave() {
        let a = |b: u8| Address([b; 32]);
        let active = task_binding(a(1), &[a(2), a(3)], a(4));
        let bound = bound_to_active_tasks([&active].into_iter());
        assert_eq!(bound, [a(1), a(2), a(3), a(4)].into());
        // A task that ended binds no one.
        let mut ended = task_binding(a(5), &[a(6)], a(7));
        ended.status = pot_protocol::state::TaskStatus::Failed {
            reason: pot_protocol::state::FailReason::EvalSetNotRevealed,
            at: 9,
            burned: Amount(1),
        };
        let bound = bound_to_active_tasks([&active, &ended].into_iter());
        assert!(!bound.contains(&a(6)) && !bound.contains(&a(5)) && !bound.contains(&a(7)));
    }

    #[test]
    fn work_and_chain_progress_is_told_apart_from_a_change_of_state() {
        let old = MinerStatus {
            replicas: 2,
            desired_replicas: 2,
            ..Default::default()
        };
        let moved = MinerStatus {
            open_tasks: Some(7),
            tasks_in_progress: 3,
            ..old.clone()
        };
        assert!(only_progress(&old, &moved));
        let scaled = MinerStatus {
            desired_replicas: 4,
            ..moved
        };
        assert!(!only_progress(&old, &scaled));
    }
}
