//! `salesopp serve` run as a child process (the real command line, built by this package as
//! `salesopp-under-test`), on an address of the test's choosing, so a test can SIGTERM it,
//! start it again, and read its health and metrics over the network as Kubernetes and
//! Prometheus would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::SECRET;

/// Guards every wait against a hang; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// A free port on `ip`, as the kernel picks one.
pub fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|listener| listener.local_addr())
        .expect("pick a free port")
        .port()
}

/// How a `salesopp serve` process is started.
#[derive(Debug, Clone)]
pub struct ServeCommand {
    /// `salesopp-under-test`: `env!("CARGO_BIN_EXE_salesopp-under-test")` (only the tests
    /// themselves see it, not this library).
    binary: PathBuf,
    /// Environment of the child, on top of a cleared one (PATH kept).
    env: Vec<(String, String)>,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
}

impl ServeCommand {
    /// `binary serve`: every service on one port on 127.0.0.1, against `database_url`
    /// (`None` for a gateway-only process), with the test tokens' secret.
    pub fn new(binary: impl Into<PathBuf>, database_url: Option<&str>) -> ServeCommand {
        let mut command = ServeCommand {
            binary: binary.into(),
            env: Vec::new(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            metrics: None,
        };
        command = command
            .env("SALESOPP_AUTH_HS256_SECRET", SECRET)
            .env("SALESOPP_HEALTH_INTERVAL_SECONDS", "0.1")
            .env("SALESOPP_STARTUP_TIMEOUT_SECONDS", "30")
            .env("RUST_LOG", "info");
        if let Some(url) = database_url {
            command = command.env("DATABASE_URL", url);
        }
        command.on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> ServeCommand {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// Listens on a free port of `ip` (any 127.0.0.0/8 address is this machine's).
    pub fn on(mut self, ip: IpAddr) -> ServeCommand {
        self.listen = SocketAddr::new(ip, free_port(ip));
        if self.metrics.is_some() {
            self.metrics = Some(SocketAddr::new(ip, free_port(ip)));
        }
        self
    }

    /// Serves `/metrics` on a free port of the same address.
    pub fn with_metrics(mut self) -> ServeCommand {
        let ip = self.listen.ip();
        self.metrics = Some(SocketAddr::new(ip, free_port(ip)));
        self
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Starts the process, its output in a log file of its own.
    pub fn start(&self) -> ServeProcess {
        let log = std::env::temp_dir().join(format!("salesopp-serve-{}.log", uuid::Uuid::new_v4()));
        let out = std::fs::File::create(&log).expect("create the server's log");
        let err = out.try_clone().expect("clone the log handle");
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SALESOPP_LISTEN", self.listen.to_string());
        if let Some(metrics) = self.metrics {
            command.env("SALESOPP_METRICS_LISTEN", metrics.to_string());
        }
        let child = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("run salesopp-under-test serve");
        ServeProcess {
            child: Some(child),
            listen: self.listen,
            metrics: self.metrics,
            log,
        }
    }
}

/// A running `salesopp serve`; killed when dropped (its log kept if the test failed).
#[derive(Debug)]
pub struct ServeProcess {
    child: Option<Child>,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
    log: PathBuf,
}

impl ServeProcess {
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Where `/metrics` is served (started `with_metrics`).
    pub fn metrics(&self) -> SocketAddr {
        self.metrics.expect("the process serves /metrics")
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the server runs")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test, with the server's log, if the process has exited.
    pub fn assert_running(&mut self, when: &str) {
        if let Some(status) = self.child().try_wait().expect("server status") {
            panic!("the server exited ({status}) {when}:\n{}", self.log());
        }
    }

    /// One connection of its own (one channel, connected now).
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(self.url())
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
    }

    /// Waits until a fresh connection's health check says SERVING.
    pub async fn until_serving(&mut self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            self.assert_running("while starting");
            if let Ok(channel) = self.connect().await {
                let answer = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if matches!(&answer, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32) {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never became SERVING:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends SIGTERM (Kubernetes' stop).
    pub fn terminate(&mut self) {
        crate::nats::signal(self.child(), "TERM");
    }

    /// Its exit status, waited for up to `within`.
    pub async fn exit_status(&mut self, within: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child().try_wait().expect("server status") {
                self.child = None;
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not exit within {within:?} of SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for ServeProcess {
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
