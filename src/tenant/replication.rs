//! Logical replication for live moves (issue #21): the DDL on the source (a replication role for one move, a
//! publication of the tenant's tables) and on the target (a subscription with the initial copy), the positions a
//! move waits for, the sequences carried over, and the clean-up of every object by its name.
//!
//! Every object of one move is named `<tenants.db_prefix>mv<move id>` (role, publication, slot, subscription), so
//! a leftover can be found by its prefix and tied to its move, and a deployment never touches another's objects on
//! a server they share. Every function is idempotent: an object that exists
//! is kept, one that is gone is success. Never: the control plane.

use deadpool_postgres::tokio_postgres::Client;
use uuid::Uuid;

use super::TenantError;
use crate::db::{PgTarget, Secret, quote_ident, quote_literal};

/// The table refinery keeps its history in: made by the target's own migrations, never copied.
const HISTORY_TABLE: &str = "refinery_schema_history";

/// What starts the name of every replication object of this deployment's moves (`db_prefix` + `mv`; tenant
/// names are the prefix and hex digits, so they never start so).
pub fn prefix(db_prefix: &str) -> String {
    format!("{db_prefix}mv")
}

/// The name of every object of one move (role, publication, slot and subscription share it): the prefix and as
/// much of the move's id as fits PostgreSQL's 63 bytes (at least 30 hex digits: `db_prefix` is at most 31).
pub fn object_name(db_prefix: &str, move_id: Uuid) -> String {
    let prefix = prefix(db_prefix);
    let id = move_id.simple().to_string();
    let room = 63usize.saturating_sub(prefix.len()).min(id.len());
    format!("{prefix}{}", &id[..room])
}

fn pg(context: &str) -> impl FnOnce(deadpool_postgres::tokio_postgres::Error) -> TenantError {
    TenantError::postgres(context.to_owned())
}

