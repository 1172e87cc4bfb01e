//! Identity: verifies the JWT bearer token of every call and gives the handlers a
//! [`Principal`] (`sub`, `name`, `team`, `roles`). Health and reflection are served without
//! this check; every other service is wrapped in [`AuthLayer`].
//!
//! Keys: an HS256 shared secret (development only) or a JWKS file of RS256/ES256 public
//! keys, chosen by the token's `kid`. Accepted algorithms are pinned to the key type, `exp`
//! is required, `nbf`, issuer and audience are checked, with a small clock-skew allowance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
pub use crate::identity::{Principal, Role};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const CLOCK_SKEW_SECONDS: u64 = 30;

/// The claims salesopp reads and mints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// One audience or several (RFC 7519 allows both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// The `aud` claim: a string or an array of strings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

enum Keys {
    Hs256(DecodingKey),
    /// Public keys by `kid`, with the algorithm each is pinned to.
    Jwks(Vec<(Option<String>, Algorithm, DecodingKey)>),
}

/// How often a JWKS URL may be fetched again for an unknown `kid`, at most.
pub const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// How old fetched keys may get before they are fetched again (revoked keys go away).
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// Keys fetched from a JWKS URL: refreshed when a token names an unknown `kid` (one fetch
/// for any number of concurrent calls, and at most once per `min_refresh`), and when they
/// are older than `max_age`.
struct RemoteKeys {
    url: String,
    client: reqwest::Client,
    min_refresh: Duration,
    max_age: Duration,
    /// The last fetch (successful or not); held while fetching, so fetches never overlap.
    last_fetch: tokio::sync::Mutex<Instant>,
    /// How many fetches were made, for tests and logs.
    fetches: std::sync::atomic::AtomicU64,
}

/// Verifies bearer tokens. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<std::sync::RwLock<Arc<Keys>>>,
    remote: Option<Arc<RemoteKeys>>,
    issuer: Option<String>,
    audience: Option<String>,
}

/// Why a token was refused: an unknown key can be cured by fetching the keys again.
enum Refusal {
    UnknownKey,
    Other(ApiError),
}

