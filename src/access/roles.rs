//! Changes of role definitions as one call each. Roles are central (usable for users of every client); a role can
//! only be given permissions its author holds, and redefining one changes the rights of every holder, so the
//! author must dominate each (and not be one, unless a master admin). Built-in roles are fixed (the control plane
//! refuses them). Never: HTTP types, SQL.

use super::rights::{RightsService, acting};
use super::{AccessError, Escalation};
use crate::control::access::RoleRecord;
use crate::domain::rights::{Permissions, Principal};

impl RightsService {
    /// Defines a role with permissions the caller holds.
    pub async fn create_role(
        &self,
        caller: &Principal,
        name: &str,
        description: &str,
        permissions: Permissions,
    ) -> Result<RoleRecord, AccessError> {
        check_permissions(caller, permissions)?;
        let role = self
            .control
            .create_role(name, description, permissions)
            .await?;
        self.changed();
        Ok(role)
    }

    /// Replaces a custom role's description and permissions; its holders' rights change at once.
    pub async fn replace_role(
        &self,
        caller: &Principal,
        name: &str,
        description: &str,
        permissions: Permissions,
    ) -> Result<RoleRecord, AccessError> {
        check_permissions(caller, permissions)?;
        self.check_holders(caller, name).await?;
        let role = self
            .control
            .replace_role(name, description, permissions, acting(caller))
            .await?;
        self.changed();
        Ok(role)
    }

    /// Deletes a custom role nobody holds (so nobody's rights change; `roles.manage` is the route's rule).
    pub async fn delete_role(&self, _caller: &Principal, name: &str) -> Result<(), AccessError> {
        self.control.delete_role(name).await?;
        self.changed();
        Ok(())
    }

    /// A role's new definition reaches every holder on every client: the caller must be able to manage each of
    /// them (and is not one of them, unless a master admin: nobody edits their own rights).
    async fn check_holders(&self, caller: &Principal, role: &str) -> Result<(), AccessError> {
        if caller.rights.master_admin {
            return Ok(());
        }
        let holders = self.control.role_holders(role).await?;
        // The caller's own holding first: which refusal comes must not depend on the order of other holders.
        if holders.contains(&caller.user_id) {
            return Err(AccessError::HoldsRole);
        }
        // Every holder counts, visible to the caller or not; the refusal names none and counts none.
        for holder in holders {
            let theirs = self.control.user_rights(holder).await?;
            if !caller.rights.dominates(&theirs) {
                return Err(Escalation::RoleHolders.into());
            }
        }
        Ok(())
    }
}

/// A role definition may carry only permissions the caller holds.
fn check_permissions(caller: &Principal, permissions: Permissions) -> Result<(), AccessError> {
    if caller.rights.may_assign(permissions, false) {
        Ok(())
    } else {
        Err(Escalation::DefineRole.into())
    }
}
