//! Custom recipient fields in a tenant database: real, typed columns of `recipients`, each listed in the tenant's
//! `field_catalogue`. [`reconcile`] brings a database to a desired list of fields in one transaction: the
//! `ALTER TABLE`s and the catalogue rows commit together or not at all, and running it again changes nothing.
//!
//! Identifiers come from validated field names and are quoted; a default value is rendered as a literal from its
//! typed, validated value (DDL takes no bind parameters).

use chrono::SecondsFormat;
use deadpool_postgres::tokio_postgres::SimpleQueryMessage;

use super::TenantError;
use crate::db::PgTarget;
use crate::db::{lock_key, quote_ident, quote_literal};
use crate::domain::field::{FieldType, Value};

/// One field as the tenant database should have it.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    pub name: String,
    pub ty: FieldType,
    pub required: bool,
    pub default: Option<Value>,
    pub personal: bool,
    /// `central` or `client`.
    pub origin: &'static str,
}

impl FieldSpec {
    fn column_type(&self) -> String {
        match self.ty {
            FieldType::Text { max } => format!("varchar({max})"),
            FieldType::Integer => "bigint".into(),
            FieldType::Number => "double precision".into(),
            FieldType::Boolean => "boolean".into(),
            FieldType::Date => "date".into(),
            FieldType::Timestamp => "timestamptz".into(),
        }
    }

    fn column_definition(&self) -> String {
        let mut sql = format!("{} {}", quote_ident(&self.name), self.column_type());
        if let Some(default) = self.default.as_ref().and_then(literal) {
            sql.push_str(&format!(" DEFAULT {default}"));
        }
        if self.required {
            sql.push_str(" NOT NULL");
        }
        sql
    }

    fn length(&self) -> Option<i32> {
        match self.ty {
            FieldType::Text { max } => i32::try_from(max).ok(),
            _ => None,
        }
    }
}

/// A typed value as an SQL literal (`None` for null).
pub fn literal(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null => return None,
        Value::Text(s) => quote_literal(s),
        Value::Integer(v) => v.to_string(),
        Value::Number(v) => format!("{v:?}::double precision"),
        Value::Boolean(v) => v.to_string(),
        Value::Date(d) => format!("{}::date", quote_literal(&d.format("%Y-%m-%d").to_string())),
        Value::Timestamp(t) => format!(
            "{}::timestamptz",
            quote_literal(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        ),
    })
}

/// What [`reconcile`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub dropped: Vec<String>,
}

impl Reconciled {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.dropped.is_empty()
    }
}

/// How long a reconcile waits for the lock on `recipients` before giving up (and retrying later): a long
/// report on the table must not stall the fleet, and no request waits behind a queued `ALTER TABLE` for long.
const LOCK_TIMEOUT: &str = "3s";

