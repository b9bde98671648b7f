//! Stream order without gaps: the subtlest rule of the live fold, kept apart from its I/O.
//!
//! JetStream delivers a pull consumer's messages mostly in order, but not always: a message lost
//! in flight (a reconnect, say) comes back only after `ack_wait`, and a restart may redeliver
//! what was already folded. The fold must see every sequence once, in order. [`Order`] decides,
//! for one batch of deliveries, which to fold, in what order, and which sequences between them
//! must be read from the stream first; it never skips a sequence it has not seen.

/// One step of a batch, in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The delivery at this index of the batch.
    Delivered(usize),
    /// Sequences `from..=to` were not delivered: read them from the stream (those it no longer
    /// holds are gone for good, deleted or expired).
    Missing { from: u64, to: u64 },
}

/// What to do with one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    /// The last sequence the plan covers: the cursor once it is carried out.
    pub end: u64,
}

/// The position of the fold: the last sequence handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Order {
    cursor: u64,
}

impl Order {
    pub fn new(cursor: u64) -> Self {
        Order { cursor }
    }

    #[cfg(test)]
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The steps for a batch whose deliveries carry these stream sequences (in any order, with
    /// duplicates and already-folded ones). Deliveries at or below the cursor, and second
    /// copies, get no step: they were handed on before, and need only their ack.
    pub fn plan(&self, seqs: &[u64]) -> Plan {
        let mut by_seq: Vec<usize> = (0..seqs.len()).collect();
        by_seq.sort_by_key(|&i| seqs[i]);
        let mut steps = Vec::with_capacity(seqs.len());
        let mut last = self.cursor;
        for i in by_seq {
            let seq = seqs[i];
            if seq <= last {
                continue;
            }
            if seq > last + 1 {
                steps.push(Step::Missing {
                    from: last + 1,
                    to: seq - 1,
                });
            }
            steps.push(Step::Delivered(i));
            last = seq;
        }
        Plan { steps, end: last }
    }

    /// Moves the cursor past a plan whose steps were all handed on.
    pub fn advance(&mut self, plan: &Plan) {
        self.cursor = self.cursor.max(plan.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Step::*;

    #[test]
    fn an_ordered_batch_is_folded_as_it_came() {
        let order = Order::new(10);
        let plan = order.plan(&[11, 12, 13]);
        assert_eq!(plan.steps, [Delivered(0), Delivered(1), Delivered(2)]);
        assert_eq!(plan.end, 13);
    }

    #[test]
    fn deliveries_out_of_order_are_sorted() {
        let plan = Order::new(0).plan(&[3, 1, 2]);
        assert_eq!(plan.steps, [Delivered(1), Delivered(2), Delivered(0)]);
    }

    #[test]
    fn a_gap_before_and_inside_the_batch_is_read_from_the_stream() {
        let plan = Order::new(4).plan(&[9, 7]);
        assert_eq!(
            plan.steps,
            [
                Missing { from: 5, to: 6 },
                Delivered(1),
                Missing { from: 8, to: 8 },
                Delivered(0)
            ]
        );
        assert_eq!(plan.end, 9);
    }

    #[test]
    fn redeliveries_and_duplicates_get_no_step() {
        let order = Order::new(5);
        let plan = order.plan(&[4, 5, 6, 6, 3]);
        assert_eq!(plan.steps, [Delivered(2)]);
        assert_eq!(plan.end, 6);
        let stale = order.plan(&[1, 2, 5]);
        assert_eq!(stale.steps, []);
        assert_eq!(stale.end, 5, "nothing new: the cursor stays");
    }

    #[test]
    fn the_cursor_moves_only_when_told_and_never_back() {
        let mut order = Order::new(5);
        let plan = order.plan(&[7]);
        assert_eq!(
            order.cursor(),
            5,
            "planning moves nothing: a failed gap read retries"
        );
        order.advance(&plan);
        assert_eq!(order.cursor(), 7);
        order.advance(&Plan {
            steps: vec![],
            end: 3,
        });
        assert_eq!(order.cursor(), 7);
    }

    proptest! {
        /// Over any sequence of batches, the sequences handed on (delivered or read) are exactly
        /// cursor+1 ..= the highest delivered, each once, in order.
        #[test]
        fn every_sequence_is_handed_on_once_in_order(
            start in 0u64..5,
            batches in proptest::collection::vec(proptest::collection::vec(0u64..40, 0..8), 0..8),
        ) {
            let mut order = Order::new(start);
            let mut handed = Vec::new();
            for batch in &batches {
                let plan = order.plan(batch);
                for step in &plan.steps {
                    match *step {
                        Delivered(i) => handed.push(batch[i]),
                        Missing { from, to } => {
                            prop_assert!(from <= to);
                            handed.extend(from..=to);
                        }
                    }
                }
                order.advance(&plan);
            }
            let highest = batches.iter().flatten().copied().filter(|&s| s > start).max();
            let expected: Vec<u64> = match highest {
                Some(h) => (start + 1..=h).collect(),
                None => vec![],
            };
            prop_assert_eq!(handed, expected);
        }
    }
}
