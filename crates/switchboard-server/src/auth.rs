//! Tokens: where a connection's JWT is found, how it is verified, and the API
//! key check. A token is never logged: [`Token`] redacts itself.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::{Mutex, RwLock};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::AuthConfig;

/// A raw token as the client sent it. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Self {
        Token(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The claims Switchboard reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// Why a token was refused (the reason is for metrics and logs; clients get 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("audience or issuer does not match")]
    WrongAudienceOrIssuer,
    #[error("invalid token")]
    Invalid,
    /// The token names a `kid` the key set does not hold (yet).
    #[error("unknown signing key")]
    UnknownKey,
    /// `jwks_url`: no key set has been fetched yet.
    #[error("signing keys not available yet")]
    KeysUnavailable,
}

impl AuthError {
    pub fn metric_reason(self) -> &'static str {
        match self {
            AuthError::Missing => "no_token",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudienceOrIssuer => "audience_or_issuer",
            AuthError::Invalid => "invalid_token",
            AuthError::UnknownKey => "unknown_key",
            AuthError::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// Largest JWK Set accepted from `jwks_url`.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Connect + request + body of one `jwks_url` fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two fetches while no key set was ever loaded.
const MAX_RETRY_GAP: Duration = Duration::from_secs(30);

const HMAC_ALGS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// A key's type; it decides which algorithms a token verified with it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Hmac,
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn algorithms(self) -> &'static [Algorithm] {
        match self {
            KeyKind::Hmac => HMAC_ALGS,
            KeyKind::Rsa => RSA_ALGS,
            KeyKind::P256 => &[Algorithm::ES256],
            KeyKind::P384 => &[Algorithm::ES384],
            KeyKind::Ed25519 => &[Algorithm::EdDSA],
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyKind::Hmac => "HMAC",
            KeyKind::Rsa => "RSA",
            KeyKind::P256 => "EC P-256",
            KeyKind::P384 => "EC P-384",
            KeyKind::Ed25519 => "Ed25519",
        }
    }
}

/// One verification key with the checks of a token verified with it
/// (claims from the config, algorithms from the key's type).
struct Key {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// The keys a token may be verified with.
struct KeySet {
    keys: Vec<Key>,
    /// JWK Sets choose a key by the token's `kid`; a single configured key
    /// ignores it.
    by_kid: bool,
}

impl KeySet {
    fn single(key: DecodingKey, kind: KeyKind, base: &Validation) -> Self {
        KeySet {
            keys: vec![Key {
                kid: None,
                key,
                validation: with_algorithms(base, kind.algorithms()),
            }],
            by_kid: false,
        }
    }

    fn pick(&self, kid: Option<&str>) -> Result<&Key, AuthError> {
        if !self.by_kid {
            return self.keys.first().ok_or(AuthError::Invalid);
        }
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or(AuthError::UnknownKey),
            // No `kid`: only unambiguous with a single key.
            None if self.keys.len() == 1 => self.keys.first().ok_or(AuthError::Invalid),
            None => Err(AuthError::Invalid),
        }
    }

    fn verify(&self, token: &Token) -> Result<Claims, AuthError> {
        let key = if self.by_kid {
            // `alg: none` (and any algorithm jsonwebtoken does not know) fails here.
            let header =
                jsonwebtoken::decode_header(token.expose()).map_err(|_| AuthError::Invalid)?;
            let key = self.pick(header.kid.as_deref())?;
            if !key.validation.algorithms.contains(&header.alg) {
                return Err(AuthError::Invalid);
            }
            key
        } else {
            // One key: `decode` reads the header and checks its algorithm
            // itself; no need to read it twice per handshake.
            self.pick(None)?
        };
        let data = jsonwebtoken::decode::<Decoded>(token.expose(), &key.key, &key.validation)
            .map_err(|e| map_jwt_error(&e))?;
        let Decoded { claims, iat } = data.claims;
        if let Some(iat) = iat {
            let now = jsonwebtoken::get_current_timestamp() as f64;
            if !iat.is_finite() || iat > now + key.validation.leeway as f64 {
                return Err(AuthError::NotYetValid);
            }
        }
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid);
        }
        Ok(claims)
    }
}

/// The claims as decoded, with those only checked here.
#[derive(Deserialize)]
struct Decoded {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    iat: Option<f64>,
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => AuthError::WrongAudienceOrIssuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" || c == "iss" => {
            AuthError::WrongAudienceOrIssuer
        }
        _ => AuthError::Invalid,
    }
}

