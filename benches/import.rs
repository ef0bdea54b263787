//! `cargo bench --bench import`: `BENCH_ROWS` (100,000) recipients imported through the HTTP API
//! (`POST /v1/clients/{slug}/recipients/import`, CSV) beside a raw `COPY recipients (...) FROM STDIN` of the same
//! rows into the same, identically indexed table of another fresh tenant database, in the same run on the same
//! cluster. Target: the API imports at least half the raw COPY rate.
//!
//! Each of `BENCH_ROUNDS` (3) rounds uses fresh clients (empty `recipients` tables, cloned from the template):
//!   api insert:  the API import into an empty table (every row an insert), send → response;
//!   raw COPY:    one tokio-postgres connection, `COPY` of the same rows into an empty table (the baseline);
//!   api update:  the same import again into the API client's table (every row an update; secondary);
//!   by hand:     the general path run directly (temporary staging table, `COPY` into it, the single
//!                `ON CONFLICT` upsert), each step timed, into a third empty table and then again (updates):
//!                where the time goes. (A first import of only new addresses takes the plain-INSERT fast path
//!                instead, which is why the API insert beats the by-hand insert.)
//! The order of the first two alternates per round and every timed phase starts after a CHECKPOINT, because the
//! disk latency of this machine drifts. Medians over the rounds are reported, and every round.
//! Prints a table and writes benches/results/import.json.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::tokio_postgres::{Client, CopyInSink};
use futures_util::{SinkExt, pin_mut};
use mandant::server::RunOptions;

const COLUMNS: &str = "email, first_name, last_name, gender";
const FIRST: [&str; 8] = [
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hans",
];
const LAST: [&str; 8] = [
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
];
const GENDER: [&str; 3] = ["female", "male", "diverse"];

/// One round's timings (seconds).
#[derive(Debug, Default, Clone)]
struct Round {
    api_insert: f64,
    raw_copy: f64,
    api_update: f64,
    hand_insert: HandRun,
    hand_update: HandRun,
}

/// The API's SQL by hand, step by step (seconds).
#[derive(Debug, Default, Clone, Copy)]
struct HandRun {
    staging_copy: f64,
    upsert: f64,
    commit: f64,
    total: f64,
}

impl HandRun {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"staging_copy_s": self.staging_copy, "upsert_s": self.upsert,
                           "commit_s": self.commit, "total_s": self.total})
    }
}

