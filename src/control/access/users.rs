//! Users and their roles: create, read, change, disable, delete; and the first admin at first start.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

use super::{RIGHTS_LOCK, lock_rights, notify_auth_change, revoke_undominated, still_dominates};
use crate::control::{ControlError, ControlPlane};
use crate::domain::rights::MASTER_ADMIN;

/// A user as the API shows it.
#[derive(Debug, Clone, FromRow)]
pub struct UserRecord {
    pub id: Uuid,
    pub username: String,
    pub display_name: String,
    pub home_client_id: Uuid,
    pub home_client: String,
    pub status: String,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub struct NewUser<'a> {
    pub username: &'a str,
    pub display_name: &'a str,
    pub home_client: Uuid,
    pub roles: &'a [String],
}

/// A change of a user; `None` leaves a part as it is.
#[derive(Debug, Default)]
pub struct UserChange {
    pub display_name: Option<String>,
    pub disabled: Option<bool>,
    pub roles: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Only users homed at one of these clients (`None` = any).
    pub home_clients: Option<Vec<Uuid>>,
    /// Keyset position: usernames after this one.
    pub after: Option<String>,
    pub limit: i64,
}

/// Refuses a change (the caller's transaction rolls back) that leaves no active master admin: nobody could then
/// create roles or clients, or reach a client nobody else has access to.
async fn keep_an_admin(tx: &mut Transaction<'_, Postgres>) -> Result<(), ControlError> {
    let admins: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users u JOIN user_roles r ON r.user_id = u.id AND r.role = $1
         WHERE u.status = 'active'",
    )
    .bind(MASTER_ADMIN)
    .fetch_one(&mut **tx)
    .await?;
    if admins == 0 {
        Err(ControlError::LastMasterAdmin)
    } else {
        Ok(())
    }
}

/// A user as a change left it, and how many of its own tokens the change revoked (disabling revokes them all).
#[derive(Debug, Clone)]
pub struct UserUpdated {
    pub user: UserRecord,
    pub revoked: u64,
}

