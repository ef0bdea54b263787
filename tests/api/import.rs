//! `POST /v1/clients/{slug}/recipients/import`: CSV and NDJSON streamed through COPY, upsert by e-mail, all or
//! nothing, size limits; a cancelled import leaves no transaction behind.

use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::tokio_postgres::SimpleQueryMessage;
use futures_util::StreamExt;
use mandant::data::import::{self, Format};
use mandant::data::schema::Schema;
use mandant::tenant::pool::{PoolSettings, TenantPools};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, spawn_app, spawn_app_with};

const IMPORT: &str = "/v1/clients/importer/recipients/import";

fn csv(rows: std::ops::Range<usize>, first_name: &str) -> String {
    let mut body = String::from("email,first_name,gender\n");
    for i in rows {
        body.push_str(&format!("user{i}@example.org,{first_name} {i},\n"));
    }
    body
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.tenant_db("importer")
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn ten_thousand_csv_rows_are_imported_and_a_re_import_updates_instead_of_duplicating() {
    let app = spawn_app().await;
    app.create_active_client("importer").await;

    let first = app
        .post_body(IMPORT, "text/csv", csv(0..10_000, "Anna"))
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let outcome: Value = first.json().await.unwrap();
    assert_eq!(
        outcome,
        json!({"records": 10000, "inserted": 10000, "updated": 0})
    );
    assert_eq!(count(&app, "SELECT count(*) FROM recipients").await, 10_000);

    // The same addresses in another case, 100 new ones, new names: updates, not duplicates.
    let again = csv(0..10_100, "Berta").replace("user", "USER");
    let second: Value = app
        .post_body(IMPORT, "text/csv", again)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        second,
        json!({"records": 10100, "inserted": 100, "updated": 10000})
    );
    assert_eq!(count(&app, "SELECT count(*) FROM recipients").await, 10_100);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM recipients WHERE first_name LIKE 'Berta %'"
        )
        .await,
        10_100
    );
    // The stored spelling of an existing address is kept; a new one is stored as given.
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM recipients WHERE email = 'user5@example.org'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM recipients WHERE email = 'USER10050@example.org'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_bad_line_rejects_the_whole_import_and_names_the_line() {
    let app = spawn_app().await;
    app.create_active_client("importer").await;
    app.post_body(
        IMPORT,
        "text/csv",
        "email,first_name\nkeep@example.org,Kept\n",
    )
    .await;

    let mut body = csv(0..500, "New");
    body = body.replace("user299@example.org", "user299-at-example.org");
    body.push_str("keep@example.org,Overwritten,\n");
    let refused = app.post_body(IMPORT, "text/csv", body).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_import");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("line 301: email:"), "{message}");

    assert_eq!(count(&app, "SELECT count(*) FROM recipients").await, 1);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM recipients WHERE first_name = 'Kept'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn ndjson_keeps_values_it_does_not_mention_and_the_last_duplicate_wins() {
    let app = spawn_app().await;
    app.create_active_client("importer").await;
    let existing = app
        .post_json(
            "/v1/clients/importer/recipients",
            &json!({"email": "anna@example.org", "first_name": "Anna", "last_name": "Alt"}),
        )
        .await;
    assert_eq!(existing.status(), StatusCode::CREATED);

    let body = concat!(
        "{\"email\": \"ANNA@example.org\", \"last_name\": \"Neu\"}\n",
        "\n",
        "{\"email\": \"bert@example.org\", \"first_name\": \"B1\"}\n",
        "{\"email\": \"bert@example.org\", \"first_name\": \"B2\", \"gender\": null}",
    );
    let outcome: Value = app
        .post_body(IMPORT, "application/x-ndjson", body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(outcome, json!({"records": 3, "inserted": 1, "updated": 1}));
    let db = app.tenant_db("importer").await;
    let anna = db
        .query_one(
            "SELECT email, first_name, last_name FROM recipients WHERE lower(email) = 'anna@example.org'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(anna.get::<_, &str>(0), "anna@example.org");
    assert_eq!(anna.get::<_, &str>(1), "Anna", "not mentioned: kept");
    assert_eq!(anna.get::<_, &str>(2), "Neu");
    let bert: String = db
        .query_one(
            "SELECT first_name FROM recipients WHERE email = 'bert@example.org'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bert, "B2");
}

#[tokio::test]
async fn malformed_imports_are_refused_with_clear_errors_and_write_nothing() {
    let app = spawn_app_with(&[("MANDANT__SERVER__IMPORT_LIMIT_BYTES", "2048".into())]).await;
    app.create_active_client("importer").await;
    let cases: [(&str, &str, String, StatusCode, &str, &str); 8] = [
        (
            "text/plain",
            "",
            "email\na@b.org\n".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "",
        ),
        (
            "text/csv",
            "",
            "email,cty\na@b.org,x\n".into(),
            StatusCode::BAD_REQUEST,
            "invalid_import",
            "line 1: unknown field \"cty\"",
        ),
        (
            "text/csv",
            "",
            "first_name\nAnna\n".into(),
            StatusCode::BAD_REQUEST,
            "invalid_import",
            "no email column",
        ),
        (
            "text/csv",
            "",
            "email,email\na@b.org,a@b.org\n".into(),
            StatusCode::BAD_REQUEST,
            "invalid_import",
            "appears twice",
        ),
        (
            "text/csv",
            "",
            "email,id\na@b.org,1\n".into(),
            StatusCode::BAD_REQUEST,
            "invalid_import",
            "maintained by the database",
        ),
        (
            "text/csv",
            "",
            "email,first_name\na@b.org\n".into(),
            StatusCode::BAD_REQUEST,
            "invalid_import",
            "line 2: expected 2 columns",
        ),
        (
            "text/csv",
            "?delimiter=x",
            "email\na@b.org\n".into(),
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "",
        ),
        (
            "text/csv",
            "",
            csv(0..100, "Big"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "",
        ),
    ];
    for (content_type, query, body, status, code, needle) in cases {
        let response = app
            .post_body(&format!("{IMPORT}{query}"), content_type, body)
            .await;
        assert_eq!(response.status(), status, "{code}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code);
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }

    // Without a Content-Length, the limit is enforced while streaming.
    let mut chunks = vec![Ok::<_, std::io::Error>(Bytes::from_static(b"email\n"))];
    chunks.extend((0..100).map(|i| Ok(Bytes::from(format!("streamed{i}@example.org\n")))));
    let streamed = app
        .post_body(
            IMPORT,
            "text/csv",
            reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
        )
        .await;
    assert_eq!(streamed.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let unknown = app
        .post_body(
            "/v1/clients/nobody/recipients/import",
            "text/csv",
            "email\na@b.org\n",
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(unknown).await, "not_found");
    assert_eq!(count(&app, "SELECT count(*) FROM recipients").await, 0);
}

#[tokio::test]
async fn a_cancelled_import_returns_its_connection_outside_any_transaction() {
    let app = spawn_app().await;
    app.create_active_client("importer").await;
    let route = app.route("importer").await;
    // One connection per tenant, so the next acquire gets the very connection the cancelled import used.
    let router = TenantPools::new(PoolSettings {
        per_tenant_cap: 1,
        ..PoolSettings::default()
    });

    let mut conn = router.acquire(&route).await.unwrap();
    let pid: i32 = conn
        .client()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let schema = Schema::load(conn.client()).await.unwrap();
    // A body that delivers some rows, then never ends: the request is dropped mid-COPY.
    let rows = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(csv(
        0..1000,
        "Gone",
    )))])
    .chain(futures_util::stream::pending());
    let csv_format = Format::Csv { delimiter: b',' };
    let import = import::run(
        conn.client_mut(),
        &schema,
        csv_format,
        rows,
        1 << 20,
        &import::Landing::Nowhere,
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), import)
            .await
            .is_err()
    );
    drop(conn);

    let conn = router.acquire(&route).await.unwrap();
    let rows = conn
        .client()
        .simple_query("SELECT pg_backend_pid(), now() = statement_timestamp()")
        .await
        .unwrap();
    let Some(row) = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    }) else {
        panic!("no result row");
    };
    assert_eq!(
        row.get(0),
        Some(pid.to_string().as_str()),
        "the same connection"
    );
    assert_eq!(
        row.get(1),
        Some("t"),
        "a fresh transaction, not the cancelled one"
    );
    let state: Option<String> = app
        .tenant_db("importer")
        .await
        .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state.as_deref(), Some("idle"));
    assert_eq!(count(&app, "SELECT count(*) FROM recipients").await, 0);
}

#[tokio::test]
async fn an_address_added_concurrently_during_a_first_import_is_updated_not_refused() {
    let app = spawn_app().await;
    app.create_active_client("importer").await;
    // Another writer adds one of the addresses and has not committed yet when the import checks for known ones.
    let other = app.tenant_db("importer").await;
    other.batch_execute("BEGIN").await.unwrap();
    other
        .execute(
            "INSERT INTO recipients (email, first_name) VALUES ('user5@example.org', 'Other')",
            &[],
        )
        .await
        .unwrap();
    let import = {
        let (client, url) = (app.client.clone(), app.url(IMPORT));
        tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "text/csv")
                .body(csv(0..100, "Import"))
                .send()
                .await
                .unwrap()
        })
    };
    // The import's INSERT waits on the other writer's uncommitted row; then the other writer commits.
    let admin = app.tenant_db("importer").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO recipients%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the import never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    other.batch_execute("COMMIT").await.unwrap();
    let response = import.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(
        outcome,
        json!({"records": 100, "inserted": 99, "updated": 1})
    );
    assert_eq!(count(&app, "SELECT count(*) FROM recipients").await, 100);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM recipients WHERE first_name = 'Import 5'"
        )
        .await,
        1
    );
}
