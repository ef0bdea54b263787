//! Cross-client work from the master (issue #17): target groups over standard and central fields counted and
//! streamed in every client at once, the access rule on them, and the overview with the statistics behind it.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::access::{call, user};
use crate::helpers::{TestApp, TestDir, error_code, spawn_app};

/// Creates a central field and waits until every live client has it.
async fn central_field(app: &TestApp, body: Value) {
    let name = body["name"].as_str().unwrap().to_owned();
    let created = app.post_json("/v1/fields", &body).await;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let field: Value = app
            .get(&format!("/v1/fields/{name}"))
            .await
            .json()
            .await
            .unwrap();
        if field["propagation"]["pending"] == 0 && field["propagation"]["failed"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{field}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds recipients `email@slug.example` with a region each.
async fn recipients(app: &TestApp, slug: &str, regions: &[&str]) {
    for (i, region) in regions.iter().enumerate() {
        let created = app
            .post_json(
                &format!("/v1/clients/{slug}/recipients"),
                &json!({"email": format!("r{i}@{slug}.example"), "region": region}),
            )
            .await;
        assert_eq!(created.status(), StatusCode::CREATED, "{slug}");
    }
}

#[tokio::test]
async fn a_cross_client_count_over_five_clients_with_one_down_reports_four_counts_one_error_and_their_total()
 {
    let app = spawn_app().await;
    let slugs = ["cc-one", "cc-two", "cc-three", "cc-four", "cc-five"];
    for slug in slugs {
        app.create_active_client(slug).await;
    }
    central_field(
        &app,
        json!({"name": "region", "type": "text", "length": 40}),
    )
    .await;
    for (k, slug) in slugs.iter().enumerate() {
        // Client k has k+1 recipients in the north and one in the south.
        let mut regions = vec!["north"; k + 1];
        regions.push("south");
        recipients(&app, slug, &regions).await;
    }
    let created = app
        .post_json(
            "/v1/target-groups",
            &json!({"name": "North", "rule": {"field": "region", "op": "eq", "value": "north"},
                    "clients": slugs}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(
        created.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v1/target-groups/")
    );
    let group: Value = created.json().await.unwrap();
    assert_eq!(group["selection"], "clients");
    let mut named = slugs.map(str::to_owned).to_vec();
    named.sort();
    assert_eq!(group["clients"], json!(named));

    app.take_down("cc-three").await;
    let response = app
        .get(&format!("/v1/target-groups/{}/count", group["id"]))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let count: Value = response.json().await.unwrap();
    let rows = count["clients"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{count}");
    let listed: Vec<&str> = rows.iter().map(|r| r["client"].as_str().unwrap()).collect();
    assert_eq!(
        listed,
        named.iter().map(String::as_str).collect::<Vec<_>>(),
        "by slug"
    );
    let mut total = 0;
    for row in rows {
        let k = slugs.iter().position(|s| *s == row["client"]).unwrap() as i64;
        if row["client"] == "cc-three" {
            assert!(row.get("count").is_none(), "{row}");
            assert_eq!(row["error"]["code"], "tenant_unavailable", "{row}");
            assert!(row["error"]["message"].as_str().unwrap().len() > 10);
        } else {
            assert_eq!(row["count"], k + 1, "{row}");
            assert!(row.get("error").is_none());
            total += k + 1;
        }
        assert!(row["elapsed_ms"].is_u64());
    }
    assert_eq!(count["total"], total);
    assert_eq!(total, 1 + 2 + 4 + 5);

    // Back up: counted again at once (the breaker the failure may have tripped was closed with the pool).
    app.bring_up("cc-three").await;
    app.state.pools().close_tenant(
        app.client_json("cc-three").await["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
    );
    let count: Value = app
        .get(&format!("/v1/target-groups/{}/count", group["id"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(count["total"], 15, "{count}");
}

#[tokio::test]
async fn cross_client_recipients_stream_masked_where_the_caller_lacks_private_data_with_an_error_line_for_a_failing_client()
 {
    let app = spawn_app().await;
    for slug in ["st-a", "st-b", "st-c", "st-hidden"] {
        app.create_active_client(slug).await;
    }
    central_field(
        &app,
        json!({"name": "region", "type": "text", "length": 40}),
    )
    .await;
    recipients(&app, "st-a", &["north", "north", "south"]).await;
    recipients(&app, "st-b", &["north"]).await;
    recipients(&app, "st-c", &["north"]).await;
    recipients(&app, "st-hidden", &["north", "north"]).await;
    let group: Value = app
        .post_json(
            "/v1/target-groups",
            &json!({"name": "North everywhere", "rule": {"field": "region", "op": "eq", "value": "north"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(group["selection"], "all");
    // Private data on st-a, not on st-b; st-c is down; st-hidden is invisible.
    let token = user(
        &app,
        "stream-viewer",
        "master",
        &["viewer"],
        &[
            ("master", "read", false),
            ("st-a", "read", true),
            ("st-b", "read", false),
            ("st-c", "read", true),
        ],
    )
    .await;
    app.take_down("st-c").await;

    let response = crate::helpers::http_client(Some(&token))
        .get(app.url(&format!("/v1/target-groups/{}/recipients", group["id"])))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = response.text().await.unwrap();
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let of = |slug: &str| -> Vec<&Value> { lines.iter().filter(|l| l["client"] == slug).collect() };
    assert!(
        of("st-hidden").is_empty(),
        "an invisible client never appears: {body}"
    );
    assert!(!body.contains("st-hidden"));
    assert_eq!(
        of("master").len(),
        0,
        "no recipients, no access to the master's data shown"
    );
    let a = of("st-a");
    assert_eq!(a.len(), 2, "{body}");
    for line in &a {
        let recipient = &line["recipient"];
        assert!(
            recipient["email"]
                .as_str()
                .unwrap()
                .ends_with("@st-a.example"),
            "{line}"
        );
        assert_eq!(recipient["region"], "north");
    }
    let b = of("st-b");
    assert_eq!(b.len(), 1, "{body}");
    assert!(b[0]["recipient"]["email"].is_null(), "masked: {}", b[0]);
    assert!(
        b[0]["recipient"]["_masked"]
            .as_array()
            .unwrap()
            .contains(&json!("email")),
        "{}",
        b[0]
    );
    assert!(!body.contains("@st-b.example"));
    let c = of("st-c");
    assert_eq!(c.len(), 1, "{body}");
    assert_eq!(c[0]["error"]["code"], "tenant_unavailable", "{}", c[0]);
    assert!(c[0].get("recipient").is_none());
    // Client by client, in slug order: st-a, st-b, st-c.
    let order: Vec<&str> = lines
        .iter()
        .map(|l| l["client"].as_str().unwrap())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);

    // The count skips the invisible client too.
    let (status, _, count) = call(
        &app,
        Some(&token),
        Method::GET,
        &format!("/v1/target-groups/{}/count", group["id"]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> = count["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["client"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["master", "st-a", "st-b", "st-c"], "{count}");
    assert_eq!(count["total"], 3, "{count}");
}

#[tokio::test]
async fn cross_client_target_groups_refuse_client_fields_lists_unknown_and_invisible_clients() {
    let app = spawn_app().await;
    app.create_active_client("rf-one").await;
    app.create_active_client("rf-two").await;
    let own = app
        .post_json(
            "/v1/clients/rf-one/fields",
            &json!({"name": "shoe_size", "type": "integer"}),
        )
        .await;
    assert_eq!(own.status(), StatusCode::CREATED);
    let groups_before = app
        .control_i64("SELECT count(*) FROM central_target_groups")
        .await;

    let client_field = app
        .post_json(
            "/v1/target-groups",
            &json!({"name": "Big feet", "rule": {"field": "shoe_size", "op": "gt", "value": 45}}),
        )
        .await;
    assert_eq!(client_field.status(), StatusCode::BAD_REQUEST);
    let body: Value = client_field.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_rule");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("standard and central fields only"),
        "{body}"
    );
    let list = app
        .post_json(
            "/v1/target-groups",
            &json!({"name": "Listed", "rule": {"list": 1}}),
        )
        .await;
    assert_eq!(list.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(list).await, "invalid_rule");
    let both = app
        .post_json(
            "/v1/target-groups",
            &json!({"name": "Both", "rule": {"field": "gender", "op": "eq", "value": "f"},
                    "clients": ["rf-one"], "parent": "master"}),
        )
        .await;
    assert_eq!(both.status(), StatusCode::BAD_REQUEST);

    // A client the caller cannot see is refused exactly like one that does not exist.
    let token = user(
        &app,
        "tg-author",
        "master",
        &["viewer"],
        &[("master", "full", false), ("rf-one", "read", false)],
    )
    .await;
    let mut answers = Vec::new();
    for slug in ["rf-two", "rf-nobody"] {
        let (status, bytes, _) = call(
            &app,
            Some(&token),
            Method::POST,
            "/v1/target-groups",
            Some(
                json!({"name": "Sel", "rule": {"field": "gender", "op": "eq", "value": "f"},
                        "clients": [slug]}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        answers.push(String::from_utf8(bytes).unwrap().replace(slug, "SLUG"));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(
        app.control_i64("SELECT count(*) FROM central_target_groups")
            .await,
        groups_before,
        "nothing was stored"
    );

    // Created by the admin over both, shown to this caller with the visible client only.
    let group: Value = app
        .post_json(
            "/v1/target-groups",
            &json!({"name": "Both clients", "rule": {"field": "gender", "op": "eq", "value": "f"},
                    "clients": ["rf-one", "rf-two"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let (status, _, shown) = call(
        &app,
        Some(&token),
        Method::GET,
        &format!("/v1/target-groups/{}", group["id"]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["clients"], json!(["rf-one"]));
    let (_, bytes, _) = call(
        &app,
        Some(&token),
        Method::GET,
        &format!("/v1/target-groups/{}/count", group["id"]),
        None,
    )
    .await;
    assert!(!String::from_utf8(bytes).unwrap().contains("rf-two"));
}

#[tokio::test]
async fn the_access_rule_holds_on_cross_client_target_groups_for_none_read_and_private_data() {
    let app = spawn_app().await;
    app.create_active_client("ac-one").await;
    central_field(
        &app,
        json!({"name": "phone", "type": "text", "length": 40, "personal": true}),
    )
    .await;
    let personal: Value = app
        .post_json(
            "/v1/target-groups",
            &json!({"name": "Has phone", "rule": {"field": "phone", "op": "eq", "value": "+49 30 1234"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let plain: Value = app
        .post_json(
            "/v1/target-groups",
            &json!({"name": "Women", "rule": {"field": "gender", "op": "eq", "value": "f"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let none = user(
        &app,
        "ac-none",
        "master",
        &["viewer"],
        &[("ac-one", "full", true)],
    )
    .await;
    let read = user(
        &app,
        "ac-read",
        "master",
        &["viewer"],
        &[("master", "read", false), ("ac-one", "read", true)],
    )
    .await;
    let private = user(
        &app,
        "ac-private",
        "master",
        &["client-admin"],
        &[("master", "full", true), ("ac-one", "full", false)],
    )
    .await;
    let everywhere = user(
        &app,
        "ac-everywhere",
        "master",
        &["client-admin"],
        &[("master", "full", true), ("ac-one", "full", true)],
    )
    .await;
    let get = |token: String, path: String| {
        let app = &app;
        async move { call(app, Some(&token), Method::GET, &path, None).await }
    };

    // No access to the master: refused (central definitions are public knowledge), never empty.
    let (status, _, body) = get(none.clone(), "/v1/target-groups".into()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("master"),
        "{body}"
    );
    let (status, _, _) = get(
        none.clone(),
        format!("/v1/target-groups/{}/count", plain["id"]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Read access to the master: list and count, not create or delete.
    let (status, _, listed) = get(read.clone(), "/v1/target-groups".into()).await;
    assert_eq!(status, StatusCode::OK);
    let masked = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == personal["id"])
        .unwrap();
    assert!(masked["rule"]["value"].is_null(), "{masked}");
    assert_eq!(masked["rule"]["_masked"], true);
    let (status, _, count) = get(
        read.clone(),
        format!("/v1/target-groups/{}/count", plain["id"]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{count}");
    let (status, _, body) = call(
        &app,
        Some(&read),
        Method::POST,
        "/v1/target-groups",
        Some(json!({"name": "Mine", "rule": {"field": "gender", "op": "eq", "value": "m"}})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "read_only_access");
    let (status, _, _) = call(
        &app,
        Some(&read),
        Method::DELETE,
        &format!("/v1/target-groups/{}", plain["id"]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A rule on a personal field: the private-data right on every client it touches, else 403.
    let (status, _, body) = get(
        read.clone(),
        format!("/v1/target-groups/{}/count", personal["id"]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "private_data_required");
    let (status, _, body) = get(
        private.clone(),
        format!("/v1/target-groups/{}/recipients", personal["id"]),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "private on the master but not on ac-one: {body}"
    );
    let (status, _, body) = get(
        everywhere.clone(),
        format!("/v1/target-groups/{}/count", personal["id"]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 0);
    // Without the right on the master, a personal rule cannot be defined either.
    let (status, _, body) = call(
        &app,
        Some(&read),
        Method::GET,
        &format!("/v1/target-groups/{}", personal["id"]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["rule"]["value"].is_null());

    // Audited: creating and deleting are recorded with the caller.
    let deleted = app
        .delete(&format!("/v1/target-groups/{}", plain["id"]))
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get(&format!("/v1/target-groups/{}", plain["id"]))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let audited = app
        .control_i64(
            "SELECT count(*) FROM audit_log WHERE action IN ('POST /v1/target-groups', 'DELETE /v1/target-groups/{id}')
             AND outcome = 'succeeded'",
        )
        .await;
    assert_eq!(audited, 3);
}

/// Collects statistics now (waiting while the background loop holds the lock).
async fn collect(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if app
            .state
            .fanout()
            .collect_stats(Duration::ZERO)
            .await
            .unwrap()
            .is_some()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the statistics lock was never free"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_overview_shows_each_visible_clients_figures_after_the_statistics_job_ran() {
    let app = spawn_app().await;
    app.create_active_client("ov-one").await;
    app.create_active_client("ov-two").await;
    for i in 0..3 {
        let created = app
            .post_json(
                "/v1/clients/ov-one/recipients",
                &json!({"email": format!("o{i}@example.org")}),
            )
            .await;
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let list = app
        .post_json("/v1/clients/ov-one/mailing-lists", &json!({"name": "News"}))
        .await;
    assert_eq!(list.status(), StatusCode::CREATED);

    // Before any collection: the clients, without figures.
    let before: Value = app.get("/v1/overview").await.json().await.unwrap();
    let row = |page: &Value, slug: &str| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["slug"] == slug)
            .cloned()
            .unwrap_or_else(|| panic!("{slug} in {page}"))
    };
    let started = chrono::Utc::now();
    collect(&app).await;
    let page: Value = app.get("/v1/overview").await.json().await.unwrap();
    let one = row(&page, "ov-one");
    assert_eq!(one["status"], "active");
    assert_eq!(one["server"], "local");
    assert_eq!(one["recipients"], 3, "{one}");
    assert_eq!(one["lists"], 1);
    assert!(one["database_bytes"].as_i64().unwrap() > 1_000_000, "{one}");
    let counts_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(one["counts_at"].clone()).unwrap();
    assert!(counts_at >= started - chrono::Duration::seconds(1), "{one}");
    assert!(one["size_at"].is_string());
    let counts_at_before = one["counts_at"].clone();
    assert_eq!(one["fields"]["pending"], 0, "{one}");
    assert_eq!(one["templates"]["failed"], 0);
    assert!(one["last_error"].is_null(), "{one}");
    // Served by this process's routing pool a moment ago (the recipients above).
    let served: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(one["last_served_at"].clone()).unwrap();
    assert!(served >= started - chrono::Duration::seconds(60));
    let two = row(&page, "ov-two");
    assert_eq!(two["recipients"], 0);
    assert!(
        two["last_served_at"].is_null(),
        "the statistics are not a use: {two}"
    );
    assert!(
        row(&before, "ov-one")["recipients"].is_null(),
        "not counted before the collection"
    );

    // A user sees its own clients only.
    let token = user(
        &app,
        "ov-viewer",
        "master",
        &["viewer"],
        &[("ov-two", "read", false)],
    )
    .await;
    let (status, _, mine) = call(&app, Some(&token), Method::GET, "/v1/overview", None).await;
    assert_eq!(status, StatusCode::OK);
    let slugs: Vec<&str> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["ov-two"]);
    // Without clients.read: refused.
    let editor = user(
        &app,
        "ov-nobody",
        "master",
        &[],
        &[("ov-two", "read", false)],
    )
    .await;
    let (status, _, _) = call(&app, Some(&editor), Method::GET, "/v1/overview", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A client that is down: its counts keep their last values and time; the error is the last error.
    app.take_down("ov-one").await;
    collect(&app).await;
    let page: Value = app
        .get("/v1/overview?limit=1000")
        .await
        .json()
        .await
        .unwrap();
    let one = row(&page, "ov-one");
    assert_eq!(one["recipients"], 3);
    assert_eq!(
        one["counts_at"], counts_at_before,
        "kept from the collection that could count"
    );
    assert_eq!(one["last_error"]["source"], "statistics", "{one}");
    app.bring_up("ov-one").await;

    // The CLI shows the same figures.
    let dir = TestDir::new("overview-cli");
    let output = app
        .command(dir.path())
        .args(["tenants", "list", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Value = serde_json::from_slice(&output.stdout).unwrap();
    let cli = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["slug"] == "ov-one")
        .unwrap();
    assert_eq!(cli["recipients"], 3);
    assert_eq!(cli["lists"], 1);
    assert!(
        cli["last_error"]
            .as_str()
            .unwrap()
            .starts_with("statistics: ")
    );
}

#[tokio::test]
async fn a_slow_or_suspended_client_is_reported_with_its_error_and_the_others_are_counted() {
    let app = crate::helpers::spawn_app_with(&[(
        "MANDANT__WORKERS__FANOUT_CLIENT_DEADLINE_MS",
        "1500".to_owned(),
    )])
    .await;
    for slug in ["sl-fast", "sl-slow", "sl-paused"] {
        app.create_active_client(slug).await;
        let created = app
            .post_json(
                &format!("/v1/clients/{slug}/recipients"),
                &json!({"email": format!("x@{slug}.example"), "gender": "f"}),
            )
            .await;
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let suspended = app.post("/v1/clients/sl-paused/suspend").await;
    assert_eq!(suspended.status(), StatusCode::OK);
    let group: Value = app
        .post_json(
            "/v1/target-groups",
            &json!({"name": "Women", "rule": {"field": "gender", "op": "eq", "value": "f"},
                    "clients": ["sl-fast", "sl-slow", "sl-paused"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    // A transaction holding the recipients table: the count there waits past its deadline.
    let mut blocker = app.tenant_db("sl-slow").await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE recipients IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let count: Value = app
        .get(&format!("/v1/target-groups/{}/count", group["id"]))
        .await
        .json()
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let rows = count["clients"].as_array().unwrap();
    let of = |slug: &str| rows.iter().find(|r| r["client"] == slug).unwrap();
    assert_eq!(of("sl-fast")["count"], 1, "{count}");
    assert_eq!(of("sl-slow")["error"]["code"], "tenant_timeout", "{count}");
    assert_eq!(
        of("sl-paused")["error"]["code"],
        "client_not_active",
        "{count}"
    );
    assert_eq!(count["total"], 1);
}

#[tokio::test]
async fn creating_a_cross_client_target_group_refuses_a_taken_name_a_blank_name_and_an_empty_or_oversized_selection()
 {
    let app = spawn_app().await;
    let rule = json!({"field": "gender", "op": "eq", "value": "f"});
    let first = app
        .post_json("/v1/target-groups", &json!({"name": "Women", "rule": rule}))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let stored = app
        .control_i64("SELECT count(*) FROM central_target_groups")
        .await;

    let taken = app
        .post_json("/v1/target-groups", &json!({"name": "WOMEN", "rule": rule}))
        .await;
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(taken).await, "target_group_name_taken");
    let blank = app
        .post_json("/v1/target-groups", &json!({"name": "  ", "rule": rule}))
        .await;
    assert_eq!(blank.status(), StatusCode::BAD_REQUEST);
    let empty = app
        .post_json(
            "/v1/target-groups",
            &json!({"name": "Nobody", "rule": rule, "clients": []}),
        )
        .await;
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
    let many: Vec<String> = (0..1001).map(|i| format!("c-{i}")).collect();
    let oversized = app
        .post_json(
            "/v1/target-groups",
            &json!({"name": "Everybody", "rule": rule, "clients": many}),
        )
        .await;
    assert_eq!(oversized.status(), StatusCode::BAD_REQUEST);
    let not_a_rule = app
        .post_json("/v1/target-groups", &json!({"name": "Odd", "rule": [1, 2]}))
        .await;
    assert_eq!(not_a_rule.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(not_a_rule).await, "invalid_rule");
    assert_eq!(
        app.control_i64("SELECT count(*) FROM central_target_groups")
            .await,
        stored,
        "nothing was stored"
    );

    // Unknown ids and bad paging.
    assert_eq!(
        app.get("/v1/target-groups/999999").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/target-groups/999999/count").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/target-groups/abc").await.status(),
        StatusCode::NOT_FOUND,
        "an id that is not one names nothing, as everywhere"
    );
    assert_eq!(
        app.get("/v1/target-groups?limit=0").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/v1/overview?limit=0").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/v1/overview?status=sleepy").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/v1/overview?cursor=zz").await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn while_another_process_collects_statistics_a_second_collector_stands_aside_and_takes_over_after()
 {
    let app = crate::helpers::spawn_app_with(&[(
        "MANDANT__WORKERS__STATS_INTERVAL_SECS",
        "0".to_owned(),
    )])
    .await;
    app.create_active_client("lk-one").await;
    // The master's own provisioning may still run under load (lk-one can finish first): wait for it too.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while app.client_json("master").await["status"] != "active" {
        assert!(
            std::time::Instant::now() < deadline,
            "the master never became active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another process's collector: the statistics lock on a session of its own.
    let held = app
        .state
        .control()
        .try_stats_lock()
        .await
        .unwrap()
        .expect("the lock is free");
    let fanout = app.state.fanout();
    assert!(
        fanout
            .collect_stats(Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        app.control_i64("SELECT count(*) FROM client_stats WHERE size_at IS NOT NULL")
            .await,
        0,
        "nothing collected twice"
    );
    // That process ends (its session with it): this one collects at once.
    drop(held);
    let outcome = loop {
        if let Some(outcome) = fanout.collect_stats(Duration::ZERO).await.unwrap() {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(outcome.done >= 2, "the master and lk-one: {outcome:?}");
    assert_eq!(outcome.failed, 0);
}
