//! Users, roles, per-client access, API tokens and the audit log in the control plane (schema:
//! `control_migrations/V4__access.sql`): the only SQL on these tables. The rules are `domain::rights`' and the
//! checks before a change are `access/`'s; this module stores and reads, and re-checks inside each rights change's
//! transaction, under `RIGHTS_LOCK`, what the caller checked before (so concurrent changes cannot both pass on
//! stale rights). Never: HTTP types, caches, or decisions made without the lock that a concurrent change could
//! invalidate.
//!
//! Every change that can alter what a token may do `NOTIFY`s [`AUTH_CHANNEL`] in its transaction, so every
//! `mandant` process drops its cached principals when it commits (`access/authn.rs`).
//!
//! By concern: [`users`] (users, their roles, the first admin), [`grants`] (per-client access), [`tokens`] (API
//! tokens and the principal of a token), [`roles`] (role definitions), [`audit`] (the audit log); this file holds
//! what they share (the lock, the notification, reading rights in a transaction, the re-checks).

use std::collections::HashMap;

use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

use super::{ControlError, ControlPlane};
use crate::domain::rights::{Grant, Level, MASTER_ADMIN, Permissions, Rights};

/// The channel notified when users, roles, access or tokens change.
pub const AUTH_CHANNEL: &str = "mandant_auth";
/// The transaction-level advisory lock that serialises every change of rights (roles, access, delegated tokens,
/// role definitions, users disabled or deleted) and the first-start creation of the admin user, across processes.
/// The value is fixed ("mandauth"): processes of different versions sharing one control plane must agree on it.
const RIGHTS_LOCK: i64 = 0x6d61_6e64_6175_7468; // "mandauth"

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

pub mod audit;
pub mod grants;
pub mod roles;
pub mod sessions;
pub mod tokens;
pub mod users;

pub use audit::{AuditEntry, AuditFilter, AuditRecord};
pub use grants::AccessRow;
pub use roles::RoleRecord;
pub use tokens::{LoadedPrincipal, TokenMeta};
pub use users::{NewUser, UserChange, UserFilter, UserRecord, UserUpdated};

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
        let access: crate::domain::FastMap<Uuid, Grant> = self
            .access_clients
            .iter()
            .zip(&self.access_levels)
            .zip(&self.access_private)
            .map(|((client, level), private_data)| {
                let level = Level::from_stored(level);
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
/// so the checks made inside them (the last master admin, dominance) see every other change's result: takes
/// [`RIGHTS_LOCK`] (the first-start bootstrap takes it too) until the transaction ends.
async fn lock_rights(tx: &mut Transaction<'_, Postgres>) -> Result<(), ControlError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(RIGHTS_LOCK)
        .execute(&mut **tx)
        .await?;
    Ok(())
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

impl ControlPlane {
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
}
