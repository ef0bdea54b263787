//! Content between clients (issue #18): a local template copied into other clients, and lists, target groups
//! and local templates exported from one client and imported into another, all or nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::access::{call, user};
use crate::helpers::{TestApp, json_body, spawn_app};
use crate::retention::{list, recipient};

async fn local_template(app: &TestApp, slug: &str, name: &str) -> String {
    let body = json_body(
        app.post_json(
            &format!("/v1/clients/{slug}/templates"),
            &json!({"name": name, "subject": format!("About {name}"), "text_body": format!("{name} in {slug}")}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_copy_with_a_clash_in_one_of_three_targets_copies_into_the_others_and_overwrites_nothing()
{
    let app = spawn_app().await;
    for slug in ["source", "one", "two", "three"] {
        app.create_active_client(slug).await;
    }
    let id = local_template(&app, "source", "Welcome").await;
    let theirs = local_template(&app, "two", "welcome").await;
    let report = json_body(
        app.post_json(
            &format!("/v1/clients/source/templates/{id}/copy"),
            &json!({"to": ["one", "two", "three"]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{report}");
    assert_eq!(results[0]["client"], "one");
    assert_eq!(results[1]["client"], "two");
    assert_eq!(
        results[1]["error"]["code"], "template_name_taken",
        "{report}"
    );
    assert!(results[1].get("id").is_none());
    assert_eq!(results[2]["client"], "three");
    for (slug, row) in [("one", &results[0]), ("three", &results[2])] {
        let copied = json_body(
            app.get(&format!(
                "/v1/clients/{slug}/templates/{}",
                row["id"].as_str().unwrap()
            ))
            .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(copied["origin"], "local");
        assert_eq!(copied["name"], "Welcome");
        assert_eq!(copied["text_body"], "Welcome in source");
        assert_ne!(row["id"], json!(id), "a template of the target's own");
    }
    let kept = json_body(
        app.get(&format!("/v1/clients/two/templates/{theirs}"))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(kept["text_body"], "welcome in two", "not overwritten");
    assert_eq!(
        app.tenant_i64(
            "two",
            "SELECT count(*) FROM templates WHERE origin = 'local'"
        )
        .await,
        1
    );
    // Into the source itself: its own template always clashes.
    let itself = json_body(
        app.post_json(
            &format!("/v1/clients/source/templates/{id}/copy"),
            &json!({"to": ["source"]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(itself["results"][0]["error"]["code"], "template_name_taken");
    // A target that does not exist: 422 before anything is written.
    let before = app
        .tenant_i64("three", "SELECT count(*) FROM templates")
        .await;
    let unknown = app
        .post_json(
            &format!("/v1/clients/source/templates/{id}/copy"),
            &json!({"to": ["three", "nowhere"]}),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.tenant_i64("three", "SELECT count(*) FROM templates")
            .await,
        before
    );
    for bad in [json!({"to": []}), json!({"to": "one"}), json!({})] {
        let response = app
            .post_json(&format!("/v1/clients/source/templates/{id}/copy"), &bad)
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let audit = json_body(app.get("/v1/audit?client=source").await, StatusCode::OK).await;
    let entry = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["action"] == "POST /v1/clients/{slug}/templates/{id}/copy" && e["status"] == 200
        })
        .unwrap();
    assert_eq!(entry["detail"]["refused"], json!(["source"]), "{entry}");
}

#[tokio::test]
async fn an_export_imported_into_another_client_remaps_a_rule_to_the_new_list_id() {
    let app = spawn_app().await;
    app.create_active_client("from").await;
    app.create_active_client("into").await;
    // The target has a list already, so the new list's id differs from the exported one.
    list(&app, "into", "Existing").await;
    list(&app, "into", "Existing too").await;
    let news = list(&app, "from", "News").await;
    let rid = recipient(&app, "from", "kept@example.org").await;
    json_body(
        app.post_json(
            "/v1/clients/from/target-groups",
            &json!({"name": "Readers", "rule": {"all": [{"list": news, "status": "active"}, {"field": "gender", "op": "eq", "value": "f"}]}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    local_template(&app, "from", "Invoice").await;
    let doc = json_body(app.get("/v1/clients/from/export").await, StatusCode::OK).await;
    assert_eq!(doc["format"], 1);
    assert_eq!(
        doc["lists"],
        json!([{"id": news, "name": "News", "description": null}])
    );
    assert_eq!(doc["templates"][0]["name"], "Invoice");
    assert_eq!(doc["target_groups"][0]["name"], "Readers");
    assert!(
        doc["templates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("origin").is_none())
    );
    assert!(
        !doc.to_string().contains("kept@example.org"),
        "no recipients"
    );
    let _ = rid;

    let report = json_body(
        app.post_json("/v1/clients/into/import-content", &doc).await,
        StatusCode::CREATED,
    )
    .await;
    let new_list = report["lists"][0]["id"].as_i64().unwrap();
    assert_eq!(report["lists"][0]["from"], news);
    assert_ne!(new_list, news, "{report}");
    let db = app.tenant_db("into").await;
    let rule: Value = db
        .query_one("SELECT rule FROM target_groups WHERE name = 'Readers'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rule["all"][0]["list"], new_list, "{rule}");
    assert_eq!(
        rule["all"][1],
        json!({"field": "gender", "op": "eq", "value": "f"})
    );
    assert_eq!(
        app.tenant_i64(
            "into",
            "SELECT count(*) FROM templates WHERE origin = 'local' AND name = 'Invoice'"
        )
        .await,
        1
    );
    assert_eq!(
        app.tenant_i64("into", "SELECT count(*) FROM recipients")
            .await,
        0
    );
    // The imported group works in its new home.
    let group = report["target_groups"][0]["id"].as_i64().unwrap();
    json_body(
        app.get(&format!("/v1/clients/into/target-groups/{group}/count"))
            .await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn a_clashing_import_writes_nothing_and_a_rule_on_a_missing_field_is_422_naming_it() {
    let app = spawn_app().await;
    app.create_active_client("target").await;
    list(&app, "target", "News").await;
    local_template(&app, "target", "Invoice").await;
    let doc = json!({
        "format": 1,
        "lists": [{"id": 7, "name": "news", "description": null}, {"id": 8, "name": "Fresh", "description": "new"}],
        "target_groups": [{"name": "Fresh readers", "rule": {"list": 8}}],
        "templates": [{"name": "INVOICE", "subject": "Your invoice", "text_body": "x"}, {"name": "Other", "subject": "s", "text_body": "y"}]
    });
    let snapshot = async || {
        (
            app.tenant_i64("target", "SELECT count(*) FROM mailing_lists")
                .await,
            app.tenant_i64("target", "SELECT count(*) FROM target_groups")
                .await,
            app.tenant_i64("target", "SELECT count(*) FROM templates")
                .await,
        )
    };
    let before = snapshot().await;
    let clash = app
        .post_json("/v1/clients/target/import-content", &doc)
        .await;
    assert_eq!(clash.status(), StatusCode::CONFLICT);
    let body: Value = clash.json().await.unwrap();
    assert_eq!(body["error"]["code"], "name_taken");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("mailing lists: \"News\""), "{message}");
    assert!(message.contains("templates: \"Invoice\""), "{message}");
    assert_eq!(snapshot().await, before, "nothing written");

    let mut missing = doc.clone();
    missing["lists"] = json!([{"id": 8, "name": "Fresh", "description": null}]);
    missing["templates"] = json!([]);
    missing["target_groups"] = json!([{"name": "Berliners", "rule": {"all": [{"list": 8}, {"field": "city", "op": "eq", "value": "Berlin"}]}}]);
    let unfit = app
        .post_json("/v1/clients/target/import-content", &missing)
        .await;
    assert_eq!(unfit.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = unfit.json().await.unwrap();
    assert_eq!(body["error"]["code"], "content_does_not_fit");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("city"),
        "{body}"
    );
    missing["target_groups"] = json!([{"name": "Strays", "rule": {"list": 99}}]);
    let stray = app
        .post_json("/v1/clients/target/import-content", &missing)
        .await;
    assert_eq!(stray.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(snapshot().await, before, "nothing written");

    for bad in [
        json!({"format": 2, "lists": [], "target_groups": [], "templates": []}),
        json!({"format": 1, "lists": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], "target_groups": [], "templates": []}),
        json!({"format": 1, "lists": [{"id": 1, "name": "a"}, {"id": 2, "name": "A"}], "target_groups": [], "templates": []}),
        json!({"format": 1, "lists": [], "target_groups": [], "templates": [{"name": "t", "subject": "s"}]}),
        json!({"format": 1, "lists": []}),
    ] {
        let response = app
            .post_json("/v1/clients/target/import-content", &bad)
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(snapshot().await, before, "nothing written");
}

#[tokio::test]
async fn copy_export_and_import_need_full_access_to_source_and_every_target_and_hide_invisible_clients()
 {
    let app = spawn_app().await;
    for slug in ["mine", "shared", "hidden"] {
        app.create_active_client(slug).await;
    }
    let id = local_template(&app, "mine", "Welcome").await;
    let editor = user(
        &app,
        "content-editor",
        "mine",
        &["client-admin"],
        &[("mine", "full", false), ("shared", "read", false)],
    )
    .await;
    let reader = user(
        &app,
        "content-reader",
        "mine",
        &["client-admin"],
        &[("mine", "read", false)],
    )
    .await;
    let copy = format!("/v1/clients/mine/templates/{id}/copy");
    let templates_in =
        async |slug: &str| app.tenant_i64(slug, "SELECT count(*) FROM templates").await;
    let before = (templates_in("shared").await, templates_in("hidden").await);
    // A target with read access only: 403, and nothing is written anywhere.
    let (status, _, body) = call(
        &app,
        Some(&editor),
        Method::POST,
        &copy,
        Some(json!({"to": ["shared"]})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "read_only_access");
    // An invisible target: the same 422 as one that does not exist.
    let (status, _, body) = call(
        &app,
        Some(&editor),
        Method::POST,
        &copy,
        Some(json!({"to": ["hidden"]})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "unknown_client");
    assert_eq!(
        (templates_in("shared").await, templates_in("hidden").await),
        before
    );
    // Read access to the source: no copy, no import; the export is a read.
    let (status, _, _) = call(
        &app,
        Some(&reader),
        Method::POST,
        &copy,
        Some(json!({"to": ["mine"]})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, doc) = call(
        &app,
        Some(&reader),
        Method::GET,
        "/v1/clients/mine/export",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = call(
        &app,
        Some(&reader),
        Method::POST,
        "/v1/clients/mine/import-content",
        Some(doc.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // No access: invisible.
    for (method, path) in [
        (Method::GET, "/v1/clients/hidden/export".to_owned()),
        (Method::POST, "/v1/clients/hidden/import-content".to_owned()),
        (
            Method::POST,
            format!("/v1/clients/hidden/templates/{id}/copy"),
        ),
    ] {
        let (status, _, _) = call(
            &app,
            Some(&editor),
            method.clone(),
            &path,
            Some(doc.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    // Without the private-data right, an exported rule's personal values are withheld; such a rule does not
    // import.
    json_body(
        app.post_json(
            "/v1/clients/mine/target-groups",
            &json!({"name": "One person", "rule": {"field": "email", "op": "eq", "value": "a@example.org"}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let (_, _, masked) = call(
        &app,
        Some(&reader),
        Method::GET,
        "/v1/clients/mine/export",
        None,
    )
    .await;
    assert_eq!(
        masked["target_groups"][0]["rule"]["value"],
        Value::Null,
        "{masked}"
    );
    assert!(!masked.to_string().contains("a@example.org"));
    let full = json_body(app.get("/v1/clients/mine/export").await, StatusCode::OK).await;
    assert_eq!(full["target_groups"][0]["rule"]["value"], "a@example.org");
}
