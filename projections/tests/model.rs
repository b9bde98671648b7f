//! The projections checked against a reference model: the contract's §5 written as plainly as
//! possible, scanning every record for every number. Random event streams, folded in random
//! batches, must give the same snapshot for every period at any time.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use truebit_projections::{Input, Options, Outbox, Projections};
use truebit_streams::*;

const T0: Minute = 29_000_000;

#[derive(Default)]
struct ModelTask {
    first: Minute,
    last: Minute,
    chain: Option<String>,
    ty: Option<String>,
    received: bool,
    outcome: Option<Outcome>,
    nodes: BTreeSet<String>,
}

#[derive(Default)]
struct ModelNode {
    last: Option<Minute>,
    offline: bool,
    continent: Option<Continent>,
    location: Option<Location>,
}

#[derive(Default)]
struct Model {
    tasks: HashMap<Digest, ModelTask>,
    invoices: HashMap<Digest, (Minute, Option<Magnitude>, Option<Memory>)>,
    nodes: HashMap<String, ModelNode>,
}

impl Model {
    fn fold(&mut self, e: &Event) {
        let m = e.minute;
        match &e.kind {
            EventKind::TaskReceived {
                task,
                chain_id,
                task_type,
            } => {
                let t = self.tasks.entry(*task).or_insert_with(|| ModelTask {
                    first: m,
                    last: m,
                    ..Default::default()
                });
                t.first = t.first.min(m);
                t.last = t.last.max(m);
                t.nodes.insert(e.node_id.clone());
                if !t.received {
                    t.received = true;
                    t.chain = chain_id.clone();
                    t.ty = task_type.clone();
                }
            }
            EventKind::TaskCompleted { task, outcome } => {
                let t = self.tasks.entry(*task).or_insert_with(|| ModelTask {
                    first: m,
                    last: m,
                    ..Default::default()
                });
                t.first = t.first.min(m);
                t.last = t.last.max(m);
                t.nodes.insert(e.node_id.clone());
                t.outcome = Some(outcome.clone());
            }
            EventKind::InvoiceCreated(inv) => {
                let entry = self.invoices.entry(inv.invoice).or_insert((
                    m,
                    inv.steps_computed,
                    inv.memory_used,
                ));
                entry.0 = entry.0.min(m);
            }
            EventKind::HeartbeatReported(hb) => {
                let n = self.nodes.entry(e.node_id.clone()).or_default();
                n.last = Some(n.last.map_or(m, |l| l.max(m)));
                n.offline = false;
                n.continent = hb.continent.or(n.continent);
                n.location = hb.location.or(n.location);
            }
            EventKind::NodeJoined { .. } => {
                self.nodes.entry(e.node_id.clone()).or_default();
            }
            EventKind::NodeLeft { .. } => {
                if let Some(n) = self.nodes.get_mut(&e.node_id) {
                    n.offline = true;
                }
            }
        }
    }

