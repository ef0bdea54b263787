//! `cargo bench --bench inner`: what row-level security costs an inner client (issue #19). One client database with
//! `BENCH_RECIPIENTS` (1,000,000) recipients on 10 mailing lists and 10 inner clients, one list each (so each sees
//! a tenth). Four queries, each the SQL the API runs (the rule compiler's predicates, `recipients r`):
//!
//! - `page`: the first page of 50 recipients by id (`GET .../recipients`);
//! - `lookup`: one recipient by e-mail address (`?email=`);
//! - `prefix`: recipients whose address starts with a prefix (a `starts_with` rule), first 50;
//! - `count`: a target-group count (`last_name = 'L7'`, a tenth of everyone).
//!
//! Each is timed through an inner client (its parent's database as the second role, inside the request's
//! transaction that names the inner client: BEGIN + `set_config` + query + COMMIT, as every inner request pays)
//! and, in the same run, interleaved, on the parent's connection with the equivalent hand-written `WHERE`
//! (`r.mandant_inner @> ARRAY[n]`, the very slice, no row-level security in the way). Both go through the routing
//! pool (a warm checkout each). `BENCH_ITERATIONS` (300) per query and side; medians and p90 in ms. Target: every
//! inner-client query at least 0.8 of the hand-written one (parent median / inner median ≥ 0.8). A third column
//! shows the same queries on the parent without any slice (what the parent's administrators pay). Prints a table
//! and writes benches/results/inner.json.

mod common;

use std::time::{Duration, Instant};

use deadpool_postgres::tokio_postgres::types::ToSql;
use mandant::data::rules;
use mandant::data::schema::Schema;
use mandant::domain::ClientSlug;
use mandant::server::RunOptions;
use mandant::tenant::pool::Use;
use serde_json::json;

const INNER: usize = 10;

struct Query {
    name: &'static str,
    /// The predicate (rule compiler output) and its parameters.
    predicate: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
    /// `SELECT ... FROM recipients r WHERE {predicate} {tail}`
    select: &'static str,
    tail: &'static str,
}