/// The tables of a tenant database that a move copies (all of `public` but refinery's history).
pub async fn tables(db: &Client) -> Result<Vec<String>, TenantError> {
    let rows = db
        .query(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname <> $1
             ORDER BY c.relname",
            &[&HISTORY_TABLE],
        )
        .await
        .map_err(pg("listing the tenant's tables"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Tables without a replica identity (no primary key): updates and deletes on them would fail on a published
/// table, so a move refuses such a database rather than break its writes.
pub async fn tables_without_identity(db: &Client) -> Result<Vec<String>, TenantError> {
    let rows = db
        .query(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> $1
               AND c.relreplident = 'd'
               AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
             ORDER BY c.relname",
            &[&HISTORY_TABLE],
        )
        .await
        .map_err(pg("checking the tables' replica identity"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `wal_level` of a server (moves off it need `logical`).
pub async fn wal_level(admin: &Client) -> Result<String, TenantError> {
    Ok(admin
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(pg("reading wal_level"))?
        .get(0))
}

/// On the source, in the tenant's database as the administrator: the move's replication role (login,
/// `REPLICATION`, `BYPASSRLS` so the initial copy sees every row under the tenant's row-level security; its
/// password given as a SCRAM verifier), allowed to connect and read every table, and the publication of those
/// tables.
pub async fn publish(
    source_db: &Client,
    database: &str,
    name: &str,
    verifier: &Secret,
) -> Result<(), TenantError> {
    let role = quote_ident(name);
    let exists = named(source_db, Catalog::Role, name).await?;
    let password = quote_literal(verifier.expose());
    let create = if exists {
        format!("ALTER ROLE {role} LOGIN REPLICATION BYPASSRLS PASSWORD {password}")
    } else {
        format!("CREATE ROLE {role} LOGIN REPLICATION BYPASSRLS PASSWORD {password}")
    };
    source_db
        .batch_execute(&create)
        .await
        .map_err(pg("creating the move's replication role"))?;
    source_db
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {} TO {role};
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};",
            quote_ident(database)
        ))
        .await
        .map_err(pg("granting the move's replication role"))?;
    if !named(source_db, Catalog::Publication, name).await? {
        let list: Vec<String> = tables(source_db)
            .await?
            .iter()
            .map(|t| format!("public.{}", quote_ident(t)))
            .collect();
        source_db
            .batch_execute(&format!(
                "CREATE PUBLICATION {role} FOR TABLE {}",
                list.join(", ")
            ))
            .await
            .map_err(pg("creating the move's publication"))?;
    }
    Ok(())
}

/// The connection string a subscription on the target uses to reach the source's tenant database as the move's
/// replication role: the source's host, port and TLS mode as registered, the role's password in it (PostgreSQL
/// keeps it in the target's `pg_subscription` until the subscription is dropped).
pub fn conninfo(source: &PgTarget, database: &str, name: &str, password: &Secret) -> Secret {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = vec![
        format!("host={}", quote(&source.host_arg())),
        format!("port={}", source.port()),
        format!("dbname={}", quote(database)),
        format!("user={}", quote(name)),
        format!("password={}", quote(password.expose())),
        format!("sslmode={}", source.tls().mode().as_str()),
        "application_name=mandant_move".to_owned(),
    ];
    if let Some(root) = source.tls().root_cert() {
        parts.push(format!(
            "sslrootcert={}",
            quote(&root.display().to_string())
        ));
    }
    Secret::new(parts.join(" "))
}

/// Whether the move's subscription exists on the target (in the tenant's database).
pub async fn subscribed(target_db: &Client, name: &str) -> Result<bool, TenantError> {
    named(target_db, Catalog::Subscription, name).await
}

/// The catalogues a move looks names up in.
#[derive(Clone, Copy)]
enum Catalog {
    Role,
    Publication,
    Subscription,
}

/// Whether an object of this name exists in the catalogue.
async fn named(db: &Client, catalog: Catalog, name: &str) -> Result<bool, TenantError> {
    let (sql, what) = match catalog {
        Catalog::Role => (
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            "looking up the move's replication role",
        ),
        Catalog::Publication => (
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            "looking up the move's publication",
        ),
        Catalog::Subscription => (
            "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)",
            "looking up the move's subscription",
        ),
    };
    Ok(db.query_one(sql, &[&name]).await.map_err(pg(what))?.get(0))
}

/// On the target, in the tenant's new database as the administrator: empties what the migrations put in the
/// tables (the copy brings the source's rows), then subscribes to the source's publication with the initial copy.
/// A slot of this name left on the source by an earlier attempt that died between creating the slot and
/// committing the subscription is dropped first (`source_admin`).
pub async fn subscribe(
    target_db: &Client,
    source_admin: &Client,
    name: &str,
    conninfo: &Secret,
) -> Result<(), TenantError> {
    if subscribed(target_db, name).await? {
        return Ok(());
    }
    let list: Vec<String> = tables(target_db)
        .await?
        .iter()
        .map(|t| format!("public.{}", quote_ident(t)))
        .collect();
    target_db
        .batch_execute(&format!("TRUNCATE {} CASCADE", list.join(", ")))
        .await
        .map_err(pg("emptying the target's tables before the copy"))?;
    drop_slot(source_admin, name).await?;
    // Not in a transaction block (it creates the slot on the source): one statement, simple protocol.
    target_db
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION {sub} CONNECTION {conn} PUBLICATION {sub}
             WITH (slot_name = {slot}, create_slot = true, copy_data = true)",
            sub = quote_ident(name),
            conn = quote_literal(conninfo.expose()),
            slot = quote_literal(name),
        ))
        .await
        .map_err(pg("creating the move's subscription"))?;
    Ok(())
}

/// Where a subscription stands: tables copied (`ready`) of `tables`, the source position the apply worker last
/// heard of, and the errors counted so far.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionState {
    pub ready: i64,
    pub tables: i64,
    /// `pg_stat_subscription.latest_end_lsn` of the apply worker, as text (`None` while it has not reported).
    pub latest_end_lsn: Option<String>,
    pub errors: i64,
}

