//! Tokens: where a connection's JWT is found, how it is verified, and the API
//! key check. A token is never logged: [`Token`] redacts itself.

use std::fmt;

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

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
}

impl AuthError {
    pub fn metric_reason(self) -> &'static str {
        match self {
            AuthError::Missing => "no_token",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudienceOrIssuer => "audience_or_issuer",
            AuthError::Invalid => "invalid_token",
        }
    }
}

/// Verifies connection tokens with the configured key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds the verifier; the allowed algorithms follow from the key type.
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, String> {
        let (key, algorithms) = if !cfg.hmac_secret.is_empty() {
            (
                DecodingKey::from_secret(cfg.hmac_secret.as_bytes()),
                vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            )
        } else {
            let pem = std::fs::read(&cfg.public_key_file).map_err(|e| {
                format!(
                    "auth.public_key_file: cannot read {}: {e}",
                    cfg.public_key_file
                )
            })?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (
                    k,
                    vec![
                        Algorithm::RS256,
                        Algorithm::RS384,
                        Algorithm::RS512,
                        Algorithm::PS256,
                        Algorithm::PS384,
                        Algorithm::PS512,
                    ],
                )
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (k, vec![Algorithm::ES256, Algorithm::ES384])
            } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                (k, vec![Algorithm::EdDSA])
            } else {
                return Err(format!(
                    "auth.public_key_file: {} is not an RSA, EC or Ed25519 public key in PEM",
                    cfg.public_key_file
                ));
            }
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
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
        Ok(Verifier { key, validation })
    }

    pub fn verify(&self, token: &Token) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<Claims>(token.expose(), &self.key, &self.validation) {
            Ok(data) if data.claims.sub.is_empty() => Err(AuthError::Invalid),
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => {
                    AuthError::WrongAudienceOrIssuer
                }
                ErrorKind::MissingRequiredClaim(c) if c == "aud" || c == "iss" => {
                    AuthError::WrongAudienceOrIssuer
                }
                _ => AuthError::Invalid,
            }),
        }
    }
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
        && let Some(t) = v.to_str().ok().and_then(|s| {
            s.strip_prefix("Bearer ")
                .or_else(|| s.strip_prefix("bearer "))
        })
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
                && !value.is_empty()
            {
                return Some(Token::new(value.trim_matches('"')));
            }
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
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
        .and_then(|s| s.strip_prefix("Bearer "))
    else {
        return false;
    };
    constant_time_eq(presented.trim().as_bytes(), key.as_bytes())
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
    }

    #[test]
    fn tokens_never_print() {
        let t = Token::new("secret.jwt.value");
        assert!(!format!("{t:?} {t}").contains("secret"));
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
