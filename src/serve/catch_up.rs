//! Start-up catch-up: folding up to the stream's last sequence at start, with progress in the log.

use std::time::{Duration, Instant};

/// How often catch-up reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Start-up catch-up: folding up to the stream's last sequence at start.
pub(crate) struct CatchUp {
    target: u64,
    from: u64,
    started: Instant,
    last_report: Instant,
    pub done: bool,
}

impl CatchUp {
    pub fn new(applied: u64, target: u64) -> Self {
        let done = applied >= target;
        if done {
            tracing::info!(applied, "caught up");
        }
        CatchUp {
            target,
            from: applied,
            started: Instant::now(),
            last_report: Instant::now(),
            done,
        }
    }

    /// Notes progress; true exactly once, when catch-up completes.
    pub fn progress(&mut self, applied: u64) -> bool {
        if self.done {
            return false;
        }
        let rate = (applied - self.from) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        if applied >= self.target {
            self.done = true;
            tracing::info!(
                applied,
                folded = applied - self.from,
                seconds = self.started.elapsed().as_secs_f64(),
                rate = rate as u64,
                "caught up"
            );
            return true;
        }
        if self.last_report.elapsed() >= PROGRESS_EVERY {
            self.last_report = Instant::now();
            let eta = (self.target - applied) as f64 / rate.max(1.0);
            tracing::info!(
                applied,
                target = self.target,
                rate = rate as u64,
                eta_seconds = eta as u64,
                "catching up"
            );
        }
        false
    }
}
