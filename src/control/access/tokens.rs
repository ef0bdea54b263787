//! API tokens (only their hashes are stored) and the principal a token stands for.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{RightsRow, lock_rights, notify_auth_change, still_dominates};
use crate::control::{ControlError, ControlPlane};
use crate::domain::rights::Principal;

/// A token's metadata (never the token or its hash), as stored and as the API shows it.
#[derive(Debug, Clone, FromRow, Serialize, ToSchema)]
pub struct TokenMeta {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Updated at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct PrincipalRow {
    token_id: Uuid,
    hash: Vec<u8>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    user_id: Uuid,
    username: String,
    home_client_id: Uuid,
    #[sqlx(flatten)]
    rights: RightsRow,
}

/// A principal as loaded for a token, with the stored hash (compared by the caller in constant time) and when the
/// token was last used.
pub struct LoadedPrincipal {
    pub principal: Principal,
    pub stored_hash: Vec<u8>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ControlPlane {
    /// The principal of a live token of an active user, by the token's hash.
    pub async fn principal_by_token_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<LoadedPrincipal>, ControlError> {
        let row: Option<PrincipalRow> = sqlx::query_as(concat!(
            "SELECT t.id AS token_id, t.hash, t.expires_at, t.last_used_at, u.id AS user_id, u.username,
                    u.home_client_id, ",
            rights_columns!(),
            " FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())
               AND u.status = 'active'"
        ))
        .bind(hash.as_slice())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| LoadedPrincipal {
            principal: Principal {
                user_id: r.user_id,
                username: r.username,
                home_client: r.home_client_id,
                token_id: r.token_id,
                expires_at: r.expires_at,
                rights: r.rights.rights(),
                roles: r.rights.roles,
            },
            stored_hash: r.hash,
            last_used_at: r.last_used_at,
        }))
    }

    /// Records that a token was used (callers throttle this).
    pub async fn touch_token(&self, id: Uuid) -> Result<(), ControlError> {
        sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `created_by`: who minted it for the user, if not the user itself.
    pub async fn create_token(
        &self,
        user: Uuid,
        name: &str,
        hash: &[u8; 32],
        expires_at: Option<DateTime<Utc>>,
        created_by: Option<Uuid>,
    ) -> Result<TokenMeta, ControlError> {
        let mut tx = self.pool.begin().await?;
        if created_by.is_some() {
            // Minted for someone else: the minter must dominate it now, serialised with rights changes.
            lock_rights(&mut tx).await?;
            still_dominates(&mut tx, created_by, user).await?;
        }
        let token = sqlx::query_as(
            "INSERT INTO api_tokens (user_id, name, hash, expires_at, created_by) VALUES ($1, $2, $3, $4, $5)
             RETURNING id, name, created_at, expires_at, last_used_at, revoked_at",
        )
        .bind(user)
        .bind(name)
        .bind(hash.as_slice())
        .bind(expires_at)
        .bind(created_by)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// A user's tokens, newest first (revoked ones included).
    pub async fn tokens(&self, user: Uuid) -> Result<Vec<TokenMeta>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT id, name, created_at, expires_at, last_used_at, revoked_at FROM api_tokens
             WHERE user_id = $1 ORDER BY created_at DESC, id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes a token of a user (idempotent); `NotFound` if the user has no such token.
    pub async fn revoke_token(&self, user: Uuid, token: Uuid) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        let found = sqlx::query(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 AND user_id = $2",
        )
        .bind(token)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if found == 0 {
            return Err(ControlError::NotFound);
        }
        notify_auth_change(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
