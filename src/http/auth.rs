//! The access check of every route, and the audit record of every mutating call.
//!
//! [`guard`] runs on every matched route (after routing, so it knows the route template). It looks the route up
//! in the policy table ([`super::policy`]), which names for each (method, route) the [`Rule`] a call must pass:
//! `Public`, `Authenticated`, `Global(p)`, `Client(p)` (`p` and access to the `{slug}` client: none → 404 exactly
//! as for a client that does not exist, read → `*.read` only) or `Master(p)`. A route without an entry is never
//! run (405). Handlers read the caller with the [`Caller`] extractor and the checked client with [`ClientScope`]
//! (data-plane handlers through [`super::scope::Tenant`], which connects by [`ClientScope::connect`]).
//!
//! Every POST/PUT/PATCH/DELETE by an authenticated caller is recorded in the audit log after it ran: who, the
//! route, the concrete path, the client, the outcome (`succeeded` 2xx, `denied` by this check, `failed`
//! otherwise). Handlers may add an [`AuditNote`] to the response (the client a call concerned when it is not in
//! the path). Calls without a valid token are refused before anything runs and are not recorded (that would let
//! anyone fill the log); they are counted in the metrics.
//!
//! The caller is named by a bearer token or, for the browser console, by a session cookie that stands for a token
//! (`session.rs`, `access/sessions.rs`): the same principal, the same rules, the same audit. A session's change
//! must also carry its CSRF token in `X-CSRF-Token`, or it is refused (403 `csrf_failed`, audited as denied).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::path_slug;
use super::guard::Inner;
pub use super::policy::{POLICIES, Rule, policy};
use super::session::ConsoleSession;
use crate::app::AppState;
use crate::control::access::AuditEntry;
use crate::control::clients::ClientRecord;
use crate::data::DataError;
use crate::domain::rights::{Authorization, Denied, Grant, Level, Principal, authorization};
use crate::domain::{ClientSlug, ClientStatus};

/// The authenticated caller, for handlers.
#[derive(Clone)]
pub struct Caller(pub Arc<Principal>);

/// The client of a `Client`/`Master` route, checked, with the caller's access to it.
#[derive(Clone)]
pub struct ClientScope {
    pub client: Arc<ClientRecord>,
    pub grant: Grant,
    /// An inner client's connection, inside the request's transaction (see [`ClientScope::finish`]); `None` for
    /// any other client, whose requests have no transaction to hold (so they allocate nothing for it).
    pub session: Option<Session>,
    /// The request only reads (GET/HEAD): an inner client's transaction is one read-only snapshot.
    pub read_only: bool,
    /// `client` as the access check resolved it, with its route: [`Self::connect`] uses that route while the route
    /// cache has not changed since, instead of looking the client up again.
    resolved: crate::data::Resolved,
}

/// The connection an inner client's request holds for its whole duration, inside one transaction that names the
/// inner client (row-level security); committed or rolled back by the access check's middleware once the handler
/// answered, before the response leaves ([`ClientScope::finish`]).
pub type Session = Arc<tokio::sync::Mutex<Option<crate::tenant::pool::PooledConn>>>;

impl ClientScope {
    /// The scope of `resolved`'s client with the caller's `grant` on it; `read_only`: the request only reads.
    pub fn new(resolved: crate::data::Resolved, grant: Grant, read_only: bool) -> Self {
        Self {
            client: resolved.client().clone(),
            grant,
            session: resolved.client().is_inner().then(Session::default),
            read_only,
            resolved,
        }
    }

    /// A connection to the checked client's database, as its own role. (The data plane is reached through this
    /// only, so never without the access check; and the route found must still be this very client.)
    pub async fn connect(
        &self,
        state: &AppState,
    ) -> Result<(Arc<ClientRecord>, crate::tenant::pool::PooledConn), DataError> {
        self.connect_with(state, false).await
    }

    /// As [`Self::connect`], for a read by single statements in autocommit: a connection it may share with
    /// concurrent reads of the client ([`crate::data::DataPlane::connect_shared`]).
    pub async fn connect_shared(
        &self,
        state: &AppState,
    ) -> Result<crate::tenant::pool::SharedConn, DataError> {
        let (client, conn) = state.data().connect_shared(&self.resolved).await?;
        self.same_client(&client)?;
        Ok(conn)
    }

