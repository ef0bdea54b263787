//! Console sessions: an API token exchanged for a random session id (the browser keeps it in an HttpOnly,
//! `SameSite=Strict` cookie; the token itself is never kept by the page). A session *is* its token for every
//! check: each request loads the token's principal through the same cache as a bearer token, so a revoked or
//! expired token, a disabled user or a change of rights applies to its sessions at once, in every process. Only
//! the session id's SHA-256 is stored (`control/access/sessions.rs`); the CSRF token the page sends back on every
//! change is compared in constant time. Sessions end idle after `auth.session_idle_minutes` and at the latest
//! `auth.session_max_hours` after sign-in.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::authn::Authenticator;
use crate::control::ControlError;
use crate::domain::rights::{Principal, hashes_equal, random_secret, token_hash};

/// How often a used session's idle expiry is pushed forward at most.
const EXTEND_EVERY_SECS: i64 = 60;
/// The length of a session id and of a CSRF token ([`random_secret`]).
pub const SESSION_ID_LEN: usize = 43;

/// A session just signed in: the id for the cookie (shown only now), the CSRF token for the page.
pub struct SignedIn {
    pub id: String,
    pub session: Session,
}

/// A live session and the principal it acts as.
#[derive(Clone)]
pub struct Session {
    pub principal: Arc<Principal>,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

impl Session {
    /// A session ending at `expires_at`, or when its token does if that is sooner.
    fn new(principal: Arc<Principal>, csrf_token: String, expires_at: DateTime<Utc>) -> Self {
        let expires_at = principal
            .expires_at
            .map_or(expires_at, |token_end| expires_at.min(token_end));
        Self {
            principal,
            csrf_token,
            expires_at,
        }
    }

    /// Whether `sent` (the `X-CSRF-Token` header of a change) is this session's CSRF token.
    pub fn csrf_matches(&self, sent: Option<&str>) -> bool {
        sent.is_some_and(|sent| hashes_equal(sent.as_bytes(), self.csrf_token.as_bytes()))
    }
}

/// Whether `id` has a session id's shape (checked before any lookup).
pub fn plausible_session_id(id: &str) -> bool {
    id.len() == SESSION_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Authenticator {
    /// Exchanges a valid API token for a new session; `None` when the token is not valid (unknown, revoked,
    /// expired, user disabled).
    pub async fn sign_in(
        &self,
        token: &str,
        idle: chrono::Duration,
        max: chrono::Duration,
    ) -> Result<Option<SignedIn>, ControlError> {
        let Some(principal) = self.authenticate(token).await? else {
            return Ok(None);
        };
        let id = random_secret();
        let csrf_token = random_secret();
        let expires_at = self
            .control
            .create_session(&token_hash(&id), principal.token_id, &csrf_token, idle, max)
            .await?;
        Ok(Some(SignedIn {
            id,
            session: Session::new(principal, csrf_token, expires_at),
        }))
    }

    /// The live session of a cookie's id, acting as its token's current principal; `None` when the session
    /// ended or its token is no longer valid. Pushes the idle expiry forward (at most once a minute).
    pub async fn session(
        &self,
        id: &str,
        idle: chrono::Duration,
    ) -> Result<Option<Session>, ControlError> {
        if !plausible_session_id(id) {
            return Ok(None);
        }
        let id_hash = token_hash(id);
        let Some(row) = self.control.session_by_hash(&id_hash).await? else {
            return Ok(None);
        };
        let Ok(token_hash) = <[u8; 32]>::try_from(row.token_hash.as_slice()) else {
            return Ok(None);
        };
        let Some(principal) = self.authenticate_hash(&token_hash).await? else {
            return Ok(None);
        };
        if principal.token_id != row.token_id {
            return Ok(None);
        }
        let mut expires_at = row.expires_at;
        if (Utc::now() - row.last_seen_at).num_seconds() >= EXTEND_EVERY_SECS
            && let Some(extended) = self.control.extend_session(&id_hash, idle).await?
        {
            expires_at = extended;
        }
        Ok(Some(Session::new(principal, row.csrf_token, expires_at)))
    }

    /// Ends a session (sign-out), in every process at once (the next request finds no row).
    pub async fn sign_out(&self, id: &str) -> Result<bool, ControlError> {
        if !plausible_session_id(id) {
            return Ok(false);
        }
        self.control.delete_session(&token_hash(id)).await
    }
}