#[tokio::main]
async fn main() {
    let rows = common::env_usize("BENCH_ROWS", 100_000).max(1);
    let rounds = common::env_usize("BENCH_ROUNDS", 3).max(1);
    let cluster = common::cluster("bench-import");
    let admin = common::superuser(&cluster, "postgres").await;
    let settings = common::settings(&cluster, "bench_ctl", &[]);
    let app = common::start_app(settings, RunOptions::default()).await;
    let http = common::http();

    // Setup (untimed): three fresh clients per round, and the rows in both formats.
    let setup = Instant::now();
    for round in 0..rounds {
        for kind in ["api", "raw", "sql"] {
            let slug = format!("{kind}-{round}");
            let status = http
                .post(format!("{}/v1/clients", app.base))
                .json(&serde_json::json!({"slug": slug, "name": slug}))
                .send()
                .await
                .expect("POST client")
                .status();
            assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{slug}");
        }
    }
    common::wait_active(&app, 1 + 3 * rounds).await;
    let (csv, copy) = generate(rows);
    eprintln!(
        "setup: {} clients, {rows} rows ({:.1} MB CSV) in {:.1} s",
        3 * rounds,
        csv.len() as f64 / 1e6,
        setup.elapsed().as_secs_f64()
    );

    let mut results = Vec::new();
    for round in 0..rounds {
        let api_slug = format!("api-{round}");
        let raw_db = database(&app, &http, &format!("raw-{round}")).await;
        let sql_db = database(&app, &http, &format!("sql-{round}")).await;
        let mut r = Round::default();

        let phases = if round % 2 == 0 {
            ["api", "raw"]
        } else {
            ["raw", "api"]
        };
        for phase in phases {
            checkpoint(&admin).await;
            if phase == "api" {
                let (took, outcome) = api_import(&app, &http, &api_slug, &csv).await;
                assert_eq!(
                    (outcome.0, outcome.1, outcome.2),
                    (rows as u64, rows as u64, 0),
                    "api insert: records, inserted, updated"
                );
                r.api_insert = took;
            } else {
                let db = common::superuser(&cluster, &raw_db).await;
                let started = Instant::now();
                let copied = raw_copy(&db, &copy).await;
                r.raw_copy = started.elapsed().as_secs_f64();
                assert_eq!(copied, rows as u64, "raw COPY rows");
            }
        }

        checkpoint(&admin).await;
        let (took, outcome) = api_import(&app, &http, &api_slug, &csv).await;
        assert_eq!(
            (outcome.0, outcome.1, outcome.2),
            (rows as u64, 0, rows as u64),
            "api update: records, inserted, updated"
        );
        r.api_update = took;

        let mut db = common::superuser(&cluster, &sql_db).await;
        checkpoint(&admin).await;
        r.hand_insert = by_hand(&mut db, &copy, rows, true).await;
        checkpoint(&admin).await;
        r.hand_update = by_hand(&mut db, &copy, rows, false).await;

        eprintln!(
            "round {}: api insert {:.3} s, raw COPY {:.3} s, api update {:.3} s, by hand {:.3} / {:.3} s",
            round + 1,
            r.api_insert,
            r.raw_copy,
            r.api_update,
            r.hand_insert.total,
            r.hand_update.total
        );
        results.push(r);
    }
    app.stop().await;

    let median = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    type Pick = fn(&Round) -> f64;
    let lines: [(&str, &str, Pick); 11] = [
        ("api_insert", "API import, empty table (inserts)", |r| {
            r.api_insert
        }),
        (
            "raw_copy",
            "raw COPY, empty indexed table (baseline)",
            |r| r.raw_copy,
        ),
        ("api_update", "API re-import, same rows (updates)", |r| {
            r.api_update
        }),
        ("hand_insert", "by hand (upsert path), inserts", |r| {
            r.hand_insert.total
        }),
        (
            "hand_insert_copy",
            "  temp table + COPY into staging",
            |r| r.hand_insert.staging_copy,
        ),
        (
            "hand_insert_upsert",
            "  INSERT ... ON CONFLICT upsert",
            |r| r.hand_insert.upsert,
        ),
        ("hand_insert_commit", "  COMMIT", |r| r.hand_insert.commit),
        ("hand_update", "by hand (upsert path), updates", |r| {
            r.hand_update.total
        }),
        (
            "hand_update_copy",
            "  temp table + COPY into staging",
            |r| r.hand_update.staging_copy,
        ),
        (
            "hand_update_upsert",
            "  INSERT ... ON CONFLICT upsert",
            |r| r.hand_update.upsert,
        ),
        ("hand_update_commit", "  COMMIT", |r| r.hand_update.commit),
    ];

    println!(
        "import: {rows} rows, {rounds} rounds (interleaved, CHECKPOINT before each phase), 2 cores, {}, same cluster for all rows\n",
        common::fsync_label()
    );
    println!(
        "{:<42} {:>8} {:>10} {:>10}   rounds s",
        "phase", "rows", "median s", "rows/s"
    );
    let mut medians = serde_json::Map::new();
    for (key, name, pick) in &lines {
        let m = median(pick);
        let each: Vec<String> = results.iter().map(|r| format!("{:.3}", pick(r))).collect();
        println!(
            "{:<42} {:>8} {:>10.3} {:>10.0}   {}",
            name,
            rows,
            m,
            rows as f64 / m,
            each.join(" ")
        );
        medians.insert(
            (*key).to_owned(),
            serde_json::json!({"s": m, "rows_per_s": rows as f64 / m}),
        );
    }
    let api_rate = rows as f64 / median(&|r| r.api_insert);
    let copy_rate = rows as f64 / median(&|r| r.raw_copy);
    let ratio = api_rate / copy_rate;
    let paired: Vec<f64> = results.iter().map(|r| r.raw_copy / r.api_insert).collect();
    println!(
        "\nAPI insert rate / raw COPY rate: {ratio:.2} (target >= 0.5); per round: {}",
        paired
            .iter()
            .map(|p| format!("{p:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "API re-import (updates) / raw COPY rate: {:.2}",
        rows as f64 / median(&|r| r.api_update) / copy_rate
    );

    common::write_report(
        "import",
        &serde_json::json!({
            "rows": rows,
            "rounds": rounds,
            "fsync": common::fsync_label(),
            "csv_bytes": csv.len(),
            "target_ratio": 0.5,
            "ratio_api_insert_to_raw_copy": ratio,
            "ratio_per_round": paired,
            "ratio_api_update_to_raw_copy": rows as f64 / median(&|r| r.api_update) / copy_rate,
            "medians": medians,
            "each_round": results.iter().map(|r| serde_json::json!({
                "api_insert_s": r.api_insert,
                "raw_copy_s": r.raw_copy,
                "api_update_s": r.api_update,
                "by_hand_insert": r.hand_insert.json(),
                "by_hand_update": r.hand_update.json(),
            })).collect::<Vec<_>>(),
        }),
    );
}

/// The same rows as CSV (with a header line) and as COPY text.
fn generate(rows: usize) -> (Bytes, Bytes) {
    let mut csv = String::with_capacity(rows * 48);
    let mut copy = String::with_capacity(rows * 48);
    csv.push_str("email,first_name,last_name,gender\n");
    for i in 0..rows {
        let first = FIRST[i % FIRST.len()];
        let last = LAST[(i / 7) % LAST.len()];
        let gender = GENDER[i % GENDER.len()];
        csv.push_str(&format!("user{i}@example.org,{first},{last},{gender}\n"));
        copy.push_str(&format!("user{i}@example.org\t{first}\t{last}\t{gender}\n"));
    }
    (Bytes::from(csv), Bytes::from(copy))
}

/// The tenant database of the client `slug`.
async fn database(app: &common::RunningApp, http: &reqwest::Client, slug: &str) -> String {
    let client: serde_json::Value = http
        .get(format!("{}/v1/clients/{slug}", app.base))
        .send()
        .await
        .expect("GET client")
        .json()
        .await
        .expect("client body");
    let id: uuid::Uuid = client["id"].as_str().expect("id").parse().expect("uuid");
    app.state.targets().names(id).database
}

/// One API import of `csv`: seconds from sending the request to the parsed response, and the response's
/// (records, inserted, updated).
async fn api_import(
    app: &common::RunningApp,
    http: &reqwest::Client,
    slug: &str,
    csv: &Bytes,
) -> (f64, (u64, u64, u64)) {
    let started = Instant::now();
    let response = http
        .post(format!("{}/v1/clients/{slug}/recipients/import", app.base))
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .body(csv.clone())
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("POST import");
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("import body");
    let took = started.elapsed().as_secs_f64();
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let n = |k: &str| body[k].as_u64().expect("count");
    (took, (n("records"), n("inserted"), n("updated")))
}

/// Sends `data` in 256 KiB pieces (as the API does) to a started COPY.
async fn feed(sink: CopyInSink<Bytes>, data: &Bytes) -> u64 {
    pin_mut!(sink);
    let mut at = 0;
    while at < data.len() {
        let end = (at + 256 * 1024).min(data.len());
        sink.send(data.slice(at..end)).await.expect("COPY data");
        at = end;
    }
    sink.as_mut().finish().await.expect("COPY finish")
}

/// The baseline: a plain COPY into the tenant's recipients table (autocommit).
async fn raw_copy(db: &Client, copy: &Bytes) -> u64 {
    let sink = db
        .copy_in::<_, Bytes>(&format!("COPY recipients ({COLUMNS}) FROM STDIN"))
        .await
        .expect("COPY");
    feed(sink, copy).await
}

/// The API's SQL (src/data/import.rs) run directly, each step timed: one transaction, a temporary staging table,
/// COPY into it, the upsert, COMMIT.
async fn by_hand(db: &mut Client, copy: &Bytes, rows: usize, inserts: bool) -> HandRun {
    let columns = ["email", "first_name", "last_name", "gender"];
    // The staging rows carry a line number, as the API's do.
    let mut numbered = Vec::with_capacity(copy.len() + rows * 8);
    for (i, line) in copy.split_inclusive(|&b| b == b'\n').enumerate() {
        numbered.extend_from_slice(format!("{}\t", i + 2).as_bytes());
        numbered.extend_from_slice(line);
    }
    let numbered = Bytes::from(numbered);
    let upsert = format!(
        "WITH source AS (
             SELECT DISTINCT ON (lower(email)) * FROM mandant_import ORDER BY lower(email), line DESC
         ), written AS (
             INSERT INTO recipients ({cols}) SELECT {cols} FROM source
             ON CONFLICT ((lower(email))) DO UPDATE SET {sets}, updated_at = now()
             RETURNING (xmax = 0) AS inserted
         )
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written",
        cols = columns.join(", "),
        sets = columns[1..]
            .iter()
            .map(|c| format!("{c} = coalesce(EXCLUDED.{c}, recipients.{c})"))
            .collect::<Vec<_>>()
            .join(", "),
    );

    let started = Instant::now();
    let tx = db.transaction().await.expect("begin");
    tx.batch_execute(
        "CREATE TEMPORARY TABLE mandant_import (line int8 NOT NULL, email text, first_name text,
             last_name text, gender text) ON COMMIT DROP",
    )
    .await
    .expect("staging");
    let sink = tx
        .copy_in::<_, Bytes>(&format!("COPY mandant_import (line, {COLUMNS}) FROM STDIN"))
        .await
        .expect("COPY staging");
    let staged = feed(sink, &numbered).await;
    assert_eq!(staged, rows as u64);
    let staging_copy = started.elapsed().as_secs_f64();
    let t = Instant::now();
    let row = tx.query_one(&upsert, &[]).await.expect("upsert");
    let upsert_s = t.elapsed().as_secs_f64();
    let (inserted, updated): (i64, i64) = (row.get(0), row.get(1));
    let expected = if inserts {
        (rows as i64, 0)
    } else {
        (0, rows as i64)
    };
    assert_eq!((inserted, updated), expected, "by hand: inserted, updated");
    let t = Instant::now();
    tx.commit().await.expect("commit");
    HandRun {
        staging_copy,
        upsert: upsert_s,
        commit: t.elapsed().as_secs_f64(),
        total: started.elapsed().as_secs_f64(),
    }
}

async fn checkpoint(admin: &Client) {
    admin.batch_execute("CHECKPOINT").await.expect("checkpoint");
}
