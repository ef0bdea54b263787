//! Inner clients' scopes in their parent's database (tenant migration V7): which lists and which rule define each
//! inner client's slice. Runs on the parent's connection (its own role, which sees every row); the triggers of V7
//! carry a list's membership on to its bindings and recipients.
//!
//! A recipient is in an inner client's slice when it is bound (any status) to one of the scope's lists **or**
//! matches the scope's rule (a union). List memberships follow a binding change at once (triggers); rule
//! memberships are evaluated when the scope is set and then by the periodic job
//! (`workers.inner_scope_interval_secs`), so a recipient whose fields change joins or leaves a rule scope within
//! that delay.

use deadpool_postgres::tokio_postgres::Client;
use deadpool_postgres::tokio_postgres::types::{ToSql, Type};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::DataError;
use super::rules;
use super::schema::Schema;

/// Most lists a scope may name.
pub const MAX_SCOPE_LISTS: usize = 1_000;

/// An inner client's scope, as stored in the control plane (`clients.scope`) and accepted by the API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Mailing lists whose recipients (bound in any status) are in the slice.
    #[serde(default)]
    pub lists: Vec<i64>,
    /// A target-group rule whose matching recipients are in the slice (`null`: none).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub rule: Option<Json>,
}

impl Scope {
    /// Reads a stored scope (written by this code, so a failure is a broken row).
    pub fn from_stored(value: &Json) -> Result<Self, DataError> {
        serde_json::from_value(value.clone())
            .map_err(|e| DataError::Config(format!("a stored inner-client scope is invalid: {e}")))
    }

    pub fn to_json(&self) -> Json {
        serde_json::json!({"lists": self.lists, "rule": self.rule})
    }

