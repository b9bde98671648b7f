//! Contract §9, the lease: which `serve` instance publishes. A pure state machine over what the
//! KV bucket `truebit-leader` showed and the instance's own clock; the I/O around it only reads
//! the key, carries out the step this returns, and reports how it went.
//!
//! - The leader renews every [`RENEW_EVERY`] by a compare-and-set on the revision it wrote.
//! - Another instance takes the lease, by a compare-and-set on the revision it last saw, when that
//!   revision has not changed for [`TAKE_AFTER`] by its own clock, so the lease does not depend on
//!   JetStream expiring keys.
//! - An instance stops publishing the moment a renewal fails, or [`STOP_AFTER`] after the last
//!   one that succeeded, counted from when that renewal was *sent*: before anyone else's
//!   [`TAKE_AFTER`] can have passed, whatever the network did in between. So a partition, or a
//!   process paused past its lease, never leaves two instances publishing.
//! - Fencing: an instance whose compare-and-set on a snapshot key failed (another instance
//!   published since) is [fenced](Lease::fence): it stops publishing until it has read the lease
//!   again and renewed it.

use std::time::{Duration, Instant};

pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(2);
pub(crate) const TAKE_AFTER: Duration = Duration::from_secs(10);
pub(crate) const STOP_AFTER: Duration = Duration::from_secs(8);

/// The lease key as last read: its revision and holder, or nothing (never written, or handed
/// back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub revision: u64,
    pub holder: String,
}

/// What to do about the key now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Create the key (it is absent): succeeds only if nobody created it first.
    Create,
    /// Write our name over `revision`: succeeds only if the key is still at it.
    Update {
        revision: u64,
    },
    Wait,
}

#[derive(Debug, Clone)]
pub(crate) struct Lease {
    /// The revision we wrote last and when that write was sent.
    held: Option<(u64, Instant)>,
    /// Another's revision, and since when we have seen it unchanged.
    watching: Option<(u64, Instant)>,
    /// Whether this instance may take the lease (caught up as far as the last publish).
    eligible: bool,
    /// Another instance wrote a snapshot key: not publishing until the next renewal.
    fenced: bool,
    /// How many times this instance took the lease: a new term starts from fresh revisions.
    terms: u64,
}

impl Lease {
    pub fn new() -> Self {
        Lease {
            held: None,
            watching: None,
            eligible: false,
            fenced: false,
            terms: 0,
        }
    }

    /// An instance takes the lease only once it has folded as far as the last snapshot that was
    /// published, so that published numbers never go back.
    /// Returns what it was before.
    pub fn set_eligible(&mut self, eligible: bool) -> bool {
        std::mem::replace(&mut self.eligible, eligible)
    }

    /// Whether this instance may publish at `now`.
    pub fn leading(&self, now: Instant) -> bool {
        !self.fenced
            && self
                .held
                .is_some_and(|(_, sent)| now.saturating_duration_since(sent) < STOP_AFTER)
    }

    /// Another instance published a snapshot: stop at once, until a renewal shows the lease is
    /// still this instance's.
    pub fn fence(&mut self) {
        self.fenced = true;
    }

    /// Which term of leadership this is (0 before the first): it changes each time this
    /// instance takes the lease, not when it renews it.
    pub fn term(&self) -> u64 {
        self.terms
    }

    /// The step after reading the key at `now`.
    pub fn next(&mut self, seen: Option<&Seen>, now: Instant) -> Step {
        if let Some((mine, _)) = self.held {
            match seen {
                Some(s) if s.revision == mine => return Step::Update { revision: mine },
                // Changed under us (taken, or handed back by a stale writer): not ours any more.
                _ => self.held = None,
            }
        }
        let Some(seen) = seen else {
            self.watching = None;
            return if self.eligible {
                Step::Create
            } else {
                Step::Wait
            };
        };
        match self.watching {
            Some((revision, _)) if revision == seen.revision => {}
            _ => self.watching = Some((seen.revision, now)),
        }
        let (_, since) = self.watching.expect("set above");
        if self.eligible && now.saturating_duration_since(since) >= TAKE_AFTER {
            Step::Update {
                revision: seen.revision,
            }
        } else {
            Step::Wait
        }
    }

    /// How the write of a step, sent at `sent`, went: the new revision, or failure.
    pub fn wrote(&mut self, result: Option<u64>, sent: Instant) {
        match result {
            Some(revision) => {
                if self.held.is_none() {
                    self.terms += 1;
                }
                self.held = Some((revision, sent));
                self.watching = None;
                self.fenced = false;
            }
            None => self.held = None,
        }
    }

    /// The revision to delete when handing the lease back, if this instance holds it.
    pub fn held_revision(&self) -> Option<u64> {
        self.held.map(|(revision, _)| revision)
    }

