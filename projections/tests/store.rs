//! The projections database as a whole: exactly-once positions, refusals, schema versions.

use truebit_projections::{Error, Input, Options, Outbox, Projections};
use truebit_streams::{Digest, Event, EventKind, Heartbeat, Minute, Period, Reason};

const T0: Minute = 29_000_000;

fn heartbeat(node: &str, minute: Minute) -> Event {
    Event {
        node_id: node.into(),
        minute,
        kind: EventKind::HeartbeatReported(Heartbeat::default()),
    }
}

fn db() -> (tempfile::TempDir, Projections) {
    let dir = tempfile::tempdir().unwrap();
    let db = Projections::open(dir.path().join("nested/dir/p.redb")).unwrap();
    (dir, db)
}

#[test]
fn inputs_at_or_below_the_position_are_skipped() {
    let (_dir, db) = db();
    let batch: Vec<Input> = (1..=3)
        .map(|seq| Input::unsigned(seq, Ok(heartbeat("node-a", T0).into())))
        .collect();
    let first = db.apply(&batch, Outbox::Record).unwrap();
    assert_eq!((first.folded, first.skipped, first.last_seq), (3, 0, 3));
    // Redelivered, with one new message behind them.
    let mut again = batch.clone();
    again.push(Input::unsigned(4, Ok(heartbeat("node-a", T0).into())));
    let second = db.apply(&again, Outbox::Record).unwrap();
    assert_eq!((second.folded, second.skipped, second.last_seq), (1, 3, 4));
    assert_eq!(db.node("node-a").unwrap().unwrap().heartbeat_count, 4);
    assert_eq!(db.last_seq().unwrap(), 4);
}

#[test]
fn refusals_advance_the_position_and_are_counted() {
    let (_dir, db) = db();
    db.apply(
        &[
            Input::unsigned(1, Err(Reason::Schema.into())),
            Input::unsigned(2, Ok(heartbeat("node-a", T0).into())),
            Input::unsigned(3, Err(Reason::Schema.into())),
            Input::unsigned(4, Err(Reason::Clock.into())),
        ],
        Outbox::Record,
    )
    .unwrap();
    assert_eq!(db.last_seq().unwrap(), 4);
    let r = db.rejections().unwrap();
    assert_eq!((r["schema"], r["clock"]), (2, 1));
    assert_eq!(db.event_counts().unwrap()["heartbeat"], 1);
}

#[test]
fn a_task_reported_by_three_nodes_is_one_task_with_three_reporters() {
    let (_dir, db) = db();
    let task = Digest([9; 32]);
    let received = |node: &str, seq| {
        Input::unsigned(
            seq,
            Ok(Event {
                node_id: node.into(),
                minute: T0,
                kind: EventKind::TaskReceived {
                    task,
                    chain_id: Some("1".into()),
                    task_type: None,
                },
            }
            .into()),
        )
    };
    db.apply(
        &[
            received("node-a", 1),
            received("node-b", 2),
            received("node-c", 3),
            received("node-a", 4),
        ],
        Outbox::Record,
    )
    .unwrap();
    assert_eq!(db.task(&task).unwrap().unwrap().reporting_nodes, 3);
    assert_eq!(db.snapshot(T0, Period::All).unwrap().total_tasks, 1);
}

#[test]
fn the_position_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.redb");
    Projections::open(&path)
        .unwrap()
        .apply(
            &[Input::unsigned(7, Ok(heartbeat("n", T0).into()))],
            Outbox::Record,
        )
        .unwrap();
    let db = Projections::open_existing(&path).unwrap();
    assert_eq!(db.last_seq().unwrap(), 7);
    assert_eq!(db.snapshot(T0, Period::All).unwrap().total_nodes, 1);
}

