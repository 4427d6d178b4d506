//! Secrets out of everything the server prints: the config (start log,
//! `Debug`, `check-config` messages) and the URLs it logs. Which values are
//! secret is decided by the key's name, so a key added later (a
//! `postgres_url`, a list of `redis_urls`) is covered without a change here.

use std::borrow::Cow;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// A key whose whole value is a secret (`hmac_secret`, `api.key`, a
/// `password`, a `*_token`).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "key"
        || k.ends_with("_key")
        || ["secret", "password", "passwd", "token", "credential"]
            .iter()
            .any(|w| k.contains(w))
}

/// A key holding URLs, whose credentials (userinfo, secret query
/// parameters) are secret: `*_url`, `*_urls`, `*endpoint` (`otel.endpoint`).
pub fn is_url_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "url"
        || k == "urls"
        || k.ends_with("_url")
        || k.ends_with("_urls")
        || k.ends_with("endpoint")
}

/// Query parameters whose values are credentials (as libpq's `password`,
/// or a token in a JWKS URL).
fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "auth",
        "credential",
        "signature",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// `url` with its userinfo (`user:password@`) and the values of secret
/// query parameters replaced by `<redacted>`; scheme, host, port and path
/// stay readable. Several URLs separated by commas (a cluster's seed list)
/// are each redacted. Anything that is not a URL comes back unchanged.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    if !url.contains('@') && !url.contains('?') {
        return Cow::Borrowed(url);
    }
    if url.contains(',') {
        let parts: Vec<Cow<'_, str>> = url.split(',').map(redact_one_url).collect();
        if parts.iter().all(|p| matches!(p, Cow::Borrowed(_))) {
            return Cow::Borrowed(url);
        }
        return Cow::Owned(parts.join(","));
    }
    redact_one_url(url)
}

fn redact_one_url(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://") else {
        return Cow::Borrowed(url);
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    // The userinfo ends at the last `@` before the query: a password may
    // hold `/` or `@` unescaped, and redacting too much is the safe error.
    let query_at = rest.find(['?', '#']).unwrap_or(rest.len());
    let (before_query, tail) = rest.split_at(query_at);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    let mut changed = false;
    match before_query.rfind('@') {
        Some(at) => {
            out.push_str(REDACTED);
            out.push_str(&before_query[at..]);
            changed = true;
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = tail.strip_prefix('?') {
        let (query, fragment) = match query.find('#') {
            Some(i) => query.split_at(i),
            None => (query, ""),
        };
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, value)) if is_secret_param(name) && !value.is_empty() => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                    changed = true;
                }
                _ => out.push_str(pair),
            }
        }
        out.push_str(fragment);
    } else {
        out.push_str(tail);
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(url)
    }
}

/// Redacts, in place, every secret of a config serialized as TOML: secret
/// keys' values whole, URL keys' credentials, at any depth (sections,
/// arrays of tables). Empty values stay empty, so a printed config still
/// shows which secrets are unset.
pub fn redact_toml(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                redact_entry(k, v);
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact_toml),
        _ => {}
    }
}

fn redact_entry(key: &str, value: &mut toml::Value) {
    match value {
        toml::Value::String(s) if is_secret_key(key) && !s.is_empty() => *s = REDACTED.into(),
        // An unset secret stays visibly unset.
        toml::Value::String(_) if is_secret_key(key) => {}
        toml::Value::String(s) if is_url_key(key) => {
            if let Cow::Owned(r) = redact_url(s) {
                *s = r;
            }
        }
        toml::Value::Array(items) if is_secret_key(key) || is_url_key(key) => {
            for item in items {
                redact_entry(key, item);
            }
        }
        toml::Value::Table(_) | toml::Value::Array(_) => redact_toml(value),
        // A secret key given a number or a boolean: shown as redacted too.
        v if is_secret_key(key) => *v = toml::Value::String(REDACTED.into()),
        _ => {}
    }
}

