//! Users, roles and per-client access: the rights model of DESIGN.md §6, as plain logic.
//!
//! A user's **permissions** come from its roles (roles are global: the same for every client); its **access** is
//! per client: `full`, `read`, or none (invisible), plus the `private_data` right. A call on client X needs the
//! permission *and* access to X: none → 404 (the client looks like one that does not exist), read → only the
//! `*.read` permissions. The built-in `master-admin` role has everything on every client, private data included.
//! Access to a parent implies nothing about its sub-clients.
//!
//! No escalation: a user may grant only roles whose permissions it holds, only on clients where it has full
//! access, with at most its own private-data right; it may manage another user only if it
//! [dominates](Rights::dominates) that user; nobody edits their own roles or access.
//!
//! Pure data and functions (no I/O), so every layer can use it: the SQL is in `control/access/`; authentication
//! and the rights-changing service calls in `access/`; the enforcement on every route in `http/auth.rs`.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Invalid, is_identifier};

/// A permission token (DESIGN.md §6).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
pub enum Permission {
    #[serde(rename = "clients.read")]
    ClientsRead,
    #[serde(rename = "clients.create")]
    ClientsCreate,
    #[serde(rename = "clients.manage")]
    ClientsManage,
    #[serde(rename = "clients.delete")]
    ClientsDelete,
    #[serde(rename = "fields.read")]
    FieldsRead,
    #[serde(rename = "fields.manage")]
    FieldsManage,
    #[serde(rename = "templates.read")]
    TemplatesRead,
    #[serde(rename = "templates.manage")]
    TemplatesManage,
    #[serde(rename = "recipients.read")]
    RecipientsRead,
    #[serde(rename = "recipients.write")]
    RecipientsWrite,
    #[serde(rename = "recipients.import")]
    RecipientsImport,
    #[serde(rename = "users.read")]
    UsersRead,
    #[serde(rename = "users.manage")]
    UsersManage,
    #[serde(rename = "roles.manage")]
    RolesManage,
    #[serde(rename = "audit.read")]
    AuditRead,
    #[serde(rename = "servers.manage")]
    ServersManage,
}

impl Permission {
    pub const ALL: [Permission; 16] = [
        Self::ClientsRead,
        Self::ClientsCreate,
        Self::ClientsManage,
        Self::ClientsDelete,
        Self::FieldsRead,
        Self::FieldsManage,
        Self::TemplatesRead,
        Self::TemplatesManage,
        Self::RecipientsRead,
        Self::RecipientsWrite,
        Self::RecipientsImport,
        Self::UsersRead,
        Self::UsersManage,
        Self::RolesManage,
        Self::AuditRead,
        Self::ServersManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientsRead => "clients.read",
            Self::ClientsCreate => "clients.create",
            Self::ClientsManage => "clients.manage",
            Self::ClientsDelete => "clients.delete",
            Self::FieldsRead => "fields.read",
            Self::FieldsManage => "fields.manage",
            Self::TemplatesRead => "templates.read",
            Self::TemplatesManage => "templates.manage",
            Self::RecipientsRead => "recipients.read",
            Self::RecipientsWrite => "recipients.write",
            Self::RecipientsImport => "recipients.import",
            Self::UsersRead => "users.read",
            Self::UsersManage => "users.manage",
            Self::RolesManage => "roles.manage",
            Self::AuditRead => "audit.read",
            Self::ServersManage => "servers.manage",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == value)
    }

    /// The `*.read` permissions are the only ones `read` access allows.
    pub fn is_read(self) -> bool {
        self.as_str().ends_with(".read")
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::ClientsRead => "See clients and the operations on them.",
            Self::ClientsCreate => "Create sub-clients (under a client with full access).",
            Self::ClientsManage => "Rename, suspend and resume clients.",
            Self::ClientsDelete => "Delete clients and their databases.",
            Self::FieldsRead => "See field definitions.",
            Self::FieldsManage => "Define, change and drop fields (central fields: on the master).",
            Self::TemplatesRead => "See templates and their sync state.",
            Self::TemplatesManage => "Create, publish, override and retract templates.",
            Self::RecipientsRead => "See recipients, mailing lists and target groups.",
            Self::RecipientsWrite => "Add, change and delete recipients, lists and target groups.",
            Self::RecipientsImport => "Import recipients in bulk.",
            Self::UsersRead => "See users, their access and the roles.",
            Self::UsersManage => {
                "Create, change and delete users; grant roles and access; manage tokens."
            }
            Self::RolesManage => "Define roles.",
            Self::AuditRead => "Read the audit log.",
            Self::ServersManage => "Register and drain database servers.",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions(u32);

impl Permissions {
    pub fn all() -> Self {
        Self::from_iter(Permission::ALL)
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn insert(&mut self, p: Permission) {
        self.0 |= p.bit();
    }

    pub fn is_subset_of(self, other: Self) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    /// Permission tokens as stored; unknown ones (from a newer release) are ignored.
    pub fn from_stored<S: AsRef<str>>(tokens: &[S]) -> Self {
        tokens
            .iter()
            .filter_map(|t| Permission::parse(t.as_ref()))
            .collect()
    }

    /// Tokens from a request: every one must be known.
    pub fn parse_all(tokens: &[String]) -> Result<Self, Invalid> {
        tokens
            .iter()
            .map(|t| {
                Permission::parse(t).ok_or_else(|| Invalid {
                    field: "permissions",
                    reason: format!(
                        "unknown permission {:?} (see GET /v1/permissions)",
                        truncate(t)
                    ),
                })
            })
            .collect()
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Permission::as_str).collect()
    }
}

impl FromIterator<Permission> for Permissions {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        let mut set = Self::default();
        for p in iter {
            set.insert(p);
        }
        set
    }
}

