//! The platform every salesopp service stands on, end to end: token verification (HS256 and
//! JWKS), health and reflection without a token, health following the database, the start-up
//! schema check, graceful shutdown, and development tokens.
//!
//! Real Postgres, real gRPC over sockets; each test on its own database. No timing is
//! asserted: waits poll for a state, with a generous deadline that only guards against hangs.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use salesopp_kit::auth::{CLOCK_SKEW_SECONDS, TokenRequest, mint_hs256};
use salesopp_kit::{ApiError, Authenticator, Role};
use salesopp_proto::statusconfig::v1 as pb;
use salesopp_tests::relay::Relay;
use salesopp_tests::{
    SECRET, SuiteOptions, TestDatabase, TestSuite, admin_options, authed, expect_code, rep_token,
    token,
};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const STATUS_CONFIG: &str = "salesopp.statusconfig.v1.StatusConfigService";
const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Guards every wait against a hang; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The claims of a valid sales_rep token, to be adjusted by each test.
fn rep_claims() -> Value {
    json!({
        "sub": "rep-a1",
        "name": "Somchai Rep",
        "team": "north",
        "roles": ["sales_rep"],
        "iat": now(),
        "exp": now() + 600,
    })
}

fn sign(algorithm: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign a token")
}

/// `claims` signed with the suite's HS256 secret.
fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

/// An unsigned (`alg: none`) token: header and payload, empty signature.
fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).expect("header json")),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims json")),
    )
}

/// ListStatuses with `authorization: <value>` (or none).
async fn list_with_authorization(
    suite: &TestSuite,
    authorization: Option<&str>,
) -> Result<pb::ListStatusesResponse, tonic::Status> {
    let mut request = tonic::Request::new(pb::ListStatusesRequest::default());
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("ascii metadata"));
    }
    let mut statuses = suite.statuses().await;
    let call = statuses.list_statuses(request);
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("ListStatuses answers (does not hang)")
        .map(tonic::Response::into_inner)
}

/// ListStatuses with `authorization: Bearer <token>`.
async fn list_as(
    suite: &TestSuite,
    token: &str,
) -> Result<pb::ListStatusesResponse, tonic::Status> {
    list_with_authorization(suite, Some(&format!("Bearer {token}"))).await
}

#[track_caller]
fn assert_unauthenticated<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    match result {
        Ok(value) => panic!("{what}: expected UNAUTHENTICATED, got success: {value:?}"),
        Err(status) => assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{what}: unexpected status {status:?}"
        ),
    }
}

/// Where the shared Postgres listens, for a relay in front of it.
async fn postgres_addr() -> SocketAddr {
    let options = admin_options();
    tokio::net::lookup_host((options.get_host().to_owned(), options.get_port()))
        .await
        .expect("resolve the Postgres host")
        .next()
        .expect("the Postgres host has an address")
}

async fn check_health(
    health: &mut HealthClient<Channel>,
    service: &str,
) -> Result<HealthCheckResponse, tonic::Status> {
    let call = health.check(HealthCheckRequest {
        service: service.to_owned(),
    });
    match tokio::time::timeout(PATIENCE, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("health check hung")),
    }
}

