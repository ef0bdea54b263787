//! Creating a client as a change of rights: a creator who is not a master admin gets full access to the client it
//! made (access to a parent implies none to its children), so its principal changes. Never: HTTP types, SQL.

use uuid::Uuid;

use super::AccessError;
use super::rights::RightsService;
use crate::control::clients::ClientRecord;
use crate::domain::rights::{Denied, Permission, Principal};
use crate::domain::servers::Zone;
use crate::domain::{ClientName, ClientSlug};

/// A sub-client to create, under a parent the caller named.
pub struct NewClient<'a> {
    pub slug: &'a ClientSlug,
    pub name: &'a ClientName,
    /// The parent as named, and its id as resolved (the caller's access is checked on it).
    pub parent: &'a ClientSlug,
    pub parent_id: Uuid,
    /// Attempts of the provisioning job.
    pub max_attempts: i32,
    /// Place the client only on a server in this zone.
    pub zone: Option<&'a Zone>,
}

impl RightsService {
    /// Registers a sub-client and enqueues its provisioning. The caller needs `clients.create` with full access
    /// to the parent (an invisible parent is one that does not exist); a creator who is not a master admin gets
    /// full access to the new client with the private-data right it has on the parent. Returns the client and
    /// its operation id.
    pub async fn create_client(
        &self,
        caller: &Principal,
        new: &NewClient<'_>,
    ) -> Result<(ClientRecord, Uuid), AccessError> {
        let creator_access = creator_access(caller, new)?;
        let created = self
            .control
            .create_client(
                new.slug,
                new.name,
                Some(new.parent),
                creator_access,
                new.max_attempts,
                new.zone,
            )
            .await?;
        if creator_access.is_some() {
            self.changed();
        }
        Ok(created)
    }

    /// Registers an inner client of `new.parent` with its scope (validated by the caller), active at once. The
    /// same rights as creating a sub-client; the same access for a creator who is not a master admin.
    pub async fn create_inner_client(
        &self,
        caller: &Principal,
        new: &NewClient<'_>,
        scope: &serde_json::Value,
    ) -> Result<ClientRecord, AccessError> {
        let creator_access = creator_access(caller, new)?;
        let created = self
            .control
            .create_inner_client(new.slug, new.name, new.parent, scope, creator_access)
            .await?;
        if creator_access.is_some() {
            self.changed();
        }
        Ok(created)
    }
}

/// Creating under `new.parent` needs `clients.create` with full access to it (an invisible parent is one that does
/// not exist). A creator who is not a master admin gets full access to the new client, with the private-data right
/// it has on the parent: returned as (user, private data).
fn creator_access(
    caller: &Principal,
    new: &NewClient<'_>,
) -> Result<Option<(Uuid, bool)>, AccessError> {
    let grant = match caller
        .rights
        .authorize(new.parent_id, Permission::ClientsCreate)
    {
        Ok(grant) => grant,
        Err(Denied::Invisible) => return Err(AccessError::UnknownParent),
        Err(denied) => return Err(denied.into()),
    };
    Ok((!caller.rights.master_admin).then_some((caller.user_id, grant.private_data)))
}
