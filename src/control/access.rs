//! Users, roles, per-client access, API tokens and the audit log in the control plane (schema:
//! `control_migrations/V4__access.sql`). The rules are `access/`'s; this module stores and reads.
//!
//! Every change that can alter what a token may do `NOTIFY`s [`AUTH_CHANNEL`] in its transaction, so every
//! `mandant` process drops its cached principals when it commits (`access/authn.rs`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, Postgres, Transaction};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{ControlError, ControlPlane};
use crate::domain::rights::{
    Grant, Level, MASTER_ADMIN, Permissions, Principal, Rights, builtin_roles,
};

/// The channel notified when users, roles, access or tokens change.
pub const AUTH_CHANNEL: &str = "mandant_auth";
/// Serialises the first-start creation of the admin user across processes.
const BOOTSTRAP_LOCK: i64 = 0x6d61_6e64_6175_7468; // "mandauth"

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

/// One access grant, with the client's slug.
#[derive(Debug, Clone, FromRow)]
pub struct AccessRow {
    pub client_id: Uuid,
    pub client: String,
    pub level: String,
    pub private_data: bool,
    pub updated_at: DateTime<Utc>,
}

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

#[derive(Debug, Clone, FromRow)]
pub struct RoleRecord {
    pub name: String,
    pub description: String,
    pub builtin: bool,
    pub permissions: Vec<String>,
    /// How many users hold it.
    pub users: i64,
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

/// One audit entry to record.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub user_id: Option<Uuid>,
    pub username: Option<String>,
    pub client_id: Option<Uuid>,
    pub client_slug: Option<String>,
    pub action: String,
    pub target: String,
    pub outcome: &'static str,
    pub status: u16,
    pub request_id: Option<String>,
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, Clone, FromRow)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub username: Option<String>,
    pub client_slug: Option<String>,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub status: i16,
    pub request_id: Option<String>,
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub client: Option<Uuid>,
    pub username: Option<String>,
    /// Only entries on these clients (`None` = all, entries without a client included).
    pub visible: Option<Vec<Uuid>>,
    /// Keyset position: entries older than this id.
    pub before: Option<i64>,
    pub limit: i64,
}

/// The columns that make a user's rights, for a query over `users u`.
macro_rules! rights_columns {
    () => {
        "ARRAY(SELECT ur.role FROM user_roles ur WHERE ur.user_id = u.id ORDER BY ur.role) AS roles,
         ARRAY(SELECT DISTINCT rp.permission FROM user_roles ur JOIN role_permissions rp ON rp.role = ur.role
               WHERE ur.user_id = u.id) AS permissions,
         ARRAY(SELECT a.client_id FROM client_access a JOIN clients ac ON ac.id = a.client_id AND ac.status <> 'deleted'
               WHERE a.user_id = u.id ORDER BY a.client_id) AS access_clients,
         ARRAY(SELECT a.level FROM client_access a JOIN clients ac ON ac.id = a.client_id AND ac.status <> 'deleted'
               WHERE a.user_id = u.id ORDER BY a.client_id) AS access_levels,
         ARRAY(SELECT a.private_data FROM client_access a JOIN clients ac ON ac.id = a.client_id AND ac.status <> 'deleted'
               WHERE a.user_id = u.id ORDER BY a.client_id) AS access_private"
    };
}

macro_rules! select_users {
    ($rest:literal) => {
        concat!(
            "SELECT u.id, u.username, u.display_name, u.home_client_id, c.slug AS home_client, u.status,
                    ARRAY(SELECT ur.role FROM user_roles ur WHERE ur.user_id = u.id ORDER BY ur.role) AS roles,
                    u.created_at, u.updated_at
             FROM users u JOIN clients c ON c.id = u.home_client_id ",
            $rest
        )
    };
}

#[derive(FromRow)]
struct RightsRow {
    roles: Vec<String>,
    permissions: Vec<String>,
    access_clients: Vec<Uuid>,
    access_levels: Vec<String>,
    access_private: Vec<bool>,
}

