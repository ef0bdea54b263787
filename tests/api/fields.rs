//! Custom fields: a client's own (applied within the request), central ones (propagated by the workers to every
//! client, also to clients created later and to one whose database was down), validation before any DDL.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, json_body, spawn_app};

/// The columns of a client's `recipients` table.
async fn columns(app: &TestApp, slug: &str) -> Vec<String> {
    app.tenant_db(slug)
        .await
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = 'recipients'::regclass
             AND attnum > 0 AND NOT attisdropped ORDER BY attname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits until `GET /v1/fields/{name}` satisfies `done`; returns the body.
async fn wait_for_field(app: &TestApp, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = app
            .get(&format!("/v1/fields/{name}"))
            .await
            .json()
            .await
            .unwrap();
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "field never got there: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn field_status<'a>(fields: &'a Value, name: &str) -> &'a Value {
    fields["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn a_client_adds_a_text_and_a_date_field_writes_and_filters_by_them_and_another_client_does_not_see_them()
 {
    let app = spawn_app().await;
    app.create_active_client("alpha").await;
    app.create_active_client("beta").await;
    for field in [
        json!({"name": "city", "type": "text", "length": 80}),
        json!({"name": "birthday", "type": "date", "personal": true}),
    ] {
        let created = app.post_json("/v1/clients/alpha/fields", &field).await;
        assert_eq!(created.status(), StatusCode::CREATED);
        let body: Value = created.json().await.unwrap();
        assert_eq!(body["status"], "applied");
        assert_eq!(body["origin"], "client");
    }
    assert!(columns(&app, "alpha").await.contains(&"city".to_owned()));

    let anna = app
        .post_json(
            "/v1/clients/alpha/recipients",
            &json!({"email": "anna@example.org", "city": "Berlin", "birthday": "1990-05-01"}),
        )
        .await;
    assert_eq!(anna.status(), StatusCode::CREATED);
    let anna: Value = anna.json().await.unwrap();
    assert_eq!(anna["city"], "Berlin");
    assert_eq!(anna["birthday"], "1990-05-01");
    app.post_json(
        "/v1/clients/alpha/recipients",
        &json!({"email": "bert@example.org", "city": "Hamburg"}),
    )
    .await;
    let import = app
        .post_body(
            "/v1/clients/alpha/recipients/import",
            "text/csv",
            "email,city,birthday\ncleo@example.org,Berlin,2001-01-31\n",
        )
        .await;
    assert_eq!(import.status(), StatusCode::OK);

    let berlin: Value = app
        .get("/v1/clients/alpha/recipients?city=Berlin")
        .await
        .json()
        .await
        .unwrap();
    let emails: Vec<&str> = berlin["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["anna@example.org", "cleo@example.org"]);
    let born: Value = app
        .get("/v1/clients/alpha/recipients?birthday=1990-05-01")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(born["items"].as_array().unwrap().len(), 1);
    let bad_filter = app.get("/v1/clients/alpha/recipients?birthday=May").await;
    assert_eq!(bad_filter.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(bad_filter).await, "invalid_field");
    // Changed and cleared like standard fields.
    let changed: Value = app
        .patch_json(
            &format!("/v1/clients/alpha/recipients/{}", anna["id"]),
            &json!({"city": "Bonn", "birthday": null}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(changed["city"], "Bonn");
    assert_eq!(changed["birthday"], Value::Null);
    // Target groups work on custom fields too.
    let group: Value = app
        .post_json(
            "/v1/clients/alpha/target-groups",
            &json!({"name": "Young", "rule": {"field": "birthday", "op": "gt", "value": "2000-01-01"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let count: Value = app
        .get(&format!(
            "/v1/clients/alpha/target-groups/{}/count",
            group["id"]
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(count["count"], 1);

    // The other client has neither the fields nor the columns.
    let refused = app
        .post_json(
            "/v1/clients/beta/recipients",
            &json!({"email": "x@example.org", "city": "Berlin"}),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_field");
    assert!(error["error"]["message"].as_str().unwrap().contains("city"));
    let beta_fields: Value = app
        .get("/v1/clients/beta/fields")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(field_status(&beta_fields, "city"), &Value::Null);
    assert_eq!(field_status(&beta_fields, "email")["origin"], "standard");
    assert!(!columns(&app, "beta").await.contains(&"city".to_owned()));
    let alpha_fields: Value = app
        .get("/v1/clients/alpha/fields")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(field_status(&alpha_fields, "birthday")["status"], "applied");
    assert_eq!(field_status(&alpha_fields, "birthday")["personal"], true);

    // Dropping the own field removes the column; the recipients stay.
    assert_eq!(
        app.delete("/v1/clients/alpha/fields/birthday")
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert!(
        !columns(&app, "alpha")
            .await
            .contains(&"birthday".to_owned())
    );
}

#[tokio::test]
async fn a_central_field_reaches_every_client_and_clients_created_later() {
    let app = spawn_app().await;
    app.create_active_client("north").await;
    app.create_active_client("south").await;
    let own = app
        .post_json(
            "/v1/clients/south/fields",
            &json!({"name": "shoe_size", "type": "integer"}),
        )
        .await;
    assert_eq!(own.status(), StatusCode::CREATED);

    let created = app
        .post_json(
            "/v1/fields",
            &json!({"name": "region", "type": "text", "length": 40, "required": true, "default": "unknown"}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    assert_eq!(created.headers()["location"], "/v1/fields/region");
    // The master and both sub-clients.
    let done = wait_for_field(&app, "region", |f| {
        f["propagation"]["applied"] == 3 && f["propagation"]["pending"] == 0
    })
    .await;
    assert_eq!(done["propagation"]["failed"], 0);
    for slug in ["north", "south"] {
        assert!(columns(&app, slug).await.contains(&"region".to_owned()));
        let fields: Value = app
            .get(&format!("/v1/clients/{slug}/fields"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(field_status(&fields, "region")["origin"], "central");
        assert_eq!(field_status(&fields, "region")["status"], "applied");
    }
    // Existing and new recipients get the default.
    let r: Value = app
        .post_json(
            "/v1/clients/north/recipients",
            &json!({"email": "n@example.org"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["region"], "unknown");

    // A client created afterwards has it before it becomes active.
    app.create_active_client("later").await;
    assert!(columns(&app, "later").await.contains(&"region".to_owned()));
    let later: Value = app
        .get("/v1/clients/later/fields")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(field_status(&later, "region")["status"], "applied");

    // Inherited fields are the master's: a sub-client cannot drop, change or shadow them.
    let drop = app.delete("/v1/clients/north/fields/region").await;
    assert_eq!(drop.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(drop).await, "inherited_field");
    let shadow = app
        .post_json(
            "/v1/clients/north/fields",
            &json!({"name": "region", "type": "text"}),
        )
        .await;
    assert_eq!(shadow.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(shadow).await, "field_is_central");
    // A central field cannot take a name clients use for their own; the error lists them.
    let taken = app
        .post_json(
            "/v1/fields",
            &json!({"name": "shoe_size", "type": "integer"}),
        )
        .await;
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    let error: Value = taken.json().await.unwrap();
    assert_eq!(error["error"]["code"], "field_taken_by_clients");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("south")
    );

    // Deleting the central field drops it everywhere.
    assert_eq!(
        app.delete("/v1/fields/region").await.status(),
        StatusCode::ACCEPTED
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for slug in ["north", "south", "later"] {
        while columns(&app, slug).await.contains(&"region".to_owned()) {
            assert!(Instant::now() < deadline, "{slug} kept the column");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        columns(&app, "south")
            .await
            .contains(&"shoe_size".to_owned())
    );
}

#[tokio::test]
async fn a_tenant_database_down_during_a_central_field_gets_it_when_it_returns() {
    let app = spawn_app().await;
    app.create_active_client("steady").await;
    app.create_active_client("flaky").await;
    app.take_down("flaky").await;

    let created = app
        .post_json("/v1/fields", &json!({"name": "segment", "type": "integer"}))
        .await;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    // The others at once; the down one failed with its error, retries going on.
    let partial = wait_for_field(&app, "segment", |f| {
        f["propagation"]["applied"] == 2 && f["propagation"]["failed"] == 1
    })
    .await;
    let failing = &partial["propagation"]["failing"][0];
    assert_eq!(failing["client"], "flaky");
    assert!(
        failing["error"]
            .as_str()
            .unwrap()
            .contains("not currently accepting connections"),
        "{failing}"
    );
    assert!(
        columns(&app, "steady")
            .await
            .contains(&"segment".to_owned())
    );

    // Back up: applied without any manual step.
    app.bring_up("flaky").await;
    wait_for_field(&app, "segment", |f| f["propagation"]["applied"] == 3).await;
    assert!(columns(&app, "flaky").await.contains(&"segment".to_owned()));
}

#[tokio::test]
async fn hostile_or_invalid_field_definitions_are_refused_before_any_ddl() {
    let app = spawn_app().await;
    app.create_active_client("guarded").await;
    let long = "x".repeat(64);
    let cases = [
        json!({"name": "email; drop table recipients", "type": "text"}),
        json!({"name": "a\"b", "type": "text"}),
        json!({"name": "it's", "type": "text"}),
        json!({"name": "select", "type": "text"}),
        json!({"name": "timestamp", "type": "text"}),
        json!({"name": long, "type": "text"}),
        json!({"name": "sys_x", "type": "text"}),
        json!({"name": "mandant_x", "type": "text"}),
        json!({"name": "email", "type": "text"}),
        json!({"name": "Upper", "type": "text"}),
        json!({"name": "ab", "type": "text"}),
        json!({"name": "valid_name", "type": "varchar"}),
        json!({"name": "valid_name", "type": "integer", "default": "seven"}),
        json!({"name": "valid_name", "type": "integer", "default": 1.5}),
        json!({"name": "valid_name", "type": "date", "default": "2026-13-45"}),
        json!({"name": "valid_name", "type": "boolean", "default": "yes"}),
        json!({"name": "valid_name", "type": "text", "length": 5, "default": "too long"}),
        json!({"name": "valid_name", "type": "text", "length": 4001}),
        json!({"name": "valid_name", "type": "integer", "length": 10}),
        json!({"name": "valid_name", "type": "integer", "required": true}),
    ];
    for body in &cases {
        for path in ["/v1/clients/guarded/fields", "/v1/fields"] {
            let response = app.post_json(path, body).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path} {body}");
            assert_eq!(error_code(response).await, "validation_failed", "{body}");
        }
    }
    let before = columns(&app, "guarded").await;

    let notes = app
        .post_json(
            "/v1/clients/guarded/fields",
            &json!({"name": "notes", "type": "text", "length": 50}),
        )
        .await;
    assert_eq!(notes.status(), StatusCode::CREATED);
    for (change, status, code) in [
        (
            json!({"length": 10}),
            StatusCode::CONFLICT,
            "length_shrink_refused",
        ),
        (
            json!({"type": "integer"}),
            StatusCode::CONFLICT,
            "type_change_refused",
        ),
        (
            json!({"length": 5000}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
    ] {
        let response = app
            .send(
                Method::PATCH,
                "/v1/clients/guarded/fields/notes",
                Some(&change),
            )
            .await;
        assert_eq!(response.status(), status, "{change}");
        assert_eq!(error_code(response).await, code);
    }
    // Growing is fine, and a standard field is nobody's to drop.
    let grown = app
        .patch_json("/v1/clients/guarded/fields/notes", &json!({"length": 500}))
        .await;
    assert_eq!(grown.status(), StatusCode::OK);
    let standard = app.delete("/v1/clients/guarded/fields/email").await;
    assert_eq!(standard.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(standard).await, "standard_field");
    assert_eq!(
        app.delete("/v1/clients/guarded/fields/nothing_here")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    let mut expected = before.clone();
    expected.push("notes".into());
    expected.sort();
    assert_eq!(columns(&app, "guarded").await, expected);
    let length: i32 = app
        .tenant_db("guarded")
        .await
        .query_one(
            "SELECT character_maximum_length FROM information_schema.columns
             WHERE table_name = 'recipients' AND column_name = 'notes'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(length, 500);
}

#[tokio::test]
async fn tenants_fields_reports_drift_between_desired_fields_and_real_columns() {
    let app = spawn_app().await;
    app.create_active_client("tidy").await;
    app.create_active_client("messy").await;
    for slug in ["tidy", "messy"] {
        let created = app
            .post_json(
                &format!("/v1/clients/{slug}/fields"),
                &json!({"name": "score", "type": "integer"}),
            )
            .await;
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    // Someone changes a tenant database by hand.
    app.tenant_db("messy")
        .await
        .batch_execute("ALTER TABLE recipients DROP COLUMN score; ALTER TABLE recipients ADD COLUMN stray text")
        .await
        .unwrap();
    let cwd = crate::helpers::TestDir::new("fields-cwd");
    let out = app
        .command(cwd.path())
        .args(["tenants", "fields", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let of = |slug: &str| checks.iter().find(|c| c["client"] == slug).unwrap().clone();
    assert_eq!(of("tidy")["drift"], json!([]));
    let drift = of("messy")["drift"].to_string();
    assert!(
        drift.contains("score: in the catalogue, no column"),
        "{drift}"
    );
    assert!(
        drift.contains("stray: a column not in the catalogue"),
        "{drift}"
    );
}

#[tokio::test]
async fn the_requeue_sweep_leaves_clients_to_a_queued_fan_out_and_picks_up_the_ones_it_left_behind()
{
    let app = crate::helpers::spawn_app_without_workers().await;
    let runner = app.runner("sweep");
    app.create_client("swept").await;
    app.drain(&runner).await;
    let created = app
        .post_json("/v1/fields", &json!({"name": "tier", "type": "integer"}))
        .await;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    let control = app.state.control();
    // The fan-out is queued: the sweep adds nothing.
    assert_eq!(control.requeue_unapplied_fields(8).await.unwrap(), 0);
    app.drain(&runner).await;
    let done: Value = app.get("/v1/fields/tier").await.json().await.unwrap();
    assert_eq!(done["propagation"]["applied"], 2, "{done}");
    // A status left behind (as by a client whose retries ran out) gets a job of its own.
    app.control()
        .await
        .batch_execute("UPDATE field_status SET status = 'failed', last_error = 'down'")
        .await
        .unwrap();
    assert_eq!(control.requeue_unapplied_fields(8).await.unwrap(), 2);
    app.drain(&runner).await;
    let again: Value = app.get("/v1/fields/tier").await.json().await.unwrap();
    assert_eq!(again["propagation"]["applied"], 2, "{again}");
}

#[tokio::test]
async fn an_own_field_on_an_unreachable_database_is_pending_then_applied_and_required_fields_are_enforced()
 {
    let app = spawn_app().await;
    app.create_active_client("remote").await;
    app.take_down("remote").await;
    let created = app
        .post_json(
            "/v1/clients/remote/fields",
            &json!({"name": "consent", "type": "boolean", "required": true, "default": false}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    app.bring_up("remote").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fields: Value = app
            .get("/v1/clients/remote/fields")
            .await
            .json()
            .await
            .unwrap();
        if field_status(&fields, "consent")["status"] == "applied" {
            break;
        }
        assert!(Instant::now() < deadline, "never applied: {fields}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        columns(&app, "remote")
            .await
            .contains(&"consent".to_owned())
    );

    // Required: omitted gets the default, cleared or empty is refused, nothing written.
    let r: Value = app
        .post_json(
            "/v1/clients/remote/recipients",
            &json!({"email": "r@example.org"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["consent"], false);
    let cleared = app
        .patch_json(
            &format!("/v1/clients/remote/recipients/{}", r["id"]),
            &json!({"consent": null}),
        )
        .await;
    assert_eq!(cleared.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(cleared).await, "invalid_field");
    let empty_cell = app
        .post_body(
            "/v1/clients/remote/recipients/import",
            "text/csv",
            "email,consent\nx@example.org,true\ny@example.org,\n",
        )
        .await;
    assert_eq!(empty_cell.status(), StatusCode::BAD_REQUEST);
    let error: Value = empty_cell.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 3: consent: is required"),
        "{error}"
    );
    // An import without the column: new recipients get the default, existing ones keep their value.
    let without = app
        .post_body(
            "/v1/clients/remote/recipients/import",
            "text/csv",
            "email\nr@example.org\nz@example.org\n",
        )
        .await;
    assert_eq!(without.status(), StatusCode::OK);
    let consent: i64 = app
        .tenant_db("remote")
        .await
        .query_one("SELECT count(*) FROM recipients WHERE consent = false", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(consent, 2);
}

/// A recipient read through the server: 200, its body.
async fn read_recipient(app: &TestApp, path: &str) -> Value {
    json_body(app.get(path).await, StatusCode::OK).await
}

#[tokio::test]
async fn reads_by_id_see_a_field_added_and_dropped_through_the_api_at_once_although_their_statement_is_kept_prepared()
 {
    let app = spawn_app().await;
    app.create_active_client("alpha").await;
    let anna: Value = app
        .post_json(
            "/v1/clients/alpha/recipients",
            &json!({"email": "anna@example.org"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/v1/clients/alpha/recipients/{}", anna["id"]);
    // Read often enough that the tenant's connections keep the statement prepared.
    for _ in 0..6 {
        assert!(read_recipient(&app, &path).await.get("city").is_none());
    }
    let created = app
        .post_json(
            "/v1/clients/alpha/fields",
            &json!({"name": "city", "type": "text", "length": 80}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    for _ in 0..6 {
        let body = read_recipient(&app, &path).await;
        assert_eq!(body.get("city"), Some(&Value::Null), "{body}");
    }
    assert_eq!(
        app.delete("/v1/clients/alpha/fields/city").await.status(),
        StatusCode::NO_CONTENT
    );
    for _ in 0..6 {
        let body = read_recipient(&app, &path).await;
        assert!(body.get("city").is_none(), "{body}");
    }
}
