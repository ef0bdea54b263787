//! Recipients in a tenant database: the standard fields as struct fields and the tenant's custom fields (real
//! columns, see `schema.rs`) flattened beside them. Rows are read with `r.*` and mapped by column type, so a read
//! needs no catalogue lookup; writes and filters that name custom fields validate them against the [`Schema`].
//! Every value is a bound parameter; every column name comes from the schema, quoted.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use deadpool_postgres::tokio_postgres::types::Type;
use deadpool_postgres::tokio_postgres::{self, Client, Row};
use serde::Serialize;
use serde_json::Value as Json;
use utoipa::ToSchema;

use super::DataError;
use super::rules::{self, Compiled};
use super::schema::{Field, Schema, Value};
use crate::domain::{Email, STANDARD_FIELDS};
use crate::tenant::statements::{self, Queries};

/// The columns of [`Recipient`], for statements over `recipients r`.
pub const COLUMNS: &str = "r.*";

/// Longest first or last name, and gender, in characters (the table's checks agree).
pub const NAME_MAX: usize = 255;
pub const GENDER_MAX: usize = 32;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Recipient {
    pub id: i64,
    /// Null only when masked (see `_masked`).
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub gender: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The client's custom fields (central and own), by name.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub fields: serde_json::Map<String, Json>,
    /// The personal fields whose values are withheld (null) because the caller lacks the private-data right on
    /// this client; absent when nothing is masked. (A field name cannot start with `_`.)
    #[serde(rename = "_masked", skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<String>,
}

impl Recipient {
    /// Withholds the personal fields.
    fn mask(&mut self, schema: &Schema, privacy: &super::Privacy) {
        for field in schema
            .fields()
            .filter(|f| privacy.is_personal(schema, &f.name))
        {
            let name = field.name.as_str();
            let slot = match name {
                "email" => Some(&mut self.email),
                "first_name" => Some(&mut self.first_name),
                "last_name" => Some(&mut self.last_name),
                "gender" => Some(&mut self.gender),
                _ => None,
            };
            let present = match slot {
                Some(standard) => {
                    *standard = None;
                    true
                }
                None => self.fields.get_mut(name).map(|v| *v = Json::Null).is_some(),
            };
            if present {
                self.masked.push(name.to_owned());
            }
        }
    }
}

/// Applies `privacy` to recipients read from `db`: masked, their personal fields are withheld. The tenant's
/// schema (which custom fields are personal) is read only when a recipient has custom fields and none is given.
pub async fn protect(
    db: &impl Queries,
    privacy: &super::Privacy,
    schema: Option<&Schema>,
    recipients: &mut [Recipient],
) -> Result<(), DataError> {
    if privacy.is_visible() || recipients.is_empty() {
        return Ok(());
    }
    let loaded;
    let schema = match schema {
        Some(schema) => schema,
        None if recipients.iter().any(|r| !r.fields.is_empty()) => {
            loaded = Schema::load(db).await?;
            &loaded
        }
        None => {
            loaded = Schema::standard();
            &loaded
        }
    };
    for recipient in recipients {
        recipient.mask(schema, privacy);
    }
    Ok(())
}

impl From<&Row> for Recipient {
    fn from(r: &Row) -> Self {
        let mut fields = serde_json::Map::new();
        for (i, column) in r.columns().iter().enumerate() {
            let name = column.name();
            if STANDARD_FIELDS.contains(&name)
                || name == "binding_status"
                || crate::domain::is_internal_column(name)
            {
                continue;
            }
            fields.insert(name.to_owned(), column_json(r, i, column.type_()));
        }
        Self {
            id: r.get("id"),
            email: Some(r.get("email")),
            first_name: r.get("first_name"),
            last_name: r.get("last_name"),
            gender: r.get("gender"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
            fields,
            masked: Vec::new(),
        }
    }
}

/// A custom column's value as JSON, by its PostgreSQL type (the types `tenant/fields.rs` creates).
fn column_json(row: &Row, i: usize, ty: &Type) -> Json {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Option<T> {
        row.try_get::<_, Option<T>>(i).ok().flatten()
    }
    match *ty {
        Type::INT8 | Type::INT4 | Type::INT2 => get::<i64>(row, i).map(Json::from),
        Type::FLOAT8 => get::<f64>(row, i).map(Json::from),
        Type::BOOL => get::<bool>(row, i).map(Json::from),
        Type::DATE => get::<NaiveDate>(row, i).map(|d| d.format("%Y-%m-%d").to_string().into()),
        Type::TIMESTAMPTZ => get::<DateTime<Utc>>(row, i)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true).into()),
        _ => get::<String>(row, i).map(Json::from),
    }
    .unwrap_or(Json::Null)
}

/// Custom field values of a write, validated against the tenant's schema.
pub type CustomValues = Vec<(Field, Value)>;

/// Validates the custom fields of a request body: each must be a writable custom field of the tenant, its value
/// of the field's type; `null` clears (refused for a required field). The message names the field.
pub fn custom_values(
    schema: &Schema,
    body: &serde_json::Map<String, Json>,
) -> Result<CustomValues, DataError> {
    let mut values = Vec::with_capacity(body.len());
    for (name, json) in body {
        let field = schema.writable(name).map_err(DataError::Field)?;
        let value = field
            .parse_json(json)
            .map_err(|e| DataError::Field(format!("{name}: {e}")))?;
        if value.is_null() && field.required {
            return Err(DataError::Field(format!("{name}: is required")));
        }
        values.push((field.clone(), value));
    }
    Ok(values)
}

