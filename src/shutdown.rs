//! Shutdown: the signals that start it and the order in which the parts stop.
//!
//! The order, used by `serve` (see [`crate::server::Application::run_until`]):
//! 1. stop accepting connections; in-flight HTTP requests get `server.shutdown_grace_secs` to finish, then are
//!    dropped (a request cut off there rolls back: every handler's work is one transaction or an idempotent job);
//! 2. cancel background tasks (workers, metrics upkeep) through one [`CancellationToken`] and wait for every one
//!    of them on the [`TaskTracker`]: a worker finishes or abandons its current step, and a job it abandoned is
//!    picked up again after its lease expires;
//! 3. close pools: tenant pools, then the control-plane pool (nothing may use it after this);
//! 4. stop the embedded PostgreSQL cluster, if this process started it.
//!
//! Each step only begins when the one before it has ended, so no part outlives what it depends on.

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Runs `tick` every `period` (the first at once; a late tick delays the next ones rather than bursting) until
/// `cancel`, which also cuts a running tick short: the shape of every periodic background task (metrics upkeep,
/// pool hygiene, last-served times, statistics).
pub async fn every<F, Fut>(period: std::time::Duration, cancel: &CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = cancel.cancelled() => return,
        }
        tokio::select! {
            () = tick() => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: a signal that arrives while the service starts (before `listening` is logged and
/// the future awaited) still shuts it down in order instead of killing it.
pub fn signal() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal as install};
    let interrupt = install(SignalKind::interrupt());
    let terminate = install(SignalKind::terminate());
    async move {
        let wait = |stream: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match stream {
                Ok(mut stream) => {
                    stream.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, signal = name, "cannot listen for the signal");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(interrupt, "SIGINT") => tracing::info!("SIGINT received; shutting down"),
            () = wait(terminate, "SIGTERM") => tracing::info!("SIGTERM received; shutting down"),
        }
    }
}
