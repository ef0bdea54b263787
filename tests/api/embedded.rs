//! The embedded cluster: first start, stop, restart on the same data directory, stale pid files, adoption by a
//! second user, missing binaries.

use std::path::Path;

use mandant::embedded::{Cluster, EmbeddedError};

use crate::helpers::{TestDir, throwaway_spec};

fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn scalar(cluster: &Cluster, sql: &str) -> i64 {
    let client = cluster.target("postgres").connect().await.unwrap();
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn the_embedded_cluster_starts_stops_and_restarts_on_the_same_data_directory() {
    let dir = TestDir::new("embedded");
    let spec = throwaway_spec(dir.path());

    let mut cluster = Cluster::start(&spec).unwrap();
    assert!(cluster.is_owned());
    let pid = cluster.pid().unwrap();
    let client = cluster.target("postgres").connect().await.unwrap();
    client
        .batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (41), (1)")
        .await
        .unwrap();
    drop(client);

    cluster.stop();
    assert!(!is_alive(pid), "postmaster {pid} still running after stop");
    assert!(!spec.pgdata().join("postmaster.pid").exists());
    assert_eq!(cluster.pid(), None);

    let cluster = Cluster::start(&spec).unwrap();
    assert_eq!(
        scalar(&cluster, "SELECT sum(v)::bigint FROM kept").await,
        42
    );
    // The configured autovacuum period (config/default.toml), which is also the one throwaway clusters get.
    assert_eq!(
        spec.autovacuum_naptime_secs,
        mandant::embedded::DEFAULT_AUTOVACUUM_NAPTIME_SECS
    );
    assert_eq!(
        scalar(
            &cluster,
            "SELECT setting::bigint FROM pg_settings WHERE name = 'autovacuum_naptime'"
        )
        .await,
        i64::from(spec.autovacuum_naptime_secs)
    );
}

#[tokio::test]
async fn a_stale_postmaster_pid_from_a_killed_run_is_removed_at_start() {
    let dir = TestDir::new("stale");
    let spec = throwaway_spec(dir.path());
    let mut cluster = Cluster::start(&spec).unwrap();
    cluster.stop();

    // A pid file naming a process that no longer exists, as a kill -9 of the postmaster leaves behind.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let fake = format!(
        "{dead_pid}\n{}\n1700000000\n{}\n{}\n\n  5432001   0\nready   \n",
        spec.pgdata().display(),
        spec.port,
        spec.socket_dir().display()
    );
    std::fs::write(spec.pgdata().join("postmaster.pid"), fake).unwrap();

    let cluster = Cluster::start(&spec).unwrap();
    assert!(cluster.is_owned());
    assert_eq!(scalar(&cluster, "SELECT 1::bigint").await, 1);
}

#[tokio::test]
async fn a_second_start_on_a_running_data_directory_adopts_it_and_never_stops_it() {
    let dir = TestDir::new("adopt");
    let spec = throwaway_spec(dir.path());
    let first = Cluster::start(&spec).unwrap();
    let pid = first.pid().unwrap();

    let second = Cluster::start(&spec).unwrap();
    assert!(!second.is_owned());
    assert_eq!(scalar(&second, "SELECT 7::bigint").await, 7);
    drop(second);
    assert!(
        is_alive(pid),
        "the adopting user must not stop a cluster it did not start"
    );
    assert_eq!(scalar(&first, "SELECT 8::bigint").await, 8);
}

#[tokio::test]
async fn missing_server_binaries_give_one_error_naming_the_package() {
    let dir = TestDir::new("nobin");
    let empty = dir.path().join("bin");
    std::fs::create_dir_all(&empty).unwrap();
    let mut spec = throwaway_spec(&dir.path().join("data"));
    spec.bin_dir = Some(empty);
    let err = Cluster::start(&spec).unwrap_err();
    assert!(
        matches!(err, EmbeddedError::BinariesMissing { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("apt-get install postgresql"), "{text}");
    assert!(text.contains("embedded.bin_dir"), "{text}");
}

#[tokio::test]
async fn tenant_roles_must_give_their_password_while_the_superuser_uses_the_private_socket() {
    let dir = TestDir::new("hba");
    let cluster = Cluster::start(&throwaway_spec(dir.path())).unwrap();
    let admin = cluster.target("postgres").connect().await.unwrap();
    admin
        .batch_execute("CREATE ROLE tenant_x LOGIN PASSWORD 'right-password'")
        .await
        .unwrap();
    let base = cluster.target("postgres");
    let wrong = base.with_credentials("tenant_x", mandant::db::Secret::new("wrong"));
    let err = wrong.connect().await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    let right = base.with_credentials("tenant_x", mandant::db::Secret::new("right-password"));
    right.connect().await.unwrap();
}

#[tokio::test]
async fn two_processes_starting_on_a_fresh_data_directory_at_once_share_one_cluster() {
    let dir = TestDir::new("race");
    let spec = throwaway_spec(dir.path());
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| Cluster::start(&spec));
        let b = scope.spawn(|| Cluster::start(&spec));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.is_owned() != b.is_owned(),
        "exactly one starts it, the other adopts it"
    );
    assert_eq!(scalar(&a, "SELECT 1::bigint").await, 1);
    assert_eq!(scalar(&b, "SELECT 2::bigint").await, 2);
}
