//! Hostile probes against inner clients (issue #19): a user of one inner client trying to reach its sibling's or
//! its parent's rows through the API, hand-written SQL as the second role, and scripted use right after changes.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::access::call;
use crate::helpers::{ADMIN_TOKEN, TestApp, spawn_app};
use crate::inner::{Shop, as_inner_role, ids, inner_client, inner_no, ok_json, shop};
use mandant::server::RunOptions;

async fn get_ids(app: &TestApp, path: &str) -> Vec<i64> {
    ids(&ok_json(app, Method::GET, path, None).await)
}

async fn admin(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Vec<u8>, Value) {
    call(app, Some(ADMIN_TOKEN), method, path, body).await
}

/// The inner number of the live client under `slug` (a deleted one keeps its row).
async fn live_inner_no(app: &TestApp, slug: &str) -> i64 {
    app.control_i64(&format!(
        "SELECT inner_no::int8 FROM clients WHERE slug = '{slug}' AND status <> 'deleted'"
    ))
    .await
}

/// Bindings of a recipient in the parent's database (the parent role sees every row).
async fn bindings_of(app: &TestApp, shop: &Shop, recipient: i64) -> i64 {
    app.tenant_i64(
        &shop.parent,
        &format!("SELECT count(*) FROM bindings WHERE recipient_id = {recipient}"),
    )
    .await
}

#[tokio::test]
async fn an_inner_client_cannot_bind_a_siblings_recipient_to_its_own_list_and_learns_nothing() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    let body = Some(json!({"status": "active"}));
    let (s1, missing, _) = admin(
        &app,
        Method::PUT,
        &format!(
            "/v1/clients/{a}/mailing-lists/{}/recipients/999999",
            shop.list_a
        ),
        body.clone(),
    )
    .await;
    for other in [shop.b1, shop.p1] {
        let (s2, sibling, _) = admin(
            &app,
            Method::PUT,
            &format!(
                "/v1/clients/{a}/mailing-lists/{}/recipients/{other}",
                shop.list_a
            ),
            body.clone(),
        )
        .await;
        assert_eq!(s1, StatusCode::NOT_FOUND);
        assert_eq!(
            (s1, &missing),
            (s2, &sibling),
            "{}",
            String::from_utf8_lossy(&sibling)
        );
    }
    assert_eq!(bindings_of(&app, &shop, shop.b1).await, 1);
    assert_eq!(bindings_of(&app, &shop, shop.p1).await, 0);
    assert_eq!(
        get_ids(&app, &format!("/v1/clients/{a}/recipients")).await,
        vec![shop.a1]
    );
}

#[tokio::test]
async fn an_inner_client_cannot_bind_its_recipient_to_a_siblings_list_and_learns_nothing() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    let body = Some(json!({"status": "active"}));
    let (s1, missing, _) = admin(
        &app,
        Method::PUT,
        &format!(
            "/v1/clients/{a}/mailing-lists/999999/recipients/{}",
            shop.a1
        ),
        body.clone(),
    )
    .await;
    let (s2, sibling, _) = admin(
        &app,
        Method::PUT,
        &format!(
            "/v1/clients/{a}/mailing-lists/{}/recipients/{}",
            shop.list_b, shop.a1
        ),
        body,
    )
    .await;
    assert_eq!(s1, StatusCode::NOT_FOUND);
    assert_eq!(
        (s1, &missing),
        (s2, &sibling),
        "{}",
        String::from_utf8_lossy(&sibling)
    );
    for suffix in ["", "/recipients"] {
        let (s1, missing, _) = admin(
            &app,
            Method::GET,
            &format!("/v1/clients/{a}/mailing-lists/999999{suffix}"),
            None,
        )
        .await;
        let (s2, sibling, _) = admin(
            &app,
            Method::GET,
            &format!("/v1/clients/{a}/mailing-lists/{}{suffix}", shop.list_b),
            None,
        )
        .await;
        assert_eq!((s1, &missing), (s2, &sibling), "{suffix}");
    }
    assert_eq!(bindings_of(&app, &shop, shop.a1).await, 1);
}