impl Query {
    fn sql(&self, slice: Option<i32>) -> String {
        let slice = slice.map_or(String::new(), |n| {
            format!(" AND r.mandant_inner @> ARRAY[{n}::int]")
        });
        format!(
            "SELECT {} FROM recipients r WHERE ({}){slice} {}",
            self.select, self.predicate, self.tail
        )
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

fn compiled(
    rule: serde_json::Value,
    schema: &Schema,
) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let c = rules::compile(&rule, schema).expect("rule");
    (
        c.sql,
        c.params.into_iter().map(|(value, _)| value).collect(),
    )
}

#[tokio::main]
async fn main() {
    let recipients = common::env_usize("BENCH_RECIPIENTS", 1_000_000) as i64;
    let iterations = common::env_usize("BENCH_ITERATIONS", 300);
    let cluster = common::cluster("bench-inner");
    let settings = common::settings(
        &cluster,
        "bench_ctl",
        &[
            ("MANDANT__WORKERS__STATS_INTERVAL_SECS", "0"),
            ("MANDANT__WORKERS__INNER_SCOPE_INTERVAL_SECS", "0"),
        ],
    );
    let app = common::start_app(settings, RunOptions::default()).await;
    let http = common::http();

    // Setup (untimed): the parent, 10 lists, 10 inner clients (one list each), then the recipients and their
    // bindings in bulk (the triggers carry the lists' memberships on to the rows, as for an import).
    let setup = Instant::now();
    common::create_clients(&app, &http, &["big".to_owned()]).await;
    let mut lists = Vec::new();
    for i in 0..INNER {
        let list: serde_json::Value = http
            .post(format!("{}/v1/clients/big/mailing-lists", app.base))
            .json(&json!({"name": format!("list-{i}")}))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("list body");
        lists.push(list["id"].as_i64().expect("list id"));
    }
    for (i, list) in lists.iter().enumerate() {
        let response = http
            .post(format!("{}/v1/clients", app.base))
            .json(
                &json!({"slug": format!("big-{i}"), "name": format!("Unit {i}"), "parent": "big",
                          "kind": "inner", "scope": {"lists": [list]}}),
            )
            .send()
            .await
            .expect("inner client");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    }
    let control = app.state.control();
    let parent = control
        .client_by_slug(&ClientSlug::parse("big").expect("slug"))
        .await
        .expect("parent");
    let db_name = parent.db_name.clone().expect("database");
    let db = common::superuser(&cluster, &db_name).await;
    db.batch_execute(&format!(
        "INSERT INTO recipients (email, first_name, last_name)
         SELECT 'u' || g || '@example.org', 'F' || (g % 1000), 'L' || (g % 100)
         FROM generate_series(1, {recipients}) g;
         INSERT INTO bindings (mailing_list_id, recipient_id, status)
         SELECT l.ids[(r.id % {INNER}) + 1], r.id, 'active'
         FROM recipients r, (SELECT array_agg(id ORDER BY id) AS ids FROM mailing_lists) l;"
    ))
    .await
    .expect("recipients");
    for table in ["recipients", "bindings", "mailing_lists"] {
        db.batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .expect("vacuum");
    }
    let per_slice: i64 = db
        .query_one(
            "SELECT count(*) FROM recipients WHERE mandant_inner @> ARRAY[3]",
            &[],
        )
        .await
        .expect("slice")
        .get(0);
    let setup_secs = setup.elapsed().as_secs_f64();
    println!(
        "setup: {recipients} recipients, {INNER} inner clients of {per_slice} recipients each, {setup_secs:.0} s ({})",
        common::fsync_label()
    );

    // Inner client big-2 has number 3 (numbers start at 1 in creation order).
    let inner = ClientSlug::parse("big-2").expect("slug");
    let inner_no = control
        .client_by_slug(&inner)
        .await
        .expect("inner")
        .inner_no
        .expect("number");
    let parent_slug = ClientSlug::parse("big").expect("slug");
    let data = app.state.data();
    let schema = {
        let (_, conn) = data.connect(&parent_slug).await.expect("parent");
        Schema::load(conn.client()).await.expect("schema")
    };
    assert!(
        schema.email_lower,
        "the lower-case e-mail index is in place"
    );
    // An address and a prefix inside the slice: recipient ids ≡ inner_no - 1 (mod 10) are on the slice's list.
    let member = 10 * 4_321 + i64::from(inner_no) - 1;
    let queries = {
        let (page, page_params) = (rules::always().sql, Vec::new());
        let (lookup, lookup_params) = compiled(
            json!({"field": "email", "op": "eq", "value": format!("u{member}@example.org")}),
            &schema,
        );
        let (prefix, prefix_params) = compiled(
            json!({"field": "email", "op": "starts_with", "value": "u1234"}),
            &schema,
        );
        let (count, count_params) = compiled(
            json!({"field": "last_name", "op": "eq", "value": "L7"}),
            &schema,
        );
        vec![
            Query {
                name: "page",
                predicate: page,
                params: page_params,
                select: "r.*",
                tail: "ORDER BY r.id LIMIT 50",
            },
            Query {
                name: "lookup",
                predicate: lookup,
                params: lookup_params,
                select: "r.*",
                tail: "",
            },
            Query {
                name: "prefix",
                predicate: prefix,
                params: prefix_params,
                select: "r.*",
                tail: "ORDER BY r.id LIMIT 50",
            },
            Query {
                name: "count",
                predicate: count,
                params: count_params,
                select: "count(*)",
                tail: "",
            },
        ]
    };

    let mut rows = Vec::new();
    for query in &queries {
        // Same answers first.
        let (_, mut scoped) = data
            .connect_with(&inner, Use::Request, true)
            .await
            .expect("inner");
        let through_inner = scoped
            .client()
            .query(&query.sql(None), &query.refs())
            .await
            .expect("inner query")
            .len();
        scoped.end_scoped(true).await.expect("commit");
        drop(scoped);
        let (_, conn) = data.connect(&parent_slug).await.expect("parent");
        let by_hand = conn
            .client()
            .query(&query.sql(Some(inner_no)), &query.refs())
            .await
            .expect("parent query")
            .len();
        drop(conn);
        assert_eq!(through_inner, by_hand, "{}: same rows", query.name);

        let mut inner_times = Vec::with_capacity(iterations);
        let mut hand_times = Vec::with_capacity(iterations);
        let mut parent_times = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            let (_, mut scoped) = data
                .connect_with(&inner, Use::Request, true)
                .await
                .expect("inner");
            scoped
                .client()
                .query(&query.sql(None), &query.refs())
                .await
                .expect("inner query");
            scoped.end_scoped(true).await.expect("commit");
            drop(scoped);
            inner_times.push(started.elapsed());

            let started = Instant::now();
            let (_, conn) = data.connect(&parent_slug).await.expect("parent");
            conn.client()
                .query(&query.sql(Some(inner_no)), &query.refs())
                .await
                .expect("parent query");
            drop(conn);
            hand_times.push(started.elapsed());

            let started = Instant::now();
            let (_, conn) = data.connect(&parent_slug).await.expect("parent");
            conn.client()
                .query(&query.sql(None), &query.refs())
                .await
                .expect("parent query");
            drop(conn);
            parent_times.push(started.elapsed());
        }
        for times in [&mut inner_times, &mut hand_times, &mut parent_times] {
            times.sort();
        }
        let median = |t: &[Duration]| common::ms(common::percentile(t, 50.0));
        let p90 = |t: &[Duration]| common::ms(common::percentile(t, 90.0));
        let ratio = median(&hand_times) / median(&inner_times);
        rows.push(json!({
            "query": query.name,
            "rows": through_inner,
            "inner_ms": {"median": median(&inner_times), "p90": p90(&inner_times)},
            "hand_written_ms": {"median": median(&hand_times), "p90": p90(&hand_times)},
            "parent_all_ms": {"median": median(&parent_times), "p90": p90(&parent_times)},
            "ratio": ratio,
            "target_met": ratio >= 0.8,
        }));
    }

