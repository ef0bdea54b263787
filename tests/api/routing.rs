//! The routing pool under a budget: the bound holds, cold tenants get served, broken tenants fail fast, nothing
//! leaks.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use mandant::data::recipients;
use mandant::tenant::pool::{PoolSettings, RouteError, TenantPools, TenantRoute, Use};

use crate::helpers::{TestApp, spawn_app_without_workers, superuser};

/// An app with `n` active tenants and their routes.
async fn tenants(n: usize) -> (TestApp, Vec<TenantRoute>) {
    let app = spawn_app_without_workers().await;
    for i in 0..n {
        app.create_client(&format!("r-{i:02}")).await;
    }
    app.drain(&app.runner("setup")).await;
    let mut routes = Vec::new();
    for i in 0..n {
        routes.push(app.route(&format!("r-{i:02}")).await);
    }
    (app, routes)
}

fn settings(budget: usize, cap: usize) -> PoolSettings {
    PoolSettings {
        budget_per_server: budget,
        per_tenant_cap: cap,
        acquire_timeout: Duration::from_secs(10),
        ..PoolSettings::default()
    }
}

/// An app whose tenants hold at most `cap` connections each.
pub(crate) async fn app_with_cap(cap: usize) -> TestApp {
    crate::helpers::spawn_app_with(&[("MANDANT__ROUTING__PER_TENANT_CAP", cap.to_string())]).await
}

