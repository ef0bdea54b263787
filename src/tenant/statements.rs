//! Statements kept prepared on a tenant connection: the data plane's fixed statements (a recipient by id) are
//! parsed and planned once per connection instead of on every request.
//!
//! A statement run as the unnamed statement (`Client::query_typed`: parse, bind and execute in one round trip) is
//! parsed, analysed and planned by PostgreSQL every time; for a lookup by primary key that is most of what the
//! server spends on it (`pgbench -S` on this machine: 32-35k transactions/s unnamed, 60-62k prepared). A routing
//! pool's connection lives for many requests, so [`StatementCache`] keeps each fixed statement prepared on it for
//! its lifetime: one round trip (bind, execute) and no parse.
//!
//! - A statement is prepared on its *second* use on a connection (the first runs unnamed), as PgJDBC's
//!   `prepareThreshold` does with its default of 5: a connection that serves one request and closes (a cold
//!   tenant served from the share while others wait) never pays a prepare, and one that stays pays it once.
//!
//! - Only statements whose text is a `&'static str` are kept (the key), so the statements a connection can keep
//!   are the ones written in the code, never text built per request (filters, column lists); at most
//!   [`MAX_KEPT`] of them.
//! - A kept statement can go stale: a custom field added or dropped changes `r.*` (PostgreSQL then refuses it,
//!   "cached plan must not change result type", 0A000, before it runs anything), or something dropped it (26000).
//!   Either way it is forgotten and run once more, unnamed ([`query`]; running again is safe), and prepared again on
//!   its next use.
//! - Behind a pooler that hands each transaction a different server connection and does not track prepared
//!   statements (PgBouncer in transaction mode needs 1.21 or later with `max_prepared_statements` above 0), a
//!   statement prepared on one server connection is missing on the next, or another process's statement of the
//!   same name (tokio-postgres numbers them per process) is there: such a deployment sets
//!   `routing.prepared_statements = false`, and every statement runs unnamed.
//! - Inside an inner client's request transaction nothing kept is used (`PooledConn`'s [`Queries`]): a stale
//!   statement's refusal would abort the transaction, and the rerun with it.
//! - The key is the text's address and length, not its parameter types: a fixed statement has one call site,
//!   which fixes them.
//!
//! [`Queries`] is what the data plane's reads take: a connection that may keep statements (the routing pool's) or a
//! plain `Client`, which keeps none (a connection opened for one request would only pay an extra round trip).

use std::future::Future;
use std::sync::Mutex;

use futures_util::{TryFutureExt, TryStreamExt};

use deadpool_postgres::tokio_postgres::types::{ToSql, Type};
use deadpool_postgres::tokio_postgres::{self, Client, Row, Statement};

use crate::domain::FastMap;

/// The most statements one connection keeps prepared (the code has a handful; the bound is a backstop).
pub const MAX_KEPT: usize = 64;

/// A connection the data plane runs statements on.
pub trait Queries: Sync {
    fn client(&self) -> &Client;

    /// `sql`, prepared on this connection with the types of `params` and kept for the connection's lifetime;
    /// `None`: run it unnamed (this connection keeps no statements, or not this one yet).
    fn prepared(
        &self,
        sql: &'static str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Option<Statement>, tokio_postgres::Error>> + Send;

    /// Drops the kept statement of `sql` (it went stale).
    fn forget(&self, sql: &'static str, params: &[(&(dyn ToSql + Sync), Type)]);
}

/// The parameter types of `params` (what a statement is prepared with).
pub fn types_of(params: &[(&(dyn ToSql + Sync), Type)]) -> Vec<Type> {
    params.iter().map(|(_, t)| t.clone()).collect()
}

/// A plain client keeps nothing: its statements run unnamed.
impl Queries for Client {
    fn client(&self) -> &Client {
        self
    }

    async fn prepared(
        &self,
        _: &'static str,
        _: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<Statement>, tokio_postgres::Error> {
        Ok(None)
    }

    fn forget(&self, _: &'static str, _: &[(&(dyn ToSql + Sync), Type)]) {}
}

/// The statements one connection keeps prepared, by their static text (see the module documentation).
#[derive(Default)]
pub struct StatementCache {
    /// Off: nothing is kept (`routing.prepared_statements = false`).
    enabled: bool,
    kept: Mutex<FastMap<Key, Kept>>,
}

/// A `&'static str` by where it lives (address and length), so a lookup on every request does not hash the text;
/// the same text at two call sites is at most two entries.
type Key = (usize, usize);

fn key(sql: &'static str) -> Key {
    (sql.as_ptr() as usize, sql.len())
}

/// A statement's state on one connection.
enum Kept {
    /// Run once, unnamed: prepared on its next use.
    Seen,
    Prepared(Statement),
}

impl std::fmt::Debug for StatementCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatementCache")
            .field("enabled", &self.enabled)
            .field("entries", &self.lock().len())
            .finish()
    }
}

impl StatementCache {
    /// An empty cache; `enabled`: whether it keeps anything.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            kept: Mutex::default(),
        }
    }

