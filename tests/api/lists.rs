//! `/v1/clients/{slug}/mailing-lists`: lists, bindings with their five statuses, members by status.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{error_code, spawn_app};

#[tokio::test]
async fn recipients_are_bound_to_lists_with_a_status_and_listed_by_it() {
    let app = spawn_app().await;
    app.create_active_client("mailer").await;
    let created = app
        .post_json(
            "/v1/clients/mailer/mailing-lists",
            &json!({"name": "Newsletter", "description": "Weekly"}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let list: serde_json::Value = created.json().await.unwrap();
    let list_path = format!("/v1/clients/mailer/mailing-lists/{}", list["id"]);
    let duplicate = app
        .post_json(
            "/v1/clients/mailer/mailing-lists",
            &json!({"name": "newsletter"}),
        )
        .await;
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(duplicate).await, "list_name_taken");

    let mut ids = Vec::new();
    for email in ["a@x.org", "b@x.org", "c@x.org"] {
        let r: serde_json::Value = app
            .post_json("/v1/clients/mailer/recipients", &json!({"email": email}))
            .await
            .json()
            .await
            .unwrap();
        ids.push(r["id"].as_i64().unwrap());
    }
    for (id, status) in ids.iter().zip(["active", "opt_out", "active"]) {
        let bound = app
            .send(
                reqwest::Method::PUT,
                &format!("{list_path}/recipients/{id}"),
                Some(&json!({"status": status})),
            )
            .await;
        assert_eq!(bound.status(), StatusCode::OK);
        let binding: serde_json::Value = bound.json().await.unwrap();
        assert_eq!(binding["status"], status);
    }
    // Changing a status is the same call.
    let changed: serde_json::Value = app
        .send(
            reqwest::Method::PUT,
            &format!("{list_path}/recipients/{}", ids[2]),
            Some(&json!({"status": "bounced"})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(changed["status"], "bounced");

    let active: serde_json::Value = app
        .get(&format!("{list_path}/recipients?status=active"))
        .await
        .json()
        .await
        .unwrap();
    let emails: Vec<&str> = active["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["a@x.org"]);
    let all: serde_json::Value = app
        .get(&format!("{list_path}/recipients?limit=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    assert!(all["next_cursor"].is_string());

    for (path, body) in [
        (
            format!("{list_path}/recipients/{}", ids[0]),
            json!({"status": "maybe"}),
        ),
        (format!("{list_path}/recipients/{}", ids[0]), json!({})),
    ] {
        let response = app.send(reqwest::Method::PUT, &path, Some(&body)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    let unknown_recipient = app
        .send(
            reqwest::Method::PUT,
            &format!("{list_path}/recipients/999999"),
            Some(&json!({"status": "active"})),
        )
        .await;
    assert_eq!(unknown_recipient.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&format!("{list_path}/recipients?status=gone"))
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );

    let lists: serde_json::Value = app
        .get("/v1/clients/mailer/mailing-lists")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(lists["items"][0]["name"], "Newsletter");
    assert_eq!(
        app.delete(&list_path).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get(&list_path).await.status(), StatusCode::NOT_FOUND);
    // Deleted already: no row affected is a 404, not a second success.
    let again = app.delete(&list_path).await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(again).await, "not_found");
    assert_eq!(
        app.get(&format!("{list_path}/recipients")).await.status(),
        StatusCode::NOT_FOUND
    );
    // The recipients stay.
    let recipients: serde_json::Value = app
        .get("/v1/clients/mailer/recipients")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(recipients["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn bad_list_input_is_refused() {
    let app = spawn_app().await;
    app.create_active_client("lists-bad").await;
    for body in [
        json!({"name": ""}),
        json!({"name": "x".repeat(201)}),
        json!({"name": "ok", "colour": "red"}),
        json!({}),
    ] {
        let response = app
            .post_json("/v1/clients/lists-bad/mailing-lists", &body)
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(
        app.get("/v1/clients/lists-bad/mailing-lists/0")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}