#[tokio::test]
async fn creating_a_recipient_on_a_siblings_list_is_refused_and_writes_nothing() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let (status, _, body) = admin(
        &app,
        Method::POST,
        &format!(
            "/v1/clients/{}/recipients?list={}",
            shop.inner_a, shop.list_b
        ),
        Some(json!({"email": "sneaky@example.org"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            "SELECT count(*) FROM recipients WHERE email = 'sneaky@example.org'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn equality_filters_and_cursors_never_reach_a_siblings_recipient() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    for query in [
        "email=b1@example.org".to_owned(),
        "email=B1@EXAMPLE.ORG".to_owned(),
        "email=p1@example.org".to_owned(),
        "last_name=Shopper".to_owned(),
        "limit=1&cursor=0".to_owned(),
    ] {
        let (status, _, page) = admin(
            &app,
            Method::GET,
            &format!("/v1/clients/{a}/recipients?{query}"),
            None,
        )
        .await;
        if status.is_success() {
            let seen = ids(&page);
            assert!(seen.iter().all(|id| *id == shop.a1), "{query}: {page}");
        }
    }
}

#[tokio::test]
async fn a_target_group_rule_naming_a_siblings_list_is_as_unknown_as_a_list_that_never_existed() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    let mut answers = Vec::new();
    for list in [shop.list_b, 999_999] {
        for rule in [
            json!({"list": list}),
            json!({"not": {"list": list, "status": "active"}}),
        ] {
            let (status, _, body) = admin(
                &app,
                Method::POST,
                &format!("/v1/clients/{a}/target-groups"),
                Some(json!({"name": format!("probe {rule}"), "rule": rule})),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            answers.push(body.to_string().replace(&list.to_string(), "N"));
        }
    }
    assert_eq!(answers[..2], answers[2..]);
    assert_eq!(
        app.tenant_i64(&shop.parent, "SELECT count(*) FROM target_groups")
            .await,
        0
    );
}

#[tokio::test]
async fn a_mailing_list_name_taken_only_outside_the_slice_is_not_revealed() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    // The sibling's list name, as the inner client would create it for itself.
    let (status, _, body) = admin(
        &app,
        Method::POST,
        &format!("/v1/clients/{}/mailing-lists", shop.inner_a),
        Some(json!({"name": "b-list"})),
    )
    .await;
    assert_ne!(
        status,
        StatusCode::CONFLICT,
        "the name of a list outside the slice is revealed: {body}"
    );
}

#[tokio::test]
async fn a_target_group_name_taken_only_by_a_sibling_is_not_revealed() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let rule = json!({"field": "last_name", "op": "eq", "value": "Shopper"});
    ok_json(
        &app,
        Method::POST,
        &format!("/v1/clients/{}/target-groups", shop.inner_b),
        Some(json!({"name": "B secret plan", "rule": rule})),
    )
    .await;
    let (status, _, body) = admin(
        &app,
        Method::POST,
        &format!("/v1/clients/{}/target-groups", shop.inner_a),
        Some(json!({"name": "b secret plan", "rule": rule})),
    )
    .await;
    assert_ne!(
        status,
        StatusCode::CONFLICT,
        "the name of a sibling's target group is revealed: {body}"
    );
}

