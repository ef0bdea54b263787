//! Hostile input: the NUL character (U+0000). PostgreSQL cannot store it in text, so every input that could carry
//! one (a JSON body, a path segment, a query string, an import) is refused with a 400 in the error shape before
//! anything runs, on the control plane and in tenant databases alike, and nothing changes.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// Asserts a 400 `code` in the error shape and returns the message.
async fn assert_refused(response: reqwest::Response, code: &str) -> String {
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("NUL"), "{body}");
    message.to_owned()
}

async fn tenant_count(app: &TestApp, slug: &str, sql: &str) -> i64 {
    app.tenant_db(slug)
        .await
        .query_one(sql, &[])
        .await
        .expect("tenant query")
        .get(0)
}

/// Audit entries of user creations with their outcome: the refused attempt is recorded as failed (400), not as
/// a change.
async fn audited_user_creations(app: &TestApp) -> Vec<(String, i16)> {
    app.control()
        .await
        .query(
            "SELECT outcome, status FROM audit_log WHERE action = 'POST /v1/users'",
            &[],
        )
        .await
        .expect("audit query")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test]
async fn create_user_returns_400_when_a_role_name_contains_nul() {
    let app = spawn_app().await;
    let users = app.control_i64("SELECT count(*) FROM users").await;

    let response = app
        .post_json(
            "/v1/users",
            &json!({"username": "nora", "roles": ["edi\u{0}tor"]}),
        )
        .await;

    assert_refused(response, "nul_character").await;
    assert_eq!(app.control_i64("SELECT count(*) FROM users").await, users);
    assert_eq!(
        audited_user_creations(&app).await,
        vec![("failed".to_owned(), 400)]
    );
    let missing = app.get("/v1/users/nora").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn create_role_returns_400_when_its_description_contains_nul_even_as_a_key() {
    let app = spawn_app().await;
    let roles = app.control_i64("SELECT count(*) FROM roles").await;

    for body in [
        json!({"name": "nul-role", "description": "a\u{0}b", "permissions": ["users.read"]}),
        json!({"name": "nul-role", "permissions": ["users.read"], "x\u{0}": 1}),
    ] {
        let response = app.post_json("/v1/roles", &body).await;
        assert_refused(response, "nul_character").await;
    }
    assert_eq!(app.control_i64("SELECT count(*) FROM roles").await, roles);
}

#[tokio::test]
async fn a_path_segment_with_nul_returns_400_and_changes_nothing() {
    let app = spawn_app().await;
    let users = app.control_i64("SELECT count(*) FROM users").await;

    let get = app.get("/v1/users/ad%00min").await;
    assert_refused(get, "nul_character").await;
    let delete = app.delete("/v1/roles/edi%00tor").await;
    assert_refused(delete, "nul_character").await;
    let patch = app
        .patch_json("/v1/users/ad%00min", &json!({"display_name": "x"}))
        .await;
    assert_refused(patch, "nul_character").await;

    assert_eq!(app.control_i64("SELECT count(*) FROM users").await, users);
}

#[tokio::test]
async fn list_clients_returns_400_when_a_query_parameter_contains_nul() {
    let app = spawn_app().await;

    let response = app.get("/v1/clients?parent=mas%00ter").await;

    assert_refused(response, "nul_character").await;
}

#[tokio::test]
async fn list_users_returns_400_when_the_cursor_decodes_to_a_nul() {
    let app = spawn_app().await;

    // A cursor is the hex encoding of a position: `00` would be a username of one NUL character.
    for cursor in ["00", "616400"] {
        let response = app.get(&format!("/v1/users?cursor={cursor}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_cursor", "{body}");
    }
}

#[tokio::test]
async fn create_mailing_list_returns_400_when_its_name_contains_nul() {
    let app = spawn_app().await;
    app.create_active_client("nulls").await;
    let lists = "SELECT count(*) FROM mailing_lists";
    let before = tenant_count(&app, "nulls", lists).await;

    let response = app
        .post_json(
            "/v1/clients/nulls/mailing-lists",
            &json!({"name": "News\u{0}letter"}),
        )
        .await;

    assert_refused(response, "nul_character").await;
    assert_eq!(tenant_count(&app, "nulls", lists).await, before);
}

#[tokio::test]
async fn create_recipient_returns_400_when_a_field_value_contains_nul() {
    let app = spawn_app().await;
    app.create_active_client("nullr").await;
    let field = app
        .post_json(
            "/v1/clients/nullr/fields",
            &json!({"name": "city", "type": "text"}),
        )
        .await;
    assert_eq!(field.status(), StatusCode::CREATED);
    let recipients = "SELECT count(*) FROM recipients";

    for body in [
        json!({"email": "anna@example.org", "city": "Ber\u{0}lin"}),
        json!({"email": "anna@example.org", "first_name": "\u{0}"}),
    ] {
        let response = app.post_json("/v1/clients/nullr/recipients", &body).await;
        assert_refused(response, "nul_character").await;
    }
    assert_eq!(tenant_count(&app, "nullr", recipients).await, 0);

    // A recipient that exists keeps its values when a PATCH carries a NUL.
    let created: Value = app
        .post_json(
            "/v1/clients/nullr/recipients",
            &json!({"email": "anna@example.org", "city": "Berlin"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/v1/clients/nullr/recipients/{}", created["id"]);
    let patch = app.patch_json(&path, &json!({"city": "Pa\u{0}ris"})).await;
    assert_refused(patch, "nul_character").await;
    let now: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(now["city"], "Berlin");
}

#[tokio::test]
async fn list_recipients_returns_400_when_a_filter_value_contains_nul() {
    let app = spawn_app().await;
    app.create_active_client("nullq").await;

    for query in ["first_name=An%00na", "email=a%00@example.org", "cursor=%00"] {
        let response = app
            .get(&format!("/v1/clients/nullq/recipients?{query}"))
            .await;
        assert_refused(response, "nul_character").await;
    }
}

#[tokio::test]
async fn imports_return_400_when_a_value_contains_nul_and_import_nothing() {
    let app = spawn_app().await;
    app.create_active_client("nulli").await;
    let import = "/v1/clients/nulli/recipients/import";

    let csv = app
        .post_body(
            import,
            "text/csv",
            "email,first_name\nanna@example.org,An\0na\n",
        )
        .await;
    assert_eq!(csv.status(), StatusCode::BAD_REQUEST);
    let body: Value = csv.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_import", "{body}");

    let ndjson = app
        .post_body(
            import,
            "application/x-ndjson",
            "{\"email\": \"anna@example.org\", \"first_name\": \"An\\u0000na\"}\n",
        )
        .await;
    assert_eq!(ndjson.status(), StatusCode::BAD_REQUEST);
    let body: Value = ndjson.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_import", "{body}");

    assert_eq!(
        tenant_count(&app, "nulli", "SELECT count(*) FROM recipients").await,
        0
    );
}

#[tokio::test]
async fn an_escaped_backslash_before_u0000_is_text_not_a_nul() {
    let app = spawn_app().await;
    app.create_active_client("nullb").await;

    // The JSON text "a\\u0000b" is the seven characters a \ u 0 0 0 0 b.
    let response = app
        .send(
            Method::POST,
            "/v1/clients/nullb/mailing-lists",
            Some(&json!({"name": "a\\u0000b"})),
        )
        .await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let list: Value = response.json().await.unwrap();
    assert_eq!(list["name"], "a\\u0000b");
}
