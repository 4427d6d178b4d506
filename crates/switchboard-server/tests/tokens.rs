//! Token verification for every key source and algorithm (PROTOCOL §1, §8):
//! keys under `tests/keys/` (see its README), a JWKS URL served by a tiny
//! local HTTP (or HTTPS, with a CA made at test time) server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use switchboard_server::auth::{AuthError, Token, Verifier};
use switchboard_server::config::{AuthConfig, Config, Dur};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

const SECRET: &str = "0123456789abcdef0123";

fn key_path(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn read_key(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).expect("test key")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> Value {
    json!({ "sub": "alice", "exp": now() + 60 })
}

/// Signs `claims` with `alg`; `key` names a private key under tests/keys
/// (without `.key`), or is the HMAC secret for HS*.
fn sign(alg: Algorithm, key: &str, kid: Option<&str>, claims: &Value) -> String {
    let enc = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(key.as_bytes())
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            EncodingKey::from_ec_pem(&read_key(&format!("{key}.key"))).expect("ec key")
        }
        Algorithm::EdDSA => {
            EncodingKey::from_ed_pem(&read_key(&format!("{key}.key"))).expect("ed key")
        }
        _ => EncodingKey::from_rsa_pem(&read_key(&format!("{key}.key"))).expect("rsa key"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &enc).expect("sign")
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A token with `alg: none`, unsigned, or with a junk signature.
fn alg_none(kid: Option<&str>, signature: &str) -> String {
    let mut header = json!({ "alg": "none", "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    format!("{}.{}.{signature}", b64(&header), b64(&claims()))
}

fn hmac() -> AuthConfig {
    AuthConfig {
        hmac_secret: SECRET.into(),
        ..Default::default()
    }
}

fn pem(name: &str) -> AuthConfig {
    AuthConfig {
        public_key_file: key_path(&format!("{name}.pub.pem")),
        ..Default::default()
    }
}

fn jwks_file() -> AuthConfig {
    AuthConfig {
        jwks_file: key_path("jwks.json"),
        ..Default::default()
    }
}

fn verifier(cfg: &AuthConfig) -> Verifier {
    Verifier::from_config(cfg).expect("verifier")
}

fn check(v: &Verifier, token: &str) -> Result<String, AuthError> {
    v.verify(&Token::new(token)).map(|c| c.sub)
}

const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

#[test]
fn every_algorithm_is_accepted_with_its_key_type() {
    let v = verifier(&hmac());
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        assert_eq!(
            check(&v, &sign(alg, SECRET, None, &claims())),
            Ok("alice".into()),
            "{alg:?}"
        );
    }
    let pkcs1 = AuthConfig {
        public_key_file: key_path("rsa1.pkcs1.pem"),
        ..Default::default()
    };
    for cfg in [pem("rsa1"), pkcs1] {
        let v = verifier(&cfg);
        for alg in RSA_ALGS {
            assert_eq!(
                check(&v, &sign(alg, "rsa1", None, &claims())),
                Ok("alice".into()),
                "{alg:?}"
            );
        }
    }
    for (name, alg) in [
        ("ec256", Algorithm::ES256),
        ("ec384", Algorithm::ES384),
        ("ed25519", Algorithm::EdDSA),
    ] {
        let v = verifier(&pem(name));
        assert_eq!(
            check(&v, &sign(alg, name, None, &claims())),
            Ok("alice".into()),
            "{alg:?}"
        );
    }
}

#[test]
fn an_algorithm_that_does_not_fit_the_key_is_refused() {
    let cases: [(&str, Algorithm, &str); 8] = [
        // (verifier's public key, token alg, signing key)
        ("rsa1", Algorithm::ES256, "ec256"),
        ("rsa1", Algorithm::EdDSA, "ed25519"),
        ("ec256", Algorithm::ES384, "ec384"),
        ("ec384", Algorithm::ES256, "ec256"),
        ("ec256", Algorithm::RS256, "rsa1"),
        ("ed25519", Algorithm::RS256, "rsa1"),
        ("ed25519", Algorithm::ES256, "ec256"),
        ("rsa1", Algorithm::HS256, SECRET),
    ];
    for (public, alg, signer) in cases {
        let v = verifier(&pem(public));
        assert_eq!(
            check(&v, &sign(alg, signer, None, &claims())),
            Err(AuthError::Invalid),
            "{public} with {alg:?}"
        );
    }
    let v = verifier(&hmac());
    for (alg, signer) in [(Algorithm::RS256, "rsa1"), (Algorithm::ES256, "ec256")] {
        assert_eq!(
            check(&v, &sign(alg, signer, None, &claims())),
            Err(AuthError::Invalid),
            "hmac with {alg:?}"
        );
    }
}

#[test]
fn a_token_signed_with_another_key_is_refused() {
    let v = verifier(&pem("rsa1"));
    for alg in RSA_ALGS {
        assert_eq!(
            check(&v, &sign(alg, "rsa2", None, &claims())),
            Err(AuthError::Invalid),
            "{alg:?}"
        );
    }
    let v = verifier(&hmac());
    assert_eq!(
        check(
            &v,
            &sign(Algorithm::HS256, "another-secret-0000", None, &claims())
        ),
        Err(AuthError::Invalid)
    );
    assert_eq!(check(&v, "garbage"), Err(AuthError::Invalid));
    assert_eq!(check(&v, "a.b.c"), Err(AuthError::Invalid));
}

#[test]
fn alg_none_is_never_accepted() {
    for cfg in [hmac(), pem("rsa1"), pem("ed25519"), jwks_file()] {
        let v = verifier(&cfg);
        for token in [
            alg_none(None, ""),
            alg_none(Some("rsa1"), ""),
            alg_none(Some("rsa1"), "c2ln"),
        ] {
            assert_eq!(check(&v, &token), Err(AuthError::Invalid), "{cfg:?}");
        }
    }
}

#[test]
fn hs256_signed_with_the_public_key_as_secret_is_refused() {
    // The classic confusion: the attacker knows the public key and uses it
    // as an HMAC secret.
    let public = String::from_utf8(read_key("rsa1.pub.pem")).expect("pem text");
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = sign(alg, &public, None, &claims());
        assert_eq!(
            check(&verifier(&pem("rsa1")), &token),
            Err(AuthError::Invalid)
        );
        let token = sign(alg, &public, Some("rsa1"), &claims());
        assert_eq!(
            check(&verifier(&jwks_file()), &token),
            Err(AuthError::Invalid)
        );
    }
}

#[test]
fn time_claims_are_checked_with_leeway() {
    let cfg = AuthConfig {
        leeway: Dur::secs(10),
        ..pem("ec256")
    };
    let v = verifier(&cfg);
    let t = |c: Value| check(&v, &sign(Algorithm::ES256, "ec256", None, &c));
    let n = now();
    assert_eq!(t(json!({"sub": "a", "exp": n - 3})), Ok("a".into()));
    assert_eq!(
        t(json!({"sub": "a", "exp": n - 60})),
        Err(AuthError::Expired)
    );
    let exp = n + 600;
    assert_eq!(
        t(json!({"sub": "a", "exp": exp, "nbf": n + 3})),
        Ok("a".into())
    );
    assert_eq!(
        t(json!({"sub": "a", "exp": exp, "nbf": n + 60})),
        Err(AuthError::NotYetValid)
    );
    assert_eq!(
        t(json!({"sub": "a", "exp": exp, "iat": n + 3})),
        Ok("a".into())
    );
    assert_eq!(
        t(json!({"sub": "a", "exp": exp, "iat": n - 3600})),
        Ok("a".into())
    );
    assert_eq!(
        t(json!({"sub": "a", "exp": exp, "iat": n + 60})),
        Err(AuthError::NotYetValid)
    );
    assert_eq!(
        t(json!({"sub": "a", "exp": exp, "iat": "yesterday"})),
        Err(AuthError::Invalid)
    );
    assert_eq!(t(json!({"sub": "", "exp": exp})), Err(AuthError::Invalid));
    assert_eq!(t(json!({"exp": exp})), Err(AuthError::Invalid));
}

#[test]
fn audience_and_issuer_are_checked_when_configured() {
    let cfg = AuthConfig {
        audience: "my-app".into(),
        issuer: "my-auth".into(),
        ..hmac()
    };
    let v = verifier(&cfg);
    let t = |c: Value| check(&v, &sign(Algorithm::HS256, SECRET, None, &c));
    let exp = now() + 60;
    assert_eq!(
        t(json!({"sub": "a", "exp": exp, "aud": "my-app", "iss": "my-auth"})),
        Ok("a".into())
    );
    assert_eq!(
        t(json!({"sub": "a", "exp": exp, "aud": ["x", "my-app"], "iss": "my-auth"})),
        Ok("a".into())
    );
    for c in [
        json!({"sub": "a", "exp": exp, "aud": "other", "iss": "my-auth"}),
        json!({"sub": "a", "exp": exp, "aud": "my-app", "iss": "other"}),
        json!({"sub": "a", "exp": exp, "iss": "my-auth"}),
        json!({"sub": "a", "exp": exp, "aud": "my-app"}),
    ] {
        assert_eq!(t(c.clone()), Err(AuthError::WrongAudienceOrIssuer), "{c}");
    }
    // Not configured: not checked (a token's own `aud` is then refused by
    // jsonwebtoken only when audience validation is on, which it is not).
    let v = verifier(&hmac());
    assert_eq!(
        check(
            &v,
            &sign(
                Algorithm::HS256,
                SECRET,
                None,
                &json!({"sub": "a", "exp": exp, "iss": "anyone"})
            )
        ),
        Ok("a".into())
    );
}

#[test]
fn exp_is_required_unless_configured_otherwise() {
    let exp_less = sign(Algorithm::EdDSA, "ed25519", None, &json!({"sub": "a"}));
    assert_eq!(
        check(&verifier(&pem("ed25519")), &exp_less),
        Err(AuthError::Invalid)
    );
    let lax = AuthConfig {
        require_exp: false,
        ..pem("ed25519")
    };
    let v = verifier(&lax);
    assert_eq!(check(&v, &exp_less), Ok("a".into()));
    // An exp, when present, still counts.
    let expired = sign(
        Algorithm::EdDSA,
        "ed25519",
        None,
        &json!({"sub": "a", "exp": now() - 600}),
    );
    assert_eq!(check(&v, &expired), Err(AuthError::Expired));
}

#[test]
fn a_jwks_file_chooses_the_key_by_kid() {
    let v = verifier(&jwks_file());
    let cases = [
        ("rsa1", Algorithm::RS256),
        ("rsa1", Algorithm::PS512),
        ("rsa2", Algorithm::RS384),
        ("ec256", Algorithm::ES256),
        ("ec384", Algorithm::ES384),
        ("ed25519", Algorithm::EdDSA),
    ];
    for (kid, alg) in cases {
        assert_eq!(
            check(&v, &sign(alg, kid, Some(kid), &claims())),
            Ok("alice".into()),
            "{kid} {alg:?}"
        );
    }
    // The kid names another key than the one that signed.
    assert_eq!(
        check(&v, &sign(Algorithm::RS256, "rsa2", Some("rsa1"), &claims())),
        Err(AuthError::Invalid)
    );
    // The kid's key is of another type than the alg.
    assert_eq!(
        check(
            &v,
            &sign(Algorithm::ES256, "ec256", Some("ec384"), &claims())
        ),
        Err(AuthError::Invalid)
    );
    assert_eq!(
        check(&v, &sign(Algorithm::RS256, "rsa1", Some("nope"), &claims())),
        Err(AuthError::UnknownKey)
    );
    // No kid and several keys: ambiguous.
    assert_eq!(
        check(&v, &sign(Algorithm::RS256, "rsa1", None, &claims())),
        Err(AuthError::Invalid)
    );
}

/// The test JWKS, filtered to `kids`, optionally with extra members per key.
fn jwks(kids: &[&str], extra: Value) -> Value {
    let all: Value = serde_json::from_slice(&read_key("jwks.json")).expect("jwks.json parses");
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap_or("")))
        .map(|k| {
            let mut k = k.clone();
            if let (Some(k), Some(extra)) = (k.as_object_mut(), extra.as_object()) {
                k.extend(extra.clone());
            }
            k
        })
        .collect();
    json!({ "keys": keys })
}

