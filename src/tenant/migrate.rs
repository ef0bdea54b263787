//! Tenant migrations (`tenant_migrations/`), applied to one database at a time with refinery.
//!
//! One code path for every use: the template database, provisioning's catch-up, and the fleet command. Each run
//! holds a session advisory lock in the target database on its own dedicated connection, so two runs (two fleet
//! commands, or a fleet command and a provisioning job) never migrate one database at once; the second waits and
//! then finds nothing to do.

use std::sync::OnceLock;

use deadpool_postgres::tokio_postgres::Client;
use refinery::Migration;
use refinery::Runner;

use super::TenantError;
use crate::db::PgTarget;
use crate::db::quote_ident;

mod embedded {
    refinery::embed_migrations!("tenant_migrations");
}

/// refinery's history table in every tenant database.
pub const HISTORY_TABLE: &str = "mandant_tenant_migrations";
/// Advisory-lock key for tenant migrations ("mandant" + 2); advisory locks are per database.
pub const LOCK_KEY: i64 = 0x6d61_6e64_616e_7402;

/// An ordered set of tenant migrations: the embedded ones, or (tests) those plus more.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    migrations: Vec<Migration>,
}

impl MigrationSet {
    /// The migrations compiled into this binary.
    pub fn embedded() -> &'static MigrationSet {
        static SET: OnceLock<MigrationSet> = OnceLock::new();
        SET.get_or_init(|| {
            let mut migrations = embedded::migrations::runner().get_migrations().clone();
            migrations.sort_by_key(|m| m.version());
            MigrationSet { migrations }
        })
    }

    /// This set plus one more migration (`V{n}__{name}`), as a newly added file would be.
    pub fn with(&self, name: &str, sql: &str) -> Result<Self, TenantError> {
        let migration = Migration::unapplied(name, sql).map_err(|e| TenantError::Migration {
            context: format!("adding migration {name}"),
            message: e.to_string(),
        })?;
        let mut migrations = self.migrations.clone();
        migrations.push(migration);
        migrations.sort_by_key(|m| m.version());
        Ok(Self { migrations })
    }

    /// The newest version in the set (0 for none).
    pub fn latest(&self) -> i32 {
        self.migrations.last().map(|m| m.version()).unwrap_or(0)
    }

    /// The newest version in the set below `version` (0 if none): where a database stood before `version` ran.
    pub fn version_before(&self, version: i32) -> i32 {
        self.migrations
            .iter()
            .map(|m| m.version())
            .filter(|v| *v < version)
            .max()
            .unwrap_or(0)
    }

    /// `V{n}__{name}` of every migration newer than `version`.
    pub fn pending_after(&self, version: i32) -> Vec<String> {
        self.migrations
            .iter()
            .filter(|m| m.version() > version)
            .map(label)
            .collect()
    }

    /// A refinery runner over this set with mandant's history table (the fleet does not use it directly; the
    /// benchmarks use it as the plain-refinery baseline).
    pub fn runner(&self) -> Runner {
        let mut runner = Runner::new(&self.migrations)
            .set_abort_divergent(true)
            .set_abort_missing(true);
        runner.set_migration_table_name(HISTORY_TABLE);
        runner
    }

    /// Compares a database's real history with this set.
    pub fn verify(&self, history: &[AppliedMigration]) -> Verification {
        let mut divergent = Vec::new();
        let mut unknown = Vec::new();
        for applied in history {
            match self
                .migrations
                .iter()
                .find(|m| m.version() == applied.version)
            {
                Some(m)
                    if m.checksum().to_string() == applied.checksum && m.name() == applied.name => {
                }
                Some(m) => divergent.push(label(m)),
                None => unknown.push(format!("V{}__{}", applied.version, applied.name)),
            }
        }
        let applied_version = history.iter().map(|a| a.version).max().unwrap_or(0);
        Verification {
            applied_version,
            pending: self
                .migrations
                .iter()
                .filter(|m| !history.iter().any(|a| a.version == m.version()))
                .map(label)
                .collect(),
            divergent,
            unknown,
        }
    }
}

fn label(m: &Migration) -> String {
    format!("V{}__{}", m.version(), m.name())
}

/// The newest tenant migration this binary knows.
pub fn latest_version() -> i32 {
    MigrationSet::embedded().latest()
}

/// One row of a database's migration history.
#[derive(Debug, Clone)]
pub struct AppliedMigration {
    pub version: i32,
    pub name: String,
    pub checksum: String,
}

/// A database's history compared with a migration set.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    /// The newest version in the database's history.
    pub applied_version: i32,
    /// Migrations of the set not applied yet.
    pub pending: Vec<String>,
    /// Applied migrations whose text (checksum) or name differs from the set: an edited file.
    pub divergent: Vec<String>,
    /// Applied migrations the set does not have (a newer binary migrated this database).
    pub unknown: Vec<String>,
}

