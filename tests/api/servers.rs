//! Several database servers (issue #20): registration with its checks, placement by capacity and zone, paused and
//! full servers, removal, the access rule, and the admin password kept out of every response, log line and audit
//! entry. TLS is `tls.rs`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::access::{call, user};
use crate::helpers::{
    ADMIN_TOKEN, ExtraServer, TestApp, TestDir, error_code, json_body, spawn_app_without_workers,
};

async fn register(app: &TestApp, body: Value) -> (StatusCode, Value) {
    let (status, _, body) = call(
        app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/servers",
        Some(body),
    )
    .await;
    (status, body)
}

async fn patch(app: &TestApp, name: &str, body: Value) -> Value {
    let response = app.patch_json(&format!("/v1/servers/{name}"), &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Creates a client (not provisioned: these apps run no workers) and returns the server it was placed on, or
/// the error.
async fn place(
    app: &TestApp,
    slug: &str,
    zone: Option<&str>,
) -> Result<String, (StatusCode, Value)> {
    let mut body = json!({"slug": slug, "name": slug});
    if let Some(zone) = zone {
        body["zone"] = json!(zone);
    }
    let response = app.post_json("/v1/clients", &body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    if status == StatusCode::ACCEPTED {
        Ok(body["server"].as_str().expect("placed at once").to_owned())
    } else {
        Err((status, body))
    }
}

#[tokio::test]
async fn three_servers_register_one_is_refused_for_missing_rights_and_clients_are_placed_by_capacity_and_zone()
 {
    let app = spawn_app_without_workers().await;
    let (one, two) = tokio::join!(
        ExtraServer::start("srv-one", None),
        ExtraServer::start("srv-two", None)
    );
    let url_one = one
        .admin_url("ops", "pw-one-9f3a", "SUPERUSER", "localhost", "")
        .await;
    let url_two = two
        .admin_url("ops", "pw-two-51c7", "SUPERUSER", "127.0.0.1", "")
        .await;
    let weak = two
        .admin_url("weak", "pw-weak-77e1", "", "localhost", "")
        .await;

    let (status, body) = register(
        &app,
        json!({"name": "one", "url": url_one, "max_databases": 10, "zone": "eu"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["policy"], "active");
    assert_eq!(body["zone"], "eu");
    assert_eq!(body["databases"], 0);
    assert_eq!(body["sslmode"], "prefer", "loopback keeps libpq's default");
    assert!(
        body["server_version"].as_i64().unwrap() >= 130_000,
        "{body}"
    );
    assert!(
        body["wal_level"].is_string() && body["live_moves_possible"].is_boolean(),
        "{body}"
    );
    assert!(!body.to_string().contains("pw-one-9f3a"), "{body}");
    let (status, body) = register(
        &app,
        json!({"name": "two", "url": url_two, "max_databases": 100, "budget": 7}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["budget"], 7);
    assert_eq!(body["budget_own"], true);

    // The third is refused, naming what the role lacks, and nothing is recorded.
    let (status, body) = register(&app, json!({"name": "three", "url": weak})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "server_rights_missing");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("CREATEDB and CREATEROLE"), "{message}");
    assert!(!message.contains("pw-weak-77e1"), "{message}");
    assert_eq!(
        app.get("/v1/servers/three").await.status(),
        StatusCode::NOT_FOUND
    );
    // A name taken, bad numbers, a bad zone and a URL that does not parse: refused before anything is touched.
    let (status, body) = register(&app, json!({"name": "one", "url": url_one})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("server_name_taken"))
    );
    for bad in [
        json!({"name": "x", "url": url_one, "max_databases": 0}),
        json!({"name": "x", "url": url_one, "budget": 10_001}),
        json!({"name": "x", "url": url_one, "max_bytes": 5}),
        json!({"name": "x", "url": url_one, "zone": "EU"}),
        json!({"name": "Bad Name", "url": url_one}),
        json!({"name": "x", "url": "host=localhost user=ops"}),
        json!({"name": "x", "url": "postgres://ops:pw with space@localhost/postgres"}),
    ] {
        let (status, body) = register(&app, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed");
    }
    let (status, body) = register(
        &app,
        json!({"name": "x", "url": "postgres://nobody@localhost/postgres?sslmode=verify-full"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_server_url");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sslrootcert"),
        "{body}"
    );

    // Each registered server got the template database, closed to PUBLIC.
    let template = &app.settings.tenants.template_db;
    for server in [&one, &two] {
        let open = server
            .i64(&format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{template}'
                 AND (has_database_privilege('public', oid, 'CONNECT') OR has_database_privilege('public', oid, 'TEMP'))"
            ))
            .await;
        let exists = server
            .i64(&format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{template}'"
            ))
            .await;
        assert_eq!((exists, open), (1, 0));
    }

    // Placement: local is paused, so only one (10 databases) and two (100) take clients. Equal usage → fewest
    // tenants → name; then the lower usage ratio wins.
    patch(&app, "local", json!({"policy": "paused"})).await;
    assert_eq!(place(&app, "c-1", None).await.unwrap(), "one");
    assert_eq!(
        place(&app, "c-2", None).await.unwrap(),
        "two",
        "1/10 > 0/100"
    );
    assert_eq!(
        place(&app, "c-3", None).await.unwrap(),
        "two",
        "1/10 > 1/100"
    );
    // A zone limits the servers, whatever their usage.
    assert_eq!(place(&app, "c-eu", Some("eu")).await.unwrap(), "one");
    let (status, body) = place(&app, "c-us", Some("us")).await.unwrap_err();
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "no_server_available");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no database server is in zone us"),
        "{body}"
    );
    let (status, body) = place(&app, "c-bad", Some("Not A Zone")).await.unwrap_err();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("validation_failed"))
    );

    let listed = json_body(app.get("/v1/servers").await, StatusCode::OK).await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["local", "one", "two"]);
    let one_now = json_body(app.get("/v1/servers/one").await, StatusCode::OK).await;
    assert_eq!(one_now["databases"], 2);
    assert_eq!(one_now["policy"], "active");
}

