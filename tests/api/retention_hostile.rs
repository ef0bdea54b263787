//! Retention and content between clients (issue #18) probed as a hostile caller: a purge racing with a change
//! of bindings, an outage and a second purging process, the tenant migration on existing recipients, access
//! to copy/export/import/retention without rights, and import documents built to break the all-or-nothing
//! promise.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::access::{call, user};
use crate::helpers::{TestApp, error_code, json_body, superuser, unique};
use crate::retention::{app_without_purge_loop, list, recipient};

async fn put(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.send(Method::PUT, path, Some(&body)).await
}

/// Sets the master's rules and moves the tightening a day back, so the purge applies them now.
async fn master_rules_in_force(app: &TestApp, body: Value) {
    json_body(put(app, "/v1/retention", body).await, StatusCode::OK).await;
    app.control()
        .await
        .execute(
            "UPDATE retention_rules SET tightened_at = tightened_at - interval '25 hours'",
            &[],
        )
        .await
        .unwrap();
}

async fn purge(app: &TestApp) -> Vec<mandant::fanout::retention::Purged> {
    app.state
        .fanout()
        .apply_retention()
        .await
        .expect("purge")
        .expect("nobody else purges")
}

async fn exists(app: &TestApp, slug: &str, id: i64) -> bool {
    app.tenant_i64(
        slug,
        &format!("SELECT count(*) FROM recipients WHERE id = {id}"),
    )
    .await
        == 1
}