impl Verification {
    pub fn is_clean(&self) -> bool {
        self.divergent.is_empty() && self.unknown.is_empty()
    }
}

/// What one run did to one database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrateOutcome {
    pub from: i32,
    pub to: i32,
    pub applied: Vec<String>,
}

/// A failed run: the error, and how far the database got (each migration commits on its own).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct MigrateFailure {
    pub reached: Option<i32>,
    /// The history holds an edited or unknown migration: nothing was applied, and retrying will not help.
    pub divergent: bool,
    #[source]
    pub error: TenantError,
}

/// Migrates the database `target` names (connecting as an administrator) with the embedded migrations. With
/// `run_as`, the migrations run under `SET ROLE run_as`, so the objects they create belong to that role.
pub async fn migrate_database(
    target: &PgTarget,
    run_as: Option<&str>,
) -> Result<MigrateOutcome, TenantError> {
    migrate_with(target, run_as, MigrationSet::embedded())
        .await
        .map_err(|f| f.error)
}

/// [`migrate_database`] with an explicit migration set.
pub async fn migrate_with(
    target: &PgTarget,
    run_as: Option<&str>,
    set: &MigrationSet,
) -> Result<MigrateOutcome, MigrateFailure> {
    let context = format!("migrating {}", target.dbname());
    let fail = |error: TenantError| MigrateFailure {
        reached: None,
        divergent: false,
        error,
    };
    let mut client = target
        .with_application_name("mandant-migrate")
        .connect()
        .await
        .map_err(|e| fail(TenantError::postgres(context.clone())(e)))?;
    // One round trip: the session lock (released when the connection closes, right after the run) and the role
    // whose objects the migrations create.
    let mut setup = format!("SELECT pg_advisory_lock({LOCK_KEY})");
    if let Some(role) = run_as {
        // The row-level security groups exist and the owner is in the one that sees every row (V7 names them):
        // as administrator, before becoming the owner.
        setup.push_str("; ");
        setup.push_str(&super::inner::owner_setup_sql(role));
        setup.push_str(&format!("; SET ROLE {}", quote_ident(role)));
    }
    client
        .batch_execute(&setup)
        .await
        .map_err(|e| fail(TenantError::postgres(context.clone())(e)))?;
    let result = set.runner().run_async(&mut client).await;
    drop(client);
    match result {
        // refinery refuses divergent or unknown histories, so after a successful run the database holds every
        // migration of the set: it is at the set's latest version, whatever it held before.
        Ok(report) => {
            let applied = report.applied_migrations();
            let first = applied.iter().map(|m| m.version()).min();
            Ok(MigrateOutcome {
                from: first.map_or(set.latest(), |v| set.version_before(v)),
                to: set.latest(),
                applied: applied.iter().map(label).collect(),
            })
        }
        Err(e) => {
            let (divergent, message) = explain(&e);
            Err(MigrateFailure {
                reached: e
                    .report()
                    .and_then(|r| r.applied_migrations().iter().map(|m| m.version()).max()),
                divergent,
                error: TenantError::Migration { context, message },
            })
        }
    }
}

/// A refinery error in words an operator can act on; true if the history diverges from the migration set.
fn explain(e: &refinery::Error) -> (bool, String) {
    use refinery::error::Kind;
    match e.kind() {
        Kind::DivergentVersion(applied, _) => (
            true,
            format!(
                "divergent history: the applied migration {} differs from this binary's (the file was edited after \
                 it was applied); nothing was applied",
                label(applied)
            ),
        ),
        Kind::MissingVersion(applied) => (
            true,
            format!(
                "unknown migration in the history: {} is not in this binary (a newer mandant migrated this \
                 database); nothing was applied",
                label(applied)
            ),
        ),
        Kind::Connection(message, source) => {
            let cause = source
                .downcast_ref::<deadpool_postgres::tokio_postgres::Error>()
                .map(crate::db::describe_pg_error)
                .unwrap_or_else(|| source.to_string());
            (false, format!("{message}: {cause}"))
        }
        other => (false, other.to_string()),
    }
}

/// Reads the real migration history of the database `target` names (as an administrator).
pub async fn read_history(target: &PgTarget) -> Result<Vec<AppliedMigration>, TenantError> {
    let context = format!("reading the migration history of {}", target.dbname());
    let client = target
        .with_application_name("mandant-verify")
        .connect()
        .await
        .map_err(TenantError::postgres(context.clone()))?;
    history(&client)
        .await
        .map_err(TenantError::postgres(context))
}

/// The history table's rows (none if the table does not exist yet).
async fn history(
    client: &Client,
) -> Result<Vec<AppliedMigration>, deadpool_postgres::tokio_postgres::Error> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&HISTORY_TABLE])
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT version::int4, name::text, checksum::text FROM mandant_tenant_migrations ORDER BY version",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AppliedMigration {
            version: r.get(0),
            name: r.get(1),
            checksum: r.get(2),
        })
        .collect())
}
