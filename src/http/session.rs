//! Console sessions over the API: `POST /v1/session` exchanges an API token for a session cookie (HttpOnly,
//! `SameSite=Strict`, `Secure` with `auth.session_cookie_secure`), `GET` tells the page who it is and its CSRF
//! token, `DELETE` signs out. With the cookie every `/v1` route works as with the token (the same access check and
//! audit: `auth.rs`), and every change must carry the session's `X-CSRF-Token` header. The sessions themselves are
//! `access/sessions.rs`'s.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::access::sessions::Session;
use crate::app::AppState;
use crate::domain::rights::plausible_token;

/// The session cookie's name (over plain HTTP).
pub const COOKIE: &str = "mandant_session";
/// The session cookie's name when it is `Secure` (`auth.session_cookie_secure`): the `__Host-` prefix makes the
/// browser refuse it unless it is Secure, for this host only (no `Domain`) and for every path, so a sibling
/// subdomain or a plain-HTTP response cannot plant one.
pub const SECURE_COOKIE: &str = "__Host-mandant_session";

/// The session cookie's name with these settings.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { SECURE_COOKIE } else { COOKIE }
}
/// The header a console session's changes carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A request authenticated by a console session (set by the access check), for the session routes.
#[derive(Clone)]
pub struct ConsoleSession {
    pub id: String,
    pub session: Session,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An API token of an active user. It is exchanged, never stored by the page.
    #[schema(min_length = 32, max_length = 256, pattern = r"^[\x21-\x7E]+$")]
    pub token: String,
}

/// The signed-in session, as the page needs it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    #[schema(example = "anna")]
    pub username: String,
    /// Send it back in the `X-CSRF-Token` header of every change (POST, PUT, PATCH, DELETE).
    pub csrf_token: String,
    /// When the session ends unless used (and at the latest `auth.session_max_hours` after sign-in).
    pub expires_at: DateTime<Utc>,
}

impl SessionView {
    fn new(session: &Session) -> Self {
        Self {
            username: session.principal.username.clone(),
            csrf_token: session.csrf_token.clone(),
            expires_at: session.expires_at,
        }
    }
}

/// Sign in to the console: an API token for a session cookie.
#[utoipa::path(post, path = "/v1/session", tag = "session", request_body = SignIn, security(()),
    responses((status = 201, description = "Signed in; the session cookie is set", body = SessionView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Not a valid token", body = ErrorBody)))]
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SignIn>,
) -> Result<Response, ApiError> {
    if !plausible_token(&body.token) {
        return Ok(super::auth::unauthorized());
    }
    let auth = &state.settings().auth;
    let Some(signed_in) = state
        .auth()
        .sign_in(&body.token, auth.session_idle(), auth.session_max())
        .await?
    else {
        return Ok(super::auth::unauthorized());
    };
    // The browser's previous session (this cookie is about to replace it) ends now rather than idle later.
    if let Some(previous) = cookie(&headers, cookie_name(auth.session_cookie_secure)) {
        state.auth().sign_out(previous).await?;
    }
    let principal = &signed_in.session.principal;
    tracing::info!(user = %principal.username, "console session started");
    super::auth::record_public_call(
        &state,
        principal,
        &Method::POST,
        "/v1/session",
        &headers,
        StatusCode::CREATED,
    )
    .await;
    let mut response = (
        StatusCode::CREATED,
        Json(SessionView::new(&signed_in.session)),
    )
        .into_response();
    let max_age = auth.session_max().num_seconds();
    set_cookie(
        &mut response,
        &signed_in.id,
        max_age,
        auth.session_cookie_secure,
    );
    Ok(response)
}

/// The console session of this request (the page's user and CSRF token).
#[utoipa::path(get, path = "/v1/session", tag = "session",
    responses((status = 200, description = "The session", body = SessionView),
        (status = 401, description = "No valid session or token", body = ErrorBody),
        (status = 404, description = "Authenticated by a bearer token, not a session", body = ErrorBody)))]
pub async fn get(
    session: Option<Extension<ConsoleSession>>,
) -> Result<Json<SessionView>, ApiError> {
    let Some(Extension(console)) = session else {
        return Err(ApiError::no_console_session());
    };
    Ok(Json(SessionView::new(&console.session)))
}

/// Sign out: the session ends in every process at once, and the cookie is cleared.
#[utoipa::path(delete, path = "/v1/session", tag = "session",
    responses((status = 204, description = "Signed out"),
        (status = 401, description = "No valid session or token", body = ErrorBody),
        (status = 403, description = "Without the session's X-CSRF-Token", body = ErrorBody),
        (status = 404, description = "Authenticated by a bearer token, not a session", body = ErrorBody)))]
pub async fn sign_out(
    State(state): State<AppState>,
    session: Option<Extension<ConsoleSession>>,
) -> Result<Response, ApiError> {
    let Some(Extension(console)) = session else {
        return Err(ApiError::no_console_session());
    };
    state.auth().sign_out(&console.id).await?;
    tracing::info!(user = %console.session.principal.username, "console session ended");
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_cookie(
        &mut response,
        "",
        0,
        state.settings().auth.session_cookie_secure,
    );
    Ok(response)
}

/// The session id of the request's cookie named `name`, if it has exactly one. Two cookies of that name (one
/// planted by a sibling subdomain or a plain-HTTP response beside the real one; the browser sends both, in an order
/// the attacker can influence) are no session at all, never the first one.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value.trim());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Sets (or, with `max_age` 0, clears) the session cookie.
fn set_cookie(response: &mut Response, id: &str, max_age: i64, secure: bool) {
    let name = cookie_name(secure);
    let secure = if secure { "; Secure" } else { "" };
    let cookie =
        format!("{name}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}
