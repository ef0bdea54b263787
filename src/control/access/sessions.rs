//! Console sessions (`control_migrations/V11__console_sessions.sql`): only the session id's hash is stored; a
//! session stands for its API token, whose principal is checked on every request by the caller
//! (`access/sessions.rs`), so a revoked token or a disabled user ends its sessions at once.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use crate::control::{ControlError, ControlPlane};

/// Live sessions one token may have; signing in once more ends its oldest.
pub const MAX_SESSIONS_PER_TOKEN: i64 = 20;

/// A live session, as looked up by its id's hash.
#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub token_id: Uuid,
    /// The hash of the session's API token (to load its principal through the token cache).
    pub token_hash: Vec<u8>,
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub max_until: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

impl ControlPlane {
    /// Stores a new session for `token_id`: idle expiry `idle`, hard limit `max` (neither past the token's own
    /// expiry, which the principal check enforces anyway).
    pub async fn create_session(
        &self,
        id_hash: &[u8; 32],
        token_id: Uuid,
        csrf_token: &str,
        idle: chrono::Duration,
        max: chrono::Duration,
    ) -> Result<DateTime<Utc>, ControlError> {
        // The token's oldest sessions beyond the limit end with this one (the new row is not in the statement's
        // snapshot, so the limit less one of the others are kept).
        let expires_at: DateTime<Utc> = sqlx::query_scalar(
            "WITH new AS (
                 INSERT INTO console_sessions (id_hash, token_id, csrf_token, expires_at, max_until)
                 VALUES ($1, $2, $3, least(now() + $4, now() + $5), now() + $5)
                 RETURNING expires_at),
             old AS (
                 DELETE FROM console_sessions WHERE id_hash IN (
                     SELECT id_hash FROM console_sessions WHERE token_id = $2
                     ORDER BY created_at DESC OFFSET $6 - 1))
             SELECT expires_at FROM new",
        )
        .bind(id_hash.as_slice())
        .bind(token_id)
        .bind(csrf_token)
        .bind(idle)
        .bind(max)
        .bind(MAX_SESSIONS_PER_TOKEN)
        .fetch_one(&self.pool)
        .await?;
        Ok(expires_at)
    }

    /// The live (unexpired) session with this id hash, with its token's hash.
    pub async fn session_by_hash(
        &self,
        id_hash: &[u8; 32],
    ) -> Result<Option<SessionRow>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT s.token_id, t.hash AS token_hash, s.csrf_token, s.created_at, s.expires_at, s.max_until,
                    s.last_seen_at
             FROM console_sessions s JOIN api_tokens t ON t.id = s.token_id
             WHERE s.id_hash = $1 AND s.expires_at > now()",
        )
        .bind(id_hash.as_slice())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Pushes a used session's idle expiry forward (never past its hard limit); returns the new expiry.
    pub async fn extend_session(
        &self,
        id_hash: &[u8; 32],
        idle: chrono::Duration,
    ) -> Result<Option<DateTime<Utc>>, ControlError> {
        Ok(sqlx::query_scalar(
            "UPDATE console_sessions SET last_seen_at = now(), expires_at = least(now() + $2, max_until)
             WHERE id_hash = $1 AND expires_at > now()
             RETURNING expires_at",
        )
        .bind(id_hash.as_slice())
        .bind(idle)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Ends a session (sign-out); false when there was none.
    pub async fn delete_session(&self, id_hash: &[u8; 32]) -> Result<bool, ControlError> {
        let done = sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash.as_slice())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes expired sessions, and sessions of revoked tokens (the workers' housekeeping); returns how many.
    pub async fn delete_expired_sessions(&self) -> Result<u64, ControlError> {
        let done = sqlx::query(
            "DELETE FROM console_sessions s USING api_tokens t
             WHERE t.id = s.token_id AND (s.expires_at <= now() OR t.revoked_at IS NOT NULL
                   OR (t.expires_at IS NOT NULL AND t.expires_at <= now()))",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
