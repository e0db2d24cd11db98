//! Client authentication: every accepted key type and algorithm, and each known JWT attack
//! (`alg: none`, HS/RS confusion, expired, not yet valid, wrong issuer or audience, forged
//! signature, unknown `kid`), through the real gateway and on `Verifier` directly. Keys are the
//! test-only PEM files in `tests/keys/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flowgate::auth::{AuthConfig, AuthError, KeyConfigError, Verifier};
use flowgate::engine::EngineConfig;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::*;

fn key_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn key_bytes(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).expect("test key exists")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a token valid for ten minutes for `sub`.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600, "iat": now()})
}

fn signing_key(alg: Algorithm, private_pem: &str) -> EncodingKey {
    let pem = key_bytes(private_pem);
    match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
            EncodingKey::from_rsa_pem(&pem).unwrap()
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        other => panic!("no test key for {other:?}"),
    }
}

fn sign(alg: Algorithm, private_pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &signing_key(alg, private_pem)).unwrap()
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, "rsa_private.pem", None, claims)
}

/// A gateway config verifying with the PEM public key `file` (RSA, EC or Ed25519).
fn public_key(file: &str) -> AuthConfig {
    AuthConfig {
        jwt_public_key_file: Some(key_path(file)),
        ..AuthConfig::unconfigured()
    }
}

fn verifier(config: &AuthConfig) -> Verifier {
    Verifier::from_config(config).expect("valid auth config")
}

/// A token shaped by hand: base64url JSON header and claims, and the given signature segment.
fn handmade(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

async fn app_with(auth: AuthConfig) -> TestApp {
    spawn_app_with(EngineConfig::for_tests(), |c| c.auth = auth).await
}

/// The gateway answers the token with an `unauthenticated` error frame (that does not repeat
/// the token) and close code 4401.
async fn assert_refused(app: &TestApp, token: &str) {
    let mut c = Client::connect_bearer(&app.ws_url("echo"), Some(token)).await;
    let f = c.next().await.expect("error frame");
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["data"]["code"], "unauthenticated", "{f}");
    assert_no_token_part(&f.to_string(), token);
    assert_eq!(c.close_code().await, Some(4401));
}

/// The gateway runs the echo agent for the token's holder.
async fn assert_runs(app: &TestApp, token: &str) {
    let mut c = Client::connect_bearer(&app.ws_url("echo"), Some(token)).await;
    c.send_json(json!({"message": "signed in"})).await;
    let frames = c.collect_run().await;
    assert_eq!(
        frames.last().map(|f| f["type"].clone()),
        Some(json!("flow_completed")),
        "{frames:#?}"
    );
    let out = frames.iter().find(|f| f["type"] == "final_output").unwrap();
    assert_eq!(out["data"]["text_output"], "signed in");
}

fn assert_no_token_part(text: &str, token: &str) {
    for part in token.split('.').filter(|p| p.len() >= 8) {
        assert!(!text.contains(part), "`{text}` repeats a part of the token");
    }
}

// --- attacks -------------------------------------------------------------------------------

#[tokio::test]
async fn alg_none_token_is_refused_with_4401() {
    let app = spawn_app().await;
    let none = handmade(&json!({"alg": "none", "typ": "JWT"}), &claims("alice"), "");
    assert_refused(&app, &none).await;
    // Also with the signature segment left out and with other spellings of `none`.
    let v = verifier(&AuthConfig::hs256_for_tests(SECRET));
    for alg in ["none", "None", "NONE"] {
        let t = handmade(&json!({"alg": alg, "typ": "JWT"}), &claims("alice"), "");
        assert!(v.verify(&t).is_err(), "alg {alg} accepted");
        assert!(v.verify(t.trim_end_matches('.')).is_err());
    }
}