fn with_algorithms(base: &Validation, algorithms: &[Algorithm]) -> Validation {
    let mut v = base.clone();
    v.algorithms = algorithms.to_vec();
    v
}

/// The claim checks from the config; the algorithms are set per key.
fn base_validation(cfg: &AuthConfig) -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = cfg.leeway.0.as_secs();
    validation.validate_nbf = true;
    validation.validate_exp = true;
    let mut required = vec!["sub"];
    if cfg.require_exp {
        required.push("exp");
    }
    if !cfg.audience.is_empty() {
        required.push("aud");
    }
    if !cfg.issuer.is_empty() {
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    if cfg.audience.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&[&cfg.audience]);
    }
    if !cfg.issuer.is_empty() {
        validation.set_issuer(&[&cfg.issuer]);
    }
    validation
}

// ---------------------------------------------------------------------------
// PEM public keys

// DER encodings of the object identifiers that tell key types and curves apart.
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_EC: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// The label and DER contents of the first PEM block of `text`.
fn pem_block(text: &str) -> Option<(&str, Vec<u8>)> {
    const BEGIN: &str = "-----BEGIN ";
    let rest = &text[text.find(BEGIN)? + BEGIN.len()..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body = &rest[label_end + 5..];
    let body = &body[..body.find("-----END ")?];
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((label, der))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Parses a PEM public key; the error says what is wrong with the file.
fn parse_public_pem(bytes: &[u8]) -> Result<(DecodingKey, KeyKind), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "is not a PEM file".to_string())?;
    let (label, der) = pem_block(text)
        .ok_or_else(|| "is not a PEM file (no -----BEGIN ...----- block)".to_string())?;
    if label.contains("PRIVATE") {
        return Err(format!(
            "holds a private key ({label}); give the public key \
             (`openssl pkey -in KEY -pubout`)"
        ));
    }
    let kind = match label {
        "RSA PUBLIC KEY" => KeyKind::Rsa,
        "PUBLIC KEY" if contains(&der, OID_RSA) => KeyKind::Rsa,
        "PUBLIC KEY" if contains(&der, OID_EC) => {
            if contains(&der, OID_P256) {
                KeyKind::P256
            } else if contains(&der, OID_P384) {
                KeyKind::P384
            } else {
                return Err("is an EC key on a curve other than P-256 and P-384".into());
            }
        }
        "PUBLIC KEY" if contains(&der, OID_ED25519) => KeyKind::Ed25519,
        "PUBLIC KEY" => return Err("is not an RSA, EC or Ed25519 public key".into()),
        other => {
            return Err(format!(
                "holds a `{other}`, not a public key (-----BEGIN PUBLIC KEY-----)"
            ));
        }
    };
    let key = match kind {
        KeyKind::Rsa => DecodingKey::from_rsa_pem(bytes),
        KeyKind::P256 | KeyKind::P384 => DecodingKey::from_ec_pem(bytes),
        KeyKind::Ed25519 => DecodingKey::from_ed_pem(bytes),
        KeyKind::Hmac => return Err("is not a public key".into()),
    }
    .map_err(|e| format!("is not a valid {} public key: {e}", kind.name()))?;
    Ok((key, kind))
}

fn load_public_key_file(path: &str) -> Result<(DecodingKey, KeyKind), String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("auth.public_key_file: cannot read `{path}`: {e}"))?;
    parse_public_pem(&bytes).map_err(|e| format!("auth.public_key_file: `{path}` {e}"))
}

/// For `Config::validate`: the key file can be read and holds a usable key.
pub(crate) fn check_public_key_file(path: &str) -> Result<(), String> {
    load_public_key_file(path).map(|_| ())
}

// ---------------------------------------------------------------------------
// JWK Sets