#[tokio::test]
async fn a_paused_server_gets_no_new_clients_a_full_fleet_answers_409_and_a_server_in_use_is_not_removed()
 {
    let app = spawn_app_without_workers().await;
    let extra = ExtraServer::start("srv-full", None).await;
    let url = extra
        .admin_url("ops", "pw-full-0b2d", "SUPERUSER", "localhost", "")
        .await;
    let (status, body) = register(
        &app,
        json!({"name": "small", "url": url, "max_databases": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Paused: keeps its clients, takes none.
    let paused = patch(&app, "small", json!({"policy": "paused"})).await;
    assert_eq!(paused["policy"], "paused");
    patch(&app, "local", json!({"max_databases": 50})).await;
    for i in 0..3 {
        assert_eq!(place(&app, &format!("p-{i}"), None).await.unwrap(), "local");
    }
    patch(&app, "small", json!({"policy": "active"})).await;
    assert_eq!(place(&app, "p-small", None).await.unwrap(), "small");

    // Full everywhere: 409, naming each server's reason; nothing was created.
    patch(&app, "local", json!({"policy": "paused"})).await;
    let (status, body) = place(&app, "p-none", None).await.unwrap_err();
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "no_server_available");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("local is paused"), "{message}");
    assert!(
        message.contains("small is full (1 of 1 databases)"),
        "{message}"
    );
    assert_eq!(
        app.get("/v1/clients/p-none").await.status(),
        StatusCode::NOT_FOUND
    );
    // A byte limit counts too (the statistics worker's figures).
    patch(
        &app,
        "small",
        json!({"max_databases": 5, "max_bytes": 1_048_576}),
    )
    .await;
    app.control()
        .await
        .execute(
            "INSERT INTO client_stats (client_id, database_bytes, size_at)
             SELECT id, 2000000, now() FROM clients WHERE slug = 'p-small'",
            &[],
        )
        .await
        .unwrap();
    let (_, body) = place(&app, "p-bytes", None).await.unwrap_err();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("small is full (2000000 of 1048576 bytes)"),
        "{body}"
    );
    let small = json_body(app.get("/v1/servers/small").await, StatusCode::OK).await;
    assert_eq!(
        (small["databases"].as_i64(), small["bytes"].as_i64()),
        (Some(1), Some(2_000_000))
    );
    // PATCH validates and can clear.
    let response = app
        .patch_json("/v1/servers/small", &json!({"policy": "draining"}))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = app
        .patch_json("/v1/servers/small", &json!({"budget": 0}))
        .await;
    assert_eq!(error_code(response).await, "validation_failed");
    let cleared = patch(
        &app,
        "small",
        json!({"max_bytes": null, "zone": "eu", "budget": 3}),
    )
    .await;
    assert_eq!(
        (
            cleared["max_bytes"].clone(),
            cleared["zone"].clone(),
            cleared["budget"].clone()
        ),
        (Value::Null, json!("eu"), json!(3))
    );
    assert_eq!(
        app.patch_json("/v1/servers/nope", &json!({}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    // Removal: refused while a client lives there, and for local; allowed once the client is gone.
    let response = app.delete("/v1/servers/small").await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(response).await, "server_in_use");
    assert_eq!(
        error_code(app.delete("/v1/servers/local").await).await,
        "server_in_use"
    );
    app.control()
        .await
        .execute(
            "UPDATE clients SET status = 'deleted' WHERE slug = 'p-small'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        app.delete("/v1/servers/small").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get("/v1/servers/small").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete("/v1/servers/small").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_servers_endpoints_need_servers_manage_with_full_access_to_the_master() {
    let app = spawn_app_without_workers().await;
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "operator", "permissions": ["servers.manage"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let none = user(
        &app,
        "op-none",
        "master",
        &["operator"],
        &[("master", "none", false)],
    )
    .await;
    let read = user(
        &app,
        "op-read",
        "master",
        &["operator"],
        &[("master", "read", false)],
    )
    .await;
    let full = user(
        &app,
        "op-full",
        "master",
        &["operator"],
        &[("master", "full", false)],
    )
    .await;
    // Full access to the master, but no servers.manage.
    let no_permission = user(
        &app,
        "ca",
        "master",
        &["client-admin"],
        &[("master", "full", true)],
    )
    .await;
    let calls = [
        (Method::GET, "/v1/servers", None),
        (
            Method::POST,
            "/v1/servers",
            Some(json!({"name": "x", "url": "postgres://u@localhost:1/postgres"})),
        ),
        (Method::GET, "/v1/servers/local", None),
        (Method::PATCH, "/v1/servers/local", Some(json!({}))),
        (Method::DELETE, "/v1/servers/local", None),
    ];
    for (who, token) in [
        ("none", &none),
        ("read", &read),
        ("no servers.manage", &no_permission),
    ] {
        for (method, path, body) in &calls {
            let (status, _, answer) =
                call(&app, Some(token), method.clone(), path, body.clone()).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{method} {path} with {who}: {answer}"
            );
        }
    }
    // Full access with servers.manage: every call reaches its handler (the POST fails its check, the DELETE of
    // local is refused as such).
    let expected = [
        StatusCode::OK,
        StatusCode::UNPROCESSABLE_ENTITY,
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::CONFLICT,
    ];
    for ((method, path, body), want) in calls.iter().zip(expected) {
        let (status, _, answer) = call(&app, Some(&full), method.clone(), path, body.clone()).await;
        assert_eq!(status, want, "{method} {path} with full access: {answer}");
    }
    let (_, _, local) = call(&app, Some(&full), Method::GET, "/v1/servers/local", None).await;
    assert_eq!(local["url"], Value::Null, "{local}");
    assert_eq!(local["policy"], "active", "{local}");
}

#[tokio::test]
async fn the_servers_commands_add_list_and_remove_with_json_and_refuse_what_the_api_refuses() {
    let app = spawn_app_without_workers().await;
    let extra = ExtraServer::start("srv-cli", None).await;
    let url = extra
        .admin_url("ops", "pw-cli-5e1f", "SUPERUSER", "localhost", "")
        .await;
    let weak = extra
        .admin_url("weak", "pw-cli-weak-2", "", "localhost", "")
        .await;
    let dir = TestDir::new("servers-cli");
    let run = |args: &[&str], url: Option<&str>| {
        let mut command = app.command(dir.path());
        command.args(args);
        if let Some(url) = url {
            command.env("MANDANT_SERVER_URL", url);
        }
        let output = command.output().expect("run mandant");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!text.contains("pw-cli"), "a password in the output: {text}");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            text,
        )
    };

    let (code, stdout, text) = run(
        &[
            "servers",
            "add",
            "cli-one",
            "--max-databases",
            "5",
            "--zone",
            "eu",
            "--json",
        ],
        Some(&url),
    );
    assert_eq!(code, Some(0), "{text}");
    let added: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (
            added["name"].as_str(),
            added["zone"].as_str(),
            added["max_databases"].as_i64()
        ),
        (Some("cli-one"), Some("eu"), Some(5))
    );
    let (code, _, text) = run(&["servers", "add", "cli-weak"], Some(&weak));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("CREATEDB and CREATEROLE"), "{text}");

    let (code, stdout, text) = run(&["servers", "list", "--json"], None);
    assert_eq!(code, Some(0), "{text}");
    let listed: Value = serde_json::from_str(&stdout).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cli-one", "local"]);
    let (code, stdout, _) = run(&["servers", "list"], None);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("cli-one") && stdout.contains("0/5"),
        "{stdout}"
    );

    let (code, _, text) = run(&["servers", "remove", "local"], None);
    assert_eq!(code, Some(1), "{text}");
    let (code, stdout, text) = run(&["servers", "remove", "cli-one", "--json"], None);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()["removed"],
        "cli-one"
    );
    assert_eq!(
        app.get("/v1/servers/cli-one").await.status(),
        StatusCode::NOT_FOUND
    );
    let audited = app
        .control_i64("SELECT count(*) FROM audit_log WHERE action LIKE 'CLI mandant servers %'")
        .await;
    assert_eq!(audited, 2, "add and remove");
}