/// A message about a config (a TOML parse error quotes the offending line
/// and value) with the values of secret and URL keys redacted.
pub fn redact_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut scrub_quoted = false;
    for (i, line) in message.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&redact_line(line, &mut scrub_quoted));
    }
    out
}

/// A `key = value` line (possibly behind a `12 | ` source marker) with the
/// value redacted when the key is secret; once such a line was seen, values
/// quoted in backticks later in the message (`invalid type: integer
/// \`123\``) are redacted too.
fn redact_line<'a>(line: &'a str, scrub_quoted: &mut bool) -> Cow<'a, str> {
    let body_at = line.find('|').map_or(0, |i| i + 1);
    let (marker, body) = line.split_at(body_at);
    if let Some((key, value)) = body.split_once('=') {
        let name = key.trim().trim_matches('"');
        let name = name.rsplit('.').next().unwrap_or(name);
        if is_secret_key(name) {
            *scrub_quoted = true;
            return Cow::Owned(format!("{marker}{key}= {REDACTED}"));
        }
        if is_url_key(name) {
            *scrub_quoted = true;
            if let Cow::Owned(v) = redact_url(value) {
                return Cow::Owned(format!("{marker}{key}={v}"));
            }
        }
    }
    if *scrub_quoted && line.contains('`') {
        let mut out = String::with_capacity(line.len());
        for (i, part) in line.split('`').enumerate() {
            if i > 0 {
                out.push('`');
            }
            out.push_str(if i % 2 == 1 { REDACTED } else { part });
        }
        return Cow::Owned(out);
    }
    Cow::Borrowed(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_redacted_and_the_rest_stays_readable() {
        assert_eq!(
            redact_url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://<redacted>@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("redis://default:p%40ss@cache:6379"),
            "redis://<redacted>@cache:6379"
        );
        assert_eq!(
            redact_url("postgres://app:s3cr/t@db.internal:5432/switchboard?sslmode=require"),
            "postgres://<redacted>@db.internal:5432/switchboard?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/sb?user=app&password=hunter2&sslmode=verify-full"),
            "postgres://db/sb?user=app&password=<redacted>&sslmode=verify-full"
        );
        assert_eq!(
            redact_url("https://auth.example.com/jwks?access_token=abc#x"),
            "https://auth.example.com/jwks?access_token=<redacted>#x"
        );
        assert_eq!(
            redact_url("redis://:a@n1:7000,redis://:b@n2:7001"),
            "redis://<redacted>@n1:7000,redis://<redacted>@n2:7001"
        );
        // Nothing secret: unchanged, not copied.
        assert!(matches!(
            redact_url("redis://127.0.0.1:6379"),
            Cow::Borrowed("redis://127.0.0.1:6379")
        ));
        assert!(matches!(
            redact_url("https://h/jwks?kid=1"),
            Cow::Borrowed(_)
        ));
        assert_eq!(redact_url("not a url @ all"), "not a url @ all");
    }

    #[test]
    fn keys_are_judged_by_name() {
        for k in ["hmac_secret", "key", "api_key", "password", "admin_token"] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "public_key_file",
            "jwks_file",
            "cookie_name",
            "max_body_bytes",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
        for k in [
            "redis_url",
            "redis_urls",
            "jwks_url",
            "postgres_url",
            "endpoint",
        ] {
            assert!(is_url_key(k), "{k}");
        }
    }

    #[test]
    fn a_toml_tree_is_redacted_at_any_depth() {
        let mut v: toml::Value = toml::from_str(
            r#"
            [auth]
            hmac_secret = "topsecret-0123456789"
            jwks_url = "https://u:pw@idp/jwks"
            [api]
            key = "the-api-key"
            [broker]
            redis_url = ["redis://:pw1@a:1", "redis://:pw2@b:2"]
            [history]
            postgres_url = "postgres://app:pw3@db/sb"
            [[things]]
            password = 1234
            "#,
        )
        .expect("toml");
        redact_toml(&mut v);
        let text = toml::to_string(&v).expect("toml");
        for secret in [
            "topsecret",
            "pw@",
            "the-api-key",
            "pw1",
            "pw2",
            "pw3",
            "1234",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("https://<redacted>@idp/jwks"), "{text}");
        assert!(text.contains("postgres://<redacted>@db/sb"), "{text}");
    }

    #[test]
    fn parse_errors_do_not_quote_secrets() {
        let err = toml::from_str::<toml::Table>("[auth]\nhmac_secret = \"unterminated-secret\n")
            .expect_err("bad toml")
            .to_string();
        assert!(
            err.contains("unterminated-secret"),
            "the raw error quotes it: {err}"
        );
        let r = redact_message(&err);
        assert!(!r.contains("unterminated-secret"), "{r}");
        let m = "TOML parse error at line 2, column 15\n  |\n2 | password = 1234\n  |            ^^^^\ninvalid type: integer `1234`, expected a string";
        let r = redact_message(m);
        assert!(!r.contains("1234"), "{r}");
        let m = "2 | redis_url = \"redis://:pw@h:1\"\nexpected `,`";
        assert!(!redact_message(m).contains("pw@"));
        assert_eq!(
            redact_message("ws.ping_interval: `soon`"),
            "ws.ping_interval: `soon`"
        );
    }

    #[test]
    fn the_config_prints_no_secret_in_its_log_form_or_debug() {
        use crate::config::Config;
        let mut c = Config::default();
        c.auth.hmac_secret = "hmac-secret-value-0123".into();
        c.auth.jwks_url = "https://jwks-user:jwks-pass@idp.example.com/jwks".into();
        c.api.key = "api-key-value".into();
        c.broker.redis_url = crate::config::RedisUrls::One("redis://:redis-pass@cache:6379".into());
        let secrets = [
            "hmac-secret-value",
            "jwks-pass",
            "jwks-user",
            "api-key-value",
            "redis-pass",
        ];
        let printed = [
            c.redacted_toml(),
            format!("{c:?}"),
            format!("{c:#?}"),
            format!("{:?}", c.auth),
            format!("{:?}", c.api),
            format!("{:?}", c.broker),
            format!("{:?}", c.history),
        ];
        for text in &printed {
            for s in secrets {
                assert!(!text.contains(s), "{s} printed in {text}");
            }
        }
        assert!(
            printed[0].contains("redis://<redacted>@cache:6379"),
            "{}",
            printed[0]
        );
        assert!(printed[0].contains("https://<redacted>@idp.example.com/jwks"));
        // The redacted form is still a config (what `default-config` prints).
        let back: Config = toml::from_str(&Config::default().redacted_toml()).expect("parses");
        assert!(back == Config::default());
    }

    #[test]
    fn config_errors_do_not_quote_secrets() {
        use crate::config::Config;
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("c.toml");
        let env = || {
            vec![
                (
                    "SWITCHBOARD_AUTH_HMAC_SECRET".to_string(),
                    "0123456789abcdef0123".to_string(),
                ),
                ("SWITCHBOARD_API_KEY".to_string(), "key".to_string()),
            ]
        };
        std::fs::write(&f, "[api]\nkey = \"api-key-value-never-shown\n").expect("write");
        let err = Config::load(Some(&f), env()).expect_err("bad toml").0;
        assert!(err.contains("line"), "{err}");
        assert!(!err.contains("api-key-value-never-shown"), "{err}");
        std::fs::write(&f, "[auth]\nhmac_secret = 12345678901234567\n").expect("write");
        let err = Config::load(Some(&f), vec![]).expect_err("bad type").0;
        assert!(!err.contains("12345678901234567"), "{err}");
        std::fs::write(&f, "[auth]\njwks_url = \"ftp://u:jwks-pw@idp/jwks\"\n").expect("write");
        let err = Config::load(Some(&f), vec![("SWITCHBOARD_API_KEY".into(), "k".into())])
            .expect_err("bad url")
            .0;
        assert!(
            err.contains("auth.jwks_url") && !err.contains("jwks-pw"),
            "{err}"
        );
    }
}
