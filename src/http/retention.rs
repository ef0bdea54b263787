//! Retention (issue #18): `GET|PUT /v1/retention` (the master's rules, inherited by every client),
//! `GET|PUT /v1/clients/{slug}/retention` (a client's override: stricter only) and
//! `GET /v1/clients/{slug}/retention/preview` (how many recipients the rules would remove now). The purge itself
//! is the worker's (`fanout::retention`); a tightened rule reaches it only a day later (`domain::retention`).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::ClientScope;
use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::scope::Tenant;
use crate::app::AppState;
use crate::control::retention::{RuleChange, RuleSet};
use crate::data::retention;
use crate::domain::Invalid;
use crate::domain::retention::{ClientRule, MAX_DAYS, RetentionRule};

/// A scope's two rules, as set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionInput {
    /// Delete recipients whose every binding has been `opt_out` or `bounced` for this many days (1-36500);
    /// null or absent: off (the master) or the master's rule (a client).
    #[schema(minimum = 1, maximum = 36500)]
    #[serde(default)]
    pub opted_out_or_bounced_days: Option<i32>,
    /// Delete recipients that have had no binding for this many days (1-36500); null or absent as above.
    #[schema(minimum = 1, maximum = 36500)]
    #[serde(default)]
    pub unbound_days: Option<i32>,
}

/// One rule as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    /// The period as set, in days (null: off, or no override).
    pub days: Option<i32>,
    /// The period the purge job applies now: after a tightening, the previous one for a day.
    pub in_force_days: Option<i32>,
    /// When `days` reaches the purge job (null: it has).
    pub in_force_from: Option<DateTime<Utc>>,
    pub tightened_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The two rules of one scope.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionRules {
    pub opted_out_or_bounced: RuleView,
    pub unbound: RuleView,
}

/// The two periods of a client, in days (null: none).
#[derive(Debug, Serialize, ToSchema)]
pub struct Periods {
    pub opted_out_or_bounced_days: Option<i32>,
    pub unbound_days: Option<i32>,
}

/// A client's retention: the master's rules, its override, and what follows.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientRetention {
    pub client: String,
    pub master: RetentionRules,
    #[serde(rename = "override")]
    pub own: RetentionRules,
    /// The stricter of master and override, as set (what the preview counts with).
    pub effective: Periods,
    /// What the purge job applies now (a tightening waits a day).
    pub in_force: Periods,
}

/// How many recipients the client's effective rules would remove now.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionPreview {
    pub opted_out_or_bounced: i64,
    pub unbound: i64,
    /// The time the periods were measured back from (the client database's clock).
    pub as_of: DateTime<Utc>,
}

fn view(set: &RuleSet, rule: RetentionRule, now: DateTime<Utc>) -> RuleView {
    let stored = set.get(&rule).copied().unwrap_or_default();
    RuleView {
        days: stored.state.days,
        in_force_days: stored.state.in_force(now),
        in_force_from: stored.state.in_force_from(now),
        tightened_at: stored.state.tightened_at,
        updated_at: stored.updated_at,
    }
}

fn rules(set: &RuleSet, now: DateTime<Utc>) -> RetentionRules {
    RetentionRules {
        opted_out_or_bounced: view(set, RetentionRule::OptedOutOrBounced, now),
        unbound: view(set, RetentionRule::Unbound, now),
    }
}

fn client_rule(master: &RuleSet, own: &RuleSet, rule: RetentionRule) -> ClientRule {
    ClientRule {
        master: master.get(&rule).map(|r| r.state).unwrap_or_default(),
        client: own.get(&rule).map(|r| r.state).unwrap_or_default(),
    }
}

fn periods(f: impl Fn(RetentionRule) -> Option<i32>) -> Periods {
    Periods {
        opted_out_or_bounced_days: f(RetentionRule::OptedOutOrBounced),
        unbound_days: f(RetentionRule::Unbound),
    }
}

/// Validates the periods of a PUT (1-36500 days each).
fn change(input: &RetentionInput) -> Result<RuleChange, ApiError> {
    let check = |field: &'static str, days: Option<i32>| match days {
        Some(d) if !(1..=MAX_DAYS).contains(&d) => Err(ApiError::from(Invalid {
            field,
            reason: format!("must be between 1 and {MAX_DAYS} days, or null"),
        })),
        _ => Ok(days),
    };
    Ok([
        (
            RetentionRule::OptedOutOrBounced,
            check("opted_out_or_bounced_days", input.opted_out_or_bounced_days)?,
        ),
        (
            RetentionRule::Unbound,
            check("unbound_days", input.unbound_days)?,
        ),
    ])
}

async fn master_view(state: &AppState) -> Result<RetentionRules, ApiError> {
    let (master, _) = state.control().retention_rules(None).await?;
    Ok(rules(&master, Utc::now()))
}

