//! `cargo bench --bench move`: what a live move costs the tenant's writers (issue #21). Two database servers
//! (throwaway clusters on TCP, fsync on unless `BENCH_FSYNC=off`) besides the control plane's; a client with
//! `BENCH_RECIPIENTS` (100,000) recipients on the first, `BENCH_WRITERS` (8) writers inserting a recipient and
//! updating it through the API without pause, and the client moved to the second server by
//! `POST /v1/clients/{slug}/move`. Reported: the longest gap between two successful writes while the move ran
//! (write unavailability), the move's whole time and its freeze, the writes that failed (503 while frozen).
//!
//! The baseline, in the same run: the same client size moved the way one would by hand, `pg_dump -Fc | pg_restore`
//! into a new database on the second server with the writes frozen for the copy (the gap is the copy's whole
//! time). Target: write unavailability under 500 ms, against seconds for the dump. Prints a table and writes
//! benches/results/move.json.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mandant::embedded::ThrowawayCluster;
use mandant::server::RunOptions;
use serde_json::{Value, json};

/// A further database server on TCP with a superuser `ops`, registered through the API as `name` in `zone`.
async fn server(
    app: &common::RunningApp,
    http: &reqwest::Client,
    name: &str,
    zone: &str,
) -> ThrowawayCluster {
    let fsync = common::fsync_label() == "fsync on";
    let tag = format!("bench-move-{name}");
    let cluster = tokio::task::spawn_blocking(move || {
        let durable: &[(&str, &str)] = if fsync {
            &[
                ("fsync", "on"),
                ("full_page_writes", "on"),
                ("synchronous_commit", "on"),
                ("shared_buffers", "128MB"),
            ]
        } else {
            &[("shared_buffers", "128MB")]
        };
        ThrowawayCluster::start_tcp_with(&tag, None, durable).expect("server cluster")
    })
    .await
    .expect("start");
    common::superuser(&cluster, "postgres")
        .await
        .batch_execute("CREATE ROLE ops LOGIN SUPERUSER PASSWORD 'bench-ops-pw'")
        .await
        .expect("admin role");
    let url = format!(
        "postgres://ops:bench-ops-pw@localhost:{}/postgres",
        cluster.tcp_port().expect("port")
    );
    let response = http
        .post(format!("{}/v1/servers", app.base))
        .json(&json!({"name": name, "url": url, "zone": zone}))
        .send()
        .await
        .expect("register");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    cluster
}