fn truncate(value: &str) -> String {
    value.chars().take(64).collect()
}

/// The name of the role that has everything everywhere.
pub const MASTER_ADMIN: &str = "master-admin";

/// The built-in roles and their permissions (names fixed by DESIGN.md §6).
pub fn builtin_roles() -> [(&'static str, Permissions); 4] {
    use Permission::*;
    let all = Permissions::all();
    let reads = || Permission::ALL.into_iter().filter(|p| p.is_read());
    let client_admin = all
        .iter()
        .filter(|p| {
            !matches!(
                p,
                ClientsCreate | ClientsDelete | RolesManage | ServersManage
            )
        })
        .collect();
    let editor = reads()
        .chain([TemplatesManage, RecipientsWrite, RecipientsImport])
        .collect();
    let viewer = reads().filter(|p| *p != AuditRead).collect();
    [
        (MASTER_ADMIN, all),
        ("client-admin", client_admin),
        ("editor", editor),
        ("viewer", viewer),
    ]
}

pub fn is_builtin_role(name: &str) -> bool {
    builtin_roles().iter().any(|(n, _)| *n == name)
}

/// Access to one client. `None` is the absence of a grant (the client is invisible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    None,
    Read,
    Full,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Read => "read",
            Self::Full => "full",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "none" => Some(Self::None),
            "read" => Some(Self::Read),
            "full" => Some(Self::Full),
            _ => None,
        }
    }

    /// A level as the control plane stores it (its CHECK admits only the three; anything else reads as none).
    pub fn from_stored(value: &str) -> Self {
        Self::parse(value).unwrap_or(Self::None)
    }
}

/// A user's access to one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Grant {
    pub level: Level,
    pub private_data: bool,
}

impl Grant {
    pub const NONE: Self = Self {
        level: Level::None,
        private_data: false,
    };
    pub const EVERYTHING: Self = Self {
        level: Level::Full,
        private_data: true,
    };

    pub fn is_visible(self) -> bool {
        self.level > Level::None
    }
}

/// Why a call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No access to the client: answer exactly as for a client that does not exist.
    Invisible,
    /// None of the user's roles has the permission.
    Permission(Permission),
    /// The permission writes, and the user has read access to the client.
    ReadOnly(Permission),
}

/// What a user may do: permissions through roles, access per client.
#[derive(Debug, Clone, Default)]
pub struct Rights {
    pub master_admin: bool,
    pub permissions: Permissions,
    pub access: super::FastMap<Uuid, Grant>,
}

impl Rights {
    pub fn can(&self, p: Permission) -> bool {
        self.master_admin || self.permissions.contains(p)
    }

    pub fn grant(&self, client: Uuid) -> Grant {
        if self.master_admin {
            Grant::EVERYTHING
        } else {
            self.access.get(&client).copied().unwrap_or(Grant::NONE)
        }
    }

    /// The rule of DESIGN.md §6 for a call on `client` that needs `p`.
    pub fn authorize(&self, client: Uuid, p: Permission) -> Result<Grant, Denied> {
        let grant = self.grant(client);
        if !grant.is_visible() {
            return Err(Denied::Invisible);
        }
        if !self.can(p) {
            return Err(Denied::Permission(p));
        }
        if grant.level == Level::Read && !p.is_read() {
            return Err(Denied::ReadOnly(p));
        }
        Ok(grant)
    }

