//! Contract §7 end to end: the `keys` commands, a real nats-server and the `serve` binary.
//! Keys are made and issued by the commands an operator runs, nodes sign with the seeds those
//! commands wrote, and what `serve` admits is checked against a model of the rules over the
//! stream as JetStream stored it, across SIGKILLs, and against a rebuild.

use crate::common;

use crate::common::process::{command, run, spawn_serve_with};
use async_nats::jetstream;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use truebit_projections::Projections;
use truebit_streams::SigningKey;
use truebit_testkit::{signal, NatsServer, SIGKILL, SIGTERM};

/// Runs a `keys` command that must succeed; returns its first line.
fn keys(url: &str, db: &Path, args: &[&str]) -> String {
    common::process::keys(command(url, db), args)
}

fn seed(path: &Path) -> SigningKey {
    SigningKey::from_seed(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn serve_command(url: &str, db: &Path, admin: &str) -> Command {
    let mut c = command(url, db);
    c.env("ADMIN_KEY", admin);
    c
}

fn heartbeat(node: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"version": "1.0", "type": "heartbeat",
        "timestamp": chrono::Utc::now().to_rfc3339(), "nodeId": node, "data": {"status": "online"}}))
    .unwrap()
}

/// A node message, signed by `key` (or not).
fn signed(key: Option<&SigningKey>, node: &str) -> (String, Vec<u8>, async_nats::HeaderMap) {
    let payload = heartbeat(node);
    let mut headers = async_nats::HeaderMap::new();
    if let Some(key) = key {
        for (name, value) in key.sign("truebit.heartbeat", &payload) {
            headers.insert(name, value.as_str());
        }
    }
    ("truebit.heartbeat".into(), payload, headers)
}

/// Issues a key for a node with `keys issue --out`, signed with the admin seed `admin_seed`;
/// returns the node's seed file and its public key.
fn issue_node_key(
    url: &str,
    db: &Path,
    dir: &tempfile::TempDir,
    admin_seed: &str,
) -> (std::path::PathBuf, String) {
    let node_seed = dir.path().join("node.seed");
    let out = node_seed.to_str().unwrap();
    let args = [
        "issue",
        "--name",
        "n",
        "--out",
        out,
        "--admin-seed",
        admin_seed,
    ];
    let key = keys(url, db, &args);
    (node_seed, key)
}

/// One test's network: its own nats-server, a database path, and the root admin key that
/// `keys new-admin` made (its seed at `admin_seed`).
struct Network {
    _server: NatsServer,
    dir: tempfile::TempDir,
    db: std::path::PathBuf,
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
    admin: String,
    admin_seed: std::path::PathBuf,
}

impl Network {
    async fn start() -> Self {
        let server = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("aggregator.redb");
        let url = server.url();
        let client = async_nats::connect(&url).await.unwrap();
        let admin_seed = dir.path().join("admin.seed");
        let admin = keys(
            &url,
            &db,
            &["new-admin", "--out", admin_seed.to_str().unwrap()],
        );
        Network {
            js: jetstream::new(client.clone()),
            _server: server,
            dir,
            db,
            url,
            client,
            admin,
            admin_seed,
        }
    }
}

/// What the contract says of each node message after the mode switch, computed from the stream
/// alone: the key's record as issued, and per key and stored minute, the first `rate` messages
/// that pass every other check admitted and the rest `rate_limited`.
async fn model(
    js: &jetstream::Context,
    from: u64,
    to: u64,
    grants: &HashMap<String, (String, u32)>,
) -> BTreeMap<u64, &'static str> {
    let stream = js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    let mut windows: HashMap<(String, i64), u32> = HashMap::new();
    let mut out = BTreeMap::new();
    for seq in from..=to {
        let m = stream.get_raw_message(seq).await.unwrap();
        let key = m.headers.get("Truebit-Key").map(|v| v.as_str().to_string());
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        let node = body["nodeId"].as_str().unwrap();
        let verdict = match key.as_ref().and_then(|k| grants.get(k).map(|g| (k, g))) {
            None => "unauthorized",
            Some((_, (bound, _))) if bound != node => "unauthorized",
            Some((k, (_, rate))) => {
                let n = windows
                    .entry((k.clone(), m.time.timestamp().div_euclid(60)))
                    .or_default();
                if *n >= *rate {
                    "rate_limited"
                } else {
                    *n += 1;
                    "admitted"
                }
            }
        };
        out.insert(seq, verdict);
    }
    out
}

