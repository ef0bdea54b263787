//! What a database needs to hold inner clients (tenant migration V7 and DESIGN of issue #19): the two cluster-wide
//! group roles the row-level security policies name, the tenant's second login role (`<tenant role>_rls`: owns
//! nothing, neither superuser nor `BYPASSRLS`, a member of [`INNER_GROUP`] only), and the work on existing rows
//! that no migration may do inside its transaction (the stored lower-case e-mail filled in batches, its index and
//! the membership index built `CONCURRENTLY`).
//!
//! Every step is idempotent: provisioning runs it on a fresh database (instant), the `prepare_inner` job on an
//! existing one (batches of [`BACKFILL_BATCH`] rows, each its own short transaction).

use deadpool_postgres::tokio_postgres::Client;
use deadpool_postgres::tokio_postgres::error::SqlState;

use super::TenantError;
use super::cluster::ensure_nologin_role;
use crate::db::{Secret, quote_ident, quote_literal};

/// The group whose members see every row (each tenant's own role: the parent, DDL, fan-out).
pub const PARENT_GROUP: &str = "mandant_rls_parent";
/// The group whose members see one inner client's slice (each tenant's second role).
pub const INNER_GROUP: &str = "mandant_rls_inner";
/// Rows per backfill statement.
pub const BACKFILL_BATCH: i64 = 10_000;

/// The second role of a tenant database, used by inner clients' requests.
pub fn inner_role(tenant_role: &str) -> String {
    format!("{tenant_role}_rls")
}

/// The two group roles (NOLOGIN, no privileges of their own but the tables' grants of V7). Idempotent, safe in
/// parallel. Run on a server before any tenant migration (tenant migration V7 names them).
pub async fn ensure_groups(admin: &Client) -> Result<(), TenantError> {
    ensure_nologin_role(admin, PARENT_GROUP).await?;
    ensure_nologin_role(admin, INNER_GROUP).await
}

/// SQL run as administrator before migrating a database as `owner`: the groups exist and the owner sees every row
/// of its tables (it is a member of [`PARENT_GROUP`] and inherits its policies).
pub fn owner_setup_sql(owner: &str) -> String {
    let group = |name: &str| {
        format!(
            "DO $$ BEGIN CREATE ROLE {} NOLOGIN; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
            quote_ident(name)
        )
    };
    format!(
        "{}; {}; ALTER ROLE {owner} INHERIT; GRANT {parent} TO {owner}",
        group(PARENT_GROUP),
        group(INNER_GROUP),
        owner = quote_ident(owner),
        parent = quote_ident(PARENT_GROUP),
    )
}

/// Makes `owner` a member of the parent group (a fresh clone's role, which no migration ran as yet).
pub async fn ensure_owner(admin: &Client, owner: &str) -> Result<(), TenantError> {
    admin
        .batch_execute(&owner_setup_sql(owner))
        .await
        .map_err(TenantError::postgres(format!(
            "letting {owner} see every row"
        )))
}

/// Creates (or resets the password of) the tenant's second role: it may log in, connect to and make temporary
/// tables in its database, and is a member of [`INNER_GROUP`] only. `verifier` is the SCRAM verifier of its
/// derived password.
pub async fn ensure_inner_role(
    admin: &Client,
    database: &str,
    role: &str,
    verifier: &Secret,
    login: bool,
) -> Result<(), TenantError> {
    ensure_groups(admin).await?;
    let login = if login { "LOGIN" } else { "NOLOGIN" };
    let create = format!(
        "CREATE ROLE {} {login} INHERIT NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD {}",
        quote_ident(role),
        quote_literal(verifier.expose())
    );
    match admin.batch_execute(&create).await {
        Ok(()) => {}
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_OBJECT)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            let alter = format!(
                "ALTER ROLE {} {login} INHERIT NOSUPERUSER NOBYPASSRLS PASSWORD {}",
                quote_ident(role),
                quote_literal(verifier.expose())
            );
            admin
                .batch_execute(&alter)
                .await
                .map_err(TenantError::postgres(format!("updating role {role}")))?;
        }
        Err(e) => return Err(TenantError::postgres(format!("creating role {role}"))(e)),
    }
    let grants = format!(
        "GRANT {group} TO {role}; GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}",
        group = quote_ident(INNER_GROUP),
        role = quote_ident(role),
        db = quote_ident(database),
    );
    admin
        .batch_execute(&grants)
        .await
        .map_err(TenantError::postgres(format!(
            "granting {role} its database"
        )))
}

/// Fills in `mandant_email_lower` for rows written before tenant migration V7 (batches, each its own statement:
/// no lock held for long) and builds the indexes the inner clients' policies and lookups use, `CONCURRENTLY`.
/// `db` is the tenant's database as its owner or an administrator. Returns the rows updated.
pub async fn prepare(db: &Client) -> Result<u64, TenantError> {
    let mut updated = 0u64;
    loop {
        let n = db
            .execute(
                "UPDATE recipients SET mandant_email_lower = lower(email)
                 WHERE id IN (SELECT id FROM recipients WHERE mandant_email_lower IS NULL LIMIT $1)",
                &[&BACKFILL_BATCH],
            )
            .await
            .map_err(TenantError::postgres("filling in the lower-case e-mail addresses"))?;
        updated += n;
        if n == 0 {
            break;
        }
    }
    ensure_index(
        db,
        "recipients_mandant_email_lower",
        "CREATE UNIQUE INDEX CONCURRENTLY recipients_mandant_email_lower \
         ON recipients (mandant_email_lower text_pattern_ops)",
    )
    .await?;
    ensure_index(
        db,
        "recipients_mandant_inner",
        "CREATE INDEX CONCURRENTLY recipients_mandant_inner ON recipients USING gin (mandant_inner)",
    )
    .await?;
    Ok(updated)
}

/// Builds an index `CONCURRENTLY` unless a valid one exists; an invalid leftover of an interrupted build is
/// dropped first.
async fn ensure_index(db: &Client, name: &str, create: &str) -> Result<(), TenantError> {
    let valid: Option<bool> = db
        .query_opt(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE c.relname = $1 AND c.relnamespace = 'public'::regnamespace",
            &[&name],
        )
        .await
        .map_err(TenantError::postgres("looking up an index"))?
        .map(|row| row.get(0));
    match valid {
        Some(true) => return Ok(()),
        Some(false) => db
            .batch_execute(&format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {}",
                quote_ident(name)
            ))
            .await
            .map_err(TenantError::postgres(format!(
                "dropping the invalid index {name}"
            )))?,
        None => {}
    }
    db.batch_execute(create)
        .await
        .map_err(TenantError::postgres(format!("building the index {name}")))
}
