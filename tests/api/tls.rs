//! TLS to database servers (issue #20): a throwaway cluster on TCP with `ssl = on` and a certificate from a test
//! CA made with the `openssl` command at test time. The certificate names `localhost` only (DNS), so the same
//! server reached as `127.0.0.1` is a wrong host name for `verify-full` (and fine for `verify-ca`, which checks
//! the chain only). Also: `require` against a server without TLS, a whole tenant life on a `verify-full` server
//! (provisioning, migrations, the routing pool), and the admin password in no response, log line or audit entry.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mandant::control::ControlPlane;
use mandant::db::PgTarget;
use mandant::embedded::TlsFiles;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cli::Served;
use crate::helpers::{
    ADMIN_TOKEN, ExtraServer, TestApp, TestDir, http_client, json_body, spawn_app, test_settings,
};

/// A test CA and a server certificate for `localhost` signed by it (P-256 keys: quick to make).
struct Pki {
    _dir: TestDir,
    ca: PathBuf,
    files: TlsFiles,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn make_pki(tag: &str) -> Pki {
    let dir = TestDir::new(tag);
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=mandant test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        d,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    Pki {
        ca: d.join("ca.crt"),
        files: TlsFiles {
            cert: d.join("server.crt"),
            key: d.join("server.key"),
        },
        _dir: dir,
    }
}

fn ssl_query(mode: &str, ca: &Path) -> String {
    format!("sslmode={mode}&sslrootcert={}", ca.display())
}

async fn uses_tls(url: &str) -> Result<bool, String> {
    let target = PgTarget::parse_url(url)?;
    let client = target
        .connect()
        .await
        .map_err(|e| mandant::telemetry::error_chain(&e))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn verify_full_succeeds_with_the_certificates_host_name_and_fails_with_another_one() {
    let pki = make_pki("pki-full");
    let server = ExtraServer::start("tls-full", Some(pki.files.clone())).await;
    let full = ssl_query("verify-full", &pki.ca);
    let right = server
        .admin_url("ops", "pw-tls-1", "SUPERUSER", "localhost", &full)
        .await;
    assert_eq!(uses_tls(&right).await, Ok(true));
    let wrong = server
        .admin_url("ops", "pw-tls-1", "SUPERUSER", "127.0.0.1", &full)
        .await;
    let err = uses_tls(&wrong).await.unwrap_err();
    assert!(
        err.contains("not valid for name \"127.0.0.1\""),
        "a clear name mismatch: {err}"
    );
    // verify-ca checks the chain only: the address is fine; require encrypts without checking.
    let ca = server
        .admin_url(
            "ops",
            "pw-tls-1",
            "SUPERUSER",
            "127.0.0.1",
            &ssl_query("verify-ca", &pki.ca),
        )
        .await;
    assert_eq!(uses_tls(&ca).await, Ok(true));
    let require = server
        .admin_url(
            "ops",
            "pw-tls-1",
            "SUPERUSER",
            "127.0.0.1",
            "sslmode=require",
        )
        .await;
    assert_eq!(uses_tls(&require).await, Ok(true));
    // A CA that did not sign the certificate: refused by verify-ca and verify-full alike.
    let other = make_pki("pki-other");
    let stranger = server
        .admin_url(
            "ops",
            "pw-tls-1",
            "SUPERUSER",
            "localhost",
            &ssl_query("verify-ca", &other.ca),
        )
        .await;
    let err = uses_tls(&stranger).await.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );

    // The control plane (sqlx) honours the same modes.
    let settings = test_settings(&[]);
    let control =
        ControlPlane::connect_lazy(&PgTarget::parse_url(&right).unwrap(), &settings.database);
    control
        .ping()
        .await
        .expect("the control plane over verify-full");
    let control =
        ControlPlane::connect_lazy(&PgTarget::parse_url(&wrong).unwrap(), &settings.database);
    assert!(
        control.ping().await.is_err(),
        "verify-full with the wrong host name"
    );
}

#[tokio::test]
async fn require_against_a_server_without_tls_fails_with_a_clear_error() {
    let app = spawn_app().await;
    let server = ExtraServer::start("tls-none", None).await;
    let url = server
        .admin_url(
            "ops",
            "pw-plain-7",
            "SUPERUSER",
            "localhost",
            "sslmode=require",
        )
        .await;
    let err = uses_tls(&url).await.unwrap_err();
    assert!(err.contains("server does not support TLS"), "{err}");
    let response = app
        .post_json("/v1/servers", &json!({"name": "plain", "url": url}))
        .await;
    let body = json_body(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["error"]["code"], "server_unreachable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("server does not support TLS"), "{message}");
    assert!(!message.contains("pw-plain-7"), "{message}");
    // Without TLS asked for, the same server registers (loopback: libpq's default, prefer).
    let url = server
        .admin_url("ops", "pw-plain-7", "SUPERUSER", "localhost", "")
        .await;
    let response = app
        .post_json("/v1/servers", &json!({"name": "plain", "url": url}))
        .await;
    assert_eq!(
        json_body(response, StatusCode::CREATED).await["sslmode"],
        "prefer"
    );
}

/// A `mandant serve` process on `app`'s control plane with its whole log (debug, JSON) collected.
fn serve_beside(app: &TestApp, dir: &TestDir) -> Served {
    let tenants = &app.settings.tenants;
    let url = app.control_target().to_url().expose().to_owned();
    Served::start_with(
        dir.path(),
        &dir.path().join("data"),
        "debug",
        &[
            ("MANDANT__DATABASE__URL", url.as_str()),
            ("MANDANT__TENANTS__DB_PREFIX", tenants.db_prefix.as_str()),
            (
                "MANDANT__TENANTS__TEMPLATE_DB",
                tenants.template_db.as_str(),
            ),
            (
                "MANDANT__TENANTS__CREDENTIAL_SECRET",
                tenants.credential_secret.expose(),
            ),
            ("MANDANT__AUTH__BOOTSTRAP_TOKEN", ADMIN_TOKEN),
            ("MANDANT__WORKERS__POLL_INTERVAL_MS", "100"),
        ],
    )
}

#[tokio::test]
async fn a_client_lives_on_a_verify_full_server_and_the_password_never_shows_in_a_response_log_or_audit_entry()
 {
    const PASSWORD: &str = "Sup3r-s3cret-Adm1n-pw";
    let app = spawn_app().await;
    let pki = make_pki("pki-life");
    let server = ExtraServer::start("tls-life", Some(pki.files.clone())).await;
    let url = server
        .admin_url(
            "ops",
            PASSWORD,
            "SUPERUSER",
            "localhost",
            &ssl_query("verify-full", &pki.ca),
        )
        .await;
    let dir = TestDir::new("served-tls");
    let mut served = serve_beside(&app, &dir);
    let base = format!("http://{}", served.addr());
    let http = http_client(Some(ADMIN_TOKEN));
    let mut bodies = Vec::new();
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let request = http.request(method, format!("{base}{path}"));
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        }
    };