pub async fn subscription_state(
    target_db: &Client,
    name: &str,
) -> Result<SubscriptionState, TenantError> {
    let row = target_db
        .query_one(
            "SELECT (SELECT count(*) FILTER (WHERE r.srsubstate = 'r') FROM pg_subscription_rel r WHERE r.srsubid = s.oid),
                    (SELECT count(*) FROM pg_subscription_rel r WHERE r.srsubid = s.oid),
                    (SELECT st.latest_end_lsn::text FROM pg_stat_subscription st
                     WHERE st.subid = s.oid AND st.relid IS NULL),
                    coalesce((SELECT x.apply_error_count + x.sync_error_count FROM pg_stat_subscription_stats x
                              WHERE x.subid = s.oid), 0)
             FROM pg_subscription s WHERE s.subname = $1",
            &[&name],
        )
        .await
        .map_err(pg("reading the move's subscription"))?;
    Ok(SubscriptionState {
        ready: row.get(0),
        tables: row.get(1),
        latest_end_lsn: row.get(2),
        errors: row.get(3),
    })
}

/// A position after every change committed so far on the source, sure to be sent to the subscriber at once: the
/// fence's final position. `pg_current_wal_lsn()` is only what has been *written*: a transaction committed with
/// `synchronous_commit = off` (a server may run so) sits past it in the WAL buffers until the WAL writer's next
/// round, and the switch would go ahead without it. The insert position covers every commit before it. Read in one
/// statement (its own transaction, so a failure leaves nothing open on the connection) that also writes WAL (a
/// logical message no subscriber asks for; a transaction that wrote none commits without a flush whatever its
/// setting) with `synchronous_commit = on` for itself: its commit flushes the WAL through its own commit record,
/// beyond the position, so the walsender (it sends flushed WAL only) reaches it without waiting for the WAL writer.
pub async fn final_lsn(source_admin: &Client) -> Result<String, TenantError> {
    Ok(source_admin
        .query_one(
            "SELECT set_config('synchronous_commit', 'on', true),
                    pg_logical_emit_message(true, 'mandant', 'move fenced'),
                    pg_current_wal_insert_lsn()::text",
            &[],
        )
        .await
        .map_err(pg("flushing the source's WAL"))?
        .get(2))
}

/// The source's current WAL position, as text (written, not necessarily everything committed: see
/// [`final_lsn`]); good for measuring lag.
pub async fn current_lsn(source_admin: &Client) -> Result<String, TenantError> {
    Ok(source_admin
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(pg("reading the source's WAL position"))?
        .get(0))
}

/// Whether the subscription's apply worker has heard of `lsn` or later (every change committed before it is
/// applied: the worker applies in order before it reports a later position).
pub async fn reached(target_db: &Client, name: &str, lsn: &str) -> Result<bool, TenantError> {
    Ok(target_db
        .query_one(
            "SELECT coalesce((SELECT st.latest_end_lsn >= $2::text::pg_lsn FROM pg_stat_subscription st
                              JOIN pg_subscription s ON s.oid = st.subid
                              WHERE s.subname = $1 AND st.relid IS NULL), false)",
            &[&name, &lsn],
        )
        .await
        .map_err(pg("comparing the subscription's position"))?
        .get(0))
}

/// Bytes between two positions (`to - from`, 0 when `from` is unknown or ahead).
pub async fn lag_bytes(
    source_admin: &Client,
    from: Option<&str>,
    to: &str,
) -> Result<i64, TenantError> {
    let Some(from) = from else {
        return Ok(i64::MAX);
    };
    Ok(source_admin
        .query_one(
            "SELECT greatest(0, pg_wal_lsn_diff($2::text::pg_lsn, $1::text::pg_lsn))::int8",
            &[&from, &to],
        )
        .await
        .map_err(pg("measuring the subscription's lag"))?
        .get(0))
}

/// Backends of these roles in `database` that are inside a statement or a transaction (a move's freeze waits for
/// them before it fences the source).
pub async fn busy_backends(
    source_admin: &Client,
    database: &str,
    roles: &[String],
) -> Result<i64, TenantError> {
    Ok(source_admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND usename = ANY($2) AND state IS DISTINCT FROM 'idle'",
            &[&database, &roles],
        )
        .await
        .map_err(pg("looking at the source's running requests"))?
        .get(0))
}

