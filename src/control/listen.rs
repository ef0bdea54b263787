//! One way to follow the control plane's notifications: a `LISTEN` connection that reconnects after errors and
//! pings itself, so a half-open connection (where `recv` would wait forever while notifications are lost) is
//! noticed. Caches that are invalidated by notifications (the principal cache, the route cache) serve only while
//! their listener says it is up, and start clean each time it comes back.

use std::time::Duration;

use sqlx::postgres::PgListener;

use super::ControlPlane;
use crate::shutdown::CancellationToken;

/// How often a listening connection is checked with a round trip.
const PING_EVERY: Duration = Duration::from_secs(10);
/// How long that round trip may take before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// What a listener reports.
pub trait Listening: Send + Sync {
    /// The listener is connected and listening: changes from now on will be notified.
    fn up(&self);
    /// A notification arrived on one of the channels.
    fn notified(&self, channel: &str, payload: &str);
    /// The listener lost its connection: notifications may be missed until it is up again.
    fn down(&self);
}

impl ControlPlane {
    /// LISTENs on `channels` until cancelled, reporting to `to`; reconnects every `retry` after errors.
    pub async fn listen(
        &self,
        channels: &[&str],
        what: &'static str,
        to: &impl Listening,
        retry: Duration,
        cancel: CancellationToken,
    ) {
        while !cancel.is_cancelled() {
            let connected = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                // Never reconnect behind our back (see below): a lost connection ends this listener.
                listener.eager_reconnect(false);
                let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut listener)
                    .await?;
                listener.listen_all(channels.iter().copied()).await?;
                Ok::<_, sqlx::Error>((listener, backend))
            }
            .await;
            let (mut listener, backend) = match connected {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::debug!(listener = what, error = %e, "cannot listen; the cache is off meanwhile");
                    tokio::select! {
                        () = tokio::time::sleep(retry) => continue,
                        () = cancel.cancelled() => break,
                    }
                }
            };
            to.up();
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.reset();
            loop {
                tokio::select! {
                    // `try_recv`, not `recv`: `recv` reconnects and listens again by itself when the connection
                    // ends, silently, so notifications sent in between would be lost while the cache kept
                    // serving. `Ok(None)` is that lost connection: report it, and start over clean.
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => {
                            to.notified(notification.channel(), notification.payload())
                        }
                        Ok(None) => {
                            tracing::debug!(listener = what, "lost the listening connection");
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(listener = what, error = %e, "lost the listening connection");
                            break;
                        }
                    },
                    _ = ping.tick() => {
                        // The same backend must answer: a query on a lost listener would reconnect it silently.
                        let alive = tokio::time::timeout(
                            PING_TIMEOUT,
                            sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&mut listener),
                        )
                        .await;
                        if !matches!(alive, Ok(Ok(pid)) if pid == backend) {
                            tracing::warn!(listener = what, "the listening connection stopped answering; the cache is off until it is back");
                            break;
                        }
                    }
                    () = cancel.cancelled() => break,
                }
            }
            to.down();
        }
    }
}
