//! DDL on a whole database server: databases and roles. Each statement runs alone, outside any transaction
//! (`CREATE DATABASE` refuses to run in one), and is idempotent so a retried step changes nothing.

use deadpool_postgres::tokio_postgres::error::SqlState;

use super::TenantError;
use crate::db::PgTarget;

/// Quotes an SQL identifier: wraps it in double quotes and doubles any inside.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Makes sure the database `target` names exists, creating it through the same server's `postgres` database
/// when it does not. Returns true if it was created. Safe to run from several processes at once.
pub async fn ensure_database(target: &PgTarget) -> Result<bool, TenantError> {
    match target.connect().await {
        Ok(_) => return Ok(false),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {}
        Err(e) => {
            return Err(TenantError::postgres(format!(
                "connecting to {}",
                target.redacted()
            ))(e));
        }
    }
    let admin = target.with_dbname("postgres");
    let client = admin
        .connect()
        .await
        .map_err(TenantError::postgres(format!(
            "connecting to {}",
            admin.redacted()
        )))?;
    let sql = format!("CREATE DATABASE {}", quote_ident(target.dbname()));
    match client.batch_execute(&sql).await {
        Ok(()) => {
            tracing::info!(database = target.dbname(), "created database");
            Ok(true)
        }
        // Another process created it between our check and our CREATE (42P04, or 23505 on pg_database's
        // unique index when both CREATEs ran at the same moment).
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(false)
        }
        Err(e) => Err(TenantError::postgres(format!(
            "creating database {}",
            target.dbname()
        ))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_ident_doubles_embedded_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("plain"), "\"plain\"");
    }
}
