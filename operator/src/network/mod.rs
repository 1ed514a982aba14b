//! The `PotNetwork` controller: keys and genesis once, then the Services, the coordinator
//! StatefulSet and its PodDisruptionBudget, and a status read from the StatefulSet and the
//! chain itself.

pub mod children;
pub mod genesis;
pub mod identity;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use pot_protocol::api::{Head, Queue};
use tracing::info;

use crate::apply;
use crate::conditions::{self, Fact};
use crate::context::{Context, NODE_API_TIMEOUT, key_of, truncate};
use crate::crd::network::{NetworkPhase, PotNetwork, PotNetworkStatus};
use crate::error::{Error, Result};
use children::Names;

/// One pass over a network: its identity, its objects, its status. Requeued every resync
/// period, since the chain moves without the object changing.
pub async fn reconcile(net: Arc<PotNetwork>, ctx: Arc<Context>) -> Result<Action> {
    let ns = net.namespace().unwrap_or_default();
    if net.meta().deletion_timestamp.is_some() {
        // Being deleted: the garbage collector takes what it owns; nothing to re-create.
        return Ok(Action::await_change());
    }
    let identity = match identity::ensure(&net, &ctx.client).await {
        Ok(id) => id,
        Err(Error::Needs { reason, message }) => {
            write_status(&net, &ctx, degraded(&net, reason, &message)).await?;
            return Err(Error::Needs { reason, message });
        }
        Err(e) => return Err(e),
    };
    let client = &ctx.client;
    let mut wrote = false;
    wrote |= apply::apply(
        &Api::<Service>::namespaced(client.clone(), &ns),
        children::headless_service(&net),
    )
    .await?;
    wrote |= apply::apply(
        &Api::<Service>::namespaced(client.clone(), &ns),
        children::api_service(&net),
    )
    .await?;
    wrote |= apply::apply(
        &Api::<StatefulSet>::namespaced(client.clone(), &ns),
        children::statefulset(&net),
    )
    .await?;
    wrote |= apply::apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns),
        children::pdb(&net),
    )
    .await?;
    if wrote {
        info!(network = %net.name_any(), namespace = %ns, "applied the network's objects");
    }
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get_opt(&Names::of(&net).statefulset())
        .await?;
    let genesis = identity.genesis;
    let chain = read_chain(&ctx.api_url(&net), &genesis).await;
    if let Ok((_, queue)) = &chain {
        ctx.record_queue(&net, crate::context::takeable(queue));
    }
    let status = observe(&net, &ctx.api_url(&net), sts.as_ref(), &genesis, chain);
    let old_phase = net.status.as_ref().map(|s| s.phase);
    if old_phase != Some(status.phase) {
        ctx.event(
            net.as_ref(),
            status.phase == NetworkPhase::Degraded,
            &format!("{:?}", status.phase),
            format!("network is {:?}", status.phase),
        )
        .await;
    }
    write_status(&net, &ctx, status).await?;
    Ok(Action::requeue(ctx.resync))
}

/// Read the chain's head and queue through the network's API. Errors are a status, not a
/// failed reconcile (coordinators may still be starting); an API that serves another chain
/// is not believed.
async fn read_chain(
    url: &str,
    genesis: &pot_protocol::Genesis,
) -> std::result::Result<(Head, Queue), String> {
    let short = |e: pot_protocol::client::ClientError| truncate(&e.to_string(), 200);
    let node = pot_protocol::client::Client::with_timeout(url, NODE_API_TIMEOUT);
    let head = node.head().await.map_err(short)?;
    if head.genesis_hash != genesis.hash() {
        return Err(format!(
            "the API at {url} serves chain {:?} with genesis {}, not this network's ({})",
            truncate(&head.chain_id, 64),
            head.genesis_hash,
            genesis.hash()
        ));
    }
    let queue = node.queue().await.map_err(short)?;
    Ok((head, queue))
}

/// Coordinators needed for the chain to move: `2f + 1` of `3f + 1`, or the one of a
/// development network.
pub fn quorum(coordinators: i32) -> i32 {
    coordinators - (coordinators - 1) / 3
}