    /// As [`Self::connect`]; `snapshot`: an inner client's transaction is one read-only snapshot.
    pub async fn connect_with(
        &self,
        state: &AppState,
        snapshot: bool,
    ) -> Result<(Arc<ClientRecord>, crate::tenant::pool::PooledConn), DataError> {
        let (client, conn) = state
            .data()
            .connect_resolved(&self.resolved, crate::tenant::pool::Use::Request, snapshot)
            .await?;
        self.same_client(&client)?;
        Ok((client, conn))
    }

    /// The client a connection was found for must be the very client the access check found (a slug moved on to
    /// another client meanwhile is that other client's, never this request's).
    fn same_client(&self, client: &ClientRecord) -> Result<(), DataError> {
        if client.id == self.client.id {
            Ok(())
        } else {
            Err(DataError::NotFound)
        }
    }

    /// Whether [`Self::finish`] has a transaction to end. Without waiting: the handler has answered, so normally
    /// nothing holds the session; if something still does (or waits for it), the answer is yes and `finish` waits.
    pub fn session_open(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|session| session.try_lock().map_or(true, |s| s.is_some()))
    }

    /// Ends an inner client's request transaction: committed when the handler succeeded, else rolled back (so an
    /// inner client's request is all or nothing). A commit that fails turns the answer into that error. Nothing to
    /// do for any other client (its statements commit as they run).
    pub async fn finish(&self, response: Response) -> Response {
        let Some(session) = &self.session else {
            return response;
        };
        let Some(mut conn) = session.lock().await.take() else {
            return response;
        };
        let commit = response.status().is_success() || response.status().is_redirection();
        // Boxed: only inner clients get here; every request's future need not carry the statement's.
        match Box::pin(conn.end_scoped(commit)).await {
            Ok(()) => response,
            Err(e) if commit => ApiError::from(DataError::from(e)).into_response(),
            // Rolled back anyway when dropped (or discarded).
            Err(_) => response,
        }
    }

    /// Whether personal data is shown or masked for the caller on this client: without the private-data right,
    /// masked, with the fields the control plane marks personal for the client.
    pub async fn privacy(&self, state: &AppState) -> Result<crate::data::Privacy, ApiError> {
        if self.grant.private_data {
            return Ok(crate::data::Privacy::Visible);
        }
        let marked = state.control().personal_fields(self.client.id).await?;
        Ok(crate::data::Privacy::Masked(marked.into()))
    }
}

/// What a handler adds to its response for the audit entry.
#[derive(Clone, Debug, Default)]
pub struct AuditNote {
    /// The client the call concerned, when it is not the one of the path (a new client, a user's home client).
    pub client: Option<(Uuid, String)>,
    pub detail: Option<serde_json::Value>,
}

impl AuditNote {
    pub fn client(id: Uuid, slug: &str) -> Self {
        Self {
            client: Some((id, slug.to_owned())),
            detail: None,
        }
    }

    /// Attaches this note to a response.
    pub fn attach(self, mut response: Response) -> Response {
        response.extensions_mut().insert(self);
        response
    }
}

fn missing_extension(what: &str) -> ApiError {
    tracing::error!(what, "a handler ran without its access check; refusing");
    ApiError::internal()
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| missing_extension("caller"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<ClientScope>()
            .cloned()
            .ok_or_else(|| missing_extension("client scope"))
    }
}

/// 401, with `WWW-Authenticate`.
pub fn unauthorized() -> Response {
    let mut response = ApiError::for_status(StatusCode::UNAUTHORIZED).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"mandant\""),
    );
    response
}

/// The answer to a refused check.
pub fn denial(denied: Denied) -> ApiError {
    match denied {
        Denied::Invisible => ApiError::not_found(),
        Denied::Permission(p) => ApiError::permission_denied(p),
        Denied::ReadOnly(p) => ApiError::read_only_access(p),
    }
}

/// Runs the service below for `request` (it was polled ready, or is a route, which always is).
async fn run<S: Inner>(mut inner: S, request: Request) -> Response {
    match inner.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The access check, audit and metrics of one request (see [`super::guard`]).
pub(super) async fn guard<S: Inner>(state: AppState, request: Request, next: S) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = match &route {
        // No route matched: the router's own 404 runs, which touches nothing.
        None => run(next, request).await,
        Some(route) => enforce(&state, route.as_str(), request, next).await,
    };
    super::metrics::record(&method, route.as_ref(), response.status().as_u16(), start);
    response
}

