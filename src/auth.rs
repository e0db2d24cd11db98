//! Authentication: client JWT verification, development token minting, and the engine-hop token.
//!
//! Owns the rules of docs/neuralabs.md section 5 for who the caller is. The relay calls
//! [`Verifier::verify`] on the token found in the upgrade request (header, subprotocol or query)
//! and on in-band `{"type":"auth"}` refreshes; `/api/agents` calls it on its bearer token. Tokens
//! are never logged: errors say what was wrong with a token, never what it was (nor its `kid`).
//!
//! Design note. The key source is exactly one of a shared secret, a PEM public key or a JWKS
//! file ([`AuthConfig`]); configuring two is a startup error. Each key carries the algorithms it
//! may verify: the configured `--jwt-algorithms` intersected with what the key is (its family,
//! the curve of an EC key, the `alg` of a JWK). A token whose header names another algorithm is
//! refused before any signature check, so `alg: none` and HS/RS confusion (an HMAC signature made
//! with the public key's bytes) cannot pass; `jsonwebtoken` repeats the family check. A JWKS
//! file is watched by a background thread (one `stat` per `--jwt-jwks-reload-interval`, a re-read
//! only when the modification time or size changed) that swaps the key set behind an
//! `RwLock<Arc<_>>`; `verify` itself never touches the disk. The thread holds a weak reference
//! and ends within one interval after the last [`Verifier`] clone is dropped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::secret::Secret;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (the token's `--jwt-user-claim`, `sub` by default).
    pub user_id: String,
    /// When the token expires (seconds since the epoch); `u64::MAX` for anonymous callers.
    pub expires_at: u64,
    /// An unauthenticated caller admitted by `--allow-anonymous` (published agents only).
    pub anonymous: bool,
}

impl Identity {
    /// The identity of an unauthenticated caller when anonymous access is on: a principal of
    /// its own (`anonymous:<uuid>`), so that no other caller can resume or see its runs.
    pub fn anonymous() -> Identity {
        Identity {
            user_id: format!("{ANONYMOUS}:{}", uuid::Uuid::new_v4().simple()),
            expires_at: u64::MAX,
            anonymous: true,
        }
    }
}

/// The user id prefix of anonymous callers; no token may name it (`anonymous` or
/// `anonymous:…`).
pub const ANONYMOUS: &str = "anonymous";

/// Longest user id accepted from a token (the run log's `user_id VARCHAR(255)`).
pub const MAX_USER_ID_CHARS: usize = 255;

/// Check a user id taken from a verified token: not reserved, bounded, no control characters
/// (it reaches logs, the run log and error messages).
fn check_user_id(user_id: &str) -> Result<(), AuthError> {
    if user_id == ANONYMOUS || user_id.starts_with("anonymous:") {
        return Err(AuthError::Invalid(
            "the user id `anonymous` is reserved for callers without a token".into(),
        ));
    }
    if user_id.is_empty() || user_id.chars().count() > MAX_USER_ID_CHARS {
        return Err(AuthError::Invalid(format!(
            "the user id must have 1 to {MAX_USER_ID_CHARS} characters"
        )));
    }
    if user_id.chars().any(char::is_control) {
        return Err(AuthError::Invalid(
            "the user id contains a control character".into(),
        ));
    }
    Ok(())
}

/// Longest token accepted (bytes): real tokens are well under 2 KB; parsing and verifying a
/// larger one is work any caller could make the gateway do.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Shorter HS* secrets get a startup warning (RFC 7518 3.2: at least the hash's size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Does the token's protected header have a `crit` member?
fn header_has_crit(token: &str) -> bool {
    use base64::Engine as _;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false; // malformed: `decode_header` refuses it next
    };
    serde_json::from_slice::<Map<String, Value>>(&bytes).is_ok_and(|h| h.contains_key("crit"))
}

