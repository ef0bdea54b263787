//! Provisioning as jobs: crash safety between any two steps, retries with backoff ending in `failed`,
//! idempotent re-runs, and several workers sharing one queue.

use std::collections::HashSet;

use mandant::provisioning::{Faults, Step};
use mandant::workers::Tick;

use mandant::server::RunOptions;

use crate::helpers::{TestDir, spawn_app_opts, spawn_app_without_workers, superuser};

/// A database's oid: a recreated database gets a new one.
async fn database_oid(name: &str) -> u32 {
    superuser("postgres")
        .await
        .query_one("SELECT oid FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .get(0)
}

async fn databases_with_prefix(prefix: &str) -> Vec<String> {
    let pattern = format!("{}%", prefix.replace('_', "\\_"));
    superuser("postgres")
        .await
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1",
            &[&pattern],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_worker_that_dies_after_any_step_is_finished_by_the_next_worker() {
    let app = spawn_app_without_workers().await;
    let healthy = app.runner("healthy");
    app.drain(&healthy).await; // the master
    for (i, step) in Step::ALL.into_iter().enumerate() {
        let slug = format!("crash-{i}");
        let created = app.create_client(&slug).await;
        let dying = app.runner("dying").with_faults(Faults {
            crash_after: Some(step),
            ..Faults::default()
        });
        let tick = dying.tick().await.unwrap();
        assert!(matches!(tick, Tick::Crashed { .. }), "{step:?}: {tick:?}");
        // The dead worker's lease runs out.
        app.expire_leases().await;
        let ticks = app.drain(&healthy).await;
        assert!(
            matches!(ticks.as_slice(), [Tick::Succeeded { .. }]),
            "{step:?}: {ticks:?}"
        );
        let client = app.client_json(&slug).await;
        assert_eq!(client["status"], "active", "{step:?}");
        let op = app
            .wait_for_operation(created["operation"].as_str().unwrap())
            .await;
        assert_eq!(op["attempts"], 2, "{step:?}: {op}");
    }
    // One database per client, nothing half-made left over.
    let prefix = &app.settings.tenants.db_prefix;
    assert_eq!(
        databases_with_prefix(prefix).await.len(),
        Step::ALL.len() + 1
    );
}

#[tokio::test]
async fn a_failing_step_is_retried_with_backoff_and_ends_failed_with_the_error() {
    let app = spawn_app_opts(
        &[("MANDANT__WORKERS__MAX_ATTEMPTS", "3".to_owned())],
        RunOptions { no_workers: true },
    )
    .await;
    app.drain(&app.runner("master")).await;
    let created = app
        .post_json(
            "/v1/clients",
            &serde_json::json!({"slug": "doomed", "name": "Doomed"}),
        )
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let op_id = created["operation"].as_str().unwrap().to_owned();
    let failing = app.runner("failing").with_faults(Faults {
        fail_at: Some(Step::Database),
        ..Faults::default()
    });

    let first = failing.tick().await.unwrap();
    assert!(matches!(first, Tick::Retrying { .. }), "{first:?}");
    let op = app.wait_for_operation_state(&op_id, "queued").await;
    assert!(
        op["last_error"]
            .as_str()
            .unwrap()
            .contains("injected failure at step database")
    );
    let waiting: bool = app
        .control()
        .await
        .query_one(
            "SELECT run_after > now() FROM jobs WHERE id = $1::text::uuid",
            &[&op_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(waiting, "a retry waits for its backoff");

    let mut last = first;
    for _ in 0..2 {
        app.control()
            .await
            .execute(
                "UPDATE jobs SET run_after = now() WHERE id = $1::text::uuid",
                &[&op_id],
            )
            .await
            .unwrap();
        last = failing.tick().await.unwrap();
    }
    assert!(matches!(last, Tick::Failed { .. }), "{last:?}");
    let op = app.wait_for_operation(&op_id).await;
    assert_eq!(op["status"], "failed");
    assert_eq!(op["attempts"], 3);
    assert!(op["last_error"].as_str().unwrap().contains("database"));
    let client: serde_json::Value = app.get("/v1/clients/doomed").await.json().await.unwrap();
    assert_eq!(client["status"], "failed");

    // A failed client can be deleted, which cleans up whatever the attempts made.
    assert_eq!(
        app.delete("/v1/clients/doomed").await.status(),
        reqwest::StatusCode::ACCEPTED
    );
    app.drain(&app.runner("cleaner")).await;
    assert_eq!(
        app.get("/v1/clients/doomed").await.status(),
        reqwest::StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn re_running_a_finished_provisioning_changes_nothing() {
    let app = spawn_app_without_workers().await;
    let runner = app.runner("w");
    app.create_client("stable").await;
    app.drain(&runner).await;
    let db = app.control().await;
    let before = db
        .query_one(
            "SELECT db_name, generation, schema_version, server_id FROM clients WHERE slug = 'stable'",
            &[],
        )
        .await
        .unwrap();
    let db_name: String = before.get(0);
    let oid_before = database_oid(&db_name).await;

    // Enqueue the finished job's work again, as a duplicate delivery would.
    db.execute(
        "INSERT INTO jobs (kind, client_id) SELECT 'provision_client', id FROM clients WHERE slug = 'stable'",
        &[],
    )
    .await
    .unwrap();
    let ticks = app.drain(&runner).await;
    assert!(
        matches!(ticks.as_slice(), [Tick::Succeeded { .. }]),
        "{ticks:?}"
    );

    let after = db
        .query_one(
            "SELECT db_name, generation, schema_version, server_id FROM clients WHERE slug = 'stable'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(before.get::<_, String>(0), after.get::<_, String>(0));
    assert_eq!(before.get::<_, i64>(1), after.get::<_, i64>(1));
    assert_eq!(before.get::<_, i32>(2), after.get::<_, i32>(2));
    let oid_after = database_oid(&db_name).await;
    assert_eq!(oid_before, oid_after, "the database must not be recreated");

    // Running every step again directly, on the active client, is a no-op too.
    let job = mandant::control::jobs::Job {
        id: uuid::Uuid::new_v4(),
        kind: mandant::control::jobs::JobKind::ProvisionClient,
        client_id: Some(
            app.state
                .control()
                .client_by_slug(&mandant::domain::ClientSlug::parse("stable").unwrap())
                .await
                .unwrap()
                .id,
        ),
        payload: serde_json::json!({}),
        step: None,
        attempt: 1,
        max_attempts: 1,
        locked_by: "nobody".into(),
    };
    app.state.provisioner().provision(&job).await.unwrap();
}

#[tokio::test]
async fn two_workers_and_twenty_queued_creations_provision_each_client_exactly_once() {
    let app = spawn_app_without_workers().await;
    let slugs: Vec<String> = (0..20).map(|i| format!("bulk-{i:02}")).collect();
    for slug in &slugs {
        app.create_client(slug).await;
    }
    let (a, b) = (app.runner("worker-a"), app.runner("worker-b"));
    let (ticks_a, ticks_b) = tokio::join!(app.drain(&a), app.drain(&b));
    let succeeded = ticks_a
        .iter()
        .chain(&ticks_b)
        .filter(|t| matches!(t, Tick::Succeeded { .. }))
        .count();
    assert_eq!(
        succeeded, 21,
        "20 clients and the master: {ticks_a:?} {ticks_b:?}"
    );
    assert!(
        !ticks_a.is_empty() && !ticks_b.is_empty(),
        "both workers took jobs"
    );

    let db = app.control().await;
    let rows = db
        .query(
            "SELECT c.status, j.attempts, j.status FROM clients c JOIN jobs j ON j.client_id = c.id
             WHERE c.slug LIKE 'bulk-%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 20);
    for row in rows {
        assert_eq!(row.get::<_, String>(0), "active");
        assert_eq!(row.get::<_, i32>(1), 1, "each job ran exactly once");
        assert_eq!(row.get::<_, String>(2), "succeeded");
    }
    let databases: HashSet<String> = databases_with_prefix(&app.settings.tenants.db_prefix)
        .await
        .into_iter()
        .collect();
    assert_eq!(databases.len(), 21);
}

#[tokio::test]
async fn deletion_requested_while_provisioning_waits_its_turn_and_leaves_nothing_behind() {
    let app = spawn_app_without_workers().await;
    let runner = app.runner("w");
    app.drain(&runner).await;
    let created = app.create_client("short-lived").await;
    let id = created["id"].as_str().unwrap().to_owned();
    // Provisioning dies half-way, with its lease still running.
    let dying = app.runner("dying").with_faults(Faults {
        crash_after: Some(Step::Database),
        ..Faults::default()
    });
    assert!(matches!(dying.tick().await.unwrap(), Tick::Crashed { .. }));
    assert_eq!(
        app.delete("/v1/clients/short-lived").await.status(),
        reqwest::StatusCode::ACCEPTED
    );
    // While the provisioning job holds its lease, the client's deletion does not start.
    assert_eq!(runner.tick().await.unwrap(), Tick::Idle);
    app.expire_leases().await;
    app.drain(&runner).await;
    let name = format!("{}{}", app.settings.tenants.db_prefix, id.replace('-', ""));
    let prefix_dbs = databases_with_prefix(&app.settings.tenants.db_prefix).await;
    assert!(!prefix_dbs.contains(&name), "{prefix_dbs:?}");
    let status: String = app
        .control()
        .await
        .query_one(
            "SELECT status FROM clients WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "deleted");
}

#[tokio::test]
async fn tenants_list_shows_every_client_with_status_server_database_and_schema_version() {
    let app = spawn_app_without_workers().await;
    let runner = app.runner("w");
    app.create_client("listed").await;
    app.drain(&runner).await;
    app.create_client("pending").await;
    let cwd = TestDir::new("list-cwd");
    let out = app
        .command(cwd.path())
        .args(["tenants", "list", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let by_slug = |slug: &str| rows.iter().find(|r| r["slug"] == slug).unwrap().clone();
    let listed = by_slug("listed");
    assert_eq!(listed["status"], "active");
    assert_eq!(listed["server"], "local");
    assert_eq!(
        listed["schema_version"],
        mandant::tenant::migrate::latest_version()
    );
    assert_eq!(listed["behind"], false);
    assert_eq!(by_slug("pending")["status"], "provisioning");
    assert_eq!(by_slug("master")["kind"], "master");

    let table = app
        .command(cwd.path())
        .args(["tenants", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("listed") && text.contains("SCHEMA"), "{text}");
}

#[tokio::test]
async fn a_client_finds_no_server_when_every_server_is_full_and_says_so() {
    let app = spawn_app_opts(
        &[("MANDANT__TENANTS__LOCAL_MAX_DATABASES", "1".to_owned())],
        RunOptions { no_workers: true },
    )
    .await;
    let runner = app.runner("w");
    app.drain(&runner).await; // the master takes the only place
    // Placement happens when the client is created: refused at once, nothing made.
    let response = app
        .post_json(
            "/v1/clients",
            &serde_json::json!({"slug": "no-room", "name": "No room"}),
        )
        .await;
    assert_eq!(response.status(), reqwest::StatusCode::CONFLICT);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_server_available");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("local is full (1 of 1 databases)"),
        "{message}"
    );
    assert_eq!(
        app.get("/v1/clients/no-room").await.status(),
        reqwest::StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_resume_while_the_suspend_job_runs_is_applied_after_it() {
    let app = spawn_app_without_workers().await;
    let runner = app.runner("w");
    let created = app.create_client("flip").await;
    app.drain(&runner).await;
    let role = format!(
        "{}{}",
        app.settings.tenants.db_prefix,
        created["id"].as_str().unwrap().replace('-', "")
    );
    assert!(
        app.post("/v1/clients/flip/suspend")
            .await
            .status()
            .is_success()
    );
    // A worker has claimed the suspension (and read "suspended") but not finished when the resume arrives.
    app.control()
        .await
        .batch_execute(
            "UPDATE jobs SET status = 'running', attempts = 1, locked_by = 'slow',
                    lease_until = now() + interval '1 hour'
             WHERE kind = 'sync_access' AND status = 'queued'",
        )
        .await
        .unwrap();
    assert!(
        app.post("/v1/clients/flip/resume")
            .await
            .status()
            .is_success()
    );
    let queued = app
        .control_i64("SELECT count(*) FROM jobs WHERE kind = 'sync_access' AND status = 'queued'")
        .await;
    assert_eq!(
        queued, 1,
        "the resume must queue its own job behind the running one"
    );
    // The slow worker applies its stale view and dies; its job is taken over, then the resume's job runs.
    superuser("postgres")
        .await
        .batch_execute(&format!("ALTER ROLE \"{role}\" NOLOGIN"))
        .await
        .unwrap();
    app.expire_leases().await;
    app.drain(&runner).await;
    let can_login = crate::helpers::role_can_login(&role).await;
    assert!(can_login, "the last change (resume) wins");
}

#[tokio::test]
async fn a_separate_worker_process_provisions_clients_and_stops_cleanly_on_sigterm() {
    let app = spawn_app_without_workers().await;
    let cwd = TestDir::new("worker-cwd");
    let mut worker = app
        .command(cwd.path())
        .arg("worker")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let created = app.create_client("by-worker").await;
    let op = app
        .wait_for_operation(created["operation"].as_str().unwrap())
        .await;
    assert_eq!(op["status"], "succeeded", "{op}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "worker did not stop");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_panicking_job_is_a_failed_attempt_and_the_worker_keeps_working() {
    let app = spawn_app_without_workers().await;
    app.drain(&app.runner("setup")).await;
    app.create_client("bug").await;
    let buggy = app.runner("buggy").with_faults(Faults {
        panic_at: Some(Step::Role),
        ..Faults::default()
    });
    match buggy.tick().await.unwrap() {
        Tick::Retrying { error, .. } => assert!(error.contains("panicked"), "{error}"),
        other => panic!("{other:?}"),
    }
    app.control()
        .await
        .batch_execute("UPDATE jobs SET run_after = now() WHERE status = 'queued'")
        .await
        .unwrap();
    let ticks = app.drain(&app.runner("fixed")).await;
    assert!(
        matches!(ticks.as_slice(), [Tick::Succeeded { .. }]),
        "{ticks:?}"
    );
}

#[tokio::test]
async fn a_job_whose_worker_died_on_its_last_attempt_is_failed_with_its_client() {
    let app = spawn_app_opts(
        &[("MANDANT__WORKERS__MAX_ATTEMPTS", "1".to_owned())],
        RunOptions { no_workers: true },
    )
    .await;
    app.drain(&app.runner("setup")).await;
    let created = app.create_client("last-try").await;
    let dying = app.runner("dying").with_faults(Faults {
        crash_after: Some(Step::Place),
        ..Faults::default()
    });
    assert!(matches!(dying.tick().await.unwrap(), Tick::Crashed { .. }));
    app.expire_leases().await;
    assert_eq!(app.runner("next").tick().await.unwrap(), Tick::Idle);
    let op = app
        .wait_for_operation(created["operation"].as_str().unwrap())
        .await;
    assert_eq!(op["status"], "failed");
    assert!(
        op["last_error"].as_str().unwrap().contains("lease expired"),
        "{op}"
    );
    let client: serde_json::Value = app.get("/v1/clients/last-try").await.json().await.unwrap();
    assert_eq!(client["status"], "failed");
}

#[tokio::test]
async fn a_failing_job_with_a_newer_one_queued_behind_it_is_superseded_not_requeued() {
    let app = spawn_app_without_workers().await;
    app.drain(&app.runner("setup")).await;
    app.create_client("twin").await;
    app.drain(&app.runner("setup")).await;
    assert!(
        app.post("/v1/clients/twin/suspend")
            .await
            .status()
            .is_success()
    );
    let lease = std::time::Duration::from_secs(60);
    let running = app
        .state
        .control()
        .claim_job("holder", lease)
        .await
        .unwrap()
        .expect("the suspension job");
    assert!(
        app.post("/v1/clients/twin/resume")
            .await
            .status()
            .is_success()
    );
    let after = app
        .state
        .control()
        .fail_job(&running, "transient", std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(after, mandant::control::jobs::AfterFailure::Superseded);
    // The resume's job still runs and leaves the role able to log in.
    let ticks = app.drain(&app.runner("w")).await;
    assert!(
        matches!(ticks.as_slice(), [Tick::Succeeded { .. }]),
        "{ticks:?}"
    );
}

#[tokio::test]
async fn a_failing_archive_keeps_the_database_and_the_deletion_retries() {
    // The archive directory cannot be created: its path is a regular file.
    let blocker = TestDir::new("archive-blocker");
    let file = blocker.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let app = spawn_app_opts(
        &[("MANDANT__TENANTS__ARCHIVE_DIR", file.display().to_string())],
        RunOptions { no_workers: true },
    )
    .await;
    let runner = app.runner("w");
    let created = app.create_client("keep-me").await;
    app.drain(&runner).await;
    let database = format!(
        "{}{}",
        app.settings.tenants.db_prefix,
        created["id"].as_str().unwrap().replace('-', "")
    );
    let deleting: serde_json::Value = app
        .delete("/v1/clients/keep-me?archive=true")
        .await
        .json()
        .await
        .unwrap();
    match runner.tick().await.unwrap() {
        Tick::Retrying { error, .. } => assert!(error.contains("archiving failed"), "{error}"),
        other => panic!("{other:?}"),
    }
    // No archive, no drop: the data is still there for the retry.
    assert!(
        databases_with_prefix(&app.settings.tenants.db_prefix)
            .await
            .contains(&database)
    );
    let op = app
        .wait_for_operation_state(deleting["operation"].as_str().unwrap(), "queued")
        .await;
    assert!(
        op["last_error"]
            .as_str()
            .unwrap()
            .contains("archiving failed"),
        "{op}"
    );
}
