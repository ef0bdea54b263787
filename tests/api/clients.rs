//! `/v1/clients` and `/v1/operations`: the lifecycle through the API, with the database state behind it.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{cluster, error_code, spawn_app, spawn_app_without_workers, superuser};

async fn database_exists(name: &str) -> bool {
    superuser("postgres")
        .await
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

async fn role_exists(name: &str) -> bool {
    superuser("postgres")
        .await
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until the role's LOGIN attribute is `expected` (the access job runs in the background).
async fn wait_for_login(role: &str, expected: bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let can_login = crate::helpers::role_can_login(role).await;
        if can_login == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{role}: LOGIN never became {expected}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn uuid_of(client: &serde_json::Value) -> uuid::Uuid {
    client["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn create_client_returns_202_with_location_and_becomes_active_with_its_own_database() {
    let app = spawn_app().await;
    let response = app
        .post_json("/v1/clients", &json!({"slug": "acme", "name": "ACME GmbH"}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["location"], "/v1/clients/acme");
    let created: serde_json::Value = response.json().await.unwrap();
    assert_eq!(created["status"], "provisioning");
    assert_eq!(created["parent"], "master");
    let op = app
        .wait_for_operation(created["operation"].as_str().unwrap())
        .await;
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(op["client"], "acme");
    assert_eq!(op["step"], "activate");

    let client: serde_json::Value = app.get("/v1/clients/acme").await.json().await.unwrap();
    assert_eq!(client["status"], "active");
    assert_eq!(client["server"], "local");
    assert_eq!(
        client["schema_version"],
        mandant::tenant::migrate::latest_version()
    );
    let database = client["database"].as_str().unwrap().to_owned();
    // The name derives from the immutable id, never the slug.
    assert!(database.ends_with(&uuid_of(&client).as_simple().to_string()));
    assert!(!database.contains("acme"));

    let tenant = superuser(&database).await;
    let tables: i64 = tenant
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'recipients'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);
    // The tenant role owns its schema objects.
    let owner: String = tenant
        .query_one(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'recipients'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, database);
}

#[tokio::test]
async fn a_tenant_role_logs_in_to_its_own_database_but_is_refused_by_another_tenants() {
    let app = spawn_app().await;
    let a = app.create_active_client("tenant-a").await;
    let b = app.create_active_client("tenant-b").await;
    let record = app.state.control().client_by_id(uuid_of(&a)).await.unwrap();
    let server = app
        .state
        .control()
        .server(record.server_id.unwrap())
        .await
        .unwrap();
    let target_a = app.state.targets().tenant(&server, uuid_of(&a)).unwrap();
    let own = target_a.connect().await.unwrap();
    own.batch_execute("INSERT INTO recipients (email) VALUES ('x@example.org')")
        .await
        .unwrap();

    let foreign = target_a.with_dbname(b["database"].as_str().unwrap());
    let err = foreign.connect().await.unwrap_err();
    // 42501: insufficient_privilege ("permission denied for database").
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err:?}");

    // And a wrong password is refused outright.
    let wrong = target_a.with_credentials(
        target_a.user(),
        mandant::db::Secret::new("not-the-password"),
    );
    assert_eq!(
        wrong.connect().await.unwrap_err().code().map(|c| c.code()),
        Some("28P01")
    );
}

#[tokio::test]
async fn create_client_rejects_bad_input_with_clear_4xx_and_changes_nothing() {
    let app = spawn_app_without_workers().await;
    app.create_client("taken").await;
    let before = app.control_i64("SELECT count(*) FROM clients").await;
    let jobs_before = app.control_i64("SELECT count(*) FROM jobs").await;

    let cases: Vec<(serde_json::Value, StatusCode, &str)> = vec![
        (
            json!({"slug": "Bad Slug", "name": "x"}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"slug": "a", "name": "x"}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"slug": "x'; DROP TABLE clients; --", "name": "x"}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"slug": "fine", "name": ""}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"slug": "fine", "name": "x".repeat(201)}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"slug": "fine", "name": "x", "color": "red"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"slug": "fine"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"slug": 42, "name": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"slug": "taken", "name": "x"}),
            StatusCode::CONFLICT,
            "slug_taken",
        ),
        (
            json!({"slug": "fine", "name": "x", "parent": "nobody"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_parent",
        ),
        (
            json!({"slug": "fine", "name": "x", "parent": "NOT A SLUG"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_parent",
        ),
        // The parent exists but is still provisioning (no worker runs in this app).
        (
            json!({"slug": "fine", "name": "x", "parent": "taken"}),
            StatusCode::CONFLICT,
            "parent_not_active",
        ),
    ];
    for (body, status, code) in cases {
        let response = app.post_json("/v1/clients", &body).await;
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(error_code(response).await, code, "{body}");
    }

    let not_json = app
        .client
        .post(app.url("/v1/clients"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let no_type = app
        .client
        .post(app.url("/v1/clients"))
        .body(r#"{"slug":"fine","name":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = app
        .client
        .post(app.url("/v1/clients"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"slug":"fine","name":"{}"}}"#,
            "x".repeat(app.settings.server.body_limit_bytes)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(huge).await, "payload_too_large");

    assert_eq!(
        app.control_i64("SELECT count(*) FROM clients").await,
        before
    );
    assert_eq!(
        app.control_i64("SELECT count(*) FROM jobs").await,
        jobs_before
    );
}

#[tokio::test]
async fn list_filters_by_status_and_parent_and_paginates_with_a_cursor() {
    let app = spawn_app().await;
    for slug in ["aa-one", "bb-two", "cc-three"] {
        app.create_active_client(slug).await;
    }
    app.create_active_client("child").await;
    // A grandchild under aa-one.
    let response = app
        .post_json(
            "/v1/clients",
            &json!({"slug": "aa-kid", "name": "Kid", "parent": "aa-one"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let kid: serde_json::Value = response.json().await.unwrap();
    app.wait_for_operation(kid["operation"].as_str().unwrap())
        .await;
    app.post("/v1/clients/bb-two/suspend").await;

    let mut slugs = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/clients?limit=2&cursor={c}"),
            None => "/v1/clients?limit=2".to_owned(),
        };
        let page: serde_json::Value = app.get(&path).await.json().await.unwrap();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            slugs.push(item["slug"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        slugs,
        ["aa-kid", "aa-one", "bb-two", "cc-three", "child", "master"]
    );
    assert_eq!(pages, 3);

    let suspended: serde_json::Value = app
        .get("/v1/clients?status=suspended")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(suspended["items"].as_array().unwrap().len(), 1);
    assert_eq!(suspended["items"][0]["slug"], "bb-two");
    let kids: serde_json::Value = app
        .get("/v1/clients?parent=aa-one")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(kids["items"][0]["slug"], "aa-kid");
    assert_eq!(kids["items"].as_array().unwrap().len(), 1);

    for bad in [
        "/v1/clients?limit=0",
        "/v1/clients?limit=1001",
        "/v1/clients?limit=abc",
        "/v1/clients?status=gone",
        "/v1/clients?cursor=zz",
        "/v1/clients?colour=red",
    ] {
        let response = app.get(bad).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        error_code(response).await;
    }
}

#[tokio::test]
async fn rename_suspend_resume_follow_the_lifecycle_and_refuse_wrong_states() {
    let app = spawn_app().await;
    app.create_active_client("shop").await;

    let renamed = app
        .patch_json("/v1/clients/shop", &json!({"name": "  The Shop  "}))
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);
    let body: serde_json::Value = renamed.json().await.unwrap();
    assert_eq!(body["name"], "The Shop");
    assert_eq!(body["slug"], "shop");
    let bad = app
        .patch_json("/v1/clients/shop", &json!({"slug": "other"}))
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let resumed_active = app.post("/v1/clients/shop/resume").await;
    assert_eq!(resumed_active.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(resumed_active).await, "invalid_state");

    let suspended = app.post("/v1/clients/shop/suspend").await;
    assert_eq!(suspended.status(), StatusCode::OK);
    let body: serde_json::Value = suspended.json().await.unwrap();
    assert_eq!(body["status"], "suspended");
    assert_eq!(
        app.post("/v1/clients/shop/suspend").await.status(),
        StatusCode::CONFLICT
    );

    // The suspension reaches the database: the tenant role can no longer log in.
    let role = body["database"].as_str().unwrap().to_owned();
    wait_for_login(&role, false).await;

    let resumed = app.post("/v1/clients/shop/resume").await;
    assert_eq!(resumed.status(), StatusCode::OK);
    wait_for_login(&role, true).await;

    let master = app.post("/v1/clients/master/suspend").await;
    assert_eq!(master.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(master).await, "master_client");
    assert_eq!(
        app.post("/v1/clients/nobody/suspend").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/clients/NOT_A_SLUG").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn delete_with_archive_leaves_a_restorable_dump_and_no_database_or_role_and_frees_the_slug() {
    let app = spawn_app().await;
    let first = app.create_active_client("gone").await;
    let database = first["database"].as_str().unwrap().to_owned();
    superuser(&database)
        .await
        .batch_execute("INSERT INTO recipients (email) VALUES ('kept@example.org')")
        .await
        .unwrap();

    let response = app.delete("/v1/clients/gone?archive=true").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "deleting");
    let op = app
        .wait_for_operation(body["operation"].as_str().unwrap())
        .await;
    assert_eq!(op["status"], "succeeded", "{op}");
    let archive = op["result"]["archive"].as_str().unwrap().to_owned();

    assert!(!database_exists(&database).await);
    assert!(!role_exists(&database).await);
    assert_eq!(
        app.get("/v1/clients/gone").await.status(),
        StatusCode::NOT_FOUND
    );
    let tombstones: serde_json::Value = app
        .get("/v1/clients?status=deleted")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tombstones["items"][0]["slug"], "gone");

    // The archive restores into a fresh database with the data in it.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "archives hold personal data");
    let restored = crate::helpers::unique("restored_");
    superuser("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE \"{restored}\""))
        .await
        .unwrap();
    let target = cluster().target(&restored);
    let out = std::process::Command::new(cluster().binaries().tool("pg_restore"))
        .args(["--no-owner", "--no-acl", "--host"])
        .arg(target.host_arg())
        .arg(format!("--port={}", target.port()))
        .args(["--username", target.user(), "--dbname", &restored])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count: i64 = superuser(&restored)
        .await
        .query_one("SELECT count(*) FROM recipients", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    superuser("postgres")
        .await
        .batch_execute(&format!("DROP DATABASE \"{restored}\" WITH (FORCE)"))
        .await
        .unwrap();

    // The slug is free again; the new client gets a new, empty database.
    let second = app.create_active_client("gone").await;
    assert_ne!(second["id"], first["id"]);
    let new_database = second["database"].as_str().unwrap();
    assert_ne!(new_database, database);
    let count: i64 = superuser(new_database)
        .await
        .query_one("SELECT count(*) FROM recipients", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn deleting_twice_is_a_conflict_then_not_found_and_the_master_cannot_be_deleted() {
    let app = spawn_app_without_workers().await;
    let runner = app.runner("w1");
    app.create_client("twice").await;
    app.drain(&runner).await;

    assert_eq!(
        app.delete("/v1/clients/twice").await.status(),
        StatusCode::ACCEPTED
    );
    let again = app.delete("/v1/clients/twice").await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(again).await, "invalid_state");
    app.drain(&runner).await;
    assert_eq!(
        app.delete("/v1/clients/twice").await.status(),
        StatusCode::NOT_FOUND
    );
    // Suspending a deleted client: it no longer exists.
    assert_eq!(
        app.post("/v1/clients/twice/suspend").await.status(),
        StatusCode::NOT_FOUND
    );

    let master = app.delete("/v1/clients/master").await;
    assert_eq!(master.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(master).await, "master_client");
    let bad_query = app.delete("/v1/clients/master?archive=maybe").await;
    assert_eq!(bad_query.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_client_with_live_sub_clients_cannot_be_deleted() {
    let app = spawn_app().await;
    app.create_active_client("parent").await;
    let response = app
        .post_json(
            "/v1/clients",
            &json!({"slug": "kid", "name": "Kid", "parent": "parent"}),
        )
        .await;
    let kid: serde_json::Value = response.json().await.unwrap();
    app.wait_for_operation(kid["operation"].as_str().unwrap())
        .await;
    let refused = app.delete("/v1/clients/parent").await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(refused).await, "client_has_children");
}

#[tokio::test]
async fn operations_with_unknown_or_malformed_ids_are_not_found() {
    let app = spawn_app().await;
    for path in [
        "/v1/operations/00000000-0000-0000-0000-000000000000",
        "/v1/operations/not-a-uuid",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(response).await, "not_found");
    }
}
