//! The master's cross-client target groups (`central_target_groups`): a rule over standard and central fields and
//! the clients it is evaluated in. Evaluating one is the data plane's work, through `fanout::crossclient`.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::{ControlError, ControlPlane};

/// Which clients a cross-client target group is evaluated in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSelection {
    /// Every live client, the master included.
    All,
    /// These clients (by id: a renamed client stays selected).
    Clients(Vec<Uuid>),
    /// The sub-clients of this client.
    Parent(Uuid),
}

#[derive(Debug, Clone)]
pub struct CentralGroupRecord {
    pub id: i64,
    pub name: String,
    pub rule: serde_json::Value,
    pub selection: ClientSelection,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(FromRow)]
struct GroupRow {
    id: i64,
    name: String,
    rule: serde_json::Value,
    client_ids: Option<Vec<Uuid>>,
    parent_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<GroupRow> for CentralGroupRecord {
    fn from(r: GroupRow) -> Self {
        let selection = match (r.client_ids, r.parent_id) {
            (Some(ids), _) => ClientSelection::Clients(ids),
            (None, Some(parent)) => ClientSelection::Parent(parent),
            (None, None) => ClientSelection::All,
        };
        Self {
            id: r.id,
            name: r.name,
            rule: r.rule,
            selection,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const GROUP_COLUMNS: &str = "id, name, rule, client_ids, parent_id, created_at, updated_at";

impl ControlPlane {
    /// Stores a cross-client target group (the caller compiled its rule and resolved its clients).
    pub async fn create_central_group(
        &self,
        name: &str,
        rule: &serde_json::Value,
        selection: &ClientSelection,
        created_by: Uuid,
    ) -> Result<CentralGroupRecord, ControlError> {
        let (ids, parent) = match selection {
            ClientSelection::All => (None, None),
            ClientSelection::Clients(ids) => (Some(ids.as_slice()), None),
            ClientSelection::Parent(parent) => (None, Some(*parent)),
        };
        let row: GroupRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO central_target_groups (name, rule, client_ids, parent_id, created_by)
             VALUES ($1, $2, $3, $4, $5) RETURNING {GROUP_COLUMNS}"
        )))
        .bind(name)
        .bind(rule)
        .bind(ids)
        .bind(parent)
        .bind(created_by)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.constraint() == Some("central_target_groups_name") => {
                ControlError::GroupNameTaken
            }
            _ => e.into(),
        })?;
        Ok(row.into())
    }

    /// Cross-client target groups by id, after `after`.
    pub async fn central_groups(
        &self,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<CentralGroupRecord>, ControlError> {
        let rows: Vec<GroupRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {GROUP_COLUMNS} FROM central_target_groups
             WHERE ($1::int8 IS NULL OR id > $1) ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn central_group(&self, id: i64) -> Result<CentralGroupRecord, ControlError> {
        let row: Option<GroupRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {GROUP_COLUMNS} FROM central_target_groups WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Into::into).ok_or(ControlError::NotFound)
    }

    pub async fn delete_central_group(&self, id: i64) -> Result<(), ControlError> {
        let done = sqlx::query("DELETE FROM central_target_groups WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        match done.rows_affected() {
            0 => Err(ControlError::NotFound),
            _ => Ok(()),
        }
    }
}
