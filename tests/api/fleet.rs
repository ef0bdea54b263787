//! `tenants migrate`: a new migration across the fleet, failure isolation, re-runs, concurrent runs, dry runs,
//! `--only`, divergent histories and registry drift.

use mandant::domain::ClientSlug;
use mandant::fleet::Fleet;
use mandant::fleet::{FleetOptions, FleetReport, Outcome, migrate_fleet};
use mandant::tenant::migrate::MigrationSet;

use crate::helpers::{TestApp, TestDir, spawn_app_without_workers, superuser};

const NEW: &str = "V100__loyalty_points";
const NEW_SQL: &str = "ALTER TABLE recipients ADD COLUMN loyalty_points integer";

fn options() -> FleetOptions {
    FleetOptions {
        concurrency: 4,
        per_server: 4,
        only: Vec::new(),
        dry_run: false,
        verify: false,
    }
}

/// An app with `n` active sub-clients `t-00`... and the master.
async fn fleet(n: usize) -> TestApp {
    let app = spawn_app_without_workers().await;
    for i in 0..n {
        app.create_client(&format!("t-{i:02}")).await;
    }
    app.drain(&app.runner("setup")).await;
    app
}

/// The app's provisioner with one more migration, as if a file had been added.
fn with_new_migration(app: &TestApp) -> Fleet {
    let set = MigrationSet::embedded().with(NEW, NEW_SQL).unwrap();
    app.state.fleet().with_migrations(set)
}

