//! `cargo bench --bench crossclient`: one cross-client target group counted over every client (`BENCH_TENANTS`,
//! 200 sub-clients plus the master, `BENCH_RECIPIENTS` = 10,000 recipients each) through
//! `GET /v1/target-groups/{id}/count`, beside a sequential loop that connects to each tenant database (as the
//! tenant's own role) and counts the same rule, in the same run on the same cluster. Target: at least 1.5x the
//! loop when the routing pool starts empty (both sides then pay one backend start per tenant).
//!
//! Each of `BENCH_ROUNDS` (3) rounds runs, after a CHECKPOINT each: `cold` (the routing pool emptied first), `warm`
//! (the same count repeated at once: the pool holds a connection to every tenant when the budget,
//! `BENCH_BUDGET`, 220 by default, fits them), and `loop`; cold and loop alternate their order per round. For each
//! phase: wall time, machine CPU (user + system from /proc/stat, PostgreSQL included) per tenant, and for mandant
//! the p99 of the per-client times it reports. Prints a table and writes benches/results/crossclient.json.

mod common;

use std::time::{Duration, Instant};

use mandant::server::RunOptions;
use serde_json::json;

/// Busy jiffies of the whole machine.
fn cpu_jiffies() -> u64 {
    common::machine_jiffies().0
}

/// CPU milliseconds between two readings (USER_HZ is 100 on Linux).
fn cpu_ms(before: u64, after: u64) -> f64 {
    (after.saturating_sub(before)) as f64 * 10.0
}

struct Phase {
    wall: Duration,
    cpu_ms: f64,
    /// Per-client times reported by mandant, sorted (empty for the loop).
    per_client: Vec<Duration>,
}

