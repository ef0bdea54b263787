//! Changes of users as one call each: creating, changing (display name, status, roles), deleting a user; granting
//! and revoking its access to a client; minting and revoking its tokens (a delegated token, minted for someone
//! else, needs the same dominance as managing that user: it would otherwise be impersonation).
//!
//! Managing a user needs `users.manage`, full access to its home client, and
//! [dominance](crate::domain::rights::Rights::dominates); a user manages its own tokens and display name; nobody
//! edits its own roles, access or status. Never: HTTP types, SQL.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::rights::{RightsService, acting};
use super::{AccessError, Escalation};
use crate::control::access::{NewUser, TokenMeta, UserChange, UserRecord, UserUpdated};
use crate::control::clients::ClientRecord;
use crate::domain::rights::{
    Denied, Grant, Level, Permission, Principal, Username, new_token, token_hash,
};

/// A token just minted: the only value that ever holds it (only its hash is stored).
#[derive(Debug)]
pub struct MintedToken {
    pub meta: TokenMeta,
    /// The bearer token, to be shown once.
    pub token: String,
}

impl RightsService {
    /// Creates a user homed at `new.home_client` (the caller needs `users.manage` and full access there) with
    /// roles the caller may give. A new user has no token, so no cached principal changes: nothing to invalidate.
    pub async fn create_user(
        &self,
        caller: &Principal,
        new: &NewUser<'_>,
    ) -> Result<UserRecord, AccessError> {
        caller
            .rights
            .authorize(new.home_client, Permission::UsersManage)?;
        self.check_roles(caller, new.roles).await?;
        Ok(self.control.create_user(new).await?)
    }

    /// Changes a user's display name, status or roles. A user may change its own display name; anything else
    /// needs the caller to manage it, and roles given must be the caller's to give. Disabling a user revokes its
    /// live tokens (the result counts them): enabling it again needs new ones.
    pub async fn update_user(
        &self,
        caller: &Principal,
        user: &UserRecord,
        change: &UserChange,
    ) -> Result<UserUpdated, AccessError> {
        let only_own_name =
            user.id == caller.user_id && change.roles.is_none() && change.disabled.is_none();
        if !only_own_name {
            self.check_manage(caller, user).await?;
        }
        if let Some(roles) = &change.roles {
            self.check_roles(caller, roles).await?;
        }
        let actor = if only_own_name { None } else { acting(caller) };
        let changed = self.control.update_user(user.id, change, actor).await?;
        self.changed();
        Ok(changed)
    }

    /// Deletes a user the caller manages (its tokens stop working at once; what it minted for others is revoked).
    pub async fn delete_user(
        &self,
        caller: &Principal,
        user: &UserRecord,
    ) -> Result<(), AccessError> {
        self.check_manage(caller, user).await?;
        self.control.delete_user(user.id, acting(caller)).await?;
        self.changed();
        Ok(())
    }

    /// Sets (or, for level none, removes) a user's access to a client. The caller must see the client, manage the
    /// user, have full access to the client, and hold the private-data right to pass it on.
    pub async fn set_access(
        &self,
        caller: &Principal,
        user: &UserRecord,
        client: &ClientRecord,
        grant: Grant,
    ) -> Result<(), AccessError> {
        if !caller.rights.grant(client.id).is_visible() {
            return Err(AccessError::NotFound);
        }
        self.check_grant(caller, user, client, grant).await?;
        self.control
            .set_access(user.id, client.id, grant, caller.user_id, acting(caller))
            .await?;
        self.changed();
        Ok(())
    }

    /// Sets several users' access to one client (a column of the access matrix), all or none: every row is
    /// checked as [`Self::set_access`] checks one, and when any is refused nothing is written and the error names
    /// each refused row ([`AccessError::Rows`]; an unknown or invisible user is refused as not found). A row that
    /// repeats a user's current grant changes nothing and is not checked beyond the user being visible (so a page
    /// may send the whole matrix, the caller's own unchanged row included).
    pub async fn set_client_access(
        &self,
        caller: &Principal,
        client: &ClientRecord,
        rows: &[(Username, Grant)],
    ) -> Result<(), AccessError> {
        if !caller.rights.grant(client.id).is_visible() {
            return Err(AccessError::NotFound);
        }
        let current = self.control.grants_on(client.id).await?;
        let names: Vec<&str> = rows.iter().map(|(name, _)| name.as_str()).collect();
        let users = self.users(caller, &names).await?;
        let mut checked = Vec::with_capacity(rows.len());
        let mut refused = Vec::new();
        for (name, grant) in rows {
            let allowed = match users.get(name.as_str()) {
                Some(user) if current.get(&user.id).copied().unwrap_or(Grant::NONE) == *grant => {
                    continue;
                }
                Some(user) => self
                    .check_grant(caller, user, client, *grant)
                    .await
                    .map(|()| user),
                None => Err(AccessError::NotFound),
            };
            match allowed {
                Ok(user) => checked.push((user.id, *grant)),
                Err(AccessError::Control(e)) => return Err(e.into()),
                Err(e) => refused.push((name.as_str().to_owned(), e)),
            }
        }
        if !refused.is_empty() {
            return Err(AccessError::Rows(refused));
        }
        if checked.is_empty() {
            return Ok(());
        }
        self.control
            .set_client_access(client.id, &checked, caller.user_id, acting(caller))
            .await?;
        self.changed();
        Ok(())
    }

    /// Whether the caller may give `user` this grant on `client`: it manages the user, has full access to the
    /// client, and holds the private-data right it would pass on.
    async fn check_grant(
        &self,
        caller: &Principal,
        user: &UserRecord,
        client: &ClientRecord,
        grant: Grant,
    ) -> Result<(), AccessError> {
        self.check_manage(caller, user).await?;
        if caller.rights.may_grant(client.id, grant) {
            Ok(())
        } else if caller.rights.grant(client.id).level < Level::Full {
            Err(Denied::ReadOnly(Permission::UsersManage).into())
        } else {
            Err(Escalation::PrivateData.into())
        }
    }

    /// Mints a token for `user`: the caller's own, or (delegated) one for a user the caller manages. It never
    /// outlives the caller's token (a leaked short-lived token cannot mint a permanent one). A new token is in no
    /// cache: nothing to invalidate.
    pub async fn create_token(
        &self,
        caller: &Principal,
        user: &UserRecord,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<MintedToken, AccessError> {
        let expires_at = match (expires_at, caller.expires_at) {
            (Some(wanted), Some(limit)) => Some(wanted.min(limit)),
            (wanted, limit) => wanted.or(limit),
        };
        self.check_token_owner(caller, user).await?;
        let token = new_token();
        let minter = (user.id != caller.user_id).then_some(caller.user_id);
        let meta = self
            .control
            .create_token(user.id, name, &token_hash(&token), expires_at, minter)
            .await?;
        Ok(MintedToken { meta, token })
    }

    /// Revokes one of `user`'s tokens (the caller's own, or a user's it manages); refused at once everywhere.
    pub async fn revoke_token(
        &self,
        caller: &Principal,
        user: &UserRecord,
        token: Uuid,
    ) -> Result<(), AccessError> {
        self.check_token_owner(caller, user).await?;
        self.control.revoke_token(user.id, token).await?;
        self.changed();
        Ok(())
    }
}