async fn client_view(state: &AppState, scope: &ClientScope) -> Result<ClientRetention, ApiError> {
    let (master, own) = state
        .control()
        .retention_rules(Some(scope.client.id))
        .await?;
    let now = Utc::now();
    Ok(ClientRetention {
        client: scope.client.slug.clone(),
        master: rules(&master, now),
        own: rules(&own, now),
        effective: periods(|rule| client_rule(&master, &own, rule).effective()),
        in_force: periods(|rule| client_rule(&master, &own, rule).in_force(now)),
    })
}

/// The master's retention rules, inherited by every client. Both are off until set.
#[utoipa::path(get, path = "/v1/retention", tag = "retention",
    responses((status = 200, description = "The master's rules", body = RetentionRules),
        (status = 403, description = "Needs clients.read with access to the master", body = ErrorBody)))]
pub async fn get_master(State(state): State<AppState>) -> Result<Json<RetentionRules>, ApiError> {
    Ok(Json(master_view(&state).await?))
}

/// Set the master's retention rules (null: off). Turning a rule on or shortening it reaches the purge job a day
/// later (check `GET /v1/clients/{slug}/retention/preview` meanwhile); turning it off or lengthening it at once.
#[utoipa::path(put, path = "/v1/retention", tag = "retention", request_body = RetentionInput,
    responses((status = 200, description = "The master's rules now", body = RetentionRules),
        (status = 400, description = "A period out of range", body = ErrorBody),
        (status = 403, description = "Needs clients.manage with full access to the master", body = ErrorBody)))]
pub async fn put_master(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<RetentionInput>,
) -> Result<Json<RetentionRules>, ApiError> {
    let change = change(&input)?;
    state
        .control()
        .set_retention(None, &change, Utc::now())
        .await?;
    tracing::info!(?change, "master retention rules set");
    Ok(Json(master_view(&state).await?))
}

/// A client's retention: the master's rules, its override, the effective periods and those in force.
#[utoipa::path(get, path = "/v1/clients/{slug}/retention", tag = "retention",
    params(("slug" = String, Path, description = "The client's slug")),
    responses((status = 200, description = "The client's retention", body = ClientRetention),
        (status = 404, description = "No such client", body = ErrorBody)))]
pub async fn get_client(
    State(state): State<AppState>,
    scope: ClientScope,
) -> Result<Json<ClientRetention>, ApiError> {
    Ok(Json(client_view(&state, &scope).await?))
}

/// Set a client's override (null: the master's rule). It may only be stricter: a period longer than the
/// master's is refused (400); it cannot turn a master's rule off. Tightening waits a day as for the master.
#[utoipa::path(put, path = "/v1/clients/{slug}/retention", tag = "retention", request_body = RetentionInput,
    params(("slug" = String, Path, description = "The client's slug")),
    responses((status = 200, description = "The client's retention now", body = ClientRetention),
        (status = 400, description = "A period out of range or longer than the master's", body = ErrorBody),
        (status = 404, description = "No such client", body = ErrorBody)))]
pub async fn put_client(
    State(state): State<AppState>,
    scope: ClientScope,
    ApiJson(input): ApiJson<RetentionInput>,
) -> Result<Json<ClientRetention>, ApiError> {
    let change = change(&input)?;
    state
        .control()
        .set_retention(Some(scope.client.id), &change, Utc::now())
        .await?;
    tracing::info!(client = %scope.client.slug, ?change, "client retention override set");
    Ok(Json(client_view(&state, &scope).await?))
}

/// How many recipients the client's effective rules (as set, not waiting a day) would remove now, counted with
/// the very predicate the purge deletes with.
#[utoipa::path(get, path = "/v1/clients/{slug}/retention/preview", tag = "retention",
    params(("slug" = String, Path, description = "The client's slug")),
    responses((status = 200, description = "Counts per rule", body = RetentionPreview),
        (status = 404, description = "No such client", body = ErrorBody)))]
pub async fn preview(
    State(state): State<AppState>,
    scope: ClientScope,
    tenant: Tenant,
) -> Result<Json<RetentionPreview>, ApiError> {
    let (master, own) = state
        .control()
        .retention_rules(Some(scope.client.id))
        .await?;
    let db = tenant.db().await?;
    let as_of = retention::now(db.client()).await?;
    let mut counts = [0i64; 2];
    for (i, rule) in RetentionRule::ALL.into_iter().enumerate() {
        if let Some(days) = client_rule(&master, &own, rule).effective() {
            counts[i] = retention::count(db.client(), rule, days, as_of).await?;
        }
    }
    Ok(Json(RetentionPreview {
        opted_out_or_bounced: counts[0],
        unbound: counts[1],
        as_of,
    }))
}
