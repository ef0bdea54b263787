//! The edge of the service: what every request passes before routing, in one hand-written layer.
//!
//! [`EdgeLayer`], in this order: gives the request its id (`x-request-id`: the caller's, or a new UUID) and runs
//! it in a tracing span (`http`, with method, path and request id); refuses a percent-encoded NUL in the path or
//! query (400 `nul_character`, before the access check, the audit or any handler sees it); bounds the request's
//! time (503 `request_timeout`); answers a panic with a 500; rewrites any error response that is not already JSON
//! into the error shape ([`super::error::normalize`]); echoes the request id on the response.
//!
//! These were seven stacked tower-http/axum layers (request id, trace, propagation, `map_response`, `CatchPanic`
//! with its body re-boxing, `Timeout` with its error handler, `from_fn`), each with its own future, several with a
//! boxed future or body and a clone of the service below; profiled on the route benchmark's `fits` case they
//! were a large share of what the server costs over its handler. Here they are one boxed future per request.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tower::{Layer, Service};
use tracing::Instrument;

use super::error::{ApiError, normalize};

/// Wraps a service in the [`Edge`].
#[derive(Clone, Copy, Debug)]
pub struct EdgeLayer {
    timeout: Duration,
}

impl EdgeLayer {
    /// `timeout`: the longest a request may run (the server's `request_timeout`).
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
    timeout: Duration,
}

type EdgeFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> EdgeFuture {
        let id = match request.headers().get(&REQUEST_ID) {
            Some(given) => given.clone(),
            None => {
                let new = new_request_id();
                request.headers_mut().insert(REQUEST_ID, new.clone());
                new
            }
        };
        let span = tracing::info_span!(
            "http",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = id.to_str().unwrap_or_default(),
        );
        if let Some(refusal) = nul_refusal(&request) {
            return Box::pin(std::future::ready(Ok(with_id(refusal.into_response(), id))));
        }
        // The service polled ready is the one called; a clone stays for the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = self.timeout;
        let run = async move {
            // A panic while the call is built or while it runs is the same 500.
            let call = std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(request)));
            let response = match call {
                Ok(future) => {
                    let guarded = AssertUnwindSafe(future).catch_unwind();
                    match tokio::time::timeout(timeout, guarded).await {
                        Ok(Ok(Ok(response))) => response,
                        Ok(Ok(Err(never))) => match never {},
                        Ok(Err(_)) => panicked(),
                        Err(_) => ApiError::request_timeout().into_response(),
                    }
                }
                Err(_) => panicked(),
            };
            Ok(with_id(normalize(response), id))
        };
        Box::pin(run.instrument(span))
    }
}

/// The request id header, read from the request or generated, echoed on the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn new_request_id() -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The response with the request's id, unless the handler set one.
fn with_id(mut response: Response, id: HeaderValue) -> Response {
    response.headers_mut().entry(REQUEST_ID).or_insert(id);
    response
}

fn panicked() -> Response {
    tracing::error!("a request panicked");
    ApiError::internal().into_response()
}

/// A path or query string with a percent-encoded NUL (`%00`, the only way a URI carries one) is refused.
fn nul_refusal(request: &Request) -> Option<ApiError> {
    let uri = request.uri();
    if uri.path().contains("%00") {
        return Some(ApiError::nul_character("the path"));
    }
    if uri.query().is_some_and(|q| q.contains("%00")) {
        return Some(ApiError::nul_character("the query string"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{StatusCode, header};
    use tower::ServiceExt;

    fn edge<F, Fut>(timeout: Duration, f: F) -> Edge<tower::util::ServiceFn<F>>
    where
        F: FnMut(Request) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Response, Infallible>> + Send + 'static,
    {
        EdgeLayer::new(timeout).layer(tower::service_fn(f))
    }

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    fn get(uri: &str) -> Request {
        Request::builder()
            .uri(uri)
            .body(Body::empty())
            .unwrap_or_default()
    }

    async fn ok(_: Request) -> Result<Response, Infallible> {
        Ok(StatusCode::OK.into_response())
    }

    #[tokio::test]
    async fn a_request_gets_a_new_id_or_keeps_the_callers_and_the_response_echoes_it() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let service = {
            let seen = seen.clone();
            edge(Duration::from_secs(5), move |request: Request| {
                let seen = seen.clone();
                async move {
                    *seen.lock().unwrap_or_else(|p| p.into_inner()) =
                        request.headers().get(REQUEST_ID).cloned();
                    ok(request).await
                }
            })
        };
        let generated = service
            .clone()
            .oneshot(get("/x"))
            .await
            .unwrap_or_else(|e| match e {});
        let id = generated.headers()[REQUEST_ID]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(id.len(), 36, "a hyphenated UUID: {id}");
        let handler_saw = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(
            handler_saw.as_ref().and_then(|v| v.to_str().ok()),
            Some(id.as_str())
        );

        let mut given = get("/x");
        given
            .headers_mut()
            .insert(REQUEST_ID, HeaderValue::from_static("trace-me-42"));
        let echoed = service.oneshot(given).await.unwrap_or_else(|e| match e {});
        assert_eq!(echoed.headers()[REQUEST_ID], "trace-me-42");
    }

    #[tokio::test]
    async fn a_nul_in_the_path_or_query_is_refused_before_the_service_runs() {
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let service = {
            let ran = ran.clone();
            edge(Duration::from_secs(5), move |request: Request| {
                ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                ok(request)
            })
        };
        for uri in ["/a%00b", "/a?q=x%00"] {
            let response = service
                .clone()
                .oneshot(get(uri))
                .await
                .unwrap_or_else(|e| match e {});
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
            assert!(response.headers().contains_key(REQUEST_ID));
            assert_eq!(body_json(response).await["error"]["code"], "nul_character");
        }
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_panicking_service_is_a_500_in_the_error_shape() {
        let service = edge(Duration::from_secs(5), |_: Request| async {
            if true {
                panic!("on purpose");
            }
            Ok::<Response, Infallible>(StatusCode::OK.into_response())
        });
        let response = service
            .oneshot(get("/x"))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().contains_key(REQUEST_ID));
        assert_eq!(body_json(response).await["error"]["code"], "internal_error");
    }

    #[tokio::test]
    async fn a_request_over_its_time_is_a_503_request_timeout() {
        let service = edge(Duration::from_millis(50), |request: Request| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ok(request).await
        });
        let response = service
            .oneshot(get("/x"))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body_json(response).await["error"]["code"],
            "request_timeout"
        );
    }

    #[tokio::test]
    async fn a_plain_text_error_is_rewritten_into_the_error_shape_keeping_its_headers() {
        let service = edge(Duration::from_secs(5), |_: Request| async {
            let mut response = (StatusCode::METHOD_NOT_ALLOWED, "nope").into_response();
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            Ok::<Response, Infallible>(response)
        });
        let response = service
            .oneshot(get("/x"))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET");
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap_or_default()
                .starts_with("application/json")
        );
        assert_eq!(
            body_json(response).await["error"]["code"],
            "method_not_allowed"
        );
    }
}