/// Polls `service`'s health until it reports `want`, or panics after [`PATIENCE`].
async fn wait_for_health(health: &mut HealthClient<Channel>, service: &str, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = check_health(health, service).await;
        if matches!(&got, Ok(response) if response.status == want as i32) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health of {service:?} never became {want:?}; last answer: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 1. Authentication on StatusConfigService/ListStatuses
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_no_token_is_unauthenticated() {
    let suite = TestSuite::spawn().await;
    let status = expect_code(
        list_with_authorization(&suite, None).await,
        Code::Unauthenticated,
    );
    assert!(
        status.message().contains("missing bearer token"),
        "{status:?}"
    );
}

#[tokio::test]
async fn auth_basic_scheme_is_unauthenticated() {
    let suite = TestSuite::spawn().await;
    assert_unauthenticated(
        list_with_authorization(&suite, Some("Basic xyz")).await,
        "Basic xyz",
    );
    // A valid token under the wrong scheme is refused too.
    assert_unauthenticated(
        list_with_authorization(&suite, Some(&format!("Basic {}", rep_token()))).await,
        "Basic <valid token>",
    );
    // A bare token, no scheme at all.
    assert_unauthenticated(
        list_with_authorization(&suite, Some(&rep_token())).await,
        "bare token",
    );
    // The scheme with nothing after it, and garbage after it.
    assert_unauthenticated(
        list_with_authorization(&suite, Some("Bearer ")).await,
        "empty bearer",
    );
    assert_unauthenticated(list_as(&suite, "not.a.jwt").await, "garbage bearer");
}

#[tokio::test]
async fn auth_token_signed_with_another_secret_is_unauthenticated() {
    let suite = TestSuite::spawn().await;
    let forged = sign(
        Algorithm::HS256,
        None,
        &rep_claims(),
        &EncodingKey::from_secret(b"another-secret-0123456789abcdef"),
    );
    assert_unauthenticated(list_as(&suite, &forged).await, "other secret");
}

#[tokio::test]
async fn auth_tampered_token_is_unauthenticated() {
    let suite = TestSuite::spawn().await;
    // Re-encode the payload with an admin role, keeping the rep's signature.
    let genuine = rep_token();
    let parts: Vec<&str> = genuine.split('.').collect();
    assert_eq!(parts.len(), 3);
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    claims["roles"] = json!(["sales_admin"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json")),
        parts[2]
    );
    assert_unauthenticated(list_as(&suite, &tampered).await, "tampered payload");
}

#[tokio::test]
async fn auth_expired_token_is_unauthenticated() {
    let suite = TestSuite::spawn().await;
    let mut claims = rep_claims();
    claims["iat"] = json!(now() - 7200);
    claims["exp"] = json!(now() - 3600);
    assert_unauthenticated(list_as(&suite, &hs256(&claims)).await, "expired 1 h ago");

    // Just beyond the clock-skew allowance.
    claims["exp"] = json!(now() - CLOCK_SKEW_SECONDS - 60);
    assert_unauthenticated(
        list_as(&suite, &hs256(&claims)).await,
        "expired beyond the skew",
    );
}

#[tokio::test]
async fn auth_token_without_exp_is_unauthenticated() {
    let suite = TestSuite::spawn().await;
    let mut claims = rep_claims();
    claims.as_object_mut().expect("object").remove("exp");
    assert_unauthenticated(list_as(&suite, &hs256(&claims)).await, "no exp");
}

#[tokio::test]
async fn auth_token_expired_within_clock_skew_is_accepted() {
    let suite = TestSuite::spawn().await;
    let mut claims = rep_claims();
    claims["exp"] = json!(now() - 10);
    let listed = list_as(&suite, &hs256(&claims))
        .await
        .expect("a token expired 10 s ago is within the 30 s skew");
    assert_eq!(listed.statuses.len(), 7);
}

#[tokio::test]
async fn auth_token_not_yet_valid_is_unauthenticated() {
    let suite = TestSuite::spawn().await;
    let mut claims = rep_claims();
    claims["nbf"] = json!(now() + CLOCK_SKEW_SECONDS + 300);
    assert_unauthenticated(list_as(&suite, &hs256(&claims)).await, "nbf in 5 min");

    // Within the skew, nbf is tolerated.
    claims["nbf"] = json!(now() + 10);
    list_as(&suite, &hs256(&claims))
        .await
        .expect("nbf 10 s ahead is within the skew");
}

#[tokio::test]
async fn auth_token_with_empty_sub_is_unauthenticated() {
    let suite = TestSuite::spawn().await;
    let mut claims = rep_claims();
    claims["sub"] = json!("");
    assert_unauthenticated(list_as(&suite, &hs256(&claims)).await, "empty sub");
    claims["sub"] = json!("   ");
    assert_unauthenticated(list_as(&suite, &hs256(&claims)).await, "blank sub");
    claims.as_object_mut().expect("object").remove("sub");
    assert_unauthenticated(list_as(&suite, &hs256(&claims)).await, "no sub");
}

#[tokio::test]
async fn auth_alg_none_and_other_algorithms_are_unauthenticated() {
    let suite = TestSuite::spawn().await;
    let claims = rep_claims();
    for alg in ["none", "None", "NONE"] {
        let token = unsigned(&json!({ "alg": alg, "typ": "JWT" }), &claims);
        assert_unauthenticated(list_as(&suite, &token).await, &format!("alg {alg}"));
    }
    // alg none with the genuine HS256 signature appended.
    let genuine = hs256(&claims);
    let signature = genuine.rsplit('.').next().expect("signature");
    let token = format!(
        "{}{signature}",
        unsigned(&json!({ "alg": "none", "typ": "JWT" }), &claims)
    );
    assert_unauthenticated(list_as(&suite, &token).await, "alg none with a signature");

    // HS384 and HS512 with the right secret: the algorithm is pinned to HS256.
    for algorithm in [Algorithm::HS384, Algorithm::HS512] {
        let token = sign(
            algorithm,
            None,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        );
        assert_unauthenticated(list_as(&suite, &token).await, &format!("{algorithm:?}"));
    }
}

fn idp_options() -> SuiteOptions {
    SuiteOptions {
        audience: Some("salesopp".to_owned()),
        issuer: Some("https://idp.example".to_owned()),
        ..SuiteOptions::default()
    }
}

fn idp_claims() -> Value {
    let mut claims = rep_claims();
    claims["aud"] = json!("salesopp");
    claims["iss"] = json!("https://idp.example");
    claims
}

#[tokio::test]
async fn auth_right_audience_and_issuer_are_accepted() {
    let suite = TestSuite::spawn_with(idp_options()).await;
    let listed = list_as(&suite, &hs256(&idp_claims()))
        .await
        .expect("right audience and issuer");
    assert_eq!(listed.statuses.len(), 7);

    // As minted by `salesopp token --issuer --audience`.
    let minted = mint_hs256(
        SECRET.as_bytes(),
        &TokenRequest {
            sub: "rep-a1".into(),
            name: "Somchai Rep".into(),
            team: "north".into(),
            roles: vec!["sales_rep".into()],
            ttl_seconds: 600,
            issuer: Some("https://idp.example".into()),
            audience: Some("salesopp".into()),
        },
    )
    .expect("mint");
    list_as(&suite, &minted).await.expect("minted token");
}

#[tokio::test]
async fn auth_wrong_audience_is_unauthenticated() {
    let suite = TestSuite::spawn_with(idp_options()).await;
    let mut claims = idp_claims();
    claims["aud"] = json!("billing");
    assert_unauthenticated(list_as(&suite, &hs256(&claims)).await, "wrong aud");
}

/// With an audience configured, a token that names no audience at all is not for this
/// service: it must be refused like a wrong one (otherwise any token of the same issuer and
/// keys, minted for no particular API, opens salesopp).
#[tokio::test]
async fn auth_missing_audience_is_unauthenticated() {
    let suite = TestSuite::spawn_with(idp_options()).await;
    let mut claims = idp_claims();
    claims.as_object_mut().expect("object").remove("aud");
    assert_unauthenticated(list_as(&suite, &hs256(&claims)).await, "no aud");
    // The harness's default token carries neither audience nor issuer.
    assert_unauthenticated(list_as(&suite, &rep_token()).await, "harness token");
}

#[tokio::test]
async fn auth_wrong_issuer_is_unauthenticated() {
    let suite = TestSuite::spawn_with(idp_options()).await;
    let mut claims = idp_claims();
    claims["iss"] = json!("https://evil.example");
    assert_unauthenticated(list_as(&suite, &hs256(&claims)).await, "wrong iss");
}

/// With an issuer configured, a token that names no issuer must be refused like a wrong one.
#[tokio::test]
async fn auth_missing_issuer_is_unauthenticated() {
    let suite = TestSuite::spawn_with(idp_options()).await;
    let mut claims = idp_claims();
    claims.as_object_mut().expect("object").remove("iss");
    assert_unauthenticated(list_as(&suite, &hs256(&claims)).await, "no iss");
}

/// RFC 7519 §4.1.3: `aud` may be a string or an array of strings; identity providers that
/// serve several APIs (Auth0, Keycloak, Azure AD) send the array form. A token whose `aud`
/// array contains the configured audience is for this service.
#[tokio::test]
async fn auth_audience_array_containing_ours_is_accepted() {
    let suite = TestSuite::spawn_with(idp_options()).await;
    let mut claims = idp_claims();
    claims["aud"] = json!(["salesopp", "https://idp.example/userinfo"]);
    list_as(&suite, &hs256(&claims))
        .await
        .expect("an aud array containing salesopp");
}

#[tokio::test]
async fn auth_audience_array_without_ours_is_unauthenticated() {
    let suite = TestSuite::spawn_with(idp_options()).await;
    let mut claims = idp_claims();
    claims["aud"] = json!(["billing", "crm"]);
    assert_unauthenticated(
        list_as(&suite, &hs256(&claims)).await,
        "aud array without salesopp",
    );
}

#[tokio::test]
async fn auth_token_without_sales_role_is_permission_denied() {
    let suite = TestSuite::spawn().await;
    let status = expect_code(
        list_as(&suite, &token("visitor-1", "Vee Visitor", "north", &[])).await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains("sales role"), "{status:?}");
    // Unknown role names grant nothing.
    expect_code(
        list_as(
            &suite,
            &token("visitor-2", "", "north", &["admin", "Sales_Rep", "viewer"]),
        )
        .await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn auth_sales_rep_can_read() {
    let suite = TestSuite::spawn().await;
    let listed = list_as(&suite, &rep_token()).await.expect("rep lists");
    assert_eq!(listed.statuses.len(), 7);
    // The harness helper, and the lower-case scheme.
    let mut statuses = suite.statuses().await;
    statuses
        .list_statuses(authed(&rep_token(), pb::ListStatusesRequest::default()))
        .await
        .expect("authed()");
    list_with_authorization(&suite, Some(&format!("bearer {}", rep_token())))
        .await
        .expect("lower-case bearer");
}

// ---------------------------------------------------------------------------------------
// 2. JWKS (RS256, ES256), on the Authenticator directly
// ---------------------------------------------------------------------------------------

const RSA_KID: &str = "rsa-2026";
const EC_KID: &str = "ec-2026";

struct TestKeys {
    rsa: EncodingKey,
    rsa_other: EncodingKey,
    ec: EncodingKey,
    ec_other: EncodingKey,
    /// Public key encodings an attacker can read, to forge HS256 tokens with.
    public_secrets: Vec<(&'static str, Vec<u8>)>,
    /// A JWKS document with the RSA key (`RSA_KID`) and the EC key (`EC_KID`).
    jwks: String,
}

fn rsa_key() -> (EncodingKey, rsa::RsaPrivateKey) {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
    let der = key.to_pkcs1_der().expect("PKCS#1 DER");
    (EncodingKey::from_rsa_der(der.as_bytes()), key)
}

fn ec_key() -> (EncodingKey, p256::ecdsa::SigningKey) {
    use p256::pkcs8::EncodePrivateKey as _;
    let key = p256::ecdsa::SigningKey::random(&mut rsa::rand_core::OsRng);
    let der = key.to_pkcs8_der().expect("PKCS#8 DER");
    (EncodingKey::from_ec_der(der.as_bytes()), key)
}

fn public_jwk(key: &EncodingKey, algorithm: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, algorithm).expect("public JWK");
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use p256::pkcs8::EncodePublicKey as _;
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        use rsa::traits::PublicKeyParts as _;

        let (rsa, rsa_private) = rsa_key();
        let (rsa_other, _) = rsa_key();
        let (ec, ec_private) = ec_key();
        let (ec_other, _) = ec_key();

        let rsa_public = rsa_private.to_public_key();
        let ec_public = ec_private.verifying_key();
        let rsa_jwk = public_jwk(&rsa, Algorithm::RS256, RSA_KID);
        let ec_jwk = public_jwk(&ec, Algorithm::ES256, EC_KID);
        let public_secrets = vec![
            (
                "RSA PKCS#1 DER",
                rsa_public.to_pkcs1_der().expect("der").as_bytes().to_vec(),
            ),
            (
                "RSA PKCS#1 PEM",
                rsa_public
                    .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
                    .expect("pem")
                    .into_bytes(),
            ),
            ("RSA modulus", rsa_public.n().to_bytes_be()),
            (
                "EC SEC1 point",
                ec_public.to_encoded_point(false).as_bytes().to_vec(),
            ),
            (
                "EC SPKI PEM",
                ec_public
                    .to_public_key_pem(p256::pkcs8::LineEnding::LF)
                    .expect("pem")
                    .into_bytes(),
            ),
            (
                "RSA JWK JSON",
                serde_json::to_vec(&rsa_jwk).expect("jwk json"),
            ),
        ];
        let jwks = serde_json::to_string(&JwkSet {
            keys: vec![rsa_jwk, ec_jwk],
        })
        .expect("JWKS json");
        TestKeys {
            rsa,
            rsa_other,
            ec,
            ec_other,
            public_secrets,
            jwks,
        }
    })
}

fn jwks_authenticator() -> Authenticator {
    Authenticator::jwks(&keys().jwks, None, None).expect("a valid JWKS")
}

#[track_caller]
fn assert_refused(result: Result<salesopp_kit::Principal, ApiError>, what: &str) {
    match result {
        Err(ApiError::Unauthenticated { .. }) => {}
        other => panic!("{what}: expected Unauthenticated, got {other:?}"),
    }
}

#[test]
fn jwks_accepts_rs256_and_es256_tokens_with_their_kid() {
    let keys = keys();
    let auth = jwks_authenticator();
    let claims = rep_claims();

    let principal = auth
        .verify(&sign(Algorithm::RS256, Some(RSA_KID), &claims, &keys.rsa))
        .expect("RS256 with the RSA kid");
    assert_eq!(principal.id, "rep-a1");
    assert_eq!(principal.display_name, "Somchai Rep");
    assert_eq!(principal.team, "north");
    assert!(principal.has_role(Role::SalesRep));

    let principal = auth
        .verify(&sign(Algorithm::ES256, Some(EC_KID), &claims, &keys.ec))
        .expect("ES256 with the EC kid");
    assert_eq!(principal.id, "rep-a1");
}

#[test]
fn jwks_checks_issuer_and_audience() {
    let keys = keys();
    let auth = Authenticator::jwks(
        &keys.jwks,
        Some("https://idp.example".into()),
        Some("salesopp".into()),
    )
    .expect("JWKS");
    auth.verify(&sign(
        Algorithm::RS256,
        Some(RSA_KID),
        &idp_claims(),
        &keys.rsa,
    ))
    .expect("right iss and aud");
    let mut claims = idp_claims();
    claims["aud"] = json!("billing");
    assert_refused(
        auth.verify(&sign(Algorithm::RS256, Some(RSA_KID), &claims, &keys.rsa)),
        "wrong aud",
    );
    let mut claims = idp_claims();
    claims["iss"] = json!("https://evil.example");
    assert_refused(
        auth.verify(&sign(Algorithm::ES256, Some(EC_KID), &claims, &keys.ec)),
        "wrong iss",
    );
}

#[test]
fn jwks_refuses_an_unknown_kid() {
    let keys = keys();
    let auth = jwks_authenticator();
    let claims = rep_claims();
    assert_refused(
        auth.verify(&sign(
            Algorithm::RS256,
            Some("rsa-1999"),
            &claims,
            &keys.rsa,
        )),
        "unknown RSA kid",
    );
    assert_refused(
        auth.verify(&sign(Algorithm::ES256, Some("ec-1999"), &claims, &keys.ec)),
        "unknown EC kid",
    );
    // No kid, with several keys in the set: which key is meant is unknown.
    assert_refused(
        auth.verify(&sign(Algorithm::RS256, None, &claims, &keys.rsa)),
        "no kid",
    );
}

#[test]
fn jwks_refuses_a_token_signed_by_another_key() {
    let keys = keys();
    let auth = jwks_authenticator();
    let claims = rep_claims();
    assert_refused(
        auth.verify(&sign(
            Algorithm::RS256,
            Some(RSA_KID),
            &claims,
            &keys.rsa_other,
        )),
        "another RSA key under the known kid",
    );
    assert_refused(
        auth.verify(&sign(
            Algorithm::ES256,
            Some(EC_KID),
            &claims,
            &keys.ec_other,
        )),
        "another EC key under the known kid",
    );
    // The right key under the other key's kid (a cross-kid mix-up).
    assert_refused(
        auth.verify(&sign(Algorithm::ES256, Some(RSA_KID), &claims, &keys.ec)),
        "EC token under the RSA kid",
    );
    // The algorithm is pinned to the key: RS384/PS256 with the right RSA key are refused.
    for algorithm in [Algorithm::RS384, Algorithm::PS256] {
        assert_refused(
            auth.verify(&sign(algorithm, Some(RSA_KID), &claims, &keys.rsa)),
            &format!("{algorithm:?} with the RSA key"),
        );
    }
}

#[test]
fn jwks_refuses_hs256_forged_with_the_public_key() {
    let keys = keys();
    let auth = jwks_authenticator();
    let claims = rep_claims();
    for (what, secret) in &keys.public_secrets {
        for kid in [Some(RSA_KID), Some(EC_KID), None] {
            let forged = sign(
                Algorithm::HS256,
                kid,
                &claims,
                &EncodingKey::from_secret(secret),
            );
            assert_refused(
                auth.verify(&forged),
                &format!("HS256 forged with the {what} under kid {kid:?}"),
            );
        }
    }
    for kid in [RSA_KID, EC_KID] {
        let token = unsigned(&json!({ "alg": "none", "kid": kid }), &claims);
        assert_refused(auth.verify(&token), &format!("alg none under kid {kid}"));
    }
}

#[test]
fn jwks_ignores_symmetric_keys_in_the_set() {
    let keys = keys();
    let mut set: Value = serde_json::from_str(&keys.jwks).expect("json");
    set["keys"]
        .as_array_mut()
        .expect("keys")
        .push(json!({ "kty": "oct", "kid": "shared", "k": URL_SAFE_NO_PAD.encode(SECRET) }));
    let auth = Authenticator::jwks(&set.to_string(), None, None).expect("JWKS");
    assert_refused(
        auth.verify(&sign(
            Algorithm::HS256,
            Some("shared"),
            &rep_claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )),
        "HS256 under an oct key of the JWKS",
    );
    // A set of only symmetric keys is refused at start-up.
    let only_oct = json!({ "keys": [{ "kty": "oct", "kid": "shared", "k": "c2VjcmV0" }] });
    let error =
        Authenticator::jwks(&only_oct.to_string(), None, None).expect_err("no RS256 or ES256 key");
    assert!(error.to_string().contains("no RS256 or ES256"), "{error}");
    assert!(Authenticator::jwks("not json", None, None).is_err());
}

#[test]
fn jwks_with_one_key_accepts_a_token_without_kid() {
    let keys = keys();
    let set = JwkSet {
        keys: vec![public_jwk(&keys.ec, Algorithm::ES256, EC_KID)],
    };
    let auth =
        Authenticator::jwks(&serde_json::to_string(&set).expect("json"), None, None).expect("JWKS");
    auth.verify(&sign(Algorithm::ES256, None, &rep_claims(), &keys.ec))
        .expect("the only key");
    assert_refused(
        auth.verify(&sign(Algorithm::ES256, None, &rep_claims(), &keys.ec_other)),
        "another key without kid",
    );
}

// ---------------------------------------------------------------------------------------
// 3. Health and reflection, without a token
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn health_answers_serving_without_a_token() {
    let suite = TestSuite::spawn().await;
    let mut health = HealthClient::new(suite.channel().await);
    wait_for_health(&mut health, "", ServingStatus::Serving).await;
    wait_for_health(&mut health, STATUS_CONFIG, ServingStatus::Serving).await;
    let status = check_health(&mut health, "salesopp.nope.v1.NopeService")
        .await
        .expect_err("an unknown service");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

macro_rules! list_services_with {
    ($module:path, $channel:expr) => {{
        use reflection::server_reflection_client::ServerReflectionClient;
        use reflection::server_reflection_request::MessageRequest;
        use reflection::server_reflection_response::MessageResponse;
        use $module as reflection;

        let mut client = ServerReflectionClient::new($channel);
        let requests = vec![
            reflection::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            reflection::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    STATUS_CONFIG.to_owned(),
                )),
            },
        ];
        let mut responses = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .expect("reflection answers without a token")
            .into_inner();
        let listed = responses
            .message()
            .await
            .expect("list services")
            .expect("a response");
        let names: Vec<String> = match listed.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("expected a service list, got {other:?}"),
        };
        let described = responses
            .message()
            .await
            .expect("file containing symbol")
            .expect("a response");
        let files = match described.message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto,
            other => panic!("expected file descriptors, got {other:?}"),
        };
        (names, files)
    }};
}

