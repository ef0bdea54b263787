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
    security(("bearer" = [])),
    tags(
        (name = "operations", description = "Health, readiness, metrics and this document"),
        (name = "clients", description = "Sub-clients, each with its own database, and their background operations"),
        (name = "recipients", description = "Recipients in a client's own database"),
        (name = "mailing-lists", description = "Mailing lists and bindings in a client's own database"),
        (name = "cross-client", description = "The master's view of every client: cross-client target groups over central fields, and the overview"),
        (name = "users", description = "Users, tokens, access per client, roles, permissions and the audit log")
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