/// Client token verification settings (part of the gateway's config).
#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// Shared secret for HMAC-signed client JWTs (HS256 by default). Set exactly one key
    /// source: this, `--jwt-public-key-file` or `--jwt-jwks-file`; two at once is a startup
    /// error. Without any key every token is refused (`unauthenticated`) and only
    /// `--allow-anonymous` callers get in.
    #[arg(long, env = "FLOWGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// PEM file with the public key client JWTs are verified with: RSA (`RS*`/`PS*`), EC P-256
    /// or P-384 (`ES256`/`ES384`) or Ed25519 (`EdDSA`). Read once at startup. HMAC (`HS*`)
    /// tokens are refused when a public key is configured.
    #[arg(long, env = "FLOWGATE_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// JWKS file (`{"keys": [...]}`) with the public keys client JWTs are verified with. The
    /// token's `kid` picks the key (a token without `kid` only passes when the set has one key);
    /// symmetric (`oct`) and encryption keys are ignored. The file is re-read when its
    /// modification time changes; an unreadable or invalid new version keeps the old keys.
    #[arg(long, env = "FLOWGATE_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// How often the JWKS file's modification time is checked (by a background thread); `0`
    /// turns reloading off.
    #[arg(long, env = "FLOWGATE_JWT_JWKS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub jwt_jwks_reload_interval: Duration,

    /// Accepted JWT algorithms, comma-separated (e.g. `RS256,ES256`). Default: `HS256` with a
    /// secret; with a public key or JWKS, what each key is for (`RS*`/`PS*` for RSA, `ES256` or
    /// `ES384` by curve, `EdDSA`, or a JWK's own `alg`). `none` is never accepted, and `HS*`
    /// cannot be combined with a public key or JWKS.
    #[arg(long, env = "FLOWGATE_JWT_ALGORITHMS", value_delimiter = ',', value_parser = parse_algorithm)]
    pub jwt_algorithms: Vec<Algorithm>,

    /// Leeway for `exp`/`nbf` checks of client tokens. `exp` is required.
    #[arg(long, env = "FLOWGATE_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// Required `iss` of client tokens (comma list: any of them). Default: not checked.
    #[arg(long, env = "FLOWGATE_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,

    /// Required `aud` of client tokens: the token's audience must include one of these (comma
    /// list). Default: not checked.
    #[arg(long, env = "FLOWGATE_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,

    /// The claim that holds the user id (a non-empty string).
    #[arg(long, env = "FLOWGATE_JWT_USER_CLAIM", default_value = "sub")]
    pub jwt_user_claim: String,

    /// Also take the user id from a `user_id` claim when the `--jwt-user-claim` claim is absent
    /// (compat with tokens of the original backend).
    #[arg(long, env = "FLOWGATE_JWT_USER_ID_FALLBACK", default_value_t = false, action = clap::ArgAction::Set)]
    pub jwt_user_id_fallback: bool,

    /// Let callers without a token run published agents (each socket its own `anonymous:<uuid>`).
    #[arg(long, env = "FLOWGATE_ALLOW_ANONYMOUS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_anonymous: bool,
}

impl AuthConfig {
    /// No key configured, every other field at its documented default.
    pub fn unconfigured() -> AuthConfig {
        AuthConfig {
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_jwks_file: None,
            jwt_jwks_reload_interval: Duration::from_secs(5),
            jwt_algorithms: Vec::new(),
            jwt_leeway: Duration::from_secs(30),
            jwt_issuer: Vec::new(),
            jwt_audience: Vec::new(),
            jwt_user_claim: "sub".into(),
            jwt_user_id_fallback: false,
            allow_anonymous: false,
        }
    }

    /// HS256 with `secret`, default leeway (tests).
    pub fn hs256_for_tests(secret: &str) -> AuthConfig {
        AuthConfig {
            jwt_secret: Some(Secret::new(secret)),
            ..AuthConfig::unconfigured()
        }
    }
}

/// `--jwt-algorithms` values: the JOSE names `jsonwebtoken` knows, never `none`.
fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("none") {
        return Err("`none` (unsigned tokens) is never accepted".into());
    }
    s.parse::<Algorithm>().map_err(|_| {
        format!(
            "unknown JWT algorithm `{s}` (expected HS256, HS384, HS512, RS256, RS384, RS512, \
             PS256, PS384, PS512, ES256, ES384 or EdDSA)"
        )
    })
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
    #[error("the token's signing algorithm is not accepted by this gateway")]
    AlgorithmNotAccepted,
    #[error("the token's key id (`kid`) matches no configured key")]
    UnknownKey,
    #[error("the token has the wrong issuer (`iss`)")]
    WrongIssuer,
    #[error("the token is not meant for this gateway (`aud`)")]
    WrongAudience,
    #[error("the token has no user id claim (`{0}`)")]
    NoSubject(String),
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

