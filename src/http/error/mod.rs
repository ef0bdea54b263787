//! The one place errors become HTTP responses: `{"error": {"code": "snake_case", "message": "..."}}`.
//!
//! Handlers return [`ApiError`]; lower layers' error enums convert into it here (`From` impls), and the errors a
//! handler raises itself are named constructors here (`ApiError::invalid_cursor()`, ...), so the error codes the
//! API answers with, and their statuses, live in this file. Errors produced by the framework or middleware
//! (unknown route, wrong method, body too large, panics) are rewritten into the same shape by [`normalize`]. A
//! 5xx is logged with its full cause; its response carries only a generic sentence, never SQL or a stack trace.

use crate::telemetry::error_chain;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::control::ControlError;
use crate::data::DataError;
use crate::data::import::ImportError;
use crate::domain::Invalid;
use crate::tenant::pool::RouteError;

mod codes;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable, snake_case.
    #[schema(example = "not_found")]
    pub code: String,
    /// A human sentence; wording may change.
    pub message: String,
    /// The refused rows of a change applied all or nothing (`access_refused`: one per refused user); absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<RowRefusal>>,
}

/// Why one row of an all-or-nothing change was refused.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RowRefusal {
    /// The row's key (the username of an access matrix row).
    pub username: String,
    /// The error code that row alone would have been answered with.
    #[schema(example = "escalation_refused")]
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    rows: Option<Vec<RowRefusal>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            rows: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "There is no such resource.",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Something went wrong on our side; it has been logged.",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body's `error` object (a per-client error row of a cross-client answer uses the same codes).
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code.to_owned(),
            message: self.message.clone(),
            rows: self.rows.clone(),
        }
    }

    /// The generic error for a status the framework produced without a body we can use.
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::BAD_REQUEST => ("bad_request", "The request is malformed."),
            StatusCode::UNAUTHORIZED => ("unauthorized", "A valid bearer token is required."),
            StatusCode::FORBIDDEN => ("forbidden", "You are not permitted to do this."),
            StatusCode::NOT_FOUND => return Self::not_found(),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "This method is not allowed on this resource.",
            ),
            StatusCode::REQUEST_TIMEOUT => ("request_timeout", "The request took too long."),
            StatusCode::PAYLOAD_TOO_LARGE => (
                "payload_too_large",
                "The request body is larger than this server accepts.",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "The request body has an unsupported content type.",
            ),
            StatusCode::UNPROCESSABLE_ENTITY => (
                "unprocessable_entity",
                "The request is semantically invalid.",
            ),
            StatusCode::TOO_MANY_REQUESTS => {
                ("too_many_requests", "Too many requests; retry later.")
            }
            StatusCode::SERVICE_UNAVAILABLE => (
                "service_unavailable",
                "The service is unavailable; retry later.",
            ),
            s if s.is_server_error() => return Self::internal().with_status(s),
            _ => ("error", "The request failed."),
        };
        Self::new(status, code, message)
    }

    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::validation_failed(&e)
    }
}

