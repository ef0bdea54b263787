//! `cargo bench --bench provision`: 100 clients through the HTTP API end to end (POST → active), beside two
//! baselines measured in the same run on the same cluster:
//!   floor: a plain sequential loop of `CREATE DATABASE ... TEMPLATE mandant_template`;
//!   naive: what other tools do, `CREATE DATABASE` from template0 plus every tenant migration, sequentially.
//!
//! The disk latency of a shared machine drifts by 2-3x within minutes, so the methods are interleaved: in each of
//! `BENCH_ROUNDS` rounds every method provisions `BENCH_CLIENTS / BENCH_ROUNDS` databases, and each method's times
//! are summed over the rounds. Prints a table and writes benches/results/provision.json.

mod common;

use std::time::{Duration, Instant};

use deadpool_postgres::tokio_postgres::Client;
use mandant::server::RunOptions;
use mandant::tenant::migrate::migrate_database;

/// Clients provisioned one at a time first, for the idle sign-up latency.
const IDLE_SAMPLES: usize = 10;

#[tokio::main]
async fn main() {
    let clients = common::env_usize("BENCH_CLIENTS", 100);
    let rounds = common::env_usize("BENCH_ROUNDS", 4).clamp(1, clients.max(1));
    let per_round = clients / rounds;
    let clients = per_round * rounds;
    let cluster = common::cluster("bench-provision");
    let admin = common::superuser(&cluster, "postgres").await;

    // mandant: the real service, HTTP in, workers provisioning.
    let level = std::env::var("BENCH_LOG").unwrap_or_else(|_| "error".into());
    let settings = common::settings(&cluster, "bench_ctl", &[("MANDANT__LOG__LEVEL", &level)]);
    mandant::telemetry::init(&settings.log);
    let template = settings.tenants.template_db.clone();
    let app = common::start_app(settings, RunOptions::default()).await;
    let http = common::http();
    common::wait_active(&app, 1).await; // the master: creates and migrates the template, untimed

    // Sign-up latency on an idle system: one client at a time, POST until the operation has succeeded.
    let mut idle = Vec::new();
    for i in 0..IDLE_SAMPLES {
        let t = Instant::now();
        let created: serde_json::Value = http
            .post(format!("{}/v1/clients", app.base))
            .json(&serde_json::json!({"slug": format!("idle-{i}"), "name": "Idle"}))
            .send()
            .await
            .expect("POST")
            .json()
            .await
            .expect("body");
        let op = created["operation"].as_str().expect("operation").to_owned();
        loop {
            let state: serde_json::Value = http
                .get(format!("{}/v1/operations/{op}", app.base))
                .send()
                .await
                .expect("GET")
                .json()
                .await
                .expect("body");
            if state["status"] == "succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        idle.push(t.elapsed());
    }
    idle.sort();
    let mut active = 1 + IDLE_SAMPLES;

    let (mut ours, mut floor, mut naive) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        let batch = round * per_round..(round + 1) * per_round;

        // mandant: a burst of POSTs, until every one of them is active.
        checkpoint(&admin).await;
        let started = Instant::now();
        let mut posts = Vec::new();
        for i in batch.clone() {
            let http = http.clone();
            let base = app.base.clone();
            posts.push(tokio::spawn(async move {
                let response = http
                    .post(format!("{base}/v1/clients"))
                    .json(&serde_json::json!({"slug": format!("bench-{i:04}"), "name": format!("Bench {i}")}))
                    .send()
                    .await
                    .expect("POST");
                assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
            }));
        }
        for post in posts {
            post.await.expect("post task");
        }
        active += per_round;
        common::wait_active(&app, active).await;
        ours += started.elapsed();

        // floor: clone the same (current) template, sequentially.
        checkpoint(&admin).await;
        let started = Instant::now();
        for i in batch.clone() {
            admin
                .batch_execute(&format!(
                    "CREATE DATABASE floor_{i} TEMPLATE \"{template}\""
                ))
                .await
                .expect("floor create");
        }
        floor += started.elapsed();

        // naive: empty database from template0, then run every tenant migration, sequentially.
        checkpoint(&admin).await;
        let started = Instant::now();
        for i in batch.clone() {
            admin
                .batch_execute(&format!("CREATE DATABASE naive_{i} TEMPLATE template0"))
                .await
                .expect("naive create");
            migrate_database(&cluster.cluster().target(&format!("naive_{i}")), None)
                .await
                .expect("naive migrate");
        }
        naive += started.elapsed();
    }

    let control = common::superuser(&cluster, "bench_ctl").await;
    // Time to active per client within its burst (queueing included).
    let mut latencies: Vec<Duration> = control
        .query(
            "SELECT extract(epoch FROM j.finished_at - c.created_at)::float8
             FROM clients c JOIN jobs j ON j.client_id = c.id
             WHERE c.slug LIKE 'bench-%' AND j.kind = 'provision_client'",
            &[],
        )
        .await
        .expect("latencies")
        .iter()
        .map(|r| Duration::from_secs_f64(r.get::<_, f64>(0)))
        .collect();
    latencies.sort();
    app.stop().await;

    let rate = |d: Duration| clients as f64 / d.as_secs_f64();
    let (ours_rate, floor_rate, naive_rate) = (rate(ours), rate(floor), rate(naive));
    let p = |set: &[Duration], q: f64| common::ms(common::percentile(set, q));
    println!(
        "provision: {clients} clients in {rounds} interleaved rounds, 2 cores, {} (same cluster for all rows)\n",
        common::fsync_label()
    );
    println!(
        "{:<58} {:>10} {:>12} {:>10} {:>10}",
        "method", "wall s", "clients/s", "p50 ms", "p95 ms"
    );
    println!(
        "{:<58} {:>10.2} {:>12.1} {:>10.1} {:>10.1}",
        format!("mandant: POST -> active, bursts of {per_round} (4 workers)"),
        ours.as_secs_f64(),
        ours_rate,
        p(&latencies, 50.0),
        p(&latencies, 95.0)
    );
    for (name, wall, r) in [
        (
            "floor: CREATE DATABASE ... TEMPLATE (sequential)",
            floor,
            floor_rate,
        ),
        (
            "naive: CREATE DATABASE from template0 + migrations",
            naive,
            naive_rate,
        ),
    ] {
        println!(
            "{:<58} {:>10.2} {:>12.1} {:>10} {:>10}",
            name,
            wall.as_secs_f64(),
            r,
            "-",
            "-"
        );
    }
    println!(
        "{:<58} {:>10} {:>12} {:>10.1} {:>10.1}",
        format!("mandant, idle: one client at a time (n={IDLE_SAMPLES})"),
        "-",
        "-",
        p(&idle, 50.0),
        p(&idle, 95.0)
    );
    println!(
        "\nmandant / floor = {:.2} (target >= 0.5); mandant / naive = {:.2}",
        ours_rate / floor_rate,
        ours_rate / naive_rate
    );
    common::write_report(
        "provision",
        &serde_json::json!({
            "clients": clients,
            "rounds": rounds,
            "fsync": common::fsync_label(),
            "mandant": {"wall_s": ours.as_secs_f64(), "per_s": ours_rate,
                        "p50_ms": p(&latencies, 50.0), "p95_ms": p(&latencies, 95.0)},
            "mandant_idle_signup": {"p50_ms": p(&idle, 50.0), "p95_ms": p(&idle, 95.0)},
            "floor_template_clone": {"wall_s": floor.as_secs_f64(), "per_s": floor_rate},
            "naive_template0_plus_migrations": {"wall_s": naive.as_secs_f64(), "per_s": naive_rate},
            "ratio_vs_floor": ours_rate / floor_rate,
            "ratio_vs_naive": ours_rate / naive_rate,
        }),
    );
}

async fn checkpoint(admin: &Client) {
    admin.batch_execute("CHECKPOINT").await.expect("checkpoint");
}