/// Parses a JWK Set. Keys that cannot verify tokens are skipped with a
/// warning (returned); a set without a single usable key is an error.
fn parse_jwks(
    bytes: &[u8],
    base: &Validation,
    allow_secrets: bool,
) -> Result<(KeySet, Vec<String>), String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(bytes)
        .map_err(|e| format!("is not a JWK Set ({{\"keys\": [...]}}): {e}"))?;
    let mut keys: Vec<Key> = Vec::new();
    let mut warnings = Vec::new();
    for (i, value) in raw.keys.into_iter().enumerate() {
        let name = match value.get("kid").and_then(|k| k.as_str()) {
            Some(kid) => format!("key {i} (kid {kid:?})"),
            None => format!("key {i}"),
        };
        match jwk_key(value, base, allow_secrets) {
            Ok(Some(key)) => {
                if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) {
                    warnings.push(format!("{name}: the kid appears twice; skipped"));
                } else {
                    keys.push(key);
                }
            }
            Ok(None) => {}
            Err(e) => warnings.push(format!("{name}: {e}; skipped")),
        }
    }
    if keys.is_empty() {
        let mut msg = "holds no usable signature key".to_string();
        if !warnings.is_empty() {
            msg.push_str(&format!(" ({})", warnings.join("; ")));
        }
        return Err(msg);
    }
    Ok((KeySet { keys, by_kid: true }, warnings))
}

fn b64url_len(s: &str) -> Option<usize> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
        .map(|v| v.len())
}

/// One JWK as a verification key; `Ok(None)` for keys meant for encryption.
fn jwk_key(
    value: serde_json::Value,
    base: &Validation,
    allow_secrets: bool,
) -> Result<Option<Key>, String> {
    use jsonwebtoken::jwk::{
        AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
    };
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Ok(None);
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Ok(None);
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => {
            let (kind, size) = match p.curve {
                EllipticCurve::P256 => (KeyKind::P256, 32),
                EllipticCurve::P384 => (KeyKind::P384, 48),
                ref other => return Err(format!("curve {other:?} is not supported")),
            };
            if b64url_len(&p.x) != Some(size) || b64url_len(&p.y) != Some(size) {
                return Err(format!("x and y must be {size} bytes for {}", kind.name()));
            }
            kind
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(format!("curve {:?} is not supported", p.curve));
            }
            if b64url_len(&p.x) != Some(32) {
                return Err("x must be 32 bytes for Ed25519".into());
            }
            KeyKind::Ed25519
        }
        AlgorithmParameters::OctetKey(_) if allow_secrets => KeyKind::Hmac,
        AlgorithmParameters::OctetKey(_) => {
            return Err("a secret (kty \"oct\") key is not taken from a URL".into());
        }
        AlgorithmParameters::Other(o) => {
            return Err(match o.fields.get("kty") {
                Some(kty) => format!("key type {kty} is not supported (or a parameter is missing)"),
                None => "no kty".into(),
            });
        }
        _ => return Err("key type not supported".into()),
    };
    let mut algorithms = kind.algorithms().to_vec();
    if let Some(alg) = jwk.common.key_algorithm {
        let declared = match alg {
            KeyAlgorithm::HS256 => Algorithm::HS256,
            KeyAlgorithm::HS384 => Algorithm::HS384,
            KeyAlgorithm::HS512 => Algorithm::HS512,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256 => {
                return Ok(None);
            }
            other => return Err(format!("alg {other:?} is not supported")),
        };
        if !algorithms.contains(&declared) {
            return Err(format!(
                "alg {declared:?} does not fit a {} key",
                kind.name()
            ));
        }
        algorithms = vec![declared];
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("not a valid key: {e}"))?;
    if kind == KeyKind::Hmac && key.try_get_as_bytes().map_or(0, <[u8]>::len) < 16 {
        return Err("an HMAC secret must be at least 16 bytes".into());
    }
    Ok(Some(Key {
        kid: jwk.common.key_id,
        key,
        validation: with_algorithms(base, &algorithms),
    }))
}

fn load_jwks_file(path: &str, base: &Validation) -> Result<(KeySet, Vec<String>), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("auth.jwks_file: cannot read `{path}`: {e}"))?;
    parse_jwks(&bytes, base, true).map_err(|e| format!("auth.jwks_file: `{path}` {e}"))
}

/// For `Config::validate`: the JWKS file can be read and holds a usable key.
pub(crate) fn check_jwks_file(path: &str) -> Result<(), String> {
    load_jwks_file(path, &Validation::default()).map(|_| ())
}

/// For `Config::validate`: `jwks_url` is an http:// or https:// URL.
pub(crate) fn check_jwks_url(url: &str) -> Result<(), String> {
    parse_jwks_url(url).map(|_| ())
}

/// For `Config::validate`: `jwks_ca_file` holds at least one PEM certificate.
pub(crate) fn check_jwks_ca_file(path: &str) -> Result<(), String> {
    load_ca_file(path).map(|_| ())
}