#[tokio::main]
async fn main() {
    let tenants = common::env_usize("BENCH_TENANTS", 200);
    let per_tenant = common::env_usize("BENCH_RECIPIENTS", 10_000) as i64;
    let rounds = common::env_usize("BENCH_ROUNDS", 3);
    let budget = std::env::var("BENCH_BUDGET").unwrap_or_else(|_| "220".into());
    let fanout = std::env::var("BENCH_FANOUT").unwrap_or_else(|_| "8".into());
    let cluster = common::cluster("bench-crossclient");
    let settings = common::settings(
        &cluster,
        "bench_ctl",
        &[
            ("MANDANT__WORKERS__FANOUT_CONCURRENCY", &fanout),
            ("MANDANT__ROUTING__BUDGET_PER_SERVER", &budget),
            ("MANDANT__WORKERS__STATS_INTERVAL_SECS", "0"),
        ],
    );
    let concurrency = settings.workers.fanout_concurrency;
    let app = common::start_app(settings, RunOptions::default()).await;
    let http = common::http();

    // Setup (untimed): clients, a central field, recipients written straight into each database.
    let setup = Instant::now();
    let slugs: Vec<String> = (0..tenants).map(|i| format!("x-{i:04}")).collect();
    common::create_clients(&app, &http, &slugs).await;
    let created = http
        .post(format!("{}/v1/fields", app.base))
        .json(&json!({"name": "region", "type": "text", "length": 40}))
        .send()
        .await
        .expect("central field");
    assert!(created.status().is_success(), "{}", created.status());
    let control = app.state.control();
    let clients = control.all_live_clients().await.expect("clients");
    loop {
        let pending: i64 = control
            .client_figures(&clients.iter().map(|c| c.id).collect::<Vec<_>>())
            .await
            .expect("figures")
            .values()
            .map(|f| f.fields.desired - f.fields.current)
            .sum();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut targets = Vec::new();
    for client in &clients {
        let server = control
            .server(client.server_id.expect("placed"))
            .await
            .expect("server");
        let database = app.state.targets().names(client.id).database;
        let db = common::superuser(&cluster, &database).await;
        db.execute(
            "INSERT INTO recipients (email, region)
             SELECT 'r' || i || '@example.org', (ARRAY['north', 'south', 'east', 'west'])[1 + i % 4]
             FROM generate_series(1, $1::int8) AS i",
            &[&per_tenant],
        )
        .await
        .expect("recipients");
        db.batch_execute("VACUUM ANALYZE recipients")
            .await
            .expect("vacuum");
        targets.push(
            app.state
                .targets()
                .tenant(&server, client.id)
                .expect("target")
                .with_application_name("bench-crossclient-loop"),
        );
    }
    let group: serde_json::Value = http
        .post(format!("{}/v1/target-groups", app.base))
        .json(&json!({"name": "North", "rule": {"field": "region", "op": "eq", "value": "north"}}))
        .send()
        .await
        .expect("group")
        .json()
        .await
        .expect("group body");
    let count_url = format!("{}/v1/target-groups/{}/count", app.base, group["id"]);
    let expected = (tenants as i64) * (per_tenant / 4 + i64::from(per_tenant % 4 > 0));
    eprintln!(
        "setup: {} client databases, {} recipients each, in {:.1} s",
        targets.len(),
        per_tenant,
        setup.elapsed().as_secs_f64()
    );
    let admin = common::superuser(&cluster, "postgres").await;

    let count_once = || async {
        let before = cpu_jiffies();
        let started = Instant::now();
        let response = http.get(&count_url).send().await.expect("count");
        assert!(response.status().is_success(), "{}", response.status());
        let body: serde_json::Value = response.json().await.expect("count body");
        let wall = started.elapsed();
        let cpu = cpu_ms(before, cpu_jiffies());
        let rows = body["clients"].as_array().expect("rows");
        let errors: Vec<&serde_json::Value> =
            rows.iter().filter(|r| r.get("error").is_some()).collect();
        assert!(errors.is_empty(), "errors: {errors:?}");
        let total = body["total"].as_i64().expect("total");
        assert!(
            total >= expected,
            "total {total}, expected at least {expected}"
        );
        let mut per_client: Vec<Duration> = rows
            .iter()
            .map(|r| Duration::from_millis(r["elapsed_ms"].as_u64().unwrap_or(0)))
            .collect();
        per_client.sort();
        Phase {
            wall,
            cpu_ms: cpu,
            per_client,
        }
    };
    let (mut cold, mut warm, mut sequential) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            ["cold", "loop"]
        } else {
            ["loop", "cold"]
        };
        for phase in order {
            app.state.pools().close();
            admin.batch_execute("CHECKPOINT").await.expect("checkpoint");
            if phase == "cold" {
                let c = count_once().await;
                eprintln!("round {}: cold {:.3} s", round + 1, c.wall.as_secs_f64());
                cold.push(c);
                admin.batch_execute("CHECKPOINT").await.expect("checkpoint");
                let w = count_once().await;
                eprintln!("round {}: warm {:.3} s", round + 1, w.wall.as_secs_f64());
                warm.push(w);
            } else {
                let before = cpu_jiffies();
                let started = Instant::now();
                let mut total = 0;
                for target in &targets {
                    let db = target.connect().await.expect("connect");
                    let row = db
                        .query_one(
                            "SELECT count(*) FROM recipients r WHERE r.region = $1::text",
                            &[&"north"],
                        )
                        .await
                        .expect("count");
                    total += row.get::<_, i64>(0);
                }
                assert!(total >= expected);
                let wall = started.elapsed();
                eprintln!("round {}: loop {:.3} s", round + 1, wall.as_secs_f64());
                sequential.push(Phase {
                    wall,
                    cpu_ms: cpu_ms(before, cpu_jiffies()),
                    per_client: Vec::new(),
                });
            }
        }
    }

    let n = targets.len() as f64;
    let median = |v: &[Phase], f: &dyn Fn(&Phase) -> f64| common::median_of(v, f);
    let wall = |p: &Phase| p.wall.as_secs_f64();
    let cpu = |p: &Phase| p.cpu_ms / n;
    let p99 = |p: &Phase| common::ms(common::percentile(&p.per_client, 99.0));
    println!(
        "\ncrossclient: one target group counted over {} clients x {per_tenant} recipients, {rounds} rounds, \
         fan-out {concurrency}, budget {budget}, {}",
        targets.len(),
        common::fsync_label()
    );
    println!(
        "{:<44} {:>9} {:>11} {:>15} {:>13}",
        "phase", "median s", "tenants/s", "CPU ms/tenant", "p99/client ms"
    );
    let row = |name: &str, v: &[Phase], with_p99: bool| {
        let p99 = if with_p99 {
            format!("{:.1}", median(v, &p99))
        } else {
            "-".into()
        };
        println!(
            "{:<44} {:>9.3} {:>11.0} {:>15.2} {:>13}",
            name,
            median(v, &wall),
            n / median(v, &wall),
            median(v, &cpu),
            p99
        );
    };
    row("mandant count, routing pool empty (cold)", &cold, true);
    row("mandant count repeated at once (warm)", &warm, true);
    row("sequential connect + count (baseline)", &sequential, false);
    let speedup = median(&sequential, &wall) / median(&cold, &wall);
    let warm_speedup = median(&sequential, &wall) / median(&warm, &wall);
    println!("\nspeedup cold {speedup:.2}x (target >= 1.5x), warm {warm_speedup:.2}x");
    let phase_json = |v: &[Phase]| {
        json!({
            "median_s": median(v, &wall),
            "rounds_s": v.iter().map(wall).collect::<Vec<_>>(),
            "cpu_ms_per_tenant": median(v, &cpu),
            "p99_per_client_ms": if v.iter().all(|p| p.per_client.is_empty()) { serde_json::Value::Null } else { json!(median(v, &p99)) },
        })
    };
    common::write_report(
        "crossclient",
        &json!({
            "fsync": common::fsync_label(),
            "clients": targets.len(),
            "recipients_per_client": per_tenant,
            "rounds": rounds,
            "fanout_concurrency": concurrency,
            "budget": budget,
            "cold": phase_json(&cold),
            "warm": phase_json(&warm),
            "baseline_sequential": phase_json(&sequential),
            "speedup_cold": speedup,
            "speedup_warm": warm_speedup,
        }),
    );
    app.stop().await;
}
