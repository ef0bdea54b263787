//! Every error code the API answers with by name (the catalogue handlers use), with its status and wording. The
//! codes of lower layers' errors are in the `From` impls of `mod.rs`; those of framework errors in
//! [`ApiError::for_status`].

use axum::http::StatusCode;

use super::ApiError;
use crate::domain::Invalid;
use crate::domain::rights::Permission;

/// Every error code a handler answers with, by name, with its status and wording. (The codes of lower layers'
/// errors are in the `From` impls below; those of framework errors in [`ApiError::for_status`].)
impl ApiError {
    /// 400: the body is not what the endpoint takes.
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_body", message)
    }

    /// 422: a well-formed client request that does not make sense for its kind (an inner client without a parent
    /// or a scope, with a zone; a scope for a client that is not inner; a PATCH that changes nothing).
    pub fn invalid_client_kind(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_client_kind",
            message,
        )
    }

    /// 422: an inner client's scope that does not fit its parent's database (no list and no rule, a list that does
    /// not exist there, a rule that does not compile against its fields).
    pub fn invalid_scope(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_scope", message)
    }

    /// 400: a NUL character (`\u0000`, `%00`) in `place`: PostgreSQL cannot store it in text, so no input may
    /// carry one.
    pub fn nul_character(place: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "nul_character",
            format!(
                "The NUL character (U+0000) is not allowed in {place}: no text may contain it; nothing was changed."
            ),
        )
    }

    /// 400: the query string is not what the endpoint takes.
    pub fn invalid_query(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }

    /// 400: a `cursor` that no page of this list handed out.
    pub fn invalid_cursor() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
            "The cursor is not valid.",
        )
    }

    /// 400: a query parameter with a value the endpoint does not take.
    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
    }

    /// 422: a list that names one row twice (each row is valid on its own).
    pub fn duplicate_rows(field: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "duplicate_rows",
            format!("{field}: a row is listed twice"),
        )
    }

    /// 400: a value that breaks its field's rules.
    pub fn validation_failed(invalid: &Invalid) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            invalid.to_string(),
        )
    }

    /// 403: none of the caller's roles has the permission.
    pub fn permission_denied(permission: Permission) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("None of your roles has the permission {permission}."),
        )
    }

    /// 403: a central definition, and the caller has no access to the master client (refused, not hidden: central
    /// resources are public knowledge).
    pub fn master_access_required(permission: Permission) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("{permission} on central definitions needs access to the master client."),
        )
    }

    /// 422: a body naming a database server that is not registered.
    pub fn unknown_server(name: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_server",
            format!("There is no database server {name}."),
        )
    }

    /// 403: moving a client (or draining a server) needs `servers.manage` with full access to the master.
    pub fn servers_manage_required() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "Moving clients between database servers needs servers.manage with full access to the master client.",
        )
    }

    /// 409: a move that cannot start; the code says why (`client_moving`, `same_server`, `server_not_accepting`,
    /// `client_not_movable`, `wal_level_not_logical`).
    pub fn move_refused(code: &'static str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::CONFLICT, code, format!("{message}."))
    }

    /// 403: a write with read-only access to the client.
    pub fn read_only_access(permission: Permission) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "read_only_access",
            format!("You have read-only access to this client; {permission} needs full access."),
        )
    }

    /// 409: clients have an own field of the name a central field wants; `visible` names those the caller sees.
    pub fn field_taken_by_clients(visible: &[String]) -> Self {
        let message = if visible.is_empty() {
            "Clients have an own field of this name.".to_owned()
        } else {
            format!(
                "Clients have an own field of this name, among them: {}.",
                visible.join(", ")
            )
        };
        Self::new(StatusCode::CONFLICT, "field_taken_by_clients", message)
    }

    /// 409: a client cannot change or drop a standard field.
    pub fn standard_field(name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "standard_field",
            format!("{name} is a standard field; it cannot be changed or dropped."),
        )
    }

    /// 409: a client cannot change or drop a central field.
    pub fn inherited_field(name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "inherited_field",
            format!(
                "{name} is a central field inherited from the master; only the master changes it."
            ),
        )
    }

    /// 409: a field's type never changes.
    pub fn type_change_refused(name: &str, data_type: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "type_change_refused",
            format!(
                "{name} is a {data_type} field; a field's type cannot change (add a new field instead)."
            ),
        )
    }

    /// 409: a text field may only grow.
    pub fn length_shrink_refused(name: &str, current: i32) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "length_shrink_refused",
            format!("{name} holds up to {current} characters; a text may only grow."),
        )
    }

    /// 409: reverting the override of a client's own template.
    pub fn local_template() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "local_template",
            "This is the client's own template; it has no master version to revert to.",
        )
    }

    /// 409: copying an inherited template (it reaches every client from the master already).
    pub fn inherited_template() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "inherited_template",
            "This template is inherited from the master, which gives it to every client; only a client's own \
             templates are copied.",
        )
    }

    /// 409: reverting a template that is not overridden.
    pub fn not_overridden() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "not_overridden",
            "This template is not overridden; it already follows the master.",
        )
    }

    /// 413: one field of the body is larger than the endpoint takes.
    pub fn field_too_large(field: &str, max_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("{field} is larger than {max_bytes} bytes."),
        )
    }

    /// 415: a body of a content type the endpoint does not take.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 422: the parent named for a new client does not exist (or is invisible to the caller).
    pub fn unknown_parent() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_parent",
            "The parent client does not exist.",
        )
    }

    /// 422: a client named in a cross-client target group's selection does not exist (or is invisible to the
    /// caller: the very same answer).
    pub fn unknown_client(slug: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_client",
            format!("There is no client {slug:?}."),
        )
    }

    /// 503: the request took longer than the server's timeout.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            "The request took longer than this server allows; retry later.",
        )
        .with_retry_after(1)
    }
}

