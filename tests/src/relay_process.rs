//! `salesopp relay` run as a child process (the real command line, built by this package
//! as `salesopp-under-test`), so a test can SIGKILL it mid-batch or SIGTERM it, and read its
//! health and metrics over the network as Kubernetes and Prometheus would.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How one relay process is started.
#[derive(Debug, Clone)]
pub struct RelayCommand {
    pub binary: PathBuf,
    /// Environment of the child, on top of a cleared one (PATH kept).
    pub env: HashMap<String, String>,
}

impl RelayCommand {
    /// `salesopp relay` against `database_url` and `nats_url`, under `name`, publishing to
    /// `stream` on `<prefix>.<type>`.
    pub fn new(
        binary: impl Into<PathBuf>,
        database_url: &str,
        nats_url: &str,
        stream: &str,
        prefix: &str,
    ) -> RelayCommand {
        let mut env = HashMap::new();
        for (key, value) in [
            ("DATABASE_URL", database_url),
            ("SALESOPP_NATS_URL", nats_url),
            ("SALESOPP_NATS_STREAM", stream),
            ("SALESOPP_NATS_SUBJECT_PREFIX", prefix),
            ("SALESOPP_RELAY_NAME", "nats"),
            ("SALESOPP_RELAY_LEASE_TTL", "4s"),
            ("SALESOPP_STARTUP_TIMEOUT_SECONDS", "30"),
            ("RUST_LOG", "info"),
        ] {
            env.insert(key.to_owned(), value.to_owned());
        }
        RelayCommand {
            binary: binary.into(),
            env,
        }
    }

    pub fn set(mut self, key: &str, value: &str) -> RelayCommand {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Starts one relay; `host` is its HOSTNAME (recorded in the lease row as the holder's
    /// name), and its log goes to a file of its own.
    pub fn spawn(&self, host: &str) -> RelayProcess {
        let health = crate::cluster::free_port();
        let metrics = crate::cluster::free_port();
        let log = std::env::temp_dir().join(format!(
            "salesopp-relay-{host}-{}.log",
            uuid::Uuid::new_v4()
        ));
        let out = std::fs::File::create(&log).expect("create the relay's log");
        let err = out.try_clone().expect("clone the log handle");
        let child = Command::new(&self.binary)
            .arg("relay")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .env("HOSTNAME", host)
            .env("SALESOPP_RELAY_LISTEN", format!("127.0.0.1:{health}"))
            .env("SALESOPP_METRICS_LISTEN", format!("127.0.0.1:{metrics}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        RelayProcess {
            host: host.to_owned(),
            child: Some(child),
            health_port: health,
            metrics_port: metrics,
            log,
        }
    }
}

/// A running `salesopp relay`; killed when dropped.
#[derive(Debug)]
pub struct RelayProcess {
    pub host: String,
    child: Option<Child>,
    pub health_port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl RelayProcess {
    /// SIGKILL: dies at once, mid-publish, holding its lease.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }

    /// SIGTERM, then its exit status (waited for up to `within`).
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the relay runs");
        crate::nats::signal(&child, "TERM");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("relay status") {
                return status;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "{} did not exit within {within:?} of SIGTERM: see {}",
                    self.host,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of a metric without labels on its `/metrics`, `None` while it does not answer.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        body.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Its `grpc.health.v1` status for `service` ("" for the overall status).
    pub async fn health(&self, service: &str) -> Option<i32> {
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://127.0.0.1:{}",
            self.health_port
        ))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let response = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .ok()?;
        Some(response.into_inner().status)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
