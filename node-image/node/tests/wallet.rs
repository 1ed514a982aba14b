//! `Wallet::send_all` against a real dev coordinator: a batch lands with consecutive nonces,
//! and a transaction the node refuses costs neither the ones before it nor the ones after.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pot_node::wallet::Wallet;
use pot_protocol::api::TxStatus;
use pot_protocol::client::Client;
use pot_protocol::tx::TxBody;
use pot_protocol::{Address, Amount, SecretKey};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_lands_in_order_and_a_refused_transaction_stops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let api = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
    let _node = Killed(
        Command::new(env!("CARGO_BIN_EXE_pot-node"))
            .args(["run", "--dev", "--data-dir"])
            .arg(&data)
            .args([
                "--p2p-listen",
                &format!("/ip4/127.0.0.1/tcp/{}", free_port()),
            ])
            .args(["--api-listen", &api])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let client = Client::new(format!("http://{api}"));
    client
        .wait_height(1, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}",
                std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default()
            )
        });
    let key = pot_node::keyfile::read(&data.join("coordinator.key")).unwrap();
    let wallet = Wallet {
        client: client.clone(),
        key: key.clone(),
        fee: None,
    };
    let to: Vec<Address> = (0..3).map(|_| SecretKey::generate().address()).collect();
    let transfer = |i: usize, amount: u64| TxBody::Transfer {
        to: to[i],
        amount: Amount(amount),
    };
    let nonce = client.account(&key.address()).await.unwrap().nonce;

    let sent = wallet
        .send_all(
            vec![transfer(0, 10), transfer(1, 20), transfer(2, 30)],
            Duration::from_secs(60),
        )
        .await;
    for (i, r) in sent.iter().enumerate() {
        let (_, status) = r.as_ref().unwrap_or_else(|e| panic!("transfer {i}: {e:#}"));
        assert!(matches!(status, TxStatus::Included { .. }), "{status:?}");
    }
    for (i, amount) in [10, 20, 30].into_iter().enumerate() {
        assert_eq!(
            client.account(&to[i]).await.unwrap().balance,
            Amount(amount)
        );
    }
    assert_eq!(
        client.account(&key.address()).await.unwrap().nonce,
        nonce + 3
    );

    // The second is more than the account holds: refused, and the third takes its nonce.
    let balance = client.account(&key.address()).await.unwrap().balance;
    let sent = wallet
        .send_all(
            vec![transfer(0, 1), transfer(1, balance.0 + 1), transfer(2, 1)],
            Duration::from_secs(60),
        )
        .await;
    assert!(sent[0].is_ok(), "{:?}", sent[0].as_ref().err());
    let refused = format!("{:#}", sent[1].as_ref().unwrap_err());
    assert!(refused.contains("refused"), "{refused}");
    assert!(sent[2].is_ok(), "{:?}", sent[2].as_ref().err());
    assert_eq!(client.account(&to[0]).await.unwrap().balance, Amount(11));
    assert_eq!(client.account(&to[1]).await.unwrap().balance, Amount(20));
    assert_eq!(client.account(&to[2]).await.unwrap().balance, Amount(31));
    assert_eq!(
        client.account(&key.address()).await.unwrap().nonce,
        nonce + 5
    );
}
