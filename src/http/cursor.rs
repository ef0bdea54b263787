//! Pagination: the `{items, next_cursor}` page of every list (DESIGN.md §6) and its opaque cursors (the hex
//! encoding of a position string, so clients never build or parse them).

use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;

/// Largest decoded position accepted.
const MAX_CURSOR_BYTES: usize = 200;

pub fn encode(position: &str) -> String {
    position.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode(cursor: &str) -> Result<String, ApiError> {
    let bad = ApiError::invalid_cursor;
    // Only the canonical form `encode` writes: `from_str_radix` alone would also take a sign ("+f").
    if cursor.is_empty()
        || !cursor.len().is_multiple_of(2)
        || cursor.len() > 2 * MAX_CURSOR_BYTES
        || !cursor
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad());
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    // Positions are names and ids: a control character (a NUL above all, which PostgreSQL cannot take) is no
    // position this server handed out.
    String::from_utf8(bytes)
        .ok()
        .filter(|position| !position.chars().any(char::is_control))
        .ok_or_else(bad)
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl<T: ToSchema> Page<T> {
    /// The page from rows fetched with `limit + 1`: the extra row only tells that there is a next page, whose
    /// cursor is the position of the last item kept.
    pub fn from_rows(mut items: Vec<T>, limit: i64, position: impl Fn(&T) -> String) -> Self {
        let limit = usize::try_from(limit).unwrap_or(0);
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|item| encode(&position(item)))
        } else {
            None
        };
        Self { items, next_cursor }
    }
}

/// The page size from `limit`: default 50, 1-1000 (DESIGN.md §6).
pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    const DEFAULT_LIMIT: i64 = 50;
    const MAX_LIMIT: i64 = 1000;
    let limit = requested.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_query(format!(
            "limit must be between 1 and {MAX_LIMIT}."
        )));
    }
    Ok(limit)
}

/// The page size and keyset position (an id) of a list request.
pub fn keyset(
    limit_param: Option<i64>,
    cursor: Option<&str>,
) -> Result<(i64, Option<i64>), ApiError> {
    Ok((limit(limit_param)?, super::extract::cursor_id(cursor)?))
}

/// [`limit`] from a text value (query maps that read every value as text).
pub fn limit_text(requested: Option<&str>) -> Result<i64, ApiError> {
    match requested.map(str::parse::<i64>) {
        None => limit(None),
        Some(Ok(n)) => limit(Some(n)),
        Some(Err(_)) => limit(Some(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode(&encode("acme/42")).unwrap(), "acme/42");
        for bad in ["", "zz", "abc", &"6".repeat(500), "ff", "00", "61000a"] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #[test]
            fn every_position_round_trips(position in "\\PC{1,60}") {
                prop_assume!(position.len() <= MAX_CURSOR_BYTES);
                prop_assert_eq!(decode(&encode(&position)).ok(), Some(position));
            }

            /// Whatever a client sends, the answer is a position or `invalid_cursor`; a position comes only from
            /// the one cursor `encode` would write for it.
            #[test]
            fn any_text_decodes_only_in_its_canonical_form(cursor in "[0-9a-fA-F+ -]{0,12}|\\PC{0,40}") {
                if let Ok(position) = decode(&cursor) {
                    prop_assert_eq!(encode(&position), cursor);
                }
            }
        }

        /// Found by the property above: a sign was taken as part of a hex byte.
        #[test]
        fn a_signed_or_uppercase_byte_is_not_a_cursor() {
            for bad in ["+f", "+f+f", "4A"] {
                assert!(decode(bad).is_err(), "{bad}");
            }
        }
    }
}
