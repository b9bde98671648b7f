//! The history series checked against a reference model: every point counted by scanning every
//! task and invoice, for random streams folded in random batches, at random times and steps.

use proptest::prelude::*;
use std::collections::HashMap;
use truebit_projections::{Input, Outbox, Point, Projections, Step};
use truebit_streams::*;

const T0: Minute = 29_000_000;

#[derive(Default)]
struct Model {
    /// Task → (first_seen, outcome of its last completion).
    tasks: HashMap<Digest, (Minute, Option<Outcome>)>,
    invoices: HashMap<Digest, Minute>,
}

impl Model {
    fn fold(&mut self, e: &Event) {
        let m = e.minute;
        match &e.kind {
            EventKind::TaskReceived { task, .. } => {
                let t = self.tasks.entry(*task).or_insert((m, None));
                t.0 = t.0.min(m);
            }
            EventKind::TaskCompleted { task, outcome } => {
                let t = self.tasks.entry(*task).or_insert((m, None));
                t.0 = t.0.min(m);
                t.1 = Some(outcome.clone());
            }
            EventKind::InvoiceCreated(inv) => {
                let i = self.invoices.entry(inv.invoice).or_insert(m);
                *i = (*i).min(m);
            }
            _ => {}
        }
    }

    /// The point of the step `[t, t + S)`, cut at `at`, by a scan of everything.
    fn point(&self, t: Minute, step: Step, at: Minute) -> Point {
        let end = (t + step.minutes() - 1).min(at);
        let within = |m: Minute| t <= m && m <= end;
        let tasks: Vec<&Option<Outcome>> = self
            .tasks
            .values()
            .filter(|(first, _)| within(*first))
            .map(|(_, o)| o)
            .collect();
        let success = |o: &&Option<Outcome>| o.as_ref().and_then(|o| o.success);
        Point {
            at: t,
            tasks: tasks.len() as u64,
            completed: tasks.iter().filter(|o| success(o) == Some(true)).count() as u64,
            failed: tasks.iter().filter(|o| success(o) == Some(false)).count() as u64,
            cached: tasks
                .iter()
                .filter(|o| o.as_ref().and_then(|o| o.cached) == Some(true))
                .count() as u64,
            invoices: self.invoices.values().filter(|m| within(**m)).count() as u64,
        }
    }

    fn first(&self) -> Option<Minute> {
        self.tasks
            .values()
            .map(|t| t.0)
            .chain(self.invoices.values().copied())
            .min()
    }
}

fn arb_event() -> impl Strategy<Value = Event> {
    let node = (0u8..4).prop_map(|n| format!("node-{n}"));
    // Over ten days, so that series of every step cross hours and days.
    let minute = (-14_400i64..300).prop_map(|d| T0 + d);
    let task = (0u8..60).prop_map(|t| Digest([t; 32]));
    let outcome = (
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(success, cached)| Outcome {
            success,
            cached,
            ..Outcome::default()
        });
    let kind = prop_oneof![
        task.clone().prop_map(|task| EventKind::TaskReceived {
            task,
            chain_id: None,
            task_type: None,
        }),
        (task.clone(), outcome)
            .prop_map(|(task, outcome)| EventKind::TaskCompleted { task, outcome }),
        task.prop_map(|invoice| EventKind::InvoiceCreated(Invoice {
            invoice,
            task: None,
            chain_id: None,
            steps_computed: None,
            memory_used: None,
            operation: None,
        })),
        Just(EventKind::HeartbeatReported(Heartbeat::default())),
    ];
    (node, minute, kind).prop_map(|(node_id, minute, kind)| Event {
        node_id,
        minute,
        kind,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_point_agrees_with_a_scan_of_the_records(
        events in proptest::collection::vec(arb_event(), 1..200),
        batch in 1usize..40,
        ats in proptest::collection::vec((any::<proptest::sample::Index>(), -1500i64..1500), 4),
        spans in proptest::collection::vec(0i64..15_000, 4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = Projections::open(dir.path().join("h.redb")).unwrap();
        let inputs: Vec<Input> = events.iter().enumerate()
            .map(|(i, e)| Input::unsigned(i as u64 + 1, Ok(e.clone().into()))).collect();
        for chunk in inputs.chunks(batch) {
            db.apply(chunk, Outbox::Record).unwrap();
        }
        let mut model = Model::default();
        for e in &events {
            model.fold(e);
        }
        for ((index, offset), span) in ats.into_iter().zip(spans) {
            let at = events[index.index(events.len())].minute + offset;
            for step in Step::ALL {
                let from = at - span;
                let got = db.history(Some(from), at, step, u64::MAX).unwrap().unwrap();
                let mut t = step.floor(from);
                let mut want = Vec::new();
                while t <= step.floor(at) {
                    want.push(model.point(t, step, at));
                    t += step.minutes();
                }
                prop_assert_eq!(got, want, "from {} at {} by {:?}", from, at, step);

                // From the first task: the points sum to the snapshot of all at `at`.
                let all = db.history(None, at, step, u64::MAX).unwrap().unwrap();
                let starts = model.first().filter(|f| *f <= at).map(|f| step.floor(f));
                prop_assert_eq!(all.first().map(|p| p.at), starts);
                let snapshot = db.snapshot(at, Period::All).unwrap();
                let sum = |f: fn(&Point) -> u64| all.iter().map(f).sum::<u64>();
                prop_assert_eq!(
                    (sum(|p| p.tasks), sum(|p| p.completed), sum(|p| p.failed), sum(|p| p.cached), sum(|p| p.invoices)),
                    (snapshot.total_tasks, snapshot.completed_tasks, snapshot.failed_tasks, snapshot.cached_tasks, snapshot.total_invoices)
                );
            }
        }
    }
}

/// A series is refused by its length before any point is made: a far `at` over a small step
/// would otherwise be millions of points in memory for one request.
#[test]
fn a_series_longer_than_the_limit_is_refused_with_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let db = Projections::open(dir.path().join("h.redb")).unwrap();
    let task = Event {
        node_id: "node-1".into(),
        minute: T0,
        kind: EventKind::TaskReceived {
            task: Digest([1; 32]),
            chain_id: None,
            task_type: None,
        },
    };
    db.apply(&[Input::unsigned(1, Ok(task.into()))], Outbox::Skip)
        .unwrap();
    let far = T0 + 10 * 365 * 24 * 60;
    assert_eq!(
        db.history(None, far, Step::Hour, 50_000).unwrap(),
        Err(10 * 365 * 24 + 1)
    );
    let near = db
        .history(None, T0 + 120, Step::Hour, 50_000)
        .unwrap()
        .unwrap();
    assert_eq!(near.len(), 3);
    assert_eq!(near[0].tasks, 1);
}