/// The status a network's StatefulSet and chain say it has.
pub fn observe(
    net: &PotNetwork,
    url: &str,
    sts: Option<&StatefulSet>,
    genesis: &pot_protocol::Genesis,
    chain: std::result::Result<(Head, Queue), String>,
) -> PotNetworkStatus {
    let old = net.status.clone().unwrap_or_default();
    let n = net.spec.coordinators;
    let ready = sts
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let mut status = PotNetworkStatus {
        observed_generation: net.meta().generation,
        ready: Some(format!("{ready}/{n}")),
        ready_coordinators: ready,
        chain_id: Some(genesis.chain_id.clone()),
        genesis_hash: Some(genesis.hash().to_string()),
        coordinator_addresses: genesis
            .coordinators
            .iter()
            .map(|c| c.address.to_hex())
            .collect(),
        api_url: Some(url.to_string()),
        conditions: old.conditions.clone(),
        height: old.height,
        last_block_hash: old.last_block_hash.clone(),
        last_block_time: old.last_block_time.clone(),
        open_tasks: old.open_tasks,
        ..Default::default()
    };
    let chain_error = match chain {
        Ok((head, queue)) => {
            status.height = Some(head.height);
            status.last_block_hash = Some(head.hash.to_string());
            // Whole seconds: the API server stores times to the second, and a status that
            // differs from the stored one only below that would be written every time.
            status.last_block_time =
                k8s_openapi::jiff::Timestamp::from_second((head.time_ms / 1000) as i64)
                    .ok()
                    .map(Time);
            status.open_tasks = Some(queue.open);
            None
        }
        Err(e) => Some(e),
    };
    let quorum_up = ready >= quorum(n);
    status.phase = if net.spec.suspend {
        NetworkPhase::Suspended
    } else if quorum_up && chain_error.is_none() && status.height.is_some_and(|h| h > 0) {
        NetworkPhase::Running
    } else if old.phase == NetworkPhase::Pending && status.height.is_none_or(|h| h == 0) {
        NetworkPhase::Pending
    } else {
        NetworkPhase::Degraded
    };
    let generation = net.meta().generation;
    let now = now();
    let running = status.phase == NetworkPhase::Running;
    conditions::set(
        &mut status.conditions,
        Fact {
            type_: "Ready",
            holds: running,
            reason: if running { "ChainMoving" } else { "NotRunning" },
            message: match (&chain_error, running) {
                (_, true) => format!("{ready}/{n} coordinators ready; the chain is moving"),
                (Some(e), false) => format!("{ready}/{n} coordinators ready; the chain's API: {e}"),
                (None, false) => {
                    format!("{ready}/{n} coordinators ready (a quorum is {})", quorum(n))
                }
            },
        },
        generation,
        &now,
    );
    let desired = if net.spec.suspend { 0 } else { n };
    let settling = sts
        .and_then(|s| s.status.as_ref())
        .is_none_or(|s| s.updated_replicas.unwrap_or(0) != desired || ready != desired);
    conditions::set(
        &mut status.conditions,
        Fact {
            type_: "Progressing",
            holds: settling,
            reason: if settling { "RollingOut" } else { "Stable" },
            message: format!("{ready} of {desired} coordinators ready"),
        },
        generation,
        &now,
    );
    let degraded = status.phase == NetworkPhase::Degraded;
    conditions::set(
        &mut status.conditions,
        Fact {
            type_: "Degraded",
            holds: degraded,
            reason: if degraded {
                "BelowQuorum"
            } else {
                "AsExpected"
            },
            message: if degraded {
                format!("{ready}/{n} coordinators ready; a quorum is {}", quorum(n))
            } else {
                "no problem seen".into()
            },
        },
        generation,
        &now,
    );
    status
}

/// The status of a network whose identity needs a person: `Degraded` with the reason.
fn degraded(net: &PotNetwork, reason: &str, message: &str) -> PotNetworkStatus {
    let mut status = net.status.clone().unwrap_or_default();
    status.phase = NetworkPhase::Degraded;
    status.observed_generation = net.meta().generation;
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
            net.meta().generation,
            &now,
        );
    }
    status
}

/// Whether `new` differs from `old` only in how far the chain got (height, last block, queue).
pub fn only_progress(old: &PotNetworkStatus, new: &PotNetworkStatus) -> bool {
    let as_old = PotNetworkStatus {
        height: old.height,
        last_block_hash: old.last_block_hash.clone(),
        last_block_time: old.last_block_time.clone(),
        open_tasks: old.open_tasks,
        ..new.clone()
    };
    &as_old == old
}

/// Write `status` unless it is what the object already says. The chain's progress alone is
/// written at most once per resync period: each write triggers a reconcile, and a chain with
/// sub-second blocks would otherwise keep its network reconciling without pause.
async fn write_status(net: &PotNetwork, ctx: &Context, status: PotNetworkStatus) -> Result<()> {
    let key = format!("potnetwork/{}", key_of(net));
    if let Some(old) = net.status.as_ref()
        && (old == &status || (only_progress(old, &status) && ctx.written_recently(&key)))
    {
        return Ok(());
    }
    apply::apply_status(&ctx.client, net, &status).await?;
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
    fn the_chain_moving_on_is_told_apart_from_a_change_of_state() {
        let old = PotNetworkStatus {
            height: Some(5),
            phase: NetworkPhase::Running,
            ..Default::default()
        };
        let moved = PotNetworkStatus {
            height: Some(9),
            open_tasks: Some(2),
            ..old.clone()
        };
        assert!(only_progress(&old, &moved));
        let degraded = PotNetworkStatus {
            phase: NetworkPhase::Degraded,
            ..moved.clone()
        };
        assert!(!only_progress(&old, &degraded));
    }

    #[test]
    fn a_quorum_is_two_thirds_and_one() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(7), 5);
        assert_eq!(quorum(10), 7);
    }
}
