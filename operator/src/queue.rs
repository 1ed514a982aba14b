//! The queue poller: every second it reads the open-task queue of each network that an
//! autoscaled `Miner` fleet follows, and asks for a reconcile of those fleets when the queue
//! changed, so replicas follow the queue within about a second (KEDA polls every 30 s by
//! default) while an unchanged queue costs no reconcile at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;

use crate::context::Context;
use crate::crd::miner::Miner;
use crate::crd::network::PotNetwork;

/// How often each followed network's queue is read.
pub const POLL: Duration = Duration::from_secs(1);

/// Poll until `stop` turns true.
pub async fn poll(
    ctx: Arc<Context>,
    miners: Store<Miner>,
    networks: Store<PotNetwork>,
    changed: UnboundedSender<ObjectRef<Miner>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: HashMap<ObjectRef<PotNetwork>, u64> = HashMap::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let fleets = fleets_by_network(&miners.state());
        let reads = fleets.keys().filter_map(|r| networks.get(r)).map(|net| {
            let ctx = ctx.clone();
            async move {
                let open = pot_protocol::client::Client::with_timeout(ctx.api_url(&net), POLL)
                    .queue()
                    .await
                    .ok()
                    .map(|q| crate::context::takeable(&q));
                (net, open)
            }
        });
        for (net, open) in futures::future::join_all(reads).await {
            let Some(open) = open else { continue };
            ctx.record_queue(&net, open);
            let r = ObjectRef::from_obj(net.as_ref());
            if last.insert(r.clone(), open) == Some(open) {
                continue;
            }
            for m in fleets.get(&r).into_iter().flatten() {
                if changed.unbounded_send(m.clone()).is_err() {
                    return;
                }
            }
        }
        last.retain(|r, _| fleets.contains_key(r));
    }
}

/// The autoscaled fleets of each network.
fn fleets_by_network(
    miners: &[Arc<Miner>],
) -> HashMap<ObjectRef<PotNetwork>, Vec<ObjectRef<Miner>>> {
    let mut out: HashMap<ObjectRef<PotNetwork>, Vec<ObjectRef<Miner>>> = HashMap::new();
    for m in miners.iter().filter(|m| m.spec.autoscaling.is_some()) {
        let Some(ns) = m.namespace() else { continue };
        let net = ObjectRef::new(&m.spec.network_ref.name).within(&ns);
        out.entry(net)
            .or_default()
            .push(ObjectRef::from_obj(m.as_ref()));
    }
    out
}