/// The `code` of an error response, kept on the response for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                rows: self.rows,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let conflict = |code, message: String| Self::new(StatusCode::CONFLICT, code, message);
        match e {
            ControlError::NotFound => Self::not_found(),
            ControlError::SlugTaken => conflict(
                "slug_taken",
                "Another client already uses this slug.".into(),
            ),
            ControlError::UnknownParent => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_parent",
                "The parent client does not exist.",
            ),
            ControlError::ParentIsInner => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "parent_is_inner",
                "An inner client cannot be a parent; choose a client with its own database.",
            ),
            ControlError::ParentNotReady => conflict(
                "parent_not_ready",
                "The parent's database is being prepared for inner clients; retry in a moment."
                    .into(),
            ),
            ControlError::ParentNotActive(status) => conflict(
                "parent_not_active",
                format!(
                    "The parent client is {}; it must be active.",
                    status.as_str()
                ),
            ),
            ControlError::InvalidState {
                current,
                action,
                allowed,
            } => conflict(
                "invalid_state",
                format!(
                    "The client is {}; {action} needs it to be {allowed}.",
                    current.as_str()
                ),
            ),
            ControlError::IsMaster(what) => conflict(
                "master_client",
                format!("The master client cannot be {what}."),
            ),
            // Not how many: some may be invisible to the caller.
            ControlError::HasChildren(_) => conflict(
                "client_has_children",
                "The client still has sub-clients; delete them first.".into(),
            ),
            ControlError::FieldIsCentral => conflict(
                "field_is_central",
                "A central field has this name; every client has it already.".into(),
            ),
            ControlError::FieldQuota(quota) => conflict(
                "field_quota_exceeded",
                format!("The client has its quota of {quota} own fields."),
            ),
            ControlError::FieldTakenByClients(clients) => conflict(
                "field_taken_by_clients",
                format!(
                    "These clients have an own field of this name: {}.",
                    clients.join(", ")
                ),
            ),
            ControlError::FieldExists => conflict(
                "field_exists",
                "A field of this name exists already.".into(),
            ),
            ControlError::UsernameTaken => {
                conflict("username_taken", "Another user has this username.".into())
            }
            ControlError::RoleNameTaken => conflict(
                "role_name_taken",
                "A role with this name exists already.".into(),
            ),
            // No count and no names: holders may be users the caller cannot see.
            ControlError::RoleInUse => conflict(
                "role_in_use",
                "This role is held by users; it can be deleted once nobody holds it.".into(),
            ),
            ControlError::BuiltinRole => conflict(
                "builtin_role",
                "Built-in roles cannot be changed or deleted.".into(),
            ),
            ControlError::NotDominated => Self::new(
                StatusCode::FORBIDDEN,
                "escalation_refused",
                CANNOT_MANAGE_USER,
            ),
            ControlError::GroupNameTaken => conflict(
                "target_group_name_taken",
                "A cross-client target group with this name exists already.".into(),
            ),
            ControlError::LastMasterAdmin => conflict(
                "last_master_admin",
                "This is the last active master admin; make another one first.".into(),
            ),
            ControlError::UnknownRoles(names) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_role",
                format!("No such role: {}.", names.join(", ")),
            ),
            ControlError::RetentionLooser(e) => Self::new(
                StatusCode::BAD_REQUEST,
                "retention_looser_than_master",
                format!("{e}; nothing was changed."),
            ),
            ControlError::NoServerAvailable(why) => Self::no_server_available(&why),
            ControlError::ServerNameTaken => Self::server_name_taken(),
            ControlError::ServerInUse(clients) => Self::server_in_use(clients),
            ControlError::ServerIsLocal => Self::server_is_local(),
            ControlError::Unavailable(cause) => {
                tracing::warn!(%cause, "control plane unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "control_plane_unavailable",
                    "The control-plane database is unavailable; retry later.",
                )
                .with_retry_after(RETRY_AFTER_SECS)
            }
            other => {
                tracing::error!(error = ?other, cause = %error_chain(&other), "control-plane error");
                Self::internal()
            }
        }
    }
}

impl From<DataError> for ApiError {
    fn from(e: DataError) -> Self {
        let unavailable = |code: &'static str, message: &str| {
            Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
                .with_retry_after(RETRY_AFTER_SECS)
        };
        match e {
            DataError::NotFound => Self::not_found(),
            DataError::ClientNotActive(status) => Self::new(
                StatusCode::CONFLICT,
                "client_not_active",
                format!(
                    "The client is {}; its data can only be used while it is active.",
                    status.as_str()
                ),
            ),
            DataError::EmailTaken => Self::new(
                StatusCode::CONFLICT,
                "email_taken",
                "A recipient with this e-mail address exists already.",
            ),
            DataError::ListNameTaken => Self::new(
                StatusCode::CONFLICT,
                "list_name_taken",
                "A mailing list with this name exists already.",
            ),
            DataError::GroupNameTaken => Self::new(
                StatusCode::CONFLICT,
                "target_group_name_taken",
                "A target group with this name exists already.",
            ),
            DataError::TemplateNameTaken => Self::new(
                StatusCode::CONFLICT,
                "template_name_taken",
                "The client has a template of its own with this name already; nothing was overwritten.",
            ),
            DataError::NamesTaken(clashes) => Self::new(
                StatusCode::CONFLICT,
                "name_taken",
                format!("The client has these already, nothing was imported: {clashes}."),
            ),
            DataError::OutsideScope(message) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "outside_scope",
                format!("{message}."),
            ),
            DataError::DoesNotFit(message) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "content_does_not_fit",
                format!("{message}; nothing was imported."),
            ),
            DataError::Invalid(invalid) => invalid.into(),
            DataError::PersonalData(field) => Self::new(
                StatusCode::FORBIDDEN,
                "private_data_required",
                format!(
                    "{field} is personal data: reading, filtering on, writing it or making it not personal needs \
                     the private-data right on this client."
                ),
            ),
            DataError::Rule(message) => Self::new(StatusCode::BAD_REQUEST, "invalid_rule", message),
            DataError::StaleRule(message) => Self::new(
                StatusCode::CONFLICT,
                "rule_no_longer_fits",
                format!("The target group's rule no longer fits this client: {message}"),
            ),
            DataError::Field(message) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            }
            DataError::Import(ImportError::TooLarge(limit)) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("The import is larger than this server accepts ({limit} bytes); split it."),
            ),
            DataError::Import(e @ ImportError::Body(_)) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string())
            }
            DataError::Import(e) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_import",
                format!("Nothing was imported: {e}."),
            ),
            DataError::Control(e) => e.into(),
            DataError::Route(RouteError::Busy) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "tenant_busy",
                "Too many requests are waiting for this client's database; retry shortly.",
            )
            .with_retry_after(1),
            DataError::Route(RouteError::Timeout | RouteError::Saturated) => unavailable(
                "tenant_timeout",
                "No connection to this client's database became free in time; retry shortly.",
            ),
            DataError::Route(cause) => {
                tracing::warn!(%cause, "tenant database unavailable");
                unavailable(
                    "tenant_unavailable",
                    "This client's database is unavailable right now; retry later.",
                )
            }
            DataError::Moving => unavailable(
                "client_moving",
                "The client is being moved to another database server; retry in a moment.",
            ),
            DataError::Deadline(limit) => unavailable(
                "tenant_timeout",
                &format!(
                    "This client's database did not answer within {} ms.",
                    limit.as_millis()
                ),
            ),
            // The connection broke under the query (the tenant's server restarted or shut down): the same answer.
            DataError::Query(e) if crate::db::is_connection_lost(&e) => {
                tracing::warn!(cause = %crate::db::describe_pg_error(&e), "tenant connection lost");
                unavailable(
                    "tenant_unavailable",
                    "This client's database is unavailable right now; retry later.",
                )
            }
            other => {
                tracing::error!(error = %error_chain(&other), "data-plane error");
                Self::internal()
            }
        }
    }
}