async fn enforce<S: Inner>(state: &AppState, route: &str, request: Request, next: S) -> Response {
    let method = request.method().clone();
    let Some(rule) = policy(&method, route) else {
        return method_not_allowed(route);
    };
    if rule == Rule::Public {
        return run(next, request).await;
    }
    let (principal, console) = match authenticate(state, request.headers()).await {
        Ok(Some(found)) => found,
        Ok(None) => return unauthorized(),
        Err(e) => return e.into_response(),
    };
    if !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        // Boxed: the audit, the CSRF check and the write's own task are a large part of this future, which every
        // request (most of them reads) would otherwise allocate and move.
        return Box::pin(enforce_write(
            state, route, rule, principal, console, request, next,
        ))
        .await;
    }
    let (mut parts, body) = request.into_parts();
    let scope = match check(state, rule, &principal, &mut parts).await {
        Ok((scope, _)) => scope,
        Err((error, _)) => return error.into_response(),
    };
    admit(&mut parts, principal, console, scope.as_ref());
    let response = run(next, Request::from_parts(parts, body)).await;
    after(state, scope.as_ref(), response).await
}

/// What a checked request carries to its handler: the caller, its console session, the client scope.
fn admit(
    parts: &mut Parts,
    principal: Arc<Principal>,
    console: Option<ConsoleSession>,
    scope: Option<&ClientScope>,
) {
    parts.extensions.insert(Caller(principal));
    if let Some(console) = console {
        parts.extensions.insert(console);
    }
    if let Some(scope) = scope {
        parts.extensions.insert(scope.clone());
    }
}

/// The access check of a POST/PUT/PATCH/DELETE, with its audit entry.
async fn enforce_write<S: Inner>(
    state: &AppState,
    route: &str,
    rule: Rule,
    principal: Arc<Principal>,
    console: Option<ConsoleSession>,
    request: Request,
    next: S,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let action = format!("{} {route}", parts.method);
    let mut entry = audit_entry(&principal, action, parts.uri.path(), &parts.headers);
    // A console session's change must carry the session's CSRF token (a page of another site can make the
    // browser send the cookie, never this header); refused and audited like any other denial.
    let forged = console.as_ref().is_some_and(|c| {
        let sent = parts
            .headers
            .get(super::session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        !c.session.csrf_matches(sent)
    });
    let checked = if forged {
        Err((ApiError::csrf_failed(), None))
    } else {
        check(state, rule, &principal, &mut parts).await
    };
    let (scope, slug_in_path) = match checked {
        Ok(found) => found,
        Err((error, client)) => {
            let response = error.into_response();
            if let Some(client) = client {
                entry.client_id = Some(client.id);
                entry.client_slug = Some(client.slug.clone());
            }
            entry.outcome = "denied";
            entry.detail = error_detail(&response);
            record(state, entry, response.status().as_u16()).await;
            return response;
        }
    };
    admit(&mut parts, principal, console, scope.as_ref());
    let request = Request::from_parts(parts, body);
    // A write and its audit entry run in their own task: if the request is dropped (the server's timeout, the
    // client hanging up) the handler still finishes what it started and the entry is still written. A panic in
    // the handler is answered (500) and audited here too.
    let state = state.clone();
    let task = tokio::spawn(async move {
        let ran = std::panic::AssertUnwindSafe(run(next, request))
            .catch_unwind()
            .await;
        let response = ran.unwrap_or_else(|_| {
            tracing::error!("a handler panicked");
            ApiError::internal().into_response()
        });
        let response = after(&state, scope.as_ref(), response).await;
        let outcome = Outcome {
            status: response.status(),
            note: response.extensions().get::<AuditNote>().cloned(),
            error: error_detail(&response),
        };
        audit_outcome(&state, entry, outcome, scope.as_ref(), slug_in_path).await;
        response
    });
    match task.await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "a write task failed");
            ApiError::internal().into_response()
        }
    }
}

/// What follows a handler's answer: an inner client's request transaction ends ([`ClientScope::finish`]), and a
/// tenant failure is re-checked against the client's status ([`recheck_unavailable`]). Neither applies to most
/// requests, so the futures that do the work are boxed and awaited only when they do.
async fn after(state: &AppState, scope: Option<&ClientScope>, response: Response) -> Response {
    let Some(scope) = scope else {
        return response;
    };
    let response = if scope.session_open() {
        Box::pin(scope.finish(response)).await
    } else {
        response
    };
    let unavailable = response.status() == StatusCode::SERVICE_UNAVAILABLE
        && response
            .extensions()
            .get::<super::error::ErrorCode>()
            .is_some_and(|code| code.0 == "tenant_unavailable");
    if unavailable {
        Box::pin(recheck_unavailable(state, scope, response)).await
    } else {
        response
    }
}