/// Revokes the tokens `minter` minted for other users (it is being disabled or deleted).
async fn revoke_minted_by(
    tx: &mut Transaction<'_, Postgres>,
    minter: Uuid,
) -> Result<(), ControlError> {
    sqlx::query(
        "UPDATE api_tokens SET revoked_at = now()
         WHERE created_by = $1 AND user_id <> $1 AND revoked_at IS NULL",
    )
    .bind(minter)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sets a user's roles; an unknown role name is refused with the names.
/// The user `id` as the transaction sees it (after its own writes).
async fn user_in(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> Result<UserRecord, ControlError> {
    Ok(sqlx::query_as(select_users!("WHERE u.id = $1"))
        .bind(id)
        .fetch_one(&mut **tx)
        .await?)
}

async fn set_roles(
    tx: &mut Transaction<'_, Postgres>,
    user: Uuid,
    roles: &[String],
) -> Result<(), ControlError> {
    let known: Vec<String> = sqlx::query_scalar("SELECT name FROM roles WHERE name = ANY($1)")
        .bind(roles)
        .fetch_all(&mut **tx)
        .await?;
    let unknown: Vec<String> = roles
        .iter()
        .filter(|r| !known.contains(r))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(ControlError::UnknownRoles(unknown));
    }
    sqlx::query("DELETE FROM user_roles WHERE user_id = $1 AND NOT role = ANY($2)")
        .bind(user)
        .bind(roles)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO user_roles (user_id, role) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(user)
    .bind(roles)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl ControlPlane {
    /// First start: if there is no user at all, creates `admin` (home: the master, role master-admin) with a
    /// token of this hash. Returns whether it did. Safe when several processes start at once.
    /// `before_commit` runs inside the transaction (the generated token's file is written there, so a token is
    /// never committed without it); its error rolls back.
    pub async fn bootstrap_admin<E>(
        &self,
        hash: &[u8; 32],
        before_commit: impl FnOnce() -> Result<(), E>,
    ) -> Result<Result<bool, E>, ControlError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(RIGHTS_LOCK)
            .execute(&mut *tx)
            .await?;
        let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users)")
            .fetch_one(&mut *tx)
            .await?;
        if any {
            return Ok(Ok(false));
        }
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO users (username, display_name, home_client_id)
             SELECT 'admin', 'Administrator', id FROM clients WHERE kind = 'master' RETURNING id",
        )
        .fetch_one(&mut *tx)
        .await?;
        set_roles(&mut tx, id, &[MASTER_ADMIN.to_owned()]).await?;
        sqlx::query("INSERT INTO api_tokens (user_id, name, hash) VALUES ($1, 'bootstrap', $2)")
            .bind(id)
            .bind(hash.as_slice())
            .execute(&mut *tx)
            .await?;
        notify_auth_change(&mut tx).await?;
        if let Err(e) = before_commit() {
            return Ok(Err(e));
        }
        tx.commit().await?;
        Ok(Ok(true))
    }

    pub async fn create_user(&self, new: &NewUser<'_>) -> Result<UserRecord, ControlError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO users (username, display_name, home_client_id) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(new.username)
        .bind(new.display_name)
        .bind(new.home_client)
        .fetch_one(&mut *tx)
        .await;
        let id = match inserted {
            Ok(id) => id,
            Err(sqlx::Error::Database(db)) if db.constraint() == Some("users_username_key") => {
                return Err(ControlError::UsernameTaken);
            }
            Err(e) => return Err(e.into()),
        };
        set_roles(&mut tx, id, new.roles).await?;
        let user = user_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(user)
    }

    pub async fn user_by_name(&self, username: &str) -> Result<UserRecord, ControlError> {
        let row: Option<UserRecord> = sqlx::query_as(select_users!("WHERE u.username = $1"))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.ok_or(ControlError::NotFound)
    }

    /// The users of these names that exist (several rows of a change in one query).
    pub async fn users_by_names(
        &self,
        usernames: &[&str],
    ) -> Result<Vec<UserRecord>, ControlError> {
        Ok(sqlx::query_as(select_users!("WHERE u.username = ANY($1)"))
            .bind(usernames)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Users ordered by username.
    pub async fn list_users(&self, filter: &UserFilter) -> Result<Vec<UserRecord>, ControlError> {
        Ok(sqlx::query_as(select_users!(
            "WHERE ($1::uuid[] IS NULL OR u.home_client_id = ANY($1))
               AND ($2::text IS NULL OR u.username > $2)
             ORDER BY u.username LIMIT $3"
        ))
        .bind(filter.home_clients.as_deref())
        .bind(filter.after.as_deref())
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// `actor`: who changes it, if its dominance must hold (see `still_dominates`).
    pub async fn update_user(
        &self,
        id: Uuid,
        change: &UserChange,
        actor: Option<Uuid>,
    ) -> Result<UserUpdated, ControlError> {
        let mut tx = self.pool.begin().await?;
        lock_rights(&mut tx).await?;
        still_dominates(&mut tx, actor, id).await?;
        let status = change
            .disabled
            .map(|d| if d { "disabled" } else { "active" });
        let found = sqlx::query(
            "UPDATE users SET display_name = coalesce($2, display_name), status = coalesce($3, status),
                    updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(change.display_name.as_deref())
        .bind(status)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if found == 0 {
            return Err(ControlError::NotFound);
        }
        if let Some(roles) = &change.roles {
            set_roles(&mut tx, id, roles).await?;
            revoke_undominated(&mut tx, &[id]).await?;
        }
        let mut revoked = 0;
        if change.disabled == Some(true) {
            revoke_minted_by(&mut tx, id).await?;
            // Its own live tokens end with it: enabling the user again does not bring them back.
            revoked = sqlx::query(
                "UPDATE api_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        keep_an_admin(&mut tx).await?;
        notify_auth_change(&mut tx).await?;
        let user = user_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(UserUpdated { user, revoked })
    }

    /// Deletes a user with its tokens and access (its audit entries stay, with its name).
    pub async fn delete_user(&self, id: Uuid, actor: Option<Uuid>) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        lock_rights(&mut tx).await?;
        still_dominates(&mut tx, actor, id).await?;
        revoke_minted_by(&mut tx, id).await?;
        let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(ControlError::NotFound);
        }
        keep_an_admin(&mut tx).await?;
        notify_auth_change(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
