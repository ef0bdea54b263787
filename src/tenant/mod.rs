//! Tenant databases: cluster-level DDL (databases, roles), the tenant migrations, the template database and the
//! routing pool.
//!
//! Owns every statement that creates, alters or drops a database or role on a database server. Identifiers are
//! validated by the caller's newtypes and quoted here with [`cluster::quote_ident`]; values are bound parameters.
//! Never: touches the control plane (that is `control/`).

pub mod cluster;
pub mod fields;
pub mod migrate;
pub mod pool;
pub mod template;

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
            Self::Migration { .. } => None,
        }
    }
}
