//! Mailing lists and bindings (recipient × list, with a status) in a tenant database.

use chrono::{DateTime, Utc};
use deadpool_postgres::tokio_postgres::types::Type;
use deadpool_postgres::tokio_postgres::{self, Client, GenericClient, Row};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::DataError;
use super::recipients::Recipient;

/// The status of a recipient on a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BindingStatus {
    Active,
    OptOut,
    Bounced,
    Blocked,
    PendingConfirmation,
}

impl BindingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::OptOut => "opt_out",
            Self::Bounced => "bounced",
            Self::Blocked => "blocked",
            Self::PendingConfirmation => "pending_confirmation",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        [
            Self::Active,
            Self::OptOut,
            Self::Bounced,
            Self::Blocked,
            Self::PendingConfirmation,
        ]
        .into_iter()
        .find(|s| s.as_str() == value)
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MailingList {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Row> for MailingList {
    fn from(r: &Row) -> Self {
        Self {
            id: r.get("id"),
            name: r.get("name"),
            description: r.get("description"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Binding {
    pub mailing_list_id: i64,
    pub recipient_id: i64,
    pub status: BindingStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A recipient with its status on one list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ListMember {
    #[serde(flatten)]
    pub recipient: Recipient,
    pub binding_status: BindingStatus,
}

fn name_taken(e: tokio_postgres::Error) -> DataError {
    // Unique per owner since tenant migration V8 (per database before).
    if matches!(
        e.as_db_error().and_then(|d| d.constraint()),
        Some("mailing_lists_owner_name_key" | "mailing_lists_name_key")
    ) {
        DataError::ListNameTaken
    } else {
        DataError::Query(e)
    }
}

pub async fn create(
    db: &impl GenericClient,
    name: &str,
    description: Option<&str>,
) -> Result<MailingList, DataError> {
    let row = db
        .query_typed_one(
            "INSERT INTO mailing_lists (name, description) VALUES ($1, $2)
             RETURNING id, name, description, created_at, updated_at",
            &[(&name, Type::TEXT), (&description, Type::TEXT)],
        )
        .await
        .map_err(name_taken)?;
    Ok(MailingList::from(&row))
}

pub async fn list(
    db: &Client,
    after_id: Option<i64>,
    limit: i64,
) -> Result<Vec<MailingList>, DataError> {
    let rows = db
        .query_typed(
            "SELECT id, name, description, created_at, updated_at FROM mailing_lists
             WHERE ($1::int8 IS NULL OR id > $1) ORDER BY id LIMIT $2",
            &[(&after_id, Type::INT8), (&limit, Type::INT8)],
        )
        .await?;
    Ok(rows.iter().map(MailingList::from).collect())
}

pub async fn get(db: &Client, id: i64) -> Result<MailingList, DataError> {
    db.query_typed(
        "SELECT id, name, description, created_at, updated_at FROM mailing_lists WHERE id = $1",
        &[(&id, Type::INT8)],
    )
    .await?
    .first()
    .map(MailingList::from)
    .ok_or(DataError::NotFound)
}

pub async fn delete(db: &Client, id: i64) -> Result<(), DataError> {
    match super::execute_typed(
        db,
        "DELETE FROM mailing_lists WHERE id = $1",
        &[(&id, Type::INT8)],
    )
    .await?
    {
        0 => Err(DataError::NotFound),
        _ => Ok(()),
    }
}

/// Sets a recipient's status on a list (creating the binding if needed). Unknown list or recipient: not found.
pub async fn bind(
    db: &Client,
    list_id: i64,
    recipient_id: i64,
    status: BindingStatus,
) -> Result<Binding, DataError> {
    let row = db
        .query_typed_opt(
            "INSERT INTO bindings (mailing_list_id, recipient_id, status)
             SELECT l.id, r.id, $3 FROM mailing_lists l, recipients r WHERE l.id = $1 AND r.id = $2
             ON CONFLICT (mailing_list_id, recipient_id)
             DO UPDATE SET status = EXCLUDED.status,
                           updated_at = CASE WHEN bindings.status = EXCLUDED.status THEN bindings.updated_at
                                             ELSE now() END
             RETURNING mailing_list_id, recipient_id, status, created_at, updated_at",
            &[
                (&list_id, Type::INT8),
                (&recipient_id, Type::INT8),
                (&status.as_str(), Type::TEXT),
            ],
        )
        .await?
        .ok_or(DataError::NotFound)?;
    let status: String = row.get("status");
    Ok(Binding {
        mailing_list_id: row.get("mailing_list_id"),
        recipient_id: row.get("recipient_id"),
        status: BindingStatus::parse(&status).unwrap_or(BindingStatus::Blocked),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

/// The recipients on a list, optionally only those in one status, by recipient id.
pub async fn members(
    db: &Client,
    list_id: i64,
    status: Option<BindingStatus>,
    after_id: Option<i64>,
    limit: i64,
    privacy: &super::Privacy,
) -> Result<Vec<ListMember>, DataError> {
    get(db, list_id).await?;
    let sql = format!(
        "SELECT {}, b.status AS binding_status
         FROM bindings b JOIN recipients r ON r.id = b.recipient_id
         WHERE b.mailing_list_id = $1
           AND ($2::text IS NULL OR b.status = $2)
           AND ($3::int8 IS NULL OR r.id > $3)
         ORDER BY r.id LIMIT $4",
        super::recipients::COLUMNS
    );
    let rows = crate::tenant::statements::query_unnamed(
        db,
        &sql,
        &[
            (&list_id, Type::INT8),
            (&status.map(BindingStatus::as_str), Type::TEXT),
            (&after_id, Type::INT8),
            (&limit, Type::INT8),
        ],
    )
    .await?;
    let mut recipients: Vec<Recipient> = rows.iter().map(Recipient::from).collect();
    super::recipients::protect(db, privacy, None, &mut recipients).await?;
    Ok(rows
        .iter()
        .zip(recipients)
        .map(|(r, recipient)| {
            let status: String = r.get("binding_status");
            ListMember {
                recipient,
                binding_status: BindingStatus::parse(&status).unwrap_or(BindingStatus::Blocked),
            }
        })
        .collect())
}