fn temp_file(name: &str, contents: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("sb-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write");
    path.to_string_lossy().into_owned()
}

#[test]
fn a_jwk_alg_narrows_its_key_and_unusable_keys_are_skipped() {
    let mut set = jwks(&["rsa1"], json!({"alg": "RS256"}));
    if let Some(keys) = set["keys"].as_array_mut() {
        // Skipped: an encryption key, an alg that does not fit, an unknown kty.
        keys.push(json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}));
        let mut wrong = jwks(&["ec256"], json!({"alg": "RS256"}))["keys"][0].clone();
        wrong["kid"] = json!("wrong");
        keys.push(wrong);
        keys.push(json!({"kty": "XYZ", "kid": "odd"}));
        // A secret: fine in a file.
        keys.push(json!({"kty": "oct", "kid": "sym", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET)}));
    }
    let cfg = AuthConfig {
        jwks_file: temp_file("narrow.json", set.to_string().as_bytes()),
        ..Default::default()
    };
    let v = verifier(&cfg);
    assert_eq!(
        check(&v, &sign(Algorithm::RS256, "rsa1", Some("rsa1"), &claims())),
        Ok("alice".into())
    );
    assert_eq!(
        check(&v, &sign(Algorithm::PS256, "rsa1", Some("rsa1"), &claims())),
        Err(AuthError::Invalid)
    );
    assert_eq!(
        check(&v, &sign(Algorithm::HS512, SECRET, Some("sym"), &claims())),
        Ok("alice".into())
    );
    for kid in ["enc", "wrong", "odd"] {
        assert_eq!(
            check(&v, &sign(Algorithm::ES256, "ec256", Some(kid), &claims())),
            Err(AuthError::UnknownKey),
            "{kid}"
        );
    }
}