#[tokio::test]
async fn a_template_of_a_sibling_is_invisible_and_cannot_be_overridden_or_copied() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let theirs = ok_json(
        &app,
        Method::POST,
        &format!("/v1/clients/{}/templates", shop.inner_b),
        Some(json!({"name": "B only", "subject": "s", "text_body": "t"})),
    )
    .await;
    let tid = theirs["id"].as_str().unwrap().to_owned();
    let a = &shop.inner_a;
    let missing = "00000000-0000-0000-0000-000000000000";
    for (method, suffix, body) in [
        (Method::GET, "", None),
        (Method::PATCH, "", Some(json!({"subject": "pwned"}))),
        (Method::DELETE, "", None),
        (Method::POST, "/copy", Some(json!({"to": [a]}))),
    ] {
        let (s1, m, _) = admin(
            &app,
            method.clone(),
            &format!("/v1/clients/{a}/templates/{missing}{suffix}"),
            body.clone(),
        )
        .await;
        let (s2, t, _) = admin(
            &app,
            method.clone(),
            &format!("/v1/clients/{a}/templates/{tid}{suffix}"),
            body.clone(),
        )
        .await;
        assert_eq!(
            (s1, String::from_utf8_lossy(&m)),
            (s2, String::from_utf8_lossy(&t)),
            "{method} {suffix}"
        );
    }
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{a}/templates"),
        None,
    )
    .await;
    assert!(!page.to_string().contains("B only"), "{page}");
    let export = ok_json(&app, Method::GET, &format!("/v1/clients/{a}/export"), None).await;
    let text = export.to_string();
    assert!(
        !text.contains("B only") && !text.contains("b-list"),
        "{text}"
    );
    let theirs = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{}/templates/{tid}", shop.inner_b),
        None,
    )
    .await;
    assert_eq!(theirs["subject"], "s");
}

#[tokio::test]
async fn copying_a_template_into_a_sibling_lands_in_the_siblings_slice_only() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let mine = ok_json(
        &app,
        Method::POST,
        &format!("/v1/clients/{}/templates", shop.inner_a),
        Some(json!({"name": "Shared", "subject": "s", "text_body": "t"})),
    )
    .await;
    let id = mine["id"].as_str().unwrap();
    let report = ok_json(
        &app,
        Method::POST,
        &format!("/v1/clients/{}/templates/{id}/copy", shop.inner_a),
        Some(json!({"to": [shop.inner_b]})),
    )
    .await;
    let copied = report["results"][0]["id"]
        .as_str()
        .expect("copied")
        .to_owned();
    let b = inner_no(&app, &shop.inner_b).await;
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            &format!(
                "SELECT count(*) FROM templates WHERE id::text = '{copied}' AND mandant_owner = {b}"
            )
        )
        .await,
        1
    );
}

#[tokio::test]
async fn interleaved_concurrent_requests_of_two_inner_clients_never_see_each_other() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let mut tasks = Vec::new();
    for i in 0..48 {
        let (slug, expected) = if i % 2 == 0 {
            (shop.inner_a.clone(), shop.a1)
        } else {
            (shop.inner_b.clone(), shop.b1)
        };
        let url = format!("/v1/clients/{slug}/recipients");
        let app = &app;
        tasks.push(async move {
            if i % 3 == 0 {
                let (status, _, body) = admin(
                    app,
                    Method::POST,
                    &url,
                    Some(json!({"email": format!("c{i}@example.org")})),
                )
                .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                (slug, None, Some(body["id"].as_i64().unwrap()))
            } else {
                let seen = get_ids(app, &url).await;
                assert!(seen.contains(&expected), "{slug}: {seen:?}");
                (slug, Some(seen), None)
            }
        });
    }
    let results = futures_util::future::join_all(tasks).await;
    let created = |slug: &str| -> BTreeSet<i64> {
        results
            .iter()
            .filter(|(s, _, _)| s == slug)
            .filter_map(|(_, _, c)| *c)
            .collect()
    };
    let (mine_a, mine_b) = (created(&shop.inner_a), created(&shop.inner_b));
    for (slug, seen, _) in &results {
        let Some(seen) = seen else { continue };
        let foreign = if *slug == shop.inner_a {
            &mine_b
        } else {
            &mine_a
        };
        let foreign_base = if *slug == shop.inner_a {
            shop.b1
        } else {
            shop.a1
        };
        assert!(
            seen.iter()
                .all(|id| !foreign.contains(id) && *id != foreign_base && *id != shop.p1),
            "{slug} saw {seen:?}"
        );
    }
    let final_a: BTreeSet<i64> = get_ids(
        &app,
        &format!("/v1/clients/{}/recipients?limit=100", shop.inner_a),
    )
    .await
    .into_iter()
    .collect();
    let mut expected_a = mine_a.clone();
    expected_a.insert(shop.a1);
    assert_eq!(final_a, expected_a);
}

