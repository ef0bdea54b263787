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
use crate::tenant::pool::PooledConn;

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

    /// Whether the caller holds the private-data right on the client.
    pub fn private_data(&self) -> bool {
        self.scope.grant.private_data
    }

    /// A connection to the client's database, as its own role (through [`ClientScope::connect`]).
    pub async fn db(&self) -> Result<PooledConn, ApiError> {
        let (_, conn) = self.scope.connect(&self.state).await?;
        Ok(conn)
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