    /// After a hand-back: not the leader, and nothing seen.
    pub fn released(&mut self) {
        self.held = None;
        self.watching = None;
        self.fenced = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(revision: u64, holder: &str) -> Seen {
        Seen {
            revision,
            holder: holder.into(),
        }
    }

    #[test]
    fn an_absent_key_is_created_then_renewed_on_its_own_revision() {
        let t0 = Instant::now();
        let mut a = Lease::new();
        a.set_eligible(true);
        assert_eq!(a.next(None, t0), Step::Create);
        assert!(!a.leading(t0), "not before the write succeeded");
        a.wrote(Some(7), t0);
        assert!(a.leading(t0));
        let t1 = t0 + RENEW_EVERY;
        assert_eq!(
            a.next(Some(&seen(7, "a")), t1),
            Step::Update { revision: 7 }
        );
        a.wrote(Some(8), t1);
        assert!(a.leading(t1 + STOP_AFTER - Duration::from_millis(1)));
        assert!(
            !a.leading(t1 + STOP_AFTER),
            "8 s after the last renewal was sent"
        );
    }

    #[test]
    fn a_failed_renewal_stops_publishing_at_once() {
        let t0 = Instant::now();
        let mut a = Lease::new();
        a.set_eligible(true);
        a.next(None, t0);
        a.wrote(Some(1), t0);
        a.next(Some(&seen(1, "a")), t0 + RENEW_EVERY);
        a.wrote(None, t0 + RENEW_EVERY);
        assert!(!a.leading(t0 + RENEW_EVERY));
    }

    #[test]
    fn a_fenced_leader_stops_at_once_and_publishes_again_only_after_a_renewal() {
        let t0 = Instant::now();
        let mut a = Lease::new();
        a.set_eligible(true);
        a.next(None, t0);
        a.wrote(Some(1), t0);
        assert_eq!(a.term(), 1);
        a.fence();
        assert!(!a.leading(t0), "fenced: not publishing, lease or not");
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(
            a.next(Some(&seen(1, "a")), t1),
            Step::Update { revision: 1 },
            "still its own lease: renewed"
        );
        a.wrote(Some(2), t1);
        assert!(a.leading(t1));
        assert_eq!(a.term(), 1, "a renewal is the same term");
        // Taken meanwhile: a renewal fails, and so the fence holds until a new term.
        a.fence();
        a.next(Some(&seen(3, "b")), t1 + RENEW_EVERY);
        assert!(!a.leading(t1 + RENEW_EVERY));
        a.wrote(Some(9), t1 + TAKE_AFTER * 3);
        assert_eq!(a.term(), 2, "taken again: a new term");
    }

    #[test]
    fn a_standby_takes_over_only_after_ten_seconds_of_the_same_revision() {
        let t0 = Instant::now();
        let mut b = Lease::new();
        b.set_eligible(true);
        assert_eq!(b.next(Some(&seen(5, "a")), t0), Step::Wait);
        // The leader renews: the clock starts again.
        assert_eq!(
            b.next(Some(&seen(6, "a")), t0 + Duration::from_secs(9)),
            Step::Wait
        );
        assert_eq!(
            b.next(Some(&seen(6, "a")), t0 + Duration::from_secs(18)),
            Step::Wait
        );
        assert_eq!(
            b.next(Some(&seen(6, "a")), t0 + Duration::from_secs(19)),
            Step::Update { revision: 6 }
        );
        b.wrote(Some(7), t0 + Duration::from_secs(19));
        assert!(b.leading(t0 + Duration::from_secs(19)));
    }

    #[test]
    fn an_instance_behind_the_last_publish_does_not_take_the_lease() {
        let t0 = Instant::now();
        let mut b = Lease::new();
        assert_eq!(b.next(None, t0), Step::Wait);
        assert_eq!(b.next(Some(&seen(3, "a")), t0), Step::Wait);
        assert_eq!(b.next(Some(&seen(3, "a")), t0 + TAKE_AFTER), Step::Wait);
        b.set_eligible(true);
        assert_eq!(
            b.next(Some(&seen(3, "a")), t0 + TAKE_AFTER),
            Step::Update { revision: 3 },
            "the revision has been still for ten seconds all along"
        );
    }

    #[test]
    fn a_leader_that_was_taken_over_while_paused_knows_at_its_next_read() {
        let t0 = Instant::now();
        let mut a = Lease::new();
        a.set_eligible(true);
        a.next(None, t0);
        a.wrote(Some(1), t0);
        // Paused for a minute; b took the lease at revision 2 meanwhile.
        let woke = t0 + Duration::from_secs(60);
        assert!(!a.leading(woke), "long past its lease before it even reads");
        assert_eq!(a.next(Some(&seen(2, "b")), woke), Step::Wait);
        assert!(!a.leading(woke));
        assert_eq!(a.held_revision(), None);
    }

    /// Two instances on one clock, driven through every interleaving of reads and writes over a
    /// minute, with writes that take effect only if the key is still where the writer saw it:
    /// never two leading at once.
    #[test]
    fn two_instances_never_lead_at_once() {
        for seed in 0..200u64 {
            let t0 = Instant::now();
            let mut key: Option<(u64, &str)> = None;
            let mut next_rev = 1;
            let mut lease = [Lease::new(), Lease::new()];
            lease[0].set_eligible(true);
            lease[1].set_eligible(true);
            let names = ["a", "b"];
            let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let mut ms = 0u64;
            while ms < 60_000 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ms += 100 + (rng >> 33) % 1900;
                let i = ((rng >> 20) & 1) as usize;
                // Instance 0 is sometimes paused for a long while.
                if i == 0 && (rng >> 40) % 17 == 0 {
                    ms += 12_000;
                }
                let now = t0 + Duration::from_millis(ms);
                let seen = key.map(|(r, h)| seen(r, h));
                let step = lease[i].next(seen.as_ref(), now);
                let result = match step {
                    Step::Wait => continue,
                    Step::Create if key.is_none() => Some(next_rev),
                    Step::Update { revision } if key.map(|k| k.0) == Some(revision) => {
                        Some(next_rev)
                    }
                    _ => None,
                };
                if let Some(r) = result {
                    key = Some((r, names[i]));
                    next_rev += 1;
                }
                lease[i].wrote(result, now);
                for t in [now, now + Duration::from_millis(500)] {
                    assert!(
                        !(lease[0].leading(t) && lease[1].leading(t)),
                        "seed {seed}: both lead at {ms} ms"
                    );
                }
            }
        }
    }
}
