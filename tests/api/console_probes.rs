//! Review probes of the administration console (issue #22), written as an attacker and as a new user. Each test is
//! named after the secure behaviour it expects. The ones that fail demonstrate a bug (see the review report); the
//! ones that pass hold the line and stay as regression tests.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::access::{call, user};
use crate::browser::Headless;
use crate::console::{sign_in, with_session};
use crate::helpers::{ADMIN_TOKEN, TestApp, spawn_app, spawn_app_without_workers};

/// The session id of a `mandant_session=<id>` cookie.
fn session_id(cookie: &str) -> &str {
    cookie.trim_start_matches("mandant_session=")
}

/// A raw request with exactly these headers; returns status, headers and the body as JSON (Null if none).
async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, String)>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = client.request(method, app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some((content_type, body)) = body {
        request = request.header("content-type", content_type).body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// Who a cookie header acts as (`GET /v1/me`), or the status when it is refused.
async fn who(app: &TestApp, cookie: &str) -> Result<String, StatusCode> {
    let (status, body) = with_session(app, cookie, None, Method::GET, "/v1/me", None).await;
    if status == StatusCode::OK {
        Ok(body["username"].as_str().unwrap().to_owned())
    } else {
        Err(status)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_session_never_outlives_its_short_lived_token_nor_its_deleted_user_in_any_process() {
    let app = spawn_app().await;
    let other = app
        .second_process(mandant::server::RunOptions { no_workers: true })
        .await;
    user(
        &app,
        "anna",
        "master",
        &["viewer"],
        &[("master", "read", false)],
    )
    .await;
    // A token that lives one day, then (in the store) only a few seconds more.
    let (status, _, minted) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/users/anna/tokens",
        Some(json!({"name": "short", "expires_in_days": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    let short = minted["token"].as_str().unwrap().to_owned();
    let id: uuid::Uuid = minted["id"].as_str().unwrap().parse().unwrap();
    let db = app.control().await;
    db.execute(
        "UPDATE api_tokens SET expires_at = now() + interval '3 seconds' WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    let session = sign_in(&app, &short).await;
    let (status, body) = with_session(
        &other,
        &session.cookie,
        None,
        Method::GET,
        "/v1/session",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expires: chrono::DateTime<chrono::Utc> =
        body["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(
        expires <= chrono::Utc::now() + chrono::Duration::seconds(4),
        "the session says it ends with its token: {expires}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    for process in [&app, &other] {
        assert_eq!(
            who(process, &session.cookie).await,
            Err(StatusCode::UNAUTHORIZED),
            "the token has expired: so has its session"
        );
    }

    // A deleted user: its sessions end at once in both processes, and their rows are gone.
    let bert = user(
        &app,
        "bert",
        "master",
        &["viewer"],
        &[("master", "read", false)],
    )
    .await;
    let session = sign_in(&app, &bert).await;
    assert_eq!(who(&other, &session.cookie).await, Ok("bert".to_owned()));
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::DELETE,
        "/v1/users/bert",
        None,
    )
    .await;
    assert!(status.is_success(), "{status} {body}");
    for process in [&app, &other] {
        assert_eq!(
            who(process, &session.cookie).await,
            Err(StatusCode::UNAUTHORIZED)
        );
    }
    let hash = {
        use sha2::Digest;
        sha2::Sha256::digest(session_id(&session.cookie).as_bytes()).to_vec()
    };
    assert_eq!(
        db.query_one(
            "SELECT count(*) FROM console_sessions WHERE id_hash = $1",
            &[&hash]
        )
        .await
        .unwrap()
        .get::<_, i64>(0),
        0,
        "the session row went with the user"
    );
    other.shutdown().await.unwrap();
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_session_cookies_in_one_request_are_refused_rather_than_resolved_by_their_order() {
    // Cookie tossing: whoever can set a cookie for the host (a sibling subdomain with Domain=, a man in the middle
    // on plain HTTP, since the cookie has no __Host- prefix) adds their own `mandant_session` with a longer Path;
    // the browser then sends it *before* the victim's. mandant takes the first one, so the victim's console
    // silently works as the attacker's account (GET /v1/session hands the page the attacker's CSRF token too).
    let app = spawn_app_without_workers().await;
    let mallory_token = user(&app, "mallory", "master", &["viewer"], &[]).await;
    let attacker = sign_in(&app, &mallory_token).await;
    let victim = sign_in(&app, ADMIN_TOKEN).await;
    for cookie in [
        format!("{}; {}", attacker.cookie, victim.cookie),
        format!("{}; {}", victim.cookie, attacker.cookie),
    ] {
        assert_eq!(
            who(&app, &cookie).await,
            Err(StatusCode::UNAUTHORIZED),
            "two different session cookies are ambiguous: {cookie}"
        );
    }
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_malformed_cookie_or_authorization_header_never_yields_a_session() {
    let app = spawn_app_without_workers().await;
    let session = sign_in(&app, ADMIN_TOKEN).await;
    let id = session_id(&session.cookie).to_owned();
    assert_eq!(who(&app, &session.cookie).await, Ok("admin".to_owned()));
    for cookie in [
        format!("mandant_session=\"{id}\""),
        format!("mandant_session={id}x"),
        format!("mandant_session={}", &id[..42]),
        format!("Mandant_Session={id}"),
        format!("xmandant_session={id}"),
        format!("mandant_session%3D{id}"),
        format!("mandant_session={}", id.to_uppercase()),
    ] {
        assert_eq!(
            who(&app, &cookie).await,
            Err(StatusCode::UNAUTHORIZED),
            "{cookie}"
        );
    }
    // With a malformed bearer Authorization header the cookie is not used either (the header wins, and fails).
    for authorization in [
        "",
        "Bearer",
        "Bearer short",
        "bearer   ",
        "Bearer mdt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let (status, _, _) = raw(
            &app,
            Method::GET,
            "/v1/me",
            &[
                ("cookie", &session.cookie),
                ("authorization", authorization),
            ],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?}");
    }
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn signing_in_never_adopts_a_session_id_the_browser_sent_and_needs_a_json_body() {
    let app = spawn_app_without_workers().await;
    // Fixation: an id planted in the browser before sign-in is never the session's.
    let planted = "A".repeat(43);
    let (status, headers, body) = raw(
        &app,
        Method::POST,
        "/v1/session",
        &[("cookie", &format!("mandant_session={planted}"))],
        Some((
            "application/json",
            json!({"token": ADMIN_TOKEN}).to_string(),
        )),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let set = headers["set-cookie"].to_str().unwrap();
    assert!(!set.contains(&planted), "{set}");
    assert_eq!(
        who(&app, &format!("mandant_session={planted}")).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    // Login CSRF: another site can post a form or text/plain without a preflight; neither signs anyone in.
    let before = app
        .control_i64("SELECT count(*) FROM console_sessions")
        .await;
    for (content_type, body) in [
        ("text/plain", json!({"token": ADMIN_TOKEN}).to_string()),
        (
            "application/x-www-form-urlencoded",
            format!("token={ADMIN_TOKEN}"),
        ),
        (
            "multipart/form-data; boundary=x",
            format!(
                "--x\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\n{ADMIN_TOKEN}\r\n--x--\r\n"
            ),
        ),
    ] {
        let (status, headers, _) = raw(
            &app,
            Method::POST,
            "/v1/session",
            &[],
            Some((content_type, body)),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
        assert!(headers.get("set-cookie").is_none(), "{content_type}");
    }
    assert_eq!(
        app.control_i64("SELECT count(*) FROM console_sessions")
            .await,
        before
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn neither_the_session_id_nor_the_csrf_token_nor_the_api_token_appear_in_audit_entries_or_responses()
 {
    let app = spawn_app_without_workers().await;
    let session = sign_in(&app, ADMIN_TOKEN).await;
    let id = session_id(&session.cookie).to_owned();
    let secrets = [id.as_str(), session.csrf.as_str(), ADMIN_TOKEN];
    let mut answers = Vec::new();
    for (method, path, body) in [
        (Method::GET, "/v1/me", None),
        (Method::GET, "/v1/users/admin", None),
        (Method::GET, "/v1/users/admin/tokens", None),
        (
            Method::POST,
            "/v1/clients",
            Some(json!({"slug": "leak", "name": "Leak"})),
        ),
        (
            Method::PATCH,
            "/v1/users/admin",
            Some(json!({"display_name": "A"})),
        ),
        (Method::GET, "/v1/audit", None),
    ] {
        let (status, answer) = with_session(
            &app,
            &session.cookie,
            Some(&session.csrf),
            method.clone(),
            path,
            body,
        )
        .await;
        assert!(status.as_u16() < 500, "{method} {path}: {status}");
        answers.push(answer.to_string());
    }
    // A refused change (wrong CSRF token) is audited too: with nothing of what was sent.
    let (status, _) = with_session(
        &app,
        &session.cookie,
        Some(&format!("{}x", session.csrf)),
        Method::POST,
        "/v1/clients",
        Some(json!({"slug": "leak2", "name": "Leak"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = raw(
        &app,
        Method::DELETE,
        "/v1/session",
        &[("cookie", &session.cookie), ("x-csrf-token", &session.csrf)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let db = app.control().await;
    let audit: Vec<String> = db
        .query("SELECT row_to_json(a)::text FROM audit_log a", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(audit.len() >= 4, "{audit:?}");
    for secret in secrets {
        for entry in &audit {
            assert!(!entry.contains(secret), "{entry}");
        }
        for answer in &answers {
            assert!(!answer.contains(secret), "{answer}");
        }
    }
    app.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// CSRF
// ---------------------------------------------------------------------------------------------------------------

/// A concrete path for a route template (any value matches a `{param}`; the CSRF check runs before extraction).
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            "{slug}" => "acme",
            "{username}" => "dora",
            s if s.starts_with('{') => "00000000-0000-0000-0000-000000000001",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_mutating_route_refuses_a_session_change_without_or_with_another_sessions_csrf_token()
{
    use mandant::http::policy::{POLICIES, Rule};
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    user(&app, "dora", "acme", &["viewer"], &[]).await;
    let session = sign_in(&app, ADMIN_TOKEN).await;
    let other = sign_in(&app, ADMIN_TOKEN).await;
    let before = app
        .control_i64("SELECT coalesce(max(id), 0) FROM audit_log")
        .await;
    let mut checked = 0;
    for (method, template, rule) in POLICIES {
        if matches!(*method, "GET" | "HEAD" | "OPTIONS") || *rule == Rule::Public {
            continue;
        }
        let path = concrete(template);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        for csrf in [None, Some(other.csrf.as_str()), Some("")] {
            let (status, body) = with_session(
                &app,
                &session.cookie,
                csrf,
                method.clone(),
                &path,
                Some(json!({})),
            )
            .await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (StatusCode::FORBIDDEN, Some("csrf_failed")),
                "{method} {path} with {csrf:?}: {body}"
            );
            checked += 1;
        }
    }
    assert!(checked > 90, "{checked}");
    assert_eq!(
        app.control_i64(&format!(
            "SELECT count(*) FROM audit_log WHERE id > {before} AND outcome = 'denied' AND status = 403"
        ))
        .await,
        checked,
        "each forged change is audited as denied"
    );
    assert_eq!(
        app.control_i64(&format!(
            "SELECT count(*) FROM audit_log WHERE id > {before}"
        ))
        .await,
        checked,
        "and nothing else ran"
    );
    // The session is still there and nothing was changed: dora still exists, acme still active.
    assert_eq!(who(&app, &session.cookie).await, Ok("admin".to_owned()));
    assert_eq!(
        app.control_i64("SELECT count(*) FROM users WHERE username = 'dora'")
            .await,
        1
    );
    assert_eq!(
        app.control_i64("SELECT count(*) FROM clients WHERE slug = 'acme' AND status = 'active'")
            .await,
        1
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn unusual_methods_and_method_override_headers_never_skip_the_csrf_check() {
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    let session = sign_in(&app, ADMIN_TOKEN).await;
    for method in ["PROPFIND", "TRACE", "OPTIONS", "PURGE", "delete", "Post"] {
        let (status, _, body) = raw(
            &app,
            Method::from_bytes(method.as_bytes()).unwrap(),
            "/v1/clients/acme",
            &[("cookie", &session.cookie)],
            None,
        )
        .await;
        assert!(
            status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::FORBIDDEN,
            "{method}: {status} {body}"
        );
    }
    // A GET that asks to be a DELETE stays a GET; a POST that asks to be a GET still needs the token.
    for header in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        let (status, _, _) = raw(
            &app,
            Method::GET,
            "/v1/clients/acme?_method=DELETE",
            &[("cookie", &session.cookie), (header, "DELETE")],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{header}");
        let (status, _, body) = raw(
            &app,
            Method::POST,
            "/v1/clients/acme/suspend",
            &[("cookie", &session.cookie), (header, "GET")],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{header}: {body}");
        assert_eq!(body["error"]["code"], "csrf_failed");
    }
    assert_eq!(
        app.control_i64("SELECT count(*) FROM clients WHERE slug = 'acme' AND status = 'active'")
            .await,
        1
    );
    app.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// The access matrix
// ---------------------------------------------------------------------------------------------------------------

async fn put_matrix(app: &TestApp, token: &str, slug: &str, rows: Value) -> (StatusCode, Value) {
    let (status, _, body) = call(
        app,
        Some(token),
        Method::PUT,
        &format!("/v1/clients/{slug}/access"),
        Some(json!({ "users": rows })),
    )
    .await;
    (status, body)
}

/// The answer with the probed username taken out (what an attacker compares).
fn shape(status: StatusCode, body: &Value, username: &str) -> String {
    format!("{status} {}", body.to_string().replace(username, "<user>"))
}

#[tokio::test]
async fn a_matrix_row_for_a_nonexistent_user_is_answered_exactly_like_one_for_an_invisible_user() {
    // DESIGN.md §6: what the caller cannot see is answered exactly as what does not exist. Here carla (client
    // admin of acme) probes usernames on acme's matrix: `ghost` exists but is homed on a client she cannot see,
    // `nobody` does not exist.
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    app.create_active_client("hidden").await;
    let carla = user(
        &app,
        "carla",
        "acme",
        &["client-admin"],
        &[("acme", "full", false)],
    )
    .await;
    user(&app, "ghost", "hidden", &["viewer"], &[]).await;
    user(&app, "dora", "acme", &["viewer"], &[]).await;

    let (ghost_status, ghost) = put_matrix(
        &app,
        &carla,
        "acme",
        json!([{"username": "ghost", "level": "read"}]),
    )
    .await;
    let (nobody_status, nobody) = put_matrix(
        &app,
        &carla,
        "acme",
        json!([{"username": "nobody", "level": "read"}]),
    )
    .await;
    assert_eq!(
        shape(nobody_status, &nobody, "nobody"),
        shape(ghost_status, &ghost, "ghost"),
        "an invisible user and a nonexistent one must be indistinguishable"
    );
    // The same with a valid row alongside: both refused as rows, the valid row not applied.
    let (ghost_status, ghost) = put_matrix(
        &app,
        &carla,
        "acme",
        json!([{"username": "dora", "level": "read"}, {"username": "ghost", "level": "read"}]),
    )
    .await;
    let (nobody_status, nobody) = put_matrix(
        &app,
        &carla,
        "acme",
        json!([{"username": "dora", "level": "read"}, {"username": "nobody", "level": "read"}]),
    )
    .await;
    assert_eq!(
        shape(nobody_status, &nobody, "nobody"),
        shape(ghost_status, &ghost, "ghost")
    );
    assert_eq!(
        app.control_i64(
            "SELECT count(*) FROM client_access a JOIN users u ON u.id = a.user_id WHERE u.username = 'dora'"
        )
        .await,
        0
    );
    // The single-cell route already answers both alike (the reference).
    let (a, _, _) = call(
        &app,
        Some(&carla),
        Method::PUT,
        "/v1/users/ghost/access/acme",
        Some(json!({"level": "read"})),
    )
    .await;
    let (b, _, _) = call(
        &app,
        Some(&carla),
        Method::PUT,
        "/v1/users/nobody/access/acme",
        Some(json!({"level": "read"})),
    )
    .await;
    assert_eq!(a, b);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_matrix_never_escalates_never_shows_invisible_users_and_hides_invisible_clients() {
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    app.create_active_client("other").await;
    app.create_active_client("hidden").await;
    // carla: client admin, full on acme without private data, read on other.
    let carla = user(
        &app,
        "carla",
        "acme",
        &["client-admin"],
        &[("acme", "full", false), ("other", "read", false)],
    )
    .await;
    user(&app, "dora", "acme", &["viewer"], &[]).await;
    // erik holds more than carla: private data on acme.
    user(&app, "erik", "acme", &["viewer"], &[("acme", "read", true)]).await;
    // fay holds access to a client carla cannot see.
    user(
        &app,
        "fay",
        "acme",
        &["viewer"],
        &[("hidden", "read", false)],
    )
    .await;
    // gus is homed where carla only reads.
    user(&app, "gus", "other", &["viewer"], &[]).await;
    user(&app, "ghost", "hidden", &["viewer"], &[]).await;
    let snapshot = || async {
        app.control()
            .await
            .query(
                "SELECT u.username, c.slug, a.level, a.private_data FROM client_access a
                 JOIN users u ON u.id = a.user_id JOIN clients c ON c.id = a.client_id ORDER BY 1, 2",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                    r.get::<_, bool>(3)
                )
            })
            .collect::<Vec<_>>()
    };
    let before = snapshot().await;

    for (slug, rows, status, code) in [
        // Private data carla does not hold.
        (
            "acme",
            json!([{"username": "dora", "level": "read", "private_data": true}]),
            StatusCode::FORBIDDEN,
            "access_refused",
        ),
        // Lowering a user who holds more than carla.
        (
            "acme",
            json!([{"username": "erik", "level": "none"}]),
            StatusCode::FORBIDDEN,
            "access_refused",
        ),
        // A user with access carla cannot see.
        (
            "acme",
            json!([{"username": "fay", "level": "full"}]),
            StatusCode::FORBIDDEN,
            "access_refused",
        ),
        // A user homed where carla only reads.
        (
            "acme",
            json!([{"username": "gus", "level": "read"}]),
            StatusCode::FORBIDDEN,
            "access_refused",
        ),
        // Her own row, raised.
        (
            "acme",
            json!([{"username": "carla", "level": "full", "private_data": true}]),
            StatusCode::FORBIDDEN,
            "access_refused",
        ),
        // A client she only reads, and one she cannot see (exactly as one that does not exist).
        (
            "other",
            json!([{"username": "dora", "level": "read"}]),
            StatusCode::FORBIDDEN,
            "read_only_access",
        ),
        (
            "hidden",
            json!([{"username": "dora", "level": "read"}]),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "nosuchclient",
            json!([{"username": "dora", "level": "read"}]),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        // A valid row does not carry a refused one through (all or none). (erik's row must be a change: a row
        // equal to his current grant is a no-op by design and is not checked.)
        (
            "acme",
            json!([{"username": "dora", "level": "full"}, {"username": "erik", "level": "full", "private_data": true}]),
            StatusCode::FORBIDDEN,
            "access_refused",
        ),
    ] {
        let (got, body) = put_matrix(&app, &carla, slug, rows.clone()).await;
        assert_eq!(
            (got, body["error"]["code"].as_str().unwrap_or_default()),
            (status, code),
            "{slug} {rows}: {body}"
        );
        assert!(!body.to_string().contains("hidden"), "{body}");
    }
    assert_eq!(snapshot().await, before, "nothing changed");

    // What carla sees: users homed on clients she sees, never ghost; the hidden client never appears.
    for slug in ["acme", "other"] {
        let (status, _, body) = call(
            &app,
            Some(&carla),
            Method::GET,
            &format!("/v1/clients/{slug}/access"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let text = body.to_string();
        assert!(!text.contains("ghost"), "{text}");
        assert!(!text.contains("hidden"), "{text}");
    }
    let (a, _, x) = call(
        &app,
        Some(&carla),
        Method::GET,
        "/v1/clients/hidden/access",
        None,
    )
    .await;
    let (b, _, y) = call(
        &app,
        Some(&carla),
        Method::GET,
        "/v1/clients/nosuch/access",
        None,
    )
    .await;
    assert_eq!((a, x), (b, y));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversized_matrix_change_is_refused_before_any_lookup() {
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    let rows: Vec<Value> = (0..5001)
        .map(|i| json!({"username": format!("u{i}"), "level": "read"}))
        .collect();
    let started = std::time::Instant::now();
    let (status, body) = put_matrix(&app, ADMIN_TOKEN, "acme", json!(rows)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    app.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// The console's static files
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn console_files_are_only_the_assets_with_their_types_and_headers_whatever_the_encoding() {
    let app = spawn_app_without_workers().await;
    for path in [
        "/console/..%2F..%2FCargo.toml",
        "/console/%252e%252e%252fCargo.toml",
        "/console/..%5Cmod.rs",
        "/console/%5C..%5CCargo.toml",
        "/console/..%c0%afCargo.toml",
        "/console/%2e%2e",
        "/console/app.js%00",
        "/console/app.js%20",
        "/console/APP.JS",
        "/console/app.js/",
        "/console/app.js/x",
        "/console//etc/passwd",
        "/console/%2Fetc%2Fpasswd",
        "/console/../Cargo.toml",
        "/console/mod.rs",
        "/console/assets",
        "/console/style.css.map",
    ] {
        let (status, headers, _) = raw(&app, Method::GET, path, &[], None).await;
        assert!(
            status == StatusCode::NOT_FOUND
                || status == StatusCode::BAD_REQUEST
                || status.is_redirection(),
            "{path}: {status}"
        );
        if let Some(location) = headers.get("location") {
            let location = location.to_str().unwrap();
            assert!(
                location.starts_with('/') && !location.starts_with("//"),
                "{path} → {location}"
            );
        }
    }
    for (file, kind) in [
        ("", "text/html"),
        ("index.html", "text/html"),
        ("app.js", "javascript"),
        ("api.js", "javascript"),
        ("dom.js", "javascript"),
        ("access.js", "javascript"),
        ("style.css", "text/css"),
    ] {
        let (status, headers, _) =
            raw(&app, Method::GET, &format!("/console/{file}"), &[], None).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        let content_type = headers["content-type"].to_str().unwrap();
        assert!(content_type.contains(kind), "{file}: {content_type}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{file}");
        assert!(headers.contains_key("content-security-policy"), "{file}");
        assert!(headers.get("set-cookie").is_none(), "{file}");
        assert!(
            headers.get("access-control-allow-origin").is_none(),
            "{file}"
        );
    }
    // No CORS anywhere: a preflight is never answered with permission.
    let (_, headers, _) = raw(
        &app,
        Method::OPTIONS,
        "/v1/clients",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-csrf-token"),
        ],
        None,
    )
    .await;
    assert!(headers.get("access-control-allow-origin").is_none());
    assert!(headers.get("access-control-allow-headers").is_none());
    app.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// As a new user
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_readme_has_the_console_section_its_own_api_table_points_to() {
    // README's API table says "(see *Console*)" for /v1/session; a new user looks there for how to open the
    // console and with what to sign in.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("see *Console*"));
    assert!(
        readme
            .lines()
            .any(|l| l.starts_with('#') && l.to_lowercase().contains("console")),
        "README.md has no Console section"
    );
    let quick_start = readme.split("## Prerequisites").next().unwrap();
    assert!(
        quick_start.contains("/console"),
        "the quick start does not mention the console at all"
    );
}

#[tokio::test]
async fn hostile_names_show_as_text_on_every_console_page_and_a_new_user_reaches_sign_in_from_the_root()
 {
    let app = spawn_app().await;
    const PAYLOAD: &str = "<img data-xss=1 src=x onerror=window.__xss=1><b data-xss=1>x</b>";
    // A client, a user (display name), a template and an audit entry all carrying markup.
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/clients",
        Some(json!({"slug": "evil", "name": format!("Evil {PAYLOAD}")})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let op = app
        .wait_for_operation(body["operation"].as_str().unwrap())
        .await;
    assert_eq!(op["status"], "succeeded", "{op}");
    user(
        &app,
        "hostile",
        "evil",
        &["viewer"],
        &[("evil", "read", false)],
    )
    .await;
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::PATCH,
        "/v1/users/hostile",
        Some(json!({"display_name": PAYLOAD})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/templates",
        Some(json!({"name": PAYLOAD, "subject": PAYLOAD, "html_body": PAYLOAD, "text_body": "t"})),
    )
    .await;
    assert!(status.is_success(), "{status} {body}");

    let browser = Headless::start().await;
    // The root address leads to a sign-in form.
    let tab = browser.open(&app.url("/")).await;
    tab.wait_for("#token").await;
    assert!(
        tab.eval::<String>("location.pathname")
            .await
            .starts_with("/console/")
    );
    tab.fill("#token", &format!("  {ADMIN_TOKEN}  ")).await;
    tab.click("#sign-in").await;
    tab.wait_until("!document.getElementById('nav').hidden")
        .await;
    for route in [
        "#/overview",
        "#/clients",
        "#/access/evil",
        "#/users",
        "#/users/hostile",
        "#/templates",
        "#/audit",
    ] {
        tab.route(route).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let injected: i64 = tab
            .eval("document.querySelectorAll('[data-xss]').length")
            .await;
        assert_eq!(injected, 0, "markup from data became elements on {route}");
        let xss: bool = tab.eval("window.__xss === 1").await;
        assert!(!xss, "{route}");
    }
    assert!(tab.text().await.contains("<img data-xss"), "shown as text");
    let problems = tab.problems().await;
    assert!(problems.is_empty(), "{problems:?}");
    browser.close().await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_admin_without_master_access_opens_every_page_the_navigation_offers_without_an_error()
 {
    // A new client administrator: full access to one client, nothing on the master. Every page the navigation
    // offers must open without an error message, a CSP violation or a script error.
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    let carla = user(
        &app,
        "carla",
        "acme",
        &["client-admin"],
        &[("acme", "full", true)],
    )
    .await;
    user(
        &app,
        "dora",
        "acme",
        &["editor"],
        &[("acme", "read", false)],
    )
    .await;
    let browser = Headless::start().await;
    let tab = browser.open(&app.url("/")).await;
    tab.wait_for("#token").await;
    tab.fill("#token", &carla).await;
    tab.click("#sign-in").await;
    tab.wait_until("!document.getElementById('nav').hidden")
        .await;
    let links: Vec<String> = tab
        .eval("[...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))")
        .await;
    assert!(links.len() >= 5, "{links:?}");
    let mut broken = Vec::new();
    for link in &links {
        tab.route(link).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let errors: Vec<String> = tab
            .eval("[...document.querySelectorAll('main .error, main [role=alert]')].map(e => e.innerText)")
            .await;
        let title: String = tab
            .eval("(document.querySelector('main h1') || {}).innerText || ''")
            .await;
        if !errors.is_empty() || title == "Not available" {
            broken.push(format!("{link}: {title}: {errors:?}"));
        }
    }
    let problems = tab.problems().await;
    assert!(
        broken.is_empty() && problems.is_empty(),
        "{broken:?} {problems:?}"
    );
    browser.close().await;
    app.shutdown().await.unwrap();
}