/// The fence's last step, after the tenant's roles are `NOLOGIN`: ends every client session on `database` but the
/// administrator's own, until none is seen twice in a row (a session that had passed authentication just before
/// `NOLOGIN` shows up a moment later). A session that does not go within 10 s is an error: nothing may commit on
/// the source after the position the switch waits for.
pub async fn end_database_sessions(admin: &Client, database: &str) -> Result<(), TenantError> {
    let started = std::time::Instant::now();
    let mut quiet = 0;
    while quiet < 2 {
        let left: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = $1 AND backend_type = 'client backend'
                   AND usename IS DISTINCT FROM current_user AND pid <> pg_backend_pid()",
                &[&database],
            )
            .await
            .map_err(pg("ending the source database's sessions"))?
            .get(0);
        quiet = if left == 0 { quiet + 1 } else { 0 };
        if started.elapsed() > std::time::Duration::from_secs(10) {
            return Err(TenantError::Migration {
                context: "fencing the source database".to_owned(),
                message: format!("{left} session(s) did not end within 10 s"),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Carries every sequence of the source's tenant database over to the target (the source fenced, so its values
/// are final): each target sequence is set to the source's last value (called), so the next id continues.
pub async fn copy_sequences(source_db: &Client, target_db: &Client) -> Result<usize, TenantError> {
    let rows = source_db
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences
             WHERE schemaname = 'public' AND last_value IS NOT NULL",
            &[],
        )
        .await
        .map_err(pg("reading the source's sequences"))?;
    for row in &rows {
        let (sequence, value): (String, i64) = (row.get(0), row.get(1));
        target_db
            .query_one(
                "SELECT setval($1::text::regclass, greatest($2, (SELECT last_value FROM pg_sequences
                     WHERE format('%I.%I', schemaname, sequencename) = $1 AND last_value IS NOT NULL), 1), true)",
                &[&sequence, &value],
            )
            .await
            .map_err(pg("setting a sequence on the target"))?;
    }
    Ok(rows.len())
}

/// Ends the move's subscription on the target without needing the source: disabled, detached from its slot,
/// dropped (the slot is dropped on the source separately, [`drop_slot`]).
pub async fn unsubscribe(target_db: &Client, name: &str) -> Result<(), TenantError> {
    if !subscribed(target_db, name).await? {
        return Ok(());
    }
    let sub = quote_ident(name);
    target_db
        .batch_execute(&format!("ALTER SUBSCRIPTION {sub} DISABLE"))
        .await
        .map_err(pg("disabling the move's subscription"))?;
    target_db
        .batch_execute(&format!("ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)"))
        .await
        .map_err(pg("detaching the move's subscription from its slot"))?;
    target_db
        .batch_execute(&format!("DROP SUBSCRIPTION {sub}"))
        .await
        .map_err(pg("dropping the move's subscription"))?;
    Ok(())
}

