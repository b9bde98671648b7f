//! Database work beside async code (feature `tokio`): redb commits and reads run on tokio's
//! blocking threads, so that they never stall the tasks that receive messages. The service and
//! the rebuild both use this one copy, so that a panic there is carried on the same way
//! everywhere.

use tokio::task::JoinHandle;

/// A task's result, with a panic in it carried on as a panic rather than turned into an error.
pub async fn joined<T>(task: JoinHandle<T>) -> T {
    task.await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
}

/// Runs database work on a blocking thread and waits for it.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::Error> + Send + 'static,
) -> Result<T, crate::Error> {
    joined(tokio::task::spawn_blocking(f)).await
}
