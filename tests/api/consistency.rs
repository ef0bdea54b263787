//! A client's state is the same everywhere at once: what the API has reported is what the data plane does, in
//! this process and in a second one on the same control plane. And the failure paths around it: an archive path
//! that cannot be written during a delete.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    error_code, next_id, role_can_login, spawn_app, spawn_app_with, spawn_app_without_workers,
    superuser,
};
use mandant::server::RunOptions;

/// Polls `GET /v1/clients/{slug}` until `status`, as a script or the console does.
async fn poll_status(app: &crate::helpers::TestApp, slug: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let client = app.client_json(slug).await;
        if client["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{slug} never became {status}: {client}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_data_call_right_after_the_api_reports_active_succeeds_for_several_clients_in_a_row() {
    let app = spawn_app().await;
    for i in 0..4 {
        let slug = format!("fresh-{}-{i}", next_id());
        app.create_client(&slug).await;
        // The polling itself passes the access check, which looks the client up while it is provisioning.
        poll_status(&app, &slug, "active").await;
        let created = app
            .post_json(
                &format!("/v1/clients/{slug}/recipients"),
                &json!({"email": format!("first{i}@example.org")}),
            )
            .await;
        assert_eq!(
            created.status(),
            StatusCode::CREATED,
            "{slug}: {}",
            created.text().await.unwrap_or_default()
        );
    }
}

#[tokio::test]
async fn a_second_process_refuses_a_suspended_client_on_the_first_request_after_the_suspension() {
    let first = spawn_app().await;
    let second = first.second_process(RunOptions::default()).await;
    let slug = format!("twoproc-{}", next_id());
    first.create_active_client(&slug).await;
    let recipients = format!("/v1/clients/{slug}/recipients");

    // The second process serves the client (its route cache and pool are warm).
    for _ in 0..3 {
        assert_eq!(second.get(&recipients).await.status(), StatusCode::OK);
    }
    let suspended = first.post(&format!("/v1/clients/{slug}/suspend")).await;
    assert_eq!(suspended.status(), StatusCode::OK);
    let refused = second.get(&recipients).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(refused).await, "client_not_active");

    // And back: the second process serves it on the first request after the resumption.
    let resumed = first.post(&format!("/v1/clients/{slug}/resume")).await;
    assert_eq!(resumed.status(), StatusCode::OK);
    let served = second.get(&recipients).await;
    assert_eq!(served.status(), StatusCode::OK);
    // A deletion through the second process is refused by the first at once: 409 while the deletion runs, or
    // 404 if a worker has already finished it (on a loaded CI machine the request can come that late); never
    // served.
    let deleted = second.delete(&format!("/v1/clients/{slug}")).await;
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let gone = first.get(&recipients).await;
    let status = gone.status();
    let body = gone.text().await.unwrap_or_default();
    assert!(
        (status == StatusCode::CONFLICT && body.contains("client_not_active"))
            || (status == StatusCode::NOT_FOUND && body.contains("not_found")),
        "{status}: {body}"
    );
    drop(second);
}

#[tokio::test]
async fn a_token_revoked_through_one_process_is_refused_by_the_other() {
    let first = spawn_app().await;
    let second = first.second_process(RunOptions::default()).await;
    let minted = first
        .post_json("/v1/users/admin/tokens", &json!({"name": "twoproc"}))
        .await;
    assert_eq!(minted.status(), StatusCode::CREATED);
    let minted: serde_json::Value = minted.json().await.unwrap();
    let token = minted["token"].as_str().unwrap().to_owned();
    let id = minted["id"].as_str().unwrap().to_owned();
    let with_token = crate::helpers::http_client(Some(&token));
    let me = second.url("/v1/me");
    // Cached by the second process.
    assert_eq!(
        with_token.get(&me).send().await.unwrap().status(),
        StatusCode::OK
    );
    let revoked = first.delete(&format!("/v1/users/admin/tokens/{id}")).await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = with_token.get(&me).send().await.unwrap().status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second process still accepts a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(second);
}

