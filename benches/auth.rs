//! `cargo bench --bench auth`: what authentication and the access check cost a request.
//!
//! The same data-plane request (`GET /v1/clients/{slug}/recipients/{id}`, 32 keep-alive clients, one tenant) on
//! two apps on one cluster, interleaved over BENCH_ROUNDS rounds:
//! - `cached`: the default (verified principals cached; dropped on every auth change by LISTEN/NOTIFY);
//! - `uncached` (baseline): `auth.cache_ttl_secs = 0`, a control-plane token lookup on every request, which is
//!   what an implementation without the cache does;
//! - `cached, client user`: a non-admin (client-admin role, access to the tenant) on the cached app.
//!
//! - writes (`PATCH` a recipient's gender): the full server (authentication, access check, the audit entry, in
//!   its own task) beside the same handler behind a stand-in for the check (baseline).
//!
//! And `Authenticator::authenticate` alone, in-process: a cache hit against a control-plane lookup.
//! Prints a table and writes benches/results/auth.json. Knobs: BENCH_CLIENTS (32), BENCH_SECS (5), BENCH_ROUNDS (3).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mandant::server::RunOptions;
use serde_json::json;

#[derive(Debug, Default, Clone)]
struct Run {
    requests: u64,
    errors: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[tokio::main]
async fn main() {
    let clients = common::env_usize("BENCH_CLIENTS", 32);
    let secs = common::env_usize("BENCH_SECS", 5) as u64;
    let rounds = common::env_usize("BENCH_ROUNDS", 3);
    let cluster = common::cluster("bench-auth");
    let cached = common::start_app(
        common::settings(
            &cluster,
            "bench_auth_cached",
            &[
                ("MANDANT__TENANTS__DB_PREFIX", "ba_c_"),
                ("MANDANT__TENANTS__TEMPLATE_DB", "ba_c_template"),
            ],
        ),
        RunOptions::default(),
    )
    .await;
    let uncached = common::start_app(
        common::settings(
            &cluster,
            "bench_auth_uncached",
            &[
                ("MANDANT__AUTH__CACHE_TTL_SECS", "0"),
                ("MANDANT__TENANTS__DB_PREFIX", "ba_u_"),
                ("MANDANT__TENANTS__TEMPLATE_DB", "ba_u_template"),
            ],
        ),
        RunOptions::default(),
    )
    .await;
    let admin = common::http();
    let slug = "shop".to_owned();
    for app in [&cached, &uncached] {
        common::create_clients(app, &admin, std::slice::from_ref(&slug)).await;
        let response = admin
            .post(format!("{}/v1/clients/{slug}/recipients", app.base))
            .json(&json!({"email": "anna@example.org", "first_name": "Anna"}))
            .send()
            .await
            .expect("recipient");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    }
    // A client user on the cached app.
    let post = |path: String, body: serde_json::Value| {
        let admin = admin.clone();
        async move {
            let response = admin.post(path).json(&body).send().await.expect("post");
            assert!(response.status().is_success(), "{}", response.status());
            response.json::<serde_json::Value>().await.expect("json")
        }
    };
    post(
        format!("{}/v1/users", cached.base),
        json!({"username": "clerk", "home_client": slug, "roles": ["client-admin"]}),
    )
    .await;
    let grant = admin
        .put(format!("{}/v1/users/clerk/access/{slug}", cached.base))
        .json(&json!({"level": "full", "private_data": true}))
        .send()
        .await
        .expect("grant");
    assert_eq!(grant.status(), reqwest::StatusCode::OK);
    let clerk_token = post(
        format!("{}/v1/users/clerk/tokens", cached.base),
        json!({"name": "bench"}),
    )
    .await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let clerk = reqwest::Client::builder()
        .default_headers({
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {clerk_token}").parse().expect("header"),
            );
            h
        })
        .build()
        .expect("client");

    // The write baseline: mandant's PATCH handler behind a stand-in for the access check (no authentication, no
    // audit entry, the client from the route cache).
    let handler_only = common::handler_only(
        &cached.state,
        "/v1/clients/{slug}/recipients/{id}",
        axum::routing::patch(mandant::http::recipients::update),
    )
    .await;