/// New tasks wait in creation order and are sealed into runs sorted by hash; what finds them
/// again lives in memory and must be rebuilt from the file, whatever the run length asked for.
#[test]
fn a_reopened_database_finds_its_hot_and_sealed_records_and_keeps_its_run_length() {
    let dir = tempfile::tempdir().unwrap();
    let task = |i: u8| Digest([i; 32]);
    let event = |node: &str, i: u8| Event {
        node_id: node.into(),
        minute: T0,
        kind: if node == "node-a" {
            EventKind::TaskReceived {
                task: task(i),
                chain_id: None,
                task_type: None,
            }
        } else {
            EventKind::TaskCompleted {
                task: task(i),
                outcome: Default::default(),
            }
        },
    };
    let inputs: Vec<Input> = (0..8)
        .map(|i| ("node-a", i))
        .chain((0..9).map(|i| ("node-b", i)))
        .enumerate()
        .map(|(seq, (node, i))| Input::unsigned(seq as u64 + 1, Ok(event(node, i).into())))
        .collect();
    let short = Options { run_len: 3 };
    let (first, second) = inputs.split_at(8);
    let path = dir.path().join("p.redb");
    // Eight tasks: two runs of three sealed, two hot.
    Projections::open_with(&path, short)
        .unwrap()
        .apply(first, Outbox::Record)
        .unwrap();
    let reopened = Projections::open_with(&path, Options { run_len: 100 }).unwrap();
    // Each completed by a second node, and one new task.
    reopened.apply(second, Outbox::Record).unwrap();
    assert_eq!(reopened.record_counts().unwrap(), (9, 0, 0));
    for i in 0..8 {
        assert_eq!(
            reopened.task(&task(i)).unwrap().unwrap().reporting_nodes,
            2,
            "task {i}"
        );
    }
    assert_eq!(reopened.task(&task(8)).unwrap().unwrap().reporting_nodes, 1);
    let whole = Projections::open_with(dir.path().join("whole.redb"), short).unwrap();
    whole.apply(&inputs, Outbox::Record).unwrap();
    assert_eq!(
        reopened.differences(&whole, 5).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.redb");
    let err = Projections::open_existing(&path)
        .err()
        .expect("no database there");
    assert!(matches!(err, Error::Missing { .. }));
    assert!(err.to_string().contains("nope.redb"), "{err}");
    assert!(!path.exists(), "looking must not create it");
}

#[test]
fn a_database_held_by_another_handle_is_reported_as_locked() {
    let (dir, _db) = db();
    let err = Projections::open_existing(dir.path().join("nested/dir/p.redb"))
        .err()
        .expect("locked");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
}

#[test]
fn another_schema_version_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.redb");
    {
        let raw = redb::Database::create(&path).unwrap();
        let txn = raw.begin_write().unwrap();
        let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        txn.open_table(meta)
            .unwrap()
            .insert("schema_version", 99u64.to_le_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Projections::open(&path).err().expect("refused");
    assert!(
        matches!(err, Error::SchemaVersion { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("replay"), "{err}");
}

/// A database of schema version 3, as an older build left it, with `operator_messages` set.
fn version_3_database(path: &std::path::Path, operator_messages: u64) {
    let raw = redb::Database::create(path).unwrap();
    let txn = raw.begin_write().unwrap();
    let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let mut table = txn.open_table(meta).unwrap();
    table
        .insert("schema_version", 3u64.to_le_bytes().as_slice())
        .unwrap();
    table
        .insert(
            "operator_messages",
            operator_messages.to_le_bytes().as_slice(),
        )
        .unwrap();
    drop(table);
    txn.commit().unwrap();
}

#[test]
fn version_3_is_upgraded_in_place_only_while_no_operator_event_was_folded() {
    let dir = tempfile::tempdir().unwrap();
    let (never, once) = (dir.path().join("never.redb"), dir.path().join("once.redb"));
    version_3_database(&never, 0);
    version_3_database(&once, 1);
    Projections::open(&never).expect("nothing the operator clock would have held");
    // The clock of operator events already folded is not in the database: only a replay
    // can fill it as the stream says.
    let err = Projections::open(&once).err().expect("refused");
    assert!(
        matches!(err, Error::SchemaVersion { found: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("replay"), "{err}");
}

/// A version 4 database (no digest) gets its digest by one scan when opened, and keeps it from
/// then on; so does a database folded with the digest off.
#[test]
fn a_database_without_a_digest_gets_one_by_a_scan_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.redb");
    let folded = {
        let db = Projections::open(&path).unwrap();
        let inputs: Vec<Input> = (0..50)
            .map(|i| {
                Input::unsigned(
                    i + 1,
                    Ok(heartbeat(&format!("node-{}", i % 7), T0 + i as i64).into()),
                )
            })
            .collect();
        db.apply(&inputs, Outbox::Record).unwrap();
        db.scan_digest().unwrap()
    };
    {
        // What a build of version 4 left: neither the digest's tables nor its marker.
        let raw = redb::Database::open(&path).unwrap();
        let txn = raw.begin_write().unwrap();
        let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        let mut table = txn.open_table(meta).unwrap();
        table
            .insert("schema_version", 4u64.to_le_bytes().as_slice())
            .unwrap();
        table.remove("digest").unwrap();
        drop(table);
        txn.delete_table(redb::TableDefinition::<&str, &[u8]>::new("digest"))
            .unwrap();
        txn.commit().unwrap();
    }
    let db = Projections::open(&path).unwrap();
    assert_eq!(db.state_digest().unwrap(), folded);
    db.set_digest(false);
    db.apply(
        &[Input::unsigned(51, Ok(heartbeat("node-x", T0).into()))],
        Outbox::Record,
    )
    .unwrap();
    assert_ne!(
        db.state_digest().unwrap(),
        db.scan_digest().unwrap(),
        "not kept while off"
    );
    drop(db);
    let db = Projections::open(&path).unwrap();
    assert_eq!(db.state_digest().unwrap(), db.scan_digest().unwrap());
    assert_ne!(db.state_digest().unwrap(), folded);
}

/// A commit with many tasks hashes them on another thread while it writes them: the digest is
/// the same as when small commits hash each record themselves.
#[test]
fn a_large_commit_keeps_the_digest_as_small_ones_do() {
    let task = |i: u64, received: bool| {
        let task = Digest(*blake3_like(i));
        let kind = if received {
            EventKind::TaskReceived {
                task,
                chain_id: Some("1".into()),
                task_type: None,
            }
        } else {
            EventKind::TaskCompleted {
                task,
                outcome: truebit_streams::Outcome {
                    success: Some(i.is_multiple_of(3)),
                    ..Default::default()
                },
            }
        };
        Event {
            node_id: format!("node-{}", i % 5),
            minute: T0 + (i % 90) as i64,
            kind,
        }
    };
    // Receipts of 3,000 tasks, then completions of every other one: updates, taking the old
    // bytes out as well.
    let events: Vec<Event> = (0..3000)
        .map(|i| task(i, true))
        .chain((0..3000).step_by(2).map(|i| task(i, false)))
        .collect();
    let inputs: Vec<Input> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Input::unsigned(i as u64 + 1, Ok(e.clone().into())))
        .collect();
    let (_d1, large) = db();
    let (_d2, small) = db();
    large.apply(&inputs[..3000], Outbox::Record).unwrap();
    large.apply(&inputs[3000..], Outbox::Record).unwrap();
    for chunk in inputs.chunks(100) {
        small.apply(chunk, Outbox::Record).unwrap();
    }
    assert_eq!(large.state_digest().unwrap(), large.scan_digest().unwrap());
    assert_eq!(large.state_digest().unwrap(), small.state_digest().unwrap());
    assert_eq!(small.state_digest().unwrap(), small.scan_digest().unwrap());
}

/// 32 bytes that differ for every `i`.
fn blake3_like(i: u64) -> Box<[u8; 32]> {
    let mut out = [0u8; 32];
    for (k, b) in out.iter_mut().enumerate() {
        *b = (i
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(k as u32 * 7)
            >> 24) as u8
            ^ k as u8;
    }
    out[..8].copy_from_slice(&i.to_le_bytes());
    Box::new(out)
}

#[test]
fn differences_name_the_table_and_key() {
    let (_d1, a) = db();
    let (_d2, b) = db();
    let batch = [
        Input::unsigned(1, Ok(heartbeat("node-a", T0).into())),
        Input::unsigned(2, Ok(heartbeat("node-b", T0).into())),
    ];
    a.apply(&batch, Outbox::Record).unwrap();
    b.apply(&batch, Outbox::Record).unwrap();
    assert_eq!(a.differences(&b, 10).unwrap(), Vec::<String>::new());
    b.set_stream_identity("TRUEBIT_EVENTS@x").unwrap();
    assert!(
        a.differences(&b, 10).unwrap().is_empty(),
        "the stream identity is not state"
    );

    a.apply(
        &[Input::unsigned(3, Ok(heartbeat("node-a", T0 + 1).into()))],
        Outbox::Record,
    )
    .unwrap();
    b.apply(
        &[Input::unsigned(3, Ok(heartbeat("node-c", T0 + 1).into()))],
        Outbox::Record,
    )
    .unwrap();
    let d = a.differences(&b, 100).unwrap();
    assert!(
        d.contains(&"nodes: \"node-a\" differs".to_string()),
        "{d:?}"
    );
    assert!(
        d.contains(&"nodes: \"node-c\" only in the second database".to_string()),
        "{d:?}"
    );
    assert!(d.iter().any(|l| l.starts_with("counters: (0, ")), "{d:?}");
    let reversed = b.differences(&a, 100).unwrap();
    assert!(
        reversed.contains(&"nodes: \"node-c\" only in the first database".to_string()),
        "{reversed:?}"
    );
    assert_eq!(reversed.len(), d.len(), "{reversed:?} against {d:?}");
    assert_eq!(a.differences(&b, 2).unwrap().len(), 2);
}

#[test]
fn a_checkpoint_is_the_same_state_and_can_be_opened_alone() {
    let (dir, db) = db();
    let batch: Vec<Input> = (1..=20)
        .map(|seq| {
            Input::unsigned(
                seq,
                Ok(heartbeat(&format!("node-{}", seq % 3), T0 + seq as i64).into()),
            )
        })
        .collect();
    db.apply(&batch, Outbox::Record).unwrap();
    let path = dir.path().join("checkpoint.redb");
    assert_eq!(db.checkpoint_to(&path).unwrap(), 20);
    db.apply(
        &[Input::unsigned(21, Ok(heartbeat("node-9", T0).into()))],
        Outbox::Record,
    )
    .unwrap();

    let copy = Projections::open_existing(&path).unwrap();
    assert_eq!(
        copy.last_seq().unwrap(),
        20,
        "the copy is the state at the time it was taken"
    );
    let again = tempfile::tempdir().unwrap();
    let fresh = Projections::open(again.path().join("p.redb")).unwrap();
    fresh.apply(&batch, Outbox::Record).unwrap();
    assert_eq!(copy.differences(&fresh, 5).unwrap(), Vec::<String>::new());
}

/// Records rewritten again and again (a task's outcome reported anew, a node's heartbeats)
/// leave freed pages behind each commit; redb must reuse them, so that the file settles at a
/// size set by what it holds, not by how often it was rewritten.
#[test]
fn rewriting_the_same_records_does_not_grow_the_file() {
    let (dir, db) = db();
    let path = dir.path().join("nested/dir/p.redb");
    let completion = |task: u32, round: u64| Event {
        node_id: format!("node-{}", task % 50),
        minute: T0 + round as i64,
        kind: EventKind::TaskCompleted {
            task: Digest({
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&task.to_be_bytes());
                id
            }),
            outcome: truebit_streams::Outcome {
                success: Some(round.is_multiple_of(2)),
                ..Default::default()
            },
        },
    };
    let mut seq = 0;
    let mut sizes = Vec::new();
    for round in 0..60u64 {
        let batch: Vec<Input> = (0..2000u32)
            .map(|task| {
                seq += 1;
                Input::unsigned(seq, Ok(completion(task, round).into()))
            })
            .collect();
        db.apply(&batch, Outbox::Record).unwrap();
        sizes.push(std::fs::metadata(&path).unwrap().len());
    }
    let (settled, last) = (sizes[20], sizes[59]);
    assert!(
        last <= settled + settled / 10,
        "the file grew from {settled} bytes after 20 rewrites to {last} after 60: {sizes:?}"
    );
}
