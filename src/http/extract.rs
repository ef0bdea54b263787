//! Extractors whose rejections are API errors: a bad body or query is a 400 in the error shape, naming the
//! problem (an unknown field, a wrong type), never a plain-text framework message.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// `axum::Json` with API errors.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::unsupported_media_type(
            "The body must be JSON (Content-Type: application/json).",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE)
        }
        other => ApiError::invalid_body(format!(
            "The request body is not valid: {}",
            other.body_text()
        )),
    }
}

/// `axum::extract::Query` with API errors.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::invalid_query(format!(
        "The query string is not valid: {}",
        rejection.body_text()
    ))
}

/// A client slug from the path: one that cannot exist is simply not found.
pub fn path_slug(slug: &str) -> Result<crate::domain::ClientSlug, ApiError> {
    crate::domain::ClientSlug::parse(slug).map_err(|_| ApiError::not_found())
}

/// A row id from the path (a positive integer); anything else is not found.
pub fn path_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(ApiError::not_found)
}

/// The keyset position (an id) of a `cursor` parameter.
pub fn cursor_id(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    cursor
        .map(|c| {
            super::cursor::decode(c)?
                .parse::<i64>()
                .map_err(|_| ApiError::invalid_cursor())
        })
        .transpose()
}