impl RightsRow {
    fn rights(&self) -> Rights {
        let access: HashMap<Uuid, Grant> = self
            .access_clients
            .iter()
            .zip(&self.access_levels)
            .zip(&self.access_private)
            .map(|((client, level), private_data)| {
                let level = Level::parse(level).unwrap_or(Level::None);
                (
                    *client,
                    Grant {
                        level,
                        private_data: *private_data,
                    },
                )
            })
            .collect();
        Rights {
            master_admin: self.roles.iter().any(|r| r == MASTER_ADMIN),
            permissions: Permissions::from_stored(&self.permissions),
            access,
        }
    }
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

pub(super) async fn notify_auth_change(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<(), ControlError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(AUTH_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Serialises changes of rights (roles, access, delegated tokens, role definitions, users disabled or deleted),
/// so the checks made inside them (the last master admin, dominance) see every other change's result. The same
/// lock as the first-start bootstrap.
async fn lock_rights(tx: &mut Transaction<'_, Postgres>) -> Result<(), ControlError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(BOOTSTRAP_LOCK)
        .execute(&mut **tx)
        .await?;
    Ok(())
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

/// A user's rights, read in a transaction.
async fn rights_in(
    tx: &mut Transaction<'_, Postgres>,
    user: Uuid,
) -> Result<Option<Rights>, ControlError> {
    let row: Option<RightsRow> = sqlx::query_as(concat!(
        "SELECT ",
        rights_columns!(),
        " FROM users u WHERE u.id = $1"
    ))
    .bind(user)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| r.rights()))
}

/// Keeps the invariant of tokens minted for someone else: the minter still dominates the holder. Called after the
/// rights of `users` changed (in the same transaction); revokes every live token, minted by or for one of them,
/// whose minter no longer could act for its holder.
pub(super) async fn revoke_undominated(
    tx: &mut Transaction<'_, Postgres>,
    users: &[Uuid],
) -> Result<(), ControlError> {
    let minted: Vec<(Uuid, Uuid, Uuid)> = sqlx::query_as(
        "SELECT id, user_id, created_by FROM api_tokens
         WHERE revoked_at IS NULL AND created_by IS NOT NULL AND created_by <> user_id
           AND (user_id = ANY($1) OR created_by = ANY($1))",
    )
    .bind(users)
    .fetch_all(&mut **tx)
    .await?;
    let mut rights: HashMap<Uuid, Option<Rights>> = HashMap::new();
    let mut revoke = Vec::new();
    for (token, holder, minter) in minted {
        for user in [holder, minter] {
            if let std::collections::hash_map::Entry::Vacant(slot) = rights.entry(user) {
                slot.insert(rights_in(tx, user).await?);
            }
        }
        let allowed = match (&rights[&minter], &rights[&holder]) {
            (Some(minter), Some(holder)) => minter.dominates(holder),
            _ => false,
        };
        if !allowed {
            revoke.push(token);
        }
    }
    if !revoke.is_empty() {
        sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE id = ANY($1)")
            .bind(&revoke)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Re-checks inside the writing transaction (after [`lock_rights`]) what the caller checked before: that `actor`
/// dominates `target` (`actor`: `None` for master admins and the command line, who need no check).
async fn still_dominates(
    tx: &mut Transaction<'_, Postgres>,
    actor: Option<Uuid>,
    target: Uuid,
) -> Result<Option<Rights>, ControlError> {
    let Some(actor) = actor else {
        return Ok(None);
    };
    let (Some(mine), Some(theirs)) = (rights_in(tx, actor).await?, rights_in(tx, target).await?)
    else {
        return Err(ControlError::NotFound);
    };
    if mine.dominates(&theirs) {
        Ok(Some(mine))
    } else {
        Err(ControlError::NotDominated)
    }
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

/// Locks a custom role for a change: `NotFound` if there is none, `BuiltinRole` for a built-in one.
async fn lock_custom_role(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<(), ControlError> {
    let builtin: Option<bool> =
        sqlx::query_scalar("SELECT builtin FROM roles WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?;
    match builtin {
        None => Err(ControlError::NotFound),
        Some(true) => Err(ControlError::BuiltinRole),
        Some(false) => Ok(()),
    }
}

/// Sets a user's roles; an unknown role name is refused with the names.
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

    /// A user's rights (for the no-escalation checks when managing that user).
    pub async fn user_rights(&self, user: Uuid) -> Result<Rights, ControlError> {
        let row: Option<RightsRow> = sqlx::query_as(concat!(
            "SELECT ",
            rights_columns!(),
            " FROM users u WHERE u.id = $1"
        ))
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.ok_or(ControlError::NotFound)?.rights())
    }

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
            .bind(BOOTSTRAP_LOCK)
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

    /// Makes the built-in roles exist with exactly their permissions (a release may change them).
    pub async fn ensure_builtin_roles(&self) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        for (name, permissions) in builtin_roles() {
            let names: Vec<&str> = permissions.names();
            sqlx::query(
                "INSERT INTO roles (name, builtin) VALUES ($1, true)
                 ON CONFLICT (name) DO UPDATE SET builtin = true",
            )
            .bind(name)
            .execute(&mut *tx)
            .await?;
            let removed = sqlx::query(
                "DELETE FROM role_permissions WHERE role = $1 AND NOT permission = ANY($2)",
            )
            .bind(name)
            .bind(&names)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let added = sqlx::query(
                "INSERT INTO role_permissions (role, permission) SELECT $1, unnest($2::text[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(name)
            .bind(&names)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if removed + added > 0 {
                notify_auth_change(&mut tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
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
        let user = sqlx::query_as(select_users!("WHERE u.id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
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

    /// `actor`: who changes it, if its dominance must hold (see [`still_dominates`]).
    pub async fn update_user(
        &self,
        id: Uuid,
        change: &UserChange,
        actor: Option<Uuid>,
    ) -> Result<UserRecord, ControlError> {
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
        if change.disabled == Some(true) {
            revoke_minted_by(&mut tx, id).await?;
        }
        keep_an_admin(&mut tx).await?;
        notify_auth_change(&mut tx).await?;
        let user = sqlx::query_as(select_users!("WHERE u.id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(user)
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

    /// A user's grants on live clients, by slug.
    pub async fn access_of(&self, user: Uuid) -> Result<Vec<AccessRow>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT a.client_id, c.slug AS client, a.level, a.private_data, a.updated_at
             FROM client_access a JOIN clients c ON c.id = a.client_id
             WHERE a.user_id = $1 AND c.status <> 'deleted' ORDER BY c.slug",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sets (or, for level none, removes) a user's access to a client. `actor`: who grants it, if its dominance
    /// over the user and its right to give this grant must hold.
    pub async fn set_access(
        &self,
        user: Uuid,
        client: Uuid,
        grant: Grant,
        granted_by: Uuid,
        actor: Option<Uuid>,
    ) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        lock_rights(&mut tx).await?;
        if let Some(mine) = still_dominates(&mut tx, actor, user).await?
            && !mine.may_grant(client, grant)
        {
            return Err(ControlError::NotDominated);
        }
        if grant.level == Level::None {
            sqlx::query("DELETE FROM client_access WHERE user_id = $1 AND client_id = $2")
                .bind(user)
                .bind(client)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(
                "INSERT INTO client_access (user_id, client_id, level, private_data, granted_by)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id, client_id) DO UPDATE
                 SET level = $3, private_data = $4, granted_by = $5, updated_at = now()",
            )
            .bind(user)
            .bind(client)
            .bind(grant.level.as_str())
            .bind(grant.private_data)
            .bind(granted_by)
            .execute(&mut *tx)
            .await?;
        }
        revoke_undominated(&mut tx, &[user]).await?;
        notify_auth_change(&mut tx).await?;
        tx.commit().await?;
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

    pub async fn roles(&self) -> Result<Vec<RoleRecord>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT r.name, r.description, r.builtin,
                    ARRAY(SELECT p.permission FROM role_permissions p WHERE p.role = r.name ORDER BY 1) AS permissions,
                    (SELECT count(*) FROM user_roles ur WHERE ur.role = r.name) AS users
             FROM roles r ORDER BY r.builtin DESC, r.name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The permissions of these roles together, and whether one of them is master-admin. Unknown names are
    /// refused.
    pub async fn permissions_of_roles(
        &self,
        roles: &[String],
    ) -> Result<(Permissions, bool), ControlError> {
        let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
            "SELECT r.name, ARRAY(SELECT p.permission FROM role_permissions p WHERE p.role = r.name)
             FROM roles r WHERE r.name = ANY($1)",
        )
        .bind(roles)
        .fetch_all(&self.pool)
        .await?;
        let unknown: Vec<String> = roles
            .iter()
            .filter(|r| !rows.iter().any(|(name, _)| name == *r))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(ControlError::UnknownRoles(unknown));
        }
        let permissions = rows
            .iter()
            .flat_map(|(_, p)| Permissions::from_stored(p).iter())
            .collect();
        Ok((permissions, roles.iter().any(|r| r == MASTER_ADMIN)))
    }

    pub async fn create_role(
        &self,
        name: &str,
        description: &str,
        permissions: Permissions,
    ) -> Result<RoleRecord, ControlError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query("INSERT INTO roles (name, description) VALUES ($1, $2)")
            .bind(name)
            .bind(description)
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(db)) if db.constraint() == Some("roles_pkey") => {
                return Err(ControlError::RoleNameTaken);
            }
            Err(e) => return Err(e.into()),
        }
        self.write_role_permissions(&mut tx, name, permissions)
            .await?;
        tx.commit().await?;
        self.role(name).await
    }

    /// Replaces a custom role's description and permissions.
    pub async fn replace_role(
        &self,
        name: &str,
        description: &str,
        permissions: Permissions,
        actor: Option<Uuid>,
    ) -> Result<RoleRecord, ControlError> {
        let mut tx = self.pool.begin().await?;
        lock_custom_role(&mut tx, name).await?;
        if let Some(actor) = actor {
            // Every holder's rights change: the actor must dominate each (and not be one).
            lock_rights(&mut tx).await?;
            let holders: Vec<Uuid> =
                sqlx::query_scalar("SELECT user_id FROM user_roles WHERE role = $1")
                    .bind(name)
                    .fetch_all(&mut *tx)
                    .await?;
            for holder in holders {
                if holder == actor {
                    return Err(ControlError::NotDominated);
                }
                still_dominates(&mut tx, Some(actor), holder).await?;
            }
        }
        sqlx::query("UPDATE roles SET description = $2, updated_at = now() WHERE name = $1")
            .bind(name)
            .bind(description)
            .execute(&mut *tx)
            .await?;
        self.write_role_permissions(&mut tx, name, permissions)
            .await?;
        // Its holders' rights changed: tokens minted for or by them may no longer be covered.
        let holders: Vec<Uuid> =
            sqlx::query_scalar("SELECT user_id FROM user_roles WHERE role = $1")
                .bind(name)
                .fetch_all(&mut *tx)
                .await?;
        revoke_undominated(&mut tx, &holders).await?;
        tx.commit().await?;
        self.role(name).await
    }

    async fn write_role_permissions(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        name: &str,
        permissions: Permissions,
    ) -> Result<(), ControlError> {
        sqlx::query("DELETE FROM role_permissions WHERE role = $1")
            .bind(name)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO role_permissions (role, permission) SELECT $1, unnest($2::text[])",
        )
        .bind(name)
        .bind(permissions.names())
        .execute(&mut **tx)
        .await?;
        notify_auth_change(tx).await
    }

    /// The users who hold a role.
    pub async fn role_holders(&self, name: &str) -> Result<Vec<Uuid>, ControlError> {
        Ok(
            sqlx::query_scalar("SELECT user_id FROM user_roles WHERE role = $1 ORDER BY user_id")
                .bind(name)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn role(&self, name: &str) -> Result<RoleRecord, ControlError> {
        self.roles()
            .await?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or(ControlError::NotFound)
    }

    /// Deletes a custom role that nobody holds.
    pub async fn delete_role(&self, name: &str) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        lock_custom_role(&mut tx, name).await?;
        let holders: i64 = sqlx::query_scalar("SELECT count(*) FROM user_roles WHERE role = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        if holders > 0 {
            return Err(ControlError::RoleInUse(holders));
        }
        sqlx::query("DELETE FROM roles WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        notify_auth_change(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records an entry with an asynchronous commit: the insert does not wait for its WAL flush (a PostgreSQL or
    /// machine crash can lose the last fraction of a second of entries; a crash of mandant loses nothing). Measured:
    /// a synchronous commit here halved write throughput (`cargo bench --bench auth`).
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO audit_log (user_id, username, client_id, client_slug, action, target, outcome, status,
                                    request_id, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(entry.user_id)
        .bind(entry.username.as_deref())
        .bind(entry.client_id)
        .bind(entry.client_slug.as_deref())
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(entry.outcome)
        .bind(i16::try_from(entry.status).unwrap_or(i16::MAX))
        .bind(entry.request_id.as_deref())
        .bind(entry.detail.as_ref())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes audit entries older than `days`, in batches (no long lock on the table); returns how many.
    pub async fn prune_audit(&self, days: u32) -> Result<u64, ControlError> {
        const BATCH: i64 = 10_000;
        let mut pruned = 0;
        loop {
            let deleted = sqlx::query(
                "DELETE FROM audit_log WHERE id IN (
                     SELECT id FROM audit_log WHERE at < now() - make_interval(days => $1) ORDER BY id LIMIT $2)",
            )
            .bind(i32::try_from(days).unwrap_or(i32::MAX))
            .bind(BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            pruned += deleted;
            if deleted < BATCH as u64 {
                return Ok(pruned);
            }
        }
    }

    /// Audit entries, newest first.
    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT id, at, username, client_slug, action, target, outcome, status, request_id, detail
             FROM audit_log
             WHERE ($1::uuid IS NULL OR client_id = $1)
               AND ($2::text IS NULL OR username = $2)
               AND ($3::uuid[] IS NULL OR client_id = ANY($3))
               AND ($4::bigint IS NULL OR id < $4)
             ORDER BY id DESC LIMIT $5",
        )
        .bind(filter.client)
        .bind(filter.username.as_deref())
        .bind(filter.visible.as_deref())
        .bind(filter.before)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
