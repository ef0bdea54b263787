//! Tenant migrations (`tenant_migrations/`), applied to one database at a time with refinery.
//!
//! One code path for every use: the template database, provisioning's catch-up, and (later) the fleet command.
//! Each run holds a session advisory lock in the target database on its own dedicated connection, so two runs
//! (two fleet commands, or a fleet command and a provisioning job) never migrate one database at once; the
//! second waits and then finds nothing to do.

use super::TenantError;
use super::cluster::quote_ident;
use crate::db::PgTarget;

mod embedded {
    refinery::embed_migrations!("tenant_migrations");
}

/// refinery's history table in every tenant database.
pub const HISTORY_TABLE: &str = "mandant_tenant_migrations";
/// Advisory-lock key for tenant migrations ("mandant" + 2); advisory locks are per database.
pub const LOCK_KEY: i64 = 0x6d61_6e64_616e_7402;

/// The newest tenant migration this binary knows.
pub fn latest_version() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0)
}

/// What one run did to one database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrateOutcome {
    pub from: i32,
    pub to: i32,
    pub applied: Vec<String>,
}

/// Migrates the database `target` names (connecting as an administrator). With `run_as`, the migrations run
/// under `SET ROLE run_as`, so the objects they create belong to that role.
pub async fn migrate_database(
    target: &PgTarget,
    run_as: Option<&str>,
) -> Result<MigrateOutcome, TenantError> {
    let context = format!("migrating {}", target.dbname());
    let mut client = target
        .with_application_name("mandant-migrate")
        .connect()
        .await
        .map_err(TenantError::postgres(context.clone()))?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(TenantError::postgres(context.clone()))?;
    if let Some(role) = run_as {
        client
            .batch_execute(&format!("SET ROLE {}", quote_ident(role)))
            .await
            .map_err(TenantError::postgres(context.clone()))?;
    }
    let from = applied_version(&client)
        .await
        .map_err(TenantError::postgres(context.clone()))?;
    let mut runner = embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true);
    runner.set_migration_table_name(HISTORY_TABLE);
    let result = runner.run_async(&mut client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let report = result.map_err(|e| TenantError::Migration {
        context: context.clone(),
        message: e.to_string(),
    })?;
    let applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect();
    let to = report
        .applied_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(from)
        .max(from);
    Ok(MigrateOutcome { from, to, applied })
}

/// The newest version in the database's history table (0 if it has none yet).
async fn applied_version(
    client: &deadpool_postgres::tokio_postgres::Client,
) -> Result<i32, deadpool_postgres::tokio_postgres::Error> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&HISTORY_TABLE])
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0)::int4 FROM mandant_tenant_migrations",
            &[],
        )
        .await?;
    Ok(row.get(0))
}