    fn snapshot(&self, at: Minute, period: Period) -> Value {
        let within = |t: Minute, len: Option<i64>| t <= at && len.is_none_or(|l| t >= at - l);
        let p = period.minutes();
        let tasks: Vec<&ModelTask> = self.tasks.values().filter(|t| within(t.first, p)).collect();
        let success = |t: &&ModelTask| t.outcome.as_ref().and_then(|o| o.success);
        let completed = tasks.iter().filter(|t| success(t) == Some(true)).count() as u64;
        let failed = tasks.iter().filter(|t| success(t) == Some(false)).count() as u64;
        let cached = tasks
            .iter()
            .filter(|t| t.outcome.as_ref().and_then(|o| o.cached) == Some(true))
            .count() as u64;
        let invoices: Vec<_> = self.invoices.values().filter(|i| within(i.0, p)).collect();
        let nodes_in: Vec<&ModelNode> = self
            .nodes
            .values()
            .filter(|n| n.last.is_some_and(|l| within(l, p)))
            .collect();

        let labels = |all: Vec<&'static str>, hits: Vec<Option<&'static str>>| {
            let mut m = Map::new();
            for l in all {
                m.insert(
                    l.into(),
                    json!(hits.iter().filter(|h| **h == Some(l)).count()),
                );
            }
            Value::Object(m)
        };
        let ranked = |values: Vec<String>, cap: bool| {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            for v in values {
                *counts.entry(v).or_default() += 1;
            }
            let mut v: Vec<(String, u64)> = counts.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            if cap && v.len() > 32 {
                let rest: u64 = v[31..].iter().map(|x| x.1).sum();
                v.truncate(31);
                v.push(("other".into(), rest));
            }
            Value::Object(v.into_iter().map(|(k, c)| (k, json!(c))).collect())
        };
        let outcome = |t: &&ModelTask| t.outcome.clone().unwrap_or_default();
        json!({
            "version": "1.0", "type": "network_stats",
            "timestamp": chrono::DateTime::from_timestamp(at * 60, 0).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            "period": period.as_str(),
            "data": {
                "activeNodes": self.nodes.values().filter(|n| !n.offline && n.last.is_some_and(|l| within(l, Some(5)))).count(),
                "totalNodes": self.nodes.len(),
                "totalTasks": tasks.len(),
                "completedTasks": completed,
                "failedTasks": failed,
                "cachedTasks": cached,
                "tasksLast24h": self.tasks.values().filter(|t| within(t.first, Some(1440))).count(),
                "successRate": rate(completed, completed + failed),
                "cacheHitRate": rate(cached, tasks.len() as u64),
                "totalInvoices": invoices.len(),
                "invoicesLast24h": self.invoices.values().filter(|i| within(i.0, Some(1440))).count(),
                "executionTimeDistribution": labels(ExecutionTime::ALL.iter().map(|l| l.label()).collect(),
                    tasks.iter().map(|t| outcome(t).execution_time.map(|b| b.label())).collect()),
                "gasUsageDistribution": labels(Magnitude::ALL.iter().map(|l| l.label()).collect(),
                    tasks.iter().map(|t| outcome(t).gas_used.map(|b| b.label())).collect()),
                "stepsComputedDistribution": labels(Magnitude::ALL.iter().map(|l| l.label()).collect(),
                    invoices.iter().map(|i| i.1.map(|b| b.label())).collect()),
                "memoryUsedDistribution": labels(Memory::ALL.iter().map(|l| l.label()).collect(),
                    invoices.iter().map(|i| i.2.map(|b| b.label())).collect()),
                "chainDistribution": ranked(tasks.iter().map(|t| t.chain.clone().unwrap_or("unknown".into())).collect(), true),
                "taskTypeDistribution": ranked(tasks.iter().map(|t| t.ty.clone().unwrap_or("unknown".into())).collect(), true),
                "continentDistribution": ranked(nodes_in.iter().filter_map(|n| n.continent.map(|c| c.label().to_string())).collect(), false),
                "locationDistribution": ranked(nodes_in.iter().filter_map(|n| n.location.map(|l| l.to_string())).collect(), false),
            }
        })
    }
}

