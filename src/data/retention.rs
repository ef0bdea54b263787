//! Retention in a tenant database: which recipients a rule removes, counted for the preview and deleted in
//! batches by the purge job. Both go through [`predicate`], so the purge removes exactly what the preview
//! counted for the same rule, period and time.
//!
//! - `opted_out_or_bounced` (N days): the recipient has bindings, and every one of them is `opt_out` or `bounced`
//!   and has not changed its status for N days (`bindings.updated_at` moves only when the status changes).
//! - `unbound` (M days): the recipient has had no binding for M days (`recipients.mandant_unbound_since`, kept by
//!   triggers on bindings, tenant migration V6; NULL with no binding is a recipient unbound since before V6,
//!   counted from `mandant_retention_epoch`, the migration's time).
//!
//! The two are disjoint (one needs a binding, the other none). Deleting a recipient cascades to its bindings.
//!
//! A purge batch never deletes a recipient whose bindings change while it runs (one bound, or opted in again,
//! concurrently): it locks its candidates (skipping any being written right now) and their bindings, then deletes
//! with the predicate checked again on a fresh snapshot, in one transaction. A single `DELETE ... WHERE id IN
//! (SELECT ...)` would not: it waits for the concurrent write and then deletes the row anyway (the rows found by
//! the subquery are not re-checked), together with the binding just written.

use chrono::{DateTime, Utc};
use deadpool_postgres::tokio_postgres::Client;
use deadpool_postgres::tokio_postgres::types::{ToSql, Type};

use super::DataError;
use crate::domain::retention::RetentionRule;

/// Recipients deleted per statement: short statements, short locks, a crash loses at most one batch's work.
pub const PURGE_BATCH: i64 = 1000;

/// The one predicate over `recipients r` for `rule`: `$1` is the time the period is measured back from
/// (timestamptz), `$2` the period in days (int4).
pub fn predicate(rule: RetentionRule) -> &'static str {
    match rule {
        RetentionRule::OptedOutOrBounced => {
            "EXISTS (SELECT 1 FROM bindings b WHERE b.recipient_id = r.id)
             AND NOT EXISTS (SELECT 1 FROM bindings b WHERE b.recipient_id = r.id
                                AND (b.status NOT IN ('opt_out', 'bounced')
                                     OR b.updated_at > $1::timestamptz - make_interval(days => $2::int4)))"
        }
        RetentionRule::Unbound => {
            "(r.mandant_unbound_since <= $1::timestamptz - make_interval(days => $2::int4)
              OR (r.mandant_unbound_since IS NULL
                  AND (SELECT e.unbound_counted_from FROM mandant_retention_epoch e)
                      <= $1::timestamptz - make_interval(days => $2::int4)
                  AND NOT EXISTS (SELECT 1 FROM bindings b WHERE b.recipient_id = r.id)))"
        }
    }
}

/// The parameters [`predicate`] binds (`$1` the time measured back from, `$2` the days), typed, followed by a
/// statement's own (`$3` on).
fn predicate_params<'a>(
    as_of: &'a DateTime<Utc>,
    days: &'a i32,
    then: &[(&'a (dyn ToSql + Sync), Type)],
) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
        vec![(as_of, Type::TIMESTAMPTZ), (days, Type::INT4)];
    params.extend_from_slice(then);
    params
}

/// The database's current time (what a preview measures back from).
pub async fn now(db: &Client) -> Result<DateTime<Utc>, DataError> {
    Ok(db.query_typed_one("SELECT now()", &[]).await?.get(0))
}

/// How many recipients `rule` with `days` would remove as of `as_of`.
pub async fn count(
    db: &Client,
    rule: RetentionRule,
    days: i32,
    as_of: DateTime<Utc>,
) -> Result<i64, DataError> {
    let sql = format!(
        "SELECT count(*) FROM recipients r WHERE {}",
        predicate(rule)
    );
    Ok(db
        .query_typed_one(&sql, &predicate_params(&as_of, &days, &[]))
        .await?
        .get(0))
}

/// What one purge batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Recipients the batch locked as candidates (fewer than the limit: nothing more to do for now).
    pub candidates: u64,
    /// Recipients deleted (a candidate whose bindings changed meanwhile is kept).
    pub deleted: u64,
}

/// Deletes up to `limit` recipients that `rule` with `days` removes as of `as_of`, in one transaction: the
/// candidates are locked (`FOR UPDATE`: no binding can be added to them; rows being written right now are
/// skipped), then their bindings (`FOR SHARE`: waits for a status change in flight, then none can start), then
/// they are deleted where the predicate still holds on a fresh snapshot (READ COMMITTED: each statement sees what
/// committed before it).
pub async fn purge_batch(
    db: &mut Client,
    rule: RetentionRule,
    days: i32,
    as_of: DateTime<Utc>,
    limit: i64,
) -> Result<Batch, DataError> {
    let tx = db.transaction().await?;
    let candidates: Vec<i64> = tx
        .query_typed(
            &format!(
                "SELECT r.id FROM recipients r WHERE {} ORDER BY r.id LIMIT $3 FOR UPDATE OF r SKIP LOCKED",
                predicate(rule)
            ),
            &predicate_params(&as_of, &days, &[(&limit, Type::INT8)]),
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if candidates.is_empty() {
        tx.commit().await?;
        return Ok(Batch {
            candidates: 0,
            deleted: 0,
        });
    }
    super::execute_typed(
        &tx,
        "SELECT 1 FROM bindings WHERE recipient_id = ANY($1) FOR SHARE",
        &[(&candidates, Type::INT8_ARRAY)],
    )
    .await?;
    let deleted = super::execute_typed(
        &tx,
        &format!(
            "DELETE FROM recipients r WHERE r.id = ANY($3) AND {}",
            predicate(rule)
        ),
        &predicate_params(&as_of, &days, &[(&candidates, Type::INT8_ARRAY)]),
    )
    .await?;
    tx.commit().await?;
    Ok(Batch {
        candidates: candidates.len() as u64,
        deleted,
    })
}