#[tokio::test]
async fn a_read_followed_at_once_by_a_write_lands_the_write_in_the_slice() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    let mut made = vec![shop.a1];
    for i in 0..8 {
        get_ids(&app, &format!("/v1/clients/{a}/recipients")).await;
        let body = ok_json(
            &app,
            Method::POST,
            &format!("/v1/clients/{a}/recipients"),
            Some(json!({"email": format!("rw{i}@example.org")})),
        )
        .await;
        made.push(body["id"].as_i64().unwrap());
        let patched = ok_json(
            &app,
            Method::PATCH,
            &format!("/v1/clients/{a}/recipients/{}", made[made.len() - 1]),
            Some(json!({"first_name": "Rw"})),
        )
        .await;
        assert_eq!(patched["first_name"], "Rw");
    }
    assert_eq!(
        get_ids(&app, &format!("/v1/clients/{a}/recipients?limit=100")).await,
        made
    );
    assert_eq!(
        get_ids(
            &app,
            &format!("/v1/clients/{}/recipients?limit=100", shop.inner_b)
        )
        .await,
        vec![shop.b1]
    );
    // Every write committed: the parent sees them all.
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            "SELECT count(*) FROM recipients WHERE first_name = 'Rw'"
        )
        .await,
        8
    );
}

#[tokio::test]
async fn a_scope_patch_is_seen_at_once_here_and_by_a_second_process() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let second = app.second_process(RunOptions::default()).await;
    let a = &shop.inner_a;
    // The second process has the old scope cached.
    assert_eq!(
        get_ids(&second, &format!("/v1/clients/{a}/recipients")).await,
        vec![shop.a1]
    );
    ok_json(
        &app,
        Method::PATCH,
        &format!("/v1/clients/{a}"),
        Some(json!({"scope": {"lists": [shop.list_b]}})),
    )
    .await;
    assert_eq!(
        get_ids(&app, &format!("/v1/clients/{a}/recipients")).await,
        vec![shop.b1]
    );
    assert_eq!(
        get_ids(&second, &format!("/v1/clients/{a}/recipients")).await,
        vec![shop.b1]
    );
    // A recipient created through the second process lands on the new scope's list, not the old one.
    let (status, _, body) = admin(
        &second,
        Method::POST,
        &format!("/v1/clients/{a}/recipients"),
        Some(json!({"email": "late@example.org"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_i64().unwrap();
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            &format!(
                "SELECT count(*) FROM bindings WHERE recipient_id = {id} AND mailing_list_id = {}",
                shop.list_a
            )
        )
        .await,
        0,
        "created through a stale scope onto the old list"
    );
}

#[tokio::test]
async fn a_suspended_parent_stops_its_inner_clients_at_once_and_resuming_brings_them_back() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    let (status, _, body) = admin(
        &app,
        Method::POST,
        &format!("/v1/clients/{}/suspend", shop.parent),
        None,
    )
    .await;
    assert!(status.is_success(), "{status} {body}");
    for (method, body) in [
        (Method::GET, None),
        (Method::POST, Some(json!({"email": "x@example.org"}))),
    ] {
        let (status, _, _) =
            admin(&app, method, &format!("/v1/clients/{a}/recipients"), body).await;
        assert!(!status.is_success(), "{status}");
    }
    let (status, _, body) = admin(
        &app,
        Method::POST,
        &format!("/v1/clients/{}/resume", shop.parent),
        None,
    )
    .await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(
        get_ids(&app, &format!("/v1/clients/{a}/recipients")).await,
        vec![shop.a1]
    );
}