/// Brings the tenant database `target` (connected as an administrator, acting as `run_as`, the table's owner) to
/// exactly the custom fields `desired`: adds missing ones, grows texts and updates flags, drops fields that are no
/// longer desired. One transaction in three round trips (set-up and lock; the catalogue; every change and the
/// commit in one batch, values as quoted literals of validated data); idempotent. The connection is private
/// and dropped at the end, so an error anywhere leaves nothing half-done.
pub async fn reconcile(
    target: &PgTarget,
    run_as: &str,
    desired: &[FieldSpec],
) -> Result<Reconciled, TenantError> {
    let context = format!("reconciling the fields of {}", target.dbname());
    let err = |e| TenantError::postgres(context.clone())(e);
    let client = connect(target).await.map_err(err)?;
    // One reconcile per database at a time (a request and a job may meet here).
    client
        .batch_execute(&format!(
            "SET ROLE {}; SET lock_timeout = '{LOCK_TIMEOUT}'; BEGIN; SELECT pg_advisory_xact_lock({})",
            quote_ident(run_as),
            lock_key("mandant.fields")
        ))
        .await
        .map_err(err)?;
    let catalogue: Vec<(String, Option<i32>, bool, bool)> = client
        .simple_query(
            "SELECT name, length, required, personal FROM field_catalogue ORDER BY name FOR UPDATE",
        )
        .await
        .map_err(err)?
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((
                row.get(0).unwrap_or_default().to_owned(),
                row.get(1).and_then(|l| l.parse().ok()),
                row.get(2) == Some("t"),
                row.get(3) == Some("t"),
            )),
            _ => None,
        })
        .collect();
    let mut done = Reconciled::default();
    let mut batch = String::new();
    for (name, length, required, personal) in &catalogue {
        let Some(want) = desired.iter().find(|d| &d.name == name) else {
            batch.push_str(&format!(
                "ALTER TABLE recipients DROP COLUMN IF EXISTS {};
                 DELETE FROM field_catalogue WHERE name = {};\n",
                quote_ident(name),
                quote_literal(name)
            ));
            done.dropped.push(name.clone());
            continue;
        };
        let mut changed = false;
        if let (Some(have), Some(wanted)) = (*length, want.length())
            && wanted > have
        {
            // Growing a varchar is a catalogue change in PostgreSQL: no rewrite, no scan.
            batch.push_str(&format!(
                "ALTER TABLE recipients ALTER COLUMN {} TYPE {};\n",
                quote_ident(name),
                want.column_type()
            ));
            changed = true;
        }
        if changed || *required != want.required || *personal != want.personal {
            batch.push_str(&format!(
                "UPDATE field_catalogue SET length = {}, required = {}, personal = {}, applied_at = now()
                 WHERE name = {};\n",
                want.length().map_or("NULL".into(), |l| l.to_string()),
                want.required,
                want.personal,
                quote_literal(name)
            ));
            done.changed.push(name.clone());
        }
    }
    for want in desired {
        if catalogue.iter().any(|(name, ..)| name == &want.name) {
            continue;
        }
        // IF NOT EXISTS: a column left by hand without its catalogue row is adopted, not an error.
        let default = want.default.as_ref().map_or("NULL".into(), |v| {
            format!("{}::jsonb", quote_literal(&v.to_json().to_string()))
        });
        batch.push_str(&format!(
            "ALTER TABLE recipients ADD COLUMN IF NOT EXISTS {};
             INSERT INTO field_catalogue (name, origin, data_type, length, required, default_value, personal)
             VALUES ({}, {}, {}, {}, {}, {default}, {});\n",
            want.column_definition(),
            quote_literal(&want.name),
            quote_literal(want.origin),
            quote_literal(want.ty.name()),
            want.length().map_or("NULL".into(), |l| l.to_string()),
            want.required,
            want.personal,
        ));
        done.added.push(want.name.clone());
    }
    batch.push_str("COMMIT");
    client.batch_execute(&batch).await.map_err(err)?;
    Ok(done)
}

async fn connect(
    target: &PgTarget,
) -> Result<deadpool_postgres::tokio_postgres::Client, deadpool_postgres::tokio_postgres::Error> {
    target
        .with_application_name("mandant-fields")
        .connect()
        .await
}

/// Differences between the catalogue and the real columns of `recipients` (for `tenants fields --check`).
pub async fn drift(target: &PgTarget, desired: &[FieldSpec]) -> Result<Vec<String>, TenantError> {
    let context = format!("checking the fields of {}", target.dbname());
    let err = |e| TenantError::postgres(context.clone())(e);
    let client = connect(target).await.map_err(err)?;
    let catalogue: Vec<String> = client
        .query("SELECT name FROM field_catalogue ORDER BY name", &[])
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let columns: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute
             WHERE attrelid = 'recipients'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attname",
            &[],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut problems = Vec::new();
    for want in desired {
        if !catalogue.contains(&want.name) {
            problems.push(format!("{}: desired, not in the catalogue", want.name));
        }
    }
    for name in &catalogue {
        if !columns.contains(name) {
            problems.push(format!("{name}: in the catalogue, no column"));
        }
        if !desired.iter().any(|d| &d.name == name) {
            problems.push(format!("{name}: in the catalogue, not desired"));
        }
    }
    let standard = crate::domain::STANDARD_FIELDS;
    for column in &columns {
        if !standard.contains(&column.as_str())
            && !crate::domain::is_internal_column(column)
            && !catalogue.contains(column)
        {
            problems.push(format!("{column}: a column not in the catalogue"));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_literals_are_quoted_and_typed() {
        assert_eq!(
            literal(&Value::Text("O'Brien".into())).unwrap(),
            "'O''Brien'"
        );
        assert_eq!(literal(&Value::Integer(-3)).unwrap(), "-3");
        assert_eq!(literal(&Value::Boolean(true)).unwrap(), "true");
        assert_eq!(
            literal(&Value::Date(
                chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
            ))
            .unwrap(),
            "'2026-11-23'::date"
        );
        assert_eq!(literal(&Value::Null), None);
        let spec = FieldSpec {
            name: "x\"y".into(),
            ty: FieldType::Text { max: 40 },
            required: true,
            default: Some(Value::Text("a'b".into())),
            personal: false,
            origin: "client",
        };
        assert_eq!(
            spec.column_definition(),
            "\"x\"\"y\" varchar(40) DEFAULT 'a''b' NOT NULL"
        );
    }
}
