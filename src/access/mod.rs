//! The access service: authentication (a bearer token → a principal, cached until a change is notified) in
//! [`authn`], and every change of rights as one call of [`RightsService`] that checks, writes and invalidates the
//! principal cache: users ([`users`]: create, change, disable, delete; access; tokens), role definitions
//! ([`roles`]) and the access a non-admin gets to a client it creates ([`clients`]). The rights model itself is
//! plain logic in [`crate::domain::rights`]; its SQL, and the re-checks inside each change's transaction under the
//! rights lock, are in `control/access/`.
//!
//! Why one service: a change of rights is a security-relevant sequence (no-escalation checks before, the write
//! with its in-transaction re-checks, dropping this process's cached principals after), and an edge that did one
//! step by hand could forget another. Edges (HTTP handlers) parse input into domain values, call one method, and
//! map the result (or [`AccessError`]) to a response.
//!
//! Never: HTTP types (status codes, response bodies: `http/error/` maps [`AccessError`]), SQL of its own, or a
//! write of rights that bypasses [`RightsService`] (outside the command line's operator token).

pub mod authn;
pub mod clients;
pub mod rights;
pub mod roles;
pub mod sessions;
pub mod users;

pub use clients::NewClient;
pub use rights::RightsService;
pub use users::MintedToken;

use crate::control::ControlError;
use crate::domain::rights::Denied;

/// Why a call of the access service did not change anything.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The user, client or token does not exist, or the caller cannot see it (answered alike).
    #[error("not found (or not visible to the caller)")]
    NotFound,
    /// The route's rule for a client: no permission, read-only access, or an invisible client.
    #[error("refused by the access rule: {0:?}")]
    Denied(Denied),
    /// The caller would change its own roles, access or status.
    #[error("nobody changes their own roles, access or status")]
    SelfEdit,
    /// The caller holds the role it would redefine.
    #[error("the caller holds the role it would change")]
    HoldsRole,
    /// The change would give someone more than the caller holds.
    #[error("escalation refused: {0}")]
    Escalation(Escalation),
    /// The parent of a new client does not exist or is invisible to the caller.
    #[error("the parent client does not exist")]
    UnknownParent,
    /// Rows of an all-or-nothing change were refused: each username with why (nothing was changed).
    #[error("{} row(s) refused", .0.len())]
    Rows(Vec<(String, AccessError)>),
    /// The control plane refused or failed the write (including its re-checks under the rights lock).
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Which no-escalation rule a change broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Escalation {
    /// The target user holds permissions or access the caller does not (`Rights::dominates`).
    #[error("the user holds permissions or access that the caller does not")]
    ManageUser,
    /// A role being given has a permission the caller does not hold (`Rights::may_assign`).
    #[error("a role being given has permissions that the caller does not hold")]
    AssignRole,
    /// The caller lacks the private-data right it would pass on (`Rights::may_grant`).
    #[error("the caller cannot pass on a private-data right it does not have")]
    PrivateData,
    /// A role definition with a permission the caller does not hold.
    #[error("a role can only have permissions that the caller holds")]
    DefineRole,
    /// Users the caller does not dominate hold the role being redefined.
    #[error("users the caller cannot manage hold the role")]
    RoleHolders,
}

impl From<Denied> for AccessError {
    fn from(denied: Denied) -> Self {
        Self::Denied(denied)
    }
}

impl From<Escalation> for AccessError {
    fn from(escalation: Escalation) -> Self {
        Self::Escalation(escalation)
    }
}
