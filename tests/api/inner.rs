//! Inner clients (issue #19): units inside one client's database whose slices PostgreSQL's row-level security
//! enforces, through every data-plane endpoint and in hand-written SQL.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::access::{call, user};
use crate::helpers::{ADMIN_TOKEN, TestApp, spawn_app};

/// A parent `shop` with lists `a-list` and `b-list`, recipients `a1` (on a-list), `b1` (on b-list) and `p1` (on
/// none), and inner clients `shop-a` (scope: a-list) and `shop-b` (scope: b-list).
pub(crate) struct Shop {
    pub(crate) parent: String,
    pub(crate) inner_a: String,
    pub(crate) inner_b: String,
    pub(crate) list_a: i64,
    pub(crate) list_b: i64,
    pub(crate) a1: i64,
    pub(crate) b1: i64,
    pub(crate) p1: i64,
}

pub(crate) async fn ok_json(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let (status, _, json) = call(app, Some(ADMIN_TOKEN), method.clone(), path, body).await;
    assert!(status.is_success(), "{method} {path}: {status} {json}");
    json
}

async fn recipient(app: &TestApp, client: &str, email: &str, list: Option<i64>) -> i64 {
    let body = ok_json(
        app,
        Method::POST,
        &format!("/v1/clients/{client}/recipients"),
        Some(json!({"email": email, "last_name": "Shopper"})),
    )
    .await;
    let id = body["id"].as_i64().expect("id");
    if let Some(list) = list {
        ok_json(
            app,
            Method::PUT,
            &format!("/v1/clients/{client}/mailing-lists/{list}/recipients/{id}"),
            Some(json!({"status": "active"})),
        )
        .await;
    }
    id
}

