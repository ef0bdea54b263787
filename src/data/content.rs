//! Content moved between clients (issue #18; seeds 000: "templates, building blocks and forms ... by import and
//! export"): one JSON document with a client's mailing lists (their definitions, never their recipients: those
//! move with the recipient import), target groups and local templates. [`export`] reads it in one snapshot;
//! [`import`] checks everything first (every rule compiled against the target's own fields, every list it names
//! present in the document) and then writes everything in one transaction, or nothing: names that exist already
//! are [`DataError::NamesTaken`] by kind; list ids inside rules are remapped to the lists just created.

use std::collections::HashMap;

use deadpool_postgres::tokio_postgres::types::Type;
use deadpool_postgres::tokio_postgres::{Client, IsolationLevel};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use utoipa::ToSchema;

use super::lists::{self, MailingList};
use super::rules;
use super::schema::Schema;
use super::target_groups::{self, TargetGroup};
use super::templates::{self, TemplateInput, TenantTemplate};
use super::{DataError, Privacy};
use crate::control::templates::TemplateContent;

/// The document format this release writes and reads.
pub const FORMAT: u32 = 1;

/// A client's content: `GET .../export` returns it, `POST .../import-content` takes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentDocument {
    /// The format of the document: 1.
    #[schema(minimum = 1, maximum = 1)]
    pub format: u32,
    /// Mailing lists (definitions only). `id` is the list's id in the exporting client; rules refer to it.
    #[schema(max_items = 10000)]
    pub lists: Vec<ListDoc>,
    #[schema(max_items = 10000)]
    pub target_groups: Vec<GroupDoc>,
    /// The client's own templates (inherited ones reach every client from the master).
    #[schema(max_items = 10000)]
    pub templates: Vec<TemplateInput>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListDoc {
    #[schema(minimum = 1)]
    pub id: i64,
    /// 1-200 characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// At most 2000 characters.
    #[schema(max_length = 2000, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupDoc {
    /// 1-200 characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// The rule; `{"list": id}` names a list of this document by its `id`.
    #[schema(value_type = Object)]
    pub rule: Json,
}

/// Names of the document that the client has already, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clashes {
    pub lists: Vec<String>,
    pub target_groups: Vec<String>,
    pub templates: Vec<String>,
}

impl Clashes {
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty() && self.target_groups.is_empty() && self.templates.is_empty()
    }
}

impl std::fmt::Display for Clashes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds = [
            ("mailing lists", &self.lists),
            ("target groups", &self.target_groups),
            ("templates", &self.templates),
        ];
        let parts: Vec<String> = kinds
            .iter()
            .filter(|(_, names)| !names.is_empty())
            .map(|(kind, names)| {
                let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
                format!("{kind}: {}", quoted.join(", "))
            })
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// What an import created: each list with the id it had in the document.
#[derive(Debug, Clone)]
pub struct Imported {
    pub lists: Vec<(i64, MailingList)>,
    pub target_groups: Vec<TargetGroup>,
    pub templates: Vec<TenantTemplate>,
}

/// The client's content in one snapshot. Without the private-data right, values of rule conditions on personal
/// fields are withheld (as `GET .../target-groups` does; such a rule does not import).
pub async fn export(db: &mut Client, privacy: &Privacy) -> Result<ContentDocument, DataError> {
    let schema = Schema::load(db).await?;
    let tx = db
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let lists = tx
        .query_typed(
            "SELECT id, name, description FROM mailing_lists ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| ListDoc {
            id: r.get("id"),
            name: r.get("name"),
            description: r.get("description"),
        })
        .collect();
    let mut target_groups: Vec<GroupDoc> = tx
        .query_typed("SELECT name, rule FROM target_groups ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| GroupDoc {
            name: r.get("name"),
            rule: r.get("rule"),
        })
        .collect();
    if !privacy.is_visible() {
        for group in &mut target_groups {
            rules::mask_personal_values(&mut group.rule, &|name| {
                privacy.is_personal(&schema, name)
            });
        }
    }
    let templates = tx
        .query_typed(
            "SELECT name, subject, html_body, text_body FROM templates WHERE origin = 'local' ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| TemplateInput {
            name: r.get("name"),
            subject: r.get("subject"),
            html_body: r.get("html_body"),
            text_body: r.get("text_body"),
        })
        .collect();
    tx.commit().await?;
    Ok(ContentDocument {
        format: FORMAT,
        lists,
        target_groups,
        templates,
    })
}