fn load_ca_file(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("auth.jwks_ca_file: cannot read `{path}`: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("auth.jwks_ca_file: `{path}` is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "auth.jwks_ca_file: `{path}` holds no -----BEGIN CERTIFICATE----- block"
        ));
    }
    Ok(certs)
}

/// The TLS settings for an https:// `jwks_url`: the system's trusted roots
/// plus those of `jwks_ca_file`, with the aws-lc-rs crypto provider.
fn tls_config(ca_file: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!("auth.jwks_url: reading the system's trusted certificates: {e}");
    }
    let (_, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::debug!(
            ignored,
            "auth.jwks_url: unusable system certificates skipped"
        );
    }
    if !ca_file.is_empty() {
        for cert in load_ca_file(ca_file)? {
            roots
                .add(cert)
                .map_err(|e| format!("auth.jwks_ca_file: `{ca_file}`: {e}"))?;
        }
    }
    if roots.is_empty() {
        tracing::warn!(
            "auth.jwks_url: no trusted certificates found (install ca-certificates or set \
             auth.jwks_ca_file); https:// fetches will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("auth.jwks_url: TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn parse_jwks_url(url: &str) -> Result<http::Uri, String> {
    // Messages show the URL without its credentials.
    let shown = crate::secret::redact_url(url);
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("auth.jwks_url: `{shown}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "auth.jwks_url: `{shown}` must start with http:// or https://"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("auth.jwks_url: `{shown}` has no host"));
    }
    Ok(uri)
}

// ---------------------------------------------------------------------------
// The verifier

/// Verifies connection tokens with the configured key(s). `verify` is
/// synchronous and never waits for the network: with `jwks_url` it reads a
/// cached key set that a background task keeps fresh.
pub struct Verifier {
    source: Source,
}

enum Source {
    Fixed(KeySet),
    Url(UrlKeys),
}

struct UrlKeys {
    remote: Arc<Remote>,
    /// Asks the refresh task for a fetch (an unknown `kid` was seen).
    wake: mpsc::Sender<()>,
    /// The task's end of `wake`, until the task is started.
    idle: Mutex<Option<mpsc::Receiver<()>>>,
}

/// What the refresh task shares with `verify`.
struct Remote {
    uri: http::Uri,
    /// TLS settings, for an https:// `uri`.
    tls: Option<Arc<rustls::ClientConfig>>,
    interval: Duration,
    base: Validation,
    keys: RwLock<Option<Arc<KeySet>>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Fixed(set) => f
                .debug_struct("Verifier")
                .field("keys", &set.keys.len())
                .field(
                    "algorithms",
                    &set.keys.first().map(|k| &k.validation.algorithms),
                )
                .finish_non_exhaustive(),
            Source::Url(u) => f
                .debug_struct("Verifier")
                .field(
                    "jwks_url",
                    &crate::secret::redact_url(&u.remote.uri.to_string()),
                )
                .field("keys", &u.remote.keys.read().as_ref().map(|s| s.keys.len()))
                .finish_non_exhaustive(),
        }
    }
}

impl Verifier {
    /// Builds the verifier from exactly one key source. Key files are read
    /// here. With `jwks_url`, nothing is fetched yet: when called inside a
    /// tokio runtime the refresh task starts at once (first fetch right
    /// away); otherwise call [`Verifier::start_refresh`] from one.
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, String> {
        let base = base_validation(cfg);
        let sources = [
            !cfg.hmac_secret.is_empty(),
            !cfg.public_key_file.is_empty(),
            !cfg.jwks_file.is_empty(),
            !cfg.jwks_url.is_empty(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(
                "auth: set exactly one of hmac_secret, public_key_file, jwks_file and jwks_url"
                    .into(),
            );
        }
        let source = if !cfg.hmac_secret.is_empty() {
            Source::Fixed(KeySet::single(
                DecodingKey::from_secret(cfg.hmac_secret.as_bytes()),
                KeyKind::Hmac,
                &base,
            ))
        } else if !cfg.public_key_file.is_empty() {
            let (key, kind) = load_public_key_file(&cfg.public_key_file)?;
            Source::Fixed(KeySet::single(key, kind, &base))
        } else if !cfg.jwks_file.is_empty() {
            let (set, warnings) = load_jwks_file(&cfg.jwks_file, &base)?;
            for w in warnings {
                tracing::warn!("auth.jwks_file: {w}");
            }
            Source::Fixed(set)
        } else {
            let uri = parse_jwks_url(&cfg.jwks_url)?;
            let tls = if uri.scheme_str() == Some("https") {
                Some(Arc::new(tls_config(&cfg.jwks_ca_file)?))
            } else {
                None
            };
            let (wake, idle) = mpsc::channel(1);
            Source::Url(UrlKeys {
                remote: Arc::new(Remote {
                    uri,
                    tls,
                    interval: cfg.jwks_refresh_interval.0.max(Duration::from_millis(1)),
                    base,
                    keys: RwLock::new(None),
                }),
                wake,
                idle: Mutex::new(Some(idle)),
            })
        };
        let verifier = Verifier { source };
        if tokio::runtime::Handle::try_current().is_ok() {
            verifier.start_refresh();
        }
        Ok(verifier)
    }

    /// With `jwks_url`: starts the task that fetches the key set now and
    /// again on unknown `kid`s. Must run inside a tokio runtime; does
    /// nothing for other key sources, or when the task already runs. The
    /// task ends when the verifier is dropped.
    pub fn start_refresh(&self) {
        let Source::Url(u) = &self.source else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::error!("auth.jwks_url: no runtime to fetch the key set from");
            return;
        }
        let Some(rx) = u.idle.lock().take() else {
            return;
        };
        tokio::spawn(refresh_task(u.remote.clone(), rx));
    }

