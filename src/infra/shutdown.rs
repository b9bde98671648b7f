//! Telling running tasks to stop (as mini-redis's `shutdown.rs`): a [`Stop`] is held by whoever
//! decides, each task holds a [`Shutdown`] and asks it or waits on it. `serve` gives each stage
//! of its stop a pair of its own, so that the stages end in the order `serve::running` encodes.

use tokio::sync::watch;

/// The deciding side: [`Stop::stop`] tells every [`Shutdown`] made from it. Dropping it tells
/// them too, so that a task never waits for a stop that can no longer come.
#[derive(Debug)]
pub struct Stop(watch::Sender<bool>);

/// A task's side: whether to stop, and a future that completes when it should.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Stop {
    /// A new pair; more [`Shutdown`]s come from [`Shutdown::clone`] or [`Stop::subscribe`].
    pub fn new() -> (Stop, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Stop(tx), Shutdown(rx))
    }

    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// A shutdown that comes when `signal` completes: how `serve` and `node` take theirs.
    pub fn on(signal: impl std::future::Future<Output = ()> + Send + 'static) -> Shutdown {
        let (stop, shutdown) = Stop::new();
        tokio::spawn(async move {
            signal.await;
            stop.stop();
        });
        shutdown
    }

    /// Whether the stop has been told.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Completes once the stop is told (at once if it was), or its [`Stop`] is gone.
    pub async fn recv(&mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_shutdown_sees_the_stop_including_one_made_after_it() {
        let (stop, mut early) = Stop::new();
        assert!(!early.is_shutdown());
        let waiting = tokio::spawn(async move {
            early.recv().await;
            early.is_shutdown()
        });
        stop.stop();
        assert!(waiting.await.unwrap());
        let mut late = stop.subscribe();
        assert!(late.is_shutdown());
        late.recv().await;
    }

    #[tokio::test]
    async fn a_dropped_stop_ends_the_wait() {
        let (stop, mut shutdown) = Stop::new();
        drop(stop);
        shutdown.recv().await;
        assert!(shutdown.is_shutdown());
    }
}