pub(crate) async fn inner_client(app: &TestApp, slug: &str, parent: &str, scope: Value) -> Value {
    let (status, _, body) = call(
        app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/clients",
        Some(
            json!({"slug": slug, "name": slug, "parent": parent, "kind": "inner", "scope": scope}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

pub(crate) async fn shop(app: &TestApp) -> Shop {
    let parent = "shop".to_owned();
    app.create_active_client(&parent).await;
    let list = |name: &'static str| {
        let parent = parent.clone();
        async move {
            ok_json(
                app,
                Method::POST,
                &format!("/v1/clients/{parent}/mailing-lists"),
                Some(json!({"name": name})),
            )
            .await["id"]
                .as_i64()
                .expect("list id")
        }
    };
    let list_a = list("a-list").await;
    let list_b = list("b-list").await;
    let a1 = recipient(app, &parent, "a1@example.org", Some(list_a)).await;
    let b1 = recipient(app, &parent, "b1@example.org", Some(list_b)).await;
    let p1 = recipient(app, &parent, "p1@example.org", None).await;
    let inner_a = format!("{parent}-a");
    let inner_b = format!("{parent}-b");
    let a = inner_client(app, &inner_a, &parent, json!({"lists": [list_a]})).await;
    assert_eq!(a["kind"], "inner");
    assert_eq!(a["status"], "active");
    assert_eq!(a["parent"], parent.as_str());
    assert_eq!(a["scope"], json!({"lists": [list_a], "rule": null}));
    assert!(a["database"].is_null() && a["server"].is_null(), "{a}");
    inner_client(app, &inner_b, &parent, json!({"lists": [list_b]})).await;
    Shop {
        parent,
        inner_a,
        inner_b,
        list_a,
        list_b,
        a1,
        b1,
        p1,
    }
}

async fn count(tx: &tokio_postgres::Transaction<'_>, sql: &str) -> i64 {
    tx.query_one(sql, &[]).await.unwrap().get(0)
}

pub(crate) fn ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect()
}

/// The inner client's number, as its parent's database knows it.
pub(crate) async fn inner_no(app: &TestApp, slug: &str) -> i32 {
    app.control_i64(&format!(
        "SELECT inner_no::int8 FROM clients WHERE slug = '{slug}'"
    ))
    .await as i32
}

/// The parent's database as its second role (what an inner client's requests use), outside the pool.
pub(crate) async fn as_inner_role(app: &TestApp, parent: &str) -> tokio_postgres::Client {
    let id = app.client_id(parent).await;
    let control = app.state.control();
    let record = control.client_by_id(id).await.expect("parent");
    let server = control
        .server(record.server_id.expect("placed"))
        .await
        .expect("server");
    app.state
        .targets()
        .inner(&server, id)
        .expect("inner target")
        .connect()
        .await
        .expect("connect as the second role")
}

#[tokio::test]
async fn the_database_itself_confines_an_inner_clients_transaction_to_its_slice() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = inner_no(&app, &shop.inner_a).await;
    let b = inner_no(&app, &shop.inner_b).await;
    let mut db = as_inner_role(&app, &shop.parent).await;

    // The role owns nothing and may not bypass row-level security.
    let row = db
        .query_one(
            "SELECT rolsuper, rolbypassrls, (SELECT count(*) FROM pg_class WHERE relowner = r.oid)
             FROM pg_roles r WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0) && !row.get::<_, bool>(1));
    assert_eq!(row.get::<_, i64>(2), 0);

    let mut tx = db.transaction().await.unwrap();
    tx.execute(
        "SELECT set_config('mandant.inner_client', $1, true)",
        &[&a.to_string()],
    )
    .await
    .unwrap();
    let seen: Vec<i64> = tx
        .query("SELECT id FROM recipients ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec![shop.a1]);
    assert_eq!(count(&tx, "SELECT count(*) FROM bindings").await, 1);
    assert_eq!(count(&tx, "SELECT count(*) FROM mailing_lists").await, 1);
    assert_eq!(count(&tx, "SELECT count(*) FROM target_groups").await, 0);
    // An UPDATE of a row outside changes nothing.
    let updated = tx
        .execute(
            "UPDATE recipients SET first_name = 'X' WHERE id = ANY($1)",
            &[&vec![shop.b1, shop.p1]],
        )
        .await
        .unwrap();
    assert_eq!(updated, 0);
    let deleted = tx
        .execute("DELETE FROM recipients WHERE id = $1", &[&shop.b1])
        .await
        .unwrap();
    assert_eq!(deleted, 0);
    let sp = tx.savepoint("outside").await.unwrap();
    // An INSERT outside the slice fails.
    let err = sp
        .execute(
            "INSERT INTO recipients (email, mandant_inner) VALUES ('x@example.org', ARRAY[$1::int])",
            &[&b],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    drop(sp);
    // Binding the sibling's recipient to one's own list fails (a foreign-key check would not stop it).
    let sp = tx.savepoint("steal").await.unwrap();
    let err = sp
        .execute(
            "INSERT INTO bindings (mailing_list_id, recipient_id, status) VALUES ($1, $2, 'active')",
            &[&shop.list_a, &shop.b1],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    drop(sp);
    // Nor to the sibling's list.
    let sp = tx.savepoint("foreign_list").await.unwrap();
    assert!(
        sp.execute(
            "INSERT INTO bindings (mailing_list_id, recipient_id, status) VALUES ($1, $2, 'active')",
            &[&shop.list_b, &shop.a1],
        )
        .await
        .is_err()
    );
    drop(sp);
    tx.commit().await.unwrap();

    // After the transaction the setting is gone: nothing is visible, nothing carries over.
    let setting: String = db
        .query_one("SELECT current_setting('mandant.inner_client', true)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, "");
    let left: i64 = db
        .query_one("SELECT count(*) FROM recipients", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // Nothing written by the refused statements.
    assert_eq!(
        app.tenant_i64(&shop.parent, "SELECT count(*) FROM recipients")
            .await,
        3
    );
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            &format!(
                "SELECT count(*) FROM bindings WHERE recipient_id = {} AND mailing_list_id = {}",
                shop.b1, shop.list_a
            )
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_pooled_connection_used_for_one_inner_client_carries_nothing_into_the_next_checkout() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let data = app.state.data();
    let slug = |s: &str| mandant::domain::ClientSlug::parse(s).unwrap();
    let use_ = mandant::tenant::pool::Use::Request;

    let (_, mut first) = data
        .connect_with(&slug(&shop.inner_a), use_, false)
        .await
        .unwrap();
    let pid_a: i32 = first
        .client()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let seen: i64 = first
        .client()
        .query_one("SELECT count(*) FROM recipients", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 1);
    first.end_scoped(true).await.unwrap();
    drop(first);

    // Dropped in the middle of its transaction: rolled back before anyone else gets it.
    let (_, second) = data
        .connect_with(&slug(&shop.inner_b), use_, false)
        .await
        .unwrap();
    let pid_b: i32 = second
        .client()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid_a, pid_b, "the one idle connection is reused");
    let seen: Vec<i64> = second
        .client()
        .query("SELECT id FROM recipients", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec![shop.b1]);
    drop(second);
    // The dropped transaction was rolled back: the backend is idle, not idle in a transaction.
    let admin = crate::helpers::superuser("postgres").await;
    let mut state = String::new();
    for _ in 0..200 {
        state = admin
            .query_one(
                "SELECT state FROM pg_stat_activity WHERE pid = $1",
                &[&pid_a],
            )
            .await
            .unwrap()
            .get(0);
        if state == "idle" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(state, "idle");

    // Used outside any scoped transaction, the connection sees nothing.
    let route = {
        let parent = app.client_id(&shop.parent).await;
        let control = app.state.control();
        let server = control
            .server(
                control
                    .client_by_id(parent)
                    .await
                    .unwrap()
                    .server_id
                    .unwrap(),
            )
            .await
            .unwrap();
        mandant::tenant::pool::TenantRoute {
            client_id: mandant::data::inner_pool_key(parent),
            server_id: server.id,
            server: server.name.clone(),
            budget: None,
            target: app.state.targets().inner(&server, parent).unwrap(),
        }
    };
    let bare = data.pools().acquire_for(&route, use_).await.unwrap();
    let pid: i32 = bare
        .client()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid, pid_a);
    let row = bare
        .client()
        .query_one(
            "SELECT current_setting('mandant.inner_client', true), (SELECT count(*) FROM recipients)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "");
    assert_eq!(row.get::<_, i64>(1), 0);
}

#[tokio::test]
async fn two_inner_clients_see_nothing_of_each_other_through_the_api_and_the_parent_sees_both() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let alice = user(
        &app,
        "alice",
        &shop.inner_a,
        &["client-admin"],
        &[(&shop.inner_a, "full", true)],
    )
    .await;
    let bob = user(
        &app,
        "bob",
        &shop.inner_b,
        &["client-admin"],
        &[(&shop.inner_b, "full", true)],
    )
    .await;
    let a = &shop.inner_a;
    let b = &shop.inner_b;

    let (status, _, page) = call(
        &app,
        Some(&alice),
        Method::GET,
        &format!("/v1/clients/{a}/recipients"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), vec![shop.a1]);
    let (_, _, page) = call(
        &app,
        Some(&bob),
        Method::GET,
        &format!("/v1/clients/{b}/recipients"),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.b1]);
    // The parent's administrator sees everyone.
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{}/recipients", shop.parent),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.a1, shop.b1, shop.p1]);

    // The sibling's recipient is exactly as absent as one that never existed, by every method.
    for (method, suffix, body) in [
        (Method::GET, "", None),
        (Method::PATCH, "", Some(json!({"first_name": "Mallory"}))),
        (Method::DELETE, "", None),
    ] {
        let (s1, missing, _) = call(
            &app,
            Some(&alice),
            method.clone(),
            &format!("/v1/clients/{a}/recipients/999999{suffix}"),
            body.clone(),
        )
        .await;
        let (s2, sibling, _) = call(
            &app,
            Some(&alice),
            method.clone(),
            &format!("/v1/clients/{a}/recipients/{}{suffix}", shop.b1),
            body.clone(),
        )
        .await;
        assert_eq!(
            (s1, s2),
            (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND),
            "{method}"
        );
        assert_eq!(missing, sibling, "{method}: byte-identical 404");
    }
    let (status, _, _) = call(
        &app,
        Some(&alice),
        Method::PUT,
        &format!(
            "/v1/clients/{a}/mailing-lists/{}/recipients/{}",
            shop.list_a, shop.b1
        ),
        Some(json!({"status": "active"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(
        &app,
        Some(&alice),
        Method::GET,
        &format!("/v1/clients/{a}/mailing-lists/{}", shop.list_b),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Alice has no access to the sibling at all.
    let (status, _, _) = call(
        &app,
        Some(&alice),
        Method::GET,
        &format!("/v1/clients/{b}/recipients"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing changed by the refused writes.
    let b1 = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{}/recipients/{}", shop.parent, shop.b1),
        None,
    )
    .await;
    assert_eq!(b1["first_name"], Value::Null);

    // A recipient created through the inner client lands in its slice, on its scope's list.
    let (status, _, created) = call(
        &app,
        Some(&alice),
        Method::POST,
        &format!("/v1/clients/{a}/recipients"),
        Some(json!({"email": "new@example.org"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let new = created["id"].as_i64().unwrap();
    let (_, _, page) = call(
        &app,
        Some(&alice),
        Method::GET,
        &format!("/v1/clients/{a}/recipients"),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.a1, new]);
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            &format!(
                "SELECT count(*) FROM bindings WHERE recipient_id = {new} AND mailing_list_id = {}",
                shop.list_a
            )
        )
        .await,
        1
    );
    let (_, _, page) = call(
        &app,
        Some(&bob),
        Method::GET,
        &format!("/v1/clients/{b}/recipients"),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.b1]);
    // A list outside its scope is refused, and nothing is written.
    let (status, _, body) = call(
        &app,
        Some(&alice),
        Method::POST,
        &format!("/v1/clients/{a}/recipients?list={}", shop.list_b),
        Some(json!({"email": "other@example.org"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "outside_scope");
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            "SELECT count(*) FROM recipients WHERE email = 'other@example.org'"
        )
        .await,
        0
    );
    // An address in the sibling's slice: the one existence signal, and nothing of the sibling's is handed over.
    let (status, _, body) = call(
        &app,
        Some(&alice),
        Method::POST,
        &format!("/v1/clients/{a}/recipients"),
        Some(json!({"email": "B1@example.org"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "email_taken");
    let (_, _, page) = call(
        &app,
        Some(&alice),
        Method::GET,
        &format!("/v1/clients/{a}/recipients"),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.a1, new]);

    // A list the inner client creates joins its scope.
    let (status, _, list) = call(
        &app,
        Some(&alice),
        Method::POST,
        &format!("/v1/clients/{a}/mailing-lists"),
        Some(json!({"name": "a-extra"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{list}");
    let extra = list["id"].as_i64().unwrap();
    let client = ok_json(&app, Method::GET, &format!("/v1/clients/{a}"), None).await;
    assert_eq!(client["scope"]["lists"], json!([shop.list_a, extra]));
    let (_, _, lists) = call(
        &app,
        Some(&bob),
        Method::GET,
        &format!("/v1/clients/{b}/mailing-lists"),
        None,
    )
    .await;
    assert_eq!(ids(&lists), vec![shop.list_b]);
}

#[tokio::test]
async fn a_list_scope_follows_a_binding_change_at_once() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{a}/recipients"),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.a1]);
    // Bound through the parent: in the slice on the very next request.
    ok_json(
        &app,
        Method::PUT,
        &format!(
            "/v1/clients/{}/mailing-lists/{}/recipients/{}",
            shop.parent, shop.list_a, shop.p1
        ),
        Some(json!({"status": "opt_out"})),
    )
    .await;
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{a}/recipients"),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.a1, shop.p1]);
    // Unbound (there is no unbind endpoint: a statement on the parent's database, which fires the same triggers):
    // gone at once.
    app.tenant_db(&shop.parent)
        .await
        .execute(
            "DELETE FROM bindings WHERE mailing_list_id = $1 AND recipient_id = $2",
            &[&shop.list_a, &shop.a1],
        )
        .await
        .unwrap();
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{a}/recipients"),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.p1]);
    // The scope changed: the other list's recipients instead.
    let patched = ok_json(
        &app,
        Method::PATCH,
        &format!("/v1/clients/{a}"),
        Some(json!({"scope": {"lists": [shop.list_b]}})),
    )
    .await;
    assert_eq!(patched["scope"]["lists"], json!([shop.list_b]));
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{a}/recipients"),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.b1]);
}

#[tokio::test]
async fn a_rule_scope_follows_changed_recipients_when_the_scope_job_runs() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let r = format!("{}-r", shop.parent);
    let rule = json!({"field": "first_name", "op": "eq", "value": "Rita"});
    ok_json(
        &app,
        Method::PATCH,
        &format!("/v1/clients/{}/recipients/{}", shop.parent, shop.p1),
        Some(json!({"first_name": "Rita"})),
    )
    .await;
    inner_client(&app, &r, &shop.parent, json!({"rule": rule})).await;
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{r}/recipients"),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.p1]);
    // A recipient changed to match joins when the job runs (workers.inner_scope_interval_secs), not before.
    ok_json(
        &app,
        Method::PATCH,
        &format!("/v1/clients/{}/recipients/{}", shop.parent, shop.b1),
        Some(json!({"first_name": "Rita"})),
    )
    .await;
    ok_json(
        &app,
        Method::PATCH,
        &format!("/v1/clients/{}/recipients/{}", shop.parent, shop.p1),
        Some(json!({"first_name": "Paul"})),
    )
    .await;
    let runs = app
        .state
        .fanout()
        .apply_inner_scopes()
        .await
        .unwrap()
        .expect("not locked");
    assert!(runs.iter().all(|r| r.applied.is_ok()), "{runs:?}");
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{r}/recipients"),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.b1]);
    // Created through the rule-only inner client: it must match the rule.
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        &format!("/v1/clients/{r}/recipients"),
        Some(json!({"email": "no@example.org", "first_name": "Nora"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "outside_scope");
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            "SELECT count(*) FROM recipients WHERE email = 'no@example.org'"
        )
        .await,
        0
    );
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        &format!("/v1/clients/{r}/recipients"),
        Some(json!({"email": "yes@example.org", "first_name": "Rita"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{r}/recipients"),
        None,
    )
    .await;
    assert_eq!(ids(&page).len(), 2);
}

#[tokio::test]
async fn masking_and_read_only_access_work_on_an_inner_client() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    let reader = user(&app, "reader", a, &["client-admin"], &[(a, "read", false)]).await;
    let (status, _, page) = call(
        &app,
        Some(&reader),
        Method::GET,
        &format!("/v1/clients/{a}/recipients"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), vec![shop.a1]);
    let shown = &page["items"][0];
    assert_ne!(shown["email"], "a1@example.org", "masked: {shown}");
    let (status, _, _) = call(
        &app,
        Some(&reader),
        Method::POST,
        &format!("/v1/clients/{a}/mailing-lists"),
        Some(json!({"name": "nope"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = call(
        &app,
        Some(&reader),
        Method::PATCH,
        &format!("/v1/clients/{a}/recipients/{}", shop.a1),
        Some(json!({"first_name": "X"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = call(
        &app,
        Some(&reader),
        Method::GET,
        &format!("/v1/clients/{}/recipients", shop.parent),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no access to the parent: invisible"
    );
}

#[tokio::test]
async fn templates_and_target_groups_of_an_inner_client_are_its_own_and_the_parents_are_read_only()
{
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let (a, b, parent) = (&shop.inner_a, &shop.inner_b, &shop.parent);
    let parents = ok_json(
        &app,
        Method::POST,
        &format!("/v1/clients/{parent}/templates"),
        Some(json!({"name": "Parent's", "subject": "s", "text_body": "t"})),
    )
    .await;
    let parents_id = parents["id"].as_str().unwrap().to_owned();
    let mine = ok_json(
        &app,
        Method::POST,
        &format!("/v1/clients/{a}/templates"),
        Some(json!({"name": "A's", "subject": "s", "text_body": "t"})),
    )
    .await;
    let mine_id = mine["id"].as_str().unwrap().to_owned();
    let names = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["origin"] == "local")
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let a_sees = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{a}/templates"),
        None,
    )
    .await;
    assert_eq!(names(&a_sees), vec!["A's", "Parent's"]);
    let b_sees = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{b}/templates"),
        None,
    )
    .await;
    assert_eq!(names(&b_sees), vec!["Parent's"]);
    let parent_sees = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{parent}/templates"),
        None,
    )
    .await;
    assert_eq!(names(&parent_sees), vec!["A's", "Parent's"]);
    // The parent's template is read-only for the inner client.
    let (status, _, _) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::PUT,
        &format!("/v1/clients/{a}/templates/{parents_id}"),
        Some(json!({"name": "Mine now", "subject": "s", "text_body": "t"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::GET,
        &format!("/v1/clients/{b}/templates/{mine_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A target group counts the inner client's slice only, and the sibling does not see it.
    let group = ok_json(&app, Method::POST, &format!("/v1/clients/{a}/target-groups"), Some(json!({"name": "Shoppers", "rule": {"field": "last_name", "op": "eq", "value": "Shopper"}}))).await;
    let gid = group["id"].as_i64().unwrap();
    let count = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{a}/target-groups/{gid}/count"),
        None,
    )
    .await;
    assert_eq!(count["count"], 1, "{count}");
    let (status, _, _) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::GET,
        &format!("/v1/clients/{b}/target-groups/{gid}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let parent_groups = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{parent}/target-groups"),
        None,
    )
    .await;
    assert_eq!(ids(&parent_groups), vec![gid]);
}

#[tokio::test]
async fn creating_an_inner_client_is_validated_and_changes_nothing_when_refused() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let parent = &shop.parent;
    let before = app.control_i64("SELECT count(*) FROM clients").await;
    for (body, status, code) in [
        (
            json!({"slug": "x-inner", "name": "x", "kind": "inner", "scope": {"lists": [shop.list_a]}}),
            422,
            "invalid_client_kind",
        ),
        (
            json!({"slug": "x-inner", "name": "x", "parent": parent, "kind": "inner"}),
            422,
            "invalid_client_kind",
        ),
        (
            json!({"slug": "x-inner", "name": "x", "parent": parent, "kind": "inner", "scope": {}}),
            422,
            "invalid_scope",
        ),
        (
            json!({"slug": "x-inner", "name": "x", "parent": parent, "kind": "inner", "scope": {"lists": [987654]}}),
            422,
            "invalid_scope",
        ),
        (
            json!({"slug": "x-inner", "name": "x", "parent": parent, "kind": "inner", "scope": {"rule": {"field": "nope", "op": "eq", "value": 1}}}),
            422,
            "invalid_scope",
        ),
        (
            json!({"slug": "x-inner", "name": "x", "parent": shop.inner_a, "kind": "inner", "scope": {"lists": [shop.list_a]}}),
            422,
            "parent_is_inner",
        ),
        (
            json!({"slug": "x-inner", "name": "x", "parent": shop.inner_a}),
            422,
            "parent_is_inner",
        ),
        (
            json!({"slug": "x-inner", "name": "x", "parent": parent, "scope": {"lists": [shop.list_a]}}),
            422,
            "invalid_client_kind",
        ),
        (
            json!({"slug": "x-inner", "name": "x", "parent": parent, "kind": "inner", "zone": "eu", "scope": {"lists": [shop.list_a]}}),
            422,
            "invalid_client_kind",
        ),
        (
            json!({"slug": shop.inner_b, "name": "x", "parent": parent, "kind": "inner", "scope": {"lists": [shop.list_a]}}),
            409,
            "slug_taken",
        ),
    ] {
        let (got, _, answer) = call(
            &app,
            Some(ADMIN_TOKEN),
            Method::POST,
            "/v1/clients",
            Some(body.clone()),
        )
        .await;
        assert_eq!(got.as_u16(), status, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], code, "{body} → {answer}");
    }
    assert_eq!(
        app.control_i64("SELECT count(*) FROM clients").await,
        before
    );
    // A scope only for inner clients.
    let (status, _, _) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::PATCH,
        &format!("/v1/clients/{parent}"),
        Some(json!({"scope": {"lists": [shop.list_a]}})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, _) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::PATCH,
        &format!("/v1/clients/{parent}"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn deleting_an_inner_client_keeps_the_parents_recipients_and_a_parent_with_inner_clients_cannot_go()
 {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::DELETE,
        &format!("/v1/clients/{}", shop.parent),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::DELETE,
        &format!("/v1/clients/{}", shop.inner_a),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let op = app
        .wait_for_operation(body["operation"].as_str().unwrap())
        .await;
    assert_eq!(op["status"], "succeeded", "{op}");
    let (status, _, _) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::GET,
        &format!("/v1/clients/{}/recipients", shop.inner_a),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.tenant_i64(&shop.parent, "SELECT count(*) FROM recipients")
            .await,
        3
    );
    // The sibling is untouched.
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{}/recipients", shop.inner_b),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.b1]);
}

#[tokio::test]
async fn an_import_through_an_inner_client_lands_in_its_slice_and_an_address_outside_it_imports_nothing()
 {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let a = &shop.inner_a;
    let csv = "email,first_name\nn1@example.org,Ned\nA1@example.org,Ann\n";
    let response = app
        .post_body(
            &format!("/v1/clients/{a}/recipients/import"),
            "text/csv",
            csv,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(
        (outcome["inserted"].as_i64(), outcome["updated"].as_i64()),
        (Some(1), Some(1)),
        "{outcome}"
    );
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{a}/recipients"),
        None,
    )
    .await;
    assert_eq!(ids(&page).len(), 2, "{page}");
    assert_eq!(
        app.tenant_i64(&shop.parent, &format!("SELECT count(*) FROM bindings b JOIN recipients r ON r.id = b.recipient_id WHERE r.email = 'n1@example.org' AND b.mailing_list_id = {}", shop.list_a)).await,
        1
    );
    // b1 is the sibling's: the import is refused as a whole, nothing of it written, nothing of b1 changed.
    let csv = "email,first_name\nn2@example.org,Nina\nb1@example.org,Mallory\n";
    let response = app
        .post_body(
            &format!("/v1/clients/{a}/recipients/import"),
            "text/csv",
            csv,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "email_taken", "{body}");
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            "SELECT count(*) FROM recipients WHERE email = 'n2@example.org'"
        )
        .await,
        0
    );
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            "SELECT count(*) FROM recipients WHERE first_name = 'Mallory'"
        )
        .await,
        0
    );
    // A list outside the scope: refused.
    let response = app
        .post_body(
            &format!("/v1/clients/{a}/recipients/import?list={}", shop.list_b),
            "text/csv",
            "email\nn3@example.org\n",
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            "SELECT count(*) FROM recipients WHERE email = 'n3@example.org'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_suspended_parent_takes_its_inner_clients_with_it_and_both_roles_stop_logging_in() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{}/recipients", shop.inner_a),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.a1]);
    ok_json(
        &app,
        Method::POST,
        &format!("/v1/clients/{}/suspend", shop.parent),
        None,
    )
    .await;
    let id = app.client_id(&shop.parent).await;
    let role = app.state.targets().names(id).role;
    assert!(!crate::helpers::role_can_login(&role).await);
    assert!(!crate::helpers::role_can_login(&mandant::tenant::inner::inner_role(&role)).await);
    let (status, _, body) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::GET,
        &format!("/v1/clients/{}/recipients", shop.inner_a),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    ok_json(
        &app,
        Method::POST,
        &format!("/v1/clients/{}/resume", shop.parent),
        None,
    )
    .await;
    assert!(crate::helpers::role_can_login(&mandant::tenant::inner::inner_role(&role)).await);
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{}/recipients", shop.inner_a),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.a1]);
}

#[tokio::test]
async fn a_database_provisioned_before_inner_clients_is_prepared_by_a_job_first() {
    let app = spawn_app().await;
    app.create_active_client("old").await;
    let list = ok_json(
        &app,
        Method::POST,
        "/v1/clients/old/mailing-lists",
        Some(json!({"name": "l"})),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let r = recipient(&app, "old", "Old@Example.org", Some(list)).await;
    // As a tenant provisioned before tenant migration V7 looks once migrated: no second role, the lower-case
    // e-mail not filled in, no indexes, not marked ready.
    let id = app.client_id("old").await;
    let role = app.state.targets().names(id).role;
    let db = app.tenant_db("old").await;
    db.batch_execute(
        "DROP INDEX recipients_mandant_email_lower; DROP INDEX recipients_mandant_inner;
         ALTER TABLE recipients DISABLE TRIGGER recipients_email_lower;
         UPDATE recipients SET mandant_email_lower = NULL;
         ALTER TABLE recipients ENABLE TRIGGER recipients_email_lower;",
    )
    .await
    .unwrap();
    crate::helpers::superuser("postgres")
        .await
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE \"{db}\" FROM \"{rls}\"; DROP ROLE \"{rls}\"",
            db = app.state.targets().names(id).database,
            rls = mandant::tenant::inner::inner_role(&role)
        ))
        .await
        .unwrap();
    app.control()
        .await
        .execute(
            "UPDATE clients SET inner_ready = false WHERE slug = 'old'",
            &[],
        )
        .await
        .unwrap();

    let body = json!({"slug": "old-a", "name": "A", "parent": "old", "kind": "inner", "scope": {"lists": [list]}});
    let (status, _, answer) = call(
        &app,
        Some(ADMIN_TOKEN),
        Method::POST,
        "/v1/clients",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "parent_not_ready");
    // The job runs (the app's workers), then the same request succeeds.
    let mut created = None;
    for _ in 0..200 {
        let (status, _, answer) = call(
            &app,
            Some(ADMIN_TOKEN),
            Method::POST,
            "/v1/clients",
            Some(body.clone()),
        )
        .await;
        if status == StatusCode::CREATED {
            created = Some(answer);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if created.is_none() {
        let jobs = app
            .control()
            .await
            .query("SELECT status || ' ' || coalesce(last_error, '') FROM jobs WHERE kind = 'prepare_inner'", &[])
            .await
            .unwrap();
        let jobs: Vec<String> = jobs.iter().map(|r| r.get(0)).collect();
        panic!("the parent did not become ready: {jobs:?}");
    }
    assert_eq!(
        app.tenant_i64(
            "old",
            "SELECT count(*) FROM recipients WHERE mandant_email_lower = 'old@example.org'"
        )
        .await,
        1
    );
    let page = ok_json(
        &app,
        Method::GET,
        "/v1/clients/old-a/recipients?email=old@example.org",
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![r]);
}

#[tokio::test]
async fn membership_triggers_fired_by_an_inner_client_see_every_binding_and_keep_the_siblings_membership()
 {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    // a1 is in both slices: on a-list and (through the parent) on b-list.
    ok_json(
        &app,
        Method::PUT,
        &format!(
            "/v1/clients/{}/mailing-lists/{}/recipients/{}",
            shop.parent, shop.list_b, shop.a1
        ),
        Some(json!({"status": "active"})),
    )
    .await;
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{}/recipients", shop.inner_b),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.a1, shop.b1]);
    // Inner client A binds a1 to a list of its own: the trigger recomputes a1's membership from every binding,
    // b-list's included, which A cannot see (a trigger running as A would drop B).
    let extra = ok_json(
        &app,
        Method::POST,
        &format!("/v1/clients/{}/mailing-lists", shop.inner_a),
        Some(json!({"name": "a-extra"})),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    ok_json(
        &app,
        Method::PUT,
        &format!(
            "/v1/clients/{}/mailing-lists/{extra}/recipients/{}",
            shop.inner_a, shop.a1
        ),
        Some(json!({"status": "active"})),
    )
    .await;
    let page = ok_json(
        &app,
        Method::GET,
        &format!("/v1/clients/{}/recipients", shop.inner_b),
        None,
    )
    .await;
    assert_eq!(ids(&page), vec![shop.a1, shop.b1], "B keeps a1");
    let (a, b) = (
        inner_no(&app, &shop.inner_a).await,
        inner_no(&app, &shop.inner_b).await,
    );
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            &format!(
                "SELECT count(*) FROM recipients WHERE id = {} AND mandant_inner = ARRAY[{a}, {b}]",
                shop.a1
            )
        )
        .await,
        1
    );
    // And the retention bookkeeping (V6) too: it looks at every binding of the recipient.
    assert_eq!(
        app.tenant_i64(
            &shop.parent,
            &format!(
                "SELECT count(*) FROM recipients WHERE id = {} AND mandant_unbound_since IS NULL",
                shop.a1
            )
        )
        .await,
        1
    );
}

#[tokio::test]
async fn the_overview_and_cross_client_counts_count_a_shared_database_once() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let group = ok_json(
        &app,
        Method::POST,
        "/v1/target-groups",
        Some(json!({"name": "Shoppers", "rule": {"field": "last_name", "op": "eq", "value": "Shopper"}})),
    )
    .await;
    let count = ok_json(
        &app,
        Method::GET,
        &format!("/v1/target-groups/{}/count", group["id"]),
        None,
    )
    .await;
    assert_eq!(count["total"], 3, "{count}");
    let counted: Vec<&str> = count["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["client"].as_str().unwrap())
        .collect();
    assert!(counted.contains(&shop.parent.as_str()), "{count}");
    assert!(
        !counted.contains(&shop.inner_a.as_str()) && !counted.contains(&shop.inner_b.as_str()),
        "{count}"
    );

    let overview = ok_json(&app, Method::GET, "/v1/overview", None).await;
    let rows = overview["items"].as_array().unwrap();
    let inner = rows
        .iter()
        .find(|r| r["slug"] == shop.inner_a.as_str())
        .expect("listed");
    assert_eq!(inner["kind"], "inner");
    assert_eq!(inner["parent"], shop.parent.as_str());
    assert!(
        inner["recipients"].is_null() && inner["database_bytes"].is_null(),
        "{inner}"
    );
    let children = ok_json(
        &app,
        Method::GET,
        &format!("/v1/overview?parent={}", shop.parent),
        None,
    )
    .await;
    let slugs: Vec<&str> = children["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, vec![shop.inner_a.as_str(), shop.inner_b.as_str()]);
}

#[tokio::test]
async fn an_inner_clients_route_resolved_before_its_parent_is_suspended_is_not_used_after_it() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let data = app.state.data();
    let parsed = mandant::domain::ClientSlug::parse(&shop.inner_a).expect("slug");
    let use_ = mandant::tenant::pool::Use::Request;

    // The access check resolved the inner client; then its parent is suspended before the handler connects.
    let resolved = data.resolve(&parsed).await.expect("resolve");
    assert!(resolved.client().is_inner());
    let suspended = app
        .post(&format!("/v1/clients/{}/suspend", shop.parent))
        .await;
    assert_eq!(suspended.status(), StatusCode::OK);
    let refused = data.connect_resolved(&resolved, use_, true).await;
    assert!(
        matches!(
            refused,
            Err(mandant::data::DataError::Control(
                mandant::control::ControlError::ParentNotActive(
                    mandant::domain::ClientStatus::Suspended
                )
            ))
        ),
        "{:?}",
        refused.map(|(c, _)| c.slug.clone())
    );
}

/// A recipient read by the admin through `client`: status and body.
async fn read_as_admin(app: &TestApp, client: &str, id: i64) -> (StatusCode, Value) {
    let (status, _, body) = call(
        app,
        Some(ADMIN_TOKEN),
        Method::GET,
        &format!("/v1/clients/{client}/recipients/{id}"),
        None,
    )
    .await;
    (status, body)
}

/// Backends of the tenants' second (`_rls`) roles on the shop's database.
async fn rls_backends(app: &TestApp) -> i64 {
    app.tenant_i64(
        "shop",
        "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE '%\\_rls' AND datname = current_database()",
    )
    .await
}

/// One physical `_rls` connection serves both inner clients, with every plan generic: the row-level security
/// policy reads the inner client's setting at each execution, so a plan made in one inner client's request never
/// shows another's recipients (from the review of the kept statements, session 20).
#[tokio::test]
async fn inner_clients_sharing_one_connection_and_generic_plans_never_see_each_others_recipients() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    let owner = app.tenant_db("shop").await;
    let db: String = owner
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    owner
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" SET plan_cache_mode = force_generic_plan"
        ))
        .await
        .unwrap();
    // A connection opened before the setting would not have it: none may exist yet.
    assert_eq!(rls_backends(&app).await, 0, "no inner connection yet");
    for _ in 0..8 {
        let (status, body) = read_as_admin(&app, &shop.inner_a, shop.a1).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for _ in 0..4 {
        let (status, body) = read_as_admin(&app, &shop.inner_b, shop.a1).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "the sibling's recipient: {body}"
        );
        let (status, body) = read_as_admin(&app, &shop.inner_a, shop.b1).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "the sibling's recipient: {body}"
        );
        let (status, body) = read_as_admin(&app, &shop.inner_b, shop.p1).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "the parent's own recipient: {body}"
        );
        let (status, body) = read_as_admin(&app, &shop.inner_b, shop.b1).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(
        rls_backends(&app).await,
        1,
        "one physical connection served both"
    );
}

/// An inner client's read runs inside its request's transaction; a field added meanwhile (on another connection,
/// as the reconciler adds one) must not turn its next read into an error (found in review: a kept statement's
/// refusal aborted the transaction and the rerun with it, a 500).
#[tokio::test]
async fn an_inner_clients_reads_right_after_a_field_was_added_are_answered() {
    let app = spawn_app().await;
    let shop = shop(&app).await;
    for _ in 0..3 {
        let (status, body) = read_as_admin(&app, &shop.inner_a, shop.a1).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    app.tenant_db("shop")
        .await
        .batch_execute("ALTER TABLE recipients ADD COLUMN probe_kept text DEFAULT 'x'")
        .await
        .unwrap();
    for _ in 0..2 {
        let (status, body) = read_as_admin(&app, &shop.inner_a, shop.a1).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// With every tenant capped at one connection, the parent's reads share its connection (pipelined); an inner
/// client's reads run in their own request transactions and never share one: under concurrent reads of both, each
/// sees exactly its own recipients (session 21's shared reads).
#[tokio::test]
async fn concurrent_reads_of_an_inner_client_and_its_parent_at_a_cap_of_one_each_see_exactly_their_own()
 {
    let app = crate::routing::app_with_cap(1).await;
    let shop = shop(&app).await;
    let app = &app;
    let mut parent_joins = 0;
    for _ in 0..10 {
        let cases = [
            (shop.inner_a.as_str(), shop.a1, StatusCode::OK),
            (shop.inner_a.as_str(), shop.b1, StatusCode::NOT_FOUND),
            (shop.inner_a.as_str(), shop.p1, StatusCode::NOT_FOUND),
            (shop.inner_b.as_str(), shop.b1, StatusCode::OK),
            (shop.inner_b.as_str(), shop.a1, StatusCode::NOT_FOUND),
            (shop.parent.as_str(), shop.a1, StatusCode::OK),
            (shop.parent.as_str(), shop.p1, StatusCode::OK),
        ];
        let reads =
            cases
                .iter()
                .cycle()
                .take(cases.len() * 4)
                .map(|&(client, id, expected)| async move {
                    let (status, body) = read_as_admin(app, client, id).await;
                    assert_eq!(status, expected, "{client} reading {id}: {body}");
                    if status == StatusCode::OK {
                        assert_eq!(body["id"], id, "{client}: {body}");
                    }
                });
        futures_util::future::join_all(reads).await;
        parent_joins = app.state.data().pools().stats().joined;
        if parent_joins > 0 {
            break;
        }
    }
    assert!(
        parent_joins > 0,
        "the parent's reads never shared a connection"
    );
}