#[tokio::test]
async fn a_recreated_inner_client_under_a_reused_slug_inherits_nothing_of_the_deleted_one() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    ok_json(
        &app,
        Method::POST,
        &format!("/v1/clients/{a}/target-groups"),
        Some(json!({"name": "Old group", "rule": {"field": "last_name", "op": "eq", "value": "Shopper"}})),
    )
    .await;
    ok_json(
        &app,
        Method::POST,
        &format!("/v1/clients/{a}/templates"),
        Some(json!({"name": "Old template", "subject": "s", "text_body": "t"})),
    )
    .await;
    let old_no = live_inner_no(&app, a).await;
    let (status, _, body) = admin(&app, Method::DELETE, &format!("/v1/clients/{a}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.wait_for_operation(body["operation"].as_str().unwrap())
        .await;
    inner_client(&app, a, &shop.parent, json!({"lists": [shop.list_b]})).await;
    assert_ne!(live_inner_no(&app, a).await, old_no);
    let groups = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{a}/target-groups"),
        None,
    )
    .await;
    assert!(ids(&groups).is_empty(), "{groups}");
    let templates = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{a}/templates"),
        None,
    )
    .await;
    assert!(
        !templates.to_string().contains("Old template"),
        "{templates}"
    );
    assert_eq!(
        get_ids(&app, &format!("/v1/clients/{a}/recipients")).await,
        vec![shop.b1]
    );
}

#[tokio::test]
async fn the_second_role_can_neither_call_the_refresh_nor_create_objects_nor_lift_row_security() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = inner_no(&app, &shop.inner_a).await;
    let db = as_inner_role(&app, &shop.parent).await;
    for sql in [
        "SELECT mandant_refresh_inner(ARRAY[1::int8])".to_owned(),
        "CREATE TABLE public.x (id int)".to_owned(),
        "CREATE FUNCTION public.mandant_inner_client() RETURNS integer LANGUAGE sql AS 'SELECT 1'".to_owned(),
        "CREATE OR REPLACE FUNCTION public.mandant_inner_default() RETURNS integer[] LANGUAGE sql AS 'SELECT ARRAY[1,2]'".to_owned(),
        "ALTER TABLE recipients DISABLE ROW LEVEL SECURITY".to_owned(),
        "ALTER TABLE recipients NO FORCE ROW LEVEL SECURITY".to_owned(),
        "DROP POLICY mandant_inner ON recipients".to_owned(),
        "SET ROLE mandant_rls_parent".to_owned(),
        "UPDATE field_catalogue SET name = name".to_owned(),
    ] {
        assert!(db.batch_execute(&sql).await.is_err(), "{sql} succeeded");
    }
    // A temporary function of the same name does not change what the policy compares.
    let _ = db
        .batch_execute("CREATE FUNCTION pg_temp.mandant_inner_client() RETURNS integer LANGUAGE sql AS 'SELECT 0'")
        .await;
    let _ = db.batch_execute("SET search_path = pg_temp, public").await;
    let seen: i64 = db
        .query_one("SELECT count(*) FROM public.recipients", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "no setting, no row");
    db.batch_execute(&format!(
        "BEGIN; SELECT set_config('mandant.inner_client', '{a}', true)"
    ))
    .await
    .unwrap();
    let seen: Vec<i64> = db
        .query("SELECT id FROM public.recipients ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec![shop.a1]);
    db.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn as_the_second_role_upserts_and_errors_reveal_no_row_of_a_sibling() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = inner_no(&app, &shop.inner_a).await;
    let mut db = as_inner_role(&app, &shop.parent).await;
    let mut tx = db.transaction().await.unwrap();
    tx.execute(
        "SELECT set_config('mandant.inner_client', $1, true)",
        &[&a.to_string()],
    )
    .await
    .unwrap();
    // ON CONFLICT DO UPDATE onto a sibling's row: refused, and RETURNING never shows it.
    let sp = tx.savepoint("upsert").await.unwrap();
    let upsert = sp
        .query(
            "INSERT INTO recipients (email) VALUES ('b1@example.org')
             ON CONFLICT (lower(email)) DO UPDATE SET first_name = 'Mallory' RETURNING id, last_name",
            &[],
        )
        .await;
    match upsert {
        Ok(rows) => assert!(rows.is_empty(), "upsert returned a sibling's row"),
        Err(e) => assert!(!format!("{e:?}").contains("Shopper"), "{e:?}"),
    }
    sp.rollback().await.unwrap();
    // A foreign-key error for a binding of a sibling's recipient: refused by the policy.
    let sp = tx.savepoint("fk").await.unwrap();
    let bound = sp
        .execute(
            "INSERT INTO bindings (recipient_id, mailing_list_id, status) VALUES ($1, $2, 'active')",
            &[&shop.b1, &shop.list_a],
        )
        .await;
    assert!(bound.is_err());
    sp.rollback().await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            "SELECT count(*) FROM recipients WHERE first_name = 'Mallory'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn as_the_second_role_an_inner_client_cannot_widen_a_rows_membership_to_its_sibling() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = inner_no(&app, &shop.inner_a).await;
    let b = inner_no(&app, &shop.inner_b).await;
    let mut db = as_inner_role(&app, &shop.parent).await;
    let tx = db.transaction().await.unwrap();
    tx.execute(
        "SELECT set_config('mandant.inner_client', $1, true)",
        &[&a.to_string()],
    )
    .await
    .unwrap();
    let widened = tx
        .execute(
            "UPDATE mailing_lists SET mandant_inner = mandant_inner || $1::int WHERE id = $2",
            &[&b, &shop.list_a],
        )
        .await;
    let committed = match widened {
        Ok(_) => tx.commit().await.is_ok(),
        Err(_) => false,
    };
    let b_sees = get_ids(&app, &format!("/v1/clients/{}/recipients", shop.inner_b)).await;
    assert!(
        !committed && b_sees == vec![shop.b1],
        "the second role rewrote a list's membership: {} now sees {b_sees:?}",
        shop.inner_b
    );
}

