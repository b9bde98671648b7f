//! The tasks `serve` runs, and the one order they stop in.
//!
//! The fold stops first (the receiver hands over the batch in hand, the committer commits and
//! acks it), then the loops that read the database or serve requests. The dead-letter sender's
//! last drain goes out while `TRUEBIT_DLQ` is still followed, so that a leader reads its own last
//! letters; a checkpoint in progress ends; only then is the lease handed back, so that all of
//! this happens under it (contract §9).

use crate::infra::shutdown::Stop;
use crate::Error;
use std::time::Duration;
use tokio::task::JoinHandle;
use truebit_projections::task::joined;

/// How long a stop waits for a checkpoint upload in progress.
const CHECKPOINT_GRACE: Duration = Duration::from_secs(20);
/// How long a stop waits for HTTP: a client that holds a request open does not hold it long.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// A task that stops when its own [`Stop`] is told, not with the process.
pub(super) struct Staged {
    pub stop: Stop,
    pub task: JoinHandle<()>,
}

impl Staged {
    async fn stop(self) {
        self.stop.stop();
        let _ = self.task.await;
    }
}

/// Every task of a running `serve`. All but the staged ones stop when the process's shutdown is
/// told; [`Running::stop`] waits for them in order.
pub(super) struct Running {
    /// Pulls, orders and validates batches; ends when it sees the stop, closing the queue.
    pub receiving: JoinHandle<Result<(), Error>>,
    /// Folds and commits queued batches; ends when the queue is closed and empty, or on a failed
    /// commit. The loop watches it: its end before a stop is how a failure is seen.
    pub committing: JoinHandle<Result<(), Error>>,
    /// The micro service, the dead-letter sender, the lag watcher and the history follower.
    pub responder: JoinHandle<()>,
    pub dead_letters: JoinHandle<()>,
    pub lag: JoinHandle<()>,
    pub history: JoinHandle<()>,
    pub http: Option<JoinHandle<()>>,
    /// Follows `TRUEBIT_DLQ`: stopped after the dead-letter sender's last drain.
    pub dlq_follower: Staged,
    /// A checkpoint upload in progress, if any.
    pub checkpoint: Option<JoinHandle<()>>,
    /// Keeps the lease; stopping it hands the lease back. Last.
    pub lease: Staged,
}

/// Why the loop ended.
pub(super) enum Ended {
    /// The shutdown was told.
    Stopped,
    /// The committer ended first: a failed commit, a panic, or a receiver that closed the queue.
    Committer(Result<Result<(), Error>, tokio::task::JoinError>),
}

impl Running {
    /// Stops every task in order, and says how the fold ended.
    pub async fn stop(self, ended: Ended) -> Result<(), Error> {
        let outcome = match ended {
            // The receiver hands over the batch in hand and closes the queue; the committer
            // commits and acks everything queued, then ends.
            Ended::Stopped => {
                let received = joined(self.receiving).await;
                joined(self.committing).await.and(received)
            }
            // The receiver closed the queue, which it does only once it saw the stop itself
            // (every other task sees it too, so this is an ordinary stop), or by panicking,
            // which must not end in a quiet exit 0.
            Ended::Committer(Ok(Ok(()))) => joined(self.receiving).await,
            // A commit failed: its error decides the exit. Nothing more can be committed, so
            // nothing more is received or sent: what was received and not committed is
            // redelivered after a restart.
            Ended::Committer(failed) => {
                self.receiving.abort();
                for task in [
                    &self.responder,
                    &self.dead_letters,
                    &self.lag,
                    &self.history,
                ] {
                    task.abort();
                }
                if let Some(http) = &self.http {
                    http.abort();
                }
                self.dlq_follower.task.abort();
                failed.unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
            }
        };
        for task in [self.responder, self.dead_letters, self.lag, self.history] {
            let _ = task.await;
        }
        if let Some(mut http) = self.http {
            if tokio::time::timeout(HTTP_GRACE, &mut http).await.is_err() {
                http.abort();
            }
        }
        self.dlq_follower.stop().await;
        // A checkpoint is the leader's to write: it ends (or is given up, its next interval
        // elsewhere writes another) before the lease is handed back, and never holds a stop long.
        if let Some(mut running) = self.checkpoint {
            if tokio::time::timeout(CHECKPOINT_GRACE, &mut running)
                .await
                .is_err()
            {
                tracing::warn!("stopping in the middle of a checkpoint upload; it is given up");
                running.abort();
            }
        }
        self.lease.stop().await;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::shutdown::Shutdown;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<&'static str>>>;

    /// A task that notes `name` in `log` once `shutdown` comes and `work` more has passed.
    fn task(log: &Log, name: &'static str, mut shutdown: Shutdown, work: u64) -> JoinHandle<()> {
        let log = log.clone();
        tokio::spawn(async move {
            shutdown.recv().await;
            tokio::time::sleep(Duration::from_millis(work)).await;
            log.lock().unwrap().push(name);
        })
    }

    fn staged(log: &Log, name: &'static str) -> Staged {
        let (stop, shutdown) = Stop::new();
        Staged {
            task: task(log, name, shutdown, 0),
            stop,
        }
    }

    fn position(log: &[&str], name: &str) -> usize {
        log.iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("{name} never stopped: {log:?}"))
    }

