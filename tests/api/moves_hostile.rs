//! Live moves (issue #21) probed as an attacker and as an operator scripting them. Each test names what should
//! hold; the ones that fail on the code they were written against prove a finding of the review (see the commit
//! message of `review-moves`).

use std::time::Duration;

use mandant::provisioning::{Faults, Phase, retired_name};
use mandant::server::RunOptions;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::access::{call, user};
use crate::helpers::{ADMIN_TOKEN, spawn_app, spawn_app_without_workers};
use crate::moves::{create_on_one, database_exists, start_move, two_servers};

/// An error after the switch (here injected when the `switched` phase is recorded; in production any
/// control-plane hiccup in `enqueue_field_reconcile` or the checkpoint) must not take the rollback path: the
/// target is the truth by then, and the rollback drops the target's database.
#[tokio::test]
async fn an_error_after_the_switch_does_not_roll_back_and_drop_the_database_the_client_now_lives_in()
 {
    let app = spawn_app_without_workers().await;
    let (one, two) = two_servers(&app).await;
    let healthy = app.runner("healthy");
    app.drain(&healthy).await;
    create_on_one(&app, "late-fail").await;
    app.drain(&healthy).await;
    let id = app.client_id("late-fail").await;
    let database = app.state.targets().names(id).database;
    one.superuser_on(&database)
        .await
        .batch_execute(
            "INSERT INTO recipients (email) SELECT 'r' || g || '@example.org' FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
    let op = start_move(&app, "late-fail", "two").await;
    let failing = app.runner("failing").with_faults(Faults {
        move_fail_after: Some(Phase::Switched.as_str()),
        ..Faults::default()
    });
    let tick = failing.tick().await.unwrap();
    // Whatever became of that attempt, a healthy worker gets every chance to finish.
    app.expire_leases().await;
    app.control()
        .await
        .execute(
            "UPDATE jobs SET run_after = now() WHERE status = 'queued'",
            &[],
        )
        .await
        .unwrap();
    app.drain(&healthy).await;
    let done = app.wait_for_operation(&op).await;
    let client = app.client_json("late-fail").await;
    assert_eq!(client["server"], "two", "{client}");
    assert!(
        database_exists(&two, &database).await,
        "the client lives on two but its database there was dropped by a rollback after the switch \
         (tick {tick:?}; operation {done})"
    );
    let response = app.get("/v1/clients/late-fail/recipients?limit=1000").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 100, "{body}");
}

