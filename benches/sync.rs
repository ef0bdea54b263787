//! `cargo bench --bench sync`: one template version published to every tenant (`BENCH_TENANTS`, 200 sub-clients
//! plus the master) beside a sequential loop that connects to each tenant database (as the tenant's own role, as
//! the sync does) and upserts the same copy, in the same run on the same cluster. Targets: at least 2x faster
//! than the loop on 2 cores, and under 5 s.
//!
//! Each of `BENCH_ROUNDS` (3) rounds: mandant = `POST /v1/templates` (round 1) or `PUT /v1/templates/{id}` (a new
//! version), timed from the request until the control plane's `template_sync` shows every client synced at that
//! version (polled every 10 ms); loop = the baseline with a template id of its own. The order alternates per round,
//! and every phase starts after a CHECKPOINT. The routing pool starts each round empty (its connections closed),
//! so both sides connect to every tenant. Prints a table and writes benches/results/sync.json.

mod common;

use std::time::{Duration, Instant};

use mandant::server::RunOptions;
use serde_json::json;

#[tokio::main]
async fn main() {
    let tenants = common::env_usize("BENCH_TENANTS", 200);
    let rounds = common::env_usize("BENCH_ROUNDS", 3);
    let cluster = common::cluster("bench-sync");
    let fanout = std::env::var("BENCH_FANOUT").unwrap_or_else(|_| "8".into());
    let settings = common::settings(
        &cluster,
        "bench_ctl",
        &[
            ("MANDANT__LOG__LEVEL", "error"),
            ("MANDANT__WORKERS__FANOUT_CONCURRENCY", &fanout),
        ],
    );
    let concurrency = settings.workers.fanout_concurrency;
    let app = common::start_app(settings, RunOptions::default()).await;
    let http = common::http();

    // Setup (untimed).
    let setup = Instant::now();
    let slugs: Vec<String> = (0..tenants).map(|i| format!("s-{i:04}")).collect();
    common::create_clients(&app, &http, &slugs).await;
    let control = app.state.control();
    let mut targets = Vec::new();
    for client in control.all_live_clients().await.expect("clients") {
        let server = control
            .server(client.server_id.expect("placed"))
            .await
            .expect("server");
        targets.push(
            app.state
                .targets()
                .tenant(&server, client.id)
                .expect("target")
                .with_application_name("bench-sync-loop"),
        );
    }
    let clients = targets.len();
    eprintln!(
        "setup: {clients} client databases in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let admin = common::superuser(&cluster, "postgres").await;
    let control_db = common::superuser(&cluster, "bench_ctl").await;

    let mut template_id: Option<String> = None;
    let mut mandant = Vec::new();
    let mut sequential = Vec::new();
    for round in 0..rounds {
        let phases = if round % 2 == 0 {
            ["mandant", "loop"]
        } else {
            ["loop", "mandant"]
        };
        for phase in phases {
            app.state.pools().close();
            admin.batch_execute("CHECKPOINT").await.expect("checkpoint");
            let body = json!({
                "name": "Newsletter",
                "subject": format!("Round {round}"),
                "html_body": format!("<h1>Hello</h1><p>Round {round}</p>"),
                "text_body": format!("Hello, round {round}"),
            });
            let started = Instant::now();
            if phase == "mandant" {
                let response = match &template_id {
                    None => http.post(format!("{}/v1/templates", app.base)),
                    Some(id) => http.put(format!("{}/v1/templates/{id}", app.base)),
                }
                .json(&body)
                .send()
                .await
                .expect("publish");
                assert!(response.status().is_success(), "{}", response.status());
                let published: serde_json::Value = response.json().await.expect("body");
                let id = published["id"].as_str().expect("id").to_owned();
                let version = published["version"].as_i64().expect("version") as i32;
                let uuid: uuid::Uuid = id.parse().expect("uuid");
                template_id = Some(id);
                loop {
                    let row = control_db
                        .query_one(
                            "SELECT count(*) FILTER (WHERE status = 'synced' AND synced_version = $2),
                                    count(*) FILTER (WHERE status = 'failed')
                             FROM template_sync WHERE template_id = $1",
                            &[&uuid, &version],
                        )
                        .await
                        .expect("poll");
                    let (synced, failed): (i64, i64) = (row.get(0), row.get(1));
                    assert_eq!(failed, 0, "a sync failed");
                    if synced as usize >= clients {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                mandant.push(started.elapsed());
            } else {
                let id = uuid::Uuid::new_v4();
                for target in &targets {
                    let db = target.connect().await.expect("connect");
                    db.execute(
                        "INSERT INTO templates (id, origin, name, subject, html_body, text_body, master_version, available_version)
                         VALUES ($1, 'inherited', $2, $3, $4, $5, 1, 1)
                         ON CONFLICT (id) DO UPDATE SET subject = EXCLUDED.subject, html_body = EXCLUDED.html_body,
                             text_body = EXCLUDED.text_body, updated_at = now()",
                        &[
                            &id,
                            &"Newsletter",
                            &body["subject"].as_str().unwrap_or_default(),
                            &body["html_body"].as_str().unwrap_or_default(),
                            &body["text_body"].as_str().unwrap_or_default(),
                        ],
                    )
                    .await
                    .expect("upsert");
                }
                sequential.push(started.elapsed());
            }
            eprintln!(
                "round {}: {phase} {:.3} s",
                round + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }

    let median = |v: &[Duration]| {
        let mut s = v.to_vec();
        s.sort();
        s[s.len() / 2].as_secs_f64()
    };
    let (m, l) = (median(&mandant), median(&sequential));
    println!(
        "\nsync: one template version to {clients} client databases, {rounds} rounds, fan-out {} tenants at once, {}",
        concurrency,
        common::fsync_label()
    );
    println!(
        "{:<40} {:>10} {:>12}   rounds s",
        "phase", "median s", "tenants/s"
    );
    let rounds_text = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.3}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "{:<40} {:>10.3} {:>12.0}   {}",
        "mandant (publish -> all synced)",
        m,
        clients as f64 / m,
        rounds_text(&mandant)
    );
    println!(
        "{:<40} {:>10.3} {:>12.0}   {}",
        "sequential connect + upsert (baseline)",
        l,
        clients as f64 / l,
        rounds_text(&sequential)
    );
    println!(
        "\nspeedup {:.2}x (target >= 2x); mandant {m:.2} s (target < 5 s)",
        l / m
    );
    common::write_report(
        "sync",
        &json!({
            "fsync": common::fsync_label(),
            "clients": clients,
            "rounds": rounds,
            "fanout_concurrency": concurrency,
            "mandant_s": mandant.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
            "sequential_s": sequential.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
            "mandant_median_s": m,
            "sequential_median_s": l,
            "speedup": l / m,
        }),
    );
    app.stop().await;
}
