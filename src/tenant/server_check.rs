//! What registration asks a database server before mandant uses it: its version, the admin role's rights and
//! `wal_level`, over a connection with the server's own TLS mode (so reachability *is* the TLS check).
//! Read-only; the template database that registration then creates is `template_db.rs`'s.

use deadpool_postgres::tokio_postgres::Client;

use super::TenantError;

/// The oldest PostgreSQL mandant runs on (`DROP DATABASE ... WITH (FORCE)` and the rest: see FACTS.md).
pub const MIN_SERVER_VERSION: i32 = 130_000;

/// What a server told us.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    /// `server_version_num`, e.g. 150018.
    pub version: i32,
    /// `wal_level`: `logical` makes live moves (logical replication) possible later.
    pub wal_level: String,
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
}

impl ServerFacts {
    /// Whether the admin role may do what provisioning does: a superuser, or `CREATEDB` and `CREATEROLE`.
    pub fn has_rights(&self) -> bool {
        self.superuser || self.createdb && self.createrole
    }

    /// What the admin role lacks, as a phrase ("CREATEDB and CREATEROLE").
    pub fn missing_rights(&self) -> String {
        let missing: Vec<&str> = [
            (!self.createdb).then_some("CREATEDB"),
            (!self.createrole).then_some("CREATEROLE"),
        ]
        .into_iter()
        .flatten()
        .collect();
        missing.join(" and ")
    }

    pub fn live_moves_possible(&self) -> bool {
        self.wal_level == "logical"
    }
}

/// Reads the facts over an open administrator connection.
pub async fn inspect(admin: &Client) -> Result<ServerFacts, TenantError> {
    let row = admin
        .query_one(
            "SELECT current_setting('server_version_num')::int4, current_setting('wal_level'),
                    r.rolsuper, r.rolcreatedb, r.rolcreaterole
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(TenantError::postgres(
            "reading the server's version and the admin role's rights",
        ))?;
    Ok(ServerFacts {
        version: row.get(0),
        wal_level: row.get(1),
        superuser: row.get(2),
        createdb: row.get(3),
        createrole: row.get(4),
    })
}
