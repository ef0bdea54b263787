//! The administration console without a browser (issue #22): sessions (sign-in, cookie attributes, CSRF, sign-out,
//! expiry, revocation and disabling in every process), the access matrix of a client (all rows or none, each
//! refused row explained), the console's static files and their headers, and the access cases of every console
//! endpoint (none / read / full / private data).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::access::{call, user};
use crate::helpers::{ADMIN_TOKEN, TestApp, spawn_app, spawn_app_without_workers};

/// A signed-in console session: the cookie header value and the CSRF token.
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

/// Signs in with `token`; asserts the cookie's attributes.
pub async fn sign_in(app: &TestApp, token: &str) -> Session {
    let response = reqwest::Client::new()
        .post(app.url("/v1/session"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("mandant_session="), "{cookie}");
    let body: Value = response.json().await.unwrap();
    assert!(
        !body.to_string().contains(token),
        "the token is not echoed back"
    );
    Session {
        cookie,
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
    }
}

/// A request with the session cookie and, when `csrf` is given, that X-CSRF-Token header.
pub async fn with_session(
    app: &TestApp,
    cookie: &str,
    csrf: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .request(method, app.url(path))
        .header("cookie", cookie);
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

impl Session {
    async fn call(
        &self,
        app: &TestApp,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        with_session(app, &self.cookie, Some(&self.csrf), method, path, body).await
    }
}

async fn audit_outcomes(app: &TestApp, action: &str) -> Vec<(String, i64)> {
    let db = app.control().await;
    db.query(
        "SELECT outcome, status::int8 FROM audit_log WHERE action = $1 ORDER BY id",
        &[&action],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test]
async fn a_session_acts_as_its_token_and_a_change_without_the_csrf_token_is_refused_and_changes_nothing()
 {
    let app = spawn_app_without_workers().await;
    let session = sign_in(&app, ADMIN_TOKEN).await;

    let (status, me) = session.call(&app, Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["username"], "admin");
    let (status, body) = session.call(&app, Method::GET, "/v1/session", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["username"], "admin");
    assert_eq!(body["csrf_token"], session.csrf.as_str());

    // A forged change: the cookie (a browser sends it along) but no or a wrong CSRF token.
    let new = json!({"slug": "forged", "name": "Forged"});
    for csrf in [None, Some("x".repeat(43)), Some(String::new())] {
        let (status, body) = with_session(
            &app,
            &session.cookie,
            csrf.as_deref(),
            Method::POST,
            "/v1/clients",
            Some(new.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{csrf:?}");
        assert_eq!(body["error"]["code"], "csrf_failed");
    }
    assert_eq!(
        app.control_i64("SELECT count(*) FROM clients WHERE slug = 'forged'")
            .await,
        0
    );
    assert_eq!(
        audit_outcomes(&app, "POST /v1/clients").await,
        vec![("denied".to_owned(), 403); 3],
        "forged changes are audited as denied"
    );
    // Reads need no CSRF token; a change with it goes through and is audited like any other.
    let (status, _) = with_session(
        &app,
        &session.cookie,
        None,
        Method::GET,
        "/v1/clients",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = session
        .call(&app, Method::POST, "/v1/clients", Some(new))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let outcomes = audit_outcomes(&app, "POST /v1/clients").await;
    assert_eq!(outcomes.last().unwrap(), &("succeeded".to_owned(), 202));
    assert_eq!(
        audit_outcomes(&app, "POST /v1/session").await,
        vec![("succeeded".to_owned(), 201)],
        "the sign-in is audited"
    );
    // Only the session id's hash is stored.
    let id = session.cookie.trim_start_matches("mandant_session=");
    let db = app.control().await;
    let stored = db
        .query_one("SELECT encode(id_hash, 'hex') FROM console_sessions", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert!(!stored.contains(id));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn sign_in_refuses_a_bad_token_and_a_bad_cookie_is_not_a_session() {
    let app = spawn_app_without_workers().await;
    for token in [
        "nope".to_owned(),
        format!("{ADMIN_TOKEN}x"),
        "mdt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
    ] {
        let (status, _, body) = call(
            &app,
            None,
            Method::POST,
            "/v1/session",
            Some(json!({"token": token})),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let (status, _, _) = call(
        &app,
        None,
        Method::POST,
        "/v1/session",
        Some(json!({"tok": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.control_i64("SELECT count(*) FROM console_sessions")
            .await,
        0
    );

    for cookie in [
        "mandant_session=",
        "mandant_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "mandant_session=../../etc/passwd",
        "other=1",
    ] {
        let (status, body) = with_session(&app, cookie, None, Method::GET, "/v1/me", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{cookie}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // An Authorization header is never passed over for the cookie, even a malformed one; a bearer request has no
    // session to show.
    let session = sign_in(&app, ADMIN_TOKEN).await;
    let response = reqwest::Client::new()
        .get(app.url("/v1/me"))
        .header("cookie", &session.cookie)
        .header("authorization", "Bearer nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (status, _, body) = call(&app, Some(ADMIN_TOKEN), Method::GET, "/v1/session", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "no_console_session");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn sign_out_revocation_disabling_and_expiry_end_a_session_at_once_in_every_process() {
    let app = spawn_app().await;
    let other = app
        .second_process(mandant::server::RunOptions { no_workers: true })
        .await;
    let anna = user(
        &app,
        "anna",
        "master",
        &["viewer"],
        &[("master", "read", false)],
    )
    .await;

    // Sign-out in one process: the other refuses the cookie at its next request.
    let session = sign_in(&app, &anna).await;
    let (status, _) = session.call(&other, Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = with_session(
        &app,
        &session.cookie,
        None,
        Method::DELETE,
        "/v1/session",
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "sign-out needs the CSRF token too"
    );
    let response = reqwest::Client::new()
        .delete(app.url("/v1/session"))
        .header("cookie", &session.cookie)
        .header("x-csrf-token", &session.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cleared = response.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("mandant_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    for process in [&app, &other] {
        let (status, _) = session.call(process, Method::GET, "/v1/me", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    // The token revoked (through the API, as the admin): its session ends in both processes.
    let session = sign_in(&app, &anna).await;
    revoke_session_token(&app, &other, &session, "anna").await;
    for process in [&app, &other] {
        let (status, _) = session.call(process, Method::GET, "/v1/me", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    // The user disabled: its sessions end; enabled again, they stay ended (its tokens were revoked).
    let bert = user(
        &app,
        "bert",
        "master",
        &["viewer"],
        &[("master", "read", false)],
    )
    .await;
    let session = sign_in(&app, &bert).await;
    let (status, _) = session.call(&other, Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::PATCH,
        "/v1/users/bert",
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for process in [&app, &other] {
        let (status, _) = session.call(process, Method::GET, "/v1/me", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    // Idle expiry and the hard limit.
    let session = sign_in(&app, ADMIN_TOKEN).await;
    let db = app.control().await;
    db.execute(
        "UPDATE console_sessions SET expires_at = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    let (status, _) = session.call(&other, Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "idle too long");
    let session = sign_in(&app, ADMIN_TOKEN).await;
    db.execute(
        "UPDATE console_sessions SET max_until = now() + interval '1 second', last_seen_at = now() - interval '1 hour'
         WHERE expires_at > now()",
        &[],
    )
    .await
    .unwrap();
    let (status, body) = session.call(&app, Method::GET, "/v1/session", None).await;
    assert_eq!(status, StatusCode::OK);
    let expires: chrono::DateTime<chrono::Utc> =
        body["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(
        expires <= chrono::Utc::now() + chrono::Duration::seconds(2),
        "use never extends a session past its hard limit: {expires}"
    );
    other.shutdown().await.unwrap();
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_and_nothing_outside_its_folder() {
    let app = spawn_app_without_workers().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = client.get(app.url("/")).send().await.unwrap();
    assert_eq!(root.status(), StatusCode::SEE_OTHER);
    assert_eq!(root.headers()["location"], "/console/");
    let bare = client.get(app.url("/console")).send().await.unwrap();
    assert_eq!(bare.status(), StatusCode::PERMANENT_REDIRECT);

    let page = client.get(app.url("/console/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(html.contains("app.js"));
    assert!(!html.contains("<script>"), "no inline script");

    let script = client.get(app.url("/console/app.js")).send().await.unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    let etag = script.headers()["etag"].clone();
    let again = client
        .get(app.url("/console/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    for path in [
        "/console/..%2FCargo.toml",
        "/console/%2e%2e%2fsrc%2fmain.rs",
        "/console/nope.js",
        "/console/.hidden",
        "/console/mod.rs",
    ] {
        let response = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"]["code"],
            "not_found"
        );
    }
    let head = client.head(app.url("/console/")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let post = client.post(app.url("/console/")).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    app.shutdown().await.unwrap();
}

async fn matrix(app: &TestApp, token: &str, slug: &str) -> (StatusCode, Value) {
    let (status, _, body) = call(
        app,
        Some(token),
        Method::GET,
        &format!("/v1/clients/{slug}/access"),
        None,
    )
    .await;
    (status, body)
}

fn level_of(matrix: &Value, username: &str) -> (String, bool) {
    let row = matrix["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == username)
        .unwrap_or_else(|| panic!("{username} in {matrix}"));
    (
        row["level"].as_str().unwrap().to_owned(),
        row["private_data"].as_bool().unwrap(),
    )
}

/// The control plane's grants on `slug`: (username, level, private data), by username.
pub async fn stored_access(app: &TestApp, slug: &str) -> Vec<(String, String, bool)> {
    let db = app.control().await;
    db.query(
        "SELECT u.username, a.level, a.private_data FROM client_access a
         JOIN users u ON u.id = a.user_id JOIN clients c ON c.id = a.client_id
         WHERE c.slug = $1 ORDER BY u.username",
        &[&slug],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test]
async fn the_access_matrix_sets_every_row_or_none_and_explains_each_refused_row() {
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    app.create_active_client("other").await;
    // A client admin of acme (full, no private data) who manages users homed there.
    let carla = user(
        &app,
        "carla",
        "acme",
        &["client-admin"],
        &[("acme", "full", false)],
    )
    .await;
    user(&app, "dora", "acme", &["editor"], &[]).await;
    user(&app, "emil", "acme", &["viewer"], &[]).await;
    user(
        &app,
        "fred",
        "other",
        &["viewer"],
        &[("other", "read", false)],
    )
    .await;

    let (status, body) = matrix(&app, &carla, "acme").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["carla", "dora", "emil"], "only users carla can see");
    assert_eq!(level_of(&body, "dora"), ("none".to_owned(), false));

    // One refused row (private data carla does not have) and one unknown user: nothing changes.
    let (status, _, body) = call(
        &app,
        Some(&carla),
        Method::PUT,
        "/v1/clients/acme/access",
        Some(json!({"users": [
            {"username": "dora", "level": "full", "private_data": false},
            {"username": "emil", "level": "read", "private_data": true},
            {"username": "fred", "level": "read"},
            {"username": "carla", "level": "read"},
        ]})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "access_refused");
    let rows: Vec<(String, String)> = body["error"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["username"].as_str().unwrap().to_owned(),
                r["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("emil".to_owned(), "escalation_refused".to_owned()),
            ("fred".to_owned(), "not_found".to_owned()),
            ("carla".to_owned(), "self_edit_refused".to_owned()),
        ]
    );
    assert_eq!(
        stored_access(&app, "acme").await,
        [("carla".to_owned(), "full".to_owned(), false)],
        "all or nothing: dora's row was not applied"
    );

    // Every row allowed: all applied in one call, answered with the matrix now.
    let (status, _, body) = call(
        &app,
        Some(&carla),
        Method::PUT,
        "/v1/clients/acme/access",
        Some(json!({"users": [
            {"username": "dora", "level": "full"},
            {"username": "emil", "level": "read", "private_data": false},
        ]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(level_of(&body, "dora"), ("full".to_owned(), false));
    assert_eq!(level_of(&body, "emil"), ("read".to_owned(), false));
    assert_eq!(stored_access(&app, "acme").await.len(), 3);
    // The whole matrix sent back unchanged, the caller's own row included, is accepted and changes nothing.
    let whole: Vec<Value> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| json!({"username": u["username"], "level": u["level"], "private_data": u["private_data"]}))
        .collect();
    let (status, _, again) = call(
        &app,
        Some(&carla),
        Method::PUT,
        "/v1/clients/acme/access",
        Some(json!({ "users": whole })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, body);
    // The admin grants private data and removes a row (none) in one call.
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::PUT,
        "/v1/clients/acme/access",
        Some(json!({"users": [
            {"username": "dora", "level": "none", "private_data": true},
            {"username": "emil", "level": "full", "private_data": true},
        ]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        stored_access(&app, "acme").await,
        [
            ("carla".to_owned(), "full".to_owned(), false),
            ("emil".to_owned(), "full".to_owned(), true),
        ]
    );
    let (_, _, emil) = call(&app, Some(ADMIN_TOKEN), Method::GET, "/v1/users/emil", None).await;
    assert_eq!(
        emil["access"],
        json!([{"client": "acme", "level": "full", "private_data": true}])
    );
    assert_eq!(level_of(&body, "admin").0, "none");
    assert!(
        body["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["username"] == "admin" && u["master_admin"] == true),
        "the admin's row says it sees everything"
    );
    let db = app.control().await;
    let detail: Value = db
        .query_one(
            "SELECT detail FROM audit_log WHERE action = 'PUT /v1/clients/{slug}/access' AND outcome = 'succeeded'
             ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(detail["users"].as_array().unwrap().len(), 2, "{detail}");

    // Bad input changes nothing: a username twice (422), an empty list, an unknown field, a bad level (400).
    for (body, expected) in [
        (
            json!({"users": [{"username": "dora", "level": "read"}, {"username": "dora", "level": "full"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"users": []}), StatusCode::BAD_REQUEST),
        (
            json!({"users": [{"username": "dora", "level": "read", "x": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"users": [{"username": "dora", "level": "owner"}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"users": [{"username": "Dora!", "level": "read"}]}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, _, response) = call(
            &app,
            Some(ADMIN_TOKEN),
            Method::PUT,
            "/v1/clients/acme/access",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, expected, "{body}: {response}");
    }
    assert_eq!(stored_access(&app, "acme").await.len(), 2);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_console_endpoint_answers_none_read_full_and_private_data_as_the_access_rule_says() {
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    app.create_active_client("hidden").await;
    let (status, _, _) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/clients/acme/recipients",
        Some(json!({"email": "kim@example.com", "first_name": "Kim"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let reader = user(
        &app,
        "reader",
        "acme",
        &["client-admin"],
        &[("acme", "read", false)],
    )
    .await;
    let private = user(
        &app,
        "private",
        "acme",
        &["client-admin"],
        &[("acme", "read", true)],
    )
    .await;
    let no_users = user(
        &app,
        "nousers",
        "acme",
        &["editor"],
        &[("acme", "full", true)],
    )
    .await;
    user(&app, "target", "acme", &["viewer"], &[]).await;
    let set = json!({"users": [{"username": "target", "level": "read"}]});

    // none: the hidden client does not exist for them, through a session as through the token.
    let session = sign_in(&app, &reader).await;
    for path in ["/v1/clients/hidden/access", "/v1/clients/hidden"] {
        let (status, body) = session.call(&app, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (status, _) = session
        .call(
            &app,
            Method::PUT,
            "/v1/clients/hidden/access",
            Some(set.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, clients) = session.call(&app, Method::GET, "/v1/clients", None).await;
    assert!(
        !clients.to_string().contains("hidden"),
        "an invisible client is never listed"
    );

    // read: the matrix is visible, a change is refused (no write for read-only access) and changes nothing.
    let (status, _) = session
        .call(&app, Method::GET, "/v1/clients/acme/access", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = session
        .call(
            &app,
            Method::PUT,
            "/v1/clients/acme/access",
            Some(set.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "read_only_access");
    // full access but without users.manage: refused by the permission.
    let (status, _, body) = call(
        &app,
        Some(&no_users),
        Method::PUT,
        "/v1/clients/acme/access",
        Some(set.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied");
    assert_eq!(
        stored_access(&app, "acme")
            .await
            .iter()
            .filter(|r| r.0 == "target")
            .count(),
        0
    );

    // private data: masked through a session without it, shown with it (the same code path as the token).
    let (_, list) = session
        .call(&app, Method::GET, "/v1/clients/acme/recipients", None)
        .await;
    let shown = list.to_string();
    assert!(
        !shown.contains("kim@example.com") && !shown.contains("Kim"),
        "{shown}"
    );
    let session = sign_in(&app, &private).await;
    let (_, list) = session
        .call(&app, Method::GET, "/v1/clients/acme/recipients", None)
        .await;
    assert!(list.to_string().contains("kim@example.com"), "{list}");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn signing_in_again_ends_the_session_it_replaces_and_a_token_keeps_at_most_twenty_sessions() {
    let app = spawn_app_without_workers().await;
    let first = sign_in(&app, ADMIN_TOKEN).await;
    let response = reqwest::Client::new()
        .post(app.url("/v1/session"))
        .header("cookie", &first.cookie)
        .json(&json!({"token": ADMIN_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let (status, _) = first.call(&app, Method::GET, "/v1/me", None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the replaced session ended"
    );
    assert_eq!(
        app.control_i64("SELECT count(*) FROM console_sessions")
            .await,
        1
    );

    let mut sessions = Vec::new();
    for _ in 0..25 {
        sessions.push(sign_in(&app, ADMIN_TOKEN).await);
    }
    assert_eq!(
        app.control_i64("SELECT count(*) FROM console_sessions")
            .await,
        mandant::control::access::sessions::MAX_SESSIONS_PER_TOKEN
    );
    let (status, _) = sessions[0].call(&app, Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the oldest ended");
    let (status, _) = sessions[24].call(&app, Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);

    // Credentials of another scheme (a browser adds Basic ones behind a proxy that asks for them) do not hide the
    // session; an empty or malformed Bearer header does.
    let latest = &sessions[24];
    for (authorization, expected) in [
        ("Basic dXNlcjpwYXNz", StatusCode::OK),
        ("", StatusCode::UNAUTHORIZED),
        ("Bearer nope", StatusCode::UNAUTHORIZED),
    ] {
        let response = reqwest::Client::new()
            .get(app.url("/v1/me"))
            .header("cookie", &latest.cookie)
            .header("authorization", authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{authorization:?}");
    }
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_workers_delete_ended_sessions_and_keep_live_ones() {
    let app = spawn_app_without_workers().await;
    let anna = user(
        &app,
        "anna",
        "master",
        &["viewer"],
        &[("master", "read", false)],
    )
    .await;
    let live = sign_in(&app, ADMIN_TOKEN).await;
    let expired = sign_in(&app, ADMIN_TOKEN).await;
    let revoked = sign_in(&app, &anna).await;
    let db = app.control().await;
    let expired_id = expired.cookie.trim_start_matches("mandant_session=");
    db.execute(
        "UPDATE console_sessions SET expires_at = now() - interval '1 second'
         WHERE id_hash = sha256(convert_to($1, 'UTF8'))",
        &[&expired_id],
    )
    .await
    .unwrap();
    revoke_session_token(&app, &app, &revoked, "anna").await;
    assert_eq!(
        app.control_i64("SELECT count(*) FROM console_sessions")
            .await,
        3
    );

    let runner = app.runner("housekeeping");
    app.drain(&runner).await;
    assert_eq!(
        app.control_i64("SELECT count(*) FROM console_sessions")
            .await,
        1,
        "the expired session and the revoked token's are gone"
    );
    let (status, _) = live.call(&app, Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK, "the live one stays");
    app.shutdown().await.unwrap();
}

/// The token behind `session` revoked through the API by the admin (its id read through `via`).
async fn revoke_session_token(app: &TestApp, via: &TestApp, session: &Session, username: &str) {
    let (_, me) = session.call(via, Method::GET, "/v1/me", None).await;
    let token_id = me["token"]["id"].as_str().unwrap().to_owned();
    let (status, _, _) = call(
        app,
        Some(ADMIN_TOKEN),
        Method::DELETE,
        &format!("/v1/users/{username}/tokens/{token_id}"),
        None,
    )
    .await;
    assert!(status.is_success(), "{status}");
}
