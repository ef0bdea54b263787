//! Control-plane migrations: the registry they create, idempotence, and concurrent runs.

use std::process::Stdio;

use crate::helpers::{TestDir, cluster, mandant_command, spawn_app, superuser, unique};

#[tokio::test]
async fn migrations_create_the_registry_with_the_master_client_and_the_local_server() {
    let app = spawn_app().await;
    let db = app.control().await;
    for table in [
        "clients",
        "db_servers",
        "jobs",
        "mandant_control_migrations",
    ] {
        let exists: bool = db
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "table {table} missing");
    }
    let master = db
        .query_one(
            "SELECT slug, kind, status, parent_id IS NULL AS root FROM clients WHERE kind = 'master'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(master.get::<_, String>("slug"), "master");
    assert!(master.get::<_, bool>("root"));
    let servers: Vec<String> = db
        .query("SELECT name FROM db_servers", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(servers, vec!["local".to_owned()]);
}

#[tokio::test]
async fn running_migrations_again_applies_nothing_and_changes_nothing() {
    let app = spawn_app().await;
    let report = mandant::control::migrate::run(&app.control_target())
        .await
        .unwrap();
    assert!(report.applied.is_empty(), "{:?}", report.applied);
    let db = app.control().await;
    let masters: i64 = db
        .query_one("SELECT count(*) FROM clients", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(masters, 1);
}

#[tokio::test]
async fn two_migrate_processes_started_at_the_same_moment_both_succeed() {
    let cwd = TestDir::new("migrate-cwd");
    let db = unique("race_");
    let url = cluster().target(&db).to_url().expose().to_owned();
    let prefix = format!("{}_", unique("race"));
    let template = unique("race_tpl_");
    let spawn = || {
        mandant_command(cwd.path())
            .arg("migrate")
            .env("MANDANT__DATABASE__URL", &url)
            .env("MANDANT__TENANTS__DB_PREFIX", &prefix)
            .env("MANDANT__TENANTS__TEMPLATE_DB", &template)
            .env("MANDANT__TENANTS__CREDENTIAL_SECRET", "race-secret")
            .env("MANDANT__LOG__LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "status {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout)
    );
    assert_eq!(said.matches("applied V1__registry").count(), 1, "{said}");
    assert_eq!(
        said.matches("control plane: up to date").count(),
        1,
        "{said}"
    );
    // Then the template database: made by one, found current by the other.
    assert_eq!(
        said.matches("template on local: migrated v0").count(),
        1,
        "{said}"
    );
    assert_eq!(
        said.matches("template on local: up to date").count(),
        1,
        "{said}"
    );

    let client = superuser(&db).await;
    // The highest version applied (numbers may have gaps: V8 and V9 were made in parallel branches).
    let history: i64 = client
        .query_one(
            "SELECT max(version)::int8 FROM mandant_control_migrations",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, mandant::control::migrate::latest_version() as i64);
    let masters: i64 = client
        .query_one("SELECT count(*) FROM clients WHERE kind = 'master'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(masters, 1);
    drop(client);
    let admin = superuser("postgres").await;
    let is_template: bool = admin
        .query_one(
            "SELECT datistemplate FROM pg_database WHERE datname = $1",
            &[&template],
        )
        .await
        .unwrap()
        .get(0);
    assert!(is_template);
    // One statement per call: DROP DATABASE refuses to run inside the implicit transaction of a batch.
    for sql in [
        format!("DROP DATABASE \"{db}\" WITH (FORCE)"),
        format!("ALTER DATABASE \"{template}\" IS_TEMPLATE false"),
        format!("DROP DATABASE \"{template}\""),
        format!("DROP ROLE \"{prefix}owner\""),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
}
