//! TLS to Postgres (issue 13; DESIGN.md Operations: "`DATABASE_URL` names the database, TLS
//! included"). Each test starts a private cluster ([`PgCluster`]) that speaks only TLS over
//! TCP (`hostssl` and no `host` line), with a certificate for `localhost` from a CA the test
//! makes: `sslmode=verify-full` with that CA migrates and serves over TLS; an unrelated CA, a
//! host name the certificate is not for, no TLS where the server requires it, or a server
//! without TLS where the URL requires it, are refused, and the real `salesopp migrate` and
//! `salesopp serve` exit non-zero with one line that says why, never the password.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use salesopp_proto::statusconfig::v1 as pb;
use salesopp_tests::cluster::PgCluster;
use salesopp_tests::{SuiteOptions, TestDatabase, TestSuite, authed, rep_token};
use sqlx::postgres::PgConnectOptions;

/// In every URL, and never in what a process prints (trust authentication ignores it).
const PASSWORD: &str = "never-printed-7c1f";

/// The processes' start-up timeout: a refusal must come well before it, not after retrying.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let certificate = params.self_signed(&key).expect("self-sign the CA");
        Ca {
            pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` signed by this CA, and its key, both PEM.
    fn server_certificate(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("server key");
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("sign the server certificate");
        (certificate.pem(), key.serialize_pem())
    }
}

/// A private cluster serving TLS only, with a certificate for `localhost`, and two CA files:
/// the one that signed it and an unrelated one.
struct TlsCluster {
    // Dropped last: the suites and databases of a test go first.
    cluster: PgCluster,
    right_ca: PathBuf,
    wrong_ca: PathBuf,
    _files: tempfile::TempDir,
}

impl TlsCluster {
    async fn start() -> TlsCluster {
        let ca = Ca::new("salesopp test CA");
        let (certificate, key) = ca.server_certificate(&["localhost"]);
        let cluster = PgCluster::init().await;
        cluster.serve_tls(&certificate, &key);
        cluster.require_tls();
        cluster.start().await;
        let files = tempfile::tempdir().expect("a directory for the CA files");
        let right_ca = files.path().join("ca.pem");
        let wrong_ca = files.path().join("another-ca.pem");
        std::fs::write(&right_ca, &ca.pem).expect("write ca.pem");
        std::fs::write(&wrong_ca, Ca::new("an unrelated CA").pem).expect("write another-ca.pem");
        TlsCluster {
            cluster,
            right_ca,
            wrong_ca,
            _files: files,
        }
    }

    /// `postgres://postgres:PASSWORD@HOST:PORT/DATABASE?QUERY`.
    fn url(&self, host: &str, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@{host}:{}/{database}?{query}",
            self.cluster.port()
        )
    }

    /// The URL a managed Postgres is reached with: verify-full against `ca`.
    fn verify_full(&self, host: &str, database: &str, ca: &Path) -> String {
        self.url(
            host,
            database,
            &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
        )
    }
}

