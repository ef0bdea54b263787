//! `/v1/clients/{slug}/recipients`: the first data-plane resource, routed to the client's own database.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{error_code, spawn_app, superuser};

#[tokio::test]
async fn recipients_are_created_read_changed_and_deleted_in_the_clients_own_database() {
    let app = spawn_app().await;
    let client = app.create_active_client("shop").await;
    let created = app
        .post_json(
            "/v1/clients/shop/recipients",
            &json!({"email": " Anna@Example.org ", "first_name": "Anna", "gender": "female"}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let anna: serde_json::Value = created.json().await.unwrap();
    assert_eq!(anna["email"], "Anna@Example.org");
    assert_eq!(
        location,
        format!("/v1/clients/shop/recipients/{}", anna["id"])
    );

    // The row is in the client's database, nowhere else.
    let count: i64 = superuser(client["database"].as_str().unwrap())
        .await
        .query_one(
            "SELECT count(*) FROM recipients WHERE email = 'Anna@Example.org'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);

    let fetched: serde_json::Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(fetched, anna);

    let changed = app
        .patch_json(&location, &json!({"last_name": "Berg", "gender": null}))
        .await;
    assert_eq!(changed.status(), StatusCode::OK);
    let changed: serde_json::Value = changed.json().await.unwrap();
    assert_eq!(changed["last_name"], "Berg");
    assert_eq!(changed["first_name"], "Anna", "absent fields stay");
    assert!(changed["gender"].is_null(), "null clears");

    let duplicate = app
        .post_json(
            "/v1/clients/shop/recipients",
            &json!({"email": "anna@example.ORG"}),
        )
        .await;
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(duplicate).await, "email_taken");

    assert_eq!(app.delete(&location).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.get(&location).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&location).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn recipients_list_by_keyset_pages_and_equality_filters() {
    let app = spawn_app().await;
    app.create_active_client("list").await;
    for i in 0..5 {
        let body = json!({"email": format!("r{i}@example.org"), "last_name": if i % 2 == 0 { "Even" } else { "Odd" }});
        assert_eq!(
            app.post_json("/v1/clients/list/recipients", &body)
                .await
                .status(),
            StatusCode::CREATED
        );
    }
    let mut emails = Vec::new();
    let mut path = "/v1/clients/list/recipients?limit=2".to_owned();
    loop {
        let page: serde_json::Value = app.get(&path).await.json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            emails.push(item["email"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/clients/list/recipients?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        emails,
        [
            "r0@example.org",
            "r1@example.org",
            "r2@example.org",
            "r3@example.org",
            "r4@example.org"
        ]
    );

    let odd: serde_json::Value = app
        .get("/v1/clients/list/recipients?last_name=Odd")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(odd["items"].as_array().unwrap().len(), 2);
    let one: serde_json::Value = app
        .get("/v1/clients/list/recipients?email=R3@EXAMPLE.org")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["items"][0]["email"], "r3@example.org");
}

#[tokio::test]
async fn bad_recipient_input_is_a_clear_4xx_and_writes_nothing() {
    let app = spawn_app().await;
    let client = app.create_active_client("strict").await;
    for (body, code) in [
        (json!({"email": "not-an-address"}), "validation_failed"),
        (
            json!({"email": "a@b.c", "first_name": "x".repeat(256)}),
            "validation_failed",
        ),
        (
            json!({"email": "a@b.c", "first_name": "bell\u{7}"}),
            "validation_failed",
        ),
        (json!({"email": "a@b.c", "city": "Berlin"}), "invalid_field"),
        (json!({"first_name": "no e-mail"}), "invalid_body"),
        (
            json!({"email": "x'); DROP TABLE recipients; --@evil.org"}),
            "validation_failed",
        ),
    ] {
        let response = app.post_json("/v1/clients/strict/recipients", &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_code(response).await, code, "{body}");
    }
    let kept: serde_json::Value = app
        .post_json(
            "/v1/clients/strict/recipients",
            &json!({"email": "kept@example.org"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let other: serde_json::Value = app
        .post_json(
            "/v1/clients/strict/recipients",
            &json!({"email": "other@example.org"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/v1/clients/strict/recipients/{}", kept["id"]);
    for (body, status, code) in [
        (
            json!({"email": "nope"}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"city": "Berlin"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            json!({"last_name": "y".repeat(256)}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"email": "OTHER@example.org"}),
            StatusCode::CONFLICT,
            "email_taken",
        ),
    ] {
        let response = app.patch_json(&path, &body).await;
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(error_code(response).await, code, "{body}");
    }
    let unchanged: serde_json::Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(unchanged, kept, "a refused change changes nothing");
    app.delete(&path).await;
    app.delete(&format!("/v1/clients/strict/recipients/{}", other["id"]))
        .await;
    for path in [
        "/v1/clients/strict/recipients/abc",
        "/v1/clients/strict/recipients/-1",
        "/v1/clients/strict/recipients/99999",
        "/v1/clients/nobody/recipients/1",
        "/v1/clients/NOT_A_SLUG/recipients",
    ] {
        assert_eq!(
            app.get(path).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    for path in [
        "/v1/clients/strict/recipients?limit=0",
        "/v1/clients/strict/recipients?cursor=zz",
        "/v1/clients/strict/recipients?city=Berlin",
    ] {
        assert_eq!(
            app.get(path).await.status(),
            StatusCode::BAD_REQUEST,
            "{path}"
        );
    }
    let rows: i64 = superuser(client["database"].as_str().unwrap())
        .await
        .query_one("SELECT count(*) FROM recipients", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn a_suspended_client_is_refused_with_409_and_served_again_after_resume() {
    let app = spawn_app().await;
    app.create_active_client("paused").await;
    assert_eq!(
        app.post_json("/v1/clients/paused/recipients", &json!({"email": "a@b.cd"}))
            .await
            .status(),
        StatusCode::CREATED
    );
    assert!(
        app.post("/v1/clients/paused/suspend")
            .await
            .status()
            .is_success()
    );
    let refused = app.get("/v1/clients/paused/recipients").await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(refused).await, "client_not_active");
    assert!(
        app.post("/v1/clients/paused/resume")
            .await
            .status()
            .is_success()
    );
    // The role gets LOGIN back through the access job; the first requests may race it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let response = app.get("/v1/clients/paused/recipients").await;
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not served after resume"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_client_whose_database_is_gone_gets_a_fast_503_and_others_are_served() {
    let app = spawn_app().await;
    let broken = app.create_active_client("broken").await;
    app.create_active_client("fine").await;
    superuser("postgres")
        .await
        .batch_execute(&format!(
            "DROP DATABASE \"{}\" WITH (FORCE)",
            broken["database"].as_str().unwrap()
        ))
        .await
        .unwrap();
    let response = app.get("/v1/clients/broken/recipients").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "tenant_unavailable");
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(
            app.get("/v1/clients/broken/recipients").await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "fails fast"
    );
    assert_eq!(
        app.get("/v1/clients/fine/recipients").await.status(),
        StatusCode::OK
    );
}