    /// `sql` kept on `client` (prepared now on its second use); `None` on its first use and when the cache is off.
    pub async fn prepared(
        &self,
        client: &Client,
        sql: &'static str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<Statement>, tokio_postgres::Error> {
        if !self.enabled {
            return Ok(None);
        }
        {
            let mut kept = self.lock();
            match kept.get(&key(sql)) {
                Some(Kept::Prepared(statement)) => return Ok(Some(statement.clone())),
                Some(Kept::Seen) => {}
                None => {
                    if kept.len() < MAX_KEPT {
                        kept.insert(key(sql), Kept::Seen);
                    }
                    return Ok(None);
                }
            }
        }
        // Reads sharing a connection (`TenantPools::acquire_shared`) may prepare the same text at once: each gets
        // its own statement (tokio-postgres names them apart), the later insert replaces the earlier one, which is
        // closed on the server when its last clone drops.
        let statement = client.prepare_typed(sql, &types_of(params)).await?;
        self.lock()
            .insert(key(sql), Kept::Prepared(statement.clone()));
        Ok(Some(statement))
    }

    /// Drops the kept statement of `sql` (closed on the server when its last clone drops).
    pub fn forget(&self, sql: &'static str) {
        self.lock().remove(&key(sql));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<Key, Kept>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the fixed statement `sql` with typed `params` on `db`: the kept prepared statement where `db` keeps them,
/// else unnamed ([`query_unnamed`]). A kept statement that went stale is forgotten and run once more, unnamed (the
/// connection prepares it again on a later use).
pub async fn query(
    db: &impl Queries,
    sql: &'static str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let Some(statement) = db.prepared(sql, params).await? else {
        return query_unnamed(db.client(), sql, params).await;
    };
    let run = db
        .client()
        .query_raw(&statement, params.iter().map(|(value, _)| *value))
        .and_then(|rows| rows.try_collect::<Vec<Row>>())
        .await;
    match run {
        Err(e) if stale(&e) => {
            drop(statement);
            db.forget(sql, params);
            query_unnamed(db.client(), sql, params).await
        }
        other => other,
    }
}

/// Runs a statement with typed `params` as the unnamed statement (`Client::query_typed`): parsed, bound and run in
/// one round trip. Run once more if a table's columns changed between parse and execution: a field added or dropped
/// by the reconciler on another connection made PostgreSQL refuse the plan ("cached plan must not change result
/// type", 0A000) before it ran anything, found by the soak benchmark. In one batch the parse's lock should hold
/// until the end; the retry stays as the safety net, and running again is safe.
pub async fn query_unnamed(
    db: &Client,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    match db.query_typed(sql, params).await {
        Err(e) if columns_changed(&e) => db.query_typed(sql, params).await,
        other => other,
    }
}

/// PostgreSQL refused a plan because the result's columns changed since it was made.
fn columns_changed(e: &tokio_postgres::Error) -> bool {
    // By the routine that raises it: the message is translated where the server's `lc_messages` is not English
    // (found in review: on a German server a stale kept statement was never recognised, and failed every read on
    // its connection until the connection expired).
    e.code() == Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED)
        && e.as_db_error().is_some_and(|db| {
            db.routine() == Some("RevalidateCachedQuery")
                || db.message().contains("must not change result type")
        })
}

/// A kept statement can no longer run as it is: its result's columns changed, or the server does not know it.
fn stale(e: &tokio_postgres::Error) -> bool {
    columns_changed(e)
        || e.code() == Some(&tokio_postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME)
}
