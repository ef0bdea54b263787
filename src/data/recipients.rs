//! Recipients in a tenant database: the standard fields (custom fields join them with the field-schema issue, as
//! further columns flattened beside these). Every value is a bound parameter; every statement is static.

use chrono::{DateTime, Utc};
use deadpool_postgres::tokio_postgres::{self, Client, Row};
use serde::Serialize;
use utoipa::ToSchema;

use super::DataError;
use crate::domain::Email;

/// The columns of [`Recipient`], for statements over `recipients r`.
pub const COLUMNS: &str =
    "r.id, r.email, r.first_name, r.last_name, r.gender, r.created_at, r.updated_at";

/// Longest first or last name, and gender, in characters (the table's checks agree).
pub const NAME_MAX: usize = 255;
pub const GENDER_MAX: usize = 32;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Recipient {
    pub id: i64,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub gender: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Row> for Recipient {
    fn from(r: &Row) -> Self {
        Self {
            id: r.get("id"),
            email: r.get("email"),
            first_name: r.get("first_name"),
            last_name: r.get("last_name"),
            gender: r.get("gender"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }
}

/// A validated new recipient.
#[derive(Debug, Clone)]
pub struct NewRecipient {
    pub email: Email,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub gender: Option<String>,
}

/// A validated change: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct RecipientPatch {
    pub email: Option<Email>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub gender: Option<Option<String>>,
}

/// Equality filters (e-mail case-insensitively) and the keyset position.
#[derive(Debug, Clone, Default)]
pub struct RecipientFilter {
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub gender: Option<String>,
    pub after_id: Option<i64>,
    pub limit: i64,
}

/// A unique violation on the e-mail index is the caller's conflict, not a failure.
fn email_taken(e: tokio_postgres::Error) -> DataError {
    if e.as_db_error().and_then(|d| d.constraint()) == Some("recipients_email_key") {
        DataError::EmailTaken
    } else {
        DataError::Query(e)
    }
}

pub async fn create(db: &Client, new: &NewRecipient) -> Result<Recipient, DataError> {
    let row = db
        .query_one(
            "INSERT INTO recipients (email, first_name, last_name, gender) VALUES ($1, $2, $3, $4)
             RETURNING id, email, first_name, last_name, gender, created_at, updated_at",
            &[
                &new.email.as_str(),
                &new.first_name,
                &new.last_name,
                &new.gender,
            ],
        )
        .await
        .map_err(email_taken)?;
    Ok(Recipient::from(&row))
}

pub async fn get(db: &Client, id: i64) -> Result<Recipient, DataError> {
    db.query_opt(
        "SELECT id, email, first_name, last_name, gender, created_at, updated_at FROM recipients WHERE id = $1",
        &[&id],
    )
    .await?
    .map(|r| Recipient::from(&r))
    .ok_or(DataError::NotFound)
}

pub async fn list(db: &Client, filter: &RecipientFilter) -> Result<Vec<Recipient>, DataError> {
    let rows = db
        .query(
            "SELECT id, email, first_name, last_name, gender, created_at, updated_at FROM recipients
             WHERE ($1::text IS NULL OR lower(email) = lower($1))
               AND ($2::text IS NULL OR first_name = $2)
               AND ($3::text IS NULL OR last_name = $3)
               AND ($4::text IS NULL OR gender = $4)
               AND ($5::int8 IS NULL OR id > $5)
             ORDER BY id
             LIMIT $6",
            &[
                &filter.email,
                &filter.first_name,
                &filter.last_name,
                &filter.gender,
                &filter.after_id,
                &filter.limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(Recipient::from).collect())
}

pub async fn update(db: &Client, id: i64, patch: &RecipientPatch) -> Result<Recipient, DataError> {
    let email = patch.email.as_ref().map(Email::as_str);
    let row = db
        .query_opt(
            "UPDATE recipients SET
                 email = coalesce($2, email),
                 first_name = CASE WHEN $3 THEN $4 ELSE first_name END,
                 last_name = CASE WHEN $5 THEN $6 ELSE last_name END,
                 gender = CASE WHEN $7 THEN $8 ELSE gender END,
                 updated_at = now()
             WHERE id = $1
             RETURNING id, email, first_name, last_name, gender, created_at, updated_at",
            &[
                &id,
                &email,
                &patch.first_name.is_some(),
                &patch.first_name.clone().flatten(),
                &patch.last_name.is_some(),
                &patch.last_name.clone().flatten(),
                &patch.gender.is_some(),
                &patch.gender.clone().flatten(),
            ],
        )
        .await
        .map_err(email_taken)?;
    row.map(|r| Recipient::from(&r)).ok_or(DataError::NotFound)
}

pub async fn delete(db: &Client, id: i64) -> Result<(), DataError> {
    let deleted = db
        .execute("DELETE FROM recipients WHERE id = $1", &[&id])
        .await?;
    if deleted == 0 {
        return Err(DataError::NotFound);
    }
    Ok(())
}
