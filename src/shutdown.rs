//! Shutdown: the signals that start it and the order in which the parts stop.
//!
//! The order, used by `serve` (see [`crate::app::Application::run_until`]):
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

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
