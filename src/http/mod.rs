//! The HTTP API: one module per resource, each documented in the OpenAPI document; this file only assembles them
//! and adds the middleware every request goes through.
//!
//! Middleware, outermost first: the edge (`edge.rs`, one layer: request id, tracing span, NUL refusal, timeout,
//! panic catcher, error normalisation) → body limit and the OpenAPI document (request extensions) → routing →
//! (per route) access check, audit and metrics (`guard::Guard`) → handler. Handlers stay thin: parse into newtypes,
//! call one lower layer, map the result; access is checked before they run (`auth.rs`), and they filter and mask
//! what they return by it.

pub mod audit;
pub mod auth;
pub mod client_access;
pub mod clients;
pub mod console;
pub mod content;
pub mod crossclient;
pub mod cursor;
pub mod edge;
pub mod error;
pub mod extract;
pub mod fields;
pub mod guard;
pub mod health;
pub mod lists;
pub mod metrics;
pub mod moves;
pub mod openapi;
pub mod operations;
pub mod overview;
pub mod policy;
pub mod recipients;
pub mod retention;
pub mod roles;
pub mod scope;
pub mod servers;
pub mod session;
pub mod target_groups;
pub mod templates;
pub mod users;

use std::sync::Arc;

use axum::Extension;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use tower::ServiceBuilder;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use error::ApiError;

/// Every route of the service, with its middleware: the whole HTTP service (served with
/// `axum::serve(listener, axum::ServiceExt::into_make_service(service))`). The OpenAPI document is built from
/// the same registrations, so a route cannot be added without appearing in it.
pub fn router(
    state: AppState,
) -> impl tower::Service<
    Request,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    let (router, mut document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi::document))
        .routes(routes!(clients::create, clients::list))
        .routes(routes!(clients::get, clients::update, clients::delete))
        .routes(routes!(clients::suspend))
        .routes(routes!(clients::resume))
        .routes(routes!(operations::get))
        .routes(routes!(recipients::create, recipients::list))
        .routes(routes!(
            recipients::get,
            recipients::update,
            recipients::delete
        ))
        .routes(routes!(lists::create, lists::list))
        .routes(routes!(lists::get, lists::delete))
        .routes(routes!(lists::bind))
        .routes(routes!(lists::members))
        .routes(routes!(recipients::import))
        .routes(routes!(fields::list_central, fields::create_central))
        .routes(routes!(fields::get_central, fields::delete_central))
        .routes(routes!(fields::list_client, fields::create_client))
        .routes(routes!(fields::update_client, fields::delete_client))
        .routes(routes!(templates::list, templates::create))
        .routes(routes!(
            templates::get,
            templates::publish,
            templates::retract
        ))
        .routes(routes!(templates::sync_status))
        .routes(routes!(templates::client_list, templates::client_create))
        .routes(routes!(templates::client_get, templates::client_update))
        .routes(routes!(templates::client_revert))
        .routes(routes!(content::copy))
        .routes(routes!(content::export))
        .routes(routes!(content::import))
        .routes(routes!(target_groups::create, target_groups::list))
        .routes(routes!(target_groups::get, target_groups::delete))
        .routes(routes!(target_groups::count))
        .routes(routes!(target_groups::members))
        .routes(routes!(crossclient::create, crossclient::list))
        .routes(routes!(crossclient::get, crossclient::delete))
        .routes(routes!(crossclient::count))
        .routes(routes!(crossclient::recipients))
        .routes(routes!(overview::overview))
        .routes(routes!(retention::get_master, retention::put_master))
        .routes(routes!(retention::get_client, retention::put_client))
        .routes(routes!(retention::preview))
        .routes(routes!(users::me))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::get, users::update, users::delete))
        .routes(routes!(users::list_tokens, users::create_token))
        .routes(routes!(users::revoke_token))
        .routes(routes!(users::set_access, users::remove_access))
        .routes(routes!(roles::permissions))
        .routes(routes!(roles::list, roles::create))
        .routes(routes!(roles::replace, roles::delete))
        .routes(routes!(audit::list))
        .routes(routes!(servers::list, servers::create))
        .routes(routes!(servers::get, servers::update, servers::delete))
        .routes(routes!(moves::drain))
        .routes(routes!(moves::cancel_drain))
        .routes(routes!(moves::start))
        .routes(routes!(client_access::get, client_access::put))
        .routes(routes!(session::sign_in, session::get, session::sign_out))
        .split_for_parts();
    openapi::finish(&mut document);

    let server = &state.settings().server;
    let body_limit = server.body_limit_bytes;
    let timeout = server.request_timeout();

    // The console's page and scripts (not API: outside the OpenAPI document, in the policy table as public).
    let router = router
        .route("/", axum::routing::get(console::root))
        .route("/console", axum::routing::get(console::redirect))
        .route("/console/", axum::routing::get(console::index))
        .route("/console/{file}", axum::routing::get(console::asset));
    // Routing, with the route-aware middleware on each route: the access check and audit (by the matched route
    // template's policy) and the metrics (labelled by the template).
    let routed = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(guard::GuardLayer::new(state.clone()))
        .with_state(state);
    // Everything else wraps the router once, outermost first, without boxing: layers added with `Router::layer`
    // wrap every route separately, a boxed service clone and future per layer and request (measured at ~15% of a
    // warm request), so the access check is the only one there. Every extractor (JSON, bytes) stops at the body
    // limit; the import streams its body and keeps its own.
    ServiceBuilder::new()
        .layer(edge::EdgeLayer::new(timeout))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(Extension(Arc::new(document)))
        .service(routed)
}

/// `201 Created` with `Location` and the new resource as the body.
pub fn created<T: serde::Serialize>(location: &str, body: &T) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(value) = axum::http::HeaderValue::from_str(location) {
        response
            .headers_mut()
            .insert(axum::http::header::LOCATION, value);
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::for_status(StatusCode::METHOD_NOT_ALLOWED)
}