    /// Whether tokens can be verified now (false only with `jwks_url`
    /// before the first successful fetch).
    pub fn has_keys(&self) -> bool {
        match &self.source {
            Source::Fixed(_) => true,
            Source::Url(u) => u.remote.keys.read().is_some(),
        }
    }

    pub fn verify(&self, token: &Token) -> Result<Claims, AuthError> {
        match &self.source {
            Source::Fixed(set) => set.verify(token),
            Source::Url(u) => {
                let Some(set) = u.remote.keys.read().clone() else {
                    return Err(AuthError::KeysUnavailable);
                };
                let result = set.verify(token);
                if result == Err(AuthError::UnknownKey) {
                    // Full: a fetch is already asked for.
                    let _ = u.wake.try_send(());
                }
                result
            }
        }
    }
}

type FetchClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Fetches the key set at start (retrying until it arrives), then once per
/// wake-up, at most once per `interval`. A failed fetch keeps the cached set.
async fn refresh_task(remote: Arc<Remote>, mut wake: mpsc::Receiver<()>) {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    http.enforce_http(false);
    let connector = match &remote.tls {
        Some(tls) => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(rustls::ClientConfig::clone(tls))
            .https_only()
            .enable_http1()
            .wrap_connector(http),
        // http://: the connector never starts TLS, whatever its settings.
        None => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("aws-lc-rs supports the default TLS versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            )
            .https_or_http()
            .enable_http1()
            .wrap_connector(http),
    };
    let client: FetchClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let url = crate::secret::redact_url(&remote.uri.to_string()).into_owned();
    // Until the first key set arrives: retry with a growing gap.
    let mut gap = Duration::from_secs(1).min(remote.interval);
    loop {
        match remote.fetch(&client).await {
            Ok(n) => {
                tracing::info!(%url, keys = n, "auth.jwks_url: key set loaded");
                break;
            }
            Err(e) => tracing::warn!(
                %url,
                error = %e,
                retry_in = ?gap,
                "auth.jwks_url: cannot fetch the key set; tokens are refused until it arrives"
            ),
        }
        if !sleep_watching(&mut wake, tokio::time::Instant::now() + gap).await {
            return;
        }
        gap = (gap * 2).min(MAX_RETRY_GAP).min(remote.interval);
    }
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        if wake.recv().await.is_none() {
            return;
        }
        if let Some(last) = last
            && !sleep_watching(&mut wake, last + remote.interval).await
        {
            return;
        }
        last = Some(tokio::time::Instant::now());
        match remote.fetch(&client).await {
            Ok(n) => tracing::info!(%url, keys = n, "auth.jwks_url: key set refreshed"),
            Err(e) => tracing::warn!(
                %url,
                error = %e,
                "auth.jwks_url: cannot refresh the key set; the cached one stays in use"
            ),
        }
        // Wake-ups from before the fetch are answered by it.
        while wake.try_recv().is_ok() {}
    }
}

