//! The access policy of every route: (method, route template) → [`Rule`], looked up by [`policy`].
//!
//! [`super::auth::guard`] applies it before any handler runs; a route without an entry is never run (405, with
//! the methods the route has: [`methods`]). A test walks the OpenAPI document and asserts every operation has an
//! entry and answers 401 without a token, so an endpoint cannot be added unprotected.

use std::sync::OnceLock;

use axum::http::Method;

use crate::domain::FastMap;
use crate::domain::rights::Permission;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Nothing (health, metrics, the OpenAPI document).
    Public,
    /// A valid token; the handler decides the rest (`/v1/me`, a user's own tokens).
    Authenticated,
    /// The permission through a role; the handler filters what it returns by access.
    Global(Permission),
    /// The permission and access to the client of the `{slug}` path parameter (DESIGN.md §6): none → 404
    /// exactly as for a client that does not exist, read → `*.read` only.
    Client(Permission),
    /// The permission and access to the master client (central fields, master templates, roles).
    Master(Permission),
    /// The permission and full access to the master client (cross-client target groups: defining one needs
    /// `recipients.read` only, but it is a central definition, like a central field).
    MasterFull(Permission),
}

/// The access policy of every route: (method, route template, rule). HEAD is checked as GET.
pub const POLICIES: &[(&str, &str, Rule)] = {
    use Permission::*;
    use Rule::*;
    &[
        ("GET", "/healthz", Public),
        ("GET", "/readyz", Public),
        ("GET", "/metrics", Public),
        ("GET", "/v1/openapi.json", Public),
        // Clients and their operations.
        ("GET", "/v1/clients", Global(ClientsRead)),
        ("POST", "/v1/clients", Global(ClientsCreate)),
        ("GET", "/v1/clients/{slug}", Client(ClientsRead)),
        ("PATCH", "/v1/clients/{slug}", Client(ClientsManage)),
        ("DELETE", "/v1/clients/{slug}", Client(ClientsDelete)),
        ("POST", "/v1/clients/{slug}/suspend", Client(ClientsManage)),
        ("POST", "/v1/clients/{slug}/resume", Client(ClientsManage)),
        ("GET", "/v1/operations/{id}", Global(ClientsRead)),
        // Fields: central ones are the master's.
        ("GET", "/v1/fields", Master(FieldsRead)),
        ("POST", "/v1/fields", Master(FieldsManage)),
        ("GET", "/v1/fields/{name}", Master(FieldsRead)),
        ("DELETE", "/v1/fields/{name}", Master(FieldsManage)),
        ("GET", "/v1/clients/{slug}/fields", Client(FieldsRead)),
        ("POST", "/v1/clients/{slug}/fields", Client(FieldsManage)),
        (
            "PATCH",
            "/v1/clients/{slug}/fields/{name}",
            Client(FieldsManage),
        ),
        (
            "DELETE",
            "/v1/clients/{slug}/fields/{name}",
            Client(FieldsManage),
        ),
        // Templates: master templates are the master's.
        ("GET", "/v1/templates", Master(TemplatesRead)),
        ("POST", "/v1/templates", Master(TemplatesManage)),
        ("GET", "/v1/templates/{id}", Master(TemplatesRead)),
        ("PUT", "/v1/templates/{id}", Master(TemplatesManage)),
        ("DELETE", "/v1/templates/{id}", Master(TemplatesManage)),
        ("GET", "/v1/templates/{id}/sync", Master(TemplatesRead)),
        ("GET", "/v1/clients/{slug}/templates", Client(TemplatesRead)),
        (
            "POST",
            "/v1/clients/{slug}/templates",
            Client(TemplatesManage),
        ),
        (
            "GET",
            "/v1/clients/{slug}/templates/{id}",
            Client(TemplatesRead),
        ),
        (
            "PUT",
            "/v1/clients/{slug}/templates/{id}",
            Client(TemplatesManage),
        ),
        (
            "DELETE",
            "/v1/clients/{slug}/templates/{id}/override",
            Client(TemplatesManage),
        ),
        // Content between clients: the handlers also need full access to every target of a copy, and
        // recipients.read (export) or recipients.write (import) for the lists and target groups.
        (
            "POST",
            "/v1/clients/{slug}/templates/{id}/copy",
            Client(TemplatesManage),
        ),
        ("GET", "/v1/clients/{slug}/export", Client(TemplatesRead)),
        (
            "POST",
            "/v1/clients/{slug}/import-content",
            Client(TemplatesManage),
        ),
        // Recipients, lists, target groups (data plane).
        (
            "GET",
            "/v1/clients/{slug}/recipients",
            Client(RecipientsRead),
        ),
        (
            "POST",
            "/v1/clients/{slug}/recipients",
            Client(RecipientsWrite),
        ),
        (
            "POST",
            "/v1/clients/{slug}/recipients/import",
            Client(RecipientsImport),
        ),
        (
            "GET",
            "/v1/clients/{slug}/recipients/{id}",
            Client(RecipientsRead),
        ),
        (
            "PATCH",
            "/v1/clients/{slug}/recipients/{id}",
            Client(RecipientsWrite),
        ),
        (
            "DELETE",
            "/v1/clients/{slug}/recipients/{id}",
            Client(RecipientsWrite),
        ),
        (
            "GET",
            "/v1/clients/{slug}/mailing-lists",
            Client(RecipientsRead),
        ),
        (
            "POST",
            "/v1/clients/{slug}/mailing-lists",
            Client(RecipientsWrite),
        ),
        (
            "GET",
            "/v1/clients/{slug}/mailing-lists/{id}",
            Client(RecipientsRead),
        ),
        (
            "DELETE",
            "/v1/clients/{slug}/mailing-lists/{id}",
            Client(RecipientsWrite),
        ),
        (
            "GET",
            "/v1/clients/{slug}/mailing-lists/{id}/recipients",
            Client(RecipientsRead),
        ),
        (
            "PUT",
            "/v1/clients/{slug}/mailing-lists/{id}/recipients/{rid}",
            Client(RecipientsWrite),
        ),
        (
            "GET",
            "/v1/clients/{slug}/target-groups",
            Client(RecipientsRead),
        ),
        (
            "POST",
            "/v1/clients/{slug}/target-groups",
            Client(RecipientsWrite),
        ),
        (
            "GET",
            "/v1/clients/{slug}/target-groups/{id}",
            Client(RecipientsRead),
        ),
        (
            "DELETE",
            "/v1/clients/{slug}/target-groups/{id}",
            Client(RecipientsWrite),
        ),
        (
            "GET",
            "/v1/clients/{slug}/target-groups/{id}/count",
            Client(RecipientsRead),
        ),
        (
            "GET",
            "/v1/clients/{slug}/target-groups/{id}/recipients",
            Client(RecipientsRead),
        ),
        // Cross-client target groups and the overview (the master's view of every client).
        ("GET", "/v1/target-groups", Master(RecipientsRead)),
        ("POST", "/v1/target-groups", MasterFull(RecipientsRead)),
        ("GET", "/v1/target-groups/{id}", Master(RecipientsRead)),
        (
            "DELETE",
            "/v1/target-groups/{id}",
            MasterFull(RecipientsRead),
        ),
        (
            "GET",
            "/v1/target-groups/{id}/count",
            Master(RecipientsRead),
        ),
        (
            "GET",
            "/v1/target-groups/{id}/recipients",
            Master(RecipientsRead),
        ),
        ("GET", "/v1/overview", Global(ClientsRead)),
        // Retention: the master's rules are central settings (full access to the master to change them); a
        // client's override and its preview are the client's.
        ("GET", "/v1/retention", Master(ClientsRead)),
        ("PUT", "/v1/retention", MasterFull(ClientsManage)),
        ("GET", "/v1/clients/{slug}/retention", Client(ClientsRead)),
        ("PUT", "/v1/clients/{slug}/retention", Client(ClientsManage)),
        (
            "GET",
            "/v1/clients/{slug}/retention/preview",
            Client(ClientsRead),
        ),
        // Users, roles, access, audit (the handlers check the user's home client and no-escalation).
        ("GET", "/v1/me", Authenticated),
        ("GET", "/v1/permissions", Authenticated),
        ("GET", "/v1/users", Global(UsersRead)),
        ("POST", "/v1/users", Global(UsersManage)),
        ("GET", "/v1/users/{username}", Global(UsersRead)),
        ("PATCH", "/v1/users/{username}", Global(UsersManage)),
        ("DELETE", "/v1/users/{username}", Global(UsersManage)),
        ("GET", "/v1/users/{username}/tokens", Authenticated),
        ("POST", "/v1/users/{username}/tokens", Authenticated),
        ("DELETE", "/v1/users/{username}/tokens/{id}", Authenticated),
        (
            "PUT",
            "/v1/users/{username}/access/{slug}",
            Global(UsersManage),
        ),
        (
            "DELETE",
            "/v1/users/{username}/access/{slug}",
            Global(UsersManage),
        ),
        ("GET", "/v1/roles", Global(UsersRead)),
        // Roles are central definitions (they reach every client): the master's, like central fields.
        ("POST", "/v1/roles", Master(RolesManage)),
        ("PUT", "/v1/roles/{name}", Master(RolesManage)),
        ("DELETE", "/v1/roles/{name}", Master(RolesManage)),
        ("GET", "/v1/audit", Global(AuditRead)),
        // Database servers: the operator's, with full access to the master (DESIGN.md §6).
        ("GET", "/v1/servers", MasterFull(ServersManage)),
        ("POST", "/v1/servers", MasterFull(ServersManage)),
        ("GET", "/v1/servers/{name}", MasterFull(ServersManage)),
        ("PATCH", "/v1/servers/{name}", MasterFull(ServersManage)),
        ("DELETE", "/v1/servers/{name}", MasterFull(ServersManage)),
        (
            "POST",
            "/v1/servers/{name}/drain",
            MasterFull(ServersManage),
        ),
        (
            "POST",
            "/v1/servers/{name}/drain/cancel",
            MasterFull(ServersManage),
        ),
        // A move: clients.manage on the client (the rule) and servers.manage with full access to the master
        // (checked by the handler, `http/moves.rs`).
        ("POST", "/v1/clients/{slug}/move", Client(ClientsManage)),
        // The access matrix of one client (seed 004); the handler checks every row as a single change.
        ("GET", "/v1/clients/{slug}/access", Client(UsersRead)),
        ("PUT", "/v1/clients/{slug}/access", Client(UsersManage)),
        // Console sessions: signing in takes a token in the body (checked by the handler, audited there).
        ("POST", "/v1/session", Public),
        ("GET", "/v1/session", Authenticated),
        ("DELETE", "/v1/session", Authenticated),
        // The console's static page and scripts: no data (every datum comes through the routes above).
        ("GET", "/", Public),
        ("GET", "/console", Public),
        ("GET", "/console/", Public),
        ("GET", "/console/{file}", Public),
    ]
};

type PolicyMap = FastMap<(&'static str, &'static str), Rule>;

fn policies() -> &'static PolicyMap {
    static MAP: OnceLock<PolicyMap> = OnceLock::new();
    MAP.get_or_init(|| {
        POLICIES
            .iter()
            .map(|(m, r, rule)| ((*m, *r), *rule))
            .collect()
    })
}

/// The rule for a call, if the route has one for this method.
pub fn policy(method: &Method, route: &str) -> Option<Rule> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    policies().get(&(method, route)).copied()
}

/// The methods `route` has a rule for (the `Allow` header of a 405).
pub fn methods(route: &str) -> Vec<&'static str> {
    POLICIES
        .iter()
        .filter(|(_, r, _)| *r == route)
        .map(|(m, _, _)| *m)
        .collect()
}
