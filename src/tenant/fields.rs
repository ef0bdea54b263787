//! Custom recipient fields in a tenant database: real, typed columns of `recipients`, each listed in the tenant's
//! `field_catalogue`. [`reconcile`] brings a database to a desired list of fields in one transaction: the
//! `ALTER TABLE`s and the catalogue rows commit together or not at all, and running it again changes nothing.
//!
//! Identifiers come from validated field names and are quoted; a default value is rendered as a literal from its
//! typed, validated value (DDL takes no bind parameters).

use chrono::SecondsFormat;
use deadpool_postgres::tokio_postgres::types::Json;

use super::TenantError;
use super::cluster::{quote_ident, quote_literal};
use crate::data::schema::{FieldType, Value};
use crate::db::PgTarget;

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

/// The value as JSON, for the catalogue's `default_value`.
pub fn to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Text(s) => s.clone().into(),
        Value::Integer(v) => (*v).into(),
        Value::Number(v) => (*v).into(),
        Value::Boolean(v) => (*v).into(),
        Value::Date(d) => d.format("%Y-%m-%d").to_string().into(),
        Value::Timestamp(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true).into(),
    }
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
/// longer desired. One transaction; idempotent.
pub async fn reconcile(
    target: &PgTarget,
    run_as: &str,
    desired: &[FieldSpec],
) -> Result<Reconciled, TenantError> {
    let context = format!("reconciling the fields of {}", target.dbname());
    let err = |e| TenantError::postgres(context.clone())(e);
    let mut client = target
        .with_application_name("mandant-fields")
        .connect()
        .await
        .map_err(err)?;
    client
        .batch_execute(&format!(
            "SET ROLE {}; SET lock_timeout = '{LOCK_TIMEOUT}'",
            quote_ident(run_as)
        ))
        .await
        .map_err(err)?;
    let tx = client.transaction().await.map_err(err)?;
    // One reconcile per database at a time (a request and a job may meet here).
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&super::cluster::lock_key("mandant.fields")],
    )
    .await
    .map_err(err)?;
    let rows = tx
        .query(
            "SELECT name, data_type, length, required, personal FROM field_catalogue FOR UPDATE",
            &[],
        )
        .await
        .map_err(err)?;
    let mut done = Reconciled::default();
    for row in &rows {
        let name: String = row.get("name");
        let Some(want) = desired.iter().find(|d| d.name == name) else {
            tx.batch_execute(&format!(
                "ALTER TABLE recipients DROP COLUMN IF EXISTS {}",
                quote_ident(&name)
            ))
            .await
            .map_err(err)?;
            tx.execute("DELETE FROM field_catalogue WHERE name = $1", &[&name])
                .await
                .map_err(err)?;
            done.dropped.push(name);
            continue;
        };
        let length: Option<i32> = row.get("length");
        let (required, personal): (bool, bool) = (row.get("required"), row.get("personal"));
        let mut changed = false;
        if let (Some(have), Some(wanted)) = (length, want.length())
            && wanted > have
        {
            // Growing a varchar is a catalogue change in PostgreSQL: no rewrite, no scan.
            tx.batch_execute(&format!(
                "ALTER TABLE recipients ALTER COLUMN {} TYPE {}",
                quote_ident(&name),
                want.column_type()
            ))
            .await
            .map_err(err)?;
            changed = true;
        }
        if changed || required != want.required || personal != want.personal {
            tx.execute(
                "UPDATE field_catalogue SET length = $2, required = $3, personal = $4, applied_at = now()
                 WHERE name = $1",
                &[&name, &want.length(), &want.required, &want.personal],
            )
            .await
            .map_err(err)?;
            done.changed.push(name);
        }
    }
    for want in desired {
        if rows.iter().any(|r| r.get::<_, &str>("name") == want.name) {
            continue;
        }
        // IF NOT EXISTS: a column left by hand without its catalogue row is adopted, not an error.
        tx.batch_execute(&format!(
            "ALTER TABLE recipients ADD COLUMN IF NOT EXISTS {}",
            want.column_definition()
        ))
        .await
        .map_err(err)?;
        let default = want.default.as_ref().map(to_json).map(Json);
        tx.execute(
            "INSERT INTO field_catalogue (name, origin, data_type, length, required, default_value, personal)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &want.name,
                &want.origin,
                &want.ty.name(),
                &want.length(),
                &want.required,
                &default,
                &want.personal,
            ],
        )
        .await
        .map_err(err)?;
        done.added.push(want.name.clone());
    }
    tx.commit().await.map_err(err)?;
    Ok(done)
}

/// Differences between the catalogue and the real columns of `recipients` (for `tenants fields --check`).
pub async fn drift(target: &PgTarget, desired: &[FieldSpec]) -> Result<Vec<String>, TenantError> {
    let context = format!("checking the fields of {}", target.dbname());
    let err = |e| TenantError::postgres(context.clone())(e);
    let client = target
        .with_application_name("mandant-fields")
        .connect()
        .await
        .map_err(err)?;
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
        if !standard.contains(&column.as_str()) && !catalogue.contains(column) {
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
