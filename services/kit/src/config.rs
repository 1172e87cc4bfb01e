//! Configuration: every setting is an environment variable (12-factor) and a flag of the
//! same meaning. Secrets are hidden from `--help` and from `Debug`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::auth::Authenticator;

/// Where the database is.
#[derive(clap::Args, Clone)]
pub struct DatabaseArgs {
    /// Postgres URL, e.g. postgres://postgres@127.0.0.1:5432/salesopp
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Most connections the pool opens.
    #[arg(long, env = "SALESOPP_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
}

impl std::fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field("database_url", &"(redacted)")
            .field("db_max_connections", &self.db_max_connections)
            .finish()
    }
}

/// How bearer tokens are verified.
#[derive(clap::Args, Clone, Default)]
pub struct AuthArgs {
    /// Shared HS256 secret: for development only.
    #[arg(long, env = "SALESOPP_AUTH_HS256_SECRET", hide_env_values = true)]
    pub auth_hs256_secret: Option<String>,
    /// JWKS with the RS256/ES256 public keys: a file path, or an http(s) URL (the identity
    /// provider's `jwks_uri`, fetched again when a token names a new key).
    #[arg(long, env = "SALESOPP_AUTH_JWKS")]
    pub auth_jwks: Option<String>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "SALESOPP_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "SALESOPP_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
}

impl std::fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthArgs")
            .field(
                "auth_hs256_secret",
                &self.auth_hs256_secret.as_ref().map(|_| "(redacted)"),
            )
            .field("auth_jwks", &self.auth_jwks)
            .field("auth_issuer", &self.auth_issuer)
            .field("auth_audience", &self.auth_audience)
            .finish()
    }
}

impl AuthArgs {
    pub async fn authenticator(&self) -> anyhow::Result<Authenticator> {
        match (&self.auth_hs256_secret, &self.auth_jwks) {
            (Some(_), Some(_)) => anyhow::bail!(
                "set one of SALESOPP_AUTH_HS256_SECRET and SALESOPP_AUTH_JWKS, not both"
            ),
            (Some(secret), None) => {
                anyhow::ensure!(
                    secret.len() >= 16,
                    "SALESOPP_AUTH_HS256_SECRET must be at least 16 bytes"
                );
                tracing::warn!("verifying tokens with an HS256 shared secret: development only");
                Ok(Authenticator::hs256(
                    secret.as_bytes(),
                    self.auth_issuer.clone(),
                    self.auth_audience.clone(),
                ))
            }
            (None, Some(url)) if url.starts_with("https://") || url.starts_with("http://") => {
                Authenticator::jwks_url(
                    url,
                    self.auth_issuer.clone(),
                    self.auth_audience.clone(),
                    crate::auth::JWKS_MIN_REFRESH,
                    crate::auth::JWKS_MAX_AGE,
                )
                .await
            }
            (None, Some(path)) => {
                let document = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read the JWKS file {path}: {e}"))?;
                Authenticator::jwks(
                    &document,
                    self.auth_issuer.clone(),
                    self.auth_audience.clone(),
                )
            }
            (None, None) => anyhow::bail!(
                "no token verification configured: set SALESOPP_AUTH_JWKS (or, for development, SALESOPP_AUTH_HS256_SECRET)"
            ),
        }
    }
}

/// The network side of a server.
#[derive(clap::Args, Clone, Debug)]
pub struct ListenArgs {
    /// gRPC listen address.
    #[arg(long, env = "SALESOPP_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address (plain HTTP); not served when unset.
    #[arg(long, env = "SALESOPP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds to finish in-flight calls after SIGTERM/SIGINT before exiting.
    #[arg(long, env = "SALESOPP_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,
    /// Seconds between database health probes.
    #[arg(long, env = "SALESOPP_HEALTH_INTERVAL_SECONDS", default_value_t = 2.0)]
    pub health_interval_seconds: f64,
}

impl ListenArgs {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_secs_f64(self.health_interval_seconds.max(0.05))
    }
}
