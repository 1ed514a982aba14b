//! One coordinator (`pot-node run --dev` and a genesis of one): the CLI submits a task and reads
//! it back, and every rejection path of the API answers 4xx with its reason and changes nothing.

use std::process::Command;
use std::time::Duration;

use pot_e2e::coordinators::{Coordinators, dev_node};
use pot_e2e::ports::free_port;
use pot_e2e::spawn::Process;
use pot_protocol::api::{SubmitTx, SubmitTxs, TxStatus};
use pot_protocol::client::{Client, ClientError};
use pot_protocol::tx::{Tx, TxBody};
use pot_protocol::{Amount, Hash, Phase, SecretKey, SignedTx};

const WAIT: Duration = Duration::from_secs(60);

fn pot_node(bin: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().expect("pot-node");
    assert!(
        out.status.success(),
        "pot-node {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The example digits task file.
const DIGITS_TASK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../node-image/node/tasks/digits-mlp.yaml"
);

/// `pot-node task submit` of the example digits task, signed by the dev node's funded key in
/// `data`; returns what it printed.
fn submit_digits_task(
    bin: &std::path::Path,
    url: &str,
    data: &std::path::Path,
    secret: &std::path::Path,
) -> String {
    submit_task(bin, url, data, std::path::Path::new(DIGITS_TASK), secret)
}

/// `pot-node task submit` of the task in `task_file`, signed by the dev node's funded key in
/// `data`; returns what it printed.
fn submit_task(
    bin: &std::path::Path,
    url: &str,
    data: &std::path::Path,
    task_file: &std::path::Path,
    secret: &std::path::Path,
) -> String {
    let key = data.join("coordinator.key");
    pot_node(
        bin,
        &[
            "task",
            "submit",
            "--node",
            url,
            "--key",
            key.to_str().unwrap(),
            "--file",
            task_file.to_str().unwrap(),
            "--secret-out",
            secret.to_str().unwrap(),
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_node_takes_a_task_from_the_cli_and_shows_it() {
    let bin = pot_e2e::pot_node_binary();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_node, url) = dev_node(&bin, &data, &[]).await;
    let client = Client::new(url.clone());

    let secret = dir.path().join("eval-secret.json");
    let out = submit_digits_task(&bin, &url, &data, &secret);
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("task: "))
        .expect("task id printed")
        .trim()
        .to_string();
    let shown: serde_json::Value =
        serde_json::from_str(&pot_node(&bin, &["task", "get", &id, "--node", &url])).unwrap();
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["phase"], "commit");
    assert_eq!(shown["task"]["bounty"], 5000);
    // The chain shows the task in the format it was written in.
    let lr = &shown["task"]["spec"]["optimizer"]["lr"];
    assert_eq!((&lr["min"], &lr["default"]), (&0.01.into(), &0.05.into()));
    assert_eq!(shown["task"]["spec"]["model"], "mlp:128,64");
    // The eval-set secret was kept, and is the client's only.
    let meta = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let queue = client.queue().await.unwrap();
    assert_eq!(queue.open, 1);
    assert_eq!(queue.by_phase.get(&Phase::Commit), Some(&1));
    let in_commit = client.tasks(Some(Phase::Commit)).await.unwrap();
    assert_eq!(in_commit.len(), 1);
    assert_eq!(in_commit[0].id.to_string(), id);
    assert!(
        client
            .tasks(Some(Phase::Finalized))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(client.tasks(None).await.unwrap().len(), 1);
    let head: serde_json::Value =
        serde_json::from_str(&pot_node(&bin, &["chain", "head", "--node", &url])).unwrap();
    assert_eq!(head["chain_id"], "pot-dev");
}

fn tx(key: &SecretKey, chain: &str, nonce: u64, body: TxBody) -> SignedTx {
    Tx {
        chain_id: chain.into(),
        signer: key.address(),
        nonce,
        fee: pot_protocol::Params::default().tx_fee,
        body,
    }
    .sign(key)
}

/// One raw HTTP/1.1 exchange with the node at `base`: for requests the typed client would never
/// send. Returns the status and the body.
fn raw_http(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status: u16 = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_api_rejection_is_a_4xx_with_its_reason_and_changes_nothing() {
    let net = Coordinators::start(1, 200, 2).expect("start");
    let c = net.client(0);
    c.wait_height(2, WAIT).await.unwrap();
    let alice = &net.accounts[0];
    let bob = &net.accounts[1];
    let before = c.account(&alice.address()).await.unwrap();

    let expect = |r: Result<Hash, ClientError>, status: u16, code: &str, words: &str| match r {
        Err(ClientError::Api { status: s, error }) => {
            assert_eq!(
                (s, error.code.as_str()),
                (status, code),
                "{}",
                error.message
            );
            assert!(
                error.message.contains(words),
                "{code}: {:?} should mention {words:?}",
                error.message
            );
        }
        other => panic!("expected {status} {code}, got {other:?}"),
    };
    let send = |amount| TxBody::Transfer {
        to: bob.address(),
        amount: Amount(amount),
    };
    expect(
        c.submit(&tx(alice, "pot-e2e", 1_000, send(1))).await,
        400,
        "tx_rejected",
        "wrong nonce",
    );
    expect(
        c.submit(&tx(alice, "other-chain", 0, send(1))).await,
        400,
        "tx_rejected",
        "chain",
    );
    expect(
        c.submit(&tx(alice, "pot-e2e", 0, send(10_000_000))).await,
        400,
        "tx_rejected",
        "insufficient funds",
    );
    expect(
        c.submit(&tx(alice, "pot-e2e", 0, send(0))).await,
        400,
        "tx_rejected",
        "positive",
    );
    let mut forged = tx(bob, "pot-e2e", 0, send(1));
    forged.tx.signer = alice.address();
    expect(c.submit(&forged).await, 400, "tx_rejected", "signature");

    let good = tx(alice, "pot-e2e", 0, send(1));
    let hex_tx = SubmitTx::new(&good).tx;
    for (body, code) in [
        ("{not json", "bad_json"),
        (r#"{"tx": "zz"}"#, "bad_hex"),
        (r#"{"tx": "00ff"}"#, "bad_encoding"),
        (&format!(r#"{{"tx": "{hex_tx}00"}}"#), "bad_encoding"),
    ] {
        let (status, err) = raw_http(&net.api_url(0), "POST", "/v1/tx", body);
        let err: serde_json::Value = serde_json::from_str(&err).unwrap_or_default();
        assert_eq!((status, err["code"].as_str()), (400, Some(code)), "{body}");
    }

    let not_found = |r: Result<(), ClientError>, code: &str| match r {
        Err(ClientError::Api { status, error }) => {
            assert_eq!(error.code, code, "{}", error.message);
            assert!(status == 400 || status == 404);
        }
        other => panic!("expected {code}, got {other:?}"),
    };
    not_found(c.tx(&good.hash()).await.map(|_| ()), "not_found");
    not_found(c.block(1_000_000).await.map(|_| ()), "not_found");
    not_found(
        c.task(&Hash::digest(b"none")).await.map(|_| ()),
        "not_found",
    );
    for (path, status, code) in [
        ("/v1/tx/xyz", 400, "bad_hash"),
        ("/v1/blocks/minus-one", 400, "bad_height"),
        ("/v1/accounts/nothex", 400, "bad_address"),
        ("/v1/tasks?state=sleeping", 400, "bad_state"),
        ("/v1/nothing", 404, "not_found"),
    ] {
        let (got, body) = raw_http(&net.api_url(0), "GET", path, "");
        let err: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(
            (got, err["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }

    // Nothing changed: no nonce used, no balance moved, nothing pending.
    c.wait_height(c.head().await.unwrap().height + 2, WAIT)
        .await
        .unwrap();
    assert_eq!(c.account(&alice.address()).await.unwrap(), before);
    match c.tx(&good.hash()).await {
        Err(ClientError::Api { status: 404, .. }) => {}
        other => panic!("the never-admitted transaction must be unknown (404), got {other:?}"),
    }

    // And the good one still goes through.
    let h = c.submit(&good).await.unwrap();
    assert!(matches!(
        c.wait_included(&h, WAIT).await.unwrap(),
        TxStatus::Included { .. }
    ));

    // A nonce a little ahead is queued until the gap fills, then both are included; another
    // transaction for the queued nonce is refused.
    let ahead = tx(alice, "pot-e2e", 2, send(1));
    let h2 = c.submit(&ahead).await.unwrap();
    assert_eq!(c.tx(&h2).await.unwrap(), TxStatus::Queued { next_nonce: 1 });
    expect(
        c.submit(&tx(alice, "pot-e2e", 2, send(2))).await,
        400,
        "tx_rejected",
        "already queued",
    );
    let h1 = c.submit(&tx(alice, "pot-e2e", 1, send(1))).await.unwrap();
    for h in [h1, h2] {
        assert!(matches!(
            c.wait_included(&h, WAIT).await.unwrap(),
            TxStatus::Included { .. }
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_submission_judges_each_transaction_as_if_it_came_alone() {
    let net = Coordinators::start(1, 200, 2).expect("start");
    let c = net.client(0);
    c.wait_height(2, WAIT).await.unwrap();
    let (alice, bob) = (&net.accounts[0], &net.accounts[1]);
    let send = |to: &SecretKey, amount| TxBody::Transfer {
        to: to.address(),
        amount: Amount(amount),
    };
    let mut forged = tx(bob, "pot-e2e", 0, send(alice, 1));
    forged.tx.signer = alice.address();
    let batch = [
        // One sender's consecutive nonces in one request are judged in order.
        tx(alice, "pot-e2e", 0, send(bob, 1)),
        tx(alice, "pot-e2e", 1, send(bob, 2)),
        forged,
        tx(bob, "pot-e2e", 0, send(alice, 10_000_000)),
        tx(bob, "pot-e2e", 0, send(alice, 3)),
        // A repeat is told what its first copy was: admitted, with the same hash.
        tx(alice, "pot-e2e", 0, send(bob, 1)),
        tx(alice, "other-chain", 2, send(bob, 1)),
    ];
    let verdicts = c
        .submit_many(&batch)
        .await
        .expect("the request is answered");
    let codes: Vec<Result<Hash, (u16, String)>> = verdicts
        .into_iter()
        .map(|v| {
            v.map_err(|e| match e {
                ClientError::Api { status, error } => (status, error.message),
                other => panic!("a verdict, not {other}"),
            })
        })
        .collect();
    for i in [0, 1, 4, 5] {
        assert_eq!(codes[i], Ok(batch[i].hash()), "transaction {i}");
    }
    for (i, words) in [(2, "signature"), (3, "insufficient funds"), (6, "chain")] {
        match &codes[i] {
            Err((400, message)) => assert!(message.contains(words), "{i}: {message}"),
            other => panic!("transaction {i} should be refused for {words:?}: {other:?}"),
        }
    }

    // A malformed transaction is refused in its place and the ones around it are still judged.
    let next = tx(bob, "pot-e2e", 1, send(alice, 4));
    let after = tx(bob, "pot-e2e", 2, send(alice, 5));
    let body = serde_json::json!({"txs": [
        SubmitTx::new(&next).tx, "zz", "00ff", SubmitTx::new(&after).tx
    ]})
    .to_string();
    let (status, answer) = raw_http(&net.api_url(0), "POST", "/v1/txs", &body);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    for (r, code) in results[1..3].iter().zip(["bad_hex", "bad_encoding"]) {
        assert_eq!(
            (
                r["result"].as_str(),
                r["status"].as_u64(),
                r["code"].as_str()
            ),
            (Some("refused"), Some(400), Some(code)),
            "{r}"
        );
    }
    for (r, t) in [(&results[0], &next), (&results[3], &after)] {
        assert_eq!(r["result"], "admitted", "{r}");
        assert_eq!(r["hash"], t.hash().to_string());
    }

    // Requests that cannot be judged at all are refused whole.
    let too_many = serde_json::to_string(&SubmitTxs {
        txs: vec![SubmitTx::new(&next).tx; SubmitTxs::MAX + 1],
    })
    .unwrap();
    for (body, code) in [
        ("{not json", "bad_json"),
        (too_many.as_str(), "too_many_txs"),
    ] {
        let (status, err) = raw_http(&net.api_url(0), "POST", "/v1/txs", body);
        let err: serde_json::Value = serde_json::from_str(&err).unwrap_or_default();
        assert_eq!((status, err["code"].as_str()), (400, Some(code)), "{err}");
    }

    // Everything admitted is included, and nothing refused moved a nonce.
    for h in [
        batch[0].hash(),
        batch[1].hash(),
        batch[4].hash(),
        next.hash(),
        after.hash(),
    ] {
        assert!(matches!(
            c.wait_included(&h, WAIT).await.unwrap(),
            TxStatus::Included { .. }
        ));
    }
    assert_eq!(c.account(&alice.address()).await.unwrap().nonce, 2);
    assert_eq!(c.account(&bob.address()).await.unwrap().nonce, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dataset_a_task_names_is_fetched_from_the_peer_that_holds_it_and_served_over_http() {
    let bin = pot_e2e::pot_node_binary();
    let dir = tempfile::tempdir().unwrap();
    let digits = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../node-image/node/data/digits/digits.csv.gz"
    ))
    .unwrap();
    let sha = Hash::digest(&digits);
    // The holder: a node whose store has the digits dataset, put in place as a file (a store
    // is a directory of blobs named by their SHA-256; the node announces them when it starts).
    let holder = dir.path().join("holder");
    std::fs::create_dir_all(holder.join("artifacts/blobs")).unwrap();
    std::fs::write(holder.join("artifacts/blobs").join(sha.to_hex()), &digits).unwrap();
    let holder_p2p = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let (_holder, _) = dev_node(&bin, &holder, &["--artifacts-listen", &holder_p2p]).await;
    let data = dir.path().join("data");
    let own_p2p = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let (_node, url) = dev_node(
        &bin,
        &data,
        &["--artifacts-listen", &own_p2p, "--bootstrap", &holder_p2p],
    )
    .await;
    let client = Client::new(url.clone());

    // No task names it yet: a node never fetches a blob for a stranger's asking.
    let err = client.artifact(&sha).await.unwrap_err();
    assert_eq!(err.code(), Some("not_found"), "{err}");
    assert!(err.to_string().contains("no active task names it"), "{err}");
    let unknown = client
        .artifact(&Hash::digest(b"nothing"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some("not_found"), "{unknown}");

    let secret = dir.path().join("eval-secret.json");
    submit_digits_task(&bin, &url, &data, &secret);

    // Now the chain names it: found through the network, fetched, checked, served. The
    // holder may not be known yet right after start-up, so ask until it is (bounded).
    let deadline = std::time::Instant::now() + WAIT;
    let bytes = loop {
        match client.artifact(&sha).await {
            Ok(b) => break b,
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(e.code(), Some("artifact_unavailable"), "{e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!(
                "never served: {e}\n{}",
                std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
            ),
        }
    };
    assert_eq!(bytes, digits);
    assert!(data.join("artifacts/blobs").join(sha.to_hex()).is_file());
}

/// A miner's training step as its `GET /v1/node/status` shows it (the first task's).
async fn training_step(miner: &Client) -> Option<u64> {
    let s = miner.node_status().await.ok()?;
    s.tasks.values().find_map(|w| match w {
        pot_protocol::api::TaskWork::Training { step, .. } => Some(*step),
        _ => None,
    })
}

/// A miner stopped with SIGTERM half-way through a long run exits at once (the run resumes
/// from its last checkpoint) instead of spending its pod's grace period on the segment in
/// progress; started again on the same data directory, it resumes.
#[tokio::test(flavor = "multi_thread")]
async fn a_miner_stops_at_once_on_sigterm_and_resumes_its_run() {
    let bin = pot_e2e::pot_node_binary();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let (_coordinator, url) = dev_node(&bin, &data, &[]).await;
    // Long enough that no run finishes during the test: 400,000 steps, a checkpoint every
    // 4,000, and a commit window of 600 blocks.
    let task = dir.path().join("long.yaml");
    let text = std::fs::read_to_string(DIGITS_TASK)
        .unwrap()
        .replace("steps: 2000", "steps: 400000")
        .replace("checkpoint_interval: 50", "checkpoint_interval: 4000")
        .replace("commit: 60,", "commit: 600,");
    std::fs::write(&task, text).unwrap();
    submit_task(&bin, &url, &data, &task, &dir.path().join("secret.json"));
    let key = data.join("coordinator.key");

    // The miner: its own key (a client's miner may not claim its task), funded by the dev key.
    let miner_key = dir.path().join("miner.key");
    let address = pot_node(&bin, &["keygen", "--out", miner_key.to_str().unwrap()]);
    pot_node(
        &bin,
        &[
            "tx",
            "--node",
            &url,
            "--key",
            key.to_str().unwrap(),
            "transfer",
            "--to",
            address.lines().next().unwrap().trim(),
            "--amount",
            "100000000",
        ],
    );
    let miner_data = dir.path().join("miner");
    let start_miner = |n: u32| {
        let api = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "--role", "miner", "--no-validate", "--genesis"])
            .arg(data.join("genesis.yaml"))
            .arg("--key")
            .arg(&miner_key)
            .arg("--data-dir")
            .arg(&miner_data)
            .args(["--coordinator", &url, "--api-listen", &api])
            .args([
                "--artifacts-listen",
                &format!("/ip4/127.0.0.1/tcp/{}", free_port()),
            ]);
        let log = dir.path().join(format!("miner-{n}.log"));
        let p = Process::start("miner", cmd, &log).unwrap();
        (p, Client::new(format!("http://{api}")), log)
    };
    let until = |what: &str, log: &std::path::Path| {
        format!(
            "{what}; the miner's log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    };

    let (mut miner, client, log) = start_miner(1);
    let deadline = std::time::Instant::now() + WAIT;
    let step = loop {
        if let Some(step) = training_step(&client).await.filter(|s| *s > 0) {
            break step;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            until("the miner never reached its first checkpoint", &log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    pot_e2e::spawn::signal(miner.pid(), libc::SIGTERM);
    let stopped = std::time::Instant::now();
    let status = loop {
        if let Some(status) = miner.exited() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "{}",
            until("the miner did not exit within 10 s of SIGTERM", &log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "{}",
        until(&format!("exit {status}"), &log)
    );

    // Started again, it goes on from its checkpoints rather than from the start.
    let (_miner, client, log) = start_miner(2);
    let deadline = std::time::Instant::now() + WAIT;
    while training_step(&client).await.is_none_or(|s| s <= step) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            until(
                "the restarted miner did not get past the step it stopped at",
                &log
            )
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("resuming training from its last checkpoint"),
        "{text}"
    );
}