/// Sleeps until `deadline`, swallowing wake-ups; false when the verifier is gone.
async fn sleep_watching(wake: &mut mpsc::Receiver<()>, deadline: tokio::time::Instant) -> bool {
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            msg = wake.recv() => {
                if msg.is_none() {
                    return false;
                }
            }
        }
    }
}

impl Remote {
    /// One fetch; on success the new set replaces the cached one.
    async fn fetch(&self, client: &FetchClient) -> Result<usize, String> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.get(client))
            .await
            .map_err(|_| format!("no complete answer within {FETCH_TIMEOUT:?}"))??;
        let (set, warnings) = parse_jwks(&body, &self.base, false)?;
        for w in warnings {
            let url = crate::secret::redact_url(&self.uri.to_string()).into_owned();
            tracing::warn!(%url, "auth.jwks_url: {w}");
        }
        let n = set.keys.len();
        *self.keys.write() = Some(Arc::new(set));
        Ok(n)
    }

    async fn get(&self, client: &FetchClient) -> Result<Bytes, String> {
        let req = http::Request::get(self.uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "switchboard")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("answered {}", resp.status()));
        }
        if resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > MAX_JWKS_BYTES)
        {
            return Err(format!("the key set is larger than {MAX_JWKS_BYTES} bytes"));
        }
        Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| format!("reading the key set: {e}"))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Mints an HS256 token (the `token` subcommand and the development page).
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign token: {e}"))
}

/// Finds the connection token: `Authorization: Bearer`, then the `token`
/// query parameter, then the cookie.
pub fn extract_token(headers: &HeaderMap, query: Option<&str>, cookie_name: &str) -> Option<Token> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION)
        && let Some(t) = v.to_str().ok().and_then(bearer)
    {
        let t = t.trim();
        if !t.is_empty() {
            return Some(Token::new(t));
        }
    }
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("token=") {
                let decoded = percent_decode(v);
                if !decoded.is_empty() {
                    return Some(Token::new(decoded));
                }
            }
        }
    }
    for v in headers.get_all(http::header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for c in s.split(';') {
            if let Some((name, value)) = c.trim().split_once('=')
                && name == cookie_name
                && !value.trim_matches('"').is_empty()
            {
                return Some(Token::new(value.trim_matches('"')));
            }
        }
    }
    None
}