/// Writers: each inserts a recipient and updates it, without pause, until stopped; returns the instants of every
/// successful write and the number of failed ones.
fn writers(
    base: &str,
    slug: &str,
    n: usize,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<Instant>>> {
    (0..n)
        .map(|w| {
            let (http, base, slug, stop, failed) = (
                common::http(),
                base.to_owned(),
                slug.to_owned(),
                stop.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                let mut ok = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    let response = http
                        .post(format!("{base}/v1/clients/{slug}/recipients"))
                        .json(
                            &json!({"email": format!("w{w}-{i}@example.org"), "first_name": "new"}),
                        )
                        .send()
                        .await;
                    let id = match response {
                        Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                            ok.push(Instant::now());
                            r.json::<Value>().await.ok().and_then(|b| b["id"].as_i64())
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            None
                        }
                    };
                    if let Some(id) = id {
                        let response = http
                            .patch(format!("{base}/v1/clients/{slug}/recipients/{id}"))
                            .json(&json!({"first_name": format!("updated-{i}")}))
                            .send()
                            .await;
                        match response {
                            Ok(r) if r.status().is_success() => ok.push(Instant::now()),
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                ok
            })
        })
        .collect()
}

/// The longest gap between two successful writes within [from, to].
fn longest_gap(mut times: Vec<Instant>, from: Instant, to: Instant) -> Duration {
    times.retain(|t| *t >= from && *t <= to);
    times.sort();
    let mut edges = vec![from];
    edges.extend(times);
    edges.push(to);
    edges
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

async fn fill(cluster: &ThrowawayCluster, database: &str, recipients: usize) {
    let db = common::superuser(cluster, database).await;
    db.batch_execute(&format!(
        "INSERT INTO recipients (email, first_name, last_name)
         SELECT 'u' || g || '@example.org', 'F' || (g % 1000), 'L' || (g % 100) FROM generate_series(1, {recipients}) g;
         INSERT INTO mailing_lists (name) VALUES ('news');
         INSERT INTO bindings (mailing_list_id, recipient_id, status)
             SELECT (SELECT id FROM mailing_lists), id, 'active' FROM recipients WHERE id % 2 = 0;"
    ))
    .await
    .expect("fill");
    for table in ["recipients", "bindings"] {
        db.batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .expect("vacuum");
    }
}

#[tokio::main]
async fn main() {
    let recipients = common::env_usize("BENCH_RECIPIENTS", 100_000);
    let writer_count = common::env_usize("BENCH_WRITERS", 8);
    let control = common::cluster("bench-move-ctl");
    let settings = common::settings(
        &control,
        "bench_ctl",
        &[("MANDANT__WORKERS__STATS_INTERVAL_SECS", "0")],
    );
    let app = common::start_app(settings, RunOptions::default()).await;
    let http = common::http();
    let source = server(&app, &http, "src", "a").await;
    let target = server(&app, &http, "dst", "b").await;

    // Two clients of the same size on the source: one moved live, one copied by dump and restore.
    let setup = Instant::now();
    for slug in ["live", "dumped"] {
        let response = http
            .post(format!("{}/v1/clients", app.base))
            .json(&json!({"slug": slug, "name": slug, "zone": "a"}))
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    }
    common::wait_active(&app, 3).await;
    let mut databases = Vec::new();
    for slug in ["live", "dumped"] {
        let slug = mandant::domain::ClientSlug::parse(slug).expect("slug");
        let client = app
            .state
            .control()
            .client_by_slug(&slug)
            .await
            .expect("client");
        databases.push(app.state.targets().names(client.id).database);
    }
    let (live_db, dumped_db) = (databases[0].clone(), databases[1].clone());
    fill(&source, &live_db, recipients).await;
    fill(&source, &dumped_db, recipients).await;
    println!(
        "setup: 2 clients of {recipients} recipients on server src, {:.0} s ({})",
        setup.elapsed().as_secs_f64(),
        common::fsync_label()
    );

    // The live move under the writers.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let running = writers(
        &app.base,
        "live",
        writer_count,
        stop.clone(),
        failed.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let move_started = Instant::now();
    let response = http
        .post(format!("{}/v1/clients/live/move", app.base))
        .json(&json!({"server": "dst"}))
        .send()
        .await
        .expect("move");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let body: Value = response.json().await.expect("body");
    let operation = body["operation"].as_str().expect("operation").to_owned();
    let op = loop {
        let op: Value = http
            .get(format!("{}/v1/operations/{operation}", app.base))
            .send()
            .await
            .expect("poll")
            .json()
            .await
            .expect("op");
        if op["status"] == "succeeded" || op["status"] == "failed" {
            break op;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let move_ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let mut times = Vec::new();
    for task in running {
        times.extend(task.await.expect("writer"));
    }
    assert_eq!(op["status"], "succeeded", "{op}");
    let move_secs = (move_ended - move_started).as_secs_f64();
    let live_gap = longest_gap(times.clone(), move_started, move_ended);
    let writes = times
        .iter()
        .filter(|t| **t >= move_started && **t <= move_ended)
        .count();
    let live_failed = failed.load(Ordering::Relaxed);

    // The baseline: writes frozen (the writers wait), dump | restore into a new database on the target server.
    let binaries = source.cluster().binaries().clone();
    let source_target = source.cluster().target(&dumped_db);
    let target_target = target.cluster().target("postgres");
    common::superuser(&target, "postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE \"{dumped_db}\""))
        .await
        .expect("create the dump's target");
    let stop = Arc::new(AtomicBool::new(false));
    let failed_dump = Arc::new(AtomicUsize::new(0));
    let running = writers(
        &app.base,
        "dumped",
        writer_count,
        stop.clone(),
        failed_dump.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Freeze: the client is suspended (its writes refused) for the copy, then resumed.
    let dump_started = Instant::now();
    let response = http
        .post(format!("{}/v1/clients/dumped/suspend", app.base))
        .send()
        .await
        .expect("suspend");
    assert!(response.status().is_success());
    let dumped = tokio::task::spawn_blocking(move || {
        let mut dump = std::process::Command::new(binaries.tool("pg_dump"))
            .args(["-Fc", "--no-owner", "--no-acl", "-h"])
            .arg(source_target.host_arg())
            .args([
                "-p",
                &source_target.port().to_string(),
                "-U",
                source_target.user(),
            ])
            .arg(source_target.dbname())
            .stdout(Stdio::piped())
            .spawn()
            .expect("pg_dump");
        let restore = std::process::Command::new(binaries.tool("pg_restore"))
            .args(["--no-owner", "--no-acl", "-h"])
            .arg(target_target.host_arg())
            .args([
                "-p",
                &target_target.port().to_string(),
                "-U",
                target_target.user(),
                "-d",
            ])
            .arg(source_target.dbname())
            .stdin(dump.stdout.take().expect("pipe"))
            .stderr(Stdio::null())
            .status()
            .expect("pg_restore");
        let dumped = dump.wait().expect("pg_dump status");
        (dumped.success(), restore.code())
    })
    .await
    .expect("dump task");
    let response = http
        .post(format!("{}/v1/clients/dumped/resume", app.base))
        .send()
        .await
        .expect("resume");
    assert!(response.status().is_success());
    let dump_ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let mut dump_times = Vec::new();
    for task in running {
        dump_times.extend(task.await.expect("writer"));
    }
    assert!(dumped.0, "pg_dump failed");
    let dump_secs = (dump_ended - dump_started).as_secs_f64();
    let dump_gap = longest_gap(dump_times, dump_started, dump_ended);
    let copied: i64 = common::superuser(&target, &dumped_db)
        .await
        .query_one("SELECT count(*) FROM recipients", &[])
        .await
        .expect("count")
        .get(0);

    println!(
        "\n{:<22} {:>16} {:>12} {:>12} {:>10} {:>8}",
        "method", "write gap (ms)", "total (s)", "freeze (ms)", "writes ok", "failed"
    );
    println!(
        "{:<22} {:>16.0} {:>12.2} {:>12} {:>10} {:>8}",
        "live move",
        live_gap.as_secs_f64() * 1000.0,
        move_secs,
        op["result"]["freeze_ms"],
        writes,
        live_failed
    );
    println!(
        "{:<22} {:>16.0} {:>12.2} {:>12} {:>10} {:>8}",
        "pg_dump | pg_restore",
        dump_gap.as_secs_f64() * 1000.0,
        dump_secs,
        "-",
        "-",
        failed_dump.load(Ordering::Relaxed)
    );
    let target_met = live_gap < Duration::from_millis(500);
    println!(
        "\nwrite unavailability {:.0} ms (target < 500 ms{}); the dump copied {copied} recipients (restore exit {:?})",
        live_gap.as_secs_f64() * 1000.0,
        if target_met { "" } else { ": NOT MET" },
        dumped.1
    );
    common::write_report(
        "move",
        &json!({
            "recipients": recipients,
            "writers": writer_count,
            "fsync": common::fsync_label(),
            "live": {
                "longest_write_gap_ms": live_gap.as_secs_f64() * 1000.0,
                "move_secs": move_secs,
                "freeze_ms": op["result"]["freeze_ms"],
                "writes_ok_during_move": writes,
                "writes_failed": live_failed,
            },
            "dump_restore": {
                "longest_write_gap_ms": dump_gap.as_secs_f64() * 1000.0,
                "copy_secs": dump_secs,
                "recipients_copied": copied,
                "writes_failed": failed_dump.load(Ordering::Relaxed),
            },
            "target_met": target_met,
        }),
    );
    app.stop().await;
    drop((source, target, control));
}
