//! Prometheus metrics: the process-wide recorder, the HTTP request middleware and `GET /metrics`.
//!
//! Metric names: `http_requests_total{method,route,status}` and `http_request_duration_seconds{method,route}`
//! (histogram). `route` is the matched route template (`/v1/clients/{slug}`), never the raw path, and methods
//! other than GET, POST, PUT, PATCH, DELETE and HEAD count as OPTIONS, so label cardinality stays bounded.

use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, State};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::domain::FastMap;

/// Counts and times one request (called by the route middleware, `auth::guard`). Metric handles are registered
/// once per (method, route, status) and then reused: a registry lookup with freshly allocated labels on every
/// request cost ~5% of a warm data-plane request (route benchmark).
pub fn record(method: &Method, route: Option<&MatchedPath>, status: u16, start: Instant) {
    // Only the standard methods are labels (any other token would let a client grow the label set).
    let method = match *method {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::HEAD => method.clone(),
        _ => Method::OPTIONS,
    };
    let route = route.map_or("unmatched", MatchedPath::as_str);
    let seconds = start.elapsed().as_secs_f64();
    with_handles(&method, route, status, |(requests, duration)| {
        requests.increment(1);
        duration.record(seconds);
    });
}

type Handles = (metrics::Counter, metrics::Histogram);
/// Route template → (method, status) → handles: looked up by the borrowed template, so a request allocates
/// nothing once its handles exist.
type HandleCache = RwLock<FastMap<String, FastMap<(Method, u16), Handles>>>;

/// Runs `f` with the handles of (method, route, status), registered on first use. Used in place, under the read
/// lock: cloning them would cost every request two more reference counts on cache lines all threads share.
fn with_handles(method: &Method, route: &str, status: u16, f: impl FnOnce(&Handles)) {
    static CACHE: OnceLock<HandleCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (method.clone(), status);
    {
        let read = cache.read().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = read.get(route).and_then(|by_status| by_status.get(&key)) {
            f(found);
            return;
        }
    }
    let labels = (method.to_string(), route.to_owned());
    let created = (
        metrics::counter!("http_requests_total", "method" => labels.0.clone(), "route" => labels.1.clone(), "status" => status.to_string()),
        metrics::histogram!("http_request_duration_seconds", "method" => labels.0, "route" => labels.1),
    );
    let mut write = cache.write().unwrap_or_else(|p| p.into_inner());
    f(write
        .entry(route.to_owned())
        .or_default()
        .entry(key)
        .or_insert(created));
}

/// Prometheus text exposition of every metric of this process.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.pools().publish_metrics();
    let handle = state.metrics();
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