/// Why the configured keys cannot be used (a startup error).
#[derive(Debug, thiserror::Error)]
pub enum KeyConfigError {
    #[error(
        "configure one JWT key source, not several (set: {0}); use only one of --jwt-secret, \
         --jwt-public-key-file, --jwt-jwks-file"
    )]
    ConflictingSources(String),
    #[error("--jwt-secret is empty")]
    EmptySecret,
    #[error("--jwt-user-claim is empty")]
    EmptyUserClaim,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} holds a private key; configure the matching public key instead")]
    PrivateKey(PathBuf),
    #[error("{0} is not a PEM public key (RSA, EC P-256/P-384 or Ed25519)")]
    NotAPublicKey(PathBuf),
    #[error("{path} is not a JWKS document ({{\"keys\": [...]}}): {reason}")]
    NotAJwks { path: PathBuf, reason: String },
    #[error("{0} has no key usable for signatures with the accepted algorithms")]
    NoUsableKey(PathBuf),
    #[error("--jwt-algorithms: {alg:?} cannot be used with {key}")]
    AlgorithmMismatch { alg: Algorithm, key: String },
    #[error("cannot start the JWKS reload thread: {0}")]
    Spawn(std::io::Error),
}

/// The claims `flowgate token` and the engine hop mint.
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

/// One verification key and the algorithms it may verify.
struct KeyEntry {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The keys of one JWKS version.
struct KeySet {
    keys: Vec<KeyEntry>,
}

impl KeySet {
    fn find(&self, kid: Option<&str>) -> Option<&KeyEntry> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }
}

/// A JWKS file and its current keys.
struct Jwks {
    path: PathBuf,
    configured: Vec<Algorithm>,
    current: RwLock<Arc<KeySet>>,
    /// Changed versions of the file the reloader has read (usable or not).
    versions_read: std::sync::atomic::AtomicU64,
}

impl Jwks {
    fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn replace(&self, set: KeySet) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
    }
}

enum Keys {
    None,
    Fixed(KeyEntry),
    Jwks(Arc<Jwks>),
}

struct Inner {
    keys: Keys,
    validation: Validation,
    user_claim: String,
    user_id_fallback: bool,
}

/// Verifies client tokens. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.inner.keys {
            Keys::None => "none",
            Keys::Fixed(_) => "fixed key",
            Keys::Jwks(_) => "jwks",
        };
        f.debug_struct("Verifier").field("keys", &source).finish()
    }
}

