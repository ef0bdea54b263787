//! `/v1/clients/{slug}/target-groups`: rule trees compiled to parameterised SQL, evaluated with count and pages;
//! hostile field names and values cannot inject.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, spawn_app};

const GROUPS: &str = "/v1/clients/segments/target-groups";

async fn recipient(app: &TestApp, body: Value) -> i64 {
    let created = app
        .post_json("/v1/clients/segments/recipients", &body)
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    created.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

async fn group(app: &TestApp, name: &str, rule: Value) -> String {
    let created = app
        .post_json(GROUPS, &json!({"name": name, "rule": rule}))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = created.json().await.unwrap();
    assert_eq!(location, format!("{GROUPS}/{}", body["id"]));
    location
}

/// Every member id, following cursors with a small page size.
async fn member_ids(app: &TestApp, group: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut path = format!("{group}/recipients?limit=2");
    loop {
        let page: Value = app.get(&path).await.json().await.unwrap();
        ids.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("{group}/recipients?limit=2&cursor={cursor}"),
            None => return ids,
        }
    }
}

async fn count(app: &TestApp, group: &str) -> i64 {
    let body: Value = app
        .get(&format!("{group}/count"))
        .await
        .json()
        .await
        .unwrap();
    body["count"].as_i64().unwrap()
}

