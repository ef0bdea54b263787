//! Retention (issue #18): the master's rules and a client's stricter override, the preview, and the purge that
//! deletes exactly what the preview counted, waits a day after a tightening, and audits every run.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::access::{call, user};
use crate::helpers::{TestApp, error_code, json_body, spawn_app_with};

/// An app whose retention loop never runs by itself: the tests run the purge when they mean to.
pub async fn app_without_purge_loop() -> TestApp {
    spawn_app_with(&[("MANDANT__WORKERS__RETENTION_INTERVAL_SECS", "0".into())]).await
}

pub async fn recipient(app: &TestApp, slug: &str, email: &str) -> i64 {
    app.create_recipient(slug, &json!({"email": email})).await
}

pub async fn list(app: &TestApp, slug: &str, name: &str) -> i64 {
    let body = json_body(
        app.post_json(
            &format!("/v1/clients/{slug}/mailing-lists"),
            &json!({"name": name}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    body["id"].as_i64().unwrap()
}

async fn bind(app: &TestApp, slug: &str, list: i64, recipient: i64, status: &str) {
    json_body(
        app.send(
            Method::PUT,
            &format!("/v1/clients/{slug}/mailing-lists/{list}/recipients/{recipient}"),
            Some(&json!({ "status": status })),
        )
        .await,
        StatusCode::OK,
    )
    .await;
}

async fn put(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.send(Method::PUT, path, Some(&body)).await
}

async fn preview(app: &TestApp, slug: &str) -> Value {
    json_body(
        app.get(&format!("/v1/clients/{slug}/retention/preview"))
            .await,
        StatusCode::OK,
    )
    .await
}

async fn remaining(app: &TestApp, slug: &str) -> Vec<i64> {
    app.tenant_db(slug)
        .await
        .query("SELECT id FROM recipients ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Moves every stored tightening back by `hours` (as if that much time had passed).
async fn age_tightenings(app: &TestApp, hours: i32) {
    app.control()
        .await
        .execute(
            "UPDATE retention_rules SET tightened_at = tightened_at - make_interval(hours => $1)",
            &[&hours],
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

async fn purge_audits(app: &TestApp, slug: &str) -> Vec<Value> {
    let page = json_body(
        app.get(&format!("/v1/audit?client={slug}")).await,
        StatusCode::OK,
    )
    .await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == mandant::fanout::retention::PURGE_ACTION)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_purge_deletes_exactly_the_recipients_the_preview_counted_and_audits_it() {
    let app = app_without_purge_loop().await;
    app.create_active_client("keeper").await;
    let news = list(&app, "keeper", "News").await;
    let offers = list(&app, "keeper", "Offers").await;
    let old = list(&app, "keeper", "Old").await;
    let mut ids = std::collections::HashMap::new();
    for name in [
        "active", "optout", "bounced", "recent", "mixed", "unbound", "newcomer", "orphan",
    ] {
        ids.insert(
            name,
            recipient(&app, "keeper", &format!("{name}@example.org")).await,
        );
    }
    bind(&app, "keeper", news, ids["active"], "active").await;
    bind(&app, "keeper", news, ids["optout"], "opt_out").await;
    bind(&app, "keeper", news, ids["bounced"], "bounced").await;
    bind(&app, "keeper", offers, ids["bounced"], "opt_out").await;
    bind(&app, "keeper", news, ids["recent"], "opt_out").await;
    bind(&app, "keeper", news, ids["mixed"], "opt_out").await;
    bind(&app, "keeper", offers, ids["mixed"], "active").await;
    bind(&app, "keeper", old, ids["orphan"], "active").await;
    let db = app.tenant_db("keeper").await;
    let unbound_since = async |id: i64| -> Option<chrono::DateTime<chrono::Utc>> {
        db.query_one(
            "SELECT mandant_unbound_since FROM recipients WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
    };
    assert!(unbound_since(ids["unbound"]).await.is_some());
    assert!(unbound_since(ids["orphan"]).await.is_none(), "bound");
    // Deleting a list cascades its bindings away: its only recipient is unbound from then on.
    json_body(
        app.delete(&format!("/v1/clients/keeper/mailing-lists/{old}"))
            .await,
        StatusCode::NO_CONTENT,
    )
    .await;
    assert!(unbound_since(ids["orphan"]).await.is_some());
    // Time passes: statuses changed 40 days ago, two recipients unbound for 100 days.
    db.execute(
        "UPDATE bindings SET updated_at = now() - interval '40 days' WHERE recipient_id = ANY($1)",
        &[&vec![ids["optout"], ids["bounced"], ids["mixed"]]],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE recipients SET mandant_unbound_since = now() - interval '100 days' WHERE id = ANY($1)",
        &[&vec![ids["unbound"], ids["orphan"]]],
    )
    .await
    .unwrap();

    let nothing = preview(&app, "keeper").await;
    assert_eq!(
        (&nothing["opted_out_or_bounced"], &nothing["unbound"]),
        (&json!(0), &json!(0)),
        "both rules are off by default"
    );
    let set = json_body(
        put(
            &app,
            "/v1/retention",
            json!({"opted_out_or_bounced_days": 30, "unbound_days": 90}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(set["unbound"]["days"], 90);
    assert_eq!(set["unbound"]["in_force_days"], Value::Null, "{set}");
    assert!(set["unbound"]["in_force_from"].is_string(), "{set}");
    let counted = preview(&app, "keeper").await;
    assert_eq!(counted["opted_out_or_bounced"], 2, "{counted}");
    assert_eq!(counted["unbound"], 2, "{counted}");
    assert!(counted["as_of"].is_string());

    // Turned on a moment ago: the purge waits a day and deletes nothing.
    let before = remaining(&app, "keeper").await;
    let runs = purge(&app).await;
    assert!(
        runs.iter().all(|r| r.client != "keeper"),
        "no rule in force yet"
    );
    assert_eq!(remaining(&app, "keeper").await, before);

    age_tightenings(&app, 25).await;
    let runs = purge(&app).await;
    let run = runs.iter().find(|r| r.client == "keeper").unwrap();
    assert!(run.error.is_none(), "{run:?}");
    assert_eq!(
        (
            run.count(mandant::domain::retention::RetentionRule::OptedOutOrBounced),
            run.count(mandant::domain::retention::RetentionRule::Unbound)
        ),
        (2, 2),
        "exactly the preview's counts"
    );
    let mut kept: Vec<i64> = ["active", "recent", "mixed", "newcomer"]
        .iter()
        .map(|n| ids[n])
        .collect();
    kept.sort();
    assert_eq!(remaining(&app, "keeper").await, kept);
    let bindings: i64 = db
        .query_one("SELECT count(*) FROM bindings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        bindings, 4,
        "the deleted recipients' bindings went with them"
    );
    let after = preview(&app, "keeper").await;
    assert_eq!(
        (&after["opted_out_or_bounced"], &after["unbound"]),
        (&json!(0), &json!(0))
    );
    let audits = purge_audits(&app, "keeper").await;
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert_eq!(audits[0]["outcome"], "succeeded");
    assert_eq!(audits[0]["detail"]["opted_out_or_bounced"], 2);
    assert_eq!(audits[0]["detail"]["unbound"], 2);
    assert_eq!(audits[0]["detail"]["days"]["unbound"], 90);
}

#[tokio::test]
async fn put_client_retention_returns_400_when_looser_than_the_master() {
    let app = app_without_purge_loop().await;
    app.create_active_client("strict").await;
    json_body(
        put(&app, "/v1/retention", json!({"unbound_days": 90})).await,
        StatusCode::OK,
    )
    .await;
    let looser = put(
        &app,
        "/v1/clients/strict/retention",
        json!({"unbound_days": 120}),
    )
    .await;
    assert_eq!(looser.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(looser).await, "retention_looser_than_master");
    let unchanged = json_body(
        app.get("/v1/clients/strict/retention").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(unchanged["override"]["unbound"]["days"], Value::Null);
    assert_eq!(unchanged["effective"]["unbound_days"], 90);

    for bad in [
        json!({"unbound_days": 0}),
        json!({"unbound_days": 36501}),
        json!({"unbound_days": "ten"}),
        json!({"unbound": 10}),
    ] {
        let response = put(&app, "/v1/clients/strict/retention", bad.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let stricter = json_body(
        put(
            &app,
            "/v1/clients/strict/retention",
            json!({"unbound_days": 30, "opted_out_or_bounced_days": 400}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(stricter["effective"]["unbound_days"], 30);
    assert_eq!(
        stricter["effective"]["opted_out_or_bounced_days"], 400,
        "where the master has no rule, any period is stricter"
    );
    assert_eq!(
        app.control_i64(
            "SELECT count(*) FROM retention_rules r JOIN clients c ON c.id = r.client_id
             WHERE c.slug = 'strict' AND r.days IS NOT NULL"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn a_rule_tightened_less_than_a_day_ago_is_applied_with_its_previous_period() {
    let app = app_without_purge_loop().await;
    app.create_active_client("waiting").await;
    let news = list(&app, "waiting", "News").await;
    let twenty = recipient(&app, "waiting", "twenty@example.org").await;
    let forty = recipient(&app, "waiting", "forty@example.org").await;
    for (id, days) in [(twenty, 20), (forty, 40)] {
        bind(&app, "waiting", news, id, "opt_out").await;
        app.tenant_db("waiting")
            .await
            .execute(
                "UPDATE bindings SET updated_at = now() - make_interval(days => $2) WHERE recipient_id = $1",
                &[&id, &days],
            )
            .await
            .unwrap();
    }
    json_body(
        put(
            &app,
            "/v1/retention",
            json!({"opted_out_or_bounced_days": 30}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    age_tightenings(&app, 25).await;
    // The client tightens to 10 days: the preview shows what that removes, the purge keeps to 30 for a day.
    let tightened = json_body(
        put(
            &app,
            "/v1/clients/waiting/retention",
            json!({"opted_out_or_bounced_days": 10}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(tightened["effective"]["opted_out_or_bounced_days"], 10);
    assert_eq!(
        tightened["in_force"]["opted_out_or_bounced_days"], 30,
        "{tightened}"
    );
    assert_eq!(preview(&app, "waiting").await["opted_out_or_bounced"], 2);
    purge(&app).await;
    assert_eq!(remaining(&app, "waiting").await, vec![twenty]);
    let audits = purge_audits(&app, "waiting").await;
    assert_eq!(audits[0]["detail"]["days"]["opted_out_or_bounced"], 30);

    // 23 hours later: still waiting.
    age_tightenings(&app, 23).await;
    purge(&app).await;
    assert_eq!(remaining(&app, "waiting").await, vec![twenty]);
    // A day after the tightening: applied.
    age_tightenings(&app, 2).await;
    purge(&app).await;
    assert!(remaining(&app, "waiting").await.is_empty());
    let audits = purge_audits(&app, "waiting").await;
    assert_eq!(audits.len(), 3, "every run is audited: {audits:?}");
    assert_eq!(audits[0]["detail"]["days"]["opted_out_or_bounced"], 10);
    assert_eq!(audits[0]["detail"]["opted_out_or_bounced"], 1);
}

#[tokio::test]
async fn retention_is_invisible_without_access_read_only_with_read_access_and_central_with_full_master_access()
 {
    let app = app_without_purge_loop().await;
    app.create_active_client("alpha").await;
    app.create_active_client("beta").await;
    let reader = user(
        &app,
        "alpha-reader",
        "alpha",
        &["client-admin"],
        &[("alpha", "read", false), ("master", "read", false)],
    )
    .await;
    let manager = user(
        &app,
        "alpha-manager",
        "alpha",
        &["client-admin"],
        &[("alpha", "full", false)],
    )
    .await;
    let body = json!({"unbound_days": 10});
    // No access (beta): invisible, exactly like a client that does not exist.
    for (method, path) in [
        (Method::GET, "/v1/clients/beta/retention"),
        (Method::PUT, "/v1/clients/beta/retention"),
        (Method::GET, "/v1/clients/beta/retention/preview"),
    ] {
        for token in [&reader, &manager] {
            let (status, _, _) =
                call(&app, Some(token), method.clone(), path, Some(body.clone())).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        }
    }
    // Read access: reads, no writes.
    let (status, _, _) = call(
        &app,
        Some(&reader),
        Method::GET,
        "/v1/clients/alpha/retention",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(
        &app,
        Some(&reader),
        Method::GET,
        "/v1/clients/alpha/retention/preview",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, refused) = call(
        &app,
        Some(&reader),
        Method::PUT,
        "/v1/clients/alpha/retention",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["error"]["code"], "read_only_access");
    // The master's rules: readable with access to the master, changed only with full access to it.
    let (status, _, _) = call(&app, Some(&reader), Method::GET, "/v1/retention", None).await;
    assert_eq!(status, StatusCode::OK);
    for token in [&reader, &manager] {
        let (status, _, _) = call(
            &app,
            Some(token),
            Method::PUT,
            "/v1/retention",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, _, _) = call(
        &app,
        Some(&manager),
        Method::PUT,
        "/v1/clients/alpha/retention",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.control_i64("SELECT count(*) FROM retention_rules WHERE days IS NOT NULL")
            .await,
        1,
        "only the permitted change was written"
    );
}

#[tokio::test]
async fn put_retention_returns_400_when_the_body_is_an_array_and_changes_nothing() {
    let app = app_without_purge_loop().await;
    let before = json_body(app.get("/v1/retention").await, StatusCode::OK).await;
    for path in ["/v1/retention", "/v1/clients/master/retention"] {
        let response = put(&app, path, json!([null, null])).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_body", "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("JSON object"),
            "{body}"
        );
    }
    // Any other endpoint's body too.
    let response = app.post_json("/v1/clients", &json!(["x", "X"])).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let after = json_body(app.get("/v1/retention").await, StatusCode::OK).await;
    assert_eq!(
        before["opted_out_or_bounced"],
        after["opted_out_or_bounced"]
    );
    assert_eq!(before["unbound"], after["unbound"]);
}