/// Runs a purge while `holder` keeps a transaction open, commits it once the purge has either finished or is
/// waiting for a lock the transaction holds, and returns when the purge is done.
async fn purge_racing(app: &TestApp, holder: &tokio_postgres::Client) {
    let fanout = app.state.fanout().clone();
    let run = tokio::spawn(async move { fanout.apply_retention().await });
    let database: String = holder
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    let observer = superuser("postgres").await;
    for _ in 0..100 {
        if run.is_finished() {
            break;
        }
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                &[&database],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.batch_execute("COMMIT").await.unwrap();
    run.await
        .unwrap()
        .expect("purge")
        .expect("nobody else purges");
}

#[tokio::test]
async fn a_recipient_bound_to_a_list_while_the_purge_runs_is_not_deleted() {
    let app = app_without_purge_loop().await;
    app.create_active_client("racebind").await;
    let news = list(&app, "racebind", "News").await;
    let id = recipient(&app, "racebind", "late@example.org").await;
    let db = app.tenant_db("racebind").await;
    db.execute(
        "UPDATE recipients SET mandant_unbound_since = now() - interval '100 days' WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    master_rules_in_force(&app, json!({"unbound_days": 90})).await;
    // A binding is being written (as `PUT .../mailing-lists/{id}/recipients/{rid}` writes it) when the purge
    // starts; it commits, so the recipient is bound: it must survive, with its binding.
    db.batch_execute("BEGIN").await.unwrap();
    db.execute(
        "INSERT INTO bindings (mailing_list_id, recipient_id, status) VALUES ($1, $2, 'active')",
        &[&news, &id],
    )
    .await
    .unwrap();
    purge_racing(&app, &db).await;
    assert!(
        exists(&app, "racebind", id).await,
        "a bound recipient was purged"
    );
    assert_eq!(
        app.tenant_i64("racebind", "SELECT count(*) FROM bindings")
            .await,
        1
    );
}

#[tokio::test]
async fn a_recipient_who_opts_in_again_while_the_purge_runs_is_not_deleted() {
    let app = app_without_purge_loop().await;
    app.create_active_client("raceoptin").await;
    let news = list(&app, "raceoptin", "News").await;
    let id = recipient(&app, "raceoptin", "back@example.org").await;
    json_body(
        put(
            &app,
            &format!("/v1/clients/raceoptin/mailing-lists/{news}/recipients/{id}"),
            json!({"status": "opt_out"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let db = app.tenant_db("raceoptin").await;
    db.execute(
        "UPDATE bindings SET updated_at = now() - interval '40 days'",
        &[],
    )
    .await
    .unwrap();
    master_rules_in_force(&app, json!({"opted_out_or_bounced_days": 30})).await;
    db.batch_execute("BEGIN").await.unwrap();
    db.execute(
        "UPDATE bindings SET status = 'active', updated_at = now() WHERE recipient_id = $1",
        &[&id],
    )
    .await
    .unwrap();
    purge_racing(&app, &db).await;
    assert!(
        exists(&app, "raceoptin", id).await,
        "an active recipient was purged"
    );
    assert_eq!(
        app.tenant_i64(
            "raceoptin",
            "SELECT count(*) FROM bindings WHERE status = 'active'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_purge_keeps_a_recipient_with_one_active_binding_and_a_new_unbound_one_and_counts_as_the_preview_does()
 {
    let app = app_without_purge_loop().await;
    app.create_active_client("mixedkeep").await;
    let news = list(&app, "mixedkeep", "News").await;
    let offers = list(&app, "mixedkeep", "Offers").await;
    let mixed = recipient(&app, "mixedkeep", "mixed@example.org").await;
    let fresh = recipient(&app, "mixedkeep", "fresh@example.org").await;
    let gone = recipient(&app, "mixedkeep", "gone@example.org").await;
    for (l, status) in [(news, "opt_out"), (offers, "active")] {
        json_body(
            put(
                &app,
                &format!("/v1/clients/mixedkeep/mailing-lists/{l}/recipients/{mixed}"),
                json!({ "status": status }),
            )
            .await,
            StatusCode::OK,
        )
        .await;
    }
    let db = app.tenant_db("mixedkeep").await;
    db.execute(
        "UPDATE bindings SET updated_at = now() - interval '400 days'",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE recipients SET mandant_unbound_since = now() - interval '400 days' WHERE id = $1",
        &[&gone],
    )
    .await
    .unwrap();
    master_rules_in_force(
        &app,
        json!({"opted_out_or_bounced_days": 1, "unbound_days": 1}),
    )
    .await;
    let preview = json_body(
        app.get("/v1/clients/mixedkeep/retention/preview").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (&preview["opted_out_or_bounced"], &preview["unbound"]),
        (&json!(0), &json!(1))
    );
    purge(&app).await;
    assert!(exists(&app, "mixedkeep", mixed).await);
    assert!(exists(&app, "mixedkeep", fresh).await);
    assert!(!exists(&app, "mixedkeep", gone).await);
}

#[tokio::test]
async fn a_purge_of_a_client_whose_database_is_down_is_audited_as_failed_and_the_others_are_purged()
{
    let app = app_without_purge_loop().await;
    app.create_active_client("downpurge").await;
    app.create_active_client("uppurge").await;
    let mut victims = Vec::new();
    for slug in ["downpurge", "uppurge"] {
        let id = recipient(&app, slug, "old@example.org").await;
        app.tenant_db(slug)
            .await
            .execute(
                "UPDATE recipients SET mandant_unbound_since = now() - interval '100 days'",
                &[],
            )
            .await
            .unwrap();
        victims.push(id);
    }
    master_rules_in_force(&app, json!({"unbound_days": 90})).await;
    app.take_down("downpurge").await;
    let runs = purge(&app).await;
    let down = runs.iter().find(|r| r.client == "downpurge").unwrap();
    let error = down.error.as_deref().expect("an error");
    assert!(
        !error.contains("password") && !error.contains("SELECT"),
        "{error}"
    );
    let up = runs.iter().find(|r| r.client == "uppurge").unwrap();
    assert!(up.error.is_none());
    assert!(!exists(&app, "uppurge", victims[1]).await);
    app.bring_up("downpurge").await;
    assert!(exists(&app, "downpurge", victims[0]).await);
    assert_eq!(
        app.control_i64(
            "SELECT count(*) FROM audit_log WHERE client_slug = 'downpurge' AND outcome = 'failed' AND action = 'WORKER retention purge'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_second_process_does_not_purge_while_another_holds_the_retention_lock() {
    let app = app_without_purge_loop().await;
    let lock = app
        .state
        .control()
        .try_session_lock("mandant.retention")
        .await
        .unwrap()
        .expect("free");
    assert!(
        app.state
            .fanout()
            .apply_retention()
            .await
            .unwrap()
            .is_none()
    );
    drop(lock);
}

/// A fresh database with the tenant migrations V1-V5 (before retention); returns a superuser connection to it.
async fn tenant_database_at_v5() -> tokio_postgres::Client {
    let name = unique("v6probe");
    superuser("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let db = superuser(&name).await;
    for sql in [
        include_str!("../../tenant_migrations/V1__recipients.sql"),
        include_str!("../../tenant_migrations/V2__mailing_lists_and_bindings.sql"),
        include_str!("../../tenant_migrations/V3__target_groups.sql"),
        include_str!("../../tenant_migrations/V4__templates.sql"),
        include_str!("../../tenant_migrations/V5__field_catalogue.sql"),
    ] {
        db.batch_execute(sql).await.unwrap();
    }
    db
}

#[tokio::test]
async fn tenant_migration_v6_rewrites_no_existing_recipient_and_counts_the_unbound_from_the_migration_on()
 {
    let db = tenant_database_at_v5().await;
    db.batch_execute(
        "INSERT INTO recipients (email) SELECT 'r' || g || '@example.org' FROM generate_series(1, 300) g;
         INSERT INTO mailing_lists (name) VALUES ('News');
         INSERT INTO bindings (mailing_list_id, recipient_id, status)
             SELECT (SELECT id FROM mailing_lists), id, 'active' FROM recipients WHERE id % 3 = 0;",
    )
    .await
    .unwrap();
    let versions =
        "SELECT string_agg(ctid::text || ':' || xmin::text, ',' ORDER BY id) FROM recipients";
    let before: String = db.query_one(versions, &[]).await.unwrap().get(0);
    db.batch_execute(&format!(
        "BEGIN; {} COMMIT;",
        include_str!("../../tenant_migrations/V6__unbound_since.sql")
    ))
    .await
    .unwrap();
    let after: String = db.query_one(versions, &[]).await.unwrap().get(0);
    assert!(
        before == after,
        "the migration rewrote recipients (an UPDATE under the ALTER TABLE's exclusive lock)"
    );
    // The 200 unbound recipients count as unbound from the migration on: not yet for a 1-day rule, and for the
    // predicate measured from two days later, yes.
    let count = |days: i32, hours_later: i32| {
        let sql = format!(
            "SELECT count(*) FROM recipients r WHERE {}",
            mandant::data::retention::predicate(mandant::domain::retention::RetentionRule::Unbound)
        );
        let db = &db;
        async move {
            let at: chrono::DateTime<chrono::Utc> =
                chrono::Utc::now() + chrono::TimeDelta::hours(hours_later.into());
            db.query_one(&sql, &[&at, &days])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count(1, 0).await, 0);
    assert_eq!(count(1, 48).await, 200);
    // Unbinding one of the bound ones starts its own period; binding an unbound one ends it.
    db.batch_execute(
        "DELETE FROM bindings WHERE recipient_id = 3;
         INSERT INTO bindings (mailing_list_id, recipient_id, status) VALUES ((SELECT id FROM mailing_lists), 1, 'active');",
    )
    .await
    .unwrap();
    assert_eq!(count(1, 48).await, 200);
    let unbound_since_3: Option<chrono::DateTime<chrono::Utc>> = db
        .query_one(
            "SELECT mandant_unbound_since FROM recipients WHERE id = 3",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(unbound_since_3.is_some());
}

#[tokio::test]
async fn tenant_migration_v6_gives_up_on_a_busy_recipients_table_instead_of_queueing_every_reader_behind_it()
 {
    let sql = include_str!("../../tenant_migrations/V6__unbound_since.sql");
    let first = sql
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("--"))
        .unwrap();
    assert!(
        first.to_lowercase().starts_with("set local lock_timeout"),
        "first statement: {first}"
    );
}

// ---- access ----

#[tokio::test]
async fn copy_to_an_invisible_client_answers_exactly_as_to_a_client_that_does_not_exist() {
    let app = crate::helpers::spawn_app().await;
    for slug in ["cpsource", "cphidden"] {
        app.create_active_client(slug).await;
    }
    let template = json_body(
        app.post_json(
            "/v1/clients/cpsource/templates",
            &json!({"name": "Hello", "subject": "Hi", "text_body": "x"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let editor = user(
        &app,
        "cp-editor",
        "cpsource",
        &["editor"],
        &[("cpsource", "full", false)],
    )
    .await;
    let path = format!("/v1/clients/cpsource/templates/{template}/copy");
    let (hidden_status, _, hidden) = call(
        &app,
        Some(&editor),
        Method::POST,
        &path,
        Some(json!({"to": ["cphidden"]})),
    )
    .await;
    let (missing_status, _, missing) = call(
        &app,
        Some(&editor),
        Method::POST,
        &path,
        Some(json!({"to": ["cpnowhere"]})),
    )
    .await;
    assert_eq!(hidden_status, missing_status);
    assert_eq!(
        hidden.to_string().replace("cphidden", "X"),
        missing.to_string().replace("cpnowhere", "X")
    );
    // Read access to a target: refused, nothing copied anywhere.
    let reader = user(
        &app,
        "cp-reader",
        "cpsource",
        &["editor"],
        &[("cpsource", "full", false), ("cphidden", "read", false)],
    )
    .await;
    let (status, _, body) = call(
        &app,
        Some(&reader),
        Method::POST,
        &path,
        Some(json!({"to": ["cpsource", "cphidden"]})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        app.tenant_i64("cpsource", "SELECT count(*) FROM templates")
            .await,
        1
    );
    assert_eq!(
        app.tenant_i64(
            "cphidden",
            "SELECT count(*) FROM templates WHERE origin = 'local'"
        )
        .await,
        0
    );
    // A client's user cannot set the master's rules; a malformed or oversized list of targets is 400.
    let (status, _, _) = call(
        &app,
        Some(&reader),
        Method::PUT,
        "/v1/retention",
        Some(json!({"unbound_days": null})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for bad in [json!({"to": []}), json!({"to": "cphidden"}), json!({})] {
        let (status, _, body) = call(&app, Some(&editor), Method::POST, &path, Some(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    let many: Vec<String> = (0..1000).map(|i| format!("c{i:04}")).collect();
    let (status, _, body) = call(
        &app,
        Some(&editor),
        Method::POST,
        &path,
        Some(json!({ "to": many })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

// ---- import hostility ----

async fn local_counts(app: &TestApp, slug: &str) -> (i64, i64, i64) {
    (
        app.tenant_i64(slug, "SELECT count(*) FROM mailing_lists")
            .await,
        app.tenant_i64(slug, "SELECT count(*) FROM target_groups")
            .await,
        app.tenant_i64(
            slug,
            "SELECT count(*) FROM templates WHERE origin = 'local'",
        )
        .await,
    )
}

fn doc(lists: Value, groups: Value, templates: Value) -> Value {
    json!({"format": 1, "lists": lists, "target_groups": groups, "templates": templates})
}

#[tokio::test]
async fn hostile_import_documents_are_refused_with_the_error_shape_and_write_nothing() {
    let app = crate::helpers::spawn_app().await;
    app.create_active_client("hostimp").await;
    list(&app, "hostimp", "Existing").await;
    let start = local_counts(&app, "hostimp").await;
    let ok_list = json!([{"id": 3, "name": "News", "description": null}]);
    let ok_template = json!([{"name": "T", "subject": "S", "text_body": "b"}]);
    let mut deep = json!({"list": 3});
    for _ in 0..40 {
        deep = json!({ "not": deep });
    }
    let cases: Vec<(&str, Value, StatusCode)> = vec![
        (
            "format 2",
            json!({"format": 2, "lists": [], "target_groups": [], "templates": []}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a list id as a string",
            doc(
                ok_list.clone(),
                json!([{"name": "G", "rule": {"list": "3"}}]),
                ok_template.clone(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a list the document lacks",
            doc(
                ok_list.clone(),
                json!([{"name": "G", "rule": {"list": 1}}]),
                ok_template.clone(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "the internal column as a field",
            doc(
                ok_list.clone(),
                json!([{"name": "G", "rule": {"field": "mandant_unbound_since", "op": "is_null"}}]),
                ok_template.clone(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "nested 41 deep",
            doc(
                ok_list.clone(),
                json!([{"name": "G", "rule": deep}]),
                ok_template.clone(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "names differing only by case",
            doc(
                json!([{"id": 3, "name": "News"}, {"id": 4, "name": "NEWS"}]),
                json!([]),
                json!([]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a clash by case with an existing list",
            doc(
                json!([{"id": 3, "name": "existing"}]),
                json!([]),
                ok_template.clone(),
            ),
            StatusCode::CONFLICT,
        ),
        (
            "a negative id",
            doc(json!([{"id": -3, "name": "N"}]), json!([]), json!([])),
            StatusCode::BAD_REQUEST,
        ),
        (
            "an overflowing id",
            serde_json::from_str(
                r#"{"format":1,"lists":[{"id":99999999999999999999,"name":"N"}],"target_groups":[],"templates":[]}"#,
            )
            .unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a NUL in a name",
            doc(json!([{"id": 3, "name": "a\u{0}b"}]), json!([]), json!([])),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a name one longer than allowed",
            doc(json!([{"id": 3, "name": "x".repeat(201)}]), json!([]), json!([])),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a template without a body",
            doc(
                ok_list.clone(),
                json!([]),
                json!([{"name": "T", "subject": "S"}]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "an unknown key",
            json!({"format": 1, "lists": [], "target_groups": [], "templates": [], "recipients": []}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, body, expected) in cases {
        let response = app
            .post_json("/v1/clients/hostimp/import-content", &body)
            .await;
        assert_eq!(response.status(), expected, "{what}");
        let code = error_code(response).await;
        assert!(!code.is_empty(), "{what}");
        assert_eq!(
            local_counts(&app, "hostimp").await,
            start,
            "{what} wrote something"
        );
    }
    // Into a suspended client: refused, nothing written.
    json_body(
        app.post("/v1/clients/hostimp/suspend").await,
        StatusCode::OK,
    )
    .await;
    let response = app
        .post_json(
            "/v1/clients/hostimp/import-content",
            &doc(ok_list, json!([]), ok_template),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(response).await, "client_not_active");
}

#[tokio::test]
async fn a_field_named_like_the_internal_column_is_refused_and_recipient_reads_never_show_it() {
    let app = crate::helpers::spawn_app().await;
    app.create_active_client("nointernal").await;
    let response = app
        .post_json(
            "/v1/clients/nointernal/fields",
            &json!({"name": "mandant_unbound_since", "type": "timestamp"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let id = recipient(&app, "nointernal", "seen@example.org").await;
    let one = json_body(
        app.get(&format!("/v1/clients/nointernal/recipients/{id}"))
            .await,
        StatusCode::OK,
    )
    .await;
    let page = json_body(
        app.get("/v1/clients/nointernal/recipients").await,
        StatusCode::OK,
    )
    .await;
    for shown in [one.to_string(), page.to_string()] {
        assert!(!shown.contains("mandant_"), "{shown}");
    }
    let filtered = app
        .get("/v1/clients/nointernal/recipients?mandant_unbound_since=2020-01-01T00:00:00Z")
        .await;
    assert_eq!(filtered.status(), StatusCode::BAD_REQUEST);
}