#[tokio::test]
async fn jobs_split_between_two_processes_and_each_client_is_provisioned_once_over_one_new_template_database()
 {
    let first = spawn_app().await;
    let second = first.second_process(RunOptions::default()).await;
    // No template database (any more): the two processes' provisionings race to create it (serialised by a lock).
    poll_status(&first, "master", "active").await;
    let template = &first.settings.tenants.template_db;
    let admin = superuser("postgres").await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{template}\" IS_TEMPLATE false; "
        ))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE \"{template}\" WITH (FORCE)"))
        .await
        .unwrap();
    first
        .control()
        .await
        .batch_execute("UPDATE db_servers SET template_version = 0")
        .await
        .unwrap();
    let mut slugs = Vec::new();
    for i in 0..8 {
        let slug = format!("split-{}-{i}", next_id());
        // Alternate the process that takes the request.
        let app = if i % 2 == 0 { &first } else { &second };
        app.create_client(&slug).await;
        slugs.push(slug);
    }
    for slug in &slugs {
        poll_status(&first, slug, "active").await;
    }
    let control = first.control().await;
    let row = control
        .query_one(
            "SELECT count(*), count(DISTINCT regexp_replace(j.locked_by, '/[^/]*$', '')), max(j.attempts)
             FROM jobs j JOIN clients c ON c.id = j.client_id
             WHERE j.kind = 'provision_client' AND j.status = 'succeeded' AND c.kind = 'sub'",
            &[],
        )
        .await
        .unwrap();
    let (jobs, slots, attempts): (i64, i64, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(jobs, 8, "eight clients, each provisioned once");
    assert_eq!(attempts, 1);
    let claimers: Vec<String> = control
        .query("SELECT DISTINCT locked_by FROM jobs", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect();
    assert_eq!(
        slots, 2,
        "two processes, two worker slots of one identity: {claimers:?}"
    );
    drop(second);
}

#[tokio::test]
async fn an_unwritable_archive_path_fails_the_delete_with_a_clear_error_and_keeps_the_database() {
    // Unique per run too: ids restart with every test process, and a retried delete job of an earlier run may
    // have left a directory at its path.
    let blocker = std::env::temp_dir().join(format!(
        "mandant-archive-file-{}-{}",
        std::process::id(),
        next_id()
    ));
    std::fs::write(&blocker, b"not a directory").unwrap();
    let app = spawn_app_with(&[(
        "MANDANT__TENANTS__ARCHIVE_DIR",
        blocker.display().to_string(),
    )])
    .await;
    let slug = format!("noarchive-{}", next_id());
    let client = app.create_active_client(&slug).await;
    let id = client["id"].as_str().unwrap().to_owned();
    let database = app
        .state
        .targets()
        .names(uuid::Uuid::parse_str(&id).unwrap())
        .database;
    let deleting = app
        .delete(&format!("/v1/clients/{slug}?archive=true"))
        .await;
    assert_eq!(deleting.status(), StatusCode::ACCEPTED);
    let operation = deleting.json::<serde_json::Value>().await.unwrap()["operation"]
        .as_str()
        .unwrap()
        .to_owned();
    // It fails, says why, and is retried.
    let deadline = Instant::now() + Duration::from_secs(60);
    let op = loop {
        let op: serde_json::Value = app
            .get(&format!("/v1/operations/{operation}"))
            .await
            .json()
            .await
            .unwrap();
        if op["attempts"].as_i64().unwrap_or(0) >= 2 && op["last_error"].is_string() {
            break op;
        }
        assert!(
            Instant::now() < deadline,
            "the delete was not retried: {op}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = op["last_error"].as_str().unwrap();
    assert!(error.contains("archiving failed"), "{error}");
    assert_ne!(op["status"], "succeeded");
    // The database is never dropped without its archive.
    let admin = superuser("postgres").await;
    let exists: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&database],
        )
        .await
        .unwrap()
        .get(0);
    assert!(exists, "the database was dropped without its archive");
    assert_eq!(app.client_json(&slug).await["status"], "deleting");
    let _ = std::fs::remove_file(&blocker);
}

/// Requests `path` in a loop until stopped; returns the statuses seen (load during a fault).
fn load(
    app: &crate::helpers::TestApp,
    path: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Vec<u16>>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let (client, url) = (app.client.clone(), app.url(path));
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        while stopped.try_recv().is_err() {
            if let Ok(response) = client.get(&url).send().await {
                seen.push(response.status().as_u16());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    });
    (stop, task)
}

/// A second, test-only database server with its own cluster (it can restart without the control plane), and an
/// active client placed on it. Returns the cluster's directory, spec, cluster, server id and the client's slug.
async fn client_on_another_server(
    app: &crate::helpers::TestApp,
    prefix: &str,
) -> (
    crate::helpers::TestDir,
    mandant::embedded::ClusterSpec,
    mandant::embedded::Cluster,
    i64,
    String,
) {
    let dir = crate::helpers::TestDir::new("tenant-srv");
    let spec = crate::helpers::throwaway_spec(dir.path());
    let server = mandant::embedded::Cluster::start(&spec).unwrap();
    let url = server.target("postgres").to_url().expose().to_owned();
    // The master placed first (on local, 1 of 2000), so the empty server registered next has the lower usage.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while app.client_json("master").await["status"] != "active" {
        assert!(
            std::time::Instant::now() < deadline,
            "the master never became active"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let server_id: i64 = app
        .control()
        .await
        .query_one(
            "INSERT INTO db_servers (name, admin_url, max_databases) VALUES ('other', $1, 100000) RETURNING id",
            &[&url],
        )
        .await
        .unwrap()
        .get(0);
    let slug = format!("{prefix}-{}", next_id());
    app.create_active_client(&slug).await;
    let placed: i64 = app
        .control()
        .await
        .query_one("SELECT server_id FROM clients WHERE slug = $1", &[&slug])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        placed, server_id,
        "placement picks the server with the lowest usage"
    );
    (dir, spec, server, server_id, slug)
}

#[tokio::test]
async fn suspend_and_resume_answer_while_the_tenant_server_is_down_and_the_role_follows_when_it_is_back()
 {
    let app = spawn_app().await;
    let (_dir, spec, server, _, slug) = client_on_another_server(&app, "downsusp").await;
    let path = format!("/v1/clients/{slug}/recipients");
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);
    let server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.stop();
        server
    })
    .await
    .unwrap();
    // The role cannot be changed now: the calls answer anyway (bounded), with the status they committed.
    let suspended = app.post(&format!("/v1/clients/{slug}/suspend")).await;
    assert_eq!(suspended.status(), StatusCode::OK);
    assert_eq!(app.client_json(&slug).await["status"], "suspended");
    let refused = app.get(&path).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let restarted = tokio::task::spawn_blocking(move || mandant::embedded::Cluster::start(&spec))
        .await
        .unwrap()
        .unwrap();
    drop(server);
    // The queued access job applies the suspension once the server is back: the role cannot log in.
    let role = {
        let id = app.client_json(&slug).await["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        app.state.targets().names(id).role
    };
    let admin = restarted.target("postgres").connect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let can: bool = admin
            .query_one(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        if !can {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the suspension never reached the role"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = app.post(&format!("/v1/clients/{slug}/resume")).await;
    assert_eq!(resumed.status(), StatusCode::OK);
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_tenant_server_restarted_under_load_fails_fast_with_503_and_serves_again_without_leaking_permits()
 {
    let app = spawn_app().await;
    let (_dir, spec, mut server, server_id, slug) =
        client_on_another_server(&app, "restarted").await;
    let path = format!("/v1/clients/{slug}/recipients");
    let (stop, task) = load(&app, &path);
    tokio::time::sleep(Duration::from_millis(200)).await;

    tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    // During the outage: a clear 503 with Retry-After, fast (the breaker), never a hang or a 500.
    for _ in 0..5 {
        let down = app.get(&path).await;
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(down.headers().contains_key("retry-after"));
        assert_eq!(error_code(down).await, "tenant_unavailable");
    }
    let spec_again = spec.clone();
    let restarted =
        tokio::task::spawn_blocking(move || mandant::embedded::Cluster::start(&spec_again))
            .await
            .unwrap()
            .unwrap();
    // Served again once the breaker's window has passed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if app.get(&path).await.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tenant was not served again after its server came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    let seen = task.await.unwrap();
    assert!(seen.iter().all(|s| matches!(s, 200 | 503)), "{seen:?}");
    assert!(seen.contains(&200));
    // No leaked permits: with the load gone, every permit in use belongs to a live pooled connection.
    let budget = app
        .state
        .pools()
        .budget(server_id)
        .expect("budget of the server");
    assert!(
        budget.in_use <= app.settings.routing.per_tenant_cap,
        "{budget:?}"
    );
    app.state.pools().close_tenant(
        app.state
            .data()
            .client(&mandant::domain::ClientSlug::parse(&slug).unwrap())
            .await
            .unwrap()
            .id,
    );
    let budget = app
        .state
        .pools()
        .budget(server_id)
        .expect("budget of the server");
    assert_eq!(budget.in_use, 0, "{budget:?}");
    drop(restarted);
}

#[tokio::test]
async fn the_control_plane_restarted_under_load_answers_503_and_recovers_by_itself_losing_no_job() {
    // The control plane (and the local tenant server) on a cluster of its own, so it can restart.
    let dir = crate::helpers::TestDir::new("ctl-srv");
    let spec = crate::helpers::throwaway_spec(dir.path());
    let cluster = mandant::embedded::Cluster::start(&spec).unwrap();
    let url = cluster.target("mandant_ctl").to_url().expose().to_owned();
    let app = spawn_app_with(&[("MANDANT__DATABASE__URL", url)]).await;
    let slug = format!("before-{}", next_id());
    app.create_active_client(&slug).await;
    let (stop, task) = load(&app, &format!("/v1/clients/{slug}"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.stop();
        cluster
    })
    .await
    .unwrap();
    let down = app.get(&format!("/v1/clients/{slug}")).await;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(down.headers().contains_key("retry-after"));
    assert_eq!(error_code(down).await, "control_plane_unavailable");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    let spec_again = spec.clone();
    let restarted =
        tokio::task::spawn_blocking(move || mandant::embedded::Cluster::start(&spec_again))
            .await
            .unwrap()
            .unwrap();
    drop(cluster);
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.get("/readyz").await.status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "/readyz never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    let seen = task.await.unwrap();
    assert!(seen.iter().all(|s| matches!(s, 200 | 503)), "{seen:?}");

    // Workers and listeners reconnected by themselves: a new client is provisioned, and served at once.
    let after = format!("after-{}", next_id());
    app.create_client(&after).await;
    poll_status(&app, &after, "active").await;
    let created = app
        .post_json(
            &format!("/v1/clients/{after}/recipients"),
            &json!({"email": "back@example.org"}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    // No job lost or run twice: every provisioning succeeded, once per client.
    let control = restarted.target("mandant_ctl").connect().await.unwrap();
    let row = control
        .query_one(
            "SELECT count(*) FILTER (WHERE j.status = 'succeeded'), count(DISTINCT j.client_id), count(*)
             FROM jobs j JOIN clients c ON c.id = j.client_id
             WHERE j.kind = 'provision_client' AND c.kind = 'sub'",
            &[],
        )
        .await
        .unwrap();
    let (succeeded, clients, jobs): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((succeeded, clients, jobs), (2, 2, 2));
    drop(app);
    drop(restarted);
}

#[tokio::test]
async fn a_route_resolved_by_the_access_check_is_not_used_once_the_client_was_suspended_after_it() {
    let app = spawn_app().await;
    let slug = format!("resolved-{}", next_id());
    app.create_active_client(&slug).await;
    let data = app.state.data();
    let parsed = mandant::domain::ClientSlug::parse(&slug).expect("slug");
    let use_ = mandant::tenant::pool::Use::Request;

    // Nothing changed since the check: the route it found serves, to the client's own database.
    let resolved = data.resolve(&parsed).await.expect("resolve");
    let (client, conn) = data
        .connect_resolved(&resolved, use_, false)
        .await
        .expect("connect");
    assert_eq!(client.id, resolved.client().id);
    let database: String = conn
        .client()
        .query_one("SELECT current_database()", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(Some(database), client.db_name.clone());
    drop(conn);

    // Checked, then suspended before the handler connects: refused, as a request arriving after the suspension.
    let resolved = data.resolve(&parsed).await.expect("resolve");
    let suspended = app.post(&format!("/v1/clients/{slug}/suspend")).await;
    assert_eq!(suspended.status(), StatusCode::OK);
    let refused = data.connect_resolved(&resolved, use_, false).await;
    assert!(
        matches!(
            refused,
            Err(mandant::data::DataError::ClientNotActive(
                mandant::domain::ClientStatus::Suspended
            ))
        ),
        "{:?}",
        refused.map(|(c, _)| c.slug.clone())
    );

    // A resolution from before the resumption still finds the client active again (looked up afresh).
    let stale = resolved;
    let resumed = app.post(&format!("/v1/clients/{slug}/resume")).await;
    assert_eq!(resumed.status(), StatusCode::OK);
    let (client, _conn) = data
        .connect_resolved(&stale, use_, false)
        .await
        .expect("connect after the resumption");
    assert_eq!(client.status, mandant::domain::ClientStatus::Active);
}

#[tokio::test]
async fn a_route_resolved_before_a_moves_freeze_waits_for_the_switch_and_gives_up_with_moving() {
    let app = spawn_app_with(&[("MANDANT__TENANTS__MOVE_FREEZE_WAIT_MS", "300".to_owned())]).await;
    let slug = format!("frozen-{}", next_id());
    app.create_active_client(&slug).await;
    let id = app.client_id(&slug).await;
    let data = app.state.data();
    let parsed = mandant::domain::ClientSlug::parse(&slug).expect("slug");
    let use_ = mandant::tenant::pool::Use::Request;

    // Checked, then a move's freeze begins before the handler connects.
    let resolved = data.resolve(&parsed).await.expect("resolve");
    app.state
        .control()
        .set_frozen(id, true)
        .await
        .expect("freeze");
    // Once this process has heard of the freeze (the clients channel), as a request arriving now would see it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data.client(&parsed).await.expect("client").frozen {
        assert!(
            Instant::now() < deadline,
            "the freeze never reached the data plane"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = data.connect_resolved(&resolved, use_, false).await;
    assert!(
        matches!(waited, Err(mandant::data::DataError::Moving)),
        "{:?}",
        waited.map(|(c, _)| c.slug.clone())
    );

    // The freeze ends: the same resolution connects again.
    app.state
        .control()
        .set_frozen(id, false)
        .await
        .expect("unfreeze");
    let deadline = Instant::now() + Duration::from_secs(30);
    while data.client(&parsed).await.expect("client").frozen {
        assert!(
            Instant::now() < deadline,
            "the end of the freeze never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (client, _conn) = data
        .connect_resolved(&resolved, use_, false)
        .await
        .expect("connect after the freeze");
    assert_eq!(client.id, id);
}

/// Connects by `resolved`, a resolution from before another process changed the client, every 10 ms until this
/// process refuses it as `refused` says (once its clients listener has delivered the other process's notification;
/// bounded), then a few more times: from the first refusal on, the stale resolution never connects again.
async fn refused_from_the_notification_on(
    data: &mandant::data::DataPlane,
    resolved: &mandant::data::Resolved,
    refused: impl Fn(&mandant::data::DataError) -> bool,
) {
    let use_ = mandant::tenant::pool::Use::Request;
    let mut before = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match data.connect_resolved(resolved, use_, false).await {
            Err(e) if refused(&e) => break,
            outcome => {
                let seen = format!("{:?}", outcome.map(|(c, _)| c.slug.clone()));
                if !before.contains(&seen) {
                    before.push(seen);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the stale resolution was never refused; seen instead: {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let again = data.connect_resolved(resolved, use_, false).await;
        assert!(
            matches!(&again, Err(e) if refused(e)),
            "refused once, then: {:?}",
            again.map(|(c, _)| c.slug.clone())
        );
    }
}

/// A client's status as the control plane has it (by id: a deleted client's slug is free).
async fn control_status(app: &crate::helpers::TestApp, id: uuid::Uuid) -> String {
    app.control()
        .await
        .query_one(
            "SELECT status FROM clients WHERE id = $1::text::uuid",
            &[&id.to_string()],
        )
        .await
        .expect("client row")
        .get(0)
}

#[tokio::test]
async fn a_route_resolved_before_a_second_process_suspends_the_client_is_refused_once_the_notification_arrives_and_connects_again_once_resumed()
 {
    let first = spawn_app().await;
    let second = first.second_process(RunOptions::default()).await;
    let slug = format!("staletwo-{}", next_id());
    first.create_active_client(&slug).await;
    let id = first.client_id(&slug).await;
    let data = first.state.data();
    let parsed = mandant::domain::ClientSlug::parse(&slug).expect("slug");

    // Checked by the first process, then suspended through the second before the handler connects: only the
    // clients channel tells the first process.
    let resolved = data.resolve(&parsed).await.expect("resolve");
    let suspended = second.post(&format!("/v1/clients/{slug}/suspend")).await;
    assert_eq!(suspended.status(), StatusCode::OK);
    refused_from_the_notification_on(data, &resolved, |e| {
        matches!(
            e,
            mandant::data::DataError::ClientNotActive(mandant::domain::ClientStatus::Suspended)
        )
    })
    .await;
    assert_eq!(control_status(&first, id).await, "suspended");
    assert!(
        !role_can_login(&first.state.targets().names(id).role).await,
        "a suspended client's role may still log in"
    );

    // Resumed through the second process: the same stale resolution connects again, to the client's own
    // database (looked up afresh), once the first process has heard of it (bounded).
    let resumed = second.post(&format!("/v1/clients/{slug}/resume")).await;
    assert_eq!(resumed.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (client, conn) = loop {
        match data
            .connect_resolved(&resolved, mandant::tenant::pool::Use::Request, false)
            .await
        {
            Ok(connected) => break connected,
            Err(e) => assert!(
                Instant::now() < deadline,
                "never connected after the resumption: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(client.id, id);
    assert_eq!(client.status, mandant::domain::ClientStatus::Active);
    let database: String = conn
        .client()
        .query_one("SELECT current_database()", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(database, first.state.targets().names(id).database);
    assert_eq!(Some(database), client.db_name.clone());
    drop(conn);
    drop(second);
}

#[tokio::test]
async fn a_route_resolved_before_a_second_process_deletes_the_client_is_refused_while_it_is_deleting_and_once_it_is_gone()
 {
    // No workers in either process: the deletion job runs when the test says, so both stages are seen.
    let first = spawn_app_without_workers().await;
    let runner = first.runner("w1");
    let second = first.second_process(RunOptions { no_workers: true }).await;
    let slug = format!("stalegone-{}", next_id());
    first.create_client(&slug).await;
    first.drain(&runner).await;
    let id = first.client_id(&slug).await;
    assert_eq!(control_status(&first, id).await, "active");
    let database = first.state.targets().names(id).database;
    let data = first.state.data();
    let parsed = mandant::domain::ClientSlug::parse(&slug).expect("slug");

    // Checked by the first process, then deleted through the second before the handler connects.
    let resolved = data.resolve(&parsed).await.expect("resolve");
    let deleting = second.delete(&format!("/v1/clients/{slug}")).await;
    assert_eq!(deleting.status(), StatusCode::ACCEPTED);
    refused_from_the_notification_on(data, &resolved, |e| {
        matches!(
            e,
            mandant::data::DataError::ClientNotActive(mandant::domain::ClientStatus::Deleting)
        )
    })
    .await;
    assert_eq!(control_status(&first, id).await, "deleting");
    let admin = superuser("postgres").await;
    let exists = "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)";
    let kept: bool = admin
        .query_one(exists, &[&database])
        .await
        .expect("database lookup")
        .get(0);
    assert!(kept, "the database is dropped by the job, not before");

    // The job drops the database and leaves a tombstone: the stale resolution finds no client at all.
    first.drain(&runner).await;
    assert_eq!(control_status(&first, id).await, "deleted");
    let kept: bool = admin
        .query_one(exists, &[&database])
        .await
        .expect("database lookup")
        .get(0);
    assert!(!kept, "the deletion job did not drop the database");
    refused_from_the_notification_on(data, &resolved, |e| {
        matches!(e, mandant::data::DataError::NotFound)
    })
    .await;
    drop(second);
}
