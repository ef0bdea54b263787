//! Templates in a tenant database: copies inherited from the master (their id is the master template's id) and
//! the client's own. [`sync`] brings the inherited copies to the master's newest versions without ever going
//! backwards (a re-delivered or stale version changes nothing) and without touching an overridden copy (it only
//! records the newer version as available).

use chrono::{DateTime, Utc};
use deadpool_postgres::tokio_postgres::types::Type;
use deadpool_postgres::tokio_postgres::{Client, GenericClient, Row};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::DataError;
use crate::control::templates::{MasterTemplate, TemplateContent};

/// A template's content as the API takes it (and as an exported document carries a local template): validated
/// by the handlers (`http::templates`) before it is written.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    /// 1-200 characters.
    #[schema(
        example = "Welcome",
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// 1-998 characters (the RFC 5322 line limit).
    #[schema(
        example = "Welcome to our newsletter",
        min_length = 1,
        max_length = 998,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub subject: String,
    /// Up to 1 MiB; at least one of the two bodies is needed.
    #[serde(default)]
    pub html_body: String,
    #[serde(default)]
    pub text_body: String,
}

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

/// Brings the inherited copies to `masters` in one statement (one round trip, one commit); idempotent and
/// monotonic: a copy's content changes only to a newer version and never while it is overridden, while
/// `available_version` always learns the newest one. Retracted templates' copies go unless overridden.
pub async fn sync(db: &mut Client, masters: &[MasterTemplate]) -> Result<Vec<Synced>, DataError> {
    let live: Vec<&MasterTemplate> = masters.iter().filter(|m| !m.retracted).collect();
    let retracted: Vec<Uuid> = masters
        .iter()
        .filter(|m| m.retracted)
        .map(|m| m.id)
        .collect();
    let ids: Vec<Uuid> = live.iter().map(|m| m.id).collect();
    let names: Vec<&str> = live.iter().map(|m| m.name.as_str()).collect();
    let subjects: Vec<&str> = live.iter().map(|m| m.subject.as_str()).collect();
    let html: Vec<&str> = live.iter().map(|m| m.html_body.as_str()).collect();
    let text: Vec<&str> = live.iter().map(|m| m.text_body.as_str()).collect();
    let versions: Vec<i32> = live.iter().map(|m| m.version).collect();
    // `newer`: the copy follows the master and this version is newer than the one it holds.
    let rows = db
        .query_typed(
            "WITH master AS (
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[])
                     AS m(id, name, subject, html_body, text_body, version)
             ), removed AS (
                 DELETE FROM templates t WHERE t.id = ANY($7::uuid[]) AND t.origin = 'inherited'
                     AND NOT t.overridden
                 RETURNING t.id
             ), written AS (
                 INSERT INTO templates AS t (id, origin, name, subject, html_body, text_body, master_version,
                                             available_version)
                 SELECT id, 'inherited', name, subject, html_body, text_body, version, version FROM master
                 ON CONFLICT (id) DO UPDATE SET
                     name = CASE WHEN t.origin = 'inherited' AND NOT t.overridden
                                      AND t.master_version < EXCLUDED.master_version
                                 THEN EXCLUDED.name ELSE t.name END,
                     subject = CASE WHEN t.origin = 'inherited' AND NOT t.overridden
                                         AND t.master_version < EXCLUDED.master_version
                                    THEN EXCLUDED.subject ELSE t.subject END,
                     html_body = CASE WHEN t.origin = 'inherited' AND NOT t.overridden
                                           AND t.master_version < EXCLUDED.master_version
                                      THEN EXCLUDED.html_body ELSE t.html_body END,
                     text_body = CASE WHEN t.origin = 'inherited' AND NOT t.overridden
                                           AND t.master_version < EXCLUDED.master_version
                                      THEN EXCLUDED.text_body ELSE t.text_body END,
                     updated_at = CASE WHEN t.origin = 'inherited' AND NOT t.overridden
                                            AND t.master_version < EXCLUDED.master_version
                                       THEN now() ELSE t.updated_at END,
                     master_version = CASE WHEN t.origin = 'inherited' AND NOT t.overridden
                                                AND t.master_version < EXCLUDED.master_version
                                           THEN EXCLUDED.master_version ELSE t.master_version END,
                     available_version = greatest(t.available_version, EXCLUDED.available_version)
                 WHERE t.origin = 'inherited'
                 RETURNING t.id, t.master_version, t.overridden, t.updated_at = now() AS applied
             )
             SELECT id, master_version, overridden, applied FROM written
             UNION ALL
             SELECT id, NULL, false, true FROM removed",
            &[
                (&ids, Type::UUID_ARRAY),
                (&names, Type::TEXT_ARRAY),
                (&subjects, Type::TEXT_ARRAY),
                (&html, Type::TEXT_ARRAY),
                (&text, Type::TEXT_ARRAY),
                (&versions, Type::INT4_ARRAY),
                (&retracted, Type::UUID_ARRAY),
            ],
        )
        .await?;
    let mut result: Vec<Synced> = rows
        .iter()
        .map(|r| {
            let overridden: bool = r.get("overridden");
            Synced {
                template: r.get("id"),
                status: if overridden { "overridden" } else { "synced" },
                version: r.get("master_version"),
                applied: r.get("applied"),
            }
        })
        .collect();
    // A retracted template whose copy was not removed: overridden (the client's now), or never here.
    for id in retracted {
        if !result.iter().any(|s| s.template == id) {
            let overridden = db
                .query_typed_opt(
                    "SELECT master_version FROM templates WHERE id = $1 AND overridden",
                    &[(&id, Type::UUID)],
                )
                .await?;
            result.push(Synced {
                template: id,
                status: if overridden.is_some() {
                    "overridden"
                } else {
                    "synced"
                },
                version: overridden.and_then(|r| r.get(0)),
                applied: false,
            });
        }
    }
    Ok(result)
}

