//! The per-server template database (`tenants.template_db`): kept at the latest tenant migration so a new tenant
//! is one `CREATE DATABASE ... TEMPLATE` (tens of milliseconds) instead of a fresh database plus every migration.
//!
//! Locking: cloning needs nobody connected to the template, so the template is `ALLOW_CONNECTIONS false` except
//! while it is migrated, and every user of it takes an advisory lock in the server's `postgres` database: shared to
//! clone (clones may run in parallel), exclusive to create or migrate it.
//!
//! Ownership: template objects are created as the NOLOGIN role `<prefix>owner`; after a clone, `REASSIGN OWNED`
//! hands everything in the new database to the tenant's own role, which so owns its schema objects.

use deadpool_postgres::tokio_postgres::Client;

use super::TenantError;
use super::cluster::{
    admin_connect, close_to_public, create_database_from, database_exists, ensure_nologin_role,
};
use super::migrate::{MigrateOutcome, MigrationSet, migrate_with};
use crate::db::{PgTarget, lock_key, quote_ident};

/// Names on one server derived from the configuration.
#[derive(Debug, Clone)]
pub struct TemplateDbNames {
    pub template_db: String,
    /// Owner of the template's objects until a clone hands them to the tenant.
    pub owner_role: String,
}

impl TemplateDbNames {
    pub fn new(prefix: &str, template_db: &str) -> Self {
        Self {
            template_db: template_db.to_owned(),
            owner_role: format!("{prefix}owner"),
        }
    }

    fn lock(&self) -> i64 {
        lock_key(&format!("mandant.template:{}", self.template_db))
    }
}

/// Creates the template database if missing and migrates it to the latest tenant migration. Returns what the
/// migration did. `admin` is the server's maintenance database as an administrator.
pub async fn ensure_template(
    admin: &PgTarget,
    names: &TemplateDbNames,
    set: &MigrationSet,
) -> Result<MigrateOutcome, TenantError> {
    let conn = admin_connect(admin).await?;
    conn.execute("SELECT pg_advisory_lock($1)", &[&names.lock()])
        .await
        .map_err(TenantError::postgres("locking the template database"))?;
    let result = prepare(&conn, admin, names, set).await;
    // Always make the template clonable again, even after a failed migration.
    let closed = conn
        .batch_execute(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false IS_TEMPLATE true",
            quote_ident(&names.template_db)
        ))
        .await;
    let _ = conn
        .execute("SELECT pg_advisory_unlock($1)", &[&names.lock()])
        .await;
    let outcome = result?;
    if let Err(e) = closed
        && database_exists(&conn, &names.template_db).await?
    {
        return Err(TenantError::postgres("closing the template database")(e));
    }
    Ok(outcome)
}

async fn prepare(
    conn: &Client,
    admin: &PgTarget,
    names: &TemplateDbNames,
    set: &MigrationSet,
) -> Result<MigrateOutcome, TenantError> {
    ensure_nologin_role(conn, &names.owner_role).await?;
    if !database_exists(conn, &names.template_db).await? {
        create_database_from(conn, &names.template_db, "template0").await?;
        tracing::info!(template = %names.template_db, "created the template database");
    }
    // Only mandant's administrator ever connects to the template (to migrate it); tenant roles never do.
    close_to_public(conn, &[&names.template_db]).await?;
    conn.batch_execute(&format!(
        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
        quote_ident(&names.template_db)
    ))
    .await
    .map_err(TenantError::postgres("opening the template database"))?;
    let target = admin.with_dbname(&names.template_db);
    {
        let template = target
            .connect()
            .await
            .map_err(TenantError::postgres("connecting to the template database"))?;
        template
            .batch_execute(&format!(
                "GRANT USAGE, CREATE ON SCHEMA public TO {}",
                quote_ident(&names.owner_role)
            ))
            .await
            .map_err(TenantError::postgres(
                "granting the template owner its schema",
            ))?;
    }
    let outcome = migrate_with(&target, Some(&names.owner_role), set)
        .await
        .map_err(|f| f.error)?;
    if !outcome.applied.is_empty() {
        tracing::info!(template = %names.template_db, from = outcome.from, to = outcome.to, "migrated the template database");
    }
    Ok(outcome)
}

/// Clones a tenant database from the template (shared lock: clones run in parallel, never during a template
/// migration). True if created, false if it existed already.
pub async fn clone_from_template(
    conn: &Client,
    names: &TemplateDbNames,
    database: &str,
) -> Result<bool, TenantError> {
    conn.execute("SELECT pg_advisory_lock_shared($1)", &[&names.lock()])
        .await
        .map_err(TenantError::postgres("locking the template database"))?;
    let result = create_database_from(conn, database, &names.template_db).await;
    let _ = conn
        .execute("SELECT pg_advisory_unlock_shared($1)", &[&names.lock()])
        .await;
    result
}

/// Hands every object in a fresh clone from the template owner to the tenant role. Idempotent.
pub async fn hand_over(
    database: &PgTarget,
    names: &TemplateDbNames,
    tenant_role: &str,
) -> Result<(), TenantError> {
    let conn = database
        .connect()
        .await
        .map_err(TenantError::postgres(format!(
            "connecting to {}",
            database.dbname()
        )))?;
    conn.batch_execute(&format!(
        "REASSIGN OWNED BY {owner} TO {tenant}; GRANT USAGE, CREATE ON SCHEMA public TO {tenant}",
        owner = quote_ident(&names.owner_role),
        tenant = quote_ident(tenant_role)
    ))
    .await
    .map_err(TenantError::postgres(format!(
        "handing {} to its role",
        database.dbname()
    )))
}