#[tokio::test]
async fn mandants_own_columns_are_no_field_for_an_inner_client_in_imports_filters_rules_or_patches()
{
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    let b = inner_no(&app, &shop.inner_b).await;
    for column in [
        "mandant_inner",
        "mandant_inner_rules",
        "mandant_email_lower",
    ] {
        let csv = format!("email,{column}\nsneak@example.org,\"{{{b}}}\"\n");
        let response = app
            .post_body(
                &format!("/v1/clients/{a}/recipients/import"),
                "text/csv",
                csv,
            )
            .await;
        assert!(!response.status().is_success(), "import with {column}");
        let (status, _, page) = admin(
            &app,
            Method::GET,
            &format!("/v1/clients/{a}/recipients?{column}=%7B{b}%7D"),
            None,
        )
        .await;
        assert!(
            !status.is_success() || ids(&page).iter().all(|id| *id == shop.a1),
            "{column}: {page}"
        );
        let (status, _, body) = admin(
            &app,
            Method::POST,
            &format!("/v1/clients/{a}/target-groups"),
            Some(json!({"name": format!("g {column}"), "rule": {"field": column, "op": "eq", "value": "x"}})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{column}: {body}");
        let (status, _, body) = admin(
            &app,
            Method::PATCH,
            &format!("/v1/clients/{a}/recipients/{}", shop.a1),
            Some(json!({column: [b]})),
        )
        .await;
        assert!(!status.is_success(), "{column}: {body}");
    }
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            "SELECT count(*) FROM recipients WHERE email = 'sneak@example.org'"
        )
        .await,
        0
    );
    assert_eq!(
        get_ids(&app, &format!("/v1/clients/{}/recipients", shop.inner_b)).await,
        vec![shop.b1]
    );
}

