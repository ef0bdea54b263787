//! `/v1/target-groups`: the master's cross-client target groups (a rule over standard and central fields,
//! evaluated in every selected client the caller can see), and `/v1/overview`.
//!
//! The handlers decide which clients a call visits and with which privacy (the caller's grants); the evaluation
//! itself is `fanout::crossclient`. An invisible client never appears in an answer, not even in an error row or a
//! group's selection.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, ClientScope};
use super::cursor::{self, Page};
use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::extract::{ApiJson, ApiQuery, RowId};
use super::lists::PageParams;
use crate::app::AppState;
use crate::control::clients::ClientRecord;
use crate::control::target_groups::{CentralGroupRecord, ClientSelection};
use crate::data::schema::Schema;
use crate::data::{DataError, Privacy};
use crate::domain::rights::{Grant, Principal, Rights};
use crate::domain::{ClientSlug, required_text};
use crate::fanout::crossclient::{StreamItem, Visit, central_schema, check_rule};

const GROUP_NAME_MAX: usize = 200;
/// Most clients one group may name.
const MAX_CLIENTS: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCentralGroup {
    /// 1-200 characters, unique among cross-client target groups (case-insensitively).
    #[schema(
        example = "Newsletter readers in Berlin, every client",
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// A rule as for a client's target group, over standard and central fields only (no client fields, no
    /// mailing lists: those differ from client to client).
    #[schema(value_type = Object, example = json!({"all": [{"field": "city", "op": "eq", "value": "Berlin"}]}))]
    pub rule: serde_json::Value,
    /// Evaluate in these clients only (slugs, 1-1000; not with `parent`).
    #[schema(min_items = 1, max_items = 1000, value_type = Option<Vec<super::openapi::SlugText>>)]
    pub clients: Option<Vec<String>>,
    /// Evaluate in this client's direct sub-clients only (not with `clients`).
    #[schema(pattern = r"^[a-z][a-z0-9-]{1,39}$")]
    pub parent: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CentralGroupView {
    pub id: i64,
    pub name: String,
    /// The rule; values of conditions on personal fields are withheld (`_masked`) without the private-data right
    /// on the master.
    #[schema(value_type = Object)]
    pub rule: serde_json::Value,
    /// `all` (every client, the master included), `clients` or `parent`.
    #[schema(example = "all")]
    pub selection: &'static str,
    /// The selected clients the caller can see (selection `clients`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<String>>,
    /// The parent whose sub-clients are selected (selection `parent`; null when the caller cannot see it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Option<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One client's part of a cross-client count: `count`, or `error`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientCountView {
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    /// How long the client took, in milliseconds (its connection included).
    pub elapsed_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CrossClientCount {
    /// The sum of the counts of the clients that answered.
    pub total: i64,
    /// Every selected client the caller can see, by slug.
    pub clients: Vec<ClientCountView>,
}

/// The live clients by id (one control-plane read per call).
async fn live_clients(state: &AppState) -> Result<HashMap<uuid::Uuid, ClientRecord>, ApiError> {
    Ok(state
        .control()
        .all_live_clients()
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect())
}

/// The standard and central fields, as a cross-client rule sees them.
async fn schema(state: &AppState) -> Result<Schema, ApiError> {
    Ok(central_schema(&state.control().fields_of(None).await?))
}

/// What showing groups to a caller needs, read once per request: the central schema (which rule values to
/// withhold), the live clients (ids to slugs) and the caller's rights.
struct Viewer<'a> {
    rights: &'a Rights,
    master_private: bool,
    schema: Schema,
    clients: HashMap<uuid::Uuid, ClientRecord>,
}

impl<'a> Viewer<'a> {
    async fn load(
        state: &AppState,
        caller: &'a Principal,
        master: &ClientScope,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            rights: &caller.rights,
            master_private: master.grant.private_data,
            schema: schema(state).await?,
            clients: live_clients(state).await?,
        })
    }

    /// A group as this caller may see it: only visible clients named, personal rule values withheld without
    /// the private-data right on the master.
    fn view(&self, group: CentralGroupRecord) -> CentralGroupView {
        let visible = |id: &uuid::Uuid| {
            self.clients
                .get(id)
                .filter(|c| self.rights.grant(c.id).is_visible())
                .map(|c| c.slug.clone())
        };
        let (selection, selected, parent) = match &group.selection {
            ClientSelection::All => ("all", None, None),
            ClientSelection::Clients(ids) => {
                let mut slugs: Vec<String> = ids.iter().filter_map(visible).collect();
                slugs.sort();
                ("clients", Some(slugs), None)
            }
            ClientSelection::Parent(id) => ("parent", None, Some(visible(id))),
        };
        let mut rule = group.rule;
        if !self.master_private {
            crate::data::rules::mask_personal_values(&mut rule, &|name| {
                self.schema.get(name).is_some_and(|f| f.personal)
            });
        }
        CentralGroupView {
            id: group.id,
            name: group.name,
            rule,
            selection,
            clients: selected,
            parent,
            created_at: group.created_at,
            updated_at: group.updated_at,
        }
    }
}