    /// The last dead letters go out while `TRUEBIT_DLQ` is still followed, and a checkpoint
    /// ends, before the lease is handed back, however long each takes.
    #[tokio::test(start_paused = true)]
    async fn the_lease_is_handed_back_last_after_the_last_dead_letters_and_checkpoint() {
        let log: Log = Arc::default();
        let (stop, process) = Stop::new();
        let fold = |name: &'static str, work| {
            let (log, mut shutdown) = (log.clone(), process.clone());
            tokio::spawn(async move {
                shutdown.recv().await;
                tokio::time::sleep(Duration::from_millis(work)).await;
                log.lock().unwrap().push(name);
                Ok::<(), Error>(())
            })
        };
        let running = Running {
            receiving: fold("receiver", 1),
            committing: fold("committer", 30),
            responder: task(&log, "responder", process.clone(), 0),
            dead_letters: task(&log, "dead letters", process.clone(), 500),
            lag: task(&log, "lag", process.clone(), 0),
            history: task(&log, "history", process.clone(), 0),
            http: Some(task(&log, "http", process.clone(), 0)),
            dlq_follower: staged(&log, "dlq follower"),
            checkpoint: Some(task(&log, "checkpoint", process.clone(), 5_000)),
            lease: staged(&log, "lease"),
        };
        stop.stop();
        running.stop(Ended::Stopped).await.unwrap();
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 10, "{log:?}");
        assert!(
            position(&log, "dead letters") < position(&log, "dlq follower"),
            "{log:?}"
        );
        assert!(
            position(&log, "checkpoint") < position(&log, "lease"),
            "{log:?}"
        );
        assert_eq!(log.last(), Some(&"lease"), "{log:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_commit_decides_the_exit_and_still_hands_the_lease_back() {
        let log: Log = Arc::default();
        let (_stop, process) = Stop::new();
        let pending = || tokio::spawn(std::future::pending::<Result<(), Error>>());
        let running = Running {
            receiving: pending(),
            committing: pending(),
            responder: task(&log, "responder", process.clone(), 0),
            dead_letters: task(&log, "dead letters", process.clone(), 0),
            lag: task(&log, "lag", process.clone(), 0),
            history: task(&log, "history", process.clone(), 0),
            http: None,
            dlq_follower: staged(&log, "dlq follower"),
            checkpoint: None,
            lease: staged(&log, "lease"),
        };
        let failed = Err(Error::CheckFailed("the commit failed".into()));
        let outcome = running.stop(Ended::Committer(Ok(failed))).await;
        assert!(outcome
            .unwrap_err()
            .to_string()
            .contains("the commit failed"));
        assert_eq!(*log.lock().unwrap(), ["lease"], "the rest were aborted");
    }
}