/// A client's database that failed under a request (503 `tenant_unavailable`: its connection ended, its role
/// refused) may have done so because the client was just suspended or deleted, through this process or another
/// one whose notification has not arrived yet: then the answer is the status the API reports, 409
/// `client_not_active`, not an outage. Checked on failures only, so it costs nothing on the served path.
async fn recheck_unavailable(
    state: &AppState,
    scope: &ClientScope,
    response: Response,
) -> Response {
    state.data().invalidate(&scope.client.slug);
    let Ok(slug) = ClientSlug::parse(&scope.client.slug) else {
        return response;
    };
    match state.data().client(&slug).await {
        Ok(now) if now.id == scope.client.id && now.status != ClientStatus::Active => {
            ApiError::from(DataError::ClientNotActive(now.status)).into_response()
        }
        _ => response,
    }
}

/// What the audit needs of a response (taken before any await: a response is not `Sync`).
struct Outcome {
    status: StatusCode,
    note: Option<AuditNote>,
    error: Option<serde_json::Value>,
}

/// Completes and writes the audit entry of a call that ran.
async fn audit_outcome(
    state: &AppState,
    mut entry: AuditEntry,
    outcome: Outcome,
    scope: Option<&ClientScope>,
    slug_in_path: Option<String>,
) {
    entry.outcome = outcome_of(outcome.status);
    match (outcome.note, scope) {
        (Some(note), _) if note.client.is_some() || note.detail.is_some() => {
            if let Some((id, slug)) = note.client {
                entry.client_id = Some(id);
                entry.client_slug = Some(slug);
            }
            entry.detail = note.detail;
        }
        (_, Some(scope)) => {
            entry.client_id = Some(scope.client.id);
            entry.client_slug = Some(scope.client.slug.clone());
        }
        _ => entry.client_slug = slug_in_path,
    }
    if entry.detail.is_none() {
        entry.detail = outcome.error;
    }
    record(state, entry, outcome.status.as_u16()).await;
}

type Refusal = (ApiError, Option<Arc<ClientRecord>>);

/// `{"error": "<code>"}` of an error response.
fn error_detail(response: &Response) -> Option<serde_json::Value> {
    response
        .extensions()
        .get::<super::error::ErrorCode>()
        .map(|code| serde_json::json!({"error": code.0}))
}

/// Applies `rule` for `principal`; returns the client scope (for client and master routes) and, for other
/// routes, a `{slug}` of the path (for the audit entry).
async fn check(
    state: &AppState,
    rule: Rule,
    principal: &Principal,
    parts: &mut Parts,
) -> Result<(Option<ClientScope>, Option<String>), Refusal> {
    let rights = &principal.rights;
    match rule {
        Rule::Public | Rule::Authenticated => Ok((None, slug_param(parts).await)),
        Rule::Global(p) => {
            if rights.can(p) {
                Ok((None, slug_param(parts).await))
            } else {
                Err((denial(Denied::Permission(p)), None))
            }
        }
        Rule::Client(p) => {
            let slug = slug_param(parts).await.unwrap_or_default();
            let slug = path_slug(&slug).map_err(|e| (e, None))?;
            let resolved = resolve_routed(state, &slug).await.map_err(|e| (e, None))?;
            match rights.authorize(resolved.client().id, p) {
                Ok(grant) => {
                    let read_only = matches!(parts.method, Method::GET | Method::HEAD);
                    Ok((Some(ClientScope::new(resolved, grant, read_only)), None))
                }
                Err(denied) => Err((denial(denied), Some(resolved.client().clone()))),
            }
        }
        Rule::Master(p) | Rule::MasterFull(p) => {
            let resolved = resolve_routed(state, &ClientSlug::master())
                .await
                .map_err(|e| (e, None))?;
            let client = resolved.client().clone();
            match rights.authorize(client.id, p) {
                Ok(grant) if matches!(rule, Rule::MasterFull(_)) && grant.level != Level::Full => {
                    Err((denial(Denied::ReadOnly(p)), Some(client)))
                }
                Ok(grant) => Ok((Some(ClientScope::new(resolved, grant, true)), None)),
                // Central resources are public knowledge (the OpenAPI document): refuse, do not hide.
                Err(Denied::Invisible) => Err((ApiError::master_access_required(p), Some(client))),
                Err(denied) => Err((denial(denied), Some(client))),
            }
        }
    }
}