    /// The clients this user can see (`None` = every client: a master admin).
    pub fn visible_clients(&self) -> Option<Vec<Uuid>> {
        if self.master_admin {
            return None;
        }
        Some(
            self.access
                .iter()
                .filter(|(_, g)| g.is_visible())
                .map(|(id, _)| *id)
                .collect(),
        )
    }

    /// Whether this user could have granted everything `other` holds: it may then manage `other` (change,
    /// disable, delete, mint or revoke its tokens). A master admin dominates everyone; nobody else dominates a
    /// master admin.
    pub fn dominates(&self, other: &Rights) -> bool {
        if self.master_admin {
            return true;
        }
        if other.master_admin || !other.permissions.is_subset_of(self.permissions) {
            return false;
        }
        other
            .access
            .iter()
            .filter(|(_, g)| g.is_visible())
            .all(|(client, theirs)| self.may_grant(*client, *theirs))
    }

    /// Whether this user may give someone `grant` on `client`: it needs full access there, and the private-data
    /// right to pass it on.
    pub fn may_grant(&self, client: Uuid, grant: Grant) -> bool {
        let mine = self.grant(client);
        mine.level == Level::Full && (!grant.private_data || mine.private_data)
    }

    /// Whether this user may give someone the roles with these permissions (`master_admin`: one of them is the
    /// master-admin role, which only a master admin can give).
    pub fn may_assign(&self, permissions: Permissions, master_admin: bool) -> bool {
        self.master_admin || (!master_admin && permissions.is_subset_of(self.permissions))
    }
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Principal {
    pub user_id: Uuid,
    pub username: String,
    pub home_client: Uuid,
    pub token_id: Uuid,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub roles: Vec<String>,
    pub rights: Rights,
}

/// Prefix of the tokens mandant generates (lets secret scanners recognise a leaked one).
pub const TOKEN_PREFIX: &str = "mdt_";
/// Tokens accepted in a header: at least 32 characters (a configured bootstrap token may be any such string).
pub const TOKEN_MIN_LEN: usize = 32;
const TOKEN_MAX_LEN: usize = 256;

/// A new bearer token: [`random_secret`] with the token prefix.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_secret())
}

/// 256 random bits from the operating-system-seeded CSPRNG, base64url without padding (43 characters): API
/// tokens, console session ids and CSRF tokens.
pub fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored of a token: its SHA-256. (A token has 256 random bits, so a slow password hash adds nothing.)
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two token hashes in constant time.
pub fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// What an `Authorization` header value says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// `Bearer <token>` with a token of plausible shape.
    Bearer(&'a str),
    /// A `Bearer` header (or one without any scheme) that holds no plausible token: refused, never passed over.
    Malformed,
    /// Another scheme (`Basic` credentials a browser adds behind a proxy that asks for them): not ours.
    OtherScheme,
}

/// Classifies an `Authorization` header value (`None`: not valid header text).
pub fn authorization(header: Option<&str>) -> Authorization<'_> {
    let Some(header) = header.map(str::trim) else {
        return Authorization::Malformed;
    };
    let (scheme, token) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.is_empty() && !scheme.eq_ignore_ascii_case("bearer") {
        return Authorization::OtherScheme;
    }
    let token = token.trim();
    if plausible_token(token) {
        Authorization::Bearer(token)
    } else {
        Authorization::Malformed
    }
}

/// Whether `token` has a token's shape (length and characters); anything else is refused before any lookup.
pub fn plausible_token(token: &str) -> bool {
    (TOKEN_MIN_LEN..=TOKEN_MAX_LEN).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_graphic())
}