/// `POST /v1/servers/{name}/drain` is for anyone with `servers.manage` and full access to the master (not only
/// the built-in master-admin role); the operation it answers must be one that caller can follow.
#[tokio::test]
async fn an_operator_who_may_start_a_drain_can_follow_the_operation_it_returns() {
    let app = spawn_app_without_workers().await;
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "mv-operator", "permissions": ["servers.manage", "clients.read", "clients.manage"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let operator = user(
        &app,
        "mv-op",
        "master",
        &["mv-operator"],
        &[("master", "full", false)],
    )
    .await;
    // Held up: a `none` user's 404 on a move is byte-identical to that of a client that does not exist.
    let response = app
        .post_json("/v1/clients", &json!({"slug": "hidden", "name": "hidden"}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let none = user(&app, "mv-none", "master", &["client-admin"], &[]).await;
    let hidden = call(
        &app,
        Some(&none),
        Method::POST,
        "/v1/clients/hidden/move",
        Some(json!({"server": "local"})),
    )
    .await;
    let missing = call(
        &app,
        Some(&none),
        Method::POST,
        "/v1/clients/nothere/move",
        Some(json!({"server": "local"})),
    )
    .await;
    assert_eq!(hidden.0, StatusCode::NOT_FOUND);
    assert_eq!(
        (hidden.0, hidden.1.clone()),
        (missing.0, missing.1.clone()),
        "{} vs {}",
        hidden.2,
        missing.2
    );

    let (status, _, body) = call(
        &app,
        Some(&operator),
        Method::POST,
        "/v1/servers/local/drain",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let drain = body["operation"].as_str().unwrap().to_owned();
    let (status, _, body) = call(
        &app,
        Some(&operator),
        Method::GET,
        &format!("/v1/operations/{drain}"),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the operator who started the drain cannot see its operation: {body}"
    );
}

/// Deleting a client deletes its data; a copy kept under a retired name on the server it moved off must not
/// outlive the deletion for `tenants.move_retention_days`.
#[tokio::test]
async fn a_deleted_client_leaves_no_copy_of_its_data_on_the_server_it_moved_off() {
    let app = spawn_app().await;
    let (one, _two) = two_servers(&app).await;
    let op = create_on_one(&app, "gone").await;
    assert_eq!(app.wait_for_operation(&op).await["status"], "succeeded");
    let response = app
        .post_json(
            "/v1/clients/gone/recipients",
            &json!({"email": "personal@example.org", "first_name": "Private"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let moved = start_move(&app, "gone", "two").await;
    assert_eq!(app.wait_for_operation(&moved).await["status"], "succeeded");
    let response = app.delete("/v1/clients/gone").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let deleted = app
        .wait_for_operation(body["operation"].as_str().unwrap())
        .await;
    assert_eq!(deleted["status"], "succeeded", "{deleted}");
    app.state.provisioner().sweep_moves().await.unwrap();
    let retired = retired_name(uuid::Uuid::parse_str(&moved).unwrap());
    assert!(
        !database_exists(&one, &retired).await,
        "the deleted client's recipients are still on `one` in {retired}"
    );
}

/// The operator's way to retire a server: drain it (or move its clients), then `DELETE /v1/servers/{name}`.
/// The moves record the server in `retired_databases` (a foreign key): removing the server works at once (never
/// a 500) and forgets the retired databases kept there (they go with the server).
#[tokio::test]
async fn a_server_its_clients_moved_off_can_be_deleted_at_once_and_its_retired_databases_are_forgotten()
 {
    let app = spawn_app().await;
    let (_one, _two) = two_servers(&app).await;
    let op = create_on_one(&app, "leaver").await;
    assert_eq!(app.wait_for_operation(&op).await["status"], "succeeded");
    let moved = start_move(&app, "leaver", "two").await;
    assert_eq!(app.wait_for_operation(&moved).await["status"], "succeeded");
    let response = app.delete("/v1/servers/one").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.control_i64("SELECT count(*) FROM retired_databases")
            .await,
        0
    );
    // The sweep has nothing left to do there.
    app.state.provisioner().sweep_moves().await.unwrap();
}

/// A server that a queued or running move goes to is not empty: removing it is a 409, not a 500 from the
/// `clients.moving_to` foreign key.
#[tokio::test]
async fn deleting_the_server_a_move_is_going_to_is_refused_with_409_not_500() {
    let app = spawn_app_without_workers().await;
    let (_one, _two) = two_servers(&app).await;
    let healthy = app.runner("healthy");
    app.drain(&healthy).await;
    create_on_one(&app, "bound").await;
    app.drain(&healthy).await;
    start_move(&app, "bound", "two").await;
    let response = app.delete("/v1/servers/two").await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// Held up: a second process that served the client from its source serves it from the target after the
/// switch (the notification drops its route and pool).
#[tokio::test]
async fn a_second_process_serves_the_moved_client_from_its_target_after_the_switch() {
    let app = spawn_app().await;
    let second = app.second_process(RunOptions::default()).await;
    let (_one, two) = two_servers(&app).await;
    let op = create_on_one(&app, "twice").await;
    assert_eq!(app.wait_for_operation(&op).await["status"], "succeeded");
    let response = second
        .post_json(
            "/v1/clients/twice/recipients",
            &json!({"email": "before@example.org"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let moved = start_move(&app, "twice", "two").await;
    assert_eq!(app.wait_for_operation(&moved).await["status"], "succeeded");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = second
        .post_json(
            "/v1/clients/twice/recipients",
            &json!({"email": "after@example.org"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = app.client_id("twice").await;
    let target = two
        .superuser_on(&app.state.targets().names(id).database)
        .await;
    let n: i64 = target
        .query_one(
            "SELECT count(*) FROM recipients WHERE email IN ('before@example.org', 'after@example.org')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

/// Held up: a client suspended while its move runs stays suspended on the target (its roles there may not log
/// in), and a resume serves it from the target.
#[tokio::test]
async fn a_client_suspended_mid_move_stays_locked_out_on_the_target_and_resumes_there() {
    let app = spawn_app_without_workers().await;
    let (_one, two) = two_servers(&app).await;
    let healthy = app.runner("healthy");
    app.drain(&healthy).await;
    create_on_one(&app, "paused-mover").await;
    app.drain(&healthy).await;
    let op = start_move(&app, "paused-mover", "two").await;
    let dying = app.runner("dying").with_faults(Faults {
        move_crash_after: Some(Phase::CatchUp.as_str()),
        ..Faults::default()
    });
    dying.tick().await.unwrap();
    let response = app.post("/v1/clients/paused-mover/suspend").await;
    assert_eq!(response.status(), StatusCode::OK);
    app.expire_leases().await;
    app.drain(&healthy).await;
    assert_eq!(app.wait_for_operation(&op).await["status"], "succeeded");
    let client = app.client_json("paused-mover").await;
    assert_eq!(client["server"], "two");
    assert_eq!(client["status"], "suspended");
    let id = app.client_id("paused-mover").await;
    let role = app.state.targets().names(id).role;
    let can_login: bool = two
        .superuser()
        .await
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!can_login);
    let response = app.post("/v1/clients/paused-mover/resume").await;
    assert_eq!(response.status(), StatusCode::OK);
    app.drain(&healthy).await;
    let response = app.get("/v1/clients/paused-mover/recipients?limit=1").await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// An operator scripting "drain, then wait for the operation" when no other server can take the tenants (all
/// paused or full): the drain should end (or at least say why nothing moves) rather than run silently forever.
#[tokio::test]
async fn a_drain_with_nowhere_to_move_its_tenants_ends_and_says_why() {
    let app = spawn_app_without_workers().await;
    let (_one, _two) = two_servers(&app).await;
    let healthy = app.runner("healthy");
    app.drain(&healthy).await;
    create_on_one(&app, "stranded").await;
    app.drain(&healthy).await;
    for name in ["two", "local"] {
        let response = app
            .patch_json(&format!("/v1/servers/{name}"), &json!({"policy": "paused"}))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = app.post("/v1/servers/one/drain").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let drain = body["operation"].as_str().unwrap().to_owned();
    let ran = tokio::time::timeout(Duration::from_secs(20), healthy.tick()).await;
    let op: Value = app
        .get(&format!("/v1/operations/{drain}"))
        .await
        .json()
        .await
        .unwrap();
    let said_why = op["result"]["refused"]
        .as_object()
        .is_some_and(|r| !r.is_empty())
        || op["last_error"].is_string();
    assert!(
        ran.is_ok() || said_why,
        "after 20 s the drain still runs and its operation does not say why nothing moves: {op}"
    );
}