/// Drops the move's replication slot on the source once no walsender uses it (a disabled subscription's sender
/// takes a moment to exit; its backend is terminated if it lingers).
pub async fn drop_slot(source_admin: &Client, name: &str) -> Result<(), TenantError> {
    let started = std::time::Instant::now();
    loop {
        let row = source_admin
            .query_opt(
                "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await
            .map_err(pg("looking up the move's slot"))?;
        let Some(row) = row else {
            return Ok(());
        };
        let (active, pid): (bool, Option<i32>) = (row.get(0), row.get(1));
        if !active {
            return match source_admin
                .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                .await
            {
                Ok(_) => Ok(()),
                // Gone or taken meanwhile: look again.
                Err(e) if e.code().is_some() && started.elapsed().as_secs() < 10 => continue,
                Err(e) => Err(pg("dropping the move's slot")(e)),
            };
        }
        if started.elapsed() > std::time::Duration::from_secs(2)
            && let Some(pid) = pid
        {
            let _ = source_admin
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await;
        }
        if started.elapsed() > std::time::Duration::from_secs(15) {
            return Err(TenantError::Migration {
                context: "dropping the move's slot".to_owned(),
                message: "the slot stayed in use".to_owned(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// On the source, in the tenant's database: drops the move's publication, and the replication role with the
/// privileges granted to it there.
pub async fn unpublish(source_db: &Client, name: &str) -> Result<(), TenantError> {
    let role = quote_ident(name);
    source_db
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {role}"))
        .await
        .map_err(pg("dropping the move's publication"))?;
    drop_role_here(source_db, name).await
}

/// Drops the move's replication role with what was granted to it in the database `db` is connected to (a role
/// granted nothing elsewhere).
pub async fn drop_role_here(db: &Client, name: &str) -> Result<(), TenantError> {
    if named(db, Catalog::Role, name).await? {
        let role = quote_ident(name);
        // Its sessions first (a subscription of a failed move may still be connected).
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&name],
        )
        .await
        .map_err(pg("ending the replication role's sessions"))?;
        db.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
            .await
            .map_err(pg("dropping the move's replication role"))?;
    }
    Ok(())
}

/// Renames a database (its sessions ended first: the source's roles are fenced by then).
pub async fn rename_database(admin: &Client, from: &str, to: &str) -> Result<(), TenantError> {
    if !super::cluster::database_exists(admin, from).await? {
        return Ok(());
    }
    for _ in 0..50 {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&from],
            )
            .await
            .map_err(pg("ending the source database's sessions"))?;
        match admin
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(from),
                quote_ident(to)
            ))
            .await
        {
            Ok(()) => return Ok(()),
            // 55006: still in use for a moment.
            Err(e) if e.code().map(|c| c.code()) == Some("55006") => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(pg("renaming the source database")(e)),
        }
    }
    Err(TenantError::Migration {
        context: "renaming the source database".to_owned(),
        message: "it stayed in use".to_owned(),
    })
}

/// Replication objects of moves on one server, by kind: slots and roles (cluster-wide) and subscriptions with
/// the database they live in.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub slots: Vec<String>,
    pub roles: Vec<String>,
    pub subscriptions: Vec<(String, String)>,
    /// Publications cannot be listed cluster-wide; they go with their role ([`unpublish`]).
    pub databases_with_grants: Vec<(String, String)>,
}

/// Every object of this deployment's moves on a server (`prefix`: [`prefix`]).
pub async fn leftovers(admin: &Client, prefix: &str) -> Result<Leftovers, TenantError> {
    // `_` and `%` of the prefix escaped: LIKE is not a prefix match otherwise.
    let pattern = format!(
        "{}%",
        prefix
            .replace('\\', "\\\\")
            .replace('_', "\\_")
            .replace('%', "\\%")
    );
    let slots = admin
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE $1",
            &[&pattern],
        )
        .await
        .map_err(pg("listing replication slots"))?;
    let roles = admin
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1",
            &[&pattern],
        )
        .await
        .map_err(pg("listing replication roles"))?;
    let subscriptions = admin
        .query(
            "SELECT s.subname::text, d.datname::text FROM pg_subscription s
             JOIN pg_database d ON d.oid = s.subdbid WHERE s.subname LIKE $1",
            &[&pattern],
        )
        .await
        .map_err(pg("listing subscriptions"))?;
    // Where each role was granted CONNECT (its publication and table grants live in that database).
    let grants = admin
        .query(
            "SELECT r.rolname::text, d.datname::text FROM pg_roles r
             JOIN pg_database d ON has_database_privilege(r.oid, d.oid, 'CONNECT')
             AND EXISTS (SELECT 1 FROM aclexplode(d.datacl) a WHERE a.grantee = r.oid)
             WHERE r.rolname LIKE $1",
            &[&pattern],
        )
        .await
        .map_err(pg("finding the replication roles' databases"))?;
    Ok(Leftovers {
        slots: slots.iter().map(|r| r.get(0)).collect(),
        roles: roles.iter().map(|r| r.get(0)).collect(),
        subscriptions: subscriptions.iter().map(|r| (r.get(0), r.get(1))).collect(),
        databases_with_grants: grants.iter().map(|r| (r.get(0), r.get(1))).collect(),
    })
}