fn load(pairs: &[(&str, &str)]) -> Result<Config, String> {
    let mut env = vec![("SWITCHBOARD_API_KEY".to_string(), "k".to_string())];
    env.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::load(None, env).map(|(c, _)| c).map_err(|e| e.0)
}

#[test]
fn bad_key_sources_stop_the_start_naming_the_key() {
    let pub_pem = key_path("ec384.pub.pem");
    let c = load(&[("SWITCHBOARD_AUTH_PUBLIC_KEY_FILE", &pub_pem)]).expect("valid");
    assert_eq!(c.auth.public_key_file, pub_pem);
    load(&[("SWITCHBOARD_AUTH_JWKS_FILE", &key_path("jwks.json"))]).expect("valid");
    load(&[("SWITCHBOARD_AUTH_JWKS_URL", "http://127.0.0.1:1/jwks")]).expect("valid");
    load(&[("SWITCHBOARD_AUTH_JWKS_URL", "https://127.0.0.1:1/jwks")]).expect("valid");
    let ca = temp_file("ca.pem", TestCa::new().pem.as_bytes());
    let c = load(&[
        ("SWITCHBOARD_AUTH_JWKS_URL", "https://127.0.0.1:1/jwks"),
        ("SWITCHBOARD_AUTH_JWKS_CA_FILE", &ca),
    ])
    .expect("valid");
    assert_eq!(c.auth.jwks_ca_file, ca);
    for (url, ca_file, says) in [
        ("http://127.0.0.1:1/jwks", ca.clone(), "https://"),
        (
            "https://127.0.0.1:1/jwks",
            key_path("missing.pem"),
            "cannot read",
        ),
        (
            "https://127.0.0.1:1/jwks",
            key_path("rsa1.pub.pem"),
            "CERTIFICATE",
        ),
    ] {
        let err = load(&[
            ("SWITCHBOARD_AUTH_JWKS_URL", url),
            ("SWITCHBOARD_AUTH_JWKS_CA_FILE", &ca_file),
        ])
        .expect_err(&ca_file);
        assert!(
            err.contains("auth.jwks_ca_file") && err.contains(says),
            "{ca_file}: {err}"
        );
    }

    let not_json = temp_file("bad.json", b"{\"keys\": ");
    let no_keys = temp_file("empty.json", b"{\"keys\": []}");
    let garbage = temp_file("garbage.pem", b"hello");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "SWITCHBOARD_AUTH_PUBLIC_KEY_FILE",
            key_path("rsa1.key"),
            "private key",
        ),
        ("SWITCHBOARD_AUTH_PUBLIC_KEY_FILE", garbage, "not a PEM"),
        (
            "SWITCHBOARD_AUTH_PUBLIC_KEY_FILE",
            key_path("missing.pem"),
            "cannot read",
        ),
        ("SWITCHBOARD_AUTH_JWKS_FILE", not_json, "not a JWK Set"),
        ("SWITCHBOARD_AUTH_JWKS_FILE", no_keys, "no usable"),
        (
            "SWITCHBOARD_AUTH_JWKS_FILE",
            key_path("missing.json"),
            "cannot read",
        ),
        (
            "SWITCHBOARD_AUTH_JWKS_URL",
            "ftp://x/jwks".into(),
            "http://",
        ),
        (
            "SWITCHBOARD_AUTH_JWKS_URL",
            "wss://auth.example.com/jwks".into(),
            "https://",
        ),
        ("SWITCHBOARD_AUTH_JWKS_URL", "not a url".into(), "not a URL"),
    ];
    for (var, value, says) in cases {
        let key = var
            .trim_start_matches("SWITCHBOARD_AUTH_")
            .to_ascii_lowercase();
        let err = load(&[(var, &value)]).expect_err(&value);
        assert!(
            err.contains(&format!("auth.{key}")) && err.contains(says),
            "{value}: {err}"
        );
    }
    let err = load(&[
        ("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET),
        ("SWITCHBOARD_AUTH_JWKS_FILE", &key_path("jwks.json")),
    ])
    .expect_err("two sources");
    assert!(
        err.contains("exactly one") && err.contains("hmac_secret, jwks_file"),
        "{err}"
    );
    let err = load(&[
        ("SWITCHBOARD_AUTH_JWKS_URL", "http://127.0.0.1:1/jwks"),
        ("SWITCHBOARD_AUTH_JWKS_REFRESH_INTERVAL", "0s"),
    ])
    .expect_err("zero interval");
    assert!(err.contains("auth.jwks_refresh_interval"), "{err}");
    // Verifier::from_config refuses the same.
    assert!(Verifier::from_config(&AuthConfig::default()).is_err());
    let err = Verifier::from_config(&pem("missing")).expect_err("missing file");
    assert!(err.contains("auth.public_key_file"), "{err}");
}

