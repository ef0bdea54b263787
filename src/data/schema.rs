//! The recipient schema of one tenant: the standard fields every tenant has, the read-only system columns, and
//! the custom fields applied to its database (its `field_catalogue`, written by the field-schema reconciler in
//! the same transaction as the column). Import, filters and target-group rules all go through this one
//! description, so a custom field is usable everywhere as soon as it exists, and nothing else reaches SQL as an
//! identifier: every column name used in a statement comes from here and is quoted.

use crate::tenant::statements::{self, Queries};

use super::DataError;
pub use crate::domain::field::{Field, FieldType, Origin, Value};

/// Every field of one tenant's recipients, in column order: standard, system, then custom by name.
#[derive(Debug, Clone)]
pub struct Schema {
    fields: Vec<Field>,
    /// Whether the database's stored lower-case e-mail (`mandant_email_lower`) is filled in and indexed
    /// (`tenant::inner::prepare` ran): e-mail conditions then use it, which a row-level security policy lets
    /// an index serve (`lower(email)` it does not: not leakproof).
    pub email_lower: bool,
}

impl Schema {
    /// The fields every tenant has.
    pub fn standard() -> Self {
        use FieldType::*;
        Self {
            fields: vec![
                Field {
                    required: true,
                    ..Field::new("email", Text { max: 254 }, Origin::Standard, true)
                },
                Field::new("first_name", Text { max: 255 }, Origin::Standard, true),
                Field::new("last_name", Text { max: 255 }, Origin::Standard, true),
                Field::new("gender", Text { max: 32 }, Origin::Standard, false),
                Field::new("id", Integer, Origin::System, false),
                Field::new("created_at", Timestamp, Origin::System, false),
                Field::new("updated_at", Timestamp, Origin::System, false),
            ],
            email_lower: false,
        }
    }

    /// The standard fields and `extra` (e.g. the central fields every client shares), in that order.
    pub fn standard_with(extra: impl IntoIterator<Item = Field>) -> Self {
        let mut schema = Self::standard();
        schema.fields.extend(extra);
        schema
    }

    /// The standard fields and the custom fields applied to this tenant's database.
    pub async fn load(db: &impl Queries) -> Result<Self, DataError> {
        let mut schema = Self::standard();
        // One round trip: the catalogue, and whether the lower-case e-mail index is valid (one row at least).
        // A fixed statement: kept prepared on a routing-pool connection (parsed and planned once per connection).
        let rows = statements::query(
                db,
                "SELECT f.name, f.origin, f.data_type, f.length, f.required, f.personal, x.email_lower
                 FROM (SELECT EXISTS (
                         SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                         WHERE c.relname = 'recipients_mandant_email_lower'
                           AND c.relnamespace = 'public'::regnamespace AND i.indisvalid) AS email_lower) x
                 LEFT JOIN field_catalogue f ON true
                 ORDER BY f.name",
                &[],
            )
            .await?;
        for row in rows {
            schema.email_lower = row.get("email_lower");
            if row.get::<_, Option<&str>>("name").is_none() {
                continue;
            }
            let data_type: &str = row.get("data_type");
            let ty = FieldType::parse(data_type, row.get("length")).ok_or_else(|| {
                DataError::Config(format!(
                    "the field catalogue has an unknown type {data_type:?}"
                ))
            })?;
            let origin = if row.get::<_, &str>("origin") == "central" {
                Origin::Central
            } else {
                Origin::Client
            };
            let name: &str = row.get("name");
            let mut field = Field::new(name, ty, origin, row.get("personal"));
            field.required = row.get("required");
            schema.fields.push(field);
        }
        Ok(schema)
    }

    /// This schema with one more custom field (unit tests build tenants' schemas without a database).
    #[cfg(test)]
    pub(crate) fn with(mut self, field: Field) -> Self {
        self.fields.push(field);
        self
    }

    /// Every field, in column order.
    pub fn fields(&self) -> impl Iterator<Item = &Field> {
        self.fields.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// A field that may be written (standard or custom), or a message naming the problem.
    pub fn writable(&self, name: &str) -> Result<&Field, String> {
        match self.get(name) {
            Some(f) if f.is_writable() => Ok(f),
            Some(_) => Err(format!("field {name:?} is maintained by the database")),
            None => Err(format!("unknown field {:?}", truncate(name))),
        }
    }

    /// The writable fields, in column order (`email` first).
    pub fn writable_fields(&self) -> impl Iterator<Item = &Field> {
        self.fields.iter().filter(|f| f.is_writable())
    }

    /// The custom fields.
    pub fn custom_fields(&self) -> impl Iterator<Item = &Field> {
        self.fields
            .iter()
            .filter(|f| matches!(f.origin, Origin::Central | Origin::Client))
    }
}

/// A caller's name as it may appear in an error message: at most 64 characters.
pub fn truncate(name: &str) -> String {
    name.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_separators_and_backslashes() {
        let mut out = Vec::new();
        Value::Text("a\tb\\c\nd".into()).write_copy_text(&mut out);
        assert_eq!(out, b"a\\tb\\\\c\\nd");
        out.clear();
        Value::Null.write_copy_text(&mut out);
        assert_eq!(out, b"\\N");
    }

    #[test]
    fn values_are_parsed_by_their_field_type() {
        let schema = Schema::standard();
        let email = schema.get("email").unwrap();
        assert!(email.parse_text("not-an-address").is_err());
        assert_eq!(
            email.parse_text(" a@b.org ").unwrap(),
            Value::Text("a@b.org".into())
        );
        let id = schema.get("id").unwrap();
        assert_eq!(
            id.parse_json(&serde_json::json!(7)).unwrap(),
            Value::Integer(7)
        );
        assert!(id.parse_json(&serde_json::json!("7")).is_err());
        assert!(id.parse_json(&serde_json::json!(7.5)).is_err());
        let gender = schema.get("gender").unwrap();
        assert!(gender.parse_text(&"x".repeat(33)).is_err());
        assert!(schema.writable("id").is_err());
        assert!(schema.writable("nope").is_err());
    }
}
