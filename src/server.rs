//! Assembling and running the service: the control database (external or embedded), migrations, the shared
//! state, the HTTP server, background tasks, and the ordered shutdown of `shutdown.rs`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::access::authn;
use crate::app::AppState;
use crate::config::Settings;
use crate::control::{self, CONTROL_DB};
use crate::db::PgTarget;
use crate::embedded::{Cluster, ClusterSpec};
use crate::shutdown::{CancellationToken, TaskTracker};
use crate::tenant::cluster::{admin_connect, close_to_public, ensure_database};

/// How often histogram samples are folded into the Prometheus exporter's buckets.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Where the control plane lives: the configured `database.url`, or the embedded cluster (started by this
/// process, or already running for another `mandant` process on the same data directory).
#[derive(Debug)]
pub struct ControlDatabase {
    target: PgTarget,
    cluster: Option<Cluster>,
}

impl ControlDatabase {
    /// Resolves the control database and makes sure it exists.
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let (target, cluster) = match settings.database.target()? {
            Some(target) => {
                tracing::info!(database = %target.redacted(), "using the configured control-plane database");
                (target, None)
            }
            None => {
                let spec = ClusterSpec::from_settings(settings);
                let cluster = tokio::task::spawn_blocking(move || Cluster::start(&spec))
                    .await
                    .context("the embedded PostgreSQL start task failed")??;
                (cluster.target(CONTROL_DB), Some(cluster))
            }
        };
        ensure_database(&target)
            .await
            .context("preparing the control-plane database")?;
        Ok(Self { target, cluster })
    }

    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    /// The embedded cluster, if the control plane is on one.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// Stops the embedded cluster if this process started it (the last step of every shutdown).
    pub async fn close(self) {
        if let Some(mut cluster) = self.cluster {
            let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
        }
    }
}

/// Opens the control database, applies control-plane migrations, builds the state, registers the local database
/// server and makes sure the master client gets provisioned. Shared by `serve`, `worker` and the CLI commands.
pub async fn start(settings: Settings) -> anyhow::Result<(AppState, ControlDatabase)> {
    let database = ControlDatabase::open(&settings).await?;
    let prepared = async {
        control::migrate::run(database.target()).await?;
        let state = AppState::new(settings, database.target())?;
        let capacity = state.settings().tenants.local_max_databases;
        state.control().ensure_local_server(capacity).await?;
        close_own_databases(&database, state.settings()).await?;
        let attempts = i32::from(state.settings().workers.max_attempts);
        if let Some(job) = state.control().ensure_master_provisioning(attempts).await? {
            tracing::info!(operation = %job, "the master client will be provisioned");
        }
        anyhow::Ok(state)
    };
    match prepared.await {
        Ok(state) => Ok((state, database)),
        Err(e) => {
            database.close().await;
            Err(e)
        }
    }
}

/// Closes mandant's own databases on the local server to `PUBLIC` (tenant roles must not open them): the control
/// plane, the template database and, on the embedded cluster (which is mandant's alone), `postgres` and `template1`.
/// Never other databases of a configured server, which may belong to other applications. Runs at every start, so
/// installations made before this check are repaired; a no-op when nothing is open.
async fn close_own_databases(
    database: &ControlDatabase,
    settings: &Settings,
) -> anyhow::Result<()> {
    // Through the control database itself (GRANT/REVOKE ON DATABASE works from any database of the server), so
    // a configured server needs nothing more than before.
    let admin = admin_connect(database.target()).await?;
    let mut own = vec![
        database.target().dbname(),
        settings.tenants.template_db.as_str(),
    ];
    if database.cluster().is_some() {
        own.extend(["postgres", "template1"]);
    }
    let closed = close_to_public(&admin, &own).await?;
    if !closed.is_empty() {
        tracing::info!(databases = ?closed, "revoked CONNECT and TEMP from PUBLIC");
    }
    Ok(())
}

/// Options of `serve` that are not configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Serve HTTP only; leave background work to separate `mandant worker` processes.
    pub no_workers: bool,
}

/// A built, bound, not yet running service.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    database: ControlDatabase,
    options: RunOptions,
}

