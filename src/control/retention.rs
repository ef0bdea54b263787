//! Retention rules (`retention_rules`, `V7__retention.sql`): the master's, inherited by every client, and each
//! client's stricter override, with when each was last tightened. What a change means (a tightening that waits a
//! day, a loosening that applies at once) is plain logic in `domain::retention`; this module reads and writes it,
//! every change under one transaction-scoped advisory lock so two changes cannot interleave their reads.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::{ControlError, ControlPlane};
use crate::domain::retention::{RetentionRule, RuleState, check_override};

/// One stored rule with when it last changed (`None`: never set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredRule {
    pub state: RuleState,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The two rules of one scope (the master's, or one client's override).
pub type RuleSet = HashMap<RetentionRule, StoredRule>;

/// Every stored rule, for the purge job: the master's, and the overrides by client.
#[derive(Debug, Clone, Default)]
pub struct AllRules {
    pub master: RuleSet,
    pub clients: HashMap<Uuid, RuleSet>,
}

/// A change of a scope's two rules: the new period of each (`None`: off, or no override).
pub type RuleChange = [(RetentionRule, Option<i32>); 2];

#[derive(FromRow)]
struct RuleRow {
    client_id: Option<Uuid>,
    rule: String,
    days: Option<i32>,
    previous_days: Option<i32>,
    tightened_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl RuleRow {
    fn stored(&self) -> Option<(RetentionRule, StoredRule)> {
        let rule = RetentionRule::parse(&self.rule)?;
        Some((
            rule,
            StoredRule {
                state: RuleState {
                    days: self.days,
                    previous_days: self.previous_days,
                    tightened_at: self.tightened_at,
                },
                updated_at: Some(self.updated_at),
            },
        ))
    }
}

macro_rules! select_rules {
    ($where:literal) => {
        concat!(
            "SELECT client_id, rule, days, previous_days, tightened_at, updated_at FROM retention_rules ",
            $where
        )
    };
}

/// Serialises every change of retention rules (transaction-scoped).
const RETENTION_LOCK: &str = "mandant.retention_rules";

impl ControlPlane {
    /// The master's rules and, with `client`, that client's override.
    pub async fn retention_rules(
        &self,
        client: Option<Uuid>,
    ) -> Result<(RuleSet, RuleSet), ControlError> {
        let rows: Vec<RuleRow> =
            sqlx::query_as(select_rules!("WHERE client_id IS NULL OR client_id = $1"))
                .bind(client)
                .fetch_all(&self.pool)
                .await?;
        Ok(split(rows))
    }

    /// Every stored rule (the purge job reads them once per run).
    pub async fn all_retention_rules(&self) -> Result<AllRules, ControlError> {
        let rows: Vec<RuleRow> = sqlx::query_as(select_rules!(""))
            .fetch_all(&self.pool)
            .await?;
        let mut all = AllRules::default();
        for row in rows {
            let Some((rule, stored)) = row.stored() else {
                continue;
            };
            match row.client_id {
                None => all.master.insert(rule, stored),
                Some(id) => all.clients.entry(id).or_default().insert(rule, stored),
            };
        }
        Ok(all)
    }

    /// Sets the master's rules (`client` `None`) or a client's override, at `now`. An override looser than the
    /// master's rule is refused ([`ControlError::RetentionLooser`]) and nothing changes.
    pub async fn set_retention(
        &self,
        client: Option<Uuid>,
        change: &RuleChange,
        now: DateTime<Utc>,
    ) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(crate::db::lock_key(RETENTION_LOCK))
            .execute(&mut *tx)
            .await?;
        let rows: Vec<RuleRow> =
            sqlx::query_as(select_rules!("WHERE client_id IS NULL OR client_id = $1"))
                .bind(client)
                .fetch_all(&mut *tx)
                .await?;
        let (master, own) = split(rows);
        for (rule, days) in change {
            if client.is_some() {
                let master_days = master.get(rule).and_then(|r| r.state.days);
                check_override(*rule, master_days, *days)?;
            }
            let current = if client.is_some() { &own } else { &master };
            let old = current.get(rule).copied().unwrap_or_default();
            let new = old.state.set(*days, now);
            if old.updated_at.is_some() && new == old.state {
                continue;
            }
            sqlx::query(
                "WITH updated AS (
                     UPDATE retention_rules SET days = $3, previous_days = $4, tightened_at = $5, updated_at = $6
                     WHERE client_id IS NOT DISTINCT FROM $1 AND rule = $2 RETURNING id)
                 INSERT INTO retention_rules (client_id, rule, days, previous_days, tightened_at, updated_at)
                 SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS (SELECT 1 FROM updated)",
            )
            .bind(client)
            .bind(rule.as_str())
            .bind(new.days)
            .bind(new.previous_days)
            .bind(new.tightened_at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The master's rows (client NULL) and a client's, apart.
fn split(rows: Vec<RuleRow>) -> (RuleSet, RuleSet) {
    let (mut master, mut own) = (RuleSet::new(), RuleSet::new());
    for row in rows {
        let Some((rule, stored)) = row.stored() else {
            continue;
        };
        match row.client_id {
            None => master.insert(rule, stored),
            Some(_) => own.insert(rule, stored),
        };
    }
    (master, own)
}
