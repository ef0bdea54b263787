//! Recipient field types and typed values (DESIGN.md §6, Fields): how a value of each type is parsed from JSON
//! or text, bound as a parameter, written in `COPY` text format and shown as JSON. Pure data: no I/O.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use deadpool_postgres::tokio_postgres::types::{ToSql, Type};
use serde_json::Value as Json;

use super::Email;
use crate::db::quote_ident;

/// The type of a recipient field (DESIGN.md §6, Fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// At most `max` characters.
    Text {
        max: usize,
    },
    Integer,
    Number,
    Boolean,
    Date,
    Timestamp,
}

impl FieldType {
    /// From the stored form (`data_type`, `length`); texts without a length have the default 255.
    pub fn parse(data_type: &str, length: Option<i32>) -> Option<Self> {
        Some(match data_type {
            "text" => Self::Text {
                max: length.and_then(|l| usize::try_from(l).ok()).unwrap_or(255),
            },
            "integer" => Self::Integer,
            "number" => Self::Number,
            "boolean" => Self::Boolean,
            "date" => Self::Date,
            "timestamp" => Self::Timestamp,
            _ => return None,
        })
    }

    /// The PostgreSQL type a value of this field is bound or copied as.
    pub fn sql_type(self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Integer => "int8",
            Self::Number => "float8",
            Self::Boolean => "bool",
            Self::Date => "date",
            Self::Timestamp => "timestamptz",
        }
    }

    /// [`Self::sql_type`] as tokio-postgres names it (a parameter's declared type).
    pub fn pg_type(self) -> Type {
        match self {
            Self::Text { .. } => Type::TEXT,
            Self::Integer => Type::INT8,
            Self::Number => Type::FLOAT8,
            Self::Boolean => Type::BOOL,
            Self::Date => Type::DATE,
            Self::Timestamp => Type::TIMESTAMPTZ,
        }
    }

    /// The array of [`Self::pg_type`] (an `in` list's parameter).
    pub fn pg_array_type(self) -> Type {
        match self {
            Self::Text { .. } => Type::TEXT_ARRAY,
            Self::Integer => Type::INT8_ARRAY,
            Self::Number => Type::FLOAT8_ARRAY,
            Self::Boolean => Type::BOOL_ARRAY,
            Self::Date => Type::DATE_ARRAY,
            Self::Timestamp => Type::TIMESTAMPTZ_ARRAY,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::Date => "date",
            Self::Timestamp => "timestamp",
        }
    }

    /// Whether `lt`/`gt` and friends mean something for this type.
    pub fn is_ordered(self) -> bool {
        !matches!(self, Self::Boolean)
    }
}

/// Where a field comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `email`, names, gender: every tenant has them.
    Standard,
    /// `id`, `created_at`, `updated_at`: maintained by the database, readable in rules, never written.
    System,
    /// Inherited from the master.
    Central,
    /// The client's own.
    Client,
}

/// One recipient field.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    pub origin: Origin,
    /// Personal data (masked without the private-data right).
    pub personal: bool,
    /// NOT NULL (with a default): a write may omit it, not clear it.
    pub required: bool,
}

impl Field {
    pub fn new(name: &str, ty: FieldType, origin: Origin, personal: bool) -> Self {
        Self {
            name: name.to_owned(),
            ty,
            origin,
            personal,
            required: false,
        }
    }

    /// A custom field (for validating values against it).
    pub fn custom(name: &str, ty: FieldType, personal: bool) -> Self {
        Self::new(name, ty, Origin::Client, personal)
    }

    /// The quoted column name.
    pub fn column(&self) -> String {
        quote_ident(&self.name)
    }

    pub fn is_writable(&self) -> bool {
        self.origin != Origin::System
    }

    /// A value from JSON (request bodies, NDJSON imports, rule values). `null` is [`Value::Null`].
    pub fn parse_json(&self, value: &Json) -> Result<Value, String> {
        match (self.ty, value) {
            (_, Json::Null) => Ok(Value::Null),
            (FieldType::Text { .. }, Json::String(s)) => self.parse_text(s),
            (FieldType::Integer, Json::Number(n)) => n
                .as_i64()
                .map(Value::Integer)
                .ok_or_else(|| "must be a whole number".to_owned()),
            (FieldType::Number, Json::Number(n)) => n
                .as_f64()
                .filter(|f| f.is_finite())
                .map(Value::Number)
                .ok_or_else(|| "must be a finite number".to_owned()),
            (FieldType::Boolean, Json::Bool(b)) => Ok(Value::Boolean(*b)),
            (FieldType::Date | FieldType::Timestamp, Json::String(s)) => self.parse_text(s),
            (ty, _) => Err(format!("must be {}", expected(ty))),
        }
    }