#[track_caller]
fn assert_lists_every_service(names: &[String], files: &[Vec<u8>]) {
    for wanted in [STATUS_CONFIG, HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }
    let described: Vec<String> = files
        .iter()
        .map(|bytes| {
            <prost_types::FileDescriptorProto as prost::Message>::decode(bytes.as_slice())
                .expect("a file descriptor")
        })
        .flat_map(|file| {
            let package = file.package().to_owned();
            file.service
                .into_iter()
                .map(move |s| format!("{package}.{}", s.name()))
        })
        .collect();
    assert!(
        described.iter().any(|s| s == STATUS_CONFIG),
        "the descriptor of {STATUS_CONFIG} is not served: {described:?}"
    );
}

#[tokio::test]
async fn reflection_v1_lists_services_without_a_token() {
    let suite = TestSuite::spawn().await;
    let (names, files) = list_services_with!(tonic_reflection::pb::v1, suite.channel().await);
    assert_lists_every_service(&names, &files);
}

#[tokio::test]
async fn reflection_v1alpha_lists_services_without_a_token() {
    let suite = TestSuite::spawn().await;
    let (names, files) = list_services_with!(tonic_reflection::pb::v1alpha, suite.channel().await);
    assert_lists_every_service(&names, &files);
}

/// `grpcurl`, a common generic client, works with reflection alone. Skipped (with a note)
/// when grpcurl is not installed.
#[tokio::test]
async fn grpcurl_lists_and_describes_services() {
    let suite = TestSuite::spawn().await;
    let addr = suite.addr.to_string();
    let run = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("grpcurl").args(args).output()
        })
    };
    let list = match run(vec!["-plaintext".into(), addr.clone(), "list".into()])
        .await
        .expect("join")
    {
        Ok(output) => output,
        Err(error) => {
            eprintln!("note: grpcurl is not available ({error}): skipping this test");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "grpcurl list failed: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    for wanted in [STATUS_CONFIG, HEALTH, REFLECTION_V1ALPHA] {
        assert!(
            stdout.lines().any(|l| l.trim() == wanted),
            "{wanted} not in {stdout}"
        );
    }
    let describe = run(vec![
        "-plaintext".into(),
        addr.clone(),
        "describe".into(),
        STATUS_CONFIG.into(),
    ])
    .await
    .expect("join")
    .expect("grpcurl runs");
    let described = String::from_utf8_lossy(&describe.stdout);
    assert!(
        describe.status.success() && described.contains("ListStatuses"),
        "grpcurl describe: {described} {}",
        String::from_utf8_lossy(&describe.stderr)
    );
    // And a call without a token is refused the gRPC way.
    let call = run(vec![
        "-plaintext".into(),
        addr,
        format!("{STATUS_CONFIG}/ListStatuses"),
    ])
    .await
    .expect("join")
    .expect("grpcurl runs");
    let stderr = String::from_utf8_lossy(&call.stderr);
    assert!(
        !call.status.success() && stderr.contains("Unauthenticated"),
        "grpcurl call without a token: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Health follows the database
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn health_follows_the_database_and_calls_answer_unavailable_meanwhile() {
    let database = TestDatabase::create().await;
    let relay = Relay::start(postgres_addr().await).await;
    let service_pool = salesopp_kit::db::pool_options(10).connect_lazy_with(
        database
            .options
            .clone()
            .host("127.0.0.1")
            .port(relay.addr.port()),
    );
    let suite = TestSuite::serve(database, service_pool, SuiteOptions::default()).await;
    let mut health = HealthClient::new(suite.channel().await);

    wait_for_health(&mut health, "", ServingStatus::Serving).await;
    wait_for_health(&mut health, STATUS_CONFIG, ServingStatus::Serving).await;
    list_as(&suite, &rep_token())
        .await
        .expect("ListStatuses with the database up");

    relay.cut();
    wait_for_health(&mut health, STATUS_CONFIG, ServingStatus::NotServing).await;
    wait_for_health(&mut health, "", ServingStatus::NotServing).await;
    for attempt in 1..=3 {
        let status = expect_code(list_as(&suite, &rep_token()).await, Code::Unavailable);
        assert!(
            !status.message().to_lowercase().contains("sql")
                && !status.message().contains("127.0.0.1"),
            "attempt {attempt}: the UNAVAILABLE message leaks internals: {status:?}"
        );
    }
    // Authentication still comes first while the database is away.
    expect_code(
        list_with_authorization(&suite, None).await,
        Code::Unauthenticated,
    );

    relay.restore();
    wait_for_health(&mut health, STATUS_CONFIG, ServingStatus::Serving).await;
    wait_for_health(&mut health, "", ServingStatus::Serving).await;
    let listed = list_as(&suite, &rep_token())
        .await
        .expect("ListStatuses once the database is back, without a restart");
    assert_eq!(listed.statuses.len(), 7);
}

// ---------------------------------------------------------------------------------------
// 5. The start-up schema check
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn schema_check_refuses_an_empty_database() {
    let database = TestDatabase::create_empty().await;
    let pool = database.pool().await;
    let error = tokio::time::timeout(
        Duration::from_secs(30),
        salesopp::wait_for_schema(&pool, Duration::from_secs(5)),
    )
    .await
    .expect("the schema check answers")
    .expect_err("an empty database has no schema");
    assert!(
        error.to_string().contains("salesopp migrate"),
        "the error should say what to do: {error}"
    );
    pool.close().await;
}

#[tokio::test]
async fn schema_check_accepts_a_migrated_database() {
    let database = TestDatabase::create().await;
    let pool = database.pool().await;
    salesopp::wait_for_schema(&pool, Duration::from_secs(5))
        .await
        .expect("a migrated database is at the version this build needs");
    assert_eq!(
        salesopp_kit::db::applied_schema_version(&pool)
            .await
            .expect("version"),
        salesopp_kit::db::required_schema_version()
    );
    pool.close().await;
}

#[tokio::test]
async fn schema_check_waits_for_an_unreachable_database() {
    let database = TestDatabase::create().await;
    let relay = Relay::start(postgres_addr().await).await;
    let pool = salesopp_kit::db::pool_options(2).connect_lazy_with(
        database
            .options
            .clone()
            .host("127.0.0.1")
            .port(relay.addr.port()),
    );
    relay.cut();

    // Given up after its timeout, with a message that says why.
    let error = salesopp::wait_for_schema(&pool, Duration::from_millis(500))
        .await
        .expect_err("the database is unreachable");
    assert!(error.to_string().contains("not reachable"), "{error}");

    // Retried until the database comes back: it tries again and again while the relay is
    // cut (each try a refused connection), and has not given up.
    let refused = relay.refused();
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { salesopp::wait_for_schema(&pool, Duration::from_secs(60)).await }
    });
    relay.until_refused(refused + 3).await;
    assert!(
        !waiting.is_finished(),
        "wait_for_schema gave up while the database was unreachable"
    );
    relay.restore();
    tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("wait_for_schema notices the database is back")
        .expect("join")
        .expect("the schema is current");
    pool.close().await;
}