/// A username: `^[a-z][a-z0-9._-]{1,62}$`, unique across all clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        if is_identifier(value, 2..=63, &['.', '_', '-']) {
            Ok(Self(value.to_owned()))
        } else {
            Err(Invalid {
                field: "username",
                reason:
                    "must be 2-63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter"
                        .into(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A role name: `^[a-z][a-z0-9-]{1,39}$`.
pub fn parse_role_name(value: &str) -> Result<String, Invalid> {
    if is_identifier(value, 2..=40, &['-']) {
        Ok(value.to_owned())
    } else {
        Err(Invalid {
            field: "name",
            reason: "a role name is 2-40 characters of a-z, 0-9 and '-', starting with a letter"
                .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(perms: &[Permission], access: &[(Uuid, Level, bool)]) -> Rights {
        Rights {
            master_admin: false,
            permissions: perms.iter().copied().collect(),
            access: access
                .iter()
                .map(|(c, level, private_data)| {
                    (
                        *c,
                        Grant {
                            level: *level,
                            private_data: *private_data,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn builtin_roles_match_the_design() {
        let roles: std::collections::HashMap<_, _> = builtin_roles().into_iter().collect();
        assert_eq!(roles[MASTER_ADMIN], Permissions::all());
        let admin = roles["client-admin"];
        assert!(admin.contains(Permission::UsersManage) && admin.contains(Permission::AuditRead));
        assert!(
            !admin.contains(Permission::ClientsCreate) && !admin.contains(Permission::RolesManage)
        );
        let editor = roles["editor"];
        assert!(
            editor.contains(Permission::RecipientsImport) && editor.contains(Permission::AuditRead)
        );
        assert!(!editor.contains(Permission::FieldsManage));
        let viewer = roles["viewer"];
        assert!(viewer.iter().all(Permission::is_read));
        assert!(!viewer.contains(Permission::AuditRead));
        assert_eq!(viewer.iter().count(), 5);
    }

    #[test]
    fn access_none_hides_read_allows_only_reads() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let u = user(
            &[Permission::RecipientsRead, Permission::RecipientsWrite],
            &[(a, Level::Full, false), (b, Level::Read, true)],
        );
        assert!(u.authorize(a, Permission::RecipientsWrite).is_ok());
        assert_eq!(
            u.authorize(b, Permission::RecipientsWrite),
            Err(Denied::ReadOnly(Permission::RecipientsWrite))
        );
        assert!(
            u.authorize(b, Permission::RecipientsRead)
                .unwrap()
                .private_data
        );
        assert_eq!(
            u.authorize(c, Permission::RecipientsRead),
            Err(Denied::Invisible)
        );
        assert_eq!(
            u.authorize(a, Permission::FieldsRead),
            Err(Denied::Permission(Permission::FieldsRead))
        );
    }

    #[test]
    fn nobody_dominates_a_user_with_more() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let admin = user(
            &[Permission::UsersManage, Permission::RecipientsRead],
            &[(a, Level::Full, false)],
        );
        let reader = user(&[Permission::RecipientsRead], &[(a, Level::Read, false)]);
        assert!(admin.dominates(&reader));
        assert!(!reader.dominates(&admin));
        let private = user(&[Permission::RecipientsRead], &[(a, Level::Read, true)]);
        assert!(!admin.dominates(&private), "the private-data right is more");
        let elsewhere = user(&[Permission::RecipientsRead], &[(b, Level::Read, false)]);
        assert!(
            !admin.dominates(&elsewhere),
            "access where the admin has none"
        );
        let master = Rights {
            master_admin: true,
            ..Rights::default()
        };
        assert!(master.dominates(&admin) && !admin.dominates(&master));
        assert!(admin.may_assign([Permission::RecipientsRead].into_iter().collect(), false));
        assert!(!admin.may_assign(Permissions::all(), false));
        assert!(!admin.may_assign(Permissions::default(), true));
    }

    #[test]
    fn tokens_are_long_random_and_parsed_from_bearer_headers() {
        let t = new_token();
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() == 47, "{t}");
        assert_ne!(t, new_token());
        assert_eq!(
            authorization(Some(&format!("Bearer {t}"))),
            Authorization::Bearer(t.as_str())
        );
        assert_eq!(
            authorization(Some(&format!("bearer {t}"))),
            Authorization::Bearer(t.as_str())
        );
        assert_eq!(
            authorization(Some(&format!("Basic {t}"))),
            Authorization::OtherScheme
        );
        for malformed in [
            Some(""),
            Some("   "),
            Some("Bearer"),
            Some("bearer short"),
            None,
        ] {
            assert_eq!(
                authorization(malformed),
                Authorization::Malformed,
                "{malformed:?}"
            );
        }
        assert_eq!(random_secret().len(), 43);
        assert!(hashes_equal(&token_hash(&t), &token_hash(&t)));
        assert!(!hashes_equal(&token_hash(&t), &token_hash("other")));
    }

    #[test]
    fn usernames_and_role_names_are_checked() {
        assert!(Username::parse("anna.m-1").is_ok());
        for bad in ["A", "1abc", "a", "anna m", "anna;drop", ""] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
        assert!(parse_role_name("campaign-manager").is_ok());
        assert!(parse_role_name("Campaign").is_err());
    }
}
