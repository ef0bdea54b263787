//! Role definitions: the built-in roles, custom roles and their permissions.

use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

use super::{lock_rights, notify_auth_change, revoke_undominated, still_dominates};
use crate::control::{ControlError, ControlPlane};
use crate::domain::rights::{MASTER_ADMIN, Permissions, builtin_roles};

#[derive(Debug, Clone, FromRow)]
pub struct RoleRecord {
    pub name: String,
    pub description: String,
    pub builtin: bool,
    pub permissions: Vec<String>,
    /// How many users hold it.
    pub users: i64,
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

impl ControlPlane {
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
            return Err(ControlError::RoleInUse);
        }
        sqlx::query("DELETE FROM roles WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        notify_auth_change(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