#[tokio::test]
async fn hs256_token_keyed_with_the_rsa_public_key_pem_is_refused() {
    // The classic confusion attack: the public key is public, so an attacker HMACs with it.
    let pem = key_bytes("rsa_public.pem");
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("alice"),
        &EncodingKey::from_secret(&pem),
    )
    .unwrap();
    let config = public_key("rsa_public.pem");
    assert_eq!(
        verifier(&config).verify(&forged),
        Err(AuthError::AlgorithmNotAccepted)
    );
    let app = app_with(config).await;
    assert_refused(&app, &forged).await;
    // The genuine RS256 token of the same claims passes on the same gateway.
    assert_runs(&app, &rs256(&claims("alice"))).await;
}

#[test]
fn hmac_algorithms_cannot_be_configured_with_a_public_key() {
    let config = AuthConfig {
        jwt_algorithms: vec![Algorithm::RS256, Algorithm::HS256],
        ..public_key("rsa_public.pem")
    };
    let err = Verifier::from_config(&config).unwrap_err();
    assert!(
        matches!(
            err,
            KeyConfigError::AlgorithmMismatch {
                alg: Algorithm::HS256,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn expired_token_is_refused_with_4401() {
    let app = app_with(public_key("rsa_public.pem")).await;
    let expired = rs256(&json!({"sub": "alice", "exp": now() - 120}));
    assert_refused(&app, &expired).await;
    let v = verifier(&public_key("rsa_public.pem"));
    assert_eq!(v.verify(&expired), Err(AuthError::Expired));
    // Within the leeway (default 30 s) a just-expired token still passes.
    let just = rs256(&json!({"sub": "alice", "exp": now() - 5}));
    assert_eq!(v.verify(&just).map(|id| id.user_id), Ok("alice".into()));
    // Without `exp` the token is refused.
    let forever = rs256(&json!({"sub": "alice"}));
    assert!(v.verify(&forever).is_err());
}

#[tokio::test]
async fn token_not_valid_yet_is_refused_with_4401() {
    let app = app_with(public_key("rsa_public.pem")).await;
    let early = rs256(&json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 300}));
    assert_refused(&app, &early).await;
    let v = verifier(&public_key("rsa_public.pem"));
    assert_eq!(v.verify(&early), Err(AuthError::NotYetValid));
    let started = rs256(&json!({"sub": "alice", "exp": now() + 600, "nbf": now() - 1}));
    assert!(v.verify(&started).is_ok());
}

#[tokio::test]
async fn wrong_or_missing_issuer_is_refused_when_an_issuer_is_configured() {
    let config = AuthConfig {
        jwt_issuer: vec!["https://id.example".into()],
        ..public_key("rsa_public.pem")
    };
    let app = app_with(config.clone()).await;
    let v = verifier(&config);
    let mut c = claims("alice");
    c["iss"] = json!("https://evil.example");
    let wrong = rs256(&c);
    assert_eq!(v.verify(&wrong), Err(AuthError::WrongIssuer));
    assert_refused(&app, &wrong).await;
    assert!(v.verify(&rs256(&claims("alice"))).is_err(), "no iss");
    c["iss"] = json!("https://id.example");
    assert_runs(&app, &rs256(&c)).await;
}

#[tokio::test]
async fn wrong_or_missing_audience_is_refused_when_an_audience_is_configured() {
    let config = AuthConfig {
        jwt_audience: vec!["flowgate".into()],
        ..public_key("rsa_public.pem")
    };
    let app = app_with(config.clone()).await;
    let v = verifier(&config);
    let mut c = claims("alice");
    c["aud"] = json!("another-service");
    let wrong = rs256(&c);
    assert_eq!(v.verify(&wrong), Err(AuthError::WrongAudience));
    assert_refused(&app, &wrong).await;
    assert!(v.verify(&rs256(&claims("alice"))).is_err(), "no aud");
    c["aud"] = json!(["another-service", "flowgate"]);
    assert_runs(&app, &rs256(&c)).await;
}

#[tokio::test]
async fn tampered_claims_or_another_keys_signature_are_refused() {
    let app = app_with(public_key("ec256_public.pem")).await;
    let v = verifier(&public_key("ec256_public.pem"));
    // Swap the claims of a genuine token for the attacker's, keep the signature.
    let genuine = sign(Algorithm::ES256, "ec256_private.pem", None, &claims("bob"));
    let parts: Vec<&str> = genuine.split('.').collect();
    let evil_claims = URL_SAFE_NO_PAD.encode(claims("alice").to_string());
    let tampered = format!("{}.{evil_claims}.{}", parts[0], parts[2]);
    assert_eq!(v.verify(&tampered), Err(AuthError::BadSignature));
    assert_refused(&app, &tampered).await;
    // Signed by another P-256 key.
    let other = sign(
        Algorithm::ES256,
        "ec256_b_private.pem",
        None,
        &claims("alice"),
    );
    assert_eq!(v.verify(&other), Err(AuthError::BadSignature));
    assert_refused(&app, &other).await;
}

#[test]
fn refusals_never_repeat_the_token() {
    let v = verifier(&AuthConfig {
        jwt_issuer: vec!["https://id.example".into()],
        ..public_key("rsa_public.pem")
    });
    let mut with_iss = claims("alice");
    with_iss["iss"] = json!("https://id.example-but-longer");
    let tokens = [
        rs256(&json!({"sub": "alice", "exp": now() - 120, "iss": "https://id.example"})),
        rs256(&with_iss),
        rs256(&json!({"sub": 12345678901234_u64, "exp": "tomorrow-at-noon"})),
        handmade(&json!({"alg": "none"}), &claims("secret-user-name"), ""),
        "not-a-jwt-at-all-but-long".to_owned(),
    ];
    for t in &tokens {
        let err = v.verify(t).expect_err("refused").to_string();
        assert_no_token_part(&err, t);
        assert!(
            !err.contains("secret-user-name") && !err.contains("tomorrow"),
            "{err}"
        );
    }
}

// --- key types -----------------------------------------------------------------------------

#[tokio::test]
async fn rs256_token_runs_with_an_rsa_public_key() {
    let app = app_with(public_key("rsa_public.pem")).await;
    assert_runs(&app, &rs256(&claims("alice"))).await;
    // The gateway's HS256 test secret means nothing here.
    assert_refused(&app, &token("alice")).await;
}

#[tokio::test]
async fn es256_token_runs_with_an_ec_public_key() {
    let app = app_with(public_key("ec256_public.pem")).await;
    let t = sign(
        Algorithm::ES256,
        "ec256_private.pem",
        None,
        &claims("alice"),
    );
    assert_runs(&app, &t).await;
}

#[tokio::test]
async fn eddsa_token_runs_with_an_ed25519_public_key() {
    let app = app_with(public_key("ed25519_public.pem")).await;
    let t = sign(
        Algorithm::EdDSA,
        "ed25519_private.pem",
        None,
        &claims("alice"),
    );
    assert_runs(&app, &t).await;
    let rsa = rs256(&claims("alice"));
    assert_eq!(
        verifier(&public_key("ed25519_public.pem")).verify(&rsa),
        Err(AuthError::AlgorithmNotAccepted)
    );
}

#[test]
fn configured_algorithms_narrow_what_the_key_accepts() {
    let config = AuthConfig {
        jwt_algorithms: vec![Algorithm::RS512],
        ..public_key("rsa_public.pem")
    };
    let v = verifier(&config);
    assert_eq!(
        v.verify(&rs256(&claims("alice"))),
        Err(AuthError::AlgorithmNotAccepted)
    );
    let rs512 = sign(Algorithm::RS512, "rsa_private.pem", None, &claims("alice"));
    assert!(v.verify(&rs512).is_ok());
}

#[test]
fn bad_key_configurations_are_startup_errors() {
    let both = AuthConfig {
        jwt_secret: Some(flowgate::config::Secret::new("s")),
        ..public_key("rsa_public.pem")
    };
    let err = Verifier::from_config(&both).unwrap_err().to_string();
    assert!(
        err.contains("--jwt-secret") && err.contains("--jwt-public-key-file"),
        "{err}"
    );
    let private = public_key("rsa_private.pem");
    assert!(matches!(
        Verifier::from_config(&private),
        Err(KeyConfigError::PrivateKey(_))
    ));
    let missing = public_key("no-such-key.pem");
    assert!(matches!(
        Verifier::from_config(&missing),
        Err(KeyConfigError::Read { .. })
    ));
    let wrong_curve = AuthConfig {
        jwt_algorithms: vec![Algorithm::ES384],
        ..public_key("ec256_public.pem")
    };
    assert!(matches!(
        Verifier::from_config(&wrong_curve),
        Err(KeyConfigError::AlgorithmMismatch { .. })
    ));
}

// --- JWKS ----------------------------------------------------------------------------------

/// A JWKS document with the public halves of `(kid, alg, private PEM)` keys.
fn jwks(keys: &[(&str, Algorithm, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(kid, alg, pem)| {
            let mut jwk = Jwk::from_encoding_key(&signing_key(*alg, pem), *alg).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("flowgate-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    /// Replace `name` atomically (write a sibling, rename over).
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn jwks_config(path: PathBuf, reload: Duration) -> AuthConfig {
    AuthConfig {
        jwt_jwks_file: Some(path),
        jwt_jwks_reload_interval: reload,
        ..AuthConfig::unconfigured()
    }
}

#[tokio::test]
async fn jwks_picks_the_key_by_kid_and_refuses_an_unknown_kid() {
    let dir = Scratch::new();
    let path = dir.write(
        "jwks.json",
        &jwks(&[
            ("rsa-1", Algorithm::RS256, "rsa_private.pem"),
            ("ec-1", Algorithm::ES256, "ec256_private.pem"),
            ("ed-1", Algorithm::EdDSA, "ed25519_private.pem"),
        ]),
    );
    let config = jwks_config(path, Duration::from_secs(5));
    let v = verifier(&config);
    for (kid, alg, pem) in [
        ("rsa-1", Algorithm::RS256, "rsa_private.pem"),
        ("ec-1", Algorithm::ES256, "ec256_private.pem"),
        ("ed-1", Algorithm::EdDSA, "ed25519_private.pem"),
    ] {
        let t = sign(alg, pem, Some(kid), &claims("alice"));
        assert_eq!(
            v.verify(&t).map(|id| id.user_id),
            Ok("alice".into()),
            "{kid}"
        );
    }
    let unknown = sign(
        Algorithm::ES256,
        "ec256_b_private.pem",
        Some("ec-2"),
        &claims("alice"),
    );
    assert_eq!(v.verify(&unknown), Err(AuthError::UnknownKey));
    // A known kid with a key it does not belong to fails the signature check.
    let stolen_kid = sign(
        Algorithm::ES256,
        "ec256_b_private.pem",
        Some("ec-1"),
        &claims("alice"),
    );
    assert_eq!(v.verify(&stolen_kid), Err(AuthError::BadSignature));
    // Several keys and no kid: nothing to choose by.
    let no_kid = sign(
        Algorithm::ES256,
        "ec256_private.pem",
        None,
        &claims("alice"),
    );
    assert_eq!(v.verify(&no_kid), Err(AuthError::UnknownKey));
    // HS256 keyed with the JWKS document itself is no way in either.
    let doc = std::fs::read(config.jwt_jwks_file.as_ref().unwrap()).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let forged =
        jsonwebtoken::encode(&header, &claims("alice"), &EncodingKey::from_secret(&doc)).unwrap();
    assert_eq!(v.verify(&forged), Err(AuthError::AlgorithmNotAccepted));

    let app = app_with(config).await;
    assert_refused(&app, &unknown).await;
    assert_runs(
        &app,
        &sign(
            Algorithm::EdDSA,
            "ed25519_private.pem",
            Some("ed-1"),
            &claims("alice"),
        ),
    )
    .await;
}

#[test]
fn unusable_jwks_files_are_startup_errors() {
    let dir = Scratch::new();
    let broken = dir.write("broken.json", "{\"keys\": [");
    assert!(matches!(
        Verifier::from_config(&jwks_config(broken, Duration::ZERO)),
        Err(KeyConfigError::NotAJwks { .. })
    ));
    // A symmetric key in a JWKS would reopen the HS/RS confusion: it is ignored.
    let oct = dir.write(
        "oct.json",
        r#"{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}]}"#,
    );
    assert!(matches!(
        Verifier::from_config(&jwks_config(oct, Duration::ZERO)),
        Err(KeyConfigError::NoUsableKey(_))
    ));
    let good = dir.write(
        "good.json",
        &jwks(&[("a", Algorithm::ES256, "ec256_private.pem")]),
    );
    let with_hmac = AuthConfig {
        jwt_algorithms: vec![Algorithm::HS256],
        ..jwks_config(good, Duration::ZERO)
    };
    assert!(matches!(
        Verifier::from_config(&with_hmac),
        Err(KeyConfigError::AlgorithmMismatch { .. })
    ));
}

#[tokio::test]
async fn rotated_jwks_key_is_accepted_after_the_reload_interval() {
    let dir = Scratch::new();
    let path = dir.write(
        "jwks.json",
        &jwks(&[("old", Algorithm::ES256, "ec256_private.pem")]),
    );
    let app = app_with(jwks_config(path, Duration::from_millis(50))).await;
    let old = sign(
        Algorithm::ES256,
        "ec256_private.pem",
        Some("old"),
        &claims("alice"),
    );
    let new = sign(
        Algorithm::ES256,
        "ec256_b_private.pem",
        Some("new"),
        &claims("alice"),
    );
    assert_runs(&app, &old).await;
    assert_refused(&app, &new).await;

    dir.write(
        "jwks.json",
        &jwks(&[("new", Algorithm::ES256, "ec256_b_private.pem")]),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.state.verifier.verify(&new).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new key not picked up within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_runs(&app, &new).await;
    assert_refused(&app, &old).await;

    // A broken rewrite keeps the keys that work: wait until the reloader has read it.
    let read = app.state.verifier.jwks_versions_read();
    dir.write("jwks.json", "{\"keys\": ");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.state.verifier.jwks_versions_read() == read {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken file was never read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_runs(&app, &new).await;
    assert_refused(&app, &old).await;
}

// --- user id claim -------------------------------------------------------------------------

#[test]
fn user_id_claim_is_a_fallback_only_when_enabled() {
    let legacy = rs256(&json!({"user_id": "alice", "exp": now() + 600}));
    let strict = verifier(&public_key("rsa_public.pem"));
    assert_eq!(
        strict.verify(&legacy),
        Err(AuthError::NoSubject("sub".into()))
    );
    let compat = verifier(&AuthConfig {
        jwt_user_id_fallback: true,
        ..public_key("rsa_public.pem")
    });
    assert_eq!(
        compat.verify(&legacy).map(|id| id.user_id),
        Ok("alice".into())
    );
    // `sub` still wins when both are present.
    let both = rs256(&json!({"sub": "bob", "user_id": "alice", "exp": now() + 600}));
    assert_eq!(compat.verify(&both).map(|id| id.user_id), Ok("bob".into()));
}

#[tokio::test]
async fn custom_user_claim_names_the_caller() {
    let config = AuthConfig {
        jwt_user_claim: "email".into(),
        ..public_key("rsa_public.pem")
    };
    let v = verifier(&config);
    let t = rs256(&json!({"sub": "u-123", "email": "alice@example.com", "exp": now() + 600}));
    let id = v.verify(&t).unwrap();
    assert_eq!(id.user_id, "alice@example.com");
    assert!(id.expires_at > now());
    let only_sub = rs256(&claims("alice"));
    assert_eq!(
        v.verify(&only_sub),
        Err(AuthError::NoSubject("email".into()))
    );
    let app = app_with(config).await;
    assert_refused(&app, &only_sub).await;
    assert_runs(&app, &t).await;
}