/// A validated new recipient.
#[derive(Debug, Clone)]
pub struct NewRecipient {
    pub email: Email,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub gender: Option<String>,
    pub custom: CustomValues,
}

/// A validated change: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct RecipientPatch {
    pub email: Option<Email>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub gender: Option<Option<String>>,
    pub custom: CustomValues,
}

/// A unique violation on the e-mail index is the caller's conflict, not a failure.
fn email_taken(e: tokio_postgres::Error) -> DataError {
    if e.as_db_error().and_then(|d| d.constraint()) == Some("recipients_email_key") {
        DataError::EmailTaken
    } else {
        DataError::Query(e)
    }
}

/// A write's values, each with the type its placeholder is (or is cast to).
type Params = Vec<super::TypedParam>;

pub async fn create(db: &Client, new: &NewRecipient) -> Result<Recipient, DataError> {
    let mut columns = vec!["email", "first_name", "last_name", "gender"]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    let mut placeholders = vec!["$1".to_owned(), "$2".into(), "$3".into(), "$4".into()];
    let mut params: Params = vec![
        (Box::new(new.email.as_str().to_owned()), Type::TEXT),
        (Box::new(new.first_name.clone()), Type::TEXT),
        (Box::new(new.last_name.clone()), Type::TEXT),
        (Box::new(new.gender.clone()), Type::TEXT),
    ];
    for (field, value) in &new.custom {
        params.push((value.typed_param(field.ty), field.ty.pg_type()));
        columns.push(field.column());
        placeholders.push(format!("${}::{}", params.len(), field.ty.sql_type()));
    }
    let sql = format!(
        "INSERT INTO recipients AS r ({}) VALUES ({}) RETURNING {COLUMNS}",
        columns.join(", "),
        placeholders.join(", ")
    );
    let rows = statements::query_unnamed(db, &sql, &super::typed_refs(&params))
        .await
        .map_err(email_taken)?;
    let row = rows
        .first()
        .ok_or_else(|| DataError::Config("an insert returned no row".into()))?;
    Ok(Recipient::from(row))
}

/// A recipient by id (a fixed statement: kept prepared on a routing-pool connection).
pub async fn get(db: &impl Queries, id: i64) -> Result<Recipient, DataError> {
    statements::query(
        db,
        "SELECT r.* FROM recipients r WHERE r.id = $1",
        &[(&id, Type::INT8)],
    )
    .await?
    .first()
    .map(Recipient::from)
    .ok_or(DataError::NotFound)
}

/// Recipients matching `filter` (equality on any field, compiled like a rule), by id after `after_id`.
pub async fn list(
    db: &Client,
    filter: Option<Compiled>,
    after_id: Option<i64>,
    limit: i64,
) -> Result<Vec<Recipient>, DataError> {
    let mut compiled = filter.unwrap_or_else(rules::always);
    let after = compiled.push(Box::new(after_id), Type::INT8);
    let limit = compiled.push(Box::new(limit), Type::INT8);
    let sql = format!(
        "SELECT {COLUMNS} FROM recipients r WHERE {} AND ({after}::int8 IS NULL OR r.id > {after}::int8)
         ORDER BY r.id LIMIT {limit}::int8",
        compiled.sql
    );
    let rows = statements::query_unnamed(db, &sql, &compiled.typed_params()).await?;
    Ok(rows.iter().map(Recipient::from).collect())
}

pub async fn update(db: &Client, id: i64, patch: &RecipientPatch) -> Result<Recipient, DataError> {
    let email = patch.email.as_ref().map(|e| e.as_str().to_owned());
    let mut params: Params = vec![
        (Box::new(id), Type::INT8),
        (Box::new(email), Type::TEXT),
        (Box::new(patch.first_name.is_some()), Type::BOOL),
        (Box::new(patch.first_name.clone().flatten()), Type::TEXT),
        (Box::new(patch.last_name.is_some()), Type::BOOL),
        (Box::new(patch.last_name.clone().flatten()), Type::TEXT),
        (Box::new(patch.gender.is_some()), Type::BOOL),
        (Box::new(patch.gender.clone().flatten()), Type::TEXT),
    ];
    let mut sets = String::new();
    for (field, value) in &patch.custom {
        params.push((value.typed_param(field.ty), field.ty.pg_type()));
        sets.push_str(&format!(
            "{} = ${}::{}, ",
            field.column(),
            params.len(),
            field.ty.sql_type()
        ));
    }
    let sql = format!(
        "UPDATE recipients r SET {sets}
             email = coalesce($2, email),
             first_name = CASE WHEN $3 THEN $4 ELSE first_name END,
             last_name = CASE WHEN $5 THEN $6 ELSE last_name END,
             gender = CASE WHEN $7 THEN $8 ELSE gender END,
             updated_at = now()
         WHERE id = $1
         RETURNING {COLUMNS}"
    );
    let rows = statements::query_unnamed(db, &sql, &super::typed_refs(&params))
        .await
        .map_err(email_taken)?;
    rows.first().map(Recipient::from).ok_or(DataError::NotFound)
}

pub async fn delete(db: &Client, id: i64) -> Result<(), DataError> {
    let deleted = db
        .query_typed(
            "DELETE FROM recipients WHERE id = $1 RETURNING id",
            &[(&id, Type::INT8)],
        )
        .await?;
    if deleted.is_empty() {
        return Err(DataError::NotFound);
    }
    Ok(())
}

/// How many recipients and mailing lists the client's database holds (the overview's figures).
pub async fn figures(db: &Client) -> Result<(i64, i64), DataError> {
    let row = db
        .query_typed_one(
            "SELECT (SELECT count(*) FROM recipients), (SELECT count(*) FROM mailing_lists)",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
