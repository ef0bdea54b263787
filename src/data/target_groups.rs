//! Target groups in a tenant database: a name and a rule (JSON, see [`super::rules`]), evaluated on demand
//! against the tenant's current schema, so a group always means what its rule says today.

use chrono::{DateTime, Utc};
use deadpool_postgres::tokio_postgres::types::Type;
use deadpool_postgres::tokio_postgres::{self, Client, GenericClient, Row};
use serde::Serialize;
use serde_json::Value as Json;
use utoipa::ToSchema;

use super::recipients::{self, Recipient};
use super::rules::{self, Compiled};
use super::schema::Schema;
use super::{DataError, Privacy};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TargetGroup {
    pub id: i64,
    pub name: String,
    /// The rule tree as stored.
    #[schema(value_type = Object)]
    pub rule: Json,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Row> for TargetGroup {
    fn from(r: &Row) -> Self {
        Self {
            id: r.get("id"),
            name: r.get("name"),
            rule: r.get("rule"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }
}

fn name_taken(e: tokio_postgres::Error) -> DataError {
    // Unique per owner since tenant migration V8 (per database before).
    if matches!(
        e.as_db_error().and_then(|d| d.constraint()),
        Some("target_groups_owner_name_key" | "target_groups_name_key")
    ) {
        DataError::GroupNameTaken
    } else {
        DataError::Query(e)
    }
}

/// Compiles `rule` against the tenant's current schema and checks that the lists it names exist and that
/// `privacy` allows reading the fields it names. Returns the schema too.
pub async fn compile(
    db: &Client,
    rule: &Json,
    privacy: &Privacy,
) -> Result<(Compiled, Schema), DataError> {
    let schema = Schema::load(db).await?;
    let compiled = rules::compile(rule, &schema).map_err(DataError::Rule)?;
    privacy.check_fields(&schema, &compiled.fields)?;
    if !compiled.lists.is_empty() {
        let missing: Vec<i64> = db
            .query_typed(
                "SELECT id FROM unnest($1::int8[]) AS wanted(id)
                 WHERE NOT EXISTS (SELECT 1 FROM mailing_lists l WHERE l.id = wanted.id) ORDER BY id",
                &[(&compiled.lists, Type::INT8_ARRAY)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(id) = missing.first() {
            return Err(DataError::Rule(format!(
                "the rule names mailing list {id}, which does not exist"
            )));
        }
    }
    Ok((compiled, schema))
}

/// Applies `privacy` to groups about to be returned: masked, the values of conditions on personal fields are
/// withheld (see [`rules::mask_personal_values`]).
pub async fn protect(
    db: &impl crate::tenant::statements::Queries,
    privacy: &Privacy,
    groups: &mut [TargetGroup],
) -> Result<(), DataError> {
    if privacy.is_visible() || groups.is_empty() {
        return Ok(());
    }
    let schema = Schema::load(db).await?;
    for group in groups {
        rules::mask_personal_values(&mut group.rule, &|name| privacy.is_personal(&schema, name));
    }
    Ok(())
}

/// Stores a group whose rule compiles.
pub async fn create(
    db: &Client,
    name: &str,
    rule: &Json,
    privacy: &Privacy,
) -> Result<TargetGroup, DataError> {
    compile(db, rule, privacy).await?;
    insert(db, name, rule).await
}

/// Stores a group whose rule the caller has compiled already (an import, in its transaction).
pub async fn insert(
    db: &impl GenericClient,
    name: &str,
    rule: &Json,
) -> Result<TargetGroup, DataError> {
    let row = db
        .query_typed_one(
            "INSERT INTO target_groups (name, rule) VALUES ($1, $2)
             RETURNING id, name, rule, created_at, updated_at",
            &[(&name, Type::TEXT), (rule, Type::JSONB)],
        )
        .await
        .map_err(name_taken)?;
    Ok(TargetGroup::from(&row))
}

pub async fn list(
    db: &Client,
    after_id: Option<i64>,
    limit: i64,
) -> Result<Vec<TargetGroup>, DataError> {
    let rows = db
        .query_typed(
            "SELECT id, name, rule, created_at, updated_at FROM target_groups
             WHERE ($1::int8 IS NULL OR id > $1) ORDER BY id LIMIT $2",
            &[(&after_id, Type::INT8), (&limit, Type::INT8)],
        )
        .await?;
    Ok(rows.iter().map(TargetGroup::from).collect())
}

pub async fn get(db: &Client, id: i64) -> Result<TargetGroup, DataError> {
    db.query_typed(
        "SELECT id, name, rule, created_at, updated_at FROM target_groups WHERE id = $1",
        &[(&id, Type::INT8)],
    )
    .await?
    .first()
    .map(TargetGroup::from)
    .ok_or(DataError::NotFound)
}

pub async fn delete(db: &Client, id: i64) -> Result<(), DataError> {
    match super::execute_typed(
        db,
        "DELETE FROM target_groups WHERE id = $1",
        &[(&id, Type::INT8)],
    )
    .await?
    {
        0 => Err(DataError::NotFound),
        _ => Ok(()),
    }
}

/// How many recipients the group's rule matches now.
/// (A count over a personal field would let it be inferred: refused like the rule itself when masked.)
pub async fn count(db: &Client, id: i64, privacy: &Privacy) -> Result<i64, DataError> {
    let group = get(db, id).await?;
    count_rule(db, &group.rule, privacy).await.map_err(stale)
}

/// A stored group's rule that no longer compiles (a list or field it names was deleted since) is a conflict with
/// what is stored now, not a bad request.
fn stale(e: DataError) -> DataError {
    match e {
        DataError::Rule(message) => DataError::StaleRule(message),
        e => e,
    }
}

/// How many recipients `rule` matches now (a stored group's, or a cross-client group's in this client).
pub async fn count_rule(db: &Client, rule: &Json, privacy: &Privacy) -> Result<i64, DataError> {
    let (compiled, _) = compile(db, rule, privacy).await?;
    let sql = format!("SELECT count(*) FROM recipients r WHERE {}", compiled.sql);
    let rows = db.query_typed(&sql, &compiled.typed_params()).await?;
    rows.first()
        .map(|row| row.get(0))
        .ok_or_else(|| DataError::Config("a count returned no row".into()))
}

/// The recipients the group's rule matches now, by id (keyset pagination).
pub async fn members(
    db: &Client,
    id: i64,
    after_id: Option<i64>,
    limit: i64,
    privacy: &Privacy,
) -> Result<Vec<Recipient>, DataError> {
    let group = get(db, id).await?;
    members_by_rule(db, &group.rule, after_id, limit, privacy)
        .await
        .map_err(stale)
}

/// The recipients `rule` matches now, by id (keyset pagination), protected by `privacy`.
pub async fn members_by_rule(
    db: &Client,
    rule: &Json,
    after_id: Option<i64>,
    limit: i64,
    privacy: &Privacy,
) -> Result<Vec<Recipient>, DataError> {
    let (mut compiled, schema) = compile(db, rule, privacy).await?;
    let after = compiled.push(Box::new(after_id), Type::INT8);
    let limit = compiled.push(Box::new(limit), Type::INT8);
    let sql = format!(
        "SELECT {} FROM recipients r WHERE {} AND ({after}::int8 IS NULL OR r.id > {after}::int8)
         ORDER BY r.id LIMIT {limit}::int8",
        recipients::COLUMNS,
        compiled.sql,
    );
    let rows = crate::tenant::statements::query_unnamed(db, &sql, &compiled.typed_params()).await?;
    let mut members: Vec<Recipient> = rows.iter().map(Recipient::from).collect();
    recipients::protect(db, privacy, Some(&schema), &mut members).await?;
    Ok(members)
}
