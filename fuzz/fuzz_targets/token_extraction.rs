//! Where the connection token is found (`extract_token`), the API key check,
//! and `Verifier::verify` on arbitrary, forged and correctly signed tokens.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use switchboard_server::auth::{
    AuthError, Claims, Token, Verifier, api_key_matches, extract_token, mint_hs256,
};
use switchboard_server::config::AuthConfig;

const SECRET: &str = "0123456789abcdef0123";
const API_KEY: &str = "api-key-0123";

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    Verifier::from_config(&AuthConfig {
        hmac_secret: SECRET.into(),
        ..Default::default()
    })
    .expect("verifier")
});

/// Only the headers the code reads, and two it must ignore: arbitrary header
/// names would spend the fuzzer's time in the `http` crate's name parser.
#[derive(Debug, Arbitrary)]
enum Name {
    Authorization,
    Cookie,
    Origin,
    XToken,
}

#[derive(Debug, Arbitrary)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
    /// Signed as HS256, but the header names this.
    Claimed(String),
}

#[derive(Debug, Arbitrary)]
enum Payload {
    Claims {
        sub: String,
        /// Seconds from now.
        exp: Option<i32>,
        nbf: Option<i32>,
        aud: Option<String>,
        channels: Vec<String>,
        info: Option<String>,
    },
    Text(String),
}

#[derive(Debug, Arbitrary)]
enum Jwt {
    /// Any token text.
    Raw(String),
    /// A token built from parts, signed with the right secret or a wrong one.
    Signed {
        alg: Alg,
        payload: Payload,
        wrong_key: bool,
        /// Flip one byte of the result (index, xor).
        flip: Option<(u16, u8)>,
    },
    /// A well-formed token from `mint_hs256`.
    Minted {
        sub: String,
        exp: Option<i32>,
        channels: Vec<String>,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    headers: Vec<(Name, Vec<u8>)>,
    query: Option<String>,
    cookie_name: String,
    jwt: Jwt,
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn check_extract(input: &Input) {
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let name = match name {
            Name::Authorization => http::header::AUTHORIZATION,
            Name::Cookie => http::header::COOKIE,
            Name::Origin => http::header::ORIGIN,
            Name::XToken => HeaderName::from_static("x-token"),
        };
        headers.append(name, value);
    }
    let token = extract_token(&headers, input.query.as_deref(), &input.cookie_name);

    // A token is never shown by Debug or Display.
    if let Some(t) = &token {
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(t.to_string(), "<redacted>");
    }

    // `Authorization: Bearer` comes first.
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| {
            s.strip_prefix("Bearer ")
                .or_else(|| s.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if let Some(b) = bearer {
        assert_eq!(token.as_ref().map(Token::expose), Some(b));
    }
    // With no headers at all, only the query can give a token.
    if headers.is_empty() && token.is_some() {
        let q = input.query.as_deref().unwrap_or("");
        assert!(q.split('&').any(|p| p.starts_with("token=")));
    }

    // The API key check accepts exactly `Bearer <key>`.
    let api_ok = api_key_matches(&headers, API_KEY);
    let expected = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.strip_prefix("Bearer "))
        .is_some_and(|k| k.trim() == API_KEY);
    assert_eq!(api_ok, expected);
}

fn rel(offset: Option<i32>) -> Option<i64> {
    offset.map(|o| now() + i64::from(o))
}

fn check_verify(jwt: &Jwt) {
    match jwt {
        Jwt::Raw(text) => {
            if let Ok(c) = VERIFIER.verify(&Token::new(text.as_str())) {
                assert!(!c.sub.is_empty());
                // Only an HMAC algorithm may pass with a secret configured.
                let h = jsonwebtoken::decode_header(text).expect("accepted token has a header");
                assert!(matches!(
                    h.alg,
                    Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
                ));
            }
        }
        Jwt::Signed {
            alg,
            payload,
            wrong_key,
            flip,
        } => {
            let (alg, name) = match alg {
                Alg::Hs256 => (Algorithm::HS256, "HS256".to_string()),
                Alg::Hs384 => (Algorithm::HS384, "HS384".to_string()),
                Alg::Hs512 => (Algorithm::HS512, "HS512".to_string()),
                Alg::Claimed(n) => (Algorithm::HS256, n.clone()),
            };
            let header = serde_json::json!({"alg": name, "typ": "JWT"}).to_string();
            let payload = match payload {
                Payload::Claims {
                    sub,
                    exp,
                    nbf,
                    aud,
                    channels,
                    info,
                } => {
                    let mut v = serde_json::json!({"sub": sub, "channels": channels});
                    if let Some(e) = rel(*exp) {
                        v["exp"] = e.into();
                    }
                    if let Some(n) = rel(*nbf) {
                        v["nbf"] = n.into();
                    }
                    if let Some(a) = aud {
                        v["aud"] = a.as_str().into();
                    }
                    if let Some(i) = info {
                        v["info"] = serde_json::from_str(i).unwrap_or_else(|_| i.as_str().into());
                    }
                    v.to_string()
                }
                Payload::Text(t) => t.clone(),
            };
            let message = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload)
            );
            let secret = if *wrong_key {
                "another-secret-00000"
            } else {
                SECRET
            };
            let sig = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(secret.as_bytes()),
                alg,
            )
            .expect("sign");
            let mut token = format!("{message}.{sig}").into_bytes();
            let mut flipped = false;
            if let Some((i, x)) = flip
                && *x != 0
                && !token.is_empty()
            {
                let i = usize::from(*i) % token.len();
                token[i] ^= x;
                flipped = true;
            }
            let token = String::from_utf8_lossy(&token).into_owned();
            let res = VERIFIER.verify(&Token::new(token.as_str()));
            if *wrong_key {
                assert!(
                    res.is_err() || flipped,
                    "a token signed with another key passed"
                );
            }
            if let Ok(c) = res {
                assert!(!c.sub.is_empty());
                if !flipped {
                    let h = jsonwebtoken::decode_header(&token).expect("header");
                    assert_eq!(h.alg, alg, "accepted a header alg it was not signed with");
                }
            }
        }
        Jwt::Minted { sub, exp, channels } => {
            let claims = Claims {
                sub: sub.clone(),
                exp: rel(*exp).map(|e| e.max(0) as u64),
                channels: channels.clone(),
                info: None,
            };
            let token = mint_hs256(SECRET, &claims).expect("mint");
            let res = VERIFIER.verify(&Token::new(token));
            let leeway = 5;
            match exp {
                // Well inside its lifetime: passes (unless `sub` is empty).
                Some(e) if i64::from(*e) > 10 => {
                    if sub.is_empty() {
                        assert_eq!(res, Err(AuthError::Invalid));
                    } else {
                        assert_eq!(res, Ok(claims));
                    }
                }
                Some(e) if i64::from(*e) < -leeway - 10 => {
                    assert!(res.is_err());
                }
                // `exp` is required by default.
                None => assert!(res.is_err()),
                Some(_) => {}
            }
        }
    }
}

fuzz_target!(|input: Input| {
    check_extract(&input);
    check_verify(&input.jwt);
});
