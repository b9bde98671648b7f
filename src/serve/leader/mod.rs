//! Which instance publishes (contract §9): the lease in the KV bucket `truebit-leader`, renewed
//! and taken over by [`lease::Lease`], and a handle the publishing code asks right before each
//! publish. Every instance folds the whole stream; only the leader publishes snapshots, the KV
//! keys, checkpoints and dead letters.

mod lease;

use crate::infra::shutdown::Shutdown;
use async_nats::jetstream::kv::{self, Operation};
use lease::{Lease, Seen, Step, RENEW_EVERY};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::{watch, Notify};
use truebit_streams::names::LEADER_KEY;

/// Shared between the lease loop and whoever publishes.
#[derive(Clone)]
pub(crate) struct Leader {
    lease: Arc<Mutex<Lease>>,
    /// True from the moment this instance takes the lease until it loses or hands it back.
    became: watch::Sender<bool>,
    /// Wakes the lease loop when this instance becomes eligible, so that it need not wait for
    /// its next renewal tick.
    poke: Arc<Notify>,
}

impl Leader {
    pub fn new() -> Self {
        Leader {
            lease: Arc::new(Mutex::new(Lease::new())),
            became: watch::channel(false).0,
            poke: Arc::new(Notify::new()),
        }
    }

    fn lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        // The lease changes in a few steps that cannot panic.
        self.lease.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this instance may publish now. Asked right before each publish, so that an
    /// instance past its lease (paused, cut off) stops at once, not at its next loop.
    pub fn leading(&self) -> bool {
        self.lease().leading(Instant::now())
    }

    /// Allows taking the lease: this instance has folded as far as the last published snapshot.
    pub fn set_eligible(&self, eligible: bool) {
        let was = self.lease().set_eligible(eligible);
        if eligible && !was {
            self.poke.notify_one();
        }
    }

    /// Another instance published a snapshot (a compare-and-set on a snapshot key failed): stops
    /// publishing at once and has the lease read again; publishing resumes only after a
    /// renewal shows the lease is still this instance's (contract §9, "Fencing").
    pub fn fence(&self) {
        self.lease().fence();
        self.announce();
        self.poke.notify_one();
    }

    /// Which term of leadership this is: it changes each time this instance takes the lease.
    pub fn term(&self) -> u64 {
        self.lease().term()
    }

    /// Tells subscribers whether this instance leads now, if that changed.
    fn announce(&self) {
        let now = self.leading();
        self.became
            .send_if_modified(|was| std::mem::replace(was, now) != now);
    }

    /// Changes to true when this instance takes the lease (and to false when it loses it).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.became.subscribe()
    }
}

/// Keeps the lease until `stop`, then hands it back if this instance holds it.
pub(crate) async fn run(kv: kv::Store, me: String, leader: Leader, mut stop: Shutdown) {
    let mut ticker = tokio::time::interval(RENEW_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.recv() => break,
            _ = ticker.tick() => {}
            _ = leader.poke.notified() => {}
        }
        // A key that cannot be read is a renewal that cannot be made: the lease then runs out
        // by the clock, which is what stops a cut-off leader.
        let seen = match kv.entry(LEADER_KEY).await {
            Ok(Some(e)) if e.operation == Operation::Put => Some(Seen {
                revision: e.revision,
                holder: String::from_utf8_lossy(&e.value).into_owned(),
            }),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the lease");
                leader.announce();
                continue;
            }
        };
        let sent = Instant::now();
        let held_before = leader.lease().held_revision().is_some();
        let step = leader.lease().next(seen.as_ref(), sent);
        let still_held = leader.lease().held_revision().is_some();
        let result = match step {
            Step::Wait => {
                // Taken while this instance could not read the key (cut off, paused): it learns
                // so only now, and says so, as when a renewal fails.
                if held_before && !still_held {
                    tracing::warn!(instance = %me, holder = ?seen.map(|s| s.holder), "lost the lease: no longer publishing");
                }
                leader.announce();
                continue;
            }
            // Losing a compare-and-set to another instance is the lease working; anything else
            // (a permission the server config lacks, a timeout) is worth the operator's eye.
            Step::Create => match kv.create(LEADER_KEY, me.clone().into()).await {
                Ok(revision) => Some(revision),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the lease in KV bucket truebit-leader; check that this user may publish to $KV.truebit-leader.>");
                    None
                }
            },
            Step::Update { revision } => {
                match kv.update(LEADER_KEY, me.clone().into(), revision).await {
                    Ok(revision) => Some(revision),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write the lease in KV bucket truebit-leader; check that this user may publish to $KV.truebit-leader.>");
                        None
                    }
                }
            }
        };
        leader.lease().wrote(result, sent);
        match (still_held, result) {
            (false, Some(_)) => {
                tracing::info!(instance = %me, previous = ?seen.map(|s| s.holder), "took the lease: publishing")
            }
            (true, None) => tracing::warn!(instance = %me, "lost the lease: no longer publishing"),
            _ => {}
        }
        leader.announce();
    }
    let held = leader.lease().held_revision();
    if let Some(revision) = held {
        // Handing back on a clean stop: another instance takes over in seconds, not ten.
        match kv.delete_expect_revision(LEADER_KEY, Some(revision)).await {
            Ok(()) => tracing::info!(instance = %me, "handed the lease back"),
            Err(e) => tracing::warn!(error = %e, "cannot hand the lease back; it runs out in 10 s"),
        }
    }
    leader.lease().released();
    leader.became.send_replace(false);
}