fn arb_event() -> impl Strategy<Value = Event> {
    let node = (0u8..6).prop_map(|n| format!("node-{n}"));
    let minute = (-12_000i64..200).prop_map(|d| T0 + d);
    let task = (0u8..40).prop_map(|t| Digest([t; 32]));
    let word = prop_oneof![
        Just(None),
        Just(Some("wasm".to_string())),
        Just(Some("docker".to_string()))
    ];
    let chain = prop_oneof![Just(None), (0u8..40).prop_map(|c| Some(c.to_string()))];
    let outcome = (
        proptest::option::of(any::<bool>()),
        proptest::option::of(0usize..8),
        proptest::option::of(0usize..5),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(success, e, g, cached)| Outcome {
            success,
            status: None,
            execution_time: e.and_then(ExecutionTime::from_index),
            gas_used: g.and_then(Magnitude::from_index),
            cached,
        });
    let kind = prop_oneof![
        (task.clone(), chain.clone(), word).prop_map(|(task, chain_id, task_type)| {
            EventKind::TaskReceived {
                task,
                chain_id,
                task_type,
            }
        }),
        (task.clone(), outcome)
            .prop_map(|(task, outcome)| EventKind::TaskCompleted { task, outcome }),
        (
            task,
            proptest::option::of(0usize..5),
            proptest::option::of(0usize..4)
        )
            .prop_map(|(invoice, s, m)| {
                EventKind::InvoiceCreated(Invoice {
                    invoice,
                    task: None,
                    chain_id: None,
                    steps_computed: s.and_then(Magnitude::from_index),
                    memory_used: m.and_then(Memory::from_index),
                    operation: None,
                })
            }),
        (
            proptest::option::of(0usize..7),
            proptest::option::of(0i16..3)
        )
            .prop_map(|(c, l)| {
                EventKind::HeartbeatReported(Heartbeat {
                    continent: c.and_then(Continent::from_index),
                    location: l.map(|l| Location {
                        lat_tenths: l * 10,
                        lon_tenths: -l,
                    }),
                    ..Heartbeat::default()
                })
            }),
        Just(EventKind::NodeJoined { status: None }),
        Just(EventKind::NodeLeft { status: None }),
    ];
    (node, minute, kind).prop_map(|(node_id, minute, kind)| Event {
        node_id,
        minute,
        kind,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A batch folds its records in memory and writes each once: how the stream is cut into
    /// batches must never show in the database, record by record and counter by counter.
    #[test]
    fn batching_never_changes_a_record(
        events in proptest::collection::vec(arb_event(), 1..250),
        cuts in proptest::collection::vec(1usize..60, 1..20),
        run_len in 1u64..8,
    ) {
        // Short runs, so that records are sealed in the middle of batches and at their edges.
        let dir = tempfile::tempdir().unwrap();
        let options = Options { run_len };
        let one_by_one = Projections::open_with(dir.path().join("a.redb"), options).unwrap();
        let in_batches = Projections::open_with(dir.path().join("b.redb"), options).unwrap();
        let inputs: Vec<Input> = events.iter().enumerate()
            .map(|(i, e)| Input::unsigned(i as u64 + 1, Ok(e.clone().into()))).collect();
        for input in &inputs {
            one_by_one.apply(std::slice::from_ref(input), Outbox::Record).unwrap();
        }
        let mut rest = inputs.as_slice();
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, tail) = rest.split_at((*cut).min(rest.len()));
            in_batches.apply(batch, Outbox::Record).unwrap();
            rest = tail;
        }
        prop_assert_eq!(one_by_one.differences(&in_batches, 10).unwrap(), Vec::<String>::new());
    }

    /// The state digest (contract §11) is kept from what each commit changes: after any
    /// sequence of batches it equals the digest computed by reading every record, and neither
    /// the batches nor the run length (where a task is stored) change it. Digest points fall on
    /// the multiples of `every`, gaps in the stream included, whatever the batches.
    #[test]
    fn the_incremental_digest_equals_a_full_scan_whatever_the_batches(
        events in proptest::collection::vec(arb_event(), 1..250),
        steps in proptest::collection::vec(1u64..4, 250),
        cuts in proptest::collection::vec(1usize..60, 1..20),
        (run_a, run_b) in (1u64..8, 1u64..8),
        every in 1u64..40,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let one_by_one = Projections::open_with(dir.path().join("a.redb"), Options { run_len: run_a }).unwrap();
        let in_batches = Projections::open_with(dir.path().join("b.redb"), Options { run_len: run_b }).unwrap();
        one_by_one.set_digest_every(every);
        in_batches.set_digest_every(every);
        // Sequences with gaps, as a stream whose messages were deleted has.
        let mut seq = 0;
        let inputs: Vec<Input> = events.iter().zip(&steps)
            .map(|(e, step)| { seq += step; Input::unsigned(seq, Ok(e.clone().into())) }).collect();
        for input in &inputs {
            one_by_one.apply(std::slice::from_ref(input), Outbox::Record).unwrap();
            prop_assert_eq!(one_by_one.state_digest().unwrap(), one_by_one.scan_digest().unwrap());
        }
        let mut rest = inputs.as_slice();
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, tail) = rest.split_at((*cut).min(rest.len()));
            in_batches.apply(batch, Outbox::Record).unwrap();
            prop_assert_eq!(in_batches.state_digest().unwrap(), in_batches.scan_digest().unwrap());
            rest = tail;
        }
        prop_assert_eq!(one_by_one.state_digest().unwrap(), in_batches.state_digest().unwrap());
        let points = in_batches.digest_points(0).unwrap();
        prop_assert_eq!(&points, &one_by_one.digest_points(0).unwrap());
        let at: Vec<u64> = points.iter().map(|(s, _)| *s).collect();
        let expected: Vec<u64> = (1..).map(|k| k * every).take_while(|p| *p <= seq).collect();
        prop_assert_eq!(at, expected);
        // Each point is the digest of a database folded up to it, and only up to it.
        if let Some((p, digest)) = points.last() {
            let upto = Projections::open(dir.path().join("c.redb")).unwrap();
            let prefix: Vec<Input> = inputs.iter().filter(|i| i.seq <= *p).cloned().collect();
            upto.apply(&prefix, Outbox::Skip).unwrap();
            prop_assert_eq!(&upto.scan_digest().unwrap(), digest);
        }
    }

    /// Any one record changed behind the fold's back changes the digest computed by a scan,
    /// in the table that holds it and in no other.
    #[test]
    fn any_single_changed_record_changes_the_digest(
        events in proptest::collection::vec(arb_event(), 1..120),
        run_len in 1u64..8,
        which in 0usize..6,
        pick in any::<proptest::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.redb");
        let before = {
            let db = Projections::open_with(&path, Options { run_len }).unwrap();
            let inputs: Vec<Input> = events.iter().enumerate()
                .map(|(i, e)| Input::unsigned(i as u64 + 1, Ok(e.clone().into()))).collect();
            db.apply(&inputs, Outbox::Record).unwrap();
            db.scan_digest().unwrap()
        };
        if let Some(table) = tamper(&path, which, pick) {
            let db = Projections::open(&path).unwrap();
            let after = db.scan_digest().unwrap();
            prop_assert_ne!(after.text(), before.text());
            prop_assert_eq!(after.differing(&before), vec![table]);
            // The incremental digest did not see it: only a scan does (what `audit` runs).
            prop_assert_eq!(db.state_digest().unwrap(), before);
        }
    }

    #[test]
    fn projections_agree_with_the_reference_model(
        events in proptest::collection::vec(arb_event(), 1..250),
        batch in 1usize..40,
        ats in proptest::collection::vec((any::<proptest::sample::Index>(), 0usize..12), 6),
        run_len in 1u64..8,
    ) {
        // Short runs, so that later events find their records sealed.
        let dir = tempfile::tempdir().unwrap();
        let db = Projections::open_with(dir.path().join("p.redb"), Options { run_len }).unwrap();
        let mut model = Model::default();
        let inputs: Vec<Input> = events.iter().enumerate()
            .map(|(i, e)| Input::unsigned(i as u64 + 1, Ok(e.clone().into()))).collect();
        for chunk in inputs.chunks(batch) {
            db.apply(chunk, Outbox::Record).unwrap();
        }
        for e in &events {
            model.fold(e);
        }
        // Snapshot times on the edges of the windows, where off-by-one mistakes live.
        const EDGES: [i64; 12] = [0, -1, 4, 5, 6, 60, 61, 1440, 1441, 10080, 10081, 200];
        for (index, edge) in ats {
            let at = events[index.index(events.len())].minute + EDGES[edge];
            for period in Period::ALL {
                let got = db.snapshot(at, period).unwrap().to_period_message();
                prop_assert_eq!(got, model.snapshot(at, period), "at {} over {}", at, period);
            }
        }
        // Each record once, found wherever it was sealed.
        let (tasks, invoices, _) = db.record_counts().unwrap();
        prop_assert_eq!((tasks as usize, invoices as usize), (model.tasks.len(), model.invoices.len()));
        for (id, t) in &model.tasks {
            let view = db.task(id).unwrap().expect("every task of the model is held");
            prop_assert_eq!(
                (view.first_seen_at, view.last_seen_at, view.reporting_nodes),
                (t.first, t.last, t.nodes.len())
            );
        }
        for (id, (first, _, _)) in &model.invoices {
            prop_assert_eq!(db.invoice(id).unwrap().map(|i| i.first_seen_at), Some(*first));
        }
    }
}