pub async fn list(
    db: &Client,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<TenantTemplate>, DataError> {
    let rows = db
        .query_typed(
            &format!(
                "SELECT {COLUMNS} FROM templates WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
            ),
            &[(&after, Type::UUID), (&limit, Type::INT8)],
        )
        .await?;
    Ok(rows.iter().map(TenantTemplate::from).collect())
}

pub async fn get(db: &Client, id: Uuid) -> Result<TenantTemplate, DataError> {
    db.query_typed(
        &format!("SELECT {COLUMNS} FROM templates WHERE id = $1"),
        &[(&id, Type::UUID)],
    )
    .await?
    .first()
    .map(TenantTemplate::from)
    .ok_or(DataError::NotFound)
}

/// A template of the client's own.
pub async fn create_local(
    db: &impl GenericClient,
    content: &TemplateContent,
) -> Result<TenantTemplate, DataError> {
    let row = db
        .query_typed_one(
            &format!(
                "INSERT INTO templates (origin, name, subject, html_body, text_body)
                 VALUES ('local', $1, $2, $3, $4) RETURNING {COLUMNS}"
            ),
            &[
                (&content.name, Type::TEXT),
                (&content.subject, Type::TEXT),
                (&content.html_body, Type::TEXT),
                (&content.text_body, Type::TEXT),
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
    db.query_typed_opt(
        &format!(
            "UPDATE templates SET name = $2, subject = $3, html_body = $4, text_body = $5,
                 overridden = (origin = 'inherited'), updated_at = now()
             WHERE id = $1 RETURNING {COLUMNS}"
        ),
        &[
            (&id, Type::UUID),
            (&content.name, Type::TEXT),
            (&content.subject, Type::TEXT),
            (&content.html_body, Type::TEXT),
            (&content.text_body, Type::TEXT),
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
    db.query_typed_opt(
        &format!(
            "UPDATE templates SET name = $2, subject = $3, html_body = $4, text_body = $5,
                 master_version = $6, available_version = greatest(available_version, $6),
                 overridden = false, updated_at = now()
             WHERE id = $1 AND origin = 'inherited' RETURNING {COLUMNS}"
        ),
        &[
            (&id, Type::UUID),
            (&master.name, Type::TEXT),
            (&master.subject, Type::TEXT),
            (&master.html_body, Type::TEXT),
            (&master.text_body, Type::TEXT),
            (&master.version, Type::INT4),
        ],
    )
    .await?
    .map(|r| TenantTemplate::from(&r))
    .ok_or(DataError::NotFound)
}

/// Serialises, per database, the writes that must not create a second local template of one name (copies and
/// imports; transaction-scoped). Local templates made by `POST .../templates` may share a name, so there is no
/// unique index to lean on.
pub async fn lock_local_names(db: &impl GenericClient) -> Result<(), DataError> {
    super::execute_typed(
        db,
        "SELECT pg_advisory_xact_lock($1)",
        &[(
            &crate::db::lock_key("mandant.local_template_names"),
            Type::INT8,
        )],
    )
    .await?;
    Ok(())
}

/// Which of `names` local templates have already (case-insensitively), as stored.
pub async fn local_names_taken(
    db: &impl GenericClient,
    names: &[&str],
) -> Result<Vec<String>, DataError> {
    let lower: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
    Ok(db
        .query_typed(
            "SELECT DISTINCT name FROM templates WHERE origin = 'local' AND lower(name) = ANY($1) ORDER BY name",
            &[(&lower, Type::TEXT_ARRAY)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The client's own templates, by name.
pub async fn all_local(db: &Client) -> Result<Vec<TenantTemplate>, DataError> {
    let rows = db
        .query_typed(
            &format!(
                "SELECT {COLUMNS} FROM templates WHERE origin = 'local' ORDER BY lower(name), id"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(TenantTemplate::from).collect())
}

/// A local template made from `content` unless a local template of that name exists (then
/// [`DataError::TemplateNameTaken`] and nothing is written): a copy from another client.
pub async fn create_local_unless_taken(
    db: &mut Client,
    content: &TemplateContent,
) -> Result<TenantTemplate, DataError> {
    let tx = db.transaction().await?;
    lock_local_names(&tx).await?;
    if !local_names_taken(&tx, &[content.name.as_str()])
        .await?
        .is_empty()
    {
        return Err(DataError::TemplateNameTaken);
    }
    let template = create_local(&tx, content).await?;
    tx.commit().await?;
    Ok(template)
}