// ---------------------------------------------------------------------------------------
// 6. Graceful shutdown
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn stop_returns_ok_and_refuses_new_connections() {
    let mut suite = TestSuite::spawn().await;
    list_as(&suite, &rep_token())
        .await
        .expect("serving before the stop");
    // A client connected before the stop.
    let mut connected = suite.statuses().await;

    tokio::time::timeout(Duration::from_secs(30), suite.stop())
        .await
        .expect("stop returns")
        .expect("serve ends with Ok");

    let refused = tokio::net::TcpStream::connect(suite.addr).await;
    assert!(
        refused.is_err(),
        "a new TCP connection was accepted after stop"
    );
    let channel = Channel::from_shared(suite.url())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    assert!(channel.is_err(), "a new gRPC channel connected after stop");

    let call = tokio::time::timeout(
        Duration::from_secs(30),
        connected.list_statuses(authed(&rep_token(), pb::ListStatusesRequest::default())),
    )
    .await
    .expect("a call after stop does not hang");
    let status = call.expect_err("no call is served after stop");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Stopping twice is harmless.
    suite.stop().await.expect("second stop");
}

// ---------------------------------------------------------------------------------------
// 7. Development tokens (`salesopp token`)
// ---------------------------------------------------------------------------------------

#[test]
fn minted_token_roundtrips_through_verify() {
    let secret = b"a-development-secret-of-32-bytes";
    let minted = mint_hs256(
        secret,
        &TokenRequest {
            sub: "mgr-a".into(),
            name: "  Malee Manager ".into(),
            team: " north ".into(),
            roles: vec!["sales_manager".into(), "sales_rep".into(), "janitor".into()],
            ttl_seconds: 3600,
            issuer: Some("https://idp.example".into()),
            audience: Some("salesopp".into()),
        },
    )
    .expect("mint");

    let auth = Authenticator::hs256(
        secret,
        Some("https://idp.example".into()),
        Some("salesopp".into()),
    );
    let principal = auth.verify(&minted).expect("the minted token verifies");
    assert_eq!(principal.id, "mgr-a");
    assert_eq!(principal.display_name, "Malee Manager");
    assert_eq!(principal.team, "north");
    assert_eq!(
        principal.roles.iter().copied().collect::<Vec<_>>(),
        vec![Role::SalesRep, Role::SalesManager],
        "unknown roles are dropped"
    );

    // The claims as written: HS256, exp = iat + ttl, no nbf.
    let header = jsonwebtoken::decode_header(&minted).expect("header");
    assert_eq!(header.alg, Algorithm::HS256);
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(minted.split('.').nth(1).expect("payload"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(
        payload["exp"].as_u64().expect("exp") - payload["iat"].as_u64().expect("iat"),
        3600
    );
    assert_eq!(payload["iss"], "https://idp.example");
    assert_eq!(payload["aud"], "salesopp");

    // Another secret, or another audience, refuses it.
    assert_refused(
        Authenticator::hs256(b"another-secret-of-thirty-two-b", None, None).verify(&minted),
        "another secret",
    );
    assert_refused(
        Authenticator::hs256(secret, None, Some("billing".into())).verify(&minted),
        "another audience",
    );

    // Without a name, the display name falls back to the id.
    let nameless = mint_hs256(
        secret,
        &TokenRequest {
            sub: "rep-b2".into(),
            name: String::new(),
            team: String::new(),
            roles: vec!["sales_rep".into()],
            ttl_seconds: 60,
            issuer: None,
            audience: None,
        },
    )
    .expect("mint");
    let principal = Authenticator::hs256(secret, None, None)
        .verify(&nameless)
        .expect("verify");
    assert_eq!(principal.display_name, "rep-b2");
    assert_eq!(principal.team, "");
}
