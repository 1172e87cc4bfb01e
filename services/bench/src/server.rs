//! The suite under test: `salesopp serve` started as a child process on a free loopback port
//! against the benchmark database, exactly as an operator runs it (its own process, its own
//! pool, its own sequencer), so what is measured includes the process boundary and its
//! memory can be read from `/proc`. With `--url` a running suite is used instead, and its
//! memory is not known.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use salesopp_kit::auth::TokenMinter;
use salesopp_kit::config::AuthArgs;
use salesopp_proto::statusconfig::v1 as status_pb;
use salesopp_proto::statusconfig::v1::status_config_service_client::StatusConfigServiceClient;
use tokio::process::{Child, Command};

use crate::drive::authed;

/// A suite to drive: one this tool started, or one it was pointed at.
#[derive(Debug)]
pub struct Suite {
    pub url: String,
    pub tokens: TokenMinter,
    child: Option<Child>,
    pid: Option<u32>,
}

/// The memory of the served process, in KiB.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Memory {
    pub rss_kib: u64,
    /// VmHWM: the process's peak resident set so far.
    pub hwm_kib: u64,
}

/// Reads VmRSS and VmHWM of `pid` from `/proc/<pid>/status`.
pub fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// The `salesopp` binary to serve with: `--server-bin` when given; else this program when it
/// is `salesopp` (`salesopp bench`); else the release build beside the target directory's
/// other outputs, then the debug one.
pub fn server_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        anyhow::ensure!(
            path.is_file(),
            "--server-bin {} is not a file",
            path.display()
        );
        return Ok(path.to_owned());
    }
    let me = std::env::current_exe().context("cannot find this program's path")?;
    if me.file_stem().is_some_and(|stem| stem == "salesopp") {
        return Ok(me);
    }
    // A test binary lives in target/<profile>/deps; the program in target/<profile>.
    let mut candidates = Vec::new();
    for dir in me.ancestors().skip(1).take(3) {
        for profile in ["release", "debug"] {
            candidates.push(dir.join(profile).join("salesopp"));
        }
        candidates.push(dir.join("salesopp"));
    }
    candidates
        .into_iter()
        .find(|path| path.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no salesopp binary found: build it (cargo build --release -p salesopp) or pass --server-bin"
            )
        })
}

/// A free loopback port: bound, read and released (the child binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Suite {
    /// Starts `binary serve` on a free port against `database_url` with a fresh HS256 secret
    /// and a pool of `pool_size` connections; its log goes to `log`. Waits until it answers.
    pub async fn spawn(
        binary: &Path,
        database_url: &str,
        pool_size: u32,
        log: &Path,
    ) -> anyhow::Result<Suite> {
        let port = free_port()?;
        let secret = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot write the server log {}", log.display()))?;
        let child = Command::new(binary)
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("SALESOPP_LISTEN", format!("127.0.0.1:{port}"))
            .env("SALESOPP_AUTH_HS256_SECRET", &secret)
            .env_remove("SALESOPP_AUTH_JWKS")
            .env_remove("SALESOPP_AUTH_ISSUER")
            .env_remove("SALESOPP_AUTH_AUDIENCE")
            .env_remove("SALESOPP_SERVICE")
            .env("SALESOPP_DB_MAX_CONNECTIONS", pool_size.to_string())
            .env("SALESOPP_SHUTDOWN_GRACE_SECONDS", "2")
            // Warnings and errors only: a log line per write would be a workload of its own.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} serve", binary.display()))?;
        let pid = child.id();
        let tokens = TokenMinter::new(&AuthArgs {
            auth_hs256_secret: Some(secret),
            ..AuthArgs::default()
        })?;
        let mut suite = Suite {
            url: format!("http://127.0.0.1:{port}"),
            tokens,
            child: Some(child),
            pid,
        };
        suite.wait_ready(Duration::from_secs(60)).await?;
        Ok(suite)
    }

    /// A suite already running at `url`, whose tokens `auth` mints.
    pub async fn external(url: &str, auth: &AuthArgs) -> anyhow::Result<Suite> {
        let mut suite = Suite {
            url: url.to_owned(),
            tokens: TokenMinter::new(auth)
                .context("--url needs the suite's SALESOPP_AUTH_HS256_SECRET to mint tokens")?,
            child: None,
            pid: None,
        };
        suite.wait_ready(Duration::from_secs(10)).await?;
        Ok(suite)
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// An admin token for this suite.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        self.tokens.mint(
            crate::scheme::ADMIN_ID,
            crate::scheme::ADMIN_NAME,
            "",
            &["sales_admin".to_owned()],
            24 * 3600,
        )
    }

    /// Waits until an authenticated ListStatuses answers (schema checked, pool up).
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let token = self.admin_token()?;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!("the server exited at start-up ({status}): see its log");
            }
            let answered = async {
                let mut client = StatusConfigServiceClient::connect(self.url.clone()).await?;
                client
                    .list_statuses(authed(&token, status_pb::ListStatusesRequest::default()))
                    .await?;
                anyhow::Ok(())
            }
            .await;
            match answered {
                Ok(()) => return Ok(()),
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    return Err(error.context(format!("the suite at {} never answered", self.url)));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Stops a child server with SIGTERM (graceful: in-flight calls finish), then SIGKILL
    /// after a grace period. Nothing to do for an external suite.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            // No signal crate in the workspace: kill(1) sends the TERM.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => child.kill().await?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_memory() {
        let memory = memory_of(std::process::id()).expect("/proc/self");
        assert!(memory.rss_kib > 0 && memory.hwm_kib >= memory.rss_kib);
    }
}
