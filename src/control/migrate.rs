//! Applies `control_migrations/` with refinery under a session advisory lock.
//!
//! refinery takes no lock of its own: two runners on one database race on its history table (23505). We hold
//! `pg_advisory_lock` on a dedicated connection (not a pooled one, which could be returned still holding it) for
//! the whole run, so concurrent `mandant migrate` / `serve` starts queue up and the later ones find nothing to do.

use deadpool_postgres::tokio_postgres;

use super::ControlError;
use crate::db::{PgTarget, describe_pg_error};

mod embedded {
    refinery::embed_migrations!("control_migrations");
}

/// The advisory-lock key for control-plane migrations ("mandant" + 1). Advisory locks are per database.
pub const LOCK_KEY: i64 = 0x6d61_6e64_616e_7401;
/// refinery's history table in the control database.
pub const HISTORY_TABLE: &str = "mandant_control_migrations";

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationReport {
    /// `V{n}__{name}` of each migration applied by this run, in order.
    pub applied: Vec<String>,
    /// The newest migration version known to this binary.
    pub latest: i32,
}

pub fn latest_version() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0)
}

pub async fn run(target: &PgTarget) -> Result<MigrationReport, ControlError> {
    let pg = |context: &'static str| {
        move |e: tokio_postgres::Error| {
            ControlError::Migration(format!("{context}: {}", describe_pg_error(&e)))
        }
    };
    let mut client = target
        .with_application_name("mandant-migrate")
        .connect()
        .await
        .map_err(|e| ControlError::Unavailable(describe_pg_error(&e)))?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(pg("taking the migration lock"))?;
    let mut runner = embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true);
    runner.set_migration_table_name(HISTORY_TABLE);
    let result = runner.run_async(&mut client).await;
    // Dropping the connection would release the lock too; unlocking explicitly makes the order obvious.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let report = result.map_err(|e| ControlError::Migration(e.to_string()))?;
    let applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect();
    for name in &applied {
        tracing::info!(migration = %name, "applied control-plane migration");
    }
    Ok(MigrationReport {
        applied,
        latest: latest_version(),
    })
}