/// Tenant connections on the cluster right now (their roles share the test's prefix).
async fn tenant_backends(app: &TestApp) -> i64 {
    let pattern = format!("{}%", app.settings.tenants.db_prefix.replace('_', "\\_"));
    superuser("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE $1",
            &[&pattern],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_cold_tenant_is_served_while_the_budget_is_full_of_other_tenants_idle_connections() {
    let (app, routes) = tenants(3).await;
    let router = TenantPools::new(settings(3, 2));
    {
        let a1 = router.acquire(&routes[0]).await.unwrap();
        let a2 = router.acquire(&routes[0]).await.unwrap();
        let b1 = router.acquire(&routes[1]).await.unwrap();
        for conn in [&a1, &a2, &b1] {
            conn.client().simple_query("SELECT 1").await.unwrap();
        }
    }
    let server = routes[0].server_id;
    assert_eq!(
        router.budget(server).unwrap().in_use,
        3,
        "all idle, all holding permits"
    );

    let cold = router.acquire(&routes[2]).await.unwrap();
    cold.client().simple_query("SELECT 1").await.unwrap();
    assert_eq!(router.budget(server).unwrap().in_use, 3);
    // A closed backend exits asynchronously: allow a moment before counting.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tenant_backends(&app).await > 3 {
        assert!(Instant::now() < deadline, "more backends than the budget");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_budget_is_never_exceeded_under_concurrent_load_over_many_tenants() {
    let (app, routes) = tenants(8).await;
    let budget = 4;
    let router = TenantPools::new(settings(budget, 2));
    let peak = Arc::new(AtomicI64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        let pattern = format!("{}%", app.settings.tenants.db_prefix.replace('_', "\\_"));
        tokio::spawn(async move {
            let admin = superuser("postgres").await;
            while !done.load(Ordering::Relaxed) {
                let n: i64 = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE $1 AND state IS NOT NULL",
                        &[&pattern],
                    )
                    .await
                    .unwrap()
                    .get(0);
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let router = router.clone();
        let routes = routes.clone();
        tasks.spawn(async move {
            for i in 0..25 {
                let route = &routes[(worker * 7 + i * 3) % routes.len()];
                let conn = router.acquire(route).await.expect("acquire");
                conn.client().simple_query("SELECT 1").await.expect("query");
                assert!(router.budget(route.server_id).unwrap().in_use <= budget);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    assert!(
        router.count_drift().is_empty(),
        "the policy's connection counts drifted from the pools'"
    );
    // Budget plus one: a closed backend may still be exiting when the next one starts (FACTS.md).
    assert!(
        peak.load(Ordering::Relaxed) <= budget as i64 + 1,
        "peak {} over budget {budget}",
        peak.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn a_tenant_whose_database_is_gone_fails_fast_and_others_are_unaffected_with_no_leaked_permits()
 {
    let (app, routes) = tenants(2).await;
    let router = TenantPools::new(settings(2, 2));
    let gone = routes[0].target.dbname().to_owned();
    superuser("postgres")
        .await
        .batch_execute(&format!("DROP DATABASE \"{gone}\" WITH (FORCE)"))
        .await
        .unwrap();
    let first = router.acquire(&routes[0]).await.unwrap_err();
    assert!(matches!(first, RouteError::DatabaseMissing), "{first:?}");
    let started = Instant::now();
    for _ in 0..100 {
        let again = router.acquire(&routes[0]).await.unwrap_err();
        assert!(matches!(again, RouteError::DatabaseMissing), "{again:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the breaker answers from memory"
    );
    let healthy = router.acquire(&routes[1]).await.unwrap();
    healthy.client().simple_query("SELECT 1").await.unwrap();
    drop(healthy);
    let budget = router.budget(routes[1].server_id).unwrap();
    assert_eq!(
        budget.in_use, 1,
        "only the healthy tenant's idle connection holds a permit"
    );
    assert!(
        router.count_drift().is_empty(),
        "failed connects leave the policy's counts in step with the pools'"
    );
    let _ = app;
}

#[tokio::test]
async fn waiting_requests_are_bounded_per_tenant_and_closing_a_tenant_frees_its_permits() {
    let (_app, routes) = tenants(1).await;
    let router = TenantPools::new(PoolSettings {
        max_waiters_per_tenant: 2,
        acquire_timeout: Duration::from_millis(300),
        ..settings(1, 1)
    });
    let held = router.acquire(&routes[0]).await.unwrap();
    let (a, b, c) = tokio::join!(
        router.acquire(&routes[0]),
        router.acquire(&routes[0]),
        router.acquire(&routes[0])
    );
    let outcomes = [a.err(), b.err(), c.err()];
    assert!(
        outcomes.iter().any(|e| matches!(e, Some(RouteError::Busy))),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|e| matches!(e, Some(RouteError::Timeout))),
        "{outcomes:?}"
    );
    drop(held);
    assert_eq!(router.budget(routes[0].server_id).unwrap().in_use, 1);
    router.close_tenant(routes[0].client_id);
    assert_eq!(router.budget(routes[0].server_id).unwrap().in_use, 0);
    // The tenant can be used again afterwards.
    let again = router.acquire(&routes[0]).await.unwrap();
    again.client().simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn suspending_or_deleting_a_client_closes_its_connections_and_metrics_show_the_budget() {
    let (app, routes) = tenants(2).await;
    let router = app.state.pools();
    let server = routes[0].server_id;
    let server_name = routes[0].server.clone();
    for route in &routes {
        let conn = router.acquire(route).await.unwrap();
        conn.client().simple_query("SELECT 1").await.unwrap();
    }
    assert_eq!(router.budget(server).unwrap().in_use, 2);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "tenant_pool_budget_in_use{{server=\"{server_name}\"}} 2"
        )),
        "{metrics}"
    );
    for name in [
        "tenant_pool_connects_total",
        "tenant_pool_acquires_total{result=\"cold\"}",
        "tenant_pool_acquire_seconds_bucket",
        "tenant_pool_warm_hit_ratio",
        "tenant_pool_tenant_cap",
        "tenant_pool_connections{state=\"idle\"}",
        "tenant_pool_breakers_open",
    ] {
        assert!(metrics.contains(name), "{name} missing: {metrics}");
    }

    assert!(
        app.post("/v1/clients/r-00/suspend")
            .await
            .status()
            .is_success()
    );
    assert_eq!(
        router.budget(server).unwrap().in_use,
        1,
        "the suspended tenant's connection is closed"
    );
    assert_eq!(
        app.delete("/v1/clients/r-01").await.status(),
        reqwest::StatusCode::ACCEPTED
    );
    assert_eq!(
        router.budget(server).unwrap().in_use,
        0,
        "the deleted tenant's connection is closed"
    );
}

#[tokio::test]
async fn under_pressure_tenant_caps_drop_to_a_fair_share_and_grow_back_when_it_passes() {
    let (_app, routes) = tenants(4).await;
    let router = TenantPools::new(PoolSettings {
        fair_share_hold: Duration::ZERO,
        ..settings(4, 4)
    });
    let server = routes[0].server_id;
    // One hot tenant fills the whole budget.
    {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(router.acquire(&routes[0]).await.unwrap());
        }
    }
    assert_eq!(router.tenant_cap(server), 4);
    assert_eq!((router.stats().warm, router.stats().cold), (0, 4));

    // A cold tenant arrives: caps drop to budget / (holders + 1) = 2; the hot tenant's idle surplus is closed,
    // which makes room without evicting anyone.
    let b = router.acquire(&routes[1]).await.unwrap();
    assert_eq!(router.tenant_cap(server), 2);
    let c = router.acquire(&routes[2]).await.unwrap();
    assert_eq!(router.tenant_cap(server), 2, "room was left: no pressure");
    // The budget is full again (2 + 1 + 1): the next cold tenant brings the share to 4 / 4 = 1.
    let d = router.acquire(&routes[3]).await.unwrap();
    assert_eq!(router.tenant_cap(server), 1);
    assert_eq!(router.stats().evictions, 0);
    assert_eq!(router.budget(server).unwrap().in_use, 4);
    drop((b, c, d));
    // Every tenant is served from the connection it kept: warm hits.
    for route in &routes {
        drop(router.acquire(route).await.unwrap());
    }
    assert_eq!(router.stats().warm, 4);
    assert_eq!(router.budget(server).unwrap().in_use, 4);

    // No more pressure: each garbage-collection pass doubles the caps back to the configured one.
    router.collect_garbage();
    assert_eq!(router.tenant_cap(server), 2);
    router.collect_garbage();
    assert_eq!(router.tenant_cap(server), 4);
    router.collect_garbage();
    assert_eq!(router.tenant_cap(server), 4);
}

#[tokio::test]
async fn a_lowered_cap_is_taken_back_from_connections_in_use_as_they_return() {
    let (_app, routes) = tenants(2).await;
    let router = TenantPools::new(PoolSettings {
        acquire_timeout: Duration::from_millis(500),
        ..settings(2, 4)
    });
    let server = routes[0].server_id;
    // A holds the whole budget, both connections busy.
    let a1 = router.acquire(&routes[0]).await.unwrap();
    let a2 = router.acquire(&routes[0]).await.unwrap();
    // B arrives with nothing idle to evict: the cap drops to 1 and B waits for a connection of A to come back.
    let waiting_b = {
        let (router, route) = (router.clone(), routes[1].clone());
        tokio::spawn(async move { router.acquire(&route).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(router.tenant_cap(server), 1);
    drop(a1);
    let b = waiting_b
        .await
        .unwrap()
        .expect("B is served once A returns one");
    assert!(router.budget(server).unwrap().in_use <= 2);
    drop(a2);
    // A is back to one connection at a time: a second one waits for the first (and here times out).
    let a = router.acquire(&routes[0]).await.unwrap();
    assert!(matches!(
        router.acquire(&routes[0]).await,
        Err(RouteError::Timeout)
    ));
    drop((a, b));
    drop(router.acquire(&routes[0]).await.unwrap());
}

/// Tenants the pool sees as distinct (their own client ids) that share the real databases of `routes`: enough
/// tenants for an adversarial pattern without creating hundreds of databases.
fn stand_ins(routes: &[TenantRoute], n: usize) -> Vec<TenantRoute> {
    (0..n)
        .map(|i| TenantRoute {
            client_id: uuid::Uuid::new_v4(),
            ..routes[i % routes.len()].clone()
        })
        .collect()
}

/// Ten hot tenants busy in a loop while 500 cold tenants are acquired four at a time, as requests or as a scan.
async fn hot_tenants_under_a_scan_of_cold_ones(usage: Use) {
    let (_app, routes) = tenants(3).await;
    let budget = 16;
    let router = TenantPools::new(PoolSettings {
        budget_per_server: budget,
        per_tenant_cap: 1,
        scan_share: 2,
        acquire_timeout: Duration::from_secs(5),
        ..PoolSettings::default()
    });
    let server = routes[0].server_id;
    let hot = stand_ins(&routes, 10);
    let cold = stand_ins(&routes, 500);
    // The hot tenants earn their frequency first.
    for _ in 0..30 {
        for route in &hot {
            let conn = router.acquire(route).await.expect("hot acquire");
            conn.client().simple_query("SELECT 1").await.expect("query");
        }
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hot_tasks = tokio::task::JoinSet::new();
    for route in hot.clone() {
        let (router, stop) = (router.clone(), stop.clone());
        hot_tasks.spawn(async move {
            let mut backends = std::collections::HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let conn = router.acquire(&route).await.expect("hot acquire");
                backends.insert(backend_pid(&conn).await);
                assert!(router.budget(route.server_id).unwrap().in_use <= budget);
                drop(conn);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            backends
        });
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(4));
    let mut cold_tasks = tokio::task::JoinSet::new();
    for route in cold {
        let (router, gate) = (router.clone(), gate.clone());
        let permit = gate.acquire_owned().await.unwrap();
        cold_tasks.spawn(async move {
            let _permit = permit;
            // Served, not refused: an error here is a timeout of the acquire deadline.
            let conn = router.acquire_for(&route, usage).await?;
            conn.client().simple_query("SELECT 1").await.expect("query");
            assert!(router.budget(route.server_id).unwrap().in_use <= budget);
            Ok::<_, RouteError>(())
        });
    }
    let mut served = 0;
    while let Some(joined) = cold_tasks.join_next().await {
        joined
            .unwrap()
            .expect("every cold tenant is served within the acquire deadline");
        served += 1;
    }
    assert_eq!(served, 500);
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = hot_tasks.join_next().await {
        let backends = joined.unwrap();
        assert_eq!(
            backends.len(),
            1,
            "a hot tenant lost its connection to the cold ones: {backends:?}"
        );
    }
    for route in &hot {
        assert_eq!(router.connections(route.client_id), 1);
    }
    assert!(router.budget(server).unwrap().in_use <= budget);
    assert!(
        router.count_drift().is_empty(),
        "the policy's connection counts drifted from the pools'"
    );
    let [_, _, _, scan] = router.regions(server).unwrap();
    assert!(
        scan <= 2,
        "the scan region holds {scan} tenants, over its share"
    );
}

#[tokio::test]
async fn hot_tenants_keep_their_connections_while_500_cold_tenants_each_make_a_request() {
    hot_tenants_under_a_scan_of_cold_ones(Use::Request).await;
}

#[tokio::test]
async fn hot_tenants_keep_their_connections_while_a_scan_visits_500_cold_tenants() {
    hot_tenants_under_a_scan_of_cold_ones(Use::Scan).await;
}

#[tokio::test]
async fn garbage_collection_never_drops_the_pool_of_a_tenant_whose_request_waits_for_the_budget() {
    let (_app, routes) = tenants(2).await;
    let router = TenantPools::new(PoolSettings {
        budget_per_server: 1,
        per_tenant_cap: 1,
        // Every pool without connections counts as long unused: only a waiting request may keep it.
        pool_idle_drop: Duration::ZERO,
        acquire_timeout: Duration::from_secs(10),
        ..PoolSettings::default()
    });
    let held = router.acquire(&routes[0]).await.unwrap();
    let waiting = {
        let (router, route) = (router.clone(), routes[1].clone());
        tokio::spawn(async move { router.acquire(&route).await })
    };
    // The second tenant waits for the budget (the only connection is busy); collections run meanwhile.
    for _ in 0..20 {
        router.collect_garbage();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(held);
    let conn = waiting
        .await
        .unwrap()
        .expect("served once the budget frees up, not refused as closed");
    conn.client().simple_query("SELECT 1").await.unwrap();
    assert_eq!(
        router.connections(routes[1].client_id),
        1,
        "the connection belongs to a pool the router still knows (not one collected while it waited)"
    );
}

async fn backend_pid(conn: &mandant::tenant::pool::PooledConn) -> i32 {
    conn.client()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Polls until the server's budget has nothing in use (a closed connection frees its permit when it is dropped,
/// which for an abandoned one is after its cancel request was sent).
async fn until_budget_free(router: &TenantPools, server_id: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while router.budget(server_id).unwrap().in_use > 0 {
        assert!(Instant::now() < deadline, "the budget was never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn connections_abandoned_or_lost_inside_a_transaction_stop_counting_and_free_their_permits() {
    let (_app, routes) = tenants(1).await;
    let route = &routes[0];
    let router = TenantPools::new(settings(2, 2));

    // A query cut off by a deadline: the connection is abandoned (cancelled, closed), never returned.
    let conn = router.acquire(route).await.unwrap();
    let abandoned = backend_pid(&conn).await;
    conn.abandon();
    assert_eq!(
        router.connections(route.client_id),
        0,
        "out of the pool at once"
    );
    until_budget_free(&router, route.server_id).await;
    assert!(router.count_drift().is_empty(), "counts after an abandon");

    // A connection whose backend dies inside an inner client's transaction: its rollback fails, so it is
    // discarded instead of going back to the pool.
    let mut conn = router.acquire(route).await.unwrap();
    let lost = backend_pid(&conn).await;
    assert_ne!(lost, abandoned);
    conn.begin_scoped(1, false).unwrap();
    superuser("postgres")
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&lost])
        .await
        .unwrap();
    drop(conn);
    until_budget_free(&router, route.server_id).await;
    assert_eq!(router.connections(route.client_id), 0);
    assert!(
        router.count_drift().is_empty(),
        "counts after a failed rollback"
    );

    // The tenant is served again, on a new connection, and the counts follow it.
    let conn = router.acquire(route).await.unwrap();
    let fresh = backend_pid(&conn).await;
    assert!(fresh != lost && fresh != abandoned);
    drop(conn);
    assert_eq!(router.connections(route.client_id), 1);
    assert!(
        router.count_drift().is_empty(),
        "counts after a new connection returned"
    );
}

/// A tenant in the share whose next request waits for its connection keeps the connection for that request,
/// instead of closing it for the cold request waiting for the share and connecting again at the back of the queue:
/// the waiting request is served on the same backend, and the cold request gets the share as soon as the tenant
/// has nothing more waiting.
#[tokio::test]
async fn a_share_tenant_serves_its_own_waiting_request_on_its_connection_before_yielding_the_share()
{
    let (_app, routes) = tenants(2).await;
    let budget = 10;
    let router = TenantPools::new(settings(budget, 1));
    let server = routes[0].server_id;
    let stand_in = stand_ins(&routes, 11);
    let (hot, x, y) = (&stand_in[..9], stand_in[9].clone(), stand_in[10].clone());
    // Main (9 of the budget of 10) filled by tenants used far more often than the newcomers.
    for _ in 0..30 {
        for route in hot {
            let conn = router.acquire(route).await.unwrap();
            conn.client().simple_query("SELECT 1").await.unwrap();
        }
    }
    // X loses admission and takes the share's one slot.
    let first = router.acquire(&x).await.unwrap();
    let first_pid = backend_pid(&first).await;
    assert_eq!(router.connections(x.client_id), 1);
    // X's next request waits for X's connection (cap 1); Y, cold too, waits for the share.
    let second = {
        let (router, x) = (router.clone(), x.clone());
        tokio::spawn(async move { router.acquire(&x).await })
    };
    let third = {
        let (router, y) = (router.clone(), y.clone());
        tokio::spawn(async move { router.acquire(&y).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished() && !third.is_finished());
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("X's waiting request is served")
        .unwrap()
        .unwrap();
    assert_eq!(
        backend_pid(&second).await,
        first_pid,
        "served on the connection it waited for, not a new one"
    );
    // Y still waits while X's connection is out; it gets the share once X has nothing more waiting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!third.is_finished());
    drop(second);
    let third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the cold request is served once the share is free")
        .unwrap()
        .unwrap();
    backend_pid(&third).await;
    assert_eq!(router.connections(x.client_id), 0, "X yielded the share");
    assert!(router.budget(server).unwrap().in_use <= budget);
    for route in hot {
        assert_eq!(
            router.connections(route.client_id),
            1,
            "main kept its tenants"
        );
    }
}

/// Statements the connection holds prepared (`pg_prepared_statements` shows a session its own).
async fn prepared_on(conn: &mandant::tenant::pool::PooledConn) -> i64 {
    // Unnamed itself (a plain `query` would prepare a named statement and count it).
    conn.client()
        .query_typed("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()[0]
        .get(0)
}

/// One recipient in the tenant `r-00`; its id and a superuser connection to the tenant's database.
async fn one_recipient(app: &TestApp) -> (i64, deadpool_postgres::tokio_postgres::Client) {
    let owner = app.tenant_db("r-00").await;
    let id: i64 = owner
        .query_one(
            "INSERT INTO recipients (email) VALUES ('kept@example.org') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (id, owner)
}

#[tokio::test]
async fn a_recipient_read_keeps_its_statement_prepared_and_survives_columns_changed_or_statements_dropped_meanwhile()
 {
    let (app, routes) = tenants(1).await;
    let (id, owner) = one_recipient(&app).await;
    let router = TenantPools::new(settings(4, 1));
    let conn = router.acquire(&routes[0]).await.unwrap();
    // The first use runs unnamed; the second prepares the statement and keeps it.
    let found = recipients::get(&conn, id).await.unwrap();
    assert_eq!(found.email.as_deref(), Some("kept@example.org"));
    assert_eq!(prepared_on(&conn).await, 0, "nothing prepared on first use");
    for _ in 0..3 {
        let found = recipients::get(&conn, id).await.unwrap();
        assert_eq!(found.email.as_deref(), Some("kept@example.org"));
    }
    assert_eq!(
        prepared_on(&conn).await,
        1,
        "prepared once on the connection and kept"
    );

    // A field added on another connection (as the reconciler adds one) changes `r.*`: PostgreSQL refuses the kept
    // statement, which is prepared again, and the read sees the new column.
    owner
        .batch_execute("ALTER TABLE recipients ADD COLUMN probe_score text DEFAULT 'seven'")
        .await
        .unwrap();
    let widened = recipients::get(&conn, id).await.unwrap();
    assert_eq!(
        widened.fields.get("probe_score"),
        Some(&serde_json::json!("seven"))
    );
    owner
        .batch_execute("ALTER TABLE recipients DROP COLUMN probe_score")
        .await
        .unwrap();
    let narrowed = recipients::get(&conn, id).await.unwrap();
    assert!(!narrowed.fields.contains_key("probe_score"), "{narrowed:?}");

    // Dropped behind the cache's back: prepared again.
    conn.client().batch_execute("DEALLOCATE ALL").await.unwrap();
    for _ in 0..2 {
        assert_eq!(recipients::get(&conn, id).await.unwrap().id, id);
    }
    assert_eq!(prepared_on(&conn).await, 1);
    // A missing row is still a plain not-found.
    assert!(matches!(
        recipients::get(&conn, id + 1_000).await,
        Err(mandant::data::DataError::NotFound)
    ));
}

#[tokio::test]
async fn with_prepared_statements_off_reads_run_unnamed_and_the_connection_keeps_nothing() {
    let (app, routes) = tenants(1).await;
    let (id, _owner) = one_recipient(&app).await;
    let router = TenantPools::new(PoolSettings {
        prepared_statements: false,
        ..settings(4, 1)
    });
    let conn = router.acquire(&routes[0]).await.unwrap();
    for _ in 0..3 {
        assert_eq!(recipients::get(&conn, id).await.unwrap().id, id);
    }
    assert_eq!(prepared_on(&conn).await, 0);
}

#[tokio::test]
async fn inside_an_inner_clients_transaction_a_read_runs_unnamed_so_a_column_changed_meanwhile_cannot_abort_it()
 {
    let (app, routes) = tenants(1).await;
    let (id, owner) = one_recipient(&app).await;
    let router = TenantPools::new(settings(4, 1));
    let mut conn = router.acquire(&routes[0]).await.unwrap();
    for _ in 0..2 {
        recipients::get(&conn, id).await.unwrap();
    }
    assert_eq!(prepared_on(&conn).await, 1);
    owner
        .batch_execute("ALTER TABLE recipients ADD COLUMN probe_tag text DEFAULT 'new'")
        .await
        .unwrap();
    // The kept statement is stale now; run inside the request transaction an inner client's request opens, its
    // refusal would abort the transaction and the retry with it.
    conn.begin_scoped(1, true).unwrap();
    let inside = recipients::get(&conn, id).await.unwrap();
    assert_eq!(
        inside.fields.get("probe_tag"),
        Some(&serde_json::json!("new"))
    );
    conn.end_scoped(true).await.unwrap();
    // Outside it again, the kept statement is refused, forgotten and the read run once more.
    let after = recipients::get(&conn, id).await.unwrap();
    assert_eq!(
        after.fields.get("probe_tag"),
        Some(&serde_json::json!("new"))
    );
}

#[tokio::test]
async fn concurrent_reads_of_a_tenant_at_its_cap_share_its_connection_and_it_returns_when_the_last_read_is_done()
 {
    let (app, routes) = tenants(1).await;
    let route = &routes[0];
    let (id, _owner) = one_recipient(&app).await;
    let router = TenantPools::new(settings(4, 1));
    let first = router.acquire_shared(route).await.unwrap();
    // The tenant's one connection is out: a second read joins it at once instead of waiting for it.
    let second = tokio::time::timeout(Duration::from_secs(2), router.acquire_shared(route))
        .await
        .expect("a read joins the connection another read holds")
        .unwrap();
    assert_eq!(backend_pid(&first).await, backend_pid(&second).await);
    assert_eq!(router.stats().joined, 1);
    assert_eq!((router.stats().warm, router.stats().cold), (1, 1));
    // Both read at the same time on it (pipelined): one slow statement does not make the other fail.
    let slow = first
        .client()
        .query_typed("SELECT pg_sleep(0.2)::text", &[]);
    let (slept, found) = tokio::join!(slow, recipients::get(&*second, id));
    slept.unwrap();
    assert_eq!(found.unwrap().email.as_deref(), Some("kept@example.org"));
    assert_eq!(tenant_backends(&app).await, 1, "still one connection");

    // A request that needs the connection alone waits until the last read gave it back.
    let exclusive = tokio::spawn({
        let router = router.clone();
        let route = route.clone();
        async move { router.acquire(&route).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!exclusive.is_finished(), "taken while a read still held it");
    drop(second);
    tokio::time::timeout(Duration::from_secs(5), exclusive)
        .await
        .expect("served once the reads were done")
        .unwrap()
        .unwrap();
    assert_eq!(router.budget(route.server_id).unwrap().in_use, 1);
}

#[tokio::test]
async fn a_read_does_not_overtake_a_request_already_waiting_for_the_tenants_connection() {
    let (_app, routes) = tenants(1).await;
    let route = &routes[0];
    let router = TenantPools::new(settings(4, 1));
    let held = router.acquire_shared(route).await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let waiter = |name: &'static str, shared: bool| {
        let (router, route, order) = (router.clone(), route.clone(), order.clone());
        tokio::spawn(async move {
            let conn = if shared {
                router.acquire_shared(&route).await.map(|_| ())
            } else {
                router.acquire(&route).await.map(|_| ())
            };
            order.lock().unwrap().push(name);
            conn
        })
    };
    // A write waits at the tenant's gate; a read arriving after it queues behind it instead of joining.
    let write = waiter("write", false);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let read = waiter("read", true);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!read.is_finished(), "the read joined ahead of the write");
    drop(held);
    write.await.unwrap().unwrap();
    read.await.unwrap().unwrap();
    assert_eq!(*order.lock().unwrap(), ["write", "read"]);
    assert_eq!(router.stats().joined, 0);
}

#[tokio::test]
async fn a_shared_connection_takes_a_bounded_number_of_joins_and_none_with_shared_reads_off() {
    let (_app, routes) = tenants(1).await;
    let route = &routes[0];
    let router = TenantPools::new(settings(4, 1));
    let held = router.acquire_shared(route).await.unwrap();
    // However steady the reads, the connection goes back to its pool: after 64 joins, a read waits for it.
    for _ in 0..64 {
        drop(router.acquire_shared(route).await.unwrap());
    }
    assert_eq!(router.stats().joined, 64);
    let late = tokio::time::timeout(Duration::from_millis(300), router.acquire_shared(route)).await;
    assert!(late.is_err(), "joined past the bound");
    drop(held);
    let again = router.acquire_shared(route).await.unwrap();
    drop(again);

    let off = TenantPools::new(PoolSettings {
        shared_reads: false,
        ..settings(4, 1)
    });
    let held = off.acquire_shared(route).await.unwrap();
    let second = tokio::time::timeout(Duration::from_millis(300), off.acquire_shared(route)).await;
    assert!(second.is_err(), "shared with shared reads off");
    drop(held);
    assert_eq!(off.stats().joined, 0);
}

#[tokio::test]
async fn concurrent_reads_of_one_recipient_through_the_api_share_the_tenants_one_connection_and_all_answer()
 {
    let app = app_with_cap(1).await;
    app.create_active_client("gamma").await;
    let id = app
        .create_recipient(
            "gamma",
            &serde_json::json!({"email": "shared@example.org", "first_name": "Sam"}),
        )
        .await;
    let path = format!("/v1/clients/gamma/recipients/{id}");
    // Bursts of concurrent reads until some of them joined the connection another read held (each burst
    // makes that overwhelmingly likely; the loop makes the test independent of timing).
    for _ in 0..20 {
        let reads = (0..32).map(|_| async {
            crate::helpers::json_body(app.get(&path).await, reqwest::StatusCode::OK).await
        });
        for body in futures_util::future::join_all(reads).await {
            assert_eq!(body["email"], "shared@example.org");
            assert_eq!(body["first_name"], "Sam");
        }
        if app.state.data().pools().stats().joined > 0 {
            break;
        }
    }
    let stats = app.state.data().pools().stats();
    assert!(stats.joined > 0, "{stats:?}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("tenant_pool_shared_joins_total"),
        "{metrics}"
    );
    // Never more than the tenant's cap of connections.
    assert_eq!(
        app.state
            .data()
            .pools()
            .connections(app.client_id("gamma").await),
        1
    );
}

/// From the review of shared reads (session 21). Cap 2: a write holds one connection, a slow read the other. A
/// second read must not queue behind the slow statement (a read joins only its tenant's one connection): it waits
/// at the gate and is served on the write's connection when that comes back, 100 ms later, as without sharing.
#[tokio::test]
async fn a_read_does_not_join_a_connection_behind_a_slow_statement_when_the_tenant_has_another_to_wait_for()
 {
    let (_app, routes) = tenants(1).await;
    let route = routes[0].clone();
    for shared in [false, true] {
        let router = TenantPools::new(PoolSettings {
            shared_reads: shared,
            ..settings(4, 2)
        });
        let write = router.acquire(&route).await.unwrap();
        let slow_reader = router.acquire_shared(&route).await.unwrap();
        let slow = tokio::spawn({
            let conn = slow_reader.clone();
            async move {
                conn.client()
                    .query_typed("SELECT pg_sleep(3)::text", &[])
                    .await
                    .map(drop)
            }
        });
        drop(slow_reader);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let read = tokio::spawn({
            let (router, route) = (router.clone(), route.clone());
            async move {
                let conn = router.acquire_shared(&route).await.unwrap();
                conn.client().query_one("SELECT 1", &[]).await.unwrap();
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The tenant's other connection is back, idle.
        drop(write);
        read.await.unwrap();
        let took = started.elapsed();
        slow.await.unwrap().unwrap();
        assert!(
            took < Duration::from_millis(1500),
            "shared_reads={shared}: a one-row read took {took:?} (joined {}) although a connection of the tenant was \
             idle after 100 ms",
            router.stats().joined
        );
    }
}

/// From the review of shared reads, through the API. Cap 2, request timeout 4 s: a mailing-list read and a
/// target-group read each wait for a lock on their table (as behind a DDL or `VACUUM FULL`), holding the tenant's
/// two connections. A recipient read arriving then is served once the mailing-list lock goes and its connection
/// comes back, not queued behind the blocked target-group statement until the request times out (a 503 before).
#[tokio::test]
async fn a_recipient_read_is_served_on_the_connection_that_came_back_not_queued_behind_a_blocked_read()
 {
    let app = crate::helpers::spawn_app_with(&[
        ("MANDANT__ROUTING__PER_TENANT_CAP", "2".into()),
        ("MANDANT__SERVER__REQUEST_TIMEOUT_SECS", "4".into()),
    ])
    .await;
    app.create_active_client("hol").await;
    let id = app
        .create_recipient("hol", &serde_json::json!({"email": "hol@example.org"}))
        .await;
    let lists_lock = app.tenant_db("hol").await;
    let groups_lock = app.tenant_db("hol").await;
    lists_lock
        .batch_execute("BEGIN; LOCK TABLE mailing_lists IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    groups_lock
        .batch_execute("BEGIN; LOCK TABLE target_groups IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let app = std::sync::Arc::new(app);
    let get = |path: String| {
        let app = app.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let response = app.get(&path).await;
            (response.status(), started.elapsed())
        })
    };
    let lists = get("/v1/clients/hol/mailing-lists".into());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let groups = get("/v1/clients/hol/target-groups".into());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let recipient = get(format!("/v1/clients/hol/recipients/{id}"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The mailing-list read goes on; its connection is back in the pool.
    lists_lock.batch_execute("COMMIT").await.unwrap();
    let (lists_status, _) = lists.await.unwrap();
    assert_eq!(lists_status, reqwest::StatusCode::OK);
    let (status, took) = recipient.await.unwrap();
    groups_lock.batch_execute("COMMIT").await.unwrap();
    let _ = groups.await.unwrap();
    let joined = app.state.data().pools().stats().joined;
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "a recipient read, with the tenant's other connection idle since ~0.1 s, answered {status} after \
         {took:?} (joined {joined})"
    );
}

/// From the review of shared reads. A shared read that waited for its tenant's connection while another client's
/// cached route was invalidated (which moves the route cache's generation) keeps the connection it got, as
/// `connect_route` does unless the client itself was frozen by a move: one request, one checkout.
#[tokio::test]
async fn a_shared_read_keeps_its_connection_when_another_clients_route_was_invalidated_while_it_waited()
 {
    let app = app_with_cap(1).await;
    app.create_active_client("gen-a").await;
    app.create_active_client("gen-b").await;
    let slug = mandant::domain::ClientSlug::parse("gen-a").unwrap();
    let data = app.state.data();
    // The shared path is in use (the listener is up, the route is current): a second read joins the first.
    {
        let first = data
            .connect_shared(&data.resolve(&slug).await.unwrap())
            .await
            .unwrap();
        let second = data
            .connect_shared(&data.resolve(&slug).await.unwrap())
            .await
            .unwrap();
        assert_eq!(data.pools().stats().joined, 1);
        drop((first, second));
    }
    let resolved = data.resolve(&slug).await.unwrap();
    // The tenant's one connection, held by a request of its own (not shared).
    let (_, holder) = data.connect(&slug).await.unwrap();
    let before = data.pools().stats();
    let state = app.state.clone();
    let read = tokio::spawn(async move {
        let (_, conn) = state.data().connect_shared(&resolved).await.unwrap();
        drop(conn);
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another client's cached route is dropped (its status changed, an inner scope grew, ...).
    data.invalidate("gen-b");
    drop(holder);
    read.await.unwrap();
    let after = data.pools().stats();
    let checkouts = (after.warm + after.cold) - (before.warm + before.cold);
    assert_eq!(checkouts, 1, "one read, {checkouts} checkouts");
}

/// on one shared connection, a statement that fails (22012) and kept statements gone stale (a
/// column added, 0A000) do not affect the reads pipelined with them; each stale read reruns unnamed.
#[tokio::test]
async fn errors_and_stale_kept_statements_on_a_shared_connection_stay_with_their_own_read() {
    let (app, routes) = tenants(1).await;
    let route = routes[0].clone();
    let (id, owner) = one_recipient(&app).await;
    let router = TenantPools::new(settings(4, 1));
    let first = router.acquire_shared(&route).await.unwrap();
    for _ in 0..3 {
        recipients::get(&*first, id).await.unwrap();
    }
    let mut joined = vec![first];
    for _ in 0..6 {
        joined.push(router.acquire_shared(&route).await.unwrap());
    }
    assert_eq!(router.stats().joined, 6);
    owner
        .batch_execute("ALTER TABLE recipients ADD COLUMN review_extra text")
        .await
        .unwrap();
    let failing = joined[0].client().query_typed("SELECT (1/0)::text", &[]);
    let reads = joined.iter().map(|c| recipients::get(&**c, id));
    let (failed, found) = tokio::join!(failing, futures_util::future::join_all(reads));
    assert_eq!(
        failed.unwrap_err().code(),
        Some(&deadpool_postgres::tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    for r in found {
        let r = r.unwrap();
        assert_eq!(r.email.as_deref(), Some("kept@example.org"));
        assert!(r.fields.contains_key("review_extra"));
    }
}

/// a joined read dropped mid-statement (a client that hung up) leaves the other reads on the
/// connection unaffected, and the connection returns to the pool in order once the last holder is done.
#[tokio::test]
async fn a_joined_read_cancelled_mid_statement_does_not_disturb_the_others() {
    let (_app, routes) = tenants(1).await;
    let route = routes[0].clone();
    let router = TenantPools::new(settings(4, 1));
    let first = router.acquire_shared(&route).await.unwrap();
    let second = router.acquire_shared(&route).await.unwrap();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        second
            .client()
            .query_typed("SELECT pg_sleep(0.5)::text", &[]),
    )
    .await;
    assert!(cancelled.is_err());
    drop(second);
    let row = first
        .client()
        .query_one("SELECT 41 + 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    drop(first);
    let alone = router.acquire(&route).await.unwrap();
    let row = alone
        .client()
        .query_one("SELECT 'next'::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "next");
}

/// at a cap of one, concurrent reads of callers with and without the private-data right share the
/// tenant's connection; each answer is masked by its own caller's right (masking is applied per request, in Rust).
#[tokio::test]
async fn reads_sharing_a_connection_are_masked_by_their_own_callers_right() {
    use crate::access::{call, user};
    let app = app_with_cap(1).await;
    app.create_active_client("maskc").await;
    app.create_active_client("homec").await;
    let id = app
        .create_recipient(
            "maskc",
            &serde_json::json!({"email": "anna@example.org", "first_name": "Anna"}),
        )
        .await;
    let private = user(
        &app,
        "rv-private",
        "homec",
        &["client-admin"],
        &[("homec", "full", false), ("maskc", "read", true)],
    )
    .await;
    let plain = user(
        &app,
        "rv-plain",
        "homec",
        &["client-admin"],
        &[("homec", "full", false), ("maskc", "read", false)],
    )
    .await;
    let app = &app;
    for _ in 0..20 {
        let reads = (0..24).map(|i| {
            let (token, shown) = if i % 2 == 0 {
                (private.as_str(), true)
            } else {
                (plain.as_str(), false)
            };
            async move {
                let path = if i % 4 < 2 {
                    format!("/v1/clients/maskc/recipients/{id}")
                } else {
                    "/v1/clients/maskc/recipients".to_owned()
                };
                let (status, _, body) =
                    call(app, Some(token), reqwest::Method::GET, &path, None).await;
                assert_eq!(status, reqwest::StatusCode::OK, "{body}");
                let r = if body.get("items").is_some() {
                    body["items"][0].clone()
                } else {
                    body
                };
                if shown {
                    assert_eq!(r["email"], "anna@example.org", "{r}");
                } else {
                    assert_eq!(r["email"], serde_json::Value::Null, "{r}");
                    assert!(!r.to_string().contains("anna"), "{r}");
                }
            }
        });
        futures_util::future::join_all(reads).await;
        if app.state.data().pools().stats().joined > 0 {
            break;
        }
    }
    assert!(app.state.data().pools().stats().joined > 0, "never shared");
}

/// A tenant's backend ended while reads share its connection (a server restart, an administrator's
/// `pg_terminate_backend`): every read on it fails at once instead of hanging, no read joins the dead connection,
/// and once the reads let go the next one is served on a new connection.
#[tokio::test]
async fn reads_sharing_a_connection_whose_backend_dies_fail_at_once_and_the_next_read_gets_a_new_connection()
 {
    let (app, routes) = tenants(1).await;
    let route = &routes[0];
    let (id, owner) = one_recipient(&app).await;
    let router = TenantPools::new(settings(4, 1));
    let first = router.acquire_shared(route).await.unwrap();
    let second = router.acquire_shared(route).await.unwrap();
    assert_eq!(router.stats().joined, 1);
    let dead = backend_pid(&first).await;
    let slow = first.client().query_typed("SELECT pg_sleep(5)::text", &[]);
    let read = recipients::get(&*second, id);
    let kill = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        owner
            .query_one("SELECT pg_terminate_backend($1)", &[&dead])
            .await
            .unwrap();
    };
    let (slept, found, ()) = tokio::time::timeout(Duration::from_secs(4), async {
        tokio::join!(slow, read, kill)
    })
    .await
    .expect("the reads on the dead connection failed at once");
    assert!(slept.is_err());
    assert!(found.is_err(), "{found:?}");
    // Nothing joins the dead connection; a read waits for the tenant's connection instead (cap 1).
    let late = tokio::time::timeout(Duration::from_millis(300), router.acquire_shared(route)).await;
    assert!(late.is_err(), "joined a dead connection");
    drop((first, second));
    let next = router.acquire_shared(route).await.unwrap();
    assert_ne!(backend_pid(&next).await, dead);
    assert_eq!(recipients::get(&*next, id).await.unwrap().id, id);
    assert_eq!(router.stats().joined, 1);
}
