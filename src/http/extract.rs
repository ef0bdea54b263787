//! Extractors whose rejections are API errors: a bad body or query is a 400 in the error shape, naming the
//! problem (an unknown field, a wrong type), never a plain-text framework message; a path parameter that cannot
//! name anything (a slug, a row id, a template id) is the generic 404 a resource that does not exist gets.
//!
//! The NUL character is refused here, once for every input: PostgreSQL cannot store it in text, so a `\u0000`
//! in a JSON body ([`ApiJson`], [`normalize_json`]) and a `%00` in the path or query string (refused by the edge
//! layer, [`super::edge`], before the access check) are a 400 before the handler runs, never a database error.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use uuid::Uuid;

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
        if !is_json(req.headers()) {
            return Err(ApiError::unsupported_media_type(
                "The body must be JSON (Content-Type: application/json).",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE)
                }
                _ => ApiError::invalid_body(format!(
                    "The request body could not be read: {}",
                    rejection.body_text()
                )),
            }
        })?;
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid_body(format!(
                "The request body is not valid: Failed to parse the request body as JSON: {e}"
            ))
        })?;
        normalize_json(&mut value)?;
        // Every body of the API is an object. (serde would take `[a, b]` for a struct, field by position:
        // Schemathesis sent `[null, null]` as retention rules and had it accepted.)
        if !value.is_object() {
            return Err(ApiError::invalid_body(
                "The request body is not valid: it must be a JSON object.",
            ));
        }
        serde_path_to_error::deserialize(value)
            .map(Self)
            .map_err(|e| {
                ApiError::invalid_body(format!(
                    "The request body is not valid: Failed to deserialize the JSON body into the target type: {e}"
                ))
            })
    }
}

/// `Content-Type: application/json` or `application/<anything>+json` (as `axum::Json` takes it).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype
                .len()
                .checked_sub(5)
                .and_then(|at| subtype.get(at..))
                .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json")))
}

/// Every JSON body passes here before it is read into its type:
///
/// - a NUL character in any string or key is refused (PostgreSQL cannot store it in text);
/// - a number with a zero fraction (`7.0`) becomes the integer it is, as JSON Schema and JavaScript see it, so
///   an integer field takes it instead of answering that a float is not an integer.
pub fn normalize_json(value: &mut serde_json::Value) -> Result<(), ApiError> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Err(ApiError::nul_character("the request body")),
        Value::Number(n) => {
            if let Some(integral) = n
                .as_f64()
                .filter(|f| !n.is_i64() && !n.is_u64() && f.fract() == 0.0)
                .filter(|f| (-9_007_199_254_740_992.0..=9_007_199_254_740_992.0).contains(f))
            {
                // Exact: within ±2^53 every integral f64 is an i64.
                #[allow(clippy::cast_possible_truncation)]
                let int = integral as i64;
                *n = serde_json::Number::from(int);
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(normalize_json),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                return Err(ApiError::nul_character("the request body"));
            }
            map.values_mut().try_for_each(normalize_json)
        }
        _ => Ok(()),
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
fn path_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(ApiError::not_found)
}

/// A template id from the path; anything that is not a UUID names no template (404).
pub fn template_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::not_found())
}

/// The path parameter `name`, percent-decoded. On a `Client` route the access check has read the parameters
/// the same way before (and refused a path that is not UTF-8 as an unknown client), so there this cannot fail.
async fn path_param(parts: &mut Parts, name: &str) -> Result<String, ApiError> {
    let params = RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|rejection| ApiError::for_status(rejection.status()))?;
    match params.iter().find(|(key, _)| *key == name) {
        Some((_, value)) => Ok(value.to_owned()),
        None => {
            tracing::error!(
                name,
                "a handler reads a path parameter its route does not have"
            );
            Err(ApiError::internal())
        }
    }
}

/// `{id}`: a row (recipient, mailing list, target group) of the client; not a positive integer → the generic 404.
///
/// The check used to be the handler's first statement, after every other extractor. Keep it there: put `RowId`
/// after the other parts extractors, and where the handler takes a body, take `Result<RowId, ApiError>` and
/// apply it first thing (a malformed body is still answered before an unknown id).
#[derive(Debug, Clone, Copy)]
pub struct RowId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for RowId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Self(path_id(&path_param(parts, "id").await?)?))
    }
}

/// `{id}` and `{rid}` of `/mailing-lists/{id}/recipients/{rid}`: a list and a recipient, each a [`RowId`].
#[derive(Debug, Clone, Copy)]
pub struct ListRecipient {
    pub list: i64,
    pub recipient: i64,
}

impl<S: Send + Sync> FromRequestParts<S> for ListRecipient {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let list = path_param(parts, "id").await?;
        let recipient = path_param(parts, "rid").await?;
        Ok(Self {
            list: path_id(&list)?,
            recipient: path_id(&recipient)?,
        })
    }
}

/// `{id}` of a client's template: a UUID (an inherited copy goes by its master template's id); anything else →
/// the generic 404. Placed like [`RowId`].
#[derive(Debug, Clone, Copy)]
pub struct TemplateId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for TemplateId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Self(template_id(&path_param(parts, "id").await?)?))
    }
}

/// `{name}` of a client's field, as given (the handler tells a standard, central or unknown name apart).
#[derive(Debug, Clone)]
pub struct FieldPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for FieldPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Self(path_param(parts, "name").await?))
    }
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

#[cfg(test)]
mod tests {
    use super::normalize_json;
    use serde_json::json;

    #[test]
    fn json_bodies_refuse_nul_anywhere_and_read_integral_floats_as_integers() {
        for bad in [
            json!({"name": "a\u{0}b"}),
            json!({"roles": ["x", "\u{0}"]}),
            json!({"rule": {"all": [{"value": "\u{0}"}]}}),
            json!({"k\u{0}": 1}),
        ] {
            let mut value = bad.clone();
            assert!(normalize_json(&mut value).is_err(), "{bad}");
        }
        let mut value = json!({"a": 7.0, "b": [-2.0, 1.5], "c": 1e300, "d": "\\u0000", "e": 3});
        normalize_json(&mut value).unwrap();
        assert_eq!(
            value,
            json!({"a": 7, "b": [-2, 1.5], "c": 1e300, "d": "\\u0000", "e": 3})
        );
        assert!(value["a"].is_i64() && value["b"][0].is_i64() && value["c"].is_f64());
    }
}
