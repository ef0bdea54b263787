//! DDL on a whole database server: databases and roles. Each statement runs alone, outside any transaction
//! (`CREATE DATABASE` refuses to run in one), and is idempotent so a retried step changes nothing.

use deadpool_postgres::tokio_postgres::Client;
use deadpool_postgres::tokio_postgres::error::SqlState;

use super::TenantError;
use crate::db::{PgTarget, Secret, quote_ident, quote_literal};

/// Makes sure the database `target` names exists, creating it through the same server's `postgres` database
/// when it does not. Returns true if it was created. Safe to run from several processes at once.
pub async fn ensure_database(target: &PgTarget) -> Result<bool, TenantError> {
    match target.connect().await {
        Ok(_) => return Ok(false),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {}
        Err(e) => {
            return Err(TenantError::postgres(format!(
                "connecting to database {}",
                target.dbname()
            ))(e));
        }
    }
    let admin = target.with_dbname("postgres");
    let client = admin.connect().await.map_err(TenantError::postgres(
        "connecting to the database server as administrator",
    ))?;
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

/// Opens an admin connection to the server's maintenance database.
pub async fn admin_connect(admin: &PgTarget) -> Result<Client, TenantError> {
    // The error text reaches `GET /v1/operations`: it names no user, host or socket path.
    admin.connect().await.map_err(TenantError::postgres(
        "connecting to the database server as administrator",
    ))
}

/// The size on disk of these databases (those that exist), by name.
pub async fn database_sizes(
    admin: &Client,
    names: &[String],
) -> Result<std::collections::HashMap<String, i64>, TenantError> {
    let rows = admin
        .query(
            "SELECT datname::text, pg_database_size(oid) FROM pg_database WHERE datname = ANY($1::text[])",
            &[&names],
        )
        .await
        .map_err(TenantError::postgres("reading database sizes"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The SCRAM-SHA-256 verifier of a password (what PostgreSQL stores; the clear password is never sent), with
/// `iterations` rounds of PBKDF2. Both the server and every client that logs in pay for the rounds on each new
/// connection; stretching protects guessable passwords, and tenant passwords are 256-bit HMAC outputs, so a
/// low count (`tenants.scram_iterations`) costs no security and makes every tenant connection cheaper.
pub fn scram_verifier(password: &Secret, iterations: u32) -> Secret {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{KeyInit, Mac};
    use sha2::Digest;
    type HmacSha256 = hmac::Hmac<sha2::Sha256>;
    let hmac = |key: &[u8], parts: &[&[u8]]| {
        let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes()
    };
    // Tenant passwords are hex (SASLprep leaves them as they are). Hi() of RFC 5802: PBKDF2-HMAC-SHA-256.
    let password = password.expose().as_bytes();
    let salt: [u8; 16] = rand::random();
    let mut u = hmac(password, &[&salt, &1u32.to_be_bytes()]);
    let mut salted = u;
    for _ in 1..iterations.max(1) {
        u = hmac(password, &[&u]);
        for (s, b) in salted.iter_mut().zip(u.iter()) {
            *s ^= b;
        }
    }
    let client_key = hmac(&salted, &[b"Client Key"]);
    let stored_key = sha2::Sha256::digest(client_key);
    let server_key = hmac(&salted, &[b"Server Key"]);
    Secret::new(format!(
        "SCRAM-SHA-256${}:{}${}:{}",
        iterations.max(1),
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    ))
}

/// Creates a role that may log in with the password whose SCRAM `verifier` is given (so the clear password never
/// reaches the server or its logs), or resets login and password if it exists. Idempotent.
pub async fn ensure_login_role(
    admin: &Client,
    role: &str,
    verifier: &Secret,
) -> Result<(), TenantError> {
    let verifier = verifier.expose();
    let create = format!(
        "CREATE ROLE {} LOGIN NOINHERIT PASSWORD {}",
        quote_ident(role),
        quote_literal(verifier)
    );
    match admin.batch_execute(&create).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {
            let alter = format!(
                "ALTER ROLE {} LOGIN PASSWORD {}",
                quote_ident(role),
                quote_literal(verifier)
            );
            admin
                .batch_execute(&alter)
                .await
                .map_err(TenantError::postgres(format!("updating role {role}")))
        }
        Err(e) => Err(TenantError::postgres(format!("creating role {role}"))(e)),
    }
}

/// Creates a role that cannot log in (a group or an object owner), if missing. Idempotent.
pub async fn ensure_nologin_role(admin: &Client, role: &str) -> Result<(), TenantError> {
    let sql = format!("CREATE ROLE {} NOLOGIN", quote_ident(role));
    match admin.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        // 42710, or 23505 when two sessions create it at the same moment.
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_OBJECT)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(())
        }
        Err(e) => Err(TenantError::postgres(format!("creating role {role}"))(e)),
    }
}

/// Allows or forbids a role to log in; forbidding also ends its open sessions.
pub async fn set_role_login(admin: &Client, role: &str, login: bool) -> Result<bool, TenantError> {
    let exists: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&role],
        )
        .await
        .map_err(TenantError::postgres("looking up a role"))?
        .get(0);
    if !exists {
        return Ok(false);
    }
    // A role row locked by someone else must not hold the caller (a suspend call) for long.
    let sql = format!(
        "SET lock_timeout = '2s'; ALTER ROLE {} {}; RESET lock_timeout",
        quote_ident(role),
        if login { "LOGIN" } else { "NOLOGIN" }
    );
    admin
        .batch_execute(&sql)
        .await
        .map_err(TenantError::postgres(format!("changing login of {role}")))?;
    if !login {
        end_sessions(admin, role).await?;
    }
    Ok(true)
}