#[tokio::test]
async fn changing_an_address_to_a_siblings_answers_email_taken_and_changes_nothing() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let (status, _, body) = admin(
        &app,
        Method::PATCH,
        &format!("/v1/clients/{}/recipients/{}", shop.inner_a, shop.a1),
        Some(json!({"email": "B1@example.org", "first_name": "Mallory"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "email_taken", "{body}");
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            "SELECT count(*) FROM recipients WHERE first_name = 'Mallory' OR email = 'B1@example.org'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn an_import_cut_off_mid_body_leaves_no_connection_inside_the_inner_clients_transaction() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let url = app.url(&format!("/v1/clients/{}/recipients/import", shop.inner_a));
    use futures_util::StreamExt;
    let body = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(b"email,first_name\ncut1@example.org,Cut\n".to_vec())
    })
    .chain(futures_util::stream::pending());
    let client = crate::helpers::http_client(Some(ADMIN_TOKEN));
    let request = tokio::spawn(async move {
        let _ = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "text/csv")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await;
    });
    let db: String = as_inner_role(&app, &shop.parent)
        .await
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    let admin_db = crate::helpers::superuser("postgres").await;
    let in_transaction = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename LIKE '%\\_rls' \
         AND xact_start IS NOT NULL AND pid <> pg_backend_pid()";
    // The import is inside its transaction, waiting for more body; then the client goes away.
    let mut open = 0i64;
    for _ in 0..100 {
        open = admin_db
            .query_one(in_transaction, &[&db])
            .await
            .unwrap()
            .get(0);
        if open > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(open, 1, "the import never opened its transaction");
    request.abort();
    let _ = request.await;
    let mut stuck = -1i64;
    for _ in 0..100 {
        stuck = admin_db
            .query_one(in_transaction, &[&db])
            .await
            .unwrap()
            .get(0);
        if stuck == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        stuck, 0,
        "a connection stayed inside the cut-off transaction"
    );
    // Nothing of the cut-off import was written, and both inner clients go on seeing their slices only.
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            "SELECT count(*) FROM recipients WHERE email = 'cut1@example.org'"
        )
        .await,
        0
    );
    for _ in 0..5 {
        assert_eq!(
            get_ids(&app, &format!("/v1/clients/{}/recipients", shop.inner_b)).await,
            vec![shop.b1]
        );
        assert_eq!(
            get_ids(&app, &format!("/v1/clients/{}/recipients", shop.inner_a)).await,
            vec![shop.a1]
        );
    }
}

#[tokio::test]
async fn a_user_of_one_inner_client_counts_and_lists_only_its_slice_across_clients_and_in_the_overview()
 {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let alice = crate::access::user(
        &app,
        "alice",
        &shop.inner_a,
        &["client-admin"],
        &[(&shop.inner_a, "full", true)],
    )
    .await;
    let group = ok_json(
        &app,
        Method::POST,
        "/v1/target-groups",
        Some(json!({"name": "Shoppers", "rule": {"field": "last_name", "op": "eq", "value": "Shopper"}})),
    )
    .await;
    let gid = &group["id"];
    for suffix in ["/count", "/recipients"] {
        let (status, _, body) = call(
            &app,
            Some(&alice),
            Method::GET,
            &format!("/v1/target-groups/{gid}{suffix}"),
            None,
        )
        .await;
        if status.is_success() {
            let text = body.to_string();
            assert!(
                !text.contains("b1@example.org") && !text.contains("p1@example.org"),
                "{suffix}: {text}"
            );
            if suffix == "/count" {
                assert!(body["total"].as_i64().unwrap_or(0) <= 1, "{body}");
            }
        }
    }
    let (status, _, overview) = call(&app, Some(&alice), Method::GET, "/v1/overview", None).await;
    if status.is_success() {
        for row in overview["items"].as_array().unwrap() {
            assert_ne!(row["slug"], shop.parent.as_str(), "{overview}");
            assert_ne!(row["slug"], shop.inner_b.as_str(), "{overview}");
            if row["slug"] == shop.inner_a.as_str() {
                assert!(
                    row["recipients"].is_null(),
                    "the parent's figures shown: {row}"
                );
            }
        }
    }
    for path in ["/v1/audit", "/v1/operations"] {
        let (status, _, body) = call(&app, Some(&alice), Method::GET, path, None).await;
        if status.is_success() {
            assert!(
                !body.to_string().contains(&format!("\"{}\"", shop.inner_b)),
                "{path}: {body}"
            );
        }
    }
    let (status, _, body) = call(
        &app,
        Some(&alice),
        Method::GET,
        &format!("/v1/clients/{}/retention/preview", shop.inner_a),
        None,
    )
    .await;
    assert!(
        status.is_success() || status == StatusCode::NOT_FOUND,
        "{status} {body}"
    );
}