/// The credentials of an `Authorization: Bearer …` value; the scheme name is
/// case-insensitive (RFC 7235 §2.1).
fn bearer(value: &str) -> Option<&str> {
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case("bearer ")
        .then(|| value[7..].trim())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares the presented API key with the configured one in constant time.
pub fn api_key_matches(headers: &HeaderMap, key: &str) -> bool {
    let Some(presented) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
    else {
        return false;
    };
    constant_time_eq(presented.as_bytes(), key.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret (keys are configured); the content is.
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AuthConfig {
        AuthConfig {
            hmac_secret: "0123456789abcdef0123".into(),
            ..Default::default()
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims(exp: Option<u64>) -> Claims {
        Claims {
            sub: "alice".into(),
            exp,
            channels: vec![],
            info: None,
        }
    }

    #[test]
    fn a_valid_token_passes_and_a_forged_one_does_not() {
        let v = Verifier::from_config(&cfg()).expect("verifier");
        let t = mint_hs256("0123456789abcdef0123", &claims(Some(now() + 60))).expect("mint");
        assert_eq!(v.verify(&Token::new(t)).map(|c| c.sub), Ok("alice".into()));
        let forged = mint_hs256("another-secret-000000", &claims(Some(now() + 60))).expect("mint");
        assert_eq!(v.verify(&Token::new(forged)), Err(AuthError::Invalid));
        assert_eq!(v.verify(&Token::new("garbage")), Err(AuthError::Invalid));
    }

    #[test]
    fn expired_and_exp_less_tokens_are_refused() {
        let v = Verifier::from_config(&cfg()).expect("verifier");
        let t = mint_hs256("0123456789abcdef0123", &claims(Some(now() - 60))).expect("mint");
        assert_eq!(v.verify(&Token::new(t)), Err(AuthError::Expired));
        let t = mint_hs256("0123456789abcdef0123", &claims(None)).expect("mint");
        assert_eq!(v.verify(&Token::new(t)), Err(AuthError::Invalid));
    }

    #[test]
    fn alg_none_is_never_accepted() {
        let v = Verifier::from_config(&cfg()).expect("verifier");
        // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":9999999999} .
        let t = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(v.verify(&Token::new(t)), Err(AuthError::Invalid));
    }

    #[test]
    fn token_sources_are_tried_in_order() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=b; sb_token=fromcookie".parse().expect("hv"),
        );
        assert_eq!(
            extract_token(&h, None, "sb_token").map(|t| t.expose().to_string()),
            Some("fromcookie".into())
        );
        assert_eq!(
            extract_token(&h, Some("x=1&token=from%2Dquery"), "sb_token")
                .map(|t| t.expose().to_string()),
            Some("from-query".into())
        );
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer fromheader".parse().expect("hv"),
        );
        assert_eq!(
            extract_token(&h, Some("token=q"), "sb_token").map(|t| t.expose().to_string()),
            Some("fromheader".into())
        );
        assert_eq!(
            extract_token(&HeaderMap::new(), Some("token="), "sb_token"),
            None
        );
    }

    #[test]
    fn percent_decoding_never_panics_on_truncated_escapes() {
        assert_eq!(percent_decode("a%"), "a%");
        assert_eq!(percent_decode("a%4"), "a%4");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("%zz"), "%zz");
        // not an escape; `+` is a space in a query string
        assert_eq!(percent_decode("%+f"), "% f");
    }

    #[test]
    fn bearer_is_case_insensitive_and_empty_cookies_are_no_token() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "BEARER abc".parse().expect("hv"),
        );
        assert_eq!(
            extract_token(&h, None, "sb_token").map(|t| t.expose().to_string()),
            Some("abc".into())
        );
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, "sb_token=\"\"".parse().expect("hv"));
        assert_eq!(extract_token(&h, None, "sb_token"), None);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "bEaReR k1".parse().expect("hv"),
        );
        assert!(api_key_matches(&h, "k1"));
    }

    #[test]
    fn tokens_never_print() {
        let t = Token::new("secret.jwt.value");
        assert!(!format!("{t:?} {t}").contains("secret"));
    }

    #[test]
    fn pem_parsing_names_the_key_type_and_never_panics() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/");
        for (file, kind) in [
            ("rsa1.pub.pem", KeyKind::Rsa),
            ("ec256.pub.pem", KeyKind::P256),
            ("ec384.pub.pem", KeyKind::P384),
            ("ed25519.pub.pem", KeyKind::Ed25519),
        ] {
            let bytes = std::fs::read(format!("{dir}{file}")).expect("key");
            assert_eq!(parse_public_pem(&bytes).map(|(_, k)| k), Ok(kind), "{file}");
            // Every truncation is an error, never a panic.
            for n in 0..bytes.len() {
                let _ = parse_public_pem(&bytes[..n]);
            }
        }
        let private = std::fs::read(format!("{dir}ec256.key")).expect("key");
        assert!(
            parse_public_pem(&private)
                .err()
                .is_some_and(|e| e.contains("private"))
        );
        assert!(
            parse_public_pem(b"-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----").is_err()
        );
        assert!(parse_public_pem(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn jwks_parsing_skips_unusable_keys_with_a_reason() {
        let base = Validation::default();
        let (set, warnings) = parse_jwks(
            br#"{"keys": [
                {"kty": "oct", "kid": "s", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
                {"kty": "EC", "kid": "short", "crv": "P-256", "x": "AA", "y": "AA"},
                {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
                {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
                {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
                {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"},
                {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"},
                {"kid": "nokty"}
            ]}"#,
            &base,
            false,
        )
        .expect("one usable key");
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].kid.as_deref(), Some("r"));
        assert_eq!(set.keys[0].validation.algorithms, RSA_ALGS);
        assert_eq!(warnings.len(), 5, "{warnings:?}");
        for kid in ["\"s\"", "short", "p521", "\"r\"", "nokty"] {
            assert!(
                warnings.iter().any(|w| w.contains(kid)),
                "{kid}: {warnings:?}"
            );
        }
        let err = parse_jwks(br#"{"keys": [{"kty": "oct", "k": "AA"}]}"#, &base, true)
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("no usable") && err.contains("16 bytes"),
            "{err}"
        );
        assert!(parse_jwks(b"[]", &base, true).is_err());
    }

    #[test]
    fn api_key_check() {
        let mut h = HeaderMap::new();
        assert!(!api_key_matches(&h, "k1"));
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer k1".parse().expect("hv"),
        );
        assert!(api_key_matches(&h, "k1"));
        assert!(!api_key_matches(&h, "k2"));
    }
}