impl Verifier {
    /// The verifier the gateway's config asks for. Reads the key files; with a JWKS file also
    /// starts the reload thread.
    pub fn from_config(config: &AuthConfig) -> Result<Verifier, KeyConfigError> {
        let user_claim = config.jwt_user_claim.trim();
        if user_claim.is_empty() {
            return Err(KeyConfigError::EmptyUserClaim);
        }
        let sources: Vec<&str> = [
            config.jwt_secret.as_ref().map(|_| "--jwt-secret"),
            config
                .jwt_public_key_file
                .as_ref()
                .map(|_| "--jwt-public-key-file"),
            config.jwt_jwks_file.as_ref().map(|_| "--jwt-jwks-file"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if sources.len() > 1 {
            return Err(KeyConfigError::ConflictingSources(sources.join(", ")));
        }
        let configured = dedup(&config.jwt_algorithms);
        let keys = if let Some(secret) = &config.jwt_secret {
            if secret.expose().len() < MIN_SECRET_BYTES {
                // Not refused: the gateway must accept the tokens an existing frontend issues.
                tracing::warn!(
                    bytes = secret.expose().len(),
                    "--jwt-secret is shorter than {MIN_SECRET_BYTES} bytes (RFC 7518 asks at least as many as the hash): a short HMAC key can be guessed offline from one token"
                );
            }
            Keys::Fixed(secret_entry(secret, &configured)?)
        } else if let Some(path) = &config.jwt_public_key_file {
            Keys::Fixed(pem_entry(path, &configured)?)
        } else if let Some(path) = &config.jwt_jwks_file {
            refuse_hmac(&configured, "a JWKS file")?;
            let set = load_jwks(path, &configured)?;
            if set.keys.is_empty() {
                return Err(KeyConfigError::NoUsableKey(path.clone()));
            }
            let jwks = Arc::new(Jwks {
                path: path.clone(),
                configured,
                current: RwLock::new(Arc::new(set)),
                versions_read: Default::default(),
            });
            if !config.jwt_jwks_reload_interval.is_zero() {
                spawn_reloader(&jwks, config.jwt_jwks_reload_interval)?;
            }
            Keys::Jwks(jwks)
        } else {
            Keys::None
        };
        Ok(Verifier::new(keys, config, user_claim))
    }

    /// HS256 with `secret`; `None` refuses every token.
    pub fn hs256(secret: Option<&Secret>, leeway: Duration) -> Verifier {
        let config = AuthConfig {
            jwt_leeway: leeway,
            ..AuthConfig::unconfigured()
        };
        let keys = match secret {
            Some(s) => Keys::Fixed(KeyEntry {
                kid: None,
                key: DecodingKey::from_secret(s.expose().as_bytes()),
                algorithms: vec![Algorithm::HS256],
            }),
            None => Keys::None,
        };
        Verifier::new(keys, &config, "sub")
    }

    fn new(keys: Keys, config: &AuthConfig, user_claim: &str) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.jwt_leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        let issuers = non_empty(&config.jwt_issuer);
        if !issuers.is_empty() {
            validation.set_issuer(&issuers);
            required.push("iss");
        }
        let audiences = non_empty(&config.jwt_audience);
        if audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Verifier {
            inner: Arc::new(Inner {
                keys,
                validation,
                user_claim: user_claim.to_owned(),
                user_id_fallback: config.jwt_user_id_fallback,
            }),
        }
    }

    /// Check a token and return who it belongs to.
    /// How many changed versions of the JWKS file have been read so far (0 without a JWKS).
    pub fn jwks_versions_read(&self) -> u64 {
        match &self.inner.keys {
            Keys::Jwks(jwks) => jwks
                .versions_read
                .load(std::sync::atomic::Ordering::Acquire),
            _ => 0,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_as(token, None)
    }

    /// [`Verifier::verify`], reading the user from `user_claim` instead of `--jwt-user-claim`
    /// (a route whose clients' tokens name the user differently, e.g. `adk`'s `id`).
    pub fn verify_as(&self, token: &str, user_claim: Option<&str>) -> Result<Identity, AuthError> {
        let inner = &*self.inner;
        let user_claim = user_claim.unwrap_or(&inner.user_claim);
        if matches!(inner.keys, Keys::None) {
            return Err(AuthError::NotConfigured);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid(format!(
                "the token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        if header_has_crit(token) {
            // RFC 7515 4.1.11: extensions named in `crit` must be understood; none are here.
            return Err(AuthError::Invalid(
                "the token's header names critical extensions (`crit`) this gateway does not support"
                    .into(),
            ));
        }
        // Parsing the header also refuses `alg: none`: it is not an algorithm `jsonwebtoken`
        // can name.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("malformed token".into()))?;
        let set;
        let entry = match &inner.keys {
            Keys::None => return Err(AuthError::NotConfigured),
            Keys::Fixed(entry) => entry,
            Keys::Jwks(jwks) => {
                set = jwks.snapshot();
                set.find(header.kid.as_deref())
                    .ok_or(AuthError::UnknownKey)?
            }
        };
        if !entry.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAccepted);
        }
        let mut validation = inner.validation.clone();
        validation.algorithms = vec![header.alg];
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &entry.key, &validation)
            .map_err(|e| classify(&e))?;
        let claims = data.claims;
        let user_id = user_id(&claims, user_claim)
            .or_else(|| {
                (inner.user_id_fallback && user_claim != "user_id")
                    .then(|| user_id(&claims, "user_id"))
                    .flatten()
            })
            .ok_or_else(|| AuthError::NoSubject(user_claim.to_owned()))?;
        check_user_id(&user_id)?;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| AuthError::Invalid("claim `exp` is not a number of seconds".into()))?;
        Ok(Identity {
            user_id,
            expires_at,
            anonymous: false,
        })
    }
}

/// The user id in `claim`: a non-empty string, or a whole number read as its decimal string
/// (OMNI2 tokens carry a numeric user id).
fn user_id(claims: &Map<String, Value>, claim: &str) -> Option<String> {
    match claims.get(claim)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

/// Map a `jsonwebtoken` error to a message that names no part of the token.
fn classify(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidSignature => AuthError::BadSignature,
        K::InvalidIssuer => AuthError::WrongIssuer,
        K::InvalidAudience => AuthError::WrongAudience,
        K::InvalidAlgorithm | K::InvalidKeyFormat | K::MissingAlgorithm => {
            AuthError::AlgorithmNotAccepted
        }
        // The claim names come from `Validation`, never from the token.
        K::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing claim `{c}`")),
        K::InvalidClaimFormat(c) => AuthError::Invalid(format!("claim `{c}` has the wrong type")),
        K::InvalidRsaKey(_) | K::InvalidEcdsaKey | K::InvalidEddsaKey => {
            tracing::warn!("a configured JWT key cannot be used for verification");
            AuthError::Invalid("the gateway's key cannot verify this token".into())
        }
        _ => AuthError::Invalid("malformed token".into()),
    }
}