    let path = format!("/v1/clients/{slug}/recipients/1");
    // (name, client, server, write?)
    let phases: [(&str, &reqwest::Client, &str, bool); 5] = [
        ("read: uncached (baseline)", &admin, &uncached.base, false),
        ("read: cached", &admin, &cached.base, false),
        ("read: cached, client user", &clerk, &cached.base, false),
        ("write: handler (baseline)", &admin, &handler_only, true),
        ("write: full server", &admin, &cached.base, true),
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); phases.len()];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        let mut order: Vec<usize> = (0..phases.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (name, http, base, write) = phases[i];
            let url = format!("{base}{path}");
            let _ = drive(http, &url, write, clients, Duration::from_secs(1)).await;
            let run = drive(http, &url, write, clients, Duration::from_secs(secs)).await;
            eprintln!(
                "  {name}: {:.0} req/s, p99 {:.2} ms, errors {}",
                run.requests as f64 / run.secs,
                run.p99_ms,
                run.errors
            );
            runs[i].push(run);
        }
    }

    // In-process: authenticate() alone.
    let n = 20_000;
    let micro = |state: mandant::app::AppState| async move {
        let auth = state.auth().clone();
        auth.authenticate(common::ADMIN_TOKEN)
            .await
            .expect("auth")
            .expect("principal");
        let start = Instant::now();
        for _ in 0..n {
            auth.authenticate(common::ADMIN_TOKEN)
                .await
                .expect("auth")
                .expect("principal");
        }
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let hit_us = micro(cached.state.clone()).await;
    let lookup_us = micro(uncached.state.clone()).await;

    let median = |v: &[Run], f: &dyn Fn(&Run) -> f64| common::median_of(v, f);
    println!(
        "\nauth ({}, {clients} clients, {secs} s per phase, {rounds} rounds; medians)",
        common::fsync_label()
    );
    println!(
        "{:<24} {:>10} {:>9} {:>9} {:>8}",
        "phase", "req/s", "p50 ms", "p99 ms", "errors"
    );
    let mut report = Vec::new();
    for (i, (name, _, _, _)) in phases.iter().enumerate() {
        let rps = median(&runs[i], &|r| r.requests as f64 / r.secs);
        let p50 = median(&runs[i], &|r| r.p50_ms);
        let p99 = median(&runs[i], &|r| r.p99_ms);
        let errors: u64 = runs[i].iter().map(|r| r.errors).sum();
        println!("{name:<24} {rps:>10.0} {p50:>9.2} {p99:>9.2} {errors:>8}");
        report.push(
            json!({"phase": name, "rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}),
        );
    }
    let base_rps = median(&runs[0], &|r| r.requests as f64 / r.secs);
    let cached_rps = median(&runs[1], &|r| r.requests as f64 / r.secs);
    let write_base = median(&runs[3], &|r| r.requests as f64 / r.secs);
    let write_full = median(&runs[4], &|r| r.requests as f64 / r.secs);
    println!(
        "\ncached / uncached throughput: {:.2}x",
        cached_rps / base_rps
    );
    println!(
        "writes: full server (authentication, access check, audit entry) / handler = {:.2}",
        write_full / write_base
    );
    println!(
        "authenticate(): cache hit {hit_us:.2} µs, control-plane lookup {lookup_us:.1} µs (sequential, {n} calls)"
    );
    common::write_report(
        "auth",
        &json!({
            "clients": clients,
            "secs_per_phase": secs,
            "rounds": rounds,
            "fsync": common::fsync_label(),
            "phases": report,
            "cached_over_uncached": cached_rps / base_rps,
            "write_full_over_handler": write_full / write_base,
            "authenticate_us": {"cache_hit": hit_us, "control_plane_lookup": lookup_us},
        }),
    );
    cached.stop().await;
    uncached.stop().await;
}

/// `clients` keep-alive loops sending GET `url` (or, `write`, a PATCH changing a non-personal field) for `window`.
async fn drive(
    http: &reqwest::Client,
    url: &str,
    write: bool,
    clients: usize,
    window: Duration,
) -> Run {
    let deadline = Instant::now() + window;
    let start = Instant::now();
    let mut tasks = Vec::new();
    let url = Arc::new(url.to_owned());
    for _ in 0..clients {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let request = if write {
                    http.patch(url.as_str()).json(&json!({"gender": "f"}))
                } else {
                    http.get(url.as_str())
                };
                match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.expect("task");
        all.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    Run {
        requests: all.len() as u64,
        errors,
        secs,
        p50_ms: common::ms(common::percentile(&all, 50.0)),
        p99_ms: common::ms(common::percentile(&all, 99.0)),
    }
}
