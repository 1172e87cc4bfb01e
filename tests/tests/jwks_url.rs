//! Identity hardening: keys from a JWKS URL are cached, a new `kid` (key rotation) triggers
//! one fetch for any number of concurrent calls, and unknown keys cannot cause a fetch storm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use salesopp_kit::Authenticator;
use salesopp_kit::auth::Claims;
use salesopp_kit::config::AuthArgs;

/// A JWKS endpoint on 127.0.0.1:0 whose key set a test can change, counting its fetches.
struct JwksServer {
    url: String,
    document: Arc<Mutex<String>>,
    hits: Arc<AtomicU64>,
}

impl JwksServer {
    async fn start(keys: &[&Jwk]) -> JwksServer {
        let document = Arc::new(Mutex::new(set(keys)));
        let hits = Arc::new(AtomicU64::new(0));
        let app = {
            let document = document.clone();
            let hits = hits.clone();
            axum::Router::new().route(
                "/.well-known/jwks.json",
                axum::routing::get(move || {
                    let document = document.clone();
                    let hits = hits.clone();
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        document.lock().expect("document").clone()
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("addr")
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        JwksServer {
            url,
            document,
            hits,
        }
    }

    fn publish(&self, keys: &[&Jwk]) {
        *self.document.lock().expect("document") = set(keys);
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

fn set(keys: &[&Jwk]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|k| (*k).clone()).collect(),
    })
    .expect("jwks json")
}

/// An ES256 key pair: the signing key and its public JWK named `kid`.
fn key(kid: &str) -> (EncodingKey, Jwk) {
    use p256::pkcs8::EncodePrivateKey as _;
    let key = p256::ecdsa::SigningKey::random(&mut rsa::rand_core::OsRng);
    let der = key.to_pkcs8_der().expect("PKCS#8 DER");
    let encoding = EncodingKey::from_ec_der(der.as_bytes());
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).expect("public JWK");
    jwk.common.key_id = Some(kid.to_owned());
    (encoding, jwk)
}

fn token(key: &EncodingKey, kid: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let claims = Claims {
        sub: "rep-1".into(),
        name: "Rep One".into(),
        team: "north".into(),
        roles: vec!["sales_rep".into()],
        exp: salesopp_kit::time::unix_now() + 600,
        nbf: None,
        iat: None,
        iss: None,
        aud: None,
    };
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

#[tokio::test]
async fn r12_jwks_url_rotation_fetches_once_for_a_new_kid() {
    let (old_key, old_jwk) = key("2026-11-old");
    let (new_key, new_jwk) = key("2026-11-new");
    let server = JwksServer::start(&[&old_jwk]).await;
    let auth = Authenticator::jwks_url(
        &server.url,
        None,
        None,
        Duration::ZERO,
        Duration::from_secs(3600),
    )
    .await
    .expect("keys fetched at start");
    assert_eq!(server.hits(), 1);

    let principal = auth
        .verify_refreshing(&token(&old_key, "2026-11-old"))
        .await
        .expect("a token of the published key");
    assert_eq!(principal.id, "rep-1");
    assert_eq!(server.hits(), 1, "a known key needs no fetch");

    // The identity provider rotates: the new key is published, then used.
    server.publish(&[&old_jwk, &new_jwk]);
    let rotated = token(&new_key, "2026-11-new");
    let calls = (0..20).map(|_| {
        let auth = auth.clone();
        let rotated = rotated.clone();
        tokio::spawn(async move { auth.verify_refreshing(&rotated).await })
    });
    for call in futures::future::join_all(calls).await {
        call.expect("task").expect("the rotated key is accepted");
    }
    assert_eq!(
        server.hits(),
        2,
        "twenty concurrent calls with the new kid cause one fetch"
    );
    assert_eq!(auth.jwks_fetches(), 2);

    // Both keys work from the cache now.
    auth.verify_refreshing(&token(&old_key, "2026-11-old"))
        .await
        .expect("old key");
    auth.verify_refreshing(&rotated).await.expect("new key");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn r12_unknown_kids_cannot_cause_a_fetch_storm() {
    let (_, jwk) = key("k1");
    let (stranger, _) = key("nobody");
    let server = JwksServer::start(&[&jwk]).await;
    let auth = Authenticator::jwks_url(
        &server.url,
        None,
        None,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
    .await
    .expect("keys fetched at start");
    for attempt in 0..50 {
        let refused = auth
            .verify_refreshing(&token(&stranger, &format!("forged-{attempt}")))
            .await;
        assert!(
            matches!(refused, Err(salesopp_kit::ApiError::Unauthenticated { .. })),
            "unknown key refused: {refused:?}"
        );
    }
    assert_eq!(
        server.hits(),
        1,
        "refreshes for unknown keys are rate-limited"
    );
}

/// `SALESOPP_AUTH_JWKS` names the setting (the environment is read by clap: its name is
/// checked on the command line's definition, since a test cannot set a process-wide
/// variable safely beside the other tests); a URL there configures the keys, and an
/// unreachable one refuses to start.
#[tokio::test]
async fn r12_jwks_url_is_configured_by_the_environment_names() {
    use clap::{Args as _, FromArgMatches as _};
    let command = AuthArgs::augment_args(clap::Command::new("serve"));
    let env_of = |id: &str| {
        command
            .get_arguments()
            .find(|arg| arg.get_id() == id)
            .and_then(|arg| arg.get_env())
            .map(|name| name.to_string_lossy().into_owned())
    };
    assert_eq!(env_of("auth_jwks").as_deref(), Some("SALESOPP_AUTH_JWKS"));
    assert_eq!(
        env_of("auth_issuer").as_deref(),
        Some("SALESOPP_AUTH_ISSUER")
    );
    assert_eq!(
        env_of("auth_audience").as_deref(),
        Some("SALESOPP_AUTH_AUDIENCE")
    );
    let (signing, jwk) = key("env-key");
    let server = JwksServer::start(&[&jwk]).await;
    let matches = command
        .clone()
        .try_get_matches_from(["serve", "--auth-jwks", server.url.as_str()])
        .expect("the flag of the same setting");
    let args = AuthArgs::from_arg_matches(&matches).expect("auth settings");
    assert_eq!(args.auth_jwks.as_deref(), Some(server.url.as_str()));
    let auth = args
        .authenticator()
        .await
        .expect("a JWKS URL configures the keys");
    auth.verify_refreshing(&token(&signing, "env-key"))
        .await
        .expect("accepted");
    let unreachable = AuthArgs {
        auth_jwks: Some("http://127.0.0.1:9/jwks.json".into()),
        ..Default::default()
    };
    let error = unreachable
        .authenticator()
        .await
        .expect_err("no keys, no start");
    assert!(
        error.to_string().contains("cannot fetch the JWKS"),
        "{error}"
    );
}