fn task_events() -> impl Strategy<Value = Vec<Event>> {
    // Each task gets one receipt and one completion, possibly from different nodes and minutes:
    // events about different tasks commute, and so do these two.
    proptest::collection::vec(
        (
            0u8..4,
            0u8..4,
            -3000i64..10,
            -3000i64..10,
            any::<bool>(),
            any::<bool>(),
            0usize..8,
        ),
        1..60,
    )
    .prop_map(|tasks| {
        tasks
            .into_iter()
            .enumerate()
            .flat_map(|(i, (n1, n2, m1, m2, success, cached, bucket))| {
                let task = Digest([i as u8; 32]);
                [
                    Event {
                        node_id: format!("node-{n1}"),
                        minute: T0 + m1,
                        kind: EventKind::TaskReceived {
                            task,
                            chain_id: Some((i % 3).to_string()),
                            task_type: None,
                        },
                    },
                    Event {
                        node_id: format!("node-{n2}"),
                        minute: T0 + m2,
                        kind: EventKind::TaskCompleted {
                            task,
                            outcome: Outcome {
                                success: Some(success),
                                cached: Some(cached),
                                execution_time: ExecutionTime::from_index(bucket),
                                ..Outcome::default()
                            },
                        },
                    },
                ]
            })
            .collect()
    })
}