    /// A value from text (CSV cells, query strings). Empty (after trimming) is [`Value::Null`].
    pub fn parse_text(&self, raw: &str) -> Result<Value, String> {
        let s = raw.trim();
        if s.is_empty() {
            return Ok(Value::Null);
        }
        let expected = || format!("must be {}", expected(self.ty));
        match self.ty {
            FieldType::Text { .. } if self.name == "email" => Email::parse(s)
                .map(|e| Value::Text(e.as_str().to_owned()))
                .map_err(|e| e.reason),
            FieldType::Text { max } => {
                if s.chars().count() > max {
                    Err(format!("must be at most {max} characters"))
                } else if s.chars().any(char::is_control) {
                    Err("must not contain control characters".to_owned())
                } else {
                    Ok(Value::Text(s.to_owned()))
                }
            }
            FieldType::Integer => s.parse().map(Value::Integer).map_err(|_| expected()),
            FieldType::Number => s
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Value::Number)
                .ok_or_else(expected),
            FieldType::Boolean => match s.to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "1" => Ok(Value::Boolean(true)),
                "false" | "f" | "no" | "0" => Ok(Value::Boolean(false)),
                _ => Err(expected()),
            },
            // Years 0-9999, as for timestamps (RFC 3339): chrono also reads signed and longer years, which
            // PostgreSQL cannot store or read back in this form.
            FieldType::Date => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .filter(|d| (0..=9999).contains(&chrono::Datelike::year(d)))
                .map(Value::Date)
                .ok_or_else(expected),
            FieldType::Timestamp => DateTime::parse_from_rfc3339(s)
                .map(|t| Value::Timestamp(t.with_timezone(&Utc)))
                .map_err(|_| expected()),
        }
    }
}

fn expected(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Text { .. } => "a string",
        FieldType::Integer => "a whole number",
        FieldType::Number => "a number",
        FieldType::Boolean => "true or false",
        FieldType::Date => "a date like 2026-11-23",
        FieldType::Timestamp => "a timestamp like 2026-11-23T10:00:00Z",
    }
}

/// A typed field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Integer(i64),
    Number(f64),
    Boolean(bool),
    Date(NaiveDate),
    Timestamp(DateTime<Utc>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// The value as a bound parameter (bind it with an explicit `::{sql_type}` cast).
    pub fn as_param(&self) -> Box<dyn ToSql + Sync + Send> {
        match self.clone() {
            Self::Null => Box::new(Option::<String>::None),
            Self::Text(v) => Box::new(v),
            Self::Integer(v) => Box::new(v),
            Self::Number(v) => Box::new(v),
            Self::Boolean(v) => Box::new(v),
            Self::Date(v) => Box::new(v),
            Self::Timestamp(v) => Box::new(v),
        }
    }

    /// The value as a bound parameter of a column of type `ty`: like [`Value::as_param`], but a null is a typed
    /// null (tokio-postgres checks the Rust type even of a null against the parameter's type).
    pub fn typed_param(&self, ty: FieldType) -> Box<dyn ToSql + Sync + Send> {
        if !self.is_null() {
            return self.as_param();
        }
        match ty {
            FieldType::Text { .. } => Box::new(Option::<String>::None),
            FieldType::Integer => Box::new(Option::<i64>::None),
            FieldType::Number => Box::new(Option::<f64>::None),
            FieldType::Boolean => Box::new(Option::<bool>::None),
            FieldType::Date => Box::new(Option::<NaiveDate>::None),
            FieldType::Timestamp => Box::new(Option::<DateTime<Utc>>::None),
        }
    }

    /// The value as JSON (a field's default in the catalogue, a rule value shown back).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Text(s) => s.clone().into(),
            Value::Integer(v) => (*v).into(),
            Value::Number(v) => (*v).into(),
            Value::Boolean(v) => (*v).into(),
            Value::Date(d) => d.format("%Y-%m-%d").to_string().into(),
            Value::Timestamp(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true).into(),
        }
    }

    /// Appends the value in `COPY ... FROM STDIN` text format (`\N` for null, escapes for text).
    pub fn write_copy_text(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        match self {
            Self::Null => out.extend_from_slice(b"\\N"),
            Self::Text(s) => {
                for b in s.bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        _ => out.push(b),
                    }
                }
            }
            Self::Integer(v) => {
                let _ = write!(out, "{v}");
            }
            Self::Number(v) => {
                let _ = write!(out, "{v:?}");
            }
            Self::Boolean(v) => out.push(if *v { b't' } else { b'f' }),
            Self::Date(v) => {
                let _ = write!(out, "{}", v.format("%Y-%m-%d"));
            }
            Self::Timestamp(v) => {
                let _ = write!(out, "{}", v.to_rfc3339());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use deadpool_postgres::tokio_postgres::types::Kind;

    use super::*;

    /// The type a value is declared as (`pg_type`, `query_typed`) is the one the SQL casts it to (`sql_type`), and
    /// an `in` list's is the array of it: the two spellings cannot drift apart.
    #[test]
    fn the_declared_type_is_the_cast_type_and_its_array() {
        for ty in [
            FieldType::Text { max: 10 },
            FieldType::Integer,
            FieldType::Number,
            FieldType::Boolean,
            FieldType::Date,
            FieldType::Timestamp,
        ] {
            assert_eq!(ty.pg_type().name(), ty.sql_type(), "{ty:?}");
            assert_eq!(
                ty.pg_array_type().kind(),
                &Kind::Array(ty.pg_type()),
                "{ty:?}"
            );
        }
    }
}