    /// Checks the scope's shape (not yet against a database): at least one list or a rule, lists distinct and
    /// positive, within [`MAX_SCOPE_LISTS`].
    pub fn validate_shape(&mut self) -> Result<(), DataError> {
        if self.rule.as_ref().is_some_and(Json::is_null) {
            self.rule = None;
        }
        if self.lists.is_empty() && self.rule.is_none() {
            return Err(DataError::Rule(
                "scope: name at least one mailing list or a rule".into(),
            ));
        }
        if self.lists.len() > MAX_SCOPE_LISTS {
            return Err(DataError::Rule(format!(
                "scope.lists: at most {MAX_SCOPE_LISTS} lists"
            )));
        }
        if let Some(id) = self.lists.iter().find(|id| **id <= 0) {
            return Err(DataError::Rule(format!(
                "scope.lists: {id} is not a mailing list id"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        self.lists.retain(|id| seen.insert(*id));
        Ok(())
    }

    /// Checks the scope against the parent's database: every list exists, the rule compiles against its schema.
    pub async fn check(&self, db: &Client) -> Result<(), DataError> {
        let missing: Option<i64> = db
            .query_typed_opt(
                "SELECT id FROM unnest($1::int8[]) AS wanted(id)
                 WHERE NOT EXISTS (SELECT 1 FROM mailing_lists l WHERE l.id = wanted.id) ORDER BY id LIMIT 1",
                &[(&self.lists, Type::INT8_ARRAY)],
            )
            .await?
            .map(|row| row.get(0));
        if let Some(id) = missing {
            return Err(DataError::Rule(format!(
                "scope.lists: mailing list {id} does not exist"
            )));
        }
        if let Some(rule) = &self.rule {
            let schema = Schema::load(db).await?;
            rules::compile(rule, &schema)
                .map_err(|e| DataError::Rule(format!("scope.rule: {e}")))?;
        }
        Ok(())
    }
}

/// What applying a scope changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub lists: u64,
    pub rule_joined: u64,
    pub rule_left: u64,
}

/// Brings inner client `inner_no`'s memberships in the parent's database to `scope`: lists join or leave (the
/// triggers move their bindings and recipients), and the rule is evaluated on every recipient. One transaction.
///
/// `current` yields the scope to apply (`None`: nothing to do, e.g. the inner client is gone); it is read only once
/// this run holds the inner client's lock in the parent's database, so two runs (a PATCH and the periodic job, in
/// two processes) never let a stale scope overwrite a newer one: whoever applies second read the scope after the
/// first had finished.
pub async fn apply(
    db: &mut Client,
    inner_no: i32,
    current: impl AsyncFnOnce() -> Result<Option<Scope>, DataError>,
) -> Result<Applied, DataError> {
    let schema = Schema::load(db).await?;
    let tx = db.transaction().await?;
    super::execute_typed(
        &tx,
        "SELECT pg_advisory_xact_lock(hashtext('mandant.inner_scope'), $1::int)",
        &[(&inner_no, Type::INT4)],
    )
    .await?;
    let Some(scope) = current().await? else {
        return Ok(Applied::default());
    };
    let scope = &scope;
    let mut applied = Applied::default();
    let lists: [(&(dyn ToSql + Sync), Type); 2] =
        [(&inner_no, Type::INT4), (&scope.lists, Type::INT8_ARRAY)];
    applied.lists += super::execute_typed(
        &tx,
        "UPDATE mailing_lists SET mandant_inner = array_append(mandant_inner, $1::int)
         WHERE id = ANY($2) AND NOT mandant_inner @> ARRAY[$1::int]",
        &lists,
    )
    .await?;
    applied.lists += super::execute_typed(
        &tx,
        "UPDATE mailing_lists SET mandant_inner = array_remove(mandant_inner, $1::int)
         WHERE mandant_inner @> ARRAY[$1::int] AND NOT id = ANY($2)",
        &lists,
    )
    .await?;
    let mut compiled = match &scope.rule {
        Some(rule) => rules::compile(rule, &schema).map_err(DataError::Rule)?,
        None => rules::never(),
    };
    let n = compiled.push(Box::new(inner_no), Type::INT4);
    let joined = format!(
        "UPDATE recipients r
         SET mandant_inner_rules = array_append(r.mandant_inner_rules, {n}::int),
             mandant_inner = CASE WHEN r.mandant_inner @> ARRAY[{n}::int] THEN r.mandant_inner
                                  ELSE array_append(r.mandant_inner, {n}::int) END
         WHERE NOT r.mandant_inner_rules @> ARRAY[{n}::int] AND ({rule})",
        rule = compiled.sql
    );
    applied.rule_joined = super::execute_typed(&tx, &joined, &compiled.typed_params()).await?;
    let left = format!(
        "UPDATE recipients r SET mandant_inner_rules = array_remove(r.mandant_inner_rules, {n}::int)
         WHERE r.mandant_inner_rules @> ARRAY[{n}::int] AND NOT coalesce(({rule}), false)
         RETURNING r.id",
        rule = compiled.sql
    );
    let gone: Vec<i64> = tx
        .query_typed(&left, &compiled.typed_params())
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    applied.rule_left = gone.len() as u64;
    if !gone.is_empty() {
        super::execute_typed(
            &tx,
            "SELECT mandant_refresh_inner($1)",
            &[(&gone, Type::INT8_ARRAY)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(applied)
}

/// Removes inner client `inner_no` from every list and rule membership (it was deleted). Recipients stay: they
/// belong to the parent.
pub async fn forget(db: &mut Client, inner_no: i32) -> Result<(), DataError> {
    apply(db, inner_no, async || Ok(Some(Scope::default())))
        .await
        .map(|_| ())
}

/// For a recipient an inner client creates in a scope with a rule and no list: whether it matches the rule (its
/// row must, else it would leave the slice at the next evaluation). Runs inside the inner client's transaction.
pub async fn matches_rule(db: &Client, rule: &Json, recipient_id: i64) -> Result<bool, DataError> {
    let schema = Schema::load(db).await?;
    let mut compiled = rules::compile(rule, &schema).map_err(DataError::Rule)?;
    let id = compiled.push(Box::new(recipient_id), Type::INT8);
    let sql = format!(
        "SELECT coalesce(({}), false) FROM recipients r WHERE r.id = {id}",
        compiled.sql
    );
    Ok(db
        .query_typed(&sql, &compiled.typed_params())
        .await?
        .first()
        .is_some_and(|row| row.get(0)))
}

/// Where a recipient an inner client creates (or imports) lands: the list it names, which must be one of the
/// scope's, or the scope's first list; `None` for a scope with a rule only (the row must then match the rule).
/// For a client that is not inner, the list it names, if any.
pub fn landing_list(scope: Option<&Scope>, named: Option<i64>) -> Result<Option<i64>, DataError> {
    match (scope, named) {
        (None, named) => Ok(named),
        (Some(scope), Some(list)) if scope.lists.contains(&list) => Ok(Some(list)),
        (Some(_), Some(list)) => Err(DataError::OutsideScope(format!(
            "mailing list {list} is not in this inner client's scope"
        ))),
        (Some(scope), None) => Ok(scope.lists.first().copied()),
    }
}

/// Makes a recipient an inner client just created with a rule-only scope a member by its rule, and checks that
/// it matches the rule (else the write is refused: it would leave the slice at the next evaluation).
pub async fn join_by_rule(
    db: &Client,
    inner_no: i32,
    scope: &Scope,
    recipient_id: i64,
) -> Result<(), DataError> {
    let Some(rule) = &scope.rule else {
        return Err(DataError::OutsideScope(
            "the scope names no list and no rule".into(),
        ));
    };
    super::execute_typed(
        db,
        "UPDATE recipients SET mandant_inner_rules = array_append(mandant_inner_rules, $1::int)
         WHERE id = $2 AND NOT mandant_inner_rules @> ARRAY[$1::int]",
        &[(&inner_no, Type::INT4), (&recipient_id, Type::INT8)],
    )
    .await?;
    if matches_rule(db, rule, recipient_id).await? {
        Ok(())
    } else {
        Err(DataError::OutsideScope(
            "the recipient does not match this inner client's rule".into(),
        ))
    }
}