#[tokio::test]
async fn a_list_an_inner_client_imports_as_content_joins_its_scope_like_one_it_creates() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    let doc = json!({"format": 1, "lists": [{"id": 1, "name": "imported"}], "target_groups": [], "templates": []});
    let (status, _, report) = admin(
        &app,
        Method::POST,
        &format!("/v1/clients/{a}/import-content"),
        Some(doc),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{report}");
    let list = report["lists"][0]["id"].as_i64().expect("list id");
    let client = ok_json(&app, Method::GET, &format!("/v1/clients/{a}"), None).await;
    assert_eq!(
        client["scope"]["lists"],
        json!([shop.list_a, list]),
        "the imported list is in the database's slice but not in the scope: the next scope change drops it"
    );
}

#[tokio::test]
async fn importing_content_named_like_a_siblings_list_reveals_nothing_and_writes_nothing() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    let doc = |name: &str| json!({"format": 1, "lists": [{"id": 1, "name": name}], "target_groups": [], "templates": []});
    let (status, _, body) = admin(
        &app,
        Method::POST,
        &format!("/v1/clients/{a}/import-content"),
        Some(doc("b-list")),
    )
    .await;
    assert_ne!(
        status,
        StatusCode::CONFLICT,
        "a list name outside the slice is revealed: {body}"
    );
    assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(
        app.tenant_i64(&shop.parent, "SELECT count(*) FROM mailing_lists")
            .await,
        2 + i64::from(status.is_success())
    );
}

#[tokio::test]
async fn as_the_second_role_planner_statistics_show_nothing_of_the_rows() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    // Statistics exist (the owner analyzes the table).
    app.tenant_db(&shop.parent)
        .await
        .batch_execute("ANALYZE recipients")
        .await
        .unwrap();
    let a = inner_no(&app, &shop.inner_a).await;
    let mut db = as_inner_role(&app, &shop.parent).await;
    let tx = db.transaction().await.unwrap();
    tx.execute(
        "SELECT set_config('mandant.inner_client', $1, true)",
        &[&a.to_string()],
    )
    .await
    .unwrap();
    let rows = tx
        .query(
            "SELECT attname::text, coalesce(most_common_vals::text, ''), coalesce(histogram_bounds::text, '')
             FROM pg_stats WHERE tablename IN ('recipients', 'bindings', 'mailing_lists')",
            &[],
        )
        .await
        .unwrap();
    for row in &rows {
        let (mcv, hist): (String, String) = (row.get(1), row.get(2));
        assert!(
            !mcv.contains("b1@") && !hist.contains("b1@") && !hist.contains("p1@"),
            "pg_stats shows {}: {mcv} {hist}",
            row.get::<_, String>(0)
        );
    }
    // The two tables granted for reading answer; no other table of the database does.
    for table in ["field_catalogue", "mandant_retention_epoch"] {
        assert!(
            tx.query(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])
                .await
                .is_ok(),
            "{table} is granted"
        );
    }
    tx.rollback().await.unwrap();
    let tables: Vec<String> = db
        .query(
            "SELECT relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind = 'r'
               AND relname NOT IN ('recipients', 'mailing_lists', 'bindings', 'target_groups', 'templates',
                                   'field_catalogue', 'mandant_retention_epoch')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in tables {
        assert!(
            db.query(&format!("SELECT * FROM public.\"{table}\" LIMIT 1"), &[])
                .await
                .is_err(),
            "the second role reads {table}"
        );
    }
}