/// Rewrites any error response that is not already JSON (from axum's rejections, the body limit, a caught
/// panic, the method router) into the error shape, keeping its status and headers such as `Allow`.
pub fn normalize(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let mut fresh = ApiError::for_status(status).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    fresh.headers_mut().extend(parts.headers);
    fresh
}

/// The refusal to manage a user, whatever it holds beyond the caller (permissions, or access to a client the
/// caller may not even see): one wording, so the answer tells nothing about which.
const CANNOT_MANAGE_USER: &str = "You cannot manage this user: that needs users.manage, full access to its home \
     client, and everything the user holds.";

/// The refusal to redefine a role with holders the caller cannot manage: the same whether those holders are
/// visible to the caller or not, without names or counts.
const CANNOT_CHANGE_ROLE: &str = "You cannot change this role: changing it needs the right to manage every user \
     who holds it.";

impl From<crate::dbservers::ServersError> for ApiError {
    fn from(e: crate::dbservers::ServersError) -> Self {
        use crate::dbservers::ServersError;
        match e {
            ServersError::Invalid(invalid) => invalid.into(),
            ServersError::BadUrl(why) => Self::invalid_server_url(&why),
            ServersError::Unreachable(why) => Self::server_unreachable(&why),
            ServersError::TooOld(version) => Self::server_version_unsupported(&version),
            ServersError::MissingRights(missing) => Self::server_rights_missing(&missing),
            ServersError::Template(why) => Self::server_template_failed(&why),
            ServersError::Control(e) => e.into(),
        }
    }
}

impl From<crate::access::AccessError> for ApiError {
    fn from(e: crate::access::AccessError) -> Self {
        use crate::access::{AccessError, Escalation};
        match e {
            AccessError::NotFound => Self::not_found(),
            AccessError::Denied(denied) => super::auth::denial(denied),
            AccessError::SelfEdit => Self::self_edit_refused(
                "Nobody can change their own roles, access or status; ask another administrator.",
            ),
            AccessError::HoldsRole => Self::self_edit_refused(
                "You hold this role; ask another administrator to change it.",
            ),
            AccessError::Escalation(escalation) => Self::escalation_refused(match escalation {
                Escalation::ManageUser => CANNOT_MANAGE_USER,
                Escalation::AssignRole => {
                    "A role you are giving has permissions that you do not hold."
                }
                Escalation::PrivateData => {
                    "You cannot pass on the private-data right on this client: you do not have it."
                }
                Escalation::DefineRole => {
                    "A role can only have permissions that you hold yourself."
                }
                Escalation::RoleHolders => CANNOT_CHANGE_ROLE,
            }),
            AccessError::UnknownParent => Self::unknown_parent(),
            AccessError::Rows(refused) => {
                let rows: Vec<RowRefusal> = refused
                    .into_iter()
                    .map(|(username, e)| {
                        let detail = Self::from(e).detail();
                        RowRefusal {
                            username,
                            code: detail.code,
                            message: detail.message,
                        }
                    })
                    .collect();
                let mut error = Self::access_refused(rows.len());
                error.rows = Some(rows);
                error
            }
            AccessError::Control(e) => e.into(),
        }
    }
}