impl Application {
    /// Opens the control database (starting the embedded cluster if configured so), applies control-plane
    /// migrations, registers the local database server, makes sure the built-in roles and a first admin exist,
    /// and binds the listener.
    pub async fn build(settings: Settings, options: RunOptions) -> anyhow::Result<Self> {
        let listen = settings.server.listen;
        let (state, database) = start(settings).await?;
        let bound = async {
            authn::bootstrap(state.control(), state.settings()).await?;
            TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding server.listen = {listen}"))
        };
        match bound.await {
            Ok(listener) => Ok(Self {
                listener,
                state,
                database,
                options,
            }),
            Err(e) => {
                state.control().close().await;
                database.close().await;
                Err(e)
            }
        }
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `stop` resolves, then shuts down in the order documented in `shutdown.rs`.
    pub async fn run_until(self, stop: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            database,
            options,
        } = self;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, console = %format!("http://{addr}/console/"), "listening");

        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        spawn_background(&state, &cancel, &tasks, options);
        // Principal-cache invalidation for this HTTP server.
        tasks.spawn(
            state
                .auth()
                .clone()
                .listen(state.settings().workers.poll_interval(), cancel.clone()),
        );

        let http_stop = CancellationToken::new();
        let service = crate::http::router(state.clone());
        let server = axum::serve(listener, axum::ServiceExt::into_make_service(service))
            .with_graceful_shutdown(http_stop.clone().cancelled_owned())
            .into_future();
        let mut server = tokio::spawn(server);

        let served = tokio::select! {
            result = &mut server => Some(result),
            () = stop => None,
        };

        // 1. Stop accepting; give in-flight requests the grace period. Whatever happened to the HTTP server, the
        //    rest of the shutdown runs (no early return before step 4).
        http_stop.cancel();
        let finished = match served {
            Some(result) => Some(result),
            None => {
                let grace = state.settings().server.shutdown_grace();
                match tokio::time::timeout(grace, &mut server).await {
                    Ok(result) => Some(result),
                    Err(_) => {
                        tracing::warn!(
                            ?grace,
                            "in-flight requests did not finish in time; dropping them"
                        );
                        server.abort();
                        None
                    }
                }
            }
        };
        let result = match finished {
            Some(Ok(served)) => served.context("HTTP server failed"),
            Some(Err(joined)) => Err(anyhow::Error::new(joined).context("HTTP server task failed")),
            None => Ok(()),
        };

        // 2.-4.
        stop_background_and_close(&state, cancel, tasks, database).await;
        result
    }
}

/// `mandant worker`: the background workers without HTTP, until `stop` resolves.
pub async fn run_workers(
    settings: Settings,
    stop: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (state, database) = start(settings).await?;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    spawn_background(&state, &cancel, &tasks, RunOptions { no_workers: false });
    stop.await;
    stop_background_and_close(&state, cancel, tasks, database).await;
    Ok(())
}

/// Steps 2-4 of the shutdown order (`shutdown.rs`): background tasks, pools, embedded cluster.
async fn stop_background_and_close(
    state: &AppState,
    cancel: CancellationToken,
    tasks: TaskTracker,
    database: ControlDatabase,
) {
    // 2. Cancel background tasks and wait for each of them (a job in flight is handed back).
    cancel.cancel();
    tasks.close();
    tasks.wait().await;

    // 3. Close pools: tenant connections first, then the control plane (nothing may use it after this).
    state.pools().close();
    state.control().close().await;

    // 4. Stop the embedded cluster if we started it.
    database.close().await;
    tracing::info!("shutdown complete");
}

/// Starts the background loops of this process on `tasks`, all stopped by `cancel`.
fn spawn_background(
    state: &AppState,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
    options: RunOptions,
) {
    let metrics = state.metrics().clone();
    let token = cancel.clone();
    tasks.spawn(async move {
        crate::shutdown::every(METRICS_UPKEEP_INTERVAL, &token, || {
            metrics.run_upkeep();
            std::future::ready(())
        })
        .await
    });
    // The route cache follows the clients channel (it serves only while this listener is up).
    let data = state.data().clone();
    let (retry, token) = (state.settings().workers.poll_interval(), cancel.clone());
    tasks.spawn(async move { data.listen(retry, token).await });
    // When the routing pool last served each client (the overview's `last_served_at`).
    let data = state.data().clone();
    let (every, token) = (state.settings().workers.served_flush(), cancel.clone());
    tasks.spawn(async move { data.record_served(every, token).await });
    // Routing-pool hygiene: idle TTL, max lifetime, unused pools; and its gauges.
    let pools = state.pools().clone();
    let every = state.settings().routing.gc_interval();
    let token = cancel.clone();
    tasks.spawn(async move {
        crate::shutdown::every(every, &token, || {
            pools.collect_garbage();
            pools.publish_metrics();
            std::future::ready(())
        })
        .await
    });
    if options.no_workers {
        tracing::info!("--no-workers: background jobs are left to `mandant worker` processes");
    } else {
        crate::workers::spawn(state, tasks, cancel);
    }
}
