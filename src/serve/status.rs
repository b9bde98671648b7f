//! What the process knows about itself: whether its loops run, whether it is caught up, and the
//! last snapshot it published. The fold, the publisher and the lag watcher write it; HTTP
//! (`/healthz`, `/readyz`, the dashboard's freshness line) only reads it.

use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// A snapshot as it was published.
#[derive(Debug, Clone)]
pub struct Published {
    pub when: SystemTime,
    /// The last stream sequence folded into it (`Truebit-Last-Seq`).
    pub seq: u64,
    /// The message on `truebit.stats.aggregated`, as sent.
    pub message: Value,
}

/// Shared between `serve`'s loops and the HTTP handlers.
#[derive(Debug, Default)]
pub struct Status {
    /// Start-up catch-up is done.
    pub caught_up: AtomicBool,
    /// The lag, once measured; `u64::MAX` until then.
    pending: AtomicU64,
    /// Why a loop that should run has stopped, if one has.
    failed: Mutex<Option<String>>,
    published: Mutex<Option<Published>>,
    /// Messages per commit: readiness allows a lag under one batch.
    pub batch: u64,
    pub connected: AtomicBool,
}

impl Status {
    pub fn new(batch: u64) -> Self {
        Status {
            pending: AtomicU64::new(u64::MAX),
            batch,
            ..Status::default()
        }
    }

    pub fn set_pending(&self, pending: u64) {
        self.pending.store(pending, Ordering::Relaxed);
    }

    /// The last measured lag, if any.
    pub fn pending(&self) -> Option<u64> {
        Some(self.pending.load(Ordering::Relaxed)).filter(|p| *p != u64::MAX)
    }

    pub fn fail(&self, why: impl Into<String>) {
        *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.into());
    }

    pub fn failed(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_published(&self, published: Published) {
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(published);
    }

    pub fn published(&self) -> Option<Published> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `None` when ready, else why not.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(failed) = self.failed() {
            return Some(failed);
        }
        if !self.connected.load(Ordering::Relaxed) {
            return Some("not connected to NATS; the client reconnects by itself".into());
        }
        if !self.caught_up.load(Ordering::Relaxed) {
            return Some("catching up on TRUEBIT_EVENTS after start-up".into());
        }
        match self.pending() {
            None => Some("the lag has not been measured yet".into()),
            Some(p) if p >= self.batch => Some(format!(
                "{p} messages wait to be folded (ready under {})",
                self.batch
            )),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_connected_caught_up_and_under_one_batch_behind() {
        let s = Status::new(2000);
        assert!(s.not_ready().unwrap().contains("not connected"));
        s.connected.store(true, Ordering::Relaxed);
        assert!(s.not_ready().unwrap().contains("catching up"));
        s.caught_up.store(true, Ordering::Relaxed);
        assert!(s.not_ready().unwrap().contains("not been measured"));
        s.set_pending(2000);
        assert!(s.not_ready().unwrap().contains("2000 messages wait"));
        s.set_pending(1999);
        assert_eq!(s.not_ready(), None);
        s.connected.store(false, Ordering::Relaxed);
        assert!(s.not_ready().unwrap().contains("not connected"));
        s.connected.store(true, Ordering::Relaxed);
        s.fail("the stats service stopped");
        assert_eq!(s.not_ready().as_deref(), Some("the stats service stopped"));
    }
}