#[tokio::test]
async fn enforced_traffic_through_three_sigkills_ends_exact_and_a_rebuild_admits_the_same() {
    let Network {
        _server,
        dir,
        db,
        url,
        client,
        js,
        admin,
        admin_seed,
    } = Network::start().await;
    assert!(run(command(&url, &db).arg("init")).status.success());
    let admin_arg = ["--admin-seed", admin_seed.to_str().unwrap()];
    // One node made its own key and sent the public half; one was made for a node by the operator.
    let own_seed = dir.path().join("own.seed");
    let own = keys(&url, &db, &["new", "--out", own_seed.to_str().unwrap()]);
    let made_seed = dir.path().join("made.seed");
    let issue = |name: &str, node: &str, rate: &str, key: [&str; 2]| {
        let mut args = vec![
            "issue",
            "--name",
            name,
            "--node-id",
            node,
            "--rate-limit",
            rate,
        ];
        args.extend(key);
        args.extend(admin_arg);
        keys(&url, &db, &args)
    };
    issue("own", "node-a", "40", ["--public-key", own.as_str()]);
    let made = issue(
        "made",
        "node-b",
        "25",
        ["--out", made_seed.to_str().unwrap()],
    );
    let (own_key, made_key) = (seed(&own_seed), seed(&made_seed));
    assert_eq!(own_key.public_key().as_str(), own);
    assert_eq!(made_key.public_key().as_str(), made);
    let mut args = vec!["mode", "enforce"];
    args.extend(admin_arg);
    keys(&url, &db, &args);
    let switched = js
        .get_stream("TRUEBIT_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;

    // Traffic: both nodes well past their rates, a stranger, unsigned monitors, a key used for
    // another node, and a forgery, in rounds with serve killed in between.
    let stranger = SigningKey::generate();
    let mut last = switched;
    let round = |i: usize| {
        let mut messages = Vec::new();
        for n in 0..60 {
            messages.push(signed(Some(&own_key), "node-a"));
            if n % 2 == 0 {
                messages.push(signed(Some(&made_key), "node-b"));
            }
            if n % 10 == 0 {
                messages.push(signed(None, "node-c"));
                messages.push(signed(Some(&stranger), "node-d"));
                messages.push(signed(Some(&made_key), "node-a"));
                let mut forged = signed(Some(&own_key), "node-a");
                forged.1 = heartbeat(&format!("node-a{i}"));
                messages.push(forged);
            }
        }
        messages
    };
    for i in 0..4 {
        let (mut serve, _log) = spawn_serve_with(serve_command(&url, &db, &admin));
        last = truebit_testkit::publish_all_with_headers(&js, round(i)).await;
        if i < 3 {
            // Killed at once: some of the round is folded, some not, some dead letters sent.
            signal(&serve, SIGKILL);
            serve.wait().unwrap();
        } else {
            common::wait_folded(&client, last).await;
            let listed = run(command(&url, &db).args(["keys", "list", "--json"]));
            assert!(listed.status.success(), "keys list asks the running serve");
            let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
            assert_eq!(listed["mode"], "enforce");
            signal(&serve, SIGTERM);
            assert!(serve.wait().unwrap().success());
        }
    }

    let grants: HashMap<String, (String, u32)> = [
        (own.clone(), ("node-a".to_string(), 40)),
        (made.clone(), ("node-b".to_string(), 25)),
    ]
    .into();
    let expected = model(&js, switched + 1, last, &grants).await;
    let count = |v: &str| expected.values().filter(|x| **x == v).count() as u64;
    assert!(count("rate_limited") > 0 && count("unauthorized") > 0 && count("admitted") > 0);

    let folded = Projections::open_existing(&db).unwrap();
    let admission = folded.admission_counts().unwrap();
    for outcome in ["admitted", "unauthorized", "rate_limited"] {
        assert_eq!(admission[outcome], count(outcome), "{outcome}");
    }
    let rejections = folded.rejections().unwrap();
    assert_eq!(rejections["unauthorized"], count("unauthorized"));
    assert_eq!(rejections["rate_limited"], count("rate_limited"));
    let registry = folded.keys().unwrap();
    let per_key = |k: &str| registry.iter().find(|v| v.public_key == k).unwrap().clone();
    assert_eq!(
        per_key(&own).admitted + per_key(&made).admitted,
        count("admitted")
    );
    assert_eq!(
        per_key(&own).rate_limited + per_key(&made).rate_limited,
        count("rate_limited")
    );
    assert_eq!(
        folded.node("node-c").unwrap(),
        None,
        "unsigned: never folded"
    );
    assert_eq!(
        folded.node("node-d").unwrap(),
        None,
        "unknown key: never folded"
    );
    assert_eq!(folded.pending_dead_letter_count().unwrap(), 0);
    drop(folded);

    // Each refused message has exactly one dead letter, with its reason.
    let mut dlq = js.get_stream("TRUEBIT_DLQ").await.unwrap();
    let stored = dlq.info().await.unwrap().state.messages;
    let mut letters = BTreeMap::new();
    for seq in 1..=stored {
        let m = dlq.get_raw_message(seq).await.unwrap();
        let original: u64 = m
            .headers
            .get("Truebit-Original-Seq")
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let reason = m
            .headers
            .get("Truebit-Dlq-Reason")
            .unwrap()
            .as_str()
            .to_string();
        assert!(
            letters.insert(original, reason).is_none(),
            "two dead letters for {original}"
        );
        // The body is the message as read: only the fields the contract names.
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        assert!(body["data"].is_object() && body.get("blockHash").is_none());
    }
    let refused: BTreeMap<u64, String> = expected
        .iter()
        .filter(|(_, v)| **v != "admitted")
        .map(|(s, v)| (*s, v.to_string()))
        .collect();
    assert_eq!(letters, refused);

    // A rebuild decides the same from the stream alone.
    let mut verify = command(&url, &db);
    verify.env("ADMIN_KEY", &admin).args(["replay", "--verify"]);
    let out = run(&mut verify);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the root key is part of what it folded with: another one is refused, exit 2.
    let other = SigningKey::generate();
    let mut wrong = command(&url, &db);
    wrong
        .env("ADMIN_KEY", other.public_key().as_str())
        .args(["replay", "--verify"]);
    let out = run(&mut wrong);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ADMIN_KEY"));
}

#[tokio::test]
async fn a_stored_operator_event_published_again_changes_nothing_live_or_in_a_rebuild() {
    let Network {
        _server,
        dir,
        db,
        url,
        client,
        js,
        admin,
        admin_seed,
    } = Network::start().await;
    let (serve, log) = spawn_serve_with(serve_command(&url, &db, &admin));
    let seed_arg = admin_seed.to_str().unwrap();
    let (node_seed, node_key) = issue_node_key(&url, &db, &dir, seed_arg);
    keys(&url, &db, &["mode", "audit", "--admin-seed", seed_arg]);
    keys(&url, &db, &["mode", "enforce", "--admin-seed", seed_arg]);
    keys(&url, &db, &["revoke", &node_key, "--admin-seed", seed_arg]);

    // Anyone who can read the stream holds these validly signed events, and may publish them
    // again: the key's issue after its revocation, and the mode before `enforce`.
    let events = js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    let mut copies = Vec::new();
    for seq in 1..=4 {
        let m = events.get_raw_message(seq).await.unwrap();
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        let wanted = body["type"] == "key_issued" || body["data"]["mode"] == "audit";
        if wanted {
            let mut headers = async_nats::HeaderMap::new();
            for name in ["Truebit-Key", "Truebit-Signature"] {
                headers.insert(name, m.headers.get(name).unwrap().as_str());
            }
            copies.push((m.subject.to_string(), m.payload.to_vec(), headers));
        }
    }
    assert_eq!(copies.len(), 2, "the issue and the audit as stored");
    let mut messages = copies;
    messages.push(signed(Some(&seed(&node_seed)), "node-a"));
    let last = truebit_testkit::publish_all_with_headers(&js, messages).await;
    common::wait_folded(&client, last).await;

    let out = run(command(&url, &db).args(["keys", "list", "--json"]));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed["mode"], "enforce",
        "an old audit does not undo enforce"
    );
    assert!(
        !listed["keys"][0]["revokedAt"].is_null(),
        "a copy of key_issued does not end the revocation: {listed}"
    );
    let dlq = common::wait_for_dead_letters(&js, 3, "the two copies and the revoked node").await;
    for seq in 1..=3 {
        let m = dlq.get_raw_message(seq).await.unwrap();
        assert_eq!(
            m.headers.get("Truebit-Dlq-Reason").unwrap().as_str(),
            "unauthorized"
        );
    }
    let mut serve = serve;
    signal(&serve, SIGTERM);
    let status = serve.wait().unwrap();
    let said: Vec<String> = log.try_iter().collect();
    assert!(status.success(), "{status}: {}", said.join("\n"));
    assert_eq!(
        Projections::open_existing(&db)
            .unwrap()
            .node("node-a")
            .unwrap(),
        None,
        "the revoked key's message was refused"
    );

    // A rebuild from the stream decides the same, to the record.
    let mut verify = command(&url, &db);
    verify.env("ADMIN_KEY", &admin).args(["replay", "--verify"]);
    let out = run(&mut verify);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn in_audit_everything_is_folded_and_what_enforce_would_refuse_is_counted() {
    let Network {
        _server,
        dir,
        db,
        url,
        client,
        js,
        admin,
        admin_seed,
    } = Network::start().await;
    let (serve, log) = spawn_serve_with(serve_command(&url, &db, &admin));
    let seed_arg = admin_seed.to_str().unwrap();
    let (node_seed, _) = issue_node_key(&url, &db, &dir, seed_arg);
    keys(&url, &db, &["mode", "audit", "--admin-seed", seed_arg]);
    let node = seed(&node_seed);
    let last = truebit_testkit::publish_all_with_headers(
        &js,
        vec![
            signed(Some(&node), "node-a"),
            signed(None, "node-b"),
            signed(Some(&SigningKey::generate()), "node-c"),
        ],
    )
    .await;
    common::wait_folded(&client, last).await;
    let out = run(command(&url, &db).args(["keys", "list", "--json"]));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["mode"], "audit");
    assert_eq!(
        listed["admission"],
        json!({"admitted": 1, "unauthorized": 2})
    );
    assert_eq!(listed["keys"][0]["admitted"], 1);
    let text = run(command(&url, &db).args(["keys", "list"]));
    assert!(String::from_utf8_lossy(&text.stdout).contains("admission mode audit"));
    let mut serve = serve;
    signal(&serve, SIGTERM);
    let status = serve.wait().unwrap();
    let said: Vec<String> = log.try_iter().collect();
    assert!(status.success(), "{status}: {}", said.join("\n"));
    let folded = Projections::open_existing(&db).unwrap();
    for n in ["node-a", "node-b", "node-c"] {
        assert_eq!(
            folded.node(n).unwrap().unwrap().heartbeat_count,
            1,
            "{n} folded"
        );
    }
    assert!(
        folded.rejections().unwrap().is_empty(),
        "audit refuses nothing"
    );
}

#[test]
fn publishing_needs_a_private_admin_seed_and_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.redb");
    // No server is needed to refuse these: they fail before connecting.
    let url = "nats://127.0.0.1:1";
    let out = run(command(url, &db).args(["keys", "mode", "enforce"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-seed"));

    let seed_path = dir.path().join("admin.seed");
    keys(
        url,
        &db,
        &["new-admin", "--out", seed_path.to_str().unwrap()],
    );
    let again = run(command(url, &db).args(["keys", "new", "--out", seed_path.to_str().unwrap()]));
    assert_eq!(again.status.code(), Some(2), "never over an existing seed");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&seed_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = run(command(url, &db).args([
        "keys",
        "mode",
        "enforce",
        "--admin-seed",
        seed_path.to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let seed = std::fs::read_to_string(&seed_path).unwrap();
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(seed.trim()));

    let bad = run(command(url, &db).args(["keys", "revoke", "SUAAAA"]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("never the seed"));
}
