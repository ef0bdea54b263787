//! A client's state is the same everywhere at once: what the API has reported is what the data plane does, in
//! this process and in a second one on the same control plane. And the failure paths around it: an archive path
//! that cannot be written during a delete.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{error_code, next_id, spawn_app, spawn_app_with, superuser};
use mandant::server::RunOptions;

/// Polls `GET /v1/clients/{slug}` until `status`, as a script or the console does.
async fn poll_status(app: &crate::helpers::TestApp, slug: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let client = app.client_json(slug).await;
        if client["status"] == status {
            return;
        }
        assert!(Instant::now() < deadline, "{slug} never became {status}: {client}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_data_call_right_after_the_api_reports_active_succeeds_for_several_clients_in_a_row() {
    let app = spawn_app().await;
    for i in 0..4 {
        let slug = format!("fresh-{}-{i}", next_id());
        app.create_client(&slug).await;
        // The polling itself passes the access check, which looks the client up while it is provisioning.
        poll_status(&app, &slug, "active").await;
        let created = app
            .post_json(
                &format!("/v1/clients/{slug}/recipients"),
                &json!({"email": format!("first{i}@example.org")}),
            )
            .await;
        assert_eq!(
            created.status(),
            StatusCode::CREATED,
            "{slug}: {}",
            created.text().await.unwrap_or_default()
        );
    }
}

#[tokio::test]
async fn a_second_process_refuses_a_suspended_client_on_the_first_request_after_the_suspension() {
    let first = spawn_app().await;
    let second = first.second_process(RunOptions::default()).await;
    let slug = format!("twoproc-{}", next_id());
    first.create_active_client(&slug).await;
    let recipients = format!("/v1/clients/{slug}/recipients");

    // The second process serves the client (its route cache and pool are warm).
    for _ in 0..3 {
        assert_eq!(second.get(&recipients).await.status(), StatusCode::OK);
    }
    let suspended = first.post(&format!("/v1/clients/{slug}/suspend")).await;
    assert_eq!(suspended.status(), StatusCode::OK);
    let refused = second.get(&recipients).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(refused).await, "client_not_active");

    // And back: the second process serves it on the first request after the resumption.
    let resumed = first.post(&format!("/v1/clients/{slug}/resume")).await;
    assert_eq!(resumed.status(), StatusCode::OK);
    let served = second.get(&recipients).await;
    assert_eq!(served.status(), StatusCode::OK);
    // A deletion through the second process is refused by the first at once.
    let deleted = second.delete(&format!("/v1/clients/{slug}")).await;
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let gone = first.get(&recipients).await;
    assert_eq!(gone.status(), StatusCode::CONFLICT);
    drop(second);
}

#[tokio::test]
async fn a_token_revoked_through_one_process_is_refused_by_the_other() {
    let first = spawn_app().await;
    let second = first.second_process(RunOptions::default()).await;
    let minted = first
        .post_json("/v1/users/admin/tokens", &json!({"name": "twoproc"}))
        .await;
    assert_eq!(minted.status(), StatusCode::CREATED);
    let minted: serde_json::Value = minted.json().await.unwrap();
    let token = minted["token"].as_str().unwrap().to_owned();
    let id = minted["id"].as_str().unwrap().to_owned();
    let with_token = crate::helpers::http_client(Some(&token));
    let me = second.url("/v1/me");
    // Cached by the second process.
    assert_eq!(with_token.get(&me).send().await.unwrap().status(), StatusCode::OK);
    let revoked = first.delete(&format!("/v1/users/admin/tokens/{id}")).await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = with_token.get(&me).send().await.unwrap().status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(Instant::now() < deadline, "the second process still accepts a revoked token");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(second);
}

#[tokio::test]
async fn jobs_split_between_two_processes_and_each_client_is_provisioned_once() {
    let first = spawn_app().await;
    let second = first.second_process(RunOptions::default()).await;
    let mut slugs = Vec::new();
    for i in 0..8 {
        let slug = format!("split-{}-{i}", next_id());
        // Alternate the process that takes the request.
        let app = if i % 2 == 0 { &first } else { &second };
        app.create_client(&slug).await;
        slugs.push(slug);
    }
    for slug in &slugs {
        poll_status(&first, slug, "active").await;
    }
    let control = first.control().await;
    let row = control
        .query_one(
            "SELECT count(*), count(DISTINCT regexp_replace(j.locked_by, '/[^/]*$', '')), max(j.attempts)
             FROM jobs j JOIN clients c ON c.id = j.client_id
             WHERE j.kind = 'provision_client' AND j.status = 'succeeded' AND c.kind = 'sub'",
            &[],
        )
        .await
        .unwrap();
    let (jobs, slots, attempts): (i64, i64, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(jobs, 8, "eight clients, each provisioned once");
    assert_eq!(attempts, 1);
    let claimers: Vec<String> = control
        .query("SELECT DISTINCT locked_by FROM jobs", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect();
    assert_eq!(slots, 2, "two processes, two worker slots of one identity: {claimers:?}");
    drop(second);
}

#[tokio::test]
async fn an_unwritable_archive_path_fails_the_delete_with_a_clear_error_and_keeps_the_database() {
    let blocker = std::env::temp_dir().join(format!("mandant-archive-file-{}", next_id()));
    std::fs::write(&blocker, b"not a directory").unwrap();
    let app = spawn_app_with(&[(
        "MANDANT__TENANTS__ARCHIVE_DIR",
        blocker.display().to_string(),
    )])
    .await;
    let slug = format!("noarchive-{}", next_id());
    let client = app.create_active_client(&slug).await;
    let id = client["id"].as_str().unwrap().to_owned();
    let database = app
        .state
        .targets()
        .names(uuid::Uuid::parse_str(&id).unwrap())
        .database;
    let deleting = app
        .delete(&format!("/v1/clients/{slug}?archive=true"))
        .await;
    assert_eq!(deleting.status(), StatusCode::ACCEPTED);
    let operation = deleting.json::<serde_json::Value>().await.unwrap()["operation"]
        .as_str()
        .unwrap()
        .to_owned();
    // It fails, says why, and is retried.
    let deadline = Instant::now() + Duration::from_secs(60);
    let op = loop {
        let op: serde_json::Value = app
            .get(&format!("/v1/operations/{operation}"))
            .await
            .json()
            .await
            .unwrap();
        if op["attempts"].as_i64().unwrap_or(0) >= 2 && op["last_error"].is_string() {
            break op;
        }
        assert!(Instant::now() < deadline, "the delete was not retried: {op}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = op["last_error"].as_str().unwrap();
    assert!(error.contains("archiving failed"), "{error}");
    assert_ne!(op["status"], "succeeded");
    // The database is never dropped without its archive.
    let admin = superuser("postgres").await;
    let exists: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&database],
        )
        .await
        .unwrap()
        .get(0);
    assert!(exists, "the database was dropped without its archive");
    assert_eq!(app.client_json(&slug).await["status"], "deleting");
    let _ = std::fs::remove_file(&blocker);
}
