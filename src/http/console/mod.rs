//! The administration console's static files (`assets/`): one page, its ES modules and its style sheet, served at
//! `/console/` by `mandant serve` itself. Embedded in release builds (rust-embed), read from disk in debug builds.
//! The files hold no data and no secret: the page signs in through `POST /v1/session` and reads and changes
//! everything through the `/v1` API with its session cookie, under the same access check and audit as any API
//! caller (`auth.rs`). `GET /` leads a browser here.
//!
//! Every response carries a strict Content-Security-Policy (scripts and styles from this origin only, no inline
//! code, no framing, requests to this origin only), `nosniff`, no referrer, and an ETag.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::error::ApiError;

#[derive(rust_embed::Embed)]
#[folder = "src/http/console/assets/"]
struct Assets;

/// The console's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `GET /`: a browser opening the address lands on the console.
pub async fn root() -> Redirect {
    Redirect::to("/console/")
}

/// `GET /console`: to the page (relative module paths need the trailing slash).
pub async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}

/// `GET /console/`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /console/{file}`: a script or the style sheet.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(&file, &headers)
}

/// A flat file name of the assets folder (nothing else is ever looked up).
fn plausible(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(file) = plausible(name).then(|| Assets::get(name)).flatten() else {
        return ApiError::not_found().into_response();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        file.data.into_owned().into_response()
    };
    let h = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(file.metadata.mimetype()) {
        h.insert(header::CONTENT_TYPE, value);
    }
    if let Ok(value) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, value);
    }
    secure_headers(h);
    response
}

/// The headers every console response carries.
fn secure_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Revalidated on every load (ETag): a new binary's files are used at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}