/// A live client by slug from the route cache; one that does not exist is the generic 404.
pub async fn resolve(state: &AppState, slug: &ClientSlug) -> Result<Arc<ClientRecord>, ApiError> {
    Ok(resolve_routed(state, slug).await?.client().clone())
}

/// As [`resolve`], with the client's route for the request's connection ([`ClientScope::connect`]).
async fn resolve_routed(
    state: &AppState,
    slug: &ClientSlug,
) -> Result<crate::data::Resolved, ApiError> {
    match state.data().resolve(slug).await {
        Ok(resolved) => Ok(resolved),
        Err(DataError::NotFound) => Err(ApiError::not_found()),
        Err(e) => Err(e.into()),
    }
}

async fn slug_param(parts: &mut Parts) -> Option<String> {
    let params = RawPathParams::from_request_parts(parts, &()).await.ok()?;
    params
        .iter()
        .find(|(key, _)| *key == "slug")
        .map(|(_, value)| value.to_owned())
}

/// The caller of a request: by its bearer token, or else by its console session cookie (then with the session,
/// for the CSRF check and the session routes). An `Authorization: Bearer` header, even a malformed one, is never
/// passed over for the cookie; another scheme (the `Basic` credentials a browser adds by itself behind a proxy
/// that asks for them) is not ours and is ignored.
async fn authenticate(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<(Arc<Principal>, Option<ConsoleSession>)>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        match authorization(value.to_str().ok()) {
            Authorization::Bearer(token) => {
                return Ok(state.auth().authenticate(token).await?.map(|p| (p, None)));
            }
            Authorization::Malformed => return Ok(None),
            Authorization::OtherScheme => {}
        }
    }
    let auth = &state.settings().auth;
    let name = super::session::cookie_name(auth.session_cookie_secure);
    let Some(id) = super::session::cookie(headers, name) else {
        return Ok(None);
    };
    let idle = auth.session_idle();
    let session = Box::pin(state.auth().session(id, idle)).await?;
    Ok(session.map(|session| {
        let principal = session.principal.clone();
        let console = ConsoleSession {
            id: id.to_owned(),
            session,
        };
        (principal, Some(console))
    }))
}

/// The audit entry of a call by `principal` (outcome `failed` until it is known): the action (`METHOD
/// /route/template`), the concrete path, the request id.
fn audit_entry(
    principal: &Principal,
    action: String,
    target: &str,
    headers: &axum::http::HeaderMap,
) -> AuditEntry {
    AuditEntry {
        user_id: Some(principal.user_id),
        username: Some(principal.username.clone()),
        client_id: None,
        client_slug: None,
        action,
        target: target.to_owned(),
        outcome: "failed",
        status: 0,
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        detail: None,
    }
}

/// The audit outcome of a call that ran: `succeeded` for 2xx, else `failed`.
fn outcome_of(status: StatusCode) -> &'static str {
    if status.is_success() {
        "succeeded"
    } else {
        "failed"
    }
}

/// Records a call of `principal` on a public route, which the access check does not audit (a sign-in).
pub async fn record_public_call(
    state: &AppState,
    principal: &Principal,
    method: &Method,
    route: &str,
    headers: &axum::http::HeaderMap,
    status: StatusCode,
) {
    let mut entry = audit_entry(principal, format!("{method} {route}"), route, headers);
    entry.outcome = outcome_of(status);
    record(state, entry, status.as_u16()).await;
}

async fn record(state: &AppState, mut entry: AuditEntry, status: u16) {
    entry.status = status;
    // Boxed: the insert's future is ~4 KB, which would otherwise be part of every request's access-check future
    // (moved and polled on the read path too, where it never runs).
    if let Err(e) = Box::pin(state.control().record_audit(&entry)).await {
        // The call has happened; its record is lost. Loud, with what it was (no secrets are in an entry).
        tracing::error!(
            error = %e,
            user = entry.username.as_deref().unwrap_or_default(),
            action = %entry.action,
            target = %entry.target,
            status,
            "could not write an audit entry"
        );
    }
}

/// 405 with the methods the route has.
fn method_not_allowed(route: &str) -> Response {
    let allowed = super::policy::methods(route);
    let mut response = ApiError::for_status(StatusCode::METHOD_NOT_ALLOWED).into_response();
    if let Ok(value) = HeaderValue::from_str(&allowed.join(",")) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}
