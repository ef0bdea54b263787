//! Hostile input and isolation (issue 15): a tenant's role cannot open mandant's own databases, refusals tell
//! nothing about users the caller cannot see, a no-op stays a no-op, and disabling a user ends its tokens.

use std::time::{Duration, Instant};

use deadpool_postgres::tokio_postgres;
use mandant::server::{Application, RunOptions};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, TestApp, TestDir, error_code, http_client, spawn_app, superuser, test_settings,
};

/// A request as some user; returns status and the parsed body (Null if not JSON).
async fn call(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = http_client(Some(token)).request(method.clone(), app.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Creates a user (as the admin) with roles and access; returns a token for it.
async fn user(
    app: &TestApp,
    username: &str,
    home: &str,
    roles: &[&str],
    access: &[(&str, &str, bool)],
) -> String {
    let (status, body) = call(
        app,
        ADMIN_TOKEN,
        Method::POST,
        "/v1/users",
        Some(json!({"username": username, "home_client": home, "roles": roles})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for (slug, level, private_data) in access {
        let (status, body) = call(
            app,
            ADMIN_TOKEN,
            Method::PUT,
            &format!("/v1/users/{username}/access/{slug}"),
            Some(json!({"level": level, "private_data": private_data})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    mint(app, username).await
}

/// A new token for `username`, minted by the admin.
async fn mint(app: &TestApp, username: &str) -> String {
    let (status, body) = call(
        app,
        ADMIN_TOKEN,
        Method::POST,
        &format!("/v1/users/{username}/tokens"),
        Some(json!({"name": "test"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

async fn role(app: &TestApp, name: &str, permissions: &[&str]) {
    let (status, body) = call(
        app,
        ADMIN_TOKEN,
        Method::POST,
        "/v1/roles",
        Some(json!({"name": name, "description": "", "permissions": permissions})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// The SQLSTATE a connection attempt failed with (panics if it succeeded).
async fn refused_with(target: &mandant::db::PgTarget) -> String {
    match target.connect().await {
        Ok(_) => panic!("{} accepted the connection", target.dbname()),
        Err(e) => e
            .as_db_error()
            .map(|db| db.code().code().to_owned())
            .unwrap_or_else(|| format!("no SQLSTATE: {e}")),
    }
}

/// `has_database_privilege` for the current role, as a tenant's own session sees it.
async fn may(conn: &tokio_postgres::Client, database: &str, privilege: &str) -> bool {
    conn.query_one(
        "SELECT has_database_privilege(current_user, $1, $2)",
        &[&database, &privilege],
    )
    .await
    .expect("privilege lookup")
    .get(0)
}

async fn public_may(database: &str, privilege: &str) -> bool {
    superuser("postgres")
        .await
        .query_one(
            "SELECT has_database_privilege('public', $1, $2)",
            &[&database, &privilege],
        )
        .await
        .expect("privilege lookup")
        .get(0)
}

// ---------------------------------------------------------------------------------------------------------------
// mandant's own databases are closed to tenant roles
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_tenant_role_can_neither_connect_to_nor_create_temporary_tables_in_mandants_own_databases()
 {
    let app = spawn_app().await;
    app.create_active_client("iso-own").await;
    let tenant = app.route("iso-own").await.target;
    let template = app.settings.tenants.template_db.clone();

    let own = tenant.connect().await.expect("the tenant's own database");
    assert!(may(&own, tenant.dbname(), "CONNECT").await);
    assert!(may(&own, tenant.dbname(), "TEMP").await);
    for database in [app.control_db.as_str(), template.as_str()] {
        assert!(
            !may(&own, database, "CONNECT").await,
            "CONNECT on {database}"
        );
        assert!(!may(&own, database, "TEMP").await, "TEMP on {database}");
    }
    assert_eq!(
        refused_with(&tenant.with_dbname(&app.control_db)).await,
        "42501"
    );
    // The template also refuses connections as such (ALLOW_CONNECTIONS false); the privilege is gone as well.
    refused_with(&tenant.with_dbname(&template)).await;

    // What the cluster-wide catalogue shows a tenant (ARCHITECTURE.md): names built from client ids, never a
    // slug or a client's name.
    let prefix = &app.settings.tenants.db_prefix;
    let catalogue = own
        .query(
            "SELECT datname::text FROM pg_database UNION ALL SELECT rolname::text FROM pg_roles",
            &[],
        )
        .await
        .expect("catalogue");
    let names: Vec<String> = catalogue.iter().map(|r| r.get(0)).collect();
    assert!(names.iter().any(|n| n == tenant.dbname()), "{names:?}");
    for name in &names {
        assert!(
            !name.contains("iso-own") && !name.contains("iso_own"),
            "{name}"
        );
        if let Some(id) = name.strip_prefix(prefix.as_str()) {
            // A tenant database's second role (inner clients) is its role's name and `_rls`.
            let id = id.strip_suffix("_rls").unwrap_or(id);
            assert!(
                id == "owner" || (id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())),
                "{name}"
            );
        }
    }

    // `postgres` on a configured (shared) server may belong to other applications: left as it is.
    assert!(public_may("postgres", "CONNECT").await);

    // mandant's own administrator still works there: a second client is provisioned from the template.
    app.create_active_client("iso-two").await;
    assert_eq!(
        call(&app, ADMIN_TOKEN, Method::GET, "/v1/clients/iso-two", None)
            .await
            .1["status"],
        "active"
    );
}

#[tokio::test]
async fn own_databases_opened_to_public_by_hand_are_closed_again_at_the_next_start() {
    let app = spawn_app().await;
    app.create_active_client("iso-fix").await;
    let template = app.settings.tenants.template_db.clone();
    let admin = superuser("postgres").await;
    for database in [app.control_db.as_str(), template.as_str()] {
        admin
            .batch_execute(&format!(
                "GRANT CONNECT, TEMPORARY ON DATABASE \"{database}\" TO PUBLIC"
            ))
            .await
            .expect("open to public");
        assert!(public_may(database, "CONNECT").await);
    }

    let second = app.second_process(RunOptions { no_workers: true }).await;
    for database in [app.control_db.as_str(), template.as_str()] {
        assert!(!public_may(database, "CONNECT").await, "{database}");
        assert!(!public_may(database, "TEMP").await, "{database}");
    }
    // Idempotent: a third start finds nothing to do and works.
    let third = app.second_process(RunOptions { no_workers: true }).await;
    assert_eq!(
        call(&app, ADMIN_TOKEN, Method::GET, "/v1/clients/iso-fix", None)
            .await
            .0,
        StatusCode::OK
    );
    third.shutdown().await.expect("third shutdown");
    second.shutdown().await.expect("second shutdown");
}

#[tokio::test]
async fn on_the_embedded_cluster_postgres_template1_and_the_control_plane_refuse_a_tenant_role() {
    let dir = TestDir::new("iso-embedded");
    let settings = test_settings(&[
        (
            "MANDANT__EMBEDDED__DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        ("MANDANT__AUTH__BOOTSTRAP_TOKEN", ADMIN_TOKEN.to_owned()),
        (
            "MANDANT__TENANTS__CREDENTIAL_SECRET",
            "iso-embedded-secret".into(),
        ),
    ]);
    let app = Application::build(settings, RunOptions::default())
        .await
        .expect("build embedded app");
    let addr = app.local_addr().expect("addr");
    let state = app.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    // The master client is provisioned at first start: its role is a real tenant role.
    let http = http_client(Some(ADMIN_TOKEN));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let master: Value = http
            .get(format!("http://{addr}/v1/clients/master"))
            .send()
            .await
            .expect("GET master")
            .json()
            .await
            .expect("json");
        if master["status"] == "active" {
            break;
        }
        assert!(Instant::now() < deadline, "master not active: {master}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let control = state.control();
    let master = control
        .client_by_slug(&mandant::domain::ClientSlug::parse("master").expect("slug"))
        .await
        .expect("master");
    let server = control
        .server(master.server_id.expect("placed"))
        .await
        .expect("server");
    let tenant = state
        .targets()
        .tenant(&server, master.id)
        .expect("tenant target");

    let own = tenant.connect().await.expect("the master's own database");
    for database in ["postgres", "template1", mandant::control::CONTROL_DB] {
        assert!(
            !may(&own, database, "CONNECT").await,
            "CONNECT on {database}"
        );
        assert!(!may(&own, database, "TEMP").await, "TEMP on {database}");
        assert_eq!(
            refused_with(&tenant.with_dbname(database)).await,
            "42501",
            "{database}"
        );
    }

    let _ = stop.send(());
    task.await.expect("app task").expect("clean shutdown");
}

// ---------------------------------------------------------------------------------------------------------------
// Refusals tell nothing about users the caller cannot see
// ---------------------------------------------------------------------------------------------------------------

/// A non-admin role manager (`rolf`: full access to the master and `alpha`, no private data, no access to `beta`),
/// a role held by a user it sees but cannot manage, and one held only by a user it cannot see.
async fn role_manager_setup(app: &TestApp) -> String {
    app.create_active_client("alpha").await;
    app.create_active_client("beta").await;
    role(
        app,
        "ops",
        &["roles.manage", "users.read", "users.manage", "clients.read"],
    )
    .await;
    role(app, "seen-held", &["clients.read"]).await;
    role(app, "hidden-held", &["clients.read"]).await;
    let rolf = user(
        app,
        "rolf",
        "master",
        &["ops"],
        &[("master", "full", false), ("alpha", "full", false)],
    )
    .await;
    // Visible (home alpha) but not manageable: it holds the private-data right rolf lacks.
    user(
        app,
        "vis",
        "alpha",
        &["seen-held"],
        &[("alpha", "full", true)],
    )
    .await;
    // Invisible to rolf: homed at beta.
    user(
        app,
        "hid",
        "beta",
        &["hidden-held"],
        &[("beta", "read", false)],
    )
    .await;
    rolf
}

#[tokio::test]
async fn put_role_refusal_does_not_reveal_holders_the_caller_cannot_see() {
    let app = spawn_app().await;
    let rolf = role_manager_setup(&app).await;
    let change = json!({"description": "changed", "permissions": ["clients.read", "users.read"]});

    let (seen_status, seen) = call(
        &app,
        &rolf,
        Method::PUT,
        "/v1/roles/seen-held",
        Some(change.clone()),
    )
    .await;
    let (hidden_status, hidden) = call(
        &app,
        &rolf,
        Method::PUT,
        "/v1/roles/hidden-held",
        Some(change),
    )
    .await;
    assert_eq!(seen_status, StatusCode::FORBIDDEN, "{seen}");
    assert_eq!(hidden_status, StatusCode::FORBIDDEN, "{hidden}");
    assert_eq!(seen, hidden, "the two refusals must not differ");
    assert_eq!(hidden["error"]["code"], "escalation_refused");
    let message = hidden["error"]["message"].as_str().expect("message");
    assert!(
        !message.contains("Users you cannot manage hold"),
        "{message}"
    );
    assert!(!message.chars().any(|c| c.is_ascii_digit()), "{message}");

    // Nothing changed.
    let (_, roles) = call(&app, ADMIN_TOKEN, Method::GET, "/v1/roles", None).await;
    let hidden_role = roles
        .as_array()
        .expect("roles")
        .iter()
        .find(|r| r["name"] == "hidden-held")
        .expect("hidden-held")
        .clone();
    assert_eq!(hidden_role["permissions"], json!(["clients.read"]));
}

#[tokio::test]
async fn delete_role_refusal_neither_counts_nor_tells_apart_holders_the_caller_cannot_see() {
    let app = spawn_app().await;
    let rolf = role_manager_setup(&app).await;
    // A second hidden holder: a count would now say 2 for one role and 1 for the other.
    user(
        &app,
        "hid2",
        "beta",
        &["hidden-held"],
        &[("beta", "read", false)],
    )
    .await;

    let (seen_status, seen) = call(&app, &rolf, Method::DELETE, "/v1/roles/seen-held", None).await;
    let (hidden_status, hidden) =
        call(&app, &rolf, Method::DELETE, "/v1/roles/hidden-held", None).await;
    assert_eq!(seen_status, StatusCode::CONFLICT, "{seen}");
    assert_eq!(hidden_status, StatusCode::CONFLICT, "{hidden}");
    assert_eq!(seen, hidden, "the two refusals must not differ");
    assert_eq!(hidden["error"]["code"], "role_in_use");
    let message = hidden["error"]["message"].as_str().expect("message");
    assert!(!message.chars().any(|c| c.is_ascii_digit()), "{message}");
    let db = app.control().await;
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM roles WHERE name IN ('seen-held', 'hidden-held')",
            &[],
        )
        .await
        .expect("roles")
        .get(0);
    assert_eq!(left, 2);
}

#[tokio::test]
async fn a_token_refusal_reads_the_same_whether_the_user_holds_more_permissions_or_hidden_access() {
    let app = spawn_app().await;
    let rolf = role_manager_setup(&app).await;
    // Both visible (home alpha): one holds a permission rolf lacks, the other access to beta, which rolf
    // cannot even see.
    user(
        &app,
        "more-perms",
        "alpha",
        &["editor"],
        &[("alpha", "read", false)],
    )
    .await;
    user(
        &app,
        "more-access",
        "alpha",
        &["seen-held"],
        &[("alpha", "read", false), ("beta", "read", false)],
    )
    .await;

    let mut refusals = Vec::new();
    for username in ["more-perms", "more-access"] {
        let (status, body) = call(
            &app,
            &rolf,
            Method::POST,
            &format!("/v1/users/{username}/tokens"),
            Some(json!({"name": "impersonate"})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{username}: {body}");
        refusals.push(body);
    }
    assert_eq!(refusals[0], refusals[1]);
    assert_eq!(refusals[0]["error"]["code"], "escalation_refused");
    let message = refusals[0]["error"]["message"].as_str().expect("message");
    assert!(!message.contains("access that you do not"), "{message}");
    let minted: i64 = app
        .control()
        .await
        .query_one(
            "SELECT count(*) FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE u.username IN ('more-perms', 'more-access') AND t.name = 'impersonate'",
            &[],
        )
        .await
        .expect("tokens")
        .get(0);
    assert_eq!(minted, 0);
}

// ---------------------------------------------------------------------------------------------------------------
// A no-op is not refused for a wrong reason
// ---------------------------------------------------------------------------------------------------------------

async fn patch(app: &TestApp, token: &str, name: &str) -> (StatusCode, Value) {
    let path = format!("/v1/clients/fieldy/fields/{name}");
    call(
        app,
        token,
        Method::PATCH,
        &path,
        Some(json!({"personal": false})),
    )
    .await
}

#[tokio::test]
async fn personal_false_on_a_field_that_is_not_personal_is_a_no_op_even_without_private_data() {
    let app = spawn_app().await;
    app.create_active_client("fieldy").await;
    for (name, personal) in [("city", false), ("phone", true)] {
        let (status, body) = call(
            &app,
            ADMIN_TOKEN,
            Method::POST,
            "/v1/clients/fieldy/fields",
            Some(json!({"name": name, "type": "text", "personal": personal})),
        )
        .await;
        assert!(status.is_success(), "{body}");
    }
    let (status, body) = call(
        &app,
        ADMIN_TOKEN,
        Method::POST,
        "/v1/fields",
        Some(json!({"name": "region", "type": "text"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let editor = user(
        &app,
        "no-private",
        "fieldy",
        &["client-admin"],
        &[("fieldy", "full", false)],
    )
    .await;
    let (status, body) = patch(&app, &editor, "city").await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(body["personal"], false, "{body}");
    // A personal field stays personal: un-marking it needs the right (the reason the refusal gives).
    let (status, body) = patch(&app, &editor, "phone").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "private_data_required");
    // A standard or central field is refused for what it is, not as personal data.
    let (status, body) = patch(&app, &editor, "email").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "standard_field");
    let (status, body) = patch(&app, &editor, "region").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "inherited_field");

    let rows = app
        .control()
        .await
        .query(
            "SELECT name, personal FROM fields WHERE name IN ('city', 'phone') ORDER BY name",
            &[],
        )
        .await
        .expect("fields");
    let state: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        state,
        vec![("city".to_owned(), false), ("phone".to_owned(), true)]
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Disabling a user ends its tokens
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn disabling_a_user_revokes_its_live_tokens_so_enabling_it_again_needs_new_ones() {
    let app = spawn_app().await;
    let first = user(
        &app,
        "dora",
        "master",
        &["viewer"],
        &[("master", "read", false)],
    )
    .await;
    let second = mint(&app, "dora").await;
    for token in [&first, &second] {
        assert_eq!(
            call(&app, token, Method::GET, "/v1/me", None).await.0,
            StatusCode::OK
        );
    }

    let (status, body) = call(
        &app,
        ADMIN_TOKEN,
        Method::PATCH,
        "/v1/users/dora",
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = call(
        &app,
        ADMIN_TOKEN,
        Method::PATCH,
        "/v1/users/dora",
        Some(json!({"disabled": false})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Enabled again, the old tokens stay dead.
    for token in [&first, &second] {
        let response = http_client(Some(token))
            .get(app.url("/v1/me"))
            .send()
            .await
            .expect("GET /v1/me");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(response).await, "unauthorized");
    }
    let (_, tokens) = call(
        &app,
        ADMIN_TOKEN,
        Method::GET,
        "/v1/users/dora/tokens",
        None,
    )
    .await;
    let tokens = tokens.as_array().expect("tokens");
    assert_eq!(tokens.len(), 2);
    assert!(
        tokens.iter().all(|t| t["revoked_at"].is_string()),
        "{tokens:?}"
    );

    // The disabling is audited with the count.
    let (_, audit) = call(&app, ADMIN_TOKEN, Method::GET, "/v1/audit?user=admin", None).await;
    let entry = audit["items"]
        .as_array()
        .expect("audit items")
        .iter()
        .find(|e| e["action"] == "PATCH /v1/users/{username}" && e["detail"].is_object())
        .cloned()
        .unwrap_or_else(|| panic!("no audited disabling: {audit}"));
    assert_eq!(entry["detail"]["revoked_tokens"], 2, "{entry}");

    // A new token works.
    let fresh = mint(&app, "dora").await;
    assert_eq!(
        call(&app, &fresh, Method::GET, "/v1/me", None).await.0,
        StatusCode::OK
    );
}