/// A client named in a selection, visible to the caller (an invisible one is one that does not exist: 422
/// `unknown_client` either way).
pub(super) async fn visible_client(
    state: &AppState,
    rights: &Rights,
    slug: &str,
) -> Result<Arc<ClientRecord>, ApiError> {
    let unknown = || ApiError::unknown_client(&crate::data::schema::truncate(slug));
    let parsed = ClientSlug::parse(slug).map_err(|_| unknown())?;
    match state.data().client(&parsed).await {
        Ok(client) if rights.grant(client.id).is_visible() => Ok(client),
        Ok(_) | Err(DataError::NotFound) => Err(unknown()),
        Err(e) => Err(e.into()),
    }
}

async fn selection(
    state: &AppState,
    rights: &Rights,
    body: &CreateCentralGroup,
) -> Result<ClientSelection, ApiError> {
    match (&body.clients, &body.parent) {
        (Some(_), Some(_)) => Err(ApiError::invalid_body(
            "Give either clients or parent, not both.",
        )),
        (None, None) => Ok(ClientSelection::All),
        (None, Some(parent)) => Ok(ClientSelection::Parent(
            visible_client(state, rights, parent).await?.id,
        )),
        (Some(slugs), None) => {
            if slugs.is_empty() || slugs.len() > MAX_CLIENTS {
                return Err(ApiError::invalid_body(format!(
                    "clients: name 1 to {MAX_CLIENTS} clients."
                )));
            }
            let mut ids = Vec::with_capacity(slugs.len());
            for slug in slugs {
                let id = visible_client(state, rights, slug).await?.id;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Ok(ClientSelection::Clients(ids))
        }
    }
}

/// Create a cross-client target group. The rule is checked against the standard and central fields now (400
/// naming the problem); a client field or a mailing list is refused.
#[utoipa::path(post, path = "/v1/target-groups", tag = "cross-client", request_body = CreateCentralGroup,
    responses(
        (status = 201, description = "Created", body = CentralGroupView),
        (status = 400, description = "Invalid name, rule or selection", body = ErrorBody),
        (status = 403, description = "Needs recipients.read with full access to the master (and the private-data right for a rule on a personal field)", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 422, description = "A selected client does not exist", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    master: ClientScope,
    ApiJson(body): ApiJson<CreateCentralGroup>,
) -> Result<Response, ApiError> {
    let name = required_text("name", &body.name, GROUP_NAME_MAX)?;
    let viewer = Viewer::load(&state, &caller, &master).await?;
    let fields = check_rule(&body.rule, &viewer.schema)?;
    if !master.grant.private_data {
        Privacy::Masked(Arc::from([])).check_fields(&viewer.schema, &fields)?;
    }
    let selection = selection(&state, &caller.rights, &body).await?;
    let group = state
        .control()
        .create_central_group(&name, &body.rule, &selection, caller.user_id)
        .await?;
    let view = viewer.view(group);
    Ok(super::created(
        &format!("/v1/target-groups/{}", view.id),
        &view,
    ))
}

/// The cross-client target groups, by id.
#[utoipa::path(get, path = "/v1/target-groups", tag = "cross-client", params(PageParams),
    responses(
        (status = 200, description = "A page of cross-client target groups", body = Page<CentralGroupView>),
        (status = 400, description = "Invalid limit or cursor", body = ErrorBody),
        (status = 403, description = "Needs recipients.read with access to the master", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    master: ClientScope,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<CentralGroupView>>, ApiError> {
    let (limit, after) = cursor::keyset(params.limit, params.cursor.as_deref())?;
    let groups = state.control().central_groups(after, limit + 1).await?;
    let viewer = Viewer::load(&state, &caller, &master).await?;
    let views = groups.into_iter().map(|g| viewer.view(g)).collect();
    Ok(Json(Page::from_rows(views, limit, |g| g.id.to_string())))
}

/// One cross-client target group.
#[utoipa::path(get, path = "/v1/target-groups/{id}", tag = "cross-client",
    params(("id" = i64, Path, description = "Cross-client target group id")),
    responses(
        (status = 200, description = "The group", body = CentralGroupView),
        (status = 403, description = "Needs recipients.read with access to the master", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    master: ClientScope,
    RowId(id): RowId,
) -> Result<Json<CentralGroupView>, ApiError> {
    let group = state.control().central_group(id).await?;
    let viewer = Viewer::load(&state, &caller, &master).await?;
    Ok(Json(viewer.view(group)))
}

/// Delete a cross-client target group (no client's data is touched).
#[utoipa::path(delete, path = "/v1/target-groups/{id}", tag = "cross-client",
    params(("id" = i64, Path, description = "Cross-client target group id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Needs recipients.read with full access to the master", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    RowId(id): RowId,
) -> Result<StatusCode, ApiError> {
    state.control().delete_central_group(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The clients a group is evaluated in for this caller (visible, live, by slug), each with the caller's privacy
/// there; refused with 403 when the rule reads a personal field and the caller lacks the private-data right on
/// any of them, or 400 when the rule no longer fits the central fields.
async fn visits(
    state: &AppState,
    caller: &Principal,
    group: &CentralGroupRecord,
) -> Result<Vec<Visit>, ApiError> {
    let schema = schema(state).await?;
    let fields = check_rule(&group.rule, &schema)?;
    let mut selected: Vec<(ClientRecord, Grant)> = live_clients(state)
        .await?
        .into_values()
        .filter(|c| match &group.selection {
            ClientSelection::All => true,
            ClientSelection::Clients(ids) => ids.contains(&c.id),
            ClientSelection::Parent(parent) => c.parent_id == Some(*parent),
        })
        .map(|c| {
            let grant = caller.rights.grant(c.id);
            (c, grant)
        })
        .filter(|(_, grant)| grant.is_visible())
        .collect();
    // A database is counted once: an inner client's slice is part of its parent's database, so it is visited only
    // when its parent is not (a caller who sees the inner client alone gets its slice).
    let parents: std::collections::HashSet<uuid::Uuid> =
        selected.iter().map(|(c, _)| c.id).collect();
    selected.retain(|(c, _)| !(c.is_inner() && c.parent_id.is_some_and(|p| parents.contains(&p))));
    selected.sort_by(|a, b| a.0.slug.cmp(&b.0.slug));
    let masked: Vec<uuid::Uuid> = selected
        .iter()
        .filter(|(_, grant)| !grant.private_data)
        .map(|(c, _)| c.id)
        .collect();
    let mut personal = if masked.is_empty() {
        HashMap::new()
    } else {
        state.control().personal_fields_of(&masked).await?
    };
    let mut visits = Vec::with_capacity(selected.len());
    for (client, grant) in selected {
        let privacy = if grant.private_data {
            Privacy::Visible
        } else {
            Privacy::Masked(personal.remove(&client.id).unwrap_or_default().into())
        };
        // A rule on a personal field needs the private-data right on every client it touches.
        privacy.check_fields(&schema, &fields)?;
        visits.push(Visit { client, privacy });
    }
    Ok(visits)
}

/// Count the group's recipients in every selected client the caller can see, in parallel through the routing
/// pool. A client that is down, suspended or slow is reported with its error; `total` sums the others.
#[utoipa::path(get, path = "/v1/target-groups/{id}/count", tag = "cross-client",
    params(("id" = i64, Path, description = "Cross-client target group id")),
    responses(
        (status = 200, description = "Per-client counts and their total", body = CrossClientCount),
        (status = 400, description = "The rule no longer fits the central fields", body = ErrorBody),
        (status = 403, description = "The rule reads a personal field and the caller lacks the private-data right on a selected client", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub async fn count(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RowId(id): RowId,
) -> Result<Json<CrossClientCount>, ApiError> {
    let group = state.control().central_group(id).await?;
    let visits = visits(&state, &caller, &group).await?;
    // Within the request's own timeout: the clients not done by then are rows of their own, not a failed request.
    let overall = state.settings().server.request_timeout().mul_f64(0.9);
    let counts = state
        .fanout()
        .count_across(Arc::new(group.rule), visits, overall)
        .await;
    let mut total = 0;
    let clients = counts
        .into_iter()
        .map(|c| {
            let elapsed_ms = u64::try_from(c.elapsed.as_millis()).unwrap_or(u64::MAX);
            match c.result {
                Ok(count) => {
                    total += count;
                    ClientCountView {
                        client: c.client.slug,
                        count: Some(count),
                        error: None,
                        elapsed_ms,
                    }
                }
                Err(e) => ClientCountView {
                    client: c.client.slug,
                    count: None,
                    error: Some(ApiError::from(e).detail()),
                    elapsed_ms,
                },
            }
        })
        .collect();
    Ok(Json(CrossClientCount { total, clients }))
}

/// One line of a cross-client stream: `{"client", "recipient"}` or `{"client", "error"}` (the recipient nested, so
/// a client's own field can never pose as the envelope's `client` or `error`).
#[derive(Serialize)]
struct StreamLine<'a> {
    client: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    recipient: Option<&'a crate::data::recipients::Recipient>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
}

fn ndjson_lines(item: StreamItem) -> Vec<u8> {
    let mut out = Vec::new();
    let push = |value: Result<(), serde_json::Error>| {
        if let Err(e) = value {
            tracing::error!(error = %e, "could not serialise a stream line");
        }
    };
    match item {
        StreamItem::Recipients(client, recipients) => {
            for recipient in &recipients {
                push(serde_json::to_writer(
                    &mut out,
                    &StreamLine {
                        client: &client,
                        recipient: Some(recipient),
                        error: None,
                    },
                ));
                out.push(b'\n');
            }
        }
        StreamItem::Failed(client, error) => {
            let error = ApiError::from(error).detail();
            push(serde_json::to_writer(
                &mut out,
                &StreamLine {
                    client: &client,
                    recipient: None,
                    error: Some(error),
                },
            ));
            out.push(b'\n');
        }
    }
    out
}

/// Stream the group's recipients as NDJSON, client by client (by slug): one line `{"client": slug, "recipient":
/// {...}}` per recipient, masked per client where the caller lacks the private-data right there. A client that
/// fails yields one line `{"client": slug, "error": {code, message}}` and the stream goes on.
#[utoipa::path(get, path = "/v1/target-groups/{id}/recipients", tag = "cross-client",
    params(("id" = i64, Path, description = "Cross-client target group id")),
    responses(
        (status = 200, description = "One JSON object per line: {client, recipient} or {client, error}", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "The rule no longer fits the central fields", body = ErrorBody),
        (status = 403, description = "The rule reads a personal field and the caller lacks the private-data right on a selected client", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub async fn recipients(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RowId(id): RowId,
) -> Result<Response, ApiError> {
    let group = state.control().central_group(id).await?;
    let visits = visits(&state, &caller, &group).await?;
    let receiver = state.fanout().stream_across(Arc::new(group.rule), visits);
    let lines = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let item = receiver.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(ndjson_lines(item)),
            receiver,
        ))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}
