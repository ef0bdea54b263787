//! Property: any target-group rule tree either compiles to SQL that runs on a real tenant database (the group is
//! created, counted and listed) or is refused with a 4xx; never a 5xx. A bounded number of cases (64) keeps CI
//! fast; the compiler's own properties (bound parameters, no value in the SQL text) run as unit tests with many
//! more cases in `src/data/rules.rs`.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use reqwest::StatusCode;
use serde_json::{Value as Json, json};

use crate::helpers::{TestApp, spawn_app};

const CASES: u32 = 64;
const SLUG: &str = "rule-props";

const FIELDS: &[&str] = &[
    "email",
    "first_name",
    "gender",
    "id",
    "created_at",
    "updated_at",
    "city",
    "age",
    "score",
    "vip",
    "born",
    "seen_at",
    "nope",
    "\"city\"; DROP TABLE recipients; --",
];
const OPS: &[&str] = &[
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "contains",
    "starts_with",
    "in",
    "is_null",
    "not_null",
    "like",
];
const STATUSES: &[&str] = &[
    "active",
    "opt_out",
    "bounced",
    "blocked",
    "pending_confirmation",
    "gone",
];

fn value() -> impl Strategy<Value = Json> {
    let scalar = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Json::from),
        "[%_\\\\'\";-]{1,6}".prop_map(Json::from),
        "[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}".prop_map(Json::from),
        Just(Json::from("2026-11-23")),
        Just(Json::from("0000-01-01")),
        Just(Json::from("9999-12-31T23:59:59Z")),
        Just(Json::from("2026-11-23T10:00:00+02:00")),
        Just(Json::from("a\u{0}b")),
        Just(Json::from("Ber")),
        Just(Json::from("x@example.org")),
    ];
    prop_oneof![
        4 => scalar.clone(),
        1 => proptest::collection::vec(scalar, 0..4).prop_map(Json::from),
    ]
}

/// A condition whose value fits its field (most of them compile, so the "runs" half is exercised).
fn typed_condition() -> impl Strategy<Value = Json> {
    let ordered = proptest::sample::select(&["eq", "ne", "lt", "le", "gt", "ge"][..]);
    prop_oneof![
        (ordered.clone(), any::<i64>()).prop_map(|(op, v)| json!({"field": "age", "op": op, "value": v})),
        (ordered.clone(), -1e300f64..1e300).prop_map(|(op, v)| json!({"field": "score", "op": op, "value": v})),
        any::<bool>().prop_map(|v| json!({"field": "vip", "op": "eq", "value": v})),
        (ordered.clone(), 0i32..=9999, 1u32..=12, 1u32..=28).prop_map(|(op, y, m, d)| {
            json!({"field": "born", "op": op, "value": format!("{y:04}-{m:02}-{d:02}")})
        }),
        (ordered.clone(), 0i32..=9999, -14i32..=14).prop_map(|(op, y, tz)| {
            json!({"field": "seen_at", "op": op, "value": format!("{y:04}-06-30T12:00:00{tz:+03}:00")})
        }),
        (
            proptest::sample::select(&["eq", "ne", "lt", "contains", "starts_with"][..]),
            "[^\\p{Cc}]{1,40}"
        )
            .prop_map(|(op, v)| json!({"field": "city", "op": op, "value": v})),
        proptest::collection::vec(any::<i64>(), 1..20)
            .prop_map(|v| json!({"field": "age", "op": "in", "value": v})),
        proptest::collection::vec("[^\\p{Cc}]{1,10}", 1..5)
            .prop_map(|v| json!({"field": "first_name", "op": "in", "value": v})),
        (
            proptest::sample::select(FIELDS),
            proptest::sample::select(&["is_null", "not_null"][..])
        )
            .prop_map(|(field, op)| json!({"field": field, "op": op})),
    ]
}

fn rule(list: i64) -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        12 => typed_condition(),
        2 => (
            proptest::sample::select(FIELDS),
            proptest::sample::select(OPS),
            proptest::option::of(value())
        )
            .prop_map(|(field, op, value)| {
                let mut node = json!({"field": field, "op": op});
                if let Some(value) = value {
                    node["value"] = value;
                }
                node
            }),
        1 => (
            prop_oneof![Just(list), any::<i64>()],
            proptest::option::of(proptest::sample::select(STATUSES))
        )
            .prop_map(|(list, status)| json!({"list": list, "status": status})),
        1 => value(),
    ];
    leaf.prop_recursive(5, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|v| json!({"all": v})),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|v| json!({"any": v})),
            inner.prop_map(|v| json!({"not": v})),
        ]
    })
}