#[tokio::test]
async fn a_rule_tree_with_lists_negation_and_text_operators_selects_exactly_its_recipients() {
    let app = spawn_app().await;
    app.create_active_client("segments").await;
    let anna = recipient(
        &app,
        json!({"email": "anna@example.org", "first_name": "Anna", "gender": "f"}),
    )
    .await;
    let bert = recipient(
        &app,
        json!({"email": "bert@Example.ORG", "first_name": "Bert", "gender": "m"}),
    )
    .await;
    let cleo = recipient(
        &app,
        json!({"email": "cleo@other.net", "first_name": "Cleo"}),
    )
    .await;
    let dora = recipient(
        &app,
        json!({"email": "dora@example.org", "first_name": "Dora", "gender": "f"}),
    )
    .await;
    let list: Value = app
        .post_json(
            "/v1/clients/segments/mailing-lists",
            &json!({"name": "News"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let list_id = list["id"].as_i64().unwrap();
    for (id, status) in [(anna, "active"), (bert, "active"), (dora, "opt_out")] {
        let bound = app
            .send(
                Method::PUT,
                &format!("/v1/clients/segments/mailing-lists/{list_id}/recipients/{id}"),
                Some(&json!({"status": status})),
            )
            .await;
        assert_eq!(bound.status(), StatusCode::OK);
    }

    // example.org addresses (any case), not opted out of the list, and either female or without a gender.
    let g = group(
        &app,
        "Example, reachable",
        json!({"all": [
            {"field": "email", "op": "contains", "value": "@EXAMPLE.org"},
            {"not": {"list": list_id, "status": "opt_out"}},
            {"any": [{"field": "gender", "op": "eq", "value": "f"},
                     {"field": "gender", "op": "is_null"},
                     {"field": "first_name", "op": "in", "value": ["Bert"]}]}
        ]}),
    )
    .await;
    assert_eq!(member_ids(&app, &g).await, vec![anna, bert]);
    assert_eq!(count(&app, &g).await, 2);

    // ne includes recipients without a value; the same via not.
    let ne = group(
        &app,
        "Not male",
        json!({"field": "gender", "op": "ne", "value": "m"}),
    )
    .await;
    let not_eq = group(
        &app,
        "Not male 2",
        json!({"not": {"field": "gender", "op": "eq", "value": "m"}}),
    )
    .await;
    assert_eq!(member_ids(&app, &ne).await, vec![anna, cleo, dora]);
    assert_eq!(member_ids(&app, &not_eq).await, vec![anna, cleo, dora]);

    // Active members of the list, by starts_with and a system field.
    let active = group(
        &app,
        "Active A-B",
        json!({"all": [{"list": list_id, "status": "active"},
                       {"field": "first_name", "op": "starts_with", "value": "a"},
                       {"field": "id", "op": "ge", "value": anna}]}),
    )
    .await;
    assert_eq!(member_ids(&app, &active).await, vec![anna]);

    // Groups are listed, fetched and deleted; the list of groups paginates like every list.
    let listed: Value = app
        .get(&format!("{GROUPS}?limit=10"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 4);
    let fetched: Value = app.get(&g).await.json().await.unwrap();
    assert_eq!(fetched["name"], "Example, reachable");
    assert_eq!(fetched["rule"]["all"][1]["not"]["list"], list_id);
    assert_eq!(app.delete(&g).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.get(&g).await.status(), StatusCode::NOT_FOUND);
    // Deleted already: no row affected is a 404, not a second success.
    assert_eq!(app.delete(&g).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&format!("{g}/count")).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn hostile_field_names_and_values_cannot_inject() {
    let app = spawn_app().await;
    app.create_active_client("segments").await;
    let hostile = "x' OR '1'='1'; DROP TABLE recipients; --";
    let target = recipient(
        &app,
        json!({"email": "hostile@example.org", "last_name": hostile}),
    )
    .await;
    recipient(
        &app,
        json!({"email": "plain@example.org", "last_name": "Plain"}),
    )
    .await;
    recipient(
        &app,
        json!({"email": "pct@example.org", "last_name": "100 percent"}),
    )
    .await;

    // A hostile value is a value: it matches itself literally, and LIKE wildcards are not wildcards.
    let literal = group(
        &app,
        "Literal",
        json!({"field": "last_name", "op": "eq", "value": hostile}),
    )
    .await;
    assert_eq!(member_ids(&app, &literal).await, vec![target]);
    let wildcard = group(
        &app,
        "Percent",
        json!({"field": "last_name", "op": "contains", "value": "%"}),
    )
    .await;
    assert_eq!(count(&app, &wildcard).await, 0);
    let underscore = group(
        &app,
        "Underscore",
        json!({"field": "last_name", "op": "starts_with", "value": "_"}),
    )
    .await;
    assert_eq!(count(&app, &underscore).await, 0);

    // A hostile field name or operator is refused before any SQL runs.
    for rule in [
        json!({"field": "last_name\" IS NOT NULL OR \"id", "op": "eq", "value": "x"}),
        json!({"field": "id; DROP TABLE recipients", "op": "is_null"}),
        json!({"field": "last_name", "op": "= 'x' OR 1=1 --", "value": "x"}),
        json!({"field": "pg_catalog.pg_authid", "op": "not_null"}),
        json!({"all": [{"field": "id", "op": "eq", "value": "1 OR 1=1"}]}),
    ] {
        let refused = app
            .post_json(GROUPS, &json!({"name": "Evil", "rule": rule}))
            .await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{rule}");
        assert_eq!(error_code(refused).await, "invalid_rule");
    }
    let survivors: i64 = app
        .tenant_db("segments")
        .await
        .query_one("SELECT count(*) FROM recipients", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(survivors, 3);
    let listed: Value = app.get(GROUPS).await.json().await.unwrap();
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        3,
        "no Evil group stored"
    );
}

#[tokio::test]
async fn bad_groups_are_refused_with_a_clear_error() {
    let app = spawn_app().await;
    app.create_active_client("segments").await;
    group(&app, "Taken", json!({"field": "id", "op": "not_null"})).await;
    let cases = [
        (
            json!({"name": "taken", "rule": {"field": "id", "op": "not_null"}}),
            StatusCode::CONFLICT,
            "target_group_name_taken",
        ),
        (
            json!({"name": " ", "rule": {"field": "id", "op": "not_null"}}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"name": "Lists", "rule": {"list": 4242}}),
            StatusCode::BAD_REQUEST,
            "invalid_rule",
        ),
        (
            json!({"name": "Type", "rule": {"field": "created_at", "op": "lt", "value": 5}}),
            StatusCode::BAD_REQUEST,
            "invalid_rule",
        ),
        (
            json!({"name": "Shape", "rule": "all"}),
            StatusCode::BAD_REQUEST,
            "invalid_rule",
        ),
        (
            json!({"name": "Missing"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let response = app.post_json(GROUPS, &body).await;
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(error_code(response).await, code, "{body}");
    }
    let unknown_list: Value = app
        .post_json(GROUPS, &json!({"name": "Lists", "rule": {"list": 4242}}))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        unknown_list["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4242")
    );
    assert_eq!(
        app.get(&format!("{GROUPS}/999")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("{GROUPS}/abc")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/clients/nobody/target-groups").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_stored_group_whose_list_was_deleted_answers_409_when_counted_or_listed() {
    let app = spawn_app().await;
    app.create_active_client("segments").await;
    let list: Value = app
        .post_json(
            "/v1/clients/segments/mailing-lists",
            &json!({"name": "Gone soon"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let list_id = list["id"].as_i64().unwrap();
    let location = group(&app, "On the list", json!({"list": list_id})).await;
    assert_eq!(count(&app, &location).await, 0);
    let deleted = app
        .delete(&format!("/v1/clients/segments/mailing-lists/{list_id}"))
        .await;
    assert!(deleted.status().is_success(), "{}", deleted.status());
    for path in ["count", "recipients"] {
        let response = app.get(&format!("{location}/{path}")).await;
        assert_eq!(response.status(), StatusCode::CONFLICT, "{path}");
        assert_eq!(error_code(response).await, "rule_no_longer_fits", "{path}");
    }
    app.shutdown().await.unwrap();
}