/// The error codes of users, roles and access by name (as above), and the access service's refusals. Every status,
/// code and message here is part of the API contract (tests compare bodies): a refusal on a user or client the
/// caller cannot see is the very 404 of one that does not exist.
impl ApiError {
    /// 403: a change of one's own roles, access or status, or of a role one holds.
    pub fn self_edit_refused(message: &'static str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "self_edit_refused", message)
    }

    /// 403: rows of an all-or-nothing access change were refused (each explained in `rows`); nothing changed.
    pub fn access_refused(refused: usize) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "access_refused",
            format!("{refused} row(s) were refused (see rows); nothing was changed.",),
        )
    }

    /// 404: a session route called with a bearer token (there is no console session to show or end).
    pub fn no_console_session() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "no_console_session",
            "This request is not authenticated by a console session (it used a bearer token).",
        )
    }

    /// 403: a console session's change without its CSRF token (`X-CSRF-Token`).
    pub fn csrf_failed() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "A change made with a console session needs the session's X-CSRF-Token header.",
        )
    }

    /// 403: a change that would give someone (or act for someone who holds) more than the caller holds.
    pub fn escalation_refused(message: &'static str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "escalation_refused", message)
    }

    /// 422: the home client named for a new user does not exist (or is invisible to the caller).
    pub fn unknown_home_client() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_client",
            "The home client does not exist.",
        )
    }

    /// 422: a new user without a named home client, and the caller's own home client is deleted.
    pub fn home_client_deleted() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_client",
            "Your home client is deleted; name a home client for the new user.",
        )
    }
}

/// The codes of database servers (`/v1/servers`, and placement in `POST /v1/clients`).
impl ApiError {
    /// 409: no active server (in the zone asked for) can take a new client; `why` names each server's reason.
    pub fn no_server_available(why: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "no_server_available",
            format!("{why}; nothing was created."),
        )
    }

    /// 409: `POST /v1/servers` with a name already registered.
    pub fn server_name_taken() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "server_name_taken",
            "A database server with this name is registered already.",
        )
    }

    /// 409: `DELETE /v1/servers/{name}` of a server that still holds clients.
    pub fn server_in_use(clients: i64) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "server_in_use",
            format!(
                "The server still holds {clients} client(s); it can be removed once it holds none."
            ),
        )
    }

    /// 409: `DELETE /v1/servers/local`.
    pub fn server_is_local() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "server_in_use",
            "The local server holds the control plane; it cannot be removed.",
        )
    }

    /// 422: the admin URL does not parse or names an unusable TLS setting (the message never quotes the URL).
    pub fn invalid_server_url(why: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_server_url",
            format!("The server URL is not usable: {why}."),
        )
    }

    /// 422: the server could not be reached or refused the login (TLS included); the text is redacted.
    pub fn server_unreachable(why: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "server_unreachable",
            format!("The server could not be reached with the given URL and TLS mode: {why}"),
        )
    }

    /// 422: PostgreSQL older than 13.
    pub fn server_version_unsupported(version: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "server_version_unsupported",
            format!("The server runs PostgreSQL {version}; mandant needs 13 or newer."),
        )
    }

    /// 422: the admin role is neither a superuser nor has CREATEDB and CREATEROLE.
    pub fn server_rights_missing(missing: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "server_rights_missing",
            format!(
                "The admin role must be a superuser or have CREATEDB and CREATEROLE; it lacks {missing}."
            ),
        )
    }

    /// 422: the template database could not be created or migrated on the server.
    pub fn server_template_failed(why: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "server_template_failed",
            format!("The template database could not be made on the server: {why}"),
        )
    }
}