async fn expect_success(app: &TestApp, path: &str, body: Json) -> Json {
    let response = app.post_json(path, &body).await;
    let status = response.status();
    let body: Json = response.json().await.unwrap_or(Json::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// A tenant with a custom field of every type, a mailing list and a few recipients; returns the list's id.
async fn tenant(app: &TestApp) -> i64 {
    app.create_active_client(SLUG).await;
    let fields = format!("/v1/clients/{SLUG}/fields");
    for (name, ty) in [
        ("city", "text"),
        ("age", "integer"),
        ("score", "number"),
        ("vip", "boolean"),
        ("born", "date"),
        ("seen_at", "timestamp"),
    ] {
        expect_success(app, &fields, json!({"name": name, "type": ty})).await;
    }
    let list = expect_success(
        app,
        &format!("/v1/clients/{SLUG}/mailing-lists"),
        json!({"name": "news"}),
    )
    .await["id"]
        .as_i64()
        .expect("list id");
    let recipients = format!("/v1/clients/{SLUG}/recipients");
    for body in [
        json!({"email": "a@example.org", "city": "Berlin", "age": 30, "score": 1.5, "vip": true,
               "born": "1990-01-02", "seen_at": "2026-01-01T00:00:00Z"}),
        json!({"email": "b@example.org", "first_name": "Bea"}),
        json!({"email": "c@example.org", "city": "50%_off", "age": -1}),
    ] {
        let id = expect_success(app, &recipients, body).await["id"]
            .as_i64()
            .expect("recipient id");
        let bound = app
            .send(
                reqwest::Method::PUT,
                &format!("/v1/clients/{SLUG}/mailing-lists/{list}/recipients/{id}"),
                Some(&json!({"status": "active"})),
            )
            .await;
        assert!(bound.status().is_success());
    }
    list
}

#[tokio::test]
async fn any_rule_tree_runs_on_a_real_tenant_or_is_refused_with_a_4xx() {
    let app = spawn_app().await;
    let list = tenant(&app).await;
    let groups = format!("/v1/clients/{SLUG}/target-groups");
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    let strategy = rule(list);
    // Regression cases (found by the unit properties) first, then random trees.
    let mut rules = vec![
        json!({"field": "city", "op": "contains", "value": "a\u{0}b"}),
        json!({"field": "born", "op": "eq", "value": "-5000-01-01"}),
        json!({"field": "born", "op": "in", "value": ["+20000-01-01"]}),
        json!({"field": "city", "op": "starts_with", "value": "50%_"}),
    ];
    for _ in 0..CASES {
        rules.push(
            strategy
                .new_tree(&mut runner)
                .expect("a generated rule")
                .current(),
        );
    }
    let (mut compiled, mut refused) = (0, 0);
    for (i, rule) in rules.into_iter().enumerate() {
        let created = app
            .post_json(&groups, &json!({"name": format!("g{i}"), "rule": rule}))
            .await;
        let status = created.status();
        let body: Json = created.json().await.unwrap_or(Json::Null);
        if status == StatusCode::CREATED {
            compiled += 1;
            let id = body["id"].as_i64().expect("group id");
            for path in [
                format!("{groups}/{id}/count"),
                format!("{groups}/{id}/recipients?limit=5"),
            ] {
                let response = app.get(&path).await;
                let status = response.status();
                let body: Json = response.json().await.unwrap_or(Json::Null);
                assert_eq!(status, StatusCode::OK, "{path} for rule {rule}: {body}");
            }
        } else {
            refused += 1;
            assert!(
                status.is_client_error(),
                "rule {rule} answered {status}: {body}"
            );
            assert!(body["error"]["code"].is_string(), "{body}");
        }
    }
    eprintln!("{compiled} rules compiled and ran, {refused} refused");
    // Both outcomes occur, so the property is not vacuous.
    assert!(
        compiled > 0 && refused > 0,
        "{compiled} compiled, {refused} refused"
    );
}
