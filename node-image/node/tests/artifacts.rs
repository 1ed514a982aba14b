//! Artifacts over a real libp2p network on loopback: holders found through Kademlia, a blob
//! fetched in checked chunks from several of them, one that has gone replaced by another, and a
//! blob larger than allowed refused.

use std::time::{Duration, Instant};

use pot_node::artifacts::BlobStore;
use pot_node::artifacts::net::ArtifactNet;
use pot_protocol::{Hash, SecretKey};

struct Node {
    net: ArtifactNet,
    _dir: tempfile::TempDir,
}

async fn node(bootstrap: &[&Node]) -> Node {
    node_at(bootstrap.iter().map(|n| n.net.address()).collect()).await
}

async fn node_at(bootstrap: Vec<libp2p::Multiaddr>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let net = ArtifactNet::start(
        &SecretKey::generate(),
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        bootstrap,
        store,
    )
    .await
    .unwrap();
    Node { net, _dir: dir }
}

/// A bootstrap address by DNS name and without a peer id, as the operator gives pods
/// (`/dns4/<pod>.<headless service>…/tcp/26658`): holders are found through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_peer_named_by_dns_without_its_peer_id_is_reached() {
    use libp2p::multiaddr::Protocol;
    let a = node(&[]).await;
    let port = a
        .net
        .address()
        .iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let by_name: libp2p::Multiaddr = format!("/dns4/localhost/tcp/{port}").parse().unwrap();
    let b = node_at(vec![by_name.clone()]).await;
    let bytes = blob();
    let h = b.net.store.put(&bytes).unwrap();
    b.net.provide(h).await;
    let c = node_at(vec![by_name]).await;
    let holders = wait_for_holders(&c, h, 1).await;
    assert!(holders.contains(&b.net.peer_id), "{holders:?}");
    c.net.fetch(h, 1 << 30, &[]).await.unwrap();
    assert_eq!(c.net.store.read(&h).unwrap(), bytes);
}

/// Three and a half chunks of bytes that are not all alike.
fn blob() -> Vec<u8> {
    (0..(3 * (1u64 << 20) + (1 << 19)))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Ask `who` for the holders of `blob` until it names `want` of them (bounded).
async fn wait_for_holders(who: &Node, blob: Hash, want: usize) -> Vec<libp2p::PeerId> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let holders = who.net.holders(blob).await;
        if holders.len() >= want || Instant::now() > deadline {
            return holders;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_is_found_through_the_network_and_fetched_from_its_holders() {
    let a = node(&[]).await;
    let b = node(&[&a]).await;
    let bytes = blob();
    let h = a.net.store.put(&bytes).unwrap();
    b.net.store.put(&bytes).unwrap();
    a.net.provide(h).await;
    b.net.provide(h).await;

    let c = node(&[&a]).await;
    let holders = wait_for_holders(&c, h, 2).await;
    assert!(
        holders.contains(&a.net.peer_id) && holders.contains(&b.net.peer_id),
        "{holders:?}"
    );
    c.net.fetch(h, 1 << 30, &[]).await.unwrap();
    assert_eq!(c.net.store.read(&h).unwrap(), bytes);
    // Having fetched it, c holds it too and says so.
    let d = node(&[&a]).await;
    let holders = wait_for_holders(&d, h, 3).await;
    assert!(holders.contains(&c.net.peer_id), "{holders:?}");

    // More than the caller allows is refused, and nothing is stored.
    let err = d.net.fetch(h, 1 << 20, &[]).await.unwrap_err().to_string();
    assert!(err.contains("over the 1048576 allowed"), "{err}");
    assert!(!d.net.store.contains(&h));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_has_gone_is_replaced_by_another() {
    let a = node(&[]).await;
    let b = node(&[]).await;
    let bytes = blob();
    let h = a.net.store.put(&bytes).unwrap();
    b.net.store.put(&bytes).unwrap();
    let c = node(&[&b]).await;
    c.net.add_peer(a.net.peer_id, a.net.listen.clone()).await;
    let (gone, there) = (a.net.peer_id, b.net.peer_id);
    // The first holder named stops before it is asked.
    drop(a);
    c.net.fetch(h, 1 << 30, &[gone, there]).await.unwrap();
    assert_eq!(c.net.store.read(&h).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_nobody_holds_fails_with_the_reason() {
    let a = node(&[]).await;
    let c = node(&[&a]).await;
    let err = c
        .net
        .fetch(Hash::digest(b"nobody has this"), 1 << 30, &[a.net.peer_id])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("NotFound"), "{err}");
}