// ---------------------------------------------------------------------------
// jwks_url

/// A tiny HTTP (or HTTPS) server answering every request with the current body.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    status: Arc<Mutex<&'static str>>,
    /// TCP connections accepted (before any TLS handshake).
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: Value) -> Self {
        Self::start_with(body, None).await
    }

    async fn start_with(body: Value, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let body = Arc::new(Mutex::new(body.to_string()));
        let status = Arc::new(Mutex::new("200 OK"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicBool::new(true));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn({
            let (body, status, requests) = (body.clone(), status.clone(), requests.clone());
            let accepted = accepted.clone();
            async move {
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (body, status, requests) = (body.clone(), status.clone(), requests.clone());
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            None => answer(s, &body, &status, &requests).await,
                            Some(tls) => {
                                if let Ok(s) = tls.accept(s).await {
                                    answer(s, &body, &status, &requests).await;
                                }
                            }
                        }
                    });
                }
            }
        });
        JwksServer {
            url: format!("{scheme}://{addr}/.well-known/jwks.json"),
            body,
            status,
            accepted,
            requests,
            up,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn serve(&self, body: Value) {
        *self.body.lock() = body.to_string();
    }

    /// Closes the listener: connections are refused from now on.
    fn stop(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.task.abort();
    }
}

/// Reads one request head and answers it with the current status and body.
async fn answer(
    mut s: impl AsyncRead + AsyncWrite + Unpin,
    body: &Mutex<String>,
    status: &Mutex<&'static str>,
    requests: &AtomicUsize,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let body = body.lock().clone();
    let status = *status.lock();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// A CA made at test time, and a TLS acceptor with a certificate it signed
/// for 127.0.0.1.
struct TestCa {
    pem: String,
    acceptor: TlsAcceptor,
}

impl TestCa {
    fn new() -> Self {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchboard test CA");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("server certificate");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), ca.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .expect("server config");
        TestCa {
            pem: ca.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }
}

fn url_cfg(url: &str, interval: Duration) -> AuthConfig {
    AuthConfig {
        jwks_url: url.into(),
        jwks_refresh_interval: Dur(interval),
        ..Default::default()
    }
}

/// Polls `f` every 10 ms for up to 10 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn jwks_url_is_fetched_at_start_and_again_for_a_new_kid() {
    let server = JwksServer::start(jwks(&["rsa1", "ed25519"], json!({}))).await;
    let v = verifier(&url_cfg(&server.url, Duration::from_secs(3600)));
    eventually("the first fetch", || v.has_keys()).await;
    assert_eq!(server.requests(), 1);
    let old = sign(Algorithm::RS256, "rsa1", Some("rsa1"), &claims());
    let ed = sign(Algorithm::EdDSA, "ed25519", Some("ed25519"), &claims());
    assert_eq!(check(&v, &old), Ok("alice".into()));
    assert_eq!(check(&v, &ed), Ok("alice".into()));
    // Rotation: rsa2 joins the set, ed25519 leaves it.
    server.serve(jwks(&["rsa1", "rsa2"], json!({})));
    let new = sign(Algorithm::PS256, "rsa2", Some("rsa2"), &claims());
    assert_eq!(check(&v, &new), Err(AuthError::UnknownKey));
    eventually("the new key", || check(&v, &new).is_ok()).await;
    assert_eq!(server.requests(), 2);
    assert_eq!(check(&v, &old), Ok("alice".into()));
    assert_eq!(check(&v, &ed), Err(AuthError::UnknownKey));
    // A wrong alg for a fetched key is still refused.
    assert_eq!(
        check(&v, &sign(Algorithm::HS256, SECRET, Some("rsa2"), &claims())),
        Err(AuthError::Invalid)
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_interval() {
    let server = JwksServer::start(jwks(&["rsa1"], json!({}))).await;
    let v = verifier(&url_cfg(&server.url, Duration::from_millis(400)));
    eventually("the first fetch", || v.has_keys()).await;
    let started = tokio::time::Instant::now();
    let mut tokens = Vec::new();
    for i in 0..50 {
        tokens.push(sign(
            Algorithm::RS256,
            "rsa1",
            Some(&format!("unknown-{i}")),
            &claims(),
        ));
    }
    // Flood for about 1.2 s: 3 intervals.
    let mut refused = 0;
    // (A loaded machine may check fewer per interval: the flood goes on
    // until it is one; `allowed` below follows the time it took.)
    while started.elapsed() < Duration::from_millis(1200) || refused <= 1000 {
        for t in &tokens {
            assert_eq!(check(&v, t), Err(AuthError::UnknownKey));
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The flood triggered a fetch; let one that was due finish.
    eventually("a fetch triggered by the flood", || server.requests() >= 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fetched = server.requests() - 1;
    let allowed = 1 + started.elapsed().as_millis() as usize / 400;
    assert!(refused > 1000, "{refused}");
    assert!(
        (1..=allowed).contains(&fetched),
        "{fetched} fetches for {refused} unknown kids in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_long_interval_allows_one_fetch_for_a_flood() {
    let server = JwksServer::start(jwks(&["rsa1"], json!({}))).await;
    let v = verifier(&url_cfg(&server.url, Duration::from_secs(3600)));
    eventually("the first fetch", || v.has_keys()).await;
    let unknown = sign(Algorithm::RS256, "rsa1", Some("unknown"), &claims());
    for _ in 0..5000 {
        assert_eq!(check(&v, &unknown), Err(AuthError::UnknownKey));
    }
    eventually("the triggered fetch", || server.requests() == 2).await;
    for _ in 0..5000 {
        assert_eq!(check(&v, &unknown), Err(AuthError::UnknownKey));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn the_cached_keys_serve_while_the_url_is_down() {
    let server = JwksServer::start(jwks(&["ec256"], json!({}))).await;
    let v = verifier(&url_cfg(&server.url, Duration::from_millis(50)));
    eventually("the first fetch", || v.has_keys()).await;
    let good = sign(Algorithm::ES256, "ec256", Some("ec256"), &claims());
    assert_eq!(check(&v, &good), Ok("alice".into()));
    // Down with an error status: fetches fail, the cache stays.
    *server.status.lock() = "503 Service Unavailable";
    let unknown = sign(Algorithm::ES256, "ec256", Some("other"), &claims());
    for _ in 0..5 {
        assert_eq!(check(&v, &unknown), Err(AuthError::UnknownKey));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(server.requests() >= 2, "{}", server.requests());
    assert_eq!(check(&v, &good), Ok("alice".into()));
    // Down for good: connections refused, the cache stays.
    server.stop();
    assert!(!server.up.load(Ordering::SeqCst));
    for _ in 0..5 {
        assert_eq!(check(&v, &unknown), Err(AuthError::UnknownKey));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(check(&v, &good), Ok("alice".into()));
}

#[tokio::test]
async fn tokens_are_refused_until_the_first_fetch_succeeds() {
    let server = JwksServer::start(json!({"keys": []})).await;
    *server.status.lock() = "500 Internal Server Error";
    let v = verifier(&url_cfg(&server.url, Duration::from_millis(100)));
    let good = sign(Algorithm::RS256, "rsa1", Some("rsa1"), &claims());
    eventually("a failed fetch", || server.requests() >= 1).await;
    assert!(!v.has_keys());
    assert_eq!(check(&v, &good), Err(AuthError::KeysUnavailable));
    // Answers, but with nothing usable (a secret is never taken from a URL).
    *server.status.lock() = "200 OK";
    server.serve(json!({"keys": [{"kty": "oct", "kid": "rsa1", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"}]}));
    let seen = server.requests();
    eventually("another fetch", || server.requests() > seen).await;
    assert_eq!(check(&v, &good), Err(AuthError::KeysUnavailable));
    server.serve(jwks(&["rsa1"], json!({})));
    eventually("the keys", || v.has_keys()).await;
    assert_eq!(check(&v, &good), Ok("alice".into()));
}

#[tokio::test]
async fn an_oversized_key_set_is_not_taken() {
    let mut set = jwks(&["rsa1"], json!({}));
    set["padding"] = json!("x".repeat(2 << 20));
    let server = JwksServer::start(set).await;
    let v = verifier(&url_cfg(&server.url, Duration::from_millis(100)));
    eventually("two fetches", || server.requests() >= 2).await;
    assert!(!v.has_keys());
}

#[test]
fn jwks_url_built_outside_a_runtime_waits_for_start_refresh() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt.block_on(JwksServer::start(jwks(&["rsa1"], json!({}))));
    let v = verifier(&url_cfg(&server.url, Duration::from_secs(1)));
    let t = sign(Algorithm::RS256, "rsa1", Some("rsa1"), &claims());
    // Outside a runtime this only logs.
    v.start_refresh();
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
    assert_eq!(server.requests(), 0);
    assert!(!v.has_keys());
    assert_eq!(check(&v, &t), Err(AuthError::KeysUnavailable));
    rt.block_on(async {
        v.start_refresh();
        eventually("the first fetch", || v.has_keys()).await;
        // Idempotent.
        v.start_refresh();
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    assert_eq!(server.requests(), 1);
    assert_eq!(check(&v, &t), Ok("alice".into()));
}

#[tokio::test]
async fn an_https_jwks_url_is_fetched_with_the_configured_ca() {
    let ca = TestCa::new();
    let server = JwksServer::start_with(jwks(&["rsa1"], json!({})), Some(ca.acceptor)).await;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let cfg = AuthConfig {
        jwks_ca_file: temp_file("https-ca.pem", ca.pem.as_bytes()),
        ..url_cfg(&server.url, Duration::from_secs(3600))
    };
    let v = verifier(&cfg);
    eventually("the first fetch over TLS", || v.has_keys()).await;
    assert_eq!(server.requests(), 1);
    let t = sign(Algorithm::RS256, "rsa1", Some("rsa1"), &claims());
    assert_eq!(check(&v, &t), Ok("alice".into()));
}

#[tokio::test]
async fn an_https_jwks_url_with_an_untrusted_certificate_gives_no_keys() {
    let server_ca = TestCa::new();
    let server = JwksServer::start_with(jwks(&["rsa1"], json!({})), Some(server_ca.acceptor)).await;
    // Another CA: the server's certificate does not chain to it (nor to the
    // system's roots).
    let cfg = AuthConfig {
        jwks_ca_file: temp_file("other-ca.pem", TestCa::new().pem.as_bytes()),
        ..url_cfg(&server.url, Duration::from_millis(100))
    };
    let v = verifier(&cfg);
    let t = sign(Algorithm::RS256, "rsa1", Some("rsa1"), &claims());
    eventually("two failed handshakes", || {
        server.accepted.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(server.requests(), 0);
    assert!(!v.has_keys());
    assert_eq!(check(&v, &t), Err(AuthError::KeysUnavailable));
}
