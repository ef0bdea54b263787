//! [`Tenant`]: what a handler of a `/v1/clients/{slug}/…` route works with — the client the access check found
//! and the caller's grant on it ([`ClientScope`]), a connection to its database and the privacy of what it
//! returns.
//!
//! Taking a `Tenant` does nothing yet (it cannot fail unless the access check did not run, a 500): the handler
//! validates its input first and only then asks for [`Tenant::db`], so a bad request to an unreachable tenant
//! is still a 400, not a 503. [`Tenant::db`] goes through [`ClientScope::connect`] (the route found must still be
//! the very client the check found); [`Tenant::privacy`] is [`ClientScope::privacy`], asked each time it is
//! needed, at the point in the handler where it always was.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::auth::ClientScope;
use super::error::ApiError;
use crate::app::AppState;
use crate::control::clients::ClientRecord;
use crate::data::Privacy;
use crate::tenant::pool::{PooledConn, SharedConn};

/// A data-plane handler's connection: its own, or an inner client's, borrowed from the request's session.
pub enum TenantDb {
    Own(Box<PooledConn>),
    Scoped(tokio::sync::OwnedMutexGuard<Option<PooledConn>>),
}

impl std::ops::Deref for TenantDb {
    type Target = PooledConn;

    fn deref(&self) -> &PooledConn {
        match self {
            Self::Own(conn) => conn,
            // Filled in before the guard is handed out, and only `ClientScope::finish` empties it, after the handler.
            Self::Scoped(session) => session.as_ref().unwrap_or_else(|| unreachable!()),
        }
    }
}

impl std::ops::DerefMut for TenantDb {
    fn deref_mut(&mut self) -> &mut PooledConn {
        match self {
            Self::Own(conn) => conn,
            Self::Scoped(session) => session.as_mut().unwrap_or_else(|| unreachable!()),
        }
    }
}

/// A read's connection ([`Tenant::read_db`]): one it may share with concurrent reads, or an inner client's.
pub enum ReadDb {
    Shared(SharedConn),
    Scoped(TenantDb),
}

impl std::ops::Deref for ReadDb {
    type Target = PooledConn;

    fn deref(&self) -> &PooledConn {
        match self {
            Self::Shared(conn) => conn,
            Self::Scoped(db) => db,
        }
    }
}

/// The checked client of a data-plane route, with the state to reach its database.
#[derive(Clone)]
pub struct Tenant {
    state: AppState,
    scope: ClientScope,
}

impl Tenant {
    /// The client the access check found.
    pub fn client(&self) -> &ClientRecord {
        &self.scope.client
    }

    /// The client's slug (the one of the path: the check looked the client up by it).
    pub fn slug(&self) -> &str {
        &self.scope.client.slug
    }

    /// An inner client's scope (`None` for any other client).
    pub fn scope(&self) -> Result<Option<crate::data::inner::Scope>, ApiError> {
        match &self.scope.client.scope {
            Some(stored) if self.scope.client.is_inner() => {
                Ok(Some(crate::data::inner::Scope::from_stored(stored)?))
            }
            _ => Ok(None),
        }
    }

    /// A list an inner client created joins its scope (nothing to do for any other client).
    pub async fn joined_scope(&self, list: i64) -> Result<(), ApiError> {
        if self.scope.client.is_inner() {
            self.state
                .control()
                .add_to_inner_scope(self.scope.client.id, list)
                .await?;
            self.state.data().invalidate(self.slug());
        }
        Ok(())
    }

    /// Whether the caller holds the private-data right on the client.
    pub fn private_data(&self) -> bool {
        self.scope.grant.private_data
    }

    /// A connection to the client's database, as its own role (through [`ClientScope::connect`]). For an inner
    /// client: its parent's database as the second role, inside the request's one transaction naming the inner
    /// client (row-level security), held in the scope's session until the access check's middleware ends it; a
    /// second call in the same request gets the same connection and transaction.
    pub async fn db(&self) -> Result<TenantDb, ApiError> {
        // A scope has a session exactly when its client is inner (`ClientScope::new`).
        let Some(session) = &self.scope.session else {
            let (_, conn) = self.scope.connect(&self.state).await?;
            return Ok(TenantDb::Own(Box::new(conn)));
        };
        let mut session = session
            .clone()
            .try_lock_owned()
            .map_err(|_| ApiError::internal())?;
        if session.is_none() {
            let (_, conn) = self
                .scope
                .connect_with(&self.state, self.scope.read_only)
                .await?;
            *session = Some(conn);
        }
        Ok(TenantDb::Scoped(session))
    }

    /// As [`Self::db`], for a handler that only reads, by single statements in autocommit (no transaction, no
    /// `COPY`, no session setting): the connection may be shared with concurrent reads of the client, pipelined
    /// on it (`TenantPools::acquire_shared`). An inner client's read runs in its request's transaction, as
    /// [`Self::db`] gives it.
    pub async fn read_db(&self) -> Result<ReadDb, ApiError> {
        if self.scope.client.is_inner() {
            return Ok(ReadDb::Scoped(self.db().await?));
        }
        Ok(ReadDb::Shared(
            self.scope.connect_shared(&self.state).await?,
        ))
    }

    /// Whether personal data is shown or masked for the caller on this client (a control-plane read when masked).
    pub async fn privacy(&self) -> Result<Privacy, ApiError> {
        self.scope.privacy(&self.state).await
    }
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let scope = ClientScope::from_request_parts(parts, state).await?;
        Ok(Self {
            state: state.clone(),
            scope,
        })
    }
}