    println!(
        "\n{:<8} {:>6} {:>18} {:>22} {:>18} {:>8}",
        "query", "rows", "inner ms (p50/p90)", "hand-written (p50/p90)", "parent all", "ratio"
    );
    for row in &rows {
        println!(
            "{:<8} {:>6} {:>9.3} / {:>6.3} {:>13.3} / {:>6.3} {:>9.3} / {:>6.3} {:>8.2}{}",
            row["query"].as_str().unwrap_or_default(),
            row["rows"],
            row["inner_ms"]["median"].as_f64().unwrap_or_default(),
            row["inner_ms"]["p90"].as_f64().unwrap_or_default(),
            row["hand_written_ms"]["median"]
                .as_f64()
                .unwrap_or_default(),
            row["hand_written_ms"]["p90"].as_f64().unwrap_or_default(),
            row["parent_all_ms"]["median"].as_f64().unwrap_or_default(),
            row["parent_all_ms"]["p90"].as_f64().unwrap_or_default(),
            row["ratio"].as_f64().unwrap_or_default(),
            if row["target_met"].as_bool().unwrap_or(false) {
                ""
            } else {
                "  (< 0.8)"
            },
        );
    }
    common::write_report(
        "inner",
        &json!({
            "recipients": recipients,
            "inner_clients": INNER,
            "slice": per_slice,
            "iterations": iterations,
            "fsync": common::fsync_label(),
            "setup_secs": setup_secs,
            "queries": rows,
        }),
    );
    app.stop().await;
}