fn fold_all(events: &[Event]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let db = Projections::open(dir.path().join("p.redb")).unwrap();
    let inputs: Vec<Input> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Input::unsigned(i as u64 + 1, Ok(e.clone().into())))
        .collect();
    for chunk in inputs.chunks(7) {
        db.apply(chunk, Outbox::Record).unwrap();
    }
    db.snapshots(T0)
        .unwrap()
        .iter()
        .map(|s| s.to_period_message())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn events_of_different_tasks_fold_to_the_same_snapshot_in_any_order(
        (events, shuffled) in task_events().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle()))
    ) {
        prop_assert_eq!(fold_all(&events), fold_all(&shuffled));
    }
}

/// Flips one byte of the value of the `pick`-th row of a table, behind the fold's back.
macro_rules! flip {
    ($db:expr, $name:expr, $key:ty, $owned:ty, $own:expr, $lend:expr, $pick:expr) => {{
        use redb::{ReadableDatabase, ReadableTable};
        let def: redb::TableDefinition<$key, &[u8]> = redb::TableDefinition::new($name);
        let keys: Vec<$owned> = {
            let read = $db.begin_read().unwrap();
            let table = read.open_table(def).unwrap();
            table
                .iter()
                .unwrap()
                .map(|r| $own(r.unwrap().0.value()))
                .collect()
        };
        if keys.is_empty() {
            None
        } else {
            let key = &keys[$pick.index(keys.len())];
            let txn = $db.begin_write().unwrap();
            {
                let mut table = txn.open_table(def).unwrap();
                let mut value = table.get($lend(key)).unwrap().unwrap().value().to_vec();
                let last = value.len() - 1;
                value[last] ^= 1;
                table.insert($lend(key), value.as_slice()).unwrap();
            }
            txn.commit().unwrap();
            Some(format!("{key:?}"))
        }
    }};
}

fn lend_run(k: &(u32, [u8; 32])) -> (u32, &[u8; 32]) {
    (k.0, &k.1)
}

#[allow(clippy::ptr_arg)] // the macro hands each key type by reference to what it owns
fn lend_text(k: &String) -> &str {
    k.as_str()
}

/// Changes one record of the table `which` names, as someone with the file could; returns the
/// digested table that holds it, or `None` when that table is empty.
fn tamper(
    path: &std::path::Path,
    which: usize,
    pick: proptest::sample::Index,
) -> Option<&'static str> {
    let db = redb::Database::open(path).unwrap();
    let id = |k: u64| k;
    let run = |k: (u32, &[u8; 32])| (k.0, *k.1);
    let text = |k: &str| k.to_string();
    let (table, changed) = match which {
        0 => (
            "tasks",
            flip!(db, "tasks_hot", u64, u64, id, |k: &u64| *k, pick),
        ),
        1 => (
            "tasks",
            flip!(
                db,
                "tasks",
                (u32, &[u8; 32]),
                (u32, [u8; 32]),
                run,
                lend_run,
                pick
            ),
        ),
        2 => (
            "invoices",
            flip!(db, "invoices_hot", u64, u64, id, |k: &u64| *k, pick),
        ),
        3 => (
            "nodes",
            flip!(db, "nodes", &str, String, text, lend_text, pick),
        ),
        4 => (
            "counters",
            flip!(
                db,
                "counters",
                (u8, i64),
                (u8, i64),
                |k| k,
                |k: &(u8, i64)| *k,
                pick
            ),
        ),
        _ => {
            // A folded key of `meta`, not its position or bookkeeping.
            use redb::ReadableTable;
            let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
            let key = truebit_projections::digest::DIGESTED_META[pick.index(4)];
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(def).unwrap();
                let mut value = table.get(key).unwrap().unwrap().value().to_vec();
                value[0] ^= 1;
                table.insert(key, value.as_slice()).unwrap();
            }
            txn.commit().unwrap();
            ("meta", Some(key.to_string()))
        }
    };
    changed.map(|_| table)
}
