//! Domain values that can only be built through a parser ("parse, don't validate"): once a `ClientSlug` exists
//! it is valid, so no unchecked string reaches SQL or a log line from here.

pub mod field;
pub mod retention;
pub mod rights;
pub mod servers;

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The hasher of the maps a request looks up ([`FastMap`]): foldhash (hashbrown's own default), seeded per
/// process. A lookup by a short key costs a third of std's SipHash (callgrind, route benchmark).
pub type FastHasher = foldhash::fast::RandomState;

/// A hash map on the request path. Only for keys no caller can insert in bulk without a privileged, audited write
/// per key (ids, slugs and token hashes of stored records; an inner client's slug is its creator's choice), route
/// templates and statements written in the code: foldhash is seeded, but not SipHash's defence against a flood of
/// chosen keys.
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHasher>;

/// Why a value was refused; the message is safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

/// `^[a-z][a-z0-9-]{1,39}$` (DESIGN.md §6).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(transparent)]
pub struct ClientSlug(String);

/// `^[a-z][a-z0-9<extra>]*$` with a length in `len`: the shape of slugs, usernames and role names.
pub fn is_identifier(value: &str, len: std::ops::RangeInclusive<usize>, extra: &[char]) -> bool {
    len.contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
}

impl ClientSlug {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        if is_identifier(value, 2..=40, &['-']) {
            Ok(Self(value.to_owned()))
        } else {
            Err(invalid(
                "slug",
                "must be 2-40 characters of a-z, 0-9 and '-', starting with a letter",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The master client's slug.
    pub fn master() -> Self {
        Self("master".to_owned())
    }
}

impl fmt::Display for ClientSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client's display name: 1-200 characters, trimmed, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(transparent)]
pub struct ClientName(String);

impl ClientName {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(value: &str) -> Result<Self, Invalid> {
        let trimmed = value.trim();
        let chars = trimmed.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS {
            return Err(invalid("name", "must be 1-200 characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(invalid("name", "must not contain control characters"));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An e-mail address as mandant accepts it: trimmed, 3-254 characters, one `@` between a local part of 1-64
/// characters and a domain with a dot, no spaces or control characters. Uniqueness is case-insensitive (the
/// database's index), the spelling is kept as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        let v = value.trim();
        let bad = || invalid("email", "must be an e-mail address like name@example.org");
        if !(3..=254).contains(&v.len()) || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = v.split_once('@').ok_or_else(bad)?;
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && !domain.contains('@');
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(bad());
        }
        Ok(Self(v.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A free-text standard field (first name, last name, gender): trimmed, at most `max` characters, no control
/// characters; empty means absent.
pub fn optional_text(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>, Invalid> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.chars().count() > max {
        return Err(invalid(field, format!("must be at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(Some(value.to_owned()))
}

/// Like [`optional_text`], but empty is refused.
pub fn required_text(field: &'static str, value: &str, max: usize) -> Result<String, Invalid> {
    optional_text(field, Some(value), max)?.ok_or_else(|| invalid(field, "must not be empty"))
}

/// A custom field's name: `^[a-z][a-z0-9_]{2,62}$`, not a standard or system field, no `sys_` / `mandant_`
/// prefix, not an SQL keyword with restrictions (reserved, type/function-name or column-name keywords; names
/// are always quoted, so this is for the sake of everyone writing SQL against tenant databases by hand).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(transparent)]
pub struct FieldName(String);

/// Fields every tenant has; a custom field may not take their names.
pub const STANDARD_FIELDS: [&str; 7] = [
    "id",
    "email",
    "first_name",
    "last_name",
    "gender",
    "created_at",
    "updated_at",
];

/// Columns of `recipients` that mandant keeps for itself (e.g. `mandant_unbound_since`, for retention): never
/// a field (the `mandant_` prefix is refused for field names), never shown in a recipient.
pub fn is_internal_column(name: &str) -> bool {
    name.starts_with("mandant_")
}

const SQL_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "isnull",
    "join",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "numeric",
    "offset",
    "only",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

impl FieldName {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        let shown: String = value.chars().take(64).collect();
        let bad = |reason: String| invalid("name", reason);
        let well_formed = value.len() >= 3
            && value.len() <= 63
            && value.starts_with(|c: char| c.is_ascii_lowercase())
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !well_formed {
            return Err(bad(format!(
                "{shown:?} must be 3-63 characters: a lowercase letter, then lowercase letters, digits or _"
            )));
        }
        if value.starts_with("sys_") || value.starts_with("mandant_") {
            return Err(bad(format!(
                "{value:?}: the sys_ and mandant_ prefixes are reserved"
            )));
        }
        if STANDARD_FIELDS.contains(&value) {
            return Err(bad(format!("{value:?} is a standard field")));
        }
        if SQL_KEYWORDS.contains(&value) {
            return Err(bad(format!("{value:?} is an SQL keyword")));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The lifecycle of a client (DESIGN.md §5): `provisioning` → `active` ⇄ `suspended`; `failed`;
/// `deleting` → `deleted` (a tombstone that frees the slug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientStatus {
    Provisioning,
    Active,
    Suspended,
    Failed,
    Deleting,
    Deleted,
}

impl ClientStatus {
    pub const ALL: [Self; 6] = [
        Self::Provisioning,
        Self::Active,
        Self::Suspended,
        Self::Failed,
        Self::Deleting,
        Self::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Failed => "failed",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
        }
    }

    pub fn parse(value: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or_else(|| {
                invalid(
                    "status",
                    "must be one of provisioning, active, suspended, failed, deleting, deleted",
                )
            })
    }

    /// A tenant database that should exist and be kept current (migrations, fields, templates).
    pub fn has_live_database(self) -> bool {
        matches!(self, Self::Active | Self::Suspended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_the_documented_pattern() {
        for ok in ["ab", "acme", "acme-de-2", &format!("a{}", "b".repeat(39))] {
            assert!(ClientSlug::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "Acme",
            "1acme",
            "-acme",
            "acme_de",
            "acme de",
            "acme;drop",
            "ácme",
            &format!("a{}", "b".repeat(40)),
        ] {
            assert!(ClientSlug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            ClientName::parse("  Acme GmbH ").unwrap().as_str(),
            "Acme GmbH"
        );
        assert!(ClientName::parse("   ").is_err());
        assert!(ClientName::parse(&"x".repeat(201)).is_err());
        assert!(ClientName::parse("a\u{0}b").is_err());
        assert!(ClientName::parse(&"ü".repeat(200)).is_ok());
    }

    #[test]
    fn emails_are_checked_and_kept_as_given() {
        assert_eq!(
            Email::parse(" Anna@Example.org ").unwrap().as_str(),
            "Anna@Example.org"
        );
        for bad in [
            "",
            "a",
            "no-at.example.org",
            "@example.org",
            "a@",
            "a@b",
            "a@.b.c",
            "a@b..c",
            "a b@c.d",
            "a@b@c.d",
            "a@b.c.",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert!(Email::parse(&format!("{}@example.org", "x".repeat(65))).is_err());
    }

    #[test]
    fn optional_text_trims_bounds_and_treats_empty_as_absent() {
        assert_eq!(
            optional_text("first_name", Some("  Ann "), 5)
                .unwrap()
                .as_deref(),
            Some("Ann")
        );
        assert_eq!(optional_text("first_name", Some("   "), 5).unwrap(), None);
        assert!(optional_text("first_name", Some("toolong"), 5).is_err());
        assert!(optional_text("first_name", Some("a\u{7}"), 5).is_err());
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in ClientStatus::ALL {
            assert_eq!(ClientStatus::parse(status.as_str()).unwrap(), status);
        }
        assert!(ClientStatus::parse("gone").is_err());
    }
}

#[cfg(test)]
mod properties {
    //! Slugs, field names and field values: whatever a client sends is accepted exactly when it has the
    //! documented shape, and is refused otherwise, without a panic.
    use proptest::prelude::*;

    use super::field::{Field, FieldType, Value};
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn a_slug_is_accepted_exactly_when_it_matches_the_documented_pattern(
            slug in "[a-z][a-z0-9-]{1,39}|\\PC{0,45}|[a-zA-Z0-9_-]{0,45}"
        ) {
            let documented = slug.len() >= 2
                && slug.len() <= 40
                && slug.starts_with(|c: char| c.is_ascii_lowercase())
                && slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            prop_assert_eq!(ClientSlug::parse(&slug).is_ok(), documented, "{:?}", slug);
        }

        #[test]
        fn a_field_name_is_accepted_only_in_the_documented_shape_and_never_reserved(
            name in "[a-z][a-z0-9_]{2,62}|\\PC{0,70}|(sys_|mandant_)[a-z]{0,8}"
        ) {
            if let Ok(parsed) = FieldName::parse(&name) {
                let s = parsed.as_str();
                prop_assert!(s.len() >= 3 && s.len() <= 63);
                prop_assert!(s.starts_with(|c: char| c.is_ascii_lowercase()));
                prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
                prop_assert!(!s.starts_with("sys_") && !s.starts_with("mandant_"));
                prop_assert!(!SQL_KEYWORDS.contains(&s));
            }
        }

        /// A field definition's values: any text parses to a value of the field's type or is refused; an
        /// accepted text has no control characters and fits the length; a date is one PostgreSQL stores.
        #[test]
        fn any_text_parses_to_a_value_of_the_field_type_or_is_refused(
            ty in prop_oneof![
                (1usize..50).prop_map(|max| FieldType::Text { max }),
                Just(FieldType::Integer), Just(FieldType::Number), Just(FieldType::Boolean),
                Just(FieldType::Date), Just(FieldType::Timestamp),
            ],
            text in "\\PC{0,30}|[+-]?[0-9]{1,7}-[0-9]{2}-[0-9]{2}|[0-9eE.+-]{1,12}",
        ) {
            let field = Field::custom("probe", ty, false);
            match field.parse_text(&text) {
                Ok(Value::Text(s)) => {
                    let FieldType::Text { max } = ty else { panic!("text for {ty:?}") };
                    prop_assert!(s.chars().count() <= max && !s.chars().any(char::is_control));
                }
                Ok(Value::Date(d)) => prop_assert!((0..=9999).contains(&chrono::Datelike::year(&d))),
                Ok(Value::Number(n)) => prop_assert!(n.is_finite()),
                Ok(_) | Err(_) => {}
            }
            // And the JSON form of the same text agrees for texts, dates and timestamps.
            let json = field.parse_json(&serde_json::Value::from(text.clone()));
            if matches!(ty, FieldType::Text { .. } | FieldType::Date | FieldType::Timestamp) {
                prop_assert_eq!(json.is_ok(), field.parse_text(&text).is_ok());
            }
        }
    }
}
