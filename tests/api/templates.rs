//! Master templates and the sync worker: versions reach every client, overrides are never clobbered, a down
//! tenant catches up by itself, stale or repeated deliveries change nothing, bad input is a 4xx.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, spawn_app};

fn template(name: &str, text: &str) -> Value {
    json!({"name": name, "subject": format!("About {name}"), "html_body": format!("<p>{text}</p>"), "text_body": text})
}

/// Waits until every client in `GET /v1/templates/{id}/sync` satisfies `done`.
pub async fn wait_for_sync(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report: Value = app
            .get(&format!("/v1/templates/{id}/sync"))
            .await
            .json()
            .await
            .unwrap();
        if report["clients"]
            .as_array()
            .is_some_and(|c| !c.is_empty() && c.iter().all(&done))
        {
            return report;
        }
        assert!(Instant::now() < deadline, "sync never finished: {report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client<'a>(report: &'a Value, slug: &str) -> &'a Value {
    report["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client"] == slug)
        .unwrap()
}

async fn copy(app: &TestApp, slug: &str, id: &str) -> Value {
    app.get(&format!("/v1/clients/{slug}/templates/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn versions_reach_every_client_and_an_override_is_kept_until_it_is_reverted() {
    let app = spawn_app().await;
    for slug in ["shop-a", "shop-b", "custom"] {
        app.create_active_client(slug).await;
    }
    let created = app
        .post_json("/v1/templates", &template("Welcome", "Hello v1"))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["version"], 1);
    wait_for_sync(&app, &id, |c| {
        c["status"] == "synced" && c["synced_version"] == 1
    })
    .await;
    for slug in ["shop-a", "shop-b", "custom"] {
        let copy = copy(&app, slug, &id).await;
        assert_eq!(copy["origin"], "inherited");
        assert_eq!(copy["text_body"], "Hello v1");
        assert_eq!(copy["master_version"], 1);
    }

    // One client overrides its copy; the master publishes v2.
    let overridden = app
        .send(
            Method::PUT,
            &format!("/v1/clients/custom/templates/{id}"),
            Some(&template("Welcome", "Our own words")),
        )
        .await;
    assert_eq!(overridden.status(), StatusCode::OK);
    let v2 = app
        .send(
            Method::PUT,
            &format!("/v1/templates/{id}"),
            Some(&template("Welcome", "Hello v2")),
        )
        .await;
    assert_eq!(v2.status(), StatusCode::OK);
    let v2: Value = v2.json().await.unwrap();
    assert_eq!(v2["version"], 2);
    let report = wait_for_sync(&app, &id, |c| {
        (c["client"] == "custom" && c["status"] == "overridden")
            || (c["status"] == "synced" && c["synced_version"] == 2)
    })
    .await;
    assert_eq!(client(&report, "custom")["synced_version"], 1);
    assert_eq!(copy(&app, "shop-a", &id).await["text_body"], "Hello v2");
    let kept = copy(&app, "custom", &id).await;
    assert_eq!(kept["text_body"], "Our own words");
    assert_eq!(kept["overridden"], true);
    assert_eq!(kept["available_version"], 2, "v2 is recorded as available");

    // Revert: the copy takes v2.
    let reverted = app
        .delete(&format!("/v1/clients/custom/templates/{id}/override"))
        .await;
    assert_eq!(reverted.status(), StatusCode::OK);
    let reverted: Value = reverted.json().await.unwrap();
    assert_eq!(reverted["text_body"], "Hello v2");
    assert_eq!(reverted["overridden"], false);
    let report: Value = app
        .get(&format!("/v1/templates/{id}/sync"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(client(&report, "custom")["status"], "synced");
    assert_eq!(client(&report, "custom")["synced_version"], 2);

    // Local templates belong to the client alone; a new client starts with the master's templates.
    let local = app
        .post_json(
            "/v1/clients/shop-a/templates",
            &template("Sale", "Only here"),
        )
        .await;
    assert_eq!(local.status(), StatusCode::CREATED);
    let local: Value = local.json().await.unwrap();
    assert_eq!(local["origin"], "local");
    let b: Value = app
        .get("/v1/clients/shop-b/templates")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["items"].as_array().unwrap().len(), 1);
    app.create_active_client("newcomer").await;
    assert_eq!(copy(&app, "newcomer", &id).await["master_version"], 2);

    // Retracting removes the copies (not the client's own templates).
    assert_eq!(
        app.delete(&format!("/v1/templates/{id}")).await.status(),
        StatusCode::ACCEPTED
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while app
        .get(&format!("/v1/clients/shop-b/templates/{id}"))
        .await
        .status()
        != StatusCode::NOT_FOUND
    {
        assert!(Instant::now() < deadline, "the copy stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.get(&format!(
            "/v1/clients/shop-a/templates/{}",
            local["id"].as_str().unwrap()
        ))
        .await
        .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_tenant_down_during_publish_is_synced_when_it_returns_and_deliveries_never_go_backwards()
{
    let app = spawn_app().await;
    app.create_active_client("online").await;
    app.create_active_client("offline").await;
    // Existing pooled connections of the tenant end too.
    app.take_down("offline").await;

    let created: Value = app
        .post_json("/v1/templates", &template("Notice", "v1"))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let report = wait_for_sync(&app, &id, |c| {
        (c["client"] == "offline" && c["status"] == "failed")
            || (c["client"] != "offline" && c["status"] == "synced")
    })
    .await;
    assert!(
        client(&report, "offline")["last_error"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{report}"
    );
    assert_eq!(copy(&app, "online", &id).await["text_body"], "v1");

    app.bring_up("offline").await;
    wait_for_sync(&app, &id, |c| c["status"] == "synced").await;
    assert_eq!(copy(&app, "offline", &id).await["text_body"], "v1");

    // A stale or repeated delivery changes nothing: sync the old content again directly.
    let masters_v1 = app.state.control().desired_templates().await.unwrap();
    app.send(
        Method::PUT,
        &format!("/v1/templates/{id}"),
        Some(&template("Notice", "v2")),
    )
    .await;
    wait_for_sync(&app, &id, |c| c["synced_version"] == 2).await;
    let before = copy(&app, "online", &id).await;
    let route = app.route("online").await;
    let router = mandant::tenant::pool::TenantPools::new(Default::default());
    let mut conn = router.acquire(&route).await.unwrap();
    let stale = mandant::data::templates::sync(conn.client_mut(), &masters_v1)
        .await
        .unwrap();
    assert!(!stale[0].applied);
    let masters_v2 = app.state.control().desired_templates().await.unwrap();
    let again = mandant::data::templates::sync(conn.client_mut(), &masters_v2)
        .await
        .unwrap();
    assert!(!again[0].applied);
    let after = copy(&app, "online", &id).await;
    assert_eq!(after["text_body"], "v2");
    assert_eq!(after["updated_at"], before["updated_at"]);
}

#[tokio::test]
async fn bad_template_input_is_refused() {
    let app = spawn_app().await;
    app.create_active_client("picky").await;
    let big = "x".repeat(1024 * 1024 + 1);
    for (body, status, code) in [
        (
            template("", "x"),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"name": "A", "subject": "", "text_body": "x"}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"name": "A", "subject": "S"}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"name": "x".repeat(201), "subject": "S", "text_body": "x"}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"name": "A", "subject": "S", "text_body": big}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            json!({"name": "A", "subject": "S", "text_body": "x", "extra": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ] {
        let response = app.post_json("/v1/templates", &body).await;
        assert_eq!(response.status(), status);
        assert_eq!(error_code(response).await, code);
    }
    let unknown = "6f1c2a3b-0000-4000-8000-000000000000";
    for (method, path) in [
        (Method::GET, format!("/v1/templates/{unknown}")),
        (Method::GET, format!("/v1/templates/{unknown}/sync")),
        (Method::PUT, format!("/v1/templates/{unknown}")),
        (Method::GET, "/v1/templates/not-a-uuid".to_owned()),
        (
            Method::GET,
            format!("/v1/clients/picky/templates/{unknown}"),
        ),
        (
            Method::DELETE,
            format!("/v1/clients/picky/templates/{unknown}/override"),
        ),
    ] {
        let response = app
            .send(method.clone(), &path, Some(&template("A", "x")))
            .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    // A local template has no master to revert to; an inherited one that is not overridden neither.
    let local: Value = app
        .post_json("/v1/clients/picky/templates", &template("Mine", "x"))
        .await
        .json()
        .await
        .unwrap();
    let revert = app
        .delete(&format!(
            "/v1/clients/picky/templates/{}/override",
            local["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(revert.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(revert).await, "local_template");
}

#[tokio::test]
async fn the_cli_shows_a_templates_sync_state_per_client() {
    let app = spawn_app().await;
    app.create_active_client("cli-shop").await;
    let created: Value = app
        .post_json("/v1/templates", &template("Terminal", "x"))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    wait_for_sync(&app, &id, |c| c["status"] == "synced").await;
    let cwd = crate::helpers::TestDir::new("templates-cwd");
    let out = app
        .command(cwd.path())
        .args(["templates", "sync", &id, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["version"], 1);
    assert_eq!(client(&report, "cli-shop")["status"], "synced");
    let table = app
        .command(cwd.path())
        .args(["templates", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("Terminal") && text.contains("SYNCED"),
        "{text}"
    );
}
