//! Operations endpoints and the behaviour every route shares: error shape, request ids, limits, metrics.

use reqwest::StatusCode;

use crate::helpers::{error_code, spawn_app};

#[tokio::test]
async fn healthz_returns_200_without_touching_the_database() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn readyz_returns_200_when_the_control_plane_answers() {
    let app = spawn_app().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
}

#[tokio::test]
async fn readyz_returns_503_with_retry_after_while_the_control_plane_is_down_and_recovers() {
    let app = spawn_app().await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);

    // Take the control database away: refuse new connections and end the pool's open ones.
    let admin = crate::helpers::superuser("postgres").await;
    let db = &app.control_db;
    admin
        .batch_execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[db],
        )
        .await
        .unwrap();

    let response = app.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "control_plane_unavailable");
    // Liveness does not depend on the database.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);

    admin
        .batch_execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_unknown_route_returns_a_404_json_error() {
    let app = spawn_app().await;
    let response = app.get("/v1/no-such-thing").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(error_code(response).await, "not_found");
}

#[tokio::test]
async fn a_wrong_method_returns_a_405_json_error_with_allow() {
    let app = spawn_app().await;
    let response = app.client.delete(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        response.headers()["allow"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    assert_eq!(error_code(response).await, "method_not_allowed");
}

#[tokio::test]
async fn an_oversized_body_returns_a_413_json_error() {
    let app = spawn_app().await;
    let limit = app.settings.server.body_limit_bytes;
    let response = app
        .client
        .post(app.url("/v1/clients"))
        .header("content-type", "application/json")
        .body(vec![b'x'; limit + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(response).await, "payload_too_large");
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_keeps_a_given_one() {
    let app = spawn_app().await;
    let generated = app.get("/healthz").await;
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a uuid: {id}");

    let given = app
        .client
        .get(app.url("/v1/nope"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let app = spawn_app().await;
    app.get("/healthz").await;
    app.get("/v1/unknown/route/123").await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/healthz",status="200"}"#),
        "{text}"
    );
    // Unmatched paths share one label value: raw paths never become labels.
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(!text.contains("/v1/unknown/route/123"), "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_needs_no_token() {
    let app = spawn_app().await;
    let response = app.get("/v1/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc: serde_json::Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/openapi.json",
        "/v1/clients",
        "/v1/clients/{slug}/recipients",
        "/v1/clients/{slug}/mailing-lists/{id}/recipients/{rid}",
        "/v1/operations/{id}",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from {doc}"
        );
    }
    // Pages are described with their items and cursor, and every schema reference resolves.
    let page = &doc["paths"]["/v1/clients/{slug}/recipients"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"]["$ref"];
    let name = page
        .as_str()
        .unwrap()
        .trim_start_matches("#/components/schemas/");
    let schema = &doc["components"]["schemas"][name];
    assert!(
        schema.to_string().contains("next_cursor"),
        "{name}: {schema}"
    );
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "dangling schema reference {name}"
        );
    }
    assert!(doc["components"]["schemas"].get("ErrorBody").is_some());
}

#[tokio::test]
async fn every_operation_has_a_unique_id_and_documents_the_statuses_the_middleware_answers() {
    let app = spawn_app().await;
    let doc: serde_json::Value = app.get("/v1/openapi.json").await.json().await.unwrap();
    let mut ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let name = format!("{} {path}", method.to_uppercase());
            let id = operation["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_owned()),
                "{name}: operationId {id:?} twice"
            );
            let responses = operation["responses"].as_object().unwrap();
            let public = operation["security"] == serde_json::json!([{}]);
            let has_input = operation.get("requestBody").is_some()
                || operation["parameters"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty());
            let mut expected = Vec::new();
            if !public {
                expected.push("401");
            }
            if has_input {
                expected.push("400");
            }
            if operation.get("requestBody").is_some() {
                expected.extend(["413", "415"]);
            }
            if path.starts_with("/v1/clients/{slug}/") {
                expected.extend(["409", "429", "503"]);
            }
            for status in expected {
                assert!(
                    responses.contains_key(status),
                    "{name} does not document {status}"
                );
            }
        }
    }
    assert!(ids.len() > 60, "{ids:?}");
}

#[tokio::test]
async fn shutdown_runs_in_order_and_closes_the_control_pool() {
    let app = spawn_app().await;
    let db = app.control_db.clone();
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    let admin = crate::helpers::superuser("postgres").await;
    app.shutdown().await.unwrap();
    // A closed connection's backend exits asynchronously: give it a moment.
    let mut open = i64::MAX;
    for _ in 0..100 {
        open = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name LIKE 'mandant%'",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(open, 0, "the control pool must be closed after shutdown");
}
