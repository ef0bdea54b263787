//! `cargo bench --bench migrate`:
//! 1. 200 tenants with one pending one-statement migration: the fleet migration (`tenants migrate`,
//!    concurrency 4) beside a sequential loop running refinery on each tenant, in the same run.
//! 2. A no-op run over 1,000 registered tenants beside a loop that connects to each one.
//!
//! Prints a table and writes benches/results/migrate.json.

mod common;

use std::time::{Duration, Instant};

use mandant::fleet::{FleetOptions, migrate_fleet};
use mandant::server::RunOptions;
use mandant::tenant::migrate::MigrationSet;

#[tokio::main]
async fn main() {
    let pending_tenants = common::env_usize("BENCH_TENANTS", 200);
    let registered = common::env_usize("BENCH_REGISTERED", 1000).max(pending_tenants);
    let concurrency = common::env_usize("BENCH_CONCURRENCY", 4);
    let cluster = common::cluster("bench-migrate");
    let settings = common::settings(
        &cluster,
        "bench_ctl",
        &[("MANDANT__WORKERS__CONCURRENCY", "4")],
    );
    let app = common::start_app(settings, RunOptions::default()).await;
    let http = common::http();

    // Setup (untimed): `registered` clients through the API.
    let setup = Instant::now();
    let slugs: Vec<String> = (0..registered).map(|i| format!("m-{i:04}")).collect();
    common::create_clients(&app, &http, &slugs).await;
    eprintln!(
        "setup: {registered} clients in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let fleet_runner = app.state.fleet();
    let only: Vec<_> = slugs[..pending_tenants]
        .iter()
        .map(|s| mandant::domain::ClientSlug::parse(s).expect("slug"))
        .collect();

    // Each phase applies one one-statement migration to the same tenants: the sequential loop V100, the fleet
    // V101 (the order is alternated by BENCH_FLEET_FIRST=1 to check that it does not matter).
    let v100 = MigrationSet::embedded()
        .with(
            "V100__bench_a",
            "ALTER TABLE recipients ADD COLUMN bench_a integer",
        )
        .expect("set");
    let v101 = v100
        .with(
            "V101__bench_b",
            "ALTER TABLE recipients ADD COLUMN bench_b integer",
        )
        .expect("set");
    let fleet_first = std::env::var("BENCH_FLEET_FIRST").is_ok_and(|v| v == "1");
    let (fleet_set, sequential_set) = if fleet_first {
        (&v100, &v101)
    } else {
        (&v101, &v100)
    };
    let options = FleetOptions {
        concurrency,
        per_server: concurrency,
        only: only.clone(),
        dry_run: false,
        verify: false,
    };
    let admin = common::superuser(&cluster, "postgres").await;
    let control = common::superuser(&cluster, "bench_ctl").await;
    let targets: Vec<_> = control
        .query(
            "SELECT db_name FROM clients WHERE slug = ANY($1) ORDER BY slug",
            &[&slugs[..pending_tenants].to_vec()],
        )
        .await
        .expect("targets")
        .iter()
        .map(|r| cluster.cluster().target(r.get::<_, &str>(0)))
        .collect();

    let mut fleet = Duration::ZERO;
    let mut fleet_cpu = 0.0;
    let mut sequential = Duration::ZERO;
    let mut sequential_cpu = 0.0;
    for phase in if fleet_first {
        ["fleet", "sequential"]
    } else {
        ["sequential", "fleet"]
    } {
        // Every timed phase starts after a checkpoint, so no phase pays for the previous one's writes.
        admin.batch_execute("CHECKPOINT").await.expect("checkpoint");
        let cpu_before = process_cpu();
        let started = Instant::now();
        if phase == "fleet" {
            // 1a. The fleet migration (templates first, then the tenants), one pending migration per tenant.
            let report = migrate_fleet(
                &fleet_runner.clone().with_migrations(fleet_set.clone()),
                &options,
                |_| {},
            )
            .await
            .expect("fleet");
            fleet = started.elapsed();
            fleet_cpu = process_cpu() - cpu_before;
            assert!(
                report.ok() && report.migrated == pending_tenants,
                "{report:?}"
            );
            assert!(
                report.tenants.iter().all(|t| t.migrations.len() == 1),
                "{report:?}"
            );
        } else {
            // 1b. A sequential loop running refinery on each tenant.
            for target in &targets {
                let mut client = target.connect().await.expect("connect");
                let applied = sequential_set
                    .runner()
                    .run_async(&mut client)
                    .await
                    .expect("refinery");
                assert_eq!(applied.applied_migrations().len(), 1);
            }
            sequential = started.elapsed();
            sequential_cpu = process_cpu() - cpu_before;
        }
    }
    eprintln!("client cpu: fleet {fleet_cpu:.3} s, sequential {sequential_cpu:.3} s");

    // 2a. No-op over every registered tenant (the registry says all are current).
    let all = FleetOptions {
        only: Vec::new(),
        ..options.clone()
    };
    admin.batch_execute("CHECKPOINT").await.expect("checkpoint");
    let noop_started = Instant::now();
    let noop_report = migrate_fleet(&fleet_runner, &all, |_| {})
        .await
        .expect("no-op");
    let noop = noop_started.elapsed();
    assert_eq!(noop_report.tenants.len(), registered + 1);
    assert!(noop_report.tenants.iter().all(|t| !t.connected));

    // 2b. A loop connecting to each registered tenant once.
    let every: Vec<_> = noop_report
        .tenants
        .iter()
        .map(|t| cluster.cluster().target(&t.database))
        .collect();
    let connect_started = Instant::now();
    for target in &every {
        let client = target.connect().await.expect("connect");
        client.simple_query("SELECT 1").await.expect("select");
    }
    let connect_loop = connect_started.elapsed();

    // Context: --verify connects to every tenant and reads its history.
    let verify_started = Instant::now();
    let verified = migrate_fleet(
        &fleet_runner,
        &FleetOptions {
            verify: true,
            dry_run: true,
            ..all.clone()
        },
        |_| {},
    )
    .await
    .expect("verify");
    let verify = verify_started.elapsed();
    assert_eq!(verified.tenants.len(), registered + 1);
    app.stop().await;

    let per = |d: Duration, n: usize| d.as_secs_f64() * 1000.0 / n as f64;
    println!(
        "migrate: 2 cores, {}, same cluster for all rows\n",
        common::fsync_label()
    );
    println!(
        "{:<62} {:>8} {:>9} {:>12}",
        "run", "tenants", "wall s", "ms/tenant"
    );
    let row = |name: &str, n: usize, d: Duration| {
        println!(
            "{:<62} {:>8} {:>9.3} {:>12.2}",
            name,
            n,
            d.as_secs_f64(),
            per(d, n)
        );
    };
    row(
        &format!("mandant tenants migrate, 1 pending (concurrency {concurrency})"),
        pending_tenants,
        fleet,
    );
    row(
        "sequential refinery loop, 1 pending",
        pending_tenants,
        sequential,
    );
    row(
        "mandant tenants migrate, nothing pending",
        registered + 1,
        noop,
    );
    row(
        "loop connecting to each tenant",
        registered + 1,
        connect_loop,
    );
    row(
        "mandant tenants migrate --verify --dry-run (context)",
        registered + 1,
        verify,
    );
    let speedup = sequential.as_secs_f64() / fleet.as_secs_f64();
    println!(
        "\npending: {speedup:.2}x the sequential loop (target >= 2); no-op: {:.3} s (target < 1 s), {:.0}x faster than connecting",
        noop.as_secs_f64(),
        connect_loop.as_secs_f64() / noop.as_secs_f64()
    );
    common::write_report(
        "migrate",
        &serde_json::json!({
            "pending": {"tenants": pending_tenants, "concurrency": concurrency,
                        "mandant_s": fleet.as_secs_f64(), "sequential_refinery_s": sequential.as_secs_f64(),
                        "speedup": speedup},
            "noop": {"tenants": registered + 1, "mandant_s": noop.as_secs_f64(),
                     "connect_loop_s": connect_loop.as_secs_f64(), "verify_s": verify.as_secs_f64()},
        }),
    );
}

/// CPU seconds this process has used (user + system).
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
