//! Authentication: client JWT verification, development token minting, and the engine-hop token.
//!
//! Owns the rules of PROTOCOL.md section 5 for who the caller is. The relay calls
//! [`Verifier::verify`] on the token found in the upgrade request (header, subprotocol or query)
//! and on in-band `{"type":"auth"}` refreshes. Tokens are never logged: errors say what was wrong
//! with a token, never what it was.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (the token's `sub` claim).
    pub user_id: String,
    /// When the token expires (seconds since the epoch); `u64::MAX` for anonymous callers.
    pub expires_at: u64,
    /// An unauthenticated caller admitted by `--allow-anonymous` (published agents only).
    pub anonymous: bool,
}

impl Identity {
    /// The identity of an unauthenticated caller when anonymous access is on.
    pub fn anonymous() -> Identity {
        Identity {
            user_id: "anonymous".into(),
            expires_at: u64::MAX,
            anonymous: true,
        }
    }
}

/// Client token verification settings (part of the gateway's config).
#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// HS256 secret that client JWTs are verified with. Without any key every run is refused
    /// (`unauthenticated`) unless `--allow-anonymous`.
    #[arg(long, env = "FLOWGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// Leeway for `exp`/`nbf` checks of client tokens.
    #[arg(long, env = "FLOWGATE_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// Let callers without a token run published agents (as user `anonymous`).
    #[arg(long, env = "FLOWGATE_ALLOW_ANONYMOUS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_anonymous: bool,
}

impl AuthConfig {
    /// HS256 with `secret`, default leeway (tests).
    pub fn hs256_for_tests(secret: &str) -> AuthConfig {
        AuthConfig {
            jwt_secret: Some(Secret::new(secret)),
            jwt_leeway: Duration::from_secs(30),
            allow_anonymous: false,
        }
    }
}

/// Why a token was refused. The text is safe to show (it never contains the token).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token was presented")]
    Missing,
    #[error("authentication is not configured on this gateway")]
    NotConfigured,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has no user id claim (`sub`)")]
    NoSubject,
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

/// Verifies client tokens. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("configured", &self.key.is_some())
            .finish()
    }
}

impl Verifier {
    /// The verifier the gateway's config asks for.
    pub fn from_config(config: &AuthConfig) -> Result<Verifier, AuthError> {
        Ok(Verifier::hs256(
            config.jwt_secret.as_ref(),
            config.jwt_leeway,
        ))
    }

    /// HS256 with `secret`; `None` refuses every token.
    pub fn hs256(secret: Option<&Secret>, leeway: Duration) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Verifier {
            key: secret.map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            validation,
        }
    }

    /// Check a token and return who it belongs to.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::NotConfigured)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidSignature => AuthError::BadSignature,
                K::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing claim `{c}`")),
                K::InvalidAlgorithm => AuthError::Invalid("algorithm not accepted".into()),
                _ => AuthError::Invalid("malformed token".into()),
            }
        })?;
        let user_id = data
            .claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::NoSubject)?;
        Ok(Identity {
            user_id,
            expires_at: data.claims.exp,
            anonymous: false,
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mint an HS256 token for `sub`, valid for `ttl`.
pub fn mint_hs256(secret: &Secret, sub: &str, ttl: Duration) -> String {
    let now = now_secs();
    let claims = Claims {
        sub: Some(sub.to_owned()),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        nbf: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .expect("HS256 signing with a secret cannot fail")
}

/// The subject of engine-hop tokens.
pub const ENGINE_HOP_SUBJECT: &str = "flowgate-gateway";

/// Mint the short-lived token the gateway presents to the engine.
pub fn mint_engine_token(key: &Secret) -> String {
    mint_hs256(key, ENGINE_HOP_SUBJECT, Duration::from_secs(60))
}

/// Check an engine-hop token (used by the reference engine).
pub fn verify_engine_token(key: &Secret, token: &str) -> Result<(), AuthError> {
    let id = Verifier::hs256(Some(key), Duration::from_secs(5)).verify(token)?;
    if id.user_id == ENGINE_HOP_SUBJECT {
        Ok(())
    } else {
        Err(AuthError::Invalid("not an engine-hop token".into()))
    }
}

/// `flowgate token`: mint a development JWT.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The user id (`sub` claim); agent owners in the samples are `alice` and `bob`.
    #[arg(long)]
    pub sub: String,
    /// Lifetime of the token, e.g. `1h`, `30m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The HS256 secret (the gateway's `FLOWGATE_JWT_SECRET`).
    #[arg(long, env = "FLOWGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Secret,
}

/// Print a token to stdout.
pub fn run_token(args: TokenArgs) -> ExitCode {
    println!("{}", mint_hs256(&args.jwt_secret, &args.sub, args.ttl));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_token_verifies_and_carries_the_subject() {
        let s = Secret::new("k");
        let t = mint_hs256(&s, "alice", Duration::from_secs(60));
        let id = Verifier::hs256(Some(&s), Duration::from_secs(0))
            .verify(&t)
            .unwrap();
        assert_eq!(id.user_id, "alice");
    }

    #[test]
    fn token_signed_with_another_secret_is_refused() {
        let t = mint_hs256(&Secret::new("a"), "alice", Duration::from_secs(60));
        let err = Verifier::hs256(Some(&Secret::new("b")), Duration::from_secs(0)).verify(&t);
        assert_eq!(err, Err(AuthError::BadSignature));
    }

    #[test]
    fn expired_token_is_refused() {
        let s = Secret::new("k");
        let claims = Claims {
            sub: Some("a".into()),
            exp: now_secs() - 120,
            iat: None,
            nbf: None,
        };
        let t = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"k"))
            .unwrap();
        let err = Verifier::hs256(Some(&s), Duration::from_secs(30)).verify(&t);
        assert_eq!(err, Err(AuthError::Expired));
    }
}