    // A wrong password and a wrong host name first: refused, and the errors carry no password.
    let bad = url.replace(PASSWORD, &format!("{PASSWORD}-wrong"));
    let (status, text) = send(
        reqwest::Method::POST,
        "/v1/servers",
        Some(json!({"name": "secure", "url": bad})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    bodies.push(text);
    let wrong_host = url.replace("@localhost:", "@127.0.0.1:");
    let (status, text) = send(
        reqwest::Method::POST,
        "/v1/servers",
        Some(json!({"name": "secure", "url": wrong_host})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    bodies.push(text);

    let (status, text) = send(
        reqwest::Method::POST,
        "/v1/servers",
        Some(json!({"name": "secure", "url": url, "zone": "safe", "budget": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let registered: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(registered["sslmode"], "verify-full");
    assert!(
        registered["url"]
            .as_str()
            .unwrap()
            .contains("ops@localhost"),
        "{registered}"
    );
    bodies.push(text);
    // In the registry: the URL without the password, the password only sealed.
    let row = app
        .control()
        .await
        .query_one(
            "SELECT admin_url, admin_password FROM db_servers WHERE name = 'secure'",
            &[],
        )
        .await
        .unwrap();
    let (stored_url, sealed): (String, Vec<u8>) = (row.get(0), row.get(1));
    assert!(!stored_url.contains(PASSWORD), "{stored_url}");
    assert!(
        !sealed
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes())
    );
    for path in ["/v1/servers", "/v1/servers/secure"] {
        bodies.push(send(reqwest::Method::GET, path, None).await.1);
    }

    // A client placed there by zone is provisioned over TLS (template, role, clone, migrations) and served by
    // the routing pool over TLS.
    let (status, text) = send(
        reqwest::Method::POST,
        "/v1/clients",
        Some(json!({"slug": "safe-co", "name": "Safe", "zone": "safe"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let created: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(created["server"], "secure");
    let operation = created["operation"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = send(
            reqwest::Method::GET,
            &format!("/v1/operations/{operation}"),
            None,
        )
        .await;
        let op: Value = serde_json::from_str(&text).unwrap();
        if op["status"] == "succeeded" {
            break;
        }
        assert!(
            op["status"] != "failed" && Instant::now() < deadline,
            "{op}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, text) = send(
        reqwest::Method::POST,
        "/v1/clients/safe-co/recipients",
        Some(json!({"email": "a@example.org"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let (status, text) = send(reqwest::Method::GET, "/v1/clients/safe-co/recipients", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let client_id = app.client_id("safe-co").await.as_simple().to_string();
    let tls_sessions = server
        .i64(&format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE s.ssl AND a.usename LIKE '%{client_id}'"
        ))
        .await;
    let plain_sessions = server
        .i64(&format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE NOT s.ssl AND a.usename LIKE '%{client_id}'"
        ))
        .await;
    assert!(
        tls_sessions >= 1 && plain_sessions == 0,
        "tenant sessions: {tls_sessions} over TLS, {plain_sessions} plain"
    );
    let tenant_db = server
        .i64(&format!(
            "SELECT count(*) FROM pg_database WHERE datname LIKE '%{client_id}'"
        ))
        .await;
    assert_eq!(tenant_db, 1);
    // The routing budget is the server's own, and its metrics carry the server's name.
    let (_, metrics) = send(reqwest::Method::GET, "/metrics", None).await;
    assert!(
        metrics.contains("tenant_pool_budget_capacity{server=\"secure\"} 5"),
        "{metrics}"
    );
    // The server in use cannot be removed.
    let (status, text) = send(reqwest::Method::DELETE, "/v1/servers/secure", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    bodies.push(text);
    // Deleted with an archive (pg_dump with the server's TLS mode), the server is empty and can go.
    let (status, text) = send(
        reqwest::Method::DELETE,
        "/v1/clients/safe-co?archive=true",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let operation = serde_json::from_str::<Value>(&text).unwrap()["operation"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = send(
            reqwest::Method::GET,
            &format!("/v1/operations/{operation}"),
            None,
        )
        .await;
        let op: Value = serde_json::from_str(&text).unwrap();
        if op["status"] == "succeeded" {
            assert!(op["result"]["archive"].is_string(), "{op}");
            break;
        }
        assert!(
            op["status"] != "failed" && Instant::now() < deadline,
            "{op}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, text) = send(reqwest::Method::DELETE, "/v1/servers/secure", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    bodies.push(
        send(reqwest::Method::GET, "/v1/audit?limit=1000", None)
            .await
            .1,
    );
    let status = served.terminate();
    assert!(status.success(), "{status}");

    // Nowhere: not in any response, not in the served process's whole log, not in the audit log.
    for body in &bodies {
        assert!(!body.contains(PASSWORD), "a response: {body}");
    }
    let log = served.seen.join("\n");
    assert!(
        log.contains("database server registered"),
        "the log was captured"
    );
    assert!(!log.contains(PASSWORD), "the password in the log");
    let control = app.control().await;
    let audit: String = control
        .query_one(
            "SELECT coalesce(string_agg(to_jsonb(a)::text, ' '), '') FROM audit_log a",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        audit.contains("/v1/servers"),
        "the registration was audited"
    );
    assert!(!audit.contains(PASSWORD), "the password in the audit log");
    drop(app);
}