async fn database_of(app: &TestApp, slug: &str) -> String {
    app.client_json(slug).await["database"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn has_new_column(database: &str) -> bool {
    superuser(database)
        .await
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                            WHERE table_name = 'recipients' AND column_name = 'loyalty_points')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn outcome_of(report: &FleetReport, slug: &str) -> Outcome {
    report
        .tenants
        .iter()
        .find(|t| t.client == slug)
        .unwrap_or_else(|| panic!("{slug} not in report"))
        .outcome
}

#[tokio::test]
async fn a_new_migration_is_applied_to_the_template_and_every_tenant_and_a_rerun_connects_to_none()
{
    let app = fleet(8).await;
    let provisioner = with_new_migration(&app);
    let report = migrate_fleet(&provisioner, &options(), |_| {})
        .await
        .unwrap();
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.migrated, 9, "8 clients and the master");
    assert_eq!(report.templates[0].outcome, Outcome::Migrated);
    assert_eq!(report.templates[0].to, 100);
    for t in &report.tenants {
        assert_eq!(t.to, 100);
        assert_eq!(t.migrations, vec![NEW.to_owned()]);
        assert!(has_new_column(&t.database).await, "{}", t.client);
    }
    let behind = app
        .control_i64(
            "SELECT count(*) FROM clients WHERE status = 'active' AND schema_version <> 100",
        )
        .await;
    assert_eq!(behind, 0);
    // The objects a migration creates belong to the tenant's role (it runs under SET ROLE).
    let t0 = database_of(&app, "t-00").await;
    let history_owner: String = superuser(&t0)
        .await
        .query_one(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'mandant_tenant_migrations'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(history_owner, t0);

    // A client provisioned now is cloned from the migrated template.
    app.create_client("late").await;
    let runner = mandant::workers::JobRunner::new(&app.state, "w");
    app.drain(&runner).await;
    assert!(has_new_column(&database_of(&app, "late").await).await);

    let again = migrate_fleet(&provisioner, &options(), |_| {})
        .await
        .unwrap();
    assert_eq!(again.migrated, 0);
    assert!(
        again.tenants.iter().all(|t| !t.connected),
        "a no-op run connects to nobody"
    );
}

#[tokio::test]
async fn a_migration_failing_on_one_tenant_fails_only_that_one_and_a_rerun_after_the_fix_completes_it()
 {
    let app = fleet(5).await;
    let broken = database_of(&app, "t-02").await;
    // Sabotage: the column the migration adds is already there.
    superuser(&broken)
        .await
        .batch_execute("ALTER TABLE recipients ADD COLUMN loyalty_points text")
        .await
        .unwrap();
    let provisioner = with_new_migration(&app);
    let report = migrate_fleet(&provisioner, &options(), |_| {})
        .await
        .unwrap();
    assert!(!report.ok());
    assert_eq!(report.failed, 1, "{report:#?}");
    assert_eq!(report.migrated, 5);
    let failed = report.tenants.iter().find(|t| t.client == "t-02").unwrap();
    assert_eq!(failed.outcome, Outcome::Failed);
    let error = failed.error.as_deref().unwrap();
    assert!(error.contains("loyalty_points"), "{error}");
    assert_eq!(failed.to, mandant::tenant::migrate::latest_version());

    superuser(&broken)
        .await
        .batch_execute("ALTER TABLE recipients DROP COLUMN loyalty_points")
        .await
        .unwrap();
    let rerun = migrate_fleet(&provisioner, &options(), |_| {})
        .await
        .unwrap();
    assert!(rerun.ok(), "{rerun:#?}");
    assert_eq!(rerun.migrated, 1);
    assert_eq!(outcome_of(&rerun, "t-02"), Outcome::Migrated);
    let connected: Vec<&str> = rerun
        .tenants
        .iter()
        .filter(|t| t.connected)
        .map(|t| t.client.as_str())
        .collect();
    assert_eq!(
        connected,
        vec!["t-02"],
        "only the failed tenant is touched again"
    );
}

#[tokio::test]
async fn two_concurrent_runs_never_migrate_a_tenant_twice_and_neither_errors() {
    let app = fleet(10).await;
    let provisioner = with_new_migration(&app);
    let opts = options();
    let (a, b) = tokio::join!(
        migrate_fleet(&provisioner, &opts, |_| {}),
        migrate_fleet(&provisioner, &opts, |_| {})
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.ok() && b.ok(), "{a:#?}\n{b:#?}");
    assert_eq!(
        a.migrated + b.migrated,
        11,
        "each tenant exactly once across both runs"
    );
    for t in a.tenants.iter().chain(&b.tenants) {
        let rows: i64 = superuser(&t.database)
            .await
            .query_one(
                "SELECT count(*) FROM mandant_tenant_migrations WHERE version = 100",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 1, "{}", t.client);
    }
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_only_limits_the_run() {
    let app = fleet(4).await;
    let provisioner = with_new_migration(&app);
    let dry = migrate_fleet(
        &provisioner,
        &FleetOptions {
            dry_run: true,
            ..options()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(dry.would_migrate, 5);
    assert_eq!(dry.templates[0].outcome, Outcome::WouldMigrate);
    for t in &dry.tenants {
        assert_eq!(t.migrations, vec![NEW.to_owned()]);
        assert!(!t.connected);
        assert!(!has_new_column(&t.database).await);
    }
    assert_eq!(
        app.control_i64("SELECT count(*) FROM clients WHERE schema_version = 100")
            .await,
        0
    );
    assert_eq!(
        app.control_i64("SELECT max(template_version)::bigint FROM db_servers")
            .await,
        i64::from(mandant::tenant::migrate::latest_version())
    );

    let only = FleetOptions {
        only: vec![
            ClientSlug::parse("t-01").unwrap(),
            ClientSlug::parse("t-03").unwrap(),
        ],
        ..options()
    };
    let limited = migrate_fleet(&provisioner, &only, |_| {}).await.unwrap();
    let touched: Vec<&str> = limited.tenants.iter().map(|t| t.client.as_str()).collect();
    assert_eq!(touched, vec!["t-01", "t-03"]);
    assert!(has_new_column(&database_of(&app, "t-01").await).await);
    assert!(!has_new_column(&database_of(&app, "t-00").await).await);

    let unknown = FleetOptions {
        only: vec![ClientSlug::parse("nobody").unwrap()],
        ..options()
    };
    let err = migrate_fleet(&provisioner, &unknown, |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nobody"), "{err}");
}

#[tokio::test]
async fn an_edited_migration_is_reported_as_divergent_and_nothing_is_applied_there() {
    let app = fleet(2).await;
    let edited = database_of(&app, "t-01").await;
    superuser(&edited)
        .await
        .batch_execute("UPDATE mandant_tenant_migrations SET checksum = '42' WHERE version = 1")
        .await
        .unwrap();
    let provisioner = with_new_migration(&app);

    let verified = migrate_fleet(
        &provisioner,
        &FleetOptions {
            verify: true,
            dry_run: true,
            ..options()
        },
        |_| {},
    )
    .await
    .unwrap();
    let t = verified
        .tenants
        .iter()
        .find(|t| t.client == "t-01")
        .unwrap();
    assert_eq!(t.outcome, Outcome::Divergent);
    assert_eq!(
        t.verification.as_ref().unwrap().divergent,
        vec!["V1__recipients".to_owned()]
    );
    assert_eq!(outcome_of(&verified, "t-00"), Outcome::WouldMigrate);

    let run = migrate_fleet(&provisioner, &options(), |_| {})
        .await
        .unwrap();
    let t = run.tenants.iter().find(|t| t.client == "t-01").unwrap();
    assert_eq!(t.outcome, Outcome::Divergent);
    assert!(t.error.as_deref().unwrap().contains("divergent"), "{t:?}");
    assert!(!run.ok());
    assert!(!has_new_column(&edited).await);
    assert_eq!(outcome_of(&run, "t-00"), Outcome::Migrated);
}

#[tokio::test]
async fn verify_corrects_a_drifted_registry_from_the_real_history() {
    let app = fleet(1).await;
    app.control()
        .await
        .batch_execute("UPDATE clients SET schema_version = 0 WHERE slug = 't-00'")
        .await
        .unwrap();
    let report = migrate_fleet(
        &app.state.fleet(),
        &FleetOptions {
            verify: true,
            ..options()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert!(report.ok(), "{report:#?}");
    assert_eq!(outcome_of(&report, "t-00"), Outcome::Current);
    assert!(report.tenants.iter().all(|t| t.connected));
    let fixed = app
        .control_i64("SELECT schema_version::bigint FROM clients WHERE slug = 't-00'")
        .await;
    assert_eq!(fixed, i64::from(mandant::tenant::migrate::latest_version()));
}

#[tokio::test]
async fn suspended_clients_are_migrated_and_deleted_ones_are_not() {
    let app = fleet(3).await;
    let runner = app.runner("w");
    assert!(
        app.post("/v1/clients/t-00/suspend")
            .await
            .status()
            .is_success()
    );
    assert!(app.delete("/v1/clients/t-01").await.status().is_success());
    app.drain(&runner).await;
    let report = migrate_fleet(&with_new_migration(&app), &options(), |_| {})
        .await
        .unwrap();
    assert_eq!(outcome_of(&report, "t-00"), Outcome::Migrated);
    assert!(report.tenants.iter().all(|t| t.client != "t-01"));
}

#[tokio::test]
async fn the_command_exits_non_zero_when_a_tenant_fails_and_prints_json() {
    let app = fleet(2).await;
    let cwd = TestDir::new("fleet-cwd");
    let run = |json: bool| {
        let mut command = app.command(cwd.path());
        command.args(["tenants", "migrate", "--concurrency", "2"]);
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    };
    let ok = run(true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["failed"], 0);
    assert_eq!(report["current"], 3);

    // Sabotage one tenant: its history is gone, so V1 runs again and fails on the existing table.
    let broken = database_of(&app, "t-01").await;
    superuser(&broken)
        .await
        .batch_execute("DELETE FROM mandant_tenant_migrations")
        .await
        .unwrap();
    app.control()
        .await
        .batch_execute("UPDATE clients SET schema_version = 0 WHERE slug = 't-01'")
        .await
        .unwrap();
    let failed = run(false);
    assert_eq!(failed.status.code(), Some(1));
    let table = String::from_utf8_lossy(&failed.stdout);
    assert!(
        table.contains("t-01") && table.contains("failed"),
        "{table}"
    );
    assert!(table.contains("1 failed"), "{table}");
}
