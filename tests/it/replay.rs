//! `replay` on the binary: rebuilds match the live fold, `--verify` catches a difference, and
//! `serve` resumes after a swap with nothing folded twice or skipped.

use crate::common;

use crate::common::Served;
use redb::ReadableTable;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use truebit_projections::Projections;
use truebit_streams::Period;
use truebit_testkit::Fleet;

const BIN: &str = env!("CARGO_BIN_EXE_truebit-federation");

fn run(url: &str, db: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .env("NATS_URL", url)
        .env("DB_PATH", db)
        .env("HTTP_ADDR", "127.0.0.1:0")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns what it printed.
fn run_ok(url: &str, db: &Path, args: &[&str]) -> String {
    let out = run(url, db, args);
    assert!(out.status.success(), "{args:?} failed: {}", text(&out));
    text(&out)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fleet's messages as `(subject, payload)`, and the counts they fold to.
fn fleet_messages(
    fleet: &Fleet,
    tasks: u64,
) -> (Vec<(String, Vec<u8>)>, truebit_testkit::Expected) {
    let (messages, expected) = fleet.generate(tasks);
    (
        messages
            .into_iter()
            .map(|m| (m.subject.to_string(), m.payload))
            .collect(),
        expected,
    )
}

/// Publishes, waits until folded and until a checkpoint holds it all; returns the last sequence.
async fn publish_and_checkpoint(
    served: &Served,
    messages: &[(String, Vec<u8>)],
) -> (u64, async_nats::jetstream::object_store::ObjectStore) {
    use futures::StreamExt;
    let mut stored = served
        .client
        .subscribe("$O.truebit-checkpoints.M.>")
        .await
        .unwrap();
    let last = served.publish(messages).await;
    served.wait_folded(last).await;
    let store = served
        .js
        .get_object_store("truebit-checkpoints")
        .await
        .unwrap();
    loop {
        tokio::time::timeout(common::PATIENCE, stored.next())
            .await
            .expect("a checkpoint is stored")
            .unwrap();
        if truebit_replay::checkpoints(&store).await.unwrap().last() >= Some(&last) {
            return (last, store);
        }
    }
}

/// A served aggregator that has folded a simulated fleet's events, and the counts they give.
async fn folded_fleet(tasks: u64) -> (Served, Fleet, truebit_testkit::Expected, u64) {
    let served = Served::start().await;
    let fleet = Fleet::new(40, 11);
    let (mut messages, expected) = fleet_messages(&fleet, tasks);
    messages.push(("truebit.heartbeat".into(), b"{broken".to_vec())); // a refusal is part of the record too
    let last = served.publish(&messages).await;
    served.wait_folded(last).await;
    (served, fleet, expected, last)
}

#[tokio::test]
async fn verify_passes_after_a_live_run_and_catches_an_altered_record() {
    let (mut served, _fleet, _expected, last) = folded_fleet(800).await;
    served.stop().await.unwrap();
    let url = served.server.url();

    let ok = run_ok(&url, &served.db_path, &["replay", "--verify"]);
    assert!(
        ok.contains(&format!("verified: a rebuild up to sequence {last}")),
        "{}",
        ok
    );
    // One pass over the stream both checks and keeps a rebuild (contract §6).
    let kept = served.dir.path().join("kept.redb");
    let kept_arg = kept.to_str().unwrap();
    let ok = run_ok(
        &url,
        &served.db_path,
        &["replay", "--verify", "--output", kept_arg],
    );
    assert!(ok.contains("verified") && ok.contains("kept at"), "{ok}");
    {
        let live = Projections::open_existing(&served.db_path).unwrap();
        let rebuilt = Projections::open_existing(&kept).unwrap();
        assert_eq!(rebuilt.last_seq().unwrap(), last);
        assert_eq!(live.differences(&rebuilt, 5).unwrap(), Vec::<String>::new());
    }
    let again = run(
        &url,
        &served.db_path,
        &["replay", "--verify", "--output", kept_arg],
    );
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("already exists"), "{}", text(&again));

    // Alter one counter behind the aggregator's back.
    {
        let raw = redb::Database::open(&served.db_path).unwrap();
        let txn = raw.begin_write().unwrap();
        let events: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("events");
        {
            let mut table = txn.open_table(events).unwrap();
            let n = table.get("heartbeat").unwrap().unwrap().value();
            table.insert("heartbeat", n + 1).unwrap();
        }
        txn.commit().unwrap();
    }
    let bad = run(&url, &served.db_path, &["replay", "--verify"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad).contains("events: \"heartbeat\" differs"),
        "{}",
        text(&bad)
    );
    // A failed check keeps its rebuild too: it is what the stream says, ready to swap in.
    let kept = served.dir.path().join("kept-after-difference.redb");
    let bad = run(
        &url,
        &served.db_path,
        &["replay", "--verify", "--output", kept.to_str().unwrap()],
    );
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert_eq!(
        Projections::open_existing(&kept)
            .unwrap()
            .last_seq()
            .unwrap(),
        last
    );
}

#[tokio::test]
async fn a_rebuild_beside_a_running_serve_gives_identical_stats() {
    let (mut served, _fleet, _expected, last) = folded_fleet(600).await;
    let url = served.server.url();
    let output = served.dir.path().join("rebuilt.redb");
    // On a blocking thread: replay asks the in-process serve for its ADMIN_KEY meanwhile.
    let out = {
        let (url, db, output) = (url.clone(), served.db_path.clone(), output.clone());
        tokio::task::spawn_blocking(move || {
            run_ok(&url, &db, &["replay", "--output", output.to_str().unwrap()])
        })
        .await
        .unwrap()
    };
    assert!(out.contains(&format!("up to sequence {last}")), "{}", out);
    // Replacing the live file while serve holds it is refused, with the way out.
    let refused = run(&url, &served.db_path, &["replay"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused).contains("--output"), "{}", text(&refused));
    served.stop().await.unwrap();

    let live = Projections::open_existing(&served.db_path).unwrap();
    let rebuilt = Projections::open_existing(&output).unwrap();
    let at = chrono::Utc::now().timestamp() / 60;
    for period in Period::ALL {
        assert_eq!(
            live.snapshot(at, period).unwrap(),
            rebuilt.snapshot(at, period).unwrap(),
            "{period}"
        );
    }
    assert_eq!(live.differences(&rebuilt, 5).unwrap(), Vec::<String>::new());
    // Let go: replay beside a database some process holds asks a serve for its ADMIN_KEY.
    drop((live, rebuilt));

    let partial = served.dir.path().join("partial.redb");
    run_ok(
        &url,
        &served.db_path,
        &[
            "replay",
            "--output",
            partial.to_str().unwrap(),
            "--to-seq",
            "100",
        ],
    );
    assert_eq!(
        Projections::open_existing(&partial)
            .unwrap()
            .last_seq()
            .unwrap(),
        100
    );
}

#[tokio::test]
async fn serve_resumes_after_a_replay_swap_with_every_count_exact() {
    let (mut served, fleet, expected, _) = folded_fleet(700).await;
    served.stop().await.unwrap();
    let url = served.server.url();
    let out = run_ok(&url, &served.db_path, &["replay"]);
    assert!(out.contains("replaced"), "{}", out);

    served.serve();
    let more = Fleet {
        first_task: 10_000,
        ..fleet.clone()
    };
    let (messages, more_expected) = fleet_messages(&more, 300);
    let last = served.publish(&messages).await;
    served.wait_folded(last).await;
    served.stop().await.unwrap();

    let db = Projections::open_existing(&served.db_path).unwrap();
    let all = db
        .snapshot(chrono::Utc::now().timestamp() / 60 + 10, Period::All)
        .unwrap();
    assert_eq!(all.total_tasks, expected.tasks + more_expected.tasks);
    assert_eq!(
        all.total_invoices,
        expected.invoices + more_expected.invoices
    );
    assert_eq!(
        db.event_counts().unwrap().values().sum::<u64>(),
        expected.events + more_expected.events
    );
    assert_eq!(db.rejections().unwrap()["malformed"], 1);
    assert_eq!(db.last_seq().unwrap(), last);
}

#[tokio::test]
async fn after_early_events_expire_a_rebuild_starts_from_a_checkpoint_and_matches() {
    let mut served = Served::start_with(|c| {
        c.checkpoint_interval = std::time::Duration::from_millis(200);
        c.topology.events_max_age = std::time::Duration::from_secs(90 * 86_400);
    })
    .await;
    let url = served.server.url();
    let fleet = Fleet::new(30, 5);
    // A checkpoint that holds the early events.
    let (_early, store) = publish_and_checkpoint(&served, &fleet_messages(&fleet, 400).0).await;
    // Later events are folded with no checkpoint after them: a rebuild must fold that tail.
    served.stop().await.unwrap();
    served.adjust = Box::new(|c| c.checkpoint_interval = std::time::Duration::ZERO);
    served.serve();
    let newest = *truebit_replay::checkpoints(&store)
        .await
        .unwrap()
        .last()
        .unwrap();
    let later = Fleet {
        first_task: 5000,
        ..fleet.clone()
    };
    let late = served.publish(&fleet_messages(&later, 200).0).await;
    served.wait_folded(late).await;
    served.stop().await.unwrap();

    assert_eq!(
        truebit_replay::checkpoints(&store).await.unwrap().last(),
        Some(&newest)
    );
    let checkpoint = newest;
    // The early events expire: the stream now starts after the checkpoint.
    let stream = served.js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    stream.purge().sequence(checkpoint + 1).await.unwrap();

    let rebuilt = served.dir.path().join("rebuilt.redb");
    let out = run_ok(
        &url,
        &served.db_path,
        &["replay", "--output", rebuilt.to_str().unwrap()],
    );
    assert!(
        out.contains(&format!(
            "started from the checkpoint at sequence {checkpoint}"
        )),
        "{}",
        out
    );
    let live = Projections::open_existing(&served.db_path).unwrap();
    let at = chrono::Utc::now().timestamp() / 60 + 10;
    assert_eq!(
        live.snapshot(at, Period::All).unwrap(),
        Projections::open_existing(&rebuilt)
            .unwrap()
            .snapshot(at, Period::All)
            .unwrap(),
        "all-time numbers survive the expiry"
    );
    drop(live);
    let verified = run_ok(&url, &served.db_path, &["replay", "--verify"]);
    assert!(
        verified.contains(&format!("from the checkpoint at sequence {checkpoint}")),
        "{}",
        verified
    );

    // A new aggregator on the expired stream would miss what the early events counted.
    let fresh = served.dir.path().join("fresh.redb");
    let refused = run(&url, &fresh, &["serve"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("expired before they were folded"),
        "{}",
        text(&refused)
    );

    // Without checkpoints nothing covers the gap: refused, naming it, unless --allow-gap.
    for seq in truebit_replay::checkpoints(&store).await.unwrap() {
        store
            .delete(truebit_streams::names::checkpoint_name(seq))
            .await
            .unwrap();
    }
    let gap = served.dir.path().join("gap.redb");
    let refused = run(
        &url,
        &served.db_path,
        &["replay", "--output", gap.to_str().unwrap()],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains(&format!("sequences 1..={checkpoint} are no longer")),
        "{}",
        text(&refused)
    );
    assert!(!gap.exists(), "nothing is written when refused");
    run_ok(
        &url,
        &served.db_path,
        &["replay", "--output", gap.to_str().unwrap(), "--allow-gap"],
    );
    let partial = Projections::open_existing(&gap)
        .unwrap()
        .snapshot(at, Period::All)
        .unwrap();
    assert!(
        partial.total_tasks
            < Projections::open_existing(&served.db_path)
                .unwrap()
                .snapshot(at, Period::All)
                .unwrap()
                .total_tasks
    );
}

#[tokio::test]
async fn events_expired_by_max_age_are_still_counted_through_the_checkpoint() {
    let mut served = Served::start_with(|c| {
        c.checkpoint_interval = std::time::Duration::from_millis(200);
        c.topology.events_max_age = std::time::Duration::from_secs(2);
    })
    .await;
    let url = served.server.url();
    let (messages, expected) = fleet_messages(&Fleet::new(20, 9), 200);
    publish_and_checkpoint(&served, &messages).await;
    served.stop().await.unwrap();

    // JetStream expires every event by itself (max_age 2 s); wait for it, within patience.
    let mut stream = served.js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while stream.info().await.unwrap().state.messages > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events did not expire"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let rebuilt = served.dir.path().join("rebuilt.redb");
    run_ok(
        &url,
        &served.db_path,
        &["replay", "--output", rebuilt.to_str().unwrap()],
    );
    let db = Projections::open_existing(&rebuilt).unwrap();
    common::assert_fleet_counts(&db, &expected);
}

/// Contract §4 and §9: a rebuild swapped in takes over the dead letters the live database had
/// not sent yet (they are never dropped silently), and serve sends them after the swap, once;
/// a rebuild kept at `--output` takes none.
#[tokio::test]
async fn a_swapped_in_rebuild_carries_the_unsent_dead_letters_and_an_output_takes_none() {
    let mut served = Served::start().await;
    // No stream for truebit.dlq.> for now: the dead letter waits in the outbox.
    served.js.delete_stream("TRUEBIT_DLQ").await.unwrap();
    let bad = served
        .publish(&[("truebit.heartbeat".to_string(), b"{not json".to_vec())])
        .await;
    served.wait_folded(bad).await;
    served.stop().await.unwrap();
    let url = served.server.url();
    let unsent = |path: &Path| {
        let db = Projections::open_existing(path).unwrap();
        db.pending_dead_letters(10)
            .unwrap()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(unsent(&served.db_path), [bad]);

    let output = served.dir.path().join("beside.redb");
    run_ok(
        &url,
        &served.db_path,
        &["replay", "--output", output.to_str().unwrap()],
    );
    assert_eq!(unsent(&output), [] as [u64; 0], "--output takes none");

    let out = run_ok(&url, &served.db_path, &["replay"]);
    assert_eq!(
        unsent(&served.db_path),
        [bad],
        "the swapped-in rebuild still owes the dead letter"
    );
    assert!(
        out.contains("1 dead letters not sent yet carried over"),
        "{out}"
    );

    // Serve recreates TRUEBIT_DLQ and sends it, once.
    served.serve();
    served.wait_folded(bad).await; // the topology exists again
    let dlq = common::wait_for_dead_letters(&served.js, 1, "the carried letter was not sent").await;
    served.stop().await.unwrap();
    let mut dlq = dlq;
    assert_eq!(dlq.info().await.unwrap().state.messages, 1);
    let m = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(
        m.headers.get("Truebit-Original-Seq").unwrap().as_str(),
        bad.to_string()
    );
    assert_eq!(unsent(&served.db_path), [] as [u64; 0]);
}

/// Contract §7: `replay --output` beside a running `serve` folds with the root key the live
/// database was folded with; serve holds that database, so replay asks serve, and another
/// `ADMIN_KEY` exits 2 with the way out instead of writing a rebuild that decides differently.
#[tokio::test]
async fn a_rebuild_beside_a_running_serve_with_another_admin_key_is_refused() {
    use truebit_streams::SigningKey;
    let admin = SigningKey::generate();
    let root = admin.public_key().clone();
    let served = Served::start_with(move |c| c.admin_key = Some(root.clone())).await;
    let url = served.server.url();
    let seed = served.dir.path().join("admin.seed");
    std::fs::write(&seed, admin.seed()).unwrap();
    std::fs::set_permissions(&seed, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // An operator event folded: from now on the root key decides, and may not change.
    run_ok(
        &url,
        &served.db_path,
        &[
            "keys",
            "mode",
            "audit",
            "--admin-seed",
            seed.to_str().unwrap(),
        ],
    );
    let mut events = served.js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    let last = events.info().await.unwrap().state.last_sequence;
    served.wait_folded(last).await;

    // On a blocking thread: the in-process serve must answer it meanwhile.
    let replay_with = |key: &str, output: &str| {
        let mut c = Command::new(BIN);
        c.env("NATS_URL", &url)
            .env("DB_PATH", &served.db_path)
            .env("ADMIN_KEY", key)
            .args(["replay", "--output"])
            .arg(served.dir.path().join(output))
            .stdin(Stdio::null());
        tokio::task::spawn_blocking(move || c.output().unwrap())
    };
    let other = SigningKey::generate();
    let refused = replay_with(other.public_key().as_str(), "other.redb")
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let said = text(&refused);
    assert!(
        said.contains("ADMIN_KEY") && said.contains("set ADMIN_KEY back"),
        "{said}"
    );
    assert!(!served.dir.path().join("other.redb").exists());

    let same = replay_with(admin.public_key().as_str(), "same.redb")
        .await
        .unwrap();
    assert!(same.status.success(), "{}", text(&same));
}