/// How a `salesopp` process ended.
#[derive(Debug)]
struct Exit {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs the real command line (`salesopp-under-test`) with `args` against `database_url`,
/// to its exit; killed, and the test failed, if it outlives twice the start-up timeout.
async fn salesopp(args: &[&str], database_url: &str) -> Exit {
    let mut command = Command::new(env!("CARGO_BIN_EXE_salesopp-under-test"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("SALESOPP_AUTH_HS256_SECRET", salesopp_tests::SECRET)
        .env("SALESOPP_LISTEN", "127.0.0.1:0")
        .env(
            "SALESOPP_STARTUP_TIMEOUT_SECONDS",
            STARTUP_TIMEOUT.as_secs().to_string(),
        )
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("salesopp {}", args.join(" "));
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    // A process that serves instead of refusing would run forever. What it prints before
    // its exit is a few lines: the pipes hold it until it is read.
    while child.try_wait().expect("the process's status").is_none() {
        if started.elapsed() > STARTUP_TIMEOUT * 2 {
            let _ = child.kill();
            let output = child
                .wait_with_output()
                .expect("the killed process's output");
            panic!(
                "{what} did not exit within {:?}:\n{}{}",
                STARTUP_TIMEOUT * 2,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let output = child.wait_with_output().expect("the process's output");
    Exit {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took,
    }
}

/// `exit` is a refusal at start-up: non-zero, at once (not after retrying until the
/// start-up timeout), its stderr one line containing every one of `expected`, no panic, and
/// the password nowhere. Returns that line.
#[track_caller]
fn assert_refused(exit: &Exit, expected: &[&str]) -> String {
    assert!(!exit.status.success(), "expected a failure: {exit:#?}");
    let lines: Vec<&str> = exit.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr: {exit:#?}");
    for part in expected {
        assert!(lines[0].contains(part), "no {part:?} in {:?}", lines[0]);
    }
    assert!(!exit.stderr.contains("panicked"), "a panic: {exit:#?}");
    for printed in [&exit.stdout, &exit.stderr] {
        assert!(
            !printed.contains(PASSWORD),
            "the password leaked: {exit:#?}"
        );
    }
    assert!(
        exit.took < STARTUP_TIMEOUT / 2,
        "refused only after {:?} (retried?): {exit:#?}",
        exit.took
    );
    lines[0].to_owned()
}

/// Whether the session of `pool` is encrypted, as the server sees it.
async fn session_uses_tls(pool: &sqlx::PgPool) -> bool {
    sqlx::query_scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("read pg_stat_ssl")
}

#[tokio::test]
async fn tls_verify_full_with_the_right_ca_connects() {
    let tls = TlsCluster::start().await;
    // The database is made and dropped over TLS too: the admin options come from the URL.
    let admin: PgConnectOptions = tls
        .verify_full("localhost", "postgres", &tls.right_ca)
        .parse()
        .expect("a Postgres URL");
    let database = TestDatabase::create_empty_in(admin).await;
    let url = tls.verify_full("localhost", &database.name, &tls.right_ca);

    // The real `salesopp migrate`, verify-full against the CA that signed the certificate.
    let migrated = salesopp(&["migrate"], &url).await;
    assert!(
        migrated.status.success(),
        "salesopp migrate over verify-full failed: {migrated:#?}"
    );
    assert!(!migrated.stdout.contains(PASSWORD) && !migrated.stderr.contains(PASSWORD));

    // The pool the suite serves with, made from the URL as `salesopp serve` makes it.
    let pool = salesopp_kit::db::connect_lazy(&url, 4).expect("a pool of the URL");
    assert!(
        session_uses_tls(&pool).await,
        "the session is not encrypted"
    );
    assert_eq!(
        salesopp_kit::db::applied_schema_version(&pool)
            .await
            .expect("the schema's version"),
        salesopp_kit::db::required_schema_version(),
        "salesopp migrate applied every migration"
    );
    salesopp::wait_for_schema(&pool, Duration::from_secs(5))
        .await
        .expect("the schema check `serve` makes at start-up");

    // The suite, served on that pool, answers a call that reads the database.
    let suite = TestSuite::serve(database, pool, SuiteOptions::default()).await;
    let listed = suite
        .statuses()
        .await
        .list_statuses(authed(&rep_token(), pb::ListStatusesRequest::default()))
        .await
        .expect("ListStatuses over a database reached by verify-full")
        .into_inner();
    assert_eq!(listed.statuses.len(), 7);
    assert!(session_uses_tls(&suite.db).await);
}

#[tokio::test]
async fn tls_wrong_ca_is_refused_with_a_clear_error() {
    let tls = TlsCluster::start().await;
    let url = tls.verify_full("localhost", "salesopp", &tls.wrong_ca);
    let expected = [
        "database TLS: the server's certificate is not signed by the CA in sslrootcert=",
        &tls.wrong_ca.display().to_string(),
        "UnknownIssuer",
    ];
    for command in [&["migrate"][..], &["serve"]] {
        let exit = salesopp(command, &url).await;
        let line = assert_refused(&exit, &expected);
        eprintln!("salesopp {}: {line}", command.join(" "));
    }
}

#[tokio::test]
async fn tls_wrong_host_name_is_refused() {
    let tls = TlsCluster::start().await;
    // The certificate is for localhost; 127.0.0.1 is the same server by another name.
    let url = tls.verify_full("127.0.0.1", "salesopp", &tls.right_ca);
    let expected = [
        "database TLS: the server's certificate is not valid for the host name 127.0.0.1",
        "localhost",
    ];
    for command in [&["migrate"][..], &["serve"]] {
        let exit = salesopp(command, &url).await;
        let line = assert_refused(&exit, &expected);
        eprintln!("salesopp {}: {line}", command.join(" "));
    }
    // The name is all that was wrong: verify-ca (the CA checked, not the name) connects.
    let verify_ca = tls.url(
        "127.0.0.1",
        "postgres",
        &format!("sslmode=verify-ca&sslrootcert={}", tls.right_ca.display()),
    );
    let pool = salesopp_kit::db::connect_lazy(&verify_ca, 1).expect("a pool of the URL");
    assert!(session_uses_tls(&pool).await);
}

#[tokio::test]
async fn tls_required_by_the_server_plain_is_refused() {
    let tls = TlsCluster::start().await;
    // Without TLS the server has no pg_hba.conf line for the connection: the TLS test
    // above cannot pass over a plain connection.
    let exit = salesopp(
        &["migrate"],
        &tls.url("localhost", "salesopp", "sslmode=disable"),
    )
    .await;
    let line = assert_refused(&exit, &["no pg_hba.conf entry", "no encryption"]);
    eprintln!("salesopp migrate: {line}");
}

#[tokio::test]
async fn tls_required_by_the_url_a_server_without_tls_is_refused() {
    // A cluster as initdb makes it: no TLS, plain connections trusted.
    let plain = PgCluster::start_new().await;
    let url = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/salesopp?sslmode=require",
        plain.port()
    );
    for command in [&["migrate"][..], &["serve"]] {
        let exit = salesopp(command, &url).await;
        let line = assert_refused(
            &exit,
            &["database TLS: the server does not offer TLS, and sslmode=require requires it"],
        );
        eprintln!("salesopp {}: {line}", command.join(" "));
    }
}