fn parse_jwks(document: &str) -> anyhow::Result<Keys> {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(document)
        .map_err(|e| anyhow::anyhow!("the JWKS is not a valid JSON Web Key Set: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| anyhow::anyhow!("a JWKS key cannot be used: {e}"))?;
        keys.push((jwk.common.key_id.clone(), algorithm, key));
    }
    anyhow::ensure!(!keys.is_empty(), "the JWKS holds no RS256 or ES256 key");
    Ok(Keys::Jwks(keys))
}

impl RemoteKeys {
    async fn fetch(&self) -> anyhow::Result<Keys> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| anyhow::anyhow!("cannot fetch the JWKS from {}: {e}", self.url))?;
        let document = response
            .text()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the JWKS from {}: {e}", self.url))?;
        parse_jwks(&document)
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Authenticator")
            .field(
                "keys",
                &match &*self.current_keys() {
                    Keys::Hs256(_) => "hs256(secret redacted)".to_owned(),
                    Keys::Jwks(keys) => format!("jwks({} keys)", keys.len()),
                },
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Authenticator {
    fn with_keys(keys: Keys, issuer: Option<String>, audience: Option<String>) -> Self {
        Self {
            keys: Arc::new(std::sync::RwLock::new(Arc::new(keys))),
            remote: None,
            issuer,
            audience,
        }
    }

    fn current_keys(&self) -> Arc<Keys> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Development keys: one HS256 shared secret.
    pub fn hs256(secret: &[u8], issuer: Option<String>, audience: Option<String>) -> Self {
        Self::with_keys(
            Keys::Hs256(DecodingKey::from_secret(secret)),
            issuer,
            audience,
        )
    }

    /// Keys from a JWKS URL (the identity provider's `jwks_uri`), fetched now and again when
    /// a token names a key not seen yet (rotation) or the keys are older than `max_age`.
    pub async fn jwks_url(
        url: &str,
        issuer: Option<String>,
        audience: Option<String>,
        min_refresh: Duration,
        max_age: Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the JWKS client: {e}"))?;
        let remote = RemoteKeys {
            url: url.to_owned(),
            client,
            min_refresh,
            max_age,
            last_fetch: tokio::sync::Mutex::new(Instant::now()),
            fetches: std::sync::atomic::AtomicU64::new(0),
        };
        let keys = remote.fetch().await?;
        let mut authenticator = Self::with_keys(keys, issuer, audience);
        authenticator.remote = Some(Arc::new(remote));
        Ok(authenticator)
    }

    /// How many times the JWKS URL was fetched (0 for local keys).
    pub fn jwks_fetches(&self) -> u64 {
        self.remote
            .as_ref()
            .map_or(0, |r| r.fetches.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Fetches the keys again unless that was done less than `min_refresh` ago (or, with
    /// `only_if_older_than`, unless they are younger than it). Concurrent callers wait for
    /// the one fetch. Returns whether new keys were installed.
    async fn refresh(&self, only_if_older_than: Duration) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        let asked = Instant::now();
        let mut last = remote.last_fetch.lock().await;
        if *last > asked {
            // Another call fetched while this one waited: its keys are the newest there are.
            return true;
        }
        if last.elapsed() < only_if_older_than.max(remote.min_refresh) {
            return false;
        }
        let fetched = remote.fetch().await;
        *last = Instant::now();
        match fetched {
            Ok(keys) => {
                if let Ok(mut current) = self.keys.write() {
                    *current = Arc::new(keys);
                }
                tracing::info!(url = %remote.url, "JWKS refreshed");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "JWKS refresh failed: keeping the keys we have");
                false
            }
        }
    }

    /// Production keys: a JWKS document (RS256 and ES256 keys).
    pub fn jwks(
        document: &str,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> anyhow::Result<Self> {
        Ok(Self::with_keys(parse_jwks(document)?, issuer, audience))
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = CLOCK_SKEW_SECONDS;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not only right when present.
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        validation
    }

    /// Verifies a compact JWT with the keys at hand and returns its principal.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        self.check(token).map_err(|refusal| match refusal {
            Refusal::UnknownKey => ApiError::token_invalid("token signed by an unknown key"),
            Refusal::Other(error) => error,
        })
    }

    /// Verifies a token, fetching the JWKS again once when it names a key not seen yet.
    pub async fn verify_refreshing(&self, token: &str) -> Result<Principal, ApiError> {
        if self.remote.as_ref().is_some_and(|r| {
            r.last_fetch
                .try_lock()
                .is_ok_and(|last| last.elapsed() > r.max_age)
        }) {
            self.refresh(JWKS_MAX_AGE).await;
        }
        match self.check(token) {
            Err(Refusal::UnknownKey) if self.remote.is_some() => {
                self.refresh(Duration::ZERO).await;
                self.verify(token)
            }
            _ => self.verify(token),
        }
    }

    fn check(&self, token: &str) -> Result<Principal, Refusal> {
        let unauthenticated = |why: String| Refusal::Other(ApiError::token_invalid(why));
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthenticated(format!("malformed token: {e}")))?;
        let keys = self.current_keys();
        let (algorithm, key) = match &*keys {
            Keys::Hs256(key) => (Algorithm::HS256, key),
            Keys::Jwks(keys) => {
                let found = keys.iter().find(|(kid, _, _)| match &header.kid {
                    Some(wanted) => kid.as_deref() == Some(wanted.as_str()),
                    None => keys.len() == 1,
                });
                let (_, algorithm, key) = found.ok_or(Refusal::UnknownKey)?;
                (*algorithm, key)
            }
        };
        if header.alg != algorithm {
            return Err(unauthenticated(format!(
                "token algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation(algorithm))
            .map_err(|e| unauthenticated(format!("invalid token: {e}")))?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() {
            return Err(unauthenticated("token has an empty `sub` claim".into()));
        }
        Ok(Principal {
            display_name: if claims.name.trim().is_empty() {
                claims.sub.clone()
            } else {
                claims.name.trim().to_owned()
            },
            id: claims.sub,
            team: claims.team.trim().to_owned(),
            roles: claims.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            recorded: false,
        })
    }

    /// The principal of a request's `authorization: Bearer <token>` metadata.
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Principal, ApiError> {
        self.verify(bearer(metadata)?)
    }

    /// Like [`Authenticator::authenticate`], fetching rotated JWKS keys when needed.
    pub async fn authenticate_refreshing(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Principal, ApiError> {
        self.verify_refreshing(bearer(metadata)?).await
    }
}

/// The token of `authorization: Bearer <token>`.
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<&str, ApiError> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| ApiError::token_missing("missing bearer token"))?
        .to_str()
        .map_err(|_| ApiError::token_missing("malformed authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::token_missing("authorization is not a Bearer token"))?;
    Ok(token.trim())
}

/// A tower layer that authenticates every call of the services it wraps, attaches the
/// [`Principal`], and (given a database) records the caller as a salesperson on first use.
/// Failures answer `UNAUTHENTICATED` before the service sees the request.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Authenticator,
    recorder: Option<crate::people::Recorder>,
}

impl AuthLayer {
    pub fn new(authenticator: Authenticator, recorder: Option<crate::people::Recorder>) -> Self {
        Self {
            authenticator,
            recorder,
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
            recorder: self.recorder.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Authenticator,
    recorder: Option<crate::people::Recorder>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for AuthService<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready service goes to this call; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        let recorder = self.recorder.clone();
        Box::pin(async move {
            let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
            match authenticator.authenticate_refreshing(&metadata).await {
                Err(error) => Ok(tonic::Status::from(error).into_http()),
                Ok(mut principal) => {
                    // Only salespeople are recorded: a caller without a sales role is refused
                    // by every call anyway.
                    if let Some(recorder) = recorder.as_ref().filter(|_| principal.has_sales_role())
                    {
                        principal.recorded = recorder.remember(&principal).await;
                    }
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
            }
        })
    }
}

/// What `salesopp token` mints: a development HS256 token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub sub: String,
    pub name: String,
    pub team: String,
    pub roles: Vec<String>,
    pub ttl_seconds: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Mints an HS256 token (development and tests only).
pub fn mint_hs256(secret: &[u8], request: &TokenRequest) -> anyhow::Result<String> {
    let now = crate::time::unix_now();
    let claims = Claims {
        sub: request.sub.clone(),
        name: request.name.clone(),
        team: request.team.clone(),
        roles: request.roles.clone(),
        exp: now + request.ttl_seconds,
        nbf: None,
        iat: Some(now),
        iss: request.issuer.clone(),
        aud: request.audience.clone().map(Audience::One),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}

/// Mints development tokens the way a suite configured with the same [`AuthArgs`] verifies
/// them: signed with `SALESOPP_AUTH_HS256_SECRET`, carrying `SALESOPP_AUTH_ISSUER` as `iss`
/// and `SALESOPP_AUTH_AUDIENCE` as `aud` when they are set. Used by `salesopp token`,
/// `salesopp demo` and `salesopp bench`.
#[derive(Clone)]
pub struct TokenMinter {
    secret: String,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMinter")
            .field("secret", &"(redacted)")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl TokenMinter {
    /// The minter for a suite served with `auth`. Refuses what such a suite would refuse
    /// to start with or could not verify: no HS256 secret, a secret under 16 bytes, or a
    /// JWKS (tokens then come from the identity provider, not from here).
    pub fn new(auth: &crate::config::AuthArgs) -> anyhow::Result<TokenMinter> {
        anyhow::ensure!(
            auth.auth_jwks.is_none(),
            "SALESOPP_AUTH_JWKS is set: a suite verifying with a JWKS accepts only its identity \
             provider's tokens; development tokens need SALESOPP_AUTH_HS256_SECRET instead"
        );
        let secret = auth.auth_hs256_secret.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "SALESOPP_AUTH_HS256_SECRET (--auth-hs256-secret) is required to mint tokens"
            )
        })?;
        anyhow::ensure!(
            secret.len() >= 16,
            "SALESOPP_AUTH_HS256_SECRET must be at least 16 bytes"
        );
        Ok(TokenMinter {
            secret,
            issuer: auth.auth_issuer.clone(),
            audience: auth.auth_audience.clone(),
        })
    }

    /// The `iss` claim the tokens carry, if any.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// The `aud` claim the tokens carry, if any.
    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// A token for `sub` valid `ttl_seconds`, with the suite's issuer and audience.
    pub fn mint(
        &self,
        sub: &str,
        name: &str,
        team: &str,
        roles: &[String],
        ttl_seconds: u64,
    ) -> anyhow::Result<String> {
        mint_hs256(
            self.secret.as_bytes(),
            &TokenRequest {
                sub: sub.to_owned(),
                name: name.to_owned(),
                team: team.to_owned(),
                roles: roles.to_vec(),
                ttl_seconds,
                issuer: self.issuer.clone(),
                audience: self.audience.clone(),
            },
        )
    }
}