fn dedup(algs: &[Algorithm]) -> Vec<Algorithm> {
    let mut out = Vec::with_capacity(algs.len());
    for a in algs {
        if !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

fn non_empty(values: &[String]) -> Vec<&str> {
    values
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect()
}

fn refuse_hmac(configured: &[Algorithm], key: &str) -> Result<(), KeyConfigError> {
    match configured
        .iter()
        .find(|a| a.family() == AlgorithmFamily::Hmac)
    {
        Some(alg) => Err(KeyConfigError::AlgorithmMismatch {
            alg: *alg,
            key: key.to_owned(),
        }),
        None => Ok(()),
    }
}

fn secret_entry(secret: &Secret, configured: &[Algorithm]) -> Result<KeyEntry, KeyConfigError> {
    if secret.expose().is_empty() {
        return Err(KeyConfigError::EmptySecret);
    }
    if let Some(alg) = configured
        .iter()
        .find(|a| a.family() != AlgorithmFamily::Hmac)
    {
        return Err(KeyConfigError::AlgorithmMismatch {
            alg: *alg,
            key: "a shared secret (HS256/384/512 only)".into(),
        });
    }
    let algorithms = if configured.is_empty() {
        vec![Algorithm::HS256]
    } else {
        configured.to_vec()
    };
    Ok(KeyEntry {
        kid: None,
        key: DecodingKey::from_secret(secret.expose().as_bytes()),
        algorithms,
    })
}

fn pem_entry(path: &Path, configured: &[Algorithm]) -> Result<KeyEntry, KeyConfigError> {
    let pem = std::fs::read(path).map_err(|source| KeyConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if pem
        .split(|b| *b == b'\n')
        .any(|line| line.starts_with(b"-----BEGIN") && contains(line, b"PRIVATE"))
    {
        return Err(KeyConfigError::PrivateKey(path.to_owned()));
    }
    let key = DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| KeyConfigError::NotAPublicKey(path.to_owned()))?;
    // The JWK form tells the curve of an EC key and checks that the key parses.
    let jwk = Jwk::from_decoding_key(&key, None)
        .map_err(|_| KeyConfigError::NotAPublicKey(path.to_owned()))?;
    let fits =
        key_algorithms(&jwk).ok_or_else(|| KeyConfigError::NotAPublicKey(path.to_owned()))?;
    let family = match key.family() {
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "Ed25519",
        AlgorithmFamily::Hmac => "HMAC",
    };
    let names: Vec<String> = fits.iter().map(|a| format!("{a:?}")).collect();
    let kind = format!(
        "this {family} public key (it verifies {})",
        names.join(", ")
    );
    refuse_hmac(configured, &kind)?;
    if let Some(alg) = configured.iter().find(|a| !fits.contains(a)) {
        return Err(KeyConfigError::AlgorithmMismatch {
            alg: *alg,
            key: kind,
        });
    }
    let algorithms = if configured.is_empty() {
        fits
    } else {
        configured.to_vec()
    };
    Ok(KeyEntry {
        kid: None,
        key,
        algorithms,
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What a public key may verify: its family, narrowed by the EC curve and the JWK's `alg`.
/// `None` for keys flowgate does not verify with (symmetric, encryption, unknown curves).
fn key_algorithms(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    let fits: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms().to_vec(),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(fits),
        Some(declared) => {
            let declared = declared.to_string().parse::<Algorithm>().ok()?;
            fits.contains(&declared).then(|| vec![declared])
        }
    }
}

/// Read and parse a JWKS file. Keys flowgate cannot or must not use are skipped with a warning.
fn load_jwks(path: &Path, configured: &[Algorithm]) -> Result<KeySet, KeyConfigError> {
    let bytes = std::fs::read(path).map_err(|source| KeyConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let doc: JwkSet = serde_json::from_slice(&bytes).map_err(|e| KeyConfigError::NotAJwks {
        path: path.to_owned(),
        // Position only: the message of a serde error can quote values from the file.
        reason: format!(
            "{:?} error at line {}, column {}",
            e.classify(),
            e.line(),
            e.column()
        ),
    })?;
    let mut keys: Vec<KeyEntry> = Vec::with_capacity(doc.keys.len());
    let mut seen = HashSet::new();
    for (index, jwk) in doc.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone();
        let skip = |why: &str| {
            tracing::warn!(path = %path.display(), index, kid = kid.as_deref(), "JWKS key ignored: {why}");
        };
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            skip("not a signature key (`use`)");
            continue;
        }
        let Some(fits) = key_algorithms(jwk) else {
            skip("not an RSA, EC P-256/P-384 or Ed25519 public key for a supported `alg`");
            continue;
        };
        let algorithms: Vec<Algorithm> = if configured.is_empty() {
            fits
        } else {
            fits.into_iter()
                .filter(|a| configured.contains(a))
                .collect()
        };
        if algorithms.is_empty() {
            skip("none of its algorithms is in --jwt-algorithms");
            continue;
        }
        if !seen.insert(kid.clone()) {
            skip("duplicate `kid` (the first key with it is used)");
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            skip("its parameters do not decode");
            continue;
        };
        keys.push(KeyEntry {
            kid,
            key,
            algorithms,
        });
    }
    Ok(KeySet { keys })
}

/// What tells a changed file: its modification time and size.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Counts one read version of the JWKS file when dropped (after the keys were replaced or
/// kept), so a waiter sees the count only once the outcome is in effect.
struct ReadCount<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for ReadCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

fn spawn_reloader(jwks: &Arc<Jwks>, interval: Duration) -> Result<(), KeyConfigError> {
    let weak: Weak<Jwks> = Arc::downgrade(jwks);
    let mut seen = stamp(&jwks.path);
    std::thread::Builder::new()
        .name("flowgate-jwks".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let Some(jwks) = weak.upgrade() else { return };
                let now = stamp(&jwks.path);
                if now == seen {
                    continue;
                }
                // Remember the new version even when it is broken, so it is reported once.
                seen = now;
                let _count = ReadCount(&jwks.versions_read);
                match load_jwks(&jwks.path, &jwks.configured) {
                    Ok(set) => {
                        if set.keys.is_empty() {
                            tracing::warn!(path = %jwks.path.display(), "JWKS reloaded with no usable key: every token is refused");
                        } else {
                            tracing::info!(path = %jwks.path.display(), keys = set.keys.len(), "JWKS reloaded");
                        }
                        jwks.replace(set);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "JWKS file changed but cannot be used; keeping the previous keys");
                    }
                }
            }
        })
        .map(drop)
        .map_err(KeyConfigError::Spawn)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mint an HS256 token for `sub`, valid for `ttl`.
pub fn mint_hs256(secret: &Secret, sub: &str, ttl: Duration) -> String {
    let now = now_secs();
    mint_hs256_claims(secret, sub, now, now + ttl.as_secs())
}

/// Mint an HS256 token that expired `ago` (issued one minute before that): for testing how a
/// client or the gateway handles expiry.
pub fn mint_expired_hs256(secret: &Secret, sub: &str, ago: Duration) -> String {
    let exp = now_secs().saturating_sub(ago.as_secs().max(1));
    mint_hs256_claims(secret, sub, exp.saturating_sub(60), exp)
}

fn mint_hs256_claims(secret: &Secret, sub: &str, iat: u64, exp: u64) -> String {
    let claims = Claims {
        sub: Some(sub.to_owned()),
        exp,
        iat: Some(iat),
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
    /// Lifetime of the token, e.g. `1h`, `30m` (with `--expired`: how long ago it expired).
    #[arg(long, default_value = "1h", value_parser = token_ttl, allow_hyphen_values = true)]
    pub ttl: Duration,
    /// Mint a token that has already expired (`--ttl` ago): for testing expiry handling.
    #[arg(long)]
    pub expired: bool,
    /// The HS256 secret (the gateway's `FLOWGATE_JWT_SECRET`; `flowgate demo` prints its own).
    #[arg(long, env = "FLOWGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Secret,
}

/// `--ttl`: a positive duration; a negative one is refused with the way to an expired token.
fn token_ttl(text: &str) -> Result<Duration, String> {
    if text.trim_start().starts_with('-') {
        return Err(
            "a lifetime cannot be negative: for a token that has already expired, pass \
             --expired (and --ttl for how long ago, e.g. `--expired --ttl 5m`)"
                .to_owned(),
        );
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. `30m`, `1h`, `7d`)"))
}

/// Print a token to stdout.
pub fn run_token(args: TokenArgs) -> ExitCode {
    let token = if args.expired {
        eprintln!(
            "flowgate token: this token expired {} ago; the gateway refuses it with 4401",
            humantime::format_duration(Duration::from_secs(args.ttl.as_secs().max(1)))
        );
        mint_expired_hs256(&args.jwt_secret, &args.sub, args.ttl)
    } else {
        mint_hs256(&args.jwt_secret, &args.sub, args.ttl)
    };
    println!("{token}");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(claims: &Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn tokens_with_critical_extensions_or_oversized_are_refused() {
        use base64::Engine as _;
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let header = b64(
            &serde_json::json!({"alg": "HS256", "typ": "JWT", "crit": ["x-custom"], "x-custom": 1}),
        );
        let claims = b64(&serde_json::json!({"sub": "alice", "exp": now_secs() + 60}));
        let message = format!("{header}.{claims}");
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(b"k"),
            Algorithm::HS256,
        )
        .unwrap();
        let verifier = Verifier::hs256(Some(&Secret::new("k")), Duration::from_secs(0));
        let err = verifier
            .verify(&format!("{message}.{signature}"))
            .unwrap_err();
        assert!(err.to_string().contains("crit"), "{err}");

        let big = sign(
            &serde_json::json!({"sub": "alice", "exp": now_secs() + 60, "pad": "x".repeat(MAX_TOKEN_BYTES)}),
            b"k",
        );
        let err = verifier.verify(&big).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[test]
    fn user_ids_that_could_forge_log_lines_or_overflow_columns_are_refused() {
        let verifier = Verifier::hs256(Some(&Secret::new("k")), Duration::from_secs(0));
        for (sub, why) in [
            ("alice\nINFO forged line", "control character"),
            ("bob\u{1b}[31m", "control character"),
            (&"x".repeat(MAX_USER_ID_CHARS + 1), "1 to 255"),
            ("anonymous", "reserved"),
        ] {
            let t = mint_hs256(&Secret::new("k"), sub, Duration::from_secs(60));
            let err = verifier.verify(&t).unwrap_err().to_string();
            assert!(err.contains(why), "{sub:?}: {err}");
        }
        let t = mint_hs256(
            &Secret::new("k"),
            &"x".repeat(MAX_USER_ID_CHARS),
            Duration::from_secs(60),
        );
        assert!(verifier.verify(&t).is_ok());
    }

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
        let t = sign(
            &serde_json::json!({"sub": "a", "exp": now_secs() - 120}),
            b"k",
        );
        let err = Verifier::hs256(Some(&s), Duration::from_secs(30)).verify(&t);
        assert_eq!(err, Err(AuthError::Expired));
    }

    #[test]
    fn token_without_exp_is_refused() {
        let t = sign(&serde_json::json!({"sub": "a"}), b"k");
        let err = Verifier::hs256(Some(&Secret::new("k")), Duration::from_secs(30)).verify(&t);
        assert_eq!(err, Err(AuthError::Invalid("missing claim `exp`".into())));
    }

    #[test]
    fn two_key_sources_are_a_startup_error_naming_both() {
        let config = AuthConfig {
            jwt_public_key_file: Some("key.pem".into()),
            ..AuthConfig::hs256_for_tests("s")
        };
        let err = Verifier::from_config(&config).unwrap_err().to_string();
        assert!(err.contains("--jwt-secret, --jwt-public-key-file"), "{err}");
    }

    #[test]
    fn secret_with_an_asymmetric_algorithm_is_a_startup_error() {
        let config = AuthConfig {
            jwt_algorithms: vec![Algorithm::RS256],
            ..AuthConfig::hs256_for_tests("s")
        };
        assert!(matches!(
            Verifier::from_config(&config),
            Err(KeyConfigError::AlgorithmMismatch {
                alg: Algorithm::RS256,
                ..
            })
        ));
    }

    #[test]
    fn algorithm_flag_refuses_none() {
        assert!(
            parse_algorithm("none")
                .unwrap_err()
                .contains("never accepted")
        );
        assert_eq!(parse_algorithm("ES384"), Ok(Algorithm::ES384));
    }
}
