//! The OpenAPI document, served at `GET /v1/openapi.json` without authentication.

use std::sync::Arc;

use axum::{Extension, Json};
use utoipa::OpenApi;

use super::error::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mandant",
        description = "Database-per-tenant orchestration for multi-client e-mail marketing systems. \
                       Every error has the shape {\"error\": {\"code\", \"message\"}}."
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "operations", description = "Health, readiness, metrics and this document"),
        (name = "clients", description = "Sub-clients, each with its own database, and their background operations"),
        (name = "recipients", description = "Recipients in a client's own database"),
        (name = "mailing-lists", description = "Mailing lists and bindings in a client's own database"),
        (name = "cross-client", description = "The master's view of every client: cross-client target groups over central fields, and the overview"),
        (name = "retention", description = "Retention rules: the master's, inherited by every client, and each client's stricter override; the preview of what they remove"),
        (name = "content", description = "Templates, mailing lists and target groups moved between clients: copy, export, import"),
        (name = "users", description = "Users, tokens, access per client, roles, permissions and the audit log"),
        (name = "servers", description = "The database servers clients are placed on: registration with its checks, capacity, zone, routing budget, policy"),
        (name = "session", description = "Console sessions: an API token exchanged for an HttpOnly session cookie; with the cookie every route works as with the token, and every change needs the session's X-CSRF-Token header")
    )
)]
pub struct ApiDoc;

/// Every operation needs `Authorization: Bearer <token>` unless it says `security: [{}]` (health, metrics, this
/// document).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token (POST /v1/users/{username}/tokens)"))
                    .build(),
            ),
        );
        // The console's session cookie (POST /v1/session); changes made with it also need X-CSRF-Token.
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Cookie(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    super::session::COOKIE,
                    "A console session (POST /v1/session); every change also needs the X-CSRF-Token header",
                ),
            )),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document(
    Extension(document): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(document.as_ref().clone())
}

/// Completes the document once every route is registered (`super::router`), for every operation alike, so a new
/// endpoint is covered without repeating these in its annotation:
///
/// - a unique `operationId` (`get_v1_clients_slug`): utoipa names an operation after its function, and several
///   are called `get` or `create`, which made tools resolve links to the wrong operation;
/// - the statuses the middleware and extractors answer with for any route: 401 (every operation that needs a
///   token, by the access policy), 403 (a permission), 400 (a malformed or NUL-carrying path, query or body),
///   415 and 413 (a request body), and for a client's data (`/v1/clients/{slug}/...`) 409 `client_not_active`,
///   429 `tenant_busy` and 503 `tenant_unavailable`. An operation that documents a status itself keeps its own
///   description; one that does not gets the generic one.
pub fn finish(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::HttpMethod;
    for (path, item) in document.paths.paths.iter_mut() {
        let operations = [
            (HttpMethod::Get, &mut item.get),
            (HttpMethod::Put, &mut item.put),
            (HttpMethod::Post, &mut item.post),
            (HttpMethod::Delete, &mut item.delete),
            (HttpMethod::Patch, &mut item.patch),
            (HttpMethod::Head, &mut item.head),
            (HttpMethod::Options, &mut item.options),
            (HttpMethod::Trace, &mut item.trace),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation.as_mut() {
                complete_operation(path, method_name(&method), operation);
            }
        }
    }
}

fn method_name(method: &utoipa::openapi::HttpMethod) -> &'static str {
    use utoipa::openapi::HttpMethod;
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Put => "PUT",
        HttpMethod::Post => "POST",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Head => "HEAD",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Trace => "TRACE",
    }
}

fn complete_operation(path: &str, method: &str, operation: &mut utoipa::openapi::path::Operation) {
    use super::policy::{Rule, policy};

    operation.operation_id = Some(operation_id(method, path));
    let rule = axum::http::Method::from_bytes(method.as_bytes())
        .ok()
        .and_then(|m| policy(&m, path));
    let has_input = operation.parameters.as_ref().is_some_and(|p| !p.is_empty())
        || operation.request_body.is_some();
    let mut add = |status: &str, description: &str| {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description));
    };
    if has_input {
        add(
            "400",
            "Bad input: a malformed path, query string or body, or one with a NUL character",
        );
    }
    if !matches!(rule, Some(Rule::Public) | None) {
        add("401", "No valid bearer token");
    }
    if matches!(
        rule,
        Some(Rule::Global(_) | Rule::Client(_) | Rule::Master(_))
    ) {
        add("403", "Not permitted");
    }
    if operation.request_body.is_some() {
        add("413", "The body is larger than this server accepts");
        add("415", "The body has an unsupported content type");
    }
    if path.starts_with("/v1/clients/{slug}/") {
        add(
            "409",
            "The client is not active (client_not_active), or another conflict",
        );
        add("429", "Too many requests wait for this client's database");
        add("503", "This client's database is unavailable; retry later");
    }
}

/// `GET /v1/clients/{slug}` → `get_v1_clients_slug`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(segment.chars().map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => c,
            _ => '_',
        }));
    }
    // `{slug}` → `_slug_`: drop the doubled and trailing separators.
    let mut clean = String::with_capacity(id.len());
    for c in id.chars() {
        if !(c == '_' && clean.ends_with('_')) {
            clean.push(c);
        }
    }
    clean.trim_end_matches('_').to_owned()
}

fn error_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

/// Document-only schemas of strings with a pattern, for the items of arrays (utoipa takes `pattern` on named
/// fields only): the handlers parse the values with the domain's own parsers.
macro_rules! pattern_text {
    ($name:ident, $pattern:literal, $doc:literal) => {
        #[doc = $doc]
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some($pattern))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

pattern_text!(SlugText, r"^[a-z][a-z0-9-]{1,39}$", "A client slug.");
pattern_text!(RoleNameText, r"^[a-z][a-z0-9-]{1,39}$", "A role name.");