/// `rule` with every `{"list": id}` of the document replaced by the id of the list created for it.
fn remap(rule: &Json, ids: &HashMap<i64, i64>) -> Json {
    match rule {
        Json::Object(node) => Json::Object(
            node.iter()
                .map(|(key, value)| {
                    let value = match (key.as_str(), value.as_i64()) {
                        ("list", Some(old)) => {
                            ids.get(&old).map_or(value.clone(), |new| (*new).into())
                        }
                        ("all" | "any" | "not", _) => remap(value, ids),
                        _ => value.clone(),
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Json::Array(children) => Json::Array(children.iter().map(|c| remap(c, ids)).collect()),
        other => other.clone(),
    }
}

/// Checks every rule of `doc` against the client's fields (and `privacy`) and the document's lists.
fn check_rules(doc: &ContentDocument, schema: &Schema, privacy: &Privacy) -> Result<(), DataError> {
    for group in &doc.target_groups {
        let compiled = rules::compile(&group.rule, schema)
            .map_err(|e| DataError::DoesNotFit(format!("target group {:?}: {e}", group.name)))?;
        privacy.check_fields(schema, &compiled.fields)?;
        if let Some(id) = compiled
            .lists
            .iter()
            .find(|id| !doc.lists.iter().any(|l| l.id == **id))
        {
            return Err(DataError::DoesNotFit(format!(
                "target group {:?}: the rule names mailing list {id}, which the document does not contain",
                group.name
            )));
        }
    }
    Ok(())
}

/// Which names of `doc` the client has already.
async fn clashes(
    db: &impl deadpool_postgres::tokio_postgres::GenericClient,
    doc: &ContentDocument,
) -> Result<Clashes, DataError> {
    let taken = async |table: &str, names: Vec<String>| -> Result<Vec<String>, DataError> {
        let sql = format!("SELECT name FROM {table} WHERE lower(name) = ANY($1) ORDER BY name");
        Ok(db
            .query_typed(&sql, &[(&names, Type::TEXT_ARRAY)])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    };
    let lower = |names: Vec<&String>| names.into_iter().map(|n| n.to_lowercase()).collect();
    let template_names: Vec<&str> = doc.templates.iter().map(|t| t.name.as_str()).collect();
    Ok(Clashes {
        lists: taken(
            "mailing_lists",
            lower(doc.lists.iter().map(|l| &l.name).collect()),
        )
        .await?,
        target_groups: taken(
            "target_groups",
            lower(doc.target_groups.iter().map(|g| &g.name).collect()),
        )
        .await?,
        templates: templates::local_names_taken(db, &template_names).await?,
    })
}

/// Imports a validated document (names, sizes and list ids checked by the caller) into the client: every rule
/// checked first, then everything in one transaction, or nothing.
pub async fn import(
    db: &mut Client,
    doc: &ContentDocument,
    privacy: &Privacy,
) -> Result<Imported, DataError> {
    let schema = Schema::load(db).await?;
    check_rules(doc, &schema, privacy)?;
    let tx = db.transaction().await?;
    templates::lock_local_names(&tx).await?;
    let clashes = clashes(&tx, doc).await?;
    if !clashes.is_empty() {
        return Err(DataError::NamesTaken(clashes));
    }
    let mut ids = HashMap::with_capacity(doc.lists.len());
    let mut created_lists = Vec::with_capacity(doc.lists.len());
    for list in &doc.lists {
        let created = lists::create(&tx, &list.name, list.description.as_deref()).await?;
        ids.insert(list.id, created.id);
        created_lists.push((list.id, created));
    }
    let mut created_groups = Vec::with_capacity(doc.target_groups.len());
    for group in &doc.target_groups {
        created_groups
            .push(target_groups::insert(&tx, &group.name, &remap(&group.rule, &ids)).await?);
    }
    let mut created_templates = Vec::with_capacity(doc.templates.len());
    for template in &doc.templates {
        let content = TemplateContent {
            name: template.name.clone(),
            subject: template.subject.clone(),
            html_body: template.html_body.clone(),
            text_body: template.text_body.clone(),
        };
        created_templates.push(templates::create_local(&tx, &content).await?);
    }
    tx.commit().await?;
    Ok(Imported {
        lists: created_lists,
        target_groups: created_groups,
        templates: created_templates,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn list_ids_are_remapped_at_any_depth_and_nothing_else_changes() {
        let ids = HashMap::from([(3, 41), (7, 42)]);
        let rule = json!({"all": [
            {"list": 3, "status": "active"},
            {"not": {"any": [{"list": 7}, {"field": "list", "op": "eq", "value": 3}]}}
        ]});
        assert_eq!(
            remap(&rule, &ids),
            json!({"all": [
                {"list": 41, "status": "active"},
                {"not": {"any": [{"list": 42}, {"field": "list", "op": "eq", "value": 3}]}}
            ]})
        );
    }
}
