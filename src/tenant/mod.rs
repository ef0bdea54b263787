//! Tenant databases: cluster-level DDL (databases, roles), the tenant migrations, the template database, the
//! custom-field DDL, where each tenant lives and its credentials (`targets.rs`, `credentials.rs`), and the
//! routing pool (`pool.rs`, [`pool::TenantPools`]).
//!
//! Owns every statement that creates, alters or drops a database or role on a database server. Identifiers are
//! validated by the caller's newtypes and quoted here with [`crate::db::quote_ident`]; values are bound parameters.
//! Never: queries the control plane (that is `control/`; only its record types are read here).

pub mod cluster;
pub mod credentials;
pub mod fields;
pub mod inner;
pub mod migrate;
pub mod pool;
pub mod replication;
pub mod server_check;
pub mod statements;
pub mod targets;
pub mod template_db;

use deadpool_postgres::tokio_postgres;

use crate::db::describe_pg_error;

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("{context}: {}", describe_pg_error(.source))]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{context}: {message}")]
    Migration { context: String, message: String },
    #[error("database server {0}: {1}")]
    BadServer(String, String),
}

impl TenantError {
    pub fn postgres(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| Self::Postgres { context, source }
    }

    /// The SQLSTATE of the underlying database error, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Postgres { source, .. } => source.code().map(|c| c.code()),
            Self::Migration { .. } | Self::BadServer(..) => None,
        }
    }
}
