//! Users, roles, access and the audit log (issue #7): authentication, the access rule on every endpoint group,
//! private-data masking, no escalation, and what is recorded.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest;

use crate::helpers::{ADMIN_TOKEN, TestApp, error_code, http_client, spawn_app};

/// A request as some user; returns status, body bytes and the parsed body (Null if not JSON).
pub async fn call(
    app: &TestApp,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Vec<u8>, Value) {
    let client = http_client(token);
    let mut request = client.request(method.clone(), app.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status();
    let bytes = response.bytes().await.unwrap().to_vec();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, bytes, json)
}

/// Creates a user (as the admin) with roles and access, and a token for it; returns the token.
pub async fn user(
    app: &TestApp,
    username: &str,
    home: &str,
    roles: &[&str],
    access: &[(&str, &str, bool)],
) -> String {
    let (status, _, body) = call(
        app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/users",
        Some(json!({"username": username, "home_client": home, "roles": roles})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for (slug, level, private_data) in access {
        let (status, _, body) = call(
            app,
            Some(ADMIN_TOKEN),
            Method::PUT,
            &format!("/v1/users/{username}/access/{slug}"),
            Some(json!({"level": level, "private_data": private_data})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    token_for(app, ADMIN_TOKEN, username).await
}

async fn token_for(app: &TestApp, as_token: &str, username: &str) -> String {
    let (status, _, body) = call(
        app,
        Some(as_token),
        Method::POST,
        &format!("/v1/users/{username}/tokens"),
        Some(json!({"name": "test"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_operation_has_an_access_policy_and_refuses_a_call_without_a_token() {
    let app = spawn_app().await;
    let (status, _, document) = call(&app, None, Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK, "the OpenAPI document is public");
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        document["security"],
        json!([{"bearer": []}, {"session": []}])
    );
    let mut checked = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let rule = mandant::http::auth::policy(&method, path)
                .unwrap_or_else(|| panic!("{method} {path} has no access policy"));
            let concrete = path
                .replace("{slug}", "master")
                .replace("{username}", "admin")
                .replace("{name}", "some-name")
                .replace("{id}", "00000000-0000-0000-0000-000000000001")
                .replace("{rid}", "1");
            let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
            let (status, _, body) = call(&app, None, method.clone(), &concrete, body).await;
            if rule == mandant::http::auth::Rule::Public {
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
                let security = &operations[method.as_str().to_lowercase().as_str()]["security"];
                assert_eq!(
                    security,
                    &json!([{}]),
                    "{method} {path} documented as public"
                );
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
                assert_eq!(body["error"]["code"], "unauthorized", "{method} {path}");
                checked += 1;
            }
        }
    }
    assert!(checked > 60, "only {checked} protected operations found");
}

#[tokio::test]
async fn a_missing_malformed_or_unknown_token_gets_401_with_a_bearer_challenge() {
    let app = spawn_app().await;
    for header in [
        None,
        Some("Bearer nope".to_owned()),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(format!("Bearer {}x", ADMIN_TOKEN)),
        Some("Bearer mdt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned()),
    ] {
        let mut request = reqwest::Client::new().get(app.url("/v1/clients"));
        if let Some(header) = &header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"mandant\""
        );
        assert_eq!(error_code(response).await, "unauthorized");
    }
    let (status, _, me) = call(&app, Some(ADMIN_TOKEN), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["username"], "admin");
    assert_eq!(me["home_client"], "master");
    assert_eq!(me["master_admin"], true);
    assert_eq!(me["roles"], json!(["master-admin"]));
    assert_eq!(me["token"]["name"], "bootstrap");
}

#[tokio::test]
async fn a_token_is_shown_once_stored_as_a_hash_and_revoked_or_disabled_at_once() {
    let app = spawn_app().await;
    let token = user(
        &app,
        "vera",
        "master",
        &["viewer"],
        &[("master", "read", false)],
    )
    .await;
    assert!(token.starts_with("mdt_") && token.len() >= 43, "{token}");

    let (status, _, me) = call(&app, Some(&token), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["username"], "vera");
    assert_eq!(
        me["access"],
        json!([{"client": "master", "level": "read", "private_data": false}])
    );

    // Only the hash is stored; listing shows metadata, never the token.
    let digest = sha2::Sha256::digest(token.as_bytes()).to_vec();
    let db = app.control().await;
    let stored: Vec<u8> = db
        .query_one(
            "SELECT t.hash FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE u.username = 'vera'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, digest);
    let (_, bytes, tokens) = call(
        &app,
        Some(&token),
        Method::GET,
        "/v1/users/vera/tokens",
        None,
    )
    .await;
    assert_eq!(tokens.as_array().unwrap().len(), 1);
    assert!(tokens[0]["last_used_at"].is_string(), "{tokens}");
    assert!(!String::from_utf8_lossy(&bytes).contains(&token));

    // Disabled: refused at once; enabled again: its old tokens stay revoked (disabling revoked them), a new one
    // works.
    let (status, _, _) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::PATCH,
        "/v1/users/vera",
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&app, Some(&token), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    call(
        &app,
        Some(ADMIN_TOKEN),
        Method::PATCH,
        "/v1/users/vera",
        Some(json!({"disabled": false})),
    )
    .await;
    let (status, _, _) = call(&app, Some(&token), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let token = token_for(&app, ADMIN_TOKEN, "vera").await;
    let (status, _, _) = call(&app, Some(&token), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, tokens) = call(
        &app,
        Some(&token),
        Method::GET,
        "/v1/users/vera/tokens",
        None,
    )
    .await;

    // Revoked (by its owner): refused at once.
    let id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["revoked_at"].is_null())
        .expect("the live token")["id"]
        .as_str()
        .unwrap();
    let (status, _, _) = call(
        &app,
        Some(&token),
        Method::DELETE,
        &format!("/v1/users/vera/tokens/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(&app, Some(&token), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A change made by another process (here: straight in the control plane, with its NOTIFY) reaches this
    // process's cache too.
    let second = token_for(&app, ADMIN_TOKEN, "vera").await;
    let (status, _, _) = call(&app, Some(&second), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    db.batch_execute(
        "UPDATE users SET status = 'disabled' WHERE username = 'vera'; NOTIFY mandant_auth;",
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _, _) = call(&app, Some(&second), Method::GET, "/v1/me", None).await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The matrix: one client-admin user per access combination on client `alpha` (with a second client `beta`),
/// against every endpoint group.
#[tokio::test]
async fn the_access_rule_holds_on_every_endpoint_group_for_full_read_none_and_private_data() {
    let app = spawn_app().await;
    app.create_active_client("alpha").await;
    app.create_active_client("beta").await;
    let admin = Some(ADMIN_TOKEN);
    // Data on alpha: a personal and a plain custom field, a recipient, a list, a target group.
    for field in [
        json!({"name": "phone", "type": "text", "personal": true}),
        json!({"name": "city", "type": "text"}),
    ] {
        let (status, _, body) = call(
            &app,
            admin,
            Method::POST,
            "/v1/clients/alpha/fields",
            Some(field),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (_, _, anna) = call(
        &app,
        admin,
        Method::POST,
        "/v1/clients/alpha/recipients",
        Some(
            json!({"email": "anna@example.org", "first_name": "Anna", "last_name": "Alt",
                    "gender": "f", "phone": "+49 30 1234", "city": "Berlin"}),
        ),
    )
    .await;
    let rid = anna["id"].as_i64().unwrap();
    let (_, _, list) = call(
        &app,
        admin,
        Method::POST,
        "/v1/clients/alpha/mailing-lists",
        Some(json!({"name": "News"})),
    )
    .await;
    let list_id = list["id"].as_i64().unwrap();
    call(
        &app,
        admin,
        Method::PUT,
        &format!("/v1/clients/alpha/mailing-lists/{list_id}/recipients/{rid}"),
        Some(json!({"status": "active"})),
    )
    .await;
    let (_, _, group) = call(
        &app,
        admin,
        Method::POST,
        "/v1/clients/alpha/target-groups",
        Some(json!({"name": "Berlin", "rule": {"field": "city", "op": "eq", "value": "Berlin"}})),
    )
    .await;
    let group_id = group["id"].as_i64().unwrap();
    let (status, _, by_mail) = call(
        &app,
        admin,
        Method::POST,
        "/v1/clients/alpha/target-groups",
        Some(
            json!({"name": "Mail", "rule": {"field": "email", "op": "contains", "value": "anna"}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{by_mail}");
    let mail_group = by_mail["id"].as_i64().unwrap();
    let (_, _, template) = call(
        &app,
        admin,
        Method::POST,
        "/v1/clients/alpha/templates",
        Some(json!({"name": "Own", "subject": "Hi", "text_body": "Hello"})),
    )
    .await;
    let template_id = template["id"].as_str().unwrap().to_owned();
    // The tenant's catalogue lags behind the control plane (a change not applied yet): the control plane's word
    // that `phone` is personal is enough to mask it.
    app.tenant_db("alpha")
        .await
        .batch_execute("UPDATE field_catalogue SET personal = false WHERE name = 'phone'")
        .await
        .unwrap();
    let homed_at_alpha = user(&app, "alpha-clerk", "alpha", &["viewer"], &[]).await;
    drop(homed_at_alpha);

    // (name, level on alpha, private data); every user has full access to beta, so it is never unknown.
    let cases = [
        ("full-private", "full", true),
        ("full-plain", "full", false),
        ("read-private", "read", true),
        ("read-plain", "read", false),
        ("none", "none", false),
    ];
    for (n, (name, level, private_data)) in cases.iter().enumerate() {
        let mut access = vec![("beta", "full", false)];
        if *level != "none" {
            access.push(("alpha", *level, *private_data));
        }
        let token = user(&app, name, "beta", &["client-admin"], &access).await;
        let t = Some(token.as_str());
        let full = *level == "full";
        let visible = *level != "none";
        // Expected status of a read and of a write on alpha.
        let read = |ok: StatusCode| if visible { ok } else { StatusCode::NOT_FOUND };
        let write = |ok: StatusCode| match (visible, full) {
            (false, _) => StatusCode::NOT_FOUND,
            (true, false) => StatusCode::FORBIDDEN,
            (true, true) => ok,
        };
        // Writing an e-mail address (create, import: keyed by it) needs the private-data right too: the answer
        // would tell whether the address is known.
        let personal_write = |ok: StatusCode| match (visible, full, *private_data) {
            (true, true, false) => StatusCode::FORBIDDEN,
            _ => write(ok),
        };
        let checks: Vec<(Method, String, Option<Value>, StatusCode)> = vec![
            // clients
            (
                Method::GET,
                "/v1/clients/alpha".into(),
                None,
                read(StatusCode::OK),
            ),
            (
                Method::PATCH,
                "/v1/clients/alpha".into(),
                Some(json!({"name": format!("Alpha {n}")})),
                write(StatusCode::OK),
            ),
            // fields
            (
                Method::GET,
                "/v1/clients/alpha/fields".into(),
                None,
                read(StatusCode::OK),
            ),
            (
                Method::POST,
                "/v1/clients/alpha/fields".into(),
                Some(json!({"name": format!("extra_{n}"), "type": "integer"})),
                write(StatusCode::CREATED),
            ),
            // templates
            (
                Method::GET,
                "/v1/clients/alpha/templates".into(),
                None,
                read(StatusCode::OK),
            ),
            (
                Method::GET,
                format!("/v1/clients/alpha/templates/{template_id}"),
                None,
                read(StatusCode::OK),
            ),
            (
                Method::POST,
                "/v1/clients/alpha/templates".into(),
                Some(json!({"name": format!("T{n}"), "subject": "s", "text_body": "b"})),
                write(StatusCode::CREATED),
            ),
            // recipients
            (
                Method::GET,
                format!("/v1/clients/alpha/recipients/{rid}"),
                None,
                read(StatusCode::OK),
            ),
            (
                Method::POST,
                "/v1/clients/alpha/recipients".into(),
                Some(json!({"email": format!("r{n}@example.org")})),
                personal_write(StatusCode::CREATED),
            ),
            (
                Method::PATCH,
                format!("/v1/clients/alpha/recipients/{rid}"),
                Some(json!({"gender": "f"})),
                write(StatusCode::OK),
            ),
            // lists
            (
                Method::GET,
                format!("/v1/clients/alpha/mailing-lists/{list_id}/recipients"),
                None,
                read(StatusCode::OK),
            ),
            (
                Method::POST,
                "/v1/clients/alpha/mailing-lists".into(),
                Some(json!({"name": format!("L{n}")})),
                write(StatusCode::CREATED),
            ),
            // target groups
            (
                Method::GET,
                format!("/v1/clients/alpha/target-groups/{group_id}/count"),
                None,
                read(StatusCode::OK),
            ),
            (
                Method::POST,
                "/v1/clients/alpha/target-groups".into(),
                Some(
                    json!({"name": format!("G{n}"), "rule": {"field": "city", "op": "eq", "value": "Köln"}}),
                ),
                write(StatusCode::CREATED),
            ),
            // users homed at alpha
            (
                Method::GET,
                "/v1/users/alpha-clerk".into(),
                None,
                read(StatusCode::OK),
            ),
            (
                Method::GET,
                "/v1/users?client=alpha".into(),
                None,
                read(StatusCode::OK),
            ),
            (
                Method::PATCH,
                "/v1/users/alpha-clerk".into(),
                Some(json!({"display_name": format!("Clerk {n}")})),
                write(StatusCode::OK),
            ),
            (
                Method::PUT,
                "/v1/users/alpha-clerk/access/alpha".into(),
                Some(json!({"level": "read"})),
                write(StatusCode::OK),
            ),
            // (a client named in a body: unknown rather than not found)
            (
                Method::POST,
                "/v1/users".into(),
                Some(
                    json!({"username": format!("made-{n}"), "home_client": "alpha", "roles": ["viewer"]}),
                ),
                match (visible, full) {
                    (false, _) => StatusCode::UNPROCESSABLE_ENTITY,
                    (true, false) => StatusCode::FORBIDDEN,
                    (true, true) => StatusCode::CREATED,
                },
            ),
            // audit
            (
                Method::GET,
                "/v1/audit?client=alpha".into(),
                None,
                read(StatusCode::OK),
            ),
        ];
        for (method, path, body, expected) in checks {
            let (status, bytes, json) = call(&app, t, method.clone(), &path, body.clone()).await;
            assert_eq!(status, expected, "{name}: {method} {path}: {json}");
            if status == StatusCode::NOT_FOUND {
                // Invisible looks exactly like nonexistent (a client nobody has, a user nobody has).
                let missing = path
                    .replace("/clients/alpha", "/clients/no-such-client")
                    .replace("client=alpha", "client=no-such-client")
                    .replace("alpha-clerk", "no-such-user");
                let (other_status, other_bytes, _) =
                    call(&app, t, method.clone(), &missing, body).await;
                assert_eq!(other_status, StatusCode::NOT_FOUND, "{missing}");
                assert_eq!(
                    bytes, other_bytes,
                    "{name}: {method} {path} differs from {missing}"
                );
            }
        }
        // Import (a streamed body).
        let import = http_client(t)
            .post(app.url("/v1/clients/alpha/recipients/import"))
            .header("content-type", "text/csv")
            .body(format!("email,city\nimp{n}@example.org,Bonn\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            import.status(),
            personal_write(StatusCode::OK),
            "{name}: import"
        );
        // A parent the caller cannot see filters like one that does not exist.
        let (_, _, children) = call(&app, t, Method::GET, "/v1/clients?parent=master", None).await;
        assert_eq!(children["items"], json!([]), "{name}");

        // Client lists show only visible clients; the invisible one is not named anywhere.
        let (_, bytes, clients) = call(&app, t, Method::GET, "/v1/clients", None).await;
        let slugs: Vec<&str> = clients["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["slug"].as_str().unwrap())
            .collect();
        let expected: Vec<&str> = if visible {
            vec!["alpha", "beta"]
        } else {
            vec!["beta"]
        };
        assert_eq!(slugs, expected, "{name}");
        assert!(
            !String::from_utf8_lossy(&bytes).contains("\"master\""),
            "{name}: parent named"
        );

        if !visible {
            continue;
        }
        // Private data: masked without the right (the personal custom field too), shown with it.
        let (_, _, one) = call(
            &app,
            t,
            Method::GET,
            &format!("/v1/clients/alpha/recipients/{rid}"),
            None,
        )
        .await;
        let (_, _, members) = call(
            &app,
            t,
            Method::GET,
            &format!("/v1/clients/alpha/target-groups/{group_id}/recipients"),
            None,
        )
        .await;
        let (_, _, listed) = call(
            &app,
            t,
            Method::GET,
            "/v1/clients/alpha/recipients?city=Berlin",
            None,
        )
        .await;
        let (_, _, bound) = call(
            &app,
            t,
            Method::GET,
            &format!("/v1/clients/alpha/mailing-lists/{list_id}/recipients"),
            None,
        )
        .await;
        for shown in [
            &one,
            &members["items"][0],
            &listed["items"][0],
            &bound["items"][0],
        ] {
            assert_eq!(shown["city"], "Berlin", "{name}: {shown}");
            assert_eq!(shown["gender"], "f", "{name}: {shown}");
            if *private_data {
                assert_eq!(shown["email"], "anna@example.org", "{name}: {shown}");
                assert_eq!(shown["phone"], "+49 30 1234", "{name}: {shown}");
                assert!(shown.get("_masked").is_none(), "{name}: {shown}");
            } else {
                for field in ["email", "first_name", "last_name", "phone"] {
                    assert_eq!(shown[field], Value::Null, "{name}: {field} in {shown}");
                }
                assert_eq!(
                    shown["_masked"],
                    json!(["email", "first_name", "last_name", "phone"]),
                    "{name}"
                );
                assert!(!shown.to_string().contains("anna"), "{name}: {shown}");
            }
        }
        // Filters and rules on personal fields: refused without the right (so they cannot be inferred).
        let personal_reads = [
            "/v1/clients/alpha/recipients?email=anna@example.org".to_owned(),
            "/v1/clients/alpha/recipients?phone=1".to_owned(),
            format!("/v1/clients/alpha/target-groups/{mail_group}/count"),
            format!("/v1/clients/alpha/target-groups/{mail_group}/recipients"),
        ];
        for path in personal_reads {
            let (status, _, body) = call(&app, t, Method::GET, &path, None).await;
            if *private_data {
                assert_eq!(status, StatusCode::OK, "{name}: {path}: {body}");
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {path}");
                assert_eq!(
                    body["error"]["code"], "private_data_required",
                    "{name}: {path}"
                );
            }
        }
        // A stored rule's values on personal fields are withheld too (it was written with the right).
        let (_, _, stored) = call(
            &app,
            t,
            Method::GET,
            &format!("/v1/clients/alpha/target-groups/{mail_group}"),
            None,
        )
        .await;
        let (_, _, all_groups) = call(
            &app,
            t,
            Method::GET,
            "/v1/clients/alpha/target-groups",
            None,
        )
        .await;
        let listed_rule = all_groups["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == mail_group)
            .unwrap()["rule"]
            .clone();
        for rule in [&stored["rule"], &listed_rule] {
            if *private_data {
                assert_eq!(rule["value"], "anna", "{name}: {rule}");
            } else {
                assert_eq!(
                    rule,
                    &json!({"field": "email", "op": "contains", "value": null, "_masked": true}),
                    "{name}"
                );
            }
        }
        if full && !private_data {
            for (path, body) in [
                (
                    format!("/v1/clients/alpha/recipients/{rid}"),
                    json!({"email": "other@example.org"}),
                ),
                (
                    format!("/v1/clients/alpha/recipients/{rid}"),
                    json!({"phone": "+1"}),
                ),
            ] {
                let (status, _, response) =
                    call(&app, t, Method::PATCH, &path, Some(body.clone())).await;
                assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {response}");
                assert_eq!(response["error"]["code"], "private_data_required");
            }
            // Un-marking a personal field would unmask it.
            let (status, _, body) = call(
                &app,
                t,
                Method::PATCH,
                "/v1/clients/alpha/fields/phone",
                Some(json!({"personal": false})),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert_eq!(body["error"]["code"], "private_data_required");
            let (status, _, body) = call(
                &app,
                t,
                Method::POST,
                "/v1/clients/alpha/target-groups",
                Some(json!({"name": "Sneaky", "rule": {"not": {"field": "last_name", "op": "starts_with", "value": "A"}}})),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert_eq!(body["error"]["code"], "private_data_required");
        }
    }
    // Nothing the refused calls tried exists.
    let db = app.tenant_db("alpha").await;
    let names: Vec<String> = db
        .query("SELECT name FROM mailing_lists ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["L0", "L1", "News"]);
    let sneaky: i64 = db
        .query_one(
            "SELECT count(*) FROM target_groups WHERE name = 'Sneaky'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sneaky, 0);
}

#[tokio::test]
async fn central_definitions_need_access_to_the_master_and_sync_status_shows_only_visible_clients()
{
    let app = spawn_app().await;
    app.create_active_client("alpha").await;
    app.create_active_client("beta").await;
    let (_, _, template) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/templates",
        Some(json!({"name": "Welcome", "subject": "Hi", "text_body": "Hello"})),
    )
    .await;
    let id = template["id"].as_str().unwrap().to_owned();
    let outsider = user(
        &app,
        "outsider",
        "alpha",
        &["client-admin"],
        &[("alpha", "full", false)],
    )
    .await;
    let reader = user(
        &app,
        "reader",
        "alpha",
        &["client-admin"],
        &[("master", "read", false), ("alpha", "read", false)],
    )
    .await;

    for (method, path, body) in [
        (Method::GET, "/v1/fields".to_owned(), None),
        (
            Method::POST,
            "/v1/fields".to_owned(),
            Some(json!({"name": "tier", "type": "integer"})),
        ),
        (Method::GET, "/v1/templates".to_owned(), None),
        (
            Method::PUT,
            format!("/v1/templates/{id}"),
            Some(json!({"name": "X", "subject": "Y", "text_body": "Z"})),
        ),
    ] {
        let (status, _, response) = call(&app, Some(&outsider), method.clone(), &path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {response}");
        assert_eq!(response["error"]["code"], "permission_denied");
    }
    let (status, _, _) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/fields",
        Some(json!({"name": "segment", "type": "integer"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // A central field's progress counts only the clients the caller sees (master and alpha, not beta).
    let (_, _, segment) = call(&app, Some(&reader), Method::GET, "/v1/fields/segment", None).await;
    let progress = &segment["propagation"];
    let seen = ["applied", "pending", "failed"]
        .iter()
        .map(|k| progress[*k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(seen, 2, "{segment}");
    let (status, _, _) = call(&app, Some(&reader), Method::GET, "/v1/fields", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = call(
        &app,
        Some(&reader),
        Method::POST,
        "/v1/fields",
        Some(json!({"name": "tier", "type": "integer"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "read_only_access");
    let (status, _, sync) = call(
        &app,
        Some(&reader),
        Method::GET,
        &format!("/v1/templates/{id}/sync"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let clients: Vec<&str> = sync["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap())
        .collect();
    assert!(
        clients.iter().all(|c| ["master", "alpha"].contains(c)),
        "{sync}"
    );
    assert!(!clients.contains(&"beta"), "{sync}");

    // An operation is as visible as its client.
    let created = app.create_client("gamma").await;
    let op = created["operation"].as_str().unwrap();
    let (status, _, _) = call(
        &app,
        Some(&reader),
        Method::GET,
        &format!("/v1/operations/{op}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn nobody_can_grant_more_than_they_hold_or_change_their_own_rights() {
    let app = spawn_app().await;
    app.create_active_client("alpha").await;
    app.create_active_client("beta").await;
    let admin = Some(ADMIN_TOKEN);
    // A custom role with a permission client admins do not have.
    let (status, _, _) = call(
        &app,
        admin,
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "operator", "permissions": ["servers.manage", "clients.read"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let boss = user(
        &app,
        "boss",
        "alpha",
        &["client-admin"],
        &[("alpha", "full", false), ("beta", "read", true)],
    )
    .await;
    let b = Some(boss.as_str());
    let (status, _, _) = call(
        &app,
        b,
        Method::POST,
        "/v1/users",
        Some(json!({"username": "helper", "home_client": "alpha", "roles": ["editor"]})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a client admin creates an editor at its client"
    );

    let refused: Vec<(Method, String, Value, StatusCode, &str)> = vec![
        // Roles with more than the caller holds.
        (
            Method::POST,
            "/v1/users".into(),
            json!({"username": "mallory", "home_client": "alpha", "roles": ["master-admin"]}),
            StatusCode::FORBIDDEN,
            "escalation_refused",
        ),
        (
            Method::POST,
            "/v1/users".into(),
            json!({"username": "mallory", "home_client": "alpha", "roles": ["operator"]}),
            StatusCode::FORBIDDEN,
            "escalation_refused",
        ),
        (
            Method::PATCH,
            "/v1/users/helper".into(),
            json!({"roles": ["editor", "operator"]}),
            StatusCode::FORBIDDEN,
            "escalation_refused",
        ),
        // A home client without full access, or invisible.
        (
            Method::POST,
            "/v1/users".into(),
            json!({"username": "mallory", "home_client": "beta"}),
            StatusCode::FORBIDDEN,
            "read_only_access",
        ),
        (
            Method::POST,
            "/v1/users".into(),
            json!({"username": "mallory", "home_client": "master"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_client",
        ),
        // Access on a client without full access, on an invisible one, and private data it lacks.
        (
            Method::PUT,
            "/v1/users/helper/access/beta".into(),
            json!({"level": "read"}),
            StatusCode::FORBIDDEN,
            "read_only_access",
        ),
        (
            Method::PUT,
            "/v1/users/helper/access/master".into(),
            json!({"level": "read"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::PUT,
            "/v1/users/helper/access/alpha".into(),
            json!({"level": "full", "private_data": true}),
            StatusCode::FORBIDDEN,
            "escalation_refused",
        ),
        // Itself.
        (
            Method::PUT,
            "/v1/users/boss/access/alpha".into(),
            json!({"level": "full", "private_data": true}),
            StatusCode::FORBIDDEN,
            "self_edit_refused",
        ),
        (
            Method::PATCH,
            "/v1/users/boss".into(),
            json!({"roles": ["client-admin", "operator"]}),
            StatusCode::FORBIDDEN,
            "self_edit_refused",
        ),
        // Roles are not a client admin's to define.
        (
            Method::POST,
            "/v1/roles".into(),
            json!({"name": "sneaky", "permissions": ["audit.read"]}),
            StatusCode::FORBIDDEN,
            "permission_denied",
        ),
    ];
    for (method, path, body, status, code) in &refused {
        let (got, _, response) = call(&app, b, method.clone(), path, Some(body.clone())).await;
        assert_eq!(got, *status, "{method} {path} {body}: {response}");
        assert_eq!(response["error"]["code"], *code, "{method} {path}");
    }
    // A user with more than the boss (the master admin; someone with private data on alpha) cannot be managed.
    call(
        &app,
        admin,
        Method::PUT,
        "/v1/users/helper/access/alpha",
        Some(json!({"level": "read", "private_data": true})),
    )
    .await;
    for (method, path, body) in [
        (
            Method::PATCH,
            "/v1/users/helper",
            Some(json!({"disabled": true})),
        ),
        (Method::DELETE, "/v1/users/helper", None),
        (
            Method::POST,
            "/v1/users/helper/tokens",
            Some(json!({"name": "impersonate"})),
        ),
    ] {
        let (got, _, response) = call(&app, b, method.clone(), path, body).await;
        assert_eq!(got, StatusCode::FORBIDDEN, "{method} {path}: {response}");
        assert_eq!(response["error"]["code"], "escalation_refused");
    }
    // A role author can only give a role what it holds.
    let author = user(
        &app,
        "author",
        "master",
        &["operator"],
        &[("master", "full", false)],
    )
    .await;
    let (_, _, _) = call(
        &app,
        admin,
        Method::PUT,
        "/v1/roles/operator",
        Some(json!({"permissions": ["servers.manage", "clients.read", "roles.manage"]})),
    )
    .await;
    let (status, _, body) = call(
        &app,
        Some(&author),
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "bigger", "permissions": ["audit.read"]})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "escalation_refused");
    let (status, _, _) = call(
        &app,
        Some(&author),
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "smaller", "permissions": ["clients.read"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // A role reaches all its holders: only someone who can manage each of them (and is not one) may change it.
    user(
        &app,
        "holder",
        "master",
        &["smaller", "editor"],
        &[("master", "read", false)],
    )
    .await;
    for (role, code) in [
        ("smaller", "escalation_refused"),
        ("operator", "self_edit_refused"),
    ] {
        let (status, _, body) = call(
            &app,
            Some(&author),
            Method::PUT,
            &format!("/v1/roles/{role}"),
            Some(json!({"permissions": ["clients.read", "servers.manage"]})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{role}: {body}");
        assert_eq!(body["error"]["code"], code, "{role}");
    }
    // Roles are central: without full access to the master, no role changes at all.
    let (status, _, body) = call(
        &app,
        admin,
        Method::PUT,
        "/v1/users/author/access/master",
        Some(json!({"level": "read"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = call(
        &app,
        Some(&author),
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "another", "permissions": ["clients.read"]})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "read_only_access");
    // Built-in roles are fixed; a held role cannot be deleted.
    let (status, _, _) = call(
        &app,
        admin,
        Method::PUT,
        "/v1/roles/viewer",
        Some(json!({"permissions": []})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _, _) = call(&app, admin, Method::DELETE, "/v1/roles/operator", None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Nothing changed.
    let db = app.control().await;
    let users: Vec<String> = db
        .query("SELECT username FROM users ORDER BY username", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(users, ["admin", "author", "boss", "helper", "holder"]);
    let helper: (String, Vec<String>) = {
        let row = db
            .query_one(
                "SELECT u.status, ARRAY(SELECT role FROM user_roles WHERE user_id = u.id ORDER BY role) FROM users u WHERE username = 'helper'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(helper, ("active".to_owned(), vec!["editor".to_owned()]));
    let grants: Vec<(String, String, bool)> = db
        .query(
            "SELECT u.username, a.level, a.private_data FROM client_access a JOIN users u ON u.id = a.user_id
             JOIN clients c ON c.id = a.client_id WHERE c.slug = 'alpha' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        grants,
        [
            ("boss".to_owned(), "full".to_owned(), false),
            ("helper".to_owned(), "read".to_owned(), true)
        ]
    );
    let tokens: i64 = app.control_i64("SELECT count(*) FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE u.username = 'helper'").await;
    assert_eq!(tokens, 0);
    let roles: i64 = app
        .control_i64("SELECT count(*) FROM roles WHERE name IN ('sneaky', 'bigger', 'another')")
        .await;
    assert_eq!(roles, 0);
}

#[tokio::test]
async fn every_mutating_call_is_audited_without_secrets_and_the_log_is_filtered_by_access() {
    let app = spawn_app().await;
    app.create_active_client("alpha").await;
    app.create_active_client("beta").await;
    let auditor = user(
        &app,
        "auditor",
        "alpha",
        &["client-admin"],
        &[("alpha", "full", true)],
    )
    .await;
    let a = Some(auditor.as_str());
    // A success, a refusal by the check, a failure in the handler, on alpha; something on beta.
    let (status, _, _) = call(
        &app,
        a,
        Method::POST,
        "/v1/clients/alpha/recipients",
        Some(json!({"email": "x@example.org"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = call(&app, a, Method::DELETE, "/v1/clients/alpha", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = call(
        &app,
        a,
        Method::POST,
        "/v1/clients/alpha/recipients",
        Some(json!({"email": "x@example.org"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _, _) = call(
        &app,
        a,
        Method::POST,
        "/v1/clients/beta/recipients",
        Some(json!({"email": "y@example.org"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, created) = call(
        &app,
        a,
        Method::POST,
        "/v1/users/auditor/tokens",
        Some(json!({"name": "second"})),
    )
    .await;
    let secret = created["token"].as_str().unwrap().to_owned();

    let (status, _, log) = call(
        &app,
        a,
        Method::GET,
        "/v1/audit?client=alpha&user=auditor",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let entries: Vec<(String, String, String, i64)> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
                e["status"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            (
                "POST /v1/users/{username}/tokens".to_owned(),
                "/v1/users/auditor/tokens".to_owned(),
                "succeeded".to_owned(),
                201
            ),
            (
                "POST /v1/clients/{slug}/recipients".to_owned(),
                "/v1/clients/alpha/recipients".to_owned(),
                "failed".to_owned(),
                409
            ),
            (
                "DELETE /v1/clients/{slug}".to_owned(),
                "/v1/clients/alpha".to_owned(),
                "denied".to_owned(),
                403
            ),
            (
                "POST /v1/clients/{slug}/recipients".to_owned(),
                "/v1/clients/alpha/recipients".to_owned(),
                "succeeded".to_owned(),
                201
            ),
        ],
        "{log}"
    );
    assert!(
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["client"] == "alpha" && e["user"] == "auditor")
    );
    assert_eq!(log["items"][1]["detail"], json!({"error": "email_taken"}));
    assert_eq!(
        log["items"][2]["detail"],
        json!({"error": "permission_denied"})
    );
    // The attempt on beta is recorded on beta, which the auditor cannot read; the admin can.
    let (_, _, all) = call(&app, a, Method::GET, "/v1/audit", None).await;
    assert!(
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["client"] == "alpha"),
        "{all}"
    );
    let (status, _, _) = call(&app, a, Method::GET, "/v1/audit?client=beta", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, beta) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::GET,
        "/v1/audit?client=beta&user=auditor",
        None,
    )
    .await;
    assert_eq!(beta["items"][0]["outcome"], "denied", "{beta}");
    assert_eq!(beta["items"][0]["status"], 404);
    // Without audit.read: refused.
    let viewer = user(
        &app,
        "watcher",
        "alpha",
        &["viewer"],
        &[("alpha", "full", true)],
    )
    .await;
    let (status, _, _) = call(&app, Some(&viewer), Method::GET, "/v1/audit", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // No token in the audit log or in any response but the one that created it.
    let dump: String = app
        .control()
        .await
        .query_one(
            "SELECT string_agg(row_to_json(a)::text, ' ') FROM audit_log a",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for token in [&auditor, &secret, &ADMIN_TOKEN.to_owned()] {
        assert!(!dump.contains(token.as_str()), "a token in the audit log");
    }
    for path in [
        "/v1/me",
        "/v1/users/auditor",
        "/v1/users/auditor/tokens",
        "/v1/audit",
    ] {
        let (_, bytes, _) = call(&app, Some(&secret), Method::GET, path, None).await;
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&secret) && !text.contains(&auditor),
            "{path}: {text}"
        );
    }
}

#[tokio::test]
async fn a_client_created_by_a_non_admin_is_visible_to_its_creator_only_with_full_access() {
    let app = spawn_app().await;
    app.create_active_client("agency").await;
    let (status, _, _) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "agency-lead", "permissions": ["clients.read", "clients.create", "recipients.read"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let lead = user(
        &app,
        "lead",
        "agency",
        &["agency-lead"],
        &[("agency", "full", true)],
    )
    .await;
    let (status, _, body) = call(
        &app,
        Some(&lead),
        Method::POST,
        "/v1/clients",
        Some(json!({"slug": "shop", "name": "Shop", "parent": "agency"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["parent"], "agency");
    let (status, _, _) = call(
        &app,
        Some(&lead),
        Method::POST,
        "/v1/clients",
        Some(json!({"slug": "other", "name": "Other"})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the master is invisible to the lead"
    );
    let (status, _, shop) = call(&app, Some(&lead), Method::GET, "/v1/clients/shop", None).await;
    assert_eq!(status, StatusCode::OK, "{shop}");
    let (_, _, me) = call(&app, Some(&lead), Method::GET, "/v1/me", None).await;
    assert!(
        me["access"]
            .as_array()
            .unwrap()
            .contains(&json!({"client": "shop", "level": "full", "private_data": true})),
        "{me}"
    );
    // Someone with access to the agency only does not see the shop.
    let agent = user(
        &app,
        "agent",
        "agency",
        &["viewer"],
        &[("agency", "full", false)],
    )
    .await;
    let (status, _, _) = call(&app, Some(&agent), Method::GET, "/v1/clients/shop", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_operator_mints_a_token_from_the_command_line_and_it_is_audited() {
    let app = spawn_app().await;
    let cwd = crate::helpers::TestDir::new("users-cwd");
    let out = app
        .command(cwd.path())
        .args(["users", "token", "admin", "--name", "recovery"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("mdt_"), "{token}");
    let (status, _, me) = call(&app, Some(&token), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["token"]["name"], "recovery");
    let (_, _, log) = call(&app, Some(&token), Method::GET, "/v1/audit", None).await;
    assert_eq!(
        log["items"][0]["action"], "CLI mandant users token",
        "{log}"
    );
    assert!(!log.to_string().contains(&token));

    let unknown = app
        .command(cwd.path())
        .args(["users", "token", "nobody"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(unknown.stdout.is_empty());
}

#[tokio::test]
async fn the_last_active_master_admin_cannot_be_removed_even_by_two_admins_demoting_each_other_at_once()
 {
    let app = spawn_app().await;
    user(&app, "ops", "master", &["master-admin"], &[]).await;
    let control = app.state.control();
    let admin = control.user_by_name("admin").await.unwrap();
    let ops = control.user_by_name("ops").await.unwrap();
    let demote = |id| {
        let control = control.clone();
        async move {
            control
                .update_user(
                    id,
                    &mandant::control::access::UserChange {
                        roles: Some(vec!["viewer".to_owned()]),
                        ..Default::default()
                    },
                    None,
                )
                .await
        }
    };
    let (a, b) = tokio::join!(demote(admin.id), demote(ops.id));
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one demotion may succeed: {a:?} {b:?}"
    );
    let refused = a.err().or(b.err()).unwrap();
    assert!(
        matches!(refused, mandant::control::ControlError::LastMasterAdmin),
        "{refused:?}"
    );
    let admins = app
        .control_i64("SELECT count(*) FROM user_roles WHERE role = 'master-admin'")
        .await;
    assert_eq!(admins, 1);
}

#[tokio::test]
async fn workers_prune_audit_entries_older_than_the_retention() {
    let app = crate::helpers::spawn_app_opts(
        &[("MANDANT__AUTH__AUDIT_RETENTION_DAYS", "30".to_owned())],
        mandant::server::RunOptions { no_workers: true },
    )
    .await;
    app.control()
        .await
        .batch_execute(
            "INSERT INTO audit_log (at, action, target, outcome, status)
             SELECT now() - make_interval(days => d), 'POST /v1/x', '/v1/x', 'succeeded', 200
             FROM generate_series(1, 60) AS d",
        )
        .await
        .unwrap();
    let runner = app.runner("pruner");
    app.drain(&runner).await;
    let left = app
        .control_i64("SELECT count(*) FROM audit_log WHERE action = 'POST /v1/x'")
        .await;
    assert_eq!(left, 29, "entries of 1..29 days ago stay");
}

#[tokio::test]
async fn a_token_never_outlives_the_token_or_the_rights_it_was_minted_with() {
    let app = spawn_app().await;
    app.create_active_client("alpha").await;
    let admin = Some(ADMIN_TOKEN);
    user(
        &app,
        "vera",
        "alpha",
        &["viewer"],
        &[("alpha", "read", false)],
    )
    .await;
    let boss = user(
        &app,
        "boss",
        "alpha",
        &["client-admin"],
        &[("alpha", "full", false)],
    )
    .await;

    // A one-day token cannot mint a permanent one.
    let (_, _, short) = call(
        &app,
        admin,
        Method::POST,
        "/v1/users/vera/tokens",
        Some(json!({"name": "short", "expires_in_days": 1})),
    )
    .await;
    let short_token = short["token"].as_str().unwrap().to_owned();
    let (status, _, minted) = call(
        &app,
        Some(&short_token),
        Method::POST,
        "/v1/users/vera/tokens",
        Some(json!({"name": "forever"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(minted["expires_at"], short["expires_at"], "{minted}");

    // The boss mints a token for vera (it may act for her as she is now) ...
    let (status, _, for_vera) = call(
        &app,
        Some(&boss),
        Method::POST,
        "/v1/users/vera/tokens",
        Some(json!({"name": "by-boss"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let by_boss = for_vera["token"].as_str().unwrap().to_owned();
    let (status, _, _) = call(&app, Some(&by_boss), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    // ... which stops working when vera's rights change (her own token keeps working) ...
    let (status, _, _) = call(
        &app,
        admin,
        Method::PUT,
        "/v1/users/vera/access/alpha",
        Some(json!({"level": "read", "private_data": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&app, Some(&by_boss), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&app, Some(&short_token), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    // ... and tokens the boss minted stop when the boss is disabled.
    call(
        &app,
        admin,
        Method::PUT,
        "/v1/users/vera/access/alpha",
        Some(json!({"level": "read"})),
    )
    .await;
    let (_, _, again) = call(
        &app,
        Some(&boss),
        Method::POST,
        "/v1/users/vera/tokens",
        Some(json!({"name": "by-boss-2"})),
    )
    .await;
    let by_boss = again["token"].as_str().unwrap().to_owned();
    let (status, _, _) = call(
        &app,
        admin,
        Method::PATCH,
        "/v1/users/boss",
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&app, Some(&by_boss), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&app, Some(&short_token), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);

    // Without users.read, another user's tokens answer as for a user that does not exist.
    call(
        &app,
        admin,
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "reader", "permissions": ["recipients.read"]})),
    )
    .await;
    let plain = user(
        &app,
        "plain",
        "alpha",
        &["reader"],
        &[("alpha", "read", false)],
    )
    .await;
    let (status, bytes, _) = call(
        &app,
        Some(&plain),
        Method::GET,
        "/v1/users/boss/tokens",
        None,
    )
    .await;
    let (other, other_bytes, _) = call(
        &app,
        Some(&plain),
        Method::GET,
        "/v1/users/nobody-here/tokens",
        None,
    )
    .await;
    assert_eq!((status, &bytes), (other, &other_bytes));
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_write_cut_off_by_the_request_timeout_still_finishes_and_is_audited() {
    let app = crate::helpers::spawn_app_with(&[(
        "MANDANT__SERVER__REQUEST_TIMEOUT_SECS",
        "1".to_owned(),
    )])
    .await;
    app.create_active_client("slow").await;
    // A reader holds the recipients table: the field's ALTER waits (up to its lock timeout), longer than the
    // request may take.
    let tenant = app.tenant_db("slow").await;
    tenant
        .batch_execute("BEGIN; LOCK TABLE recipients IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/clients/slow/fields",
        Some(json!({"name": "late_field", "type": "integer"})),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let entry = loop {
        let (_, _, log) = call(
            &app,
            Some(ADMIN_TOKEN),
            Method::GET,
            "/v1/audit?client=slow",
            None,
        )
        .await;
        if let Some(entry) = log["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "POST /v1/clients/{slug}/fields")
        {
            break entry.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit entry: {log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // The handler ran to its end (the field is recorded, pending while the lock is held).
    assert!(entry["status"].as_i64().unwrap() < 300, "{entry}");
    assert_eq!(entry["outcome"], "succeeded");
    tenant.batch_execute("ROLLBACK").await.unwrap();
    let fields = app
        .control_i64("SELECT count(*) FROM fields WHERE name = 'late_field'")
        .await;
    assert_eq!(fields, 1);
}

#[tokio::test]
async fn a_token_minted_for_a_user_dies_when_that_user_creates_a_client_its_minter_cannot_see() {
    let app = spawn_app().await;
    app.create_active_client("agency").await;
    let admin = Some(ADMIN_TOKEN);
    call(&app, admin, Method::POST, "/v1/roles", Some(json!({"name": "founder", "permissions": ["clients.read", "clients.create", "users.read", "users.manage", "recipients.read"]}))).await;
    let minter = user(
        &app,
        "minter",
        "agency",
        &["founder"],
        &[("agency", "full", true)],
    )
    .await;
    let holder_own = user(
        &app,
        "holder",
        "agency",
        &["founder"],
        &[("agency", "full", true)],
    )
    .await;
    let (status, _, minted) = call(
        &app,
        Some(&minter),
        Method::POST,
        "/v1/users/holder/tokens",
        Some(json!({"name": "delegated"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    let delegated = minted["token"].as_str().unwrap().to_owned();
    let (status, _, body) = call(
        &app,
        Some(&holder_own),
        Method::POST,
        "/v1/clients",
        Some(json!({"slug": "holders-shop", "name": "Shop", "parent": "agency"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, _, _) = call(&app, Some(&delegated), Method::GET, "/v1/me", None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the minter cannot see the holder's new client"
    );
    let (status, _, _) = call(
        &app,
        Some(&holder_own),
        Method::GET,
        "/v1/clients/holders-shop",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn central_field_conflicts_and_counts_name_only_clients_the_caller_sees() {
    let app = spawn_app().await;
    for slug in ["alpha", "secret"] {
        app.create_active_client(slug).await;
    }
    let admin = Some(ADMIN_TOKEN);
    let (status, _, _) = call(
        &app,
        admin,
        Method::POST,
        "/v1/clients/secret/fields",
        Some(json!({"name": "loyalty", "type": "integer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let central = user(
        &app,
        "centralist",
        "master",
        &["client-admin"],
        &[("master", "full", false), ("alpha", "full", false)],
    )
    .await;
    let c = Some(central.as_str());
    let (status, _, body) = call(
        &app,
        c,
        Method::POST,
        "/v1/fields",
        Some(json!({"name": "loyalty", "type": "integer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "field_taken_by_clients");
    assert!(!body.to_string().contains("secret"), "{body}");
    let (status, _, body) = call(
        &app,
        admin,
        Method::POST,
        "/v1/fields",
        Some(json!({"name": "loyalty", "type": "integer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body.to_string().contains("secret"),
        "the admin sees who: {body}"
    );

    let (status, _, _) = call(
        &app,
        c,
        Method::POST,
        "/v1/fields",
        Some(json!({"name": "segment", "type": "integer"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, deleted) = call(&app, c, Method::DELETE, "/v1/fields/segment", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        deleted["clients"], 2,
        "master and alpha, not secret: {deleted}"
    );

    let (_, _, roles) = call(&app, c, Method::GET, "/v1/roles", None).await;
    assert!(
        roles
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("users").is_none()),
        "{roles}"
    );
    let (_, _, roles) = call(&app, admin, Method::GET, "/v1/roles", None).await;
    assert!(
        roles
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["users"].is_i64()),
        "{roles}"
    );
}

#[tokio::test]
async fn access_to_a_deleted_client_neither_counts_nor_blocks_managing_the_user() {
    let app = spawn_app().await;
    app.create_active_client("home").await;
    app.create_active_client("gone").await;
    user(
        &app,
        "worker",
        "home",
        &["viewer"],
        &[("home", "read", false), ("gone", "read", false)],
    )
    .await;
    let manager = user(
        &app,
        "manager",
        "home",
        &["client-admin"],
        &[("home", "full", false)],
    )
    .await;
    let (status, _, _) = call(
        &app,
        Some(&manager),
        Method::PATCH,
        "/v1/users/worker",
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "worker still has access the manager lacks"
    );
    let deleted = app.delete("/v1/clients/gone").await;
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let op: Value = deleted.json().await.unwrap();
    let op = app
        .wait_for_operation(op["operation"].as_str().unwrap())
        .await;
    assert_eq!(op["status"], "succeeded", "{op}");
    let (status, _, body) = call(
        &app,
        Some(&manager),
        Method::PATCH,
        "/v1/users/worker",
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn dominance_is_rechecked_inside_the_change_so_a_stale_check_cannot_delegate_or_grant() {
    let app = spawn_app().await;
    app.create_active_client("alpha").await;
    user(
        &app,
        "vera",
        "alpha",
        &["viewer"],
        &[("alpha", "read", false)],
    )
    .await;
    user(
        &app,
        "boss",
        "alpha",
        &["client-admin"],
        &[("alpha", "full", false)],
    )
    .await;
    let control = app.state.control();
    let vera = control.user_by_name("vera").await.unwrap();
    let boss = control.user_by_name("boss").await.unwrap();
    let alpha = app.client_json("alpha").await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let hash = mandant::domain::rights::token_hash("mdt_some-token-for-this-test-only-00000000000");
    control
        .create_token(vera.id, "ok", &hash, None, Some(boss.id))
        .await
        .unwrap();
    // Vera gains what the boss lacks (as a concurrent change would, after the boss's handler checked).
    let private = mandant::domain::rights::Grant {
        level: mandant::domain::rights::Level::Read,
        private_data: true,
    };
    control
        .set_access(vera.id, alpha, private, vera.id, None)
        .await
        .unwrap();
    let hash =
        mandant::domain::rights::token_hash("mdt_another-token-for-this-test-only-0000000000");
    let refused = control
        .create_token(vera.id, "stale", &hash, None, Some(boss.id))
        .await;
    assert!(
        matches!(refused, Err(mandant::control::ControlError::NotDominated)),
        "{refused:?}"
    );
    let full = mandant::domain::rights::Grant {
        level: mandant::domain::rights::Level::Full,
        private_data: false,
    };
    let refused = control
        .set_access(vera.id, alpha, full, boss.id, Some(boss.id))
        .await;
    assert!(
        matches!(refused, Err(mandant::control::ControlError::NotDominated)),
        "{refused:?}"
    );
    let tokens = app.control_i64("SELECT count(*) FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE u.username = 'vera' AND t.revoked_at IS NULL").await;
    assert_eq!(
        tokens, 1,
        "vera's own token only: the boss's was revoked when she gained rights"
    );
}

#[tokio::test]
async fn bad_user_role_token_and_access_input_is_a_clear_4xx_and_changes_nothing() {
    let app = spawn_app().await;
    app.create_active_client("alpha").await;
    let admin = Some(ADMIN_TOKEN);
    user(&app, "vera", "alpha", &["viewer"], &[]).await;
    let cases: Vec<(Method, &str, Value, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/v1/users",
            json!({"username": "Bad Name"}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            Method::POST,
            "/v1/users",
            json!({"username": "x'; DROP TABLE users; --"}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            Method::POST,
            "/v1/users",
            json!({"username": "newbie", "roles": ["no-such-role"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_role",
        ),
        (
            Method::POST,
            "/v1/users",
            json!({"username": "vera"}),
            StatusCode::CONFLICT,
            "username_taken",
        ),
        (
            Method::POST,
            "/v1/users",
            json!({"username": "newbie", "extra": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/users/vera/tokens",
            json!({"name": ""}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            Method::POST,
            "/v1/users/vera/tokens",
            json!({"name": "t", "expires_in_days": 0}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            Method::PUT,
            "/v1/users/vera/access/alpha",
            json!({"level": "admin"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            Method::PUT,
            "/v1/users/vera/access/no-such-client",
            json!({"level": "read"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/roles",
            json!({"name": "r1", "permissions": ["everything"]}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            Method::POST,
            "/v1/roles",
            json!({"name": "Role!", "permissions": []}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            Method::POST,
            "/v1/roles",
            json!({"name": "viewer", "permissions": []}),
            StatusCode::CONFLICT,
            "role_name_taken",
        ),
        (
            Method::PUT,
            "/v1/roles/no-such-role",
            json!({"permissions": []}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, _, response) = call(&app, admin, method.clone(), path, Some(body.clone())).await;
        assert_eq!(got, status, "{method} {path} {body}: {response}");
        assert_eq!(response["error"]["code"], code, "{method} {path} {body}");
    }
    for (path, status) in [
        ("/v1/users/NOT%20A%20NAME", StatusCode::NOT_FOUND),
        ("/v1/users/vera/tokens/not-a-uuid", StatusCode::NOT_FOUND),
        ("/v1/audit?limit=0", StatusCode::BAD_REQUEST),
        ("/v1/audit?cursor=zz", StatusCode::BAD_REQUEST),
        ("/v1/audit?client=Not_A_Slug", StatusCode::NOT_FOUND),
    ] {
        let method = if path.contains("/tokens/") {
            Method::DELETE
        } else {
            Method::GET
        };
        let (got, _, response) = call(&app, admin, method, path, None).await;
        assert_eq!(got, status, "{path}: {response}");
    }
    let users = app.control_i64("SELECT count(*) FROM users").await;
    assert_eq!(users, 2, "admin and vera only");
    let roles = app
        .control_i64("SELECT count(*) FROM roles WHERE NOT builtin")
        .await;
    assert_eq!(roles, 0);
    let grants = app.control_i64("SELECT count(*) FROM client_access").await;
    assert_eq!(grants, 0);
}
