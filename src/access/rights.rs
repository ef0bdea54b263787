//! [`RightsService`]: the value through which every change of rights goes, its shared no-escalation checks, and
//! the reads that apply the visibility rules (which users, whose access, whose tokens a caller sees). The changes
//! themselves are in `users.rs`, `roles.rs` and `clients.rs`.
//!
//! Every change method checks (before, on the caller's principal), writes (the control plane re-checks under the
//! rights lock, in the same transaction), and on success drops this process's cached principals
//! (`Authenticator::invalidate`); other processes drop theirs on the change's `NOTIFY`. Never: HTTP types, SQL.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::authn::Authenticator;
use super::{AccessError, Escalation};
use crate::control::access::{AccessRow, TokenMeta, UserRecord};
use crate::control::{ControlError, ControlPlane};
use crate::domain::rights::{Permission, Principal, Username};

/// Checks, writes and cache invalidation of every change of users, roles, access and tokens; cheap to clone.
#[derive(Clone)]
pub struct RightsService {
    pub(super) control: ControlPlane,
    auth: Arc<Authenticator>,
}

impl RightsService {
    /// The service over this control plane, invalidating this authenticator's cache after each change.
    pub fn new(control: ControlPlane, auth: Arc<Authenticator>) -> Self {
        Self { control, auth }
    }

    /// After a committed change that can alter a principal: drop this process's cached principals (before the
    /// edge answers, so the caller's next request sees the change).
    pub(super) fn changed(&self) {
        self.auth.invalidate();
    }

    /// A user the caller can see: itself, or one homed at a client the caller can see. `NotFound` otherwise, as
    /// for one that does not exist.
    pub async fn user(
        &self,
        caller: &Principal,
        username: &Username,
    ) -> Result<UserRecord, AccessError> {
        let user = match self.control.user_by_name(username.as_str()).await {
            Ok(user) => user,
            Err(ControlError::NotFound) => return Err(AccessError::NotFound),
            Err(e) => return Err(e.into()),
        };
        if visible_to(caller, &user) {
            Ok(user)
        } else {
            Err(AccessError::NotFound)
        }
    }

    /// The users of these names that the caller can see, by username, in one query (a name missing from the map
    /// is `NotFound` for the caller, whether it does not exist or is invisible).
    pub(super) async fn users(
        &self,
        caller: &Principal,
        usernames: &[&str],
    ) -> Result<HashMap<String, UserRecord>, AccessError> {
        let found = self.control.users_by_names(usernames).await?;
        Ok(found
            .into_iter()
            .filter(|user| visible_to(caller, user))
            .map(|user| (user.username.clone(), user))
            .collect())
    }

    /// The user's access, restricted to clients the caller can see (all of it for the caller itself).
    pub async fn access_of(
        &self,
        caller: &Principal,
        user: &UserRecord,
    ) -> Result<Vec<AccessRow>, AccessError> {
        let rows = self.control.access_of(user.id).await?;
        Ok(rows
            .into_iter()
            .filter(|a| user.id == caller.user_id || caller.rights.grant(a.client_id).is_visible())
            .collect())
    }

    /// A user's tokens (metadata only), for itself or for a caller who may manage it.
    pub async fn tokens(
        &self,
        caller: &Principal,
        user: &UserRecord,
    ) -> Result<Vec<TokenMeta>, AccessError> {
        self.check_token_owner(caller, user).await?;
        Ok(self.control.tokens(user.id).await?)
    }

    /// Whether the caller may manage `user` (not itself): `users.manage`, full access to its home client, and
    /// dominance.
    pub(super) async fn check_manage(
        &self,
        caller: &Principal,
        user: &UserRecord,
    ) -> Result<(), AccessError> {
        if user.id == caller.user_id {
            return Err(AccessError::SelfEdit);
        }
        caller
            .rights
            .authorize(user.home_client_id, Permission::UsersManage)?;
        let theirs = self.control.user_rights(user.id).await?;
        if caller.rights.dominates(&theirs) {
            Ok(())
        } else {
            Err(Escalation::ManageUser.into())
        }
    }

    /// Whether the caller may give these roles (every permission they carry is its own).
    pub(super) async fn check_roles(
        &self,
        caller: &Principal,
        roles: &[String],
    ) -> Result<(), AccessError> {
        let (permissions, master_admin) = self.control.permissions_of_roles(roles).await?;
        if caller.rights.may_assign(permissions, master_admin) {
            Ok(())
        } else {
            Err(Escalation::AssignRole.into())
        }
    }

    /// Whether the caller may act on `user`'s tokens: its own, or those of a user it may manage. Without
    /// `users.read`, other users do not exist for the caller (no 403 that confirms one).
    pub(super) async fn check_token_owner(
        &self,
        caller: &Principal,
        user: &UserRecord,
    ) -> Result<(), AccessError> {
        if user.id != caller.user_id {
            if !caller.rights.can(Permission::UsersRead) {
                return Err(AccessError::NotFound);
            }
            self.check_manage(caller, user).await?;
        }
        Ok(())
    }
}

/// The caller as the control plane re-checks it inside a change (master admins need no check).
pub(super) fn acting(caller: &Principal) -> Option<Uuid> {
    (!caller.rights.master_admin).then_some(caller.user_id)
}

/// Whether `caller` can see `user`: itself, or a user homed at a client the caller can see.
fn visible_to(caller: &Principal, user: &UserRecord) -> bool {
    user.id == caller.user_id || caller.rights.grant(user.home_client_id).is_visible()
}