/// How long [`end_sessions`] waits for terminated backends to exit.
const SESSIONS_END_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Terminates every session of `role` and waits (bounded) until they are gone, so a caller told "done" can rely
/// on no connection of the role being usable any more, in any process.
async fn end_sessions(admin: &Client, role: &str) -> Result<(), TenantError> {
    let started = std::time::Instant::now();
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .map_err(TenantError::postgres(format!("ending sessions of {role}")))?
            .get(0);
        if left == 0 || started.elapsed() > SESSIONS_END_WITHIN {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

pub async fn database_exists(admin: &Client, name: &str) -> Result<bool, TenantError> {
    Ok(admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&name],
        )
        .await
        .map_err(TenantError::postgres("looking up a database"))?
        .get(0))
}

/// `CREATE DATABASE name TEMPLATE template`; true if created, false if it already existed.
pub async fn create_database_from(
    admin: &Client,
    name: &str,
    template: &str,
) -> Result<bool, TenantError> {
    let sql = format!(
        "CREATE DATABASE {} TEMPLATE {}",
        quote_ident(name),
        quote_ident(template)
    );
    match admin.batch_execute(&sql).await {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(false),
        Err(e) => Err(TenantError::postgres(format!("creating database {name}"))(
            e,
        )),
    }
}

/// Only `role` may connect to `database` (besides superusers): CONNECT is revoked from PUBLIC.
pub async fn restrict_connect(
    admin: &Client,
    database: &str,
    role: &str,
) -> Result<(), TenantError> {
    let sql = format!(
        "REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}",
        db = quote_ident(database),
        role = quote_ident(role)
    );
    admin
        .batch_execute(&sql)
        .await
        .map_err(TenantError::postgres(format!(
            "restricting access to {database}"
        )))
}

/// Closes databases that mandant itself uses (the control plane, the template database; `postgres` and
/// `template1` of a cluster mandant created) to `PUBLIC`: PostgreSQL lets every role `CONNECT` to a new
/// database and create `TEMP` tables there, so without this a tenant's role could open them. The administrator
/// keeps its own grant (it is the owner or a superuser in every supported setup; the explicit grant covers a
/// member of the owner role). Only databases that are still open are touched, so running it at every start is
/// cheap and idempotent. Returns the databases it closed; a database this role cannot change (not its owner) is
/// logged and left as it is.
pub async fn close_to_public(
    admin: &Client,
    databases: &[&str],
) -> Result<Vec<String>, TenantError> {
    let names: Vec<String> = databases.iter().map(|d| (*d).to_owned()).collect();
    let open_sql = "SELECT datname FROM pg_database WHERE datname = ANY($1)
         AND (has_database_privilege('public', oid, 'CONNECT') OR has_database_privilege('public', oid, 'TEMP'))
         ORDER BY datname";
    let open: Vec<String> = admin
        .query(open_sql, &[&names])
        .await
        .map_err(TenantError::postgres("looking up database privileges"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for database in &open {
        let sql = format!(
            "GRANT CONNECT, TEMPORARY ON DATABASE {db} TO CURRENT_USER; \
             REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC",
            db = quote_ident(database)
        );
        admin
            .batch_execute(&sql)
            .await
            .map_err(TenantError::postgres(format!(
                "closing {database} to PUBLIC"
            )))?;
    }
    let still_open: Vec<String> = if open.is_empty() {
        Vec::new()
    } else {
        admin
            .query(open_sql, &[&open])
            .await
            .map_err(TenantError::postgres("looking up database privileges"))?
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    for database in &still_open {
        tracing::warn!(
            database = %database,
            "every role may still connect to this database: mandant's administrator role does not own it"
        );
    }
    Ok(open
        .into_iter()
        .filter(|d| !still_open.contains(d))
        .collect())
}

/// `DROP DATABASE IF EXISTS ... WITH (FORCE)`: ends remaining sessions first. Idempotent.
pub async fn drop_database(admin: &Client, name: &str) -> Result<(), TenantError> {
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    admin
        .batch_execute(&sql)
        .await
        .map_err(TenantError::postgres(format!("dropping database {name}")))
}

/// `DROP ROLE IF EXISTS`. Idempotent.
pub async fn drop_role(admin: &Client, role: &str) -> Result<(), TenantError> {
    let sql = format!("DROP ROLE IF EXISTS {}", quote_ident(role));
    admin
        .batch_execute(&sql)
        .await
        .map_err(TenantError::postgres(format!("dropping role {role}")))
}

#[cfg(test)]
mod scram_tests {
    use super::*;

    #[test]
    fn verifiers_have_the_postgresql_format_and_a_fresh_salt() {
        let password = Secret::new("00ff".repeat(16));
        let a = scram_verifier(&password, 16);
        let b = scram_verifier(&password, 16);
        assert!(a.expose().starts_with("SCRAM-SHA-256$16:"));
        assert_ne!(a.expose(), b.expose(), "a random salt each time");
        let parts: Vec<&str> = a.expose().split(['$', ':']).collect();
        assert_eq!(parts.len(), 5);
    }
}
