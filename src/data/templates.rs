//! Templates in a tenant database: copies inherited from the master (their id is the master template's id) and
//! the client's own. [`sync`] brings the inherited copies to the master's newest versions without ever going
//! backwards (a re-delivered or stale version changes nothing) and without touching an overridden copy (it only
//! records the newer version as available).

use chrono::{DateTime, Utc};
use deadpool_postgres::tokio_postgres::{Client, Row};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::DataError;
use crate::control::templates::{MasterTemplate, TemplateContent};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantTemplate {
    pub id: Uuid,
    /// inherited (a copy of a master template, addressed by its id) or local (the client's own).
    pub origin: String,
    pub name: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
    /// Inherited: the master version this copy holds (or held when it was overridden).
    pub master_version: Option<i32>,
    /// Inherited: the newest master version published.
    pub available_version: Option<i32>,
    /// Inherited: edited by the client; later master versions are not applied until reverted.
    pub overridden: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Row> for TenantTemplate {
    fn from(r: &Row) -> Self {
        Self {
            id: r.get("id"),
            origin: r.get("origin"),
            name: r.get("name"),
            subject: r.get("subject"),
            html_body: r.get("html_body"),
            text_body: r.get("text_body"),
            master_version: r.get("master_version"),
            available_version: r.get("available_version"),
            overridden: r.get("overridden"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }
}

const COLUMNS: &str = "id, origin, name, subject, html_body, text_body, master_version, available_version, \
                       overridden, created_at, updated_at";

/// What a sync found for one master template in this database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    pub template: Uuid,
    /// synced or overridden (a retracted template's copy is gone: synced).
    pub status: &'static str,
    pub version: Option<i32>,
    /// Whether this run changed the copy.
    pub applied: bool,
}

/// Brings the inherited copies to `masters` in one transaction; idempotent and monotonic.
pub async fn sync(db: &mut Client, masters: &[MasterTemplate]) -> Result<Vec<Synced>, DataError> {
    let tx = db.transaction().await?;
    let mut result = Vec::with_capacity(masters.len());
    for master in masters {
        if master.retracted {
            let removed = tx
                .execute(
                    "DELETE FROM templates WHERE id = $1 AND origin = 'inherited' AND NOT overridden",
                    &[&master.id],
                )
                .await?;
            let overridden = tx
                .query_opt(
                    "SELECT master_version FROM templates WHERE id = $1 AND overridden",
                    &[&master.id],
                )
                .await?;
            result.push(Synced {
                template: master.id,
                status: if overridden.is_some() {
                    "overridden"
                } else {
                    "synced"
                },
                version: overridden.and_then(|r| r.get(0)),
                applied: removed > 0,
            });
            continue;
        }
        // Only a newer version replaces a copy that is not overridden; an overridden one only learns about it.
        let applied = tx
            .execute(
                "INSERT INTO templates (id, origin, name, subject, html_body, text_body, master_version, available_version)
                 VALUES ($1, 'inherited', $2, $3, $4, $5, $6, $6)
                 ON CONFLICT (id) DO UPDATE SET
                     name = EXCLUDED.name, subject = EXCLUDED.subject, html_body = EXCLUDED.html_body,
                     text_body = EXCLUDED.text_body, master_version = EXCLUDED.master_version,
                     available_version = EXCLUDED.available_version, updated_at = now()
                 WHERE templates.origin = 'inherited' AND NOT templates.overridden
                   AND templates.master_version < EXCLUDED.master_version",
                &[
                    &master.id,
                    &master.name,
                    &master.subject,
                    &master.html_body,
                    &master.text_body,
                    &master.version,
                ],
            )
            .await?;
        let row = tx
            .query_one(
                "UPDATE templates SET available_version = greatest(available_version, $2)
                 WHERE id = $1 RETURNING master_version, overridden",
                &[&master.id, &master.version],
            )
            .await?;
        let overridden: bool = row.get("overridden");
        result.push(Synced {
            template: master.id,
            status: if overridden { "overridden" } else { "synced" },
            version: row.get("master_version"),
            applied: applied > 0,
        });
    }
    tx.commit().await?;
    Ok(result)
}

pub async fn list(
    db: &Client,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<TenantTemplate>, DataError> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLUMNS} FROM templates WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
            ),
            &[&after, &limit],
        )
        .await?;
    Ok(rows.iter().map(TenantTemplate::from).collect())
}

pub async fn get(db: &Client, id: Uuid) -> Result<TenantTemplate, DataError> {
    db.query_opt(
        &format!("SELECT {COLUMNS} FROM templates WHERE id = $1"),
        &[&id],
    )
    .await?
    .map(|r| TenantTemplate::from(&r))
    .ok_or(DataError::NotFound)
}

/// A template of the client's own.
pub async fn create_local(
    db: &Client,
    content: &TemplateContent,
) -> Result<TenantTemplate, DataError> {
    let row = db
        .query_one(
            &format!(
                "INSERT INTO templates (origin, name, subject, html_body, text_body)
                 VALUES ('local', $1, $2, $3, $4) RETURNING {COLUMNS}"
            ),
            &[
                &content.name,
                &content.subject,
                &content.html_body,
                &content.text_body,
            ],
        )
        .await?;
    Ok(TenantTemplate::from(&row))
}

/// Changes a template: a local one in place; an inherited one becomes an override (later master versions are
/// recorded as available, not applied).
pub async fn update(
    db: &Client,
    id: Uuid,
    content: &TemplateContent,
) -> Result<TenantTemplate, DataError> {
    db.query_opt(
        &format!(
            "UPDATE templates SET name = $2, subject = $3, html_body = $4, text_body = $5,
                 overridden = (origin = 'inherited'), updated_at = now()
             WHERE id = $1 RETURNING {COLUMNS}"
        ),
        &[
            &id,
            &content.name,
            &content.subject,
            &content.html_body,
            &content.text_body,
        ],
    )
    .await?
    .map(|r| TenantTemplate::from(&r))
    .ok_or(DataError::NotFound)
}

/// Ends an override: the copy takes the master's newest version again.
pub async fn revert(
    db: &Client,
    id: Uuid,
    master: &MasterTemplate,
) -> Result<TenantTemplate, DataError> {
    db.query_opt(
        &format!(
            "UPDATE templates SET name = $2, subject = $3, html_body = $4, text_body = $5,
                 master_version = $6, available_version = greatest(available_version, $6),
                 overridden = false, updated_at = now()
             WHERE id = $1 AND origin = 'inherited' RETURNING {COLUMNS}"
        ),
        &[
            &id,
            &master.name,
            &master.subject,
            &master.html_body,
            &master.text_body,
            &master.version,
        ],
    )
    .await?
    .map(|r| TenantTemplate::from(&r))
    .ok_or(DataError::NotFound)
}
