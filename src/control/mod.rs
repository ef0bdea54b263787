//! The persistence layer: the only code that issues SQL against the control-plane database.
//!
//! What is stored durably here: the registry of database servers and clients (desired state, e.g. which schema
//! version a tenant should have and where it lives), the job queue, and later users, roles, access, field and
//! template definitions and the audit log. What is not: anything observed that can be re-read from a tenant
//! database cheaply, pools, caches. Every query is a named method; callers never see SQL or `sqlx` types.
//!
//! The schema is in `control_migrations/` and is applied by [`migrate::run`] under an advisory lock.

pub mod access;
pub mod clients;
pub mod fields;
pub mod jobs;
pub mod listen;
pub mod migrate;
pub mod moves;
pub mod retention;
pub mod servers;
pub mod stats;
pub mod target_groups;
pub mod templates;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseSettings;
use crate::db::PgTarget;
use crate::domain::ClientStatus;

/// Name of the control-plane database on the embedded cluster.
pub const CONTROL_DB: &str = "mandant";
/// The database server registered for the cluster that also holds the control plane.
pub const LOCAL_SERVER: &str = "local";
/// The channel `NOTIFY`d when a job is enqueued.
pub const JOBS_CHANNEL: &str = "mandant_jobs";
/// Notified by a trigger (`V5__client_events.sql`) whenever a client's status, server or database changes;
/// payload `<client id> <status> <slug>`.
pub const CLIENTS_CHANNEL: &str = "mandant_clients";
/// How long the readiness probe waits for the control plane.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the control plane is unavailable: {0}")]
    Unavailable(String),
    #[error("control-plane query failed: {0}")]
    Query(#[source] sqlx::Error),
    #[error("control-plane migration failed: {0}")]
    Migration(String),
    #[error("not found")]
    NotFound,
    #[error("the slug is taken by another live client")]
    SlugTaken,
    #[error("the parent client does not exist")]
    UnknownParent,
    #[error("the parent client is an inner client")]
    ParentIsInner,
    #[error("the parent client's database is not ready for inner clients yet")]
    ParentNotReady,
    #[error("the parent client is {0:?}, not active")]
    ParentNotActive(ClientStatus),
    #[error("the client is {current:?}; {action} needs it to be {allowed}")]
    InvalidState {
        current: ClientStatus,
        action: &'static str,
        allowed: &'static str,
    },
    #[error("the master client cannot be {0}")]
    IsMaster(&'static str),
    #[error("the client still has {0} live sub-client(s)")]
    HasChildren(i64),
    /// No server can take a new client; the text says why (safe to show).
    #[error("{0}")]
    NoServerAvailable(String),
    #[error("a database server of this name is registered already")]
    ServerNameTaken,
    #[error("the database server holds {0} live client(s)")]
    ServerInUse(i64),
    #[error("the local server holds the control plane and cannot be removed")]
    ServerIsLocal,
    #[error("a central field has this name")]
    FieldIsCentral,
    #[error("the client has its quota of {0} fields")]
    FieldQuota(i64),
    #[error("clients have an own field of this name: {}", .0.join(", "))]
    FieldTakenByClients(Vec<String>),
    #[error("a field of this name exists already")]
    FieldExists,
    #[error("the username is taken")]
    UsernameTaken,
    #[error("a role of this name exists already")]
    RoleNameTaken,
    /// The role is held (by anyone: the count is not told, holders may be invisible to the caller).
    #[error("the role is held by users")]
    RoleInUse,
    #[error("built-in roles cannot be changed or deleted")]
    BuiltinRole,
    #[error("unknown role(s): {}", .0.join(", "))]
    UnknownRoles(Vec<String>),
    #[error("the last active master admin cannot be disabled, deleted or lose the role")]
    LastMasterAdmin,
    #[error("the acting user no longer holds everything the user it acts on holds")]
    NotDominated,
    #[error("a cross-client target group of this name exists already")]
    GroupNameTaken,
    /// A client's retention override looser than the master's rule.
    #[error(transparent)]
    RetentionLooser(#[from] crate::domain::retention::LooserThanMaster),
}

impl From<sqlx::Error> for ControlError {
    fn from(e: sqlx::Error) -> Self {
        let unavailable = match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                // 08: connection exception; 57P0x: shutdown/crash/cannot connect now; 53300: too many
                // connections; 28: authentication; 3D000: database missing; 55000: database not accepting
                // connections. None of these can come from a control-plane query on an open connection.
                c.starts_with("08")
                    || c.starts_with("57P0")
                    || c.starts_with("28")
                    || matches!(c.as_ref(), "53300" | "3D000" | "55000")
            }),
            _ => false,
        };
        if unavailable {
            Self::Unavailable(e.to_string())
        } else {
            Self::Query(e)
        }
    }
}

/// A handle on the control plane; cheap to clone.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    pool: PgPool,
}

impl ControlPlane {
    /// A lazily connecting pool: start-up does not fail here if the database is briefly away, `/readyz` says so.
    pub fn connect_lazy(target: &PgTarget, settings: &DatabaseSettings) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout())
            .connect_lazy_with(
                target
                    .with_application_name("mandant-control")
                    .sqlx_options(),
            );
        Self { pool }
    }

    /// Round trip to the control plane, bounded by [`PING_TIMEOUT`].
    pub async fn ping(&self) -> Result<(), ControlError> {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(PING_TIMEOUT, query).await {
            Ok(result) => result.map(|_| ()).map_err(ControlError::from),
            Err(_) => Err(ControlError::Unavailable(format!(
                "no answer within {PING_TIMEOUT:?}"
            ))),
        }
    }

    /// Closes the pool: waits for checked-out connections to come back, then closes them.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
